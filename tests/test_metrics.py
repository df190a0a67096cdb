"""GET /metrics: the actors' counters, snapshot gauges, HTTP counts; access; a separate bind."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from actors import JobSystem
from actors.model.errors import SettingsError
from tests.gunicorn_server import GunicornServer, free_port
from tests.standin import PythonApiStandIn, Reply
from tests.web_support import QUESTION, SECRET, VIDEO, bearer, make_app, wait_job
from web.metrics import serve_separately, stop_separate_server
from web.settings import load_settings

ADMIN = bearer("root", role="admin")
MIB = 1024 * 1024

LAPTOP = {"APP_ENV": "development"}  # authentication off, asked for explicitly


def scrape(client: FlaskClient, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple[
        tuple[str, str], ...]], float]:
    """Return every sample of one scrape as {(name, sorted labels): value}."""
    reply = client.get("/metrics", headers=headers or {})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(reply.get_data(as_text=True))


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def app(job_system: JobSystem) -> Flask:
    return make_app(job_system)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_job_counters_and_histograms_from_the_actors(client: FlaskClient,
                                                    standin: PythonApiStandIn) -> None:
    standin.script("ask-question", Reply(status=503))  # the first attempt is retried
    question = client.post("/api/interactions/i-1/questions", json=QUESTION)
    video = client.post("/api/video/process", json=VIDEO)
    assert wait_job(client, question.headers["Location"], standin)["status"] == "completed"
    assert wait_job(client, video.headers["Location"], standin)["status"] == "completed"
    samples = scrape(client)
    assert value(samples, "qudemo_jobs_submitted_total", kind="qa") == 1
    assert value(samples, "qudemo_jobs_submitted_total", kind="video") == 1
    assert value(samples, "qudemo_jobs_finished_total", kind="qa", state="completed") == 1
    assert value(samples, "qudemo_jobs_finished_total", kind="video", state="completed") == 1
    assert value(samples, "qudemo_jobs_finished_total", kind="qa", state="failed") == 0
    assert value(samples, "qudemo_jobs_retried_total", kind="qa") == 1
    assert value(samples, "qudemo_job_attempt_duration_seconds_count", kind="qa") == 2
    assert value(samples, "qudemo_job_queue_wait_seconds_count", kind="video") == 1


def test_waiting_paused_and_cancelled(client: FlaskClient) -> None:
    assert client.post("/api/queue/video/pause").status_code == 200
    video = client.post("/api/video/process", json=VIDEO)
    samples = scrape(client)
    assert value(samples, "qudemo_jobs_waiting", kind="video") == 1
    assert value(samples, "qudemo_queue_paused", kind="video") == 1
    assert value(samples, "qudemo_queue_paused", kind="qa") == 0
    assert value(samples, "qudemo_queue_pause_reason", kind="video", reason="operator") == 1
    assert value(samples, "qudemo_queue_pause_reason", kind="video", reason="memory") == 0
    assert client.delete(video.headers["Location"]).status_code == 200
    samples = scrape(client)
    assert value(samples, "qudemo_jobs_waiting", kind="video") == 0
    assert value(samples, "qudemo_jobs_finished_total", kind="video", state="cancelled") == 1


def test_running_jobs_pools_memory_and_the_python_api(client: FlaskClient,
                                                      standin: PythonApiStandIn,
                                                      job_system: JobSystem) -> None:
    job_system.check_memory()  # one reading now (the fixture's watchdog timer is an hour)
    standin.hold("ask-question")
    try:
        question = client.post("/api/interactions/i-2/questions", json=QUESTION)
        assert standin.wait_in_flight("ask-question", 1)
        samples = scrape(client)
        assert value(samples, "qudemo_jobs_running", kind="qa") == 1
        assert value(samples, "qudemo_jobs_running_oldest_seconds", kind="qa") >= 0
        assert value(samples, "qudemo_workers_busy", kind="qa") == 1
        assert value(samples, "qudemo_python_api_in_flight", instance=standin.url,
                     kind="qa") == 1
    finally:
        standin.release("ask-question")
    wait_job(client, question.headers["Location"], standin)
    settings = job_system.settings
    assert value(samples, "qudemo_up") == 1 and value(samples, "qudemo_accepting") == 1
    assert value(samples, "qudemo_workers", kind="video") == settings.max_concurrent_videos
    assert value(samples, "qudemo_workers_alive", kind="qa") == settings.max_concurrent_qa
    assert value(samples, "qudemo_worker_restarts_total", kind="qa") == 0
    assert value(samples, "qudemo_queue_max_concurrent", kind="qa") == settings.max_concurrent_qa
    assert value(samples, "qudemo_memory_python_api_bytes") == 500 * MIB  # the stand-in's
    assert value(samples, "qudemo_memory_process_bytes") > 0
    assert value(samples, "qudemo_memory_threshold_bytes") == settings.memory_threshold_mb * MIB
    assert value(samples, "qudemo_memory_max_bytes") == settings.max_memory_mb * MIB
    assert value(samples, "qudemo_memory_pressure") == 0
    assert value(samples, "qudemo_python_api_up", instance=standin.url) == 1
    assert value(samples, "qudemo_python_api_available", instance=standin.url) == 1
    assert value(samples, "qudemo_actor_mailbox_messages", actor="Dispatcher") is not None
    assert value(samples, "process_resident_memory_bytes") > 0


def test_http_requests_are_counted_by_route_not_path(client: FlaskClient) -> None:
    for job_id in ("0123456789abcdef", "fedcba9876543210"):
        assert client.get(f"/api/queue/jobs/qa/{job_id}").status_code == 404
    assert client.get("/no/such/path").status_code == 404
    assert client.open("/api/queue/status", method="BREW").status_code == 405
    samples = scrape(client)
    route = "/api/queue/jobs/{kind}/{job_id}"
    assert value(samples, "qudemo_http_requests_total", route=route, method="GET",
                 status="404") == 2
    assert value(samples, "qudemo_http_requests_total", route="unmatched", method="GET",
                 status="404") == 1
    assert value(samples, "qudemo_http_requests_total", route="unmatched", method="other",
                 status="405") == 1
    assert value(samples, "qudemo_http_request_duration_seconds_count", route=route,
                 method="GET") == 2
    routes = {dict(labels).get("route") for name, labels in samples
              if name == "qudemo_http_requests_total"}
    assert not any("0123456789abcdef" in str(r) for r in routes)


def test_a_stopped_job_system_is_reported_not_a_500(app: Flask, job_system: JobSystem) -> None:
    job_system.stop(drain=False)
    samples = scrape(app.test_client())
    assert value(samples, "qudemo_up") == 0
    assert value(samples, "qudemo_jobs_submitted_total", kind="qa") == 0  # counters stay


def test_access_admin_by_default_public_when_configured(job_system: JobSystem) -> None:
    client = make_app(job_system, jwt_secret=SECRET).test_client()
    assert client.get("/metrics").status_code == 401
    denied = client.get("/metrics", headers=bearer("alice"))
    assert denied.status_code == 403 and denied.json["success"] is False
    scrape(client, ADMIN)
    public = make_app(job_system, jwt_secret=SECRET, metrics_access="public").test_client()
    scrape(public)


def test_exempt_from_the_rate_limit(job_system: JobSystem) -> None:
    client = make_app(job_system, rate_limit_read_max_requests=2).test_client()
    for _ in range(5):
        reply = client.get("/metrics")
        assert reply.status_code == 200
        assert "RateLimit-Limit" not in reply.headers
    statuses = [client.get("/api/queue/status").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]  # the budget was not used by the scrapes


def test_separate_bind_serves_the_same_registry(job_system: JobSystem) -> None:
    port = free_port()
    app = make_app(job_system, metrics_port=port)
    assert app.test_client().get("/metrics").status_code == 404  # not on the main port
    server = serve_separately(app, "127.0.0.1")
    assert server is not None
    try:
        reply = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert reply.status_code == 200
        assert value(parse(reply.text), "qudemo_up") == 1
    finally:
        stop_separate_server(app)
    assert serve_separately(make_app(job_system), "127.0.0.1") is None  # no port: nothing


@pytest.fixture
def metrics_port_server(standin: PythonApiStandIn, tmp_path: Path) -> Iterator[GunicornServer]:
    port = free_port()
    env = {"PYTHON_API_BASE_URL": standin.url, "QUEUE_STORE": "memory", "JWT_SECRET": SECRET,
           "METRICS_PORT": str(port), "GUNICORN_ACCESS_LOG": ""}
    server = GunicornServer(tmp_path, env).start()
    server.metrics_url = f"http://127.0.0.1:{port}/metrics"  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_gunicorn_worker_serves_metrics_port(metrics_port_server: GunicornServer,
                                             standin: PythonApiStandIn) -> None:
    server = metrics_port_server
    url = server.metrics_url  # type: ignore[attr-defined]
    reply = server.request("POST", "/api/interactions/i-3/questions", json=QUESTION,
                           headers=bearer("alice"))
    assert reply.status_code == 202
    assert standin.wait_calls("ask-question", 1)
    found: dict[Any, float] = {}

    def counted() -> bool:
        found.update(parse(requests.get(url, timeout=5).text))  # no token on this port
        return value(found, "qudemo_jobs_finished_total", kind="qa", state="completed") == 1

    assert server.wait_until(counted, 10)
    assert value(found, "qudemo_http_requests_total", method="POST", status="202",
                 route="/api/interactions/{interaction_id}/questions") == 1
    main = server.request("GET", "/metrics", headers=ADMIN)
    assert main.status_code == 404 and "METRICS_PORT" in main.json()["error"]


def test_metrics_settings_are_checked() -> None:
    settings = load_settings({**LAPTOP, "METRICS_ACCESS": "Public", "METRICS_PORT": "9100"},
                             dotenv_path=None)
    assert settings.web.metrics_access == "public" and settings.web.metrics_port == 9100
    assert load_settings(LAPTOP, dotenv_path=None).web.metrics_port is None
    with pytest.raises(SettingsError) as refused:
        load_settings({**LAPTOP, "METRICS_ACCESS": "everyone", "METRICS_PORT": "99999"},
                      dotenv_path=None)
    assert "METRICS_ACCESS" in str(refused.value) and "METRICS_PORT" in str(refused.value)
