"""Slow clients: request latency with and without 240 slow connections, for both workers.

    .venv/bin/python bench/slow_clients.py [--quick]

The real app (``wsgi:app``, memory store, authentication off, the stand-in of the Python API
in its own process) under the shipped ``gunicorn.conf.py``, twice:

* ``serving``: the shipped worker, ``serving.RequestBufferingWorker`` (requests read whole in
  the event loop before a thread serves them);
* ``gthread``: gunicorn's gthread worker (``--worker-class gthread``), shipped before.

For each: the throughput of ``POST /api/interactions/{id}/questions`` at 32 keep-alive
connections, against the real app and against ``bench.bare_app`` (what reading in the loop
costs), then the latency of requests sent one after the other, each on a new connection
(``GET /health/live``, ``GET /health/ready``, the ``POST`` in turn), first on a quiet server
for ``quiet_s``, then for ``slow_s`` with 80 connections trickling headers (a line every 10 s),
80 trickling a body (a byte a second) and 80 idle, all reconnecting as soon as they are cut (as
an attacker would). A request not answered within ``TIMEOUT_S`` counts as a timeout; after three
the run under slow clients stops (gthread never answers them). Interleaved ``repeat`` times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import select
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    GunicornProcess,
    StandInProcess,
    percentile,
    use_results_dir,
    write_result,
)
from bench.loadgen import run_load

NAME = "slow_clients"
TIMEOUT_S = 5.0
SLOW_EACH = 80
QUESTION = json.dumps({"question": "What are the main features?",
                       "companyName": "acme-corp"}).encode()
PATH = "/api/interactions/bench-1/questions"
WORKERS = {"serving": {}, "gthread": {"GUNICORN_CMD_ARGS": "--worker-class gthread"}}
_HEAD = b"GET /health/live HTTP/1.1\r\nHost: bench\r\n"
_BODY = (b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: bench\r\nContent-Type: "
         b"application/json\r\nContent-Length: %d\r\n\r\n{" % len(QUESTION))


class Attackers:
    """Connections that trickle a head, trickle a body or stay idle, reconnecting when cut."""

    KINDS = {"head": (_HEAD, b"X-Slow: 1\r\n", 10.0), "body": (_BODY, b" ", 1.0),
             "idle": (b"", b"", 0.0)}

    def __init__(self, port: int, each: int) -> None:
        self.port = port
        self.socks: dict[socket.socket, tuple[str, float]] = {}
        self.cuts = {kind: 0 for kind in self.KINDS}
        self.stop = threading.Event()
        for kind in self.KINDS:
            for _ in range(each):
                self._open(kind)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _open(self, kind: str) -> None:
        opening, _, _ = self.KINDS[kind]
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            if opening:
                sock.sendall(opening)
        except OSError:
            return
        sock.setblocking(False)
        self.socks[sock] = (kind, time.monotonic())

    def _run(self) -> None:
        while not self.stop.is_set():
            readable, _, _ = select.select(list(self.socks), [], [], 0.2)
            for sock in readable:  # answered (408) or closed: cut; come back at once
                kind, _ = self.socks.pop(sock)
                self.cuts[kind] += 1
                sock.close()
                self._open(kind)
            now = time.monotonic()
            for sock, (kind, last) in list(self.socks.items()):
                _, drip, every = self.KINDS[kind]
                if drip and now - last >= every:
                    with contextlib.suppress(OSError):
                        sock.send(drip)
                    self.socks[sock] = (kind, now)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for sock in self.socks:
            sock.close()


def one_request(port: int, index: int) -> float | None:
    """Send one request on a new connection; return its latency, None on a timeout."""
    if index % 3 == 2:
        request = (b"POST " + PATH.encode() + b" HTTP/1.1\r\nHost: bench\r\nContent-Type: "
                   b"application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                   % len(QUESTION) + QUESTION)
    else:
        path = b"/health/live" if index % 3 == 0 else b"/health/ready"
        request = b"GET " + path + b" HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    started = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
            sock.sendall(request)
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    except TimeoutError:
        return None
    if not reply.startswith((b"HTTP/1.1 200", b"HTTP/1.1 202")):
        raise RuntimeError(f"unexpected answer: {reply[:100]!r}")
    return time.monotonic() - started


def latencies(port: int, duration_s: float) -> dict[str, Any]:
    """Send requests one after the other for ``duration_s`` (or until three timeouts)."""
    found: list[float] = []
    timeouts = 0
    end = time.monotonic() + duration_s
    index = 0
    while time.monotonic() < end and timeouts < 3:
        latency = one_request(port, index)
        index += 1
        if latency is None:
            timeouts += 1
        else:
            found.append(latency)
    ms = [1000 * value for value in found]
    return {"answered": len(found), "timeouts": timeouts,
            "p50_ms": round(percentile(ms, 0.5), 2), "p99_ms": round(percentile(ms, 0.99), 2),
            "max_ms": round(max(ms), 2) if ms else None}


def measure(worker: str, standin_url: str, quiet_s: float, slow_s: float, load_s: float
            ) -> dict[str, Any]:
    """Start the servers with ``worker``; return their throughput and latency figures."""
    env = {"PYTHON_API_BASE_URL": standin_url, "QUEUE_STORE": "memory", "APP_ENV": "development",
           "QUEUE_MAX_WAITING_QA": "10000000", "RATE_LIMIT_MAX_REQUESTS": "1000000000",
           "GUNICORN_ACCESS_LOG": "", **WORKERS[worker]}
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp, \
            GunicornProcess("bench.bare_app:app", Path(tmp), env) as bare:
        bare_load = run_load(bare.port, PATH, QUESTION, connections=32, duration_s=load_s)
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp, \
            GunicornProcess("wsgi:app", Path(tmp), env) as server:
        load = run_load(server.port, PATH, QUESTION, connections=32, duration_s=load_s)
        quiet = latencies(server.port, quiet_s)
        attackers = Attackers(server.port, SLOW_EACH)
        try:
            time.sleep(1.0)  # let them all be connected and under way
            slow = latencies(server.port, slow_s)
            slow["open_slow_connections"] = len(attackers.socks)
        finally:
            attackers.close()
        slow["slow_connections_cut"] = dict(attackers.cuts)
        slow["cut_log_lines"] = len([line for line in server.log().splitlines()
                                     if "gunicorn.error" in line and "client" in line
                                     and "closed" in line])
    return {"bare_app_throughput_rps": bare_load["throughput_rps"],
            "bare_app_p99_ms": bare_load["p99_ms"],
            "throughput_rps": load["throughput_rps"], "load_p99_ms": load["p99_ms"],
            "quiet": quiet, "slow_clients": slow}


def run(quiet_s: float = 5.0, slow_s: float = 15.0, load_s: float = 10.0,
        repeat: int = 2) -> dict[str, Any]:
    """Measure both workers ``repeat`` times, interleaved; write the results."""
    rounds: dict[str, list[dict[str, Any]]] = {worker: [] for worker in WORKERS}
    with StandInProcess() as standin:
        for _ in range(repeat):
            for worker in WORKERS:
                rounds[worker].append(measure(worker, standin.url, quiet_s, slow_s, load_s))
    runs = {worker: {
        "bare_app_throughput_rps": statistics.median(
            r["bare_app_throughput_rps"] for r in found),
        "throughput_rps": statistics.median(r["throughput_rps"] for r in found),
        "quiet_p50_ms": statistics.median(r["quiet"]["p50_ms"] for r in found),
        "quiet_p99_ms": statistics.median(r["quiet"]["p99_ms"] for r in found),
        "slow_answered": sum(r["slow_clients"]["answered"] for r in found),
        "slow_timeouts": sum(r["slow_clients"]["timeouts"] for r in found),
        "slow_p50_ms": statistics.median(r["slow_clients"]["p50_ms"] for r in found),
        "slow_p99_ms": statistics.median(r["slow_clients"]["p99_ms"] for r in found),
        "rounds": found} for worker, found in rounds.items()}
    result = {"setup": {"quiet_s": quiet_s, "slow_s": slow_s, "timeout_s": TIMEOUT_S,
                        "load_connections": 32, "load_s": load_s, "repeat": repeat,
                        "figure": "median over repeats (answered/timeouts: sums)",
                        "slow_connections": 3 * SLOW_EACH,
                        "slow": "80 trickling a header line every 10 s, 80 a body byte a "
                                "second, 80 idle; each reconnects when cut",
                        "server": "gunicorn -c gunicorn.conf.py wsgi:app, memory store, "
                                  "auth off; throughput also for bench.bare_app:app"},
              "runs": runs}
    write_result(NAME, result)
    return result


def main() -> None:
    """Run the benchmark and print its results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    if args.quick:  # a smoke run never overwrites the published results
        use_results_dir(Path(tempfile.mkdtemp(prefix="bench-quick-")))
    result = run(quiet_s=1.0, slow_s=3.0, load_s=2.0, repeat=1) if args.quick else run()
    print(json.dumps(result["runs"], indent=2))


if __name__ == "__main__":
    main()
