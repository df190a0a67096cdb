"""One capacity per Python API instance, held across every backend (issue 20): claims that choose.

With the shared PostgreSQL queue each backend claims, then used to choose the Python
API instance locally: ``claim`` counts slots per kind over all instances together,
so two backends could send one instance more calls (both kinds summed) than its
capacity. ``claim_on_instances`` counts the slots held at each instance, from
every backend, and assigns the instance in the claim. Each store opened here is a
separate backend; the instances are URLs only (nothing is called), and what they
hold is read back by SQL. Each test says what the old ``claim`` gives instead.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import psycopg
import pytest

from actors import JobKind, JobState
from actors.model.jobs import Job, freeze
from actors.stores.postgres.store import PostgresJobStore
from tests import pg_server
from tests.pg_server import T0, make_job
from tests.test_actors_support import wait_until

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
open_pg = pg_server.open_pg
pytestmark = pytest.mark.timeout(120)
Opener = Callable[..., PostgresJobStore]
Rooms = Mapping[str, tuple[int, Mapping[JobKind, int]]]
Db = psycopg.Connection[Any]
QA, VIDEO = JobKind.QA, JobKind.VIDEO
A, B, C = "http://api-a:8000", "http://api-b:8000", "http://api-c:8000"
ROOMY = {QA: 100, VIDEO: 100}
"""Global per-kind limits out of the way: the instances' capacity is under test."""
TWO_OF_THREE = {A: (3, {QA: 3, VIDEO: 2}), B: (3, {QA: 3, VIDEO: 2})}
"""Two instances of capacity 3, video at most 2 of it (one unit kept for questions)."""
HELD_SQL = ("SELECT api_instance, kind, count(*) FROM qudemo_jobs WHERE state = 'processing'"
            " AND NOT has_result AND (lease_expires_at > %(at)s OR hold_until > %(at)s)"
            " GROUP BY 1, 2")


@pytest.fixture
def db(pg_url: str) -> Iterator[Db]:
    """A connection of its own, reading what the backends committed."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        yield conn


def held(conn: Db, at: float) -> dict[str | None, Counter[str]]:
    """Per Python API instance (None: claimed without one), the slot-holding jobs per kind."""
    found: dict[str | None, Counter[str]] = {}
    for url, kind, count in conn.execute(HELD_SQL, {"at": at}):
        found.setdefault(url, Counter())[kind] = int(count)
    return found


def claim_on(store: PostgresJobStore, free: dict[JobKind, int], rooms: Rooms, *, at: float,
             ttl: float = 30.0, hold: float = 0.0, limits: dict[JobKind, int] | None = None,
             ceilings: dict[JobKind, int] | None = None) -> list[tuple[Job, str]]:
    """Claim on ``rooms`` at ``at``; every job comes back processing, with its instance."""
    claimed = store.claim_on_instances(free, store.instance_id, limits or ROOMY, rooms, at, 60.0,
                                       ttl, hold, ceilings=ceilings)
    assert all(j.state == JobState.PROCESSING and j.started_at == at for j, _ in claimed)
    return claimed


def where(claimed: list[tuple[Job, str]]) -> list[tuple[str, str]]:
    """``(kind, instance)`` per claimed job, in the order returned."""
    return [(job.kind.value, url) for job, url in claimed]


def of(kind: JobKind, company: str, **changes: object) -> Job:
    job = make_job(kind, **changes)
    return job.replace(data=freeze({**job.data, "company_name": company}))


def test_an_instance_capacity_spans_both_kinds_and_every_backend(
        open_pg: Opener, db: Db) -> None:
    a, b = open_pg("a"), open_pg("b")
    for _ in range(5):
        a.insert(make_job(QA))
        a.insert(make_job(VIDEO))
    only_a = {A: (3, {QA: 3, VIDEO: 2})}
    assert where(claim_on(a, {QA: 2}, only_a, at=T0)) == [("qa", A), ("qa", A)]
    # Backend b sees the two questions a sent to A: one unit is left there, for a video.
    # (The old claim, limits {qa: 3, video: 2}, gives b both videos, sent to A: 4 of 3.)
    assert where(claim_on(b, {VIDEO: 2}, only_a, at=T0 + 1)) == [("video", A)]
    assert claim_on(b, {QA: 1, VIDEO: 1}, only_a, at=T0 + 2) == []
    assert claim_on(a, {QA: 1, VIDEO: 1}, only_a, at=T0 + 2) == []
    assert held(db, T0 + 2) == {A: Counter(qa=2, video=1)}
    assert a.api_in_flight(T0 + 2) == b.api_in_flight(T0 + 2) == {A: {QA: 2, VIDEO: 1}}
    assert a.in_flight(T0 + 2) == {QA: 2, VIDEO: 1}


def test_questions_first_then_videos_each_to_the_instance_with_most_room(
        open_pg: Opener, db: Db) -> None:
    a, b = open_pg("a"), open_pg("b")
    # The videos are older and as urgent: the old claim would start them first, and with
    # limits {qa: 6, video: 4} (the instances summed) give a 4 + 4: 8 calls for 6 units.
    videos = [a.insert(make_job(VIDEO, priority=1, created_at=T0 - 100)) for _ in range(6)]
    questions = [a.insert(make_job(QA, priority=1)) for _ in range(6)]
    claimed = claim_on(a, {QA: 4, VIDEO: 4}, TWO_OF_THREE, at=T0)
    # Questions take the free capacity first, spread to the roomier instance (A on a tie);
    # the videos get what is left: one unit on each.
    assert where(claimed) == [("qa", A), ("qa", B), ("qa", A), ("qa", B),
                              ("video", A), ("video", B)]
    assert [j.id for j, _ in claimed] == [*(q.id for q in questions[:4]),
                                         videos[0].id, videos[1].id]
    assert claim_on(b, {QA: 4, VIDEO: 4}, TWO_OF_THREE, at=T0 + 1) == []  # both are full
    assert held(db, T0 + 1) == {A: Counter(qa=2, video=1), B: Counter(qa=2, video=1)}


def test_two_backends_at_once_fill_each_instance_to_its_capacity(
        open_pg: Opener, db: Db) -> None:
    a, b = open_pg("a"), open_pg("b")
    videos = [a.insert(make_job(VIDEO)) for _ in range(10)]
    questions = [b.insert(make_job(QA)) for _ in range(10)]
    got: dict[str, list[tuple[Job, str]]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(store: PostgresJobStore) -> None:
        try:
            start.wait(timeout=10)
            got[store.instance_id] = claim_on(store, {QA: 6, VIDEO: 4}, TWO_OF_THREE, at=T0)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    # Whichever claimed first took six questions, three per instance (Q&A first), and the
    # other found both instances full. (The old claim, limits {qa: 6, video: 4}, gives the
    # first 6 + 4: ten calls for six units, whatever the backends then choose.)
    first, second = sorted(got.values(), key=len, reverse=True)
    assert second == []
    assert sorted(where(first)) == [("qa", A)] * 3 + [("qa", B)] * 3
    assert [j.id for j, _ in first] == [q.id for q in questions[:6]]  # the fair order
    assert held(db, T0) == {A: Counter(qa=3), B: Counter(qa=3)}
    assert a.counts()[VIDEO, JobState.QUEUED] == len(videos)


def test_the_fair_order_and_the_ceilings_hold_as_in_the_old_claim(
        open_pg: Opener, db: Db) -> None:
    a, b = open_pg("a"), open_pg("b")
    old_low = a.insert(of(QA, "w", priority=3, created_at=T0 - 200))  # aged to priority 1
    for _ in range(4):  # x's backlog, then y's: the fair order interleaves them
        a.insert(of(QA, "x"))
    for _ in range(4):
        b.insert(of(QA, "y"))
    waiting = [j for j in a.list(limit=100) if j.state == JobState.QUEUED]
    order = sorted(waiting, key=lambda j: a.position(j.id, T0, 60.0) or 0)
    assert order[0].id == old_low.id
    rooms = {A: (2, {QA: 2}), B: (2, {QA: 2, VIDEO: 2})}
    mine = claim_on(a, {QA: 3}, rooms, at=T0)
    theirs = claim_on(b, {QA: 3}, rooms, at=T0 + 0.5)
    # The queue's own order (positions: aging, fair tags, seq) across both backends; b
    # gets one, as four units are all there are. (The old claim gives b three: 6 of 4.)
    assert [j.id for j, _ in mine + theirs] == [j.id for j in order[:4]]
    assert "".join(j.data["company_name"] for j, _ in mine + theirs) == "wxyx"
    assert where(mine + theirs) == [("qa", A), ("qa", B), ("qa", A), ("qa", B)]
    assert held(db, T0 + 1) == {A: Counter(qa=2), B: Counter(qa=2)}
    # A company at its running ceiling is passed over, as in the old claim.
    c = open_pg("c")
    for _ in range(3):
        c.insert(of(VIDEO, "z"))
    claimed = claim_on(c, {VIDEO: 5}, {C: (5, {VIDEO: 5})}, at=T0 + 1, ceilings={VIDEO: 2})
    assert [(j.data["company_name"], url) for j, url in claimed] == [("z", C), ("z", C)]


def test_an_instance_gets_none_of_a_kind_whose_most_is_zero(
        open_pg: Opener, db: Db) -> None:
    a, b = open_pg("a"), open_pg("b")
    for _ in range(10):
        a.insert(make_job(QA))
        a.insert(make_job(VIDEO))
    # A holds video for its memory, C is cooling (capacity 0), D is not offered at all.
    rooms = {A: (4, {QA: 4, VIDEO: 0}), B: (4, {QA: 4, VIDEO: 2}), C: (0, {QA: 3, VIDEO: 3})}
    # (The old claim, limits {qa: 11, video: 5}, gives four videos: two more than B takes.)
    assert where(claim_on(a, {VIDEO: 4}, rooms, at=T0)) == [("video", B)] * 2
    claimed = claim_on(b, {QA: 8, VIDEO: 1}, rooms, at=T0 + 1)
    assert where(claimed) == [("qa", A), ("qa", A), ("qa", A), ("qa", B), ("qa", A), ("qa", B)]
    assert held(db, T0 + 1) == {A: Counter(qa=4), B: Counter(qa=2, video=2)}
    assert claim_on(b, {QA: 1}, {"http://api-d:8000": (0, {QA: 5})}, at=T0 + 2) == []
    assert claim_on(b, {QA: 1}, {}, at=T0 + 2) == []


def test_finished_and_released_jobs_free_their_instance(
        open_pg: Opener, db: Db) -> None:
    a, b = open_pg("a"), open_pg("b")
    for _ in range(4):
        a.insert(make_job(QA))
        a.insert(make_job(VIDEO))
    rooms = {A: (2, {QA: 2, VIDEO: 2})}
    (q1, _), (q2, _) = claim_on(a, {QA: 2}, rooms, at=T0)
    # (The old claim, limits {qa: 2, video: 2}, gives b a video now: 3 calls at A.)
    assert claim_on(b, {VIDEO: 1}, rooms, at=T0 + 1) == []
    assert a.finish(q1.replace(state=JobState.COMPLETED, finished_at=T0 + 2), "a")
    ((v1, at_v1),) = claim_on(b, {VIDEO: 2}, rooms, at=T0 + 3)
    assert at_v1 == A and v1.kind == VIDEO
    # A retry waiting out its backoff holds nothing.
    assert b.finish(v1.replace(state=JobState.RETRYING, next_attempt_at=T0 + 100), "b")
    assert where(claim_on(a, {QA: 2, VIDEO: 2}, rooms, at=T0 + 4)) == [("qa", A)]
    # A processed one (only its result left to store) has left the Python API.
    assert a.finish(q2.replace(result=freeze({"answer": "a"})), "a")
    assert where(claim_on(b, {VIDEO: 2}, rooms, at=T0 + 5)) == [("video", A)]
    assert held(db, T0 + 5) == {A: Counter(qa=1, video=1)}
    # The instance is cleared once a job leaves processing (the old claim sets none).
    gone = dict(db.execute("SELECT id, api_instance FROM qudemo_jobs"
                           " WHERE id = ANY(%s)", ([q1.id, v1.id],)).fetchall())
    assert gone == {q1.id: None, v1.id: None}


def test_an_expired_lease_frees_its_instance_only_after_its_hold(
        open_pg: Opener, db: Db) -> None:
    dead, b = open_pg("dead"), open_pg("b")
    for _ in range(3):
        dead.insert(make_job(QA))
        dead.insert(make_job(VIDEO))
    rooms = {A: (2, {QA: 2, VIDEO: 2})}
    # A backend dies holding two questions at A: lease to T0 + 10, held until T0 + 30.
    assert len(claim_on(dead, {QA: 2}, rooms, at=T0, ttl=10.0, hold=30.0)) == 2
    # Past the lease the calls may still be at A. (The old claim, limits {qa: 2,
    # video: 2}, counts no video held and gives two: four calls at A.)
    assert claim_on(b, {VIDEO: 2}, rooms, at=T0 + 20, ttl=600.0) == []
    assert held(db, T0 + 20) == {A: Counter(qa=2)}
    assert where(claim_on(b, {VIDEO: 2}, rooms, at=T0 + 31, ttl=600.0)) == [("video", A)] * 2
    reaped = b.reap_expired(T0 + 32)  # the questions are queued again, A is full of videos
    assert {j.state for j in reaped} == {JobState.QUEUED} and len(reaped) == 2
    assert claim_on(b, {QA: 2}, rooms, at=T0 + 33) == []
    assert held(db, T0 + 33) == {A: Counter(video=2)}


def test_a_claim_counts_an_instance_only_after_the_claim_before_it_committed(
        pg_url: str, open_pg: Opener) -> None:
    # Deterministic form of the race: another backend is mid-claim of a question for A
    # (the one lock for both kinds held, its slot taken, not committed yet). The old
    # claim of a video takes the video lock only, so it does not wait, counts no video,
    # and takes one: A, capacity 1, gets two calls.
    b = open_pg("b")
    question, video = b.insert(make_job(QA)), b.insert(make_job(VIDEO))
    holder = psycopg.connect(pg_url)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended("
                       "current_schema() || ':qudemo:' || 'claim-on', 0))")
        holder.execute("UPDATE qudemo_jobs SET state = 'processing', lease_owner = 'x',"
                       " lease_expires_at = %s, api_instance = %s WHERE id = %s",
                       (T0 + 100, A, question.id))
        got: list[list[tuple[Job, str]]] = []
        claimer = threading.Thread(target=lambda: got.append(
            claim_on(b, {VIDEO: 1}, {A: (1, {QA: 1, VIDEO: 1})}, at=T0 + 1)))
        claimer.start()
        wait_until(lambda: holder.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone() == (1,), "the claim to wait for the lock of both kinds")
        holder.commit()
        claimer.join(timeout=30)
    finally:
        holder.close()
    assert got == [[]]  # the committed question holds A's only unit
    waiting = b.get(video.id)
    assert waiting is not None and waiting.state == JobState.QUEUED


def test_during_a_rolling_deploy_the_claim_waits_for_the_old_claims_kind_lock(
        pg_url: str, open_pg: Opener) -> None:
    # A backend not upgraded yet is mid-claim of a video with the old claim (the video
    # lock held, the global video slot taken, no instance recorded). The new claim takes
    # that kind lock too, after its own: it waits, then sees the slot, takes the question
    # and no video. (Without the kind locks it would take the video too: 2 of limit 1.)
    b = open_pg("b")
    first, second, question = (b.insert(make_job(VIDEO)), b.insert(make_job(VIDEO)),
                               b.insert(make_job(QA)))
    holder = psycopg.connect(pg_url)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(hashtextextended("
                       "current_schema() || ':qudemo:' || 'claim:video', 0))")
        holder.execute("UPDATE qudemo_jobs SET state = 'processing', lease_owner = 'old',"
                       " lease_expires_at = %s WHERE id = %s", (T0 + 100, first.id))
        got: list[list[tuple[Job, str]]] = []
        claimer = threading.Thread(target=lambda: got.append(
            claim_on(b, {QA: 1, VIDEO: 1}, TWO_OF_THREE, at=T0 + 1,
                     limits={QA: 5, VIDEO: 1})))
        claimer.start()
        wait_until(lambda: holder.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone() == (1,), "the claim to wait for the old claim's video lock")
        holder.commit()
        claimer.join(timeout=30)
    finally:
        holder.close()
    assert [(j.id, url) for j, url in got[0]] == [(question.id, A)]
    waiting = b.get(second.id)
    assert waiting is not None and waiting.state == JobState.QUEUED


def test_claimers_in_parallel_never_over_grant_an_instance(
        pg_url: str, open_pg: Opener) -> None:
    # Eight claimers on two backends, each asking more than any instance takes. (With the
    # old claim, limits {qa: 9, video: 3}, one claimer alone may take 2 + 1 three times
    # over and send them where it sees room: far beyond C's 2 or B's single video.)
    rooms = {A: (3, {QA: 3, VIDEO: 2}), B: (2, {QA: 2, VIDEO: 1}), C: (4, {QA: 4, VIDEO: 0})}
    capacity = {url: total for url, (total, _) in rooms.items()}
    kind_most = {(url, kind.value): most.get(kind, 0)
                 for url, (_, most) in rooms.items() for kind in JobKind}
    seeder = open_pg("seed")
    ids = {seeder.insert(make_job(kind)).id for kind in [QA] * 160 + [VIDEO] * 60}
    stores = [open_pg(f"backend-{n}", pool_size=5) for n in range(2)]
    lock = threading.Lock()
    seen: set[str] = set()
    done: list[str] = []
    errors: list[BaseException] = []
    most: Counter[tuple[str, str]] = Counter()  # the most seen in the database at once
    stop = threading.Event()

    def check(conn: Db) -> None:
        for url, counts in held(conn, time.time()).items():
            assert url in rooms, f"a slot held at {url}"
            assert counts.total() <= capacity[url], (url, counts)
            for kind, n in counts.items():
                assert n <= kind_most[url, kind], (url, kind, n)
                with lock:
                    most[url, kind] = max(most[url, kind], n)
            with lock:
                most[url, "total"] = max(most[url, "total"], counts.total())

    def claimer(store: PostgresJobStore) -> None:
        held_here: deque[Job] = deque()
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                while len(done) < len(ids) and not errors:
                    free = {QA: 2 - sum(j.kind == QA for j in held_here),
                            VIDEO: 1 - sum(j.kind == VIDEO for j in held_here)}
                    claimed = store.claim_on_instances(free, store.instance_id, ROOMY, rooms,
                                                       None, 60.0, 60.0)
                    check(conn)  # read right after a claim, with all held still held
                    with lock:
                        for job, _ in claimed:
                            assert job.id not in seen, f"{job.id} claimed twice"
                            seen.add(job.id)
                    held_here.extend(job for job, _ in claimed)
                    if not held_here:
                        stop.wait(0.002)  # everything is held elsewhere: poll again, bounded
                        continue
                    job = held_here.popleft()
                    finished = job.replace(state=JobState.COMPLETED, finished_at=time.time())
                    assert store.finish(finished, store.instance_id)
                    with lock:
                        done.append(job.id)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    def monitor() -> None:  # reads on its own, between the claims too
        try:
            with psycopg.connect(pg_url, autocommit=True) as conn:
                while not stop.is_set():
                    check(conn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(stores[n % 2],), name=f"claimer-{n}")
               for n in range(8)]
    watcher = threading.Thread(target=monitor, name="monitor")
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    stop.set()
    watcher.join(timeout=10)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert sorted(done) == sorted(ids)  # every job exactly once
    assert all(j.attempts == 1 for j in seeder.list(limit=1000))
    # The instances were filled, not merely never overfilled: the limits were reached.
    assert most[A, "total"] == 3 and most[C, "total"] == 4, most
    assert most[C, "video"] == 0 and most[B, "video"] <= 1, most


def test_old_and_new_claimers_together_keep_the_kind_limits_and_never_deadlock(
        open_pg: Opener) -> None:
    # A rolling deploy: two backends still on ``claim``, two on ``claim_on_instances``,
    # all claiming both kinds. Every lock is taken in one order, so none deadlocks (the
    # database would abort one), and the kind locks keep the global per-kind limits.
    limits = {QA: 4, VIDEO: 2}
    rooms = {A: (6, {QA: 4, VIDEO: 2})}
    seeder = open_pg("seed")
    ids = {seeder.insert(make_job(kind)).id for kind in [QA] * 80 + [VIDEO] * 40}
    lock = threading.Lock()
    holding: Counter[JobKind] = Counter()
    most: Counter[JobKind] = Counter()
    done: list[str] = []
    errors: list[BaseException] = []
    stores = [open_pg(f"backend-{n}", pool_size=2) for n in range(4)]

    def run(store: PostgresJobStore, new: bool) -> None:
        held_here: deque[Job] = deque()
        idle = threading.Event()
        try:
            while len(done) < len(ids) and not errors:
                free = {k: 2 - sum(j.kind == k for j in held_here) for k in JobKind}
                if new:
                    claimed = [job for job, _ in store.claim_on_instances(
                        free, store.instance_id, limits, rooms, None, 60.0, 60.0)]
                else:
                    claimed = store.claim(free, store.instance_id, limits, None, 60.0, 60.0)
                with lock:
                    for job in claimed:
                        holding[job.kind] += 1
                        most[job.kind] = max(most[job.kind], holding[job.kind])
                held_here.extend(claimed)
                if not held_here:
                    idle.wait(0.002)
                    continue
                job = held_here.popleft()
                with lock:  # counted free before the database frees it: never over-counted
                    holding[job.kind] -= 1
                assert store.finish(job.replace(state=JobState.COMPLETED,
                                                finished_at=time.time()), store.instance_id)
                with lock:
                    done.append(job.id)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s, n % 2 == 0)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    assert sorted(done) == sorted(ids)
    assert most[QA] <= limits[QA] and most[VIDEO] <= limits[VIDEO], most
