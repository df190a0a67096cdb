"""Operations on jobs: cancel, retry, a full queue refused, duplicates refused."""

from __future__ import annotations

import threading

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.model.errors import (
    DuplicateJob,
    JobNotFound,
    JobStateConflict,
    QueueFull,
    SubmissionRefused,
)
from tests.standin import PythonApiStandIn, Reply
from tests.test_actors_support import (
    question,
    started,
    submit_all,
    video,
    video_urls,
    wait_state,
)


@pytest.fixture
def one_video_slot(fast_settings: Settings) -> Settings:
    return fast_settings.replace(max_concurrent_videos=1)


# --- cancel --------------------------------------------------------------------------


def test_cancel_a_queued_job_which_is_then_never_called(one_video_slot: Settings,
                                                        standin: PythonApiStandIn) -> None:
    standin.hold("process-video")
    with started(one_video_slot) as system:
        running, doomed = submit_all(system, JobKind.VIDEO, [video(0), video(1)])
        assert standin.wait_in_flight("process-video", 1)

        cancelled = system.cancel(doomed)
        assert cancelled.state == JobState.CANCELLED
        assert cancelled.finished_at is not None
        assert system.queue_position(doomed) is None
        assert system.snapshot()["kinds"]["video"]["waiting"] == 0

        standin.release("process-video")
        later = system.submit(JobKind.VIDEO, video(2)).job.id
        wait_state(system, running, JobState.COMPLETED)
        wait_state(system, later, JobState.COMPLETED)
        # The cancelled job would have run before the later one: it never reached the API.
        assert video_urls(standin) == [video(0)["video_url"], video(2)["video_url"]]
        assert system.get(doomed).state == JobState.CANCELLED
        assert system.snapshot()["kinds"]["video"]["cancelled"] == 1


def test_cancel_a_retrying_job_and_its_retry_never_happens(fast_settings: Settings,
                                                           standin: PythonApiStandIn) -> None:
    settings = fast_settings.replace(backoff_base_s=0.2, backoff_max_s=0.2, retry_attempts=3)
    standin.script("process-video", Reply(status=500))
    with started(settings) as system:
        job_id = system.submit(JobKind.VIDEO, video(1)).job.id
        job = wait_state(system, job_id, JobState.RETRYING)
        assert job.next_attempt_at is not None
        assert system.snapshot()["kinds"]["video"]["retrying"] == 1

        assert system.cancel(job_id).state == JobState.CANCELLED
        assert system.snapshot()["kinds"]["video"]["retrying"] == 0

        # The timer thread runs callbacks in due order: once a callback due after the
        # cancelled retry has run, that retry's moment has passed.
        passed = threading.Event()
        system.timers.call_later(0.4, passed.set)
        assert passed.wait(10)
        system.snapshot()  # the Dispatcher has handled anything the timer told it before
        assert len(standin.calls("process-video")) == 1
        assert system.get(job_id).state == JobState.CANCELLED
        assert system.get(job_id).attempts == 1


def test_a_processing_job_cannot_be_cancelled(job_system: JobSystem,
                                              standin: PythonApiStandIn) -> None:
    standin.hold("ask-question")
    job_id = job_system.submit(JobKind.QA, question(1)).job.id
    assert standin.wait_in_flight("ask-question", 1)
    with pytest.raises(JobStateConflict, match="processing"):
        job_system.cancel(job_id)
    standin.release("ask-question")
    assert wait_state(job_system, job_id).state == JobState.COMPLETED
    with pytest.raises(JobStateConflict, match="completed"):
        job_system.cancel(job_id)


def test_unknown_jobs_are_not_found(job_system: JobSystem) -> None:
    for operation in (job_system.get, job_system.cancel, job_system.retry):
        with pytest.raises(JobNotFound):
            operation("no-such-job")
    assert job_system.queue_position("no-such-job") is None


# --- retry ---------------------------------------------------------------------------


def test_retry_of_a_failed_job_requeues_it_with_a_fresh_attempt_budget(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    settings = fast_settings.replace(retry_attempts=2, backoff_base_s=0.01, backoff_max_s=0.02)
    standin.script("process-video", Reply(status=500), Reply(status=500), Reply(status=500))
    with started(settings) as system:
        job_id = system.submit(JobKind.VIDEO, video(1)).job.id
        failed = wait_state(system, job_id)
        assert (failed.state, failed.attempts) == (JobState.FAILED, 2)

        again = system.retry(job_id)
        assert again.job.id == job_id
        assert again.job.attempts == 0
        assert again.job.retry_delays_s == ()
        # One more 500, then success: only possible with a fresh budget of 2 attempts.
        done = wait_state(system, job_id)
        assert done.state == JobState.COMPLETED
        assert done.attempts == 2
        assert len(done.retry_delays_s) == 1
        assert len(standin.calls("process-video")) == 4
        counts = system.snapshot()["kinds"]["video"]
        assert (counts["failed"], counts["completed"]) == (0, 1)

        with pytest.raises(JobStateConflict, match="completed"):
            system.retry(job_id)


def test_retry_of_an_active_job_is_a_conflict(job_system: JobSystem,
                                              standin: PythonApiStandIn) -> None:
    standin.hold("ask-question")
    job_id = job_system.submit(JobKind.QA, question(1)).job.id
    assert standin.wait_in_flight("ask-question", 1)
    with pytest.raises(JobStateConflict, match="processing"):
        job_system.retry(job_id)
    standin.release("ask-question")
    wait_state(job_system, job_id)


# --- admission -----------------------------------------------------------------------


def test_a_full_queue_refuses_with_a_clear_error_and_other_kinds_go_on(
    one_video_slot: Settings, standin: PythonApiStandIn
) -> None:
    settings = one_video_slot.replace(max_waiting_videos=2)
    standin.hold("process-video")
    with started(settings) as system:
        accepted: list[str] = []
        with pytest.raises(QueueFull) as refused:
            for n in range(10):
                accepted.append(system.submit(JobKind.VIDEO, video(n)).job.id)
        # One running plus two waiting; the fourth is refused.
        assert len(accepted) == 3
        assert isinstance(refused.value, SubmissionRefused)
        assert "video queue is full" in str(refused.value)
        assert "2 waiting" in str(refused.value)
        assert refused.value.retry_after_s > 0

        qa_id = system.submit(JobKind.QA, question(1)).job.id
        assert wait_state(system, qa_id).state == JobState.COMPLETED

        standin.release("process-video")
        for job_id in accepted:
            wait_state(system, job_id, JobState.COMPLETED)
        # Room again once the queue has drained.
        later = system.submit(JobKind.VIDEO, video(99)).job.id
        assert wait_state(system, later).state == JobState.COMPLETED


def test_a_duplicate_of_an_active_job_is_refused_until_it_finishes(
    job_system: JobSystem, standin: PythonApiStandIn
) -> None:
    standin.hold("process-video")
    key = "acme:" + video(1)["video_url"]
    first = job_system.submit(JobKind.VIDEO, video(1), dedupe_key=key).job.id
    assert standin.wait_in_flight("process-video", 1)

    with pytest.raises(DuplicateJob) as duplicate:
        job_system.submit(JobKind.VIDEO, video(1), dedupe_key=key)
    assert duplicate.value.existing_job_id == first
    other = job_system.submit(JobKind.VIDEO, video(2), dedupe_key="acme:other").job.id

    standin.release("process-video")
    assert wait_state(job_system, first).state == JobState.COMPLETED
    wait_state(job_system, other, JobState.COMPLETED)
    second = job_system.submit(JobKind.VIDEO, video(1), dedupe_key=key).job.id
    assert second != first
    assert wait_state(job_system, second).state == JobState.COMPLETED


def test_retry_of_a_failed_job_is_refused_while_its_duplicate_is_active(
    job_system: JobSystem, standin: PythonApiStandIn
) -> None:
    key = "acme:video-1"
    standin.script("process-video", Reply(status=404))
    failed = job_system.submit(JobKind.VIDEO, video(1), dedupe_key=key).job.id
    assert wait_state(job_system, failed).state == JobState.FAILED
    standin.hold("process-video")
    newer = job_system.submit(JobKind.VIDEO, video(1), dedupe_key=key).job.id
    with pytest.raises(DuplicateJob) as duplicate:
        job_system.retry(failed)
    assert duplicate.value.existing_job_id == newer
    standin.release("process-video")
    assert wait_state(job_system, newer).state == JobState.COMPLETED


def test_submit_stores_owner_priority_and_data(job_system: JobSystem,
                                              standin: PythonApiStandIn) -> None:
    standin.hold("process-video")
    sub = job_system.submit(JobKind.VIDEO, video(1), owner="user-7", priority=3)
    assert sub.job.owner == "user-7"
    assert sub.job.priority == 3
    assert sub.job.max_attempts == job_system.settings.retry_attempts
    assert dict(sub.job.data) == video(1)
    assert sub.job.created_at > 0
    listed = job_system.list_jobs(owner="user-7")
    assert [job.id for job in listed] == [sub.job.id]
    assert job_system.list_jobs(owner="someone-else") == []
    qa_default = job_system.submit(JobKind.QA, question(1))
    assert qa_default.job.priority == 1
    assert job_system.list_jobs(kind=JobKind.QA)[0].id == qa_default.job.id
    standin.release("process-video")
    wait_state(job_system, sub.job.id)
    wait_state(job_system, qa_default.job.id)
