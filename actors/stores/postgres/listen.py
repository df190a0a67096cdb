"""Wake-ups across instances: a thread that LISTENs on the job channel and calls back.

A job added (or queued again, or a slot freed, or a kind resumed) on one
instance sends ``NOTIFY qudemo_jobs, '<kind>'`` in the same transaction; every
instance's listener then calls its callback with that kind. Notifications are
hints, not messages: they may be coalesced, and none arrive while the
connection is down, so after every reconnect the callback is called once with
``None`` ("anything may have changed"), and the dispatcher keeps a slow poll
as the fallback.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from actors.model.jobs import JobKind

logger = logging.getLogger(__name__)

WakeCallback = Callable[[JobKind | None], None]
"""Called on the listener's thread with the kind to look at, or ``None`` for any."""
_KINDS = {kind.value: kind for kind in JobKind}


class Listener:
    """One dedicated connection doing ``LISTEN`` in a background thread, stopped cleanly."""

    def __init__(self, conninfo: str, callback: WakeCallback, *, channel: str,
                 connect_kwargs: dict[str, Any] | None = None, poll_s: float = 0.2,
                 name: str = "PgListener") -> None:
        self.conninfo = conninfo
        self.callback = callback
        self.channel = channel
        self.connect_kwargs = dict(connect_kwargs or {})
        self.poll_s = poll_s
        self.listening = threading.Event()
        """Set while the channel is being listened to (cleared while reconnecting)."""
        self.notified = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __repr__(self) -> str:
        state = "listening" if self.listening.is_set() else "connecting"
        return f"<Listener {self.channel} {state} notified={self.notified}>"

    def start(self, timeout_s: float) -> bool:
        """Start the thread; return whether it listens within ``timeout_s``."""
        self._thread.start()
        return self.listening.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop listening and wait for the thread (it checks every ``poll_s``)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def _run(self) -> None:
        delay_s = 0.1
        first = True
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True,
                                     **self.connect_kwargs) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    self.listening.set()
                    delay_s = 0.1
                    if not first:  # notifications sent while we were away are lost
                        self._call(None)
                    first = False
                    self._listen(conn)
            except psycopg.Error as exc:
                self.listening.clear()
                if self._stop.is_set():
                    break
                logger.warning("job channel listener: %s; reconnecting in %.1fs", exc, delay_s)
                self._stop.wait(delay_s)
                delay_s = min(delay_s * 2, 5.0)
        self.listening.clear()

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        while not self._stop.is_set():
            for note in conn.notifies(timeout=self.poll_s):
                self.notified += 1
                self._call(_KINDS.get(note.payload))

    def _call(self, kind: JobKind | None) -> None:
        try:
            self.callback(kind)
        except Exception:  # a failing callback must not end the wake-ups
            logger.exception("job channel callback failed")
