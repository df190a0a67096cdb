"""LOG_FORMAT=json: one JSON object per line; every job lifecycle event logged exactly once."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from actors import JobSystem
from actors.model.errors import SettingsError
from tests.gunicorn_server import REPO, GunicornServer
from tests.standin import PythonApiStandIn, Reply
from tests.web_support import QUESTION, VIDEO, make_app, wait_job
from web.settings import load_settings, log_formatter

FIELDS = ("job_id", "kind", "attempt", "event")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """Every record of the test, as the JSON lines LOG_FORMAT=json writes."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(log_formatter("json"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)

LAPTOP = {"APP_ENV": "development"}  # authentication off, asked for explicitly


def entries(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def events_of(lines: list[dict[str, Any]], job_id: str) -> Counter[tuple[str, int]]:
    return Counter((e["event"], e["attempt"]) for e in lines if e.get("job_id") == job_id)


def test_each_lifecycle_event_is_logged_once_with_its_fields(
        job_system: JobSystem, standin: PythonApiStandIn, json_log: io.StringIO) -> None:
    client: FlaskClient = make_app(job_system).test_client()
    standin.script("ask-question", Reply(status=503))  # attempt 1 fails, is retried
    standin.script("process-video", Reply(status=400))  # a permanent failure
    question = client.post("/api/interactions/i-1/questions", json=QUESTION)
    video = client.post("/api/video/process", json=VIDEO)
    assert wait_job(client, question.headers["Location"], standin)["status"] == "completed"
    assert wait_job(client, video.headers["Location"], standin)["status"] == "failed"
    assert client.post(video.headers["Location"] + "/retry").status_code == 202
    assert wait_job(client, video.headers["Location"], standin)["status"] == "completed"
    assert client.post("/api/queue/qa/pause").status_code == 200
    waiting = client.post("/api/interactions/i-2/questions", json=QUESTION)
    assert client.delete(waiting.headers["Location"]).status_code == 200

    lines = entries(json_log)
    ids = {name: reply.json["data"]["jobId"] for name, reply in
           (("question", question), ("video", video), ("waiting", waiting))}
    assert events_of(lines, ids["question"]) == Counter({
        ("job.accepted", 0): 1, ("job.started", 1): 1, ("job.retrying", 1): 1,
        ("job.started", 2): 1, ("job.completed", 2): 1})
    assert events_of(lines, ids["video"]) == Counter({
        ("job.accepted", 0): 1, ("job.started", 1): 2, ("job.failed", 1): 1,
        ("job.requeued", 0): 1, ("job.completed", 1): 1})
    assert events_of(lines, ids["waiting"]) == Counter({
        ("job.accepted", 0): 1, ("job.cancelled", 0): 1})

    for entry in lines:
        assert {"time", "level", "logger", "thread", "message"} <= set(entry)
        if "event" in entry:
            assert all(entry.get(name) is not None for name in FIELDS), entry
            assert entry["job_id"] in entry["message"]
            assert entry["kind"] in ("video", "qa")
    # Other lines naming a job are requests (who asked), never a second lifecycle line.
    for job_id in ids.values():
        others = [e["message"] for e in lines if job_id in e["message"] and "event" not in e]
        assert all("requested by" in message for message in others), others


def test_configure_logging_writes_json_lines() -> None:
    code = (
        "import logging\n"
        "from actors.model.jobs import JobKind\n"
        "from actors.runtime.logs import job_fields\n"
        "from web.settings import WebSettings, configure_logging\n"
        "configure_logging(WebSettings(log_format='json', log_level='debug'))\n"
        "logging.getLogger('actors.demo').info('job abc started', "
        "extra=job_fields('abc', JobKind.QA, 'started', 1))\n"
        "logging.getLogger('web.demo').debug('plain line')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=30, check=True)
    first, second = (json.loads(line) for line in done.stderr.splitlines())
    assert first["event"] == "job.started" and first["job_id"] == "abc"
    assert first["kind"] == "qa" and first["attempt"] == 1 and first["level"] == "info"
    assert first["thread"] == "MainThread" and first["logger"] == "actors.demo"
    assert second["message"] == "plain line" and "event" not in second


def test_text_is_the_default_format() -> None:
    code = (
        "import logging\n"
        "from web.settings import WebSettings, configure_logging\n"
        "configure_logging(WebSettings())\n"
        "logging.getLogger('web.demo').info('hello')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=30, check=True)
    assert done.stderr.rstrip().endswith("INFO [MainThread] web.demo: hello")


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_gunicorn_writes_one_json_object_per_line(standin: PythonApiStandIn,
                                                  tmp_path: Path) -> None:
    env = {"PYTHON_API_BASE_URL": standin.url, "QUEUE_STORE": "memory", "LOG_FORMAT": "json"}
    server = GunicornServer(tmp_path, env).start()
    try:
        reply = server.request("POST", "/api/interactions/i-1/questions", json=QUESTION)
        assert reply.status_code == 202
        job_id = reply.json()["data"]["jobId"]
        assert server.wait_until(lambda: '"event": "job.completed"' in server.log(), 10)
    finally:
        server.stop()
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert events_of(lines, job_id) == Counter({
        ("job.accepted", 0): 1, ("job.started", 1): 1, ("job.completed", 1): 1})
    loggers = {entry["logger"] for entry in lines}
    assert {"gunicorn.error", "gunicorn.access", "actors.stores.registry"} <= loggers
    assert any("job system stopped" in entry["message"] for entry in lines)


def test_log_format_is_checked() -> None:
    json_logs = load_settings({**LAPTOP, "LOG_FORMAT": "JSON"}, dotenv_path=None)
    assert json_logs.web.log_format == "json"
    assert load_settings(LAPTOP, dotenv_path=None).web.log_format == "text"
    with pytest.raises(SettingsError, match="LOG_FORMAT"):
        load_settings({**LAPTOP, "LOG_FORMAT": "xml"}, dotenv_path=None)
