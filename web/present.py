"""How jobs, submissions and waits look on the wire (the seed README's shapes).

Times are ISO-8601 UTC strings with milliseconds and a ``Z`` (what the Node backend's
``Date.toISOString`` produced). A wait is a human range such as ``"10-30 seconds"`` or
``"4-10 minutes"``: from half to one and a half times the estimate, rounded outwards,
never ``NaN``.

A job's ``lastError`` is a short category for its owner (``"timed out"``, ``"rejected by
the processing service"``, ...: ``ERROR_CATEGORIES``) and the full text only for admins:
the Python API's own error text can name its internals (paths, hosts, stack traces).
Python API addresses are shown redacted (``actors.runtime.redact``), and not at all where the
caller may be anonymous (``instances_json(..., addresses=False)`` for ``/health``).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from flask import Response, has_request_context, jsonify

from actors.model.jobs import Job, JobState, thaw
from actors.results.writer import STORE_FAILED_PREFIX
from actors.runtime.redact import redact_url
from web.auth import current_principal
from web.stream_tokens import events_links

if TYPE_CHECKING:
    from actors.system import Submission

LOW, HIGH = 0.5, 1.5

TIMED_OUT = "timed out"
SERVICE_FAILED = "the processing service failed"
REJECTED = "rejected by the processing service"
INTERRUPTED = "interrupted"
CANCELLED = "cancelled"
ERROR_CATEGORIES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), category) for pattern, category in (
        (r"^DeadlineExceeded\b", TIMED_OUT),
        (r"^(interrupted\b|WorkerCrashed\b)", INTERRUPTED),
        (r"^\w+: .*\b(cut|not called): (shutting down|presumed dead)", INTERRUPTED),
        (r"^cancel", CANCELLED),
        (r"^PermanentCallFailure: unknown company\b", "unknown company"),
        (r"^CompanyLookupFailed\b", "the company could not be looked up"),
        (r"^PermanentCallFailure: .* answered 4\d\d\b", REJECTED),
        (r"^\w+: .* answered 429\b", "the processing service was busy"),
        (r"^\w+: .* unreachable\b", "the processing service could not be reached"),
        (r"^(PermanentCallFailure|RetryableCallFailure)\b", SERVICE_FAILED),
        (rf"^{re.escape(STORE_FAILED_PREFIX)}", "the result could not be stored"),
    ))
"""The first pattern that matches a job's error text gives what its owner sees."""
OTHER_ERROR = "failed"


def iso(timestamp: float | None) -> str | None:
    """Return epoch seconds as ``2024-01-01T00:00:00.000Z`` (``None`` stays ``None``)."""
    if timestamp is None or not math.isfinite(timestamp):
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def wait_range(seconds: float | None) -> str:
    """Return a human range around ``seconds`` (``"under 10 seconds"`` ... ``"1-3 hours"``)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        seconds = 0.0
    low, high = seconds * LOW, seconds * HIGH
    for unit, size, step, limit in (("seconds", 1, 5, 60), ("minutes", 60, 1, 3600)):
        if high < limit:
            lo = math.floor(low / size / step) * step
            hi = max(math.ceil(high / size / step) * step, lo + step)
            return _range(lo, hi, unit)
    lo, hi = math.floor(low / 3600), math.ceil(high / 3600)
    return _range(lo, max(hi, lo + 1), "hours")


def _range(lo: int, hi: int, unit: str) -> str:
    if lo <= 0:
        return f"under {hi} {unit[:-1] if hi == 1 else unit}"
    return f"{lo}-{hi} {unit}"


def error_category(text: str | None) -> str | None:
    """Return the short category of a job's error text (``None`` stays ``None``)."""
    if text is None:
        return None
    return next((category for pattern, category in ERROR_CATEGORIES if pattern.search(text)),
                OTHER_ERROR)


def shown_error(job: Job, full: bool | None = None) -> str | None:
    """Return ``job``'s last error as the caller may see it.

    ``full``: the whole text (admins) or only its category; ``None`` asks the current
    request's caller (an admin sees the text; outside a request, the category).
    """
    if full is None:
        full = has_request_context() and current_principal().is_admin
    return job.last_error if full else error_category(job.last_error)


def job_json(job: Job, queue_position: int | None = None, *,
             full_error: bool | None = None) -> dict[str, Any]:
    """Return the public view of ``job`` (``GET /api/queue/jobs/<kind>/<id>``).

    ``lastError`` is ``shown_error(job, full_error)``: the category unless an admin asks.
    """
    finished = iso(job.finished_at)
    return {
        "id": job.id,
        "type": job.kind.value,
        "status": job.state.value,
        "priority": job.priority,
        "createdAt": iso(job.created_at),
        "startedAt": iso(job.started_at),
        "completedAt": finished if job.state is JobState.COMPLETED else None,
        "failedAt": finished if job.state is JobState.FAILED else None,
        "cancelledAt": finished if job.state is JobState.CANCELLED else None,
        "nextAttemptAt": iso(job.next_attempt_at) if job.state is JobState.RETRYING else None,
        "attempts": job.attempts,
        "maxAttempts": job.max_attempts,
        "queuePosition": queue_position,
        "lastError": shown_error(job, full_error),
        "result": thaw(job.result) if job.result is not None else None,
        "data": thaw(job.data),
    }


def location(job: Job) -> str:
    """Return the path where ``job`` can be read."""
    return f"/api/queue/jobs/{job.kind.value}/{job.id}"


def accepted(submission: Submission, message: str) -> Response:
    """Return the 202 reply to an accepted submission, with a ``Location`` header.

    ``data.eventsUrl`` follows the job live (``web.events``); with authentication on it
    carries a stream token good for 10 minutes (``data.eventsToken``, ``web.stream_tokens``).
    """
    wait_s = submission.estimated_wait_s
    wait_s = wait_s if wait_s is not None and math.isfinite(wait_s) and wait_s >= 0 else 0.0
    response = jsonify({
        "success": True,
        "message": message,
        "data": {
            "jobId": submission.job.id,
            "type": submission.job.kind.value,
            "queuePosition": submission.queue_position,
            "estimatedWaitTime": wait_range(wait_s),
            "estimatedWaitSeconds": round(wait_s, 1),
            # queued; processing only for a retry that just stores a kept result again
            "status": submission.job.state.value,
            # Where to follow it live (web.events), with a short-lived stream token in the
            # URL for EventSource (web.stream_tokens): never the caller's API token.
            **events_links(submission.job),
        },
    })
    response.status_code = 202
    response.headers["Location"] = location(submission.job)
    if submission.replayed:  # the Idempotency-Key's job, answered again (web.idempotency)
        response.headers["Idempotent-Replayed"] = "true"
    return response


def instances_json(snapshot: dict[str, Any], *, addresses: bool = True
                   ) -> list[dict[str, Any]]:
    """Return each Python API instance: number, state, in-flight by kind, memory reading.

    ``addresses``: with each one's address (redacted); without, for anonymous callers.
    """
    shown = []
    for number, item in enumerate(snapshot.get("instances", []), start=1):
        entry: dict[str, Any] = {"instance": number}
        if addresses:
            entry["url"] = redact_url(str(item.get("url")))
        entry.update({
            "state": item.get("state"), "inFlight": item.get("in_flight", {}),
            "limits": item.get("limits", {}), "memoryMb": item.get("memory_mb"),
            "capacity": _capacity_json(item.get("capacity") or {}),
            "status": item.get("status", "unknown"),
            "reachable": bool(item.get("reachable", False))})
        shown.append(entry)
    return shown


def _capacity_json(capacity: dict[str, Any]) -> dict[str, Any]:
    """Return an instance's capacity: its limit (both kinds), why it last moved, when."""
    return {"adaptive": bool(capacity.get("adaptive", False)), "limit": capacity.get("limit"),
            "reason": capacity.get("reason"), "movedSecondsAgo": capacity.get("moved_s_ago"),
            "lastSignal": capacity.get("last_signal"),
            "coolingSeconds": capacity.get("cooling_s", 0.0),
            "baselineSeconds": capacity.get("baseline_s", {})}
