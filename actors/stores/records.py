"""How the JobRegistry keeps its records: the part that differs between a local and a shared store.

The JobRegistry (registry.py) decides; its records collaborator keeps what it decides
on. Two implementations, one interface (``JobRecords``):

* ``LocalRecords`` (memory and SQLite stores: this process is the only writer): the
  counts per kind and state, the duplicate index and the per-company waiting counts
  are rebuilt from the store at start and kept here; a change the store fails to
  write is *parked* (applied here, written again on a timer) so a full disk never
  loses an accepted job; unfinished jobs found at start are this process's to recover.
* ``SharedRecords`` (shared_records.py, PostgreSQL: several instances write): the
  database counts and refuses duplicates; an attempt's outcome is written only under
  its lease; nothing is parked (an outcome not written comes back by lease expiry).

``records_for`` picks the one a store needs.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import sqlite3
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from actors.model.errors import DuplicateJob, QueueError, StoreUnavailable
from actors.model.jobs import FINISHED_STATES, WAITING_STATES, Job, JobKind, JobState
from actors.model.messages import Transition
from actors.runtime.timers import Clock
from actors.stores.base import JobStore

logger = logging.getLogger(__name__)

STORE_FAILURES: tuple[type[BaseException], ...] = (sqlite3.Error, StoreUnavailable, OSError)
"""What a store call raises when the disk or database fails; never fatal to the registry."""
FLUSH_FIRST_S, FLUSH_MAX_S = 0.5, 30.0
"""Backoff of the parked writes' retries: from the first to the cap, doubling."""


class JobRecords(ABC):
    """The JobRegistry's records over one store: counts, admission facts and writes."""

    recovers = False
    """Whether unfinished jobs found in the store at start are this instance's to recover."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.counts: Counter[tuple[JobKind, JobState]] = Counter()

    @abstractmethod
    def open(self) -> None:
        """Read what the records need from the store, once, at start."""

    def refresh(self, *, force: bool = False) -> None:  # noqa: B027 - a hook, default no-op
        """Bring the counts up to date where other instances change them (default: nothing)."""

    def refusal(self) -> QueueError | None:
        """Why no new job can be added now, from these records, or ``None`` (default)."""
        return None

    def duplicate_of(self, job: Job) -> DuplicateJob | None:
        """The active job holding ``job``'s dedupe key, where these records index them.

        Default: ``None``, the store's ``insert`` decides.
        """
        return None

    @abstractmethod
    def company_waits(self, kind: JobKind, company: str) -> int:
        """How many of ``company``'s jobs of ``kind`` wait (queued or retrying)."""

    @abstractmethod
    def insert(self, job: Job) -> Job:
        """Store a new job (queued); return it as stored. The durability point.

        Raises:
            DuplicateJob: an active job has its dedupe key (nothing stored).
            IdempotencyKeyTaken: its Idempotency-Key names another job (nothing stored).
        """

    @abstractmethod
    def current(self, job_id: str) -> Job | None:
        """The newest version of a job these records know, or ``None``."""

    def newest(self, job: Job) -> Job:
        """``job``, or a newer version of it not written yet (default: ``job``)."""
        return job

    def outcome_job(self, message: Transition) -> Job | None:
        """The job a transition applies to (default: the newest version)."""
        return self.current(message.job_id)

    def stale(self, job: Job, target: JobState) -> bool:
        """Whether a transition of ``job`` to ``target`` comes too late to apply (default: no)."""
        return False

    @abstractmethod
    def write(self, old: Job, new: Job) -> bool:
        """Record a job's change; return ``False`` when it was dropped as stale.

        Raises a store failure only when the change is not kept (parked or retried)
        anywhere: the registry then answers that the store is unavailable.
        """

    @abstractmethod
    def record_result(self, job_id: str, result: Any) -> None:
        """Keep a processed job's result before it is stored in Supabase."""

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Write the changes made inside together, where the store can (default: one by one)."""
        yield

    @property
    def pending(self) -> int:
        """Changes applied here but not written to the store yet (default: none)."""
        return 0

    def flush(self) -> bool:
        """Write what is pending; return whether nothing is left (default: nothing pends)."""
        return True

    def removed(self, counts: Counter[tuple[JobKind, JobState]]) -> None:
        """Finished jobs were pruned from the store: take them out of the counts."""
        self.counts.subtract(counts)

    @abstractmethod
    def failed(self, message: object, exc: BaseException) -> QueueError:
        """A store call failed while ``message`` was handled: keep what must be kept.

        Returns the answer for whoever asked.
        """

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What ``Inspect`` shows about the store's health and these records."""


class LocalRecords(JobRecords):
    """Records of a store this process alone writes: indexes kept here, failed writes parked."""

    recovers = True

    def __init__(self, store: JobStore, *, flush_later: Callable[[float], None]) -> None:
        super().__init__(store)
        self._flush_later = flush_later  # asks the registry for a FlushWrites after a delay
        self.active_keys: dict[str, str] = {}  # dedupe key -> id of the active job
        # (kind, company) -> its waiting jobs, for the per-company bound: kept here so that
        # a submission never counts rows.
        self.company_waiting: Counter[tuple[JobKind, str]] = Counter()
        self._seq = itertools.count(1)
        # Every unfinished job as last written (or parked): a transition never reads the
        # store back (a SQLite read and a JSON decode per move). This process is the
        # store's only writer, so these are the stored versions; the Dispatcher holds the
        # same objects, so they cost a dict entry each.
        self.active: dict[str, Job] = {}
        self.parked: dict[str, Job] = {}  # job id -> newest version the store has not taken
        self.store_error: str | None = None  # the last write failure, until one succeeds
        self.store_failures = 0
        self._flush_delay_s = FLUSH_FIRST_S
        self._flush_pending = False
        # While a batch is open: the versions written in its transaction (job id -> job),
        # and whether a write of it failed (its transaction is then rolled back whole).
        self._batch: dict[str, Job] | None = None
        self._batch_broken = False

    def open(self) -> None:
        """Rebuild the counts, the sequence and the indexes from the store."""
        self.counts = Counter(self.store.counts())
        self._seq = itertools.count(self.store.max_seq() + 1)
        for job in self.store.active():
            self.active[job.id] = job
            if job.dedupe_key:
                self.active_keys[job.dedupe_key] = job.id
            self._count_waiting(job, +1)

    def refusal(self) -> QueueError | None:
        """Refuse new jobs while accepted jobs' changes wait to be written (tried first)."""
        if self.parked and not self.flush():
            return self.unavailable()  # accepted jobs' changes first
        return None

    def duplicate_of(self, job: Job) -> DuplicateJob | None:
        """From the index of active dedupe keys."""
        if job.dedupe_key and job.dedupe_key in self.active_keys:
            return DuplicateJob(self.active_keys[job.dedupe_key])
        return None

    def company_waits(self, kind: JobKind, company: str) -> int:
        """Counted here as jobs come and go: no store read."""
        return self.company_waiting[kind, company]

    def insert(self, job: Job) -> Job:
        """Give the job the next sequence number and add it to the store."""
        job = job.replace(seq=next(self._seq), state=JobState.QUEUED)
        self.store.add(job)  # durability point: once this returns the job is accepted
        self.active[job.id] = job
        self._wrote()
        self.counts[job.kind, job.state] += 1
        self._count_waiting(job, +1)
        if job.dedupe_key:
            self.active_keys[job.dedupe_key] = job.id
        return job

    def current(self, job_id: str) -> Job | None:
        """Unfinished: as last written or parked, from memory; finished: as stored."""
        job = self.active.get(job_id)
        if job is not None:
            return job
        if self._batch is not None and job_id in self._batch:
            return self._batch[job_id]  # the transaction may be rolled back already
        parked = self.parked.get(job_id)
        return parked if parked is not None else self.store.get(job_id)

    def newest(self, job: Job) -> Job:
        """The parked version of ``job`` if one waits."""
        return self.parked.get(job.id, job)

    def write(self, old: Job, new: Job) -> bool:
        """Write through; when the store fails, park the change (it is applied all the same)."""
        self._write(new)
        self.counts[old.kind, old.state] -= 1
        self.counts[new.kind, new.state] += 1
        self._count_waiting(old, -1)
        self._count_waiting(new, +1)
        if new.dedupe_key:
            if new.state in FINISHED_STATES:
                if self.active_keys.get(new.dedupe_key) == new.id:
                    del self.active_keys[new.dedupe_key]
            elif old.state in FINISHED_STATES:  # a retried job holds its key again
                self.active_keys[new.dedupe_key] = new.id
        return True

    def record_result(self, job_id: str, result: Any) -> None:
        """Kept on the job while it is still processing."""
        job = self.current(job_id)
        if job is not None and job.state == JobState.PROCESSING:
            self._write(job.replace(result=result))

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Group commit: the writes made inside share one store transaction.

        Nothing is lost when it fails: every change of the batch is parked (applied
        here, written again on the flush timer), exactly as a single failed write is.
        Without a store transaction (the memory store), or while changes are parked
        (they are written first, in order), writes go one by one.
        """
        begin = getattr(self.store, "batch", None)
        if begin is None or self.parked or self._batch is not None:
            yield
            return
        self._batch, self._batch_broken = {}, False
        failure: BaseException | None = None
        try:
            with begin():
                yield
                if self._batch_broken:
                    raise _RolledBack
        except _RolledBack:
            pass  # a write of it failed (and was logged)
        except STORE_FAILURES as exc:  # the commit itself failed
            self._batch_broken, failure = True, exc
        except BaseException:
            self._batch_broken = True
            raise
        finally:
            written, self._batch = self._batch, None
            if self._batch_broken:
                for job_id, job in written.items():
                    self.parked.setdefault(job_id, job)
                self._schedule_flush()
        if failure is not None:
            self._failed("committing a batch of job changes", failure)
        self._wrote()

    @property
    def pending(self) -> int:
        """How many jobs have a parked change."""
        return len(self.parked)

    def flush(self) -> bool:
        """Write the parked versions again, oldest first; return whether all were taken."""
        self._flush_pending = False
        while self.parked:
            job_id, job = next(iter(self.parked.items()))
            try:
                self.store.update(job)
            except STORE_FAILURES as exc:
                self._failed(f"writing {len(self.parked)} parked job change(s)", exc)
                self._schedule_flush()
                return False
            if self.parked.get(job_id) is job:
                del self.parked[job_id]
        self._wrote()
        return True

    def failed(self, message: object, exc: BaseException) -> QueueError:
        """Note the failure (new jobs are refused until a write succeeds)."""
        self._failed(type(message).__name__, exc)
        return self.unavailable()

    def unavailable(self) -> StoreUnavailable:
        """The answer while the store takes no writes."""
        return StoreUnavailable(f"the job store cannot take writes right now"
                                f" ({self.store_error or 'failing'}); try again later")

    def describe(self) -> dict[str, Any]:
        """Whether the store takes writes, and what is parked."""
        return {"store_writable": not self.parked and self.store_error is None,
                "store_error": self.store_error, "parked_writes": len(self.parked),
                "store_failures": self.store_failures}

    def _count_waiting(self, job: Job, sign: int) -> None:
        if job.company is not None and job.state in WAITING_STATES:
            key = (job.kind, job.company)
            self.company_waiting[key] += sign
            if self.company_waiting[key] <= 0:
                del self.company_waiting[key]

    def _write(self, job: Job) -> None:
        if job.state in FINISHED_STATES:
            self.active.pop(job.id, None)
        else:
            self.active[job.id] = job
        if job.id in self.parked:  # an older version waits: keep one, the newest
            self.parked[job.id] = job
            return
        if self._batch is not None:
            self._batch[job.id] = job
            if self._batch_broken:
                return  # its transaction is rolled back at the end of the batch: parked then
        try:
            self.store.update(job)
        except STORE_FAILURES as exc:
            if self._batch is not None:
                self._batch_broken = True
            else:
                self.parked[job.id] = job
                self._schedule_flush()
            self._failed(f"writing job {job.id}", exc)
            return
        if self._batch is None:
            self._wrote()

    def _wrote(self) -> None:
        """A write succeeded: once nothing is parked, the store is healthy again."""
        if self.store_error is not None and not self.parked:
            logger.warning("job store writable again; every parked change is written")
            self.store_error = None
            self._flush_delay_s = FLUSH_FIRST_S

    def _schedule_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            self._flush_later(self._flush_delay_s)
            self._flush_delay_s = min(FLUSH_MAX_S, self._flush_delay_s * 2)

    def _failed(self, what: str, exc: BaseException) -> None:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        self.store_failures += 1
        if reason != self.store_error:
            logger.error("job store failed %s: %s (%d change(s) parked; new jobs refused until"
                         " it takes writes again)", what, reason, len(self.parked))
        self.store_error = reason


class _RolledBack(Exception):
    """A write of a batch failed: its transaction is rolled back and its changes parked."""


def records_for(store: JobStore, *, clock: Clock,
                flush_later: Callable[[float], None]) -> JobRecords:
    """The records ``store`` needs: shared ones for a store other instances write too.

    The shared module imports psycopg, so it is imported only then.
    """
    if not store.shared:
        return LocalRecords(store, flush_later=flush_later)
    from actors.stores.shared_records import SharedRecords

    return SharedRecords(store, clock=clock)  # type: ignore[arg-type]
