"""The request reading of ``serving.RequestBufferingWorker``, without a server.

What the event loop decides from the bytes so far: where a head ends, how its body is
framed, where a chunked body ends, when a request is due to be cut and why. The worker itself
runs under real gunicorn in ``test_e2e_slow_clients.py``.
"""

from __future__ import annotations

from typing import Any

import pytest

import serving
from serving import (
    CHUNKED,
    INVALID,
    LENGTH,
    MORE,
    NONE,
    READY,
    ChunkScanner,
    CutLog,
    Framing,
    Incoming,
    Refusal,
    SlowClientLimits,
    error_response,
    parse_framing,
)

LIMITS = SlowClientLimits(head_timeout_s=10, body_timeout_s=30, body_min_rate=1000)


@pytest.mark.parametrize(("head", "framing"), [
    (b"GET / HTTP/1.1\r\nHost: a", Framing(NONE)),
    (b"POST / HTTP/1.1\r\nContent-Length: 12", Framing(LENGTH, 12)),
    (b"POST / HTTP/1.1\r\ncontent-length:  0 ", Framing(NONE)),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked", Framing(CHUNKED)),
    (b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 3",
     Framing(LENGTH, 3, expects_continue=True)),
    (b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3", Framing(LENGTH, 3)),
    (b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nTransfer-Encoding: chunked",
     Framing(CHUNKED, expects_continue=True)),
    # What gunicorn's parser refuses: the head alone goes to it, it answers the error.
    (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1", Framing(INVALID)),
    (b"POST / HTTP/1.1\r\nContent-Length: -1", Framing(INVALID)),
    (b"POST / HTTP/1.1\r\nContent-Length: 0x10", Framing(INVALID)),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked", Framing(INVALID)),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip", Framing(INVALID)),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
     Framing(INVALID)),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked", Framing(INVALID)),
    (b"POST / HTTP/1.1\r\nExpect: 200-ok", Framing(INVALID)),
    (b"POST / HTTP/1.1\r\nno colon here", Framing(INVALID)),
])
def test_body_framing(head: bytes, framing: Framing) -> None:
    assert parse_framing(head) == framing


def chunked(*parts: bytes, trailer: bytes = b"") -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n" + trailer + b"\r\n"


@pytest.mark.parametrize("body", [
    chunked(b"hello", b" world"),
    chunked(b"x" * 300, trailer=b"X-Check: 1\r\n"),
    b"5;name=value\r\nhello\r\n0\r\n\r\n",
    chunked(),
])
def test_a_chunked_body_ends_where_it_ends_however_it_arrives(body: bytes) -> None:
    data = body + b"GET /next HTTP/1.1\r\n\r\n"  # a pipelined request follows
    scanner = ChunkScanner(0, max_body=1000, max_line=100)
    buf = bytearray()
    ends = []
    for byte in data:  # one byte at a time
        buf.append(byte)
        end = scanner.scan(buf)
        if end >= 0:
            ends.append((end, len(buf)))
            break
    assert ends == [(len(body), len(body))]
    whole = ChunkScanner(0, max_body=1000, max_line=100)
    assert whole.scan(bytearray(data)) == len(body)


@pytest.mark.parametrize(("body", "status"), [
    (b"zz\r\n", 400),
    (b"5\r\nhelloXX", 400),
    (b"\r\n", 400),
    (b"1" * 200, 400),
    (b"3e9\r\n", 413),  # 1001 bytes announced: refused before they arrive
    (chunked(b"x" * 600, b"y" * 600), 413),
])
def test_chunked_bodies_refused(body: bytes, status: int) -> None:
    with pytest.raises(Refusal) as refused:
        ChunkScanner(0, max_body=1000, max_line=100).scan(bytearray(body))
    assert refused.value.status == status


def incoming(data: bytes = b"", now: float = 0.0, max_body: int = 1000) -> Incoming:
    request = Incoming(conn=None, now=now, prefix=data, limits=LIMITS, max_body=max_body,
                       max_line=8190)
    return request


def test_a_head_is_complete_at_its_blank_line() -> None:
    request = incoming()
    for piece in (b"\r\n", b"GET / HTTP/1.1\r\n", b"Host: a\r", b"\n\r\nGET /next"):
        assert request.head_end < 0
        request.buf += piece
        state = request.feed(1.0)
    assert state == READY and request.end == request.head_end
    assert request.replay() == b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next"


def test_a_body_is_read_whole_and_the_deadline_follows_its_rate() -> None:
    request = incoming(b"POST / HTTP/1.1\r\nContent-Length: 2000\r\n\r\n", now=0.0,
                       max_body=5000)
    assert request.feed(1.0) == MORE
    # From the head on: 30 s in all, and 1000 bytes/s once the 2 s grace is over.
    assert request.deadline() == pytest.approx(1.0 + serving.BODY_RATE_GRACE_S + 0.001)
    request.buf += b"x" * 1500
    assert request.feed(2.0) == MORE
    assert request.deadline() == pytest.approx(1.0 + serving.BODY_RATE_GRACE_S + 1.501)
    assert "slower than 1000 bytes/s (1500 of 2000 bytes in" in request.why_cut(4.6)
    request.buf += b"x" * 500
    assert request.feed(3.0) == READY and request.end == len(request.buf)


def test_an_unfinished_head_is_due_at_the_head_deadline() -> None:
    request = incoming(b"GET / HTTP/1.1\r\nX: ", now=5.0)
    assert request.feed(6.0) == MORE
    assert request.deadline() == 15.0
    assert request.why_cut(15.0) == ("request head not complete within 10 s "
                                     "(19 bytes received)")


def test_a_declared_body_over_the_limit_goes_with_the_head_alone() -> None:
    request = incoming(b"POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\nxyz")
    assert request.feed(0.0) == READY and request.close_after
    assert request.replay() == b"POST / HTTP/1.1\r\nContent-Length: 1001\r\n\r\n"


def test_a_head_over_the_limit_is_refused() -> None:
    request = incoming(b"GET / HTTP/1.1\r\nX: " + b"a" * serving.MAX_HEAD_BYTES)
    with pytest.raises(Refusal) as refused:
        request.feed(0.0)
    assert refused.value.status == 431


def test_while_stopping_only_connections_that_sent_nothing_go_early() -> None:
    idle, started = incoming(b"\r\n"), incoming(b"GET")
    for request in (idle, started):
        request.stop_deadline = 2.0
    assert idle.deadline() == 2.0 and not idle.has_bytes
    assert started.deadline() == 10.0 and started.has_bytes


def test_refusals_are_json_and_close() -> None:
    answer = error_response(408, "request not received in time")
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Connection: close\r\n" in answer
    assert answer.endswith(b'\r\n\r\n{"success": false, "error": "request not received in time"}')


class Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: Any) -> None:
        self.lines.append(message % args)

    warning = info


def test_cuts_are_logged_a_few_of_a_kind_then_summed_up() -> None:
    log = Lines()
    cuts = CutLog(log)
    for i in range(8):
        cuts.note(1.0, ("10.0.0.1", 1000 + i), "head", "request head not complete", "closed")
    cuts.note(2.0, ("10.0.0.2", 5), "body", "request body slower", "closed")
    assert len(log.lines) == serving.LOG_DETAILED + 1
    assert log.lines[0] == "slow client 10.0.0.1:1000: request head not complete; closed"
    cuts.tick(5.0)
    assert len(log.lines) == serving.LOG_DETAILED + 1  # the window is not over
    cuts.tick(1.0 + serving.LOG_WINDOW_S)
    assert log.lines[-1] == ("clients: 3 more connections cut in the last 10 s (head 3) "
                             "from 10.0.0.1 (3)")
    assert cuts.total == {"head": 8, "body": 1}


def test_the_body_limit_is_the_apps() -> None:
    class App:
        config = {"MAX_CONTENT_LENGTH": 4096}

    assert serving._app_body_limit(App()) == 4096
    assert serving._app_body_limit(object()) == serving.DEFAULT_MAX_BODY_BYTES


def test_the_worker_finds_what_it_builds_on_in_this_gunicorn() -> None:
    serving.RequestBufferingWorker.setup()


def test_a_thread_does_not_wait_for_a_client_that_does_not_read() -> None:
    import socket
    import time

    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        ours.setblocking(False)
        writer = serving.WriteBehind(ours, limit=1 << 20, timeout_s=0.5)
        answer = bytes(range(256)) * 2048  # 512 KiB: far more than the socket takes
        started = time.monotonic()
        writer.sendall(answer[:1000])
        writer.sendall(answer[1000:])
        assert time.monotonic() - started < 0.5
        assert 0 < len(writer.pending) < len(answer)
        sent = len(answer) - len(writer.pending)
        received = b""
        theirs.settimeout(2)
        while len(received) < sent:
            received += theirs.recv(1 << 20)
        assert received + bytes(writer.pending) == answer  # nothing lost, nothing reordered
        # Past its limit the writer sends itself, and a client that does not read times out.
        small = serving.WriteBehind(ours, limit=1000, timeout_s=0.3)
        with pytest.raises(TimeoutError):
            for _ in range(2000):
                small.sendall(answer[:4096])
