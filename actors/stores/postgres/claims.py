"""The shared queue's SQL: claims, leases, reaping, cancels and pauses.

``PostgresJobStore`` runs each function here either as one statement on an
autocommit connection (one round trip; the statement is its transaction) or
inside one explicit transaction (READ COMMITTED); the store documents the
contract, this module is the how.

Claim protocol (``qudemo_claim()`` in pg_schema.py; race-free, and why):

0. Per kind, without a lock: skip the kind when nothing is claimable or
   every slot is taken (schema version 2). Several instances woken by one
   ``NOTIFY`` then do not queue behind each other's locks for nothing. A skip
   never strands a job: whatever makes one claimable after this statement's
   snapshot (an insert, a finish, a resume) sends its ``NOTIFY`` after it.
1. Take ``pg_advisory_xact_lock`` for each kind not skipped, in a fixed order
   (by name), so two claimers never deadlock. The lock is per (schema, kind)
   and is held until the claim's transaction commits.
2. In a *later* statement (the function is VOLATILE: under READ COMMITTED
   each statement inside takes a fresh snapshot), count the kind's jobs that
   hold a slot: processing, lease live at ``now``, no result yet. The previous
   holder of the lock released it only after its commit was visible, so the
   count includes every claim committed before: count-then-claim is atomic per
   kind across all instances, and ``limits`` can never be exceeded.
3. Then take ``min(free workers, limit - count)`` waiting jobs (none when the
   kind is paused) one at a time (schema 7), each the best of three heads: per
   base priority the first job in the fair order between companies (tag
   ``vtime``, then ``seq``; actors/dispatch/fairness.py) of a company not at its
   running ceiling, the heads compared by effective priority (aging), then
   ``seq``: the local queue's order exactly. Each is locked ``FOR UPDATE SKIP
   LOCKED`` (a row an operator is cancelling right now is passed, not waited
   on), marked processing with a lease, and moves the virtual clock of its
   (kind, priority) up to its tag (``qudemo_fair_clock``, under the same lock).

The lock serialises the claimers of one kind for the length of one claim (a
millisecond); finishing, renewing and reaping never take it, since they can
only lower the count. Slot rows used as a semaphore would let claimers
overlap, but need resizing whenever an instance changes its limit and
repairing when a holder dies; the count needs neither. A head is one probe of
the fair index ``(kind, priority, vtime, seq)``, so a claim never sorts the
queue; passing a capped company's jobs skips at most its waiting ones (bounded
by ``QUEUE_MAX_WAITING_*_PER_COMPANY``).

Claim on instances (``qudemo_claim_on()``, schema 8; ``claim_on_instances``): the
capacity of a Python API instance is one limit for both kinds (dispatch/limiter.py),
and several backends send to the same instances, so each claimed attempt records
the instance it goes to (``api_instance``) and the claim chooses it. The claimer
passes, per instance, its capacity and the most each kind may have there as it
sees them now (its limiter, breaker, memory); the database supplies the counts:

0. Without a lock, count the slots held at each instance (``SLOT_HELD_SQL``, per
   kind, from every backend), and skip the kinds with nothing claimable, no free
   global slot, or no instance with room; nothing left, no lock is taken. A skip
   never strands a job, as in step 0 above.
1. Take ONE advisory lock for both kinds, ``claim-on`` (an instance's total spans
   the kinds, so per-kind locks could not serialise a Q&A claimer with a video
   claimer), then the per-kind locks of step 1 above for the kinds tried, by
   name. Every lock is taken in one global order, ``claim-on``, ``claim:qa``,
   ``claim:video`` (``qudemo_claim`` takes some of the kind locks, in the same
   order, and never ``claim-on``), so no two claimers of either function ever
   deadlock; while both functions run (a rolling deploy) the kind locks keep the
   global per-kind limits exact. (Jobs claimed by ``qudemo_claim`` record no
   instance, those backends choose theirs locally: only per-instance capacity is
   unguarded until every backend calls ``qudemo_claim_on``.)
2. In a later statement, count again: the count includes every claim committed
   before, as in step 2 above, now per instance and in total per kind.
3. Claim Q&A first, then video (the adaptive capacity gives questions the free
   capacity first), each kind as step 3 above (same heads, same order, same
   ceilings), and give each job the instance with the most room for its kind:
   ``min(capacity - held there, kind's most - kind held there)``, the first passed
   on a tie. The counts are kept in the function as it claims (under the lock
   only this claim adds slots; finishing and reaping only lower them, so a count
   can be stale only on the safe side). A kind stops when no instance has room.

So a claim adds a job at an instance only while the jobs holding a slot there,
from every backend, are fewer than the capacity this claimer passes, and those
of its kind fewer than the kind's most: backends that agree on an instance's
capacity never exceed it together. When their limiters disagree, each holds its
own view at claim time (the highest one passed bounds the instance); a lower
capacity stops new claims there until enough finish, nothing sent is taken back.

Tags are given at insert, in the insert's statement (store.py ``_INSERT_SQL``):
``start = max(clock - credit, the company's finish)`` (the bounded newcomer
credit of fairness.py), ``finish = start + cost / weight`` upserted into
``qudemo_fair``; the row lock of ``ON CONFLICT DO UPDATE`` makes concurrent
inserts of one company, on any instances, take their tags in turn. A clock
read while a claim moves it is at most one job behind. An operator's retry is
tagged afresh the same way (store.py ``requeue``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import psycopg

from actors.dispatch.scheduling import effective_priority
from actors.model.jobs import Job, JobKind, JobState
from actors.stores.postgres.schema import JOB_COLUMNS, job_params, row_to_job

DB_NOW = "extract(epoch FROM clock_timestamp())"
"""The database's clock in epoch seconds: lease times are on it (``now=None`` below)."""
SLOT_HELD_SQL = ("state = 'processing' AND NOT has_result"
                 " AND (lease_expires_at > {now} OR hold_until > {now})")
"""A job holding a slot: its lease is live, or its call may still be at the Python API."""
CHANNEL = "qudemo_jobs"
"""The LISTEN/NOTIFY channel; the payload is the kind that may have become claimable."""
LIVE_PAUSE_SQL = (
    "(p.instance_id = '' OR EXISTS (SELECT 1 FROM qudemo_instances i"
    " WHERE i.id = p.instance_id AND i.expires_at > %(now)s))"
)
"""A pause holds when it is global, or while the instance that set it is alive."""
_WRITE_SQL = (
    "UPDATE qudemo_jobs SET state = %(state)s, owner = %(owner)s, priority = %(priority)s,"
    " started_at = %(started_at)s, finished_at = %(finished_at)s,"
    " next_attempt_at = %(next_attempt_at)s, attempts = %(attempts)s,"
    " max_attempts = %(max_attempts)s, last_error = %(last_error)s,"
    " dedupe_key = %(dedupe_key)s, has_result = %(has_result)s, record = %(record)s,"
    " lease_owner = CASE WHEN %(keep_lease)s THEN lease_owner END,"
    " lease_expires_at = CASE WHEN %(keep_lease)s THEN lease_expires_at END,"
    # The instance an attempt was sent to means nothing once the job leaves processing;
    # cleared, so a later claim by qudemo_claim (which sets none) never inherits it.
    " api_instance = CASE WHEN %(keep_lease)s THEN api_instance END"
    " WHERE id = %(id)s"
)
Conn = psycopg.Connection[Any]
_KINDS = {kind.value: kind for kind in JobKind}
Rooms = Mapping[str, tuple[int, Mapping[JobKind, int]]]
"""Per Python API instance (its base URL): its capacity for both kinds together as the
claimer sees it now, and the most calls of each kind it may have (0 or missing: none)."""


def order_sql(aging_s: float) -> str:
    """Return the SQL ordering of waiting jobs: ``effective_priority`` of scheduling.py, seq."""
    if aging_s <= 0:
        return "priority, seq"
    return ("GREATEST(1, priority - floor(GREATEST(0, %(now)s - created_at)"
            " / %(aging)s)::bigint), seq")


def notify(conn: Conn, kind: JobKind) -> None:
    """Queue a wake-up for listeners; sent when the transaction commits."""
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, kind.value))


def write(conn: Conn, job: Job) -> None:
    """Write a job's columns and record; keep the lease only while it stays processing."""
    conn.execute(_WRITE_SQL, {**job_params(job), "keep_lease": job.state == JobState.PROCESSING})


def claim(conn: Conn, free: dict[JobKind, int], instance_id: str, limits: dict[JobKind, int],
          now: float | None, aging_s: float, lease_ttl_s: float,
          hold_s: float = 0.0, *, ceilings: dict[JobKind, int] | None = None) -> list[Job]:
    """Claim the best waiting jobs per kind within the global limits: one statement.

    ``now=None`` is the database's clock. Each claimed job's slot is held until its
    lease expires and ``now + hold_s`` has passed, whichever is later. ``ceilings``:
    at most this many jobs of one company hold a slot of the kind (passed over beyond).
    Returned in the order claimed (the order to start them in).
    """
    kinds = sorted((k for k, n in free.items() if n > 0), key=lambda k: k.value)
    if not kinds:
        return []
    ceilings = ceilings or {}
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS} FROM qudemo_claim(%s::text[], %s::bigint[], %s::bigint[],"
        " %s::bigint[], %s::float8, %s::float8, %s::text, %s::float8, %s::float8)",
        ([k.value for k in kinds], [free[k] for k in kinds], [limits.get(k, 0) for k in kinds],
         [ceilings.get(k, 0) for k in kinds], now, aging_s, instance_id, lease_ttl_s,
         hold_s)).fetchall()
    claimed = [row_to_job(row) for row in rows]
    at = now if now is not None else max((j.started_at or 0.0 for j in claimed), default=0.0)
    return merged(claimed, at, aging_s)


def claim_on_instances(conn: Conn, free: dict[JobKind, int], instance_id: str,
                       limits: dict[JobKind, int], rooms: Rooms, now: float | None,
                       aging_s: float, lease_ttl_s: float, hold_s: float = 0.0, *,
                       ceilings: dict[JobKind, int] | None = None) -> list[tuple[Job, str]]:
    """Claim the best waiting jobs and the Python API instance of each: one statement.

    As ``claim``, and a job is given an instance of ``rooms`` only while the jobs
    holding a slot there (from every backend, both kinds) are fewer than its capacity,
    and those of its kind fewer than the kind's most. Q&A is claimed first; each job
    goes to the instance with the most room for its kind (the first of ``rooms`` on a
    tie). Returned in the order claimed (Q&A first, each kind in the fair order), each
    with its instance's URL.
    """
    kinds = sorted((k for k, n in free.items() if n > 0), key=lambda k: (k != JobKind.QA, k))
    urls = [url for url, (total, _) in rooms.items() if total > 0]
    if not kinds or not urls:
        return []
    ceilings = ceilings or {}
    rows = conn.execute(
        f"SELECT {JOB_COLUMNS}, api_instance FROM qudemo_claim_on(%s::text[], %s::bigint[],"
        " %s::bigint[], %s::bigint[], %s::text[], %s::bigint[], %s::bigint[], %s::float8,"
        " %s::float8, %s::text, %s::float8, %s::float8)",
        ([k.value for k in kinds], [free[k] for k in kinds], [limits.get(k, 0) for k in kinds],
         [ceilings.get(k, 0) for k in kinds], urls, [rooms[url][0] for url in urls],
         [rooms[url][1].get(k, 0) for url in urls for k in kinds], now, aging_s, instance_id,
         lease_ttl_s, hold_s)).fetchall()
    return [(row_to_job(tuple(row[:-1])), str(row[-1])) for row in rows]


def merged(claimed: list[Job], now: float, aging_s: float) -> list[Job]:
    """Interleave each kind's claimed jobs (each in its claim order) as the local queue would.

    Like ``WaitingQueue.pop_next`` across kinds: the next is the kind whose next job is
    best by (effective priority, seq); within a kind the claim's order is kept.
    """
    lanes: dict[JobKind, list[Job]] = {}
    for job in claimed:
        lanes.setdefault(job.kind, []).append(job)
    order: list[Job] = []
    while lanes:
        kind = min(lanes, key=lambda k: (effective_priority(lanes[k][0], now, aging_s),
                                         lanes[k][0].seq))
        order.append(lanes[kind].pop(0))
        if not lanes[kind]:
            del lanes[kind]
    return order


def charge(conn: Conn, kind: JobKind, priority: int, company: str, extra: float) -> None:
    """Correct a company's finish by ``extra`` virtual time, never below its last tag."""
    conn.execute("UPDATE qudemo_fair SET finish = GREATEST(start, finish + %s)"
                 " WHERE kind = %s AND priority = %s AND company = %s",
                 (extra, kind.value, priority, company))


def companies(conn: Conn, now: float | None) -> dict[str, Counter[tuple[JobKind, str]]]:
    """Count waiting (queued, retrying) and slot-holding jobs per (kind, company)."""
    at = f"coalesce(%(now)s::float8, {DB_NOW})"
    rows = conn.execute(
        "SELECT kind, company, state <> 'processing', count(*) FROM qudemo_jobs"
        " WHERE state IN ('queued', 'retrying') OR (" + SLOT_HELD_SQL.format(now=at) + ")"
        " GROUP BY 1, 2, 3", {"now": now})
    found: dict[str, Counter[tuple[JobKind, str]]] = {"waiting": Counter(),
                                                      "running": Counter()}
    for kind, company, waiting, count in rows:
        if kind in _KINDS:
            found["waiting" if waiting else "running"][_KINDS[kind], company] = int(count)
    return found


def renew(conn: Conn, instance_id: str, job_ids: list[str], now: float | None,
          ttl_s: float) -> set[str]:
    """Extend the live leases held by ``instance_id``; heartbeat it; return the ids renewed.

    An expired lease is never renewed, even when nobody took the job yet: its slot
    may have been counted free, and another instance may have claimed it.
    ``now=None`` is the database's clock.
    """
    rows = conn.execute(
        f"WITH t AS (SELECT coalesce(%(now)s::float8, {DB_NOW}) AS now),"
        " beat AS (INSERT INTO qudemo_instances (id, seen_at, expires_at)"
        " SELECT %(owner)s, t.now, t.now + %(ttl)s FROM t ON CONFLICT (id) DO UPDATE"
        " SET seen_at = EXCLUDED.seen_at, expires_at = EXCLUDED.expires_at)"
        " UPDATE qudemo_jobs j SET lease_expires_at = t.now + %(ttl)s FROM t"
        " WHERE j.id = ANY(%(ids)s) AND j.state = 'processing' AND j.lease_owner = %(owner)s"
        " AND j.lease_expires_at > t.now RETURNING j.id",
        {"owner": instance_id, "now": now, "ttl": ttl_s, "ids": job_ids}).fetchall()
    return {r[0] for r in rows}


def finish(conn: Conn, job: Job, instance_id: str) -> bool:
    """Write an attempt's outcome only if ``instance_id`` still holds the job's lease.

    One statement: the fenced write and its wake-up (a slot is free, or the job
    is queued again).
    """
    params = {**job_params(job), "keep_lease": job.state == JobState.PROCESSING,
              "holder": instance_id, "channel": CHANNEL}
    cursor = conn.execute(
        f"WITH done AS ({_WRITE_SQL} AND state = 'processing' AND lease_owner = %(holder)s"
        " RETURNING kind) SELECT pg_notify(%(channel)s, kind) FROM done", params)
    return cursor.fetchone() is not None


def update(conn: Conn, job: Job) -> None:
    """Write a job unconditionally; wake listeners when that frees a slot or queues it."""
    old = conn.execute("SELECT state FROM qudemo_jobs WHERE id = %s FOR UPDATE",
                       (job.id,)).fetchone()
    if old is None:
        return
    write(conn, job)
    if job.state == JobState.QUEUED or old[0] == JobState.PROCESSING.value:
        notify(conn, job.kind)


def cancel(conn: Conn, job_id: str, now: float) -> Job | None:
    """Cancel a queued or retrying job; ``None`` when it is not (a claim got there first)."""
    row = conn.execute(
        "UPDATE qudemo_jobs SET state = 'cancelled', finished_at = %(now)s,"
        " next_attempt_at = NULL WHERE id = %(id)s AND state IN ('queued', 'retrying')"
        f" RETURNING {JOB_COLUMNS}", {"id": job_id, "now": now}).fetchone()
    return None if row is None else row_to_job(row)


def reap(conn: Conn, now: float | None, instance_id: str | None,
         lease_ttl_s: float) -> list[Job]:
    """Re-queue (or fail) processing jobs whose lease expired; see ``PostgresJobStore``.

    A job whose call may still be at the Python API (``hold_until`` not passed) is
    left alone: running it again now would run it twice at once. A processed one
    (only its result left to store) is taken over at once.
    """
    if now is None:
        row = conn.execute(f"SELECT {DB_NOW}").fetchone()
        now = float(row[0]) if row else 0.0
    rows = conn.execute(
        f"SELECT lease_owner, has_result, {JOB_COLUMNS} FROM qudemo_jobs"
        " WHERE state = 'processing' AND (lease_expires_at IS NULL OR lease_expires_at <= %s)"
        " AND (has_result OR hold_until IS NULL OR hold_until <= %s)"
        " ORDER BY seq FOR UPDATE SKIP LOCKED", (now, now)).fetchall()
    reaped: list[Job] = []
    for holder, has_result, *columns in rows:
        job = row_to_job(tuple(columns))
        if has_result:  # processed; only its result was being stored: store it, never rerun
            if instance_id is not None:
                conn.execute("UPDATE qudemo_jobs SET lease_owner = %s, lease_expires_at = %s"
                             " WHERE id = %s", (instance_id, now + lease_ttl_s, job.id))
                reaped.append(job)
            continue
        error = (f"interrupted: lease expired (instance {holder or 'unknown'} stopped renewing"
                 f" it) during attempt {job.attempts} of {job.max_attempts}")
        if job.attempts >= job.max_attempts:
            job = job.replace(state=JobState.FAILED, finished_at=now, next_attempt_at=None,
                              last_error=f"{error}; attempts used up by interruptions")
        else:
            job = job.replace(state=JobState.QUEUED, next_attempt_at=None, last_error=error)
            notify(conn, job.kind)
        write(conn, job)
        reaped.append(job)
    return reaped


def position(conn: Conn, job_id: str, now: float, aging_s: float) -> int | None:
    """Return a queued job's 1-based place among its kind's queued jobs, in claim order.

    In its own priority, the jobs before it in the fair order; in the others, those
    before it by (effective priority, seq), as the local queue counts.
    """
    order = order_sql(aging_s).replace(", seq", "")
    row = conn.execute(
        f"WITH me AS (SELECT kind, priority, vtime, {order} AS eff, seq FROM qudemo_jobs"
        " WHERE id = %(id)s AND state = 'queued')"
        " SELECT (SELECT count(*) FROM qudemo_jobs j WHERE j.kind = me.kind"
        " AND j.state = 'queued' AND j.priority = me.priority AND (j.vtime, j.seq)"
        " < (me.vtime, me.seq))"
        " + (SELECT count(*) FROM qudemo_jobs j WHERE j.kind = me.kind"
        f" AND j.state = 'queued' AND j.priority <> me.priority AND ({order}, j.seq)"
        " < (me.eff, me.seq)) FROM me", {"id": job_id, "now": now, "aging": aging_s}).fetchone()
    return None if row is None else int(row[0]) + 1


def pause(conn: Conn, kind: JobKind, reason: str, instance_id: str | None, now: float) -> bool:
    """Record a pause of ``kind``; return whether it is new."""
    row = conn.execute(
        "INSERT INTO qudemo_pauses (kind, reason, instance_id, since) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT DO NOTHING RETURNING 1", (kind.value, reason, instance_id or "", now))
    return row.fetchone() is not None


def resume(conn: Conn, kind: JobKind, reason: str, instance_id: str | None) -> bool:
    """Lift one pause of ``kind`` and wake listeners, in one statement; return if it was there."""
    row = conn.execute(
        "WITH lifted AS (DELETE FROM qudemo_pauses WHERE kind = %s AND reason = %s"
        " AND instance_id = %s RETURNING kind) SELECT pg_notify(%s, kind) FROM lifted",
        (kind.value, reason, instance_id or "", CHANNEL)).fetchone()
    return row is not None


def paused(conn: Conn, now: float | None) -> dict[JobKind, set[str]]:
    """Return the reasons each kind is paused for (``reason@instance`` when instance-bound)."""
    found: dict[JobKind, set[str]] = {kind: set() for kind in JobKind}
    live = LIVE_PAUSE_SQL.replace("%(now)s", f"coalesce(%(now)s::float8, {DB_NOW})")
    rows = conn.execute(f"SELECT p.kind, p.reason, p.instance_id FROM qudemo_pauses p"
                        f" WHERE {live}", {"now": now})
    for kind, reason, instance_id in rows:
        if kind in _KINDS:
            found[_KINDS[kind]].add(f"{reason}@{instance_id}" if instance_id else reason)
    return found


def api_in_flight(conn: Conn, now: float | None) -> dict[str, dict[JobKind, int]]:
    """Return how many jobs per kind hold a slot at each Python API instance (every backend).

    Only the attempts claimed with ``claim_on_instances`` know their instance.
    """
    at = f"coalesce(%(now)s::float8, {DB_NOW})"
    rows = conn.execute("SELECT api_instance, kind, count(*) FROM qudemo_jobs"
                        " WHERE api_instance IS NOT NULL AND " + SLOT_HELD_SQL.format(now=at)
                        + " GROUP BY 1, 2", {"now": now})
    found: dict[str, dict[JobKind, int]] = {}
    for url, kind, count in rows:
        if kind in _KINDS:
            found.setdefault(url, dict.fromkeys(JobKind, 0))[_KINDS[kind]] = int(count)
    return found


def in_flight(conn: Conn, now: float | None) -> dict[JobKind, int]:
    """Return how many jobs per kind hold a slot (``SLOT_HELD_SQL``)."""
    counts = dict.fromkeys(JobKind, 0)
    at = f"coalesce(%(now)s::float8, {DB_NOW})"
    rows = conn.execute("SELECT kind, count(*) FROM qudemo_jobs WHERE "
                        + SLOT_HELD_SQL.format(now=at) + " GROUP BY kind", {"now": now})
    for kind, count in rows:
        if kind in _KINDS:
            counts[_KINDS[kind]] = int(count)
    return counts
