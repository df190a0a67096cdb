"""Several instances at once on a real PostgreSQL: parallel claimers and reapers, wake-ups.

Each store is a separate "instance" with its own connection pool, run from
its own thread. The claimers hammer one queue and the test checks what must
never happen (a job claimed twice, a limit exceeded) rather than timings.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable

import psycopg

from actors import JobKind, JobState
from actors.model.jobs import Job
from actors.stores.postgres.store import PostgresJobStore
from tests import pg_server
from tests.pg_server import T0, make_job
from tests.test_actors_support import wait_until

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
open_pg = pg_server.open_pg
Opener = Callable[..., PostgresJobStore]
QA, VIDEO = JobKind.QA, JobKind.VIDEO


def test_a_job_added_on_one_instance_wakes_the_others(open_pg: Opener) -> None:
    a, b = open_pg("a"), open_pg("b")
    woken: list[JobKind | None] = []
    wake = threading.Event()

    def on_wake(kind: JobKind | None) -> None:
        woken.append(kind)
        wake.set()

    listener = a.listen(on_wake)
    b.insert(make_job(VIDEO))
    assert wake.wait(10), "no wake-up for a job added on another instance"
    assert woken == [VIDEO]

    wake.clear()
    b.pause(QA, "operator")
    b.resume(QA, "operator")
    assert wake.wait(10), "no wake-up for a resume"
    wait_until(lambda: QA in woken, "the resume's wake-up")
    assert "listening" in repr(listener)
    listener.stop()
    assert not listener.alive


def test_claimers_in_parallel_never_share_a_job_nor_exceed_a_limit(open_pg: Opener) -> None:
    limits = {QA: 4, VIDEO: 2}
    capacity = {QA: 3, VIDEO: 1}  # idle workers per instance: together far above the limits
    seeder = open_pg("seed")
    ids = {seeder.insert(make_job(kind)).id for kind in [QA] * 150 + [VIDEO] * 60}
    lock = threading.Lock()
    seen: set[str] = set()
    holding = dict.fromkeys(JobKind, 0)
    most = dict.fromkeys(JobKind, 0)
    done: list[str] = []
    errors: list[BaseException] = []
    stores = [open_pg(f"i{n}", pool_size=2) for n in range(5)]

    def run(store: PostgresJobStore) -> None:
        held: deque[Job] = deque()
        idle = threading.Event()
        try:
            while len(done) < len(ids) and not errors:
                free = {k: capacity[k] - sum(j.kind == k for j in held) for k in JobKind}
                claimed = store.claim(free, store.instance_id, limits, time.time(), 60.0, 60.0)
                with lock:
                    for job in claimed:
                        assert job.id not in seen, f"{job.id} claimed twice"
                        seen.add(job.id)
                        holding[job.kind] += 1
                        most[job.kind] = max(most[job.kind], holding[job.kind])
                held.extend(claimed)
                if not held:
                    idle.wait(0.002)  # everything is held elsewhere: poll again, bounded
                    continue
                job = held.popleft()
                with lock:  # counted free before the database frees it: never over-counted
                    holding[job.kind] -= 1
                finished = job.replace(state=JobState.COMPLETED, finished_at=time.time())
                assert store.finish(finished, store.instance_id)
                with lock:
                    done.append(job.id)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,), name=f"claimer-{n}")
               for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=50)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert sorted(done) == sorted(ids)  # every job exactly once
    assert most[QA] <= limits[QA] and most[VIDEO] <= limits[VIDEO], most
    assert seeder.counts() == Counter({(QA, JobState.COMPLETED): 150,
                                       (VIDEO, JobState.COMPLETED): 60})
    assert all(j.attempts == 1 for j in seeder.list(limit=1000))


def test_concurrent_reapers_take_each_expired_job_once(open_pg: Opener) -> None:
    dead, a, b = open_pg("dead"), open_pg("a"), open_pg("b")
    ids = {dead.insert(make_job()).id for _ in range(30)}
    assert len(dead.claim({QA: 30}, "dead", {QA: 30, VIDEO: 1}, T0, 60.0, 1.0)) == 30
    reaped: dict[str, list[str]] = {}
    start = threading.Barrier(2)

    def reap(store: PostgresJobStore) -> None:
        start.wait(timeout=10)
        reaped[store.instance_id] = [j.id for j in store.reap_expired(T0 + 5)]

    threads = [threading.Thread(target=reap, args=(s,)) for s in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    together = reaped["a"] + reaped["b"]
    assert sorted(together) == sorted(ids)  # each once, whoever got it
    assert a.counts()[QA, JobState.QUEUED] == 30


def test_listener_reconnects_and_says_wakeups_may_have_been_missed(
    pg_url: str, open_pg: Opener
) -> None:
    a, b = open_pg("a"), open_pg("b")
    woken: list[JobKind | None] = []
    listener = a.listen(woken.append)
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                      " WHERE application_name = 'qudemo-jobs a' AND query LIKE 'LISTEN%'")
    wait_until(lambda: None in woken, "the listener to reconnect and report a possible gap")
    b.insert(make_job(VIDEO))
    wait_until(lambda: VIDEO in woken, "a wake-up after the reconnect")
    a.close()  # stops its listeners
    assert not listener.alive


def test_a_claim_counts_slots_only_after_the_claim_before_it_committed(
    pg_url: str, open_pg: Opener
) -> None:
    # Deterministic form of the race the hammer above can only make likely: another
    # instance is mid-claim (kind lock held, a slot taken, not committed yet).
    b = open_pg("b")
    first, second = b.insert(make_job(VIDEO)), b.insert(make_job(VIDEO))
    holder = psycopg.connect(pg_url)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended("
                       "current_schema() || ':qudemo:' || 'claim:video', 0))")
        holder.execute("UPDATE qudemo_jobs SET state = 'processing', lease_owner = 'x',"
                       " lease_expires_at = %s WHERE id = %s", (T0 + 100, first.id))
        got: list[list[Job]] = []
        claimer = threading.Thread(
            target=lambda: got.append(b.claim({VIDEO: 1}, "b", {VIDEO: 1, QA: 1}, T0 + 1,
                                              60.0, 30.0)))
        claimer.start()
        wait_until(lambda: holder.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone() == (1,), "the claim to wait for the kind's lock")
        holder.commit()
        claimer.join(timeout=30)
    finally:
        holder.close()
    assert got == [[]]  # the committed claim holds the only slot
    waiting = b.get(second.id)
    assert waiting is not None and waiting.state == JobState.QUEUED
