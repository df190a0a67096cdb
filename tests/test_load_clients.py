"""Load: 200 concurrent clients against the real server while the Python API misbehaves.

The stand-in answers 20% of calls with 500 and lets 5% run well past ``QUEUE_JOB_TIMEOUT_MS``
(1.5 times it) but end before ``QUEUE_ABANDONED_HOLD_MS`` (4 times it). Like uvicorn, the
stand-in goes on processing a request whose client has left, and counts it until it ends.
The clients run in a child process, so that the stand-in, which counts what it sees, does not
share a GIL with 200 busy threads. Checked: the API answers only 202 and the designed 429
(queue full) and 503; every accepted job reaches a terminal state within its attempt budget;
counted from the stand-in's own side, for the whole run and with no allowance for our
deadline, it is never processing more calls per kind than the configured limits (DESIGN.md
§8, I1); the server's RSS stays bounded.
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.gunicorn_server import GunicornServer
from tests.standin import Call, PythonApiStandIn, Reply
from tests.url_corpus import youtube_url

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(300)]

CLIENTS = 200
LOAD_S = float(os.environ.get("LOAD_TEST_SECONDS", "30"))
LIMITS = {"ask-question": 10, "process-video": 2}  # the defaults of QUEUE_MAX_CONCURRENT_*
TIMEOUT_S = 0.5
MAX_ATTEMPTS = 3
DESIGNED = {202, 429, 503}
LATENCY_S = {"ask-question": 0.1, "process-video": 0.2}  # so that the limits bind
# A slow call runs well past our deadline but ends before the hold, so the backend must keep
# its slot until the answer comes: none is cut at the hold (the one case, by design, where
# the Python API may go on beyond our count).
HOLD_S = TIMEOUT_S * 4
SLOW_S = TIMEOUT_S * 1.5


def env(standin: PythonApiStandIn) -> dict[str, str]:
    return {
        "PYTHON_API_BASE_URL": standin.url,
        "QUEUE_STORE": "memory",
        "QUEUE_JOB_TIMEOUT_MS": str(int(TIMEOUT_S * 1000)),
        "QUEUE_ABANDONED_HOLD_MS": str(int(HOLD_S * 1000)),
        "QUEUE_RETRY_ATTEMPTS": str(MAX_ATTEMPTS),
        "QUEUE_BACKOFF_DELAY": "50",
        "QUEUE_BACKOFF_MAX_MS": "200",
        "QUEUE_MAX_WAITING_QA": "300",
        "QUEUE_MAX_WAITING_VIDEOS": "20",
        "QUEUE_RETENTION_MAX_JOBS": "1000000",
        "RATE_LIMIT_MAX_REQUESTS": "100000000",
        "PYTHON_API_STATUS_TIMEOUT_MS": "300",
        "GUNICORN_ACCESS_LOG": "",
        "LOG_LEVEL": "warning",
    }


def one_client(port: int, number: int, until: float, tally: dict[str, Any]) -> None:
    """Submit questions (and every fifth time a video) until ``until``; tally the answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    backoff = threading.Event()
    n = 0
    while time.monotonic() < until:
        n += 1
        if n % 5 == 0:
            path = "/api/video/process"
            body = {"video_url": youtube_url(f"ld{number:03d}x{n:05d}"),
                    "company_name": "acme", "source": "youtube"}
        else:
            path = f"/api/interactions/load-{number}/questions"
            body = {"question": f"Question {number}-{n}?", "companyName": "acme"}
        try:
            conn.request("POST", path, json.dumps(body),
                         {"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = reply.read()
        except (OSError, http.client.HTTPException) as exc:
            tally["errors"].append(f"{type(exc).__name__}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        tally["statuses"][str(reply.status)] += 1
        if reply.status == 202:
            job = json.loads(data)["data"]
            tally["accepted"].append([job["type"], job["jobId"]])
        elif reply.status not in DESIGNED:
            tally["unexpected"].append(f"{reply.status} {path}: {data[:200]!r}")
        else:
            backoff.wait(0.02)  # a full queue: let it drain a little
    conn.close()


def drive_clients(port: int, clients: int, seconds: float, out: str) -> None:
    """Run ``clients`` threads for ``seconds`` (in a child process); write the tally."""
    tally: dict[str, Any] = {"statuses": Counter(), "accepted": [], "errors": [],
                             "unexpected": []}
    until = time.monotonic() + seconds
    threads = [threading.Thread(target=one_client, args=(port, n, until, tally))
               for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + 120)
    Path(out).write_text(json.dumps(tally))


def pattern(endpoint: str) -> list[Reply]:
    """Twenty replies: four 500s, one past the deadline (not the hold), fifteen answers."""
    return ([Reply(status=500)] * 4 + [Reply(delay_s=SLOW_S)]
            + [Reply(delay_s=LATENCY_S[endpoint])] * 15)


def peak_in_flight(calls: list[Call]) -> int:
    """Return the most calls in flight at once by the stand-in's own times, no discount.

    A call counts from its start to its end at the stand-in (an unfinished one to the end
    of time), whether or not our side had left it. Unlike ``max_unanswered`` it counts the
    writing of an answer too, so a stand-in thread slow to finish a write on a loaded
    machine can push it above the limit: reported, not asserted.
    """
    events = []
    for call in calls:
        end = call.finished_at if call.finished_at is not None else float("inf")
        events += [(call.started_at, 1), (end, -1)]
    peak = current = 0
    for _, step in sorted(events):  # at equal times an end (-1) sorts before a start
        current += step
        peak = max(peak, current)
    return peak


def key(call: Call) -> str:
    """The question or video a call is about."""
    return str(call.body["question" if call.endpoint == "ask-question" else "video_url"])


def self_overlaps(calls: list[Call]) -> int:
    """How many calls started while an earlier call about the same job was still running."""
    running_until: dict[str, float] = {}
    overlaps = 0
    for call in sorted(calls, key=lambda c: c.started_at):
        end = call.finished_at if call.finished_at is not None else float("inf")
        if running_until.get(key(call), float("-inf")) > call.started_at:
            overlaps += 1
        running_until[key(call)] = max(end, running_until.get(key(call), float("-inf")))
    return overlaps


def worker_rss_mb(server: GunicornServer) -> float:
    assert server.proc is not None
    (worker,) = psutil.Process(server.proc.pid).children()
    return float(worker.memory_info().rss) / 2**20


def queues(server: GunicornServer) -> dict[str, Any]:
    reply = server.request("GET", "/api/queue/status")
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["data"]["queues"])


def test_200_clients_against_a_failing_python_api(tmp_path: Path) -> None:
    scripted = {"ask-question": 40_000, "process-video": 4_000}
    with PythonApiStandIn() as standin:
        for endpoint, count in scripted.items():
            standin.set_latency(endpoint, LATENCY_S[endpoint])
            replies = pattern(endpoint)
            standin.script(endpoint, *(replies[i % len(replies)] for i in range(count)))
        server = GunicornServer(tmp_path, env(standin)).start()
        out = tmp_path / "clients.json"
        child = multiprocessing.get_context("spawn").Process(
            target=drive_clients, args=(server.port, CLIENTS, LOAD_S, str(out)))
        try:
            rss = [worker_rss_mb(server)]
            child.start()
            sampling = threading.Event()
            while child.is_alive() and not sampling.wait(0.5):
                rss.append(worker_rss_mb(server))
                child.join(0)
            child.join(LOAD_S + 150)
            assert child.exitcode == 0
            tally = json.loads(out.read_text())
            calls = {ep: len(standin.calls(ep)) for ep in LIMITS}
            # The stand-in keeps failing and slowing calls down while the queue drains: the
            # whole run, up to every job terminal, is under the faults and counted.

            def settled() -> bool:  # an abandoned call's job is not done either
                return all(q["waiting"] + q["activeJobs"] + q.get("abandonedCalls", 0)
                           + q["retrying"] == 0 for q in queues(server).values())

            assert server.wait_until(settled, 120, 0.25), queues(server)
            final = queues(server)
            accepted = Counter(kind for kind, _ in tally["accepted"])
            sample = random.Random(7).sample(tally["accepted"], min(200, len(tally["accepted"])))
            jobs = [server.request("GET", f"/api/queue/jobs/{kind}/{job_id}").json()["data"]
                    for kind, job_id in sample]
            rss.append(worker_rss_mb(server))
            # Counted by the stand-in since it started: the whole run, from its own side.
            unanswered = {ep: standin.max_unanswered(ep) for ep in LIMITS}
            peaks = {ep: peak_in_flight(standin.calls(ep)) for ep in LIMITS}
            overlaps = {ep: self_overlaps(standin.calls(ep)) for ep in LIMITS}
            slow = {ep: sum(c.finished_at is not None and c.finished_at - c.started_at >= SLOW_S
                            for c in standin.calls(ep)) for ep in LIMITS}
        finally:
            if child.is_alive():
                child.kill()
            server.stop()

    print(f"answers {tally['statuses']}, accepted {dict(accepted)}, calls {calls}, "
          f"slow calls {slow}, stand-in max unanswered {unanswered}, "
          f"stand-in peak in flight {peaks}, a job's call beside its own earlier one {overlaps}, "
          f"worker RSS {rss[0]:.0f}-{max(rss):.0f} MB")  # shown on failure or with -s
    assert not tally["errors"], tally["errors"][:10]
    assert not tally["unexpected"], tally["unexpected"][:10]
    assert set(tally["statuses"]) <= {str(s) for s in DESIGNED}, tally["statuses"]
    assert accepted["qa"] > 100 and accepted["video"] > 10, tally["statuses"]
    assert calls["ask-question"] > 200, calls  # the failure pattern was really exercised
    for kind, count in accepted.items():
        q = final[kind]
        assert q["completed"] + q["failed"] + q["cancelled"] == count, (kind, q, count)
    assert all(j["status"] in ("completed", "failed") for j in jobs), jobs
    assert all(1 <= j["attempts"] <= MAX_ATTEMPTS for j in jobs), jobs
    assert all(slow.values()), slow  # calls past the deadline were really exercised
    for endpoint, limit in LIMITS.items():
        assert unanswered[endpoint] <= limit, (endpoint, unanswered, peaks)
    assert max(rss) < rss[0] + 200, f"worker RSS grew from {rss[0]:.0f} to {max(rss):.0f} MB"
