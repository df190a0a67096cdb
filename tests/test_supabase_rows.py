"""Pure parts of the Supabase sink: rows, ids, thumbnails, error classes, settings."""

from __future__ import annotations

import httpx
import pytest
from postgrest import APIError

from actors import Job, JobKind, JobSystem, Settings
from actors.model.errors import SettingsError
from actors.model.jobs import freeze
from actors.results.rows import ResultTables, result_rows, row_id, thumbnail_url, video_name
from actors.results.supabase import classify

YOUTUBE_THUMB = "https://img.youtube.com/vi/dQw4w9WgXcQ/hqdefault.jpg"
LOOM_ID = "0123456789abcdef0123456789abcdef"
LOOM_THUMB = f"https://cdn.loom.com/sessions/thumbnails/{LOOM_ID}-with-play.gif"


@pytest.mark.parametrize(("url", "thumbnail"), [
    ("https://www.youtube.com/watch?v=dQw4w9WgXcQ", YOUTUBE_THUMB),
    ("https://youtube.com/watch?v=dQw4w9WgXcQ&t=42s", YOUTUBE_THUMB),
    ("https://m.youtube.com/watch?feature=share&v=dQw4w9WgXcQ", YOUTUBE_THUMB),
    ("https://youtu.be/dQw4w9WgXcQ", YOUTUBE_THUMB),
    ("https://youtu.be/dQw4w9WgXcQ?si=abc", YOUTUBE_THUMB),
    ("https://www.youtube.com/embed/dQw4w9WgXcQ", YOUTUBE_THUMB),
    ("https://www.youtube.com/shorts/dQw4w9WgXcQ", YOUTUBE_THUMB),
    (f"https://www.loom.com/share/{LOOM_ID}", LOOM_THUMB),
    (f"https://loom.com/embed/{LOOM_ID}?hideEmbedTopBar=true", LOOM_THUMB),
    (f"https://www.loom.com/recordings/{LOOM_ID}", LOOM_THUMB),
    (f"https://www.loom.com/share/Product-tour-{LOOM_ID}", LOOM_THUMB),
    ("https://www.loom.com/share/abc123", "https://cdn.loom.com/sessions/thumbnails/"
                                          "abc123-with-play.gif"),
    ("https://www.youtube.com/watch?v=short", None),
    ("https://www.youtube.com/channel/UC123", None),
    ("https://www.loom.com/looms/videos", None),
    ("https://vimeo.com/123456", None),
    ("https://notyoutube.com/watch?v=dQw4w9WgXcQ", None),
])
def test_thumbnail_urls(url: str, thumbnail: str | None):
    assert thumbnail_url(url) == thumbnail


def test_row_ids_are_stable_per_job_and_role():
    assert row_id("job-1", "video") == row_id("job-1", "video")
    # Pinned: rows already written derive from this; a change would duplicate them.
    assert row_id("job-1", "video") == "ce8e67b9-8e7d-5b9c-a26c-fc9263abfa8c"
    assert len({row_id("job-1", "video"), row_id("job-1", "qudemo"),
                row_id("job-2", "video")}) == 3


def test_video_name_falls_back_to_the_platform_and_id():
    assert video_name({"title": "  Tour "}, "https://vimeo.com/1") == "Tour"
    assert video_name({"title": None}, f"https://www.loom.com/share/{LOOM_ID}") == \
        f"Loom video {LOOM_ID}"
    assert video_name({}, "https://youtu.be/dQw4w9WgXcQ") == "YouTube video dQw4w9WgXcQ"
    assert video_name({}, "https://vimeo.com/1") == "https://vimeo.com/1"


def test_rows_go_to_the_configured_tables():
    tables = ResultTables(videos="v2", qudemos="d2", questions="q2")
    video = Job(id="j", kind=JobKind.VIDEO, priority=2, owner="u",
                data=freeze({"video_url": "https://youtu.be/dQw4w9WgXcQ", "create_qudemo": True}))
    assert [t for t, _ in result_rows(video, freeze({"company_id": "c"}), 0.0, tables)] == \
        ["v2", "d2"]
    qa = Job(id="k", kind=JobKind.QA, priority=1, data=freeze({"question": "q"}))
    ((table, row),) = result_rows(qa, freeze({"answer": "a", "sources": ("s",)}), 0.0, tables)
    assert table == "q2"
    assert row["sources"] == ["s"] and row["created_at"] == "1970-01-01T00:00:00+00:00"


@pytest.mark.parametrize(("error", "retryable"), [
    (httpx.ConnectError("refused"), True),
    (httpx.ReadTimeout("slow"), True),
    (APIError({"code": "PGRST001", "message": "db down"}), True),
    (APIError({"code": "PGRST204", "message": "no such column"}), False),
    (APIError({"code": "PGRST301", "message": "bad JWT"}), False),
    (APIError({"code": "23505", "message": "duplicate key"}), False),
    (APIError({"code": "42501", "message": "permission denied"}), False),
    (APIError({"code": "22P02", "message": "invalid uuid"}), False),
    (APIError({"code": "40001", "message": "serialization failure"}), True),
    (APIError({"code": "57014", "message": "statement timeout"}), True),
    (APIError({"code": "503", "message": "Service Unavailable"}), True),
    (APIError({"code": "429", "message": "Too Many Requests"}), True),
    (APIError({"code": "404", "message": "Not Found"}), False),
    (APIError({"message": "no code"}), True),
])
def test_failures_are_classified(error: Exception, retryable: bool):
    failure = classify(error, "upsert into videos")
    assert failure.retryable is retryable
    assert failure.message.startswith("upsert into videos: ")


ENV = {"SUPABASE_URL": "https://abc.supabase.co/", "SUPABASE_SERVICE_ROLE_KEY": "secret-key"}


def test_settings_are_off_by_default():
    settings = Settings.from_env({}, dotenv_path=None)
    assert settings.supabase_enabled is False
    assert (settings.supabase_url, settings.supabase_service_role_key) == (None, None)
    assert (settings.supabase_table_videos, settings.supabase_table_qudemos,
            settings.supabase_table_questions, settings.supabase_table_companies) == \
        ("videos", "qudemos", "questions", "companies")
    assert settings.supabase_write_attempts == 5 and settings.supabase_timeout_s == 10.0


def test_settings_read_every_supabase_variable():
    settings = Settings.from_env({**ENV, "SUPABASE_TABLE_VIDEOS": "demo_videos",
                                  "SUPABASE_TABLE_QUDEMOS": "demos",
                                  "SUPABASE_TABLE_QUESTIONS": "answers",
                                  "SUPABASE_TABLE_COMPANIES": "orgs",
                                  "SUPABASE_WRITE_ATTEMPTS": "7",
                                  "SUPABASE_TIMEOUT_MS": "2500"}, dotenv_path=None)
    assert settings.supabase_enabled is True
    assert settings.supabase_url == "https://abc.supabase.co"
    assert (settings.supabase_table_videos, settings.supabase_table_qudemos,
            settings.supabase_table_questions, settings.supabase_table_companies) == \
        ("demo_videos", "demos", "answers", "orgs")
    assert settings.supabase_write_attempts == 7 and settings.supabase_timeout_s == 2.5
    assert "secret-key" not in repr(settings)


@pytest.mark.parametrize("missing", sorted(ENV))
def test_url_and_key_come_together(missing: str):
    env = {k: v for k, v in ENV.items() if k != missing}
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(env, dotenv_path=None)
    assert "SUPABASE_URL" in str(caught.value)
    assert "SUPABASE_SERVICE_ROLE_KEY" in str(caught.value)


def test_bad_supabase_values_are_reported_together():
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({**ENV, "SUPABASE_URL": "ftp://x", "SUPABASE_TABLE_VIDEOS": "v;drop",
                           "SUPABASE_WRITE_ATTEMPTS": "0", "SUPABASE_TIMEOUT_MS": "soon"},
                          dotenv_path=None)
    problems = " | ".join(caught.value.problems)
    for name in ("SUPABASE_URL", "SUPABASE_TABLE_VIDEOS", "SUPABASE_WRITE_ATTEMPTS",
                 "SUPABASE_TIMEOUT_MS"):
        assert name in problems


def test_a_job_system_refuses_half_a_supabase_configuration():
    with pytest.raises(SettingsError):
        JobSystem(Settings(store="memory", supabase_url="https://abc.supabase.co"))
