"""Faults under way: the Python API down for 10 s, and memory pressure reported mid-run.

Both run the real server under gunicorn against the stand-in, and wait on what can be
observed (the stand-in's calls, the queue status over HTTP), never on sleeps; the one
fixed wait is the outage itself. Both also check, counted from the stand-in's own side for the
whole run, that the Python API is never processing more calls per kind than the limits
(DESIGN.md §8, I1).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.gunicorn_server import GunicornServer
from tests.standin import PythonApiStandIn
from tests.url_corpus import youtube_url

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(180)]

MAX_ATTEMPTS = 4
OUTAGE_S = 10.0
TERMINAL = ("completed", "failed", "cancelled")
LIMITS = {"ask-question": 4, "process-video": 2}  # QUEUE_MAX_CONCURRENT_QA below, videos' default


def env(standin: PythonApiStandIn, **extra: str) -> dict[str, str]:
    return {
        "PYTHON_API_BASE_URL": standin.url,
        "QUEUE_STORE": "memory",
        "QUEUE_RETRY_ATTEMPTS": str(MAX_ATTEMPTS),
        # Backoff 3 s, 6 s, 12 s (less up to 20% jitter): a job that fails its first attempt
        # as the outage starts still has attempts left 16.8 s later.
        "QUEUE_BACKOFF_DELAY": "3000",
        "QUEUE_BACKOFF_MAX_MS": "20000",
        "QUEUE_MAX_CONCURRENT_QA": "4",
        "QUEUE_ADAPTIVE_INITIAL_CONCURRENCY": "6",  # as the static limits, from the start
        "PYTHON_API_CONNECT_TIMEOUT_MS": "1000",
        "PYTHON_API_STATUS_TIMEOUT_MS": "300",
        "RATE_LIMIT_MAX_REQUESTS": "1000000",  # the test polls the job API
        "GUNICORN_ACCESS_LOG": "",
        **extra,
    }


def submit(server: GunicornServer, tag: str, questions: int, videos: int = 0
           ) -> dict[str, str]:
    """Submit jobs; return {location: the question or video URL the stand-in will see}."""
    jobs: dict[str, str] = {}
    for n in range(videos):
        url = youtube_url(f"{tag}v{n:04d}")
        reply = server.request("POST", "/api/video/process", json={
            "video_url": url, "company_name": "acme", "source": "youtube"})
        assert reply.status_code == 202, reply.text
        jobs[reply.headers["Location"]] = url
    for n in range(questions):
        question = f"{tag} question {n}?"
        reply = server.request("POST", f"/api/interactions/{tag}/questions",
                               json={"question": question, "companyName": "acme"})
        assert reply.status_code == 202, reply.text
        jobs[reply.headers["Location"]] = question
    return jobs


def finished(server: GunicornServer, jobs: dict[str, str], timeout_s: float
             ) -> dict[str, dict[str, Any]]:
    """Poll until every job is finished; return each job's data."""
    found: dict[str, dict[str, Any]] = {}

    def done() -> bool:
        for location in jobs:
            if found.get(location, {}).get("status") not in TERMINAL:
                reply = server.request("GET", location)
                assert reply.status_code == 200, reply.text
                found[location] = reply.json()["data"]
        return all(job["status"] in TERMINAL for job in found.values())

    assert server.wait_until(done, timeout_s, 0.2), found
    return found


def status(server: GunicornServer) -> dict[str, Any]:
    reply = server.request("GET", "/api/queue/status")
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["data"])


def within_limits(standin: PythonApiStandIn) -> None:
    """The stand-in, counting from its own side since it started, never exceeded LIMITS."""
    unanswered = {ep: standin.max_unanswered(ep) for ep in LIMITS}
    assert all(unanswered[ep] <= limit for ep, limit in LIMITS.items()), (unanswered, LIMITS)


def asked(*standins: PythonApiStandIn) -> Counter[str]:
    """How often each question and video reached the Python API, over every stand-in."""
    seen: Counter[str] = Counter()
    for standin in standins:
        seen.update(c.body["question"] for c in standin.calls("ask-question"))
        seen.update(c.body["video_url"] for c in standin.calls("process-video"))
    return seen


def test_python_api_down_for_ten_seconds(tmp_path: Path) -> None:
    first = PythonApiStandIn().start()
    second = PythonApiStandIn("127.0.0.1", first.port)  # the same address, once it is back
    first.set_latency("ask-question", 0.2)
    first.set_latency("process-video", 0.5)
    server = GunicornServer(tmp_path, env(first)).start()
    try:
        jobs = submit(server, "outage", questions=30, videos=4)
        assert first.wait_for(lambda s: sum(c.finished_at is not None
                                            for c in s.calls("ask-question")) >= 4, 30)
        first.stop()  # down: calls in flight are dropped, new ones refused
        down_at = time.monotonic()
        assert server.wait_until(
            lambda: sum(q["retrying"] for q in status(server)["queues"].values()) > 0, 10)
        threading.Event().wait(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))
        second.start()
        second.set_latency("ask-question", 0.05)
        done = finished(server, jobs, 90)
    finally:
        server.stop()
        first.stop()
        second.stop()

    assert all(job["status"] == "completed" for job in done.values()), done
    assert all(job["attempts"] <= MAX_ATTEMPTS for job in done.values()), done
    assert any(job["attempts"] > 1 for job in done.values())  # the outage cost attempts
    seen = asked(first, second)
    assert set(seen) == set(jobs.values())  # every accepted job reached the Python API
    assert max(seen.values()) <= MAX_ATTEMPTS
    assert len(second.calls()) > 0  # the waiting jobs resumed once it was back
    within_limits(first)
    within_limits(second)


def test_memory_pressure_pauses_video_while_questions_go_on(tmp_path: Path) -> None:
    with PythonApiStandIn() as standin:
        standin.set_latency("process-video", 0.5)
        standin.set_latency("ask-question", 0.05)
        server = GunicornServer(tmp_path, env(standin, MEMORY_CHECK_INTERVAL_MS="100")).start()
        try:
            videos = submit(server, "pressure", questions=0, videos=20)
            assert standin.wait_calls("process-video", 2, timeout=20)
            standin.set_memory(1950)  # above MEMORY_THRESHOLD_MB and QUEUE_MAX_MEMORY_MB

            def paused_and_idle() -> bool:
                data = status(server)
                video = data["queues"]["video"]
                return bool(video["paused"] and video["activeJobs"] == 0
                            and data["memory"]["admissionRefused"])

            assert server.wait_until(paused_and_idle, 20), status(server)
            video_calls = len(standin.calls("process-video"))
            waiting = status(server)["queues"]["video"]["waiting"]
            refused = server.request("POST", "/api/video/process", json={
                "video_url": youtube_url("pressure-late"), "company_name": "acme",
                "source": "youtube"})
            questions = finished(server, submit(server, "pressure", questions=10), 60)
            during = status(server)["queues"]["video"]
            video_calls_during = len(standin.calls("process-video"))
            standin.set_memory(500)
            done = finished(server, videos, 90)
            after = status(server)["queues"]["video"]
            late = server.request("POST", "/api/video/process", json={
                "video_url": youtube_url("pressure-late"), "company_name": "acme",
                "source": "youtube"})
        finally:
            server.stop()

    assert waiting > 0
    assert refused.status_code == 503 and "Retry-After" in refused.headers, refused.text
    assert all(job["status"] == "completed" for job in questions.values()), questions
    assert video_calls_during == video_calls  # no video reached the Python API while paused
    assert during["paused"] and during["waiting"] == waiting and during["activeJobs"] == 0
    assert all(job["status"] == "completed" for job in done.values()), done
    assert not after["paused"]
    assert late.status_code == 202, late.text
    within_limits(standin)
