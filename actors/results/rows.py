"""The rows a finished job leaves in Supabase: pure functions, no I/O.

Row ids are derived from the job id (``uuid5``), so writing the same job's
result again (a retried write, an operator retry) upserts the same rows
instead of adding new ones. Timestamps come from the moment the result was
produced, so a repeated write is byte-for-byte the same row.

=========== ============================================================================
table       columns
=========== ============================================================================
videos      id, company_id, user_id, video_url, video_name, created_at
qudemos     id, title, description, video_url, thumbnail_url, company_id, created_by,
            is_active, created_at, updated_at, video_name   (only when ``create_qudemo``)
questions   id, interaction_id, question, answer, sources, video_url, start, end,
            created_at
=========== ============================================================================
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from actors.model.jobs import Job, JobKind, thaw

ROW_NAMESPACE = uuid.UUID("6f1d3c1e-8a0b-5d2e-9c47-3b1a2e5f7d90")
"""The namespace of every row id. Never change it: ids already written derive from it."""

YOUTUBE_HOSTS = frozenset({"youtube.com", "www.youtube.com", "m.youtube.com",
                           "music.youtube.com", "youtube-nocookie.com",
                           "www.youtube-nocookie.com"})
YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{11}\Z")
LOOM_PATH = re.compile(r"^/(?:share|embed|recordings)/([A-Za-z0-9_-]+)")
LOOM_ID_SUFFIX = re.compile(r"([0-9a-f]{32})\Z")


@dataclass(frozen=True, slots=True)
class ResultTables:
    """The table names rows go to (configurable: ``SUPABASE_TABLE_*``)."""

    videos: str = "videos"
    qudemos: str = "qudemos"
    questions: str = "questions"


def row_id(job_id: str, role: str) -> str:
    """Return the id of the ``role`` row (``video``, ``qudemo``, ``question``) of a job."""
    return str(uuid.uuid5(ROW_NAMESPACE, f"{job_id}:{role}"))


def iso_utc(at: float) -> str:
    """Render epoch seconds as ISO 8601 in UTC (a ``timestamptz`` literal)."""
    return datetime.fromtimestamp(at, UTC).isoformat()


def youtube_id(video_url: str) -> str | None:
    """Return the video id of a YouTube URL (watch?v=, youtu.be/, /embed/, /shorts/, /live/)."""
    parts = urlsplit(video_url)
    host = (parts.hostname or "").lower()
    segments = [s for s in parts.path.split("/") if s]
    candidate: str | None = None
    if host == "youtu.be" and segments:
        candidate = segments[0]
    elif host in YOUTUBE_HOSTS:
        if parts.path == "/watch":
            values = parse_qs(parts.query).get("v") or [""]
            candidate = values[0]
        elif len(segments) >= 2 and segments[0] in ("embed", "shorts", "live", "v"):
            candidate = segments[1]
    return candidate if candidate and YOUTUBE_ID.match(candidate) else None


def loom_id(video_url: str) -> str | None:
    """Return the video id of a Loom URL (``loom.com/(share|embed|recordings)/<id>``).

    A share link may carry a title slug before the 32-hex id (``/share/My-demo-<id>``);
    the id is then the trailing 32 hex digits.
    """
    parts = urlsplit(video_url)
    host = (parts.hostname or "").lower()
    if host != "loom.com" and not host.endswith(".loom.com"):
        return None
    match = LOOM_PATH.match(parts.path)
    if match is None:
        return None
    segment = match.group(1)
    suffix = LOOM_ID_SUFFIX.search(segment)
    return suffix.group(1) if suffix else segment


def thumbnail_url(video_url: str) -> str | None:
    """Return the thumbnail image of a Loom or YouTube video, else ``None``."""
    loom = loom_id(video_url)
    if loom is not None:
        return f"https://cdn.loom.com/sessions/thumbnails/{loom}-with-play.gif"
    youtube = youtube_id(video_url)
    if youtube is not None:
        return f"https://img.youtube.com/vi/{youtube}/hqdefault.jpg"
    return None


def video_name(result: Mapping[str, Any], video_url: str) -> str:
    """Name a video: the Python API's title, else the platform and id, else the URL."""
    title = result.get("title")
    if isinstance(title, str) and title.strip():
        return title.strip()
    if (loom := loom_id(video_url)) is not None:
        return f"Loom video {loom}"
    if (youtube := youtube_id(video_url)) is not None:
        return f"YouTube video {youtube}"
    return video_url


def result_rows(job: Job, result: Mapping[str, Any], at: float,
                tables: ResultTables) -> list[tuple[str, dict[str, Any]]]:
    """Return ``[(table, row), ...]`` to upsert, in write order, for a job's result.

    ``at`` is when the result was produced (the rows' ``created_at``). A video job's
    ``company_id`` is the one its worker resolved (``result["company_id"]``).
    """
    result = thaw(result)
    data = thaw(job.data)
    created = iso_utc(at)
    if job.kind == JobKind.QA:
        return [(tables.questions, {
            "id": row_id(job.id, "question"),
            "interaction_id": data.get("interaction_id"),
            "question": data.get("question"),
            "answer": result.get("answer"),
            "sources": list(result.get("sources") or []),
            "video_url": result.get("video_url"),
            "start": result.get("start"),
            "end": result.get("end"),
            "created_at": created,
        })]
    video_url = str(data.get("video_url") or result.get("video_url") or "")
    name = video_name(result, video_url)
    company_id = result.get("company_id") or data.get("company_id")
    rows: list[tuple[str, dict[str, Any]]] = [(tables.videos, {
        "id": row_id(job.id, "video"),
        "company_id": company_id,
        "user_id": job.owner,
        "video_url": video_url,
        "video_name": name,
        "created_at": created,
    })]
    if data.get("create_qudemo") is True:
        rows.append((tables.qudemos, {
            "id": row_id(job.id, "qudemo"),
            "title": name,
            "description": f"Interactive demo of {name}",
            "video_url": video_url,
            "thumbnail_url": thumbnail_url(video_url),
            "company_id": company_id,
            "created_by": job.owner,
            "is_active": True,
            "created_at": created,
            "updated_at": created,
            "video_name": name,
        }))
    return rows
