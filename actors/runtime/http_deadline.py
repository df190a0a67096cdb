"""Overall deadlines for httpx calls: a bound on the whole call, not on each phase.

httpx's timeouts are per phase: a read timeout restarts with every byte, so an answer
that trickles in never times out. Here a call runs ``within`` a ``Deadline`` on its
thread, over a ``client`` whose connections come from a network backend that clamps
every connect, TLS handshake, read and write to the time the call has left (a request
hook clamps the wait for a pooled connection too). At the deadline the next step, or
the one blocked, raises httpx's own timeout on the calling thread: nothing is left
running. ``Deadline.cut`` ends a call from another thread at once (its socket is shut
down). Only name resolution, inside ``socket.create_connection``, is not bounded.

Imported only by a configured ``ResultSink``: httpx is not loaded without Supabase.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

_current = threading.local()
"""``_current.deadline``: the ``Deadline`` of the call this thread is making, if any."""


@dataclass(eq=False)
class Deadline:
    """One bounded call on one thread: when it must end, and the stream it uses now."""

    seconds: float
    ends_at: float  # monotonic
    label: str = ""
    cut_reason: str | None = None
    _stream: httpcore.NetworkStream | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def after(cls, seconds: float, label: str = "") -> Deadline:
        """A deadline ``seconds`` from now."""
        return cls(seconds, time.monotonic() + seconds, label)

    @property
    def expired(self) -> bool:
        """Whether the deadline has passed."""
        return time.monotonic() >= self.ends_at

    def cut(self, reason: str) -> None:
        """End the call now: its socket is shut down, so a blocked read wakes and fails."""
        with self._lock:
            self.cut_reason = reason
            stream = self._stream
        sock = stream.get_extra_info("socket") if stream is not None else None
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):  # already closed: the call is ending
                sock.shutdown(socket.SHUT_RDWR)

    def _using(self, stream: httpcore.NetworkStream) -> None:
        with self._lock:
            self._stream = stream


@contextlib.contextmanager
def within(deadline: Deadline) -> Iterator[Deadline]:
    """Bound every request this thread makes inside the block by ``deadline``."""
    outer = current()
    _current.deadline = deadline
    try:
        yield deadline
    finally:
        _current.deadline = outer


def current() -> Deadline | None:
    """The deadline of the call this thread is making, if any."""
    deadline: Deadline | None = getattr(_current, "deadline", None)
    return deadline


def _bounded(timeout: float | None, expired: type[Exception],
             stream: httpcore.NetworkStream | None = None) -> float | None:
    """Return ``timeout`` clamped to what this thread's call has left; raise at its end."""
    deadline = current()
    if deadline is None:
        return timeout
    if stream is not None:
        deadline._using(stream)
    left = deadline.ends_at - time.monotonic()
    if deadline.cut_reason is not None or left <= 0:
        # settimeout(0) would make the socket non-blocking, not time out: raise here.
        raise expired(deadline.cut_reason or "the call's deadline passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every I/O step ends by the calling thread's deadline."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout, self))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout, self))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout, self)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync backend, with streams that keep to the calling thread's deadline."""

    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, bounded, local_address,
                                                       socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None
                            ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_unix_socket(path, bounded, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _clamp_pool_wait(request: httpx.Request) -> None:
    timeouts = dict(request.extensions.get("timeout") or {})
    for phase, value in timeouts.items():
        timeouts[phase] = _bounded(value, httpx.PoolTimeout)
    request.extensions["timeout"] = timeouts


def client(timeout_s: float, limits: httpx.Limits) -> httpx.Client:
    """An ``httpx.Client`` (``timeout_s`` per phase) whose calls keep to their ``Deadline``."""
    transport = httpx.HTTPTransport(limits=limits)
    # HTTPTransport takes no network backend: its pool is rebuilt with ours, as it builds it.
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(), max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry, network_backend=_DeadlineBackend())
    return httpx.Client(timeout=httpx.Timeout(timeout_s), transport=transport,
                        event_hooks={"request": [_clamp_pool_wait]})
