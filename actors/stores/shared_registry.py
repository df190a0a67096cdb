"""The JobRegistry of an instance that shares its queue with others (``QUEUE_STORE=postgres``).

What changes from the local registry (registry.py), and why:

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
* No recovery at start: a dead instance's jobs come back through lease
  expiry on whichever instance reaps them (dispatch/shared_queue.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pykka

from actors.model.errors import (
    DuplicateJob,
    JobNotFound,
    JobStateConflict,
    QueueError,
    StoreUnavailable,
)
from actors.model.jobs import FINISHED_STATES, WAITING_STATES, Job, JobKind, JobState, is_legal
from actors.model.messages import PurgeExpired, Transition
from actors.runtime.logs import job_fields
from actors.stores.postgres.store import PostgresJobStore
from actors.stores.registry import JobRegistry, transitioned

logger = logging.getLogger(__name__)

COUNTS_MAX_AGE_S = 1.0
"""How old the global counts may be before the next question reads them again."""


class SharedJobRegistry(JobRegistry):
    """Job records in a store shared by several instances; outcomes fenced by the lease."""

    store: PostgresJobStore  # the PostgreSQL store: a JobStore too

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._counts_read_at = float("-inf")
        self.lost_outcomes = 0  # outcomes dropped because the lease had moved on

    def on_start(self) -> None:
        """Read the global counts; start the retention timer (no local dedupe index)."""
        self._refresh_counts(force=True)
        self._schedule_purge()

    def _refresh_counts(self, *, force: bool = False) -> None:
        now = self.clock.monotonic()
        if force or now - self._counts_read_at >= COUNTS_MAX_AGE_S:
            try:
                self.counts = Counter(self.store.counts())
            except StoreUnavailable as exc:
                logger.warning("job counts not refreshed: %s", exc)
                return
            self._counts_read_at = now

    def finished_total(self) -> int:
        """How many finished jobs are retained, on all instances (to within a second)."""
        self._refresh_counts()
        return super().finished_total()

    # --- admission -----------------------------------------------------------------

    def _add(self, job: Job, reply: pykka.Future[Any] | None = None) -> Job | QueueError:
        self._refresh_counts()
        refused = self._admission(job.kind, job.company)
        if refused is not None:
            return refused
        try:
            # Durability point: once this returns the job is accepted, with its global seq.
            job = self.store.insert(job.replace(state=JobState.QUEUED))
        except (DuplicateJob, StoreUnavailable) as exc:
            return exc
        self._wrote()  # the database takes writes (again)
        self.counts[job.kind, job.state] += 1
        self.metrics.job_submitted(job.kind)
        self._enqueue(job, reply=reply)
        logger.info("job %s (%s) accepted, priority %d", job.id, job.kind.value, job.priority,
                    extra=job_fields(job.id, job.kind, "accepted", 0))
        return job

    def company_waits(self, kind: JobKind, company: str) -> int:
        """How many of ``company``'s jobs of ``kind`` wait, on every instance (one query).

        Read from the waiting index; two instances admitting at the same moment may
        each let one more in, as with the kind's own bound.
        """
        counts = self.store.company_counts([company], states=WAITING_STATES)
        return sum(n for (k, _), n in counts.items() if k == kind)

    def _requeue(self, job_id: str) -> Job | QueueError:
        self._refresh_counts()
        try:
            return super()._requeue(job_id)
        except DuplicateJob as exc:  # the unique index: another instance runs that key
            return exc
        except (JobNotFound, JobStateConflict) as exc:  # another instance got there first
            return exc
        except StoreUnavailable as exc:
            return exc

    # --- transitions ---------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        """Route one message; a store that is down fails the question, not the actor."""
        try:
            if isinstance(message, PurgeExpired) and not self._purge_chained:
                # Other instances finish (and prune) jobs too: each timer pass starts from
                # the global counts, read now; the passes that continue a trim go on
                # from the counts the trim has kept current.
                self._refresh_counts(force=True)
            return super().on_receive(message)
        except StoreUnavailable as exc:
            # A tell that fails here would stop the actor; outcomes lost this way come
            # back through lease expiry, like those of an instance that died: stop
            # renewing the job's lease, or nobody could ever take it back.
            if isinstance(message, Transition):
                self.store.leases.release(message.job_id)
            logger.error("job store unavailable while handling %s: %s",
                         type(message).__name__, exc)
            return exc

    def _transition(self, message: Transition) -> None:
        # Every transition this instance sends ends one of its own attempts. A job no
        # longer processing was taken back when its lease expired (and may have run
        # elsewhere since): the outcome is stale, not an illegal move. An outcome carries
        # the job as its attempt started: nobody else writes a job while we hold its
        # lease, so no read is needed (and the write is fenced by the lease anyway).
        job = message.running or self.store.get(message.job_id)
        if job is not None and job.state != JobState.PROCESSING:
            self._lost(job, message.target)
            return
        if job is None or not is_legal(job.state, message.target):
            super()._transition(message)  # refused and logged there
            return
        self._apply(job, transitioned(job, message))

    def _lost(self, job: Job, outcome: JobState) -> None:
        self.store.leases.release(job.id)
        self.lost_outcomes += 1
        logger.warning("job %s: outcome %s dropped; this instance lost its lease (the job was"
                       " taken back after the lease expired)", job.id, outcome.value,
                       extra=job_fields(job.id, job.kind, "lost", job.attempts))

    def _apply(self, old: Job, new: Job) -> None:
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
                return
            if new.state != JobState.PROCESSING:  # written: the lease was cleared with it
                self.store.leases.release(new.id)
        elif old.state == JobState.FAILED and new.state == JobState.QUEUED:
            # An operator's retry is a new request: a fresh tag in the fair order, behind
            # the work queued since it failed (and only while the job is still failed).
            self.store.requeue(new)
        else:
            self.store.update(new)
        self._wrote()
        self.counts[old.kind, old.state] -= 1
        self.counts[new.kind, new.state] += 1
        if new.state in FINISHED_STATES:
            self.metrics.job_finished(new.kind, new.state)

    def _record_result(self, job_id: str, result: Any) -> None:
        job = self.store.get(job_id)
        if (job is not None and job.state == JobState.PROCESSING
                and not self.store.finish(job.replace(result=result), self.store.instance_id)):
            logger.warning("job %s: result not recorded; lease lost", job_id)

    # --- recovery ------------------------------------------------------------------

    def _recover(self) -> None:
        """Nothing to do: jobs of a dead instance come back when their leases expire."""

    def _inspect(self) -> dict[str, Any]:
        self._refresh_counts()
        answer = super()._inspect()
        answer["lost_outcomes"] = self.lost_outcomes
        return answer
