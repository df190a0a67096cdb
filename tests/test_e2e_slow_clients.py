"""Slow clients cannot stall the server: the real gunicorn, as the README serves it.

80 connections trickle their headers, 80 trickle their bodies, 80 stay idle (fresh or kept
alive), 8 never read their answers: meanwhile probes and normal requests from another client
answer, each within a bound (``ANSWER_BOUND_S``, generous: under gthread they never answered
at all, since eight such connections held all eight threads), and the slow connections are
cut after their deadline (408, or a silent close for a connection that sent nothing).
Keep-alive, pipelining, ``Expect: 100-continue``, chunked bodies, SIGTERM and
``max_requests`` still work under the worker that reads requests in its event loop
(``serving.py``).
"""

from __future__ import annotations

import contextlib
import re
import select
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tests.gunicorn_server import GunicornServer
from tests.standin import PythonApiStandIn
from tests.web_support import TEST_COMPANIES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parent.parent
SECRET = "slow-clients-secret-0123456789abcdef0123456789"
SLOW = 80
ANSWER_BOUND_S = 5.0
"""Every probe and request must answer before this: a bound, not a speed claim."""
HEAD_TIMEOUT_S = 3.0
BODY_TIMEOUT_S = 4.0
MIN_RATE = 1024
RATE_GRACE_S = 2.0  # serving.BODY_RATE_GRACE_S
SEND_TIMEOUT_S = 3.0
CUT_MARGIN_S = 4.0
"""How late after its deadline a slow connection may be cut (the loop is busy, CI is slow)."""
QUESTION = b'{"question": "What is it?", "companyName": "acme"}'


def token(user: str) -> dict[str, str]:
    claims = {"userId": user, "exp": int(time.time()) + 3600,
              "companyNames": list(TEST_COMPANIES)}
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


def server_env(standin: PythonApiStandIn, **extra: str) -> dict[str, str]:
    return {
        "PYTHON_API_BASE_URL": standin.url,
        "APP_ENV": "production",
        "JWT_SECRET": SECRET,
        "QUEUE_STORE": "memory",
        "QUEUE_DRAIN_TIMEOUT_MS": "5000",
        "PYTHON_API_STATUS_TIMEOUT_MS": "500",
        "RATE_LIMIT_MAX_REQUESTS": "100000",
        "GUNICORN_ACCESS_LOG": "",
        "HTTP_HEAD_TIMEOUT_MS": str(int(HEAD_TIMEOUT_S * 1000)),
        "HTTP_BODY_TIMEOUT_MS": str(int(BODY_TIMEOUT_S * 1000)),
        "HTTP_BODY_MIN_RATE": str(MIN_RATE),
        "HTTP_SEND_TIMEOUT_MS": str(int(SEND_TIMEOUT_S * 1000)),
        **extra,
    }


@pytest.fixture(scope="module")
def standin() -> Iterator[PythonApiStandIn]:
    with PythonApiStandIn() as api:
        yield api


@pytest.fixture(scope="module")
def server(standin: PythonApiStandIn, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[GunicornServer]:
    gunicorn = GunicornServer(tmp_path_factory.mktemp("slow"), server_env(standin)).start()
    yield gunicorn
    gunicorn.stop()


class SlowClients:
    """``count`` connections that send ``opening``, then ``drip`` every ``interval_s``.

    A thread watches them all: the first bytes each one receives (or ``b""`` for a close)
    are recorded with the time since the connection was opened, and it drips no more.
    """

    def __init__(self, port: int, count: int, opening: bytes, drip: bytes = b"",
                 interval_s: float = 1.0) -> None:
        self.drip = drip
        self.interval_s = interval_s
        self.socks: list[socket.socket] = []
        self.opened: dict[socket.socket, float] = {}
        self.answers: dict[socket.socket, tuple[float, bytes]] = {}
        self.stop = threading.Event()
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if opening:
                sock.sendall(opening)
            self.socks.append(sock)
            self.opened[sock] = time.monotonic()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        next_drip = time.monotonic() + self.interval_s
        while not self.stop.is_set():
            pending = [s for s in self.socks if s not in self.answers]
            if not pending:
                return
            readable, _, _ = select.select(pending, [], [],
                                           max(0.0, min(0.2, next_drip - time.monotonic())))
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                self.answers[sock] = (time.monotonic() - self.opened[sock], data)
            if self.drip and time.monotonic() >= next_drip:
                next_drip += self.interval_s
                for sock in pending:
                    if sock not in self.answers:
                        with contextlib.suppress(OSError):
                            sock.send(self.drip)

    def wait_all_answered(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and len(self.answers) < len(self.socks):
            self.stop.wait(0.1)
        return len(self.answers) == len(self.socks)

    def still_open(self) -> int:
        return len(self.socks) - len(self.answers)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        for sock in self.socks:
            sock.close()


@contextlib.contextmanager
def slow_clients(*args: Any, **kwargs: Any) -> Iterator[SlowClients]:
    clients = SlowClients(*args, **kwargs)
    try:
        yield clients
    finally:
        clients.close()


def answered(server: GunicornServer, method: str, path: str, status: int,
             **kwargs: Any) -> float:
    """Send one request on a new connection; assert its status within the bound."""
    started = time.monotonic()
    try:
        reply = requests.request(method, server.url + path, timeout=ANSWER_BOUND_S, **kwargs)
    except requests.RequestException as exc:
        raise AssertionError(f"{method} {path} not answered within {ANSWER_BOUND_S} s "
                             f"while slow clients are connected: {exc!r}") from None
    elapsed = time.monotonic() - started
    assert reply.status_code == status, (method, path, reply.status_code, reply.text)
    assert elapsed < ANSWER_BOUND_S
    return elapsed


def probes_and_requests_answer(server: GunicornServer, rounds: int = 5) -> list[float]:
    """Probes, an anonymous read and authenticated requests all answer, ``rounds`` times."""
    alice = token("alice")
    times: list[float] = []
    for _ in range(rounds):
        times.append(answered(server, "GET", "/health/live", 200))
        times.append(answered(server, "GET", "/health/ready", 200))
        times.append(answered(server, "GET", "/api/queue/status", 200, headers=alice))
        times.append(answered(server, "POST", "/api/interactions/demo-1/questions", 202,
                              headers=alice, json={"question": "What is it?",
                                                   "companyName": "acme"}))
    with requests.Session() as session:  # and a kept-alive client, request after request
        for _ in range(rounds):
            started = time.monotonic()
            reply = session.get(server.url + "/health/live", timeout=ANSWER_BOUND_S)
            assert reply.status_code == 200
            times.append(time.monotonic() - started)
    return times


def cut_with(clients: SlowClients, status: bytes, earliest_s: float, latest_s: float) -> None:
    """Every connection was answered ``status`` (b"" for a close) between the two times."""
    assert clients.wait_all_answered(latest_s + 2), \
        f"{clients.still_open()} slow connections still open after {latest_s + 2:.0f} s"
    for elapsed, data in clients.answers.values():
        if status:
            assert data.startswith(b"HTTP/1.1 " + status), data[:80]
            assert b"Connection: close" in data
        else:
            assert data == b"", data[:80]
        assert earliest_s - 0.3 <= elapsed <= latest_s, (elapsed, data[:40])


def log_lines(server: GunicornServer, pattern: str) -> list[str]:
    return [line for line in server.log().splitlines() if re.search(pattern, line)]


# --- the slow clients ---------------------------------------------------------------------

def test_trickled_headers_stall_nothing_and_are_cut_with_408(server: GunicornServer) -> None:
    # A header line every second: the head never completes (slowloris).
    with slow_clients(server.port, SLOW, b"GET /health/live HTTP/1.1\r\nHost: a\r\n",
                      drip=b"X-Slow: 1\r\n", interval_s=1.0) as slow:
        assert slow.still_open() == SLOW  # all of them hold their connection meanwhile
        times = probes_and_requests_answer(server)
        cut_with(slow, b"408", HEAD_TIMEOUT_S, HEAD_TIMEOUT_S + CUT_MARGIN_S)
    assert max(times) < ANSWER_BOUND_S
    lines = log_lines(server, r"INFO .*slow client 127\.0\.0\.1:\d+: request head not complete")
    assert lines, server.log()[-3000:]
    assert "X-Slow" not in server.log()  # the address and the reason, no request content


def test_trickled_bodies_stall_nothing_and_are_cut_with_408(server: GunicornServer) -> None:
    head = (b"POST /api/interactions/demo-1/questions HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n")
    # A byte a second: below the minimum rate, cut once its grace is over.
    crawling = slow_clients(server.port, SLOW, head % len(QUESTION) + QUESTION[:1],
                            drip=b" ", interval_s=1.0)
    # Fast enough, but a body that cannot be complete before the body deadline.
    steady = slow_clients(server.port, 4, head % 60000 + b"{", drip=b" " * 1000,
                          interval_s=0.25)
    with crawling as slow, steady as long:
        assert slow.still_open() == SLOW  # all of them hold their connection meanwhile
        times = probes_and_requests_answer(server)
        cut_with(slow, b"408", RATE_GRACE_S, RATE_GRACE_S + CUT_MARGIN_S)
        cut_with(long, b"408", BODY_TIMEOUT_S, BODY_TIMEOUT_S + CUT_MARGIN_S)
    assert max(times) < ANSWER_BOUND_S
    assert log_lines(server, r"slow client 127\.0\.0\.1:\d+: request body slower than 1024")
    assert "What is it" not in "\n".join(log_lines(server, "slow client"))


def read_response(sock: socket.socket) -> bytes:
    """Read one whole response (head and Content-Length body) from ``sock``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    while length is not None and len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_idle_connections_stall_nothing_and_are_closed(server: GunicornServer) -> None:
    kept_alive = []
    for _ in range(SLOW):  # one request each, then silence on a kept-alive connection
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        kept_alive.append(sock)
    try:
        with slow_clients(server.port, SLOW, b"") as idle:  # connected, never a byte
            assert idle.still_open() == SLOW
            times = probes_and_requests_answer(server)
            cut_with(idle, b"", HEAD_TIMEOUT_S, HEAD_TIMEOUT_S + CUT_MARGIN_S)
        assert max(times) < ANSWER_BOUND_S
        for sock in kept_alive:  # gunicorn's keep-alive (5 s) closes them, as ever
            sock.settimeout(5 + CUT_MARGIN_S)
            assert sock.recv(65536) == b""
    finally:
        for sock in kept_alive:
            sock.close()


def test_slow_clients_of_every_kind_at_once(server: GunicornServer) -> None:
    head = (b"POST /api/interactions/demo-1/questions HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{")
    with slow_clients(server.port, SLOW, b"GET / HTTP/1.1\r\n", drip=b"X: y\r\n") as heads, \
            slow_clients(server.port, SLOW, head, drip=b" ") as bodies, \
            slow_clients(server.port, SLOW, b"") as idle:
        assert heads.still_open() + bodies.still_open() + idle.still_open() == 3 * SLOW
        times = probes_and_requests_answer(server, rounds=3)
        for clients in (heads, bodies, idle):
            assert clients.wait_all_answered(HEAD_TIMEOUT_S + CUT_MARGIN_S + 2)
    assert max(times) < ANSWER_BOUND_S


def test_clients_that_do_not_read_their_answers_hold_no_thread(server: GunicornServer) -> None:
    # As many as there are threads, each asking for the largest anonymous answer (the OpenAPI
    # document) again and again, with a tiny receive window, and never reading.
    readers = []
    for _ in range(8):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.send(b"GET /openapi.json HTTP/1.1\r\nHost: a\r\n\r\n" * 100)
        readers.append(sock)
    try:
        times = probes_and_requests_answer(server, rounds=3)
        assert max(times) < ANSWER_BOUND_S
        pattern = r"INFO .*slow client 127\.0\.0\.1:\d+: answer not taken within 3 s"
        assert server.wait_until(lambda: len(log_lines(server, pattern)) >= 5,
                                 SEND_TIMEOUT_S + CUT_MARGIN_S + 10), server.log()[-3000:]
    finally:
        for sock in readers:
            sock.close()


# --- what must keep working ---------------------------------------------------------------

def exchange(port: int, data: bytes, read_s: float = 3.0) -> bytes:
    """Send ``data`` on a new connection; return everything received until close/timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as sock:
        sock.sendall(data)
        received = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                received += chunk
        return received


def test_keep_alive_and_pipelining(server: GunicornServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        for _ in range(3):  # one request after another on one connection
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n")
            reply = read_response(sock)
            assert reply.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" in reply
    pipelined = exchange(server.port, b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n"
                         b"GET /health/ready HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert pipelined.count(b"HTTP/1.1 200") == 2


def test_bodies_arrive_whole_chunked_and_after_100_continue(server: GunicornServer) -> None:
    alice = token("alice")["Authorization"].encode()
    head = (b"POST /api/interactions/demo-1/questions HTTP/1.1\r\nHost: a\r\n"
            b"Authorization: " + alice + b"\r\nContent-Type: application/json\r\n")
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part)
                       for part in (QUESTION[:7], QUESTION[7:])) + b"0\r\n\r\n"
    reply = exchange(server.port, head + b"Transfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n" + chunked)
    assert reply.startswith(b"HTTP/1.1 202"), reply[:200]
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head + b"Expect: 100-continue\r\nContent-Length: %d\r\n"
                     b"Connection: close\r\n\r\n" % len(QUESTION))
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(QUESTION)
        reply = read_response(sock)
        assert reply.startswith(b"HTTP/1.1 202") and b"100 Continue" not in reply


def test_bodies_over_the_limit_are_refused(server: GunicornServer) -> None:
    head = (b"POST /api/interactions/demo-1/questions HTTP/1.1\r\nHost: a\r\n"
            b"Content-Type: application/json\r\n")
    big = b'{"question": "' + b"x" * 70000 + b'"}'
    chunked = exchange(server.port, head + b"Transfer-Encoding: chunked\r\n\r\n"
                       + b"%x\r\n%s\r\n0\r\n\r\n" % (len(big), big))
    assert chunked.startswith(b"HTTP/1.1 413"), chunked[:200]
    # A declared length over the limit: the app answers from the header, nothing is read.
    declared = exchange(server.port, head + b"Content-Length: 10000000\r\n\r\n{")
    assert declared.startswith(b"HTTP/1.1 413") and b"Connection: close" in declared


def test_the_limits_are_logged_at_start(server: GunicornServer) -> None:
    assert log_lines(server, r"Using worker: serving\.RequestBufferingWorker")
    assert log_lines(server, r"INFO .*reading requests in the event loop: head within 3 s")


def test_sigterm_drains_with_slow_clients_connected(standin: PythonApiStandIn,
                                                    tmp_path: Path) -> None:
    gunicorn = GunicornServer(tmp_path, server_env(
        standin, HTTP_MAX_CONNECTIONS_PER_CLIENT="100")).start()
    try:
        with slow_clients(gunicorn.port, SLOW, b"GET / HTTP/1.1\r\n", drip=b"X: y\r\n"), \
                slow_clients(gunicorn.port, 20, b""):
            # 100 open from 127.0.0.1: one more is closed at once, another address is served.
            with socket.create_connection(("127.0.0.1", gunicorn.port), timeout=5) as over, \
                    socket.create_connection(("127.0.0.1", gunicorn.port), timeout=5,
                                             source_address=("127.0.0.2", 0)) as other:
                assert over.recv(65536) == b""
                other.sendall(b"GET /health/live HTTP/1.1\r\nHost: a\r\n\r\n")
                assert read_response(other).startswith(b"HTTP/1.1 200")
            started = time.monotonic()
            gunicorn.signal(signal.SIGTERM)
            assert gunicorn.wait_exit(timeout_s=30) == 0
            # Connections that never completed a request do not hold the stop up for long.
            assert time.monotonic() - started < HEAD_TIMEOUT_S + CUT_MARGIN_S + 2
    finally:
        gunicorn.stop()
    assert "Worker exiting" in gunicorn.log()
    assert re.search(r"client 127\.0\.0\.1:\d+: 100 connections from this address",
                     gunicorn.log())


def test_max_requests_restarts_the_worker(standin: PythonApiStandIn, tmp_path: Path) -> None:
    env = server_env(standin, GUNICORN_CMD_ARGS="--max-requests 5")
    gunicorn = GunicornServer(tmp_path, env).start()
    try:
        for _ in range(12):
            reply = gunicorn.request("GET", "/health/live", timeout=30,
                                     headers={"Connection": "close"})
            assert reply.status_code == 200
        assert "Autorestarting worker after current request" in gunicorn.log()
        assert len(log_lines(gunicorn, "Booting worker with pid")) >= 2
    finally:
        gunicorn.stop()


def test_the_image_ships_the_worker_module() -> None:
    config = (REPO / "gunicorn.conf.py").read_text()
    module = re.search(r'^worker_class = "([a-z_]+)\.', config, re.MULTILINE)
    assert module is not None
    copied = " ".join(line for line in (REPO / "Dockerfile").read_text().splitlines()
                      if line.startswith("COPY "))
    assert f"{module.group(1)}.py" in copied.split()
