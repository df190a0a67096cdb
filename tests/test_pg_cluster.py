"""End to end: three gunicorn servers (four worker processes) share one PostgreSQL queue.

Each server is the shipped configuration (``gunicorn -c gunicorn.conf.py``)
with ``QUEUE_STORE=postgres`` on one schema of a real PostgreSQL; the first
runs two workers (``WEB_CONCURRENCY=2``), so one machine's workers and several
machines are both shown. Clients submit to every server; the stand-in of the
Python API counts the calls in flight and which jobs it was asked for. The
test reads the jobs table to see leases and owners (what an operator's SQL
would show); it never changes it.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from tests import pg_server
from tests.gunicorn_server import GunicornServer
from tests.standin import PythonApiStandIn
from tests.url_corpus import youtube_url

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

LIMITS = {"ask-question": 4, "process-video": 2}


def env(standin: PythonApiStandIn, url: str, **extra: str) -> dict[str, str]:
    return {
        "PYTHON_API_BASE_URL": standin.url,
        "QUEUE_STORE": "postgres",
        "DATABASE_URL": url,
        "QUEUE_MAX_CONCURRENT_QA": str(LIMITS["ask-question"]),
        "QUEUE_MAX_CONCURRENT_VIDEOS": str(LIMITS["process-video"]),
        # The static limits, shared by every server: what this file measures at the stand-in
        # (the adaptive capacity has its own tests, tests/test_adaptive_capacity.py).
        "QUEUE_ADAPTIVE_CONCURRENCY": "false",
        "QUEUE_MAX_WAITING_QA": "2000",
        "QUEUE_RETENTION_MAX_JOBS": "100000",
        "QUEUE_BACKOFF_DELAY": "50",
        "QUEUE_BACKOFF_MAX_MS": "200",
        "RATE_LIMIT_MAX_REQUESTS": "100000000",
        "PYTHON_API_STATUS_TIMEOUT_MS": "300",
        "GUNICORN_ACCESS_LOG": "",
        "LOG_LEVEL": "warning",
        "WEB_CONCURRENCY": "1",
        **extra,
    }


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[GunicornServer]]:
    """Servers the test starts into this list; all stopped afterwards."""
    servers: list[GunicornServer] = []
    yield servers
    for server in servers:
        server.stop()


def submit(server: GunicornServer, i: int) -> str:
    """Submit job ``i`` (every tenth a video, the others questions); return its location."""
    if i % 10 == 0:
        reply = server.request("POST", "/api/video/process", json={
            "video_url": youtube_url(f"c{i:04d}"), "company_name": "acme",
            "source": "youtube"})
    else:
        reply = server.request("POST", f"/api/interactions/c{i}/questions",
                               json={"question": f"Question {i}?", "companyName": "acme"})
    assert reply.status_code == 202, reply.text
    assert reply.headers["Location"].endswith("/" + reply.json()["data"]["jobId"])
    return reply.headers["Location"]


def submit_all(servers: list[GunicornServer], count: int) -> list[str]:
    """Submit ``count`` jobs, round robin over ``servers``; return their locations."""
    with ThreadPoolExecutor(max_workers=12) as pool:
        return list(pool.map(lambda i: submit(servers[i % len(servers)], i), range(count)))


def job_id(location: str) -> str:
    return location.rsplit("/", 1)[1]


def jobs(url: str) -> dict[str, dict[str, Any]]:
    """Every job row: state, attempts, last error, lease owner."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT id, state, attempts, last_error, lease_owner"
                            " FROM qudemo_jobs").fetchall()
    return {r[0]: {"state": r[1], "attempts": r[2], "last_error": r[3], "owner": r[4]}
            for r in rows}


def calls_per_job(standin: PythonApiStandIn) -> Counter[str]:
    """How often the stand-in was asked for each question or video."""
    seen: Counter[str] = Counter()
    for call in standin.calls("ask-question"):
        seen[call.body["question"]] += 1
    for call in standin.calls("process-video"):
        seen[call.body["video_url"]] += 1
    return seen


def overlapping_calls(standin: PythonApiStandIn) -> list[str]:
    """Jobs the stand-in was processing twice at the same time (from its own clock)."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for call in standin.calls():
        if call.endpoint in ("ask-question", "process-video"):
            key = call.body.get("question") or call.body.get("video_url")
            end = call.finished_at if call.finished_at is not None else float("inf")
            spans.setdefault(key, []).append((call.started_at, end))
    found = []
    for key, times in spans.items():
        times.sort()
        if any(later[0] < earlier[1] for earlier, later in itertools.pairwise(times)):
            found.append(key)
    return found


def work_of(i: int) -> str:
    return youtube_url(f"c{i:04d}") if i % 10 == 0 else f"Question {i}?"


def test_three_servers_share_one_queue_its_limits_and_each_job_runs_once(
        tmp_path: Path, pg_url: str, cluster: list[GunicornServer]) -> None:
    with PythonApiStandIn() as standin:
        standin.set_latency("ask-question", 0.02)
        standin.set_latency("process-video", 0.05)
        cluster.append(GunicornServer(tmp_path, env(standin, pg_url, WEB_CONCURRENCY="2")))
        cluster.extend(GunicornServer(tmp_path, env(standin, pg_url)) for _ in range(2))
        for server in cluster:
            server.start()
        locations = submit_all(cluster, 500)
        assert len({job_id(loc) for loc in locations}) == 500  # ids are global

        def all_finished() -> bool:
            return all(j["state"] in ("completed", "failed") for j in jobs(pg_url).values())

        assert cluster[0].wait_until(all_finished, 180, interval_s=0.25)
        assert {j["state"] for j in jobs(pg_url).values()} == {"completed"}
        assert calls_per_job(standin) == Counter({work_of(i): 1 for i in range(500)})
        assert standin.max_unanswered("ask-question") <= LIMITS["ask-question"]
        assert standin.max_unanswered("process-video") <= LIMITS["process-video"]
        status = cluster[1].request("GET", "/api/queue/status").json()["data"]["sharedQueue"]
        assert status["limitEverywhere"] == {"qa": 4, "video": 2}
        assert status["listening"] is True
        assert status["instanceId"].split(":")[1].isdigit()
        metrics = cluster[2].request("GET", "/metrics").text
        assert 'qudemo_jobs_running_all_instances{kind="qa"} 0.0' in metrics
        assert "qudemo_shared_queue_listening 1.0" in metrics
        # Any server answers for any job.
        for server, location in zip(cluster, locations[::-1], strict=False):
            reply = server.request("GET", location)
            assert reply.status_code == 200, reply.text
            assert reply.json()["data"]["status"] == "completed"


def test_sigkill_of_one_server_its_jobs_finish_on_the_others_after_the_lease(
        tmp_path: Path, pg_url: str, cluster: list[GunicornServer]) -> None:
    with PythonApiStandIn() as standin:
        # Calls outlive the lease: the Python API goes on with a dead server's calls
        # (as uvicorn does), so its jobs may run again only once their hold is over.
        standin.set_latency("ask-question", 4.0)
        standin.set_latency("process-video", 4.0)
        fast_leases = {"QUEUE_LEASE_TTL_MS": "3000", "QUEUE_POLL_INTERVAL_MS": "300",
                       "QUEUE_RETRY_ATTEMPTS": "3", "QUEUE_JOB_TIMEOUT_MS": "5000",
                       "QUEUE_ABANDONED_HOLD_MS": "6000",
                       "QUEUE_DB_STATEMENT_TIMEOUT_MS": "1000"}
        cluster.extend(GunicornServer(tmp_path, env(standin, pg_url, **fast_leases))
                       for _ in range(3))
        for server in cluster:
            server.start()
        ids = [job_id(loc) for loc in submit_all(cluster, 30)]

        def a_server_holds_a_lease() -> str | None:
            owners = [j["owner"] for j in jobs(pg_url).values()
                      if j["state"] == "processing" and j["owner"]]
            return owners[0] if owners else None

        assert cluster[0].wait_until(a_server_holds_a_lease, 30)
        owner = a_server_holds_a_lease()
        assert owner is not None
        pid = int(owner.split(":")[1])  # instance ids are host:pid:random
        victim = next(s for s in cluster if s.proc is not None and pid in
                      [c.pid for c in psutil.Process(s.proc.pid).children(recursive=True)])
        held = [jid for jid, j in jobs(pg_url).items() if j["owner"] == owner]
        victim.kill_all()  # SIGKILL, no shutdown code: its leases just stop being renewed
        assert held

        def all_finished() -> bool:
            return all(j["state"] in ("completed", "failed") for j in jobs(pg_url).values())

        assert cluster[0].wait_until(all_finished, 120, interval_s=0.25)
        final = jobs(pg_url)
        assert {j["state"] for j in final.values()} == {"completed"}, final
        # The attempts cut by the kill count; nothing ran more often than it counted.
        seen = calls_per_job(standin)
        numbered = {jid: i for i, jid in enumerate(ids)}
        for jid, job in final.items():
            assert seen[work_of(numbered[jid])] == job["attempts"], (jid, job)
        taken_back = [final[jid] for jid in held if final[jid]["attempts"] == 2]
        assert taken_back, [final[jid] for jid in held]
        assert all("lease expired" in (j["last_error"] or "") for j in taken_back)
        # Measured from the Python API's side: the limits held globally for the whole
        # run, the dead server's calls included, and no job ran twice at once.
        assert standin.max_unanswered("ask-question") <= LIMITS["ask-question"]
        assert standin.max_unanswered("process-video") <= LIMITS["process-video"]
        assert overlapping_calls(standin) == []


def test_sigterm_with_several_workers_drains_every_worker(
        tmp_path: Path, pg_url: str, cluster: list[GunicornServer]) -> None:
    with PythonApiStandIn() as standin:
        standin.set_latency("ask-question", 0.5)
        server = GunicornServer(tmp_path, env(standin, pg_url, WEB_CONCURRENCY="2"))
        cluster.append(server)
        server.start()
        assert server.proc is not None
        master = psutil.Process(server.proc.pid)
        assert server.wait_until(lambda: len(master.children()) == 2, 30)  # two workers
        ids = [job_id(loc) for loc in submit_all([server], 12)]
        assert standin.wait_in_flight("ask-question", 1, timeout=10)
        server.signal(signal.SIGTERM)
        assert server.wait_exit(60) == 0
        # What ran finished; what waited is still queued in the database for the others.
        states = Counter(jobs(pg_url)[jid]["state"] for jid in ids)
        assert set(states) <= {"completed", "queued"}, states
        assert states["completed"] >= 1
        assert os.path.exists(server.log_path)
