"""The MemoryWatchdog: pause video on either high reading, resume with hysteresis, refuse admission.

The process reading comes from an injected reader (a value the test changes);
the Python API reading comes from the stand-in's real ``/memory-status``. The
test ticks the watchdog itself with ``check_memory()``, moving the injected
clock on by one check interval per tick when time has to pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.model.errors import MemoryPressure
from actors.runtime.timers import Clock
from actors.work.watchdog import STALE_AFTER_TICKS, MemoryReading
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
    """The process memory the watchdog reads: whatever the test last set (None: unreadable)."""

    def __init__(self, mb: float | None) -> None:
        self.mb = mb

    def __call__(self) -> float:
        if self.mb is None:
            raise OSError("no /proc here")
        return self.mb


class SteppedClock(Clock):
    """The real clock, moved on by the test: ``advance`` stands for time passing between ticks."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def monotonic(self) -> float:
        return super().monotonic() + self.offset_s

    def advance(self, seconds: float) -> None:
        self.offset_s += seconds


@pytest.fixture
def rss() -> Rss:
    return Rss(200.0)


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def system(fast_settings: Settings, standin: PythonApiStandIn, rss: Rss,
           clock: SteppedClock) -> Iterator[JobSystem]:
    standin.set_memory(300.0)
    settings = fast_settings.replace(memory_threshold_mb=THRESHOLD_MB,
                                     max_memory_mb=MAX_MEMORY_MB, memory_resume_ratio=0.9,
                                     python_api_status_timeout_s=0.3)
    with started(settings, rss_reader=rss, clock=clock) as running:
        yield running


@pytest.fixture
def watchdog_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="actors.work.watchdog")
    return caplog


def video_paused(system: JobSystem) -> bool:
    return bool(system.snapshot()["kinds"]["video"]["paused"])


def video_pause_reasons(system: JobSystem) -> list[str]:
    return list(system.snapshot()["kinds"]["video"]["pause_reasons"])


def ticks_past_stale(system: JobSystem, clock: SteppedClock) -> list[MemoryReading]:
    """Tick the watchdog more than STALE_AFTER_TICKS times, one check interval apart."""
    readings = []
    for _ in range(STALE_AFTER_TICKS + 1):
        clock.advance(system.settings.memory_check_interval_s)
        readings.append(system.check_memory())
    return readings


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
    assert snapshot["kinds"]["video"]["pause_reasons"] == ["process memory"]  # its own reason
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
    assert video_pause_reasons(system) == ["memory"]

    video_id = system.submit(JobKind.VIDEO, video(1)).job.id
    assert system.get(video_id).state == JobState.QUEUED

    standin.set_memory(500.0)
    assert system.check_memory().pressure is False
    assert wait_state(system, video_id).state == JobState.COMPLETED


def test_each_source_pauses_and_resumes_on_its_own_hysteresis(system: JobSystem,
                                                               standin: PythonApiStandIn,
                                                               rss: Rss) -> None:
    rss.mb = 1100.0
    assert system.check_memory().pressure is True
    # Between the resume level (900) and the threshold (1000): stays paused.
    rss.mb = 950.0
    assert system.check_memory().pressure is True
    assert video_pause_reasons(system) == ["process memory"]
    standin.set_memory(1100.0)
    assert system.check_memory().pressure is True
    assert video_pause_reasons(system) == ["memory", "process memory"]
    # Process memory is low again: its pause lifts; the Python API's stands.
    rss.mb = 100.0
    reading = system.check_memory()
    assert (reading.process_pressure, reading.python_api_pressure) == (False, True)
    assert video_pause_reasons(system) == ["memory"]
    # The Python API in the band: still paused.
    standin.set_memory(920.0)
    assert system.check_memory().pressure is True
    assert video_pause_reasons(system) == ["memory"]
    standin.set_memory(400.0)
    assert system.check_memory().pressure is False
    assert not video_paused(system)


def test_an_operator_pause_outlives_a_memory_resume(system: JobSystem, rss: Rss) -> None:
    system.pause(JobKind.VIDEO)
    rss.mb = 1200.0
    system.check_memory()
    assert video_pause_reasons(system) == ["operator", "process memory"]
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


def test_silence_after_a_high_reading_keeps_video_paused_until_a_fresh_low_one(
    system: JobSystem, standin: PythonApiStandIn, clock: SteppedClock,
    watchdog_log: pytest.LogCaptureFixture,
) -> None:
    standin.set_memory(1200.0)  # over the threshold
    assert system.check_memory().pressure is True
    video_id = system.submit(JobKind.VIDEO, video(1)).job.id
    standin.set_memory(1600.0)  # over the admission limit too
    assert system.check_memory().admission_refused is True
    standin.hold("memory-status")  # overloaded or swapping: /memory-status does not answer
    try:
        for reading in ticks_past_stale(system, clock):
            assert reading.python_api_reachable is False
            assert (reading.pressure, reading.admission_refused) == (True, True)
        assert video_pause_reasons(system) == ["memory"]
        assert system.snapshot()["instances"][0]["state"] == "pressure"
        with pytest.raises(MemoryPressure):
            system.submit(JobKind.VIDEO, video(2))
        # Dispatch goes on for Q&A, so the video's wait is the pause, not a stall.
        qa_id = system.submit(JobKind.QA, question(1)).job.id
        assert wait_state(system, qa_id).state == JobState.COMPLETED
        assert system.get(video_id).state == JobState.QUEUED
        assert standin.calls("process-video") == []
        assert (f"Python API {standin.url} silent after a high reading (1600 MB): video stays"
                " paused" in watchdog_log.text)
        assert "back down" not in watchdog_log.text
    finally:
        standin.release("memory-status")

    standin.set_memory(400.0)  # the fresh low reading
    reading = system.check_memory()
    assert (reading.pressure, reading.admission_refused) == (False, False)
    assert "Python API memory back down" in watchdog_log.text
    assert wait_state(system, video_id).state == JobState.COMPLETED
    assert video_urls(standin) == [video(1)["video_url"]]


def test_silence_after_a_low_reading_does_not_pause(
    system: JobSystem, standin: PythonApiStandIn, clock: SteppedClock,
    watchdog_log: pytest.LogCaptureFixture,
) -> None:
    assert system.check_memory().pressure is False  # 300 MB
    standin.hold("memory-status")
    try:
        for reading in ticks_past_stale(system, clock):
            assert reading.python_api_reachable is False
            assert (reading.pressure, reading.admission_refused) == (False, False)
        assert not video_paused(system)
        assert system.snapshot()["instances"][0]["state"] == "ok"
        assert (f"Python API {standin.url} silent after a low reading (300 MB): memory unknown"
                in watchdog_log.text)
        video_id = system.submit(JobKind.VIDEO, video(1)).job.id
        assert wait_state(system, video_id).state == JobState.COMPLETED
    finally:
        standin.release("memory-status")


def test_unreadable_process_memory_after_a_high_reading_keeps_video_paused(
    system: JobSystem, standin: PythonApiStandIn, rss: Rss, clock: SteppedClock,
    watchdog_log: pytest.LogCaptureFixture,
) -> None:
    rss.mb = 1200.0
    assert system.check_memory().pressure is True
    rss.mb = None  # the reader fails from now on
    for reading in ticks_past_stale(system, clock):
        assert reading.process_rss_mb is None
        assert reading.pressure is True
    assert video_pause_reasons(system) == ["process memory"]
    assert "this process's memory unreadable after a high reading (1200 MB)" in watchdog_log.text
    rss.mb = 300.0
    assert system.check_memory().pressure is False
    assert not video_paused(system)


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
    with started(fast_settings, rss_reader=Rss(None)) as system:
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
