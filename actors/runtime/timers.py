"""Clocks and the timer service: how actors wait without sleeping.

Actors never sleep: a retry backoff, a memory tick or a hard deadline is a
callback scheduled here, which usually ``tell``s a message back to an actor.
One thread serves every timer of a job system.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pykka

logger = logging.getLogger(__name__)


class Clock:
    """Wall-clock and monotonic time; tests may pass a subclass they control."""

    def time(self) -> float:
        """Seconds since the epoch (for job timestamps)."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations and deadlines)."""
        return time.monotonic()


@dataclass(order=True)
class _Entry:
    due: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)


class TimerHandle:
    """A scheduled callback that can be cancelled."""

    __slots__ = ("_entry", "_service")

    def __init__(self, entry: _Entry, service: TimerService) -> None:
        self._entry = entry
        self._service = service

    def cancel(self) -> None:
        """Make sure the callback does not run (if it has not yet)."""
        if not self._entry.cancelled:
            self._entry.cancelled = True
            self._service._forget_cancelled()

    @property
    def due(self) -> float:
        """Monotonic time at which the callback runs."""
        return self._entry.due


class TimerService:
    """Runs callbacks at monotonic due times on one background thread."""

    def __init__(self, name: str = "Timers") -> None:
        self._name = name
        self._heap: list[_Entry] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._cancelled = 0  # cancelled entries still in the heap
        self._thread: threading.Thread | None = None

    def start(self) -> TimerService:
        """Start the timer thread."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Drop pending timers and join the thread."""
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` on the timer thread after ``delay_s`` seconds."""
        entry = _Entry(time.monotonic() + max(0.0, delay_s), next(self._seq), callback)
        with self._cond:
            if not self._stopped:
                heapq.heappush(self._heap, entry)
                if self._heap[0] is entry:  # due first: the timer thread waits too long
                    self._cond.notify_all()
        return TimerHandle(entry, self)

    def _forget_cancelled(self) -> None:
        # Every attempt cancels its deadline and overdue timers (due minutes later): drop
        # them once they are most of the heap, so memory does not grow with throughput.
        with self._cond:
            self._cancelled += 1
            if self._cancelled > 64 and self._cancelled * 2 > len(self._heap):
                self._heap = [e for e in self._heap if not e.cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def tell_later(
        self, delay_s: float, ref: pykka.ActorRef[Any], message: object
    ) -> TimerHandle:
        """Send ``message`` to ``ref`` after ``delay_s`` seconds (dropped if the actor died)."""

        def deliver() -> None:
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                logger.debug("timer message %r dropped: actor stopped", message)

        return self.call_later(delay_s, deliver)

    @property
    def pending(self) -> int:
        """How many timers are waiting."""
        with self._cond:
            return sum(1 for e in self._heap if not e.cancelled)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    while self._heap and self._heap[0].cancelled:
                        heapq.heappop(self._heap)
                        self._cancelled = max(0, self._cancelled - 1)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait_s = self._heap[0].due - time.monotonic()
                    if wait_s <= 0:
                        break
                    self._cond.wait(wait_s)
                if self._stopped:
                    return
                entry = heapq.heappop(self._heap)
            try:
                entry.callback()
            except Exception:  # a bad callback must not kill every other timer
                logger.exception("timer callback failed")
