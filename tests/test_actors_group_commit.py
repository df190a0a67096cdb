"""Group commit (issue 19): one Dispatcher step's moves reach the registry as one message and
the SQLite file as one transaction, and a failed commit loses none of them (I5).

Measured from the store's side: a real SQLite file whose ``batch`` records what each of
its transactions wrote and, switched on by the test, fails as a failing disk does: a
batch at its commit (the transaction is rolled back whole), a single write at once.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import Job, JobKind, JobState, JobSystem, Settings
from actors.stores.sqlite import SqliteJobStore
from tests.standin import PythonApiStandIn
from tests.test_actors_store_faults import state_on_disk
from tests.test_actors_support import question, wait_state, wait_until


class RecordingDisk(SqliteJobStore):
    """A SQLite store that records the updates of each batch; its writes fail on request."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.batches: list[list[tuple[str, str]]] = []  # per batch: (job id, state) written
        self.failing = threading.Event()
        self._open_batch: list[tuple[str, str]] | None = None

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with super().batch():
            self._open_batch = []
            try:
                yield
                if self.failing.is_set():  # inside the transaction: rolled back whole
                    raise sqlite3.OperationalError("disk I/O error")
            finally:
                self.batches.append(self._open_batch)
                self._open_batch = None

    def update(self, job: Job) -> None:
        if self.failing.is_set() and self._open_batch is None:
            raise sqlite3.OperationalError("disk I/O error")
        super().update(job)
        if self._open_batch is not None:
            self._open_batch.append((job.id, job.state.value))


@pytest.fixture
def settings(fast_settings: Settings, tmp_path: Path) -> Settings:
    # One question at a time: each outcome frees the slot the next question takes.
    return fast_settings.replace(store="sqlite", db_path=str(tmp_path / "jobs.sqlite3"),
                                 max_concurrent_qa=1)


@pytest.fixture
def disk(settings: Settings) -> RecordingDisk:
    return RecordingDisk(Path(settings.db_path))


@pytest.fixture
def system(settings: Settings, disk: RecordingDisk) -> Iterator[JobSystem]:
    system = JobSystem(settings, store=disk).start()
    try:
        yield system
    finally:
        system.stop(drain=False)


def test_an_outcome_and_the_next_start_are_one_transaction(
        system: JobSystem, disk: RecordingDisk, standin: PythonApiStandIn,
        settings: Settings) -> None:
    standin.hold("ask-question")
    try:
        ids = [system.submit(JobKind.QA, question(n)).job.id for n in range(6)]
        assert standin.wait_in_flight("ask-question", 1)
    finally:
        standin.release("ask-question")
    for job_id in ids:
        assert wait_state(system, job_id).state == JobState.COMPLETED
    # Each question but the last ended in the step that started the next: both moves in
    # one transaction (before: one commit each, no batch at all).
    together = [b for b in disk.batches if len(b) >= 2]
    pairs = {(b[0][0], b[1][0]) for b in together
             if b[0][1] == "completed" and b[1][1] == "processing"}
    assert set(itertools.pairwise(ids)) <= pairs
    for job_id in ids:
        assert state_on_disk(Path(settings.db_path), job_id) == "completed"


def test_a_failed_commit_parks_every_move_of_its_batch_and_loses_none(
        system: JobSystem, disk: RecordingDisk, standin: PythonApiStandIn,
        settings: Settings) -> None:
    path = Path(settings.db_path)
    standin.hold("ask-question")
    try:
        first = system.submit(JobKind.QA, question(1)).job.id
        second = system.submit(JobKind.QA, question(2)).job.id
        assert standin.wait_in_flight("ask-question", 1)
        wait_until(lambda: state_on_disk(path, first) == "processing", "its start written")
        disk.failing.set()
    finally:
        standin.release("ask-question")
    # The first's outcome and the second's start shared a transaction that rolled back:
    # both are applied here (and shown), parked, and not on disk yet (the retries of the
    # parked writes fail too, until the disk is back).
    assert wait_state(system, first).state == JobState.COMPLETED
    assert system.get(second).state in (JobState.PROCESSING, JobState.COMPLETED)
    assert state_on_disk(path, first) == "processing"
    assert state_on_disk(path, second) == "queued"
    snapshot = system.snapshot()
    assert snapshot["store"]["writable"] is False and snapshot["store"]["parked_writes"] == 2
    disk.failing.clear()  # the parked changes are written on the flush timer
    wait_until(lambda: state_on_disk(path, first) == "completed", "the outcome written")
    assert wait_state(system, second).state == JobState.COMPLETED
    wait_until(lambda: state_on_disk(path, second) == "completed", "the second's outcome")
    wait_until(lambda: system.snapshot()["store"]["writable"], "the store to be writable")
