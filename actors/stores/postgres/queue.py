"""The shared-queue half of ``PostgresJobStore``: the contract the Dispatcher builds on.

Every method is one transaction; times are the caller's wall clock (the
``Clock`` of timers.py), so instances need clocks in step to well under the
lease TTL (NTP gives milliseconds). The SQL and the claim protocol, with the
reason it is race-free, are in pg_claims.py.

How an instance uses it (the dispatcher's loop, in order):

* ``listen(cb)`` once at start; on each wake-up (and on a slow fallback timer):
  ``reap_expired`` then ``claim`` for the kinds with idle workers, or
  ``claim_on_instances``, which also chooses each job's Python API instance so that
  an instance's capacity holds across every backend (issue 20).
* every ``lease_ttl_s / 3``: ``renew_leases`` for the jobs it runs (also its heartbeat);
  a job missing from the answer was reaped: drop its outcome when it comes.
* an attempt's outcome: ``finish(job, instance_id)`` (fenced by the lease).
* ``cancel``, ``pause``, ``resume``, ``paused``, ``position``, ``in_flight``,
  ``api_in_flight`` for the facade.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import psycopg

from actors.model.errors import DuplicateJob, StoreUnavailable
from actors.model.jobs import Job, JobKind
from actors.stores.postgres import claims as pg_claims
from actors.stores.postgres.listen import Listener, WakeCallback


class SharedQueue:
    """Claims, leases, reaping, cancelling, global pauses and wake-ups (a mixin of the store)."""

    instance_id: str
    _conninfo: str
    _connect_kwargs: dict[str, Any]
    _clock: Callable[[], float]
    _lease_now: Callable[[], float | None]
    _listeners: list[Listener]
    _conn: Callable[[], AbstractContextManager[psycopg.Connection[Any]]]
    _tx: Callable[[], AbstractContextManager[psycopg.Connection[Any]]]
    _active_id: Callable[[str], str]

    def claim(self, kinds_with_free_workers: dict[JobKind, int], instance_id: str,
              limits: dict[JobKind, int], now: float | None, aging_s: float,
              lease_ttl_s: float, hold_s: float = 0.0, *,
              ceilings: dict[JobKind, int] | None = None) -> list[Job]:
        """Claim the best waiting jobs, within per-kind limits counted across all instances.

        Waiting means ``queued``, or ``retrying`` with ``next_attempt_at <= now``
        (so no instance needs a timer for another's retries). Per kind at most
        ``kinds_with_free_workers[kind]`` jobs are taken, and never so many that
        more than ``limits[kind]`` jobs of the kind hold a slot anywhere (a slot:
        ``processing``, no result yet, and its lease live at ``now`` or its
        ``hold_until`` not passed). Globally paused kinds are skipped. Each
        claimed job is ``processing`` with ``attempts + 1``, ``started_at = now``,
        a lease owned by ``instance_id`` until ``now + lease_ttl_s`` and its slot
        held at least until ``now + hold_s`` (the abandoned-call hold: a call
        whose instance died may still be at the Python API until then).
        ``now=None`` is the database's clock (what instances use).

        ``ceilings`` (per kind): at most this many jobs of one company hold a slot;
        its other jobs are passed over for the next company's.

        Returns:
            The claimed jobs in the global order: effective priority (aging by one
            level per ``aging_s`` waited) of each base priority's head in the fair
            order between companies, then arrival ``seq``; start them in it.
        """
        with self._conn() as conn:
            return pg_claims.claim(conn, kinds_with_free_workers, instance_id, limits, now,
                                   aging_s, lease_ttl_s, hold_s, ceilings=ceilings)

    def claim_on_instances(self, kinds_with_free_workers: dict[JobKind, int], instance_id: str,
                           limits: dict[JobKind, int], rooms: pg_claims.Rooms,
                           now: float | None, aging_s: float, lease_ttl_s: float,
                           hold_s: float = 0.0, *, ceilings: dict[JobKind, int] | None = None,
                           ) -> list[tuple[Job, str]]:
        """Claim as ``claim`` does, and choose each job's Python API instance in the same claim.

        ``rooms`` maps each Python API instance's base URL (the same string on every
        backend) to ``(capacity, {kind: most})`` as this backend sees it now: the
        instance's capacity for both kinds together (its adaptive limit, 0 while it is
        cooling) and the most calls each kind may have there (``kind_limit``: 0 while its
        breaker is open, or for video while its memory is high). The slots held there
        are counted over every backend (``processing``, no result, lease live or hold
        not passed), so together the backends never send an instance more than
        ``capacity`` calls, nor more of a kind than its most; ``limits`` per kind still
        hold too. Q&A is claimed first (it takes the free capacity first), then video;
        each job goes to the instance with the most room for its kind (min of its free
        capacity and its kind's free most; the first in ``rooms`` on a tie), which is
        written with the claim (``api_instance``). A kind stops when no instance has room.

        Returns:
            ``(job, url)`` per claimed job in the order to start them: the questions,
            then the videos, each kind in the fair order (as ``claim``'s).
        """
        with self._conn() as conn:
            return pg_claims.claim_on_instances(conn, kinds_with_free_workers, instance_id,
                                                limits, rooms, now, aging_s, lease_ttl_s,
                                                hold_s, ceilings=ceilings)

    def api_in_flight(self, now: float | None = None) -> dict[str, dict[JobKind, int]]:
        """Return how many jobs of each kind hold a slot at each Python API instance.

        Across every backend; only jobs claimed by ``claim_on_instances`` are counted
        (``claim`` records no instance).
        """
        with self._conn() as conn:
            return pg_claims.api_in_flight(conn, self._lease_now() if now is None else now)

    def renew_leases(self, instance_id: str, job_ids: Iterable[str],
                     ttl: float, *, now: float | None = None) -> set[str]:
        """Extend the leases ``instance_id`` holds to ``now + ttl``; record its heartbeat.

        Call it every ``ttl / 3`` or so while the jobs run, with an empty list too
        (the heartbeat keeps its instance-bound pauses alive). A lease that has
        expired is never renewed, even when nobody took the job yet.

        Returns:
            The ids still held. A job missing was reaped (and maybe claimed
            elsewhere): its attempt's outcome must be dropped.
        """
        at = self._lease_now() if now is None else now
        with self._conn() as conn:
            return pg_claims.renew(conn, instance_id, list(job_ids), at, ttl)

    def finish(self, job: Job, instance_id: str) -> bool:
        """Write an attempt's outcome, only while ``instance_id`` holds the job's lease.

        ``job`` is the new version (completed, failed, retrying with its
        ``next_attempt_at``, or still processing with its result recorded). The
        lease is cleared unless the job stays processing, and listeners are woken
        (a slot is free).

        Returns:
            False when the lease was lost (reaped; maybe running elsewhere): nothing written.
        """
        with self._conn() as conn:
            return pg_claims.finish(conn, job, instance_id)

    def update(self, job: Job) -> None:
        """Write a job's new version unconditionally (the JobStore protocol).

        Clears the lease unless the job stays processing; wakes listeners when
        the job is queued again or leaves ``processing``. Use ``finish`` for
        outcomes and ``cancel`` for cancels: they are fenced against other instances.

        Raises:
            DuplicateJob: the job would be active while another active job has its
                ``dedupe_key`` (an operator retry of a video that runs again meanwhile).
        """
        try:
            with self._tx() as conn:
                pg_claims.update(conn, job)
        except psycopg.errors.UniqueViolation as exc:
            if job.dedupe_key is None or exc.diag.constraint_name != "qudemo_jobs_dedupe":
                raise
            raise DuplicateJob(self._active_id(job.dedupe_key)) from None

    def cancel(self, job_id: str, now: float | None = None) -> Job | None:
        """Cancel a queued or retrying job atomically; ``None`` if it is not (anymore).

        A claim that locked the job first wins: the cancel then finds it processing.
        """
        with self._conn() as conn:
            return pg_claims.cancel(conn, job_id, self._clock() if now is None else now)

    def reap_expired(self, now: float | None = None, *, instance_id: str | None = None,
                     lease_ttl_s: float = 30.0) -> list[Job]:
        """Take back the jobs whose lease expired at ``now`` (their instance died).

        A job with a live lease is never touched, however long it runs; nor one
        whose hold has not passed (its call may still be at the Python API). An
        expired one whose attempt was cut is ``queued`` again (keeping its place;
        the attempt counts) with ``last_error`` "interrupted: lease expired ...", or
        ``failed`` when that used up its attempts. An expired one that had its
        result (only storing it was left) is taken over: its lease moves to
        ``instance_id`` (when given) and it stays ``processing``, for the caller to
        store the result. Rows locked by a concurrent reaper are skipped.

        Returns:
            The jobs changed, as now stored: queued, failed, or processing (taken over).
        """
        with self._tx() as conn:
            return pg_claims.reap(conn, self._lease_now() if now is None else now,
                                  instance_id, lease_ttl_s)

    def pause(self, kind: JobKind, reason: str, *, instance_id: str | None = None) -> bool:
        """Pause claims of ``kind`` on every instance; return whether the pause is new.

        With ``instance_id`` the pause holds only while that instance heartbeats
        (``renew_leases``), so a memory pause of a dead instance lifts itself.
        """
        with self._conn() as conn:
            return pg_claims.pause(conn, kind, reason, instance_id, self._clock())

    def resume(self, kind: JobKind, reason: str, *, instance_id: str | None = None) -> bool:
        """Lift one pause of ``kind`` (and wake the listeners); return whether it was there."""
        with self._conn() as conn:
            return pg_claims.resume(conn, kind, reason, instance_id)

    def paused(self) -> dict[JobKind, set[str]]:
        """Return the reasons each kind is paused for, on all instances."""
        with self._conn() as conn:
            return pg_claims.paused(conn, self._lease_now())

    def in_flight(self, now: float | None = None) -> dict[JobKind, int]:
        """Return how many jobs of each kind hold a slot, across all instances."""
        with self._conn() as conn:
            return pg_claims.in_flight(conn, self._lease_now() if now is None else now)

    def position(self, job_id: str, now: float, aging_s: float) -> int | None:
        """Return a queued job's 1-based place among its kind's queued jobs (claim order)."""
        with self._conn() as conn:
            return pg_claims.position(conn, job_id, now, aging_s)

    def next_due(self) -> float | None:
        """Return the earliest ``next_attempt_at`` of a retrying job (for the fallback timer)."""
        with self._conn() as conn:
            row = conn.execute("SELECT min(next_attempt_at) FROM qudemo_jobs"
                               " WHERE state = 'retrying'").fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def notify(self, kind: JobKind) -> None:
        """Wake every instance's listener for ``kind`` (e.g. when a retry comes due)."""
        with self._conn() as conn:
            pg_claims.notify(conn, kind)

    def listen(self, callback: WakeCallback, *, timeout_s: float = 10.0) -> Listener:
        """Call ``callback`` (on a background thread) for every wake-up from any instance.

        Returns once the channel is listened to, so a job added after this wakes
        it. Stop it with ``Listener.stop()``; ``close()`` stops every listener.

        Raises:
            StoreUnavailable: not listening within ``timeout_s``.
        """
        listener = Listener(self._conninfo, callback, channel=pg_claims.CHANNEL,
                            connect_kwargs=self._connect_kwargs,
                            name=f"PgListener-{len(self._listeners) + 1}")
        self._listeners.append(listener)
        if not listener.start(timeout_s):
            listener.stop()
            self._listeners.remove(listener)
            raise StoreUnavailable(f"could not listen for wake-ups within {timeout_s:g}s")
        return listener
