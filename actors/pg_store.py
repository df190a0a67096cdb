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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors
from psycopg_pool import ConnectionPool, PoolTimeout

from actors.errors import DuplicateJob
from actors.jobs import Job, JobKind, JobState
from actors.pg_claims import CHANNEL, notify
from actors.pg_queue import SharedQueue
from actors.pg_schema import (
    ACTIVE_SQL,
    FINISHED_SQL,
    JOB_COLUMNS,
    SCHEMA_VERSION,
    job_params,
    migrate,
    redact,
    row_to_job,
)
from actors.sqlite_store import StoreUnavailable
from actors.store import JobList, StateCounts

logger = logging.getLogger(__name__)

_INSERT_SQL = (
    "INSERT INTO qudemo_jobs (id, kind, state, owner, priority, created_at, started_at,"
    " finished_at, next_attempt_at, attempts, max_attempts, last_error, dedupe_key,"
    " has_result, record) VALUES (%(id)s, %(kind)s, %(state)s, %(owner)s, %(priority)s,"
    " %(created_at)s, %(started_at)s, %(finished_at)s, %(next_attempt_at)s, %(attempts)s,"
    " %(max_attempts)s, %(last_error)s, %(dedupe_key)s, %(has_result)s, %(record)s)"
    " RETURNING seq"
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
        clock: the wall clock for times the store picks itself (pauses, housekeeping).

    Raises:
        StoreUnavailable: unreachable, or a schema newer than this program knows.
    """

    shared = True

    def __init__(self, conninfo: str, *, instance_id: str | None = None, pool_size: int = 4,
                 connect_timeout_s: float = 10.0, idle_check_s: float = 5.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.where = redact(conninfo)
        self.instance_id = instance_id or new_instance_id()
        self._conninfo = conninfo
        self._clock = clock
        self._connect_kwargs: dict[str, Any] = {
            "connect_timeout": max(1, round(connect_timeout_s)),
            "application_name": f"qudemo-jobs {self.instance_id}"[:63],
        }
        self._listeners = []
        try:
            with psycopg.connect(conninfo, autocommit=True, **self._connect_kwargs) as conn:
                migrate(conn, self.where)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"the job store {self.where} cannot be opened: "
                                   f"{_reason(exc)}") from None
        idle_check = IdleCheck(idle_check_s)
        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            conninfo, min_size=1, max_size=max(2, pool_size), open=False,
            kwargs={**self._connect_kwargs, "autocommit": True},
            check=idle_check, reset=idle_check.returned,
            name="qudemo-pg", timeout=connect_timeout_s)
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except PoolTimeout:
            self._pool.close()
            raise StoreUnavailable(f"the job store {self.where} cannot be reached") from None

    def __repr__(self) -> str:
        return f"<PostgresJobStore {self.where} instance={self.instance_id}>"

    @contextmanager
    def _conn(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection in autocommit mode: each statement is its own transaction.

        One statement, one round trip: what claims, finishes and reads use.
        """
        try:
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
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
        statement = _INSERT_SQL
        if job.state == JobState.QUEUED:  # the wake-up in the same statement: one round trip
            statement = (f"WITH added AS ({_INSERT_SQL}, kind)"
                         " SELECT seq, pg_notify(%(channel)s, kind) FROM added")
        try:
            with self._conn() as conn:
                row = conn.execute(statement, {**job_params(job), "channel": CHANNEL}).fetchone()
        except errors.UniqueViolation as exc:
            if job.dedupe_key is None or exc.diag.constraint_name != "qudemo_jobs_dedupe":
                raise
            raise DuplicateJob(self._active_id(job.dedupe_key)) from None
        assert row is not None
        return job.replace(seq=int(row[0]))

    def add_many(self, jobs: Iterable[Job]) -> int:
        """Insert many new jobs in one transaction (imports, benchmarks); return how many.

        One wake-up per kind. Raises like ``insert`` (then nothing is added).
        """
        batch = [job_params(job) for job in jobs]
        with self._tx() as conn, conn.cursor() as cursor:
            cursor.executemany(_INSERT_SQL, batch)
            for kind in sorted({p["kind"] for p in batch if p["state"] == "queued"}):
                notify(conn, JobKind(kind))
        return len(batch)

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

    def max_seq(self) -> int:
        """Return the highest arrival sequence stored."""
        with self._conn() as conn:
            row = conn.execute("SELECT coalesce(max(seq), 0) FROM qudemo_jobs").fetchone()
        return int(row[0]) if row else 0

    def prune_finished(
        self, *, keep: int | None = None, finished_before: float | None = None
    ) -> StateCounts:
        """Delete the oldest finished jobs past ``keep`` or finished before a time."""
        removed: StateCounts = Counter()
        with self._tx() as conn:
            if finished_before is not None:
                rows = conn.execute(f"DELETE FROM qudemo_jobs WHERE state IN {FINISHED_SQL}"
                                    " AND finished_at < %s RETURNING kind, state",
                                    (finished_before,)).fetchall()
                removed.update((JobKind(k), JobState(s)) for k, s in rows)
            if keep is not None:
                rows = conn.execute(
                    f"DELETE FROM qudemo_jobs WHERE id IN (SELECT id FROM qudemo_jobs"
                    f" WHERE state IN {FINISHED_SQL} ORDER BY finished_at DESC, seq DESC"
                    " OFFSET %s) RETURNING kind, state", (max(0, keep),)).fetchall()
                removed.update((JobKind(k), JobState(s)) for k, s in rows)
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


def _reason(exc: BaseException) -> str:
    """Return the first line of a driver error (libpq never includes the password)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
