"""The shapes of the JSON responses, as pydantic models, for the OpenAPI document.

Requests are validated by ``web.models``; responses are built as plain dicts by
``web.present``, ``web.queue``, ``web.health`` and ``web.dashboard``, and described here.
The schemathesis test checks every response against these shapes, so a view that
changes what it answers and not this module fails the suite. Fields that are absent
rather than ``null`` (``details``) are optional.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Kind = Literal["video", "qa"]
State = Literal["queued", "processing", "retrying", "completed", "failed", "cancelled"]


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorResponse(_Doc):
    """Every error: ``{success: false, error, details?, data?}``."""

    success: Literal[False]
    error: str = Field(description="What went wrong, for a person.")
    details: list[dict[str, Any]] | None = Field(
        None, description="400: every problem as {field, message}; 500 in development: "
                          "{type, message}.")
    data: dict[str, Any] | None = Field(
        None, description="409 duplicate: {jobId} of the job already queued for this video.")


class AcceptedData(_Doc):
    """Where an accepted job stands."""

    jobId: str
    type: Kind
    queuePosition: int = Field(description="1-based among waiting jobs of its kind; 0 when a "
                                           "worker already has it; -1 when it is stored but "
                                           "its place was not known in time.")
    estimatedWaitTime: str = Field(description="A human range, e.g. '10-30 seconds'.")
    estimatedWaitSeconds: float
    status: State = Field(
        description="queued; processing when a retry only stores a result kept on the job. "
                    "A replayed submission (Idempotent-Replayed: true) shows its job's "
                    "current status.")
    eventsUrl: str = Field(description="Follow the job live (text/event-stream); with "
                                       "authentication on it carries a stream token.")
    eventsToken: str | None = Field(description="That stream token (10 minutes, this "
                                                "caller's jobs only); null without auth.")


class EventsToken(_Doc):
    """A stream token for ``?access_token=`` (``web.stream_tokens``)."""

    token: str | None = Field(description="null when authentication is off.")
    expiresIn: int = Field(description="Seconds it stays valid.")
    expiresAt: str | None
    eventsUrl: str = Field(description="The caller's own stream, with the token.")


class EventsTokenReply(_Doc):
    """``POST /api/queue/events/token``."""

    success: Literal[True]
    data: EventsToken


class Accepted(_Doc):
    """202: the job is stored and queued; ``Location`` says where to read it."""

    success: Literal[True]
    message: str
    data: AcceptedData


class Job(_Doc):
    """One job (``GET /api/queue/jobs/{kind}/{job_id}``)."""

    id: str
    type: Kind
    status: State
    priority: int = Field(description="1 high .. 3 low.")
    createdAt: str | None
    startedAt: str | None
    completedAt: str | None
    failedAt: str | None
    cancelledAt: str | None
    nextAttemptAt: str | None
    attempts: int
    maxAttempts: int
    queuePosition: int | None
    lastError: str | None = Field(description="Why the last attempt failed: a short category "
                                  "(\"timed out\", \"rejected by the processing service\", "
                                  "...) for its owner, the full text for admins.")
    result: Any = Field(description="The Python API's answer once completed.")
    data: dict[str, Any] = Field(description="What the job was submitted with.")


class JobReply(_Doc):
    """One job."""

    success: Literal[True]
    data: Job


class JobCancelled(_Doc):
    """The cancelled job."""

    success: Literal[True]
    message: str
    data: Job


class JobList(_Doc):
    """Jobs, newest first."""

    success: Literal[True]
    data: list[Job]


class QueueCounts(_Doc):
    """One kind's queue."""

    waiting: int
    activeJobs: int
    abandonedCalls: int | None = Field(None, description="Calls past their deadline that the "
                                       "Python API is still processing; each keeps its slot "
                                       "until it answers or its hold ends. Admins only: other "
                                       "callers' counts leave other companies' calls out.")
    retrying: int
    completed: int
    failed: int
    cancelled: int
    maxConcurrent: int | None
    concurrencyLimit: int | None = Field(None, description="How many of the kind may be in "
                                         "flight now on all Python API instances together: "
                                         "the adaptive limit (QUEUE_ADAPTIVE_CONCURRENCY), or "
                                         "maxConcurrent per instance with static limits.")
    adaptiveConcurrency: bool = False
    maxWaiting: int | None
    paused: bool
    pauseReasons: list[str] = Field(description="operator, memory (with the postgres store: "
                                                "memory@<instance id> of the instance that "
                                                "paused).")
    avgDurationSeconds: float | None
    maxConcurrentPerCompany: int | None = Field(
        None, description="At most this many of one company's jobs of the kind run at once "
                          "(QUEUE_MAX_CONCURRENT_*_PER_COMPANY); null: no ceiling.")


class CompanyShare(_Doc):
    """One company's part of a kind's queue (README, Fair share between companies)."""

    waiting: int = Field(description="Queued or retrying.")
    running: int
    weight: float = Field(description="QUEUE_COMPANY_WEIGHTS (1 unless set); 0 for (others).")
    share: float = Field(description="Its part of the kind's running jobs now (0..1).")
    fairShare: float = Field(description="What its weight entitles it to among the companies "
                                         "with work of the kind (0..1).")


class KindShares(_Doc):
    """The companies with work of one kind."""

    count: int = Field(description="How many companies have work of the kind.")
    companies: dict[str, CompanyShare] = Field(
        description="The busiest 20 by name; the rest summed as \"(others)\".")


class PythonMemory(_Doc):
    """The Python API's last memory reading."""

    memoryMb: float | None
    status: str
    reachable: bool


class Memory(_Doc):
    """Memory readings and thresholds."""

    processRssMb: float | None
    python: PythonMemory
    thresholdMb: float | None
    maxMemoryMb: float | None
    pressure: bool
    admissionRefused: bool
    checkedAt: str | None


class Capacity(_Doc):
    """A Python API instance's capacity, both kinds together."""

    adaptive: bool
    limit: int | None = Field(description="Calls of both kinds the instance may have now.")
    reason: str | None = Field(description="Why the limit last moved.")
    movedSecondsAgo: float | None = None
    lastSignal: str | None = Field(None, description="The last overload signal (429/503/"
                                   "5xx, timeout, memory warning), even one that did not move "
                                   "the limit (already at its minimum, or one cut per round).")
    coolingSeconds: float | None = Field(None, description="How long the instance takes no "
                                         "new call (its Retry-After).")
    baselineSeconds: dict[str, float | None] = Field(
        default_factory=dict, description="Each kind's minimum latency (the baseline).")


class PythonInstance(_Doc):
    """One Python API instance."""

    instance: int = Field(description="Its place in PYTHON_API_BASE_URL, from 1.")
    url: str | None = Field(None, description="Its address, credentials shown as ***; absent "
                                              "in /health, which anyone may read.")
    state: str | None
    inFlight: dict[str, int]
    limits: dict[str, int] = Field(description="Per kind: how many calls it may have now.")
    capacity: Capacity | None = None
    memoryMb: float | None
    status: str
    reachable: bool


class SharedQueueInfo(_Doc):
    """This instance's view of the shared queue (``QUEUE_STORE=postgres``)."""

    instanceId: str = Field(description="host:pid:random; names the holder of a lease.")
    listening: bool = Field(description="Whether NOTIFY wake-ups arrive (else polling only).")
    claimed: int = Field(description="Jobs this instance claimed since it started.")
    reaped: int = Field(description="Expired leases this instance took back.")
    storeFailures: int
    runningEverywhere: dict[str, int] = Field(description="Jobs holding a slot, per kind, on "
                                                          "every instance together.")
    limitEverywhere: dict[str, int] = Field(description="The global per-kind limit.")


class QueueStatus(_Doc):
    """Per-kind counts, limits, pause state and memory."""

    timestamp: str | None
    accepting: bool
    draining: bool
    queues: dict[str, QueueCounts]
    memory: Memory
    pythonInstances: list[PythonInstance] | None = Field(
        None, description="Admins only (the instances serve every company).")
    companies: list[str] | None = Field(
        None, description="Not for admins: the caller's companies, whose jobs the counts are.")
    sharedQueue: SharedQueueInfo | None = Field(
        None, description="Present with the postgres store: counts in queues are then global, "
                          "activeJobs this instance's.")
    fairShare: dict[str, KindShares] | None = Field(
        None, description="Admins only: per kind, the companies with work, their weights and "
                          "shares (with the postgres store, of every instance).")


class QueueStatusReply(_Doc):
    """``GET /api/queue/status``."""

    success: Literal[True]
    data: QueueStatus


class MonitorStatus(QueueStatus):
    """The status with a one-line summary."""

    summary: str


class MonitorReply(_Doc):
    """``GET /api/queue/monitor``."""

    success: Literal[True]
    data: MonitorStatus


class KindState(QueueCounts):
    """One kind's queue after a pause or resume."""

    type: Kind


class KindStateReply(_Doc):
    """The queue after pause or resume."""

    success: Literal[True]
    message: str
    data: KindState


class Health(_Doc):
    """``GET /health``: 200 healthy or degraded, 503 unhealthy."""

    status: Literal["healthy", "degraded", "unhealthy"]
    timestamp: str | None
    reasons: list[str]
    health: dict[str, Any] | None = Field(
        None, description="memory, queues, concurrency, pythonInstances, accepting, "
                          "draining, supabase (absent when the core did not answer).")


class Live(_Doc):
    """``GET /health/live``."""

    status: Literal["alive"]
    timestamp: str | None


class Ready(_Doc):
    """``GET /health/ready``."""

    status: Literal["ready", "not ready"]
    reasons: list[str]
    timestamp: str | None


class RunningJob(_Doc):
    """An attempt in flight."""

    id: str
    type: Kind
    company: str | None = Field(description="The job's company_name.")
    owner: str | None = Field(description="The user who submitted it.")
    summary: str | None = Field(description="A video's URL, or a question's first words.")
    attempt: int
    ageSeconds: float
    worker: str | None


class FailedJob(_Doc):
    """A recent failure."""

    id: str
    type: Kind
    company: str | None = Field(description="The job's company_name.")
    owner: str | None = Field(description="The user who submitted it.")
    summary: str | None = Field(description="A video's URL, or a question's first words.")
    attempts: int
    failedAt: str | None
    lastError: str | None


class Dashboard(QueueStatus):
    """What the dashboard shows.

    The admin's status (its Capacity and Companies tables draw ``pythonInstances`` and
    ``fairShare``), with the running jobs, the recent failures and the pools.
    """

    running: list[RunningJob]
    failures: list[FailedJob]
    pools: dict[str, dict[str, Any]]


class DashboardReply(_Doc):
    """``GET /api/queue/dashboard``."""

    success: Literal[True]
    data: Dashboard


class OpenApiDocument(_Doc):
    """This document."""

    openapi: str
    info: dict[str, Any]
    paths: dict[str, Any]


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    ErrorResponse, Accepted, JobReply, JobCancelled, JobList, QueueStatusReply, MonitorReply,
    KindStateReply, Health, Live, Ready, DashboardReply, OpenApiDocument, EventsTokenReply,
)
"""Every model that appears in the document's ``components.schemas``."""
