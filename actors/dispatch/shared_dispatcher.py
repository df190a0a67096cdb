"""The Dispatcher of an instance that shares its queue with others (``QUEUE_STORE=postgres``).

The local Dispatcher (dispatcher.py) keeps the waiting order in memory. Here
the order, the per-kind limits and the pauses live in PostgreSQL, shared by
every instance (gunicorn workers and machines), and this actor *claims* work
from there (stores/postgres/queue.py): as many jobs per kind as it has idle workers, never
more than the kind's limit across all instances together. Everything after
the claim (workers, deadlines, retries with backoff, breakers, results) is the
local Dispatcher's code, unchanged.

When it claims (each is one round trip):

* on a wake-up: ``NOTIFY`` from any instance (a job added, a slot freed, a
  job re-queued, a pause lifted), or this instance's own submit;
* after every outcome (the registry's fenced write of it sends the NOTIFY);
* when one of its retry timers comes due;
* on its beat (``SharedTick``, every ``min(poll interval, lease TTL / 3)``):
  expired leases of dead instances taken back (only once their calls' hold
  has passed too), then a claim: the fallback when a wake-up was missed.

Leases are renewed by the ``LeaseKeeper`` (stores/postgres/fence.py) on a thread and a
connection of its own, never behind this actor's mailbox. When it cannot
renew in time it fences the instance (``Fenced``): no claims, running calls
go on as abandoned calls; expired leases are reported (``LeasesLost``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import psycopg
import pykka

from actors.dispatch.dispatcher import Dispatcher
from actors.dispatch.fairness import NOMINAL_COST_S, describe_companies
from actors.model.errors import StoreUnavailable
from actors.model.jobs import Job, JobKind, JobState
from actors.model.messages import Fenced, LeasesLost, SharedTick, Wake
from actors.model.settings import Settings
from actors.runtime.logs import job_fields
from actors.stores.postgres.fence import LeaseKeeper
from actors.stores.postgres.listen import Listener
from actors.stores.postgres.store import PostgresJobStore
from actors.work.watchdog import MEMORY_PAUSE_REASON, PROCESS_MEMORY_PAUSE_REASON

logger = logging.getLogger(__name__)

STORE_ERRORS = (StoreUnavailable, psycopg.Error)
"""What a store call may raise when the database is away; the actor must survive it."""
VIEW_MAX_AGE_S = 1.0
"""How old the database's counts in a snapshot (and a health probe) may be."""


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class SharedDispatcher(Dispatcher):
    """Claims jobs from the shared queue, runs them, and keeps their leases alive."""

    def __init__(self, settings: Settings, *, store: PostgresJobStore, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.store = store
        self.instance_id = store.instance_id
        # Across all instances: the Python API behind every instance is the same.
        self.limits = {kind: settings.limits(kind).max_concurrent * len(self.clients)
                       for kind in JobKind}
        self.beat_s = max(0.05, min(settings.poll_interval_s, settings.lease_ttl_s / 3))
        self.leases = store.leases  # held from the claim until the outcome is written
        self._resumes_due: set[tuple[JobKind, str]] = set()
        self.fenced = False
        self._keeper: LeaseKeeper | None = None
        self.store_error: str | None = None  # the last inspection's failure, if it failed
        self.store_latency_ms: float | None = None
        self._view: tuple[Any, Any, Any] | None = None
        self._view_at = float("-inf")
        self._company_view: tuple[float, dict[str, Any]] | None = None
        self.claims = 0
        self.claimed = 0
        self.reaped = 0
        self.store_failures = 0
        self._listener: Listener | None = None
        self._wake_told = threading.Event()  # a Wake is in the inbox: do not add another

    def __repr__(self) -> str:
        return (f"<SharedDispatcher {self.instance_id} running={len(self.running)}"
                f" leases={len(self.leases)} claimed={self.claimed}"
                f"{' FENCED' if self.fenced else ''}>")

    def on_start(self) -> None:
        """Start the pools and the lease keeper, listen for wake-ups, beat once (claims)."""
        super().on_start()
        ref = self.actor_ref

        def tell(message: Any) -> None:
            with contextlib.suppress(pykka.ActorDeadError):  # stopping: nobody to tell
                ref.tell(message)

        self._keeper = self.store.lease_keeper(
            ttl_s=self.settings.lease_ttl_s, beat_s=self.beat_s, timers=self.timers,
            on_lost=lambda ids: tell(LeasesLost(job_ids=frozenset(ids))),
            on_fence=lambda on: tell(Fenced(on=on))).start()
        try:
            self._listener = self.store.listen(self._woken)
        except StoreUnavailable as exc:
            logger.error("no wake-ups from other instances (%s); polling every %.1fs", exc,
                         self.beat_s)
        self._beat()

    def on_stop(self) -> None:
        """Stop listening and renewing, then stop like the local Dispatcher."""
        if self._listener is not None:
            self._listener.stop()
        if self._keeper is not None:
            self._keeper.stop()
        super().on_stop()

    def on_receive(self, message: Any) -> Any:
        """Route one message: the shared queue's own, then the local Dispatcher's."""
        match message:
            case Wake():
                self._wake_told.clear()
                self._dispatch()
            case SharedTick():
                self._beat()
            case LeasesLost(job_ids=job_ids):
                self._on_leases_lost(job_ids)
            case Fenced(on=on):
                self._on_fenced(on)
            case _:
                return super().on_receive(message)
        return None

    def _woken(self, kind: JobKind | None) -> None:
        """Called on the listener's thread for every NOTIFY: one Wake in the inbox at most."""
        if not self._wake_told.is_set():
            self._wake_told.set()
            with contextlib.suppress(pykka.ActorDeadError):  # stopping: nobody to wake
                self.actor_ref.tell(Wake())

    def _failed(self, what: str, exc: BaseException) -> None:
        self.store_failures += 1
        logger.error("job store: %s failed (%s); next try in %.1fs", what,
                     str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self.beat_s)

    # --- the beat ------------------------------------------------------------------

    def _beat(self) -> None:
        """Take back expired leases, claim; schedule the next beat (none of it while fenced)."""
        for kind, reason in sorted(self._resumes_due):  # resumes the database missed
            self._resume(kind, reason)
        if not self.fenced:
            try:
                self._reap()
            except STORE_ERRORS as exc:
                self._failed("reaping", exc)
            self._dispatch()
        self.timers.tell_later(self.beat_s, self.actor_ref, SharedTick())

    def _on_leases_lost(self, job_ids: frozenset[str]) -> None:
        for job_id in sorted(job_ids):
            entry = self.running.get(job_id)
            if entry is None:
                continue
            # Not renewable any more. Its call goes on, holding its slot here, and the
            # database holds the slot until the call's hold has passed; its outcome is
            # written only if no other instance has taken the job by then.
            entry.lease_lost = True
            logger.error("job %s: lease expired while its call runs here; the call goes on"
                         " as an abandoned call", job_id,
                         extra=job_fields(job_id, entry.job.kind, "lease lost",
                                          entry.job.attempts))

    def _on_fenced(self, on: bool) -> None:
        self.fenced = on
        for entry in self.running.values():
            entry.lease_lost = on
        if not on:
            self._dispatch()

    def _on_shutdown_cut(self, entry: Any, error: str) -> None:
        """Write nothing: the job stays processing, and its lease and hold protect it.

        Writing ``retrying`` would free its slot in the database while the Python API
        is still at the call; left as it is, another instance takes it back only once
        the lease has expired and the call's hold is over.
        """
        self.leases.release(entry.job.id)
        logger.warning("job %s: call cut by the shutdown; left processing, taken back by"
                       " another instance after its hold (%s)", entry.job.id, error,
                       extra=job_fields(entry.job.id, entry.job.kind, "cut", entry.job.attempts))

    def _reap(self) -> None:
        for job in self.store.reap_expired(None, instance_id=self.instance_id,
                                           lease_ttl_s=self.settings.lease_ttl_s):
            self.reaped += 1
            if job.state == JobState.PROCESSING and job.result is not None:
                self._restore_processed(job, job.result)
            elif job.state == JobState.FAILED:
                self.metrics.job_finished(job.kind, job.state)
                logger.error("job %s failed: %s", job.id, job.last_error,
                             extra=job_fields(job.id, job.kind, "failed", job.attempts))
            else:
                logger.warning("job %s: %s; queued again", job.id, job.last_error,
                               extra=job_fields(job.id, job.kind, "interrupted", job.attempts))

    # --- claiming ------------------------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        """A job added here is in the shared queue already; the claim that follows takes it.

        A job retried only to store its result is ``processing`` without a lease: reaping
        takes it over at once (whichever instance's reap gets there first stores it).
        """
        if job.state == JobState.PROCESSING and job.result is not None:
            try:
                self._reap()  # counted among the reaped: a take-over like any other
            except STORE_ERRORS as exc:
                self._failed("reap", exc)  # the next beat, here or elsewhere, takes it

    def _dispatch(self) -> None:
        """Claim as many jobs per kind as there are idle workers and Python API room.

        Adaptive capacity: questions are claimed first, then videos in what is left, and
        the global per-kind limits are the limiter's current ones.
        """
        if not self.settings.adaptive_concurrency:
            self._claim(tuple(JobKind))
            return
        self.limits = {kind: self.instances.limit(kind) for kind in JobKind}
        self._claim((JobKind.QA,))
        self._claim((JobKind.VIDEO,))

    def _claim(self, kinds: tuple[JobKind, ...]) -> None:
        if self.draining or self.fenced:
            return
        now_m = self.clock.monotonic()
        free: dict[JobKind, int] = {}
        for kind in kinds:
            pool = self.pools[kind]
            room = min(pool.idle, self.instances.room(kind, now_m))
            if room > 0 and not self.paused[kind]:
                free[kind] = room
        if not free:
            return
        now = self.clock.time()
        s = self.settings
        sent = time.monotonic()
        try:
            # The database's clock. Past a lost lease, the slot stays held until the
            # call's hold is over: counted from the claim there, and here from when the
            # claim was sent, plus the longest a claim may take, so ours ends first.
            jobs = self.store.claim(free, self.instance_id, self.limits, None, s.aging_s,
                                    s.lease_ttl_s, s.call_hold_s + self.store.call_deadline_s,
                                    ceilings=self.ceilings)
        except STORE_ERRORS as exc:
            self._failed("claim", exc)
            return
        self.claims += 1
        self.claimed += len(jobs)
        for job in jobs:
            if job.attempts == 1:  # a retry's due time is gone from the row once claimed
                self.metrics.attempt_started(job.kind, max(0.0, now - job.created_at))
            self._launch(job, hold_from=sent)

    def _launch(self, job: Job, *, hold_from: float | None = None) -> None:
        stale = self.running.pop(job.id, None)
        if stale is not None:
            # This instance's own lease lapsed (a stall longer than the TTL) and it claimed
            # the job again: the old attempt is superseded; its outcome will be ignored
            # and its worker freed when it reports.
            stale.timer.cancel()
            self._instance_ended(stale, broke=False)
        self.leases.hold(job.id)
        super()._launch(job, hold_from=hold_from)

    def _after_outcome(self) -> None:
        # No claim here: the registry has not written the outcome yet, so the slot still
        # counts as taken. Its write sends the NOTIFY that wakes every instance, this one too.
        self._check_idle()

    def _on_retry_due(self, job_id: str) -> None:
        # The job waits in the shared queue as retrying; whichever instance is free
        # first claims it once it is due. Here it is this one's turn to look.
        self.retrying.pop(job_id, None)
        self._dispatch()

    def _restore_processed(self, job: Job, result: Mapping[str, Any]) -> None:
        self.leases.hold(job.id)  # taken over here: keep the lease while storing
        super()._restore_processed(job, result)

    # --- control -------------------------------------------------------------------

    def _cancel(self, job_id: str) -> bool:
        pending = self.retrying.pop(job_id, None)
        if pending is not None:
            pending[1].cancel()
        self.avoid.pop(job_id, None)
        job = self.store.cancel(job_id, self.clock.time())  # StoreUnavailable: the asker's
        if job is None:
            return False
        self.metrics.job_finished(job.kind, JobState.CANCELLED)
        logger.info("job %s cancelled", job_id,
                    extra=job_fields(job_id, job.kind, "cancelled", job.attempts))
        return True

    def _pause(self, kind: JobKind, reason: str) -> None:
        # Pauses are rows, so every instance stops claiming. The watchdog's pause for the
        # Python API's memory is bound to this instance: it lifts itself if this instance
        # dies holding it. This process's own memory is nobody else's concern (I5): that
        # pause is never a row, only a local reason, which _dispatch honours.
        if reason == PROCESS_MEMORY_PAUSE_REASON:
            if reason not in self.paused[kind]:
                self.paused[kind].add(reason)
                logger.warning("%s claims paused on this instance only (%s)", kind.value, reason)
            return
        bound = self.instance_id if reason == MEMORY_PAUSE_REASON else None
        try:
            if self.store.pause(kind, reason, instance_id=bound):
                logger.warning("%s dispatch paused on every instance (%s)", kind.value, reason)
        except STORE_ERRORS as exc:
            self._failed("pause", exc)
            self.paused[kind].add(reason)  # at least here, until the database is back

    def _resume(self, kind: JobKind, reason: str) -> None:
        if reason == PROCESS_MEMORY_PAUSE_REASON:
            if reason in self.paused[kind]:
                self.paused[kind].discard(reason)
                logger.warning("%s claims: %s pause lifted on this instance", kind.value,
                               reason)
                self._dispatch()
            return
        bound = self.instance_id if reason == MEMORY_PAUSE_REASON else None
        self._resumes_due.discard((kind, reason))
        try:
            if self.store.resume(kind, reason, instance_id=bound):
                logger.warning("%s dispatch: %s pause lifted on every instance", kind.value,
                               reason)
        except STORE_ERRORS as exc:
            self._failed("resume", exc)
            self._resumes_due.add((kind, reason))  # tried again on every beat until it lands
            return
        self.paused[kind].discard(reason)
        self._dispatch()

    # --- questions -----------------------------------------------------------------

    def _position(self, job_id: str, kind: JobKind | None = None) -> tuple[int, float] | None:
        """The job's place, one round trip when its kind is known (a submission's reply)."""
        try:
            position = self.store.position(job_id, self.clock.time(), self.settings.aging_s)
            if position is not None and kind is None:
                job = self.store.get(job_id)
                kind = job.kind if job is not None else None
        except STORE_ERRORS as exc:
            self._failed("queue position", exc)
            return None
        if position is None or kind is None:
            return None
        return position, self._estimate(kind, position)

    def _charge(self, job: Job, duration_s: float) -> None:
        """Correct the company's finish in the shared fair order (one statement)."""
        try:
            self.store.charge(job, duration_s - NOMINAL_COST_S[job.kind])
        except STORE_ERRORS as exc:  # the order is a little less exact; nothing else
            self._failed("fair-share charge", exc)

    def _companies(self) -> dict[str, Any]:
        """The companies of every instance, read at most once per ``VIEW_MAX_AGE_S``."""
        now = time.monotonic()
        if self._company_view is None or now - self._company_view[0] >= VIEW_MAX_AGE_S:
            if self.fenced:
                return super()._companies()
            try:
                counts = self.store.company_counts_now()
            except STORE_ERRORS as exc:
                self._failed("company counts", exc)
                # Kept, like a failed store view, until it is VIEW_MAX_AGE_S old: a database
                # that does not answer must not cost every snapshot another wait.
                self._company_view = (now, super()._companies())
                return self._company_view[1]
            self._company_view = (now, describe_companies(counts["waiting"], counts["running"],
                                                          self.share))
        return self._company_view[1]

    def _read_store_view(self) -> tuple[Any, Any, Any] | None:
        """The database's counts, pauses and slots, read at most once per ``VIEW_MAX_AGE_S``.

        Health probes and snapshots come often (each unauthenticated ``/health`` is
        one); they share one reading, which also measures the store's latency.
        """
        now = time.monotonic()
        if self._view is not None and now - self._view_at < VIEW_MAX_AGE_S:
            return self._view
        try:
            view = (self.store.counts(), self.store.paused(), self.store.in_flight())
        except STORE_ERRORS as exc:
            self._failed("inspection", exc)
            self.store_error = _first_line(exc)
            self._view, self._view_at = None, now
            return None
        self.store_latency_ms = round((time.monotonic() - now) * 1000, 1)
        self.store_error = None
        self._view, self._view_at = view, now
        return view

    def _inspect(self) -> dict[str, Any]:
        answer = super()._inspect()
        view = None if self.fenced else self._read_store_view()  # fenced: answer at once
        answer["shared"] = self._shared_view()
        if view is None:
            return answer
        counts, paused, in_flight = view
        for kind in JobKind:
            view = answer["kinds"][kind.value]
            view["waiting"] = counts[kind, JobState.QUEUED]
            view["retrying"] = counts[kind, JobState.RETRYING]
            reasons = sorted(paused[kind] | self.paused[kind])
            view["paused"] = bool(reasons)
            view["pause_reasons"] = reasons
            view["running_everywhere"] = in_flight[kind]
            view["limit_everywhere"] = self.limits[kind]
        return answer

    def _shared_view(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id, "claims": self.claims, "claimed": self.claimed,
            "reaped": self.reaped,
            "storing": sum(1 for job_id in self.leases.ids() if job_id not in self.running),
            "fenced": self.fenced,
            "leases": self._keeper.describe() if self._keeper is not None else None,
            "store_failures": self.store_failures, "beat_s": self.beat_s,
            "store_reachable": self.store_error is None and not self.fenced,
            "store_error": self.store_error, "store_latency_ms": self.store_latency_ms,
            "listening": self._listener is not None and self._listener.alive,
        }
