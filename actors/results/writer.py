"""The ResultWriter actor: stores processed results in Supabase, then finishes their jobs.

With Supabase configured, the Dispatcher sends a succeeded attempt's result here
(``StoreResult``) instead of completing the job: the job stays ``processing`` until
its rows are written. Then this actor tells the JobRegistry ``completed``.

The ResultWriter itself never blocks: it keeps one lane per job kind
(``actors.results.lanes``) and hands each lane's writes, one at a time, to that lane's
own ``ResultLane`` actor, whose thread makes the call (bounded by an overall deadline,
``SUPABASE_TIMEOUT_MS``, see ``actors.runtime.http_deadline``). So a question's row never waits
behind a slow video write, and a snapshot never waits behind either.

A write failing in a way a retry may pass pauses its lane: after a capped exponential
backoff (``QUEUE_BACKOFF_*``, by the lane's consecutive failures) on the timer service,
one write probes Supabase, and only its success opens the lane again. An outage costs
one write per round, not one per result waiting. Each result is written at most
``SUPABASE_WRITE_ATTEMPTS`` times (at once for a failure a repeat would hit again), then
its job is ``failed`` with the reason, its result kept on the record. The video is never
processed again for a write.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import pykka

from actors.dispatch.scheduling import backoff_delay_s
from actors.model.errors import ResultStoreFailed
from actors.model.jobs import Job, JobKind, JobState
from actors.model.messages import Drain, GetJob, Inspect, StoreResult, Transition
from actors.model.settings import Settings
from actors.results.lanes import PendingWrite, WriteLane, WriterStats
from actors.results.supabase import ResultSink
from actors.runtime.logs import job_fields
from actors.runtime.timers import Clock, TimerHandle, TimerService
from actors.runtime.tracked import TrackedActor

__all__ = ["BACKLOG_LIMIT", "STORE_FAILED_PREFIX", "ResultLane", "ResultWriter", "WriterStats"]

logger = logging.getLogger(__name__)

STORE_FAILED_PREFIX = "result could not be stored in Supabase"
BACKLOG_LIMIT = 1000
"""Results per kind held in memory; past it they wait on their job's record (deferred)."""


# --- messages between the ResultWriter and its lanes (private to this module) ----------


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteResult:
    """Write one job's rows now (tell, to a ResultLane)."""

    job: Job
    result: Mapping[str, Any]
    at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultWritten:
    """A lane's write ended: stored (``error`` None) or failed (tell, to the writer)."""

    kind: JobKind
    job_id: str
    rows: int = 0
    error: str | None = None
    retryable: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadBack:
    """Read deferred results back from their jobs' records (tell, to a ResultLane)."""

    job_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReadBackDone:
    """The jobs read back (``None``: not found), or why they could not be (tell)."""

    kind: JobKind
    jobs: tuple[tuple[str, Job | None], ...] = ()
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeLane:
    """A lane's backoff is over: send its next write (tell, from the timer)."""

    kind: JobKind


# --- actors --------------------------------------------------------------------------


class ResultLane(TrackedActor):
    """One lane's thread: makes its writes and read-backs, one at a time, and reports."""

    def __init__(self, kind: JobKind, *, sink: ResultSink, registry: pykka.ActorRef[Any],
                 writer: pykka.ActorRef[Any], ask_timeout_s: float,
                 threads: list[threading.Thread] | None = None) -> None:
        super().__init__(threads=threads)
        self.kind = kind
        self.sink = sink
        self.registry = registry
        self.writer = writer
        self.ask_timeout_s = ask_timeout_s

    def __repr__(self) -> str:
        return f"<ResultLane {self.kind.value}>"

    def on_receive(self, message: Any) -> Any:
        """Route one message."""
        match message:
            case WriteResult():
                self._reply(self._write(message))
            case ReadBack(job_ids=job_ids):
                self._reply(self._read_back(job_ids))
            case _:
                return super().on_receive(message)
        return None

    def _write(self, message: WriteResult) -> ResultWritten:
        job = message.job
        try:
            rows = self.sink.store(job, message.result, message.at)
        except ResultStoreFailed as exc:
            return ResultWritten(kind=self.kind, job_id=job.id, error=exc.message,
                                 retryable=exc.retryable)
        except Exception as exc:  # a bug in building rows: retried within the budget, logged
            logger.exception("job %s: unexpected error storing its result", job.id)
            return ResultWritten(kind=self.kind, job_id=job.id,
                                 error=f"{type(exc).__name__}: {exc}", retryable=True)
        return ResultWritten(kind=self.kind, job_id=job.id, rows=rows)

    def _read_back(self, job_ids: tuple[str, ...]) -> ReadBackDone:
        # Blocking on purpose: this thread exists to wait (on Supabase, here on the
        # JobRegistry), and the JobRegistry never asks a lane, so it cannot deadlock.
        jobs: list[tuple[str, Job | None]] = []
        try:
            for job_id in job_ids:
                job = self.registry.ask(GetJob(job_id=job_id), timeout=self.ask_timeout_s)
                jobs.append((job_id, cast("Job | None", job)))
        except (pykka.Timeout, pykka.ActorDeadError) as exc:
            return ReadBackDone(kind=self.kind, error=f"job registry: {type(exc).__name__}")
        return ReadBackDone(kind=self.kind, jobs=tuple(jobs))

    def _reply(self, message: ResultWritten | ReadBackDone) -> None:
        try:
            self.writer.tell(message)
        except pykka.ActorDeadError:
            logger.warning("result writer gone; %s dropped", type(message).__name__)


class ResultWriter(TrackedActor):
    """Keeps a lane per kind, feeds each its writes, retries on a timer, finishes jobs."""

    def __init__(
        self,
        settings: Settings,
        *,
        sink: ResultSink,
        registry: pykka.ActorRef[Any],
        timers: TimerService,
        clock: Clock,
        rng: random.Random | None = None,
        stats: WriterStats | None = None,
        threads: list[threading.Thread] | None = None,
        backlog_limit: int | None = None,
    ) -> None:
        super().__init__(threads=threads)
        self.stats = stats or WriterStats()
        self.stats.clock = clock
        self.settings = settings
        self.sink = sink
        self.registry = registry
        self.timers = timers
        self.clock = clock
        self.rng = rng or random.Random()
        limit = BACKLOG_LIMIT if backlog_limit is None else backlog_limit
        self.lanes = {kind: WriteLane(kind, limit=limit) for kind in JobKind}
        self.lane_refs: dict[JobKind, pykka.ActorRef[Any]] = {}
        self.probes: dict[JobKind, TimerHandle] = {}
        self._idle_events: list[threading.Event] = []

    def __repr__(self) -> str:
        lanes = " ".join(f"{lane.kind.value}={lane.state.value}:{lane.held + len(lane.deferred)}"
                         for lane in self.lanes.values())
        return f"<ResultWriter stored={self.stats.stored} failed={self.stats.failed} {lanes}>"

    def on_start(self) -> None:
        """Start a lane actor per kind."""
        super().on_start()
        for kind in JobKind:
            self.lane_refs[kind] = ResultLane.start(
                kind, sink=self.sink, registry=self.registry, writer=self.actor_ref,
                ask_timeout_s=self.settings.ask_timeout_s, threads=self._threads)
        self._publish()

    def on_stop(self) -> None:
        """Cut writes in flight and stop the lanes; unstored jobs stay ``processing``.

        Their results are on their records: after a restart they go straight to storage.
        """
        for handle in self.probes.values():
            handle.cancel()
        self.sink.cut_writes()
        for ref in self.lane_refs.values():
            try:
                ref.stop(block=True, timeout=self.settings.ask_timeout_s / 2)
            except pykka.Timeout:
                logger.error("result lane did not stop in time")
        left = [job_id for lane in self.lanes.values() for job_id in _job_ids(lane)]
        if left:
            logger.warning("%d result(s) not stored before stop: %s", len(left), sorted(left))

    def on_receive(self, message: Any) -> Any:
        """Route one message."""
        match message:
            case StoreResult():
                self._accept(message)
            case ResultWritten():
                self._written(message)
            case ReadBackDone():
                self._read_back(message)
            case ProbeLane(kind=kind):
                self.probes.pop(kind, None)
                self.lanes[kind].probe()
                self._pump(kind)
            case Drain(idle=idle):
                self._idle_events.append(idle)
            case Inspect():
                return self.stats.describe()
            case _:
                return super().on_receive(message)
        self._check_idle()
        return None

    # --- feeding the lanes -------------------------------------------------------------

    def _accept(self, message: StoreResult) -> None:
        job = message.job
        lane = self.lanes[job.kind]
        if job.id in lane:
            logger.info("job %s: its result is already waiting to be stored", job.id,
                        extra=job_fields(job.id, job.kind, "store_duplicate", job.attempts))
            return
        pending = PendingWrite(job=job, result=message.result, at=message.at,
                               attempt=message.attempt, since=self.clock.monotonic())
        if not lane.accept(pending):
            self.stats.update(deferred_total=self.stats.deferred_total + 1)
            logger.warning("job %s: %s results already wait to be stored (the bound); its"
                           " result waits on its record, read back when there is room",
                           job.id, lane.limit,
                           extra=job_fields(job.id, job.kind, "store_deferred", job.attempts))
        self._pump(job.kind)

    def _pump(self, kind: JobKind) -> None:
        lane = self.lanes[kind]
        write = lane.next_write()
        if write is not None:
            self._tell_lane(kind, WriteResult(job=write.job, result=write.result, at=write.at))
        else:
            job_ids = lane.next_load()
            if job_ids:
                self._tell_lane(kind, ReadBack(job_ids=job_ids))
        self._publish()

    def _tell_lane(self, kind: JobKind, message: WriteResult | ReadBack) -> None:
        try:
            self.lane_refs[kind].tell(message)
        except pykka.ActorDeadError:  # only at shutdown: the jobs stay processing
            logger.error("result lane %s gone; %s not sent", kind.value, type(message).__name__)

    # --- outcomes ----------------------------------------------------------------------

    def _written(self, message: ResultWritten) -> None:
        lane = self.lanes[message.kind]
        if lane.writing is None or lane.writing.job.id != message.job_id:
            logger.error("job %s: outcome of a write not in flight ignored", message.job_id)
            return
        pending = lane.finish()
        job = pending.job
        if message.error is None:
            lane.reopen()
            self.stats.update(stored=self.stats.stored + 1)
            self._tell_registry(Transition(job_id=job.id, target=JobState.COMPLETED,
                                           at=self.clock.time(), result=pending.result))
            logger.info("job %s completed: result stored in Supabase (%d row(s), write %d)",
                        job.id, message.rows, pending.attempt,
                        extra=job_fields(job.id, job.kind, "completed", job.attempts))
        elif not message.retryable:
            lane.reopen()  # Supabase answered: the others may pass
            self._fail(pending, message.error)
        else:
            self.stats.update(last_error=message.error)
            self._back_off(lane)
            if pending.attempt < self.settings.supabase_write_attempts:
                lane.requeue(pending)
                self.stats.update(write_retries=self.stats.write_retries + 1)
                logger.warning("job %s: storing its result failed (write %d/%d): %s; %s"
                               " lane writes again in %.2fs", job.id, pending.attempt,
                               self.settings.supabase_write_attempts, message.error,
                               job.kind.value, self._next_round_in(lane),
                               extra=job_fields(job.id, job.kind, "store_retrying",
                                                job.attempts))
            else:
                self._fail(pending, message.error)
        self._pump(message.kind)

    def _read_back(self, message: ReadBackDone) -> None:
        lane = self.lanes[message.kind]
        if message.error is not None:
            lane.load_failed()
            logger.warning("%s results could not be read back (%s); again after a backoff",
                           message.kind.value, message.error)
            self._back_off(lane)
        for job_id, why in lane.loaded(message.jobs):
            logger.warning("job %s: deferred result not stored: %s", job_id, why,
                           extra=job_fields(job_id, message.kind, "store_skipped", 0))
        self._pump(message.kind)

    def _back_off(self, lane: WriteLane) -> None:
        delay = backoff_delay_s(lane.failed_rounds + 1, base_s=self.settings.backoff_base_s,
                                max_s=self.settings.backoff_max_s,
                                jitter=self.settings.backoff_jitter, rng=self.rng)
        lane.back_off(now=self.clock.monotonic(), delay_s=delay)
        previous = self.probes.pop(lane.kind, None)
        if previous is not None:
            previous.cancel()
        self.probes[lane.kind] = self.timers.tell_later(delay, self.actor_ref,
                                                        ProbeLane(kind=lane.kind))

    def _next_round_in(self, lane: WriteLane) -> float:
        due = lane.next_round_at
        return 0.0 if due is None else max(0.0, due - self.clock.monotonic())

    def _fail(self, pending: PendingWrite, error: str) -> None:
        job = pending.job
        self.stats.update(failed=self.stats.failed + 1, last_error=error)
        reason = f"{STORE_FAILED_PREFIX}: {error}"
        self._tell_registry(Transition(job_id=job.id, target=JobState.FAILED,
                                       at=self.clock.time(), error=reason,
                                       result=pending.result))
        logger.error("job %s failed after %d write(s): %s", job.id, pending.attempt, reason,
                     extra=job_fields(job.id, job.kind, "failed", job.attempts))

    def _tell_registry(self, message: Transition) -> None:
        try:
            self.registry.tell(message)
        except pykka.ActorDeadError:
            logger.warning("job %s: registry gone, %s dropped", message.job_id,
                           message.target.value)

    # --- visibility ----------------------------------------------------------------------

    def _publish(self) -> None:
        self.stats.update(lanes={k.value: lane.view() for k, lane in self.lanes.items()},
                          waiting=[i for lane in self.lanes.values() for i in lane.waiting()])

    def _check_idle(self) -> None:
        if all(lane.idle for lane in self.lanes.values()):
            for event in self._idle_events:
                event.set()
            self._idle_events.clear()


def _job_ids(lane: WriteLane) -> list[str]:
    ids = [p.job.id for p in lane.queued] + list(lane.deferred) + list(lane.loading)
    return ids + ([lane.writing.job.id] if lane.writing is not None else [])
