"""The adaptive capacity of one Python API instance: how many calls, of both kinds, at once.

Pure logic (no threads, no I/O, times passed in), owned by the Dispatcher through
``InstanceSet``. One limit per instance is shared by video and Q&A:

* Q&A may use all of it, up to ``QUEUE_MAX_CONCURRENT_QA``;
* video never more than ``QUEUE_MAX_CONCURRENT_VIDEOS``, and never the last
  ``qa_reserve`` units: a question never waits for a video to finish;
* no video while the instance's memory is high (the watchdog's pause, as before).

How the limit moves (a gradient on a re-measured minimum, as Envoy's adaptive
concurrency and Netflix's Gradient2; additive increase and multiplicative
decrease as AIMD)::

    answer of kind k in s seconds:  baseline_k = min over this and the last window
                                    ratio_k    = EMA(s / baseline_k)
                                    gradient   = clamp(tolerance / ratio_k, 0.5, 1)
                                    limit     *= 1 - smoothing * (1 - gradient)
                                    limit     += 1 / limit   (healthy, and the limit in use)
    429/503/5xx, timeout, no connection:  limit *= backoff_ratio   (once per round)
    Retry-After:                          and no new call until it has passed
    /memory-status "warning":             limit *= backoff_ratio, no growth until it clears

A *round* is what was sent under one limit: a failure of a call sent before the
last decrease says nothing new (its whole cohort failed together), so it does not
cut again, as TCP cuts its window once per round trip. The baseline is
re-measured every ``baseline_window_s``: the minimum of the current and the last
window, so it follows a Python API that became slower for good within two
windows, while one window of overload cannot raise it (its minimum is the quiet
window's). The limit always stays within ``[min_limit, max_video + max_qa]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from actors.model.jobs import JobKind
from actors.model.settings import Settings

MIN_GRADIENT = 0.5
"""One answer can shrink the limit by at most this gradient (then smoothed)."""
RATIO_WEIGHT = 0.5
"""Weight of the newest answer in a kind's latency ratio (an EMA over a few answers)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LimiterConfig:
    """The limiter's parameters (README, "Capacity: one adaptive limit per instance")."""

    max_video: int
    max_qa: int
    min_limit: int = 2
    qa_reserve: int = 1
    initial_limit: int | None = None
    """Where a fresh instance's limit starts (``None``: at the operator minimum)."""
    tolerance: float = 1.5
    """Latency up to this many times the baseline counts as healthy."""
    backoff_ratio: float = 0.7
    """A multiplicative decrease keeps this fraction of the limit."""
    smoothing: float = 0.2
    """How far one answer's gradient moves the limit."""
    baseline_window_s: float = 60.0
    """The minimum latency is re-measured this often."""
    retry_after_cap_s: float = 300.0
    """An instance's Retry-After holds its new calls at most this long."""

    @property
    def max_limit(self) -> int:
        """The most the limit can reach: both kinds at their configured maximums."""
        return self.max_video + self.max_qa

    @property
    def floor(self) -> int:
        """The operator minimum, within the maximum."""
        return max(1, min(self.min_limit, self.max_limit))


def limiter_config(settings: Settings) -> LimiterConfig | None:
    """The limiter's parameters from ``settings``, or ``None`` with static limits."""
    if not settings.adaptive_concurrency:
        return None
    return LimiterConfig(
        max_video=settings.max_concurrent_videos, max_qa=settings.max_concurrent_qa,
        min_limit=settings.adaptive_min_concurrency,
        initial_limit=settings.adaptive_initial_concurrency,
        qa_reserve=settings.qa_reserved_concurrency,
        tolerance=settings.adaptive_latency_tolerance,
        backoff_ratio=settings.adaptive_backoff_ratio,
        baseline_window_s=settings.adaptive_baseline_window_s,
        retry_after_cap_s=settings.backoff_max_s)


@dataclass(slots=True)
class _Baseline:
    """A kind's minimum latency: this window's and the last one's."""

    current: float = math.inf
    previous: float = math.inf
    window_start: float | None = None

    def observe(self, latency_s: float, now: float, window_s: float) -> float:
        if self.window_start is None:
            self.window_start = now
        elif now - self.window_start >= window_s:
            # Re-measured: a window with no answer leaves nothing behind.
            self.previous = self.current if now - self.window_start < 2 * window_s else math.inf
            self.current, self.window_start = math.inf, now
        self.current = min(self.current, latency_s)
        return min(self.current, self.previous)

    @property
    def value_s(self) -> float | None:
        value = min(self.current, self.previous)
        return None if math.isinf(value) else value


@dataclass(slots=True)
class InstanceLimiter:
    """The adaptive limit of one Python API instance (both kinds together)."""

    config: LimiterConfig
    limit: float = 0.0
    reason: str = "start"
    moved_at: float | None = None
    signal: str | None = None  # the last overload signal, whether or not it moved the limit
    last_cut_at: float = -math.inf
    cooling_until: float = -math.inf
    memory_warning: bool = False
    baselines: dict[JobKind, _Baseline] = field(
        default_factory=lambda: {kind: _Baseline() for kind in JobKind})
    ratios: dict[JobKind, float] = field(default_factory=dict)
    cuts: int = 0
    # ``current``, kept as the limit moves: the Dispatcher asks for it several times a job.
    _whole: int = field(default=0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.limit <= 0:
            # As Envoy measures its first minimum RTT: from the minimum, grown by answers, so
            # that a fresh instance never floods a Python API that is already struggling.
            # QUEUE_ADAPTIVE_INITIAL_CONCURRENCY starts it higher (at the maximum: as the
            # static limits), for a Python API known to take that much.
            start = self.config.initial_limit or self.config.floor
            self.limit = float(max(self.config.floor, min(self.config.max_limit, start)))
            self.reason = ("start: the operator minimum" if self.config.initial_limit is None
                           else "start: QUEUE_ADAPTIVE_INITIAL_CONCURRENCY")
        self._whole = self._rounded()

    # --- what it allows ------------------------------------------------------------

    @property
    def current(self) -> int:
        """The limit in whole calls (rounded down: never above what was earned)."""
        return self._whole

    def _rounded(self) -> int:
        return max(self.config.floor, min(self.config.max_limit, math.floor(self.limit)))

    def kind_limit(self, kind: JobKind, *, video_held: bool = False) -> int:
        """The most calls of ``kind`` the instance may have now (the other kind aside)."""
        if kind == JobKind.QA:
            return min(self.config.max_qa, self.current)
        if video_held:
            return 0
        return max(0, min(self.config.max_video, self.current - self.config.qa_reserve))

    def room(self, kind: JobKind, in_flight: Mapping[JobKind, int], now: float, *,
             video_held: bool = False) -> int:
        """How many more calls of ``kind`` may start now, given both kinds' calls in flight."""
        if now < self.cooling_until:
            return 0
        free = self.current - sum(in_flight.values())
        return max(0, min(free, self.kind_limit(kind, video_held=video_held) - in_flight[kind]))

    # --- what moves it -------------------------------------------------------------

    def answered(self, kind: JobKind, latency_s: float, *, in_flight: int, now: float) -> None:
        """An answer of ``kind`` took ``latency_s``; ``in_flight`` calls were open then."""
        c = self.config
        baseline = self.baselines[kind].observe(max(latency_s, 1e-6), now, c.baseline_window_s)
        ratio = max(latency_s, 1e-6) / baseline
        ratio = self.ratios.get(kind, ratio) * (1 - RATIO_WEIGHT) + ratio * RATIO_WEIGHT
        self.ratios[kind] = ratio
        gradient = max(MIN_GRADIENT, min(1.0, c.tolerance / ratio))
        if gradient < 1.0:
            self._set(self.limit * (1 - c.smoothing * (1 - gradient)), now,
                      f"{kind.value} latency {ratio:.1f}x its baseline")
        elif (not self.memory_warning and in_flight >= self.current - 1
              and now >= self.cooling_until):
            # Additive increase, only while the limit is in use: an idle limit proves nothing.
            self._set(self.limit + 1 / self.limit, now, f"{kind.value} answers healthy")

    def overloaded(self, kind: JobKind, why: str, *, started_at: float, now: float,
                   retry_after_s: float | None = None) -> bool:
        """A call sent at ``started_at`` failed for overload; return whether the limit was cut."""
        if retry_after_s is not None and retry_after_s > 0:
            until = now + min(retry_after_s, self.config.retry_after_cap_s)
            self.cooling_until = max(self.cooling_until, until)
        if started_at < self.last_cut_at:
            self.signal = f"{kind.value} {why}"
            return False  # sent under the limit that was already cut for it
        self._cut(now, f"{kind.value} {why}")
        return True

    def memory(self, status: str, now: float) -> bool:
        """A ``/memory-status`` reading; a warning (or worse) cuts; return whether it did."""
        high = status in ("warning", "critical")
        self.memory_warning = high
        if high:
            self._cut(now, f"memory {status}")
        return high

    def _cut(self, now: float, why: str) -> None:
        self.signal = why
        self.last_cut_at = now
        self.cuts += 1
        self._set(self.limit * self.config.backoff_ratio, now, why)

    def _set(self, value: float, now: float, why: str) -> None:
        c = self.config
        before = self.current
        self.limit = max(float(c.floor), min(float(c.max_limit), value))
        self._whole = self._rounded()
        if self.current != before:
            self.reason, self.moved_at = why, now

    def describe(self, now: float, *, video_held: bool = False) -> dict[str, Any]:
        """Return plain data for snapshots: the limits, why the last move, the baselines."""
        return {
            "limit": self.current,
            "limit_exact": round(self.limit, 3),
            "kinds": {kind.value: self.kind_limit(kind, video_held=video_held)
                      for kind in JobKind},
            "reason": self.reason,
            "last_signal": self.signal,
            "moved_s_ago": None if self.moved_at is None else round(now - self.moved_at, 3),
            "cooling_s": round(max(0.0, self.cooling_until - now), 3),
            "memory_warning": self.memory_warning,
            "baseline_s": {kind.value: self.baselines[kind].value_s for kind in JobKind},
            "cuts": self.cuts,
        }


def overload_signal(error_type: str, status: int | None, *, reached_api: bool) -> str | None:
    """What a failed attempt says of the Python API's load: a reason to cut, or ``None``.

    429, 503 and other 5xx, a timeout, and a call that found no connection are
    overload; a 4xx other than 408/429 is the request's own fault, and a failure
    before the call (a company lookup, a shutdown) says nothing of the Python API.
    """
    if not reached_api or error_type in ("ShutdownCut", "CompanyLookupFailed"):
        return None
    if status is not None:
        if status in (408, 429) or status >= 500:
            return f"answered {status}"
        return None
    if error_type == "DeadlineExceeded":
        return "timeout"
    if error_type == "RetryableCallFailure":
        return "no connection"
    return None
