"""Dispatching through real actors and real HTTP: global order, Q&A first, limits never exceeded."""

from __future__ import annotations

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from tests.standin import PythonApiStandIn
from tests.test_actors_support import (
    question,
    questions,
    started,
    submit_all,
    video,
    video_urls,
    wait_state,
)


@pytest.fixture
def one_slot_each(fast_settings: Settings) -> Settings:
    return fast_settings.replace(max_concurrent_videos=1, max_concurrent_qa=1)


def test_a_job_runs_and_its_result_is_recorded(job_system: JobSystem,
                                               standin: PythonApiStandIn) -> None:
    video_id = job_system.submit(JobKind.VIDEO, video(1), owner="user-1").job.id
    qa_id = job_system.submit(JobKind.QA, question(1), owner="user-1").job.id

    done_video = wait_state(job_system, video_id)
    done_qa = wait_state(job_system, qa_id)

    assert done_video.state == JobState.COMPLETED
    assert done_video.attempts == 1
    assert done_video.result is not None and done_video.result["chunks_created"] == 12
    assert done_video.started_at is not None and done_video.finished_at is not None
    assert done_video.owner == "user-1"
    assert done_qa.state == JobState.COMPLETED
    assert done_qa.result is not None and done_qa.result["answer"] == "This is the answer."
    assert video_urls(standin) == [video(1)["video_url"]]
    assert standin.calls("process-video")[0].path == "/process-video/acme"
    assert questions(standin) == [question(1)["question"]]


def test_qa_and_video_fifo_under_contention_and_both_queues_drain(
    one_slot_each: Settings, standin: PythonApiStandIn
) -> None:
    standin.hold("process-video")
    standin.hold("ask-question")
    with started(one_slot_each) as system:
        first_video = system.submit(JobKind.VIDEO, video(0)).job.id
        first_qa = system.submit(JobKind.QA, question(0)).job.id
        assert standin.wait_in_flight("process-video", 1)
        assert standin.wait_in_flight("ask-question", 1)
        video_ids = submit_all(system, JobKind.VIDEO, [video(n) for n in range(1, 4)])
        qa_ids = submit_all(system, JobKind.QA, [question(n) for n in range(1, 4)])

        waiting = system.snapshot()["kinds"]
        assert (waiting["video"]["waiting"], waiting["video"]["running"]) == (3, 1)
        assert (waiting["qa"]["waiting"], waiting["qa"]["running"]) == (3, 1)
        assert [system.queue_position(i) for i in qa_ids] == [1, 2, 3]

        standin.release("process-video")
        standin.release("ask-question")
        for job_id in [first_video, first_qa, *video_ids, *qa_ids]:
            assert wait_state(system, job_id).state == JobState.COMPLETED

        assert questions(standin) == [question(n)["question"] for n in range(4)]
        assert video_urls(standin) == [video(n)["video_url"] for n in range(4)]
        kinds = system.snapshot()["kinds"]
        for kind in ("video", "qa"):
            assert kinds[kind]["waiting"] == 0
            assert kinds[kind]["running"] == 0
            assert kinds[kind]["completed"] == 4


def test_qa_submitted_after_a_video_backlog_is_answered_first(
    one_slot_each: Settings, standin: PythonApiStandIn
) -> None:
    standin.hold("process-video")
    with started(one_slot_each) as system:
        video_ids = submit_all(system, JobKind.VIDEO, [video(n) for n in range(4)])
        assert standin.wait_in_flight("process-video", 1)
        qa_ids = submit_all(system, JobKind.QA, [question(n) for n in range(3)])

        for job_id in qa_ids:
            assert wait_state(system, job_id).state == JobState.COMPLETED
        # Every question was answered while the videos submitted before them still wait.
        assert [system.get(i).state for i in video_ids] == [
            JobState.PROCESSING, JobState.QUEUED, JobState.QUEUED, JobState.QUEUED]
        assert video_urls(standin) == [video(0)["video_url"]]
        assert questions(standin) == [question(n)["question"] for n in range(3)]

        standin.release("process-video")
        for job_id in video_ids:
            assert wait_state(system, job_id).state == JobState.COMPLETED
        assert video_urls(standin) == [video(n)["video_url"] for n in range(4)]


def test_when_one_slot_frees_the_kind_goes_by_priority_then_arrival(
    one_slot_each: Settings, standin: PythonApiStandIn
) -> None:
    standin.hold("process-video")
    with started(one_slot_each) as system:
        ids = [system.submit(JobKind.VIDEO, video(0)).job.id]
        assert standin.wait_in_flight("process-video", 1)
        for n, priority in [(1, 2), (2, 3), (3, 1), (4, 2), (5, 1)]:
            ids.append(system.submit(JobKind.VIDEO, video(n), priority=priority).job.id)
        assert [system.queue_position(i) for i in ids[1:]] == [3, 5, 1, 4, 2]

        standin.release("process-video")
        for job_id in ids:
            wait_state(system, job_id, JobState.COMPLETED)
        assert video_urls(standin) == [video(n)["video_url"] for n in (0, 3, 5, 1, 4, 2)]


def test_submission_reports_queue_position_and_a_finite_wait(
    one_slot_each: Settings, standin: PythonApiStandIn
) -> None:
    standin.hold("process-video")
    with started(one_slot_each) as system:
        first = system.submit(JobKind.VIDEO, video(0))
        assert first.queue_position == 0  # picked up by the free worker at once
        assert standin.wait_in_flight("process-video", 1)
        second = system.submit(JobKind.VIDEO, video(1))
        third = system.submit(JobKind.VIDEO, video(2))
        assert (second.queue_position, third.queue_position) == (1, 2)
        assert 0 < second.estimated_wait_s < third.estimated_wait_s
        assert system.estimate_wait_s(JobKind.VIDEO, 2) == third.estimated_wait_s
        standin.release("process-video")
        wait_state(system, third.job.id, JobState.COMPLETED)


def test_a_bad_priority_is_refused(job_system: JobSystem) -> None:
    with pytest.raises(ValueError, match="priority"):
        job_system.submit(JobKind.VIDEO, video(1), priority=0)
    with pytest.raises(ValueError, match="priority"):
        job_system.submit(JobKind.QA, question(1), priority=4)


def test_limits_are_never_exceeded_as_counted_by_the_standin(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    # The static limits (adaptive capacity starts lower: tests/test_adaptive_capacity.py).
    settings = fast_settings.replace(max_concurrent_videos=2, max_concurrent_qa=3,
                                     adaptive_concurrency=False)
    standin.hold("process-video")
    standin.hold("ask-question")
    with started(settings) as system:
        video_ids = submit_all(system, JobKind.VIDEO, [video(n) for n in range(20)])
        qa_ids = submit_all(system, JobKind.QA, [question(n) for n in range(50)])
        # Every slot is taken, and no job beyond the limits was even sent.
        assert standin.wait_in_flight("process-video", 2)
        assert standin.wait_in_flight("ask-question", 3)
        snapshot = system.snapshot()
        assert snapshot["kinds"]["video"]["running"] == 2
        assert snapshot["kinds"]["video"]["waiting"] == 18
        assert snapshot["kinds"]["qa"]["running"] == 3
        assert snapshot["kinds"]["qa"]["waiting"] == 47
        assert len(standin.calls("process-video")) == 2
        assert len(standin.calls("ask-question")) == 3

        standin.set_latency("process-video", 0.01)
        standin.set_latency("ask-question", 0.005)
        standin.release("process-video")
        standin.release("ask-question")
        for job_id in [*video_ids, *qa_ids]:
            assert wait_state(system, job_id).state == JobState.COMPLETED

    assert len(standin.calls("process-video")) == 20
    assert len(standin.calls("ask-question")) == 50
    assert standin.max_in_flight("process-video") <= 2
    assert standin.max_in_flight("ask-question") <= 3
