"""Open event streams: probe and job-read latency with 0, 100 and 300 streams open.

    .venv/bin/python bench/event_streams.py [--quick]

The real app (``wsgi:app``, SQLite store, authentication off: every stream is the local
admin's ``GET /api/queue/events``, so every stream gets every event, the worst fan-out)
under the shipped ``gunicorn.conf.py`` and its 8 threads, the stand-in Python API in its own
process. For each number of open streams: the streams are opened (each reads its snapshot),
then for ``duration_s`` questions are submitted at ``rate`` per second while ``GET
/health/live`` and ``GET /api/queue/jobs/qa/<id>`` are sent one after the other, each on a new
connection, and timed. Fan-out: how long after a submission's 202 every open stream has
received that job's ``queued`` event. A request not answered within ``TIMEOUT_S`` counts as a
timeout.
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import GunicornProcess, StandInProcess, percentile, write_result

NAME = "event_streams"
TIMEOUT_S = 5.0
QUESTION = json.dumps({"question": "Streams?", "companyName": "acme"}).encode()


def request(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes, float]:
    """One request on a new connection: (status, body, seconds); status 0 on a timeout."""
    started = time.perf_counter()
    head = (f"{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
            sock.sendall(head.encode() + body)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return 0, b"", time.perf_counter() - started
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data.partition(b"\r\n\r\n")[2], time.perf_counter() - started


class Streams:
    """``count`` open streams, drained by one thread; notes when each has seen a marker."""

    def __init__(self, port: int, count: int) -> None:
        self.socks = []
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
            sock.sendall(b"GET /api/queue/events HTTP/1.1\r\nHost: bench\r\n\r\n")
            first = b""
            while b"event: snapshot" not in first:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError(f"stream not opened: {first[:300]!r}")
                first += chunk
            sock.setblocking(False)
            self.socks.append(sock)
        self.seen: dict[str, set[int]] = {}
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        selector = selectors.DefaultSelector()
        for number, sock in enumerate(self.socks):
            selector.register(sock, selectors.EVENT_READ, number)
        while not self.stopped.is_set():
            for key, _ in selector.select(0.2):
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                with self.lock:
                    for marker, streams in self.seen.items():
                        if marker.encode() in data:
                            streams.add(key.data)

    def watch(self, marker: str) -> None:
        with self.lock:
            self.seen[marker] = set()

    def count(self, marker: str) -> int:
        with self.lock:
            return len(self.seen.get(marker, ()))

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()


def measure(port: int, streams: Streams | None, duration_s: float, rate: float
            ) -> dict[str, Any]:
    probes: list[float] = []
    reads: list[float] = []
    fanout: list[float] = []
    timeouts = 0
    job_path = None
    until = time.monotonic() + duration_s
    next_submit = time.monotonic()
    pending: list[tuple[str, float]] = []
    while time.monotonic() < until:
        if time.monotonic() >= next_submit:
            next_submit += 1 / rate
            status, body, _ = request(port, "POST", "/api/interactions/bench/questions",
                                      QUESTION)
            if status == 202:
                job_id = json.loads(body)["data"]["jobId"]
                job_path = f"/api/queue/jobs/qa/{job_id}"
                if streams is not None:
                    streams.watch(job_id)
                    pending.append((job_id, time.perf_counter()))
        status, _, seconds = request(port, "GET", "/health/live")
        probes.append(seconds)
        timeouts += status != 200
        if job_path:
            status, _, seconds = request(port, "GET", job_path)
            reads.append(seconds)
            timeouts += status != 200
        if streams is not None:
            for job_id, sent in list(pending):
                if streams.count(job_id) >= len(streams.socks):
                    fanout.append(time.perf_counter() - sent)
                    pending.remove((job_id, sent))

    def summary(values: list[float]) -> dict[str, float]:
        return {"n": len(values), "p50_ms": round(percentile(values, 0.5) * 1000, 2),
                "p95_ms": round(percentile(values, 0.95) * 1000, 2),
                "max_ms": round(max(values, default=float("nan")) * 1000, 2)}

    return {"live": summary(probes), "get_job": summary(reads), "fanout": summary(fanout),
            "fanout_pending_at_end": len(pending), "timeouts": timeouts}


def run(counts: tuple[int, ...] = (0, 100, 300), duration_s: float = 15.0,
        rate: float = 10.0) -> dict[str, Any]:
    """Measure each number of open streams; write and return the result."""
    results: dict[str, Any] = {}
    with StandInProcess() as standin, tempfile.TemporaryDirectory() as workdir:
        env = {"PYTHON_API_BASE_URL": standin.url, "APP_ENV": "development",
               "QUEUE_STORE": "sqlite", "EVENTS_MAX_STREAMS_PER_CALLER": "1000",
               "EVENTS_MAX_STREAMS": "900", "RATE_LIMIT_MAX_REQUESTS": "100000000",
               "QUEUE_MAX_WAITING_QA": "100000", "GUNICORN_ACCESS_LOG": "",
               "LOG_LEVEL": "warning"}
        with GunicornProcess("wsgi:app", Path(workdir), env) as server:
            for count in counts:
                streams = Streams(server.port, count) if count else None
                try:
                    results[str(count)] = measure(server.port, streams, duration_s, rate)
                finally:
                    if streams is not None:
                        streams.close()
                print(f"{count:4d} streams: {json.dumps(results[str(count)])}", flush=True)
    result = {"threads": 8, "duration_s": duration_s, "submissions_per_s": rate,
              "by_open_streams": results}
    write_result(NAME, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        run(counts=(0, 100), duration_s=3.0)
    else:
        run()


if __name__ == "__main__":
    main()
