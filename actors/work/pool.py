"""A pool of worker actors for one job kind, with capped restarts (supervision).

The pool belongs to the Dispatcher and is only touched from its thread. A
free worker is a free slot: the pool has exactly ``size`` workers, so the
kind's concurrency limit holds by construction, and a worker only becomes
idle again when it reports that its call has returned.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

import pykka

from actors.model.jobs import JobKind
from actors.results.supabase import CompanyResolver
from actors.runtime.timers import Clock
from actors.runtime.tracked import mailbox_depth
from actors.work.python_api import PythonApiClient
from actors.work.workers import WORKER_CLASSES

logger = logging.getLogger(__name__)


class WorkerPool:
    """Starts, tracks and replaces the worker actors of one kind."""

    def __init__(
        self,
        kind: JobKind,
        size: int,
        *,
        dispatcher: pykka.ActorRef[Any],
        clients: Mapping[str, PythonApiClient],
        clock: Clock,
        max_restarts: int,
        restart_window_s: float,
        threads: list[threading.Thread] | None = None,
        resolver: CompanyResolver | None = None,
    ) -> None:
        self.kind = kind
        self._resolver = resolver
        self.size = size
        self._dispatcher = dispatcher
        self._clients = clients
        self._clock = clock
        self._threads = threads
        self._max_restarts = max_restarts
        self._restart_window_s = restart_window_s
        self._workers: dict[str, pykka.ActorRef[Any]] = {}
        self._idle: deque[str] = deque()
        self._busy: dict[str, str] = {}  # worker id -> job id
        self._recent_restarts: deque[float] = deque()
        self._serial = 0
        self.restarts = 0
        self.failed = False
        self.revivals = 0  # times a failed pool was started again
        self.revival_due = False  # a revival is scheduled

    def __repr__(self) -> str:
        state = "FAILED" if self.failed else "ok"
        return (f"<WorkerPool {self.kind.value} {state} busy={len(self._busy)}/{self.size}"
                f" restarts={self.restarts}>")

    def start(self) -> None:
        """Start ``size`` workers."""
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        self._serial += 1
        worker_id = f"{self.kind.value}-{self._serial}"
        cls = WORKER_CLASSES[self.kind]
        self._workers[worker_id] = cls.start(worker_id, self._dispatcher, self._clients,
                                             threads=self._threads, resolver=self._resolver)
        self._idle.append(worker_id)

    @property
    def has_idle(self) -> bool:
        """Whether a worker (a slot) is free."""
        return bool(self._idle)

    @property
    def idle(self) -> int:
        """How many workers (slots) are free."""
        return len(self._idle)

    @property
    def busy(self) -> int:
        """How many workers are running an attempt."""
        return len(self._busy)

    def acquire(self, job_id: str) -> tuple[str, pykka.ActorRef[Any]]:
        """Take an idle worker for ``job_id``; the caller checked ``has_idle``."""
        worker_id = self._idle.popleft()
        self._busy[worker_id] = job_id
        return worker_id, self._workers[worker_id]

    def owns(self, worker_id: str) -> bool:
        """Whether ``worker_id`` is one of this pool's live workers."""
        return worker_id in self._workers

    def job_of(self, worker_id: str) -> str | None:
        """Return the job a worker is busy with, or ``None`` when it is idle or not ours."""
        return self._busy.get(worker_id)

    def release(self, worker_id: str) -> None:
        """Mark a worker idle again after it reported its outcome."""
        if self._busy.pop(worker_id, None) is not None and worker_id in self._workers:
            self._idle.append(worker_id)

    def replace(self, worker_id: str, *, allowed: bool = True) -> bool:
        """Drop a dead worker and start another, unless restarts are used up.

        Returns whether a replacement was started.
        """
        self._busy.pop(worker_id, None)
        if worker_id in self._idle:
            self._idle.remove(worker_id)
        dead = self._workers.pop(worker_id, None)
        if dead is None:
            return False
        # Its thread may have died outside pykka's loop: make sure nobody waits on it.
        pykka.ActorRegistry.unregister(dead)
        dead.actor_stopped.set()
        if not allowed:
            return False
        now = self._clock.monotonic()
        while self._recent_restarts and now - self._recent_restarts[0] > self._restart_window_s:
            self._recent_restarts.popleft()
        if len(self._recent_restarts) >= self._max_restarts:
            if not self.failed:
                logger.error(
                    "%s pool: %d restarts within %.0fs; not restarting %s (pool degraded, %d/%d"
                    " workers left)", self.kind.value, len(self._recent_restarts),
                    self._restart_window_s, worker_id, len(self._workers), self.size)
            self.failed = True
            return False
        self._recent_restarts.append(now)
        self.restarts += 1
        self._spawn()
        logger.warning("%s pool: replaced dead worker %s (restart %d)", self.kind.value,
                       worker_id, self.restarts)
        return True

    @property
    def revive_after_s(self) -> float:
        """How long a failed pool waits before its workers are started again (backoff)."""
        return float(self._restart_window_s * 2 ** min(self.revivals, 5))

    def revive(self) -> int:
        """Start the workers a failed pool is missing, with a fresh restart budget.

        A pool that used up its restarts (a bug, a broken dependency) tries again
        after a while instead of leaving its kind's jobs waiting forever; a pool that
        keeps failing waits longer each time. Returns how many workers were started.
        """
        self.revival_due = False
        missing = self.size - len(self._workers)
        for _ in range(missing):
            self._spawn()
        self._recent_restarts.clear()
        self.failed = False
        self.revivals += 1
        logger.warning("%s pool: started %d worker(s) again after its restarts were used up"
                       " (revival %d)", self.kind.value, missing, self.revivals)
        return missing

    def stop(self, timeout_s: float) -> None:
        """Stop every worker and wait for each (a busy one stops after its call returns)."""
        futures = [ref.stop(block=False) for ref in self._workers.values()]
        for future in futures:
            try:
                future.get(timeout=timeout_s)
            except pykka.Timeout:
                logger.error("%s pool: a worker did not stop within %.1fs", self.kind.value,
                             timeout_s)
        self._workers.clear()
        self._idle.clear()
        self._busy.clear()

    def describe(self) -> dict[str, Any]:
        """Return the pool's state as plain data."""
        return {
            "size": self.size,
            "alive": sum(1 for ref in self._workers.values() if ref.is_alive()),
            "busy": len(self._busy),
            "restarts": self.restarts,
            "failed": self.failed,
            "revivals": self.revivals,
            "workers": {
                worker_id: {
                    "job_id": self._busy.get(worker_id),
                    "mailbox": mailbox_depth(ref),
                    "alive": ref.is_alive(),
                    "actor": ref.actor_class.__name__,
                }
                for worker_id, ref in self._workers.items()
            },
        }
