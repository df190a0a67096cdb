"""The shared job store: PostgreSQL through psycopg 3 and a pool (``QUEUE_STORE=postgres``).

It implements the ``JobStore`` protocol of store.py (every change its own
committed transaction before the call returns: the durability point is the
same ``store.add``), and adds the shared-queue primitives (pg_queue.py) that
let several processes and machines run one queue: global job ids and arrival
order, claims within global per-kind limits, leases, reaping, global pauses
and wake-ups through LISTEN/NOTIFY.

The schema (pg_schema.py) is versioned and migrated at open under an
advisory lock; a newer schema is refused and left untouched.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from actors.dispatch.fairness import NO_COMPANY, FairShare
from actors.model.errors import (
    DuplicateJob,
    IdempotencyKeyTaken,
    JobNotFound,
    JobStateConflict,
    StoreUnavailable,
)
from actors.model.events import EventList
from actors.model.jobs import Job, JobKind, JobState, KeyedJob
from actors.runtime.timers import TimerService
from actors.stores.base import JobList, StateCounts
from actors.stores.postgres.claims import CHANNEL, charge, companies, notify, write
from actors.stores.postgres.events import EventHorizon, read_events
from actors.stores.postgres.fence import LeaseKeeper, LeaseSet
from actors.stores.postgres.queue import SharedQueue
from actors.stores.postgres.schema import (
    ACTIVE_SQL,
    FINISHED_SQL,
    JOB_COLUMNS,
    SCHEMA_VERSION,
    job_params,
    lock_key_sql,
    migrate,
    redact,
    row_to_job,
)
from actors.stores.postgres.watch import StatementWatch

logger = logging.getLogger(__name__)

FAIL_FAST_S = 1.0
"""After a failed call, how long further calls fail at once (the database was just away)."""
CLIENT_DEADLINE_GRACE_S = 2.0
"""How long past ``statement_timeout`` a call may block before its connection is cut."""

_FAIR_TAG_SQL = (
    # The job's tag in the fair order (fairness.py ``FairClock.tag``, the same rule):
    # max(clock - credit, the company's finish); the company's finish moves past it.
    "WITH clock AS (SELECT GREATEST(0, coalesce((SELECT v FROM qudemo_fair_clock"
    " WHERE kind = %(kind)s AND priority = %(priority)s), 0)) - %(credit)s AS v),"
    " tag AS (INSERT INTO qudemo_fair AS f (kind, priority, company, start, finish)"
    " SELECT %(kind)s, %(priority)s, %(company)s, v, v + %(cost)s FROM clock"
    " ON CONFLICT (kind, priority, company) DO UPDATE"
    " SET start = GREATEST(f.finish, EXCLUDED.start),"
    " finish = GREATEST(f.finish, EXCLUDED.start) + %(cost)s RETURNING start)"
)
"""The tag CTEs, ``tag(start)``. ``GREATEST(0, ...)``: the local clock starts at 0 and
never goes below (the claim stores the first tag it takes, which may be below 0)."""
_TAGGED_INSERT_SQL = (
    _FAIR_TAG_SQL + ","
    " added AS (INSERT INTO qudemo_jobs (id, kind, state, owner, priority, created_at,"
    " started_at, finished_at, next_attempt_at, attempts, max_attempts, last_error, dedupe_key,"
    " has_result, record, company, vtime) VALUES (%(id)s, %(kind)s, %(state)s, %(owner)s,"
    " %(priority)s, %(created_at)s, %(started_at)s, %(finished_at)s, %(next_attempt_at)s,"
    " %(attempts)s, %(max_attempts)s, %(last_error)s, %(dedupe_key)s, %(has_result)s,"
    " %(record)s, %(company)s, (SELECT start FROM tag)) RETURNING seq, kind)"
)
_INSERT_SQL = _TAGGED_INSERT_SQL + " SELECT seq FROM added"
_INSERT_NOTIFY_SQL = _TAGGED_INSERT_SQL + " SELECT seq, pg_notify(%(channel)s, kind) FROM added"
"""The wake-up in the same statement: one round trip."""
_RETAG_SQL = (
    _FAIR_TAG_SQL + ","
    " moved AS (UPDATE qudemo_jobs SET company = %(company)s, vtime = (SELECT start FROM tag)"
    " WHERE id = %(id)s RETURNING seq, kind, vtime)"
    " SELECT seq, vtime, pg_notify(%(channel)s, kind) FROM moved"
)
"""A fresh tag for a job queued again by an operator (``requeue``), as an insert gives one."""
_PRUNE_FAIR_SQL = (
    # A finish the credit behind the clock is the same as none (fairness.py).
    "DELETE FROM qudemo_fair f USING qudemo_fair_clock c,"
    " unnest(%(kinds)s::text[], %(credits)s::float8[]) AS k(kind, credit)"
    " WHERE c.kind = f.kind AND c.priority = f.priority AND k.kind = f.kind"
    " AND f.finish <= GREATEST(0, c.v) - k.credit"
)


class IdleCheck:
    """Checks a pooled connection before use, only when it sat idle long enough to be dropped.

    A check is a round trip; on every checkout it would double the cost of a
    one-statement claim. A connection used a moment ago is alive; one idle for
    ``idle_s`` may have been closed by a proxy (Supabase's pooler does) or a restart.
    """

    def __init__(self, idle_s: float = 5.0) -> None:
        self.idle_s = idle_s
        self._returned: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary())

    def returned(self, conn: psycopg.Connection[Any]) -> None:
        """Note when a connection went back to the pool (the pool's ``reset`` hook)."""
        self._returned[conn] = time.monotonic()

    def __call__(self, conn: psycopg.Connection[Any]) -> None:
        """Check ``conn`` if it has been idle too long (the pool's ``check`` hook)."""
        if time.monotonic() - self._returned.get(conn, 0.0) > self.idle_s:
            ConnectionPool.check_connection(conn)


def new_instance_id() -> str:
    """Return an id for this process that names it in leases and logs: host, pid, random."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class PostgresJobStore(SharedQueue):
    """Jobs in PostgreSQL, shared by every instance that opens the same database and schema.

    Args:
        conninfo: a ``postgresql://`` URL or libpq string (``DATABASE_URL``); the schema
            is the connection's ``search_path`` (``?options=-c%20search_path%3Dname``).
        instance_id: names this process in leases, pauses and ``pg_stat_activity``.
        pool_size: most pooled connections (each listener has one of its own).
        connect_timeout_s: how long opening (and a pool checkout) may take.
        idle_check_s: a pooled connection idle longer than this is checked before use.
        clock: a clock for every time the store picks itself; ``None`` (production):
            the wall clock for timestamps, the database's clock for leases, heartbeats
            and live pauses (so instances never disagree about a lease).
        statement_timeout_s: no statement runs longer (``statement_timeout``); pooled
            and keeper connections also have TCP keepalives and a user timeout.
        share: the companies' weights in the fair order (default: all 1).

    Raises:
        StoreUnavailable: unreachable, or a schema newer than this program knows.
    """

    shared = True

    def __init__(self, conninfo: str, *, instance_id: str | None = None, pool_size: int = 4,
                 connect_timeout_s: float = 10.0, idle_check_s: float = 5.0,
                 clock: Callable[[], float] | None = None,
                 statement_timeout_s: float = 10.0, share: FairShare | None = None) -> None:
        self.where = redact(conninfo)
        self.share = share or FairShare()  # weights of the fair order, tagged at insert
        self.instance_id = instance_id or new_instance_id()
        self.leases = LeaseSet()  # the jobs whose leases this instance holds
        self._down_until = float("-inf")
        self._down_reason = ""
        self._conninfo = conninfo
        self._clock = clock or time.time
        self._lease_clock = clock
        self.statement_timeout_ms = max(1, round(statement_timeout_s * 1000))
        # The server's statement_timeout fires first; this one, ours, when the server
        # never got the statement (a half-open connection).
        self.call_deadline_s = statement_timeout_s + min(CLIENT_DEADLINE_GRACE_S,
                                                         statement_timeout_s)
        self._connect_kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(connect_timeout_s)),
            "application_name": f"qudemo-jobs {self.instance_id}"[:63],
            # A dead peer is noticed by the kernel, not after its default two hours.
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
            "keepalives_count": 3, "tcp_user_timeout": 30000,
        }
        self._listeners = []
        self._events = EventHorizon()  # events are read up to it: none is ever skipped
        try:
            with psycopg.connect(conninfo, autocommit=True, **self._connect_kwargs) as conn:
                migrate(conn, self.where)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"the job store {self.where} cannot be opened: "
                                   f"{_reason(exc)}") from None
        self._watch = StatementWatch()
        idle_check = IdleCheck(idle_check_s)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            conninfo, min_size=1, max_size=max(2, pool_size), open=False,
            kwargs={**self._connect_kwargs, "autocommit": True},
            configure=self._configure, check=idle_check, reset=idle_check.returned,
            # A checkout waits no longer than a call may take: with the database away,
            # callers learn it in seconds, not after every connect attempt.
            name="qudemo-pg", timeout=min(connect_timeout_s, self.call_deadline_s))
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout:
            self._pool.close()
            self._watch.stop()
            raise StoreUnavailable(f"the job store {self.where} cannot be reached") from None

    def __repr__(self) -> str:
        return f"<PostgresJobStore {self.where} instance={self.instance_id}>"

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Give a new pooled connection its statement timeout."""
        conn.execute(f"SET statement_timeout = {self.statement_timeout_ms}")

    def _lease_now(self) -> float | None:
        """The time for lease comparisons: ``None`` is the database's own clock."""
        return None if self._lease_clock is None else self._lease_clock()

    def lease_keeper(self, *, ttl_s: float, beat_s: float, timers: TimerService,
                     on_lost: Callable[[set[str]], None],
                     on_fence: Callable[[bool], None]) -> LeaseKeeper:
        """Return a keeper renewing ``self.leases`` on a connection of its own (not started)."""
        options = f"-c statement_timeout={self.statement_timeout_ms}"
        kwargs = dict(self._connect_kwargs)
        params = conninfo_to_dict(self._conninfo)
        if params.get("options"):  # keep a search_path given in the URL
            options = f"{params['options']} {options}"
        kwargs["options"] = options
        return LeaseKeeper(self._conninfo, instance_id=self.instance_id, leases=self.leases,
                           ttl_s=ttl_s, beat_s=beat_s, timers=timers, connect_kwargs=kwargs,
                           on_lost=on_lost, on_fence=on_fence, watch=self._watch,
                           call_deadline_s=self.call_deadline_s)

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in autocommit mode: each statement is its own transaction.

        One statement, one round trip: what claims, finishes and reads use. Once no
        connection could be had, calls fail at once for ``FAIL_FAST_S`` instead of each
        waiting for one: the actors stay responsive, and health can say so. (A single
        dropped connection fails its own call only; the next one reconnects.)
        """
        if time.monotonic() < self._down_until:
            raise StoreUnavailable(f"the job store {self.where} failed: {self._down_reason}")
        try:
            with self._pool.connection() as conn:
                token = self._watch.watch(conn, self.call_deadline_s)
                try:
                    yield conn
                finally:
                    self._watch.done(token)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            if isinstance(exc, PoolTimeout):  # no connection could be made: the database is away
                self._down_reason = _reason(exc)
                self._down_until = time.monotonic() + FAIL_FAST_S
            raise StoreUnavailable(f"the job store {self.where} failed: {_reason(exc)}") from exc

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        """One explicit transaction on a pooled connection (rolled back on an exception)."""
        with self._conn() as conn, conn.transaction():
            yield conn

    # --- the JobStore protocol -------------------------------------------------------

    def add(self, job: Job) -> None:
        """Insert a new job; committed (and listeners woken) before this returns.

        The arrival ``seq`` is the database's (global across instances); the
        caller's is ignored. ``insert`` returns the stored job with it.
        """
        self.insert(job)

    def insert(self, job: Job) -> Job:
        """Insert a new job and return it as stored, with its global ``seq``.

        Raises:
            DuplicateJob: an active job already has the same ``dedupe_key`` (on any instance).
        """
        statement = _INSERT_NOTIFY_SQL if job.state == JobState.QUEUED else _INSERT_SQL
        try:
            with self._tx() if job.idempotency is not None else self._conn() as conn:
                row = conn.execute(statement, {**self._params(job),
                                               "channel": CHANNEL}).fetchone()
                if job.idempotency is not None:
                    self._claim_key(conn, job)
        except errors.UniqueViolation as exc:
            if job.dedupe_key is None or exc.diag.constraint_name != "qudemo_jobs_dedupe":
                raise
            raise DuplicateJob(self._active_id(job.dedupe_key)) from None
        assert row is not None
        return job.replace(seq=int(row[0]))

    def _claim_key(self, conn: psycopg.Connection[Any], job: Job) -> None:
        """Store the new job's key in its transaction, or raise ``IdempotencyKeyTaken``.

        After the job's row (the key refers to it). A key another instance is storing at
        the same moment makes this wait for that transaction; once it commits, the key is
        live and taken here too: one job per key, however many instances.
        """
        claim = job.idempotency
        assert claim is not None
        row = conn.execute(_CLAIM_KEY_SQL, {
            "scope": claim.scope, "key": claim.key, "fingerprint": claim.fingerprint,
            "id": job.id, "expires_at": claim.expires_at, "created_at": job.created_at,
        }).fetchone()
        if row is None:  # rolled back by the caller's transaction
            raise IdempotencyKeyTaken(_keyed_job(conn, claim.scope, claim.key,
                                                 now=job.created_at))

    def keyed_job(self, scope: str, key: str, *, now: float) -> KeyedJob | None:
        """Return the job under a key live at ``now``, or ``None`` (one query)."""
        with self._conn() as conn:
            return _keyed_job(conn, scope, key, now=now)

    def prune_idempotency_keys(self, *, expired_at: float, limit: int) -> int:
        """Delete at most ``limit`` keys expired by ``expired_at``; return how many.

        Rows another instance is deleting are skipped, not waited for.
        """
        with self._conn() as conn:
            cursor = conn.execute(_PRUNE_KEYS_SQL, {"now": expired_at, "limit": max(0, limit)})
            return max(0, cursor.rowcount)

    def add_many(self, jobs: Iterable[Job]) -> int:
        """Insert many new jobs in one transaction (imports, benchmarks); return how many.

        One wake-up per kind. Raises like ``insert`` (then nothing is added).
        """
        batch = [self._params(job) for job in jobs]
        with self._tx() as conn, conn.cursor() as cursor:
            cursor.executemany(_INSERT_SQL, batch)
            for kind in sorted({p["kind"] for p in batch if p["state"] == "queued"}):
                notify(conn, JobKind(kind))
        return len(batch)

    def _params(self, job: Job) -> dict[str, Any]:
        """A new job's row parameters, with its company and the cost and credit of its tag."""
        return {**job_params(job), "company": job.company or NO_COMPANY,
                "cost": self.share.cost(job.kind, job.company),
                "credit": self.share.credit(job.kind)}

    def requeue(self, job: Job) -> Job:
        """Queue a failed job again (an operator's retry) with a fresh tag; return it as stored.

        ``job`` is the new version, ``queued`` (the registry's: attempts reset, no
        finish). One transaction: the row is locked and must still be ``failed``; it is
        written as ``update`` writes it (the lease cleared), then given a new tag in the
        fair order exactly as an insert of the job would be (its company's finish
        upserted in ``qudemo_fair``), and listeners are woken on commit. So the retried
        job goes behind the work queued since it failed, not back to its old place (a
        tag is kept across the automatic retries of an attempt; this is a new request).
        Its ``seq`` (arrival, and the tie-break among equal tags) is kept.

        Returns:
            ``job`` with the stored ``seq`` and its new tag in ``vtime``.

        Raises:
            ValueError: ``job`` is not ``queued``.
            JobNotFound: no such job (pruned meanwhile); nothing is written.
            JobStateConflict: the job is not ``failed`` (another instance retried it
                first, or it changed meanwhile); nothing is written.
            DuplicateJob: another active job has its ``dedupe_key``; nothing is written.
            StoreUnavailable: as every call.
        """
        if job.state != JobState.QUEUED:
            raise ValueError(f"requeue writes a queued job, not a {job.state.value} one")
        try:
            with self._tx() as conn:
                found = conn.execute("SELECT state FROM qudemo_jobs WHERE id = %s FOR UPDATE",
                                     (job.id,)).fetchone()
                if found is None:
                    raise JobNotFound(f"job {job.id} is not in the store")
                if found[0] != JobState.FAILED.value:
                    raise JobStateConflict(f"only failed jobs can be retried; this one is "
                                           f"{found[0]}")
                write(conn, job)
                row = conn.execute(_RETAG_SQL, {**self._params(job),
                                                "channel": CHANNEL}).fetchone()
        except errors.UniqueViolation as exc:
            if job.dedupe_key is None or exc.diag.constraint_name != "qudemo_jobs_dedupe":
                raise
            raise DuplicateJob(self._active_id(job.dedupe_key)) from None
        assert row is not None
        return job.replace(seq=int(row[0]), vtime=float(row[1]))

    def charge(self, job: Job, extra_s: float) -> None:
        """Correct the fair order by an attempt's measured minus nominal cost (seconds)."""
        with self._conn() as conn:
            charge(conn, job.kind, job.priority, job.company or NO_COMPANY,
                   extra_s / self.share.weight(job.company))

    def company_counts_now(self) -> dict[str, Counter[tuple[JobKind, str]]]:
        """Waiting and slot-holding jobs per (kind, company), across every instance."""
        with self._conn() as conn:
            return companies(conn, self._lease_now())

    def _active_id(self, dedupe_key: str) -> str:
        with self._conn() as conn:
            row = conn.execute(f"SELECT id FROM qudemo_jobs WHERE dedupe_key = %s"
                               f" AND state IN {ACTIVE_SQL}", (dedupe_key,)).fetchone()
        return "" if row is None else str(row[0])

    def get(self, job_id: str) -> Job | None:
        """Return one job, or ``None``."""
        with self._conn() as conn:
            row = conn.execute(f"SELECT {JOB_COLUMNS} FROM qudemo_jobs WHERE id = %s",
                               (job_id,)).fetchone()
        return None if row is None else row_to_job(row)

    def list(
        self,
        *,
        kind: JobKind | None = None,
        state: JobState | None = None,
        owner: str | None = None,
        limit: int = 100,
    ) -> JobList:
        """Return matching jobs, newest first."""
        where, args = ["true"], []
        for column, value in (("kind", kind), ("state", state), ("owner", owner)):
            if value is not None:
                where.append(f"{column} = %s")
                args.append(str(value))
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM qudemo_jobs WHERE"
                                f" {' AND '.join(where)} ORDER BY seq DESC LIMIT %s",
                                (*args, max(0, limit))).fetchall()
        return [row_to_job(r) for r in rows]

    def active(self) -> JobList:
        """Return every queued, processing or retrying job, oldest first."""
        with self._conn() as conn:
            rows = conn.execute(f"SELECT {JOB_COLUMNS} FROM qudemo_jobs"
                                f" WHERE state IN {ACTIVE_SQL} ORDER BY seq").fetchall()
        return [row_to_job(r) for r in rows]

    def counts(self) -> StateCounts:
        """Count jobs per (kind, state), across every instance."""
        with self._conn() as conn:
            rows = conn.execute("SELECT kind, state, count(*) FROM qudemo_jobs"
                                " GROUP BY kind, state").fetchall()
        return Counter({(JobKind(k), JobState(s)): int(n) for k, s, n in rows})

    def company_counts(self, companies: Collection[str],
                       states: Collection[JobState] | None = None) -> StateCounts:
        """Count the jobs of ``companies`` per (kind, state), across every instance."""
        names = sorted(companies)
        if not names:
            return Counter()
        # The company column (schema 7: ``Job.company``, casefolded as the names given);
        # a job finished before schema 7 has '' there and its name only in the record.
        sql = ("SELECT kind, state, count(*) FROM qudemo_jobs WHERE (company = ANY(%s)"
               " OR (company = '' AND lower(record->'data'->>'company_name') = ANY(%s)))")
        args: list[Any] = [names, names]
        if states is not None:
            sql += " AND state = ANY(%s)"
            args.append(sorted(state.value for state in states))
        with self._conn() as conn:
            rows = conn.execute(sql + " GROUP BY kind, state", args).fetchall()
        return Counter({(JobKind(k), JobState(s)): int(n) for k, s, n in rows})

    def max_seq(self) -> int:
        """Return the highest arrival sequence stored."""
        with self._conn() as conn:
            row = conn.execute("SELECT coalesce(max(seq), 0) FROM qudemo_jobs").fetchone()
        return int(row[0]) if row else 0

    def prune_finished(
        self, *, keep: int | None = None, finished_before: float | None = None,
        limit: int | None = None,
    ) -> StateCounts:
        """Delete finished jobs, oldest finish first: past ``keep``, or finished before a time.

        ``limit`` bounds one call; alone, it deletes the ``limit`` oldest finished jobs (the
        registry's batches, sized from its counts). A batch is one statement on a range of
        one index. Instances prune one at a time: one that finds another's batch running
        deletes nothing (its next pass counts again) instead of deleting the same excess.
        """
        removed: StateCounts = Counter()
        left = limit
        with self._conn() as conn:
            if finished_before is not None:
                removed = _delete_oldest(conn, left, finished_before)
                left = None if left is None else left - removed.total()
            if keep is not None:  # counts the finished jobs: for callers without counts
                row = conn.execute("SELECT count(*) FROM qudemo_jobs"
                                   f" WHERE state IN {FINISHED_SQL}").fetchone()
                excess = max(0, (int(row[0]) if row else 0) - max(0, keep))
                removed += _delete_oldest(conn, excess if left is None else min(excess, left))
            elif finished_before is None and left is not None:
                removed = _delete_oldest(conn, left)
        return removed

    def remove(self, job_ids: Iterable[str]) -> None:
        """Delete jobs."""
        with self._conn() as conn:
            conn.execute("DELETE FROM qudemo_jobs WHERE id = ANY(%s)", (list(job_ids),))

    def maintain(self) -> None:
        """Forget instances silent for an hour (autovacuum compacts the tables)."""
        with self._conn() as conn:
            conn.execute("DELETE FROM qudemo_instances WHERE expires_at < %s",
                         (self._clock() - 3600.0,))
            conn.execute(_PRUNE_FAIR_SQL, {"kinds": [kind.value for kind in JobKind],
                                           "credits": [self.share.credit(kind)
                                                       for kind in JobKind]})

    # --- the event log (any thread; pooled connections, never the registry's) -----------

    def events_after(self, after_id: int, *, job_id: str | None = None,
                     owner: str | None = None, limit: int = 500) -> EventList:
        """Return events after ``after_id`` up to the safe horizon, oldest first (pg_events)."""
        with self._conn() as conn:
            upto = self._events.advance(conn)
            return read_events(conn, after_id, upto, job_id=job_id, owner=owner, limit=limit)

    def last_event_id(self) -> int:
        """Return the horizon: every event up to it is readable, none below can still come."""
        with self._conn() as conn:
            return self._events.advance(conn)

    def watch_events(self, callback: Callable[[], None]) -> None:
        """Nothing to do: every instance's events are found by polling the shared log."""

    def describe(self) -> dict[str, object]:
        """Describe this store (the password is never shown)."""
        stats = self._pool.get_stats()
        return {"kind": "postgres", "url": self.where, "schema_version": SCHEMA_VERSION,
                "instance_id": self.instance_id,
                "pool": {"size": stats.get("pool_size", 0),
                         "available": stats.get("pool_available", 0),
                         "waiting": stats.get("requests_waiting", 0)},
                "listeners": sum(1 for listener in self._listeners if listener.alive)}

    def close(self) -> None:
        """Stop the listeners and close the pool (idempotent)."""
        for listener in self._listeners:
            listener.stop()
        self._listeners.clear()
        self._pool.close()
        self._watch.stop()


_PRUNE_SQL = (
    "WITH doomed AS (SELECT id FROM qudemo_jobs WHERE state IN " + FINISHED_SQL + "{age}"
    " AND (SELECT pg_try_advisory_xact_lock(" + lock_key_sql("'retention'") + "))"
    " ORDER BY finished_at, seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
    " DELETE FROM qudemo_jobs j USING doomed WHERE j.id = doomed.id"
    " AND j.state IN " + FINISHED_SQL + " RETURNING j.kind, j.state"
)
"""One batch of retention, oldest finish first (``qudemo_jobs_finished_order``).

The advisory lock is only tried (one instance prunes at a time, nobody waits);
``FOR UPDATE`` re-checks a row another transaction changed meanwhile (a failed
job retried is no longer finished, and stays), ``SKIP LOCKED`` passes rows
being written instead of waiting for them.
"""


_CLAIM_KEY_SQL = (
    "INSERT INTO qudemo_idempotency_keys AS k (scope, key, fingerprint, job_id, expires_at)"
    " VALUES (%(scope)s, %(key)s, %(fingerprint)s, %(id)s, %(expires_at)s)"
    " ON CONFLICT (scope, key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint,"
    " job_id = EXCLUDED.job_id, expires_at = EXCLUDED.expires_at"
    " WHERE k.expires_at <= %(created_at)s RETURNING k.job_id"
)
"""Take a key, or take over an expired one; no row: the key is live (its job retained: a
key is deleted with its job)."""
_PRUNE_KEYS_SQL = (
    "WITH doomed AS (SELECT scope, key FROM qudemo_idempotency_keys"
    " WHERE expires_at <= %(now)s ORDER BY expires_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)"
    " DELETE FROM qudemo_idempotency_keys k USING doomed"
    " WHERE k.scope = doomed.scope AND k.key = doomed.key"
)


def _keyed_job(conn: psycopg.Connection[Any], scope: str, key: str, *, now: float
               ) -> KeyedJob | None:
    row = conn.execute(f"SELECT k.fingerprint, {JOB_COLUMNS} FROM qudemo_idempotency_keys k"
                       " JOIN qudemo_jobs ON qudemo_jobs.id = k.job_id"
                       " WHERE k.scope = %s AND k.key = %s AND k.expires_at > %s",
                       (scope, key, now)).fetchone()
    return None if row is None else KeyedJob(str(row[0]), row_to_job(row[1:]))


def _delete_oldest(conn: psycopg.Connection[Any], count: int | None,
                   finished_before: float | None = None) -> StateCounts:
    """Delete up to ``count`` (``None``: all) oldest finished jobs, optionally only older."""
    if count is not None and count <= 0:
        return Counter()
    age = "" if finished_before is None else " AND finished_at < %(before)s"
    rows = conn.execute(_PRUNE_SQL.format(age=age),
                        {"limit": count, "before": finished_before}).fetchall()
    return Counter((JobKind(k), JobState(s)) for k, s in rows)


def _reason(exc: BaseException) -> str:
    """Return the first line of a driver error (libpq never includes the password)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
