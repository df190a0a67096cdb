"""Leases of one instance on the shared queue: the set it holds, the keeper that renews them.

Why a thread of its own, with a connection of its own: renewals are the
instance's proof of life. Behind a claim, a snapshot or a half-open pooled
connection in the Dispatcher's mailbox they would lapse while the instance
still works, and another instance would take its jobs. The keeper beats on
its own thread; a watch on the timer thread checks it, since a renewal
stuck in a black-holed connection never returns by itself.

Fencing (I3). A renewal sent at monotonic time ``t`` that succeeds leaves the
lease valid in the database until at least ``t + ttl`` (the database's clock
starts counting when the statement arrives, later than ``t``). Once
``t + ttl - margin`` has passed without a newer success, the instance can no
longer prove its leases, so it fences itself before anyone may reap:

* it stops claiming (``on_fence(True)``);
* its running calls go on as *abandoned* calls: they keep their slot here,
  and in the database a job's slot is held until its hold (claim time +
  ``QUEUE_ABANDONED_HOLD_MS``) has passed even after the lease expired, so no
  other instance runs it again while the Python API may still be at it;
* the stuck renewal's socket is shut down, so the keeper reconnects.

The first renewal that succeeds again lifts the fence; leases that expired
meanwhile are not renewed (the database refuses to) and are reported lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

from actors.runtime.timers import TimerService
from actors.stores.postgres import claims as pg_claims
from actors.stores.postgres.watch import StatementWatch, shutdown_socket

logger = logging.getLogger(__name__)


class LeaseSet:
    """The ids of the jobs whose leases this instance holds (thread-safe).

    The Dispatcher adds a job when it claims (or takes over) it; the JobRegistry
    removes it once the job's outcome is written, so the lease lives on between
    an attempt's end and its fenced write.
    """

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<LeaseSet {len(self)} held>"

    def __len__(self) -> int:
        with self._lock:
            return len(self._ids)

    def __contains__(self, job_id: object) -> bool:
        with self._lock:
            return job_id in self._ids

    def hold(self, job_id: str) -> None:
        """Renew ``job_id``'s lease from now on."""
        with self._lock:
            self._ids.add(job_id)

    def release(self, job_id: str) -> None:
        """Stop renewing ``job_id``'s lease (its outcome is written, or it was lost)."""
        with self._lock:
            self._ids.discard(job_id)

    def ids(self) -> list[str]:
        """Return the held ids, sorted."""
        with self._lock:
            return sorted(self._ids)


class LeaseKeeper:
    """Renews the held leases on a beat; fences the instance when it cannot."""

    def __init__(
        self,
        conninfo: str,
        *,
        instance_id: str,
        leases: LeaseSet,
        ttl_s: float,
        beat_s: float,
        timers: TimerService,
        connect_kwargs: dict[str, Any],
        on_lost: Callable[[set[str]], None],
        on_fence: Callable[[bool], None],
        watch: StatementWatch | None = None,
        call_deadline_s: float = 12.0,
    ) -> None:
        self.instance_id = instance_id
        self.leases = leases
        self.ttl_s = ttl_s
        self.beat_s = beat_s
        self.margin_s = ttl_s / 3  # fenced this long before any lease may expire
        self.fenced = False
        self.renewals = 0
        self.failures = 0
        self.last_error: str | None = None
        self._conninfo = conninfo
        # A connect stuck behind a partition must not outlast the fence margin.
        self._connect_kwargs = {**connect_kwargs,
                                "connect_timeout": max(1, int(self.margin_s))}
        self._timers = timers
        self._on_lost = on_lost
        self._on_fence = on_fence
        self._statements = watch
        self._call_deadline_s = call_deadline_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._conn: psycopg.Connection[Any] | None = None
        self._valid_until = time.monotonic() + ttl_s  # claims so far carry their own TTL
        self._thread = threading.Thread(target=self._run, name="PgLeaseKeeper", daemon=True)

    def __repr__(self) -> str:
        state = "FENCED" if self.fenced else "ok"
        return f"<LeaseKeeper {self.instance_id} {state} held={len(self.leases)}>"

    def start(self) -> LeaseKeeper:
        """Start beating and watching."""
        self._thread.start()
        self._timers.call_later(self.beat_s, self._watch)
        return self

    def stop(self, timeout_s: float = 1.0) -> None:
        """Stop beating; wait for the thread (a stuck renewal is interrupted)."""
        self._stop.set()
        self._interrupt()
        self._thread.join(timeout_s)
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    @property
    def alive(self) -> bool:
        """Whether the keeper's thread runs."""
        return self._thread.is_alive()

    def seconds_valid(self) -> float:
        """Seconds the held leases are known to stay valid (negative: past)."""
        with self._lock:
            return self._valid_until - time.monotonic()

    def describe(self) -> dict[str, Any]:
        """Return the keeper's state as plain data."""
        return {"fenced": self.fenced, "held": len(self.leases), "renewals": self.renewals,
                "failures": self.failures, "valid_for_s": round(self.seconds_valid(), 3),
                "last_error": self.last_error, "alive": self.alive}

    # --- the beat (keeper thread) -----------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self.beat()
            self._stop.wait(self.beat_s)

    def beat(self) -> None:
        """Renew once: on success extend validity, report lost leases, lift a fence."""
        sent = time.monotonic()
        ids = self.leases.ids()
        token: int | None = None
        try:
            conn = self._connection()
            if self._statements is not None:
                token = self._statements.watch(conn, self._call_deadline_s)
            held = pg_claims.renew(conn, self.instance_id, ids, None, self.ttl_s)
        except (psycopg.Error, OSError) as exc:
            self._drop()
            self.failures += 1
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if reason != self.last_error:
                logger.error("lease renewal failed (%s); leases valid for %.1fs more", reason,
                             self.seconds_valid())
            self.last_error = reason
            return
        finally:
            if token is not None and self._statements is not None:
                self._statements.done(token)
        with self._lock:
            self._valid_until = max(self._valid_until, sent + self.ttl_s)
        self.renewals += 1
        self.last_error = None
        lost = set(ids) - held
        for job_id in lost:
            self.leases.release(job_id)
        if lost:
            self._on_lost(lost)
        if self.fenced:
            self.fenced = False
            logger.warning("lease renewals succeed again: fence lifted, claiming again")
            self._on_fence(False)

    def _connection(self) -> psycopg.Connection[Any]:
        with self._lock:
            conn = self._conn
        if conn is None or conn.closed:
            conn = psycopg.connect(self._conninfo, autocommit=True, **self._connect_kwargs)
            with self._lock:
                self._conn = conn
        return conn

    def _drop(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    # --- the watch (timer thread) -----------------------------------------------------

    def _watch(self) -> None:
        if self._stop.is_set():
            return
        try:
            self.check()
        finally:
            self._timers.call_later(self.beat_s, self._watch)

    def check(self) -> None:
        """Fence the instance when its leases may lapse before the next renewal."""
        if self.fenced or self.seconds_valid() > self.margin_s:
            return
        self.fenced = True
        logger.error("leases unproven for %.1fs (last error: %s): this instance fences itself:"
                     " no claims; its %d running calls go on as abandoned calls, held until"
                     " they answer or their hold ends", self.ttl_s - self.seconds_valid(),
                     self.last_error or "renewal stuck", len(self.leases))
        self._on_fence(True)
        self._interrupt()

    def _interrupt(self) -> None:
        """Shut down the keeper's socket, so a renewal stuck in it returns with an error."""
        with self._lock:
            conn = self._conn
        if conn is not None:
            shutdown_socket(conn)
