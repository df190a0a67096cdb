"""The ResultWriter actor: stores processed results in Supabase, then finishes their jobs.

With Supabase configured, the Dispatcher sends a succeeded attempt's result here
(``StoreResult``) instead of completing the job: the job stays ``processing`` until
its rows are written. Then this actor tells the JobRegistry ``completed``. A failed
write is retried alone, never the video processing, after a capped exponential
backoff (``QUEUE_BACKOFF_*``) scheduled on the timer service (no sleeping); after
``SUPABASE_WRITE_ATTEMPTS`` writes, or at once for a failure a repeat would hit
again, the job is ``failed`` with the reason, and its result kept on the record.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from typing import Any

import pykka

from actors.errors import ResultStoreFailed
from actors.jobs import JobState
from actors.logs import job_fields
from actors.messages import Drain, Inspect, StoreResult, Transition
from actors.scheduling import backoff_delay_s
from actors.settings import Settings
from actors.supabase_sink import ResultSink
from actors.timers import Clock, TimerHandle, TimerService
from actors.tracked import TrackedActor

logger = logging.getLogger(__name__)

STORE_FAILED_PREFIX = "result could not be stored in Supabase"


class WriterStats:
    """What the ResultWriter has done, readable from any thread without asking it.

    The writer blocks while a write is in flight (up to ``SUPABASE_TIMEOUT_MS``), so a
    snapshot or health probe must never wait on its mailbox: it reads this instead.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stored = 0
        self.failed = 0
        self.write_retries = 0
        self.waiting: set[str] = set()  # job ids whose next write is scheduled
        self.writing: str | None = None  # the job id being written now
        self.last_error: str | None = None

    def update(self, **changes: Any) -> None:
        """Apply ``changes`` (attribute -> value) atomically."""
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def describe(self) -> dict[str, Any]:
        """Return the counters as plain data."""
        with self._lock:
            return {"stored": self.stored, "failed": self.failed,
                    "write_retries": self.write_retries, "waiting": sorted(self.waiting),
                    "writing": self.writing, "last_error": self.last_error}


class ResultWriter(TrackedActor):
    """Writes results through the ``ResultSink``; retries writes on a timer; finishes jobs."""

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
    ) -> None:
        super().__init__(threads=threads)
        self.stats = stats or WriterStats()
        self.settings = settings
        self.sink = sink
        self.registry = registry
        self.timers = timers
        self.clock = clock
        self.rng = rng or random.Random()
        self.waiting: dict[str, TimerHandle] = {}  # job id -> its next write, scheduled
        self._idle_events: list[threading.Event] = []

    def __repr__(self) -> str:
        return (f"<ResultWriter stored={self.stats.stored} failed={self.stats.failed}"
                f" waiting={len(self.waiting)}>")

    def on_stop(self) -> None:
        """Drop scheduled writes: their jobs stay ``processing`` and run again after a restart."""
        for handle in self.waiting.values():
            handle.cancel()
        if self.waiting:
            logger.warning("%d result(s) not stored before stop: %s", len(self.waiting),
                           sorted(self.waiting))

    def on_receive(self, message: Any) -> Any:
        """Route one message."""
        match message:
            case StoreResult():
                self._store(message)
                self._check_idle()
            case Drain(idle=idle):
                self._idle_events.append(idle)
                self._check_idle()
            case Inspect():
                return self.stats.describe()
            case _:
                return super().on_receive(message)
        return None

    def _store(self, message: StoreResult) -> None:
        job = message.job
        self.waiting.pop(job.id, None)
        self.stats.update(writing=job.id, waiting=set(self.waiting))
        try:
            rows = self.sink.store(job, message.result, message.at)
        except ResultStoreFailed as exc:
            self._write_failed(message, exc.message, exc.retryable)
            return
        except Exception as exc:  # a bug in building rows: retried within the budget, logged
            logger.exception("job %s: unexpected error storing its result", job.id)
            self._write_failed(message, f"{type(exc).__name__}: {exc}", True)
            return
        self.stats.update(stored=self.stats.stored + 1, writing=None)
        self._tell_registry(Transition(job_id=job.id, target=JobState.COMPLETED,
                                       at=self.clock.time(), result=message.result))
        logger.info("job %s completed: result stored in Supabase (%d row(s), write %d)",
                    job.id, rows, message.attempt,
                    extra=job_fields(job.id, job.kind, "completed", job.attempts))

    def _write_failed(self, message: StoreResult, error: str, retryable: bool) -> None:
        job = message.job
        self.stats.update(last_error=error, writing=None)
        if retryable and message.attempt < self.settings.supabase_write_attempts:
            delay = backoff_delay_s(message.attempt, base_s=self.settings.backoff_base_s,
                                    max_s=self.settings.backoff_max_s,
                                    jitter=self.settings.backoff_jitter, rng=self.rng)
            again = dataclasses.replace(message, attempt=message.attempt + 1)
            self.waiting[job.id] = self.timers.tell_later(delay, self.actor_ref, again)
            self.stats.update(write_retries=self.stats.write_retries + 1,
                              waiting=set(self.waiting))
            logger.warning("job %s: storing its result failed (write %d/%d): %s; again in"
                           " %.2fs", job.id, message.attempt,
                           self.settings.supabase_write_attempts, error, delay,
                           extra=job_fields(job.id, job.kind, "store_retrying", job.attempts))
            return
        self.stats.update(failed=self.stats.failed + 1)
        reason = f"{STORE_FAILED_PREFIX}: {error}"
        self._tell_registry(Transition(job_id=job.id, target=JobState.FAILED,
                                       at=self.clock.time(), error=reason,
                                       result=message.result))
        logger.error("job %s failed after %d write(s): %s", job.id, message.attempt, reason,
                     extra=job_fields(job.id, job.kind, "failed", job.attempts))

    def _tell_registry(self, message: Transition) -> None:
        try:
            self.registry.tell(message)
        except pykka.ActorDeadError:
            logger.warning("job %s: registry gone, %s dropped", message.job_id,
                           message.target.value)

    def _check_idle(self) -> None:
        if not self.waiting:
            for event in self._idle_events:
                event.set()
            self._idle_events.clear()
