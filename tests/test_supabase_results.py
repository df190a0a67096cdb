"""Results land in Supabase: real actors, the Python API stand-in and the PostgREST stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.results.rows import row_id
from actors.stores import open_store
from tests.postgrest_standin import SERVICE_KEY, PostgrestStandIn
from tests.standin import DEMO_VIDEO_URL, PythonApiStandIn, Reply
from tests.supabase_support import (
    ACME_ID,
    LOOM_THUMBNAIL,
    LOOM_URL,
    NOW_ISO,
    FixedClock,
    seeded,
    with_supabase,
)
from tests.test_actors_support import started, wait_state, wait_until
from tests.web_support import make_app

LOOM_VIDEO = {"video_url": LOOM_URL, "company_name": "acme", "source": "loom",
              "create_qudemo": True}


@pytest.fixture
def postgrest() -> Iterator[PostgrestStandIn]:
    with PostgrestStandIn() as standin:
        yield seeded(standin)


@pytest.fixture
def settings(fast_settings: Settings, postgrest: PostgrestStandIn) -> Settings:
    return with_supabase(fast_settings, postgrest)


@pytest.fixture
def system(settings: Settings) -> Iterator[JobSystem]:
    with started(settings, clock=FixedClock()) as system:
        yield system


def test_video_job_writes_its_video_and_qudemo_rows(system: JobSystem, postgrest: PostgrestStandIn,
                                                    standin: PythonApiStandIn):
    job_id = system.submit(JobKind.VIDEO, LOOM_VIDEO, owner="alice").job.id
    job = wait_state(system, job_id)
    assert job.state == JobState.COMPLETED, job.last_error
    assert job.result is not None and job.result["company_id"] == ACME_ID
    assert postgrest.rows("videos") == [{
        "id": row_id(job_id, "video"), "company_id": ACME_ID, "user_id": "alice",
        "video_url": LOOM_URL, "video_name": "Demo video", "created_at": NOW_ISO}]
    assert postgrest.rows("qudemos") == [{
        "id": row_id(job_id, "qudemo"), "title": "Demo video",
        "description": "Interactive demo of Demo video", "video_url": LOOM_URL,
        "thumbnail_url": LOOM_THUMBNAIL, "company_id": ACME_ID, "created_by": "alice",
        "is_active": True, "created_at": NOW_ISO, "updated_at": NOW_ISO,
        "video_name": "Demo video"}]
    assert postgrest.rows("questions") == []
    (call,) = standin.calls("process-video")
    assert call.path == "/process-video/acme"

    lookup, video, qudemo = postgrest.requests()
    assert (lookup.method, lookup.path) == ("GET", "/rest/v1/companies")
    assert dict(lookup.query) == {"select": "id,name", "name": "eq.acme", "limit": "2"}
    for request, table in ((video, "videos"), (qudemo, "qudemos")):
        assert (request.method, request.path, request.status) == ("POST", f"/rest/v1/{table}",
                                                                  201)
        assert dict(request.query) == {"on_conflict": "id"}
        assert request.prefer == {"return=minimal", "resolution=merge-duplicates"}
        assert request.body == postgrest.rows(table)[0]
    for request in (lookup, video, qudemo):
        assert request.headers["apikey"] == SERVICE_KEY
        assert request.headers["authorization"] == f"Bearer {SERVICE_KEY}"


def test_company_id_from_the_job_is_checked_by_id_and_no_qudemo_unless_asked(
        system: JobSystem, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    data = {"video_url": DEMO_VIDEO_URL, "company_name": "acme", "company_id": ACME_ID,
            "source": "youtube"}
    job_id = system.submit(JobKind.VIDEO, data, owner="bob").job.id
    assert wait_state(system, job_id).state == JobState.COMPLETED
    (lookup,) = postgrest.requests("companies")
    assert dict(lookup.query) == {"select": "id,name", "id": f"eq.{ACME_ID}", "limit": "2"}
    (row,) = postgrest.rows("videos")
    assert (row["company_id"], row["user_id"], row["video_url"]) == (ACME_ID, "bob",
                                                                     DEMO_VIDEO_URL)
    assert postgrest.rows("qudemos") == []
    assert len(standin.calls("process-video")) == 1


def test_question_job_writes_its_question_row(system: JobSystem, postgrest: PostgrestStandIn):
    data = {"question": "What are the main features?", "company_name": "acme",
            "interaction_id": "int-123"}
    job_id = system.submit(JobKind.QA, data, owner="alice").job.id
    assert wait_state(system, job_id).state == JobState.COMPLETED
    assert postgrest.rows("questions") == [{
        "id": row_id(job_id, "question"), "interaction_id": "int-123",
        "question": "What are the main features?", "answer": "This is the answer.",
        "sources": [DEMO_VIDEO_URL], "video_url": DEMO_VIDEO_URL, "start": 12.5, "end": 30.0,
        "created_at": NOW_ISO}]
    assert postgrest.requests("companies") == []  # questions need no company lookup
    assert postgrest.rows("videos") == []


def test_a_write_failing_twice_is_retried_alone_and_leaves_one_row_per_table(
        system: JobSystem, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    postgrest.fail("qudemos", count=2, status=503)
    job_id = system.submit(JobKind.VIDEO, LOOM_VIDEO, owner="alice").job.id
    job = wait_state(system, job_id)
    assert job.state == JobState.COMPLETED, job.last_error
    assert job.attempts == 1
    assert len(standin.calls("process-video")) == 1  # the video was processed once
    # Each try upserts the video row again: three writes, one row.
    assert [r.status for r in postgrest.requests("videos", "POST")] == [201, 200, 200]
    assert [r.status for r in postgrest.requests("qudemos", "POST")] == [503, 503, 201]
    assert len(postgrest.rows("videos")) == 1
    assert len(postgrest.rows("qudemos")) == 1
    assert system.snapshot()["supabase"]["write_retries"] == 2


def test_the_job_stays_processing_until_its_result_is_stored(
        system: JobSystem, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    postgrest.hold("videos")
    try:
        job_id = system.submit(JobKind.VIDEO, LOOM_VIDEO, owner="alice").job.id
        assert postgrest.wait_requests("videos", 1, method="POST", timeout=10)
        assert standin.wait_for(lambda s: all(c.finished_at for c in s.calls()), 5)
        assert system.get(job_id).state == JobState.PROCESSING
        # The Python API slot is free while the result is being stored.
        wait_until(lambda: system.snapshot()["kinds"]["video"]["running"] == 0,
                   "the video slot to be free")
    finally:
        postgrest.release()
    assert wait_state(system, job_id).state == JobState.COMPLETED


def test_an_unknown_company_fails_the_job_before_the_video_is_processed(
        system: JobSystem, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    data = {**LOOM_VIDEO, "company_name": "initech"}
    job = wait_state(system, system.submit(JobKind.VIDEO, data, owner="alice").job.id)
    assert job.state == JobState.FAILED
    assert job.attempts == 1  # permanent: not retried
    assert job.last_error == "PermanentCallFailure: unknown company 'initech'"
    assert standin.calls("process-video") == []
    assert postgrest.requests(method="POST") == []
    assert postgrest.rows("videos") == [] and postgrest.rows("qudemos") == []


def test_a_company_lookup_outage_retries_the_attempt(
        system: JobSystem, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    postgrest.fail("companies", method="GET", count=1, status=503)
    job = wait_state(system, system.submit(JobKind.VIDEO, LOOM_VIDEO, owner="alice").job.id)
    assert job.state == JobState.COMPLETED, job.last_error
    assert job.attempts == 2
    assert [r.status for r in postgrest.requests("companies")] == [503, 200]
    assert len(standin.calls("process-video")) == 1
    assert len(postgrest.rows("videos")) == 1


@pytest.fixture
def three_writes(settings: Settings) -> Iterator[JobSystem]:
    with started(settings.replace(supabase_write_attempts=3), clock=FixedClock()) as system:
        yield system


def test_supabase_never_recovering_fails_the_job_and_keeps_its_result(
        three_writes: JobSystem, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    postgrest.fail("videos", count=None, status=503)
    job_id = three_writes.submit(JobKind.VIDEO, LOOM_VIDEO, owner="alice").job.id
    job = wait_state(three_writes, job_id)
    assert job.state == JobState.FAILED
    assert job.last_error is not None
    assert job.last_error.startswith("result could not be stored in Supabase: upsert into "
                                     "videos: Database client error"), job.last_error
    assert job.result is not None and job.result["title"] == "Demo video"
    assert len(standin.calls("process-video")) == 1  # never processed again
    assert len(postgrest.requests("videos", "POST")) == 3
    assert postgrest.rows("videos") == [] and postgrest.rows("qudemos") == []

    reply = make_app(three_writes).test_client().get(f"/api/queue/jobs/video/{job_id}")
    assert reply.status_code == 200
    data = reply.json["data"]
    assert data["status"] == "failed"
    assert data["lastError"] == job.last_error
    assert data["result"]["company_id"] == ACME_ID
    assert data["result"]["title"] == "Demo video"


def test_retrying_a_job_whose_result_was_not_stored_stores_it_without_processing_again(
        three_writes: JobSystem, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    postgrest.fail("videos", count=None, status=503)
    job_id = three_writes.submit(JobKind.VIDEO, LOOM_VIDEO, owner="alice").job.id
    assert wait_state(three_writes, job_id).state == JobState.FAILED
    postgrest.recover()

    three_writes.pause(JobKind.VIDEO)  # storing needs no Python API slot: not held by this
    reply = make_app(three_writes).test_client().post(f"/api/queue/jobs/video/{job_id}/retry")
    assert reply.status_code == 202
    assert reply.json["data"]["status"] == "processing"
    assert reply.json["data"]["queuePosition"] == 0
    job = wait_state(three_writes, job_id)
    assert job.state == JobState.COMPLETED, job.last_error
    assert len(standin.calls("process-video")) == 1  # the video is not processed twice
    assert len(postgrest.rows("videos")) == 1 and len(postgrest.rows("qudemos")) == 1


def test_a_write_the_database_will_refuse_again_fails_at_once(
        system: JobSystem, postgrest: PostgrestStandIn):
    postgrest.fail("videos", status=400, code="PGRST204",
                   message="Could not find the 'video_name' column of 'videos'")
    job = wait_state(system, system.submit(JobKind.VIDEO, LOOM_VIDEO, owner="alice").job.id)
    assert job.state == JobState.FAILED
    assert "Could not find the 'video_name' column" in (job.last_error or "")
    assert len(postgrest.requests("videos", "POST")) == 1


def test_a_failed_job_writes_no_row(system: JobSystem, postgrest: PostgrestStandIn,
                                    standin: PythonApiStandIn):
    standin.script("process-video", Reply(status=200, body={"success": True, "result": None,
                                                            "message": "no transcript"}))
    job = wait_state(system, system.submit(JobKind.VIDEO, LOOM_VIDEO, owner="alice").job.id)
    assert job.state == JobState.FAILED
    assert "no transcript" in (job.last_error or "")
    assert postgrest.requests(method="POST") == []
    assert postgrest.rows("videos") == [] and postgrest.rows("qudemos") == []


def test_snapshot_shows_the_sink_and_its_writer(system: JobSystem, postgrest: PostgrestStandIn):
    snapshot = system.snapshot()
    supabase = snapshot["supabase"]
    assert supabase["configured"] is True and supabase["reachable"] is True
    assert supabase["url"] == postgrest.url
    assert (supabase["stored"], supabase["failed"], supabase["waiting"]) == (0, 0, [])
    assert "ResultWriter" in [a["name"] for a in snapshot["actors"]]
    assert SERVICE_KEY not in repr(system.settings)


def test_without_supabase_results_stay_in_the_job_store(job_system: JobSystem,
                                                        standin: PythonApiStandIn):
    job_id = job_system.submit(JobKind.VIDEO, LOOM_VIDEO, owner="alice").job.id
    job = wait_state(job_system, job_id)
    assert job.state == JobState.COMPLETED
    assert job.result is not None and "company_id" not in job.result
    snapshot = job_system.snapshot()
    assert snapshot["supabase"] == {"configured": False, "reachable": None}
    assert "ResultWriter" not in [a["name"] for a in snapshot["actors"]]
    assert job_system.supabase_configured is False


def test_a_company_id_the_database_cannot_read_is_an_unknown_company(
        system: JobSystem, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    # companies.id is a uuid: Postgres refuses "c-1" with SQLSTATE 22P02 (HTTP 400).
    postgrest.fail("companies", method="GET", status=400, code="22P02",
                   message='invalid input syntax for type uuid: "c-1"')
    data = {**LOOM_VIDEO, "company_id": "c-1"}
    job = wait_state(system, system.submit(JobKind.VIDEO, data, owner="alice").job.id)
    assert job.state == JobState.FAILED and job.attempts == 1
    assert job.last_error == "PermanentCallFailure: unknown company id 'c-1'"
    assert standin.calls("process-video") == []


def test_a_stop_waits_for_results_still_being_stored(
        fast_settings: Settings, postgrest: PostgrestStandIn, standin: PythonApiStandIn,
        tmp_path: Path):
    settings = with_supabase(fast_settings, postgrest, store="sqlite",
                             db_path=str(tmp_path / "jobs.sqlite3"), backoff_base_s=0.3,
                             backoff_max_s=0.3, backoff_jitter=0.0)
    postgrest.fail("videos", count=1, status=503)
    system = JobSystem(settings).start()
    try:
        job_id = system.submit(JobKind.VIDEO, LOOM_VIDEO, owner="alice").job.id
        wait_until(lambda: system.snapshot()["supabase"]["waiting"] == [job_id],
                   "the second write to be scheduled")
    finally:
        system.stop(drain=True)
    store = open_store(settings)
    try:
        stored = store.get(job_id)
    finally:
        store.close()
    assert stored is not None and stored.state == JobState.COMPLETED
    assert len(postgrest.rows("videos")) == 1


def test_a_result_being_stored_at_a_crash_is_stored_after_restart_not_processed_again(
        fast_settings: Settings, postgrest: PostgrestStandIn, standin: PythonApiStandIn,
        tmp_path: Path):
    settings = with_supabase(fast_settings, postgrest, store="sqlite",
                             db_path=str(tmp_path / "jobs.sqlite3"), backoff_base_s=30.0,
                             backoff_max_s=30.0)
    postgrest.fail("videos", count=1, status=503)  # the next write waits 30 s: past the stop
    system = JobSystem(settings).start()
    try:
        job_id = system.submit(JobKind.VIDEO, LOOM_VIDEO, owner="alice").job.id
        wait_until(lambda: system.snapshot()["supabase"]["waiting"] == [job_id],
                   "the second write to be scheduled")
        assert system.get(job_id).result is not None  # kept on the record meanwhile
    finally:
        system.stop(drain=True, timeout_s=0.2)
    assert len(standin.calls("process-video")) == 1
    restarted = JobSystem(settings).start()
    try:
        job = wait_state(restarted, job_id)
        assert job.state == JobState.COMPLETED, job.last_error
        assert job.attempts == 1
        assert len(standin.calls("process-video")) == 1  # not processed a second time
        assert len(postgrest.rows("videos")) == 1
        assert len(postgrest.rows("qudemos")) == 1
    finally:
        restarted.stop()
