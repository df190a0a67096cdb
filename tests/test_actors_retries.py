"""Attempts, the recorded backoff schedule, what is retried, what fails at once, deadlines."""

from __future__ import annotations

import email.utils
import random
import socket
import time

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.dispatch.scheduling import backoff_delay_s
from actors.work.python_api import parse_retry_after
from tests.standin import PythonApiStandIn, Reply
from tests.test_actors_support import question, started, video, wait_state

# --- attempts and the backoff schedule -----------------------------------------------


def test_a_job_failing_every_time_stops_after_its_attempts_with_doubling_capped_delays(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    settings = fast_settings.replace(retry_attempts=5, backoff_base_s=0.02, backoff_max_s=0.1,
                                     backoff_jitter=0.2)
    standin.script("process-video", *[Reply(status=500)] * 5)
    with started(settings, rng=random.Random(42)) as system:
        job = wait_state(system, system.submit(JobKind.VIDEO, video(1)).job.id)

    assert job.state == JobState.FAILED
    assert job.attempts == 5
    assert len(standin.calls("process-video")) == 5
    assert job.last_error is not None and "500" in job.last_error
    assert job.last_error.startswith("RetryableCallFailure")
    # One recorded delay per retry: base * 2^(n-1), capped, jittered down by at most 20%.
    assert len(job.retry_delays_s) == 4
    for attempt, delay in enumerate(job.retry_delays_s, start=1):
        nominal = min(0.1, 0.02 * 2 ** (attempt - 1))
        assert nominal * 0.8 - 1e-9 <= delay <= nominal + 1e-9, (attempt, job.retry_delays_s)
    # With the same seed, the schedule is exactly the one backoff_delay_s computes.
    rng = random.Random(42)
    expected = [backoff_delay_s(n, base_s=0.02, max_s=0.1, jitter=0.2, rng=rng)
                for n in range(1, 5)]
    assert list(job.retry_delays_s) == pytest.approx(expected)


def test_a_job_that_recovers_completes_on_a_later_attempt(
    job_system: JobSystem, standin: PythonApiStandIn
) -> None:
    standin.script("ask-question", Reply(status=503), Reply(status=502))
    job = wait_state(job_system, job_system.submit(JobKind.QA, question(1)).job.id)
    assert job.state == JobState.COMPLETED
    assert job.attempts == 3
    assert len(job.retry_delays_s) == 2
    assert len(standin.calls("ask-question")) == 3
    assert job.result is not None and job.result["answer"] == "This is the answer."


def test_retry_after_is_honoured_as_a_floor(fast_settings: Settings,
                                            standin: PythonApiStandIn) -> None:
    settings = fast_settings.replace(retry_attempts=2, backoff_base_s=0.01, backoff_max_s=5.0)
    standin.script("process-video", Reply(status=429, headers={"Retry-After": "1"}))
    with started(settings) as system:
        job = wait_state(system, system.submit(JobKind.VIDEO, video(1)).job.id)
    assert job.state == JobState.COMPLETED
    assert job.attempts == 2
    assert job.retry_delays_s == (1.0,)  # not the ~0.01 s the backoff alone would give
    assert "429" in (job.last_error or "")


def test_retry_after_beyond_the_cap_is_capped(fast_settings: Settings,
                                              standin: PythonApiStandIn) -> None:
    settings = fast_settings.replace(retry_attempts=2, backoff_base_s=0.01, backoff_max_s=0.2)
    standin.script("ask-question", Reply(status=429, headers={"Retry-After": "3600"}))
    with started(settings) as system:
        job = wait_state(system, system.submit(JobKind.QA, question(1)).job.id)
    assert job.state == JobState.COMPLETED
    assert job.retry_delays_s == (0.2,)


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 7 ") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 50.0 < (parse_retry_after(in_a_minute) or 0.0) <= 60.0
    past = email.utils.formatdate(time.time() - 60, usegmt=True)
    assert parse_retry_after(past) == 0.0


@pytest.mark.parametrize("status", [408, 500, 503])
def test_retryable_statuses_are_retried(job_system: JobSystem, standin: PythonApiStandIn,
                                        status: int) -> None:
    standin.script("process-video", Reply(status=status))
    job = wait_state(job_system, job_system.submit(JobKind.VIDEO, video(1)).job.id)
    assert job.state == JobState.COMPLETED
    assert job.attempts == 2
    assert str(status) in (job.last_error or "")
    assert len(standin.calls("process-video")) == 2


def test_a_connection_dropped_without_an_answer_is_retried(
    job_system: JobSystem, standin: PythonApiStandIn
) -> None:
    standin.script("process-video", Reply(hang=True))
    job_id = job_system.submit(JobKind.VIDEO, video(1)).job.id
    assert standin.wait_in_flight("process-video", 1)
    standin.release("process-video")  # the stand-in closes the connection without a reply
    job = wait_state(job_system, job_id)
    assert job.state == JobState.COMPLETED
    assert job.attempts == 2
    assert "unreachable" in (job.last_error or "")


def test_invalid_json_in_a_200_is_retried(job_system: JobSystem,
                                          standin: PythonApiStandIn) -> None:
    standin.script("ask-question", Reply(raw_body=b"<html>proxy error</html>"))
    job = wait_state(job_system, job_system.submit(JobKind.QA, question(1)).job.id)
    assert job.state == JobState.COMPLETED
    assert job.attempts == 2
    assert "invalid JSON" in (job.last_error or "")


def test_an_unreachable_python_api_is_retried_until_attempts_run_out(
    fast_settings: Settings,
) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = fast_settings.replace(python_api_base_url=f"http://127.0.0.1:{port}",
                                     retry_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02)
    with started(settings) as system:
        job = wait_state(system, system.submit(JobKind.QA, question(1)).job.id)
    assert job.state == JobState.FAILED
    assert job.attempts == 3
    assert len(job.retry_delays_s) == 2
    assert "unreachable" in (job.last_error or "")


# --- permanent failures --------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422])
def test_client_errors_fail_at_once(job_system: JobSystem, standin: PythonApiStandIn,
                                    status: int) -> None:
    standin.script("process-video", Reply(status=status))
    job = wait_state(job_system, job_system.submit(JobKind.VIDEO, video(1)).job.id)
    assert job.state == JobState.FAILED
    assert job.attempts == 1
    assert job.retry_delays_s == ()
    assert len(standin.calls("process-video")) == 1
    assert (job.last_error or "").startswith("PermanentCallFailure")
    assert str(status) in (job.last_error or "")


def test_a_body_the_python_api_rejects_fails_at_once(job_system: JobSystem,
                                                     standin: PythonApiStandIn) -> None:
    job = wait_state(job_system, job_system.submit(JobKind.QA, {"company_name": "acme"}).job.id)
    assert job.state == JobState.FAILED
    assert job.attempts == 1
    assert "422" in (job.last_error or "")
    assert len(standin.calls("ask-question")) == 1


def test_success_with_a_null_result_is_a_processing_failure(
    job_system: JobSystem, standin: PythonApiStandIn
) -> None:
    standin.script("process-video", Reply(body={
        "success": True, "message": "Video processed successfully", "company_name": "acme",
        "video_url": video(1)["video_url"], "result": None}))
    job = wait_state(job_system, job_system.submit(JobKind.VIDEO, video(1)).job.id)
    assert job.state == JobState.FAILED
    assert job.attempts == 1
    assert job.result is None
    assert "processing failed" in (job.last_error or "")
    assert len(standin.calls("process-video")) == 1


def test_a_result_reporting_failure_is_a_processing_failure(
    job_system: JobSystem, standin: PythonApiStandIn
) -> None:
    standin.script("process-video", Reply(body={
        "success": True, "message": "done", "result": {"success": False,
                                                       "error": "no audio track"}}))
    job = wait_state(job_system, job_system.submit(JobKind.VIDEO, video(1)).job.id)
    assert job.state == JobState.FAILED
    assert job.attempts == 1
    assert "no audio track" in (job.last_error or "")


def test_a_question_answered_with_success_false_fails_at_once(
    job_system: JobSystem, standin: PythonApiStandIn
) -> None:
    standin.script("ask-question", Reply(body={"success": False,
                                               "detail": "no transcript indexed"}))
    job = wait_state(job_system, job_system.submit(JobKind.QA, question(1)).job.id)
    assert job.state == JobState.FAILED
    assert job.attempts == 1
    assert "no transcript indexed" in (job.last_error or "")
    assert len(standin.calls("ask-question")) == 1


# --- the hard deadline ---------------------------------------------------------------


def test_a_trickling_response_is_cut_at_the_deadline_and_frees_its_slot(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    settings = fast_settings.replace(job_timeout_s=0.5, retry_attempts=1,
                                     max_concurrent_videos=1)
    long_body = {"success": True, "message": "x" * 400, "result": None}
    standin.script("process-video", Reply(body=long_body, trickle_interval_s=0.1))
    with started(settings) as system:
        job = wait_state(system, system.submit(JobKind.VIDEO, video(1)).job.id)
        assert job.state == JobState.FAILED
        assert (job.last_error or "").startswith("DeadlineExceeded")
        assert "deadline" in (job.last_error or "")
        # The connection was really closed: the stand-in stopped trickling into it.
        assert standin.wait_for(lambda s: s.in_flight("process-video") == 0)
        assert standin.calls("process-video")[0].finished_at is not None
        # The one video slot is free again.
        follow_up = wait_state(system, system.submit(JobKind.VIDEO, video(2)).job.id)
        assert follow_up.state == JobState.COMPLETED
        assert system.snapshot()["pools"]["video"]["busy"] == 0


def test_a_hung_call_is_cut_at_the_deadline_and_retried(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    settings = fast_settings.replace(job_timeout_s=0.3, retry_attempts=2)
    standin.script("ask-question", Reply(hang=True))
    with started(settings) as system:
        job = wait_state(system, system.submit(JobKind.QA, question(1)).job.id)
    standin.release("ask-question")
    assert job.state == JobState.COMPLETED
    assert job.attempts == 2
    assert (job.last_error or "").startswith("DeadlineExceeded")
