"""The MemoryWatchdog actor: pauses video work while memory runs high, and fails closed.

On every tick it reads this process's RSS (psutil) and each Python API
instance's ``/memory-status`` (short timeout). Each source has a "high" flag
with hysteresis: set by a reading above ``MEMORY_THRESHOLD_MB``, cleared by one
below ``MEMORY_THRESHOLD_MB x MEMORY_RESUME_RATIO`` (so a reading hovering at
the line does not flap); likewise "over max" with ``QUEUE_MAX_MEMORY_MB``.

Only a reading moves a flag. The Python API blocks while it processes a video,
so silence means "unknown", never "critical": it neither pauses nor resumes.
The last reading stands for ``STALE_AFTER_TICKS`` ticks, then its value no
longer counts, but its flags stay as they were (DESIGN.md §8, I4): silence
after a high reading keeps video paused, silence after a low one does not
pause; only a fresh low reading resumes. The same holds for this process's
reader when it fails.

The two sources pause separately, because they live in different places (I5):

- this process high: a ``PROCESS_MEMORY_PAUSE_REASON`` pause, which stays on
  this instance (with the PostgreSQL store, only this instance stops claiming);
- a Python API instance high: it takes no new video (the Dispatcher routes
  around it); every instance high: a ``MEMORY_PAUSE_REASON`` pause, which the
  PostgreSQL store shares with every backend instance (they all call the same
  Python API). It lifts when one instance gives a fresh reading below the
  resume level;
- either pause starting trims the JobRegistry's retained history; either source
  over ``QUEUE_MAX_MEMORY_MB`` refuses new video submissions on this instance.

Q&A goes on throughout.
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

from actors.model.jobs import JobKind
from actors.model.messages import (
    CheckMemory,
    Inspect,
    InstanceMemory,
    Pause,
    Resume,
    SetAdmission,
    TrimHistory,
)
from actors.model.settings import Settings
from actors.runtime.timers import Clock, TimerService
from actors.runtime.tracked import TrackedActor
from actors.work.python_api import PythonApiClient

logger = logging.getLogger(__name__)

MEMORY_PAUSE_REASON = "memory"
"""Pause reason for the Python API's memory: shared by every backend instance that calls it."""
PROCESS_MEMORY_PAUSE_REASON = "process memory"
"""Pause reason for this process's own memory: it pauses this backend instance only."""
STALE_AFTER_TICKS = 5
"""How many ticks a last reading keeps its value through silence (its flags stay after)."""
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
    """Hysteresis flags of one memory source; only a reading changes them."""

    name: str  # how the log names the source
    high: bool = False
    over_max: bool = False
    known_mb: float | None = None  # the last reading, until it goes stale
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
    process_pressure: bool = False  # the "process memory" pause is on (``pressure``: either)
    python_api_pressure: bool = False  # the "memory" pause is on

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
        self.process_pressure = False  # our PROCESS_MEMORY_PAUSE_REASON pause is on
        self.python_api_pressure = False  # our MEMORY_PAUSE_REASON pause is on
        self.python_api_over_max = False  # the Python API's side of admission refusal
        self.admission_refused = False
        self.last: MemoryReading | None = None
        self._process = _Flags("this process's memory")
        self._instances = {url: _Flags(f"Python API {url}") for url in clients}

    @property
    def pressure(self) -> bool:
        """Whether memory pauses video here, for either source."""
        return self.process_pressure or self.python_api_pressure

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
            logger.debug("Python API %s memory status unknown: %r", client.address, exc)
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

    def _update(self, flags: _Flags, reading: float | None, now: float) -> float | None:
        """Fold a reading into a source's flags; return the value that went stale just now.

        No reading changes no flag: a source silent while high stays high (I4).
        """
        if reading is None:
            window_s = STALE_AFTER_TICKS * self.settings.memory_check_interval_s
            if flags.known_mb is not None and now - flags.known_at > window_s:
                stale, flags.known_mb = flags.known_mb, None
                return stale
            return None
        flags.known_mb, flags.known_at = reading, now
        ratio = self.settings.memory_resume_ratio
        threshold, limit = self.settings.memory_threshold_mb, self.settings.max_memory_mb
        if reading > threshold:
            flags.high = True
        elif reading < threshold * ratio:
            flags.high = False
        if reading > limit:
            flags.over_max = True
        elif reading < limit * ratio:
            flags.over_max = False
        return None

    def _check(self) -> MemoryReading:
        now = self.clock.monotonic()
        rss = self._read_process()
        stale = self._update(self._process, rss, now)
        if stale is not None:
            self._log_stale(self._process, stale, "unreadable", " on this instance")
        readings: list[InstanceReading] = []
        for url, client in self.clients.items():
            memory_mb, status, reachable = self._read_python(client)
            flags = self._instances[url]
            stale = self._update(flags, memory_mb, now)
            if stale is not None:
                silence = "silent" if not reachable else f"answering without a reading ({status})"
                self._log_stale(flags, stale, silence, "")
            readings.append(InstanceReading(url, memory_mb, status, reachable, flags.high))
            # The sticky flag, not the reading: a silent instance that was high gets no video.
            self.dispatcher.tell(InstanceMemory(url=url, memory_mb=flags.known_mb,
                                                pressure=flags.high, answered=reachable,
                                                status=status if memory_mb is not None else ""))
        first = readings[0]
        s = self.settings
        was_pressure = self.pressure
        self._decide_process_pause(rss)
        self._decide_python_pause(self._python_api_state(
            lambda f: f.high, s.memory_threshold_mb, self.python_api_pressure), readings)
        if self.pressure and not was_pressure:
            self.registry.tell(TrimHistory(keep_fraction=HISTORY_KEEP_FRACTION))
        self.python_api_over_max = self._python_api_state(
            lambda f: f.over_max, s.max_memory_mb, self.python_api_over_max)
        self._decide_admission(self._process.over_max or self.python_api_over_max, rss, first)
        self.last = MemoryReading(rss, first.memory_mb, first.status, first.reachable,
                                  self.clock.time(), self.pressure, self.admission_refused,
                                  tuple(readings), self.process_pressure,
                                  self.python_api_pressure)
        return self.last

    def _log_stale(self, flags: _Flags, last_mb: float, silence: str, where: str) -> None:
        """Say once, when a source's last reading stops counting, what its silence keeps."""
        kept = [what for on, what in ((flags.high, f"video stays paused{where}"),
                                      (flags.over_max, "new video jobs stay refused")) if on]
        if kept:
            logger.warning("%s %s after a high reading (%s MB): %s until a fresh low reading",
                           flags.name, silence, _mb(last_mb), " and ".join(kept))
        else:
            logger.warning("%s %s after a low reading (%s MB): memory unknown, video not paused"
                           " for it", flags.name, silence, _mb(last_mb))

    def _python_api_state(self, flag: Callable[[_Flags], bool], line_mb: float,
                          current: bool) -> bool:
        """Decide the Python API's side of a state from its instances' flags.

        On when every instance is over the line (a silent one counts as it last read); off
        when one gives a reading below the resume level (video can go there); else as it is.
        """
        sources = self._instances.values()
        if all(flag(f) for f in sources):
            return True
        resume_mb = line_mb * self.settings.memory_resume_ratio
        if any(f.known_mb is not None and f.known_mb < resume_mb for f in sources):
            return False
        return current

    def _decide_process_pause(self, rss: float | None) -> None:
        high = self._process.high
        if high == self.process_pressure:
            return
        self.process_pressure = high
        if high:
            self.dispatcher.tell(Pause(kind=JobKind.VIDEO, reason=PROCESS_MEMORY_PAUSE_REASON))
            logger.warning("this process's memory high (%s MB, threshold %.0f MB): video"
                           " dispatch paused on this instance", _mb(rss),
                           self.settings.memory_threshold_mb)
        else:  # only a reading clears the flag: rss is fresh
            self.dispatcher.tell(Resume(kind=JobKind.VIDEO, reason=PROCESS_MEMORY_PAUSE_REASON))
            logger.warning("this process's memory back down (%s MB): its video pause lifted",
                           _mb(rss))

    def _decide_python_pause(self, high: bool, readings: list[InstanceReading]) -> None:
        if high == self.python_api_pressure:
            return
        self.python_api_pressure = high
        seen = ", ".join(f"{r.url} {_mb(r.memory_mb)} MB [{r.status}]" for r in readings)
        if high:
            self.dispatcher.tell(Pause(kind=JobKind.VIDEO, reason=MEMORY_PAUSE_REASON))
            logger.warning("Python API memory high (%s; threshold %.0f MB): video dispatch"
                           " paused", seen, self.settings.memory_threshold_mb)
        else:  # lifted only by a reading below the resume level
            self.dispatcher.tell(Resume(kind=JobKind.VIDEO, reason=MEMORY_PAUSE_REASON))
            logger.warning("Python API memory back down (%s): its video pause lifted", seen)

    def _decide_admission(self, over: bool, rss: float | None, python: InstanceReading) -> None:
        if over == self.admission_refused:
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
            "process_pressure": self.process_pressure,
            "python_api_pressure": self.python_api_pressure,
            "admission_refused": self.admission_refused,
            "threshold_mb": self.settings.memory_threshold_mb,
            "max_memory_mb": self.settings.max_memory_mb,
            "last": self.last.to_dict() if self.last else None,
        }


def _mb(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.0f}"
