"""The ResultWriter's lanes: what waits to be stored, per job kind, and in what state.

Pure bookkeeping (no threads, no I/O, times passed in), so it is tested without actors.
The ResultWriter keeps one ``WriteLane`` per kind, each served by its own thread, so a
question's row never waits behind a video's. A lane writes one result at a time::

    open ──(a write fails, retryable)──► backing_off ──(the backoff is over)──► probing
     ▲                                        ▲                                  │
     │                                        └────────(the probe fails too)─────┤
     └─────(the probe is stored, or refused for good: Supabase answers)──────────┘

While a lane backs off nothing is written: the results behind it wait without each
paying a timeout, then one write goes out (the probe). In an outage a lane costs one
write per round, one timeout at worst, however many results wait. A failed result goes
to the back of its lane, so one result Supabase keeps failing cannot hold the others.

At most ``limit`` results per lane are held with their payload (queued, being written,
or being read back). Past that a result is *deferred*: only its job id, production time
and write count are kept, its job stays ``processing`` with the result on its record
(the Dispatcher records it before handing it over), and the result is read back from
the JobRegistry once there is room. Nothing accepted is dropped.

``WriterStats`` publishes the lanes (and the writer's counts) for snapshots, which read
it from any thread without asking the writer.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from actors.model.jobs import Job, JobKind, JobState
from actors.runtime.timers import Clock


class LaneState(StrEnum):
    """Whether a lane writes."""

    OPEN = "open"
    """Results are written as they come, one at a time."""
    BACKING_OFF = "backing_off"
    """A write failed; nothing is written until the backoff is over."""
    PROBING = "probing"
    """The backoff is over; the next write's outcome decides whether the lane opens."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingWrite:
    """A result held in a lane, with what its next write needs."""

    job: Job
    result: Mapping[str, Any]
    at: float
    """When the result was produced: every write of it sends the same rows."""
    attempt: int = 1
    """The number of its next write."""
    since: float
    """Monotonic time the lane accepted it (for the backlog's age)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Deferred:
    """A result past the lane's bound: its payload is on the job's record, not here."""

    job_id: str
    at: float
    attempt: int
    since: float


class WriteLane:
    """One kind's results waiting to be stored; see the module doc."""

    def __init__(self, kind: JobKind, *, limit: int) -> None:
        if limit < 1:
            raise ValueError("a lane holds at least one result")
        self.kind = kind
        self.limit = limit
        self.state = LaneState.OPEN
        self.queued: deque[PendingWrite] = deque()
        self.deferred: OrderedDict[str, Deferred] = OrderedDict()
        self.writing: PendingWrite | None = None
        self.loading: dict[str, Deferred] = {}  # read back from the JobRegistry now
        self.failed_rounds = 0  # consecutive failed writes: the backoff's exponent
        self.next_round_at: float | None = None

    def __repr__(self) -> str:
        return (f"<WriteLane {self.kind.value} {self.state.value} held={self.held}/"
                f"{self.limit} deferred={len(self.deferred)}>")

    def __contains__(self, job_id: object) -> bool:
        return (job_id in self.deferred or job_id in self.loading
                or any(p.job.id == job_id for p in self.queued)
                or (self.writing is not None and self.writing.job.id == job_id))

    @property
    def held(self) -> int:
        """Results held with their payload (queued, being written, being read back)."""
        return len(self.queued) + (self.writing is not None) + len(self.loading)

    @property
    def busy(self) -> bool:
        """Whether the lane's thread is writing or reading back now."""
        return self.writing is not None or bool(self.loading)

    @property
    def idle(self) -> bool:
        """Whether nothing waits to be stored."""
        return not (self.busy or self.queued or self.deferred)

    def accept(self, pending: PendingWrite) -> bool:
        """Take a result; return False when it is deferred (past the bound).

        Once some are deferred, newer ones are too, so results are stored in order.
        """
        if self.deferred or self.held >= self.limit:
            self.deferred[pending.job.id] = Deferred(job_id=pending.job.id, at=pending.at,
                                                     attempt=pending.attempt,
                                                     since=pending.since)
            return False
        self.queued.append(pending)
        return True

    def next_write(self) -> PendingWrite | None:
        """The result to write now, if the lane writes and its thread is free."""
        if self.busy or self.state == LaneState.BACKING_OFF or not self.queued:
            return None
        self.writing = self.queued.popleft()
        return self.writing

    def next_load(self) -> tuple[str, ...]:
        """Job ids of deferred results to read back now, as many as there is room for."""
        if self.busy or not self.deferred:
            return ()
        room = self.limit - self.held
        while room > 0 and self.deferred:
            job_id, deferred = self.deferred.popitem(last=False)
            self.loading[job_id] = deferred
            room -= 1
        return tuple(self.loading)

    def loaded(self, jobs: Iterable[tuple[str, Job | None]]) -> list[tuple[str, str]]:
        """Queue the results read back; return ``(job id, why)`` of those with none."""
        skipped: list[tuple[str, str]] = []
        for job_id, job in jobs:
            deferred = self.loading.pop(job_id, None)
            if deferred is None:
                continue
            if job is None:
                skipped.append((job_id, "the job is gone"))
            elif job.state != JobState.PROCESSING:
                skipped.append((job_id, f"the job is {job.state.value} now"))
            elif job.result is None:
                skipped.append((job_id, "no result on its record"))
            else:
                self.queued.append(PendingWrite(job=job, result=job.result, at=deferred.at,
                                                attempt=deferred.attempt,
                                                since=deferred.since))
        return skipped

    def load_failed(self) -> None:
        """Defer the results being read back again, first in line."""
        for job_id, deferred in reversed(list(self.loading.items())):
            self.deferred[job_id] = deferred
            self.deferred.move_to_end(job_id, last=False)
        self.loading.clear()

    def finish(self) -> PendingWrite:
        """End the write in flight; return its result."""
        if self.writing is None:
            raise RuntimeError(f"no write in flight in {self!r}")
        pending, self.writing = self.writing, None
        return pending

    def reopen(self) -> None:
        """Supabase answered (stored, or refused for good): write freely again."""
        self.state = LaneState.OPEN
        self.failed_rounds = 0
        self.next_round_at = None

    def back_off(self, *, now: float, delay_s: float) -> None:
        """A write failed: write nothing until ``now + delay_s``."""
        self.state = LaneState.BACKING_OFF
        self.failed_rounds += 1
        self.next_round_at = now + delay_s

    def requeue(self, pending: PendingWrite) -> None:
        """Put a failed result back, at the end, for its next write."""
        self.queued.append(dataclasses.replace(pending, attempt=pending.attempt + 1))

    def probe(self) -> None:
        """The backoff is over: the next write is the probe."""
        if self.state == LaneState.BACKING_OFF:
            self.state = LaneState.PROBING
            self.next_round_at = None

    def waiting(self) -> list[str]:
        """Job ids whose last write failed and whose next one is not in flight."""
        ids = [p.job.id for p in self.queued if p.attempt > 1]
        ids += [d.job_id for d in (*self.loading.values(), *self.deferred.values())
                if d.attempt > 1]
        return ids

    def view(self) -> dict[str, Any]:
        """The lane as plain data; ``oldest_since`` and ``next_round_at`` are monotonic."""
        since = [p.since for p in self.queued] + [d.since for d in self.loading.values()]
        if self.writing is not None:
            since.append(self.writing.since)
        if self.deferred:
            since.append(next(iter(self.deferred.values())).since)  # deferred in order
        return {"state": self.state.value, "backlog": self.held + len(self.deferred),
                "held": self.held, "deferred": len(self.deferred), "limit": self.limit,
                "writing": self.writing.job.id if self.writing is not None else None,
                "failed_rounds": self.failed_rounds, "next_round_at": self.next_round_at,
                "oldest_since": min(since) if since else None}


class WriterStats:
    """What the ResultWriter has done, readable from any thread without asking it.

    A snapshot or health probe must never wait on an actor's mailbox: it reads this.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._lock = threading.Lock()
        self.clock = clock or Clock()
        self.stored = 0
        self.failed = 0
        self.write_retries = 0
        self.deferred_total = 0  # results that went past a lane's bound, ever
        self.last_error: str | None = None
        self.lanes: dict[str, dict[str, Any]] = {}  # kind -> WriteLane.view()
        self.waiting: list[str] = []

    def update(self, **changes: Any) -> None:
        """Apply ``changes`` (attribute -> value) atomically."""
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def describe(self) -> dict[str, Any]:
        """Return the counters and the lanes as plain data (ages in seconds)."""
        now = self.clock.monotonic()
        with self._lock:
            lanes = {kind: _aged(view, now) for kind, view in self.lanes.items()}
            return {"stored": self.stored, "failed": self.failed,
                    "write_retries": self.write_retries,
                    "deferred_total": self.deferred_total,
                    "waiting": sorted(self.waiting),
                    "writing": sorted(v["writing"] for v in lanes.values() if v["writing"]),
                    "backlog": sum(v["backlog"] for v in lanes.values()),
                    "last_error": self.last_error, "lanes": lanes}


def _aged(view: Mapping[str, Any], now: float) -> dict[str, Any]:
    aged = {k: v for k, v in view.items() if k not in ("oldest_since", "next_round_at")}
    oldest, due = view.get("oldest_since"), view.get("next_round_at")
    aged["oldest_age_s"] = None if oldest is None else round(max(0.0, now - oldest), 3)
    aged["next_round_in_s"] = None if due is None else round(max(0.0, due - now), 3)
    return aged
