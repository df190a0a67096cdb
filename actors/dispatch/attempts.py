"""One attempt's call to the Python API, as the Dispatcher and its worker both see it.

Why it exists: the Python API (uvicorn/FastAPI) does not stop a handler when
its client disconnects. Cutting a call at its deadline frees nothing over
there, so the slot of a call must stay held until the Python API is known to
be done with it (its answer has started to arrive), or for a bounded hold
measured from the call's start. To decide that at the deadline, the
Dispatcher asks the attempt where it stands::

    before ──begin()──► calling ──answered()──► answered ──end()──► ended
       │                   │
       └──── expire() seals the attempt: no call may begin after it ────┘

- ``before``: no request was sent (the worker is still looking up the company,
  or its thread is stuck elsewhere). After ``expire()`` none ever will be, so
  the attempt can end at once and its slot go: nothing runs at the Python API.
- ``calling``: the request is at the Python API, which is working on it. The
  call is *abandoned*: it keeps its slot, and the worker keeps reading, until
  the answer arrives or the hold ends (then its socket is cut).
- ``answered``: the status line arrived, so the Python API's handler has
  returned; only the body is in transit. Cutting it now frees nothing that
  the Python API still holds.
- ``ended``: the call returned; the worker's report is on its way.

The object is shared on purpose by the Dispatcher's thread, the worker's
thread and the timer thread (the one mutable value in a message, ``RunJob``);
every change happens under its lock. Times are ``time.monotonic()``: they are
about real sockets, whatever clock the actors are given.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

BEFORE, CALLING, ANSWERED, ENDED = "before", "calling", "answered", "ended"


class AttemptCall:
    """The shared state of one attempt's Python API call: phase, deadline, hold, cut."""

    __slots__ = ("_cut", "_lock", "_phase", "_sealed", "attempt", "cut_reason", "deadline",
                 "hold_until", "job_id", "started")

    def __init__(self, job_id: str, attempt: int, *, timeout_s: float, hold_s: float,
                 hold_from: float | None = None) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        # The hold counts from ``hold_from`` when given (the shared queue: when the claim
        # was sent, so that the database's hold, counted from the claim, ends later).
        start = self.started if hold_from is None else min(hold_from, self.started)
        self.hold_until = max(start + hold_s, self.deadline)
        self._lock = threading.Lock()
        self._phase = BEFORE
        self._sealed = False
        self._cut: Callable[[str], None] | None = None
        self.cut_reason: str | None = None

    def __repr__(self) -> str:
        sealed = " sealed" if self._sealed else ""
        return f"<AttemptCall {self.job_id}#{self.attempt} {self._phase}{sealed}>"

    @property
    def phase(self) -> str:
        """Where the call stands: before, calling, answered or ended."""
        return self._phase

    def seconds_left(self) -> float:
        """Seconds until the deadline (negative once it has passed)."""
        return self.deadline - time.monotonic()

    def hold_left(self) -> float:
        """Seconds until the hold ends, when an abandoned call is cut."""
        return self.hold_until - time.monotonic()

    def begin(self, cut: Callable[[str], None]) -> bool:
        """Start the call if the attempt is still live; ``cut`` ends it from another thread.

        Returns False, and nothing may be sent, once the attempt has expired
        or its deadline has passed.
        """
        with self._lock:
            if self._sealed or time.monotonic() >= self.deadline or self._phase != BEFORE:
                return False
            self._phase, self._cut = CALLING, cut
            return True

    def answered(self) -> None:
        """Note that the answer's status line arrived: the Python API is done with it."""
        with self._lock:
            if self._phase == CALLING:
                self._phase = ANSWERED

    def end(self) -> None:
        """Note that the call returned (answered, failed or cut)."""
        with self._lock:
            self._phase, self._cut = ENDED, None

    def expire(self) -> str:
        """Seal the attempt at its deadline (no call begins after this); return its phase."""
        with self._lock:
            self._sealed = True
            return self._phase

    def cut(self, reason: str) -> None:
        """Cut the call's connection now (once); nothing happens when no call is open."""
        with self._lock:
            self._sealed = True
            cut = self._cut
            if cut is None or self.cut_reason is not None:
                return
            self.cut_reason = reason
        cut(reason)
