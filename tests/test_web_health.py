"""Health probes, queue status and monitor, and the app owning its job system."""

from __future__ import annotations

import logging
import re

import pytest
from flask.testing import FlaskClient

from actors import JobKind, JobSystem, Settings
from tests.standin import PythonApiStandIn
from tests.web_support import make_app
from web import AppSettings, WebSettings, create_app
from web.context import extension

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def client(job_system: JobSystem) -> FlaskClient:
    return make_app(job_system).test_client()


def test_health_shape_when_healthy(job_system: JobSystem, client: FlaskClient):
    job_system.check_memory()
    reply = client.get("/health")
    assert reply.status_code == 200
    body = reply.json
    assert body["status"] == "healthy" and body["reasons"] == []
    assert ISO.match(body["timestamp"])
    health = body["health"]
    memory = health["memory"]
    assert memory["process"]["rss"] > 0 and memory["node"] == memory["process"]
    assert memory["python"] == {"memory_mb": 500.0, "status": "ok", "reachable": True}
    for kind in ("video", "qa"):
        assert health["queues"][kind] == {"waiting": 0, "activeJobs": 0, "abandonedCalls": 0,
                                          "retrying": 0, "paused": False}
    assert health["concurrency"]["video"]["max"] == 2
    assert health["concurrency"]["qa"]["max"] == 10


def test_health_degraded_when_paused_or_under_pressure(job_system: JobSystem,
                                                       client: FlaskClient,
                                                       standin: PythonApiStandIn):
    job_system.check_memory()
    job_system.pause(JobKind.QA)
    reply = client.get("/health")
    assert reply.status_code == 200 and reply.json["status"] == "degraded"
    assert reply.json["reasons"] == ["qa queue paused (operator)"]
    job_system.resume(JobKind.QA)
    standin.set_memory(1900.0)
    job_system.check_memory()
    reply = client.get("/health")
    assert reply.json["status"] == "degraded"
    assert "memory pressure" in reply.json["reasons"]
    assert reply.json["health"]["memory"]["pressure"] is True


def test_health_degraded_when_python_api_silent(job_system: JobSystem, client: FlaskClient,
                                                standin: PythonApiStandIn):
    standin.hold("memory-status")
    try:
        job_system.check_memory()  # times out after python_api_status_timeout_s
    finally:
        standin.release("memory-status")
    reply = client.get("/health")
    assert reply.status_code == 200 and reply.json["status"] == "degraded"
    assert "Python API unreachable" in reply.json["reasons"]
    assert reply.json["health"]["memory"]["python"]["status"] == "unknown"


def test_probes_after_stop(job_system: JobSystem, client: FlaskClient):
    assert client.get("/health/ready").json["status"] == "ready"
    job_system.stop(drain=False)
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and ready.headers["Retry-After"] == "10"
    assert ready.json["status"] == "not ready" and ready.json["reasons"]
    health = client.get("/health")
    assert health.status_code == 503 and health.json["status"] == "unhealthy"
    # The core is gone: liveness fails too, so a platform restarts the process.
    live = client.get("/health/live")
    assert live.status_code == 503 and live.json["status"] == "not answering"
    jobs = client.get("/api/queue/jobs/video/abc")
    assert jobs.status_code == 503 and jobs.json["success"] is False


def test_readiness_503_while_draining(job_system: JobSystem, client: FlaskClient):
    job_system.begin_drain()
    ready = client.get("/health/ready")
    assert ready.status_code == 503 and "Retry-After" in ready.headers
    assert "draining" in ready.json["reasons"][0] or "alive" in ready.json["reasons"][0]


def test_queue_status_shape(job_system: JobSystem, client: FlaskClient):
    job_system.check_memory()
    data = client.get("/api/queue/status").json["data"]
    assert data["accepting"] is True and data["draining"] is False
    video = data["queues"]["video"]
    assert {"waiting", "activeJobs", "retrying", "completed", "failed", "cancelled",
            "maxConcurrent", "maxWaiting", "paused", "pauseReasons",
            "avgDurationSeconds"} <= set(video)
    assert video["maxConcurrent"] == 2 and video["maxWaiting"] == 500
    assert data["memory"]["python"]["memoryMb"] == 500.0
    assert ISO.match(data["memory"]["checkedAt"])


def test_monitor_logs_one_line_and_returns_it(client: FlaskClient,
                                              caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO, logger="web.queue"):
        reply = client.get("/api/queue/monitor")
    summary = reply.json["data"]["summary"]
    assert "video: waiting=0" in summary and "qa: waiting=0" in summary
    assert "\n" not in summary
    assert [r.getMessage() for r in caplog.records if r.name == "web.queue"] == [
        f"queue monitor: {summary}"]
    assert reply.json["data"]["queues"]["qa"]["maxConcurrent"] == 10


def test_app_owns_the_system_it_starts(fast_settings: Settings):
    app = create_app(AppSettings(core=fast_settings, web=WebSettings()))
    ext = extension(app)
    assert ext.owns_system and ext.system.alive
    assert app.test_client().get("/health/ready").status_code == 200
    ext.shutdown(drain=False)
    ext.shutdown(drain=False)  # idempotent
    assert not ext.system.alive
    assert app.test_client().get("/health/ready").status_code == 503


def test_app_does_not_stop_a_system_it_was_given(job_system: JobSystem):
    app = make_app(job_system)
    extension(app).shutdown()
    assert job_system.alive
