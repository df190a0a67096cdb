"""Routes that turn requests into jobs: videos and questions.

Each answers 202 with ``{jobId, queuePosition, estimatedWaitTime, status: "queued"}`` and
a ``Location`` header, or the error the job system gave (429 full, 503 memory pressure or
draining, 409 duplicate with the existing ``jobId``).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response

from actors.jobs import JobKind
from web.auth import current_principal, require_user
from web.body import read_json
from web.context import job_system, web_settings
from web.models import ClientVideoBody, QuestionBody, VideoBody, check_path_id, parse_body
from web.present import accepted

logger = logging.getLogger(__name__)

bp = Blueprint("submit", __name__)


@bp.post("/api/video/process")
@require_user
def process_video() -> Response:
    """Queue a video for processing (snake_case or camelCase body)."""
    return _submit_video(VideoBody)


@bp.post("/api/video/videos")
@require_user
def client_video() -> Response:
    """Queue a video from the web client's body (``videoUrl``, ``companyName``, ...)."""
    return _submit_video(ClientVideoBody)


@bp.post("/api/interactions/<interaction_id>/questions")
@require_user
def ask_question(interaction_id: str) -> Response:
    """Queue a question about a company's videos for AI answering."""
    problems = check_path_id(interaction_id, "interactionId")
    body: QuestionBody = parse_body(QuestionBody, read_json(), extra=problems)
    principal = current_principal()
    submission = job_system().submit(
        JobKind.QA,
        {"question": body.question, "company_name": body.company_name,
         "interaction_id": interaction_id},
        owner=principal.user_id,
    )
    logger.info("job %s: question queued for interaction %s (position %s)",
                submission.job.id, interaction_id, submission.queue_position)
    return accepted(submission, "Question queued for AI processing")


def _submit_video(model: type[VideoBody]) -> Response:
    context = {"allowed_hosts": web_settings().video_url_allowed_hosts}
    body: VideoBody = parse_body(model, read_json(), context=context)
    principal = current_principal()
    submission = job_system().submit(
        JobKind.VIDEO,
        body.job_data(),
        owner=principal.user_id,
        dedupe_key=body.dedupe_key(),
    )
    logger.info("job %s: video queued for %s from %s (position %s)", submission.job.id,
                body.company_name, body.video.host, submission.queue_position)
    return accepted(submission, "Video processing queued successfully")
