"""Bearer JWTs, tenancy (a job is its submitter's), the admin role, and auth-off mode."""

from __future__ import annotations

import base64
import json
import logging

import pytest
from flask.testing import FlaskClient

from actors import JobSystem
from actors.model.errors import SettingsError
from tests.standin import PythonApiStandIn
from tests.web_support import QUESTION, SECRET, VIDEO, bearer, make_app, token, wait_job
from web import create_app, load_settings
from web.settings import AppSettings, WebSettings


@pytest.fixture
def client(job_system: JobSystem) -> FlaskClient:
    return make_app(job_system, jwt_secret=SECRET).test_client()


def _unsigned(payload: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(payload)}."


@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": ""},
    {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer not-a-jwt"},
    {"Authorization": "Bearer \u00e9\u00e9.\u00e9\u00e9.\u00e9"},
    {"Authorization": f"Bearer {token(secret='another-secret-0123456789abcdef0123456789')}"},
    {"Authorization": f"Bearer {token(exp_in=-3600)}"},
    {"Authorization": f"Bearer {token(exp_in=None)}"},  # no exp claim
    {"Authorization": f"Bearer {token(None)}"},  # no userId nor sub
    {"Authorization": f"Bearer {token(True)}"},  # userId of the wrong type
    {"Authorization": f"Bearer {_unsigned({'userId': 'mallory', 'role': 'admin'})}"},
    {"Authorization": f"Bearer {token(algorithm='HS512', secret=SECRET * 2)}"},
])
def test_bad_credentials_are_401_json(client: FlaskClient, headers: dict):
    for method, path in (("get", "/api/queue/status"), ("post", "/api/video/process")):
        reply = getattr(client, method)(path, headers=headers, json=VIDEO)
        assert reply.status_code == 401, (headers, reply.json)
        assert reply.json["success"] is False and reply.json["error"]
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")


def test_expired_token_says_so(client: FlaskClient):
    reply = client.get("/api/queue/status", headers=bearer(exp_in=-3600))
    assert reply.json["error"] == "token expired"
    assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]


def test_valid_tokens_with_userid_or_sub(client: FlaskClient):
    assert client.get("/api/queue/status", headers=bearer("alice")).status_code == 200
    assert client.get("/api/queue/status", headers=bearer(42)).status_code == 200
    sub_only = {"Authorization": f"Bearer {token(None, sub='bob')}"}
    assert client.get("/api/queue/status", headers=sub_only).status_code == 200


def test_health_needs_no_token(client: FlaskClient):
    for path in ("/health", "/health/live", "/health/ready"):
        assert client.get(path).status_code == 200


def test_jobs_belong_to_their_submitter(client: FlaskClient, standin: PythonApiStandIn):
    alice, bob, admin = bearer("alice"), bearer("bob"), bearer("root", role="admin")
    standin.hold("process-video")
    try:
        location = client.post("/api/video/process", json=VIDEO,
                               headers=alice).headers["Location"]
        assert client.get(location, headers=alice).status_code == 200
        for method in ("get", "delete"):
            hidden = getattr(client, method)(location, headers=bob)
            assert hidden.status_code == 404, method
            assert hidden.json == {"success": False, "error": "No such job."}
        assert client.post(location + "/retry", headers=bob).status_code == 404
        assert client.get(location, headers=admin).status_code == 200
        bobs_list = client.get("/api/queue/jobs", headers=bob).json["data"]
        assert bobs_list == []
        all_jobs = client.get("/api/queue/jobs", headers=admin).json["data"]
        assert len(all_jobs) == 1
        alices = client.get("/api/queue/jobs?owner=alice", headers=admin).json["data"]
        assert len(alices) == 1
    finally:
        standin.release("process-video")
    wait_job(client, location, standin, headers=alice)


def test_admin_may_cancel_anyones_waiting_job(client: FlaskClient, standin: PythonApiStandIn):
    alice, admin = bearer("alice"), bearer("root", role="admin")
    assert client.post("/api/queue/qa/pause", headers=admin).status_code == 200
    location = client.post("/api/interactions/i-1/questions", json=QUESTION,
                           headers=alice).headers["Location"]
    assert client.delete(location, headers=bearer("bob")).status_code == 404
    cancelled = client.delete(location, headers=admin)
    assert cancelled.status_code == 200 and cancelled.json["data"]["status"] == "cancelled"
    assert client.post("/api/queue/qa/resume", headers=admin).status_code == 200


def test_queue_control_needs_admin(client: FlaskClient):
    for action in ("pause", "resume"):
        denied = client.post(f"/api/queue/video/{action}", headers=bearer("alice", role="user"))
        assert denied.status_code == 403
        assert denied.json == {"success": False, "error": "this operation needs the admin role"}
        assert client.post(f"/api/queue/video/{action}").status_code == 401
    admin = bearer("root", role="admin")
    paused = client.post("/api/queue/video/pause", headers=admin)
    assert paused.status_code == 200
    assert paused.json["data"]["paused"] is True
    assert paused.json["data"]["pauseReasons"] == ["operator"]
    status = client.get("/api/queue/status", headers=admin).json["data"]
    assert status["queues"]["video"]["paused"] is True
    assert status["queues"]["qa"]["paused"] is False
    resumed = client.post("/api/queue/video/resume", headers=admin)
    assert resumed.status_code == 200 and resumed.json["data"]["paused"] is False
    assert client.post("/api/queue/other/pause", headers=admin).status_code == 404


def test_auth_off_acts_as_local_admin_and_warns(job_system: JobSystem,
                                                caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.WARNING, logger="web"):
        client = make_app(job_system).test_client()
    assert any("authentication is OFF" in r.getMessage() for r in caplog.records)
    assert client.post("/api/queue/video/pause").status_code == 200
    assert client.post("/api/queue/video/resume").status_code == 200


def test_tokens_and_secrets_are_never_logged(client: FlaskClient,
                                             caplog: pytest.LogCaptureFixture):
    bad = token(secret="another-secret-0123456789abcdef0123456789")
    with caplog.at_level(logging.DEBUG):
        client.get("/api/queue/status", headers={"Authorization": f"Bearer {bad}"})
        client.post("/api/queue/video/pause", headers=bearer("root", role="admin"))
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert bad not in text and SECRET not in text
    assert SECRET not in repr(WebSettings(jwt_secret=SECRET))


def test_production_without_secret_refuses_to_start():
    with pytest.raises(SettingsError) as caught:
        load_settings({"APP_ENV": "production"}, dotenv_path=None)
    assert "JWT_SECRET is required" in str(caught.value)
    with pytest.raises(SettingsError, match="JWT_SECRET is required"):
        load_settings({"NODE_ENV": "production"}, dotenv_path=None)
    web = WebSettings(environment="production")
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        create_app(AppSettings(web=web))  # refused before any actor starts


def test_short_secret_is_refused():
    with pytest.raises(SettingsError, match="at least 32 bytes"):
        load_settings({"JWT_SECRET": "short"}, dotenv_path=None)


@pytest.mark.parametrize("environ", [{}, {"APP_ENV": "staging"}, {"APP_ENV": ""},
                                     {"APP_ENV": "prod"}, {"NODE_ENV": "test"},
                                     {"APP_ENV": "dev"}, {"APP_ENV": "Production "}])
def test_without_a_secret_only_an_explicit_development_runs_without_authentication(
        environ: dict[str, str]) -> None:
    # Fails closed: anything but APP_ENV=development without JWT_SECRET refuses to start
    # (a staging deploy that forgot its secret must not make every caller an admin).
    with pytest.raises(SettingsError, match="JWT_SECRET is required"):
        load_settings(environ, dotenv_path=None)


def test_an_explicit_development_runs_without_authentication() -> None:
    for environ in ({"APP_ENV": "development"}, {"APP_ENV": " Development"},
                    {"NODE_ENV": "development"}):
        assert not load_settings(environ, dotenv_path=None).web.auth_enabled
