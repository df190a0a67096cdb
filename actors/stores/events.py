"""Job events: every change of a job's state, as the job store records it, and their feed.

Each store keeps an append-only log of events next to its jobs (``JobStore.events_after``),
written in the same transaction as the change itself (SQLite and PostgreSQL: by a trigger
on the jobs table; memory: under the store's lock), so no change is ever missing from the
log, whichever instance or code path made it. An event's ``id`` grows with every event of
the store (a global sequence); events go when retention removes their job.

``EventFeed`` reads the log for the live streams of one process: one thread, one query
per poll for all of them (not one per stream), handing each batch to every subscriber.
It never touches the JobRegistry: the stores read events on a connection of their own
(SQLite: a second, read-only connection; PostgreSQL: the pool; memory: a lock), so open
streams cannot slow the registry down.

    >>> feed = EventFeed(store).start()
    >>> sub, horizon = feed.subscribe(lambda events: print([e.id for e in events]))
    >>> # events with an id > horizon arrive through the callback, in id order
    >>> feed.unsubscribe(sub); feed.stop()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from actors.model.events import EventList

if TYPE_CHECKING:
    from actors.stores.base import JobStore

logger = logging.getLogger(__name__)

BATCH = 500
"""The most events one poll reads; a busier log is read in several polls, back to back."""


Deliver = Callable[[EventList], None]


@dataclass(eq=False)
class Subscription:
    """A subscriber of an ``EventFeed``: its callback gets every new batch of events."""

    deliver: Deliver


class EventFeed:
    """Polls one store's event log on a thread and hands new events to every subscriber.

    ``subscribe`` returns the horizon: every event with an id up to it was in the log
    before the subscription, every later one reaches the callback. A subscriber reads
    what it needs up to the horizon from the store itself (``events_after``), so
    nothing falls between the two. Polls run every ``poll_s``, and at once after
    ``wake`` (the local stores call it on every change). Without subscribers a poll
    only moves the horizon on. ``until`` is asked before each poll: once it is true (the
    job system stopped, its store closed), the feed stops.
    """

    def __init__(self, store: JobStore, *, poll_s: float = 0.5, batch: int = BATCH,
                 until: Callable[[], bool] | None = None) -> None:
        self.store = store
        self.until = until
        self.poll_s = poll_s
        self.batch = batch
        self.failures = 0
        self._horizon = 0
        self._subscribers: list[Subscription] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return (f"<EventFeed horizon={self._horizon} subscribers={len(self._subscribers)}"
                f"{' stopped' if self._stopped.is_set() else ''}>")

    @property
    def horizon(self) -> int:
        """The id of the newest event handed to the subscribers (or known to exist)."""
        return self._horizon

    @property
    def subscribers(self) -> int:
        """How many subscribers there are."""
        return len(self._subscribers)

    def start(self) -> EventFeed:
        """Read the store's horizon, then start polling (on a daemon thread)."""
        self._horizon = self.store.last_event_id()
        self.store.watch_events(self.wake)
        self._thread = threading.Thread(target=self._run, name="EventFeed", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop polling; subscribers get nothing more."""
        self._stopped.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    @property
    def stopped(self) -> bool:
        """Whether the feed was stopped."""
        return self._stopped.is_set()

    def wake(self) -> None:
        """Poll now (cheap, never blocks: callable from the registry's thread)."""
        self._wake.set()

    def subscribe(self, deliver: Deliver) -> tuple[Subscription, int]:
        """Add a subscriber; return it and the horizon it starts after."""
        sub = Subscription(deliver)
        with self._lock:
            self._subscribers.append(sub)
            horizon = self._horizon
        self._wake.set()  # an idle feed may be a poll behind: catch up now
        return sub, horizon

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a subscriber (idempotent)."""
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def poll(self) -> int:
        """Read and hand out what is new; return how many events were read."""
        with self._lock:
            idle = not self._subscribers
            after = self._horizon
        if idle:
            newest = self.store.last_event_id()
            with self._lock:
                # A subscriber that came meanwhile starts at the old horizon: keep it.
                if not self._subscribers:
                    self._horizon = max(self._horizon, newest)
            return 0
        events = self.store.events_after(after, limit=self.batch)
        with self._lock:
            fresh = [e for e in events if e.id > self._horizon]
            if fresh:
                self._horizon = fresh[-1].id
            targets = list(self._subscribers)
        # Handed out in the one polling thread, in id order: each subscriber sees every
        # event once, in order. A callback must not block (it buffers and wakes).
        for sub in targets if fresh else ():
            try:
                sub.deliver(fresh)
            except Exception:
                logger.exception("an event subscriber failed; it is dropped")
                self.unsubscribe(sub)
        return len(events)

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stopped.is_set() or (self.until is not None and self.until()):
                self._stopped.set()
                break
            try:
                while self.poll() >= self.batch and not self._stopped.is_set():
                    pass  # more than one batch waiting: read on at once
                self.failures = 0
            except Exception as exc:  # the store may be down or closed: try again next poll
                self.failures += 1
                if self.failures in (1, 10) or self.failures % 100 == 0:
                    logger.warning("reading job events failed (%d time(s) in a row): %s",
                                   self.failures, str(exc).splitlines()[0] if str(exc)
                                   else type(exc).__name__)
