"""Job storage behind the JobRegistry: an interface about jobs, and the in-memory store.

The registry is the only caller, from its own thread. A store keeps finished
jobs for retention and removes them on request; it never decides state
transitions (that is the registry's job). ``SqliteJobStore`` (sqlite_store.py)
is the durable implementation; a shared PostgreSQL store implements the same
protocol.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Collection, Iterable
from typing import TYPE_CHECKING, Protocol

from actors.jobs import ACTIVE_STATES, FINISHED_STATES, Job, JobKind, JobState

if TYPE_CHECKING:
    from actors.settings import Settings

StateCounts = Counter[tuple[JobKind, JobState]]
JobList = list[Job]  # a name, because the stores' own ``list`` method shadows the builtin


def open_store(settings: Settings) -> JobStore:
    """Open the store ``settings.store`` names (``QUEUE_STORE``)."""
    if settings.store == "memory":
        return MemoryJobStore()
    if settings.store == "postgres":
        from actors.errors import SettingsError
        from actors.pg_store import PostgresJobStore  # psycopg is imported only when used

        problems = settings.database_problems()
        if problems or settings.database_url is None:
            raise SettingsError(problems)
        return PostgresJobStore(settings.database_url,
                                statement_timeout_s=settings.db_statement_timeout_s)
    from actors.sqlite_store import SqliteJobStore  # imported only when used

    return SqliteJobStore(settings.db_path, synchronous=settings.db_synchronous.upper())


class JobStore(Protocol):
    """Where job records live."""

    shared: bool
    """Whether other processes use the same jobs (then it is also a ``SharedQueue``)."""

    def add(self, job: Job) -> None:
        """Store a new job; when this returns, the job is as durable as the store is."""
        ...

    def update(self, job: Job) -> None:
        """Write a job's new version (a claim, a finish, a failure, a retry)."""
        ...

    def get(self, job_id: str) -> Job | None:
        """Return one job, or ``None``."""
        ...

    def list(
        self,
        *,
        kind: JobKind | None = None,
        state: JobState | None = None,
        owner: str | None = None,
        limit: int = 100,
    ) -> JobList:
        """Return matching jobs, newest first."""
        ...

    def active(self) -> JobList:
        """Return every queued, processing or retrying job, oldest first (for recovery)."""
        ...

    def company_counts(self, companies: Collection[str],
                       states: Collection[JobState] | None = None) -> StateCounts:
        """Count the jobs of ``companies`` (casefolded names) per (kind, state).

        ``states`` narrows the count (the waiting states are read from an index).
        """
        ...

    def counts(self) -> StateCounts:
        """Return how many jobs there are per (kind, state)."""
        ...

    def max_seq(self) -> int:
        """Return the highest arrival sequence stored (0 when empty)."""
        ...

    def prune_finished(
        self, *, keep: int | None = None, finished_before: float | None = None,
        limit: int | None = None,
    ) -> StateCounts:
        """Remove finished jobs, oldest finish first: beyond ``keep``, or finished before a time.

        ``limit`` bounds how many one call removes; given alone, the ``limit`` oldest
        finished jobs go. The registry asks only that way, in batches sized from its
        own counts, so no call counts the store's rows; ``keep`` does (for callers
        without counts). Returns how many were removed per (kind, state).
        """
        ...

    def remove(self, job_ids: Iterable[str]) -> None:
        """Delete jobs."""
        ...

    def maintain(self) -> None:
        """Periodic housekeeping (compaction), from the retention timer (every 1 s to 1 min)."""
        ...

    def describe(self) -> dict[str, object]:
        """Return what the store is, for snapshots."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


class MemoryJobStore:
    """Jobs in a dict: fast, and gone when the process ends (``QUEUE_STORE=memory``)."""

    shared = False

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()  # id -> finished_at, in order

    def __repr__(self) -> str:
        return f"<MemoryJobStore jobs={len(self._jobs)}>"

    def add(self, job: Job) -> None:
        """Store a new job."""
        self._jobs[job.id] = job

    def update(self, job: Job) -> None:
        """Replace a stored job."""
        self._jobs[job.id] = job
        if job.state in FINISHED_STATES:
            self._finished[job.id] = job.finished_at or 0.0
        else:
            self._finished.pop(job.id, None)

    def get(self, job_id: str) -> Job | None:
        """Return one job, or ``None``."""
        return self._jobs.get(job_id)

    def list(
        self,
        *,
        kind: JobKind | None = None,
        state: JobState | None = None,
        owner: str | None = None,
        limit: int = 100,
    ) -> JobList:
        """Return matching jobs, newest first."""
        found: list[Job] = []
        for job in reversed(self._jobs.values()):  # dicts keep insertion order
            if (kind is None or job.kind == kind) and (state is None or job.state == state) and (
                owner is None or job.owner == owner
            ):
                found.append(job)
                if len(found) >= limit:
                    break
        return found

    def active(self) -> JobList:
        """Return unfinished jobs, oldest first."""
        return sorted((j for j in self._jobs.values() if j.state in ACTIVE_STATES),
                      key=lambda j: j.seq)

    def counts(self) -> StateCounts:
        """Count jobs per (kind, state)."""
        return Counter((j.kind, j.state) for j in self._jobs.values())

    def company_counts(self, companies: Collection[str],
                       states: Collection[JobState] | None = None) -> StateCounts:
        """Count the jobs of ``companies`` per (kind, state)."""
        wanted = frozenset(companies)
        return Counter((j.kind, j.state) for j in self._jobs.values()
                       if j.company in wanted and (states is None or j.state in states))

    def max_seq(self) -> int:
        """Return the highest arrival sequence stored."""
        return max((j.seq for j in self._jobs.values()), default=0)

    def prune_finished(
        self, *, keep: int | None = None, finished_before: float | None = None,
        limit: int | None = None,
    ) -> StateCounts:
        """Remove the oldest finished jobs (finish order) past ``keep`` or a time, or ``limit``."""
        removed: StateCounts = Counter()
        oldest = keep is None and finished_before is None and limit is not None
        while self._finished and (limit is None or removed.total() < limit):
            job_id, finished_at = next(iter(self._finished.items()))
            too_many = keep is not None and len(self._finished) > keep
            too_old = finished_before is not None and finished_at < finished_before
            if not (oldest or too_many or too_old):
                break
            del self._finished[job_id]
            job = self._jobs.pop(job_id)
            removed[job.kind, job.state] += 1
        return removed

    def remove(self, job_ids: Iterable[str]) -> None:
        """Delete jobs."""
        for job_id in job_ids:
            self._jobs.pop(job_id, None)
            self._finished.pop(job_id, None)

    def maintain(self) -> None:
        """Nothing to compact."""

    def describe(self) -> dict[str, object]:
        """Describe this store."""
        return {"kind": "memory", "jobs": len(self._jobs)}

    def close(self) -> None:
        """Nothing to release."""
