"""Server-sent event streams that hold no thread: the answer object and its settings.

An ``EventStream`` is the WSGI body of a ``text/event-stream`` answer. Chunks are
``push``-ed into it from any thread (the ``EventFeed``'s), and it is sent in one of two
ways, whichever the server offers:

* **in the event loop** (gunicorn with ``serving.RequestBufferingWorker``): after the
  first chunk, the stream hands itself to the worker (``adopt_stream`` on the socket
  gunicorn puts in ``environ["gunicorn.socket"]``), the request's thread returns at once,
  and the worker's loop sends what is pushed, and the heartbeats, through the loop
  protocol below. Open streams cost a socket and a buffer, not a thread;
* **by a thread** (the Flask dev server, a test's loopback server, gunicorn configured
  so that the worker reads like gthread): iterating the stream blocks between chunks.
  Each open stream then holds one of the server's threads.

The loop protocol (what serving.py calls, from its event loop): ``loop_attach(wake)``
once, ``wake()`` is then called from any thread when there is more to send;
``loop_take(now)`` returns ``(data, done, due)``: the bytes to send now, whether the
stream has ended after them, and the monotonic time by which to ask again (the next
heartbeat); ``loop_closed()`` when the connection is gone (or the worker stops).

Heartbeats are SSE comments (``: keepalive``) after ``heartbeat_s`` without a chunk, so
that proxies keep the connection open; a client that lets more than ``max_buffer_bytes``
pile up is ended (it resumes with ``Last-Event-ID``, losing nothing).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from actors.model.settings import EnvReader

KEEPALIVE = b": keepalive\n\n"
MAX_BUFFER_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamSettings:
    """Limits of the live event streams (README "Live job events").

    Attributes:
        heartbeat_s: A ``: keepalive`` comment after this long without an event
            (``EVENTS_HEARTBEAT_MS``, 15000).
        max_per_caller: Open streams per caller; past it 429 (``EVENTS_MAX_STREAMS_PER_CALLER``,
            10).
        max_total: Open streams per worker process; past it 503 (``EVENTS_MAX_STREAMS``, 500;
            keep it below gunicorn's ``worker_connections``, 1000, so other requests fit).
        poll_s: How often the event log is polled for changes other processes wrote
            (``EVENTS_POLL_MS``, 500; this process's own changes wake the feed at once).
        token_ttl_s: Lifetime of a stream token (``EVENTS_TOKEN_TTL_MS``, 600000).
        retry_ms: The reconnection delay a stream tells EventSource (``retry:``).
    """

    heartbeat_s: float = 15.0
    max_per_caller: int = 10
    max_total: int = 500
    poll_s: float = 0.5
    token_ttl_s: float = 600.0
    retry_ms: int = 2000

    @classmethod
    def read(cls, env: EnvReader) -> StreamSettings:
        """Read the stream settings through ``env``, leaving problems in ``env.problems``."""
        d = cls()
        return cls(
            heartbeat_s=env.number("EVENTS_HEARTBEAT_MS", d.heartbeat_s * 1000, minimum=100,
                                   maximum=300_000) / 1000,
            max_per_caller=env.number("EVENTS_MAX_STREAMS_PER_CALLER", d.max_per_caller,
                                      minimum=1, maximum=10_000),
            max_total=env.number("EVENTS_MAX_STREAMS", d.max_total, minimum=1,
                                 maximum=100_000),
            poll_s=env.number("EVENTS_POLL_MS", d.poll_s * 1000, minimum=10,
                              maximum=60_000) / 1000,
            token_ttl_s=env.number("EVENTS_TOKEN_TTL_MS", d.token_ttl_s * 1000,
                                   minimum=10_000, maximum=3_600_000) / 1000,
        )


class EventStream:
    """The body of one ``text/event-stream`` answer: filled from any thread, sent by the server.

    Args:
        first: What opens the stream (sent with the headers; never empty).
        heartbeat_s: A keepalive comment after this long without data.
        socket: ``environ["gunicorn.socket"]``; a socket that can ``adopt_stream`` takes
            the stream into the worker's event loop.
        on_close: Called once when the stream is over, however it ends.
        should_end: Asked at every heartbeat; True ends the stream (e.g. the system stopped).
    """

    def __init__(self, first: bytes, *, heartbeat_s: float, socket: Any = None,
                 on_close: Callable[[], None] | None = None,
                 should_end: Callable[[], bool] | None = None,
                 max_buffer_bytes: int = MAX_BUFFER_BYTES) -> None:
        self.heartbeat_s = heartbeat_s
        self.max_buffer_bytes = max_buffer_bytes
        self._socket = socket
        self._on_close = on_close
        self._should_end = should_end
        self._cond = threading.Condition()
        self._buf = bytearray(first)
        self._ended = False
        self._closed = False
        self._adopted = False
        self._wake: Callable[[], None] | None = None
        self._next_beat = time.monotonic() + heartbeat_s

    def __repr__(self) -> str:
        how = "loop" if self._adopted else "thread"
        return f"<EventStream {how} buffered={len(self._buf)}{' ended' if self._ended else ''}>"

    @property
    def ended(self) -> bool:
        """Whether nothing more will be pushed."""
        return self._ended

    # --- filling (any thread) -------------------------------------------------------

    def push(self, data: bytes, *, last: bool = False) -> None:
        """Queue ``data`` to be sent; ``last`` ends the stream after it."""
        with self._cond:
            if self._ended:
                return
            self._buf += data
            if last or len(self._buf) > self.max_buffer_bytes:
                self._ended = True  # a reader this far behind resumes with Last-Event-ID
            self._cond.notify_all()
            wake = self._wake
        if wake is not None:
            wake()

    def end(self) -> None:
        """End the stream after what is queued."""
        self.push(b"", last=True)

    # --- the loop protocol (serving.RequestBufferingWorker) ---------------------------

    def loop_attach(self, wake: Callable[[], None]) -> None:
        """From now on call ``wake`` (from any thread) whenever there is more to send."""
        with self._cond:
            self._wake = wake
            ready = bool(self._buf) or self._ended
        if ready:
            wake()

    def loop_take(self, now: float) -> tuple[bytes, bool, float]:
        """Return what to send now, whether the stream ends after it, and when to ask again."""
        if not self._ended and now >= self._next_beat and self._should_end is not None and (
                self._should_end()):
            self.end()
        with self._cond:
            data, self._buf = bytes(self._buf), bytearray()
            ended = self._ended
        if not data and not ended and now >= self._next_beat:
            data = KEEPALIVE
        if data:
            self._next_beat = now + self.heartbeat_s
        return data, ended, self._next_beat

    def loop_closed(self) -> None:
        """The connection is gone (or the server stops): nothing more is sent."""
        self._finish()

    # --- WSGI -------------------------------------------------------------------------

    def __iter__(self) -> Iterator[bytes]:
        """Yield the chunks; under the buffering worker, hand over after the first one."""
        data, ended, _ = self.loop_take(time.monotonic())
        yield data
        if ended:
            return
        adopt = getattr(self._socket, "adopt_stream", None)
        if adopt is not None and adopt(self):
            self._adopted = True  # the worker's loop sends the rest; this thread is free
            return
        while True:  # a thread holds the stream: wait for data or the next heartbeat
            with self._cond:
                if not self._buf and not self._ended:
                    self._cond.wait(max(0.0, self._next_beat - time.monotonic()))
            data, ended, _ = self.loop_take(time.monotonic())
            if data:
                yield data
            if ended:
                return

    def close(self) -> None:
        """WSGI ``close``: the end of a thread-held stream (an adopted one lives on)."""
        if not self._adopted:
            self._finish()

    def _finish(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = self._ended = True
            self._cond.notify_all()
        if self._on_close is not None:
            self._on_close()
