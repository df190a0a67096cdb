"""The Dispatcher actor: slots, workers, deadlines, abandoned calls, retries, outcomes.

It owns the worker pools, the running attempts and the retry timers; where
waiting jobs wait is its queue backend's (backend.py: ``LocalQueue`` in
memory, ``ClaimingQueue`` in PostgreSQL), by composition: the decisions here are
written once for both. The JobRegistry owns the records, and is told of every
state change. Every decision happens on this actor's thread, so no lock is
needed; no I/O happens on it either (the shared queue's is on its own threads).
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pykka

from actors.dispatch.attempts import ANSWERED, BEFORE, CALLING, AttemptCall
from actors.dispatch.backend import Answer, Capacity, QueueBackend
from actors.dispatch.fairness import (
    NOMINAL_COST_S,
    FairShare,
    capped_by,
    ceilings_of,
    describe_companies,
)
from actors.dispatch.limiter import limiter_config, overload_signal
from actors.dispatch.outbox import RegistryOutbox
from actors.dispatch.scheduling import DurationEstimate, backoff_delay_s, estimate_wait_s
from actors.model.jobs import Job, JobKind, JobState
from actors.model.messages import (
    AttachWatchdog,
    AttemptDeadline,
    AttemptOverdue,
    CancelJob,
    CheckInstances,
    CheckMemory,
    Claimed,
    Drain,
    Enqueue,
    EstimateWait,
    Fenced,
    Inspect,
    InstanceMemory,
    JobFailed,
    JobSucceeded,
    LeasesLost,
    Pause,
    QueuePosition,
    Reaped,
    RecordResult,
    Resume,
    RetryDue,
    RevivePool,
    RunJob,
    StopWorkers,
    StoreResult,
    Transition,
    WorkerCrashed,
)
from actors.model.settings import Settings
from actors.results.supabase import CompanyResolver
from actors.runtime.logs import job_fields
from actors.runtime.metrics import JobMetrics
from actors.runtime.snapshot import describe_job
from actors.runtime.timers import Clock, TimerHandle, TimerService
from actors.runtime.tracked import TrackedActor
from actors.work.instances import InstanceSet
from actors.work.pool import WorkerPool
from actors.work.python_api import PythonApiClient

logger = logging.getLogger(__name__)

DEFAULT_DURATION_S = {JobKind.VIDEO: 180.0, JobKind.QA: 10.0}
"""Duration estimates used until real attempts have been observed."""


@dataclass
class _Running:
    """An attempt holding a slot: running, or abandoned at its deadline (call still open)."""

    job: Job
    worker_id: str
    started: float
    timer: TimerHandle  # the deadline, then (abandoned) the end of the hold
    instance: str
    call: AttemptCall
    abandoned: bool = False  # at its deadline the Python API was still at it
    lease_lost: bool = False  # shared queue: its lease could not be renewed (fenced or lost)


class _Port:
    """How a queue backend tells its Dispatcher, from any thread; a stopped one hears nothing."""

    def __init__(self, ref: pykka.ActorRef[Any]) -> None:
        self.ref = ref

    def tell(self, message: Any) -> None:
        with contextlib.suppress(pykka.ActorDeadError):
            self.ref.tell(message)


class Dispatcher(TrackedActor):
    """Takes the next jobs from its queue, hands them to free workers, decides what follows."""

    def __init__(
        self,
        settings: Settings,
        *,
        queue: QueueBackend,
        registry: RegistryOutbox,
        clients: Mapping[str, PythonApiClient],
        timers: TimerService,
        clock: Clock,
        rng: random.Random | None = None,
        metrics: JobMetrics | None = None,
        threads: list[threading.Thread] | None = None,
        writer: pykka.ActorRef[Any] | None = None,
        resolver: CompanyResolver | None = None,
    ) -> None:
        super().__init__(threads=threads)
        self.writer = writer  # the ResultWriter when results go to Supabase, else None
        self.resolver = resolver
        self.metrics = metrics or JobMetrics()
        self.queue = queue
        self.settings = settings
        self.registry = registry  # the registry's moves go out once per step (outbox.py)
        self.clients = clients
        self.instances = InstanceSet(
            tuple(clients), {kind: settings.limits(kind).max_concurrent for kind in JobKind},
            failure_threshold=settings.breaker_failures, open_s=settings.breaker_open_s,
            adaptive=limiter_config(settings))
        self.avoid: dict[str, str] = {}  # job id -> instance its last attempt broke on
        self.watchdog: pykka.ActorRef[Any] | None = None
        self.timers = timers
        self.clock = clock
        self.rng = rng or random.Random()
        self.share = FairShare.of(settings.company_weights)  # the fair order between companies
        self.ceilings = ceilings_of(settings)
        self.running: dict[str, _Running] = {}
        self.retrying: dict[str, tuple[Job, TimerHandle]] = {}
        self.durations = {kind: DurationEstimate(DEFAULT_DURATION_S[kind]) for kind in JobKind}
        self.pools: dict[JobKind, WorkerPool] = {}
        self.draining = False
        self._idle_events: list[threading.Event] = []

    def __repr__(self) -> str:
        return (f"<Dispatcher {self.queue!r} running={len(self.running)}"
                f" retrying={len(self.retrying)} paused={self._paused_kinds()}>")

    def on_start(self) -> None:
        """Start one worker pool per kind (its limit per instance, times the instances).

        Then the queue backend, which may begin taking jobs at once.
        """
        super().on_start()
        for kind in JobKind:
            pool = WorkerPool(
                kind,
                self.settings.limits(kind).max_concurrent * len(self.clients),
                dispatcher=self.actor_ref,
                clients=self.clients,
                clock=self.clock,
                max_restarts=self.settings.worker_max_restarts,
                restart_window_s=self.settings.worker_restart_window_s,
                threads=self._threads,
                resolver=self.resolver,
            )
            pool.start()
            self.pools[kind] = pool
        self.queue.start(_Port(self.actor_ref))

    def on_stop(self) -> None:
        """Stop the queue backend, then anything still running.

        Normally the facade has stopped the workers already.
        """
        self.queue.stop()
        for pool in self.pools.values():
            pool.stop(timeout_s=1.0)
        for _, handle in self.retrying.values():
            handle.cancel()
        for entry in self.running.values():
            entry.timer.cancel()

    def on_receive(self, message: Any) -> Any:
        """Route one message; then send the registry the moves it made, together."""
        try:
            return self._route(message)
        finally:
            self.registry.flush()

    def _route(self, message: Any) -> Any:
        match message:
            case Enqueue(jobs=jobs, reply=reply):
                for job in jobs:
                    self._enqueue(job)
                self._dispatch()
                if reply is not None:  # a submitter waits: where its job stands now
                    reply.set((jobs[0], self._position(jobs[0].id)))
            case Claimed():
                self._on_claimed(message)
            case Reaped(jobs=jobs):
                self._on_reaped(jobs)
            case LeasesLost(job_ids=job_ids):
                self._on_leases_lost(job_ids)
            case Fenced():
                self._on_fenced(message)
            case JobSucceeded():
                self._on_succeeded(message)
            case JobFailed():
                self._on_failed(message)
            case WorkerCrashed():
                self._on_crashed(message)
            case AttemptDeadline(job_id=job_id, attempt=attempt):
                self._on_deadline(job_id, attempt)
            case AttemptOverdue(job_id=job_id, attempt=attempt):
                self._on_overdue(job_id, attempt)
            case InstanceMemory():
                self._on_instance_memory(message)
            case CheckInstances():
                if self.instances.half_open(self.clock.monotonic()) and self.watchdog:
                    self.watchdog.tell(CheckMemory())  # the probe: costs no job an attempt
                self._dispatch()  # or an instance's Retry-After has passed
            case AttachWatchdog(watchdog=watchdog):
                self.watchdog = watchdog
            case RetryDue(job_id=job_id):
                self._on_retry_due(job_id)
            case RevivePool(kind=kind):
                if not self.draining and self.pools[kind].failed:
                    self.pools[kind].revive()
                    self._dispatch()
            case CancelJob(job_id=job_id):
                return self._cancel(job_id)
            case Pause(kind=kind, reason=reason):
                self._pause(kind, reason)
            case Resume(kind=kind, reason=reason):
                self._resume(kind, reason)
            case QueuePosition(job_id=job_id):
                return self._position(job_id)
            case EstimateWait(kind=kind, position=position):
                return self._estimate(kind, position)
            case Drain(idle=idle):
                self.draining = True
                self._idle_events.append(idle)
                self._check_idle()
            case StopWorkers(timeout_s=timeout_s):
                # Workers only ever tell the Dispatcher, never ask it, so waiting on
                # their stop here cannot deadlock.
                self.draining = True
                for pool in self.pools.values():
                    pool.stop(timeout_s)
            case Inspect():
                return self._inspect()
            case _ if self.queue.on_message(message):  # a wake-up, a beat, a pause written
                self._dispatch()
            case _:
                return super().on_receive(message)
        return None

    # --- dispatching ---------------------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        if job.state == JobState.PROCESSING and job.result is not None:
            if self.queue.take_over(job):  # else the queue hands it over once it may
                self._restore_processed(job, job.result)
            return
        if job.state == JobState.RETRYING:
            # Recovered from the store: re-arm its timer from the stored due time.
            delay = max(0.0, (job.next_attempt_at or 0.0) - self.clock.time())
            handle = self.timers.tell_later(delay, self.actor_ref, RetryDue(job_id=job.id))
            self.retrying[job.id] = (job, handle)
        else:
            self.queue.add(job)

    def _room(self) -> dict[JobKind, int]:
        """How many more jobs of each kind could start now: idle workers and Python API room."""
        now = self.clock.monotonic()
        return {kind: min(pool.idle, self.instances.room(kind, now))
                for kind, pool in self.pools.items() if pool.has_idle}

    def _capacity(self) -> Capacity:
        """What the Python API may take now: per kind over every instance, and per instance."""
        if self.settings.adaptive_concurrency:
            limits = {kind: self.instances.limit(kind) for kind in JobKind}
        else:
            limits = {kind: self.settings.limits(kind).max_concurrent * len(self.clients)
                      for kind in JobKind}
        return Capacity(limits, self.instances.capacities(self.clock.monotonic()))

    def _dispatch(self) -> None:
        """Start waiting jobs while the queue has some that a free slot can take."""
        while not self.draining:
            jobs = self.queue.take(
                self._room, capped_by(self.ceilings, (e.job for e in self.running.values())),
                qa_first=self.settings.adaptive_concurrency, capacity=self._capacity)
            if not jobs:
                return
            for job in jobs:
                self._launch(job)

    def _on_claimed(self, message: Claimed) -> None:
        """Start the jobs a claim brought; give back those no slot can take any more."""
        now = self.clock.monotonic()
        for job in self.queue.claimed(message):
            url = message.routes.get(job.id)
            if (self.draining or not self.pools[job.kind].has_idle
                    or not (self.instances.can_take(url, job.kind, now) if url is not None
                            else self.instances.has_room(job.kind, now))):
                # The room shrank while the claim was out (a limiter cut, a breaker).
                self.queue.give_back(job)
                continue
            self._launch(job, hold_from=message.sent, url=url)
        self._dispatch()

    def _on_reaped(self, jobs: tuple[Job, ...]) -> None:
        """Jobs of a dead instance taken back here: store a processed one's result."""
        for job in jobs:
            if job.state == JobState.PROCESSING and job.result is not None:
                self._restore_processed(job, job.result)
            elif job.state == JobState.FAILED:
                self.metrics.job_finished(job.kind, job.state)
                logger.error("job %s failed: %s", job.id, job.last_error,
                             extra=job_fields(job.id, job.kind, "failed", job.attempts))
            else:
                logger.warning("job %s: %s; queued again", job.id, job.last_error,
                               extra=job_fields(job.id, job.kind, "interrupted", job.attempts))
        self._dispatch()

    def _launch(self, job: Job, *, hold_from: float | None = None,
                url: str | None = None) -> None:
        """Hand a job already marked processing (its attempt counted) to a free worker.

        ``hold_from`` (monotonic) is where an abandoned call's hold starts, if not now;
        ``url`` the Python API instance its slot was claimed at, if the queue chose one.
        """
        stale = self.running.pop(job.id, None)
        if stale is not None:
            # This instance's own lease lapsed (a stall longer than the TTL) and it claimed
            # the job again: the old attempt is superseded; its outcome will be ignored
            # and its worker freed when it reports.
            stale.timer.cancel()
            self._instance_ended(stale, broke=False)
        self.queue.started(job)
        attempt = job.attempts
        avoid = self.avoid.pop(job.id, None)
        instance = (self.instances.get(url) if url is not None
                    else self.instances.choose(job.kind, self.clock.monotonic(), avoid=avoid))
        assert instance is not None  # the caller checked there is room
        self.instances.started(instance, job.kind)
        worker_id, worker = self.pools[job.kind].acquire(job.id)
        s = self.settings
        call = AttemptCall(job.id, attempt, timeout_s=s.job_timeout_s, hold_s=s.call_hold_s,
                           hold_from=hold_from)
        deadline = self.timers.tell_later(s.job_timeout_s, self.actor_ref,
                                          AttemptDeadline(job_id=job.id, attempt=attempt))
        self.running[job.id] = _Running(job, worker_id, self.clock.monotonic(), deadline,
                                        instance.url, call)
        logger.info("job %s (%s) attempt %d/%d started on %s at %s", job.id, job.kind.value,
                    attempt, job.max_attempts, worker_id, instance.url,
                    extra=job_fields(job.id, job.kind, "started", attempt))
        worker.tell(RunJob(job_id=job.id, data=job.data, attempt=attempt, call=call,
                           instance=instance.url))

    def _on_deadline(self, job_id: str, attempt: int) -> None:
        """End the attempt at its deadline, or hold its slot while the Python API works on it.

        The Python API does not stop when its client leaves: a call it is working on
        is *abandoned* (shown apart) but keeps its slot and is still read, so its
        answer, however late, is the attempt's outcome; the client cuts it at the hold.
        """
        entry = self.running.get(job_id)
        if entry is None or entry.job.attempts != attempt:
            return  # it reported meanwhile
        grace = self.settings.overdue_grace_s
        phase = entry.call.expire()  # from now on this attempt never sends a call
        if phase == BEFORE:
            # Nothing was sent, and nothing will be: the worker is stuck before its call
            # (a company lookup that trickles). End the attempt and retire the worker.
            logger.error("job %s: attempt %d reached its %gs deadline before calling the"
                         " Python API; ended, worker %s retired", job_id, attempt,
                         self.settings.job_timeout_s, entry.worker_id,
                         extra=job_fields(job_id, entry.job.kind, "deadline", attempt))
            self._retire(entry)
            self._retry_or_fail(entry.job, "DeadlineExceeded: the deadline passed before the"
                                " Python API was called", True, None)
            self._after_outcome()
            return
        if phase == CALLING:
            entry.abandoned = True
            self.metrics.call_abandoned(entry.job.kind)
            self._overloaded(entry, "timeout", None)
            logger.warning("job %s: attempt %d past its %gs deadline while the Python API"
                           " works on it; call abandoned, its slot held until it answers or"
                           " for %.0fs more", job_id, attempt, self.settings.job_timeout_s,
                           max(0.0, entry.call.hold_left()),
                           extra=job_fields(job_id, entry.job.kind, "abandoned", attempt))
            wait_s = max(0.0, entry.call.hold_left()) + grace
        else:
            if phase == ANSWERED:  # the Python API is done; only the body still trickles
                entry.call.cut("deadline")
            wait_s = grace
        # A safety net: a worker that does not report by then is presumed dead.
        entry.timer = self.timers.tell_later(wait_s, self.actor_ref,
                                             AttemptOverdue(job_id=job_id, attempt=attempt))

    def _retire(self, entry: _Running) -> None:
        """Free the slot of an attempt whose worker will not report, and replace the worker.

        Only when no call of the attempt is open: it never began (and is sealed), or
        it was cut at its hold. The worker's thread may still wake; it can no longer
        send anything, and whatever it reports is ignored.
        """
        del self.running[entry.job.id]
        entry.timer.cancel()
        self._instance_ended(entry, broke=False)
        self.pools[entry.job.kind].replace(entry.worker_id, allowed=not self.draining)
        self._revive_later(self.pools[entry.job.kind])

    def _revive_later(self, pool: WorkerPool) -> None:
        """Schedule a failed pool's revival (once), after its backoff."""
        if pool.failed and not pool.revival_due and not self.draining:
            pool.revival_due = True
            logger.error("%s pool: restarts used up; its workers start again in %.0fs",
                         pool.kind.value, pool.revive_after_s)
            self.timers.tell_later(pool.revive_after_s, self.actor_ref,
                                   RevivePool(kind=pool.kind))

    # --- outcomes ------------------------------------------------------------------

    def _finish_attempt(self, job_id: str, worker_id: str) -> _Running | None:
        entry = self.running.get(job_id)
        if entry is None or entry.worker_id != worker_id:
            logger.warning("outcome for job %s from %s ignored: not running there", job_id,
                           worker_id)
            for pool in self.pools.values():  # a superseded attempt: its worker is free now
                if pool.job_of(worker_id) == job_id:
                    pool.release(worker_id)
            return None
        del self.running[job_id]
        entry.timer.cancel()
        self.pools[entry.job.kind].release(worker_id)
        if entry.abandoned:
            self.metrics.abandoned_call_ended(entry.job.kind)
            logger.warning("job %s: abandoned call ended %.1fs after it started; slot free",
                           job_id, self.clock.monotonic() - entry.started,
                           extra=job_fields(job_id, entry.job.kind, "call ended",
                                            entry.job.attempts))
        return entry

    def _overloaded(self, entry: _Running, why: str, retry_after_s: float | None) -> float:
        """Tell the instance's limiter; return how long it takes no new call (Retry-After)."""
        instance = self.instances.get(entry.instance)
        if instance is None or instance.limiter is None:
            return 0.0
        now = self.clock.monotonic()
        before = instance.limiter.current
        if instance.limiter.overloaded(entry.job.kind, why, started_at=entry.started, now=now,
                                       retry_after_s=retry_after_s):
            logger.warning("Python API %s: %s %s; capacity %d -> %d", entry.instance,
                           entry.job.kind.value, why, before, instance.limiter.current)
        cooling_s = instance.limiter.cooling_until - now
        if cooling_s > 0:
            self.timers.tell_later(cooling_s, self.actor_ref, CheckInstances())
        # Rounded: the floor was set as now + a whole Retry-After (or its cap); taking now
        # away again leaves float noise that would show in the job's recorded schedule.
        return max(0.0, round(cooling_s, 6))

    def _instance_ended(self, entry: _Running, *, broke: bool) -> None:
        if self.instances.ended(entry.instance, entry.job.kind, broke=broke,
                                now=self.clock.monotonic()):
            wait_s = self.instances.next_change(self.clock.monotonic()) or 0.0
            logger.error("Python API %s: breaker open for %.0fs after repeated failures",
                         entry.instance, wait_s)
            self.timers.tell_later(wait_s, self.actor_ref, CheckInstances())

    def _on_succeeded(self, message: JobSucceeded) -> None:
        entry = self._finish_attempt(message.job_id, message.worker_id)
        if entry is not None:
            instance = self.instances.get(entry.instance)
            if instance is not None and instance.limiter is not None and not entry.abandoned:
                instance.limiter.answered(entry.job.kind, message.duration_s,
                                          in_flight=sum(instance.in_flight.values()),
                                          now=self.clock.monotonic())
            self._instance_ended(entry, broke=False)
            self.durations[entry.job.kind].observe(message.duration_s)
            self.metrics.attempt_ended(entry.job.kind, message.duration_s)
            self._charge(entry.job, message.duration_s)
            if self.writer is not None:
                self._store_result(entry.job, message)
            else:
                self.registry.tell(Transition(job_id=message.job_id, target=JobState.COMPLETED,
                                              at=self.clock.time(), result=message.result,
                                              running=entry.job))
                logger.info("job %s completed in %.2fs", message.job_id, message.duration_s,
                            extra=job_fields(message.job_id, entry.job.kind, "completed",
                                             entry.job.attempts))
        self._after_outcome()

    def _restore_processed(self, job: Job, result: Mapping[str, Any]) -> None:
        """Finish a job that was processed but whose result is not stored yet.

        Found so after a restart or a lapsed lease, or retried by an operator after its
        writes were used up (the registry hands it over ``processing`` with its result).
        """
        self.queue.started(job)  # its result is being stored here: keep the job ours
        if self.writer is not None:
            self.registry.flush()  # the writer tells the registry too: our moves first
            self.writer.tell(StoreResult(job=job, result=result, at=self.clock.time()))
        else:  # Supabase switched off since: the job store is where results live now
            self.registry.tell(Transition(job_id=job.id, target=JobState.COMPLETED,
                                          at=self.clock.time(), result=result))
        logger.warning("job %s: processed before, its result not stored; storing it, not"
                       " processing again", job.id,
                       extra=job_fields(job.id, job.kind, "recovered", job.attempts))

    def _store_result(self, job: Job, message: JobSucceeded) -> None:
        """Hand the result to the ResultWriter; the job stays processing until it is stored.

        The slot is already free: storing never holds the Python API.
        """
        assert self.writer is not None
        # Kept on the record first, so a crash before the rows are written does not
        # send the video to the Python API again.
        self.registry.tell(RecordResult(job_id=job.id, result=message.result))
        try:
            self.registry.flush()  # the writer tells the registry too: our moves first
            self.writer.tell(StoreResult(job=job, result=message.result, at=self.clock.time()))
        except pykka.ActorDeadError:
            # Only at shutdown: the job stays processing and runs again after a restart.
            logger.error("job %s: result writer gone; result dropped", job.id)
            return
        logger.info("job %s processed in %.2fs; storing its result", job.id, message.duration_s,
                    extra=job_fields(job.id, job.kind, "processed", job.attempts))

    def _on_failed(self, message: JobFailed) -> None:
        entry = self._finish_attempt(message.job_id, message.worker_id)
        if entry is not None:
            self._instance_ended(entry, broke=message.broke)
            self.metrics.attempt_ended(entry.job.kind, message.duration_s)
            self._charge(entry.job, message.duration_s)
            error = f"{message.error_type}: {message.error}"
            if message.broke:
                self.avoid[entry.job.id] = entry.instance
            retryable = message.retryable
            if message.error_type == "DeadlineExceeded" and not self._may_retry_cut(entry):
                retryable = False
                error += ("; not retried: the Python API may still be processing it"
                          " (QUEUE_RETRY_TIMED_OUT_VIDEOS)")
            why = overload_signal(message.error_type, message.status,
                                  reached_api=message.reached_api)
            # Overload: the retry waits at least until the instance takes calls again.
            cooling_s = 0.0 if why is None else self._overloaded(entry, why,
                                                                 message.retry_after_s)
            if message.error_type == "ShutdownCut":
                self._on_shutdown_cut(entry, error)
            else:
                self._retry_or_fail(entry.job, error, retryable, message.retry_after_s,
                                    not_before_s=cooling_s)
        self._after_outcome()

    def _on_crashed(self, message: WorkerCrashed) -> None:
        pool = next((p for p in self.pools.values() if p.owns(message.worker_id)), None)
        if pool is not None:
            pool.replace(message.worker_id, allowed=not self.draining)
            self._revive_later(pool)
        entry = self.running.get(message.job_id) if message.job_id else None
        if entry is not None and entry.worker_id == message.worker_id:
            del self.running[entry.job.id]
            entry.timer.cancel()
            self._instance_ended(entry, broke=False)
            # The crash killed an attempt: it counts, and the job is retried if it may be.
            self._retry_or_fail(entry.job, f"WorkerCrashed: {message.error}",
                                self._may_retry_cut(entry), None)
        self._after_outcome()

    def _on_shutdown_cut(self, entry: _Running, error: str) -> None:
        """A call cut because this process stops: retry it only once its hold is over.

        The Python API goes on with it, so a retry before the hold ends would run it
        twice at once. The floor is kept in the store (``next_attempt_at``): a restart
        honours it too.
        """
        if self.queue.shutdown_cut(entry.job):
            return  # the shared queue's lease and hold protect it
        hold_left_s = max(0.0, entry.call.hold_left())
        self._retry_or_fail(entry.job, error, True, None, not_before_s=hold_left_s)

    def _may_retry_cut(self, entry: _Running) -> bool:
        """Whether an attempt cut while the Python API was at it may be tried again.

        A video still processing at the end of its hold is most likely too long for
        the deadline, and most likely still being processed: sending it again would
        run it twice. Questions are short: they are retried (the hold bounds overlap).
        """
        still_at_it = entry.abandoned or entry.call.cut_reason == "hold"
        return (not still_at_it or entry.job.kind != JobKind.VIDEO
                or self.settings.retry_timed_out_videos)

    def _on_overdue(self, job_id: str, attempt: int) -> None:
        entry = self.running.get(job_id)
        if entry is None or entry.job.attempts != attempt:
            return  # it reported meanwhile
        logger.error("job %s: worker %s silent long past the deadline; presumed dead", job_id,
                     entry.worker_id)
        entry.call.cut("presumed dead")  # and sealed: its thread may wake, never to call
        self._on_crashed(WorkerCrashed(worker_id=entry.worker_id, job_id=job_id,
                                       error="no report long past the attempt deadline"))

    def _retry_or_fail(self, job: Job, error: str, retryable: bool,
                       retry_after_s: float | None, *, not_before_s: float = 0.0) -> None:
        now = self.clock.time()
        if retryable and job.attempts < job.max_attempts:
            broken_on = self.avoid.get(job.id)
            other = (self.instances.choose(job.kind, self.clock.monotonic(), avoid=broken_on)
                     if broken_on else None)
            # Its instance broke and another can take it: retry there now, not after backoff.
            delay = 0.0 if other is not None and other.url != broken_on else backoff_delay_s(
                job.attempts,
                base_s=self.settings.backoff_base_s,
                max_s=self.settings.backoff_max_s,
                jitter=self.settings.backoff_jitter,
                retry_after_s=retry_after_s,
                rng=self.rng,
            )
            delay = max(delay, not_before_s)  # a strict floor, past any cap
            retry = job.replace(state=JobState.RETRYING, last_error=error,
                                next_attempt_at=now + delay)
            handle = self.timers.tell_later(delay, self.actor_ref, RetryDue(job_id=job.id))
            self.retrying[job.id] = (retry, handle)
            self.metrics.attempt_retried(job.kind)
            self.registry.tell(Transition(job_id=job.id, target=JobState.RETRYING, at=now,
                                          error=error, next_attempt_at=now + delay,
                                          retry_delay_s=delay, running=job))
            logger.info("job %s attempt %d failed (%s); retry in %.2fs", job.id, job.attempts,
                        error, delay, extra=job_fields(job.id, job.kind, "retrying", job.attempts))
        else:
            self.avoid.pop(job.id, None)
            why = "permanent failure" if not retryable else "attempts used up"
            self.registry.tell(Transition(job_id=job.id, target=JobState.FAILED, at=now,
                                          error=error, running=job))
            logger.warning("job %s failed after %d attempt(s), %s: %s", job.id, job.attempts,
                           why, error, extra=job_fields(job.id, job.kind, "failed", job.attempts))

    def _on_retry_due(self, job_id: str) -> None:
        pending = self.retrying.pop(job_id, None)
        if pending is None:
            return  # cancelled meanwhile
        self.queue.retry_due(pending[0])
        self._dispatch()

    def _after_outcome(self) -> None:
        if self.queue.dispatch_after_outcome:  # else the outcome's write wakes the queue
            self._dispatch()
        self._check_idle()

    def _on_leases_lost(self, job_ids: frozenset[str]) -> None:
        for job_id in sorted(job_ids):
            entry = self.running.get(job_id)
            if entry is None:
                continue
            # Not renewable any more. Its call goes on, holding its slot here, and the
            # database holds the slot until the call's hold has passed; its outcome is
            # written only if no other instance has taken the job by then.
            entry.lease_lost = True
            logger.error("job %s: lease expired while its call runs here; the call goes on"
                         " as an abandoned call", job_id,
                         extra=job_fields(job_id, entry.job.kind, "lease lost",
                                          entry.job.attempts))

    def _on_fenced(self, message: Fenced) -> None:
        """The queue cannot prove this instance's leases: running calls go on, abandoned."""
        for entry in self.running.values():
            entry.lease_lost = message.on
        self.queue.on_message(message)
        if not message.on:
            self._dispatch()

    def _check_idle(self) -> None:
        if self.draining and not self.running:
            for event in self._idle_events:
                event.set()
            self._idle_events.clear()

    # --- control -------------------------------------------------------------------

    def _cancel(self, job_id: str) -> Answer:
        """Withdraw a waiting or retrying job: ``True`` (or a future of it) if it was."""
        pending = self.retrying.pop(job_id, None)
        if pending is not None:
            pending[1].cancel()
        self.avoid.pop(job_id, None)
        return self.queue.cancel(job_id, pending[0] if pending is not None else None)

    def _on_instance_memory(self, message: InstanceMemory) -> None:
        instance = self.instances.get(message.url)
        if instance is None:
            return
        instance.memory_mb = message.memory_mb
        now = self.clock.monotonic()
        probe = self.instances.probed(message.url, message.answered, now)
        if probe == "closed":
            logger.warning("Python API %s answered its probe: breaker closed", message.url)
        elif probe == "open":
            wait_s = self.instances.next_change(now) or 0.0
            logger.error("Python API %s silent on its probe: breaker open for %.0fs",
                         message.url, wait_s)
            self.timers.tell_later(wait_s, self.actor_ref, CheckInstances())
        if instance.limiter is not None and message.status:
            before = instance.limiter.current
            if instance.limiter.memory(message.status, now) and instance.limiter.current < before:
                logger.warning("Python API %s: memory %s; capacity %d -> %d", message.url,
                               message.status, before, instance.limiter.current)
        if instance.pressure != message.pressure:
            instance.pressure = message.pressure
            logger.warning("Python API %s: memory %s MB, video %s there", message.url,
                           message.memory_mb, "paused" if message.pressure else "resumed")
        self._dispatch()

    def _pause(self, kind: JobKind, reason: str) -> None:
        self.queue.pause(kind, reason)

    def _resume(self, kind: JobKind, reason: str) -> None:
        if self.queue.resume(kind, reason):
            self._dispatch()

    def _paused_kinds(self) -> list[str]:
        return [kind.value for kind in JobKind if self.queue.pause_reasons(kind)]

    # --- questions -----------------------------------------------------------------

    def _estimate(self, kind: JobKind, position: int) -> float:
        return self._estimator()(kind, position)

    def _estimator(self) -> Callable[[JobKind, int], float]:
        """The wait estimate of a place in each kind's queue, from the slots and durations now.

        A pure function of what is known now, so that another thread (the shared queue's
        reads) may use it without touching this actor's state.
        """
        running = Counter(entry.job.kind for entry in self.running.values())
        slots = {kind: (max(1, self.instances.limit(kind)) if self.settings.adaptive_concurrency
                        else self.pools[kind].size)  # adaptive: the capacity it has now
                 for kind in JobKind}
        durations = {kind: self.durations[kind].seconds for kind in JobKind}

        def estimate(kind: JobKind, position: int) -> float:
            return estimate_wait_s(position, running=running[kind], slots=slots[kind],
                                   duration_s=durations[kind])

        return estimate

    def _charge(self, job: Job, duration_s: float) -> None:
        """Correct the company's place in the fair order by what the attempt really took."""
        self.queue.charge(job, duration_s - NOMINAL_COST_S[job.kind])

    def _companies(self) -> Callable[[Mapping[str, Any] | None], dict[str, Any]]:
        """Per kind and company: waiting, running, weight and shares (the busiest by name).

        From counts the queue read (``{"waiting": ..., "running": ...}``), or, given
        ``None``, from what this instance knows (taken now, usable on another thread).
        """
        running = Counter((e.job.kind, e.job.company or "") for e in self.running.values())
        waiting = self.queue.company_waiting()
        for job, _ in self.retrying.values():
            waiting[job.kind, job.company or ""] += 1
        here = describe_companies(waiting, running, self.share)
        share = self.share

        def companies(counts: Mapping[str, Any] | None) -> dict[str, Any]:
            if counts is None:
                return here
            return describe_companies(counts["waiting"], counts["running"], share)

        return companies

    def _position(self, job_id: str) -> Answer:
        """A waiting job's ``(position, estimated wait)`` or ``None`` (maybe as a future)."""
        return self.queue.position(job_id, self._estimator())

    def _inspect(self) -> Answer:
        now = self.clock.monotonic()
        kinds: dict[str, Any] = {}
        for kind in JobKind:
            kinds[kind.value] = {
                "waiting": self.queue.waiting(kind),
                "running": sum(1 for e in self.running.values()
                               if e.job.kind == kind and not (e.abandoned or e.lease_lost)),
                "abandoned": sum(1 for e in self.running.values()
                                 if e.job.kind == kind and (e.abandoned or e.lease_lost)),
                "retrying": sum(1 for j, _ in self.retrying.values() if j.kind == kind),
                "paused": bool(self.queue.pause_reasons(kind)),
                "pause_reasons": sorted(self.queue.pause_reasons(kind)),
                "avg_duration_s": self.durations[kind].value_s,
                "limit": self.instances.limit(kind),
                "adaptive": self.settings.adaptive_concurrency,
            }
        answer = {
            "draining": self.draining,
            "kinds": kinds,
            "running_jobs": [
                {"job_id": job_id, "kind": e.job.kind.value, **describe_job(e.job),
                 "worker": e.worker_id,
                 "attempt": e.job.attempts, "age_s": round(now - e.started, 3),
                 "abandoned": e.abandoned or e.lease_lost, "call": e.call.phase}
                for job_id, e in self.running.items()
            ],
            "pools": {kind.value: pool.describe() for kind, pool in self.pools.items()},
            "instances": self.instances.describe(now),
            "all_instances_open": self.instances.all_open(self.clock.monotonic()),
        }
        return self.queue.inspected(answer, self._companies(), set(self.running))

