"""The MemoryWatchdog actor: pauses video work while memory runs high.

On every tick it reads this process's RSS (psutil) and each Python API
instance's ``/memory-status`` (short timeout). The Python API blocks while it
processes a video, so silence means "unknown", never "critical": an unknown
reading neither pauses nor resumes; the last known one stands for a few ticks,
then no longer counts.

Each reading has a "high" flag with hysteresis: set above ``MEMORY_THRESHOLD_MB``,
cleared below ``MEMORY_THRESHOLD_MB x MEMORY_RESUME_RATIO`` (so a reading
hovering at the line does not flap). Then:

- an instance that is high takes no new video (the Dispatcher routes around it);
- this process high, or every instance high: video dispatch pauses everywhere
  (Q&A goes on) and the JobRegistry trims retained history;
- the same with ``QUEUE_MAX_MEMORY_MB``: new video submissions are refused.

With one Python API this is exactly "either reading high pauses video".
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import psutil
import pykka

from actors.jobs import JobKind
from actors.messages import (
    CheckMemory,
    Inspect,
    InstanceMemory,
    Pause,
    Resume,
    SetAdmission,
    TrimHistory,
)
from actors.python_api import PythonApiClient
from actors.settings import Settings
from actors.timers import Clock, TimerService
from actors.tracked import TrackedActor

logger = logging.getLogger(__name__)

MEMORY_PAUSE_REASON = "memory"
STALE_AFTER_TICKS = 5
"""How many ticks a last known Python API reading keeps standing in for silence."""
HISTORY_KEEP_FRACTION = 0.5


def process_rss_mb() -> float:
    """Return this process's resident memory in MB."""
    return psutil.Process(os.getpid()).memory_info().rss / (1024 * 1024)


@dataclass(frozen=True, slots=True)
class InstanceReading:
    """One Python API instance's reading."""

    url: str
    memory_mb: float | None
    status: str
    reachable: bool
    pressure: bool


@dataclass
class _Flags:
    """Hysteresis flags of one memory source."""

    high: bool = False
    over_max: bool = False
    known_mb: float | None = None
    known_at: float = 0.0


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """One tick's readings and what the watchdog made of them."""

    process_rss_mb: float | None
    python_api_mb: float | None
    python_api_status: str
    python_api_reachable: bool
    checked_at: float
    pressure: bool
    admission_refused: bool
    instances: tuple[InstanceReading, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Return plain data."""
        return asdict(self)


class MemoryWatchdog(TrackedActor):
    """Samples memory on a timer and tells the Dispatcher and JobRegistry what to do."""

    def __init__(
        self,
        settings: Settings,
        *,
        clients: Mapping[str, PythonApiClient],
        dispatcher: pykka.ActorRef[Any],
        registry: pykka.ActorRef[Any],
        timers: TimerService,
        clock: Clock,
        rss_reader: Callable[[], float] = process_rss_mb,
        threads: list[threading.Thread] | None = None,
    ) -> None:
        super().__init__(threads=threads)
        self.settings = settings
        self.clients = clients
        self.dispatcher = dispatcher
        self.registry = registry
        self.timers = timers
        self.clock = clock
        self.rss_reader = rss_reader
        self.pressure = False
        self.admission_refused = False
        self.last: MemoryReading | None = None
        self._process = _Flags()
        self._instances = {url: _Flags() for url in clients}

    def __repr__(self) -> str:
        last = self.last
        readings = (f"process={last.process_rss_mb:.0f}MB python={last.python_api_mb}MB"
                    if last and last.process_rss_mb is not None else "no reading yet")
        return f"<MemoryWatchdog pressure={self.pressure} {readings}>"

    def on_start(self) -> None:
        """Take the first reading at once, so health shows real numbers from the start."""
        super().on_start()
        self.actor_ref.tell(CheckMemory(scheduled=True))

    def on_receive(self, message: Any) -> Any:
        """Handle ``CheckMemory`` and ``Inspect``."""
        match message:
            case CheckMemory(scheduled=scheduled):
                reading = self._check()
                if scheduled:
                    self._schedule()
                return reading
            case Inspect():
                return self._inspect()
            case _:
                return super().on_receive(message)

    def _schedule(self) -> None:
        self.timers.tell_later(self.settings.memory_check_interval_s, self.actor_ref,
                               CheckMemory(scheduled=True))

    def _read_python(self, client: PythonApiClient) -> tuple[float | None, str, bool]:
        try:
            status = client.memory_status(timeout_s=self.settings.python_api_status_timeout_s)
        except Exception as exc:  # silence or garbage: unknown, not critical
            logger.debug("Python API %s memory status unknown: %r", client.base_url, exc)
            return None, "unknown", False
        value = status.get("memory_mb")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value), str(status.get("status", "ok")), True
        return None, str(status.get("status", "error")), True

    def _read_process(self) -> float | None:
        try:
            return float(self.rss_reader())
        except Exception:  # a failing reader must not kill the watchdog
            logger.exception("reading this process's memory failed")
            return None

    def _update(self, flags: _Flags, reading: float | None, now: float) -> None:
        """Fold a reading into a source's flags (unknown changes nothing until stale)."""
        if reading is not None:
            flags.known_mb, flags.known_at = reading, now
        elif now - flags.known_at > STALE_AFTER_TICKS * self.settings.memory_check_interval_s:
            flags.known_mb = None  # silent for too long: no longer counts either way
        value, ratio = flags.known_mb, self.settings.memory_resume_ratio
        threshold, limit = self.settings.memory_threshold_mb, self.settings.max_memory_mb
        if value is None:
            flags.high = flags.over_max = False
            return
        if value > threshold:
            flags.high = True
        elif value < threshold * ratio:
            flags.high = False
        if value > limit:
            flags.over_max = True
        elif value < limit * ratio:
            flags.over_max = False

    def _check(self) -> MemoryReading:
        now = self.clock.monotonic()
        rss = self._read_process()
        self._update(self._process, rss, now)
        readings: list[InstanceReading] = []
        for url, client in self.clients.items():
            memory_mb, status, reachable = self._read_python(client)
            flags = self._instances[url]
            self._update(flags, memory_mb, now)
            readings.append(InstanceReading(url, memory_mb, status, reachable, flags.high))
            self.dispatcher.tell(InstanceMemory(url=url, memory_mb=flags.known_mb,
                                                pressure=flags.high, answered=reachable))
        first = readings[0]
        s = self.settings
        self._decide_pause(self._global(lambda f: f.high, s.memory_threshold_mb), rss, first)
        self._decide_admission(self._global(lambda f: f.over_max, s.max_memory_mb), rss, first)
        self.last = MemoryReading(rss, first.memory_mb, first.status, first.reachable,
                                  self.clock.time(), self.pressure, self.admission_refused,
                                  tuple(readings))
        return self.last

    def _global(self, flag: Callable[[_Flags], bool], line_mb: float) -> bool | None:
        """Decide a global state: on, off, or ``None`` (stay as it is: hysteresis).

        On when this process is over the line, or every instance is; off only when
        this process and at least one instance are below the resume level (with one
        instance: every reading below it).
        """
        sources = list(self._instances.values())
        if flag(self._process) or all(flag(f) for f in sources):
            return True
        resume_mb = line_mb * self.settings.memory_resume_ratio

        def low(f: _Flags) -> bool:
            return f.known_mb is None or f.known_mb < resume_mb

        known = [f for f in (self._process, *sources) if f.known_mb is not None]
        if known and low(self._process) and any(low(f) for f in sources):
            return False
        return None

    def _decide_pause(self, high: bool | None, rss: float | None, python: InstanceReading) -> None:
        if high is None or high == self.pressure:
            return
        self.pressure = high
        if high:
            self.dispatcher.tell(Pause(kind=JobKind.VIDEO, reason=MEMORY_PAUSE_REASON))
            self.registry.tell(TrimHistory(keep_fraction=HISTORY_KEEP_FRACTION))
            logger.warning("memory high (process %s MB, Python API %s MB [%s], threshold %.0f"
                           " MB): video dispatch paused", _mb(rss), _mb(python.memory_mb),
                           python.status, self.settings.memory_threshold_mb)
        else:
            self.dispatcher.tell(Resume(kind=JobKind.VIDEO, reason=MEMORY_PAUSE_REASON))
            logger.warning("memory back down (process %s MB, Python API %s MB): video dispatch"
                           " resumed", _mb(rss), _mb(python.memory_mb))

    def _decide_admission(
        self, over: bool | None, rss: float | None, python: InstanceReading
    ) -> None:
        if over is None or over == self.admission_refused:
            return
        self.admission_refused = over
        self.registry.tell(SetAdmission(kind=JobKind.VIDEO, refused=over))
        if over:
            logger.warning("memory above %.0f MB (process %s MB, Python API %s MB): refusing new"
                           " video jobs", self.settings.max_memory_mb, _mb(rss),
                           _mb(python.memory_mb))
        else:
            logger.warning("memory below %.0f MB again: accepting video jobs",
                           self.settings.max_memory_mb)

    def _inspect(self) -> dict[str, Any]:
        return {
            "pressure": self.pressure,
            "admission_refused": self.admission_refused,
            "threshold_mb": self.settings.memory_threshold_mb,
            "max_memory_mb": self.settings.max_memory_mb,
            "last": self.last.to_dict() if self.last else None,
        }


def _mb(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0f}"
