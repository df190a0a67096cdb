"""Rate limiting, client addresses behind proxies, CORS, and security headers."""

from __future__ import annotations

import importlib.util

import pytest

from actors import JobSystem
from actors.model.errors import SettingsError
from tests.web_support import SECRET, bearer, make_app
from web import WebSettings, load_settings
from web.security import SECURITY_HEADERS
from web.settings import DEFAULT_READ_MAX_REQUESTS

STATUS = "/api/queue/status"
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset", "RateLimit-Policy")

LAPTOP = {"APP_ENV": "development"}  # authentication off, asked for explicitly


def test_rate_limit_429_with_headers_and_health_exempt(job_system: JobSystem):
    client = make_app(job_system, rate_limit_max_requests=3, rate_limit_read_max_requests=2,
                      rate_limit_window_s=60).test_client()
    remaining = []
    for _ in range(3):
        reply = client.post("/api/video/process", json={})
        assert reply.status_code == 400
        assert reply.headers["RateLimit-Limit"] == "3"
        assert reply.headers["RateLimit-Policy"] == "3;w=60"
        assert 0 < int(reply.headers["RateLimit-Reset"]) <= 60
        assert "Retry-After" not in reply.headers
        remaining.append(int(reply.headers["RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    limited = client.post("/api/interactions/i-1/questions", json={})  # shared by submissions
    assert limited.status_code == 429
    assert limited.is_json and limited.json["success"] is False
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert all(name in limited.headers for name in RATE_HEADERS)
    assert limited.headers["RateLimit-Remaining"] == "0"
    # Reads have their own budget, with its own headers.
    reads = [client.get(STATUS) for _ in range(3)]
    assert [r.status_code for r in reads] == [200, 200, 429]
    assert [r.headers["RateLimit-Policy"] for r in reads] == ["2;w=60"] * 3
    # Both budgets spent: probes, metrics, the dashboard's data and the document still answer.
    for path in ("/health", "/health/live", "/health/ready", "/metrics", "/api/queue/dashboard",
                 "/openapi.json"):
        probe = client.get(path)
        assert probe.status_code == 200, path
        assert "RateLimit-Limit" not in probe.headers
    assert client.get("/nope").status_code == 404  # no route: not counted, no headers either


def test_forwarded_for_is_ignored_without_trust_proxy(job_system: JobSystem):
    client = make_app(job_system, rate_limit_read_max_requests=1).test_client()
    assert client.get(STATUS, headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 200
    spoofed = client.get(STATUS, headers={"X-Forwarded-For": "203.0.113.2"})
    assert spoofed.status_code == 429


def test_forwarded_for_counts_with_trust_proxy(job_system: JobSystem):
    client = make_app(job_system, rate_limit_read_max_requests=1, trust_proxy=1).test_client()
    assert client.get(STATUS, headers={"X-Forwarded-For": "203.0.113.1"}).status_code == 200
    assert client.get(STATUS, headers={"X-Forwarded-For": "203.0.113.2"}).status_code == 200
    again = client.get(STATUS, headers={"X-Forwarded-For": "203.0.113.1"})
    assert again.status_code == 429
    # With one trusted proxy, what a client prepends itself does not matter.
    forged = client.get(STATUS, headers={"X-Forwarded-For": "198.51.100.9, 203.0.113.2"})
    assert forged.status_code == 429


def test_invalid_tokens_count_against_the_forwarded_address(job_system: JobSystem):
    client = make_app(job_system, jwt_secret=SECRET, rate_limit_read_max_requests=2,
                      trust_proxy=1).test_client()
    first = {"X-Forwarded-For": "203.0.113.1"}
    forged = bearer("alice", secret="x" * 40)
    for headers in ({**first, **forged}, {**first, "Authorization": "Bearer junk"}):
        assert client.get(STATUS, headers=headers).status_code == 401
    assert client.get(STATUS, headers={**first, **forged}).status_code == 429
    assert client.get(STATUS, headers={"X-Forwarded-For": "203.0.113.2"}).status_code == 401
    # The real alice, behind the same address, has her own budget.
    real = client.get(STATUS, headers={**first, **bearer("alice")})
    assert real.status_code == 200 and real.headers["RateLimit-Remaining"] == "1"


def test_authentication_off_counts_by_address(job_system: JobSystem):
    # Every caller is the local admin then: one user's budget would merge every client.
    client = make_app(job_system, rate_limit_read_max_requests=1, trust_proxy=1).test_client()
    tokened = {"X-Forwarded-For": "203.0.113.1", **bearer("alice")}
    assert client.get(STATUS, headers=tokened).status_code == 200
    assert client.get(STATUS, headers=tokened).status_code == 429
    assert client.get(STATUS, headers={"X-Forwarded-For": "203.0.113.2",
                                       **bearer("alice")}).status_code == 200


def test_rate_limit_settings_from_env():
    settings = load_settings({**LAPTOP, "RATE_LIMIT_MAX_REQUESTS": "50",
                              "RATE_LIMIT_WINDOW_MS": "60000", "TRUST_PROXY": "2"},
                             dotenv_path=None).web
    assert settings.rate_limit == "50 per 60 second" and settings.trust_proxy == 2
    assert settings.read_rate_limit == f"{DEFAULT_READ_MAX_REQUESTS} per 60 second"
    reads = load_settings({**LAPTOP, "RATE_LIMIT_READ_MAX_REQUESTS": "600"}, dotenv_path=None).web
    assert reads.read_rate_limit == "600 per 900 second"
    assert reads.rate_limit == "200 per 900 second"
    # A deployment that raised the one shared budget keeps at least as much for reads.
    raised = load_settings({**LAPTOP, "RATE_LIMIT_MAX_REQUESTS": "100000"}, dotenv_path=None).web
    assert raised.read_max_requests == 100000
    assert WebSettings(rate_limit_max_requests=100000).read_max_requests == 100000
    spelled = load_settings({**LAPTOP, "RATE_LIMIT_READ_MAX_REQUESTS":
                             str(DEFAULT_READ_MAX_REQUESTS)}, dotenv_path=None)
    assert spelled == load_settings(LAPTOP, dotenv_path=None)  # the default, spelled out
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


@pytest.mark.parametrize("value", ["0", "-5", "many", "1.5"])
def test_a_bad_read_budget_stops_the_start(value: str):
    with pytest.raises(SettingsError) as caught:
        load_settings({**LAPTOP, "RATE_LIMIT_READ_MAX_REQUESTS": value}, dotenv_path=None)
    assert "RATE_LIMIT_READ_MAX_REQUESTS" in str(caught.value)
    assert WebSettings(rate_limit_read_max_requests=0).problems()


def test_a_storage_that_cannot_be_used_stops_the_start():
    # flask-limiter is synchronous: an async storage would fail on the first request.
    assert any("RATE_LIMIT_STORAGE_URI" in p
               for p in WebSettings(rate_limit_storage_uri="async+memory://").problems())
    redis_uri = "redis://:hunter2-pw@cache:6379/0"
    problems = WebSettings(rate_limit_storage_uri=redis_uri).problems()
    if importlib.util.find_spec("redis") is None:
        # Without the client package every worker would crash at boot: one line instead.
        (problem,) = problems
        assert "RATE_LIMIT_STORAGE_URI" in problem and "pip install redis" in problem
        assert "hunter2" not in problem
    else:
        assert problems == []


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
