"""The job store's interface: what the JobRegistry asks of every store.

The registry is the only writer, from its own thread. A store keeps finished
jobs for retention and removes them on request; it never decides state
transitions (that is the registry's job). Implementations: ``memory``
(``MemoryJobStore``), ``sqlite`` (durable, one process) and ``postgres/`` (shared by
every instance, also the shared queue). No store imports another.

Every store also keeps the **event log** of its jobs (``actors.stores.events``): one
event per new job and per change of a job's state, written in the same
transaction as the job, removed with the job. The event methods
(``events_after``, ``last_event_id``, ``watch_events``) are the only ones
called from other threads (the live streams' ``EventFeed`` and request
threads); they never wait for the registry's writes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Protocol

from actors.model.jobs import Job, JobKind, JobState, KeyedJob

if TYPE_CHECKING:
    from actors.model.events import EventList

StateCounts = Counter[tuple[JobKind, JobState]]
JobList = list[Job]  # a name, because the stores' own ``list`` method shadows the builtin


class JobStore(Protocol):
    """Where job records live."""

    shared: bool
    """Whether other processes use the same jobs (then it is also a ``SharedQueue``)."""

    def add(self, job: Job) -> None:
        """Store a new job; when this returns, the job is as durable as the store is.

        A job with an ``idempotency`` key is stored with its key, in one transaction.

        Raises:
            IdempotencyKeyTaken: the key is live and names another job (nothing stored).
        """
        ...

    def keyed_job(self, scope: str, key: str, *, now: float) -> KeyedJob | None:
        """Return the job stored under a key live at ``now`` (and still retained), or ``None``."""
        ...

    def prune_idempotency_keys(self, *, expired_at: float, limit: int) -> int:
        """Remove at most ``limit`` keys that expired by ``expired_at``; return how many."""
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

    # --- the event log: safe from any thread ----------------------------------------

    def events_after(self, after_id: int, *, job_id: str | None = None,
                     owner: str | None = None, limit: int = 500) -> EventList:
        """Return events with an id above ``after_id``, oldest first, at most ``limit``.

        Optionally only one job's, or one owner's. Only events up to ``last_event_id()``
        are returned: an event with a smaller id can never appear after this answer
        (so a reader that goes on from the last id it got misses nothing). Callable
        from any thread; never waits for the registry's writes.
        """
        ...

    def last_event_id(self) -> int:
        """Return the horizon: every event up to this id is readable, none below will come.

        Monotonic; 0 before the first event. Callable from any thread.
        """
        ...

    def watch_events(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each change this process writes (cheap, must not block).

        Changes other processes write (the shared store) are found by polling.
        """
        ...
