"""The SQLite job store: schema, durability, retention, refusal of bad files, recovery at start."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.model.jobs import Job, freeze, new_job_id
from actors.stores.sqlite import SCHEMA_VERSION, SqliteJobStore, StoreUnavailable
from tests.standin import PythonApiStandIn
from tests.test_actors_support import wait_until


def make_job(kind: JobKind = JobKind.QA, seq: int = 1, **changes: object) -> Job:
    data = (
        {"question": f"q{seq}?", "company_name": "acme"}
        if kind == JobKind.QA
        else {"video_url": f"https://youtu.be/v{seq}", "company_name": "acme", "source": "youtube"}
    )
    job = Job(id=new_job_id(), kind=kind, priority=1 if kind == JobKind.QA else 2,
              data=freeze(data), owner="u1", created_at=time.time(), seq=seq)
    return job.replace(**changes)


def test_new_file_gets_schema_and_wal(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path)
    store.close()
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    finally:
        db.close()


def test_round_trip_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path)
    queued = make_job(seq=1)
    done = make_job(JobKind.VIDEO, seq=2, state=JobState.COMPLETED, finished_at=time.time(),
                    result=freeze({"title": "Demo", "chunks_created": 3}))
    store.add(queued)
    store.add(done.replace(state=JobState.QUEUED, result=None, finished_at=None))
    store.update(done)
    store.close()

    store = SqliteJobStore(path)
    try:
        assert store.get(queued.id) == queued
        assert store.get(done.id) == done
        assert [j.id for j in store.active()] == [queued.id]
        assert store.counts()[JobKind.VIDEO, JobState.COMPLETED] == 1
        assert store.max_seq() == 2
        assert [j.id for j in store.list(owner="u1")] == [done.id, queued.id]
        assert [j.id for j in store.list(kind=JobKind.QA, state=JobState.QUEUED)] == [queued.id]
    finally:
        store.close()


def test_prune_finished_by_count_and_age(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    try:
        jobs = [make_job(seq=i, state=JobState.COMPLETED, finished_at=1000.0 + i)
                for i in range(1, 7)]
        for job in jobs:
            store.add(job)
        removed = store.prune_finished(keep=4)
        assert removed[JobKind.QA, JobState.COMPLETED] == 2
        assert store.get(jobs[0].id) is None and store.get(jobs[2].id) is not None
        removed = store.prune_finished(finished_before=1005.0)
        assert removed.total() == 2
        assert [j.seq for j in store.list()] == [6, 5]
    finally:
        store.close()


def test_file_does_not_grow_without_bound(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path)
    try:
        big = "x" * 4000
        for i in range(1, 301):
            store.add(make_job(seq=i, state=JobState.COMPLETED, finished_at=float(i),
                               data=freeze({"question": big, "company_name": "acme"})))
        store.maintain()
        full = path.stat().st_size
        store.prune_finished(keep=0)
        store.maintain()
        assert path.stat().st_size < full / 10
        assert Path(str(path) + "-wal").stat().st_size == 0  # checkpointed and truncated
    finally:
        store.close()


def test_newer_schema_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE future (x)")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(StoreUnavailable, match="newer than this program knows"):
        SqliteJobStore(path)
    assert path.read_bytes() == before


def test_unreadable_file_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    path.write_bytes(b"this is not a database at all" * 200)
    before = path.read_bytes()
    with pytest.raises(StoreUnavailable, match="cannot be read"):
        SqliteJobStore(path)
    assert path.read_bytes() == before


def test_one_owner_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    first = SqliteJobStore(path)
    try:
        with pytest.raises(StoreUnavailable, match="in use by another process"):
            SqliteJobStore(path)
    finally:
        first.close()
    SqliteJobStore(path).close()  # free again once the owner closed it


def sqlite_settings(fast_settings: Settings, path: Path, **changes: object) -> Settings:
    return fast_settings.replace(store="sqlite", db_path=str(path), **changes)


def test_finished_jobs_resolve_after_restart(
    standin: PythonApiStandIn, fast_settings: Settings, tmp_path: Path
) -> None:
    settings = sqlite_settings(fast_settings, tmp_path / "jobs.sqlite3")
    system = JobSystem(settings).start()
    try:
        sub = system.submit(JobKind.QA, {"question": "Why?", "company_name": "acme"}, owner="u1")
        assert wait_until(lambda: system.get(sub.job.id).state == JobState.COMPLETED)
    finally:
        system.stop()
    again = JobSystem(settings).start()
    try:
        job = again.get(sub.job.id)
        assert job.state == JobState.COMPLETED and job.result is not None
        assert job.result["answer"] == "This is the answer."
        assert again.snapshot()["kinds"]["qa"]["completed"] == 1
    finally:
        again.stop()


def test_retention_deletes_from_the_file(
    standin: PythonApiStandIn, fast_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.sqlite3"
    system = JobSystem(sqlite_settings(fast_settings, path, retention_max_jobs=2)).start()
    try:
        ids = []
        for i in range(5):
            sub = system.submit(JobKind.QA, {"question": f"q{i}?", "company_name": "acme"})
            ids.append(sub.job.id)
            assert wait_until(lambda i=sub.job.id: system.get(i).state == JobState.COMPLETED)
        # Retention runs on its timer (every second), not on each finish.
        assert wait_until(lambda: system.snapshot()["registry"]["retained_finished"] == 2)
    finally:
        system.stop()
    db = sqlite3.connect(path)
    try:
        rows = {r[0] for r in db.execute("SELECT id FROM jobs")}
    finally:
        db.close()
    assert rows == set(ids[-2:])


def test_recovery_requeues_in_order_and_counts_interrupted_attempts(
    standin: PythonApiStandIn, fast_settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "jobs.sqlite3"
    now = time.time()
    store = SqliteJobStore(path)
    low = make_job(JobKind.VIDEO, seq=1, priority=3)
    first = make_job(JobKind.VIDEO, seq=2)
    second = make_job(JobKind.VIDEO, seq=3)
    long_ago = now - 3600  # died long enough ago for its calls' hold to be over
    interrupted = make_job(JobKind.VIDEO, seq=4, state=JobState.PROCESSING, attempts=1,
                           started_at=long_ago)
    exhausted = make_job(JobKind.VIDEO, seq=5, state=JobState.PROCESSING, attempts=3,
                         started_at=long_ago)
    retrying = make_job(JobKind.QA, seq=6, state=JobState.RETRYING, attempts=1,
                        next_attempt_at=now + 0.2, last_error="RetryableCallFailure: 500")
    for job in (low, first, second, interrupted, exhausted, retrying):
        store.add(job)
    store.close()

    standin.hold("process-video")
    system = JobSystem(sqlite_settings(fast_settings, path, max_concurrent_videos=1)).start()
    try:
        given_up = system.get(exhausted.id)
        assert given_up.state == JobState.FAILED
        assert "attempts used up by interruptions" in (given_up.last_error or "")
        assert standin.wait_in_flight("process-video", 1)
        standin.release("process-video")
        ids = [first.id, second.id, interrupted.id, low.id, retrying.id]
        assert wait_until(lambda: all(system.get(i).state.finished for i in ids))
        for job_id in ids:
            assert system.get(job_id).state == JobState.COMPLETED
        assert system.get(interrupted.id).attempts == 2  # the interrupted attempt counted
        assert system.get(retrying.id).attempts == 2
        urls = [c.body["video_url"] for c in standin.calls("process-video")]
        # priority 2 in arrival order (the interrupted one kept its place), then priority 3
        assert urls == [j.data["video_url"] for j in (first, second, interrupted, low)]
    finally:
        system.stop()
