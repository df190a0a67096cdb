"""Retention at its cap: enforced on the registry's timer, in batches, down to 90% of the cap.

Real actors on a real SQLite file. What the registry asks of its store is observed
through the store itself (every ``prune_finished`` call and what it removed), never
through timing: a finish past the cap asks nothing of the store, and the retention
timer trims the oldest finished jobs in bounded batches, with hysteresis.
"""

from __future__ import annotations

import itertools
import math
import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.model.jobs import FINISHED_STATES, Job, freeze, new_job_id
from actors.stores.base import StateCounts
from actors.stores.memory import MemoryJobStore
from actors.stores.registry import JobRegistry
from actors.stores.sqlite import (
    _FINISHED_WHERE,
    _OLDEST_FINISHED,
    MIGRATIONS,
    SqliteJobStore,
)
from tests.standin import PythonApiStandIn
from tests.test_actors_support import question, wait_state, wait_until

BATCH = JobRegistry.PRUNE_BATCH
CAP = 10_000
LOW_WATER = 9_000  # 90% of CAP


class RecordingStore(SqliteJobStore):
    """The SQLite store, recording every ``prune_finished`` call and what it removed."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._lock = threading.Lock()
        self.prunes: list[tuple[dict[str, object], int]] = []

    def prune_finished(self, *, keep: int | None = None, finished_before: float | None = None,
                       limit: int | None = None) -> StateCounts:
        """Prune, and record the call."""
        removed = super().prune_finished(keep=keep, finished_before=finished_before,
                                         limit=limit)
        asked = {"keep": keep, "finished_before": finished_before, "limit": limit}
        with self._lock:
            self.prunes.append((asked, removed.total()))
        return removed

    def calls(self) -> list[tuple[dict[str, object], int]]:
        """Every call so far, in order: (its arguments, how many it removed)."""
        with self._lock:
            return list(self.prunes)

    def removing(self) -> list[int]:
        """How many each call that removed anything removed."""
        return [n for _, n in self.calls() if n]

    def removed(self) -> int:
        """How many finished jobs the calls removed in all."""
        return sum(self.removing())

    def quiet_pass_since(self, first: int) -> bool:
        """Whether a retention pass from call ``first`` on trimmed nothing.

        A pass asks for the age first and, only while it trims, for a batch past the cap:
        two age calls in a row are a pass that trimmed nothing.
        """
        calls = self.calls()[first:]
        return any(a["finished_before"] is not None and b["finished_before"] is not None
                   for (a, _), (b, _) in itertools.pairwise(calls))


def finished_job(seq: int, finished_at: float) -> Job:
    """A completed question (the stand-in's answer), with its arrival ``seq``."""
    return Job(id=new_job_id(), kind=JobKind.QA, priority=1, owner="u1",
               data=freeze(question(seq)), created_at=finished_at - 0.1, seq=seq,
               state=JobState.COMPLETED, attempts=1, started_at=finished_at - 0.05,
               finished_at=finished_at, result=freeze({"answer": "old"}))


def fill(path: Path, count: int) -> list[Job]:
    """Write ``count`` finished jobs into the store file, oldest first (an hour ago on)."""
    now = time.time() - 3600.0
    jobs = [finished_job(n + 1, now + n * 0.01) for n in range(count)]
    store = SqliteJobStore(path, synchronous="OFF")
    try:
        for job in jobs:
            store.add(job)
    finally:
        store.close()
    return jobs


def rows(path: Path) -> list[tuple[int, str]]:
    """(seq, state) of every job in the file, in arrival order, read beside the store."""
    db = sqlite3.connect(path)
    try:
        return list(db.execute("SELECT seq, state FROM jobs ORDER BY seq"))
    finally:
        db.close()


@pytest.fixture
def sqlite_file(tmp_path: Path) -> Path:
    return tmp_path / "jobs.sqlite3"


def start(settings: Settings, path: Path, **kwargs: Any) -> tuple[JobSystem, RecordingStore]:
    """A started job system on the file at ``path`` through a recording store."""
    store = RecordingStore(path)
    settings = settings.replace(store="sqlite", db_path=str(path), retention_max_jobs=CAP)
    return JobSystem(settings, store=store, **kwargs).start(), store


def test_a_store_past_its_cap_is_trimmed_to_90_percent_in_batches_on_the_timer(
        fast_settings: Settings, standin: PythonApiStandIn, sqlite_file: Path) -> None:
    fill(sqlite_file, 12_000)  # 2,000 past the cap, and nothing will finish
    system, store = start(fast_settings, sqlite_file)
    try:
        # No job finishes here: only the retention timer can trim.
        wait_until(lambda: store.removed() >= 12_000 - LOW_WATER, "the trim to 90% of the cap",
                   timeout=30)
        batches = store.removing()
        assert sum(batches) == 12_000 - LOW_WATER
        assert max(batches) <= BATCH
        assert len(batches) >= math.ceil((12_000 - LOW_WATER) / BATCH)
        # Sized from the registry's counts: the store was never asked to count (no keep).
        assert all(asked["keep"] is None for asked, _ in store.calls())
        assert system.snapshot()["registry"]["retained_finished"] == LOW_WATER

        # Hysteresis: below the cap, later passes (the age check, every second) trim nothing.
        passes = len(store.calls())
        wait_until(lambda: len(store.calls()) >= passes + 2, "two more retention passes")
        assert store.removed() == 12_000 - LOW_WATER
    finally:
        system.stop(drain=False)
    kept = rows(sqlite_file)
    assert len(kept) == LOW_WATER
    assert [seq for seq, _ in kept] == list(range(12_000 - LOW_WATER + 1, 12_001))  # the newest


def test_finishing_jobs_past_the_cap_never_prunes_on_the_spot(
        fast_settings: Settings, standin: PythonApiStandIn, sqlite_file: Path) -> None:
    fill(sqlite_file, CAP)  # at the cap: every job that finishes now takes the store past it
    system, store = start(fast_settings, sqlite_file)
    try:
        new = [system.submit(JobKind.QA, question(n)).job.id for n in range(100)]
        for job_id in new:
            wait_state(system, job_id, JobState.COMPLETED)
        # Before, every finish past the cap pruned one job on the spot: 100 prunes by now.
        assert len(store.removing()) <= math.ceil((CAP - LOW_WATER + 100) / BATCH)
        done = len(store.calls())
        wait_until(lambda: store.removed() > 0 and store.quiet_pass_since(done),
                   "the trim past the cap, then a pass with nothing to trim", timeout=30)
        # One trim, from past the cap down to 90% of it, in batches: whatever the timing,
        # 100 finishes are at most 100 past the cap, not enough for a second trim.
        removed = store.removed()
        assert CAP - LOW_WATER < removed <= CAP - LOW_WATER + 100
        assert len(store.removing()) <= math.ceil((CAP - LOW_WATER + 100) / BATCH)
        assert max(store.removing()) <= BATCH
        assert system.snapshot()["registry"]["retained_finished"] == CAP + 100 - removed
        # Oldest first: every job of this run is still readable.
        assert all(system.get(job_id).state == JobState.COMPLETED for job_id in new)
    finally:
        system.stop(drain=False)
    assert len(rows(sqlite_file)) == CAP + 100 - store.removed()


def test_memory_pressure_trims_a_large_history_in_batches(
        fast_settings: Settings, standin: PythonApiStandIn, sqlite_file: Path) -> None:
    fill(sqlite_file, 1_000)
    rss = [100.0]
    settings = fast_settings.replace(memory_threshold_mb=1000.0, max_memory_mb=2000.0)
    system, store = start(settings, sqlite_file, rss_reader=lambda: rss[0])
    try:
        rss[0] = 1500.0
        assert system.check_memory().pressure is True
        # The oldest half goes: one batch at once, the rest on the retention passes.
        wait_until(lambda: system.snapshot()["registry"]["retained_finished"] == 500,
                   "the oldest half to go", timeout=30)
        assert store.removed() == 500 and max(store.removing()) <= BATCH
    finally:
        system.stop(drain=False)
    assert [seq for seq, _ in rows(sqlite_file)] == list(range(501, 1_001))


# --- the stores' batches ------------------------------------------------------------------


def test_sqlite_prunes_the_oldest_finished_in_bounded_batches(sqlite_file: Path) -> None:
    store = SqliteJobStore(sqlite_file)
    try:
        jobs = [finished_job(n, 1000.0 + n) for n in range(1, 11)]
        for job in reversed(jobs):  # written newest first: the order is finish order
            store.add(job)
        active = finished_job(11, 0.0).replace(state=JobState.QUEUED, finished_at=None)
        store.add(active)
        assert store.prune_finished(limit=3)[JobKind.QA, JobState.COMPLETED] == 3
        assert [j.seq for j in store.list()] == [11, *range(10, 3, -1)]
        assert store.prune_finished(finished_before=1006.0, limit=1).total() == 1  # seq 4
        assert store.prune_finished(finished_before=1006.0, limit=10).total() == 1  # seq 5
        assert store.prune_finished(limit=100).total() == 5  # every finished job; active stays
        assert [j.id for j in store.list()] == [active.id]
        assert store.prune_finished().total() == 0  # nothing asked, nothing removed
    finally:
        store.close()


def test_sqlite_batch_is_a_range_of_the_finished_index(sqlite_file: Path) -> None:
    SqliteJobStore(sqlite_file).close()
    db = sqlite3.connect(sqlite_file)
    try:
        for age in ("", " AND finished_at < ?"):
            args = (1.0, 10) if age else (10,)
            plan = [r[3] for r in db.execute(
                "EXPLAIN QUERY PLAN " + _OLDEST_FINISHED.format(age=age), args)]
            assert any("USING INDEX jobs_finished_order" in step for step in plan), plan
            assert not any("TEMP B-TREE" in step for step in plan), plan  # no sort
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "jobs_finished" not in names  # replaced by jobs_finished_order
    finally:
        db.close()
    # The literal states of the index and its queries are the finished states.
    assert set(re.findall(r"'(\w+)'", _FINISHED_WHERE)) == {s.value for s in FINISHED_STATES}


def test_a_version_1_file_gets_the_finished_index(sqlite_file: Path) -> None:
    db = sqlite3.connect(sqlite_file)
    db.executescript(MIGRATIONS[0] + "; PRAGMA user_version = 1;")
    db.execute("INSERT INTO jobs (id, kind, state, owner, seq, created_at, finished_at, record)"
               " VALUES ('a', 'qa', 'completed', 'u1', 1, 1.0, 2.0, '{}')")
    db.commit()
    db.close()
    SqliteJobStore(sqlite_file).close()
    db = sqlite3.connect(sqlite_file)
    try:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "jobs_finished_order" in names and "jobs_finished" not in names
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    finally:
        db.close()


def test_memory_store_prunes_the_oldest_finished_in_bounded_batches() -> None:
    store = MemoryJobStore()
    jobs = [finished_job(n, 1000.0 + n) for n in range(1, 11)]
    for job in jobs:
        store.add(job.replace(state=JobState.PROCESSING, finished_at=None))
        store.update(job)  # finish order
    assert store.prune_finished(limit=3).total() == 3
    assert store.get(jobs[2].id) is None and store.get(jobs[3].id) is not None
    assert store.prune_finished(finished_before=1006.0, limit=1).total() == 1
    assert store.prune_finished(keep=2, limit=1).total() == 1
    assert store.prune_finished(keep=2).total() == 3
    assert [j.seq for j in store.list()] == [10, 9]
