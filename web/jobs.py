"""Routes on single jobs: read, cancel, retry; and a caller's job list.

A job of another owner is answered exactly like a job that does not exist (404), and so is
a job asked for under the other kind (``/jobs/qa/<id of a video job>``).
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import TypeVar

from flask import Blueprint, Response, jsonify, request

from actors.model.errors import JobNotFound
from actors.model.jobs import Job, JobKind, JobState
from web.auth import current_principal, require_user
from web.context import job_system
from web.errors import RequestInvalid
from web.models import EXTERNAL_ID, JOB_ID, check_path_id, query_int, query_value
from web.present import accepted, job_json
from web.tenancy import require_member

logger = logging.getLogger(__name__)

bp = Blueprint("jobs", __name__)
E = TypeVar("E", bound=Enum)

JOB_PATH = "/api/queue/jobs/<any(video, qa):kind>/<job_id>"
MAX_LIST = 500


@bp.get(JOB_PATH)
@require_user
def get_job(kind: str, job_id: str) -> Response:
    """Return one job with its status, timestamps, attempts, error and result."""
    job = _visible_job(kind, job_id)
    position = job_system().queue_position(job.id) if job.state is JobState.QUEUED else None
    return jsonify({"success": True, "data": job_json(job, position)})


@bp.delete(JOB_PATH)
@require_user
def cancel_job(kind: str, job_id: str) -> Response:
    """Cancel a job that is still waiting (queued or retrying); 409 otherwise."""
    job = job_system().cancel(_visible_job(kind, job_id).id)
    # An audit line (who asked), not a lifecycle event: the Dispatcher logs "cancelled".
    logger.info("cancel of job %s requested by %s", job.id, current_principal().user_id)
    return jsonify({"success": True, "message": "Job cancelled", "data": job_json(job)})


@bp.post(JOB_PATH + "/retry")
@require_user
def retry_job(kind: str, job_id: str) -> Response:
    """Queue a failed job again; 409 unless it failed."""
    job = _visible_job(kind, job_id)
    company = job.data.get("company_name")
    if isinstance(company, str):
        require_member(company, job.data.get("company_id"))  # new work: still a member?
    submission = job_system().retry(job.id)
    logger.info("retry of job %s requested by %s", job_id, current_principal().user_id)
    return accepted(submission, "Job queued again")


@bp.get("/api/queue/jobs")
@require_user
def list_jobs() -> Response:
    """List the caller's jobs (an admin's: everyone's, or one ``owner``'s), newest first."""
    principal = current_principal()
    args = request.args
    problems: list[dict[str, str]] = []
    by_type, by_kind = (_enum(JobKind, query_value(args, name, problems), name, problems)
                        for name in ("type", "kind"))
    if by_type and by_kind and by_type != by_kind:
        problems.append({"field": "kind", "message": "disagrees with type (send one of them)"})
    kind = by_type or by_kind
    state = _enum(JobState, query_value(args, "status", problems), "status", problems)
    limit = query_int(args, "limit", 100, minimum=1, maximum=MAX_LIST, problems=problems)
    # A user's owner filter is ignored, whatever its value: a user lists their own jobs.
    owner = query_value(args, "owner", problems) if principal.is_admin else principal.user_id
    if owner is not None and not EXTERNAL_ID.match(owner) and owner != principal.user_id:
        problems.append({"field": "owner", "message": "has an invalid length or characters"})
    if problems:
        raise RequestInvalid(details=problems)
    jobs = job_system().list_jobs(kind=kind, state=state, owner=owner, limit=limit)
    return jsonify({"success": True, "data": [job_json(job) for job in jobs]})


def _visible_job(kind: str, job_id: str) -> Job:
    """Return the job if it exists, is of ``kind`` and the caller may see it; else 404."""
    problems = check_path_id(job_id, "jobId", JOB_ID)
    if problems:
        raise RequestInvalid(details=problems)
    job = job_system().get(job_id)
    if job.kind.value != kind or not current_principal().can_see(job):
        raise JobNotFound()
    return job


def _enum(enum: type[E], value: str | None, field: str,
          problems: list[dict[str, str]]) -> E | None:
    if value is None or value == "":
        return None
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(member.value for member in enum)
        problems.append({"field": field, "message": f"must be one of {choices}"})
        return None
