"""Pure scheduling logic, without threads: the waiting order, backoff, wait estimates.

The Dispatcher actor owns one ``WaitingQueue`` and calls these functions; tests
exercise them directly with explicit times.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

from actors.model.jobs import Job, JobKind

MIN_PRIORITY, MAX_PRIORITY = 1, 3


def effective_priority(job: Job, now: float, aging_s: float) -> int:
    """Return the job's priority improved by one level per ``aging_s`` waited (never below 1).

    Aging is what keeps priority 3 from starving behind a steady stream of
    priority 1 work.
    """
    if aging_s <= 0:
        return job.priority
    levels = int(max(0.0, now - job.created_at) // aging_s)
    return max(MIN_PRIORITY, job.priority - levels)


class WaitingQueue:
    """Waiting jobs in one global order across kinds: (effective priority, arrival seq).

    One list per (kind, base priority), sorted by arrival sequence. Within one
    list an older job is never worse by effective priority (aging only ever
    improves it), so the list is in order by (effective priority, seq) too: its
    first job is its best, choosing the next job compares at most kinds x
    priorities heads, and a job's place is a binary search per list. New jobs
    arrive with the highest seq and are appended; a retried job goes back to
    its place.
    """

    def __init__(self, aging_s: float) -> None:
        self.aging_s = aging_s
        self._lists: dict[tuple[JobKind, int], list[tuple[int, str]]] = {}
        self._jobs: dict[str, Job] = {}
        self._counts: dict[JobKind, int] = dict.fromkeys(JobKind, 0)

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def count(self, kind: JobKind) -> int:
        """How many jobs of ``kind`` are waiting."""
        return self._counts[kind]

    def get(self, job_id: str) -> Job | None:
        """Return a waiting job, or ``None``."""
        return self._jobs.get(job_id)

    def push(self, job: Job) -> None:
        """Add a job; a job already waiting is replaced."""
        if job.id in self._jobs:
            self.remove(job.id)
        self._jobs[job.id] = job
        self._counts[job.kind] += 1
        bisect.insort(self._lists.setdefault((job.kind, job.priority), []), (job.seq, job.id))

    def remove(self, job_id: str) -> Job | None:
        """Withdraw a waiting job; return it, or ``None`` if it was not waiting."""
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._counts[job.kind] -= 1
            entries = self._lists[job.kind, job.priority]
            del entries[bisect.bisect_left(entries, (job.seq, job.id))]
        return job

    def pop_next(self, kinds: Iterable[JobKind], now: float) -> Job | None:
        """Remove and return the best waiting job among ``kinds``, or ``None``."""
        best: Job | None = None
        best_key: tuple[int, int] | None = None
        for kind in kinds:
            for priority in range(MIN_PRIORITY, MAX_PRIORITY + 1):
                entries = self._lists.get((kind, priority))
                if not entries:
                    continue
                head = self._jobs[entries[0][1]]
                key = (effective_priority(head, now, self.aging_s), head.seq)
                if best_key is None or key < best_key:
                    best, best_key = head, key
        if best is not None:
            self.remove(best.id)
        return best

    def position(self, job_id: str, now: float) -> int | None:
        """Return the 1-based place of a waiting job among the waiting jobs of its kind."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        key = (effective_priority(job, now, self.aging_s), job.seq)

        def order(entry: tuple[int, str]) -> tuple[int, int]:
            return effective_priority(self._jobs[entry[1]], now, self.aging_s), entry[0]

        ahead = 0
        for priority in range(MIN_PRIORITY, MAX_PRIORITY + 1):
            entries = self._lists.get((job.kind, priority))
            if entries:
                ahead += bisect.bisect_left(entries, key, key=order)
        return ahead + 1

    def jobs(self) -> list[Job]:
        """Return the waiting jobs (no particular order)."""
        return list(self._jobs.values())


def backoff_delay_s(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    jitter: float,
    retry_after_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Return the pause before the attempt after ``attempt`` (1-based) failed.

    ``base_s * 2**(attempt-1)``, capped at ``max_s``, then scaled down by up to
    ``jitter`` (a fraction) so that jobs failed together do not come back
    together. A server's ``Retry-After`` is honoured as a floor, itself capped
    at ``max_s`` so a hostile header cannot park a job for a day.
    """
    exponent = min(max(attempt - 1, 0), 62)
    delay = min(max_s, base_s * float(2**exponent))
    if jitter > 0 and delay > 0:
        delay *= 1.0 - jitter * (rng or random).random()
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, max_s))
    return delay


@dataclass
class DurationEstimate:
    """An exponentially weighted moving average of attempt durations."""

    default_s: float
    weight: float = 0.2
    value_s: float | None = None
    samples: int = 0

    def observe(self, duration_s: float) -> None:
        """Fold one observed duration in."""
        self.samples += 1
        if self.value_s is None:
            self.value_s = duration_s
        else:
            self.value_s += self.weight * (duration_s - self.value_s)

    @property
    def seconds(self) -> float:
        """The current estimate (the default until something was observed)."""
        return self.default_s if self.value_s is None else self.value_s


def estimate_wait_s(position: int, *, running: int, slots: int, duration_s: float) -> float:
    """Estimate the wait before the job at ``position`` starts.

    Jobs ahead start as slots free up; each "wave" of ``slots`` jobs takes
    about one duration. A job that fits a free slot waits about nothing.
    """
    free = max(0, slots - running)
    if position <= free:
        return 0.0
    waves = math.ceil((position - free) / max(1, slots))
    return waves * duration_s

