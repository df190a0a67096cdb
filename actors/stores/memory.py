"""The in-memory job store (``QUEUE_STORE=memory``): fast, and gone when the process ends."""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable

from actors.model.errors import IdempotencyKeyTaken
from actors.model.events import EventList, JobEvent
from actors.model.jobs import ACTIVE_STATES, FINISHED_STATES, Job, JobKind, JobState, KeyedJob
from actors.stores.base import JobList, StateCounts


class MemoryJobStore:
    """Jobs in a dict: fast, and gone when the process ends (``QUEUE_STORE=memory``)."""

    shared = False

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._finished: OrderedDict[str, float] = OrderedDict()  # id -> finished_at, in order
        # (scope, key) -> (fingerprint, job id, expires_at), in expiry order (one retention)
        self._keys: OrderedDict[tuple[str, str], tuple[str, str, float]] = OrderedDict()
        self._events = _MemoryEventLog()

    def __repr__(self) -> str:
        return f"<MemoryJobStore jobs={len(self._jobs)}>"

    def add(self, job: Job) -> None:
        """Store a new job (and its idempotency key)."""
        claim = job.idempotency
        if claim is not None:
            found = self.keyed_job(claim.scope, claim.key, now=job.created_at)
            if found is not None:
                raise IdempotencyKeyTaken(found)
            where = (claim.scope, claim.key)
            self._keys[where] = (claim.fingerprint, job.id, claim.expires_at)
            self._keys.move_to_end(where)  # a key taken over expires after the others
        self._jobs[job.id] = job
        self._events.append(job)

    def keyed_job(self, scope: str, key: str, *, now: float) -> KeyedJob | None:
        """Return the job under a live key whose job is still here, or ``None``."""
        entry = self._keys.get((scope, key))
        if entry is None or entry[2] <= now or entry[1] not in self._jobs:
            return None
        return KeyedJob(entry[0], self._jobs[entry[1]])

    def prune_idempotency_keys(self, *, expired_at: float, limit: int) -> int:
        """Remove the oldest keys that expired by ``expired_at``, at most ``limit``."""
        removed = 0
        while self._keys and removed < limit:
            where, (_, _, expires_at) = next(iter(self._keys.items()))
            if expires_at > expired_at:
                break
            del self._keys[where]
            removed += 1
        return removed

    def update(self, job: Job) -> None:
        """Replace a stored job (with an event when its state changed)."""
        old = self._jobs.get(job.id)
        self._jobs[job.id] = job
        if old is None or old.state != job.state:
            self._events.append(job)
        if job.state in FINISHED_STATES:
            self._finished[job.id] = job.finished_at or 0.0
        else:
            self._finished.pop(job.id, None)

    def get(self, job_id: str) -> Job | None:
        """Return one job, or ``None``."""
        return self._jobs.get(job_id)

    def list(
        self,
        *,
        kind: JobKind | None = None,
        state: JobState | None = None,
        owner: str | None = None,
        limit: int = 100,
    ) -> JobList:
        """Return matching jobs, newest first."""
        found: list[Job] = []
        for job in reversed(self._jobs.values()):  # dicts keep insertion order
            if (kind is None or job.kind == kind) and (state is None or job.state == state) and (
                owner is None or job.owner == owner
            ):
                found.append(job)
                if len(found) >= limit:
                    break
        return found

    def active(self) -> JobList:
        """Return unfinished jobs, oldest first."""
        return sorted((j for j in self._jobs.values() if j.state in ACTIVE_STATES),
                      key=lambda j: j.seq)

    def counts(self) -> StateCounts:
        """Count jobs per (kind, state)."""
        return Counter((j.kind, j.state) for j in self._jobs.values())

    def company_counts(self, companies: Collection[str],
                       states: Collection[JobState] | None = None) -> StateCounts:
        """Count the jobs of ``companies`` per (kind, state)."""
        wanted = frozenset(companies)
        return Counter((j.kind, j.state) for j in self._jobs.values()
                       if j.company in wanted and (states is None or j.state in states))

    def max_seq(self) -> int:
        """Return the highest arrival sequence stored."""
        return max((j.seq for j in self._jobs.values()), default=0)

    def prune_finished(
        self, *, keep: int | None = None, finished_before: float | None = None,
        limit: int | None = None,
    ) -> StateCounts:
        """Remove the oldest finished jobs (finish order) past ``keep`` or a time, or ``limit``."""
        removed: StateCounts = Counter()
        oldest = keep is None and finished_before is None and limit is not None
        while self._finished and (limit is None or removed.total() < limit):
            job_id, finished_at = next(iter(self._finished.items()))
            too_many = keep is not None and len(self._finished) > keep
            too_old = finished_before is not None and finished_at < finished_before
            if not (oldest or too_many or too_old):
                break
            del self._finished[job_id]
            job = self._jobs.pop(job_id)
            removed[job.kind, job.state] += 1
            self._events.forget(job_id)
        return removed

    def remove(self, job_ids: Iterable[str]) -> None:
        """Delete jobs (and their events)."""
        for job_id in job_ids:
            self._jobs.pop(job_id, None)
            self._finished.pop(job_id, None)
            self._events.forget(job_id)

    def maintain(self) -> None:
        """Nothing to compact."""

    def describe(self) -> dict[str, object]:
        """Describe this store."""
        return {"kind": "memory", "jobs": len(self._jobs)}

    def close(self) -> None:
        """Nothing to release."""

    def events_after(self, after_id: int, *, job_id: str | None = None,
                     owner: str | None = None, limit: int = 500) -> EventList:
        """Return events after ``after_id``, oldest first (from any thread)."""
        return self._events.after(after_id, job_id=job_id, owner=owner, limit=limit)

    def last_event_id(self) -> int:
        """Return the id of the newest event."""
        return self._events.last_id

    def watch_events(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each new event."""
        self._events.watchers.append(callback)


class _MemoryEventLog:
    """The memory store's event log: appended by the registry, read by any thread.

    Events of removed jobs are dropped lazily: skipped when read, and compacted away
    once they are half of the log, so a removal costs no scan.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[JobEvent] = []
        self._ids: list[int] = []  # the events' ids, for bisect
        self._per_job: Counter[str] = Counter()
        self._gone: set[str] = set()
        self._dead = 0
        self.last_id = 0
        self.watchers: list[Callable[[], None]] = []

    def append(self, job: Job) -> None:
        with self._lock:
            self.last_id += 1
            self._events.append(JobEvent(id=self.last_id, job=job, at=time.time()))
            self._ids.append(self.last_id)
            self._per_job[job.id] += 1
        for watcher in self.watchers:
            watcher()

    def forget(self, job_id: str) -> None:
        with self._lock:
            count = self._per_job.pop(job_id, 0)
            if not count:
                return
            self._gone.add(job_id)
            self._dead += count
            if self._dead * 2 > len(self._events):
                kept = [e for e in self._events if e.job.id not in self._gone]
                self._events, self._ids = kept, [e.id for e in kept]
                self._gone.clear()
                self._dead = 0

    def after(self, after_id: int, *, job_id: str | None, owner: str | None,
              limit: int) -> EventList:
        found: EventList = []
        with self._lock:
            for event in self._events[bisect.bisect_right(self._ids, after_id):]:
                job = event.job
                if job.id in self._gone or (job_id is not None and job.id != job_id) or (
                        owner is not None and job.owner != owner):
                    continue
                found.append(event)
                if len(found) >= limit:
                    break
        return found
