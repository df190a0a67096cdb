"""The job model: kinds, states, the legal transitions, and the immutable job record.

State machine (DESIGN.md §3)::

    queued ──► processing ──► completed
      │  ▲          │  └────► failed
      │  │          ▼
      │  └──── retrying
      ▼             │
    cancelled ◄─────┘

A finished job (completed, failed, cancelled) may be re-queued by an explicit
retry of a failed job (``failed -> queued``), which an operator asks for.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.model.idempotency import IdempotencyKey


class JobKind(StrEnum):
    """What a job asks the Python API to do."""

    VIDEO = "video"
    """Transcribe and index one video (minutes)."""
    QA = "qa"
    """Answer one question (seconds, a person is waiting)."""


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    """Waiting for a free slot."""
    PROCESSING = "processing"
    """An attempt is running at the Python API."""
    RETRYING = "retrying"
    """An attempt failed; waiting out the backoff before the next one."""
    COMPLETED = "completed"
    """Finished with a result."""
    FAILED = "failed"
    """Finished without a result; attempts used up or a permanent failure."""
    CANCELLED = "cancelled"
    """Withdrawn before it ran (or between attempts)."""

    @property
    def finished(self) -> bool:
        """Whether the job has reached a terminal state."""
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.PROCESSING, JobState.RETRYING})
WAITING_STATES = frozenset({JobState.QUEUED, JobState.RETRYING})
"""The states in which a job takes a place in its kind's waiting queue."""

LEGAL_TRANSITIONS: Mapping[JobState, frozenset[JobState]] = MappingProxyType(
    {
        JobState.QUEUED: frozenset({JobState.PROCESSING, JobState.CANCELLED}),
        JobState.PROCESSING: frozenset(
            {JobState.COMPLETED, JobState.FAILED, JobState.RETRYING, JobState.QUEUED}
        ),
        JobState.RETRYING: frozenset({JobState.QUEUED, JobState.CANCELLED, JobState.FAILED}),
        JobState.COMPLETED: frozenset(),
        JobState.FAILED: frozenset({JobState.QUEUED}),
        JobState.CANCELLED: frozenset(),
    }
)
"""Allowed ``from -> to`` moves. ``processing -> queued`` is the crash-recovery re-queue."""


def is_legal(source: JobState, target: JobState) -> bool:
    """Tell whether a job may move from ``source`` to ``target``."""
    return target in LEGAL_TRANSITIONS[source]


def new_job_id() -> str:
    """Return a fresh job id, unique across kinds, processes and restarts."""
    return uuid.uuid4().hex


def freeze(value: Any) -> Any:
    """Return a deep read-only copy of JSON-like data (pykka messages are not copied)."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Return plain JSON-ready data (dicts and lists) from frozen data."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class Job:
    """One job's full record; immutable, changed with ``dataclasses.replace``.

    Times are wall-clock seconds since the epoch (``None`` until they happen).
    """

    id: str
    kind: JobKind
    priority: int
    data: Mapping[str, Any] = field(default_factory=_empty)
    owner: str | None = None
    state: JobState = JobState.QUEUED
    attempts: int = 0
    max_attempts: int = 3
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    next_attempt_at: float | None = None
    last_error: str | None = None
    result: Mapping[str, Any] | None = None
    dedupe_key: str | None = None
    seq: int = 0
    """Arrival order, used for FIFO within a priority; kept across retries."""
    retry_delays_s: tuple[float, ...] = ()
    """The backoff actually scheduled before each retry, in order (the recorded schedule)."""
    vtime: float | None = field(default=None, compare=False)
    """Its tag in the fair order between companies (actors/dispatch/fairness.py), given once
    when it is first queued and kept across retries; ``None`` until then. The local queue's
    alone: the PostgreSQL store keeps it in a column, the record never holds it."""
    idempotency: IdempotencyKey | None = field(default=None, compare=False)
    """A new job's ``Idempotency-Key``: stored beside the job, in the same transaction, by
    ``store.add``; not part of the record (a job read back has ``None``)."""

    @property
    def company(self) -> str | None:
        """The company the job is for, casefolded (tenancy and per-company bounds), if any."""
        name = self.data.get("company_name")
        return name.casefold() if isinstance(name, str) and name else None

    def replace(self, **changes: Any) -> Job:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Return plain data for JSON, REPLs and stores."""
        return {
            "id": self.id,
            "kind": self.kind.value,
            "priority": self.priority,
            "data": thaw(self.data),
            "owner": self.owner,
            "state": self.state.value,
            "attempts": self.attempts,
            "max_attempts": self.max_attempts,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "next_attempt_at": self.next_attempt_at,
            "last_error": self.last_error,
            "result": thaw(self.result) if self.result is not None else None,
            "dedupe_key": self.dedupe_key,
            "seq": self.seq,
            "retry_delays_s": list(self.retry_delays_s),
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Job:
        """Rebuild a job from ``to_dict`` output."""
        return cls(
            id=str(raw["id"]),
            kind=JobKind(raw["kind"]),
            priority=int(raw["priority"]),
            data=freeze(raw.get("data") or {}),
            owner=raw.get("owner"),
            state=JobState(raw["state"]),
            attempts=int(raw.get("attempts", 0)),
            max_attempts=int(raw.get("max_attempts", 3)),
            created_at=float(raw.get("created_at", 0.0)),
            started_at=raw.get("started_at"),
            finished_at=raw.get("finished_at"),
            next_attempt_at=raw.get("next_attempt_at"),
            last_error=raw.get("last_error"),
            result=freeze(raw["result"]) if raw.get("result") is not None else None,
            dedupe_key=raw.get("dedupe_key"),
            seq=int(raw.get("seq", 0)),
            retry_delays_s=tuple(raw.get("retry_delays_s") or ()),
        )

    def __repr__(self) -> str:
        return (
            f"<Job {self.id[:8]} {self.kind.value} p{self.priority} {self.state.value}"
            f" attempts={self.attempts}/{self.max_attempts}>"
        )


@dataclass(frozen=True, slots=True)
class KeyedJob:
    """What a store holds under a live key: the first request's fingerprint and its job."""

    fingerprint: str
    job: Job


@dataclass(frozen=True, slots=True)
class Replayed:
    """The JobRegistry's answer to a submission whose key names a job already: that job."""

    job: Job


def dumps(job: Job) -> str:
    """Serialise a job to JSON text."""
    return json.dumps(job.to_dict(), separators=(",", ":"), sort_keys=True)
