"""The JobRegistry actor: the one owner of job records and of their legal transitions.

It admits new jobs (queue bounds, duplicates, memory-pressure refusals),
writes every change through to its ``JobStore``, keeps counts per kind and
state without scanning, and removes finished jobs past their retention.
Refusals are returned as exception *values* (the facade raises them), so a
routine "queue full" is not logged as a traceback by pykka.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections import Counter
from typing import Any

import pykka

from actors.errors import (
    DuplicateJob,
    JobNotFound,
    JobStateConflict,
    MemoryPressure,
    QueueError,
    QueueFull,
    ShuttingDown,
)
from actors.jobs import FINISHED_STATES, Job, JobKind, JobState, is_legal
from actors.logs import job_fields
from actors.messages import (
    AddJob,
    AttachDispatcher,
    Enqueue,
    GetJob,
    Inspect,
    ListJobs,
    PurgeExpired,
    RecordResult,
    RequeueFailed,
    SetAdmission,
    Transition,
    TrimHistory,
)
from actors.metrics import JobMetrics
from actors.settings import Settings
from actors.store import JobStore
from actors.timers import Clock, TimerService
from actors.tracked import TrackedActor

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
        self.counts: Counter[tuple[JobKind, JobState]] = Counter()
        self.active_keys: dict[str, str] = {}  # dedupe key -> id of the active job
        self.refused: set[JobKind] = set()
        self.illegal_transitions = 0
        self._seq = itertools.count(1)

    def __repr__(self) -> str:
        return f"<JobRegistry jobs={sum(self.counts.values())} store={self.store!r}>"

    def on_start(self) -> None:
        """Rebuild counts and indexes from the store; start the retention timer."""
        super().on_start()
        self.counts = Counter(self.store.counts())
        self._seq = itertools.count(self.store.max_seq() + 1)
        for job in self.store.active():
            if job.dedupe_key:
                self.active_keys[job.dedupe_key] = job.id
        self._schedule_purge()

    def on_stop(self) -> None:
        """Close the store."""
        self.store.close()

    def on_receive(self, message: Any) -> Any:
        """Route one message."""
        match message:
            case AddJob(job=job, reply=reply):
                answer = self._add(job, reply)
                if reply is None:
                    return answer
                if isinstance(answer, QueueError):
                    reply.set(answer)
            case Transition():
                self._transition(message)
            case GetJob(job_id=job_id):
                return self.store.get(job_id)
            case ListJobs(kind=kind, state=state, owner=owner, limit=limit):
                return self.store.list(kind=kind, state=state, owner=owner, limit=limit)
            case RecordResult(job_id=job_id, result=result):
                self._record_result(job_id, result)
            case RequeueFailed(job_id=job_id):
                return self._requeue(job_id)
            case SetAdmission(kind=kind, refused=refused):
                (self.refused.add if refused else self.refused.discard)(kind)
            case TrimHistory(keep_fraction=fraction):
                self._prune(keep=int(self.finished_total() * fraction), reason="memory pressure")
            case PurgeExpired():
                self._prune(finished_before=self.clock.time() - self.settings.retention_s,
                            reason="retention age")
                self.store.maintain()
                self._schedule_purge()
            case AttachDispatcher(dispatcher=dispatcher):
                self.dispatcher = dispatcher
                self._recover()
            case Inspect():
                return self._inspect()
            case _:
                return super().on_receive(message)
        return None

    # --- admission -----------------------------------------------------------------

    def finished_total(self) -> int:
        """How many finished jobs are retained."""
        return sum(self.counts[kind, state] for kind in JobKind for state in FINISHED_STATES)

    def waiting(self, kind: JobKind) -> int:
        """Jobs of ``kind`` waiting for a slot (queued, or retrying and coming back)."""
        return self.counts[kind, JobState.QUEUED] + self.counts[kind, JobState.RETRYING]

    def _add(self, job: Job, reply: pykka.Future[Any] | None = None) -> Job | QueueError:
        if job.dedupe_key and job.dedupe_key in self.active_keys:
            return DuplicateJob(self.active_keys[job.dedupe_key])
        refused = self._admission(job.kind)
        if refused is not None:
            return refused
        job = job.replace(seq=next(self._seq), state=JobState.QUEUED)
        self.store.add(job)  # durability point: once this returns the job is accepted
        self.counts[job.kind, job.state] += 1
        self.metrics.job_submitted(job.kind)
        if job.dedupe_key:
            self.active_keys[job.dedupe_key] = job.id
        self._enqueue(job, reply=reply)
        logger.info("job %s (%s) accepted, priority %d", job.id, job.kind.value, job.priority,
                    extra=job_fields(job.id, job.kind, "accepted", 0))
        return job

    def _admission(self, kind: JobKind) -> QueueError | None:
        """Return why a new (or re-queued) job of ``kind`` is refused, or ``None``."""
        if kind in self.refused:
            return MemoryPressure()
        limit = self.settings.limits(kind).max_waiting
        if self.waiting(kind) >= limit:
            return QueueFull(f"the {kind.value} queue is full ({limit} waiting); try again later")
        return None

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
        job = self.store.get(message.job_id)
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
        self.store.update(new)
        self.counts[old.kind, old.state] -= 1
        self.counts[new.kind, new.state] += 1
        if new.state in FINISHED_STATES:
            self.metrics.job_finished(new.kind, new.state)
            if new.dedupe_key and self.active_keys.get(new.dedupe_key) == new.id:
                del self.active_keys[new.dedupe_key]
            if self.finished_total() > self.settings.retention_max_jobs:
                self._prune(keep=self.settings.retention_max_jobs, reason="retention count")

    def _record_result(self, job_id: str, result: Any) -> None:
        job = self.store.get(job_id)
        if job is not None and job.state == JobState.PROCESSING:
            self.store.update(job.replace(result=result))

    def _requeue(self, job_id: str) -> Job | QueueError:
        job = self.store.get(job_id)
        if job is None:
            return JobNotFound()
        if job.state != JobState.FAILED:
            return JobStateConflict(f"only failed jobs can be retried; this one is "
                                    f"{job.state.value}")
        if job.dedupe_key and job.dedupe_key in self.active_keys:
            return DuplicateJob(self.active_keys[job.dedupe_key])
        if job.result is not None:
            # Processed, but its result could not be stored: only storing is retried. It
            # goes to the Dispatcher as a recovered one does (processing, with its result),
            # taking no place in the queue and no Python API slot: the video is never
            # processed twice.
            new = job.replace(state=JobState.PROCESSING, finished_at=None,
                              next_attempt_at=None)
            how = "its result goes to storage again"
        else:
            refused = self._admission(job.kind)
            if refused is not None:
                return refused
            new = job.replace(state=JobState.QUEUED, attempts=0, finished_at=None,
                              started_at=None, next_attempt_at=None, retry_delays_s=())
            how = "queued again"
        self._apply(job, new)
        if new.dedupe_key:
            self.active_keys[new.dedupe_key] = new.id
        self._enqueue(new)
        logger.info("job %s retried by request: %s", job_id, how,
                    extra=job_fields(job_id, new.kind, "requeued", new.attempts))
        return new

    # --- retention -----------------------------------------------------------------

    def _prune(self, *, keep: int | None = None, finished_before: float | None = None,
               reason: str) -> None:
        removed = self.store.prune_finished(keep=keep, finished_before=finished_before)
        if removed:
            self.counts.subtract(removed)
            logger.info("removed %d finished job(s) (%s)", removed.total(), reason)

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
                queued = job.replace(state=JobState.QUEUED, last_error=error)
                self._apply(job, queued)
                logger.warning("job %s: %s; queued again", job.id, error,
                               extra=job_fields(job.id, job.kind, "interrupted", job.attempts))
                job = queued
            recovered.append(job)
        self._enqueue(*recovered)
        if recovered or given_up:
            logger.warning("recovered %d unfinished job(s) from the store (%d interrupted while"
                           " processing, %d of those failed for good)", len(recovered) + given_up,
                           interrupted, given_up)

    def _schedule_purge(self) -> None:
        interval = min(max(self.settings.retention_s / 10, 1.0), 60.0)
        self.timers.tell_later(interval, self.actor_ref, PurgeExpired())

    def _inspect(self) -> dict[str, Any]:
        return {
            "counts": {
                kind.value: {state.value: self.counts[kind, state] for state in JobState}
                for kind in JobKind
            },
            "retained_finished": self.finished_total(),
            "store": self.store.describe(),
            "admission_refused": sorted(kind.value for kind in self.refused),
            "illegal_transitions": self.illegal_transitions,
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
