"""JSON errors: one table from exception class to HTTP status, and the handlers using it.

Every error leaves as ``{"success": false, "error": "...", "details"?: [...]}``. The
table below is the only place that says which job-system exception is which status;
``Retry-After`` comes from ``SubmissionRefused.retry_after_s``.

No handler is registered for bare ``Exception``: Flask turns an unexpected exception
into ``InternalServerError`` (keeping the original), and the ``HTTPException`` handler
answers it with a JSON 500 whose details appear only in development.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, current_app, jsonify
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, InternalServerError, RequestEntityTooLarge

from actors.model.errors import (
    DuplicateJob,
    IdempotencyKeyReused,
    JobNotFound,
    JobStateConflict,
    JobSystemUnavailable,
    MemoryPressure,
    QueueError,
    QueueFull,
    ShuttingDown,
    StoreUnavailable,
    SubmissionRefused,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """How one exception class is answered."""

    status: int
    retry_after: bool = False


ERROR_TABLE: Mapping[type[BaseException], ErrorSpec] = {
    QueueFull: ErrorSpec(429, retry_after=True),
    MemoryPressure: ErrorSpec(503, retry_after=True),
    ShuttingDown: ErrorSpec(503, retry_after=True),
    DuplicateJob: ErrorSpec(409),
    IdempotencyKeyReused: ErrorSpec(422),
    SubmissionRefused: ErrorSpec(503, retry_after=True),
    JobNotFound: ErrorSpec(404),
    JobStateConflict: ErrorSpec(409),
    JobSystemUnavailable: ErrorSpec(503, retry_after=True),
    StoreUnavailable: ErrorSpec(503, retry_after=True),
    QueueError: ErrorSpec(500),
}
"""Exception class -> answer; looked up along the exception's MRO, most specific first."""

UNAVAILABLE_RETRY_AFTER_S = 5


class ApiError(Exception):
    """An error the web layer raises on purpose, answered with ``status``."""

    status = 400
    default_message = "bad request"

    def __init__(
        self,
        message: str | None = None,
        *,
        details: list[dict[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message or self.default_message)
        self.details = details
        self.headers = dict(headers or {})

    @property
    def message(self) -> str:
        """The human-readable message."""
        return str(self.args[0])


class RequestInvalid(ApiError):
    """The request's body or path failed validation; ``details`` lists every problem.

    Without a message of its own, ``error`` names the first problem (``company_name:
    Field required``, "and 2 more problems" when there are more): clients show ``error``.
    """

    status = 400
    default_message = "validation failed"

    def __init__(self, message: str | None = None, *,
                 details: list[dict[str, str]] | None = None,
                 headers: Mapping[str, str] | None = None) -> None:
        if message is None and details:
            message = problem_summary(details)
        super().__init__(message, details=details, headers=headers)


def problem_summary(details: list[dict[str, str]]) -> str:
    """One line naming the first problem of ``details`` and how many more there are."""
    first = details[0]
    text = f"{first.get('field', 'body')}: {first.get('message', 'is invalid')}"
    more = len(details) - 1
    if more:
        text += f" (and {more} more problem{'s' if more > 1 else ''}: see details)"
    return text


class AuthRequired(ApiError):
    """The bearer token is missing, invalid or expired."""

    status = 401
    default_message = "authentication required"


class NotAllowed(ApiError):
    """The caller is authenticated but lacks the admin role."""

    status = 403
    default_message = "this operation needs the admin role"


def error_response(
    status: int,
    error: str,
    *,
    details: Any = None,
    data: Any = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Build the JSON error response every failure uses."""
    body: dict[str, Any] = {"success": False, "error": error}
    if details is not None:
        body["details"] = details
    if data is not None:
        body["data"] = data
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def spec_for(exc: BaseException) -> ErrorSpec | None:
    """Return the table entry for ``exc`` (most specific class first), or ``None``."""
    for cls in type(exc).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return None


def validation_details(exc: ValidationError, names: Mapping[str, str]) -> list[dict[str, str]]:
    """Turn pydantic errors into ``[{field, message}]`` with canonical field names."""
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        loc = [names.get(str(part), str(part)) for part in error["loc"]]
        message = str(error["msg"]).removeprefix("Value error, ")
        details.append({"field": ".".join(loc) or "body", "message": message})
    return details


def register_error_handlers(app: Flask) -> None:
    """Install the JSON handlers on ``app``."""
    app.register_error_handler(QueueError, _queue_error)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(ValidationError, _pydantic_error)
    app.register_error_handler(HTTPException, _http_error)


def _queue_error(exc: QueueError) -> Response:
    spec = spec_for(exc) or ErrorSpec(500)
    headers: dict[str, str] = {}
    if spec.retry_after:
        seconds = getattr(exc, "retry_after_s", UNAVAILABLE_RETRY_AFTER_S)
        headers["Retry-After"] = str(max(1, math.ceil(seconds)))
    data = {"jobId": exc.existing_job_id} if isinstance(exc, DuplicateJob) else None
    if spec.status >= 500 and not spec.retry_after:
        logger.error("job system error: %s", exc.message)
    return error_response(spec.status, exc.message, data=data, headers=headers)


def _api_error(exc: ApiError) -> Response:
    return error_response(exc.status, exc.message, details=exc.details, headers=exc.headers)


def _pydantic_error(exc: ValidationError) -> Response:
    details = validation_details(exc, {})
    return error_response(400, problem_summary(details) if details else "validation failed",
                          details=details)


def _http_error(exc: HTTPException) -> Response:
    status = exc.code or 500
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    if isinstance(exc, InternalServerError) or status >= 500:
        details = None
        original = getattr(exc, "original_exception", None)
        if original is not None and current_app.config.get("QUDEMO_SHOW_ERRORS"):
            details = [{"type": type(original).__name__, "message": str(original)}]
        return error_response(status, "internal server error", details=details, headers=headers)
    return error_response(status, _describe(exc, status), headers=headers)


def _describe(exc: HTTPException, status: int) -> str:
    """A short message: ours when the code gave one, the status phrase otherwise."""
    if isinstance(exc, RequestEntityTooLarge):
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        return f"request body too large (limit {limit} bytes)"
    if status == 429:
        return "too many requests; slow down and retry after the Retry-After delay"
    if exc.description and exc.description != type(exc).description:
        return str(exc.description)
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return "error"
