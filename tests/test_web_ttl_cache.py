"""web.ttl_cache.TtlCache: expiry on an injected clock, the size bound, failures not kept."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from web.ttl_cache import TtlCache


class Clock:
    """A clock the test moves by hand, so expiry needs no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Source:
    """Counts how often each key is computed; the value says which computation it was."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def of(self, key: str) -> str:
        self.calls[key] += 1
        return f"{key}#{self.calls[key]}"


def store_down() -> str:
    raise RuntimeError("store down")


def make(ttl_s: float = 60.0, size: int = 10) -> tuple[TtlCache[str, str], Clock, Source]:
    clock = Clock()
    return TtlCache(ttl_s, size, timer=clock), clock, Source()


def test_a_value_is_reused_until_its_time_is_up() -> None:
    cache, clock, source = make(ttl_s=60.0)
    assert cache.get_or_compute("alice", lambda: source.of("alice")) == "alice#1"
    clock.now += 59.9
    assert cache.get_or_compute("alice", lambda: source.of("alice")) == "alice#1"
    clock.now += 0.1  # exactly ttl_s after it was kept: stale
    assert cache.get_or_compute("alice", lambda: source.of("alice")) == "alice#2"
    assert source.calls["alice"] == 2


def test_keys_are_kept_apart() -> None:
    cache, _, source = make()
    assert cache.get_or_compute("alice", lambda: source.of("alice")) == "alice#1"
    assert cache.get_or_compute("bob", lambda: source.of("bob")) == "bob#1"
    assert cache.get_or_compute("alice", lambda: source.of("alice")) == "alice#1"
    assert source.calls == Counter(alice=1, bob=1)


def test_tuple_keys_as_the_scoped_counts_use() -> None:
    cache: TtlCache[tuple[str, ...], int] = TtlCache(1.0, 10, timer=Clock())
    assert cache.get_or_compute(("a", "b"), lambda: 1) == 1
    assert cache.get_or_compute(("a", "b"), lambda: 2) == 1
    assert cache.get_or_compute(("a",), lambda: 3) == 3


def test_a_failure_is_not_kept() -> None:
    cache, _, source = make()

    def failing() -> str:
        source.calls["alice"] += 1
        raise RuntimeError("store down")

    with pytest.raises(RuntimeError, match="store down"):
        cache.get_or_compute("alice", failing)
    assert cache.get_or_compute("alice", lambda: source.of("alice")) == "alice#2"
    assert source.calls["alice"] == 2


def test_a_failure_leaves_the_fresh_value_of_another_key() -> None:
    cache, _, source = make()
    cache.get_or_compute("bob", lambda: source.of("bob"))
    with pytest.raises(RuntimeError):
        cache.get_or_compute("alice", store_down)
    assert cache.get_or_compute("bob", lambda: source.of("bob")) == "bob#1"


def test_falsy_values_are_cached_too() -> None:
    # An empty Counter (no jobs) or empty memberships are answers, not misses.
    cache: TtlCache[str, Counter[str]] = TtlCache(60.0, 10, timer=Clock())
    calls = 0

    def empty() -> Counter[str]:
        nonlocal calls
        calls += 1
        return Counter()

    cache.get_or_compute("k", empty)
    cache.get_or_compute("k", empty)
    assert calls == 1


def test_at_most_size_keys_the_least_recently_used_going_first() -> None:
    cache, _, source = make(size=2)
    cache.get_or_compute("a", lambda: source.of("a"))
    cache.get_or_compute("b", lambda: source.of("b"))
    cache.get_or_compute("a", lambda: source.of("a"))  # a is now the more recently used
    cache.get_or_compute("c", lambda: source.of("c"))  # pushes b out
    assert cache.get_or_compute("a", lambda: source.of("a")) == "a#1"
    assert cache.get_or_compute("b", lambda: source.of("b")) == "b#2"
    assert source.calls == Counter(a=1, b=2, c=1)


def test_clear_forgets_every_value() -> None:
    cache, _, source = make()
    cache.get_or_compute("a", lambda: source.of("a"))
    cache.clear()
    assert cache.get_or_compute("a", lambda: source.of("a")) == "a#2"


def test_a_slow_computation_holds_up_no_other_key() -> None:
    cache, _, source = make()
    started, release = threading.Event(), threading.Event()

    def slow() -> str:
        started.set()
        assert release.wait(5)
        return "slow"

    worker = threading.Thread(target=cache.get_or_compute, args=("slow", slow))
    worker.start()
    try:
        assert started.wait(5)
        # The lock is not held while "slow" computes, so this returns at once.
        assert cache.get_or_compute("fast", lambda: source.of("fast")) == "fast#1"
    finally:
        release.set()
        worker.join(5)
    assert cache.get_or_compute("slow", lambda: "again") == "slow"
