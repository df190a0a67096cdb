"""The JobRegistry actor: the one owner of job records and of their legal transitions.

It admits new jobs (queue bounds, duplicates, memory-pressure refusals),
writes every change through to its ``JobStore``, keeps counts per kind and
state without scanning, and removes finished jobs past their retention.
Refusals are returned as exception *values* (the facade raises them), so a
routine "queue full" is not logged as a traceback by pykka.

One registry for every store: what differs between a store this process alone
writes and one several instances share (who counts, who refuses duplicates,
how an outcome is written, whether anything is recovered at start) is its
records collaborator (records.py: ``LocalRecords``; shared_records.py:
``SharedRecords``), chosen by ``records_for``.

A store that fails (a full disk, an I/O error) never stops this actor, and
never loses an accepted job (I5; the local records; the shared ones hand the
job back through its lease):

* a new job whose write fails is refused (``StoreUnavailable``, 503 with
  Retry-After): nothing was stored, nothing is promised;
* a change to an accepted job whose write fails is *parked*: applied here
  (reads, counts and the Dispatcher see it), and written again on a timer
  with backoff until the store takes it; while anything is parked, new jobs
  are refused (the store is tried first), and ``Inspect`` says why;
* a failing read answers ``StoreUnavailable``; retention simply tries again.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from typing import Any, ClassVar

import pykka

from actors.model.errors import (
    DuplicateJob,
    IdempotencyKeyReused,
    IdempotencyKeyTaken,
    JobNotFound,
    JobStateConflict,
    MemoryPressure,
    QueueError,
    QueueFull,
    ShuttingDown,
    StoreUnavailable,
)
from actors.model.jobs import FINISHED_STATES, Job, JobKind, JobState, Replayed, is_legal
from actors.model.messages import (
    AddJob,
    AttachDispatcher,
    CountCompanies,
    Enqueue,
    FlushWrites,
    GetJob,
    Inspect,
    ListJobs,
    PurgeExpired,
    RecordBatch,
    RecordResult,
    RequeueFailed,
    SetAdmission,
    Transition,
    TrimHistory,
)
from actors.model.settings import Settings
from actors.runtime.logs import job_fields
from actors.runtime.metrics import JobMetrics
from actors.runtime.timers import Clock, TimerService
from actors.runtime.tracked import TrackedActor
from actors.stores.base import JobStore
from actors.stores.records import STORE_FAILURES, JobRecords, records_for

logger = logging.getLogger(__name__)


class JobRegistry(TrackedActor):
    """Holds every job record; applies only legal state transitions."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: JobStore,
        timers: TimerService,
        clock: Clock,
        metrics: JobMetrics | None = None,
        threads: list[threading.Thread] | None = None,
    ) -> None:
        super().__init__(threads=threads)
        self.metrics = metrics or JobMetrics()
        self.settings = settings
        self.store = store
        self.timers = timers
        self.clock = clock
        self.dispatcher: pykka.ActorRef[Any] | None = None
        self.records: JobRecords = records_for(store, clock=clock, flush_later=self._flush_later)
        self.refused: set[JobKind] = set()
        self.illegal_transitions = 0

    def __repr__(self) -> str:
        return f"<JobRegistry jobs={sum(self.counts.values())} store={self.store!r}>"

    @property
    def counts(self) -> Counter[tuple[JobKind, JobState]]:
        """Jobs per kind and state, as the records keep them."""
        return self.records.counts

    def on_start(self) -> None:
        """Read the records' counts and indexes from the store; start the retention timer."""
        super().on_start()
        self.records.open()
        self._schedule_purge()

    def on_stop(self) -> None:
        """Close the store."""
        self.store.close()

    def on_receive(self, message: Any) -> Any:
        """Route one message; a failing store fails the question, never the actor."""
        try:
            if isinstance(message, PurgeExpired) and not self._purge_chained:
                # Where other instances finish (and prune) jobs too, each timer pass starts
                # from counts read now; the passes that continue a trim go on from the
                # counts the trim has kept current.
                self.records.refresh(force=True)
            return self._route(message)
        except STORE_FAILURES as exc:
            answer = self.records.failed(message, exc)
            if isinstance(message, AddJob) and message.reply is not None:
                message.reply.set(answer)
            return answer

    def _route(self, message: Any) -> Any:
        match message:
            case RecordBatch(messages=messages):
                # One Dispatcher step's moves: one store transaction (group commit) where
                # the records have one; each move still fails on its own.
                with self.records.batch():
                    for move in messages:
                        self.on_receive(move)
            case AddJob(job=job, reply=reply, ticket=ticket):
                if ticket is not None and not ticket.start_storing():
                    return None  # its submitter gave up: nothing is stored, as it was told
                answer = self._add_once(job, reply)
                if ticket is not None and not isinstance(answer, QueueError):
                    ticket.stored.set()
                if reply is None:
                    return answer
                if isinstance(answer, QueueError):
                    reply.set(answer)
            case Transition():
                self._transition(message)
            case GetJob(job_id=job_id):
                return self.records.current(job_id)
            case ListJobs(kind=kind, state=state, owner=owner, limit=limit):
                listed = self.store.list(kind=kind, state=state, owner=owner, limit=limit)
                return [self.records.newest(job) for job in listed]
            case CountCompanies(companies=companies):
                return self.store.company_counts(companies)
            case RecordResult(job_id=job_id, result=result):
                self.records.record_result(job_id, result)
            case RequeueFailed(job_id=job_id):
                return self._requeue(job_id)
            case SetAdmission(kind=kind, refused=refused):
                (self.refused.add if refused else self.refused.discard)(kind)
            case TrimHistory(keep_fraction=fraction):
                self._prune(keep=int(self.finished_total() * fraction), reason="memory pressure")
            case PurgeExpired():
                self._retention_pass()
            case FlushWrites():
                self.records.flush()
            case AttachDispatcher(dispatcher=dispatcher):
                self.dispatcher = dispatcher
                if self.records.recovers:
                    self._recover()
            case Inspect():
                return self._inspect()
            case _:
                return super().on_receive(message)
        return None

    # --- idempotency ---------------------------------------------------------------

    def _add_once(self, job: Job, reply: pykka.Future[Any] | None) -> Any:
        """``_add``, unless the job's Idempotency-Key names a job already: then that one.

        The lookup and the add are one step of this actor (the stores' only writer), and
        the key is stored in the job's own transaction; a store shared with other instances
        refuses a key one of them stored meanwhile (``IdempotencyKeyTaken``).
        """
        claim = job.idempotency
        if claim is None:
            return self._add(job, reply)
        found = self.store.keyed_job(claim.scope, claim.key, now=job.created_at)
        if found is None:
            try:
                return self._add(job, reply)
            except IdempotencyKeyTaken as taken:
                if taken.found is None:  # its job was removed meanwhile: nothing to replay
                    return StoreUnavailable("the Idempotency-Key was just released; try again")
                found = taken.found
        if found.fingerprint != claim.fingerprint:
            return IdempotencyKeyReused()
        replayed = Replayed(self.records.newest(found.job))
        if reply is not None:
            reply.set(replayed)
        logger.info("job %s: submission replayed (same Idempotency-Key and request)",
                    found.job.id, extra=job_fields(found.job.id, found.job.kind, "replayed",
                                                   found.job.attempts))
        return replayed

    def _prune_keys(self) -> bool:
        """Remove one batch of expired Idempotency-Keys; return whether more remain."""
        removed = self.store.prune_idempotency_keys(expired_at=self.clock.time(),
                                                    limit=self.PRUNE_BATCH)
        return removed >= self.PRUNE_BATCH

    # --- admission -----------------------------------------------------------------

    def finished_total(self) -> int:
        """How many finished jobs are retained (on all instances, to within the counts' age)."""
        self.records.refresh()
        return sum(self.counts[kind, state] for kind in JobKind for state in FINISHED_STATES)

    def waiting(self, kind: JobKind) -> int:
        """Jobs of ``kind`` waiting for a slot (queued, or retrying and coming back)."""
        return self.counts[kind, JobState.QUEUED] + self.counts[kind, JobState.RETRYING]

    def _add(self, job: Job, reply: pykka.Future[Any] | None = None) -> Job | QueueError:
        self.records.refresh()
        refused = (self.records.refusal() or self.records.duplicate_of(job)
                   or self._admission(job.kind, job.company))
        if refused is not None:
            return refused
        try:
            # Durability point: once this returns the job is accepted.
            job = self.records.insert(job)
        except DuplicateJob as exc:  # a shared store's unique index: another instance has it
            return exc
        self.metrics.job_submitted(job.kind)
        self._enqueue(job, reply=reply)
        logger.info("job %s (%s) accepted, priority %d", job.id, job.kind.value, job.priority,
                    extra=job_fields(job.id, job.kind, "accepted", 0))
        return job

    def _admission(self, kind: JobKind, company: str | None = None) -> QueueError | None:
        """Return why a new (or re-queued) job of ``kind`` is refused, or ``None``."""
        if kind in self.refused:
            return MemoryPressure()
        limits = self.settings.limits(kind)
        if self.waiting(kind) >= limits.max_waiting:
            return QueueFull(f"the {kind.value} queue is full ({limits.max_waiting} waiting); "
                             f"try again later")
        bound = limits.max_waiting_per_company
        if company is not None and bound is not None and self.company_waits(kind,
                                                                            company) >= bound:
            return QueueFull(f"company {company!r} has {bound} {kind.value} jobs waiting, its "
                             f"limit; try again once some have started")
        return None

    def company_waits(self, kind: JobKind, company: str) -> int:
        """How many of ``company``'s jobs of ``kind`` wait (queued or retrying)."""
        return self.records.company_waits(kind, company)

    def _enqueue(self, *jobs: Job, reply: pykka.Future[Any] | None = None) -> None:
        # Told before the submitter gets its reply, so a following position question
        # to the Dispatcher always finds the job there.
        if self.dispatcher is not None and jobs:
            try:
                self.dispatcher.tell(Enqueue(jobs=jobs, reply=reply))
            except pykka.ActorDeadError:  # stopping: the job is stored, and runs after a restart
                if reply is not None:
                    reply.set(ShuttingDown())
        elif reply is not None:
            reply.set((jobs[0], None))

    # --- transitions ---------------------------------------------------------------

    def _transition(self, message: Transition) -> None:
        job = self.records.outcome_job(message)
        if job is not None and self.records.stale(job, message.target):
            return
        if job is None:
            logger.error("transition of unknown job %s to %s refused", message.job_id,
                         message.target.value)
            self.illegal_transitions += 1
            return
        if not is_legal(job.state, message.target):
            logger.error("job %s: illegal transition %s -> %s refused", job.id,
                         job.state.value, message.target.value)
            self.illegal_transitions += 1
            return
        self._apply(job, transitioned(job, message))

    def _apply(self, old: Job, new: Job) -> None:
        if self.records.write(old, new) and new.state in FINISHED_STATES:
            self.metrics.job_finished(new.kind, new.state)

    def _flush_later(self, delay_s: float) -> None:
        """Ask for the parked writes to be tried again in ``delay_s`` (the records' timer)."""
        self.timers.tell_later(delay_s, self.actor_ref, FlushWrites())

    def _requeue(self, job_id: str) -> Job | QueueError:
        self.records.refresh()
        job = self.records.current(job_id)
        if job is None:
            return JobNotFound()
        if job.state != JobState.FAILED:
            return JobStateConflict(f"only failed jobs can be retried; this one is "
                                    f"{job.state.value}")
        duplicate = self.records.duplicate_of(job)
        if duplicate is not None:
            return duplicate
        if job.result is not None:
            # Processed, but its result could not be stored: only storing is retried. It
            # goes to the Dispatcher as a recovered one does (processing, with its result),
            # taking no place in the queue and no Python API slot: the video is never
            # processed twice.
            new = job.replace(state=JobState.PROCESSING, finished_at=None,
                              next_attempt_at=None)
            how = "its result goes to storage again"
        else:
            refused = self._admission(job.kind, job.company)
            if refused is not None:
                return refused
            new = job.replace(state=JobState.QUEUED, attempts=0, finished_at=None,
                              started_at=None, next_attempt_at=None, retry_delays_s=())
            how = "queued again"
        try:
            self._apply(job, new)
        except (DuplicateJob, JobNotFound, JobStateConflict) as exc:
            return exc  # a shared store: another instance runs that key, or got there first
        self._enqueue(new)
        logger.info("job %s retried by request: %s", job_id, how,
                    extra=job_fields(job_id, new.kind, "requeued", new.attempts))
        return new

    # --- retention -----------------------------------------------------------------
    #
    # Retention runs on one timer, never on a finish: a finish costs what it costs on an
    # empty store. Every RETENTION_CHECK_S a pass removes what is past the age, and, once
    # the finished jobs (the registry's own counts, no count in the store) are past
    # QUEUE_RETENTION_MAX_JOBS, trims them down to 90% of it (RETENTION_LOW_WATER_PERCENT:
    # hysteresis, the next trim is due after a tenth of the cap has finished). One pass
    # removes at most PRUNE_BATCH per criterion; while more remains, the next pass is told
    # straight back to this actor, behind whatever waits in its mailbox, so a trim never
    # holds the registry for longer than one batch. Between two passes the store may hold
    # the cap plus what finished in one RETENTION_CHECK_S. Exactly one pass is pending at
    # any time: on the timer, or in the mailbox.

    RETENTION_CHECK_S: ClassVar[float] = 1.0
    """How often the cap and the age are enforced (the bound on how far past the cap)."""
    RETENTION_LOW_WATER_PERCENT: ClassVar[int] = 90
    """Past the cap, finished jobs are trimmed down to this share of it (rounded up)."""
    PRUNE_BATCH: ClassVar[int] = 200
    """The most finished jobs one store call removes (SQLite: about 10 ms on 2 CPUs)."""

    _trim_to: int | None = None  # a trim in progress: down to this many finished jobs
    _purge_chained = False  # the pending pass follows one that left work (not the timer's)
    _maintained_at = float("-inf")  # monotonic time of the store's last maintain()
    _in_pass = False
    _chain_removed = 0  # removed by the passes since the last one that left nothing to do
    _chain_reasons: frozenset[str] = frozenset()

    def _retention_pass(self) -> None:
        """One pass (``PurgeExpired``): the age, then the cap; then the next pass."""
        more = False
        self._in_pass = True
        try:
            more = self._prune(finished_before=self.clock.time() - self.settings.retention_s,
                               reason="retention age")
            more = self._prune_keys() or more
            cap = self.settings.retention_max_jobs
            if self.finished_total() > cap:
                low = -(-cap * self.RETENTION_LOW_WATER_PERCENT // 100)  # rounded up
                self._trim_to = low if self._trim_to is None else min(self._trim_to, low)
            if self._trim_to is not None:
                if self._prune(keep=self._trim_to, reason="retention count"):
                    more = True
                else:
                    self._trim_to = None
            now = self.clock.monotonic()
            if not more and now - self._maintained_at >= self._maintain_interval_s():
                self._maintained_at = now
                self.store.maintain()
        except BaseException:
            more = False  # a failing store: the timer tries again, no tight loop
            raise
        finally:
            self._in_pass = False
            self._purge_chained = more
            if more:
                self.actor_ref.tell(PurgeExpired())
            else:
                self._schedule_purge()
                if self._chain_removed:  # one line per trim, not one per batch
                    logger.info("removed %d finished job(s) (%s); %d retained",
                                self._chain_removed, ", ".join(sorted(self._chain_reasons)),
                                self.finished_total())
                self._chain_removed, self._chain_reasons = 0, frozenset()

    def _prune(self, *, keep: int | None = None, finished_before: float | None = None,
               reason: str) -> bool:
        """Remove one batch of the oldest finished jobs: past ``keep``, or finished before.

        Returns whether more remain; a trim past ``keep`` that does carries on in the next
        retention pass (memory pressure's too). Counts come from the registry's counters.
        """
        if self.records.pending:
            return False  # the store holds older versions of some jobs: prune once written
        if finished_before is not None:
            removed = self.store.prune_finished(finished_before=finished_before,
                                                limit=self.PRUNE_BATCH)
            more = removed.total() >= self.PRUNE_BATCH
        else:
            excess = self.finished_total() - max(0, keep or 0)
            if excess <= 0:
                return False
            limit = min(excess, self.PRUNE_BATCH)
            removed = self.store.prune_finished(limit=limit)
            # Fewer than asked: the counts were ahead of the store (another instance
            # pruned); the next pass counts again.
            more = excess > limit and removed.total() == limit
            if more:
                target = max(0, keep or 0)
                self._trim_to = target if self._trim_to is None else min(self._trim_to, target)
        if removed and self._in_pass:
            self.records.removed(removed)
            self._chain_removed += removed.total()
            self._chain_reasons |= {reason}
        elif removed:
            self.records.removed(removed)
            logger.info("removed %d finished job(s) (%s)%s", removed.total(), reason,
                        "; more in the next retention passes" if more else "")
        return more

    # --- recovery ------------------------------------------------------------------

    def _recover(self) -> None:
        """Give the Dispatcher every unfinished job found in the store, oldest first.

        A job found ``processing`` with a result was being stored: it goes back to
        storage. A job found ``processing`` without one was running when the process
        died: that attempt counts. It is queued again, or failed if interruptions used up
        its attempts, so a job that kills the process every time cannot loop.
        """
        interrupted = given_up = 0
        recovered: list[Job] = []
        now = self.clock.time()
        for job in self.store.active():
            if job.state == JobState.PROCESSING and job.result is not None:
                # Processed, but the process died while its result was being stored:
                # the Dispatcher sends it back to storage; the video is not processed again.
                recovered.append(job)
                continue
            if job.state == JobState.PROCESSING:
                interrupted += 1
                error = (f"interrupted: the process stopped during attempt {job.attempts}"
                         f" of {job.max_attempts}")
                if job.attempts >= job.max_attempts:
                    given_up += 1
                    self._apply(job, job.replace(
                        state=JobState.FAILED, finished_at=now, next_attempt_at=None,
                        last_error=f"{error}; attempts used up by interruptions"))
                    logger.error("job %s failed: %s; attempts used up", job.id, error,
                                 extra=job_fields(job.id, job.kind, "failed", job.attempts))
                    continue
                # The Python API goes on with a call its client left: the job may run
                # again only once the call's hold is over, never on top of it.
                hold_until = (job.started_at or now) + self.settings.call_hold_s
                if hold_until > now:
                    queued = job.replace(state=JobState.RETRYING, last_error=error,
                                         next_attempt_at=hold_until)
                    how = f"retried in {hold_until - now:.0f}s, once its call's hold is over"
                else:
                    queued = job.replace(state=JobState.QUEUED, last_error=error)
                    how = "queued again"
                self._apply(job, queued)
                logger.warning("job %s: %s; %s", job.id, error, how,
                               extra=job_fields(job.id, job.kind, "interrupted", job.attempts))
                job = queued
            recovered.append(job)
        self._enqueue(*recovered)
        if recovered or given_up:
            logger.warning("recovered %d unfinished job(s) from the store (%d interrupted while"
                           " processing, %d of those failed for good)", len(recovered) + given_up,
                           interrupted, given_up)

    def _schedule_purge(self) -> None:
        self.timers.tell_later(self.RETENTION_CHECK_S, self.actor_ref, PurgeExpired())

    def _maintain_interval_s(self) -> float:
        """How often the store compacts: a tenth of the retention age, 1 s to a minute."""
        return min(max(self.settings.retention_s / 10, 1.0), 60.0)

    def _inspect(self) -> dict[str, Any]:
        self.records.refresh()
        return {
            "counts": {
                kind.value: {state.value: self.counts[kind, state] for state in JobState}
                for kind in JobKind
            },
            "retained_finished": self.finished_total(),
            "store": self.store.describe(),
            "admission_refused": sorted(kind.value for kind in self.refused),
            "illegal_transitions": self.illegal_transitions,
            **self.records.describe(),
        }


def transitioned(job: Job, message: Transition) -> Job:
    """Return ``job`` after ``message``'s move, with the fields that move sets."""
    changes: dict[str, Any] = {"state": message.target}
    if message.attempts is not None:
        changes["attempts"] = message.attempts
    if message.error is not None:
        changes["last_error"] = message.error
    match message.target:
        case JobState.PROCESSING:
            changes["started_at"] = message.at
            changes["next_attempt_at"] = None
        case JobState.RETRYING:
            changes["next_attempt_at"] = message.next_attempt_at
            if message.retry_delay_s is not None:
                changes["retry_delays_s"] = (*job.retry_delays_s, message.retry_delay_s)
        case JobState.QUEUED:
            changes["next_attempt_at"] = None
        case JobState.COMPLETED | JobState.FAILED | JobState.CANCELLED:
            changes["finished_at"] = message.at
            changes["next_attempt_at"] = None
            if message.result is not None:
                changes["result"] = message.result
    return job.replace(**changes)
