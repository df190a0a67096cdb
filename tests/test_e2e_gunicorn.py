"""End to end: the real server under gunicorn on 127.0.0.1, driven over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tests.gunicorn_server import GunicornServer
from tests.standin import PythonApiStandIn
from tests.url_corpus import youtube_url
from tests.web_support import TEST_COMPANIES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SECRET = "e2e-secret-0123456789abcdef0123456789abcdef"
TERMINAL = ("completed", "failed", "cancelled")


def auth(user: str, role: str | None = None) -> dict[str, str]:
    claims: dict[str, Any] = {"userId": user, "exp": int(time.time()) + 3600,
                              "companyNames": list(TEST_COMPANIES)}
    if role:
        claims["role"] = role
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def base_env(standin: PythonApiStandIn, **extra: str) -> dict[str, str]:
    return {
        "PYTHON_API_BASE_URL": standin.url,
        "APP_ENV": "production",
        "JWT_SECRET": SECRET,
        "QUEUE_STORE": "memory",
        "QUEUE_BACKOFF_DELAY": "50",
        "QUEUE_BACKOFF_MAX_MS": "200",
        "QUEUE_DRAIN_TIMEOUT_MS": "20000",
        "PYTHON_API_STATUS_TIMEOUT_MS": "500",
        "GUNICORN_ACCESS_LOG": "",
        **extra,
    }


@pytest.fixture(scope="module")
def module_standin() -> Iterator[PythonApiStandIn]:
    with PythonApiStandIn() as server:
        yield server


@pytest.fixture(scope="module")
def server(module_standin: PythonApiStandIn, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[GunicornServer]:
    workdir = tmp_path_factory.mktemp("e2e")
    gunicorn = GunicornServer(workdir, base_env(module_standin)).start()
    yield gunicorn
    gunicorn.stop()


def follow(server: GunicornServer, location: str, headers: dict[str, str],
           timeout_s: float = 20.0) -> dict[str, Any]:
    """Poll a job until it is finished; return its data."""
    found: dict[str, Any] = {}

    def finished() -> bool:
        reply = server.request("GET", location, headers=headers)
        assert reply.status_code == 200, reply.text
        found.update(reply.json()["data"])
        return found["status"] in TERMINAL

    assert server.wait_until(finished, timeout_s), f"job not finished: {found}"
    return found


def test_video_job_followed_to_completed(server: GunicornServer) -> None:
    alice = auth("alice")
    reply = server.request("POST", "/api/video/process", headers=alice, json={
        "videoUrl": "https://www.youtube.com/watch?v=e2e-video-1", "companyName": "acme",
        "source": "youtube"})
    assert reply.status_code == 202, reply.text
    body = reply.json()
    assert body["success"] is True and body["data"]["status"] == "queued"
    assert isinstance(body["data"]["queuePosition"], int)
    assert "NaN" not in body["data"]["estimatedWaitTime"]
    location = reply.headers["Location"]
    assert location.endswith(body["data"]["jobId"])
    job = follow(server, location, alice)
    assert job["status"] == "completed" and job["attempts"] == 1
    assert job["result"]["chunks_created"] == 12
    assert job["type"] == "video" and job["completedAt"]


def test_question_job_and_queue_status(server: GunicornServer) -> None:
    bob = auth("bob")
    reply = server.request("POST", "/api/interactions/demo-1/questions", headers=bob,
                           json={"question": "What are the main features?",
                                 "companyName": "acme"})
    assert reply.status_code == 202, reply.text
    job = follow(server, reply.headers["Location"], bob)
    assert job["status"] == "completed"
    assert job["result"]["answer"] == "This is the answer."
    status = server.request("GET", "/api/queue/status", headers=bob)
    assert status.status_code == 200
    assert status.json()["data"]["queues"]["qa"]["completed"] >= 1


def test_health_probes(server: GunicornServer) -> None:
    health = server.request("GET", "/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] in ("healthy", "degraded")
    assert set(body["health"]) >= {"memory", "queues", "concurrency"}
    assert body["health"]["memory"]["process"]["rss"] is not None
    assert server.request("GET", "/health/live").status_code == 200
    assert server.request("GET", "/health/ready").status_code == 200


def test_auth_and_tenancy(server: GunicornServer) -> None:
    anonymous = server.request("POST", "/api/interactions/demo-1/questions",
                               json={"question": "Hi?", "companyName": "acme"})
    assert anonymous.status_code == 401
    assert anonymous.json()["success"] is False
    forged = {"Authorization": "Bearer " + jwt.encode(
        {"userId": "carol", "exp": int(time.time()) + 60}, "x" * 40, algorithm="HS256")}
    assert server.request("GET", "/api/queue/status", headers=forged).status_code == 401

    alice = auth("alice")
    reply = server.request("POST", "/api/interactions/demo-2/questions", headers=alice,
                           json={"question": "Whose job is this?", "companyName": "acme"})
    location = reply.headers["Location"]
    assert server.request("GET", location, headers=auth("mallory")).status_code == 404
    assert server.request("DELETE", location, headers=auth("mallory")).status_code == 404
    assert server.request("GET", location, headers=auth("root", "admin")).status_code == 200

    assert server.request("POST", "/api/queue/video/pause", headers=alice).status_code == 403
    admin = auth("root", "admin")
    assert server.request("POST", "/api/queue/video/pause", headers=admin).status_code == 200
    paused = server.request("GET", "/api/queue/status", headers=admin).json()
    assert paused["data"]["queues"]["video"]["paused"] is True
    assert server.request("POST", "/api/queue/video/resume", headers=admin).status_code == 200


def test_rate_limit(module_standin: PythonApiStandIn, tmp_path: Path) -> None:
    env = base_env(module_standin, RATE_LIMIT_READ_MAX_REQUESTS="5", RATE_LIMIT_WINDOW_MS="60000")
    server = GunicornServer(tmp_path, env).start()
    try:
        alice = auth("alice")
        statuses = [server.request("GET", "/api/queue/status", headers=alice).status_code
                    for _ in range(6)]
        assert statuses[:5] == [200] * 5
        limited = server.request("GET", "/api/queue/status", headers=alice)
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) > 0
        assert limited.json()["success"] is False
        assert server.request("GET", "/health/live").status_code == 200  # probes exempt
        assert server.request("GET", "/health").status_code == 200
    finally:
        server.stop()


def test_sigterm_drains_running_jobs(tmp_path: Path) -> None:
    with PythonApiStandIn() as standin:
        server = GunicornServer(tmp_path, base_env(standin)).start()
        try:
            alice = auth("alice")
            standin.hold("process-video")
            reply = server.request("POST", "/api/video/process", headers=alice, json={
                "video_url": youtube_url("drain-me"), "company_name": "acme",
                "source": "youtube"})
            assert reply.status_code == 202
            assert standin.wait_in_flight("process-video", 1, timeout=10)

            server.signal()  # SIGTERM to the master
            assert server.wait_until(lambda: "draining: new jobs are refused" in server.log(),
                                     10)
            # Until gunicorn closes its listener, submissions are refused with 503: never 202.
            for _ in range(20):
                try:
                    late = server.request("POST", "/api/interactions/x/questions",
                                          headers=alice, timeout=2,
                                          json={"question": "Late?", "companyName": "acme"})
                except requests.ConnectionError:
                    break
                assert late.status_code == 503, late.text
                assert "Retry-After" in late.headers
            standin.release("process-video")
            assert server.wait_exit(timeout_s=30) == 0
            call = standin.calls("process-video")[0]
            assert call.finished_at is not None  # the running job got its answer
            log = server.log()
            assert f"job {reply.json()['data']['jobId']} completed" in log
            assert "job system stopped" in log
        finally:
            server.stop()
