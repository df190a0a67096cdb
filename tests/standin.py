"""A stand-in of the QuDemo Python API (DESIGN.md §4), served on 127.0.0.1 for tests and developers.

Tests start it in-process and steer it (latency, scripted replies, holds, hangs, memory readings)
while observing what it received and how many requests were in flight at once. Developers can
serve it by hand until Ctrl-C::

    python -m tests.standin --port 5001 [--latency-video 5] [--latency-qa 1] [--memory-mb 800]

Only the standard library is used, so the stand-in cannot share a bug with the client under test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from tests.loopback_server import LoopbackHandler, LoopbackServer

logger = logging.getLogger(__name__)

ENDPOINTS = ("process-video", "ask-question", "health", "memory-status")
DEMO_VIDEO_URL = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
MEMORY_THRESHOLD_MB = 1900
CLEANUP_THRESHOLD_MB = 1400
DEFAULT_MEMORY_MB = 500.0
DEFAULT_ANSWER = "This is the answer."
_METHOD = {"process-video": "POST", "ask-question": "POST", "health": "GET", "memory-status": "GET"}
_REQUIRED = {"process-video": ("video_url",), "ask-question": ("question", "company_name")}
WORK = ("process-video", "ask-question")
"""The endpoints that load the Python API (its knee counts their requests together)."""


@dataclass(frozen=True)
class Knee:
    """An overload knee: above ``limit`` work requests in progress the stand-in degrades.

    A request that arrives while more than ``limit`` work requests (both kinds, itself
    included) are unanswered is *overloaded*: it takes ``slowdown`` times its latency,
    and every ``fail_every``-th overloaded request fails, alternating the statuses in
    ``statuses`` (deterministic, so tests need no luck).

    Attributes:
        limit: Work requests in progress the stand-in takes without degrading.
        slowdown: Latency factor of an overloaded request.
        fail_every: 1: every overloaded request fails; 2: every other one; 0: none.
        statuses: Failure statuses, used in turn.
        retry_after: ``Retry-After`` of a 429/503 failure, or None.
    """

    limit: int
    slowdown: float = 5.0
    fail_every: int = 2
    statuses: tuple[int, ...] = (500, 503)
    retry_after: str | None = None


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    Attributes:
        status: HTTP status of the answer.
        body: JSON body; None means the endpoint's default success body (``{"detail": phrase}``
            for a status >= 400, since a success body on an error would be implausible).
        headers: Extra response headers, e.g. ``{"Retry-After": "1"}``.
        delay_s: Wait before answering, counted in flight.
        trickle_interval_s: Send the status line and headers, then the body one byte at a time
            with this pause between bytes.
        raw_body: Bytes to send instead of JSON, e.g. invalid JSON.
        hang: Never answer; on release(endpoint) or stop(), close the connection without a reply.
    """

    status: int = 200
    body: dict | list | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    trickle_interval_s: float | None = None
    raw_body: bytes | None = None
    hang: bool = False


@dataclass(frozen=True)
class Call:
    """One request the stand-in received.

    Attributes:
        index: Global arrival order across endpoints, from 0 (restarts at reset()).
        endpoint: One of ENDPOINTS.
        path: The request path as sent, e.g. "/process-video/acme".
        body: The parsed JSON body, or None (GET, or a body that is not JSON).
        started_at: time.monotonic() when the handler started.
        finished_at: time.monotonic() when the answer was written or dropped; None until then.
        authorization: The request's Authorization header, or None.
    """

    index: int
    endpoint: str
    path: str
    body: Any
    started_at: float
    finished_at: float | None
    authorization: str | None = None


class _Abort(Exception):
    """Close the connection without a reply (a hang released, or the stand-in stopping)."""


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _route(path: str) -> tuple[str, str] | None:
    """Map a request path to (endpoint, company name from the path), or None."""
    segments = urlsplit(path).path.split("/")[1:]
    if len(segments) == 2 and segments[0] == "process-video" and segments[1]:
        return "process-video", unquote(segments[1])
    if len(segments) == 1 and segments[0] in ENDPOINTS[1:]:
        return segments[0], ""
    return None


def _parse(endpoint: str, raw: bytes) -> tuple[Any, list[dict] | None]:
    """Parse a request body the way FastAPI would: (body, None) or (body, 422 detail)."""
    if endpoint not in _REQUIRED:
        return None, None
    try:
        body = json.loads(raw)
    except ValueError:
        return None, [{"loc": ["body", 0], "msg": "JSON decode error", "type": "json_invalid"}]
    if not isinstance(body, dict):
        return body, [{"loc": ["body"], "msg": "Input should be a valid dictionary",
                       "type": "dict_type"}]
    detail = []
    for name in _REQUIRED[endpoint]:
        if name not in body:
            detail.append({"loc": ["body", name], "msg": "Field required", "type": "missing"})
        elif not isinstance(body[name], str):
            detail.append({"loc": ["body", name], "msg": "Input should be a valid string",
                           "type": "string_type"})
    return body, detail or None


class _Handler(LoopbackHandler):
    """Route a request to its endpoint and write the stand-in's answer."""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        raw = self.read_body()
        route = _route(self.path)
        if route is None:
            self.write(404, json.dumps({"detail": "Not Found"}).encode())
        elif _METHOD[route[0]] != method:
            self.write(405, json.dumps({"detail": "Method Not Allowed"}).encode())
        else:
            cast("PythonApiStandIn", self.server.owner)._answer(self, route[0], route[1], raw)

    def write(self, status: int, payload: bytes, headers: Mapping[str, str] | None = None,
              trickle_interval_s: float | None = None,
              stop: threading.Event | None = None) -> None:
        """Send one response; with a trickle interval the body goes out one byte at a time."""
        self.send_head(status, len(payload), headers)
        if trickle_interval_s is None:
            self.wfile.write(payload)
            return
        for i in range(len(payload)):
            if i and stop is not None and stop.wait(trickle_interval_s):
                raise _Abort
            self.wfile.write(payload[i : i + 1])


class PythonApiStandIn(LoopbackServer):
    """A controllable fake of the Python API served on a background thread; see the module doc."""

    handler = _Handler
    thread_name = "StandIn"
    label = "stand-in"
    logger = logger

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self._gates = {ep: threading.Event() for ep in ENDPOINTS}
        self._held: set[str] = set()
        self._scripts: dict[str, deque[Reply]] = {ep: deque() for ep in ENDPOINTS}
        self._latency_s = dict.fromkeys(ENDPOINTS, 0.0)
        self._memory_mb: float | None = DEFAULT_MEMORY_MB
        self._memory_status: str | None = None
        self._answer_text = DEFAULT_ANSWER
        self._calls: list[Call] = []
        self._in_flight = dict.fromkeys(ENDPOINTS, 0)
        self._max_in_flight = dict.fromkeys(ENDPOINTS, 0)
        self._unanswered = dict.fromkeys(ENDPOINTS, 0)
        self._max_unanswered = dict.fromkeys(ENDPOINTS, 0)
        self._knee: Knee | None = None
        self._overloaded = 0
        self._failed: dict[int, int] = {}
        self._max_work = 0

    # lifecycle
    def _on_stop(self) -> None:
        """Drop held, hanging and trickling requests: open every gate."""
        for gate in self._gates.values():
            gate.set()

    @property
    def url(self) -> str:
        """Base URL such as "http://127.0.0.1:5001"; valid after start()."""
        if self._server is None:
            raise RuntimeError("stand-in not started")
        return super().url

    # controls
    def set_latency(self, endpoint: str, seconds: float) -> None:
        """Delay non-scripted answers of endpoint by seconds."""
        self._control(lambda: self._latency_s.__setitem__(_checked(endpoint), seconds))

    def script(self, endpoint: str, *replies: Reply) -> None:
        """Queue one-shot replies for endpoint, used in arrival order before the default answer."""
        self._control(lambda: self._scripts[_checked(endpoint)].extend(replies))

    def hold(self, endpoint: str) -> None:
        """Make requests arriving from now on block, in flight, until release(endpoint)."""
        self._control(lambda: self._held.add(_checked(endpoint)))

    def release(self, endpoint: str) -> None:
        """Let held and hanging requests of endpoint go on; later ones are no longer held."""
        def _open() -> None:
            self._held.discard(_checked(endpoint))
            self._gates[endpoint].set()
            if not self._stop_event.is_set():  # a fresh gate, so that later hangs hang again
                self._gates[endpoint] = threading.Event()
        self._control(_open)

    def set_memory(self, memory_mb: float | None, status: str | None = None) -> None:
        """Set the memory reading; None answers {"status": "error"}; status overrides thresholds."""
        def _set() -> None:
            self._memory_mb, self._memory_status = memory_mb, status
        self._control(_set)

    def set_knee(self, knee: Knee | None) -> None:
        """Degrade above ``knee.limit`` work requests in progress (None: never)."""
        self._control(lambda: setattr(self, "_knee", knee))

    def set_answer(self, answer: str) -> None:
        """Set the default answer text of ask-question."""
        self._control(lambda: setattr(self, "_answer_text", answer))

    def reset(self) -> None:
        """Release all, clear scripts, latencies, counters and calls; memory back to 500 MB."""
        with self._cond:
            for endpoint in ENDPOINTS:
                self.release(endpoint)
            for queue in self._scripts.values():
                queue.clear()
            self._latency_s = dict.fromkeys(ENDPOINTS, 0.0)
            self._memory_mb, self._memory_status = DEFAULT_MEMORY_MB, None
            self._answer_text = DEFAULT_ANSWER
            self._calls = []
            # Requests still running stay in flight; only the high-water mark starts over.
            self._max_in_flight = dict(self._in_flight)
            self._max_unanswered = dict(self._unanswered)
            self._knee, self._overloaded, self._failed = None, 0, {}
            self._max_work = sum(self._unanswered[ep] for ep in WORK)
            self._cond.notify_all()

    # observation
    def in_flight(self, endpoint: str) -> int:
        """Requests of endpoint whose answer is not fully written yet."""
        with self._cond:
            return self._in_flight[_checked(endpoint)]

    def max_in_flight(self, endpoint: str) -> int:
        """Highest in_flight(endpoint) seen since start or reset."""
        with self._cond:
            return self._max_in_flight[_checked(endpoint)]

    def max_unanswered(self, endpoint: str) -> int:
        """Highest number of requests of endpoint received and not yet answered.

        Unlike ``max_in_flight``, a call stops counting when its answer *starts* to be
        written, before the client can see it: a stand-in thread slow to finish a write
        (its process busy) cannot make the client's next call overlap the last one.
        Use it to check a concurrency limit on a loaded machine.
        """
        with self._cond:
            return self._max_unanswered[_checked(endpoint)]

    def max_unanswered_work(self) -> int:
        """Highest number of work requests (both kinds) received and not yet answered."""
        with self._cond:
            return self._max_work

    def overloaded(self) -> int:
        """How many requests arrived above the knee (slowed, some failed)."""
        with self._cond:
            return self._overloaded

    def failed_by_knee(self) -> dict[int, int]:
        """How many failures the knee answered, by status."""
        with self._cond:
            return dict(self._failed)

    def calls(self, endpoint: str | None = None) -> list[Call]:
        """Requests received, in arrival order; of every endpoint when endpoint is None."""
        with self._cond:
            return [c for c in self._calls if endpoint is None or c.endpoint == _checked(endpoint)]

    def wait_in_flight(self, endpoint: str, count: int, timeout: float = 5.0) -> bool:
        """Wait until in_flight(endpoint) >= count."""
        return self.wait_for(lambda s: s.in_flight(endpoint) >= count, timeout)

    def wait_calls(self, endpoint: str, count: int, timeout: float = 5.0) -> bool:
        """Wait until endpoint has received at least count requests."""
        return self.wait_for(lambda s: len(s.calls(endpoint)) >= count, timeout)

    # serving (handler threads)
    def _control(self, change: Callable[[], object]) -> None:
        with self._cond:
            change()
            self._cond.notify_all()

    def _answer(self, handler: _Handler, endpoint: str, company: str, raw: bytes) -> None:
        body, detail = _parse(endpoint, raw)
        with self._cond:
            call = Call(len(self._calls), endpoint, handler.path, body, time.monotonic(), None,
                        handler.headers.get("Authorization"))
            self._calls.append(call)
            self._in_flight[endpoint] += 1
            self._max_in_flight[endpoint] = max(self._max_in_flight[endpoint],
                                                self._in_flight[endpoint])
            self._unanswered[endpoint] += 1
            self._max_unanswered[endpoint] = max(self._max_unanswered[endpoint],
                                                 self._unanswered[endpoint])
            reply = Reply(delay_s=self._latency_s[endpoint])
            work = sum(self._unanswered[ep] for ep in WORK)
            self._max_work = max(self._max_work, work)
            if detail is None and self._scripts[endpoint]:
                reply = self._scripts[endpoint].popleft()
            elif detail is None and endpoint in WORK and self._knee and work > self._knee.limit:
                reply = self._over_knee(self._knee, reply)
            gate = self._gates[endpoint]
            held = endpoint in self._held and detail is None
            self._cond.notify_all()
        answered = False

        def answering() -> None:
            nonlocal answered
            with self._cond:
                answered = True
                self._unanswered[endpoint] -= 1

        try:
            if detail is not None:
                answering()
                handler.write(422, json.dumps({"detail": detail}).encode())
                return
            if held or reply.hang:
                gate.wait()  # release() and stop() set it
                if reply.hang or self._stop_event.is_set():
                    raise _Abort
            if reply.delay_s > 0 and self._stop_event.wait(reply.delay_s):
                raise _Abort
            payload = reply.raw_body
            if payload is None:
                payload = json.dumps(self._body(reply, endpoint, company, body)).encode()
            answering()
            handler.write(reply.status, payload, reply.headers, reply.trickle_interval_s,
                          self._stop_event)
        except (_Abort, OSError):  # OSError: the client went away mid-response
            handler.close_connection = True
        finally:
            if not answered:
                answering()
            with self._cond:
                self._in_flight[endpoint] -= 1
                if call.index < len(self._calls) and self._calls[call.index] is call:
                    self._calls[call.index] = replace(call, finished_at=time.monotonic())
                self._cond.notify_all()

    def _over_knee(self, knee: Knee, reply: Reply) -> Reply:
        """The answer of a request that arrived above the knee (holding the lock)."""
        self._overloaded += 1
        slow = replace(reply, delay_s=reply.delay_s * knee.slowdown)
        if not knee.fail_every or self._overloaded % knee.fail_every:
            return slow
        failures = sum(self._failed.values())
        status = knee.statuses[failures % len(knee.statuses)]
        self._failed[status] = self._failed.get(status, 0) + 1
        headers = ({"Retry-After": knee.retry_after}
                   if knee.retry_after is not None and status in (429, 503) else {})
        return replace(slow, status=status, headers=headers)

    def _body(self, reply: Reply, endpoint: str, company: str, request: Any) -> Any:
        """The scripted body, or the plausible default answer of endpoint."""
        if reply.body is not None:
            return reply.body
        if reply.status >= 400:
            try:
                return {"detail": HTTPStatus(reply.status).phrase}
            except ValueError:
                return {"detail": f"Error {reply.status}"}
        with self._cond:
            answer, memory_mb, status = self._answer_text, self._memory_mb, self._memory_status
        if endpoint == "health":
            return {"status": "healthy", "timestamp": _now(), "whisper_model_loaded": True,
                    "whisper_model_status": "loaded"}
        if endpoint == "memory-status":
            if memory_mb is None:
                return {"status": "error", "error": "could not read process memory (stand-in)"}
            status = status or ("critical" if memory_mb >= MEMORY_THRESHOLD_MB else
                                "warning" if memory_mb >= CLEANUP_THRESHOLD_MB else "ok")
            return {"memory_mb": memory_mb, "memory_threshold_mb": MEMORY_THRESHOLD_MB,
                    "cleanup_threshold_mb": CLEANUP_THRESHOLD_MB, "status": status,
                    "timestamp": _now()}
        if endpoint == "ask-question":
            return {"success": True, "answer": answer, "sources": [DEMO_VIDEO_URL],
                    "video_url": DEMO_VIDEO_URL, "start": 12.5, "end": 30.0}
        video_url = request["video_url"]
        result = {"success": True, "video_url": video_url, "company_name": company,
                  "title": "Demo video", "chunks_created": 12, "vectors_stored": 12,
                  "word_count": 1500, "language": "en", "method": "whisper"}
        return {"success": True, "message": f"Video processed successfully for {company}",
                "company_name": company, "video_url": video_url, "result": result}


def _checked(endpoint: str) -> str:
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
    return endpoint


def main(argv: list[str] | None = None) -> None:
    """Serve the stand-in by hand until Ctrl-C."""
    parser = argparse.ArgumentParser(prog="python -m tests.standin",
                                     description="Serve a stand-in of the Python API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--latency-video", type=float, default=0.0, metavar="S")
    parser.add_argument("--latency-qa", type=float, default=0.0, metavar="S")
    parser.add_argument("--memory-mb", type=float, default=DEFAULT_MEMORY_MB)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(threadName)s %(message)s")
    standin = PythonApiStandIn(args.host, args.port)
    standin.set_latency("process-video", args.latency_video)
    standin.set_latency("ask-question", args.latency_qa)
    standin.set_memory(args.memory_mb)
    with standin:
        print(f"Python API stand-in serving on {standin.url} (Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
