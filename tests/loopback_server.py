"""Server machinery shared by the test stand-ins: a threaded HTTP server on 127.0.0.1.

``LoopbackServer`` owns the ``ThreadingHTTPServer``, its serve thread and one thread per
connection, tracked so that ``stop()`` can shut every socket down and join with a deadline
instead of hanging on a client that keeps a connection open. ``LoopbackHandler`` is the
request handler base: HTTP/1.1 keep-alive, TCP_NODELAY, body reading and response heads.
Only the standard library is used, so a stand-in cannot share a bug with the client under test.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Self

STOP_JOIN_S = 5.0
"""How long stop() waits, in all, for the serve thread and the connection threads to end."""


class _HTTPServer(ThreadingHTTPServer):
    """The socket server of one LoopbackServer; it reports its connections to the owner."""

    daemon_threads = True
    block_on_close = False  # stop() shuts connections down and joins with a deadline instead

    def __init__(self, address: tuple[str, int], handler: type[LoopbackHandler],
                 owner: LoopbackServer) -> None:
        self.owner = owner
        super().__init__(address, handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), slow in some sandboxes.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request: Any, client_address: Any) -> None:
        # Tracked here, in the accept loop, so stop() sees every connection once shutdown() returns.
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address),
                                  name=f"{self.owner.thread_name}-{self.server_port}-conn",
                                  daemon=True)
        self.owner._track(request, thread)
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.owner._untrack(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away is its own business, not a stand-in failure worth a traceback.
        if not isinstance(sys.exc_info()[1], OSError):
            self.owner.logger.exception("%s failed on a request from %s", self.owner.label,
                                        client_address)


class LoopbackHandler(BaseHTTPRequestHandler):
    """Request handler base: keep-alive, no Nagle, access log to the owner's logger."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the clients' pooled requests.Session expects
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid delayed-ACK stalls
    log_level: ClassVar[int] = logging.INFO
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        self.server.owner.logger.log(self.log_level, "%s %s", self.address_string(),
                                     format % args)

    def read_body(self) -> bytes:
        """Read the request body by Content-Length; a bad length reads nothing and closes."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length, self.close_connection = 0, True
        # Always read the whole body, or the next request on this keep-alive connection is garbage.
        return self.rfile.read(length) if length > 0 else b""

    def send_head(self, status: int, length: int, headers: Mapping[str, str] | None = None,
                  content_type: str | None = "application/json") -> None:
        """Send the status line and headers of a response whose body is length bytes."""
        self.send_response(status)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()


class LoopbackServer:
    """A server on a background thread with start/stop, port/url and a Condition to wait on.

    Subclasses set ``handler`` (a LoopbackHandler subclass; its ``self.server.owner`` is the
    LoopbackServer), ``thread_name``, ``label`` and ``logger``, and may extend ``_on_stop``
    to wake their own waits. ``_cond`` guards their state and is notified on every change;
    ``_stop_event`` is set once, by stop().
    """

    handler: ClassVar[type[LoopbackHandler]] = LoopbackHandler
    thread_name: ClassVar[str] = "LoopbackServer"
    label: ClassVar[str] = "loopback server"
    logger: ClassVar[logging.Logger] = logging.getLogger(__name__)

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._address = (host, port)
        self._cond = threading.Condition(threading.RLock())  # predicates re-enter the accessors
        self._stop_event = threading.Event()  # set once, by stop(); interrupts every wait
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: dict[Any, threading.Thread] = {}

    def start(self) -> Self:
        """Bind and serve on a background thread; returns self. A server starts only once."""
        with self._cond:
            if self._server is not None:
                raise RuntimeError(f"{self.label} already started")
            self._server = _HTTPServer(self._address, self.handler, self)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        name=f"{self.thread_name}-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Release held requests and every wait, shut down, join; idempotent, never hangs."""
        with self._cond:
            if self._server is None or self._stop_event.is_set():
                return
            self._stop_event.set()
            self._on_stop()
            self._cond.notify_all()
        self._server.shutdown()  # no accept after this, so the snapshot below is complete
        with self._cond:
            connections = dict(self._connections)
        for sock in connections:
            # Wakes handler threads blocked reading the next request of a keep-alive connection.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._server.server_close()
        deadline = time.monotonic() + STOP_JOIN_S
        for thread in [self._thread, *connections.values()]:
            if thread is not None:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _on_stop(self) -> None:
        """Release what the subclass holds; called once by stop(), under the lock."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port once started, else the requested one."""
        return self._server.server_address[1] if self._server else self._address[1]

    @property
    def url(self) -> str:
        """Base URL such as "http://127.0.0.1:5001"."""
        return f"http://{self._address[0]}:{self.port}"

    def wait_for(self, predicate: Callable[[Self], bool], timeout: float = 5.0) -> bool:
        """Block until predicate(self) holds, re-checked on every request and control change."""
        with self._cond:
            return bool(self._cond.wait_for(lambda: predicate(self), timeout))

    def _track(self, sock: Any, thread: threading.Thread) -> None:
        with self._cond:
            self._connections[sock] = thread

    def _untrack(self, sock: Any) -> None:
        with self._cond:
            self._connections.pop(sock, None)
