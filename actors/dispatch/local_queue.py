"""The local queue backend: the waiting order in this process's memory, over any store.

The order is ``WaitingQueue``'s (scheduling.py): priority with aging, then the
fair order between companies. Taking a job is a pop, answered at once on the
Dispatcher's thread; nothing here does I/O. The waiting side's moves (started,
queued again after a backoff, cancelled) are recorded by telling the
JobRegistry, which writes them to the store. Pauses are this process's alone.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from typing import Any

from actors.dispatch.backend import Capacity, DispatcherPort, Room
from actors.dispatch.fairness import Capped, FairClock, FairShare
from actors.dispatch.outbox import RegistryOutbox
from actors.dispatch.scheduling import WaitingQueue
from actors.model.jobs import Job, JobKind, JobState
from actors.model.messages import Claimed, Transition
from actors.runtime.logs import job_fields
from actors.runtime.metrics import JobMetrics
from actors.runtime.timers import Clock

logger = logging.getLogger(__name__)


class LocalQueue:
    """Waiting jobs in memory, one order across kinds; pauses per kind and reason."""

    shared = False
    dispatch_after_outcome = True  # the slot is free the moment the outcome arrives

    def __init__(self, *, aging_s: float, share: FairShare, clock: Clock,
                 registry: RegistryOutbox, metrics: JobMetrics) -> None:
        self.clock = clock
        self.registry = registry
        self.metrics = metrics
        self.waiting_jobs = WaitingQueue(aging_s, fairness=FairClock(share))
        self.queued_since: dict[str, float] = {}  # job id -> when it (re)entered the order
        self.paused: dict[JobKind, set[str]] = {kind: set() for kind in JobKind}

    def __repr__(self) -> str:
        return f"<LocalQueue waiting={len(self.waiting_jobs)}>"

    def start(self, port: DispatcherPort) -> None:
        """Nothing runs beside the Dispatcher."""

    def stop(self) -> None:
        """Nothing to stop: the store keeps every waiting job for the next start."""

    def add(self, job: Job) -> None:
        """Put a stored, queued job in the waiting order (tagged in the fair order once)."""
        self.waiting_jobs.push(job)
        self.queued_since[job.id] = self.clock.time()

    def retry_due(self, job: Job) -> None:
        """A retry's backoff is over: it waits in the order again, queued."""
        self.registry.tell(Transition(job_id=job.id, target=JobState.QUEUED, at=self.clock.time()))
        self.add(job.replace(state=JobState.QUEUED, next_attempt_at=None))

    def take_over(self, job: Job) -> bool:
        """A processed job whose result is not stored: this instance stores it, now."""
        return True

    def take(self, room: Room, capped: Capped | None, *, qa_first: bool,
             capacity: Callable[[], Capacity]) -> list[Job]:
        """The best waiting job among the kinds with room, started, or none.

        One at a time: each start changes the room and the companies' ceilings.
        ``qa_first``: one capacity for both kinds, so a question that can start takes
        it before any video, however long the video has waited. The job returned is
        ``processing`` with its attempt counted, the move told to the registry.
        """
        waiting = [kind for kind in JobKind
                   if self.waiting_jobs.count(kind) and not self.paused[kind]]
        if not waiting:
            return []  # the room is asked only when a job could use it (it costs)
        free = room()
        kinds = [kind for kind in waiting if free.get(kind, 0) > 0]
        if qa_first and JobKind.QA in kinds:
            kinds = [JobKind.QA]
        if not kinds:
            return []
        now = self.clock.time()
        job = self.waiting_jobs.pop_next(kinds, now, capped=capped)
        if job is None:
            return []
        self.metrics.attempt_started(job.kind, now - self.queued_since.pop(job.id, now))
        job = job.replace(state=JobState.PROCESSING, attempts=job.attempts + 1, started_at=now)
        self.registry.tell(Transition(job_id=job.id, target=JobState.PROCESSING, at=now,
                                      attempts=job.attempts))
        return [job]

    def claimed(self, message: Claimed) -> list[Job]:
        """Never told: a local queue's jobs are taken at once, not claimed."""
        return list(message.jobs)

    def give_back(self, job: Job) -> None:
        """Put a taken job that could not start back in its place (its attempt uncounted)."""
        self.registry.tell(Transition(job_id=job.id, target=JobState.QUEUED, at=self.clock.time(),
                                      attempts=max(0, job.attempts - 1)))
        self.add(job.replace(state=JobState.QUEUED, attempts=max(0, job.attempts - 1)))

    def started(self, job: Job) -> None:
        """Nothing to keep: this process is the only one that could run the job."""

    def shutdown_cut(self, job: Job) -> bool:
        """Not taken care of here: the Dispatcher retries it once its call's hold is over."""
        return False

    def cancel(self, job_id: str, retrying: Job | None) -> bool:
        """Withdraw a waiting job, or ``retrying`` (its timer stopped); record the cancel."""
        job = self.waiting_jobs.remove(job_id) or retrying
        self.queued_since.pop(job_id, None)
        if job is None:
            return False
        self.registry.tell(Transition(job_id=job_id, target=JobState.CANCELLED,
                                      at=self.clock.time()))
        logger.info("job %s cancelled", job_id,
                    extra=job_fields(job_id, job.kind, "cancelled", job.attempts))
        return True

    def pause(self, kind: JobKind, reason: str) -> None:
        """Stop taking ``kind`` for ``reason`` (reasons add up)."""
        if reason not in self.paused[kind]:
            self.paused[kind].add(reason)
            logger.warning("%s dispatch paused (%s)", kind.value, reason)

    def resume(self, kind: JobKind, reason: str) -> bool:
        """Lift one reason; return whether it was held (the Dispatcher looks again)."""
        if reason not in self.paused[kind]:
            return False
        self.paused[kind].discard(reason)
        left = sorted(self.paused[kind])
        logger.warning("%s dispatch: %s pause lifted%s", kind.value, reason,
                       f", still paused by {left}" if left else "; resumed")
        return True

    def pause_reasons(self, kind: JobKind) -> set[str]:
        """The reasons ``kind`` is paused here."""
        return set(self.paused[kind])

    def waiting(self, kind: JobKind) -> int:
        """How many jobs of ``kind`` wait."""
        return self.waiting_jobs.count(kind)

    def position(self, job_id: str,
                 estimate: Callable[[JobKind, int], float]) -> tuple[int, float] | None:
        """A waiting job's 1-based place in its kind's order and the wait it means."""
        position = self.waiting_jobs.position(job_id, self.clock.time())
        if position is None:
            return None
        job = self.waiting_jobs.get(job_id)
        assert job is not None  # it has a position
        return position, estimate(job.kind, position)

    def charge(self, job: Job, extra_s: float) -> None:
        """Move the company's finish in the fair order by what the attempt really took."""
        self.waiting_jobs.fair.charge(job.kind, job.priority, job.company, extra_s)

    def company_waiting(self) -> Counter[tuple[JobKind, str]]:
        """Waiting jobs per (kind, company)."""
        return self.waiting_jobs.company_counts()

    def inspected(self, local: dict[str, Any],
                  companies: Callable[[Mapping[str, Any] | None], dict[str, Any]],
                  running: Collection[str]) -> dict[str, Any]:
        """The Dispatcher's snapshot: everything is known here already."""
        local["companies"] = companies(None)
        return local

    def on_message(self, message: Any) -> bool:
        """The local queue tells its Dispatcher nothing."""
        return False
