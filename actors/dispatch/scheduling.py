"""Pure scheduling logic, without threads: the waiting order, backoff, wait estimates.

The fair order between companies inside the waiting order is fairness.py's.

The Dispatcher actor owns one ``WaitingQueue`` and calls these functions; tests
exercise them directly with explicit times.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from actors.dispatch.fairness import NO_COMPANY, Capped, FairClock
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


_Entry = tuple[float, int, str]  # (fair tag, arrival seq, job id)


class WaitingQueue:
    """Waiting jobs in one order across kinds: effective priority, then the fair order.

    Within one (kind, base priority) jobs go in the fair order between companies
    (fairness.py): by their tag, then arrival seq. Each company's jobs are one list
    sorted so, its head its best; the head of (kind, priority) is the smallest head
    among companies not at their ceiling, found by comparing one head per company.
    The heads of the (kind, priority) lists then compete as before: by effective
    priority (the head's own age: aging promotes a list's fair head, so an old
    backlog never overtakes a newcomer of its own priority by age alone), then seq.
    A job keeps its tag for good, so a retried job goes back to its place.
    """

    def __init__(self, aging_s: float, *, fairness: FairClock | None = None) -> None:
        self.aging_s = aging_s
        self.fair = fairness or FairClock()
        # (kind, base priority) -> company -> its waiting jobs in fair order
        self._fair: dict[tuple[JobKind, int], dict[str, list[_Entry]]] = {}
        # (kind, base priority) -> (seq, id): arrival order, for positions across priorities
        self._lists: dict[tuple[JobKind, int], list[tuple[int, str]]] = {}
        self._jobs: dict[str, Job] = {}
        self._counts: dict[JobKind, int] = dict.fromkeys(JobKind, 0)
        self._company_counts: Counter[tuple[JobKind, str]] = Counter()

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._jobs

    def count(self, kind: JobKind) -> int:
        """How many jobs of ``kind`` are waiting."""
        return self._counts[kind]

    def company_counts(self) -> Counter[tuple[JobKind, str]]:
        """How many jobs wait per (kind, company) (``""``: jobs without a company)."""
        return Counter(self._company_counts)

    def get(self, job_id: str) -> Job | None:
        """Return a waiting job, or ``None``."""
        return self._jobs.get(job_id)

    def push(self, job: Job) -> Job:
        """Add a job, tagged in the fair order if it has no tag yet; return it as queued.

        A job already waiting is replaced (keeping its tag).
        """
        if job.id in self._jobs:
            old = self.remove(job.id)
            if job.vtime is None and old is not None:
                job = job.replace(vtime=old.vtime)
        if job.vtime is None:
            job = job.replace(vtime=self.fair.tag(job.kind, job.priority, job.company))
        assert job.vtime is not None
        company = job.company or NO_COMPANY
        self._jobs[job.id] = job
        self._counts[job.kind] += 1
        self._company_counts[job.kind, company] += 1
        flows = self._fair.setdefault((job.kind, job.priority), {})
        bisect.insort(flows.setdefault(company, []), (job.vtime, job.seq, job.id))
        bisect.insort(self._lists.setdefault((job.kind, job.priority), []), (job.seq, job.id))
        return job

    def remove(self, job_id: str) -> Job | None:
        """Withdraw a waiting job; return it, or ``None`` if it was not waiting."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        assert job.vtime is not None
        company = job.company or NO_COMPANY
        self._counts[job.kind] -= 1
        self._company_counts[job.kind, company] -= 1
        if self._company_counts[job.kind, company] <= 0:
            del self._company_counts[job.kind, company]
        flows = self._fair[job.kind, job.priority]
        entries = flows[company]
        del entries[bisect.bisect_left(entries, (job.vtime, job.seq, job.id))]
        if not entries:
            del flows[company]
        arrivals = self._lists[job.kind, job.priority]
        del arrivals[bisect.bisect_left(arrivals, (job.seq, job.id))]
        return job

    def _head(self, kind: JobKind, priority: int, capped: Capped | None) -> Job | None:
        """The first job of (kind, priority) in the fair order, skipping capped companies."""
        best: _Entry | None = None
        for company, entries in self._fair.get((kind, priority), {}).items():
            if entries and (best is None or entries[0] < best):
                if capped is not None and capped(kind, company):
                    continue
                best = entries[0]
        return None if best is None else self._jobs[best[2]]

    def pop_next(self, kinds: Iterable[JobKind], now: float, *,
                 capped: Capped | None = None) -> Job | None:
        """Remove and return the best waiting job among ``kinds``, or ``None``.

        ``capped`` names companies at their running ceiling: their jobs are passed
        over (the next company's go first), never waited on.
        """
        best: Job | None = None
        best_key: tuple[int, int] | None = None
        for kind in kinds:
            for priority in range(MIN_PRIORITY, MAX_PRIORITY + 1):
                head = self._head(kind, priority, capped)
                if head is None:
                    continue
                key = (effective_priority(head, now, self.aging_s), head.seq)
                if best_key is None or key < best_key:
                    best, best_key = head, key
        if best is not None:
            self.remove(best.id)
            assert best.vtime is not None
            self.fair.dispatched(best.kind, best.priority, best.vtime)
        return best

    def position(self, job_id: str, now: float) -> int | None:
        """Return the 1-based place of a waiting job among the waiting jobs of its kind.

        In its own priority: the jobs before it in the fair order, of every company.
        In the others: those before it by (effective priority, arrival).
        """
        job = self._jobs.get(job_id)
        if job is None:
            return None
        assert job.vtime is not None
        mine = (job.vtime, job.seq, job.id)
        ahead = sum(bisect.bisect_left(entries, mine)
                    for entries in self._fair.get((job.kind, job.priority), {}).values())
        key = (effective_priority(job, now, self.aging_s), job.seq)

        def order(entry: tuple[int, str]) -> tuple[int, int]:
            return effective_priority(self._jobs[entry[1]], now, self.aging_s), entry[0]

        for priority in range(MIN_PRIORITY, MAX_PRIORITY + 1):
            entries = self._lists.get((job.kind, priority))
            if entries and priority != job.priority:
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

