"""The JobRegistry's records over a store several instances share (``QUEUE_STORE=postgres``).

What they keep, and why it differs from ``LocalRecords`` (records.py):

* Admission of duplicates is the database's: the unique index on active
  ``dedupe_key`` sees every instance's jobs, a local index would not.
* Counts are the database's (other instances change states too), read at
  most once per ``COUNTS_MAX_AGE_S`` and kept current in between with this
  instance's own changes: admission bounds are global, to within that age.
* An attempt's outcome is written only while this instance holds the job's
  lease (``store.finish``): a late answer from an attempt that lost its lease
  (the job was taken back and may run elsewhere) is dropped, never written
  over the run that replaced it. The lease is renewed until that write is
  done (``store.leases``), not only while the attempt runs.
* Nothing is parked: an outcome the database does not take releases the
  job's lease, so the job comes back through lease expiry on whichever
  instance reaps it, like the jobs of an instance that died; for the same
  reason nothing is recovered at start (dispatch/shared_queue.py reaps).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from actors.model.errors import QueueError, StoreUnavailable
from actors.model.jobs import WAITING_STATES, Job, JobKind, JobState
from actors.model.messages import Transition
from actors.runtime.logs import job_fields
from actors.runtime.timers import Clock
from actors.stores.postgres.store import PostgresJobStore
from actors.stores.records import JobRecords

logger = logging.getLogger(__name__)

COUNTS_MAX_AGE_S = 1.0
"""How old the global counts may be before the next question reads them again."""


class SharedRecords(JobRecords):
    """Records in the shared database: its counts, its duplicates, outcomes fenced by lease."""

    store: PostgresJobStore

    def __init__(self, store: PostgresJobStore, *, clock: Clock) -> None:
        super().__init__(store)
        self.clock = clock
        self._counts_read_at = float("-inf")
        self.lost_outcomes = 0  # outcomes dropped because the lease had moved on

    def open(self) -> None:
        """Read the global counts."""
        self.refresh(force=True)

    def refresh(self, *, force: bool = False) -> None:
        """Read the global counts again once they are ``COUNTS_MAX_AGE_S`` old (or now)."""
        now = self.clock.monotonic()
        if force or now - self._counts_read_at >= COUNTS_MAX_AGE_S:
            try:
                self.counts = Counter(self.store.counts())
            except StoreUnavailable as exc:
                logger.warning("job counts not refreshed: %s", exc)
                return
            self._counts_read_at = now

    def company_waits(self, kind: JobKind, company: str) -> int:
        """Read from the waiting index (one query), on every instance.

        Two instances admitting at the same moment may each let one more in, as with
        the kind's own bound.
        """
        counts = self.store.company_counts([company], states=WAITING_STATES)
        return sum(n for (k, _), n in counts.items() if k == kind)

    def insert(self, job: Job) -> Job:
        """Insert under the database's unique index; the job gets its global seq."""
        job = self.store.insert(job.replace(state=JobState.QUEUED))  # durability point
        self.counts[job.kind, job.state] += 1
        return job

    def current(self, job_id: str) -> Job | None:
        """As stored."""
        return self.store.get(job_id)

    def outcome_job(self, message: Transition) -> Job | None:
        """The job as its attempt started, carried by the outcome; else as stored.

        Nobody else writes a job while we hold its lease, so no read is needed (and
        the write is fenced by the lease anyway).
        """
        return message.running or self.store.get(message.job_id)

    def stale(self, job: Job, target: JobState) -> bool:
        """Every transition this instance sends ends one of its own attempts.

        A job no longer processing was taken back when its lease expired (and may
        have run elsewhere since): the outcome is stale, not an illegal move.
        """
        if job.state == JobState.PROCESSING:
            return False
        self._lost(job, target)
        return True

    def write(self, old: Job, new: Job) -> bool:
        """An outcome under the lease; an operator's retry with a fresh fair tag; else update."""
        if old.state == JobState.PROCESSING:
            try:
                written = self.store.finish(new, self.store.instance_id)
            except StoreUnavailable:
                # Not written: stop renewing, so that the job comes back through lease
                # expiry (after its hold), like a job of an instance that died.
                self.store.leases.release(new.id)
                raise
            if not written:
                self._lost(new, new.state)
                return False
            if new.state != JobState.PROCESSING:  # written: the lease was cleared with it
                self.store.leases.release(new.id)
        elif old.state == JobState.FAILED and new.state == JobState.QUEUED:
            # An operator's retry is a new request: a fresh tag in the fair order, behind
            # the work queued since it failed (and only while the job is still failed).
            self.store.requeue(new)
        else:
            self.store.update(new)
        self.counts[old.kind, old.state] -= 1
        self.counts[new.kind, new.state] += 1
        return True

    def record_result(self, job_id: str, result: Any) -> None:
        """Written under the lease, like an outcome."""
        job = self.store.get(job_id)
        if (job is not None and job.state == JobState.PROCESSING
                and not self.store.finish(job.replace(result=result), self.store.instance_id)):
            logger.warning("job %s: result not recorded; lease lost", job_id)

    def failed(self, message: object, exc: BaseException) -> QueueError:
        """An outcome lost this way comes back through lease expiry: stop renewing its lease.

        Otherwise nobody could ever take the job back.
        """
        if isinstance(message, Transition):
            self.store.leases.release(message.job_id)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.error("job store unavailable while handling %s: %s", type(message).__name__,
                     reason)
        return exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(
            f"the job store failed ({reason}); try again later")

    def describe(self) -> dict[str, Any]:
        """Nothing is ever parked (the health checks ask the database itself); lost outcomes."""
        return {"store_writable": True, "store_error": None, "parked_writes": 0,
                "store_failures": 0, "lost_outcomes": self.lost_outcomes}

    def _lost(self, job: Job, outcome: JobState) -> None:
        self.store.leases.release(job.id)
        self.lost_outcomes += 1
        logger.warning("job %s: outcome %s dropped; this instance lost its lease (the job was"
                       " taken back after the lease expired)", job.id, outcome.value,
                       extra=job_fields(job.id, job.kind, "lost", job.attempts))
