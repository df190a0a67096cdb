"""The MemoryWatchdog: pause video on either high reading, resume with hysteresis, refuse admission.

The process reading comes from an injected reader (a list the test changes);
the Python API reading comes from the stand-in's real ``/memory-status``. The
test ticks the watchdog itself with ``check_memory()``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.errors import MemoryPressure
from tests.standin import PythonApiStandIn
from tests.test_actors_support import (
    question,
    started,
    video,
    video_urls,
    wait_state,
    wait_until,
)

THRESHOLD_MB = 1000.0  # resume below 900 (ratio 0.9)
MAX_MEMORY_MB = 1500.0  # accept videos again below 1350


class Rss:
    """The process memory the watchdog reads: whatever the test last set."""

    def __init__(self, mb: float) -> None:
        self.mb = mb

    def __call__(self) -> float:
        return self.mb


@pytest.fixture
def rss() -> Rss:
    return Rss(200.0)


@pytest.fixture
def system(fast_settings: Settings, standin: PythonApiStandIn,
           rss: Rss) -> Iterator[JobSystem]:
    standin.set_memory(300.0)
    settings = fast_settings.replace(memory_threshold_mb=THRESHOLD_MB,
                                     max_memory_mb=MAX_MEMORY_MB, memory_resume_ratio=0.9,
                                     python_api_status_timeout_s=0.3)
    with started(settings, rss_reader=rss) as running:
        yield running


def video_paused(system: JobSystem) -> bool:
    return bool(system.snapshot()["kinds"]["video"]["paused"])


def test_a_normal_reading_is_recorded_and_changes_nothing(system: JobSystem,
                                                          standin: PythonApiStandIn) -> None:
    reading = system.check_memory()
    assert reading.process_rss_mb == 200.0
    assert reading.python_api_mb == 300.0
    assert reading.python_api_status == "ok"
    assert reading.python_api_reachable is True
    assert (reading.pressure, reading.admission_refused) == (False, False)
    memory = system.snapshot()["memory"]
    assert memory["process_rss_mb"] == 200.0
    assert memory["python_api"] == {"memory_mb": 300.0, "status": "ok", "reachable": True}
    assert memory["threshold_mb"] == THRESHOLD_MB
    assert memory["max_memory_mb"] == MAX_MEMORY_MB
    assert memory["checked_at"] is not None
    assert not video_paused(system)
    assert standin.calls("memory-status")  # a real GET /memory-status


def test_high_process_memory_pauses_video_while_qa_goes_on_then_resumes(
    system: JobSystem, standin: PythonApiStandIn, rss: Rss
) -> None:
    rss.mb = 1200.0
    assert system.check_memory().pressure is True
    snapshot = system.snapshot()
    assert snapshot["kinds"]["video"]["paused"] is True
    assert snapshot["kinds"]["video"]["pause_reasons"] == ["memory"]
    assert snapshot["kinds"]["qa"]["paused"] is False
    assert snapshot["memory"]["pressure"] is True

    video_id = system.submit(JobKind.VIDEO, video(1)).job.id
    qa_id = system.submit(JobKind.QA, question(1)).job.id
    assert wait_state(system, qa_id).state == JobState.COMPLETED
    assert system.get(video_id).state == JobState.QUEUED
    assert standin.calls("process-video") == []

    rss.mb = 800.0
    assert system.check_memory().pressure is False
    assert wait_state(system, video_id).state == JobState.COMPLETED
    assert not video_paused(system)
    assert video_urls(standin) == [video(1)["video_url"]]


def test_high_python_api_memory_pauses_video_too(system: JobSystem, standin: PythonApiStandIn,
                                                 rss: Rss) -> None:
    standin.set_memory(1200.0)  # "ok" by the Python API's own thresholds, high by ours
    reading = system.check_memory()
    assert reading.pressure is True
    assert reading.admission_refused is False
    assert reading.python_api_mb == 1200.0
    assert video_paused(system)

    video_id = system.submit(JobKind.VIDEO, video(1)).job.id
    assert system.get(video_id).state == JobState.QUEUED

    standin.set_memory(500.0)
    assert system.check_memory().pressure is False
    assert wait_state(system, video_id).state == JobState.COMPLETED


def test_resume_needs_every_reading_below_the_resume_level(system: JobSystem,
                                                           standin: PythonApiStandIn,
                                                           rss: Rss) -> None:
    rss.mb = 1100.0
    assert system.check_memory().pressure is True
    # Between the resume level (900) and the threshold (1000): stays paused.
    rss.mb = 950.0
    assert system.check_memory().pressure is True
    assert video_paused(system)
    # Process memory is low again but the Python API now sits in the band: stays paused.
    rss.mb = 100.0
    standin.set_memory(920.0)
    assert system.check_memory().pressure is True
    assert video_paused(system)
    standin.set_memory(400.0)
    assert system.check_memory().pressure is False
    assert not video_paused(system)


def test_an_operator_pause_outlives_a_memory_resume(system: JobSystem, rss: Rss) -> None:
    system.pause(JobKind.VIDEO)
    rss.mb = 1200.0
    system.check_memory()
    assert system.snapshot()["kinds"]["video"]["pause_reasons"] == ["memory", "operator"]
    rss.mb = 100.0
    system.check_memory()
    assert system.snapshot()["kinds"]["video"]["pause_reasons"] == ["operator"]
    system.resume(JobKind.VIDEO)
    assert not video_paused(system)


def test_a_silent_python_api_is_unknown_not_pressure(system: JobSystem,
                                                     standin: PythonApiStandIn) -> None:
    standin.hold("memory-status")
    try:
        reading = system.check_memory()
        assert reading.python_api_status == "unknown"
        assert reading.python_api_reachable is False
        assert reading.python_api_mb is None
        assert reading.pressure is False
        memory = system.snapshot()["memory"]
        assert memory["python_api"]["status"] == "unknown"
        assert memory["python_api"]["reachable"] is False
        assert memory["pressure"] is False
        assert not video_paused(system)
    finally:
        standin.release("memory-status")


def test_silence_does_not_lift_a_pause_caused_by_the_python_api(
    system: JobSystem, standin: PythonApiStandIn
) -> None:
    standin.set_memory(1200.0)
    assert system.check_memory().pressure is True
    standin.hold("memory-status")  # busy processing a video: no answer
    try:
        assert system.check_memory().python_api_status == "unknown"
        assert video_paused(system)
    finally:
        standin.release("memory-status")


def test_a_python_api_status_error_is_not_pressure(system: JobSystem,
                                                   standin: PythonApiStandIn) -> None:
    standin.set_memory(None)  # {"status": "error", "error": ...}
    reading = system.check_memory()
    assert reading.python_api_status == "error"
    assert reading.python_api_mb is None
    assert reading.pressure is False


def test_above_max_memory_video_is_refused_and_qa_accepted(system: JobSystem,
                                                           rss: Rss) -> None:
    rss.mb = 1600.0
    reading = system.check_memory()
    assert reading.admission_refused is True
    assert system.snapshot()["memory"]["admission_refused"] is True
    assert system.snapshot()["registry"]["admission_refused"] == ["video"]
    with pytest.raises(MemoryPressure) as refused:
        system.submit(JobKind.VIDEO, video(1))
    assert refused.value.retry_after_s > 0
    assert "memory" in str(refused.value).lower()
    qa_id = system.submit(JobKind.QA, question(1)).job.id
    assert wait_state(system, qa_id).state == JobState.COMPLETED

    rss.mb = 1400.0  # below max but above 1350: still refused (hysteresis)
    assert system.check_memory().admission_refused is True
    with pytest.raises(MemoryPressure):
        system.submit(JobKind.VIDEO, video(1))

    rss.mb = 300.0
    assert system.check_memory().admission_refused is False
    video_id = system.submit(JobKind.VIDEO, video(1)).job.id
    assert wait_state(system, video_id).state == JobState.COMPLETED


def test_a_failing_process_reader_does_not_kill_the_watchdog(fast_settings: Settings,
                                                             standin: PythonApiStandIn) -> None:
    def broken() -> float:
        raise OSError("no /proc here")

    with started(fast_settings, rss_reader=broken) as system:
        reading = system.check_memory()
        assert reading.process_rss_mb is None
        assert reading.python_api_mb == 500.0
        assert system.alive
        assert system.check_memory().pressure is False


def test_the_watchdog_ticks_on_its_own_timer(fast_settings: Settings, standin: PythonApiStandIn,
                                             rss: Rss) -> None:
    settings = fast_settings.replace(memory_threshold_mb=THRESHOLD_MB,
                                     memory_check_interval_s=0.05)
    with started(settings, rss_reader=rss) as system:
        rss.mb = 1200.0
        wait_until(lambda: video_paused(system), "a timer tick to pause video")
        rss.mb = 100.0
        wait_until(lambda: not video_paused(system), "a timer tick to resume video")
        assert standin.wait_calls("memory-status", 3)
