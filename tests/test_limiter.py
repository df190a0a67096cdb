"""The adaptive limiter on recorded sequences: pure logic, no threads, times passed in."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from actors.dispatch.limiter import (
    InstanceLimiter,
    LimiterConfig,
    limiter_config,
    overload_signal,
)
from actors.model.jobs import JobKind
from actors.model.settings import Settings
from actors.work.instances import InstanceSet

QA, VIDEO = JobKind.QA, JobKind.VIDEO
CONFIG = LimiterConfig(max_video=2, max_qa=10, min_limit=2, qa_reserve=1)


def knee_latency(in_flight: int, *, knee: int = 4, base_s: float = 1.0) -> float:
    """A recorded Python API: its Q&A latency, flat up to the knee, five times above it."""
    return base_s if in_flight <= knee else base_s * 5


def drive(limiter: InstanceLimiter, answers: int, *, start: float = 0.0, knee: int = 4,
          step_s: float = 0.1, fail_above_knee: bool = True) -> list[int]:
    """Keep the limiter's capacity full of questions; return its limit after each answer.

    Each answer comes back with the latency the knee gives the in-flight count; above
    the knee every other call fails with a 500 (as the stand-in's knee does).
    """
    seen, now, over = [], start, 0
    for _ in range(answers):
        now += step_s
        in_flight = limiter.current
        if in_flight > knee and fail_above_knee:
            over += 1
            if over % 2 == 0:
                limiter.overloaded(QA, "answered 500", started_at=now - 0.05, now=now)
                seen.append(limiter.current)
                continue
        limiter.answered(QA, knee_latency(in_flight, knee=knee), in_flight=in_flight, now=now)
        seen.append(limiter.current)
    return seen


def test_it_starts_at_the_operator_minimum_and_grows_on_healthy_answers() -> None:
    limiter = InstanceLimiter(CONFIG)
    assert limiter.current == 2
    assert InstanceLimiter(dataclasses.replace(CONFIG, initial_limit=12)).current == 12
    assert InstanceLimiter(dataclasses.replace(CONFIG, initial_limit=99)).current == 12
    limits = drive(limiter, 200, knee=100)  # no knee in sight
    assert limits == sorted(limits)  # only grew
    assert limits[-1] == CONFIG.max_limit == 12  # up to both kinds' maximums, no further


def test_it_shrinks_on_the_knee_and_stays_near_it() -> None:
    limiter = InstanceLimiter(CONFIG)
    limits = drive(limiter, 400, knee=4)
    settled = limits[100:]
    assert max(settled) <= 5  # at most one above the knee while probing
    assert min(settled) >= 2
    assert sum(1 for n in settled if n >= 4) > len(settled) / 2  # mostly at the knee
    assert "latency" in limiter.reason or "500" in limiter.reason or "healthy" in limiter.reason


def test_latency_alone_shrinks_it_without_any_error() -> None:
    limiter = InstanceLimiter(CONFIG, limit=12.0)
    for n in range(10):
        limiter.answered(QA, 1.0, in_flight=12, now=float(n))  # the baseline: 1 s
    assert limiter.current == 12
    for n in range(10, 30):
        limiter.answered(QA, 5.0, in_flight=12, now=float(n))  # five times slower
    assert limiter.current < 8
    assert limiter.reason.startswith("qa latency")


def test_it_grows_back_once_the_python_api_is_healthy_again() -> None:
    limiter = InstanceLimiter(CONFIG, limit=12.0)
    for n in range(5):
        limiter.overloaded(QA, "answered 503", started_at=float(n), now=float(n) + 0.5)
    low = limiter.current
    assert low == 2  # 12 x 0.7^5 = 2.0: held at the minimum, never below
    limits = drive(limiter, 300, start=10.0, knee=100)
    assert limits[-1] == 12 and limits[-1] > low


def test_one_cut_per_round_failures_of_calls_sent_before_the_cut_do_not_cut_again() -> None:
    limiter = InstanceLimiter(CONFIG, limit=10.0)
    assert limiter.overloaded(QA, "answered 500", started_at=1.0, now=2.0)
    assert limiter.current == 7
    # Nine more failures of calls sent at 1.0, before the cut at 2.0: one cohort.
    assert not any(limiter.overloaded(QA, "answered 500", started_at=1.0, now=2.0 + n / 10)
                   for n in range(9))
    assert limiter.current == 7
    assert limiter.overloaded(QA, "answered 500", started_at=2.5, now=3.0)  # a new round
    assert limiter.current == 4  # 10 x 0.7 x 0.7 = 4.9


def test_retry_after_holds_new_calls_and_growth_until_it_has_passed() -> None:
    limiter = InstanceLimiter(CONFIG, limit=8.0)
    limiter.overloaded(QA, "answered 429", started_at=0.0, now=1.0, retry_after_s=5.0)
    in_flight = dict.fromkeys(JobKind, 0)
    assert limiter.room(QA, in_flight, now=5.9) == 0
    assert limiter.room(VIDEO, in_flight, now=5.9) == 0
    limiter.answered(QA, 0.1, in_flight=limiter.current, now=3.0)
    assert limiter.current == 5  # no growth while it asks us to wait
    assert limiter.room(QA, in_flight, now=6.0) == 5


def test_it_never_leaves_its_bounds_on_any_sequence() -> None:
    limiter = InstanceLimiter(CONFIG)
    now = 0.0
    events: Iterable[tuple[str, float]] = [("fail", 0)] * 50 + [("ok", 0.01)] * 500 + [
        ("ok", 100.0)] * 50 + [("memory", 0)] * 20 + [("ok", 0.01)] * 500
    for what, latency in events:
        now += 1.0
        if what == "fail":
            limiter.overloaded(VIDEO, "timeout", started_at=now, now=now)
        elif what == "memory":
            limiter.memory("warning", now)
        else:
            limiter.answered(QA, latency, in_flight=limiter.current, now=now)
        assert CONFIG.floor <= limiter.current <= CONFIG.max_limit
        assert 0 <= limiter.kind_limit(VIDEO) <= CONFIG.max_video
        assert 1 <= limiter.kind_limit(QA) <= CONFIG.max_qa


def test_q_and_a_keeps_its_share_video_never_takes_the_reserve_or_its_max() -> None:
    limiter = InstanceLimiter(CONFIG, limit=12.0)
    # Videos alone: at most QUEUE_MAX_CONCURRENT_VIDEOS, whatever the capacity.
    assert limiter.room(VIDEO, {VIDEO: 0, QA: 0}, now=0.0) == 2
    assert limiter.room(VIDEO, {VIDEO: 2, QA: 0}, now=0.0) == 0
    limiter = InstanceLimiter(CONFIG, limit=3.0)
    # A capacity of 3: video takes at most 2, the last unit is the questions'.
    assert limiter.room(VIDEO, {VIDEO: 0, QA: 0}, now=0.0) == 2
    assert limiter.room(QA, {VIDEO: 2, QA: 0}, now=0.0) == 1
    # Questions may take it all; then no video starts, at any age.
    assert limiter.room(QA, {VIDEO: 0, QA: 0}, now=0.0) == 3
    assert limiter.room(VIDEO, {VIDEO: 0, QA: 3}, now=0.0) == 0
    # At the minimum (2) video still runs, one at a time, beside one question.
    low = InstanceLimiter(CONFIG, limit=2.0)
    assert low.kind_limit(VIDEO) == 1 and low.kind_limit(QA) == 2
    assert low.room(QA, {VIDEO: 1, QA: 0}, now=0.0) == 1
    # Memory high: video held at zero, questions go on.
    assert limiter.room(VIDEO, {VIDEO: 0, QA: 0}, now=0.0, video_held=True) == 0
    assert limiter.room(QA, {VIDEO: 0, QA: 0}, now=0.0, video_held=True) == 3


def test_memory_warning_shrinks_and_stops_growth_until_a_fresh_ok_reading() -> None:
    limiter = InstanceLimiter(CONFIG, limit=10.0)
    assert limiter.memory("warning", 1.0)
    assert limiter.current == 7 and limiter.reason == "memory warning"
    limiter.answered(QA, 0.1, in_flight=7, now=2.0)
    assert limiter.limit == 7.0
    assert not limiter.memory("ok", 3.0)
    limiter.answered(QA, 0.1, in_flight=7, now=4.0)
    assert limiter.limit > 7.0


def test_the_baseline_is_re_measured_each_window() -> None:
    limiter = InstanceLimiter(LimiterConfig(max_video=2, max_qa=10, baseline_window_s=10.0),
                              limit=10.0)
    limiter.answered(QA, 1.0, in_flight=10, now=0.0)
    for n in range(1, 30):  # the Python API became slower for good: 3 s a question
        limiter.answered(QA, 3.0, in_flight=10, now=float(n))
    # Two windows later the baseline is the new normal, and the limit grows again.
    assert limiter.describe(30.0)["baseline_s"]["qa"] == 3.0
    shrunk = limiter.limit
    for n in range(30, 60):
        limiter.answered(QA, 3.0, in_flight=limiter.current, now=float(n))
    assert limiter.limit > shrunk


def test_what_counts_as_overload() -> None:
    assert overload_signal("RetryableCallFailure", 503, reached_api=True) == "answered 503"
    assert overload_signal("RetryableCallFailure", 429, reached_api=True) == "answered 429"
    assert overload_signal("RetryableCallFailure", 500, reached_api=True) == "answered 500"
    assert overload_signal("DeadlineExceeded", None, reached_api=True) == "timeout"
    assert overload_signal("RetryableCallFailure", None, reached_api=True) == "no connection"
    assert overload_signal("PermanentCallFailure", 422, reached_api=True) is None
    assert overload_signal("DeadlineExceeded", None, reached_api=False) is None
    assert overload_signal("CompanyLookupFailed", None, reached_api=True) is None
    assert overload_signal("ShutdownCut", None, reached_api=True) is None


def test_static_settings_have_no_limiter_and_keep_their_limits() -> None:
    assert limiter_config(Settings(adaptive_concurrency=False)) is None
    static = InstanceSet(("http://a",), {VIDEO: 2, QA: 10}, failure_threshold=3, open_s=1.0)
    instance = static.instances[0]
    assert instance.limiter is None
    assert (instance.room(VIDEO, 0.0), instance.room(QA, 0.0)) == (2, 10)
    adaptive = InstanceSet(("http://a",), {VIDEO: 2, QA: 10}, failure_threshold=3,
                           open_s=1.0, adaptive=limiter_config(Settings()))
    described = adaptive.describe(0.0)[0]
    assert described["limits"] == {"video": 1, "qa": 2}
    assert described["capacity"]["limit"] == 2
    assert described["capacity"]["reason"] == "start: the operator minimum"
