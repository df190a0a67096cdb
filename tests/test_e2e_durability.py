"""End to end: SIGKILL the server mid-run, restart it on the same SQLite file, lose nothing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.gunicorn_server import GunicornServer
from tests.standin import PythonApiStandIn
from tests.url_corpus import youtube_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MAX_ATTEMPTS = 3


def env(standin: PythonApiStandIn, db: Path) -> dict[str, str]:
    return {
        "PYTHON_API_BASE_URL": standin.url,
        "QUEUE_STORE": "sqlite",
        "QUEUE_DB_PATH": str(db),
        "QUEUE_RETRY_ATTEMPTS": str(MAX_ATTEMPTS),
        "QUEUE_MAX_CONCURRENT_VIDEOS": "2",
        "QUEUE_MAX_CONCURRENT_QA": "2",
        # Both kinds at their maximums from the start (the crash needs calls of each running).
        "QUEUE_ADAPTIVE_INITIAL_CONCURRENCY": "4",
        "QUEUE_BACKOFF_DELAY": "50",
        "QUEUE_BACKOFF_MAX_MS": "200",
        "PYTHON_API_STATUS_TIMEOUT_MS": "300",
        "GUNICORN_ACCESS_LOG": "",
        # Crashed calls run again once their hold is over (the Python API may still be at
        # them): short here, and polls do not run into the rate limit meanwhile.
        "QUEUE_JOB_TIMEOUT_MS": "2000",
        "QUEUE_ABANDONED_HOLD_MS": "2000",
        "RATE_LIMIT_MAX_REQUESTS": "100000",
    }


def test_sigkill_mid_run_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "data" / "jobs.sqlite3"
    with PythonApiStandIn() as standin:
        first = GunicornServer(tmp_path, env(standin, db)).start()
        accepted: list[tuple[str, str]] = []  # (location, video url or question)
        try:
            standin.hold("process-video")
            standin.hold("ask-question")
            for i in range(5):
                url = youtube_url(f"crash-{i}")
                reply = first.request("POST", "/api/video/process", json={
                    "video_url": url, "company_name": "acme", "source": "youtube"})
                assert reply.status_code == 202, reply.text
                accepted.append((reply.headers["Location"], url))
            for i in range(6):
                question = f"Question {i}?"
                reply = first.request("POST", f"/api/interactions/i{i}/questions",
                                      json={"question": question, "companyName": "acme"})
                assert reply.status_code == 202, reply.text
                accepted.append((reply.headers["Location"], question))
            assert standin.wait_in_flight("process-video", 2, timeout=10)
            assert standin.wait_in_flight("ask-question", 2, timeout=10)
            first.kill_all()  # a crash: no drain, no shutdown code
        finally:
            first.stop()
        standin.release("process-video")
        standin.release("ask-question")

        second = GunicornServer(tmp_path, env(standin, db)).start()
        try:
            jobs: dict[str, dict[str, Any]] = {}

            def all_finished() -> bool:
                for location, _ in accepted:
                    reply = second.request("GET", location)
                    assert reply.status_code == 200, f"{location}: {reply.text}"  # id resolves
                    jobs[location] = reply.json()["data"]
                return all(j["status"] in ("completed", "failed") for j in jobs.values())

            assert second.wait_until(all_finished, 60), jobs
        finally:
            second.stop()

        assert all(job["status"] == "completed" for job in jobs.values()), jobs
        assert all(job["attempts"] <= MAX_ATTEMPTS for job in jobs.values())
        interrupted = [job for job in jobs.values() if job["attempts"] == 2]
        assert len(interrupted) == 4  # the two videos and two questions running at the kill
        assert all("interrupted" in (job["lastError"] or "") for job in interrupted)
        calls = Counter(c.body["video_url"] for c in standin.calls("process-video"))
        calls.update(c.body["question"] for c in standin.calls("ask-question"))
        assert set(calls) == {key for _, key in accepted}  # every accepted job reached the API
        assert max(calls.values()) <= MAX_ATTEMPTS
