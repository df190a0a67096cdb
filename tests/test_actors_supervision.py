"""Supervision: a worker actor killed mid-job is replaced and its job retried; restarts are capped.

The kill is real: ``SystemExit`` is raised asynchronously in the worker's own
thread while its call is in flight. The interpreter delivers it only when that
thread runs Python bytecode, so the stand-in trickles its answer, waking the
thread's read loop every few milliseconds.
"""

from __future__ import annotations

import ctypes
import threading

import pykka
import pytest

from actors import JobKind, JobState, JobSystem, Settings
from tests.standin import PythonApiStandIn, Reply
from tests.test_actors_support import question, started, video, wait_state, wait_until
from tests.web_support import make_app

TRICKLE = Reply(body={"success": True, "message": "x" * 2000, "result": None},
                trickle_interval_s=0.05)
"""An answer that takes ~100 s to arrive: the worker is surely mid-call when it is killed."""


def worker_threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def kill(thread: threading.Thread) -> None:
    """Raise ``SystemExit`` inside ``thread`` (a BaseException no job code catches)."""
    assert thread.ident is not None
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                         ctypes.py_object(SystemExit))
    assert changed == 1, f"could not signal {thread.name}"


def kill_the_busy_video_worker(standin: PythonApiStandIn, calls: int) -> threading.Thread:
    """Wait until the ``calls``-th video call is in flight, then kill the worker making it."""
    assert standin.wait_calls("process-video", calls)
    assert standin.wait_in_flight("process-video", 1)
    (thread,) = worker_threads("VideoWorker")  # one video slot, so one video worker
    kill(thread)
    thread.join(10)
    assert not thread.is_alive(), f"{thread.name} survived SystemExit"
    return thread


def video_pool(system: JobSystem) -> dict[str, object]:
    return dict(system.snapshot()["pools"]["video"])


def test_a_killed_worker_is_replaced_and_its_job_retried(fast_settings: Settings,
                                                         standin: PythonApiStandIn) -> None:
    settings = fast_settings.replace(max_concurrent_videos=1, max_concurrent_qa=2,
                                     retry_attempts=3)
    standin.script("process-video", TRICKLE)  # the second attempt gets the normal answer
    with started(settings) as system:
        job_id = system.submit(JobKind.VIDEO, video(1)).job.id
        killed = kill_the_busy_video_worker(standin, calls=1)

        job = wait_state(system, job_id)
        assert job.state == JobState.COMPLETED
        assert job.attempts == 2  # the killed attempt counted
        assert "WorkerCrashed" in (job.last_error or "")
        assert len(job.retry_delays_s) == 1
        assert len(standin.calls("process-video")) == 2

        snapshot = system.snapshot()
        assert snapshot["supervisor"] == {"restarts": 1, "failed_pools": []}
        assert snapshot["pools"]["video"]["alive"] == snapshot["pools"]["video"]["size"] == 1
        assert snapshot["pools"]["video"]["failed"] is False
        (replacement,) = worker_threads("VideoWorker")
        assert replacement is not killed and replacement.name != killed.name
        # Only the worker died: pykka did not stop every actor, and other kinds carry on.
        assert system.alive
        assert all(actor["alive"] for actor in snapshot["actors"])
        qa_id = system.submit(JobKind.QA, question(1)).job.id
        assert wait_state(system, qa_id).state == JobState.COMPLETED
        assert len(pykka.ActorRegistry.get_by_class_name("VideoWorker")) == 1


def test_restarts_are_capped_and_a_dying_pool_is_reported(fast_settings: Settings,
                                                          standin: PythonApiStandIn) -> None:
    settings = fast_settings.replace(max_concurrent_videos=1, retry_attempts=3,
                                     worker_max_restarts=1)
    standin.script("process-video", TRICKLE, TRICKLE)
    with started(settings) as system:
        job_id = system.submit(JobKind.VIDEO, video(1)).job.id

        kill_the_busy_video_worker(standin, calls=1)
        wait_until(lambda: system.snapshot()["supervisor"]["restarts"] == 1,
                   "the first dead worker to be replaced")

        kill_the_busy_video_worker(standin, calls=2)  # the replacement, on the retry
        wait_until(lambda: video_pool(system)["failed"], "the video pool to be reported failed")

        snapshot = system.snapshot()
        assert snapshot["supervisor"] == {"restarts": 1, "failed_pools": ["video"]}
        assert snapshot["pools"]["video"]["alive"] == 0
        assert worker_threads("VideoWorker") == []
        # The second crash counted as an attempt too; the job waits for a worker that will
        # not come back (it is not lost: it stays in the store, queued).
        job = wait_state(system, job_id, JobState.QUEUED, JobState.RETRYING)
        assert job.attempts == 2
        assert len(standin.calls("process-video")) == 2
        # Q&A does not depend on the video pool.
        assert system.alive
        qa_id = system.submit(JobKind.QA, question(1)).job.id
        assert wait_state(system, qa_id).state == JobState.COMPLETED


# The dying thread's SystemExit reaches threading.excepthook, which pytest turns into a warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_worker_that_died_while_idle_does_not_strand_the_next_job(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    """A worker thread can die outside ``Worker._run`` (here: ``SystemExit`` delivered as it
    wakes up for its next message, before pykka's handler runs). Its job must not stay
    ``processing`` forever with the slot held, and no dead actor may stay registered."""
    settings = fast_settings.replace(max_concurrent_videos=1, job_timeout_s=0.5,
                                     retry_attempts=3, ask_timeout_s=2.0,
                                     python_api_connect_timeout_s=0.5, overdue_grace_s=0.5)
    refs = pykka.ActorRegistry.get_by_class_name("VideoWorker")  # none yet
    try:
        with started(settings) as system:
            refs = pykka.ActorRegistry.get_by_class_name("VideoWorker")
            (idle,) = worker_threads("VideoWorker")
            kill(idle)  # delivered when the thread next runs Python code: when a job arrives
            job_id = system.submit(JobKind.VIDEO, video(1)).job.id
            idle.join(10)
            assert not idle.is_alive()

            job = wait_state(system, job_id, timeout=5)
            assert job.state == JobState.COMPLETED
            assert job.attempts == 2
            assert system.snapshot()["supervisor"]["restarts"] == 1
        assert pykka.ActorRegistry.get_all() == []
    finally:
        for ref in refs:  # keep a zombie from failing every later test
            pykka.ActorRegistry.unregister(ref)


def test_a_pool_whose_restarts_are_used_up_starts_again_after_its_window(
        fast_settings: Settings, standin: PythonApiStandIn) -> None:
    settings = fast_settings.replace(max_concurrent_videos=1, retry_attempts=3,
                                     worker_max_restarts=1, worker_restart_window_s=3.0)
    standin.script("process-video", TRICKLE, TRICKLE)  # the third attempt is answered
    with started(settings) as system:
        client = make_app(system).test_client()
        job_id = system.submit(JobKind.VIDEO, video(1)).job.id
        kill_the_busy_video_worker(standin, calls=1)
        kill_the_busy_video_worker(standin, calls=2)
        wait_until(lambda: video_pool(system)["failed"], "the video pool to be reported failed")
        ready = client.get("/health/ready")
        assert ready.status_code == 503 and "no live video worker" in ready.json["reasons"]
        # After its window the pool starts its workers again; the job's last attempt runs.
        assert wait_state(system, job_id, timeout=30).state == JobState.COMPLETED
        pool = video_pool(system)
        assert pool["revivals"] == 1 and pool["failed"] is False and pool["alive"] == 1
        assert client.get("/health/ready").status_code == 200
