"""A small thread-safe cache of computed values that expire: ``TtlCache.get_or_compute``.

Both per-caller caches of the web layer (a user's memberships from Supabase, a set of
companies' job counts from the store) want the same thing: reuse a value for a fixed
time, hold at most so many keys, and never hold an answer that failed. cachetools'
``TTLCache`` does the expiry and the bound (least recently used keys go first); it is not
thread-safe on its own, so every access here holds a lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar, cast

from cachetools import TTLCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

_MISSING = object()
"""Stands for "not cached", so that any value, even ``None``, can be cached."""


class TtlCache(Generic[K, V]):
    """Values per key, each reused for ``ttl_s`` seconds; at most ``size`` keys; thread-safe.

    ``timer`` is the clock expiry is measured on (monotonic by default; tests pass their own).
    """

    def __init__(self, ttl_s: float, size: int,
                 timer: Callable[[], float] = time.monotonic) -> None:
        self._cache: TTLCache[K, V] = TTLCache(maxsize=size, ttl=ttl_s, timer=timer)
        self._lock = threading.Lock()

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        """Return ``key``'s fresh value, else ``compute()``'s, which is then kept.

        ``compute`` runs outside the lock, so one slow read holds up no other key; two
        threads missing the same key at once may both compute it (the later one is kept).
        An exception from ``compute`` propagates and nothing is cached, so the next call
        tries again.
        """
        with self._lock:
            cached = self._cache.get(key, _MISSING)
        if cached is not _MISSING:
            return cast(V, cached)
        value = compute()
        with self._lock:
            self._cache[key] = value
        return value

    def clear(self) -> None:
        """Forget every value."""
        with self._lock:
            self._cache.clear()
