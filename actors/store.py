"""Job storage behind the JobRegistry: an interface about jobs, and the in-memory store.

The registry is the only caller, from its own thread, so stores need no locks
of their own. A durable store implements the same ``JobStore`` protocol.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from actors.jobs import Job, JobKind, JobState


class JobStore(Protocol):
    """Where job records live: add, update, get, list, counts, remove."""

    def load(self) -> Iterable[Job]:
        """Return every stored job (at start)."""
        ...

    def add(self, job: Job) -> None:
        """Store a new job; when this returns, the job is as durable as the store is."""
        ...

    def update(self, job: Job) -> None:
        """Replace a stored job with its new version."""
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
    ) -> list[Job]:
        """Return matching jobs, newest first."""
        ...

    def remove(self, job_ids: Iterable[str]) -> None:
        """Delete jobs."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


class MemoryJobStore:
    """Jobs in a dict: fast, and gone when the process ends."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}

    def __repr__(self) -> str:
        return f"<MemoryJobStore jobs={len(self._jobs)}>"

    def load(self) -> Iterable[Job]:
        """Return every stored job."""
        return list(self._jobs.values())

    def add(self, job: Job) -> None:
        """Store a new job."""
        self._jobs[job.id] = job

    def update(self, job: Job) -> None:
        """Replace a stored job."""
        self._jobs[job.id] = job

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
    ) -> list[Job]:
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

    def remove(self, job_ids: Iterable[str]) -> None:
        """Delete jobs."""
        for job_id in job_ids:
            self._jobs.pop(job_id, None)

    def close(self) -> None:
        """Nothing to release."""
