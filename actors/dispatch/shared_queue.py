"""The shared queue backend (``QUEUE_STORE=postgres``): the waiting order in PostgreSQL.

The order, the per-kind limits and the pauses live in the database, shared by
every instance (gunicorn workers and machines). The Dispatcher takes work by
*claiming* it (stores/postgres/queue.py): as many jobs per kind as it has idle
workers and Python API room, never more than the kind's limit across all
instances together.

No database call runs on the Dispatcher's thread. Claims, take-backs, pauses,
cancels and fair-share charges go, in order, to this backend's *writes*
thread; positions and the snapshot's view of the database to its *reads*
thread (a slow claim never holds a health probe). Answers come back as
messages (``Claimed``, ``Reaped``, ``PauseWritten``) or as futures the asker
waits on. One claim is in flight at a time; a kind a claim came back short of
is not claimed again until something may have changed: a wake-up.

When it claims (each is one round trip):

* on a wake-up: ``NOTIFY`` from any instance (a job added, a slot freed, a
  job re-queued, a pause lifted), or this instance's own submit;
* when one of the Dispatcher's retry timers comes due;
* on its beat (``SharedTick``, every ``min(poll interval, lease TTL / 3)``):
  expired leases of dead instances taken back (only once their calls' hold
  has passed too), then a claim: the fallback when a wake-up was missed.

After an outcome it does not claim at once: the slot counts as taken until the
registry's fenced write of the outcome, which sends the ``NOTIFY`` that wakes
every instance, this one too.

Leases are renewed by the ``LeaseKeeper`` (stores/postgres/fence.py) on a thread
and a connection of its own. When it cannot renew in time it fences the
instance (``Fenced``): no claims, running calls go on as abandoned calls;
expired leases are reported (``LeasesLost``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg

from actors.dispatch.backend import Capacity, DispatcherPort, Room
from actors.dispatch.fairness import Capped, ceilings_of
from actors.model.errors import StoreUnavailable
from actors.model.jobs import Job, JobKind, JobState
from actors.model.messages import (
    Claimed,
    Fenced,
    LeasesLost,
    PauseWritten,
    Reaped,
    SharedTick,
    Wake,
)
from actors.model.settings import Settings
from actors.runtime.logs import job_fields
from actors.runtime.metrics import JobMetrics
from actors.runtime.timers import Clock, TimerService
from actors.stores.postgres.fence import LeaseKeeper
from actors.stores.postgres.listen import Listener
from actors.stores.postgres.store import PostgresJobStore
from actors.work.watchdog import MEMORY_PAUSE_REASON, PROCESS_MEMORY_PAUSE_REASON

logger = logging.getLogger(__name__)

STORE_ERRORS = (StoreUnavailable, psycopg.Error)
"""What a store call may raise when the database is away; the backend must survive it."""
VIEW_MAX_AGE_S = 1.0
"""How old the database's counts in a snapshot (and a health probe) may be."""


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class ClaimingQueue:
    """Claims jobs from the shared queue off the Dispatcher's thread; keeps their leases."""

    shared = True
    dispatch_after_outcome = False  # the outcome's fenced write wakes us (NOTIFY)

    def __init__(self, settings: Settings, *, store: PostgresJobStore, clock: Clock,
                 timers: TimerService, metrics: JobMetrics) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.timers = timers
        self.metrics = metrics
        self.instance_id = store.instance_id
        self.leases = store.leases  # held from the claim until the outcome is written
        self.ceilings = ceilings_of(settings)
        self.beat_s = max(0.05, min(settings.poll_interval_s, settings.lease_ttl_s / 3))
        self.limits: dict[JobKind, int] = {}  # the global limits the last claim asked with
        self.fenced = False
        # Dispatcher's thread only:
        self._port: DispatcherPort | None = None
        self._claiming = False  # a claim is in flight
        self._short: set[JobKind] = set()  # came back short: not claimed until a wake-up
        self._woken_meanwhile = False
        self.local_paused: dict[JobKind, set[str]] = {kind: set() for kind in JobKind}
        self._resumes_due: set[tuple[JobKind, str]] = set()
        self._keeper: LeaseKeeper | None = None
        self._listener: Listener | None = None
        self._wake_told = threading.Event()  # a Wake is in the inbox: do not add another
        self._writes = ThreadPoolExecutor(1, thread_name_prefix="PgQueueWrites")
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="PgQueueReads")
        # Shared with the I/O threads (under the lock):
        self._lock = threading.Lock()
        self._unstarted: dict[str, Job] = {}  # claimed, not yet handed to the Dispatcher
        self.claims = self.jobs_claimed = self.reaped = self.store_failures = 0
        self.store_error: str | None = None  # the last view's failure, if it failed
        self.store_latency_ms: float | None = None
        # Reads thread only:
        self._view: tuple[Any, Any, Any] | None = None
        self._view_at = float("-inf")
        self._company_view: tuple[float, Mapping[str, Any] | None] | None = None

    def __repr__(self) -> str:
        return (f"<ClaimingQueue {self.instance_id} leases={len(self.leases)}"
                f" claimed={self.jobs_claimed}{' FENCED' if self.fenced else ''}>")

    # --- life ----------------------------------------------------------------------

    def start(self, port: DispatcherPort) -> None:
        """Start the lease keeper, listen for wake-ups, beat once (which claims)."""
        self._port = port
        self._keeper = self.store.lease_keeper(
            ttl_s=self.settings.lease_ttl_s, beat_s=self.beat_s, timers=self.timers,
            on_lost=lambda ids: port.tell(LeasesLost(job_ids=frozenset(ids))),
            on_fence=lambda on: port.tell(Fenced(on=on))).start()
        try:
            self._listener = self.store.listen(self._woken)
        except StoreUnavailable as exc:
            logger.error("no wake-ups from other instances (%s); polling every %.1fs", exc,
                         self.beat_s)
        port.tell(SharedTick())

    def stop(self) -> None:
        """Stop listening, finish the I/O in flight, give back unstarted claims, stop renewing."""
        if self._listener is not None:
            self._listener.stop()
        self._writes.shutdown(wait=True, cancel_futures=False)
        self._reads.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            unstarted, self._unstarted = list(self._unstarted.values()), {}
        for job in unstarted:
            self._give_back(job)
        if self._keeper is not None:
            self._keeper.stop()

    def _submit(self, work: Callable[..., None], *args: Any) -> None:
        """Run ``work`` on the writes thread, in order; an unexpected error is logged, not lost."""
        def run() -> None:
            try:
                work(*args)
            except Exception:
                logger.exception("job store: %s failed unexpectedly",
                                 getattr(work, "__name__", "a write"))

        self._writes.submit(run)

    def _tell(self, message: Any) -> None:
        if self._port is not None:
            self._port.tell(message)

    def _woken(self, kind: JobKind | None) -> None:
        """Called on the listener's thread for every NOTIFY: one Wake in the inbox at most."""
        if not self._wake_told.is_set():
            self._wake_told.set()
            self._tell(Wake())

    def _failed(self, what: str, exc: BaseException) -> None:
        with self._lock:
            self.store_failures += 1
        logger.error("job store: %s failed (%s); next try in %.1fs", what, _first_line(exc),
                     self.beat_s)

    def on_message(self, message: Any) -> bool:
        """Wake-ups, the beat and pause writes; return whether ``message`` was one."""
        match message:
            case Wake():
                self._wake_told.clear()
                self._woke()
            case SharedTick():
                self._beat()
            case Fenced(on=on):
                self.fenced = on
                self._woke()
            case PauseWritten(kind=kind, reason=reason, paused=paused, written=written):
                self._pause_written(kind, reason, paused=paused, written=written)
            case _:
                return False
        return True

    def _woke(self) -> None:
        """Something may have become claimable: every kind may be claimed again."""
        self._short.clear()
        self._woken_meanwhile = True

    def _beat(self) -> None:
        """Take back expired leases, then claim; schedule the next beat (none of it fenced)."""
        for kind, reason in sorted(self._resumes_due):  # resumes the database missed
            self._write_pause(kind, reason, paused=False)
        self._woke()
        if not self.fenced:
            self._submit(self._reap)
        self.timers.call_later(self.beat_s, lambda: self._tell(SharedTick()))

    # --- the writes thread ---------------------------------------------------------

    def _reap(self) -> None:
        try:
            jobs = self.store.reap_expired(None, instance_id=self.instance_id,
                                           lease_ttl_s=self.settings.lease_ttl_s)
        except STORE_ERRORS as exc:
            self._failed("reaping", exc)
            return
        for job in jobs:
            if job.state == JobState.PROCESSING:
                self.leases.hold(job.id)  # taken over here: keep the lease while storing
        with self._lock:
            self.reaped += len(jobs)
        if jobs:
            self._tell(Reaped(jobs=tuple(jobs)))

    def _claim(self, free: dict[JobKind, int], capacity: Capacity, sent: float) -> None:
        s = self.settings
        try:
            # The database's clock. Past a lost lease, the slot stays held until the
            # call's hold is over: counted from the claim there, and here from when the
            # claim was sent, plus the longest a claim may take, so ours ends first.
            # Each job's Python API instance is chosen in the claim, counting every
            # backend's calls there: an instance's capacity is one, whoever sends.
            routed = self.store.claim_on_instances(
                free, self.instance_id, dict(capacity.limits), capacity.instances, None,
                s.aging_s, s.lease_ttl_s, s.call_hold_s + self.store.call_deadline_s,
                ceilings=self.ceilings)
        except STORE_ERRORS as exc:
            self._failed("claim", exc)
            routed = []  # every kind counts as short: the next wake-up or beat tries again
        except Exception:  # a bug must not leave the claim "in flight" for good, unseen
            logger.exception("job store: the claim failed unexpectedly; next try in %.1fs",
                             self.beat_s)
            routed = []
        jobs = [job for job, _ in routed]
        now = self.clock.time()
        with self._lock:
            self.claims += 1
            self.jobs_claimed += len(jobs)
            for job in jobs:
                self.leases.hold(job.id)  # renewed from now on, before the Dispatcher sees it
                self._unstarted[job.id] = job
        for job in jobs:
            if job.attempts == 1:  # a retry's due time is gone from the row once claimed
                self.metrics.attempt_started(job.kind, max(0.0, now - job.created_at))
        got = Counter(job.kind for job in jobs)
        self._tell(Claimed(jobs=tuple(jobs), asked=frozenset(free), sent=sent,
                           short=frozenset(k for k, n in free.items() if got[k] < n),
                           routes={job.id: url for job, url in routed}))

    def _give_back(self, job: Job) -> None:
        """Queue a claimed job again, its attempt not counted (it never started)."""
        back = job.replace(state=JobState.QUEUED, attempts=max(0, job.attempts - 1),
                           started_at=None)
        try:
            self.store.finish(back, self.instance_id)
        except STORE_ERRORS as exc:  # its lease expires and a reap queues it, after its hold
            self._failed(f"giving back job {job.id}", exc)
        self.leases.release(job.id)

    # --- the Dispatcher's side -----------------------------------------------------

    def add(self, job: Job) -> None:
        """A job added here is in the shared queue already: a wake-up claims it."""
        self._woke()

    def take_over(self, job: Job) -> bool:
        """A processed job whose result is not stored: whichever instance reaps it stores it.

        Retried only to store its result, it is ``processing`` without a lease: the
        reap (here, now, or elsewhere) takes it over; ``Reaped`` tells the Dispatcher.
        """
        self._submit(self._reap)
        return False

    def retry_due(self, job: Job) -> None:
        """The retry waits in the shared queue as retrying; whoever is free first claims it."""
        self._woke()

    def take(self, room: Room, capped: Capped | None, *, qa_first: bool,
             capacity: Callable[[], Capacity]) -> list[Job]:
        """Send one claim for the room there is; its jobs come back with ``Claimed``.

        Both kinds in one claim: the database takes questions first (``qa_first`` is
        its order), and each job's Python API instance only where the calls of every
        backend leave room. Company ceilings are the database's too (``capped`` is
        local counting, not needed here).
        """
        if self.fenced or self._claiming:
            return []
        free = {kind: n for kind, n in room().items()
                if n > 0 and not self.local_paused[kind] and kind not in self._short}
        if not free:
            return []
        self._claiming, self._woken_meanwhile = True, False
        now_capacity = capacity()
        self.limits = dict(now_capacity.limits)
        self._writes.submit(self._claim, free, now_capacity, time.monotonic())
        return []

    def claimed(self, message: Claimed) -> list[Job]:
        """A claim came back: the jobs to start, which the Dispatcher now holds."""
        self._claiming = False
        if not self._woken_meanwhile:
            self._short |= message.short
        with self._lock:
            for job in message.jobs:
                self._unstarted.pop(job.id, None)
        return list(message.jobs)

    def give_back(self, job: Job) -> None:
        """A claimed job the Dispatcher cannot start after all (no room any more, draining)."""
        self._submit(self._give_back, job)

    def started(self, job: Job) -> None:
        """A job runs here: its lease is renewed until its outcome is written."""
        self.leases.hold(job.id)

    def shutdown_cut(self, job: Job) -> bool:
        """Write nothing for a call the shutdown cut: the lease and the hold protect it.

        Writing ``retrying`` would free its slot in the database while the Python API
        is still at the call; left as it is, another instance takes it back only once
        the lease has expired and the call's hold is over.
        """
        self.leases.release(job.id)
        logger.warning("job %s: call cut by the shutdown; left processing, taken back by"
                       " another instance after its hold", job.id,
                       extra=job_fields(job.id, job.kind, "cut", job.attempts))
        return True

    def cancel(self, job_id: str, retrying: Job | None) -> Future[bool]:
        """Cancel in the database (whichever instance's queue holds it); a future of it."""
        return self._writes.submit(self._cancel, job_id)

    def _cancel(self, job_id: str) -> bool:
        job = self.store.cancel(job_id, self.clock.time())  # StoreUnavailable: the asker's
        if job is None:
            return False
        self.metrics.job_finished(job.kind, JobState.CANCELLED)
        logger.info("job %s cancelled", job_id,
                    extra=job_fields(job_id, job.kind, "cancelled", job.attempts))
        return True

    # --- pauses --------------------------------------------------------------------
    #
    # Pauses are rows, so every instance stops claiming. The watchdog's pause for the
    # Python API's memory is bound to this instance: it lifts itself if this instance
    # dies holding it. This process's own memory is nobody else's concern (I5): that
    # pause is never a row, only a local reason. A pause the database could not take
    # holds here until it can.

    def pause(self, kind: JobKind, reason: str) -> None:
        """Pause ``kind`` on every instance (this process's memory: here only)."""
        if reason == PROCESS_MEMORY_PAUSE_REASON:
            if reason not in self.local_paused[kind]:
                self.local_paused[kind].add(reason)
                logger.warning("%s claims paused on this instance only (%s)", kind.value, reason)
            return
        self._resumes_due.discard((kind, reason))
        self._write_pause(kind, reason, paused=True)

    def resume(self, kind: JobKind, reason: str) -> bool:
        """Lift a pause; for a row, taking goes on once the database has it (``PauseWritten``)."""
        if reason == PROCESS_MEMORY_PAUSE_REASON:
            if reason in self.local_paused[kind]:
                self.local_paused[kind].discard(reason)
                logger.warning("%s claims: %s pause lifted on this instance", kind.value,
                               reason)
            return True
        self._resumes_due.discard((kind, reason))
        self._write_pause(kind, reason, paused=False)
        return False

    def _write_pause(self, kind: JobKind, reason: str, *, paused: bool) -> None:
        bound = self.instance_id if reason == MEMORY_PAUSE_REASON else None

        def write() -> None:
            try:
                changed = (self.store.pause(kind, reason, instance_id=bound) if paused
                           else self.store.resume(kind, reason, instance_id=bound))
            except STORE_ERRORS as exc:
                self._failed("pause" if paused else "resume", exc)
                self._tell(PauseWritten(kind=kind, reason=reason, paused=paused, written=False))
                return
            if changed:
                logger.warning("%s dispatch: %s on every instance (%s)", kind.value,
                               "paused" if paused else "pause lifted", reason)
            self._tell(PauseWritten(kind=kind, reason=reason, paused=paused, written=True))

        self._submit(write)

    def _pause_written(self, kind: JobKind, reason: str, *, paused: bool,
                       written: bool) -> None:
        if paused and not written:
            self.local_paused[kind].add(reason)  # at least here, until the database is back
        elif not paused and written:
            self.local_paused[kind].discard(reason)
            self._resumes_due.discard((kind, reason))
            self._woke()
        elif not paused:
            self._resumes_due.add((kind, reason))  # tried again on every beat until it lands

    def pause_reasons(self, kind: JobKind) -> set[str]:
        """The reasons held here (the database's own are in the snapshot)."""
        return set(self.local_paused[kind])

    def waiting(self, kind: JobKind) -> int:
        """Not known without I/O: the snapshot reads the database's count."""
        return 0

    # --- questions (answered on the reads thread) -----------------------------------

    def position(self, job_id: str,
                 estimate: Callable[[JobKind, int], float]) -> Future[tuple[int, float] | None]:
        """The job's place in the shared order, read from the database."""
        return self._reads.submit(self._position, job_id, estimate)

    def _position(self, job_id: str,
                  estimate: Callable[[JobKind, int], float]) -> tuple[int, float] | None:
        try:
            position = self.store.position(job_id, self.clock.time(), self.settings.aging_s)
            job = self.store.get(job_id) if position is not None else None
        except STORE_ERRORS as exc:
            self._failed("queue position", exc)
            return None
        if position is None or job is None:
            return None
        return position, estimate(job.kind, position)

    def charge(self, job: Job, extra_s: float) -> None:
        """Correct the company's finish in the shared fair order (one statement)."""
        def write() -> None:
            try:
                self.store.charge(job, extra_s)
            except STORE_ERRORS as exc:  # the order is a little less exact; nothing else
                self._failed("fair-share charge", exc)

        self._submit(write)

    def company_waiting(self) -> Counter[tuple[JobKind, str]]:
        """Nothing waits here: the queue is the database's."""
        return Counter()

    def inspected(self, local: dict[str, Any],
                  companies: Callable[[Mapping[str, Any] | None], dict[str, Any]],
                  running: Collection[str]) -> dict[str, Any] | Future[dict[str, Any]]:
        """The snapshot with the database's counts, pauses and companies (at once if fenced)."""
        local["shared"] = self._describe()
        local["shared"]["storing"] = sum(1 for job_id in self.leases.ids()
                                         if job_id not in running)
        if self.fenced:  # the database is away from us: answer now, from what is known here
            local["companies"] = companies(None)
            return local
        return self._reads.submit(self._merged, local, companies)

    def _merged(self, answer: dict[str, Any],
                companies: Callable[[Mapping[str, Any] | None], dict[str, Any]]
                ) -> dict[str, Any]:
        answer["companies"] = companies(self._company_counts())
        view = self._read_view()
        answer["shared"].update(self._health())
        if view is None:
            return answer
        counts, paused, in_flight = view
        for kind in JobKind:
            row = answer["kinds"][kind.value]
            row["waiting"] = counts[kind, JobState.QUEUED]
            row["retrying"] = counts[kind, JobState.RETRYING]
            reasons = sorted(set(paused[kind]) | set(row["pause_reasons"]))
            row["paused"] = bool(reasons)
            row["pause_reasons"] = reasons
            row["running_everywhere"] = in_flight[kind]
            row["limit_everywhere"] = self.limits.get(kind, row["limit"])
        return answer

    def _company_counts(self) -> Mapping[str, Any] | None:
        """The companies of every instance, read at most once per ``VIEW_MAX_AGE_S``."""
        now = time.monotonic()
        if self._company_view is None or now - self._company_view[0] >= VIEW_MAX_AGE_S:
            try:
                counts: Mapping[str, Any] | None = self.store.company_counts_now()
            except STORE_ERRORS as exc:
                self._failed("company counts", exc)
                counts = None  # kept for its second too: a silent database costs one wait
            self._company_view = (now, counts)
        return self._company_view[1]

    def _read_view(self) -> tuple[Any, Any, Any] | None:
        """The database's counts, pauses and slots, read at most once per ``VIEW_MAX_AGE_S``.

        Health probes and snapshots come often (each unauthenticated ``/health`` is
        one); they share one reading, which also measures the store's latency.
        """
        now = time.monotonic()
        if now - self._view_at < VIEW_MAX_AGE_S:
            return self._view
        try:
            view = (self.store.counts(), self.store.paused(), self.store.in_flight())
        except STORE_ERRORS as exc:
            self._failed("inspection", exc)
            with self._lock:
                self.store_error = _first_line(exc)
            self._view, self._view_at = None, now
            return None
        with self._lock:
            self.store_latency_ms = round((time.monotonic() - now) * 1000, 1)
            self.store_error = None
        self._view, self._view_at = view, now
        return view

    def _health(self) -> dict[str, Any]:
        with self._lock:
            return {"store_reachable": self.store_error is None and not self.fenced,
                    "store_error": self.store_error, "store_latency_ms": self.store_latency_ms,
                    "store_failures": self.store_failures, "claims": self.claims,
                    "claimed": self.jobs_claimed, "reaped": self.reaped}

    def _describe(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "fenced": self.fenced,
            "leases": self._keeper.describe() if self._keeper is not None else None,
            "beat_s": self.beat_s,
            "listening": self._listener is not None and self._listener.alive,
            **self._health(),
        }
