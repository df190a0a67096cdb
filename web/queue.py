"""Routes on the queues as a whole: status, a monitor line, and operator pause/resume.

Status and monitor need an authenticated caller; pause and resume need an admin (the old
backend let anyone stop the queue for good). An operator pause is lifted only by an
operator resume: the memory watchdog's own pause has its own reason and is untouched.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

from flask import Blueprint, Response, current_app, jsonify

from actors.model.jobs import FINISHED_STATES, JobKind, JobState
from web.auth import current_principal, require_admin, require_user
from web.context import job_system
from web.present import instances_json, iso
from web.tenancy import visible_companies
from web.ttl_cache import TtlCache

logger = logging.getLogger(__name__)

bp = Blueprint("queue", __name__)

OPERATOR = "operator"
KIND_PATH = "/api/queue/<any(video, qa):kind>"
SCOPED_COUNTS_MAX_AGE_S = 1.0
SCOPED_COUNTS_CACHE_SIZE = 4096


def queue_status(snapshot: dict[str, Any]) -> dict[str, Any]:
    """Return the public status of the queues from a job-system snapshot."""
    kinds = {
        name: {
            "waiting": k.get("waiting", 0),
            "activeJobs": k.get("running", 0),
            "abandonedCalls": k.get("abandoned", 0),
            "retrying": k.get("retrying", 0),
            "completed": k.get("completed", 0),
            "failed": k.get("failed", 0),
            "cancelled": k.get("cancelled", 0),
            "maxConcurrent": k.get("max_concurrent"),
            "concurrencyLimit": k.get("limit", k.get("max_concurrent")),
            "adaptiveConcurrency": bool(k.get("adaptive", False)),
            "maxWaiting": k.get("max_waiting"),
            "paused": bool(k.get("paused", False)),
            "pauseReasons": list(k.get("pause_reasons", [])),
            "avgDurationSeconds": k.get("avg_duration_s"),
            "maxConcurrentPerCompany": k.get("max_concurrent_per_company"),
        }
        for name, k in snapshot.get("kinds", {}).items()
    }
    memory = snapshot.get("memory", {})
    python = memory.get("python_api", {})
    return {
        "timestamp": iso(time.time()),
        "accepting": bool(snapshot.get("accepting", False)),
        "draining": bool(snapshot.get("draining", False)),
        "queues": kinds,
        "memory": {
            "processRssMb": memory.get("process_rss_mb"),
            "python": {"memoryMb": python.get("memory_mb"),
                       "status": python.get("status", "unknown"),
                       "reachable": bool(python.get("reachable", False))},
            "thresholdMb": memory.get("threshold_mb"),
            "maxMemoryMb": memory.get("max_memory_mb"),
            "pressure": bool(memory.get("pressure", False)),
            "admissionRefused": bool(memory.get("admission_refused", False)),
            "checkedAt": iso(memory.get("checked_at")),
        },
        "pythonInstances": instances_json(snapshot),
        "sharedQueue": shared_queue_json(snapshot),
        "fairShare": fair_share_json(snapshot),
    }


def fair_share_json(snapshot: dict[str, Any]) -> dict[str, Any] | None:
    """Per kind, the companies with work: waiting, running, weight, shares (bounded)."""
    view = snapshot.get("companies")
    if view is None:
        return None
    return {kind: {"count": shares["count"],
                   "companies": {name: {"waiting": row["waiting"], "running": row["running"],
                                        "weight": row["weight"], "share": row["share"],
                                        "fairShare": row["fair_share"]}
                                 for name, row in shares["companies"].items()}}
            for kind, shares in view.items()}


def shared_queue_json(snapshot: dict[str, Any]) -> dict[str, Any] | None:
    """Return this instance's view of the shared queue, or ``None`` with a local store."""
    shared = snapshot.get("shared_queue")
    if not shared:
        return None
    kinds = snapshot.get("kinds", {})
    return {
        "instanceId": shared["instance_id"],
        "listening": bool(shared["listening"]),
        "claimed": shared["claimed"],
        "reaped": shared["reaped"],
        "storeFailures": shared["store_failures"],
        "runningEverywhere": {name: k.get("running_everywhere", 0) for name, k in kinds.items()},
        "limitEverywhere": {name: k.get("limit_everywhere", 0) for name, k in kinds.items()},
    }


def summary_line(status: dict[str, Any]) -> str:
    """Return a one-line summary of ``queue_status`` output for logs."""
    parts = []
    for name, q in status["queues"].items():
        paused = " PAUSED(" + ",".join(q["pauseReasons"]) + ")" if q["paused"] else ""
        parts.append(f"{name}: waiting={q['waiting']} active={q['activeJobs']}/"
                     f"{q['maxConcurrent']} retrying={q['retrying']} done={q['completed']} "
                     f"failed={q['failed']}{paused}")
    memory = status["memory"]
    rss = memory["processRssMb"]
    python = memory["python"]
    parts.append(f"memory: rss={'?' if rss is None else f'{rss:.0f}'}MB "
                 f"python={python['memoryMb'] if python['memoryMb'] is not None else '?'}MB "
                 f"({python['status']}){' PRESSURE' if memory['pressure'] else ''}")
    if status["draining"]:
        parts.append("DRAINING")
    return " | ".join(parts)


@bp.get("/api/queue/status")
@require_user
def status() -> Response:
    """Return per-kind counts, limits, pause state and memory readings.

    An admin sees every company's counts; anyone else those of their own companies.
    """
    return jsonify({"success": True, "data": _scoped(queue_status(job_system().snapshot()))})


@bp.get("/api/queue/monitor")
@require_user
def monitor() -> Response:
    """Log a one-line summary of the queues and return it with the full status."""
    data = _scoped(queue_status(job_system().snapshot()))
    line = summary_line(data)
    logger.info("queue monitor: %s", line)
    return jsonify({"success": True, "data": {"summary": line, **data}})


def _scoped(status: dict[str, Any]) -> dict[str, Any]:
    """Replace the job counts by the caller's companies' own unless the caller is an admin.

    Limits, pauses and memory stay: they say why the caller's jobs wait. The counts come
    from the job store, read at most once per ``SCOPED_COUNTS_MAX_AGE_S`` for one set of
    companies (clients poll this).
    """
    companies = visible_companies()
    if companies is None:
        return status
    counts = _company_counts(tuple(companies))
    for name, queue in status["queues"].items():
        kind = JobKind(name)
        queue["waiting"] = counts[kind, JobState.QUEUED]
        queue["activeJobs"] = counts[kind, JobState.PROCESSING]
        queue["retrying"] = counts[kind, JobState.RETRYING]
        for state in FINISHED_STATES:
            queue[state.value] = counts[kind, state]
        queue.pop("abandonedCalls", None)  # the Python API's calls of every company
    status["companies"] = companies
    status.pop("pythonInstances", None)
    status.pop("sharedQueue", None)
    status.pop("fairShare", None)  # other companies' names and counts
    return status


def _company_counts(companies: tuple[str, ...]) -> Counter[tuple[JobKind, JobState]]:
    cache: TtlCache[tuple[str, ...], Counter[tuple[JobKind, JobState]]] = (
        current_app.extensions.setdefault("qudemo_scoped_counts", TtlCache(
            SCOPED_COUNTS_MAX_AGE_S, SCOPED_COUNTS_CACHE_SIZE)))
    return cache.get_or_compute(companies, lambda: job_system().company_counts(companies))


@bp.post(KIND_PATH + "/pause")
@require_admin
def pause(kind: str) -> Response:
    """Stop dispatching jobs of ``kind`` (they keep queueing); admin only."""
    job_system().pause(JobKind(kind), OPERATOR)
    logger.warning("queue %s paused by %s", kind, current_principal().user_id)
    return _kind_state(kind, f"{kind} queue paused")


@bp.post(KIND_PATH + "/resume")
@require_admin
def resume(kind: str) -> Response:
    """Lift the operator pause of ``kind``; admin only."""
    job_system().resume(JobKind(kind), OPERATOR)
    logger.warning("queue %s resumed by %s", kind, current_principal().user_id)
    return _kind_state(kind, f"{kind} queue resumed")


def _kind_state(kind: str, message: str) -> Response:
    queues = queue_status(job_system().snapshot())["queues"]
    return jsonify({"success": True, "message": message, "data": {"type": kind,
                                                                   **queues.get(kind, {})}})
