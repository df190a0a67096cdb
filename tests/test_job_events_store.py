"""The job stores' event log: one event per new job and per state change, in the job's own
transaction, pruned with the job, read from other threads, never skipping a late commit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from actors import JobKind, JobState
from actors.model.events import JobEvent
from actors.model.jobs import freeze
from actors.stores.base import JobStore
from actors.stores.events import EventFeed
from actors.stores.memory import MemoryJobStore
from actors.stores.postgres.claims import update as pg_update
from actors.stores.postgres.store import PostgresJobStore
from actors.stores.sqlite import SqliteJobStore
from tests import pg_server
from tests.pg_server import T0, make_job

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
open_pg = pg_server.open_pg
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["memory", "sqlite"])
def local_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[JobStore]:
    store: JobStore = (MemoryJobStore() if request.param == "memory"
                       else SqliteJobStore(tmp_path / "jobs.sqlite3"))
    yield store
    store.close()


def states(events: list[JobEvent]) -> list[str]:
    return [e.job.state.value for e in events]


def lifecycle(store: JobStore, owner: str = "u1") -> str:
    """Run one job through queued, processing, retrying, queued, processing, completed."""
    job = make_job(owner=owner, state=JobState.QUEUED, seq=1)
    store.add(job)
    running = job.replace(state=JobState.PROCESSING, attempts=1, started_at=T0 + 1)
    store.update(running)
    store.update(running.replace(state=JobState.RETRYING, next_attempt_at=T0 + 5,
                                 last_error="RetryableCallFailure: 503"))
    store.update(running.replace(state=JobState.QUEUED))
    running = running.replace(attempts=2)
    store.update(running)
    store.update(running.replace(result=freeze({"answer": "a"})))  # no state change: no event
    store.update(running.replace(state=JobState.COMPLETED, finished_at=T0 + 9,
                                 result=freeze({"answer": "a"})))
    return job.id


def check_log(store: JobStore) -> None:
    first = lifecycle(store, owner="u1")
    other = lifecycle(store, owner="u2")
    events = store.events_after(0)
    assert [e.id for e in events] == sorted({e.id for e in events})  # ascending, unique
    assert states(store.events_after(0, job_id=first)) == [
        "queued", "processing", "retrying", "queued", "processing", "completed"]
    done = store.events_after(0, job_id=first)[-1].job
    assert done.result == freeze({"answer": "a"}) and done.attempts == 2
    retrying = store.events_after(0, job_id=first)[2].job
    assert retrying.next_attempt_at == T0 + 5 and retrying.last_error.startswith("Retryable")
    assert {e.job.id for e in store.events_after(0, owner="u2")} == {other}
    horizon = store.last_event_id()
    assert horizon == events[-1].id
    middle = events[5].id
    assert [e.id for e in store.events_after(middle)] == [e.id for e in events if e.id > middle]
    assert len(store.events_after(0, limit=3)) == 3
    # Retention takes a job's events with it; ids are never given again.
    assert store.prune_finished(limit=1).total() == 1
    assert {e.job.id for e in store.events_after(0)} == {other}
    store.remove([other])
    assert store.events_after(0) == [] and store.last_event_id() == horizon
    third = make_job(owner="u1", state=JobState.QUEUED, seq=3)
    store.add(third)
    assert [e.id for e in store.events_after(0)] == [horizon + 1]


def test_local_stores_log_every_state_change(local_store: JobStore) -> None:
    check_log(local_store)


def test_the_sqlite_log_survives_a_restart_and_is_read_beside_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = SqliteJobStore(path)
    job_id = lifecycle(store)
    before = store.events_after(0)
    store.close()
    store = SqliteJobStore(path)
    try:
        assert store.events_after(0) == before and store.last_event_id() == before[-1].id
        # The writer holds an open write transaction: the read connection still answers.
        store._db.execute("BEGIN IMMEDIATE")
        store._db.execute("UPDATE jobs SET state = 'failed' WHERE id = ?", (job_id,))
        seen: list[list[JobEvent]] = []
        reader = threading.Thread(target=lambda: seen.append(store.events_after(0)))
        reader.start()
        reader.join(10)
        assert seen == [before]  # the uncommitted change is not visible, nothing waited
        store._db.execute("ROLLBACK")
    finally:
        store.close()


def test_feed_hands_new_events_to_subscribers_in_order(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    store.add(make_job(state=JobState.QUEUED, seq=1))
    feed = EventFeed(store, poll_s=30.0).start()  # only the store's wake-ups drive it
    got: list[int] = []
    arrived = threading.Event()

    def deliver(events: list[JobEvent]) -> None:
        got.extend(e.id for e in events)
        if len(got) >= 6:
            arrived.set()

    try:
        sub, horizon = feed.subscribe(deliver)
        assert horizon == 1
        lifecycle(store)
        assert arrived.wait(10)
        assert got == list(range(2, 8))
        feed.unsubscribe(sub)
    finally:
        feed.stop()
        store.close()


# --- PostgreSQL ---------------------------------------------------------------------------

def test_postgres_logs_every_change_whatever_statement_makes_it(
        open_pg: Callable[..., PostgresJobStore]) -> None:
    check_log(open_pg("a"))
    store = open_pg("b")
    for leftover in store.active():
        store.cancel(leftover.id)
    # A claim, a reap and a cancel change states in SQL only: they are events too.
    job = store.insert(make_job(state=JobState.QUEUED))
    claimed = store.claim({JobKind.QA: 1}, "a", {JobKind.QA: 5}, None, 0.0, lease_ttl_s=0.01)
    assert [j.id for j in claimed] == [job.id]
    reaped = wait_for(lambda: store.reap_expired(instance_id="a"))
    assert [j.state for j in reaped] == [JobState.QUEUED]
    assert store.cancel(job.id) is not None
    assert states(store.events_after(0, job_id=job.id)) == [
        "queued", "processing", "queued", "cancelled"]


def wait_for(probe: Callable[[], list[object]], timeout_s: float = 10.0) -> list[object]:
    done = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        found = probe()
        if found:
            return found
        done.wait(0.05)
    raise AssertionError("nothing happened")


def test_postgres_readers_never_pass_an_event_that_commits_late(
        open_pg: Callable[..., PostgresJobStore], pg_url: str) -> None:
    a, b = open_pg("a"), open_pg("b")
    early, late = make_job(state=JobState.QUEUED), make_job(state=JobState.QUEUED)
    a.insert(early)
    a.insert(late)
    horizon = b.last_event_id()
    with psycopg.connect(pg_url) as slow:
        # A transaction takes the next event id and has not committed yet...
        pg_update(slow, early.replace(state=JobState.CANCELLED, finished_at=T0))
        # ...while a later one commits: its event is visible, the earlier id is not.
        a.update(late.replace(state=JobState.CANCELLED, finished_at=T0))
        assert b.last_event_id() == horizon
        assert b.events_after(horizon) == []
        slow.commit()
    seen = b.events_after(horizon)
    assert [(e.job.id, e.job.state) for e in seen] == [
        (early.id, JobState.CANCELLED), (late.id, JobState.CANCELLED)]


def test_postgres_horizon_passes_an_id_whose_transaction_rolled_back(
        open_pg: Callable[..., PostgresJobStore], pg_url: str) -> None:
    a, b = open_pg("a"), open_pg("b")
    first, second = make_job(state=JobState.QUEUED), make_job(state=JobState.QUEUED)
    a.insert(first)
    a.insert(second)
    horizon = b.last_event_id()
    with psycopg.connect(pg_url) as slow:
        pg_update(slow, first.replace(state=JobState.CANCELLED, finished_at=T0))
        a.update(second.replace(state=JobState.CANCELLED, finished_at=T0))
        assert b.last_event_id() == horizon  # the gap is noticed; the running tx may fill it
        slow.rollback()
    # The transaction that held the missing id has ended: the next look passes it.
    assert b.last_event_id() == horizon + 2
    assert [(e.job.id, e.id) for e in b.events_after(horizon)] == [(second.id, horizon + 2)]
