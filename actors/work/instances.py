"""Several Python API instances: per-instance room, memory pressure and a circuit breaker.

Pure logic owned by the Dispatcher (no threads, times passed in). Each
instance has its own limits per kind (``QUEUE_MAX_CONCURRENT_*`` apply per
instance), in-flight counts, memory pressure and breaker. A job goes to the
instance with the most free room for its kind that is available.

Breaker (only with two or more instances: with one there is nowhere else to
send work, and retries with backoff behave exactly as before)::

    closed ──(N consecutive connection failures or 5xx)──► open
      ▲                                                     │ open period passes
      └──── probe answers ──────── half-open ◄──────────────┘
                                      │ probe silent: open again, period doubled (capped)

While open or half-open an instance takes no work. The probe is a call that
costs no job an attempt: the MemoryWatchdog's ``/memory-status`` reading of the
instance (the Dispatcher asks for one as soon as the open period ends). While
every instance is open, jobs wait in the queue with their attempts unspent.

With ``QUEUE_ADAPTIVE_CONCURRENCY`` (the default) each instance also has an
``InstanceLimiter`` (dispatch/limiter.py): one limit shared by both kinds, Q&A
first, that moves with what the instance shows; the static limits are then the
maximums. Without it each kind has its own static limit, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.dispatch.limiter import InstanceLimiter, LimiterConfig
from actors.model.jobs import JobKind
from actors.runtime.redact import redact_url

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"
MAX_OPEN_DOUBLINGS = 4


@dataclass
class ApiInstance:
    """One Python API address and what the Dispatcher knows of it."""

    url: str
    limits: dict[JobKind, int]
    in_flight: dict[JobKind, int] = field(default_factory=lambda: dict.fromkeys(JobKind, 0))
    breaker: str = CLOSED
    failures: int = 0
    opened: int = 0
    open_until: float = 0.0
    pressure: bool = False
    memory_mb: float | None = None
    limiter: InstanceLimiter | None = None  # adaptive capacity; None: the static limits

    def room(self, kind: JobKind, now: float) -> int:
        """Free slots for ``kind`` (adaptive: of the capacity both kinds share)."""
        if self.limiter is not None:
            return self.limiter.room(kind, self.in_flight, now,
                                     video_held=self.pressure)
        return self.limits[kind] - self.in_flight[kind]

    def limit(self, kind: JobKind) -> int:
        """The most calls of ``kind`` this instance may have now."""
        if self.limiter is not None:
            return self.limiter.kind_limit(kind, video_held=self.pressure)
        return self.limits[kind]

    @property
    def state(self) -> str:
        """ok, pressure, open or half-open (what operators see)."""
        if self.breaker != CLOSED:
            return self.breaker
        return "pressure" if self.pressure else "ok"

    def describe(self, now: float) -> dict[str, Any]:
        """Return plain data for snapshots."""
        capacity: dict[str, Any] = (
            {"adaptive": False, "limit": sum(self.limits.values()), "reason": "static limits"}
            if self.limiter is None else
            {"adaptive": True, **self.limiter.describe(now, video_held=self.pressure)})
        capacity.pop("kinds", None)
        return {
            "url": redact_url(self.url),  # the key is shown already; never its credentials
            "state": self.state,
            "in_flight": {kind.value: n for kind, n in self.in_flight.items()},
            "limits": {kind.value: self.limit(kind) for kind in JobKind},
            "max_limits": {kind.value: n for kind, n in self.limits.items()},
            "capacity": capacity,
            "consecutive_failures": self.failures,
            "memory_mb": self.memory_mb,
        }


class InstanceSet:
    """Chooses an instance per job and keeps each instance's breaker."""

    def __init__(
        self,
        urls: tuple[str, ...],
        limits: dict[JobKind, int],
        *,
        failure_threshold: int,
        open_s: float,
        adaptive: LimiterConfig | None = None,
    ) -> None:
        self.instances = [
            ApiInstance(url, dict(limits),
                        limiter=None if adaptive is None else InstanceLimiter(adaptive))
            for url in urls]
        self.breaker_enabled = len(urls) > 1
        self.failure_threshold = failure_threshold
        self.open_s = open_s

    def __repr__(self) -> str:
        return ("<InstanceSet " + " ".join(f"{redact_url(i.url)}={i.state}"
                                          for i in self.instances) + ">")

    def get(self, url: str) -> ApiInstance | None:
        """Return the instance at ``url``."""
        return next((i for i in self.instances if i.url == url), None)

    def _refresh(self, instance: ApiInstance, now: float) -> None:
        if instance.breaker == OPEN and now >= instance.open_until:
            instance.breaker = HALF_OPEN

    def _available(self, instance: ApiInstance, kind: JobKind, now: float) -> bool:
        return self._room_at(instance, kind, now) > 0

    def _room_at(self, instance: ApiInstance, kind: JobKind, now: float) -> int:
        """Free slots for ``kind`` at an instance that takes work now; 0 where it takes none."""
        self._refresh(instance, now)
        if instance.breaker != CLOSED or (kind == JobKind.VIDEO and instance.pressure):
            return 0
        return max(0, instance.room(kind, now))

    def choose(self, kind: JobKind, now: float, avoid: str | None = None) -> ApiInstance | None:
        """Return the available instance with the most room for ``kind`` (``avoid`` last)."""
        candidates = [i for i in self.instances if self._available(i, kind, now)]
        if not candidates:
            return None
        preferred = [i for i in candidates if i.url != avoid] or candidates
        return max(preferred, key=lambda i: (i.room(kind, now), -self.instances.index(i)))

    def has_room(self, kind: JobKind, now: float) -> bool:
        """Whether some instance could take a job of ``kind`` now."""
        return any(self._available(i, kind, now) for i in self.instances)

    def can_take(self, url: str, kind: JobKind, now: float) -> bool:
        """Whether the instance at ``url`` could take a job of ``kind`` now."""
        instance = self.get(url)
        return instance is not None and self._available(instance, kind, now)

    def capacities(self, now: float) -> dict[str, tuple[int, dict[JobKind, int]]]:
        """Per instance: what it may hold now in all, and of each kind (0: none now).

        For a claim that counts every backend's calls there (the shared queue): the
        capacity is the instance's, whichever backend sends to it. Adaptive: the
        limiter's current limit (none while it cools after a Retry-After) and each
        kind's share of it; static: the kinds' limits. An open or half-open breaker
        takes nothing; high memory takes no video.
        """
        answer: dict[str, tuple[int, dict[JobKind, int]]] = {}
        for instance in self.instances:
            self._refresh(instance, now)
            limiter = instance.limiter
            if limiter is not None:
                total = 0 if now < limiter.cooling_until else limiter.current
            else:
                total = sum(instance.limits.values())
            kinds = {kind: instance.limit(kind) for kind in JobKind}
            if instance.pressure:
                kinds[JobKind.VIDEO] = 0
            if instance.breaker != CLOSED:
                kinds = dict.fromkeys(JobKind, 0)
            answer[instance.url] = (total, kinds)
        return answer

    def room(self, kind: JobKind, now: float) -> int:
        """How many more jobs of ``kind`` the available instances could take now."""
        return sum(self._room_at(i, kind, now) for i in self.instances)

    def started(self, instance: ApiInstance, kind: JobKind) -> None:
        """Count an attempt sent to ``instance``."""
        instance.in_flight[kind] += 1

    def half_open(self, now: float) -> list[ApiInstance]:
        """Return the instances waiting for a probe."""
        for instance in self.instances:
            self._refresh(instance, now)
        return [i for i in self.instances if i.breaker == HALF_OPEN]

    def probed(self, url: str, answered: bool, now: float) -> str | None:
        """Apply a probe's outcome to a half-open instance; return "closed", "open" or None."""
        instance = self.get(url)
        if instance is None or not self.breaker_enabled:
            return None
        self._refresh(instance, now)
        if instance.breaker != HALF_OPEN:
            return None
        if answered:
            instance.breaker, instance.failures, instance.opened = CLOSED, 0, 0
            return CLOSED
        self._open(instance, now)
        return OPEN

    def _open(self, instance: ApiInstance, now: float) -> None:
        instance.breaker = OPEN
        instance.open_until = now + self.open_s * 2 ** min(instance.opened, MAX_OPEN_DOUBLINGS)
        instance.opened += 1
    def ended(self, url: str, kind: JobKind, *, broke: bool, now: float) -> bool:
        """Count an attempt's end; return whether this opened the instance's breaker."""
        instance = self.get(url)
        if instance is None:
            return False
        instance.in_flight[kind] = max(0, instance.in_flight[kind] - 1)
        if not self.breaker_enabled:
            return False
        if instance.breaker != CLOSED:
            return False  # an attempt sent before it opened: the breaker already knows
        if not broke:
            instance.failures = 0
            return False
        instance.failures += 1
        if instance.failures >= self.failure_threshold:
            self._open(instance, now)
            return True
        return False

    def next_change(self, now: float) -> float | None:
        """Return the seconds until the earliest open breaker turns half-open."""
        waits = [i.open_until - now for i in self.instances if i.breaker == OPEN]
        return max(0.0, min(waits)) if waits else None

    def all_open(self, now: float) -> bool:
        """Whether no instance can take work because no breaker is closed."""
        return self.breaker_enabled and all(i.breaker != CLOSED for i in self.instances)

    def limit(self, kind: JobKind) -> int:
        """The most calls of ``kind`` all instances together may have now."""
        return sum(i.limit(kind) for i in self.instances)

    def describe(self, now: float) -> list[dict[str, Any]]:
        """Return every instance as plain data."""
        return [i.describe(now) for i in self.instances]
