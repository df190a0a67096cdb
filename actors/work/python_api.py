"""The client of the Python API (DESIGN.md §4), shared by every worker.

One ``requests.Session`` with a connection pool serves all workers. Each job
call belongs to an ``AttemptCall`` (attempts.py): it is sent only while the
attempt is live, notes when its answer's status line arrives (the Python API
is done), and can be cut from another thread: the socket is shut down, which
wakes the blocked read at once. Who cuts, and when:

- the Dispatcher at the deadline, once the answer is arriving (only the body
  is left: a trickle would otherwise never time out, a read timeout resets
  with every byte);
- this client's own timer at the attempt's *hold*: a call the Python API was
  still working on at the deadline is abandoned but still read, because the
  Python API does not stop when its client leaves; the hold bounds that.

The slot stays held until the call returns, because the worker only reports
then.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from actors.dispatch.attempts import AttemptCall
from actors.model.errors import (
    CallFailed,
    DeadlineExceeded,
    PermanentCallFailure,
    RetryableCallFailure,
    ShutdownCut,
)
from actors.model.jobs import thaw
from actors.runtime.redact import redact_url
from actors.runtime.timers import TimerService

logger = logging.getLogger(__name__)

_active_connections: dict[int, HTTPConnection] = {}
"""The connection each thread is using right now, so a deadline can cut it."""


class _TrackedHTTPConnection(HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _active_connections[threading.get_ident()] = self
        super().request(*args, **kwargs)


class _TrackedHTTPSConnection(HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _active_connections[threading.get_ident()] = self
        super().request(*args, **kwargs)


class _TrackedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _TrackedHTTPConnection


class _TrackedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _TrackedHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    """An adapter whose connections register themselves, so they can be cut."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _TrackedHTTPPool,
            "https": _TrackedHTTPSPool,
        }


class _Call:
    """One call in flight on one thread; ``cut`` shuts its socket down once."""

    def __init__(self) -> None:
        self.thread_id = threading.get_ident()
        self.lock = threading.Lock()
        self.done = False
        self.cut_reason: str | None = None

    def cut(self, reason: str) -> None:
        with self.lock:
            if self.done or self.cut_reason is not None:
                return
            self.cut_reason = reason
            conn = _active_connections.get(self.thread_id)
            sock = getattr(conn, "sock", None)
            if sock is not None:
                # Already closed means the call is ending anyway.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        with self.lock:
            self.done = True
            _active_connections.pop(self.thread_id, None)


def parse_retry_after(value: str | None) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for (delta or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, Mapping):
        return str(body.get("detail") or body.get("message") or body.get("error") or body)[:200]
    return str(body)[:200]


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """Return ``url`` without its user information, and that user and password (or ``None``).

    ``http://user:pass@host`` becomes ``http://host`` with ``("user", "pass")``, sent as
    HTTP basic auth (what requests does with a URL's user information anyway), so that no
    URL this client builds, logs or puts in an exception carries the password.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    bare = urlunsplit(SplitResult(parts.scheme, hostport, parts.path, parts.query,
                                  parts.fragment))
    return bare, (unquote(user), unquote(password))


class PythonApiClient:
    """Calls the Python API: process a video, answer a question, read health and memory.

    ``address`` is how the instance is shown and keyed everywhere (its URL with any
    user information as ``***``); the credentials live only in this client's session.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timers: TimerService,
        connect_timeout_s: float = 5.0,
        pool_size: int = 16,
    ) -> None:
        self.address = redact_url(base_url.rstrip("/"))
        self.base_url, auth = split_credentials(base_url.rstrip("/"))
        self.connect_timeout_s = connect_timeout_s
        self._timers = timers
        self._session = requests.Session()
        # requests reads the environment's proxies, CA bundle and .netrc on every request
        # (``trust_env``: a large share of a short call's CPU). The address is fixed, so
        # they are read once, here, by requests' own rules, and never again.
        self._session.proxies = requests.utils.get_environ_proxies(self.base_url)
        self._session.verify = (os.environ.get("REQUESTS_CA_BUNDLE")
                                or os.environ.get("CURL_CA_BUNDLE") or True)
        self._session.auth = auth or requests.utils.get_netrc_auth(self.base_url)
        self._session.trust_env = False
        adapter = _DeadlineAdapter(pool_connections=4, pool_maxsize=pool_size)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._calls: set[_Call] = set()
        self._calls_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"<PythonApiClient {self.address} in_flight={len(self._calls)}>"

    def process_video(self, data: Mapping[str, Any], *, call: AttemptCall) -> dict[str, Any]:
        """Process one video; return the Python API's ``result`` object.

        Raises:
            CallFailed: classified as retryable or permanent.
        """
        body = {
            key: data[key]
            for key in ("video_url", "company_name", "source", "meeting_link", "bucket_name")
            if data.get(key) is not None
        }
        company = quote(str(data.get("company_name", "")), safe="")
        answer = self._post(f"/process-video/{company}", body, call)
        result = answer.get("result")
        if answer.get("success") is not True or not isinstance(result, Mapping):
            # success: true with result: null is the Python API's "processing failed".
            message = answer.get("message") or answer.get("detail") or "no result"
            raise PermanentCallFailure(f"video processing failed: {message}")
        if result.get("success") is False:
            raise PermanentCallFailure(f"video processing failed: {result.get('error', result)}")
        return dict(result)

    def ask_question(self, data: Mapping[str, Any], *, call: AttemptCall) -> dict[str, Any]:
        """Answer one question; return ``{answer, sources, video_url, start, end}``.

        Raises:
            CallFailed: classified as retryable or permanent.
        """
        body = {"question": data.get("question"), "company_name": data.get("company_name")}
        answer = self._post("/ask-question", body, call)
        if answer.get("success") is not True or not answer.get("answer"):
            message = answer.get("detail") or answer.get("message") or "no answer"
            raise PermanentCallFailure(f"question answering failed: {message}")
        return {
            key: answer.get(key) for key in ("answer", "sources", "video_url", "start", "end")
        }

    def memory_status(self, *, timeout_s: float) -> dict[str, Any]:
        """Read ``/memory-status``; raises ``requests.RequestException`` on silence."""
        return self._get("/memory-status", timeout_s)

    def health(self, *, timeout_s: float) -> dict[str, Any]:
        """Read ``/health``; raises ``requests.RequestException`` on silence."""
        return self._get("/health", timeout_s)

    def shutdown(self) -> int:
        """Refuse new job calls and cut those in flight; return how many were cut."""
        with self._calls_lock:
            self._closed = True
            calls = list(self._calls)
        for call in calls:
            call.cut("shutting down")
        return len(calls)

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()

    def _get(self, path: str, timeout_s: float) -> dict[str, Any]:
        response = self._session.get(self.base_url + path, timeout=timeout_s)
        with response:
            response.raise_for_status()
            body = response.json()
        if not isinstance(body, dict):
            raise ValueError(f"{path} answered {type(body).__name__}, not an object")
        return body

    def _post(self, path: str, body: Mapping[str, Any], attempt: AttemptCall) -> dict[str, Any]:
        call = _Call()
        with self._calls_lock:
            if self._closed:
                raise RetryableCallFailure(f"{path} not called: shutting down")
            self._calls.add(call)
        try:
            if not attempt.begin(call.cut):
                raise DeadlineExceeded(f"{path} not called: the attempt's deadline had passed",
                                       reached_api=False)
            hold = self._timers.call_later(max(0.0, attempt.hold_left()),
                                           lambda: attempt.cut("hold"))
            try:
                return self._send(path, body, attempt, call)
            finally:
                hold.cancel()
        finally:
            attempt.end()
            call.finish()
            with self._calls_lock:
                self._calls.discard(call)

    def _send(self, path: str, body: Mapping[str, Any], attempt: AttemptCall,
              call: _Call) -> dict[str, Any]:
        timeout_s = attempt.deadline - attempt.started
        try:
            # The read timeout is the hold: reads go on past the deadline, since the
            # Python API is still working on the call (the Dispatcher decides at the
            # deadline). stream=True returns at the status line: the Python API is done.
            response = self._session.post(
                self.base_url + path,
                json=thaw(body),
                timeout=(max(0.001, min(self.connect_timeout_s, attempt.seconds_left())),
                         max(0.001, attempt.hold_left())),
                stream=True,
            )
            attempt.answered()
            with response:
                response.content  # noqa: B018 -- read the body here, where a cut is caught
                return self._classify(path, response)
        except CallFailed:
            raise
        except (requests.RequestException, OSError) as exc:
            reason = attempt.cut_reason or call.cut_reason
            if reason == "deadline":
                raise DeadlineExceeded(f"{path} exceeded the {timeout_s:g}s deadline") from exc
            if reason == "hold":
                raise DeadlineExceeded(
                    f"{path} still unanswered at the end of its hold"
                    f" ({attempt.hold_until - attempt.started:g}s), long past the"
                    f" {timeout_s:g}s deadline", abandoned=True) from exc
            if reason == "shutting down":
                raise ShutdownCut(f"{path} cut: shutting down") from exc
            if reason is not None:
                raise RetryableCallFailure(f"{path} cut: {reason}") from exc
            if isinstance(exc, requests.ConnectTimeout):
                raise RetryableCallFailure(f"{path} unreachable: connect timed out") from exc
            if isinstance(exc, requests.Timeout):
                raise DeadlineExceeded(f"{path} timed out after {timeout_s:g}s",
                                       abandoned=True) from exc
            raise RetryableCallFailure(f"{path} unreachable: {type(exc).__name__}") from exc

    @staticmethod
    def _classify(path: str, response: requests.Response) -> dict[str, Any]:
        status = response.status_code
        if status == 429 or status == 408 or status >= 500:
            raise RetryableCallFailure(
                f"{path} answered {status}: {_detail(response)}",
                status=status,
                retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 400:
            raise PermanentCallFailure(f"{path} answered {status}: {_detail(response)}",
                                       status=status)
        try:
            body = response.json()
        except ValueError as exc:
            raise RetryableCallFailure(f"{path} answered {status} with invalid JSON",
                                       status=status) from exc
        if not isinstance(body, dict):
            raise PermanentCallFailure(f"{path} answered a {type(body).__name__}, not an object")
        return body
