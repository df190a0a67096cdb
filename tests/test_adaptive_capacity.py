"""One adaptive capacity per Python API instance, through real actors and a stand-in with a knee.

Counted at the stand-in, from its own side: adaptive mode keeps the work in progress near
the knee and every job completes; static mode sends what it always sent; a question never
waits for a video, however long the video waited; Retry-After holds the instance's calls.
"""

from __future__ import annotations

import pytest

from actors import JobKind, JobState, Settings
from tests.standin import Knee, PythonApiStandIn, Reply
from tests.test_actors_support import (
    question,
    started,
    submit_all,
    video,
    wait_state,
)
from tests.test_metrics import scrape, value
from tests.web_support import make_app

pytestmark = pytest.mark.timeout(120)
KNEE = 4


def test_adaptive_keeps_the_standin_near_its_knee_and_every_job_completes(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    standin.set_knee(Knee(limit=KNEE, slowdown=5.0, fail_every=2))
    standin.set_latency("ask-question", 0.05)
    standin.set_latency("process-video", 0.1)
    with started(fast_settings) as system:
        ids = submit_all(system, JobKind.VIDEO, [video(n) for n in range(3)])
        ids += submit_all(system, JobKind.QA, [question(n) for n in range(80)])
        done = [wait_state(system, job_id, timeout=60) for job_id in ids]
        capacity = system.snapshot()["instances"][0]["capacity"]

    assert [job.state for job in done] == [JobState.COMPLETED] * len(ids)
    # Counted by the stand-in: in progress, both kinds together, never far above its knee
    # (the limiter probes above it until the slowed answers come back; static sends 12).
    assert standin.max_unanswered_work() <= KNEE + 3
    assert capacity["adaptive"] is True
    assert 2 <= capacity["limit"] <= KNEE + 3


def test_static_limits_send_both_kinds_at_their_maximums_as_before(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    settings = fast_settings.replace(adaptive_concurrency=False)
    standin.set_knee(Knee(limit=KNEE))
    standin.hold("ask-question")
    standin.hold("process-video")
    with started(settings) as system:
        submit_all(system, JobKind.VIDEO, [video(n) for n in range(4)])
        submit_all(system, JobKind.QA, [question(n) for n in range(20)])
        assert standin.wait_in_flight("process-video", 2)
        assert standin.wait_in_flight("ask-question", 10)
        snapshot = system.snapshot()
        assert snapshot["instances"][0]["limits"] == {"video": 2, "qa": 10}
        assert snapshot["instances"][0]["capacity"] == {
            "adaptive": False, "limit": 12, "reason": "static limits"}
        standin.release("ask-question")
        standin.release("process-video")
    assert standin.max_unanswered_work() == 12  # far above the knee: today's behaviour


def test_a_question_takes_freed_capacity_before_an_older_aged_video(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    # Aging lifts every video to priority 1 at once: tied with questions, and older.
    settings = fast_settings.replace(aging_s=0.001)
    standin.hold("process-video")
    standin.hold("ask-question")
    with started(settings) as system:
        videos = submit_all(system, JobKind.VIDEO, [video(n) for n in range(3)])
        assert standin.wait_in_flight("process-video", 1)  # capacity 2: one video, one spare
        questions = submit_all(system, JobKind.QA, [question(n) for n in range(2)])
        assert standin.wait_in_flight("ask-question", 1)
        standin.release("process-video")  # the first video answers: one unit is free
        assert wait_state(system, videos[0]).state == JobState.COMPLETED
        assert standin.wait_in_flight("ask-question", 2)
        kinds = system.snapshot()["kinds"]
        # The question took it; both older videos wait while the questions hold the capacity.
        assert (kinds["video"]["waiting"], kinds["video"]["running"]) == (2, 0)
        assert len(standin.calls("process-video")) == 1
        standin.release("ask-question")
        for job_id in videos + questions:
            assert wait_state(system, job_id).state == JobState.COMPLETED


def test_retry_after_holds_every_new_call_to_the_instance_and_the_retry(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    standin.script("ask-question", Reply(status=503, headers={"Retry-After": "30"}))
    with started(fast_settings.replace(backoff_max_s=60.0)) as system:
        first = system.submit(JobKind.QA, question(0)).job.id
        retrying = wait_state(system, first, JobState.RETRYING)
        second = system.submit(JobKind.QA, question(1)).job.id
        snapshot = system.snapshot()
        capacity = snapshot["instances"][0]["capacity"]
        assert capacity["reason"] == "qa answered 503" or capacity["limit"] == 2
        assert capacity["cooling_s"] > 0
        assert snapshot["kinds"]["qa"]["waiting"] == 1  # the second question waits ...
        assert system.get(second).state == JobState.QUEUED
        assert len(standin.calls("ask-question")) == 1  # ... nothing more was sent
        assert retrying.retry_delays_s[-1] >= 29.0  # the retry waits out the Retry-After too
        system.cancel(first)
        system.cancel(second)


def test_the_limit_and_why_it_moved_are_in_snapshot_status_and_metrics(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    standin.script("ask-question", Reply(status=500))
    with started(fast_settings) as system:
        job_id = system.submit(JobKind.QA, question(0)).job.id
        assert wait_state(system, job_id).state == JobState.COMPLETED
        snapshot = system.snapshot()
        instance = snapshot["instances"][0]
        assert instance["limits"] == {"video": 1, "qa": 2}
        assert instance["capacity"]["limit"] == 2
        assert instance["capacity"]["last_signal"] == "qa answered 500"
        assert snapshot["kinds"]["qa"]["limit"] == 2

        client = make_app(system).test_client()
        status = client.get("/api/queue/status").get_json()["data"]
        assert status["queues"]["qa"]["concurrencyLimit"] == 2
        assert status["queues"]["qa"]["adaptiveConcurrency"] is True
        shown = status["pythonInstances"][0]["capacity"]
        assert (shown["limit"], shown["lastSignal"]) == (2, "qa answered 500")
        assert shown["reason"] == "start: the operator minimum"
        samples = scrape(client)
        assert value(samples, "qudemo_python_api_concurrency_limit", instance=standin.url,
                     kind="all") == 2
        assert value(samples, "qudemo_python_api_concurrency_limit", instance=standin.url,
                     kind="video") == 1
