"""Rate limiting, client addresses behind proxies, CORS, and security headers."""

from __future__ import annotations

import pytest

from actors import JobSystem
from actors.errors import SettingsError
from tests.web_support import make_app
from web import load_settings
from web.security import SECURITY_HEADERS

STATUS = "/api/queue/status"
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")

LAPTOP = {"APP_ENV": "development"}  # authentication off, asked for explicitly


def test_rate_limit_429_with_headers_and_health_exempt(job_system: JobSystem):
    client = make_app(job_system, rate_limit_max_requests=3, rate_limit_window_s=60).test_client()
    remaining = []
    for _ in range(3):
        reply = client.get(STATUS)
        assert reply.status_code == 200
        assert reply.headers["RateLimit-Limit"] == "3"
        assert reply.headers["RateLimit-Policy"] == "3;w=60"
        assert 0 < int(reply.headers["RateLimit-Reset"]) <= 60
        assert "Retry-After" not in reply.headers
        remaining.append(int(reply.headers["RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    limited = client.post("/api/video/process", json={})  # shared across routes
    assert limited.status_code == 429
    assert limited.is_json and limited.json["success"] is False
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert all(name in limited.headers for name in RATE_HEADERS)
    assert limited.headers["RateLimit-Remaining"] == "0"
    for path in ("/health", "/health/live", "/health/ready"):
        probe = client.get(path)
        assert probe.status_code == 200
        assert "RateLimit-Limit" not in probe.headers


def test_forwarded_for_is_ignored_without_trust_proxy(job_system: JobSystem):
    client = make_app(job_system, rate_limit_max_requests=1).test_client()
    assert client.get(STATUS, headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 200
    spoofed = client.get(STATUS, headers={"X-Forwarded-For": "203.0.113.2"})
    assert spoofed.status_code == 429


def test_forwarded_for_counts_with_trust_proxy(job_system: JobSystem):
    client = make_app(job_system, rate_limit_max_requests=1, trust_proxy=1).test_client()
    assert client.get(STATUS, headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 200
    assert client.get(STATUS, headers={"X-Forwarded-For": "203.0.113.2"}).status_code == 200
    again = client.get(STATUS, headers={"X-Forwarded-For": "203.0.113.1"})
    assert again.status_code == 429
    # With one trusted proxy, what a client prepends itself does not matter.
    forged = client.get(STATUS, headers={"X-Forwarded-For": "198.51.100.9, 203.0.113.2"})
    assert forged.status_code == 429


def test_rate_limit_settings_from_env():
    settings = load_settings({**LAPTOP, "RATE_LIMIT_MAX_REQUESTS": "50",
                              "RATE_LIMIT_WINDOW_MS": "60000", "TRUST_PROXY": "2"},
                             dotenv_path=None).web
    assert settings.rate_limit == "50 per 60 second" and settings.trust_proxy == 2
    with pytest.raises(SettingsError) as caught:
        load_settings({**LAPTOP, "RATE_LIMIT_MAX_REQUESTS": "0", "RATE_LIMIT_WINDOW_MS": "10",
                       "TRUST_PROXY": "-1", "RATE_LIMIT_STORAGE_URI": "nope",
                       "QUEUE_MAX_CONCURRENT_VIDEOS": "x", "CORS_ORIGINS": "not an origin",
                       "VIDEO_URL_ALLOWED_HOSTS": "10.0.0.1,*.loom.com", "LOG_LEVEL": "loud"},
                      dotenv_path=None)
    text = str(caught.value)
    for name in ("RATE_LIMIT_MAX_REQUESTS", "RATE_LIMIT_WINDOW_MS", "TRUST_PROXY",
                 "RATE_LIMIT_STORAGE_URI", "QUEUE_MAX_CONCURRENT_VIDEOS", "CORS_ORIGINS",
                 "VIDEO_URL_ALLOWED_HOSTS", "LOG_LEVEL"):
        assert name in text, name
    assert "*.loom.com" not in text


def test_cors_allows_only_listed_origins(job_system: JobSystem):
    client = make_app(job_system, cors_origins=("https://app.qudemo.com",)).test_client()
    allowed = client.get(STATUS, headers={"Origin": "https://app.qudemo.com"})
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.qudemo.com"
    assert "Location" in allowed.headers["Access-Control-Expose-Headers"]
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    denied = client.get(STATUS, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in denied.headers
    preflight = client.options("/api/video/process", headers={
        "Origin": "https://app.qudemo.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "Authorization, Content-Type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.qudemo.com"
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]


def test_no_cors_headers_by_default(job_system: JobSystem):
    client = make_app(job_system).test_client()
    reply = client.get(STATUS, headers={"Origin": "https://app.qudemo.com"})
    assert not [name for name, _ in reply.headers if name.startswith("Access-Control-")]


def test_security_headers_on_every_response(job_system: JobSystem):
    client = make_app(job_system).test_client()
    for reply in (client.get(STATUS), client.get("/nope"), client.get("/health"),
                  client.post("/api/video/process", data="x", content_type="text/plain")):
        for name, value in SECURITY_HEADERS.items():
            assert reply.headers[name] == value, name
        assert reply.headers["Cache-Control"] == "no-store"
        assert reply.headers["Content-Type"] == "application/json"
        assert "Strict-Transport-Security" not in reply.headers
        assert "Server" not in reply.headers


def test_hsts_in_production(job_system: JobSystem):
    client = make_app(job_system, environment="production",
                      jwt_secret="p" * 40).test_client()
    reply = client.get("/health/live")
    assert reply.headers["Strict-Transport-Security"].startswith("max-age=")
