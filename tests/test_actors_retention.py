"""Retention: finished jobs stay readable for a bounded count and age, then are removed."""

from __future__ import annotations

import pytest

from actors import JobKind, JobState, Settings
from actors.model.errors import JobNotFound
from actors.runtime.timers import Clock
from tests.standin import PythonApiStandIn
from tests.test_actors_support import question, started, wait_gone, wait_state


class SkippingClock(Clock):
    """The real wall clock plus an offset the test moves forward (jobs' timestamps only)."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def time(self) -> float:
        return super().time() + self.offset_s


def test_only_the_newest_finished_jobs_are_kept(fast_settings: Settings,
                                                standin: PythonApiStandIn) -> None:
    # A cap of 3 is trimmed to ceil(90% of 3) = 3 by the retention timer (every second).
    with started(fast_settings.replace(retention_max_jobs=3)) as system:
        ids = []
        for n in range(6):  # one at a time, so they finish in this order
            ids.append(system.submit(JobKind.QA, question(n)).job.id)
            wait_state(system, ids[-1], JobState.COMPLETED)

        for old in ids[:3]:
            wait_gone(system, old)
        assert [system.get(i).state for i in ids[3:]] == [JobState.COMPLETED] * 3
        snapshot = system.snapshot()
        assert snapshot["registry"]["retained_finished"] == 3
        assert snapshot["kinds"]["qa"]["completed"] == 3
        assert {job.id for job in system.list_jobs()} == set(ids[3:])


def test_active_jobs_are_never_trimmed_by_count(fast_settings: Settings,
                                                standin: PythonApiStandIn) -> None:
    settings = fast_settings.replace(retention_max_jobs=1, max_concurrent_videos=1)
    standin.hold("process-video")
    with started(settings) as system:
        running = system.submit(JobKind.VIDEO, {"video_url": "https://youtu.be/abc",
                                                "company_name": "acme"}).job.id
        assert standin.wait_in_flight("process-video", 1)
        finished = []
        for n in range(3):
            finished.append(system.submit(JobKind.QA, question(n)).job.id)
            wait_state(system, finished[-1], JobState.COMPLETED)
        wait_gone(system, finished[0])  # by the retention timer
        wait_gone(system, finished[1])
        assert system.get(running).state == JobState.PROCESSING
        assert system.get(finished[-1]).state == JobState.COMPLETED
        standin.release("process-video")
        wait_state(system, running, JobState.COMPLETED)


def test_finished_jobs_past_their_retention_age_are_removed(fast_settings: Settings,
                                                            standin: PythonApiStandIn) -> None:
    clock = SkippingClock()
    # retention 5 s: the purge timer runs every max(5/10, 1) = 1 s.
    settings = fast_settings.replace(retention_s=5.0, max_concurrent_videos=1)
    standin.hold("process-video")
    with started(settings, clock=clock) as system:
        old = system.submit(JobKind.QA, question(1)).job.id
        wait_state(system, old, JobState.COMPLETED)
        clock.offset_s = 3600.0  # an hour later, as far as job timestamps go
        recent = system.submit(JobKind.QA, question(2)).job.id
        wait_state(system, recent, JobState.COMPLETED)
        active = system.submit(JobKind.VIDEO, {"video_url": "https://youtu.be/abc",
                                               "company_name": "acme"}).job.id
        assert standin.wait_in_flight("process-video", 1)

        wait_gone(system, old)
        assert system.get(recent).state == JobState.COMPLETED
        assert system.get(active).state == JobState.PROCESSING
        assert system.snapshot()["kinds"]["qa"]["completed"] == 1
        standin.release("process-video")
        wait_state(system, active, JobState.COMPLETED)


def test_memory_pressure_halves_the_retained_history(fast_settings: Settings,
                                                     standin: PythonApiStandIn) -> None:
    rss = [100.0]
    settings = fast_settings.replace(memory_threshold_mb=1000.0, max_memory_mb=2000.0)
    with started(settings, rss_reader=lambda: rss[0]) as system:
        ids = []
        for n in range(6):
            ids.append(system.submit(JobKind.QA, question(n)).job.id)
            wait_state(system, ids[-1], JobState.COMPLETED)
        assert system.snapshot()["registry"]["retained_finished"] == 6

        rss[0] = 1500.0
        assert system.check_memory().pressure is True
        assert system.snapshot()["registry"]["retained_finished"] == 3
        for trimmed in ids[:3]:
            with pytest.raises(JobNotFound):
                system.get(trimmed)
        assert [system.get(i).state for i in ids[3:]] == [JobState.COMPLETED] * 3
