"""A closed-loop HTTP/1.1 load generator: N keep-alive connections, each one request at a time.

Plain sockets and one pre-built request, so that a request costs the generator a few
microseconds of Python and the server, not the client, is what gets measured. Each
connection is a thread; a warm-up (excluded) precedes the measured window. Loopback only.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bench.common import percentile


@dataclass
class _Tally:
    """What one connection saw in the measured window."""

    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


def build_request(path: str, body: bytes, host: str = "127.0.0.1") -> bytes:
    """Return the bytes of one ``POST path`` with a JSON ``body``, keep-alive."""
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body


def _read_response(sock: socket.socket, pending: bytes) -> tuple[int, bool, bytes]:
    """Read one response; return (status, server closes, bytes past it)."""
    buf = pending
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the headers")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    closes = False
    for line in head.lower().split(b"\r\n")[1:]:
        if line.startswith(b"content-length:"):
            length = int(line[15:])
        elif line.startswith(b"connection:") and b"close" in line:
            closes = True
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed inside the body")
        rest += chunk
    return status, closes, rest[length:]


def _connection(port: int, request: bytes, start: float, end: float, tally: _Tally) -> None:
    sock: socket.socket | None = None
    pending = b""
    while True:
        now = time.monotonic()
        if now >= end:
            break
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                pending = b""
            sent = time.monotonic()
            sock.sendall(request)
            status, closes, pending = _read_response(sock, pending)
            done = time.monotonic()
            if sent >= start and done <= end:
                tally.latencies_s.append(done - sent)
                tally.statuses[status] += 1
            if closes:
                sock.close()
                sock = None
        except OSError as exc:
            if start <= time.monotonic() <= end:
                tally.errors[type(exc).__name__] += 1
            if sock is not None:
                sock.close()
            sock = None
    if sock is not None:
        sock.close()


def run_load(port: int, path: str, body: bytes, *, connections: int, duration_s: float,
             warmup_s: float = 1.0) -> dict[str, Any]:
    """Drive ``POST path`` with ``connections`` closed loops; measure ``duration_s``.

    Returns:
        Requests per second answered 2xx in the window, latency p50/p99/max in ms, and
        every status and error counted.
    """
    request = build_request(path, body)
    start = time.monotonic() + warmup_s
    end = start + duration_s
    tallies = [_Tally() for _ in range(connections)]
    threads = [threading.Thread(target=_connection, args=(port, request, start, end, t),
                                name=f"load-{n}", daemon=True)
               for n, t in enumerate(tallies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(duration_s + warmup_s + 60)
    latencies = [x for t in tallies for x in t.latencies_s]
    statuses: Counter[int] = sum((t.statuses for t in tallies), Counter())
    errors: Counter[str] = sum((t.errors for t in tallies), Counter())
    ok = sum(n for status, n in statuses.items() if 200 <= status < 300)
    return {
        "connections": connections,
        "duration_s": duration_s,
        "requests": len(latencies),
        "requests_2xx": ok,
        "throughput_rps": round(ok / duration_s, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies, default=float("nan")) * 1000, 2),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": dict(errors),
    }
