"""The one exception tree of the job system.

Each class's docstring is its default message; the web layer maps classes to
HTTP statuses in one table (``web/errors.py``)::

    QueueError
    ├── SettingsError            bad configuration (names every bad variable)
    ├── SubmissionRefused        a job was not accepted
    │   ├── QueueFull            the kind's waiting queue is at its bound
    │   ├── MemoryPressure       memory is above QUEUE_MAX_MEMORY_MB
    │   ├── ShuttingDown         the system is draining or stopped
    │   ├── DuplicateJob         the same work is already queued or running
    │   └── IdempotencyKeyReused the Idempotency-Key was used with another request
    ├── JobNotFound              no such job (or not yours)
    ├── JobStateConflict         the job's state does not allow the operation
    ├── UnknownCompany           no such company in Supabase's companies table
    └── JobSystemUnavailable     an actor did not answer in time
        └── ResultStoreUnavailable   Supabase failed or did not answer a request

    CallFailed                   one attempt at the Python API failed (data for retries)
    ├── RetryableCallFailure     5xx, 408, 429, connection errors, timeouts
    │   ├── DeadlineExceeded     the attempt ran past QUEUE_JOB_TIMEOUT_MS
    │   └── CompanyLookupFailed  Supabase failed the company lookup before the call
    └── PermanentCallFailure     other 4xx, "processing failed" answers

    ResultStoreFailed            one Supabase request failed (data for the writer's retries)
    IdempotencyKeyTaken          a store found the new job's key taken (store -> JobRegistry)

``CallFailed`` is not a ``QueueError``: it never leaves a worker as an
exception; workers turn it into a ``JobFailed`` message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.model.jobs import KeyedJob


class QueueError(Exception):
    """The job system refused or failed an operation."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self.args[0])


class SettingsError(QueueError):
    """The configuration is invalid."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration: " + "; ".join(self.problems))


class StoreUnavailable(QueueError):
    """The job store cannot be reached (opened, or answering) right now; try again later."""


class SubmissionRefused(QueueError):
    """The job was not accepted."""

    retry_after_s: float = 5.0


class QueueFull(SubmissionRefused):
    """The waiting queue for this kind of job is full; try again later."""

    retry_after_s = 30.0


class MemoryPressure(SubmissionRefused):
    """Memory is above its limit; new video jobs are refused until it falls."""

    retry_after_s = 60.0


class ShuttingDown(SubmissionRefused):
    """The job system is shutting down and accepts no new jobs."""

    retry_after_s = 10.0


class DuplicateJob(SubmissionRefused):
    """The same work is already queued or processing."""

    def __init__(self, existing_job_id: str, message: str | None = None) -> None:
        self.existing_job_id = existing_job_id
        super().__init__(message)


class IdempotencyKeyReused(SubmissionRefused):
    """This Idempotency-Key was used with another request; use a new key for a new request."""


class IdempotencyKeyTaken(Exception):
    """Another submission (on any instance) stored a job under this Idempotency-Key first.

    Raised by a store's ``add`` (nothing of the new job is stored); the JobRegistry
    answers with ``found``, the job already made under the key (``None``: it was just
    removed, and the submission may be tried again).
    """

    def __init__(self, found: KeyedJob | None) -> None:
        super().__init__("the Idempotency-Key names a job already")
        self.found = found


class JobNotFound(QueueError):
    """No such job."""


class JobStateConflict(QueueError):
    """The job's current state does not allow this operation."""


class UnknownCompany(QueueError):
    """No such company."""


class JobSystemUnavailable(QueueError):
    """The job system did not answer in time."""


class ResultStoreUnavailable(JobSystemUnavailable):
    """Supabase is not available; try again later."""

    retry_after_s: float = 10.0


class CallFailed(Exception):
    """One attempt at the Python API failed."""

    retryable: bool = False

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self.args[0])

    @property
    def breaks_instance(self) -> bool:
        """Whether this says the instance itself is broken (for its circuit breaker)."""
        return False


class RetryableCallFailure(CallFailed):
    """The Python API failed in a way that may pass on a later attempt."""

    retryable = True

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after_s = retry_after_s


    @property
    def breaks_instance(self) -> bool:
        """A connection failure (no status) or a 5xx says the instance is broken."""
        return self.status is None or self.status >= 500


class DeadlineExceeded(RetryableCallFailure):
    """The attempt ran past its hard deadline and was cut."""

    def __init__(self, message: str, *, reached_api: bool = True,
                 abandoned: bool = False) -> None:
        super().__init__(message)
        self.reached_api = reached_api  # False: nothing was sent to the Python API
        self.abandoned = abandoned  # True: the Python API was still at it when we cut

    @property
    def breaks_instance(self) -> bool:
        """A slow answer is not a broken instance: a long video just takes long."""
        return False


class ShutdownCut(RetryableCallFailure):
    """The call was cut because this process is stopping; the Python API may still be at it."""

    @property
    def breaks_instance(self) -> bool:
        """Never: the instance did nothing wrong."""
        return False


class PermanentCallFailure(CallFailed):
    """The Python API refused the job in a way it will repeat."""


class CompanyLookupFailed(RetryableCallFailure):
    """Supabase failed the company lookup before the call; says nothing of the Python API."""

    @property
    def breaks_instance(self) -> bool:
        """Never: the Python API was not called."""
        return False


class ResultStoreFailed(Exception):
    """One request to Supabase failed; ``retryable`` says whether repeating it may pass."""

    def __init__(self, message: str, *, retryable: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self.args[0])
