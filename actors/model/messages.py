"""Every message between the actors: frozen, slotted, keyword-only dataclasses.

Commands are imperative (``AddJob``, ``RunJob``, ``Pause``); events are past
tense (``JobSucceeded``, ``JobFailed``, ``WorkerCrashed``). Fields hold
immutable values (jobs are frozen, data is frozen with ``jobs.freeze``),
because pykka passes messages by reference. A few messages carry a
``threading.Event``: a synchronisation handle, never mutated state; ``RunJob``
carries an ``AttemptCall``, the one state shared on purpose between the
Dispatcher and a worker, changed only under its own lock (attempts.py).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pykka

from actors.dispatch.attempts import AttemptCall
from actors.model.jobs import Job, JobKind, JobState

# --- JobRegistry ---------------------------------------------------------------------


class SubmitTicket:
    """A submission's fate, shared by its submitter and the JobRegistry (thread-safe).

    Why: a submitter that stops waiting must know whether the job was stored.
    The registry *starts* storing only if the submitter has not given up, and
    the submitter gives up only if storing has not started: a job is either
    refused with nothing stored, or accepted (never "503, but it runs").
    """

    __slots__ = ("_lock", "_state", "stored")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "pending"
        self.stored = threading.Event()  # set once the store has the job

    def start_storing(self) -> bool:
        """Called by the registry before it stores the job; False: the submitter left."""
        with self._lock:
            if self._state != "pending":
                return False
            self._state = "storing"
            return True

    def give_up(self) -> bool:
        """Called by a submitter that waited long enough; False: storing has begun."""
        with self._lock:
            if self._state != "pending":
                return False
            self._state = "abandoned"
            return True


@dataclass(frozen=True, slots=True, kw_only=True)
class AddJob:
    """Admit and store a new job (ask); replies the stored job or a ``SubmissionRefused``.

    With ``reply`` (a tell) the answer goes there instead, and for an accepted job it
    comes from the Dispatcher once the job is in the waiting order: ``(job, (position,
    wait_s) or None)``. One round trip per submission instead of an ask to each actor.
    """

    job: Job
    reply: pykka.Future[Any] | None = None
    ticket: SubmitTicket | None = None
    """Set by a submitter that may give up waiting (see ``SubmitTicket``)."""


@dataclass(frozen=True, slots=True)
class FlushWrites:
    """Write the parked job changes again (tell, from the registry's own timer)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """Move a job to ``target`` (tell); illegal moves are refused and logged."""

    job_id: str
    target: JobState
    at: float
    attempts: int | None = None
    error: str | None = None
    result: Mapping[str, Any] | None = None
    next_attempt_at: float | None = None
    retry_delay_s: float | None = None
    running: Job | None = None
    """The job as its attempt started (an attempt's outcome only): a shared registry writes
    the outcome over it, fenced by the lease, without reading the job back first."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordResult:
    """Keep a processed result on a job still ``processing`` while it is stored (tell).

    Recovery then sends it straight back to storage instead of processing the video again.
    """

    job_id: str
    result: Mapping[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordBatch:
    """Several ``Transition``/``RecordResult`` of one Dispatcher step, in order (tell).

    One message where each would be one (an outcome and the start of the next job
    travel together), written in one store transaction where the store has them.
    """

    messages: tuple[Transition | RecordResult, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RequeueFailed:
    """Give a failed job a fresh attempt budget and queue it again (ask)."""

    job_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GetJob:
    """Return one job or ``None`` (ask)."""

    job_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ListJobs:
    """Return jobs matching the filters, newest first (ask)."""

    kind: JobKind | None = None
    state: JobState | None = None
    owner: str | None = None
    limit: int = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class CountCompanies:
    """Return how many jobs some companies have per (kind, state) (ask)."""

    companies: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class SetAdmission:
    """Refuse (or accept again) new jobs of ``kind`` because of memory pressure (tell)."""

    kind: JobKind
    refused: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class TrimHistory:
    """Drop the oldest finished jobs down to ``keep_fraction`` of them (tell)."""

    keep_fraction: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PurgeExpired:
    """Remove finished jobs past their retention (tell, from a timer)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachDispatcher:
    """Tell the registry where accepted jobs go (tell, once at start)."""

    dispatcher: Any


# --- Dispatcher ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Enqueue:
    """Put stored jobs in the waiting order, all before dispatching any (tell, from the registry).

    Recovery sends every unfinished job in one message, so that the first one
    does not take a free slot before better ones behind it have arrived.
    """

    jobs: tuple[Job, ...]
    reply: pykka.Future[Any] | None = None
    """A submitter waiting for ``(job, (position, wait_s) or None)`` of the one job."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelJob:
    """Withdraw a waiting or retrying job (ask); replies ``True`` if it was withdrawn."""

    job_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause:
    """Stop dispatching jobs of ``kind`` for ``reason`` (tell or ask)."""

    kind: JobKind
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Resume:
    """Withdraw one pause ``reason`` for ``kind`` (tell or ask)."""

    kind: JobKind
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuePosition:
    """Return ``(position, estimated_wait_s)`` of a waiting job, or ``None`` (ask)."""

    job_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class EstimateWait:
    """Return the estimated wait in seconds for ``position`` in ``kind``'s queue (ask)."""

    kind: JobKind
    position: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryDue:
    """A retry's backoff has passed (tell, from a timer)."""

    job_id: str


@dataclass(frozen=True, slots=True)
class Wake:
    """The shared queue may have claimable work: another instance added or freed some (tell)."""


@dataclass(frozen=True, slots=True)
class SharedTick:
    """Take back expired leases, look for work: the shared queue's beat (tell)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Claimed:
    """The shared queue's claim came back (tell, from its I/O thread).

    ``jobs`` are ``processing`` with a lease, in the order to start them; ``asked``
    the kinds the claim was for, and ``short`` those it found fewer jobs of than
    asked (nothing more to take until a wake-up); ``sent`` (monotonic) when the
    claim left, where an abandoned call's hold starts.
    """

    jobs: tuple[Job, ...]
    asked: frozenset[JobKind]
    short: frozenset[JobKind]
    sent: float
    routes: Mapping[str, str]
    """Job id -> the Python API instance the claim chose for it (its slot is there)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reaped:
    """Expired leases of dead instances taken back (tell, from the shared queue's I/O thread)."""

    jobs: tuple[Job, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class PauseWritten:
    """A pause or resume reached the shared queue, or could not (tell, from its I/O thread)."""

    kind: JobKind
    reason: str
    paused: bool
    written: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class LeasesLost:
    """The lease keeper could not renew these jobs' leases: they expired (tell)."""

    job_ids: frozenset[str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Fenced:
    """The lease keeper fenced this instance (``on``) or lifted the fence (tell)."""

    on: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptDeadline:
    """An attempt reached its deadline (tell, from a timer): end it, or hold its call."""

    job_id: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AttemptOverdue:
    """An attempt's worker has not reported long after its deadline or hold (tell, from a timer)."""

    job_id: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Drain:
    """Set ``idle`` once nothing is in progress (tell).

    The Dispatcher also stops dispatching and waits for running jobs; the ResultWriter
    waits for results still to be stored.
    """

    idle: threading.Event


@dataclass(frozen=True, slots=True, kw_only=True)
class StopWorkers:
    """Stop every worker actor and wait for them (ask, at shutdown)."""

    timeout_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class JobSucceeded:
    """A worker finished an attempt with a result (tell)."""

    job_id: str
    worker_id: str
    result: Mapping[str, Any]
    duration_s: float
    instance: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFailed:
    """A worker's attempt failed; failure is data (tell)."""

    job_id: str
    worker_id: str
    error_type: str
    error: str
    retryable: bool
    duration_s: float
    retry_after_s: float | None = None
    instance: str = ""
    broke: bool = False
    """The instance looked broken (connection failure or 5xx): counts for its breaker."""
    status: int | None = None
    """The Python API's HTTP status, when it answered one (the limiter reads 429/503/5xx)."""
    reached_api: bool = True
    """Whether the call was sent (a failure before it says nothing of the Python API)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerCrashed:
    """A worker actor died (tell, from the dying worker)."""

    worker_id: str
    job_id: str | None
    error: str


@dataclass(frozen=True, slots=True, kw_only=True)
class InstanceMemory:
    """A Python API instance's memory reading and whether it is under pressure (tell)."""

    url: str
    memory_mb: float | None
    pressure: bool
    answered: bool
    """Whether the instance answered the reading (the probe of a half-open breaker)."""
    status: str = ""
    """The reading's ``status`` (``ok``, ``warning``, ``critical``; empty when unknown)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckInstances:
    """An open breaker may have turned half-open: try dispatching again (tell, from a timer)."""


# --- Workers -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RunJob:
    """Run one attempt of a job against the Python API (tell)."""

    job_id: str
    data: Mapping[str, Any]
    attempt: int
    call: AttemptCall
    """The attempt's deadline, hold and phase, shared with the Dispatcher (thread-safe)."""
    instance: str
    """The Python API address to call."""


# --- ResultWriter --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreResult:
    """Write a processed job's result to Supabase, then finish the job (tell).

    ``at`` is when the result was produced; retries of the write carry the same
    ``at`` (so the rows written are the same) and the next ``attempt``.
    """

    job: Job
    result: Mapping[str, Any]
    at: float
    attempt: int = 1


# --- MemoryWatchdog ------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckMemory:
    """Take one memory reading and act on it (tell from the timer, or ask from outside)."""

    scheduled: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachWatchdog:
    """Tell the Dispatcher where to ask for probe readings (tell, once at start)."""

    watchdog: Any


# --- Everyone ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RevivePool:
    """Start the missing workers of a pool whose restarts were used up (tell, from a timer)."""

    kind: JobKind


@dataclass(frozen=True, slots=True)
class Ping:
    """Answer ``True`` at once (ask): the liveness probe's "is this actor answering?"."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Inspect:
    """Return this actor's state as plain data (ask)."""
