"""A client-side deadline on every database call of the PostgreSQL store.

Why: ``statement_timeout`` is enforced by the server, so it never fires for a
statement the server never received. Behind a half-open connection (a
network partition, a proxy that stops forwarding, a NAT that dropped the
flow) a call blocks until the kernel gives up, which keepalives and
``tcp_user_timeout`` bound only when the peer's kernel stops acknowledging.
This watch bounds it from our side: a call still running past its deadline
has its socket shut down, which wakes the blocked read at once; the driver
raises, the pool drops the connection, the caller sees ``StoreUnavailable``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import threading
import time
from typing import Any

import psycopg

logger = logging.getLogger(__name__)


def shutdown_socket(conn: psycopg.Connection[Any]) -> None:
    """Shut down ``conn``'s socket (both ways), so a call blocked on it returns with an error."""
    with contextlib.suppress(Exception):
        fd = os.dup(conn.pgconn.socket)
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)


class StatementWatch:
    """Cuts the connection of any watched call that outlives its deadline (one thread)."""

    def __init__(self, *, interval_s: float = 0.25, name: str = "PgStatementWatch") -> None:
        self._calls: dict[int, tuple[float, psycopg.Connection[Any]]] = {}
        self._serial = itertools.count()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._interval_s = interval_s
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.cut = 0
        self._thread.start()

    def __repr__(self) -> str:
        return f"<StatementWatch watching={len(self._calls)} cut={self.cut}>"

    def watch(self, conn: psycopg.Connection[Any], timeout_s: float) -> int:
        """Watch a call on ``conn`` for ``timeout_s``; return the token to ``done`` it with."""
        token = next(self._serial)
        with self._lock:
            self._calls[token] = (time.monotonic() + timeout_s, conn)
        return token

    def done(self, token: int) -> None:
        """Stop watching a call that returned."""
        with self._lock:
            self._calls.pop(token, None)

    def stop(self) -> None:
        """Stop the watch thread."""
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            now = time.monotonic()
            with self._lock:
                overdue = [(t, c) for t, (due, c) in self._calls.items() if due <= now]
                for token, _ in overdue:
                    del self._calls[token]
            for _, conn in overdue:
                self.cut += 1
                logger.error("job store: a call outlived its deadline (no answer from the"
                             " database); its connection is cut")
                shutdown_socket(conn)
