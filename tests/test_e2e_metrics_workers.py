"""End to end: with two gunicorn workers (PostgreSQL store) every scrape reports the whole server.

The shipped configuration (``gunicorn -c gunicorn.conf.py``) with ``QUEUE_STORE=postgres`` and
``WEB_CONCURRENCY=2`` on a real PostgreSQL. Jobs are submitted over one keep-alive connection
to each worker (which worker holds a connection is read from ``/api/queue/status``: the
instance id is ``host:pid:random``), the stand-in of the Python API counts the calls, and
scrapes answered by either worker must agree with it: ``/metrics`` on the main port and, in
the second test, the ``METRICS_PORT`` bind, which survives the death of the worker serving it.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests import pg_server
from tests.gunicorn_server import GunicornServer, free_port
from tests.standin import PythonApiStandIn

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

JOBS = 40
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def env(standin: PythonApiStandIn, url: str, **extra: str) -> dict[str, str]:
    return {
        "PYTHON_API_BASE_URL": standin.url,
        "QUEUE_STORE": "postgres",
        "DATABASE_URL": url,
        "WEB_CONCURRENCY": "2",
        "QUEUE_MAX_WAITING_QA": "1000",
        "RATE_LIMIT_MAX_REQUESTS": "100000000",
        "PYTHON_API_STATUS_TIMEOUT_MS": "300",
        "GUNICORN_ACCESS_LOG": "",
        **extra,
    }


@pytest.fixture
def servers() -> Iterator[list[GunicornServer]]:
    """Servers the test starts into this list; all stopped afterwards."""
    started: list[GunicornServer] = []
    yield started
    for server in started:
        server.stop()


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum ``name`` over every series whose labels include ``labels``."""
    return sum(v for (n, series), v in samples.items()
               if n == name and set(labels.items()) <= set(series))


def by_pid(samples: Samples, name: str) -> dict[str, float]:
    return {dict(series)["pid"]: v for (n, series), v in samples.items()
            if n == name and "pid" in dict(series)}


def worker_of(session: requests.Session, server: GunicornServer) -> int:
    """The pid of the worker that holds this session's connection."""
    reply = session.get(server.url + "/api/queue/status", timeout=10)
    assert reply.status_code == 200, reply.text
    return int(reply.json()["data"]["sharedQueue"]["instanceId"].split(":")[1])


def one_session_per_worker(server: GunicornServer) -> dict[int, requests.Session]:
    """Open connections until each of the two workers holds one; keyed by the worker's pid.

    gunicorn keeps a connection alive for 5 s between requests (``keepalive``): used at
    once, each session stays on its worker.
    """
    pinned: dict[int, requests.Session] = {}
    spare: list[requests.Session] = []

    def both() -> bool:
        session = requests.Session()
        pid = worker_of(session, server)
        (spare if pid in pinned else []).append(session)
        pinned.setdefault(pid, session)
        return len(pinned) == 2

    assert server.wait_until(both, 60, interval_s=0.01), "one worker took every connection"
    for session in spare:
        session.close()
    return pinned


def submit_through_both_workers(server: GunicornServer) -> tuple[list[str], Counter[int]]:
    """Submit ``JOBS`` questions, alternating between the workers; return where each went."""
    sessions = one_session_per_worker(server)
    locations: list[str] = []
    accepted: Counter[int] = Counter()
    for i in range(JOBS):
        pid, session = list(sessions.items())[i % 2]
        reply = session.post(f"{server.url}/api/interactions/m{i}/questions", timeout=10,
                             json={"question": f"Question {i}?", "companyName": "acme"})
        assert reply.status_code == 202, reply.text
        locations.append(reply.headers["Location"])
        accepted[pid] += 1
    for pid, session in sessions.items():  # still on the same worker: the counts hold
        assert worker_of(session, server) == pid
        session.close()
    return locations, accepted


def wait_completed(server: GunicornServer, standin: PythonApiStandIn,
                   locations: list[str]) -> None:
    assert standin.wait_calls("ask-question", JOBS, timeout=60)
    pending = set(locations)

    def done() -> bool:
        for location in list(pending):
            if server.request("GET", location).json()["data"]["status"] == "completed":
                pending.discard(location)
        return not pending

    assert server.wait_until(done, 60, interval_s=0.1), f"not completed: {pending}"


def scrape_both_workers(server: GunicornServer, rounds: int = 3) -> dict[int, list[Samples]]:
    """Scrape ``/metrics`` ``rounds`` times through each worker; the scrapes by worker pid."""
    found: dict[int, list[Samples]] = {}
    for pid, session in one_session_per_worker(server).items():
        for _ in range(rounds):
            reply = session.get(server.url + "/metrics", timeout=10)
            assert reply.status_code == 200, reply.text
            found.setdefault(pid, []).append(parse(reply.text))
        assert worker_of(session, server) == pid
        session.close()
    return found


def test_every_scrape_reports_both_workers(tmp_path: Path, pg_url: str,
                                           servers: list[GunicornServer]) -> None:
    with PythonApiStandIn() as standin:
        server = GunicornServer(tmp_path, env(standin, pg_url)).start()
        servers.append(server)
        locations, accepted = submit_through_both_workers(server)
        assert len(accepted) == 2
        wait_completed(server, standin, locations)
        assert len(standin.calls("ask-question")) == JOBS
        workers = set(accepted)

        seen: dict[int, float] = {}

        def counted_everywhere() -> bool:
            for pid, scraped in scrape_both_workers(server, rounds=1).items():
                seen[pid] = total(scraped[0], "qudemo_jobs_finished_total", kind="qa",
                                  state="completed")
            return all(count == JOBS for count in seen.values())

        # The actors count a finish just after it is stored: wait for the last of them.
        assert server.wait_until(counted_everywhere, 20, interval_s=0.2), (
            f"completed jobs counted by the scrape each worker answered: {seen}; "
            f"submitted through each: {dict(accepted)}")

        scrapes = scrape_both_workers(server)
        assert set(scrapes) == workers  # each worker answered
        for samples in (s for per_worker in scrapes.values() for s in per_worker):
            assert total(samples, "qudemo_jobs_submitted_total") == JOBS
            assert total(samples, "qudemo_jobs_submitted_total", kind="qa") == JOBS
            assert total(samples, "qudemo_jobs_finished_total", state="completed") == JOBS
            assert total(samples, "qudemo_job_attempt_duration_seconds_count", kind="qa") == JOBS
            assert total(samples, "qudemo_http_requests_total", method="POST", status="202",
                         route="/api/interactions/{interaction_id}/questions") == JOBS
            # Each worker's own readings carry its pid; both are there, whoever answers.
            assert by_pid(samples, "qudemo_up") == {str(pid): 1.0 for pid in workers}
            assert set(by_pid(samples, "qudemo_workers_alive")) == {str(p) for p in workers}
            assert set(by_pid(samples, "process_resident_memory_bytes")) == {
                str(p) for p in workers}
            # A reading of the shared queue is one series, not one per worker.
            waiting = [series for name, series in samples if name == "qudemo_jobs_waiting"]
            assert sorted(waiting) == [(("kind", "qa"),), (("kind", "video"),)]
            assert samples[("qudemo_jobs_waiting", (("kind", "qa"),))] == 0
            assert not any("DATABASE_URL" in str(series) or "secret" in str(series)
                           for _, series in samples)

        # A reload replaces both workers: the new ones' scrapes still hold the old counts.
        server.signal(signal.SIGHUP)
        found: Samples = {}

        def replaced() -> bool:
            reply = server.request("GET", "/metrics")
            found.clear()
            found.update(parse(reply.text))
            pids = {int(pid) for pid in by_pid(found, "qudemo_up")}
            return len(pids) == 2 and not pids & workers

        assert server.wait_until(replaced, 60, interval_s=0.2), by_pid(found, "qudemo_up")
        assert total(found, "qudemo_jobs_submitted_total") == JOBS
        assert total(found, "qudemo_jobs_finished_total", state="completed") == JOBS


def listening_worker(server: GunicornServer, port: int) -> int | None:
    """The pid of the worker whose socket listens on ``port``, if any."""
    assert server.proc is not None
    for child in psutil.Process(server.proc.pid).children():
        try:
            if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN
                   for c in child.net_connections(kind="tcp")):
                return child.pid
        except psutil.NoSuchProcess:
            continue
    return None


def test_metrics_port_reports_both_workers_and_outlives_its_worker(
        tmp_path: Path, pg_url: str, servers: list[GunicornServer]) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    with PythonApiStandIn() as standin:
        server = GunicornServer(tmp_path, env(standin, pg_url, METRICS_PORT=str(port))).start()
        servers.append(server)
        locations, accepted = submit_through_both_workers(server)
        assert len(accepted) == 2
        wait_completed(server, standin, locations)
        workers = {str(pid) for pid in accepted}
        found: Samples = {}

        def port_counts_all() -> bool:
            try:
                found.update(parse(requests.get(url, timeout=5).text))
            except requests.ConnectionError:
                return False
            return total(found, "qudemo_jobs_finished_total", state="completed") == JOBS

        assert server.wait_until(port_counts_all, 30, interval_s=0.2), (
            f"the port counted {total(found, 'qudemo_jobs_finished_total', state='completed')}"
            f" of {JOBS} completed jobs; submitted through each worker: {dict(accepted)}")
        assert total(found, "qudemo_jobs_submitted_total") == JOBS
        assert set(by_pid(found, "qudemo_up")) == workers
        assert server.request("GET", "/metrics").status_code == 404  # not on the main port

        serving = listening_worker(server, port)
        assert serving is not None and str(serving) in workers
        os.kill(serving, signal.SIGKILL)  # no shutdown code: the master reaps it, forks anew

        def taken_over() -> bool:
            try:
                samples = parse(requests.get(url, timeout=5).text)
            except requests.ConnectionError:
                return False
            found.clear()
            found.update(samples)
            pids = set(by_pid(samples, "qudemo_up"))
            return len(pids) == 2 and str(serving) not in pids

        assert server.wait_until(taken_over, 60, interval_s=0.2), found
        # The dead worker's counts stay in the sums: no counter went back.
        assert total(found, "qudemo_jobs_submitted_total") == JOBS
        assert total(found, "qudemo_jobs_finished_total", state="completed") == JOBS
        holder = listening_worker(server, port)
        assert holder is not None and holder != serving
