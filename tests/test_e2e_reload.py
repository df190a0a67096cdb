"""End to end: SIGHUP (gunicorn reload) with the SQLite store and a running job.

gunicorn starts the new worker before it sends SIGTERM to the old one, so for a while
both exist and the old one still owns the store's lock. The new worker must wait for
the hand-over instead of failing to boot (which halts the master), the old one drains
as on SIGTERM, and every job accepted before, during and after the reload completes:
the running one either finished by the old worker within its drain or recovered from
the store (its attempt counted) and run again by the new worker.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from actors.model.errors import StoreUnavailable
from actors.stores.sqlite import SqliteJobStore, expect_handover
from tests.gunicorn_server import GunicornServer
from tests.standin import PythonApiStandIn
from tests.test_e2e_gunicorn import auth, base_env, follow

BOOTING = re.compile(r"Booting worker with pid: (\d+)")


@pytest.fixture()
def standin() -> Iterator[PythonApiStandIn]:
    with PythonApiStandIn() as server:
        yield server


def start(standin: PythonApiStandIn, workdir: Path, drain_ms: int) -> GunicornServer:
    return GunicornServer(workdir, base_env(
        standin, QUEUE_STORE="sqlite", QUEUE_DB_PATH=str(workdir / "jobs.sqlite3"),
        QUEUE_DRAIN_TIMEOUT_MS=str(drain_ms), QUEUE_MAX_CONCURRENT_VIDEOS="1",
        # A call cut by the drain is sent again only after its hold: keep it short here.
        QUEUE_JOB_TIMEOUT_MS="12000", QUEUE_ABANDONED_HOLD_MS="12000",
    )).start()


def workers(server: GunicornServer) -> list[int]:
    """The pids of the workers gunicorn booted so far, in order."""
    return [int(pid) for pid in BOOTING.findall(server.log())]


def logged_by(server: GunicornServer, pattern: str) -> int | None:
    """The pid of the process that logged the first line matching ``pattern``."""
    found = re.search(rf"\[(\d+) [^\]]*\] \S+: {pattern}", server.log())
    return int(found.group(1)) if found else None


def job_id(location: str) -> str:
    return location.rsplit("/", 1)[-1]


def submit_video(server: GunicornServer, headers: dict[str, str], name: str) -> str:
    reply = server.request("POST", "/api/video/process", headers=headers, json={
        "video_url": f"https://youtu.be/{name}", "company_name": "acme", "source": "youtube"})
    assert reply.status_code == 202, reply.text
    return str(reply.headers["Location"])


def submit_until_accepted(server: GunicornServer, headers: dict[str, str], text: str,
                          session: requests.Session | None = None, tries: int = 40) -> str:
    """Submit as a client does through a reload: a 503 (the old worker draining) says
    nothing was stored and when to come back; retry until accepted. The timeout covers
    a wait in the listen queue while the new worker waits for the store."""
    wait = threading.Event()
    for _ in range(tries):
        reply = (session or server.session).post(
            server.url + "/api/interactions/reload/questions", headers=headers, timeout=30,
            json={"question": text, "companyName": "acme"})
        if reply.status_code == 202:
            return str(reply.headers["Location"])
        assert reply.status_code == 503, reply.text
        assert "Retry-After" in reply.headers
        wait.wait(0.2)
    raise AssertionError(f"{text!r} never accepted")


def reload_and_wait_for_handover(server: GunicornServer, old: int) -> int:
    """SIGHUP the master; return the new worker's pid once it waits for the old one."""
    server.signal(signal.SIGHUP)
    assert server.wait_until(lambda: len(workers(server)) >= 2, 20), server.log()
    new = workers(server)[-1]
    assert new != old
    waiting = f"[{new} MainThread] actors.stores.sqlite: waiting for the previous worker"
    assert server.wait_until(lambda: waiting in server.log(), 15), server.log()
    assert server.proc is not None and server.proc.poll() is None  # the master stays up
    return new


def assert_took_over(server: GunicornServer, new: int, old: int, alice: dict[str, str]) -> None:
    log = server.log()
    assert f"[{new} MainThread] actors.stores.sqlite: took over the job store" in log, log
    assert f"Worker exiting (pid: {old})" in log
    assert "Worker failed to boot" not in log and "exited with code 3" not in log
    assert server.proc is not None and server.proc.poll() is None
    after = submit_until_accepted(server, alice, "After the reload?")
    job = follow(server, after, alice)
    assert job["status"] == "completed"
    assert logged_by(server, rf"job {job_id(after)} \(qa\) accepted") == new  # it serves
    assert server.request("GET", "/health/ready").status_code == 200


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_sighup_old_worker_finishes_the_running_job(standin: PythonApiStandIn,
                                                    tmp_path: Path) -> None:
    server = start(standin, tmp_path, drain_ms=15000)
    try:
        alice = auth("alice")
        [old] = workers(server)
        before = submit_until_accepted(server, alice, "Before the reload?")
        assert follow(server, before, alice)["status"] == "completed"
        standin.hold("process-video")
        running = submit_video(server, alice, "runAtReload")
        assert standin.wait_in_flight("process-video", 1, timeout=10)
        queued = submit_video(server, alice, "queuedAtRel")  # one video at a time

        new = reload_and_wait_for_handover(server, old)
        # A client arriving now waits in the listen queue (or is refused with 503 by the
        # draining worker, nothing stored) and is served once the new worker has the store.
        during: dict[str, Any] = {}

        def client() -> None:
            with requests.Session() as session:
                during["location"] = submit_until_accepted(server, alice, "During the reload?",
                                                           session=session)

        thread = threading.Thread(target=client)
        thread.start()
        standin.release("process-video")  # the old worker finishes it within its drain
        assert server.wait_until(lambda: f"Worker exiting (pid: {old})" in server.log(), 30)
        thread.join(60)
        assert not thread.is_alive() and "location" in during

        assert_took_over(server, new, old, alice)
        done = follow(server, running, alice)
        assert done["status"] == "completed" and done["attempts"] == 1
        assert logged_by(server, f"job {job_id(running)} completed") == old
        assert standin.calls("process-video")[0].finished_at is not None
        for location in (queued, during["location"]):  # stored before / sent during the reload
            assert follow(server, location, alice)["status"] == "completed"
        assert logged_by(server, f"job {job_id(queued)} completed") == new
        assert logged_by(server, rf"job {job_id(during['location'])} \(qa\) accepted") == new
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_sighup_new_worker_recovers_a_job_cut_by_the_drain(standin: PythonApiStandIn,
                                                           tmp_path: Path) -> None:
    # Long enough for the new worker to boot and wait for the store (its log shows the
    # hand-over) before the old one's drain ends.
    server = start(standin, tmp_path, drain_ms=10000)
    try:
        alice = auth("alice")
        [old] = workers(server)
        standin.hold("process-video")
        running = submit_video(server, alice, "cutAtReload")
        assert standin.wait_in_flight("process-video", 1, timeout=10)

        new = reload_and_wait_for_handover(server, old)
        # Held past the old worker's drain (10 s from SIGTERM): it is cut there; the job stays
        # in the store unfinished, its attempt counted.
        assert server.wait_until(lambda: f"Worker exiting (pid: {old})" in server.log(), 30)
        assert server.wait_until(
            lambda: f"[{new} MainThread] actors.stores.sqlite: took over" in server.log(), 30)
        # The new worker recovers it from the store and runs it again.
        assert standin.wait_calls("process-video", 2, timeout=15), server.log()
        standin.release("process-video")
        done = follow(server, running, alice)
        assert done["status"] == "completed" and done["attempts"] == 2, done
        assert logged_by(server, f"job {job_id(running)} completed") == new
        assert_took_over(server, new, old, alice)
    finally:
        server.stop()


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_sighup_old_worker_that_never_hands_over(standin: PythonApiStandIn,
                                                 tmp_path: Path) -> None:
    """The old worker hangs holding the store: the new one gives up without halting gunicorn,
    the master kills the hung one, and a fresh worker takes the store and recovers the job.

    The new worker waits the graceful timeout (5 s drain + 5 s); the master kills the hung
    one GUNICORN_TIMEOUT (20 s) after its last sign of life, well after that.
    """
    server = GunicornServer(tmp_path, base_env(
        standin, QUEUE_STORE="sqlite", QUEUE_DB_PATH=str(tmp_path / "jobs.sqlite3"),
        QUEUE_DRAIN_TIMEOUT_MS="5000", GUNICORN_TIMEOUT="20",
        QUEUE_JOB_TIMEOUT_MS="12000", QUEUE_ABANDONED_HOLD_MS="12000")).start()
    try:
        alice = auth("alice")
        [old] = workers(server)
        standin.hold("process-video")
        running = submit_video(server, alice, "hungAtReloa")
        assert standin.wait_in_flight("process-video", 1, timeout=10)

        new = reload_and_wait_for_handover(server, old)
        os.kill(old, signal.SIGSTOP)  # hung: it holds the lock and never lets go
        assert f"[{old} MainThread] actors.system: job system stopped" not in server.log()
        gave_up = f"worker {new} exits without the job store"
        assert server.wait_until(lambda: gave_up in server.log(), 30), server.log()
        assert server.wait_until(lambda: len(workers(server)) >= 3, 30), server.log()
        fresh = workers(server)[-1]
        started = f"[{fresh} MainThread] actors.system: job system started"
        assert server.wait_until(lambda: started in server.log(), 60), server.log()
        log = server.log()
        assert f"Worker (pid:{new}) exited with code 1" in log
        assert f"Worker (pid:{old}) was sent SIGKILL" in log
        assert "Worker failed to boot" not in log
        assert server.proc is not None and server.proc.poll() is None
        # Killed while running it: found processing, that attempt counts, it runs again.
        assert standin.wait_calls("process-video", 2, timeout=15), server.log()
        standin.release("process-video")
        done = follow(server, running, alice)
        assert done["status"] == "completed" and done["attempts"] == 2, done
        assert "1 interrupted while processing" in server.log()
        after = submit_until_accepted(server, alice, "After the hung reload?")
        assert follow(server, after, alice)["status"] == "completed"
        assert logged_by(server, rf"job {job_id(after)} \(qa\) accepted") == fresh
    finally:
        server.stop()


# --- the store's side of the hand-over, in one process (flock locks of two opens conflict)


def test_handover_waits_for_the_lock_then_takes_it(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    previous = SqliteJobStore(path)
    beats: list[float] = []

    def heartbeat() -> None:
        beats.append(time.monotonic())
        if len(beats) == 3:
            previous.close()  # the old owner hands over while the new one polls

    expect_handover("the previous worker (pid 1)", 10.0, heartbeat=heartbeat, poll_s=0.01)
    store = SqliteJobStore(path)
    try:
        assert len(beats) == 3
        with pytest.raises(StoreUnavailable, match="in use by another process"):
            SqliteJobStore(path)  # once only: a later open refuses at once again
    finally:
        store.close()


def test_handover_gives_up_after_its_timeout(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    owner = SqliteJobStore(path)
    try:
        beats: list[float] = []
        timed_out: list[float] = []
        expect_handover("the previous worker (pid 1)", 0.3, heartbeat=lambda: beats.append(1),
                        on_timeout=lambda: timed_out.append(time.monotonic()), poll_s=0.05)
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=r"still in use after waiting 0.3 s for the "
                                                   r"previous worker \(pid 1\)"):
            SqliteJobStore(path)
        assert 0.3 <= time.monotonic() - started < 5
        assert beats and len(timed_out) == 1 and timed_out[0] - started >= 0.3
    finally:
        owner.close()
    SqliteJobStore(path).close()  # nothing of the waiting open kept the lock


def test_handover_heartbeat_may_stop_the_wait(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    owner = SqliteJobStore(path)

    def told_to_stop() -> None:
        raise SystemExit(0)

    expect_handover("the previous worker (pid 1)", 10.0, heartbeat=told_to_stop)
    with pytest.raises(SystemExit):
        SqliteJobStore(path)
    owner.close()
    SqliteJobStore(path).close()
