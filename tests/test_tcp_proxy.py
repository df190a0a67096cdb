"""The fault-injection TCP proxy of tests/tcp_proxy.py, with real sockets on 127.0.0.1.

Against a tiny echo server: forwarding both ways (FIN included), a black hole that answers
nothing yet closes nothing, heal, cut (RST on both sides), stop. Against the real PostgreSQL
of tests/pg_server.py: a query through a black hole never returns, not even with aggressive
TCP keepalives, ``tcp_user_timeout`` and a ``statement_timeout``; ``cut()`` ends it.

Proving that nothing arrives needs a wait; those waits are short and bounded (``SILENCE_S``),
everything else waits on what it expects to see.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, Self

import psycopg
import pytest

from tests import pg_server
from tests.tcp_proxy import TcpProxy

pg_base_url = pg_server.pg_base_url

WAIT_S = 5.0
"""How long to wait for something that should happen."""

SILENCE_S = 0.3
"""How long to listen for an answer that must not come."""

HANG_S = 3.0
"""How long a black-holed PostgreSQL query must stay unanswered: longer than every detector
the test configures (keepalives after ~2 s, tcp_user_timeout 1 s, statement_timeout 0.2 s)."""


class EchoServer:
    """A threaded echo server on 127.0.0.1 counting connections, bytes, EOFs and resets."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)  # the accept loop checks for stop this often
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self.accepted = self.open = self.received = self.eofs = self.resets = 0

    def __enter__(self) -> Self:
        thread = threading.Thread(target=self._accept_loop, name="EchoServer", daemon=True)
        self._threads.append(thread)
        thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        with self._cond:
            socks = list(self._socks)
        for sock in socks:  # wakes the handlers blocked in recv
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in list(self._threads):
            thread.join(WAIT_S)
        self._listener.close()

    def wait_for(self, predicate: Callable[[EchoServer], bool], timeout: float = WAIT_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            with self._cond:
                self._socks.add(sock)
                self.accepted += 1
                self.open += 1
                self._cond.notify_all()
            thread = threading.Thread(target=self._echo, args=(sock,), name="EchoServer-conn",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _echo(self, sock: socket.socket) -> None:
        outcome = None
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    outcome = "eofs"
                    return
                with self._cond:
                    self.received += len(data)
                    self._cond.notify_all()
                sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            outcome = "resets"
        except OSError:
            pass
        finally:
            sock.close()
            with self._cond:
                self._socks.discard(sock)
                self.open -= 1
                if outcome:
                    setattr(self, outcome, getattr(self, outcome) + 1)
                self._cond.notify_all()


class Background:
    """Run ``call`` on a daemon thread, keeping its result or its exception."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), name="Background",
                                       daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:
            self.error = exc


@pytest.fixture(autouse=True)
def _no_proxy_thread_left() -> Iterator[None]:
    yield
    alive = [t.name for t in threading.enumerate() if t.name.startswith("TcpProxy")]
    assert not alive, f"proxy threads left running: {alive}"


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with EchoServer() as server:
        yield server


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(echo.address) as started:
        yield started


def connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=WAIT_S)


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = bytearray()
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        assert chunk, f"EOF after {len(data)} of {count} bytes"
        data += chunk
    return bytes(data)


def round_trip(sock: socket.socket, payload: bytes = b"ping") -> None:
    sock.sendall(payload)
    assert recv_exactly(sock, len(payload)) == payload


def assert_silent(sock: socket.socket) -> None:
    """Nothing arrives within SILENCE_S: no byte, no EOF, no reset; the socket stays open."""
    sock.settimeout(SILENCE_S)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return
    finally:
        sock.settimeout(WAIT_S)
    raise AssertionError(f"expected silence, got {data!r}" if data else "expected silence, got EOF")


def test_forwards_both_ways_byte_for_byte_and_passes_the_fin_on(
        echo: EchoServer, proxy: TcpProxy) -> None:
    assert proxy.address == ("127.0.0.1", proxy.port) and proxy.port > 0
    assert proxy.url == f"tcp://127.0.0.1:{proxy.port}"
    payload = os.urandom(4 * 1024 * 1024)  # far more than the socket buffers hold
    with connect(proxy) as client:
        round_trip(client)
        sender = Background(lambda: client.sendall(payload))
        assert recv_exactly(client, len(payload)) == payload
        sender.thread.join(WAIT_S)
        assert sender.error is None
        assert proxy.connections == 1 and echo.open == 1
        client.shutdown(socket.SHUT_WR)  # the echo server sees EOF, closes: the client sees EOF
        assert client.recv(1) == b""
    assert echo.wait_for(lambda e: e.eofs == 1)
    assert proxy.wait_for(lambda p: p.connections == 0)
    assert proxy.accepted == 1
    assert proxy.bytes_forwarded == 2 * (4 + len(payload))


def test_black_hole_answers_nothing_closes_nothing_and_heal_delivers_what_it_held(
        echo: EchoServer, proxy: TcpProxy) -> None:
    with connect(proxy) as client:
        round_trip(client)
        proxy.blackhole()
        assert proxy.black_holed and proxy.accepting
        forwarded, received = proxy.bytes_forwarded, echo.received
        client.sendall(b"are you there?")
        assert_silent(client)  # no answer, and neither EOF nor reset
        assert proxy.bytes_forwarded == forwarded and echo.received == received
        assert proxy.connections == 1 and echo.open == 1  # open at both ends
        assert echo.eofs == echo.resets == 0

        proxy.heal()
        assert not proxy.black_holed
        assert recv_exactly(client, 14) == b"are you there?"  # held, in order, not dropped
        round_trip(client)


def test_connections_made_in_a_black_hole_are_accepted_but_reach_nothing(
        echo: EchoServer, proxy: TcpProxy) -> None:
    proxy.blackhole()
    with connect(proxy) as client:  # the handshake with the proxy succeeds
        assert proxy.wait_for(lambda p: p.accepted == 1 and p.connections == 1)
        client.sendall(b"hello")
        assert_silent(client)
        assert echo.accepted == 0  # not even a connection reached the target
        proxy.heal()
        assert recv_exactly(client, 5) == b"hello"
        assert echo.accepted == 1
    with connect(proxy) as again:
        round_trip(again)


def test_black_hole_without_accept_leaves_new_connections_in_the_backlog(
        proxy: TcpProxy) -> None:
    with connect(proxy) as before:
        round_trip(before)
        proxy.blackhole(accept=False)
        assert not proxy.accepting
        with connect(proxy) as queued:  # the kernel completes the handshake; nobody accepts
            assert not proxy.wait_for(lambda p: p.accepted > 1, timeout=SILENCE_S)
            queued.sendall(b"queued")
            assert_silent(before)
            proxy.heal()
            assert proxy.wait_for(lambda p: p.accepted == 2)
            assert recv_exactly(queued, 6) == b"queued"
            round_trip(before)


def test_controls_interleaved_with_a_stream_lose_and_reorder_nothing(proxy: TcpProxy) -> None:
    payload = os.urandom(4 * 1024 * 1024)
    total = 2 * len(payload)
    with connect(proxy) as client:
        sender = Background(lambda: client.sendall(payload))
        reader = Background(lambda: recv_exactly(client, len(payload)))
        for _ in range(10):
            proxy.blackhole()
            held = proxy.bytes_forwarded
            assert not proxy.wait_for(lambda p, held=held: p.bytes_forwarded != held,
                                      timeout=SILENCE_S / 10), "forwarded while black-holed"
            proxy.heal()
            assert proxy.wait_for(lambda p, held=held: p.bytes_forwarded > held or held == total)
        reader.thread.join(WAIT_S)
        sender.thread.join(WAIT_S)
        assert sender.error is None and reader.error is None
        assert reader.result == payload


def test_cut_resets_every_connection_on_both_sides_black_holed_or_not(
        echo: EchoServer, proxy: TcpProxy) -> None:
    with connect(proxy) as first, connect(proxy) as second:
        round_trip(first)
        round_trip(second)
        assert echo.wait_for(lambda e: e.open == 2)
        proxy.blackhole()  # a cut reaches held connections too
        proxy.cut()
        assert proxy.connections == 0
        for client in (first, second):
            with pytest.raises(ConnectionResetError):
                client.recv(1)
        assert echo.wait_for(lambda e: e.resets == 2 and e.open == 0)
    proxy.heal()
    with connect(proxy) as after:  # only the connections of the moment were cut
        round_trip(after)
        proxy.cut()
        with pytest.raises(ConnectionResetError):
            after.recv(1)
    with connect(proxy) as last:
        round_trip(last)


def test_stop_closes_everything_and_leaves_no_thread_behind(echo: EchoServer) -> None:
    proxy = TcpProxy(echo.address).start()
    name = f"TcpProxy-{proxy.port}"
    assert name in [t.name for t in threading.enumerate()]
    with connect(proxy) as client:
        round_trip(client)
        proxy.blackhole()  # stop does not wait for held connections
        proxy.stop()
        assert client.recv(1) == b""  # closed with FIN
        assert echo.wait_for(lambda e: e.open == 0 and e.eofs == 1)  # the target's side too
    assert name not in [t.name for t in threading.enumerate()]
    assert proxy.connections == 0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=WAIT_S).close()
    proxy.stop()  # idempotent
    proxy.heal()  # controls after stop are no-ops and never hang
    proxy.cut()


def test_route_and_for_url() -> None:
    made = TcpProxy.for_url("postgresql://u:p%40ss@localhost:6543/app?sslmode=disable")
    assert made.target == ("localhost", 6543)
    assert TcpProxy.for_url("postgresql://db.example/app", default_port=5432).target == (
        "db.example", 5432)
    with pytest.raises(ValueError, match="no TCP host"):
        TcpProxy.for_url("postgresql:///app?host=/var/run/postgresql", default_port=5432)
    with made:
        assert made.route("postgresql://u:p%40ss@localhost:6543/app?sslmode=disable") == (
            f"postgresql://u:p%40ss@127.0.0.1:{made.port}/app?sslmode=disable")
        assert made.route("postgresql://db.example/app") == (
            f"postgresql://127.0.0.1:{made.port}/app")


# --- against the real PostgreSQL ----------------------------------------------------------

@pytest.fixture
def pg_proxy(pg_base_url: str) -> Iterator[TcpProxy]:
    with TcpProxy.for_url(pg_base_url, default_port=5432) as proxy:
        yield proxy


def test_postgres_query_through_a_black_hole_never_returns_until_heal(
        pg_proxy: TcpProxy, pg_base_url: str) -> None:
    # Every detector below would fire within HANG_S on a real partition; through the proxy,
    # whose kernel still acknowledges bytes and keepalive probes, none does.
    with psycopg.connect(pg_proxy.route(pg_base_url), autocommit=True, connect_timeout=5,
                         keepalives=1, keepalives_idle=1, keepalives_interval=1,
                         keepalives_count=1, tcp_user_timeout=1000,
                         options="-c statement_timeout=200") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        pg_proxy.blackhole()
        query = Background(lambda: conn.execute("SELECT 1").fetchone())
        query.thread.join(HANG_S)
        assert query.thread.is_alive(), f"returned while black-holed: {query.error!r}"
        assert pg_proxy.connections == 1

        pg_proxy.heal()  # the held query reaches the server at last
        query.thread.join(WAIT_S)
        assert query.error is None and query.result == (1,)


def test_postgres_cut_fails_a_hung_query_at_once(pg_proxy: TcpProxy, pg_base_url: str) -> None:
    url = pg_proxy.route(pg_base_url)
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        pg_proxy.blackhole()
        query = Background(lambda: conn.execute("SELECT 1").fetchone())
        query.thread.join(SILENCE_S)
        assert query.thread.is_alive(), f"returned while black-holed: {query.error!r}"
        pg_proxy.cut()
        query.thread.join(WAIT_S)
        assert not query.thread.is_alive()
        assert isinstance(query.error, psycopg.OperationalError), query.error
        assert conn.broken
    pg_proxy.heal()
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as again:
        assert again.execute("SELECT 1").fetchone() == (1,)
