"""The durable job store: the standard library's sqlite3, in WAL mode (``QUEUE_STORE=sqlite``).

Durability: every ``add`` is its own committed transaction before it returns,
so an accepted job survives a crash or SIGKILL of the process; an ``update`` is
too, or commits with the others of its ``batch`` (the registry's group commit of
one Dispatcher step's moves) when the batch ends. ``synchronous=NORMAL`` (the
default, ``QUEUE_DB_SYNCHRONOUS``) is safe against process crashes in WAL mode;
``FULL`` also survives power loss, at the cost of an fsync per commit.

Size: ``auto_vacuum=INCREMENTAL`` is set when the file is created; after
retention removes rows their pages are given back (``incremental_vacuum``)
and the WAL is checkpointed and truncated, by the retention timer (``maintain``,
every tenth of the retention age, 1 s to a minute) and at close, so the files do
not grow without bound. Retention deletes in batches, oldest finish first, each
a range of one index.

Events (schema 4): triggers on ``jobs`` append to ``job_events`` in the statement that
adds a job or changes its state (one transaction, nothing to forget), and delete a job's
events with it. The ids are ``AUTOINCREMENT``: never reused, even after the newest
events were pruned. The one writer commits in id order, so the newest id is the
horizon. Events are read on a second, read-only connection (WAL: readers never wait
for the writer, nor it for them), shared by the reading threads under a lock.

Schema: versioned with ``PRAGMA user_version`` and migrated at open. A file
that is not a database, or whose schema is newer than this program knows,
stops the start with a clear message and is never written to.

One process owns the file at a time (an exclusive ``flock`` on ``<path>.lock``):
a second process would recover and run the same jobs twice. A process that
replaces the owner (the new gunicorn worker of a reload, booted while the old
one drains) is told so with ``expect_handover`` and waits for the lock, for a
bounded time, instead of refusing at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from actors.model.errors import IdempotencyKeyTaken, StoreUnavailable
from actors.model.events import EventList, JobEvent
from actors.model.jobs import ACTIVE_STATES, Job, JobKind, JobState, KeyedJob, dumps
from actors.stores.base import JobList, StateCounts

__all__ = ["SqliteJobStore", "StoreUnavailable", "expect_handover"]

logger = logging.getLogger(__name__)


MIGRATIONS: tuple[str, ...] = (
    # 1: jobs with the columns the queries filter on, the full record as JSON.
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        owner TEXT,
        seq INTEGER NOT NULL,
        created_at REAL NOT NULL,
        finished_at REAL,
        record TEXT NOT NULL
    );
    CREATE INDEX jobs_state_seq ON jobs (state, seq);
    CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
    CREATE INDEX jobs_owner ON jobs (owner, seq);
    """,
    # 2: retention takes the oldest finished jobs in finish order from one index (a batch
    # is an index range, never a sort of every finished row); the index holds finished
    # jobs only. Its WHERE is the queries' _FINISHED_WHERE, word for word.
    """
    DROP INDEX jobs_finished;
    CREATE INDEX jobs_finished_order ON jobs (finished_at, seq)
        WHERE state IN ('completed', 'failed', 'cancelled');
    """,
    # 3: Idempotency-Key: a caller's key names the job its first request made, until the
    # key expires (actors/model/idempotency.py); written in the job's own transaction.
    """
    CREATE TABLE idempotency_keys (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        job_id TEXT NOT NULL,
        expires_at REAL NOT NULL,
        PRIMARY KEY (scope, key)
    );
    CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
    """,
    # 4: the event log (actors/stores/events.py): a new job and every change of its state, written
    # by triggers in the same statement as the job, deleted with it. (Keep this last.)
    """
    CREATE TABLE job_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL,
        owner TEXT,
        at REAL NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX job_events_job ON job_events (job_id, id);
    CREATE INDEX job_events_owner ON job_events (owner, id);
    CREATE TRIGGER job_events_added AFTER INSERT ON jobs BEGIN
        INSERT INTO job_events (job_id, owner, at, record)
        VALUES (NEW.id, NEW.owner, (julianday('now') - 2440587.5) * 86400.0, NEW.record);
    END;
    CREATE TRIGGER job_events_changed AFTER UPDATE OF state ON jobs
        WHEN OLD.state IS NOT NEW.state BEGIN
        INSERT INTO job_events (job_id, owner, at, record)
        VALUES (NEW.id, NEW.owner, (julianday('now') - 2440587.5) * 86400.0, NEW.record);
    END;
    CREATE TRIGGER job_events_removed AFTER DELETE ON jobs BEGIN
        DELETE FROM job_events WHERE job_id = OLD.id;
    END;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_CLAIM_KEY = (
    "INSERT INTO idempotency_keys (scope, key, fingerprint, job_id, expires_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope, key) DO UPDATE SET"
    " fingerprint = excluded.fingerprint, job_id = excluded.job_id,"
    " expires_at = excluded.expires_at"
    " WHERE idempotency_keys.expires_at <= ?"
    " OR NOT EXISTS (SELECT 1 FROM jobs WHERE jobs.id = idempotency_keys.job_id)"
    " RETURNING job_id"
)
"""Take a key, or take over one that expired or whose job is gone; no row: the key is live."""
_ACTIVE = tuple(s.value for s in ACTIVE_STATES)
_FINISHED_WHERE = "state IN ('completed', 'failed', 'cancelled')"
"""Finished jobs, as literals: SQLite uses a partial index only for its own WHERE term."""
_OLDEST_FINISHED = ("SELECT id FROM jobs INDEXED BY jobs_finished_order"
                    f" WHERE {_FINISHED_WHERE}{{age}} ORDER BY finished_at, seq LIMIT ?")
"""The oldest finished jobs; ``INDEXED BY`` fails the statement rather than sort them all."""


def _marks(values: tuple[str, ...] | list[str]) -> str:
    return ",".join("?" * len(values))


_Rows = list[tuple[Any, ...]]


def _statements(script: str) -> list[str]:
    """Split a migration into statements; a trigger's body keeps its own semicolons."""
    found, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                found.append(pending)
            pending = ""
    return found


@dataclass(frozen=True)
class _Handover:
    previous: str
    timeout_s: float
    heartbeat: Callable[[], None] | None
    on_timeout: Callable[[], None] | None
    poll_s: float


_handover: _Handover | None = None


def expect_handover(previous: str, timeout_s: float, *,
                    heartbeat: Callable[[], None] | None = None,
                    on_timeout: Callable[[], None] | None = None, poll_s: float = 0.1) -> None:
    """Make the next store opened in this process wait for the lock ``previous`` holds.

    For a process that replaces the owner while it stops: gunicorn's reload boots
    the new worker before the old one has drained (``gunicorn.conf.py``, ``post_fork``).
    The store then polls the lock every ``poll_s`` for up to ``timeout_s`` (logging that
    it waits for ``previous`` to hand over) instead of refusing at once, and calls
    ``heartbeat`` between polls (the worker's liveness signal; it may raise to give up).
    When ``timeout_s`` passes without the lock, ``on_timeout`` is called (it may raise
    instead), then the open fails with ``StoreUnavailable``. Once: the open after that
    one refuses at once again.
    """
    global _handover
    _handover = _Handover(previous, timeout_s, heartbeat, on_timeout, poll_s)


def _try_lock(lock: IO[str]) -> bool:
    """Take the exclusive lock on ``lock`` if it is free; never blocks."""
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held elsewhere (EWOULDBLOCK), or the file system cannot lock
        return False
    return True


class SqliteJobStore:
    """Jobs in one SQLite file, written through on every change."""

    shared = False  # one process per file: see README, "Several workers"

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self._lock_file: IO[str] | None = None
        self._reader: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._watchers: list[Callable[[], None]] = []
        self._in_batch = False  # inside batch(): updates commit together at its end
        self._take_lock()
        try:
            self._db = self._open(synchronous)
            self._migrate()
        except BaseException:
            self._release_lock()
            raise

    def __repr__(self) -> str:
        return f"<SqliteJobStore {self.path}>"

    # --- opening -------------------------------------------------------------------

    def _take_lock(self) -> None:
        global _handover
        handover, _handover = _handover, None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115
        try:
            taken = _try_lock(lock)
            if not taken and handover is not None:
                taken = self._wait_for_lock(lock, handover)
        except BaseException:
            lock.close()
            raise
        if not taken:
            lock.close()
            if handover is not None:
                raise StoreUnavailable(
                    f"the job store {self.path} is still in use after waiting "
                    f"{handover.timeout_s:g} s for {handover.previous} to hand it over; "
                    "one process owns it")
            raise StoreUnavailable(
                f"the job store {self.path} is in use by another process; one process owns it")
        self._lock_file = lock

    def _wait_for_lock(self, lock: IO[str], handover: _Handover) -> bool:
        """Poll the lock until it is free or ``handover.timeout_s`` has passed."""
        started = time.monotonic()
        deadline = started + handover.timeout_s
        logger.info("waiting for %s to hand over the job store %s (up to %g s)",
                    handover.previous, self.path, handover.timeout_s)
        while time.monotonic() < deadline:
            if handover.heartbeat is not None:
                handover.heartbeat()
            time.sleep(min(handover.poll_s, max(0.0, deadline - time.monotonic())))
            if _try_lock(lock):
                logger.info("took over the job store %s from %s after %.1f s",
                            self.path, handover.previous, time.monotonic() - started)
                return True
        logger.error("%s did not hand over the job store %s within %g s",
                     handover.previous, self.path, handover.timeout_s)
        if handover.on_timeout is not None:
            handover.on_timeout()
        return False

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing drops the flock
            self._lock_file = None

    def _open(self, synchronous: str) -> sqlite3.Connection:
        # The registry actor is the only user, from its own thread; the store is
        # opened on the starting thread so a bad file stops the start at once.
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:  # checked before anything could write to the file
                db.close()
                raise StoreUnavailable(
                    f"the job store {self.path} has schema version {version}, newer than this "
                    f"program knows ({SCHEMA_VERSION}); it was left untouched. Run a newer "
                    "release or point QUEUE_DB_PATH elsewhere."
                )
            if version == 0:
                db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect before tables
            db.execute("PRAGMA journal_mode = WAL")
            db.execute(f"PRAGMA synchronous = {synchronous}")
            db.execute("PRAGMA busy_timeout = 5000")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise StoreUnavailable(
                f"the job store {self.path} cannot be read ({exc}); it was left untouched. "
                "Move it aside or set QUEUE_DB_PATH to another file."
            ) from None
        return db

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        for number in range(version + 1, SCHEMA_VERSION + 1):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(MIGRATIONS[number - 1]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {number}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            logger.info("job store %s migrated to schema version %d", self.path, number)

    # --- jobs ----------------------------------------------------------------------

    def add(self, job: Job) -> None:
        """Insert a new job (committed before this returns), with its idempotency key if any.

        Raises:
            IdempotencyKeyTaken: the key is live and names another job (nothing stored).
        """
        claim = job.idempotency
        if claim is None:
            self._insert(job)
            self._changed()
            return
        # A savepoint, not BEGIN: the key and the job commit together, or neither does.
        self._db.execute("SAVEPOINT add_keyed")
        try:
            if self._db.execute(_CLAIM_KEY, (claim.scope, claim.key, claim.fingerprint, job.id,
                                             claim.expires_at, job.created_at)).fetchone() is None:
                raise IdempotencyKeyTaken(self.keyed_job(claim.scope, claim.key,
                                                         now=job.created_at))
            self._insert(job)
        except BaseException:
            self._db.execute("ROLLBACK TO add_keyed")
            self._db.execute("RELEASE add_keyed")
            raise
        self._db.execute("RELEASE add_keyed")
        self._changed()  # committed: the event feed may read it now

    def keyed_job(self, scope: str, key: str, *, now: float) -> KeyedJob | None:
        """Return the job under a key live at ``now`` whose job is still stored, or ``None``."""
        row = self._db.execute(
            "SELECT k.fingerprint, j.record FROM idempotency_keys k JOIN jobs j"
            " ON j.id = k.job_id WHERE k.scope = ? AND k.key = ? AND k.expires_at > ?",
            (scope, key, now)).fetchone()
        return None if row is None else KeyedJob(row[0], Job.from_dict(json.loads(row[1])))

    def prune_idempotency_keys(self, *, expired_at: float, limit: int) -> int:
        """Delete at most ``limit`` keys expired by ``expired_at``, oldest first (one index)."""
        rows = self._db.execute(
            "DELETE FROM idempotency_keys WHERE rowid IN (SELECT rowid FROM idempotency_keys"
            " WHERE expires_at <= ? ORDER BY expires_at LIMIT ?) RETURNING 1",
            (expired_at, max(0, limit))).fetchall()
        return len(rows)

    def _insert(self, job: Job) -> None:
        self._db.execute(
            "INSERT INTO jobs (id, kind, state, owner, seq, created_at, finished_at, record)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (job.id, job.kind.value, job.state.value, job.owner, job.seq, job.created_at,
             job.finished_at, dumps(job)),
        )

    def update(self, job: Job) -> None:
        """Write a job's new version (committed before this returns, or with its batch)."""
        self._db.execute(
            "UPDATE jobs SET state = ?, finished_at = ?, record = ? WHERE id = ?",
            (job.state.value, job.finished_at, dumps(job), job.id),
        )
        if not self._in_batch:
            self._changed()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Commit the updates made inside as one transaction (group commit), or none of them.

        One commit instead of one per change: the WAL frames of the pages they share are
        written once. Raises what the commit raises (the transaction is rolled back).
        """
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:
            yield  # no transaction to be had: each update commits (or fails) on its own
            return
        self._in_batch = True
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:  # SQLite may have rolled back already (a full disk)
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise
        finally:
            self._in_batch = False
        self._changed()  # committed: the event feed may read it now

    def _changed(self) -> None:
        for watcher in self._watchers:
            watcher()

    def get(self, job_id: str) -> Job | None:
        """Return one job, or ``None``."""
        row = self._db.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else Job.from_dict(json.loads(row[0]))

    def list(
        self,
        *,
        kind: JobKind | None = None,
        state: JobState | None = None,
        owner: str | None = None,
        limit: int = 100,
    ) -> JobList:
        """Return matching jobs, newest first."""
        where, args = [], []
        for column, value in (("kind", kind), ("state", state), ("owner", owner)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value.value if isinstance(value, JobKind | JobState) else value)
        sql = "SELECT record FROM jobs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        rows = self._db.execute(sql, (*args, max(0, limit))).fetchall()
        return [Job.from_dict(json.loads(r[0])) for r in rows]

    def active(self) -> JobList:
        """Return every unfinished job, oldest first."""
        rows = self._db.execute(
            f"SELECT record FROM jobs WHERE state IN ({_marks(_ACTIVE)}) ORDER BY seq", _ACTIVE
        ).fetchall()
        return [Job.from_dict(json.loads(r[0])) for r in rows]

    def counts(self) -> StateCounts:
        """Count jobs per (kind, state)."""
        rows = self._db.execute("SELECT kind, state, count(*) FROM jobs GROUP BY kind, state")
        return Counter({(JobKind(k), JobState(s)): n for k, s, n in rows})

    def company_counts(self, companies: Collection[str],
                       states: Collection[JobState] | None = None) -> StateCounts:
        """Count the jobs of ``companies`` per (kind, state) (names are ASCII: ``lower``)."""
        names = sorted(companies)
        if not names:
            return Counter()
        sql = (f"SELECT kind, state, count(*) FROM jobs WHERE"
               f" lower(json_extract(record, '$.data.company_name')) IN ({_marks(names)})")
        args: list[str] = list(names)
        if states is not None:
            wanted = sorted(state.value for state in states)
            sql += f" AND state IN ({_marks(wanted)})"
            args.extend(wanted)
        rows = self._db.execute(sql + " GROUP BY kind, state", args)
        return Counter({(JobKind(k), JobState(s)): n for k, s, n in rows})

    def max_seq(self) -> int:
        """Return the highest arrival sequence stored."""
        return int(self._db.execute("SELECT coalesce(max(seq), 0) FROM jobs").fetchone()[0])

    def prune_finished(
        self, *, keep: int | None = None, finished_before: float | None = None,
        limit: int | None = None,
    ) -> StateCounts:
        """Delete finished jobs, oldest finish first: past ``keep``, or finished before a time.

        ``limit`` bounds one call; alone, it deletes the ``limit`` oldest finished jobs (the
        registry's batches, sized from its own counts). Each batch is a range of one index.
        """
        removed: StateCounts = Counter()
        left = limit
        if finished_before is not None:
            removed = self._delete_oldest(left, finished_before)
            left = None if left is None else left - removed.total()
        if keep is not None:  # counts the finished jobs: for callers without counts
            total = self._db.execute("SELECT count(*) FROM jobs INDEXED BY jobs_finished_order"
                                     f" WHERE {_FINISHED_WHERE}").fetchone()[0]
            excess = max(0, total - max(0, keep))
            removed += self._delete_oldest(excess if left is None else min(excess, left))
        elif finished_before is None and left is not None:
            removed = self._delete_oldest(left)
        return removed

    def _delete_oldest(self, count: int | None, finished_before: float | None = None
                       ) -> StateCounts:
        """Delete up to ``count`` (``None``: all) oldest finished jobs, optionally only older."""
        if count is not None and count <= 0:
            return Counter()
        age, args = ("", ()) if finished_before is None else (" AND finished_at < ?",
                                                             (finished_before,))
        rows = self._db.execute(
            f"DELETE FROM jobs WHERE id IN ({_OLDEST_FINISHED.format(age=age)})"
            " RETURNING kind, state", (*args, -1 if count is None else count)).fetchall()
        return Counter((JobKind(k), JobState(s)) for k, s in rows)

    def maintain(self) -> None:
        """Give freed pages back to the file system and truncate the WAL."""
        # Through execute() the pragma frees a single page; executescript runs it to the end.
        self._db.executescript("PRAGMA incremental_vacuum;")
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def remove(self, job_ids: Iterable[str]) -> None:
        """Delete jobs."""
        self._db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])

    def describe(self) -> dict[str, object]:
        """Describe this store."""
        return {"kind": "sqlite", "path": str(self.path), "schema_version": SCHEMA_VERSION}

    # --- the event log (any thread) -------------------------------------------------

    def events_after(self, after_id: int, *, job_id: str | None = None,
                     owner: str | None = None, limit: int = 500) -> EventList:
        """Return events after ``after_id``, oldest first, on the read connection."""
        sql = "SELECT id, at, record FROM job_events WHERE id > ?"
        args: list[object] = [after_id]
        for column, value in (("job_id", job_id), ("owner", owner)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        rows = self._read(sql + " ORDER BY id LIMIT ?", (*args, max(0, limit)))
        return [JobEvent(id=int(i), job=Job.from_dict(json.loads(r)), at=float(at))
                for i, at, r in rows]

    def last_event_id(self) -> int:
        """Return the newest event id ever given (sqlite_sequence: pruning never lowers it)."""
        rows = self._read("SELECT seq FROM sqlite_sequence WHERE name = 'job_events'", ())
        return int(rows[0][0]) if rows else 0

    def watch_events(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the registry's thread) after each write."""
        self._watchers.append(callback)

    def _read(self, sql: str, args: tuple[object, ...]) -> _Rows:
        with self._read_lock:
            if self._reader is None:
                if self._lock_file is None:
                    raise StoreUnavailable(f"the job store {self.path} is closed")
                uri = self.path.resolve().as_uri() + "?mode=ro"
                self._reader = sqlite3.connect(uri, uri=True, check_same_thread=False,
                                               isolation_level=None)
                self._reader.execute("PRAGMA busy_timeout = 5000")
            return self._reader.execute(sql, args).fetchall()

    def close(self) -> None:
        """Checkpoint, close the database and release the ownership lock."""
        with self._read_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        try:
            self.maintain()
            self._db.close()
        except sqlite3.Error:
            logger.exception("closing the job store failed")
        finally:
            self._release_lock()
