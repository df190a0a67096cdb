"""SIGTERM under load: the server drains and exits in time; queued jobs survive the restart.

Clients keep submitting while the master gets SIGTERM. The worker must refuse new jobs
(503), let the running ones finish within ``QUEUE_DRAIN_TIMEOUT_MS``, stop the job system
and exit before gunicorn's graceful timeout would kill it. With the SQLite store, a
second server on the same file then runs every job that was accepted and still queued.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.gunicorn_server import GunicornServer
from tests.standin import PythonApiStandIn
from tests.test_load_outage import asked, finished, status
from tests.url_corpus import youtube_url

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(240)]

CLIENTS = 16
DRAIN_MS = 8000
GRACEFUL_S = DRAIN_MS / 1000 + 5  # gunicorn.conf.py: graceful_timeout = drain + 5 s
MAX_ATTEMPTS = 3


def env(standin: PythonApiStandIn, db: Path) -> dict[str, str]:
    return {
        "PYTHON_API_BASE_URL": standin.url,
        "QUEUE_STORE": "sqlite",
        "QUEUE_DB_PATH": str(db),
        "QUEUE_DRAIN_TIMEOUT_MS": str(DRAIN_MS),
        "QUEUE_RETRY_ATTEMPTS": str(MAX_ATTEMPTS),
        "QUEUE_BACKOFF_DELAY": "50",
        "QUEUE_BACKOFF_MAX_MS": "200",
        "RATE_LIMIT_MAX_REQUESTS": "1000000",
        "PYTHON_API_STATUS_TIMEOUT_MS": "300",
        "GUNICORN_ACCESS_LOG": "",
    }


def client(url: str, number: int, stop: threading.Event, tally: dict[str, Any]) -> None:
    """Submit until the server goes away (or ``stop``); record what was accepted."""
    session = requests.Session()
    n = 0
    while not stop.is_set():
        n += 1
        if n % 4 == 0:
            key = youtube_url(f"term{number:02d}x{n:04d}")
            path, body = "/api/video/process", {"video_url": key, "company_name": "acme",
                                                "source": "youtube"}
        else:
            key = f"client {number} question {n}?"
            path, body = f"/api/interactions/term-{number}/questions", {
                "question": key, "companyName": "acme"}
        try:
            reply = session.post(url + path, json=body, timeout=30)
        except requests.ConnectionError:
            break  # the listener is closed: the server is on its way out
        tally["statuses"][reply.status_code] += 1
        if reply.status_code == 202:
            tally["accepted"][reply.headers["Location"]] = key
        elif reply.status_code == 503:
            stop.wait(0.05)  # draining: refused, as designed
    session.close()


def test_sigterm_under_load_drains_and_keeps_queued_jobs(tmp_path: Path) -> None:
    db = tmp_path / "data" / "jobs.sqlite3"
    tally: dict[str, Any] = {"statuses": Counter(), "accepted": {}}
    stop = threading.Event()
    with PythonApiStandIn() as standin:
        standin.set_latency("ask-question", 0.3)
        standin.set_latency("process-video", 1.0)
        first = GunicornServer(tmp_path, env(standin, db)).start()
        clients = [threading.Thread(target=client, args=(first.url, n, stop, tally))
                   for n in range(CLIENTS)]
        try:
            for thread in clients:
                thread.start()
            assert standin.wait_calls("ask-question", 20, timeout=30)
            assert first.wait_until(lambda: status(first)["queues"]["qa"]["waiting"] > 10, 30)
            first.signal(signal.SIGTERM)
            code = first.wait_exit(timeout_s=GRACEFUL_S + 30)
            log = first.log()
        finally:
            stop.set()
            for thread in clients:
                thread.join(30)
            first.stop()
        before_restart = asked(standin)

        second = GunicornServer(tmp_path, env(standin, db)).start()
        try:
            done = finished(second, tally["accepted"], 120)
        finally:
            second.stop()
        seen = asked(standin)

    assert code == 0, log[-3000:]
    assert "draining: new jobs are refused" in log
    assert "job system stopped" in log, log[-3000:]  # drained before the graceful timeout
    assert "drain deadline" not in log, log[-3000:]
    assert set(tally["statuses"]) <= {202, 429, 503}, tally["statuses"]
    keys = set(tally["accepted"].values())
    assert keys - set(before_restart), "no job was left queued at the SIGTERM"
    assert all(job["status"] == "completed" for job in done.values()), done
    assert all(job["attempts"] <= MAX_ATTEMPTS for job in done.values()), done
    assert keys <= set(seen)  # nothing accepted was lost
    assert max(seen[key] for key in keys) <= MAX_ATTEMPTS
