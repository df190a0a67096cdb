"""A gunicorn worker that reads every request whole before a thread serves it.

gunicorn's ``gthread`` worker gives a connection to one of its ``threads`` as soon as the
connection is readable; the thread then reads the request's head and body with blocking
calls. A client that sends its headers or its body slowly (slowloris) holds that thread
for as long as it likes, and ``GUNICORN_THREADS`` such clients stop the server, probes
included, before any line is logged.

``RequestBufferingWorker`` (``worker_class = "serving.RequestBufferingWorker"``) keeps
gthread's model: one process, a pool of threads running the WSGI app (the actors live in
the same process), keep-alive connections waiting in the event loop, SIGTERM drain,
``max_requests``. What changes is where a request is read: in the worker's event loop,
without blocking (``selectors``), under deadlines (``SlowClientLimits``, set by
``gunicorn.conf.py`` through ``configure``):

* the head (request line and headers) must be complete within ``head_timeout_s`` of the
  connection (of its first byte, for the next request on a kept-alive connection), and at
  most ``MAX_HEAD_BYTES`` long: else 408 (431) and the connection is closed;
* the body (``Content-Length`` or chunked, at most the app's ``MAX_CONTENT_LENGTH``) must be
  complete within ``body_timeout_s`` of the head, and after ``BODY_RATE_GRACE_S`` arrive at
  ``body_min_rate`` bytes per second on average at least: else 408. A chunked body over
  the limit is answered 413 here; a ``Content-Length`` over it goes to the app without its
  body (the app answers 413 from the header) and the connection closes after the answer;
* a connection that sends nothing is closed (silently) at the head deadline;
* ``max_connections_per_client`` caps the open connections of one client address (0: no
  cap; behind a proxy every client has the proxy's address).

Only a complete request goes to a thread. The buffered bytes are replayed to gunicorn's own
parser, which still checks everything it checks under gthread, from memory: the thread never
reads the socket, so no client's sending can hold it. Nor its reading: the thread writes the
answer without waiting (``WriteBehind``), and what the socket does not take at once is sent by
the event loop, within ``send_timeout_s`` or the connection is closed (only an answer over
``OUT_BUFFER_BYTES`` makes its thread wait, ``send_timeout_s`` at most). The next request on
the connection is read once the answer is sent. Closing a connection after an answer
(lingering so that the client receives it) happens in the event loop too, where gthread
blocks for up to 2 s.

Connections cut for being slow are logged at INFO on ``gunicorn.error`` with the client's
address and the reason, never the request's content: ``LOG_DETAILED`` of each kind (head,
body, ...) every ``LOG_WINDOW_S`` one by one, the rest summed up in one line. A worker that has
reached gunicorn's ``worker_connections`` says so at WARNING.

**Event streams** (``text/event-stream``, ``web.sse``) hold no thread either. A streaming
answer's body hands itself over after its first chunk (``WriteBehind.adopt_stream``); the
thread finishes the request at once, and the event loop sends the rest (``Streaming``):
chunks as the stream is woken (through gthread's method queue, from any thread),
heartbeats on the loop's deadlines, nothing read but the client's close. A client that does
not take what is sent within ``send_timeout_s`` is cut. When the worker stops, every stream
is ended at once (its client reconnects, elsewhere with ``Last-Event-ID``), so no stream
holds up the graceful shutdown.

The access log hides query values that are tokens (``RedactingLogger``: ``access_token``,
the events routes' stream tokens).

TLS terminated by gunicorn itself, the PROXY protocol, the uWSGI protocol and HTTP/2 are not
read this way: with any of them configured the worker is plain gthread and says so at start.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import json
import re
import selectors
import socket
import time
from collections import Counter
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn import glogging, http, util  # type: ignore[import-untyped]
from gunicorn.http.unreader import Unreader  # type: ignore[import-untyped]
from gunicorn.workers import gthread  # type: ignore[import-untyped]

MAX_HEAD_BYTES = 64 * 1024
"""Longest request head (request line and headers) read; longer ones are answered 431."""
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
"""Body limit when the app sets no ``MAX_CONTENT_LENGTH`` (the QuDemo app sets MAX_BODY_BYTES)."""
BODY_RATE_GRACE_S = 2.0
"""The minimum body rate is enforced from this long after the head on."""
LINGER_S = 2.0
"""After a refusal or a closing answer, how long unread client bytes are drained (RFC 9112
section 9.6), without blocking, before the socket is closed."""
LINGER_MAX_BYTES = 64 * 1024
RECV_BYTES = 64 * 1024
MAX_TRAILER_BYTES = 64 * 1024
OUT_BUFFER_BYTES = 1024 * 1024
"""Most of an answer the worker keeps for the event loop to send; a larger one is written by
its thread, which then waits for the client (``send_timeout_s`` at most)."""
LOG_WINDOW_S = 10.0
LOG_DETAILED = 5
"""Cuts of each kind logged one by one per LOG_WINDOW_S; the rest are summed up in one line."""
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CRLF = frozenset(b"\r\n")


@dataclass(frozen=True)
class SlowClientLimits:
    """How long and how slowly a request may arrive (README "Slow clients").

    Attributes:
        head_timeout_s: The request head must be complete this long after the connection
            (on a kept-alive connection: after the next request's first byte).
        body_timeout_s: The body must be complete this long after the head.
        body_min_rate: Bytes per second the body must average after BODY_RATE_GRACE_S
            (0: no minimum).
        send_timeout_s: A thread waits this long at most for a client to take an answer.
        max_connections_per_client: Open connections per client address (0: no cap).
    """

    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    body_min_rate: int = 1024
    send_timeout_s: float = 30.0
    max_connections_per_client: int = 0


_limits = SlowClientLimits()


def configure(limits: SlowClientLimits) -> SlowClientLimits:
    """Set the limits of the workers started from now on (gunicorn.conf.py calls it)."""
    global _limits
    _limits = limits
    return limits


def current_limits() -> SlowClientLimits:
    """Return the limits a worker started now gets."""
    return _limits


# --- reading one request ----------------------------------------------------------------

class Refusal(Exception):
    """A request answered (and its connection closed) before any thread sees it."""

    def __init__(self, status: int, message: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.message = message
        self.reason = reason


MORE, READY = "more", "ready"
NONE, LENGTH, CHUNKED, INVALID = "none", "length", "chunked", "invalid"


@dataclass(frozen=True)
class Framing:
    """How a request's body is delimited, as far as the worker needs to know.

    ``INVALID`` means framing gunicorn's parser refuses (conflicting or malformed
    ``Content-Length``/``Transfer-Encoding``, an unknown ``Expect``): the head alone is
    handed over, the parser answers the error, the connection closes.
    """

    kind: str
    length: int = 0
    expects_continue: bool = False


def parse_framing(head: bytes) -> Framing:
    """Return the body framing of a request head (request line and header lines, no CRLFCRLF)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    http11 = len(parts) == 3 and parts[2] == b"HTTP/1.1"
    fields: list[list[bytes]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t") and fields:  # obsolete folding: gunicorn decides
            fields[-1][1] += b" " + line.strip(b" \t")
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            return Framing(INVALID)
        fields.append([name.strip(b" \t").lower(), value.strip(b" \t")])
    lengths = [value for name, value in fields if name == b"content-length"]
    codings = [c.strip(b" \t").lower() for name, value in fields
               if name == b"transfer-encoding" for c in value.split(b",")]
    expects = [value.lower() for name, value in fields if name == b"expect"]
    if any(value != b"100-continue" for value in expects):
        return Framing(INVALID)  # gunicorn answers 417
    expects_continue = bool(expects) and http11
    if codings:
        if (not http11 or lengths or codings[-1] != b"chunked"
                or codings.count(b"chunked") != 1):
            return Framing(INVALID)
        return Framing(CHUNKED, expects_continue=expects_continue)
    if lengths:
        if len(lengths) != 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
            return Framing(INVALID)
        length = int(lengths[0])
        return Framing(LENGTH if length else NONE, length, expects_continue and length > 0)
    return Framing(NONE)


class ChunkScanner:
    """Finds where a chunked body ends in a growing buffer, counting its decoded bytes.

    ``scan(buf)`` resumes where it stopped; it returns the index just past the body (its
    last chunk and trailer section), or -1 while more bytes are needed. It raises
    ``Refusal`` for a body over ``max_body`` (413) or framing that cannot be read (400).
    """

    def __init__(self, start: int, max_body: int, max_line: int) -> None:
        self.pos = start
        self.max_body = max_body
        self.max_line = max_line
        self.decoded = 0
        self.remaining = -1  # -1: a chunk-size line is next; >= 0: that many data bytes
        self.trailer = False

    def scan(self, buf: bytearray) -> int:
        """Advance over ``buf``; return the end of the body, or -1 if it is not complete."""
        while True:
            if self.trailer:
                if len(buf) - self.pos < 2:
                    return -1
                if buf[self.pos:self.pos + 2] == b"\r\n":
                    return self.pos + 2
                end = buf.find(b"\r\n\r\n", self.pos)
                if end < 0:
                    if len(buf) - self.pos > MAX_TRAILER_BYTES:
                        raise Refusal(431, "request trailers too large",
                                      f"trailer section over {MAX_TRAILER_BYTES} bytes")
                    return -1
                return end + 4
            if self.remaining >= 0:
                if len(buf) - self.pos < self.remaining + 2:
                    return -1
                end = self.pos + self.remaining
                if buf[end:end + 2] != b"\r\n":
                    raise _malformed("chunk data not followed by CRLF")
                self.pos, self.remaining = end + 2, -1
                continue
            eol = buf.find(b"\r\n", self.pos)
            if eol < 0:
                if len(buf) - self.pos > self.max_line:
                    raise _malformed("chunk-size line too long")
                return -1
            size_field = bytes(buf[self.pos:eol]).split(b";", 1)[0].rstrip(b" \t")
            if not size_field or len(size_field) > 16 or any(
                    c not in b"0123456789abcdefABCDEF" for c in size_field):
                raise _malformed("invalid chunk size")
            size = int(size_field, 16)
            self.pos = eol + 2
            if size == 0:
                self.trailer = True
                continue
            self.decoded += size
            if self.decoded > self.max_body:
                raise Refusal(413, f"request body too large (limit {self.max_body} bytes)",
                              f"chunked body over {self.max_body} bytes")
            self.remaining = size


def _malformed(what: str) -> Refusal:
    return Refusal(400, "malformed chunked request body", what)


class Incoming:
    """One request being read in the event loop: its bytes so far and its deadlines."""

    def __init__(self, conn: Any, now: float, prefix: bytes, limits: SlowClientLimits,
                 max_body: int, max_line: int) -> None:
        self.conn = conn
        self.buf = bytearray(prefix)
        self.limits = limits
        self.max_body = max_body
        self.max_line = max_line
        self.head_deadline = now + limits.head_timeout_s
        self.stop_deadline = float("inf")
        """When stopping: a connection that has sent nothing by then is closed."""
        self.next_check = float("inf")
        self.scanned = 0
        self.head_end = -1
        self.body_started = 0.0
        self.framing = Framing(NONE)
        self.chunks: ChunkScanner | None = None
        self.end = -1
        self.close_after = False
        self.continue_sent = False
        self.finished = False

    @property
    def has_bytes(self) -> bool:
        """Whether the client has sent any part of a request (not only blank lines)."""
        if not self.buf or self.buf[0] not in _CRLF:
            return bool(self.buf)
        return bool(self.buf.lstrip(b"\r\n"))

    def feed(self, now: float) -> str:
        """Look at the bytes so far: ``READY`` when the request is complete, else ``MORE``.

        Raises:
            Refusal: the request is answered here (too large, unreadable framing).
        """
        if self.head_end < 0:
            start = 0  # blank lines before a request are ignored (RFC 9112 section 2.2)
            if self.buf and self.buf[0] in _CRLF:
                start = len(self.buf) - len(self.buf.lstrip(b"\r\n"))
            end = self.buf.find(b"\r\n\r\n", max(start, self.scanned - 3))
            if end < 0:
                self.scanned = len(self.buf)
                if len(self.buf) - start > MAX_HEAD_BYTES:
                    raise Refusal(431, "request head too large",
                                  f"request head over {MAX_HEAD_BYTES} bytes")
                return MORE
            if end - start > MAX_HEAD_BYTES:
                raise Refusal(431, "request head too large",
                              f"request head over {MAX_HEAD_BYTES} bytes")
            self.head_end = end + 4
            self.body_started = now
            self.framing = parse_framing(bytes(self.buf[start:end]))
            kind = self.framing.kind
            if kind in (NONE, INVALID) or (kind == LENGTH and self.framing.length >
                                            self.max_body):
                # No body to read, or one the app refuses from its header (413) or gunicorn
                # refuses outright: the head alone, then the connection closes.
                self.close_after = kind != NONE
                self.end = self.head_end
                return READY
            if kind == CHUNKED:
                self.chunks = ChunkScanner(self.head_end, self.max_body, self.max_line)
        if self.framing.kind == LENGTH:
            if len(self.buf) - self.head_end >= self.framing.length:
                self.end = self.head_end + self.framing.length
                return READY
            return MORE
        assert self.chunks is not None
        end = self.chunks.scan(self.buf)
        if end >= 0:
            self.end = end
            return READY
        if len(self.buf) - self.head_end > 2 * self.max_body + 64 * 1024:
            raise Refusal(413, f"request body too large (limit {self.max_body} bytes)",
                          "chunked framing far larger than its data")
        return MORE

    def wants_continue(self) -> bool:
        """Whether to send ``100 Continue`` now (the client may wait for it to send the body)."""
        return (self.head_end >= 0 and self.end < 0 and self.framing.expects_continue
                and not self.continue_sent)

    def deadline(self) -> float:
        """Return when this request is cut unless more of it arrives (or it completes)."""
        if self.head_end < 0:
            due = self.head_deadline
        else:
            due = self.body_started + self.limits.body_timeout_s
            if self.limits.body_min_rate > 0:
                received = len(self.buf) - self.head_end
                due = min(due, self.body_started + BODY_RATE_GRACE_S
                          + (received + 1) / self.limits.body_min_rate)
        if self.stop_deadline < due and not self.has_bytes:
            due = self.stop_deadline
        return due

    def why_cut(self, now: float) -> str:
        """Say (without any of the request's content) why the request was cut at ``now``."""
        if self.head_end < 0:
            return (f"request head not complete within {self.limits.head_timeout_s:g} s "
                    f"({len(self.buf)} bytes received)")
        received = len(self.buf) - self.head_end
        elapsed = now - self.body_started
        of = f" of {self.framing.length}" if self.framing.kind == LENGTH else ""
        if elapsed >= self.limits.body_timeout_s:
            return (f"request body not complete within {self.limits.body_timeout_s:g} s "
                    f"({received}{of} bytes received)")
        return (f"request body slower than {self.limits.body_min_rate} bytes/s "
                f"({received}{of} bytes in {elapsed:.1f} s)")

    def replay(self) -> bytes:
        """Return the bytes for gunicorn's parser: the request (and any pipelined after it)."""
        return bytes(self.buf[:self.end] if self.close_after else self.buf)


def error_response(status: int, message: str) -> bytes:
    """Return a complete ``Connection: close`` answer with the app's JSON error body."""
    body = json.dumps({"success": False, "error": message}).encode()
    phrase = HTTPStatus(status).phrase
    return (f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


class _EndOfInput:
    """The parser's source in a thread: what the event loop read is all there is."""

    def recv(self, size: int) -> bytes:
        return b""


_END_OF_INPUT = _EndOfInput()


def _host(client: Any) -> str | None:
    return str(client[0]) if isinstance(client, tuple) and client else None


def _show(client: Any) -> str:
    if isinstance(client, tuple) and len(client) >= 2:
        return f"{client[0]}:{client[1]}"
    return str(client) or "unix socket"


_SLOW_KINDS = frozenset({"head", "body", "send"})


class CutLog:
    """INFO lines for cut connections: a few of each kind per window, then one sum."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.window_end = 0.0
        self.shown: Counter[str] = Counter()
        self.hidden_by_client: Counter[str] = Counter()
        self.hidden_by_reason: Counter[str] = Counter()
        self.full_warned_at = float("-inf")
        self.total: Counter[str] = Counter()
        """Every cut since the start, by kind (head, body, too-large, malformed, ...)."""

    def note(self, now: float, client: Any, kind: str, reason: str, outcome: str) -> None:
        """Record one cut connection; log it, or count it for the window's sum."""
        self.total[kind] += 1
        self.tick(now)
        if now >= self.window_end:
            self.window_end = now + LOG_WINDOW_S
            self.shown.clear()
        if self.shown[kind] < LOG_DETAILED:
            self.shown[kind] += 1
            label = "slow client" if kind in _SLOW_KINDS else "client"
            self.log.info("%s %s: %s; %s", label, _show(client), reason, outcome)
        else:
            self.hidden_by_client[_host(client) or _show(client)] += 1
            self.hidden_by_reason[kind] += 1

    def tick(self, now: float, final: bool = False) -> None:
        """At the end of a window (or of the worker), log the cuts not logged one by one."""
        if (now < self.window_end and not final) or not self.hidden_by_reason:
            return
        count = sum(self.hidden_by_reason.values())
        reasons = ", ".join(f"{kind} {n}" for kind, n in self.hidden_by_reason.most_common())
        clients = ", ".join(f"{host} ({n})" for host, n in self.hidden_by_client.most_common(5))
        more = len(self.hidden_by_client) - 5
        self.log.info("clients: %d more connections cut in the last %g s (%s) from %s%s",
                      count, LOG_WINDOW_S, reasons, clients,
                      f" and {more} more addresses" if more > 0 else "")
        self.hidden_by_client.clear()
        self.hidden_by_reason.clear()

    def full(self, now: float, open_connections: int) -> None:
        """Warn (once a minute at most) that the worker accepts no more connections."""
        if now - self.full_warned_at >= 60:
            self.full_warned_at = now
            self.log.warning("connection limit reached (%d open, gunicorn worker_connections): "
                             "new connections wait in the listen queue", open_connections)


class WriteBehind:
    """The socket a thread writes an answer to: what the kernel does not take at once is kept.

    The thread never waits for a client that reads slowly (or not at all): the bytes the
    socket does not accept are kept in ``pending`` (up to ``limit``; past it the thread sends
    them itself, within ``timeout_s``), and the event loop sends them (``Outgoing``).
    Everything but sending goes to the socket itself.
    """

    def __init__(self, sock: socket.socket, limit: int, timeout_s: float) -> None:
        self._sock = sock
        self.limit = limit
        self.timeout_s = timeout_s
        self.pending = bytearray()
        self.stream: Any = None
        """An event stream the event loop sends from now on (``adopt_stream``)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def adopt_stream(self, stream: Any) -> bool:
        """Take ``stream`` (``web.sse``'s loop protocol) to be sent by the event loop.

        Called by the answer's body after its first chunk; what the thread writes after
        this (gunicorn's closing chunk) is dropped: the loop frames and ends the stream.
        """
        self.stream = stream
        return True

    def sendall(self, data: bytes) -> None:
        """Send what the socket takes now (it is non-blocking); keep the rest."""
        if self.stream is not None:
            return  # adopted: the loop sends the rest of the answer
        if not self.pending:
            try:
                sent = self._sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            if sent == len(data):
                return
            data = memoryview(data)[sent:]  # type: ignore[assignment]
        self.pending += data
        if len(self.pending) > self.limit:
            self.flush()

    def send(self, data: bytes, flags: int = 0) -> int:
        """Send (or keep) all of ``data``."""
        self.sendall(data)
        return len(data)

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        """Keep a file's bytes like any other; a large file the thread sends itself."""
        if count is not None and len(self.pending) + count <= self.limit:
            file.seek(offset)
            data = file.read(count)
            self.sendall(data)
            return len(data)
        self.flush()
        self._sock.settimeout(self.timeout_s)
        try:
            return self._sock.sendfile(file, offset, count)
        finally:
            self._sock.setblocking(False)

    def flush(self) -> None:
        """Send what is kept, waiting for the client (``timeout_s`` at most: TimeoutError)."""
        if not self.pending:
            return
        data, self.pending = bytes(self.pending), bytearray()
        self._sock.settimeout(self.timeout_s)
        try:
            self._sock.sendall(data)
        finally:
            self._sock.setblocking(False)

    def shutdown(self, how: int) -> None:
        """Send what is kept, then shut the socket down."""
        with contextlib.suppress(OSError):
            self.flush()
        self._sock.shutdown(how)

    def close(self) -> None:
        """Send what is kept, then close the socket."""
        with contextlib.suppress(OSError):
            self.flush()
        self._sock.close()


class Streaming:
    """An event stream the event loop sends: framed chunks, heartbeats, the client's close."""

    def __init__(self, conn: Any, stream: Any, chunked: bool, unsent: bytearray) -> None:
        self.conn = conn
        self.stream = stream
        self.chunked = chunked
        self.out = unsent
        self.due = float("inf")  # when to ask the stream again (its next heartbeat)
        self.send_due = float("inf")  # when a client that takes nothing is cut
        self.ending = False  # the last chunk is in ``out``
        self.finished = False
        self.woken = False
        self.writing = False
        self.next_check = float("inf")
        self.discarded = 0

    def frame(self, data: bytes) -> None:
        """Append ``data`` as one chunk (or as is, for an HTTP/1.0 client)."""
        if data:
            self.out += b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data

    def finish(self) -> None:
        """Append the end of the answer."""
        if not self.ending:
            self.ending = True
            if self.chunked:
                self.out += b"0\r\n\r\n"

    def deadline(self) -> float:
        """Return when the loop must look at this stream again."""
        return min(self.due, self.send_due)


class Outgoing:
    """The rest of an answer, sent by the event loop before gthread's finish_request runs."""

    def __init__(self, conn: Any, future: Any, data: bytearray, due: float) -> None:
        self.conn = conn
        self.future = future
        self.data = data
        self.sent = 0
        self.due = due
        self.finished = False
        self.next_check = float("inf")

    def deadline(self) -> float:
        """Return when the connection is closed if the client has not taken the answer."""
        return self.due


# --- the worker -------------------------------------------------------------------------

class BufferedConn(gthread.TConn):  # type: ignore[misc]
    """gthread's connection, whose closing goes through the worker (counts, lingering)."""

    def __init__(self, worker: RequestBufferingWorker, cfg: Any, sock: socket.socket,
                 client: Any, server: Any) -> None:
        super().__init__(cfg, sock, client, server)
        self.worker = worker
        self.host = _host(client)
        self.close_after = False
        self.released = False
        self.unsent = bytearray()
        """What the last answer's thread left for the event loop to send."""
        self.stream: Any = None
        """An event stream the answer's thread handed over (``WriteBehind.adopt_stream``)."""
        self.stream_chunked = True

    def close(self, graceful: bool = False) -> None:
        """Close the connection; ``graceful`` lingers in the event loop, never blocking it."""
        self.worker.connection_closed(self, graceful)


class RequestBufferingWorker(gthread.ThreadWorker):  # type: ignore[misc]
    """gthread, with every request read whole in the event loop before a thread serves it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = current_limits()
        self.unsupported = _unsupported(self.cfg)
        self.max_body = DEFAULT_MAX_BODY_BYTES
        self.max_line = int(self.cfg.limit_request_field_size or 8190)
        self.reading: dict[BufferedConn, Incoming] = {}
        self.deadlines: list[tuple[float, int, Incoming | Outgoing | Streaming]] = []
        self.streams: set[Streaming] = set()
        self.order = itertools.count()
        self.per_client: Counter[str] = Counter()
        self.lingering: dict[socket.socket, tuple[float, int]] = {}
        self.cuts = CutLog(self.log)
        self.stopping = False

    @classmethod
    def setup(cls) -> None:
        """Fail at start, in the master, if this gunicorn lacks what the worker builds on."""
        needed = [(gthread.ThreadWorker, name) for name in (
            "enqueue_req", "finish_request", "murder_pending", "accept", "handle_request",
            "wait_for_and_dispatch_events")]
        needed += [(gthread, "STOP_KEEPALIVE_LINGER"), (gthread, "PollableMethodQueue"),
                   (gthread.TConn, "init"), (Unreader, "take_buffered")]
        missing = [f"{getattr(owner, '__name__', owner)}.{name}" for owner, name in needed
                   if not hasattr(owner, name)]
        if missing:
            raise RuntimeError("serving.RequestBufferingWorker is built on the gthread worker "
                               f"of gunicorn 27; this gunicorn lacks {', '.join(missing)}")

    def run(self) -> None:
        """Serve until told to stop, as gthread does, reading requests in the loop."""
        if self.unsupported:
            self.log.warning("requests are read by threads, as gthread does, because %s: "
                             "slow clients can hold them", self.unsupported)
            super().run()
            return
        self.max_body = _app_body_limit(self.wsgi)
        lim = self.limits
        self.log.info(
            "reading requests in the event loop: head within %g s, body (at most %d bytes) "
            "within %g s and at %d bytes/s at least, answers taken within %g s, %s",
            lim.head_timeout_s, self.max_body, lim.body_timeout_s, lim.body_min_rate,
            lim.send_timeout_s,
            f"at most {lim.max_connections_per_client} connections per client address"
            if lim.max_connections_per_client else "no cap on connections per address")
        try:
            super().run()
        finally:
            self._close_everything()

    # gthread's entry points --------------------------------------------------------------

    def accept(self, listener: socket.socket) -> None:
        """Accept a connection and start reading its first request in the loop."""
        if self.unsupported:
            super().accept(listener)
            return
        try:
            client_sock, client_addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = BufferedConn(self, self.cfg, client_sock, client_addr, listener.getsockname())
        cap = self.limits.max_connections_per_client
        if cap and conn.host is not None and self.per_client[conn.host] >= cap:
            self.nr_conns -= 1
            conn.released = True
            util.close(client_sock)
            self.cuts.note(time.monotonic(), client_addr, "per-client",
                           f"{cap} connections from this address already open", "refused")
            return
        if conn.host is not None:
            self.per_client[conn.host] += 1
        self.start_reading(conn)

    def enqueue_req(self, conn: Any) -> None:
        """Read the connection's next request in the loop (gthread gives it to a thread)."""
        if self.unsupported:
            super().enqueue_req(conn)
        else:
            self.start_reading(conn)

    def murder_pending(self) -> None:
        """Each turn of the loop: gthread's timeouts, then this worker's deadlines."""
        super().murder_pending()
        if not self.unsupported:
            self.sweep(time.monotonic())

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        """Wait no longer than the next deadline."""
        if not self.unsupported:
            now = time.monotonic()
            due = [self.deadlines[0][0]] if self.deadlines else []
            if self.lingering:
                due.append(next(iter(self.lingering.values()))[0])
            if self.cuts.hidden_by_reason:
                due.append(self.cuts.window_end)
            if due:
                timeout = max(0.0, min(timeout, min(due) - now))
        super().wait_for_and_dispatch_events(timeout)

    def handle_request(self, req: Any, conn: Any) -> Any:
        """Serve a request parsed from memory (in a thread), writing behind the client.

        The answer goes to a ``WriteBehind``: what the client does not take at once is left
        for the event loop (``finish_request``), so a client that does not read holds no
        thread (an answer over OUT_BUFFER_BYTES excepted, for ``send_timeout_s`` at most).
        """
        if self.unsupported or not isinstance(conn, BufferedConn):
            return super().handle_request(req, conn)
        if conn.close_after:
            req.force_close()
        # Sent by the loop when the client waited for it, or moot: the body is here.
        req._expected_100_continue = False
        sock = conn.sock
        writer = WriteBehind(sock, OUT_BUFFER_BYTES, self.limits.send_timeout_s)
        sock.setblocking(False)
        conn.sock = writer
        try:
            return super().handle_request(req, conn)
        except TimeoutError:
            writer.pending = bytearray()
            if writer.stream is not None:
                writer.stream.loop_closed()
                writer.stream = None
            self.method_queue.defer(
                self.cuts.note, time.monotonic(), conn.client, "send",
                f"answer not taken within {self.limits.send_timeout_s:g} s", "closed")
            raise StopIteration from None
        finally:
            conn.sock = sock
            conn.unsent = writer.pending
            conn.stream = writer.stream
            conn.stream_chunked = tuple(req.version) >= (1, 1)
            with contextlib.suppress(OSError):
                sock.settimeout(self.limits.send_timeout_s)

    def finish_request(self, conn: Any, fs: Any) -> None:
        """After a thread: send what it left in the loop, then do what gthread does."""
        if not self.unsupported and isinstance(conn, BufferedConn) and conn.stream is not None:
            self.start_streaming(conn)
            return
        if self.unsupported or not isinstance(conn, BufferedConn) or not conn.unsent:
            super().finish_request(conn, fs)
            return
        outgoing = Outgoing(conn, fs, conn.unsent,
                            time.monotonic() + self.limits.send_timeout_s)
        conn.unsent = bytearray()
        try:
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_WRITE,
                                 partial(self.on_writable, outgoing))
        except (OSError, ValueError, KeyError):
            self.nr_conns -= 1
            conn.close()
            return
        self.schedule(outgoing)

    def on_writable(self, outgoing: Outgoing, sock: socket.socket) -> None:
        """Send more of a kept answer; when it is all sent, go on as gthread would."""
        try:
            outgoing.sent += sock.send(memoryview(outgoing.data)[outgoing.sent:])
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.stop_sending(outgoing)
            self.nr_conns -= 1
            outgoing.conn.close()
            return
        if outgoing.sent >= len(outgoing.data):
            self.stop_sending(outgoing)
            super().finish_request(outgoing.conn, outgoing.future)

    def stop_sending(self, outgoing: Outgoing) -> None:
        """Stop watching a connection whose answer is sent (or will never be)."""
        outgoing.finished = True
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(outgoing.conn.sock)

    # event streams -----------------------------------------------------------------------

    def start_streaming(self, conn: BufferedConn) -> None:
        """Send a handed-over event stream from the loop until it ends or its client leaves."""
        item = Streaming(conn, conn.stream, conn.stream_chunked, conn.unsent)
        conn.stream, conn.unsent = None, bytearray()
        self.streams.add(item)
        try:
            conn.sock.setblocking(False)
            self.poller.register(conn.sock, selectors.EVENT_READ,
                                 partial(self.on_stream_event, item))
        except (OSError, ValueError, KeyError):
            self.end_stream(item, graceful=False)
            return
        item.stream.loop_attach(partial(self.wake_stream, item))
        if self.stopping:
            item.finish()
        self.pump_stream(item, time.monotonic())

    def wake_stream(self, item: Streaming) -> None:
        """From any thread: the stream has more to send (one wake-up queued at a time)."""
        if not item.woken and not item.finished:
            item.woken = True
            self.method_queue.defer(self.on_stream_woken, item)

    def on_stream_woken(self, item: Streaming) -> None:
        """In the loop: take what the stream has."""
        item.woken = False
        if not item.finished:
            self.pump_stream(item, time.monotonic())

    def pump_stream(self, item: Streaming, now: float) -> None:
        """Take the stream's data (or heartbeat) and send what the socket takes."""
        if not item.ending:
            data, done, due = item.stream.loop_take(now)
            item.frame(data)
            item.due = due
            if done:
                item.finish()
        if item.ending:
            item.due = float("inf")
        self.send_stream(item, now)

    def send_stream(self, item: Streaming, now: float) -> None:
        """Send what is framed; watch for writability while the client lags behind."""
        sent = 0
        if item.out:
            try:
                sent = item.conn.sock.send(item.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self.end_stream(item, graceful=False)
                return
            del item.out[:sent]
        if item.out and len(item.out) > OUT_BUFFER_BYTES:
            self.cut_stream(item, now, f"over {OUT_BUFFER_BYTES} bytes not taken")
            return
        if item.out:
            if item.send_due == float("inf") or sent:
                item.send_due = now + self.limits.send_timeout_s
        else:
            item.send_due = float("inf")
        if item.ending and not item.out:
            self.end_stream(item, graceful=True)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if item.out else 0)
        if bool(item.out) != item.writing:
            item.writing = bool(item.out)
            try:
                self.poller.modify(item.conn.sock, events, partial(self.on_stream_event, item))
            except (OSError, ValueError, KeyError):
                self.end_stream(item, graceful=False)
                return
        self.schedule(item)

    def on_stream_event(self, item: Streaming, sock: socket.socket) -> None:
        """The client's socket is readable (closed, most likely) or writable again."""
        try:
            data = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            data = None
        except OSError:
            data = b""
        if data == b"":
            self.end_stream(item, graceful=False)  # the client left
            return
        if data:
            item.discarded += len(data)  # a stream's client has nothing to say
            if item.discarded > LINGER_MAX_BYTES:
                self.end_stream(item, graceful=False)
                return
        self.send_stream(item, time.monotonic())

    def stream_due(self, item: Streaming, now: float) -> None:
        """A stream's deadline: its client took nothing in time, or a heartbeat is due."""
        if item.send_due <= now:
            self.cut_stream(item, now, f"nothing taken within {self.limits.send_timeout_s:g} s")
        else:
            self.pump_stream(item, now)

    def cut_stream(self, item: Streaming, now: float, why: str) -> None:
        """Close a stream whose client does not read."""
        self.cuts.note(now, item.conn.client, "send", f"event stream: {why}", "closed")
        self.end_stream(item, graceful=False)

    def end_stream(self, item: Streaming, *, graceful: bool) -> None:
        """Close a stream's connection and tell the stream."""
        if item.finished:
            return
        item.finished = True
        self.streams.discard(item)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(item.conn.sock)
        try:
            item.stream.loop_closed()
        finally:
            self.nr_conns -= 1
            item.conn.close(graceful=graceful)

    def end_streams(self) -> None:
        """The worker stops: end every stream now (clients reconnect, with Last-Event-ID)."""
        now = time.monotonic()
        for item in list(self.streams):
            item.finish()
            self.send_stream(item, now)

    # reading in the loop -----------------------------------------------------------------

    def on_client_socket_readable(self, conn: Any, client: socket.socket) -> None:
        """A kept-alive connection's next request begins: read it in the loop."""
        if self.unsupported:
            super().on_client_socket_readable(conn, client)
            return
        self.keepalived_conns.remove(conn)
        self.start_reading(conn, registered=True)

    def start_reading(self, conn: BufferedConn, registered: bool = False) -> None:
        """Watch ``conn`` for its next request (with whatever the last one left behind)."""
        now = time.monotonic()
        leftover = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        incoming = Incoming(conn, now, leftover, self.limits, self.max_body, self.max_line)
        if self.stopping:
            incoming.stop_deadline = now + gthread.STOP_KEEPALIVE_LINGER
        callback = partial(self.on_readable, incoming)
        try:
            conn.sock.setblocking(False)
            if registered:
                self.poller.modify(conn.sock, selectors.EVENT_READ, callback)
            else:
                self.poller.register(conn.sock, selectors.EVENT_READ, callback)
        except (OSError, ValueError, KeyError):
            self.nr_conns -= 1
            conn.close()
            return
        self.reading[conn] = incoming
        if leftover:
            self.advance(incoming, now)
        if not incoming.finished:  # the request is often there already: no turn of the loop
            self.on_readable(incoming, conn.sock)
        if not incoming.finished:
            self.schedule(incoming)

    def on_readable(self, incoming: Incoming, sock: socket.socket) -> None:
        """Take what the client sent; serve, refuse or wait for more."""
        try:
            data = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client closed (or reset) before its request was complete
            self.stop_reading(incoming)
            self.nr_conns -= 1
            incoming.conn.close()
            return
        incoming.buf += data
        self.advance(incoming, time.monotonic())

    def advance(self, incoming: Incoming, now: float) -> None:
        """Serve a complete request, answer a refused one, or ask for the body."""
        try:
            state = incoming.feed(now)
        except Refusal as refusal:
            kind = {400: "malformed", 413: "too-large"}.get(refusal.status, "head-too-large")
            self.refuse(incoming, refusal.status, refusal.message, kind, refusal.reason, now)
            return
        if state == READY:
            self.dispatch(incoming)
            return
        if incoming.wants_continue():
            incoming.continue_sent = True
            try:
                sent = incoming.conn.sock.send(_CONTINUE)
            except OSError:
                sent = 0
            if sent != len(_CONTINUE):
                self.stop_reading(incoming)
                self.nr_conns -= 1
                incoming.conn.close()
                return
        self.schedule(incoming)  # the head's end, or a faster body, moves the deadline

    def dispatch(self, incoming: Incoming) -> None:
        """Hand a complete request to a thread: gunicorn's parser reads it from memory."""
        self.stop_reading(incoming)
        conn = incoming.conn
        if conn.parser is None:
            conn.parser = http.get_parser(self.cfg, _END_OF_INPUT, conn.client)
        conn.initialized = True
        conn.close_after = incoming.close_after
        conn.parser.unreader.unread(incoming.replay())
        gthread.ThreadWorker.enqueue_req(self, conn)

    def refuse(self, incoming: Incoming, status: int, message: str, kind: str, reason: str,
               now: float) -> None:
        """Answer ``status`` from the loop and close the connection (lingering)."""
        self.stop_reading(incoming)
        self.nr_conns -= 1
        conn = incoming.conn
        with contextlib.suppress(OSError):
            conn.sock.send(error_response(status, message))
        self.cuts.note(now, conn.client, kind, reason, f"answered {status} and closed")
        conn.close(graceful=True)

    def stop_reading(self, incoming: Incoming) -> None:
        """Stop watching a connection's request (complete, refused, cut or gone)."""
        incoming.finished = True
        self.reading.pop(incoming.conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(incoming.conn.sock)

    def schedule(self, incoming: Incoming | Outgoing | Streaming) -> None:
        """Make sure the loop looks at ``incoming`` again by its deadline.

        Deadlines mostly move later (a body that keeps coming); the heap keeps the earliest
        check of each request, and a check that finds the deadline moved schedules again.
        """
        due = incoming.deadline()
        if due < incoming.next_check:
            incoming.next_check = due
            heapq.heappush(self.deadlines, (due, next(self.order), incoming))

    def sweep(self, now: float) -> None:
        """Cut the requests (and answers) past their deadline; close sockets done lingering."""
        if not self.alive and not self.stopping:
            self.stopping = True  # stopping: idle connections get gthread's short linger
            for incoming in self.reading.values():
                incoming.stop_deadline = now + gthread.STOP_KEEPALIVE_LINGER
                self.schedule(incoming)
            self.end_streams()
        while self.deadlines and self.deadlines[0][0] <= now:
            checked, _, item = heapq.heappop(self.deadlines)
            if item.finished:
                continue
            if checked >= item.next_check:
                item.next_check = float("inf")
            if item.deadline() > now:
                self.schedule(item)
            elif isinstance(item, Streaming):
                self.stream_due(item, now)
            elif isinstance(item, Outgoing):
                self.stop_sending(item)
                self.nr_conns -= 1
                self.cuts.note(now, item.conn.client, "send",
                               f"answer not taken within {self.limits.send_timeout_s:g} s "
                               f"({item.sent} of {len(item.data)} bytes sent)", "closed")
                item.conn.close()
            else:
                self.cut(item, now)
        while self.lingering:
            sock, (until, _) = next(iter(self.lingering.items()))
            if until > now:
                break
            self.end_linger(sock)
        self.cuts.tick(now)
        if self.nr_conns >= self.worker_connections:
            self.cuts.full(now, self.nr_conns)

    def cut(self, incoming: Incoming, now: float) -> None:
        """Close a connection whose request did not arrive in time (408 if it had begun)."""
        if incoming.has_bytes:
            kind = "head" if incoming.head_end < 0 else "body"
            self.refuse(incoming, 408, "request not received in time", kind,
                        incoming.why_cut(now), now)
            return
        self.stop_reading(incoming)
        self.nr_conns -= 1
        self.log.debug("closed connection from %s: nothing sent within %g s",
                       _show(incoming.conn.client), self.limits.head_timeout_s)
        incoming.conn.close()

    # closing -----------------------------------------------------------------------------

    def connection_closed(self, conn: BufferedConn, graceful: bool) -> None:
        """Close ``conn`` (BufferedConn.close): free its address's slot, linger if asked."""
        if not conn.released:
            conn.released = True
            if conn.host is not None:
                self.per_client[conn.host] -= 1
                if self.per_client[conn.host] <= 0:
                    del self.per_client[conn.host]
        if graceful:
            self.linger(conn.sock)
        else:
            util.close(conn.sock)

    def linger(self, sock: socket.socket) -> None:
        """Send FIN, then drain what the client still sends for LINGER_S, in the loop."""
        try:
            sock.setblocking(False)
            sock.shutdown(socket.SHUT_WR)
            self.poller.register(sock, selectors.EVENT_READ, self.on_linger_readable)
        except (OSError, ValueError, KeyError):
            util.close(sock)
            return
        self.lingering[sock] = (time.monotonic() + LINGER_S, 0)

    def on_linger_readable(self, sock: socket.socket) -> None:
        """Discard what a closing client sends; close when it is done or sent too much."""
        try:
            data = sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        until, drained = self.lingering.get(sock, (0.0, 0))
        if data and drained + len(data) < LINGER_MAX_BYTES:
            self.lingering[sock] = (until, drained + len(data))
            return
        self.end_linger(sock)

    def end_linger(self, sock: socket.socket) -> None:
        """Close a lingering socket."""
        self.lingering.pop(sock, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(sock)
        util.close(sock)

    def _close_everything(self) -> None:
        self.cuts.tick(time.monotonic(), final=True)
        for incoming in list(self.reading.values()):
            self.stop_reading(incoming)
            util.close(incoming.conn.sock)
        for sock in list(self.lingering):
            self.lingering.pop(sock, None)
            util.close(sock)
        for item in list(self.streams):
            self.end_stream(item, graceful=False)


def _unsupported(cfg: Any) -> str | None:
    """Say why requests cannot be read in the loop with this configuration, or None."""
    if cfg.is_ssl:
        return "gunicorn terminates TLS itself (certfile/keyfile)"
    if str(cfg.proxy_protocol).lower() not in ("off", "false", "none"):
        return "the PROXY protocol is on"
    if getattr(cfg, "protocol", "http") != "http":
        return f"the protocol is {cfg.protocol}"
    if str(getattr(cfg, "http2_cleartext", "off")).lower() not in ("off", "false", "none"):
        return "HTTP/2 cleartext is on"
    return None


def _app_body_limit(app: Any) -> int:
    """Return the app's body limit (Flask's MAX_CONTENT_LENGTH), or the default."""
    config = getattr(app, "config", None)
    limit = config.get("MAX_CONTENT_LENGTH") if isinstance(config, dict) else None
    return int(limit) if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_BODY_BYTES


_TOKEN_VALUES = re.compile(r"((?:^|[?&;])(?:access_token|token)=)[^&;\s\"]*", re.IGNORECASE)


def redact_query(text: str) -> str:
    """Return a request line or query string with token values shown as ``***``."""
    return _TOKEN_VALUES.sub(r"\1***", text) if "token=" in text.lower() else text


class RedactingLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's logger, with token values in the query string hidden from the access log.

    ``?access_token=`` carries the events routes' stream tokens (``web.stream_tokens``): a
    token in a log line is a token anyone who reads the logs can use (``logger_class``
    in gunicorn.conf.py).
    """

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        """The access log's fields, the request line and query string redacted."""
        atoms: dict[str, Any] = super().atoms(resp, req, environ, request_time)
        for name in ("r", "q"):
            if isinstance(atoms.get(name), str):
                atoms[name] = redact_query(atoms[name])
        return atoms
