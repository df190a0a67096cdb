"""I1 and I2 under deadlines: abandoned calls keep their slot; a job never runs twice at once.

Measured from the Python API's side: the stand-in goes on processing a request whose
client left (as uvicorn does) and counts the requests it has not answered yet.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors import JobKind, JobState, Settings
from tests.postgrest_standin import PostgrestStandIn
from tests.standin import Call, PythonApiStandIn, Reply
from tests.supabase_support import seeded, with_supabase
from tests.test_actors_support import started, video, wait_state, wait_until


def overlaps_of_one_key(calls: list[Call]) -> list[str]:
    """URLs the stand-in was processing twice at the same time."""
    found = []
    for i, a in enumerate(calls):
        for b in calls[i + 1:]:
            if a.body["video_url"] != b.body["video_url"]:
                continue
            a_end = a.finished_at if a.finished_at is not None else float("inf")
            b_end = b.finished_at if b.finished_at is not None else float("inf")
            if a.started_at < b_end and b.started_at < a_end:
                found.append(a.body["video_url"])
    return found


def test_slow_videos_past_their_deadline_never_overload_the_python_api(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    settings = fast_settings.replace(max_concurrent_videos=1, job_timeout_s=0.3,
                                     abandoned_hold_s=20.0, retry_attempts=3)
    standin.set_latency("process-video", 1.0)  # each video outlives its deadline
    with started(settings) as system:
        ids = [system.submit(JobKind.VIDEO, video(n)).job.id for n in range(3)]
        jobs = [wait_state(system, job_id) for job_id in ids]
    assert standin.max_unanswered("process-video") == 1
    assert overlaps_of_one_key(standin.calls("process-video")) == []
    # The late answers are the attempts' outcomes: nothing was sent twice.
    assert [j.state for j in jobs] == [JobState.COMPLETED] * 3
    assert [j.attempts for j in jobs] == [1, 1, 1]
    assert len(standin.calls("process-video")) == 3


def test_an_abandoned_call_is_shown_apart_and_keeps_its_slot(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    settings = fast_settings.replace(max_concurrent_videos=1, job_timeout_s=0.2,
                                     abandoned_hold_s=20.0)
    standin.hold("process-video")
    try:
        with started(settings) as system:
            first = system.submit(JobKind.VIDEO, video(1)).job.id
            second = system.submit(JobKind.VIDEO, video(2)).job.id
            wait_until(lambda: system.snapshot()["kinds"]["video"].get("abandoned") == 1,
                       "the call to be abandoned at its deadline")
            snap = system.snapshot()
            assert snap["kinds"]["video"]["running"] == 0  # shown apart from running ones
            assert snap["running_jobs"][0]["abandoned"] is True
            assert snap["instances"][0]["in_flight"]["video"] == 1  # the slot is held
            assert system.get(second).state == JobState.QUEUED
            assert len(standin.calls("process-video")) == 1
            standin.release("process-video")
            assert wait_state(system, first).state == JobState.COMPLETED
            assert wait_state(system, second).state == JobState.COMPLETED
    finally:
        standin.release("process-video")


def test_a_video_still_processing_at_the_end_of_its_hold_is_not_sent_again(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    settings = fast_settings.replace(max_concurrent_videos=1, job_timeout_s=0.2,
                                     abandoned_hold_s=0.4, retry_attempts=3)
    standin.script("process-video", Reply(delay_s=3.0))
    with started(settings) as system:
        job = wait_state(system, system.submit(JobKind.VIDEO, video(1)).job.id)
        assert job.state == JobState.FAILED
        assert job.attempts == 1
        assert "end of its hold" in (job.last_error or "")
        assert "not retried" in (job.last_error or "")
        assert len(standin.calls("process-video")) == 1


def test_timed_out_videos_may_be_retried_when_asked_for(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    settings = fast_settings.replace(max_concurrent_videos=1, job_timeout_s=0.2,
                                     abandoned_hold_s=0.4, retry_attempts=2,
                                     retry_timed_out_videos=True)
    standin.script("process-video", Reply(delay_s=0.8))
    with started(settings) as system:
        job = wait_state(system, system.submit(JobKind.VIDEO, video(1)).job.id)
    assert job.state == JobState.COMPLETED
    assert job.attempts == 2


@pytest.fixture
def postgrest() -> Iterator[PostgrestStandIn]:
    with PostgrestStandIn() as standin:
        yield seeded(standin)


def test_a_worker_stuck_in_its_company_lookup_never_calls_after_its_deadline(
    fast_settings: Settings, standin: PythonApiStandIn, postgrest: PostgrestStandIn
) -> None:
    settings = with_supabase(fast_settings, postgrest, max_concurrent_videos=1,
                             job_timeout_s=0.3, retry_attempts=3, overdue_grace_s=0.2,
                             python_api_connect_timeout_s=0.2, supabase_timeout_s=30.0)
    data = {"video_url": "https://www.loom.com/share/0123456789abcdef0123456789abcdef",
            "company_name": "acme", "source": "loom"}
    postgrest.hold("companies")  # the lookup hangs (as a trickling answer would)
    try:
        with started(settings) as system:
            job_id = system.submit(JobKind.VIDEO, data, owner="alice").job.id
            # Two attempts end at their deadlines, each stuck in its lookup.
            assert postgrest.wait_requests("companies", 2, timeout=10)
            wait_until(lambda: system.get(job_id).attempts >= 3, "the third attempt")
            postgrest.release()  # every stuck lookup answers at once
            job = wait_state(system, job_id)
            # Only the live attempt called the Python API; the stale threads never did.
            assert standin.wait_for(lambda s: all(c.finished_at for c in s.calls()), 5)
    finally:
        postgrest.release()
    assert job.state == JobState.COMPLETED, job.last_error
    assert len(standin.calls("process-video")) == 1
    assert standin.max_unanswered("process-video") == 1
