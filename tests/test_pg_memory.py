"""Memory pressure with the shared (PostgreSQL) queue stays where it is (DESIGN.md §8, I5).

Two job systems on one real PostgreSQL schema are two instances; each has its
own process-memory reader (a value the test sets) and both read the one
stand-in's ``/memory-status``. One instance's own RSS pauses video claims on
that instance only; the Python API's memory, shared by every instance, pauses
video on all of them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from tests import pg_server
from tests.standin import PythonApiStandIn
from tests.test_actors_support import question, video, video_urls, wait_until

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
pytestmark = pytest.mark.timeout(120)

THRESHOLD_MB = 1000.0  # resume below 900 (ratio 0.9)


class Rss:
    """The process memory one instance's watchdog reads: whatever the test last set."""

    def __init__(self, mb: float) -> None:
        self.mb = mb

    def __call__(self) -> float:
        return self.mb


Start = Callable[[Rss], JobSystem]


@pytest.fixture
def start(pg_url: str, fast_settings: Settings) -> Iterator[Start]:
    """Start instances on the test's schema, each with its own RSS; all stopped afterwards."""
    started: list[JobSystem] = []

    def start_instance(rss: Rss) -> JobSystem:
        settings = dataclasses.replace(fast_settings, store="postgres", database_url=pg_url,
                                       memory_threshold_mb=THRESHOLD_MB, max_memory_mb=1500.0,
                                       memory_resume_ratio=0.9, poll_interval_s=0.2)
        system = JobSystem(settings, rss_reader=rss).start()
        started.append(system)
        return system

    yield start_instance
    for system in started:
        system.stop(drain=False)


def video_pause_reasons(system: JobSystem) -> list[str]:
    return list(system.snapshot()["kinds"]["video"]["pause_reasons"])


def running_on(system: JobSystem) -> set[str]:
    return {r["job_id"] for r in system.snapshot()["running_jobs"]}


def runs_on(submitter: JobSystem, runner: JobSystem, idle: JobSystem,
            standin: PythonApiStandIn, n: int) -> None:
    """Submit video ``n`` on ``submitter``; show ``runner`` runs it and ``idle`` does not."""
    standin.hold("process-video")
    job_id = submitter.submit(JobKind.VIDEO, video(n)).job.id
    try:
        assert standin.wait_in_flight("process-video", 1)
        assert wait_until(lambda: running_on(runner) == {job_id}, f"video {n} on the runner")
        assert running_on(idle) == set()
    finally:
        standin.release("process-video")
    assert wait_until(lambda: submitter.get(job_id).state == JobState.COMPLETED)


def test_one_instances_high_rss_pauses_video_only_there_the_python_apis_everywhere(
        start: Start, standin: PythonApiStandIn) -> None:
    a_rss, b_rss = Rss(1200.0), Rss(200.0)  # a over the threshold, b well below
    a, b = start(a_rss), start(b_rss)
    a_id = a.snapshot()["shared_queue"]["instance_id"]
    assert a.check_memory().pressure is True
    assert b.check_memory().pressure is False
    # Local to a: b reads the pause rows of every instance and sees none.
    assert video_pause_reasons(a) == ["process memory"]
    assert video_pause_reasons(b) == []
    runs_on(a, b, a, standin, 1)  # submitted on a, claimed and run by b

    # The other way round: the pause follows the process whose memory is high.
    a_rss.mb, b_rss.mb = 300.0, 1200.0
    assert a.check_memory().pressure is False
    assert b.check_memory().pressure is True
    assert video_pause_reasons(a) == []
    assert video_pause_reasons(b) == ["process memory"]
    runs_on(b, a, b, standin, 2)

    # The Python API's memory is every instance's: seen by a, it pauses b too.
    b_rss.mb = 300.0
    assert b.check_memory().pressure is False
    standin.set_memory(1200.0)  # above the threshold, below the admission limit
    assert a.check_memory().pressure is True
    assert wait_until(lambda: video_pause_reasons(b) == [f"memory@{a_id}"])
    video_id = b.submit(JobKind.VIDEO, video(3)).job.id
    qa_id = b.submit(JobKind.QA, question(1)).job.id
    assert wait_until(lambda: b.get(qa_id).state == JobState.COMPLETED)
    assert b.get(video_id).state == JobState.QUEUED
    standin.set_memory(500.0)
    assert a.check_memory().pressure is False
    assert wait_until(lambda: b.get(video_id).state == JobState.COMPLETED)
    assert video_urls(standin) == [video(n)["video_url"] for n in (1, 2, 3)]
