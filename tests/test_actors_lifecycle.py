"""Start and stop: drain lets running jobs finish, refuses new ones, and leaves no thread behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pykka
import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.model.errors import ShuttingDown
from actors.model.jobs import Job, freeze
from actors.stores import open_store
from actors.stores.base import JobStore
from actors.stores.memory import MemoryJobStore
from tests.standin import PythonApiStandIn, Reply
from tests.test_actors_support import (
    actor_thread_names,
    question,
    started,
    video,
    video_urls,
    wait_state,
    wait_until,
)


def assert_nothing_left() -> None:
    assert pykka.ActorRegistry.get_all() == []
    assert actor_thread_names() == []
    assert not any(t.name == "Timers" for t in threading.enumerate())


def test_stop_with_drain_lets_running_jobs_finish_and_refuses_new_ones(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    store = MemoryJobStore()
    standin.hold("process-video")
    standin.hold("ask-question")
    system = JobSystem(fast_settings, store=store).start()
    try:
        video_id = system.submit(JobKind.VIDEO, video(1)).job.id
        qa_id = system.submit(JobKind.QA, question(1)).job.id
        assert standin.wait_in_flight("process-video", 1)
        assert standin.wait_in_flight("ask-question", 1)

        stopper = threading.Thread(target=system.stop, kwargs={"drain": True},
                                   name="test-stopper")
        stopper.start()
        wait_until(lambda: system.draining, "the stop to begin draining")
        assert not system.accepting
        with pytest.raises(ShuttingDown):
            system.submit(JobKind.QA, question(2))
        with pytest.raises(ShuttingDown):
            system.retry(video_id)

        standin.release("process-video")
        standin.release("ask-question")
        stopper.join(30)
        assert not stopper.is_alive()
    finally:
        system.stop(drain=False)

    assert store.get(video_id).state == JobState.COMPLETED  # type: ignore[union-attr]
    assert store.get(qa_id).state == JobState.COMPLETED  # type: ignore[union-attr]
    assert len(standin.calls("ask-question")) == 1  # the refused question never ran
    assert "stopped" in repr(system)
    with pytest.raises(ShuttingDown):
        system.submit(JobKind.QA, question(3))
    with pytest.raises(ShuttingDown):
        system.get(video_id)
    assert_nothing_left()


def test_a_queued_job_is_not_started_by_a_drain_and_stays_stored(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    store = MemoryJobStore()
    system = JobSystem(fast_settings, store=store).start()
    try:
        system.pause(JobKind.VIDEO)
        job_id = system.submit(JobKind.VIDEO, video(1)).job.id
        system.stop(drain=True)
    finally:
        system.stop(drain=False)
    assert store.get(job_id).state == JobState.QUEUED  # type: ignore[union-attr]
    assert standin.calls("process-video") == []
    assert_nothing_left()


def test_a_hung_call_is_cut_at_the_drain_deadline(fast_settings: Settings,
                                                  standin: PythonApiStandIn) -> None:
    store = MemoryJobStore()
    standin.script("process-video", Reply(hang=True))
    system = JobSystem(fast_settings, store=store).start()
    try:
        job_id = system.submit(JobKind.VIDEO, video(1)).job.id
        assert standin.wait_in_flight("process-video", 1)
        system.stop(drain=True, timeout_s=0.3)
    finally:
        system.stop(drain=False)
    assert_nothing_left()
    # The cut attempt was counted; the job is kept to be tried again, not lost or failed.
    job = store.get(job_id)
    assert job is not None
    assert job.attempts == 1
    assert job.state in (JobState.RETRYING, JobState.QUEUED)
    assert "shutting down" in (job.last_error or "")
    standin.release("process-video")


def test_stop_without_drain_cuts_running_calls_at_once(fast_settings: Settings,
                                                      standin: PythonApiStandIn) -> None:
    store = MemoryJobStore()
    standin.hold("ask-question")
    system = JobSystem(fast_settings.replace(drain_timeout_s=60.0), store=store).start()
    try:
        job_id = system.submit(JobKind.QA, question(1)).job.id
        assert standin.wait_in_flight("ask-question", 1)
    finally:
        system.stop(drain=False)  # does not wait out the 60 s drain deadline
    assert_nothing_left()
    job = store.get(job_id)
    assert job is not None and job.state == JobState.RETRYING
    assert "shutting down" in (job.last_error or "")
    standin.release("ask-question")


def test_stop_is_idempotent_and_start_happens_once(fast_settings: Settings) -> None:
    system = JobSystem(fast_settings)
    assert "new" in repr(system)
    with pytest.raises(ShuttingDown):
        system.submit(JobKind.QA, question(1))  # not started
    system.start()
    assert system.alive and system.accepting
    with pytest.raises(RuntimeError, match="starts once"):
        system.start()
    system.stop()
    system.stop()
    system.stop(drain=False)
    assert not system.alive
    assert_nothing_left()
    never_started = JobSystem(fast_settings)
    never_started.stop()
    assert "stopped" in repr(never_started)


# --- recovery: nothing accepted is lost (DESIGN.md §7) --------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def durable(request: pytest.FixtureRequest, fast_settings: Settings,
            tmp_path: Path) -> tuple[Settings, JobStore]:
    """Settings and one store instance shared by consecutive job systems (a restart)."""
    settings = fast_settings.replace(store=request.param,
                                     db_path=str(tmp_path / "jobs.sqlite3"))
    return settings, MemoryJobStore() if request.param == "memory" else open_store(settings)


def test_jobs_accepted_before_a_restart_are_run_after_it(
    fast_settings: Settings, standin: PythonApiStandIn, tmp_path: Path
) -> None:
    settings = fast_settings.replace(store="sqlite", db_path=str(tmp_path / "jobs.sqlite3"))
    first = JobSystem(settings).start()
    try:
        first.pause(JobKind.VIDEO)
        first.pause(JobKind.QA)
        video_id = first.submit(JobKind.VIDEO, video(1)).job.id
        qa_id = first.submit(JobKind.QA, question(1)).job.id
    finally:
        first.stop(drain=True)
    assert standin.calls("process-video") == standin.calls("ask-question") == []

    with started(settings) as second:  # a new process would open the same file
        assert wait_state(second, video_id).state == JobState.COMPLETED
        assert wait_state(second, qa_id).state == JobState.COMPLETED
        assert video_urls(standin) == [video(1)["video_url"]]
        again = second.submit(JobKind.QA, question(2)).job
        assert again.seq > second.get(qa_id).seq  # arrival order continues


def stored(job_id: str, *, state: JobState, attempts: int, seq: int, **fields: Any) -> Job:
    """A job record as a process that died would have left it in the store."""
    return Job(id=job_id, kind=JobKind.VIDEO, priority=2, data=freeze(video(seq)),
               state=state, attempts=attempts, max_attempts=3, created_at=time.time(),
               seq=seq, **fields)


def test_unfinished_jobs_left_in_the_store_are_recovered(
    durable: tuple[Settings, JobStore], standin: PythonApiStandIn
) -> None:
    settings, store = durable
    now = time.time()
    long_ago = now - 3600  # the process died long enough ago for its calls' hold to be over
    for job in (
        stored("was-queued", state=JobState.QUEUED, attempts=0, seq=1),
        stored("was-running", state=JobState.PROCESSING, attempts=1, seq=2,
               started_at=long_ago),
        stored("was-retrying", state=JobState.RETRYING, attempts=1, seq=3,
               next_attempt_at=now - 1, last_error="RetryableCallFailure: 500"),
        stored("was-on-its-last-attempt", state=JobState.PROCESSING, attempts=3, seq=4,
               started_at=long_ago),
    ):
        store.add(job)

    with started(settings, store=store) as system:
        queued = wait_state(system, "was-queued")
        running = wait_state(system, "was-running")
        retrying = wait_state(system, "was-retrying")
        last = wait_state(system, "was-on-its-last-attempt")

    assert (queued.state, queued.attempts) == (JobState.COMPLETED, 1)
    # The attempt the dead process was making counts.
    assert (running.state, running.attempts) == (JobState.COMPLETED, 2)
    assert "interrupted" in (running.last_error or "")
    assert (retrying.state, retrying.attempts) == (JobState.COMPLETED, 2)
    assert last.state == JobState.FAILED
    assert last.attempts == 3
    assert "interrupted" in (last.last_error or "")
    assert sorted(video_urls(standin)) == [video(n)["video_url"] for n in (1, 2, 3)]


def test_a_job_whose_call_may_still_run_at_the_python_api_waits_for_its_hold(
    durable: tuple[Settings, JobStore], standin: PythonApiStandIn
) -> None:
    settings, store = durable
    started_at = time.time() - 1.0  # the process died a second into the call
    store.add(stored("was-running", state=JobState.PROCESSING, attempts=1, seq=1,
                     started_at=started_at))
    with started(settings, store=store) as system:
        job = wait_state(system, "was-running", JobState.RETRYING)
        # Not sent again on top of a call the Python API may still be processing.
        assert job.next_attempt_at == started_at + settings.call_hold_s
        assert standin.calls("process-video") == []
        assert "interrupted" in (job.last_error or "")
