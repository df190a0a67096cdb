"""The MemoryWatchdog actor: pauses video work while memory runs high.

On every tick it reads this process's RSS (psutil) and the Python API's
``/memory-status`` (short timeout). The Python API blocks while it processes
a video, so silence means "unknown", never "critical": an unknown reading
neither pauses nor resumes; the last known one stands for a few ticks.

- Above ``MEMORY_THRESHOLD_MB`` (either reading): pause video dispatch; Q&A goes
  on; ask the JobRegistry to trim retained history.
- Below ``MEMORY_THRESHOLD_MB x MEMORY_RESUME_RATIO`` (every known reading):
  resume (hysteresis, so a reading hovering at the line does not flap).
- Above ``QUEUE_MAX_MEMORY_MB``: refuse new video submissions until below
  ``QUEUE_MAX_MEMORY_MB x MEMORY_RESUME_RATIO``.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import psutil
import pykka

from actors.jobs import JobKind
from actors.messages import CheckMemory, Inspect, Pause, Resume, SetAdmission, TrimHistory
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
class MemoryReading:
    """One tick's readings and what the watchdog made of them."""

    process_rss_mb: float | None
    python_api_mb: float | None
    python_api_status: str
    python_api_reachable: bool
    checked_at: float
    pressure: bool
    admission_refused: bool

    def to_dict(self) -> dict[str, Any]:
        """Return plain data."""
        return asdict(self)


class MemoryWatchdog(TrackedActor):
    """Samples memory on a timer and tells the Dispatcher and JobRegistry what to do."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: PythonApiClient,
        dispatcher: pykka.ActorRef[Any],
        registry: pykka.ActorRef[Any],
        timers: TimerService,
        clock: Clock,
        rss_reader: Callable[[], float] = process_rss_mb,
        threads: list[threading.Thread] | None = None,
    ) -> None:
        super().__init__(threads=threads)
        self.settings = settings
        self.client = client
        self.dispatcher = dispatcher
        self.registry = registry
        self.timers = timers
        self.clock = clock
        self.rss_reader = rss_reader
        self.pressure = False
        self.admission_refused = False
        self.last: MemoryReading | None = None
        self._python_known: tuple[float, float] | None = None  # (reading, monotonic time)

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

    def _read_python(self) -> tuple[float | None, str, bool]:
        try:
            status = self.client.memory_status(timeout_s=self.settings.python_api_status_timeout_s)
        except Exception as exc:  # silence or garbage: unknown, not critical
            logger.debug("Python API memory status unknown: %r", exc)
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

    def _check(self) -> MemoryReading:
        rss = self._read_process()
        python_mb, python_status, reachable = self._read_python()
        now = self.clock.monotonic()
        if python_mb is not None:
            self._python_known = (python_mb, now)
        stale_s = STALE_AFTER_TICKS * self.settings.memory_check_interval_s
        known_python = (self._python_known[0] if self._python_known
                        and now - self._python_known[1] <= stale_s else None)
        known = [r for r in (rss, known_python) if r is not None]
        self._decide_pause(known, rss, python_mb, python_status)
        self._decide_admission(known, rss, python_mb)
        self.last = MemoryReading(rss, python_mb, python_status, reachable, self.clock.time(),
                                  self.pressure, self.admission_refused)
        return self.last

    def _decide_pause(self, known: list[float], rss: float | None, python_mb: float | None,
                      python_status: str) -> None:
        threshold = self.settings.memory_threshold_mb
        if not self.pressure and any(r > threshold for r in known):
            self.pressure = True
            self.dispatcher.tell(Pause(kind=JobKind.VIDEO, reason=MEMORY_PAUSE_REASON))
            self.registry.tell(TrimHistory(keep_fraction=HISTORY_KEEP_FRACTION))
            logger.warning("memory high (process %s MB, Python API %s MB [%s], threshold %.0f"
                           " MB): video dispatch paused", _mb(rss), _mb(python_mb),
                           python_status, threshold)
        elif self.pressure and known and all(
            r < threshold * self.settings.memory_resume_ratio for r in known
        ):
            self.pressure = False
            self.dispatcher.tell(Resume(kind=JobKind.VIDEO, reason=MEMORY_PAUSE_REASON))
            logger.warning("memory back down (process %s MB, Python API %s MB): video dispatch"
                           " resumed", _mb(rss), _mb(python_mb))

    def _decide_admission(self, known: list[float], rss: float | None,
                          python_mb: float | None) -> None:
        limit = self.settings.max_memory_mb
        if not self.admission_refused and any(r > limit for r in known):
            self.admission_refused = True
            self.registry.tell(SetAdmission(kind=JobKind.VIDEO, refused=True))
            logger.warning("memory above %.0f MB (process %s MB, Python API %s MB): refusing new"
                           " video jobs", limit, _mb(rss), _mb(python_mb))
        elif self.admission_refused and known and all(
            r < limit * self.settings.memory_resume_ratio for r in known
        ):
            self.admission_refused = False
            self.registry.tell(SetAdmission(kind=JobKind.VIDEO, refused=False))
            logger.warning("memory below %.0f MB again: accepting video jobs", limit)

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
