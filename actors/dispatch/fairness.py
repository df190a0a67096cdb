"""Pure fair-share logic between companies: weights, costs and the virtual clock.

The fair order is start-time fair queuing (SFQ), the scheme Temporal's task
queue fairness calls weighted stride scheduling. Each (kind, base priority)
has a virtual clock ``V``: the highest tag dispatched from it (0 before any).
Each company keeps, per (kind, priority), the virtual time its queued work
ends at (``finish``). A job arriving gets, once, at enqueue time::

    start  = max(V - credit(kind), finish[company])   # its tag: the order key
    finish = start + cost(kind) / weight(company)

and waits ordered by (tag, arrival seq). So:

* a company alone takes every slot (work-conserving: tags only order, never hold);
* two companies waiting alternate in proportion to their weights (3:1 weight,
  3:1 dispatches), since each tag step is ``cost / weight``;
* a newcomer goes first: a company with nothing queued (or whose work the clock
  passed long ago) starts ``credit`` behind the clock, so its first jobs (two
  of a weight-1 company's, ``NEWCOMER_CREDIT_JOBS``) go before the next ones of
  the companies already waiting, whose tags are at ``V`` or beyond; then it takes
  its weighted share;
* the credit is bounded, never banked: no tag is ever given more than ``credit``
  behind the clock, however long a company was idle, and a company earns it back
  only as the clock moves past its finish (the others are served), so splitting a
  backlog into bursts gains nothing over sending it at once;
* a tag never changes once given (retries keep it, aging does not touch it),
  so the order stays a heap here and an indexed ``ORDER BY`` in PostgreSQL.

The credit is virtual time, the same for every company of a kind: a company of
weight 3 gets three times the real work ahead, as it gets three times the share.

Costs are in Python API seconds: a kind's nominal duration at enqueue (a video
180 s, a question 10 s), corrected by the measured duration when an attempt
ends (``charge``), so a company of long videos pays for their length.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.model.jobs import Job, JobKind
from actors.model.settings import Settings

NOMINAL_COST_S: Mapping[JobKind, float] = {JobKind.VIDEO: 180.0, JobKind.QA: 10.0}
"""What a job costs when it is tagged, in Python API seconds (its kind's typical duration)."""
NEWCOMER_CREDIT_JOBS = 2.0
"""How far behind the clock a tag may start, in nominal jobs of the kind (weight 1): the
bounded head start of a company that has nothing queued. Two: the fairness benchmark's
small company (4 videos of 1 to 10 minutes behind two backlogs) then waits at most its own
work plus one job of the others in 299 of 300 drawn workloads (one job: 270; none: 227),
while the companies that wait get their weighted shares as before (bench/fairness.py)."""
Capped = Callable[[JobKind, str], bool]
"""Whether a company is at its running ceiling for a kind (its jobs are passed over)."""
NO_COMPANY = ""
"""The company of jobs that name none: they share one fair share."""


@dataclass(frozen=True, slots=True)
class FairShare:
    """The weights of companies (default 1), the cost a job is tagged with and the credit."""

    weights: Mapping[str, float] = field(default_factory=dict)
    credit_jobs: float = NEWCOMER_CREDIT_JOBS
    """The newcomer credit in nominal jobs (0: plain SFQ; the benchmark compares)."""

    @classmethod
    def of(cls, pairs: Iterable[tuple[str, float]]) -> FairShare:
        """Build from ``(company, weight)`` pairs (``Settings.company_weights``)."""
        return cls({name.casefold(): weight for name, weight in pairs})

    def weight(self, company: str | None) -> float:
        """The weight of ``company`` (1 unless configured)."""
        return self.weights.get(company or NO_COMPANY, 1.0)

    def cost(self, kind: JobKind, company: str | None) -> float:
        """The virtual time one job of ``kind`` advances ``company``'s finish by."""
        return NOMINAL_COST_S[kind] / self.weight(company)

    def credit(self, kind: JobKind) -> float:
        """How far behind the clock of ``kind`` a new tag may start (virtual time)."""
        return self.credit_jobs * NOMINAL_COST_S[kind]


@dataclass(slots=True)
class _Flow:
    start: float  # the last tag given: a correction never takes finish below it (FIFO)
    finish: float


class FairClock:
    """The virtual clocks of the local queue: one per (kind, priority), a finish per company."""

    PRUNE_EVERY = 1024

    def __init__(self, share: FairShare | None = None) -> None:
        self.share = share or FairShare()
        self._clock: dict[tuple[JobKind, int], float] = {}
        self._flows: dict[tuple[JobKind, int, str], _Flow] = {}
        self._tagged = 0

    def now(self, kind: JobKind, priority: int) -> float:
        """The virtual clock of (kind, priority): the highest tag dispatched from it (or 0)."""
        return self._clock.get((kind, priority), 0.0)

    def tag(self, kind: JobKind, priority: int, company: str | None) -> float:
        """Give a new job its tag (start time) and advance its company's finish.

        ``max(V - credit, finish)``: a company with nothing queued starts ``credit``
        behind the clock, one with work queued after that work (FIFO within a company).
        """
        floor = self.now(kind, priority) - self.share.credit(kind)
        key = (kind, priority, company or NO_COMPANY)
        flow = self._flows.get(key)
        start = floor if flow is None else max(floor, flow.finish)
        self._flows[key] = _Flow(start, start + self.share.cost(kind, company))
        self._tagged += 1
        if self._tagged % self.PRUNE_EVERY == 0:
            self._prune()
        return start

    def dispatched(self, kind: JobKind, priority: int, tag: float) -> None:
        """A job tagged ``tag`` was started: the clock of its list moves up to it."""
        if tag > self.now(kind, priority):
            self._clock[kind, priority] = tag

    def charge(self, kind: JobKind, priority: int, company: str | None, extra_s: float) -> None:
        """Correct a company's finish by an attempt's measured minus nominal cost (seconds)."""
        flow = self._flows.get((kind, priority, company or NO_COMPANY))
        if flow is not None:
            flow.finish = max(flow.start, flow.finish + extra_s / self.share.weight(company))

    def finish(self, kind: JobKind, priority: int, company: str | None) -> float | None:
        """A company's finish (``None``: it has none, or one too far behind the clock to count)."""
        flow = self._flows.get((kind, priority, company or NO_COMPANY))
        return None if flow is None or self._spent(kind, priority, flow) else flow.finish

    def _spent(self, kind: JobKind, priority: int, flow: _Flow) -> bool:
        # A finish at least the credit behind the clock is the same as none
        # (max(V - credit, finish) == V - credit), and the clock never goes back.
        return flow.finish <= self.now(kind, priority) - self.share.credit(kind)

    def _prune(self) -> None:
        for key in [k for k, f in self._flows.items() if self._spent(k[0], k[1], f)]:
            del self._flows[key]


TOP_COMPANIES = 20
"""Companies shown by name per kind (snapshot, status, metrics); the rest add up as ``(others)``.
Company names are user data: a bounded label set keeps Prometheus and the snapshot small."""
OTHER = "(others)"


def ceilings_of(settings: Settings) -> dict[JobKind, int]:
    """The per-company running ceilings that are set, per kind."""
    found = {kind: settings.limits(kind).max_concurrent_per_company for kind in JobKind}
    return {kind: ceiling for kind, ceiling in found.items() if ceiling is not None}


def capped_by(ceilings: Mapping[JobKind, int], running: Iterable[Job]) -> Capped | None:
    """Whether a company is at its ceiling, counting ``running`` (``None``: no ceilings)."""
    if not ceilings:
        return None
    counts = Counter((job.kind, job.company or NO_COMPANY) for job in running)

    def capped(kind: JobKind, company: str) -> bool:
        ceiling = ceilings.get(kind)
        return ceiling is not None and counts[kind, company] >= ceiling

    return capped


def describe_companies(waiting: Mapping[tuple[JobKind, str], int],
                       running: Mapping[tuple[JobKind, str], int], share: FairShare,
                       top: int = TOP_COMPANIES) -> dict[str, Any]:
    """Per kind, the companies with work: waiting, running, weight, share of running, fair share.

    ``share`` is the company's part of the kind's running jobs now; ``fair_share`` what its
    weight entitles it to among the companies with work of the kind. The ``top`` busiest
    by name; the others summed as ``(others)``.
    """
    view: dict[str, Any] = {}
    for kind in JobKind:
        names = {c for (k, c) in (*waiting, *running) if k == kind}
        total_running = sum(running.get((kind, c), 0) for c in names)
        total_weight = sum(share.weight(c) for c in names) or 1.0
        rows = sorted(names, key=lambda c: (-(waiting.get((kind, c), 0)
                                              + running.get((kind, c), 0)), c))
        companies: dict[str, Any] = {}
        for position, company in enumerate(rows):
            name = company if position < top else OTHER
            row = companies.setdefault(name, {"waiting": 0, "running": 0, "weight": 0.0,
                                              "share": 0.0, "fair_share": 0.0})
            row["waiting"] += waiting.get((kind, company), 0)
            row["running"] += running.get((kind, company), 0)
            row["weight"] = share.weight(company) if name != OTHER else 0.0
            row["fair_share"] = round(row["fair_share"] + share.weight(company) / total_weight,
                                      4)
        for row in companies.values():
            row["share"] = round(row["running"] / total_running, 4) if total_running else 0.0
        view[kind.value] = {"companies": companies, "count": len(names)}
    return view
