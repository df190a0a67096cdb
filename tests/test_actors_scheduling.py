"""Pure scheduling logic, no threads: waiting order, aging, backoff, wait estimates."""

from __future__ import annotations

import math
import random

import pytest

from actors.dispatch.scheduling import (
    DurationEstimate,
    WaitingQueue,
    backoff_delay_s,
    effective_priority,
    estimate_wait_s,
)
from actors.model.jobs import Job, JobKind

VIDEO, QA = JobKind.VIDEO, JobKind.QA


def job(name: str, kind: JobKind, priority: int, seq: int, created_at: float = 0.0) -> Job:
    return Job(id=name, kind=kind, priority=priority, seq=seq, created_at=created_at)


def drain(queue: WaitingQueue, kinds: tuple[JobKind, ...] = (VIDEO, QA),
          now: float = 0.0) -> list[str]:
    order = []
    while (nxt := queue.pop_next(kinds, now)) is not None:
        order.append(nxt.id)
    return order


# --- the waiting order ---------------------------------------------------------------


def test_fifo_within_a_priority() -> None:
    queue = WaitingQueue(aging_s=60)
    for seq, name in enumerate(["q1", "q2", "q3", "q4"], start=1):
        queue.push(job(name, QA, 1, seq))
    assert drain(queue) == ["q1", "q2", "q3", "q4"]
    assert len(queue) == 0


def test_one_global_order_across_kinds_priority_first_then_arrival() -> None:
    queue = WaitingQueue(aging_s=60)
    queue.push(job("v1", VIDEO, 2, 1))
    queue.push(job("v2", VIDEO, 2, 2))
    queue.push(job("q1", QA, 1, 3))
    queue.push(job("v-low", VIDEO, 3, 4))
    queue.push(job("q2", QA, 1, 5))
    queue.push(job("v-urgent", VIDEO, 1, 6))  # a video explicitly at priority 1
    queue.push(job("q-medium", QA, 2, 7))
    assert drain(queue) == ["q1", "q2", "v-urgent", "v1", "v2", "q-medium", "v-low"]


def test_only_the_offered_kinds_are_considered() -> None:
    queue = WaitingQueue(aging_s=60)
    queue.push(job("v1", VIDEO, 2, 1))
    queue.push(job("q1", QA, 1, 2))
    first = queue.pop_next([VIDEO], now=0.0)  # e.g. only a video slot is free
    assert first is not None and first.id == "v1"
    assert queue.pop_next([VIDEO], now=0.0) is None
    assert queue.count(QA) == 1 and queue.count(VIDEO) == 0
    assert drain(queue, kinds=(QA,)) == ["q1"]


def test_aging_lets_a_low_priority_job_overtake_after_waiting() -> None:
    def queue_at_start() -> WaitingQueue:
        queue = WaitingQueue(aging_s=10)
        queue.push(job("old-low", VIDEO, 3, 1, created_at=0.0))
        queue.push(job("new-high", QA, 1, 2, created_at=5.0))
        return queue

    # Before it has waited long, the priority 3 job stays behind the priority 1 one...
    assert drain(queue_at_start(), now=5.0) == ["new-high", "old-low"]
    assert drain(queue_at_start(), now=15.0) == ["new-high", "old-low"]
    # ...after 2 x aging_s it counts as priority 1, and it arrived first.
    assert drain(queue_at_start(), now=25.0) == ["old-low", "new-high"]
    aged = queue_at_start()
    assert aged.position("old-low", now=5.0) == 1  # positions are per kind
    assert aged.pop_next([VIDEO, QA], now=25.0).id == "old-low"  # type: ignore[union-attr]


def test_effective_priority_ages_one_level_per_period_and_stops_at_one() -> None:
    low = job("low", VIDEO, 3, 1, created_at=100.0)
    assert effective_priority(low, now=100.0, aging_s=60) == 3
    assert effective_priority(low, now=159.9, aging_s=60) == 3
    assert effective_priority(low, now=160.0, aging_s=60) == 2
    assert effective_priority(low, now=220.0, aging_s=60) == 1
    assert effective_priority(low, now=10_000.0, aging_s=60) == 1
    assert effective_priority(low, now=10_000.0, aging_s=0) == 3  # aging off
    assert effective_priority(low, now=0.0, aging_s=60) == 3  # a clock behind creation


def test_position_counts_the_jobs_ahead_in_the_same_kind() -> None:
    queue = WaitingQueue(aging_s=60)
    queue.push(job("v1", VIDEO, 2, 1))
    queue.push(job("q1", QA, 1, 2))
    queue.push(job("v2", VIDEO, 2, 3))
    queue.push(job("v-urgent", VIDEO, 1, 4))
    queue.push(job("v-low", VIDEO, 3, 5))
    assert queue.position("v-urgent", now=0.0) == 1
    assert queue.position("v1", now=0.0) == 2
    assert queue.position("v2", now=0.0) == 3
    assert queue.position("v-low", now=0.0) == 4
    assert queue.position("q1", now=0.0) == 1  # other kinds are not ahead
    assert queue.position("missing", now=0.0) is None
    queue.remove("v1")
    assert queue.position("v2", now=0.0) == 2


@pytest.mark.parametrize("seed", range(5))
def test_position_and_order_agree_with_a_full_sort_under_aging(seed: int) -> None:
    rng = random.Random(seed)
    queue = WaitingQueue(aging_s=10)
    jobs = [job(f"j{n}", rng.choice((VIDEO, QA)), rng.randint(1, 3), n, created_at=n * 0.7)
            for n in range(1, 300)]
    for item in jobs:
        queue.push(item)
    for item in rng.sample(jobs, 40):  # withdrawn (cancelled or started)
        queue.remove(item.id)
    retried = rng.sample([j for j in jobs if j.id in queue], 20)
    for item in retried:  # back at their own place: a retried job keeps its fair tag
        popped = queue.remove(item.id)
        assert popped is not None
        queue.push(popped)
    now = 300 * 0.7 + 25

    def key(item: Job) -> tuple[int, int]:
        return effective_priority(item, now, 10), item.seq

    for kind in (VIDEO, QA):
        expected = sorted((j for j in jobs if j.id in queue and j.kind == kind), key=key)
        assert [queue.position(j.id, now) for j in expected] == list(
            range(1, len(expected) + 1))
        assert drain(queue, (kind,), now) == [j.id for j in expected]
    assert len(queue) == 0


def test_remove_and_push_again_keep_counts_and_order_right() -> None:
    queue = WaitingQueue(aging_s=60)
    queue.push(job("a", QA, 1, 1))
    queue.push(job("b", QA, 1, 2))
    queue.push(job("c", QA, 1, 3))
    assert queue.remove("b") is not None
    assert queue.remove("b") is None
    queue.push(job("a", QA, 1, 1))  # pushing a waiting job again replaces it
    assert len(queue) == 2 and queue.count(QA) == 2
    assert "a" in queue and "b" not in queue
    assert drain(queue) == ["a", "c"]
    queue.push(job("a", QA, 1, 1))  # a retried job keeps its arrival place
    queue.push(job("d", QA, 1, 4))
    assert drain(queue) == ["a", "d"]


# --- backoff -------------------------------------------------------------------------


def test_backoff_doubles_per_attempt_and_is_capped() -> None:
    delays = [backoff_delay_s(n, base_s=5.0, max_s=60.0, jitter=0.0) for n in range(1, 7)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert backoff_delay_s(10_000, base_s=5.0, max_s=60.0, jitter=0.0) == 60.0  # no overflow
    assert backoff_delay_s(1, base_s=0.0, max_s=60.0, jitter=0.2) == 0.0


def test_backoff_jitter_stays_within_its_band() -> None:
    rng = random.Random(1234)
    for attempt in range(1, 6):
        nominal = min(8.0, 1.0 * 2 ** (attempt - 1))
        samples = [backoff_delay_s(attempt, base_s=1.0, max_s=8.0, jitter=0.25, rng=rng)
                   for _ in range(200)]
        assert all(nominal * 0.75 <= s <= nominal for s in samples), (attempt, samples)
        assert len(set(samples)) > 1  # jitter actually spreads jobs failed together


def test_retry_after_is_a_floor_capped_by_the_maximum() -> None:
    assert backoff_delay_s(1, base_s=1.0, max_s=60.0, jitter=0.2, retry_after_s=30.0) == 30.0
    # A shorter Retry-After does not shorten the backoff.
    assert backoff_delay_s(3, base_s=4.0, max_s=60.0, jitter=0.0, retry_after_s=1.0) == 16.0
    # A hostile Retry-After cannot park the job past the cap.
    assert backoff_delay_s(1, base_s=1.0, max_s=60.0, jitter=0.2, retry_after_s=86400) == 60.0
    assert backoff_delay_s(1, base_s=1.0, max_s=60.0, jitter=0.0, retry_after_s=0.0) == 1.0


# --- wait estimates ------------------------------------------------------------------


def test_estimate_wait_counts_waves_of_slots() -> None:
    assert estimate_wait_s(1, running=0, slots=2, duration_s=100.0) == 0.0  # a free slot
    assert estimate_wait_s(2, running=1, slots=2, duration_s=100.0) == 100.0
    assert estimate_wait_s(1, running=2, slots=2, duration_s=100.0) == 100.0
    assert estimate_wait_s(3, running=2, slots=2, duration_s=100.0) == 200.0
    assert estimate_wait_s(5, running=2, slots=2, duration_s=100.0) == 300.0


@pytest.mark.parametrize("position", [0, 1, 2, 50])
@pytest.mark.parametrize("slots", [0, 1, 10])
@pytest.mark.parametrize("running", [0, 1, 12])
def test_estimates_are_finite_and_described_without_nan(position: int, slots: int,
                                                        running: int) -> None:
    seconds = estimate_wait_s(position, running=running, slots=slots, duration_s=180.0)
    assert math.isfinite(seconds) and seconds >= 0


def test_duration_estimate_uses_the_default_until_observed_then_averages() -> None:
    estimate = DurationEstimate(default_s=180.0, weight=0.5)
    assert estimate.seconds == 180.0
    estimate.observe(10.0)
    assert estimate.seconds == 10.0
    estimate.observe(20.0)
    assert estimate.seconds == 15.0
    assert estimate.samples == 2


def test_cancelled_timers_do_not_pile_up() -> None:
    from actors.runtime.timers import TimerService

    timers = TimerService().start()
    try:
        handles = [timers.call_later(300.0, lambda: None) for _ in range(1000)]
        for handle in handles:
            handle.cancel()
        assert timers.pending == 0
        assert len(timers._heap) < 100  # compacted, not kept until their due time
    finally:
        timers.stop()
