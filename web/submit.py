"""Routes that turn requests into jobs: videos and questions.

Each answers 202 with ``{jobId, queuePosition, estimatedWaitTime, status: "queued"}`` and
a ``Location`` header, or the error the job system gave (429 full, 503 memory pressure or
draining, 409 duplicate with the existing ``jobId``).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response

from actors.model.errors import UnknownCompany
from actors.model.jobs import JobKind
from web.auth import current_principal, require_user
from web.body import read_json
from web.context import job_system, web_settings
from web.errors import RequestInvalid
from web.idempotency import idempotency_key, idempotent
from web.models import (
    EXTERNAL_ID,
    ClientVideoBody,
    QuestionBody,
    VideoBody,
    check_path_id,
    parse_body,
)
from web.present import accepted
from web.tenancy import company_name_for, require_member

logger = logging.getLogger(__name__)

bp = Blueprint("submit", __name__)


@bp.post("/api/video/process")
@require_user
@idempotent
def process_video() -> Response:
    """Queue a video for processing (snake_case or camelCase body)."""
    return _submit_video(VideoBody)


@bp.post("/api/video/videos")
@require_user
@idempotent
def client_video() -> Response:
    """Queue a video from the web client's body (``videoUrl``, ``companyName``, ...)."""
    return _submit_video(ClientVideoBody)


@bp.post("/api/interactions/<interaction_id>/questions")
@require_user
@idempotent
def ask_question(interaction_id: str) -> Response:
    """Queue a question about a company's videos for AI answering."""
    problems = check_path_id(interaction_id, "interactionId")
    body: QuestionBody = parse_body(QuestionBody, _with_company_name(read_json()),
                                    extra=problems)
    require_member(body.company_name, body.company_id)
    principal = current_principal()
    submission = job_system().submit(
        JobKind.QA,
        {"question": body.question, "company_name": body.company_name,
         "interaction_id": interaction_id},
        owner=principal.user_id,
        idempotency=idempotency_key(),
    )
    # The lifecycle line ("accepted") is the JobRegistry's; this adds the request's details.
    logger.debug("job %s: question for interaction %s, queue position %s",
                 submission.job.id, interaction_id, submission.queue_position)
    return accepted(submission, "Question queued for AI processing")


def _submit_video(model: type[VideoBody]) -> Response:
    context = {"allowed_hosts": web_settings().video_url_allowed_hosts}
    body: VideoBody = parse_body(model, _with_company_name(read_json()), context=context)
    require_member(body.company_name, body.company_id)
    principal = current_principal()
    submission = job_system().submit(
        JobKind.VIDEO,
        body.job_data(),
        owner=principal.user_id,
        dedupe_key=body.dedupe_key(),
        idempotency=idempotency_key(),
    )
    logger.debug("job %s: video for %s from %s, queue position %s", submission.job.id,
                 body.company_name, body.video.host, submission.queue_position)
    return accepted(submission, "Video processing queued successfully")


def _with_company_name(raw: Any) -> Any:
    """Fill in the company's name when the body sent only ``companyId`` (the web client).

    The name comes from the caller's own companies when they say it (the token's paired
    ``companyId``/``companyName`` claims, or the memberships read from Supabase), else from
    Supabase's ``companies`` table. Without either (or with a malformed id) the body goes on
    unchanged, and validation answers 400 naming the missing ``company_name``. An unknown id
    is a 400 on ``company_id``; Supabase failing is a 503 with ``Retry-After``.
    """
    if not isinstance(raw, dict) or any(raw.get(k) for k in ("companyName", "company_name")):
        return raw
    company_id = raw.get("companyId", raw.get("company_id"))
    if not isinstance(company_id, str | int) or isinstance(company_id, bool):
        return raw
    company_id = str(company_id).strip()
    if not EXTERNAL_ID.match(company_id):
        return raw
    name = company_name_for(company_id)
    if name is not None:
        return {**raw, "companyName": name}
    system = job_system()
    if not system.supabase_configured:
        return raw
    try:
        company = system.resolve_company(company_id=company_id)
    except UnknownCompany as exc:
        raise RequestInvalid(exc.message, details=[
            {"field": "company_id", "message": exc.message}]) from exc
    return {**raw, "companyName": company.name}
