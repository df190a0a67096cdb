"""A TCP proxy on 127.0.0.1 for fault-injection tests: forward, black-hole, heal, cut.

``TcpProxy`` listens on 127.0.0.1 (a free port by default) and forwards every connection it
accepts to a target ``(host, port)``, byte for byte both ways, FIN for FIN and RST for RST.
Its controls take effect at once on existing and new connections, from any thread:

- ``blackhole()``: nothing crosses any more, in either direction, and every connection stays
  open (no FIN, no RST). The fault of a network partition, or of a half-open connection to a
  peer that vanished: the client's requests get no answer and nothing tells it why.
- ``heal()``: forward again.
- ``cut()``: reset every current connection (RST, by SO_LINGER 0) on both sides.

How a black hole behaves, exactly. The proxy stops reading and writing: bytes sent by either
side stay unread in the proxy's socket buffers (and in what it had read but not yet written);
none is dropped. Once those buffers are full the sender's TCP window closes and its writes
block, as against a peer that never acknowledges. New connections are still accepted (the
SYNs of a partitioned client still succeed), but no connection to the target is even opened
until ``heal()``; ``blackhole(accept=False)`` stops accepting as well, so new connections
wait in the listen backlog (the kernel completes their handshake until the backlog is full).
``heal()`` delivers the held bytes in order, as TCP retransmission does once a real partition
heals, and opens the target connections still missing; an endpoint that gave up meanwhile
has closed its side, and that close is forwarded after the held bytes.

What a user-space proxy cannot model: the proxy's kernel still acknowledges what it receives
(up to its buffers) and answers TCP keepalive probes. So ``keepalives*`` and
``tcp_user_timeout`` on the client's socket do not detect a black hole here (the tests show
it with psycopg); only timeouts above TCP do (a client-side read timeout, application-level
heartbeats), or ``cut()``. Dropping the held bytes instead would corrupt the stream, which
no network does to a TCP connection that survives.

All socket work happens on one I/O thread with non-blocking sockets, so ``stop()`` never hangs
on a connection, and a control returns only once that thread has adopted it: after
``blackhole()`` returns, not one more byte is forwarded. Only the standard library is used,
so the proxy cannot share a bug with the client under test.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit, urlunsplit

STOP_JOIN_S = 5.0
"""How long stop() waits for the I/O thread to close everything and end."""

CONTROL_WAIT_S = 5.0
"""How long a control waits for the I/O thread to adopt it before raising TimeoutError."""

CHUNK = 65536
"""The most bytes read from a socket at once."""

BUFFER_LIMIT = 262144
"""Bytes read from one side and not yet written to the other above which reading pauses."""

_RESET_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, not FIN


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_LINGER)
    sock.close()


class _Pipe:
    """One direction of a connection: bytes read from ``src`` and not yet written to ``dst``."""

    def __init__(self, src: socket.socket | None, dst: socket.socket | None) -> None:
        self.src = src
        self.dst = dst
        self.buffer = bytearray()
        self.eof = False  # src sent FIN
        self.shut = False  # the FIN was passed on: dst shut down for writing


class _Connection:
    """An accepted client and its connection to the target (opened when forwarding)."""

    def __init__(self, client: socket.socket, peer: object) -> None:
        self.client = client
        self.peer = peer
        self.upstream: socket.socket | None = None
        self.connected = False  # the upstream connect completed
        self.up = _Pipe(client, None)  # client -> target
        self.down = _Pipe(None, client)  # target -> client

    def sockets(self) -> list[socket.socket]:
        return [self.client] if self.upstream is None else [self.client, self.upstream]

    def attach(self, upstream: socket.socket) -> None:
        self.upstream = upstream
        self.up.dst = upstream
        self.down.src = upstream

    def interest(self, sock: socket.socket) -> int:
        """The selector events ``sock`` waits for while forwarding."""
        if sock is self.upstream and not self.connected:
            return selectors.EVENT_WRITE  # the non-blocking connect completes when writable
        events = 0
        for pipe in (self.up, self.down):
            if not self.connected and pipe is self.down:
                continue
            if pipe.src is sock and not pipe.eof and len(pipe.buffer) < BUFFER_LIMIT:
                events |= selectors.EVENT_READ
            if pipe.dst is sock and pipe.buffer and self.connected:
                events |= selectors.EVENT_WRITE
        return events

    def finished(self) -> bool:
        return self.up.shut and self.down.shut


class TcpProxy:
    """A TCP proxy from 127.0.0.1 to ``target`` with fault controls (a context manager).

    Controls (thread-safe, effective at once, each returning once applied): ``blackhole()``,
    ``heal()``, ``cut()``. Observables: ``connections``, ``accepted``, ``bytes_forwarded``,
    ``black_holed``, ``accepting``, and ``wait_for(predicate)``, re-checked on every change.
    """

    thread_name: ClassVar[str] = "TcpProxy"
    label: ClassVar[str] = "TCP proxy"
    logger: ClassVar[logging.Logger] = logging.getLogger(__name__)

    def __init__(self, target: tuple[str, int], host: str = "127.0.0.1", port: int = 0, *,
                 backlog: int = 16) -> None:
        self.target = target
        self._address = (host, port)
        self._backlog = backlog
        self._cond = threading.Condition(threading.RLock())  # predicates re-enter the accessors
        self._stop_event = threading.Event()  # set once, by stop()
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._target_addr: tuple[socket.AddressFamily, Any] | None = None  # resolved at start
        self._bound_port: int | None = None
        # Guarded by _cond: the controls, and what the I/O thread publishes.
        self._forwarding = True
        self._accepting = True
        self._cuts = 0  # cut() calls so far
        self._epoch = 0  # control calls so far
        self._applied = 0  # the last epoch the I/O thread adopted
        self._running = False
        self._failure: BaseException | None = None
        self._open = 0
        self._accepted = 0
        self._bytes = 0
        # Owned by the I/O thread.
        self._conns: list[_Connection] = []
        self._selector: selectors.BaseSelector | None = None
        self._registered: dict[socket.socket, int] = {}
        self._accepted_io = 0
        self._bytes_io = 0

    @classmethod
    def for_url(cls, url: str, host: str = "127.0.0.1", port: int = 0, *,
                default_port: int | None = None, backlog: int = 16) -> Self:
        """A proxy to the host and port of ``url`` (``default_port`` when it names none)."""
        parts = urlsplit(url)
        target_port = parts.port or default_port
        if not parts.hostname or target_port is None:
            raise ValueError(f"no TCP host and port in {url!r}")
        return cls((parts.hostname, target_port), host, port, backlog=backlog)

    def __repr__(self) -> str:
        return f"<TcpProxy {self.url} -> {self.target[0]}:{self.target[1]}>"

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind, listen and forward on a background thread; returns self. Starts only once."""
        with self._cond:
            if self._thread is not None:
                raise RuntimeError(f"{self.label} already started")
            infos = socket.getaddrinfo(*self.target, type=socket.SOCK_STREAM)
            self._target_addr = (infos[0][0], infos[0][4])
            family = socket.AF_INET6 if ":" in self._address[0] else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(self._address)
                listener.listen(self._backlog)
                listener.setblocking(False)
                self._wake_r, self._wake_w = socket.socketpair()
            except BaseException:
                listener.close()
                raise
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self._listener = listener
            self._bound_port = int(listener.getsockname()[1])
            self._running = True
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"{self.thread_name}-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the listener and every connection (FIN), join the thread; idempotent."""
        with self._cond:
            if self._thread is None or self._stop_event.is_set():
                return
            self._stop_event.set()
            self._cond.notify_all()
        self._wake()
        self._thread.join(STOP_JOIN_S)
        if self._thread.is_alive():  # pragma: no cover - the I/O thread never blocks
            self.logger.error("%s: I/O thread still running after %gs", self.label, STOP_JOIN_S)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- controls ----------------------------------------------------------------------------

    def blackhole(self, *, accept: bool = True) -> None:
        """Forward nothing more, either way, leaving every connection open.

        With ``accept=False`` new connections are not accepted either: they wait in the
        listen backlog until ``heal()``.
        """
        self._control(forwarding=False, accepting=accept)

    def heal(self) -> None:
        """Forward again (the held bytes first) and accept again."""
        self._control(forwarding=True, accepting=True)

    def cut(self) -> None:
        """Reset every current connection, on the client's and on the target's side."""
        self._control(cut=True)

    def _control(self, *, forwarding: bool | None = None, accepting: bool | None = None,
                 cut: bool = False) -> None:
        with self._cond:
            if forwarding is not None:
                self._forwarding = forwarding
            if accepting is not None:
                self._accepting = accepting
            self._cuts += cut
            self._epoch += 1
            epoch, running = self._epoch, self._running
            self._cond.notify_all()
        if not running:  # not started (adopted at start) or stopped (nothing left to affect)
            return
        self._wake()
        with self._cond:
            adopted = self._cond.wait_for(lambda: self._applied >= epoch or not self._running,
                                          CONTROL_WAIT_S)
            if self._failure is not None:
                raise RuntimeError(f"{self.label} I/O thread failed") from self._failure
            if not adopted:
                raise TimeoutError(f"{self.label} did not apply a control in {CONTROL_WAIT_S}s")

    # --- observables -------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """The listening (host, port): the bound port once started, else the requested one."""
        return self._address[0], self.port

    @property
    def port(self) -> int:
        """The bound port once started, else the requested one."""
        return self._address[1] if self._bound_port is None else self._bound_port

    @property
    def url(self) -> str:
        """Such as "tcp://127.0.0.1:5001"; ``route()`` makes a client's URL go through here."""
        return f"tcp://{self._netloc()}"

    def route(self, url: str) -> str:
        """Return ``url`` with its host and port replaced by the proxy's (the rest is kept)."""
        parts = urlsplit(url)
        userinfo, at, _ = parts.netloc.rpartition("@")
        return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{self._netloc()}"))

    def _netloc(self) -> str:
        host = self._address[0]
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def connections(self) -> int:
        """Connections accepted and not yet closed (black-holed ones included)."""
        with self._cond:
            return self._open

    @property
    def accepted(self) -> int:
        """Connections accepted since start."""
        with self._cond:
            return self._accepted

    @property
    def bytes_forwarded(self) -> int:
        """Bytes written on to the other side so far, both directions together."""
        with self._cond:
            return self._bytes

    @property
    def black_holed(self) -> bool:
        """True between blackhole() and heal()."""
        with self._cond:
            return not self._forwarding

    @property
    def accepting(self) -> bool:
        """False between blackhole(accept=False) and heal()."""
        with self._cond:
            return self._accepting

    def wait_for(self, predicate: Callable[[Self], bool], timeout: float = 5.0) -> bool:
        """Block until predicate(self) holds, re-checked whenever the I/O thread publishes."""
        with self._cond:
            return bool(self._cond.wait_for(lambda: predicate(self), timeout))

    # --- the I/O thread ----------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # full (a wake is pending anyway) or closed (stopped)
            assert self._wake_w is not None
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        assert self._listener is not None and self._wake_r is not None
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        with self._cond:
            cuts_done = self._cuts
        try:
            while True:
                with self._cond:
                    stopping = self._stop_event.is_set()
                    forwarding, accepting = self._forwarding, self._accepting
                    cuts, epoch = self._cuts, self._epoch
                if stopping:
                    break
                if cuts != cuts_done:
                    for conn in self._conns:
                        self._close(conn, reset=True)
                    self._conns.clear()
                    cuts_done = cuts
                if forwarding:
                    for conn in [c for c in self._conns if c.upstream is None]:
                        self._connect(conn)
                self._publish(epoch)  # from here on, only the adopted controls apply
                self._watch(self._listener, selectors.EVENT_READ if accepting else 0)
                for conn in self._conns:
                    for sock in conn.sockets():
                        self._watch(sock, conn.interest(sock) if forwarding else 0)
                for key, events in self._selector.select():
                    if key.fileobj is self._wake_r:
                        self._drain_wake()
                    elif key.fileobj is self._listener:
                        self._accept(forwarding)
                    else:
                        self._service(key.data, key.fileobj, events)  # type: ignore[arg-type]
                for conn in [c for c in self._conns if c.finished()]:
                    self._close(conn, reset=False)
                    self._conns.remove(conn)
        except BaseException as exc:
            self.logger.exception("%s: I/O thread failed", self.label)
            with self._cond:
                self._failure = exc
        finally:
            self._selector.close()
            self._registered.clear()
            for conn in self._conns:
                for sock in conn.sockets():
                    sock.close()
            self._conns.clear()
            for sock in (self._listener, self._wake_r, self._wake_w):
                if sock is not None:
                    sock.close()
            with self._cond:
                self._running = False
                self._open = 0
                self._cond.notify_all()

    def _publish(self, epoch: int) -> None:
        with self._cond:
            self._applied = epoch
            self._open = len(self._conns)
            self._accepted = self._accepted_io
            self._bytes = self._bytes_io
            self._cond.notify_all()

    def _watch(self, sock: socket.socket, events: int) -> None:
        """Make the selector wait for ``events`` on ``sock`` (0: not at all)."""
        assert self._selector is not None
        current = self._registered.get(sock, 0)
        if events == current:
            return
        if not events:
            self._selector.unregister(sock)
            del self._registered[sock]
            return
        data = next((c for c in self._conns if sock in c.sockets()), None)
        if current:
            self._selector.modify(sock, events, data)
        else:
            self._selector.register(sock, events, data)
        self._registered[sock] = events

    def _forget(self, sock: socket.socket) -> None:
        if sock in self._registered:
            self._watch(sock, 0)

    def _drain_wake(self) -> None:
        assert self._wake_r is not None
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass

    def _accept(self, forwarding: bool) -> None:
        assert self._listener is not None
        for _ in range(64):  # then let the other sockets have a turn
            try:
                client, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # a client that reset in the backlog, out of files, ...
                if exc.errno not in (errno.ECONNABORTED, errno.EPROTO):
                    self.logger.warning("%s: accept failed: %s", self.label, exc)
                    return
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Connection(client, peer)
            self._conns.append(conn)
            self._accepted_io += 1
            if forwarding:
                self._connect(conn)

    def _connect(self, conn: _Connection) -> None:
        """Start the non-blocking connect to the target; the selector reports its end."""
        assert self._target_addr is not None
        family, sockaddr = self._target_addr
        upstream = socket.socket(family, socket.SOCK_STREAM)
        upstream.setblocking(False)
        conn.attach(upstream)
        result = upstream.connect_ex(sockaddr)
        if result == 0:
            self._connected(conn)
        elif result not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            self._refused(conn, result)

    def _connected(self, conn: _Connection) -> None:
        assert conn.upstream is not None
        conn.connected = True
        conn.upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._settle(conn)  # a client that already closed: pass its FIN on

    def _refused(self, conn: _Connection, error: int) -> None:
        self.logger.warning("%s: connecting to %s:%s failed: %s; resetting the client %s",
                            self.label, *self.target, errno.errorcode.get(error, error), conn.peer)
        self._abort(conn)

    def _service(self, conn: _Connection, sock: socket.socket, events: int) -> None:
        if conn not in self._conns:  # aborted earlier in this round
            return
        if sock is conn.upstream and not conn.connected:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._refused(conn, error)
            else:
                self._connected(conn)
            return
        try:
            for pipe in (conn.up, conn.down):
                if events & selectors.EVENT_READ and pipe.src is sock and not pipe.eof:
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        data = sock.recv(CHUNK)
                        pipe.buffer += data
                        pipe.eof = not data
                if events & selectors.EVENT_WRITE and pipe.dst is sock and pipe.buffer:
                    with contextlib.suppress(BlockingIOError, InterruptedError):
                        sent = sock.send(pipe.buffer)
                        del pipe.buffer[:sent]
                        self._bytes_io += sent
            self._settle(conn)
        except OSError:  # reset by one side: reset the other too
            self._abort(conn)

    def _settle(self, conn: _Connection) -> None:
        """Pass a FIN on once everything read before it has been written."""
        if not conn.connected:
            return
        for pipe in (conn.up, conn.down):
            if pipe.eof and not pipe.buffer and not pipe.shut:
                assert pipe.dst is not None
                with contextlib.suppress(OSError):  # the other side is gone already
                    pipe.dst.shutdown(socket.SHUT_WR)
                pipe.shut = True

    def _abort(self, conn: _Connection) -> None:
        self._close(conn, reset=True)
        with contextlib.suppress(ValueError):
            self._conns.remove(conn)

    def _close(self, conn: _Connection, *, reset: bool) -> None:
        for sock in conn.sockets():
            self._forget(sock)
            if reset:
                _reset(sock)
            else:
                sock.close()
