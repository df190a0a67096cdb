"""I5: the core never dies of a store's I/O error, keeps every accepted job, and recovers.

Two real faults on a real SQLite file: the file cannot grow (``PRAGMA max_page_count``,
SQLite's own "database or disk is full", as on a full 1 GB disk), and a store whose
writes fail with the error a failing disk gives, switched on and off by the test.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors import Job, JobKind, JobState, JobSystem, Settings
from actors.model.errors import JobSystemUnavailable, QueueError, StoreUnavailable
from actors.stores.sqlite import SqliteJobStore
from tests.standin import PythonApiStandIn
from tests.test_actors_support import question, wait_state, wait_until
from tests.web_support import make_app

BIG = "x" * 20_000  # a question this long needs new pages of the file


class FailingDisk(SqliteJobStore):
    """A SQLite store whose writes fail like a dying disk while ``failing`` is set."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failing = threading.Event()

    def _check(self) -> None:
        if self.failing.is_set():
            raise sqlite3.OperationalError("disk I/O error")

    def add(self, job: Job) -> None:
        self._check()
        super().add(job)

    def update(self, job: Job) -> None:
        self._check()
        super().update(job)


def state_on_disk(path: Path, job_id: str) -> str:
    with sqlite3.connect(path) as db:
        (record,) = db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return str(json.loads(record)["state"])


@pytest.fixture
def settings(fast_settings: Settings, tmp_path: Path) -> Settings:
    return fast_settings.replace(store="sqlite", db_path=str(tmp_path / "jobs.sqlite3"))


@pytest.fixture
def disk(settings: Settings) -> FailingDisk:
    return FailingDisk(Path(settings.db_path))


@pytest.fixture
def system(settings: Settings, disk: FailingDisk) -> Iterator[JobSystem]:
    system = JobSystem(settings, store=disk).start()
    try:
        yield system
    finally:
        system.stop(drain=False)


def test_a_full_file_refuses_new_jobs_and_the_core_recovers_when_it_has_room(
        system: JobSystem, disk: FailingDisk) -> None:
    first = system.submit(JobKind.QA, question(1)).job.id
    assert wait_state(system, first).state == JobState.COMPLETED
    (pages,) = disk._db.execute("PRAGMA page_count").fetchone()
    disk._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    refused: StoreUnavailable | None = None
    for n in range(100):
        try:
            system.submit(JobKind.QA, {"question": f"{BIG} {n}?", "company_name": "acme"})
        except StoreUnavailable as exc:
            refused = exc
            break
    assert refused is not None, "the full file took every job"
    assert system.responsive()  # the registry and the Dispatcher are alive and answering
    assert system.snapshot()["store"]["writable"] is False
    disk._db.execute("PRAGMA max_page_count = 1073741823")  # space again
    again = system.submit(JobKind.QA, {"question": f"{BIG} again?", "company_name": "acme"})
    assert wait_state(system, again.job.id).state == JobState.COMPLETED
    assert system.snapshot()["store"]["writable"] is True


def test_failing_writes_are_parked_the_job_completes_and_nothing_is_lost(
        system: JobSystem, disk: FailingDisk, standin: PythonApiStandIn,
        settings: Settings) -> None:
    client = make_app(system).test_client()
    standin.hold("ask-question")
    try:
        job_id = system.submit(JobKind.QA, question(2)).job.id
        assert standin.wait_in_flight("ask-question", 1)
        wait_until(lambda: state_on_disk(Path(settings.db_path), job_id) == "processing",
                   "its start to be written")
        disk.failing.set()  # every write fails from now on
    finally:
        standin.release("ask-question")
    # The outcome could not be written: it is kept, and shown, but not on disk yet.
    job = wait_state(system, job_id)
    assert job.state == JobState.COMPLETED and job.result is not None
    assert state_on_disk(Path(settings.db_path), job_id) == "processing"
    snapshot = system.snapshot()
    assert snapshot["store"]["writable"] is False and snapshot["store"]["parked_writes"] == 1
    health = client.get("/health")
    assert health.status_code == 503 and health.json["health"]["store"]["writable"] is False
    assert client.get("/health/ready").status_code == 503
    assert client.get("/health/live").status_code == 200  # alive: no restart needed
    reply = client.post("/api/interactions/i1/questions",
                        json={"question": "Refused while the disk fails?", "companyName": "a"})
    assert reply.status_code == 503 and "Retry-After" in reply.headers
    disk.failing.clear()  # the disk is back: the parked change is written on the next try
    wait_until(lambda: system.snapshot()["store"]["writable"], "the store to be writable")
    assert state_on_disk(Path(settings.db_path), job_id) == "completed"
    assert client.get("/health/ready").status_code == 200
    later = system.submit(JobKind.QA, question(3)).job.id
    assert wait_state(system, later).state == JobState.COMPLETED


@pytest.mark.parametrize("message", ["get", "list", "cancel", "retry", "snapshot"])
def test_reads_and_commands_on_a_failing_store_answer_and_never_kill_the_core(
        system: JobSystem, disk: FailingDisk, message: str) -> None:
    job = system.submit(JobKind.QA, question(4)).job
    wait_state(system, job.id)

    def broken(*_: Any, **__: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    original = {name: getattr(disk, name) for name in ("get", "list", "update")}
    for name in original:
        setattr(disk, name, broken)
    try:
        calls = {"get": lambda: system.get(job.id), "list": lambda: system.list_jobs(),
                 "cancel": lambda: system.cancel(job.id), "retry": lambda: system.retry(job.id),
                 "snapshot": system.snapshot}
        with contextlib.suppress(StoreUnavailable):  # a clear 503, not a dead actor
            calls[message]()
    finally:
        for name, method in original.items():
            setattr(disk, name, method)
    assert system.responsive()
    assert wait_state(system, system.submit(JobKind.QA, question(5)).job.id).state \
        == JobState.COMPLETED


class SlowDisk(SqliteJobStore):
    """A SQLite store whose ``add`` or ``get`` waits for the test's go."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.slow_add = threading.Event()
        self.slow_get = threading.Event()
        self.go = threading.Event()
        self.waiting = threading.Event()

    def add(self, job: Job) -> None:
        if self.slow_add.is_set():
            self.waiting.set()
            self.go.wait(10)
        super().add(job)

    def get(self, job_id: str) -> Job | None:
        if self.slow_get.is_set():
            self.waiting.set()
            self.go.wait(10)
        return super().get(job_id)


def jobs_on_disk(path: Path) -> int:
    with sqlite3.connect(path) as db:
        (count,) = db.execute("SELECT count(*) FROM jobs").fetchone()
    return int(count)


def test_a_submission_stored_after_its_ask_timed_out_is_accepted_not_503(
        settings: Settings) -> None:
    disk = SlowDisk(Path(settings.db_path))
    system = JobSystem(settings.replace(ask_timeout_s=0.3), store=disk).start()
    try:
        disk.slow_add.set()
        threading.Timer(1.0, disk.go.set).start()  # the write outlives the submitter's ask
        submission = system.submit(JobKind.QA, question(6))  # was JobSystemUnavailable (503)
        assert wait_state(system, submission.job.id).state == JobState.COMPLETED
    finally:
        disk.go.set()
        system.stop(drain=False)


def test_a_submission_refused_for_a_slow_core_is_never_stored_later(
        settings: Settings) -> None:
    disk = SlowDisk(Path(settings.db_path))
    system = JobSystem(settings.replace(ask_timeout_s=0.3), store=disk).start()
    try:
        before = jobs_on_disk(Path(settings.db_path))
        disk.slow_get.set()  # the registry is busy with a read when the submission comes
        def read() -> None:
            with contextlib.suppress(QueueError):  # the read itself times out: fine
                system.get("x")

        reader = threading.Thread(target=read)
        reader.start()
        assert disk.waiting.wait(5)
        with pytest.raises(JobSystemUnavailable):
            system.submit(JobKind.QA, question(7))
        disk.slow_get.clear()
        disk.go.set()
        reader.join(10)
        assert system.responsive()
        assert jobs_on_disk(Path(settings.db_path)) == before  # refused means not stored
    finally:
        disk.go.set()
        system.stop(drain=False)
