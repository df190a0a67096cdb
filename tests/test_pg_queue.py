"""The shared queue on a real PostgreSQL: claims, limits, leases, reaping, cancels, pauses.

Every store opened here is a separate "instance" with its own connection
pool. Claims take explicit times (from ``T0``), so lease expiry is shown
without waiting for it.
"""

from __future__ import annotations

from collections.abc import Callable

from actors import JobKind, JobState
from actors.dispatch.scheduling import WaitingQueue
from actors.model.jobs import freeze
from actors.stores.postgres.store import PostgresJobStore
from tests import pg_server
from tests.pg_server import T0, ManualClock, make_job

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
open_pg = pg_server.open_pg
Opener = Callable[..., PostgresJobStore]
QA, VIDEO = JobKind.QA, JobKind.VIDEO
ROOMY = {QA: 10, VIDEO: 10}


def claim(store: PostgresJobStore, free: dict[JobKind, int], *, at: float, ttl: float = 30.0,
          limits: dict[JobKind, int] | None = None, aging_s: float = 60.0,
          instance: str | None = None) -> list[str]:
    """Claim and return the ids, in the order to start them."""
    jobs = store.claim(free, instance or store.instance_id, limits or ROOMY, at, aging_s, ttl)
    assert all(j.state == JobState.PROCESSING and j.started_at == at for j in jobs)
    return [j.id for j in jobs]


def test_claims_follow_the_global_order_with_aging(open_pg: Opener) -> None:
    store = open_pg()
    old_video = store.insert(make_job(VIDEO, created_at=T0))
    old_low_qa = store.insert(make_job(QA, priority=3, created_at=T0))
    new_high_qa = store.insert(make_job(QA, priority=1, created_at=T0 + 110))
    new_video = store.insert(make_job(VIDEO, created_at=T0 + 115))
    new_mid_qa = store.insert(make_job(QA, priority=2, created_at=T0 + 119))
    now = T0 + 120  # two aging steps for the oldest: priority 3 now counts as 1

    # One free Q&A worker: the aged low-priority question has waited longest.
    assert claim(store, {QA: 1}, at=now) == [old_low_qa.id]
    rest = claim(store, {QA: 5, VIDEO: 5}, at=now)
    assert rest == [old_video.id, new_high_qa.id, new_video.id, new_mid_qa.id]

    # The same order as the in-process dispatcher's WaitingQueue.
    waiting = WaitingQueue(aging_s=60.0)
    for job in (old_video, old_low_qa, new_high_qa, new_video, new_mid_qa):
        waiting.push(job)
    in_memory = [waiting.pop_next([QA], now)]
    in_memory += [waiting.pop_next([QA, VIDEO], now) for _ in range(4)]
    assert [j.id for j in in_memory if j] == [old_low_qa.id, *rest]


def test_without_aging_priority_then_arrival_decides(open_pg: Opener) -> None:
    store = open_pg()
    low = store.insert(make_job(QA, priority=3))
    high = store.insert(make_job(QA, priority=1))
    mid = [store.insert(make_job(QA, priority=2)) for _ in range(2)]
    assert claim(store, {QA: 4}, at=T0 + 10_000, aging_s=0) == [high.id, mid[0].id, mid[1].id,
                                                                 low.id]


def test_limits_hold_across_instances_and_expired_leases_free_their_slot(
    open_pg: Opener,
) -> None:
    a, b = open_pg("a"), open_pg("b")
    limits = {VIDEO: 2, QA: 10}
    videos = [a.insert(make_job(VIDEO)) for _ in range(4)]
    mine = a.claim({VIDEO: 5}, "a", limits, T0, 60.0, 30.0)
    assert [j.id for j in mine] == [videos[0].id, videos[1].id]
    assert all(j.attempts == 1 for j in mine)
    assert claim(b, {VIDEO: 5}, at=T0 + 1, limits=limits) == []  # a holds both slots
    assert a.finish(mine[0].replace(state=JobState.COMPLETED, finished_at=T0 + 2), "a")
    assert claim(b, {VIDEO: 5}, at=T0 + 2, limits=limits) == [videos[2].id]
    assert claim(b, {VIDEO: 5}, at=T0 + 3, limits=limits) == []
    assert b.in_flight(T0 + 3) == {VIDEO: 2, QA: 0}
    # a's lease ended at T0 + 30 and b's at T0 + 32: neither counts any more.
    assert b.in_flight(T0 + 40) == {VIDEO: 0, QA: 0}
    assert claim(b, {VIDEO: 5}, at=T0 + 40, limits=limits) == [videos[3].id]


def test_only_retries_that_are_due_are_claimed(open_pg: Opener) -> None:
    store = open_pg()
    retry = store.insert(make_job(state=JobState.RETRYING, attempts=1, next_attempt_at=T0 + 10,
                                  last_error="RetryableCallFailure: 500"))
    assert store.next_due() == T0 + 10
    assert claim(store, {QA: 1}, at=T0 + 5) == []
    assert claim(store, {QA: 1}, at=T0 + 10) == [retry.id]
    job = store.get(retry.id)
    assert job is not None and job.attempts == 2 and job.next_attempt_at is None
    assert store.next_due() is None


def test_leases_are_renewed_and_only_expired_ones_are_reaped(open_pg: Opener) -> None:
    a, b = open_pg("a"), open_pg("b")
    job = a.insert(make_job(VIDEO))
    a.claim({VIDEO: 1}, "a", ROOMY, T0, 60.0, 10.0)
    assert a.renew_leases("a", [job.id], 10.0, now=T0 + 5) == {job.id}  # now until T0 + 15
    assert b.renew_leases("b", [job.id], 10.0, now=T0 + 5) == set()  # not b's lease
    assert b.reap_expired(T0 + 12) == []  # a long job on a live instance is never taken
    running = b.get(job.id)
    assert running is not None and running.state == JobState.PROCESSING

    (reaped,) = b.reap_expired(T0 + 15)
    assert reaped.state == JobState.QUEUED and reaped.attempts == 1 and reaped.seq == job.seq
    error = reaped.last_error or ""
    assert "lease expired" in error and "instance a" in error
    assert b.get(job.id) == reaped
    assert a.renew_leases("a", [job.id], 10.0, now=T0 + 16) == set()  # a learns it lost it
    (again,) = b.claim({VIDEO: 1}, "b", ROOMY, T0 + 16, 60.0, 10.0)
    assert again.id == job.id and again.attempts == 2
    # a's late outcome is fenced off: b runs the job now.
    assert not a.finish(again.replace(state=JobState.COMPLETED, finished_at=T0 + 17), "a")
    assert b.finish(again.replace(state=JobState.COMPLETED, finished_at=T0 + 18), "b")
    done = b.get(job.id)
    assert done is not None and done.state == JobState.COMPLETED and done.finished_at == T0 + 18


def test_reaping_fails_a_job_whose_attempts_are_used_up(open_pg: Opener) -> None:
    store = open_pg()
    job = store.insert(make_job(max_attempts=1))
    claim(store, {QA: 1}, at=T0, ttl=5.0)
    (failed,) = store.reap_expired(T0 + 5)
    assert failed.state == JobState.FAILED and failed.finished_at == T0 + 5
    assert (failed.last_error or "").endswith("attempts used up by interruptions")
    assert store.get(job.id) == failed


def test_a_processed_job_is_taken_over_for_storing_not_run_again(open_pg: Opener) -> None:
    a, b = open_pg("a"), open_pg("b")
    job = a.insert(make_job(VIDEO))
    (running,) = a.claim({VIDEO: 1}, "a", ROOMY, T0, 60.0, 10.0)
    processed = running.replace(result=freeze({"title": "Demo"}))
    assert a.finish(processed, "a")  # still processing: its result is being stored
    assert a.in_flight(T0 + 1)[VIDEO] == 0  # but its Python API slot is free
    assert b.reap_expired(T0 + 20) == []  # no instance to take it over: left alone
    (taken,) = b.reap_expired(T0 + 20, instance_id="b", lease_ttl_s=10.0)
    assert taken.state == JobState.PROCESSING and taken.result == processed.result
    assert taken.attempts == 1
    assert not a.finish(taken.replace(state=JobState.COMPLETED, finished_at=T0 + 21), "a")
    assert b.finish(taken.replace(state=JobState.COMPLETED, finished_at=T0 + 21), "b")
    assert b.get(job.id) is not None


def test_cancel_takes_waiting_jobs_only(open_pg: Opener) -> None:
    store = open_pg()
    waiting, running = store.insert(make_job()), store.insert(make_job())
    assert claim(store, {QA: 1}, at=T0) == [waiting.id]
    cancelled = store.cancel(running.id, now=T0 + 1)
    assert cancelled is not None and cancelled.state == JobState.CANCELLED
    assert cancelled.finished_at == T0 + 1
    assert store.cancel(waiting.id) is None  # processing: a claim got there first
    assert claim(store, {QA: 5}, at=T0 + 2) == []


def test_queue_position_is_the_claim_order(open_pg: Opener) -> None:
    store = open_pg()
    jobs = [store.insert(make_job()) for _ in range(3)]
    assert [store.position(j.id, T0, 60.0) for j in jobs] == [1, 2, 3]
    claim(store, {QA: 1}, at=T0)
    assert store.position(jobs[0].id, T0, 60.0) is None
    assert store.position(jobs[2].id, T0, 60.0) == 2


def test_pauses_are_global(open_pg: Opener) -> None:
    clock = ManualClock()
    a, b = open_pg("a", clock=clock), open_pg("b", clock=clock)
    video, question = a.insert(make_job(VIDEO)), a.insert(make_job(QA))
    assert a.pause(VIDEO, "operator") and not a.pause(VIDEO, "operator")
    assert b.paused() == {VIDEO: {"operator"}, QA: set()}
    assert claim(b, {VIDEO: 1, QA: 1}, at=T0) == [question.id]  # Q&A goes on
    assert b.resume(VIDEO, "operator") and not b.resume(VIDEO, "operator")
    assert b.paused() == {VIDEO: set(), QA: set()}

    # Bound to an instance: holds while it heartbeats, lifts itself when it dies.
    a.renew_leases("a", [], 30.0, now=T0)
    a.pause(VIDEO, "memory", instance_id="a")
    assert b.paused()[VIDEO] == {"memory@a"}
    assert claim(b, {VIDEO: 1}, at=T0 + 1) == []
    clock.now = T0 + 31
    assert b.paused()[VIDEO] == set()
    assert claim(b, {VIDEO: 1}, at=T0 + 31) == [video.id]


def test_update_clears_the_lease_and_a_retried_job_is_claimable_again(open_pg: Opener) -> None:
    store = open_pg()
    job = store.insert(make_job(max_attempts=1))
    (running,) = store.claim({QA: 1}, "a", ROOMY, T0, 60.0, 30.0)
    failed = running.replace(state=JobState.FAILED, finished_at=T0 + 1, last_error="boom")
    store.update(failed)
    assert store.in_flight(T0 + 2)[QA] == 0
    assert store.renew_leases("a", [job.id], 30.0, now=T0 + 2) == set()
    store.update(failed.replace(state=JobState.QUEUED, attempts=0, finished_at=None))
    (again,) = store.claim({QA: 1}, "a", ROOMY, T0 + 3, 60.0, 30.0)
    assert again.id == job.id and again.attempts == 1 and again.last_error == "boom"
