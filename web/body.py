"""Request bodies: the size limit, and reading JSON without ever answering 500.

**The limit** (``MAX_BODY_BYTES``) is enforced by ``BodyLimit``, a WSGI middleware in
front of the app, for bodies of every framing:

* ``Content-Length`` over the limit -> 413 before a byte of the body is read;
* a body without ``Content-Length`` (``Transfer-Encoding: chunked``) is read up to one
  byte past the limit: over it -> 413; within it, the body is handed on with its
  ``Content-Length`` set, so that the app reads exactly what was sent. (werkzeug alone
  cuts such a body at the limit and parses the prefix as if it were whole.)

The 413 is raised by a ``before_request`` hook (``reject_oversized``), so it is the usual
JSON error with the usual headers. The rest of an oversized body is not read here; the
server discards or closes (gunicorn drains a bounded amount, then closes).

**JSON.** Flask's ``request.get_json`` turns most bad input into a 400, but not all of it:
a deeply nested document raises ``RecursionError`` (a 500), and ``NaN``/``Infinity`` are
accepted. ``read_json`` answers each case with the right 4xx:

* not ``application/json`` (or ``+json``) -> 415;
* longer than ``MAX_CONTENT_LENGTH`` -> 413;
* empty, malformed, invalid UTF-8, ``NaN``, too deep, lone surrogates -> 400.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NoReturn

from flask import request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, UnsupportedMediaType

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

MAX_DEPTH = 32
TOO_LARGE = "qudemo.body_too_large"
"""Set in the WSGI environ by ``BodyLimit`` when the body is over the limit."""
_READ_SIZE = 16384


class BodyLimit:
    """WSGI middleware: a body over ``limit_bytes`` is refused, however it is framed."""

    def __init__(self, app: WSGIApplication, limit_bytes: int) -> None:
        self.app = app
        self.limit_bytes = limit_bytes

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse
                 ) -> Iterable[bytes]:
        """Check (and for a chunked body, buffer) the body, then call the app."""
        length = (environ.get("CONTENT_LENGTH") or "").strip()
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if length and not chunked:
            if length.isdigit() and int(length) > self.limit_bytes:
                environ[TOO_LARGE] = True
        elif chunked or environ.get("wsgi.input_terminated"):
            self._buffer(environ)
        return self.app(environ, start_response)

    def _buffer(self, environ: WSGIEnvironment) -> None:
        """Read a body of unknown length, at most one byte past the limit."""
        stream = environ["wsgi.input"]
        body = bytearray()
        while len(body) <= self.limit_bytes:
            chunk = stream.read(min(_READ_SIZE, self.limit_bytes + 1 - len(body)))
            if not chunk:
                break
            body += chunk
        if len(body) > self.limit_bytes:
            environ[TOO_LARGE] = True
            body.clear()
        environ["wsgi.input"] = io.BytesIO(bytes(body))
        environ["CONTENT_LENGTH"] = str(len(body))
        environ.pop("HTTP_TRANSFER_ENCODING", None)  # werkzeug ignores a length beside it


def reject_oversized() -> None:
    """``before_request``: answer 413 for a body ``BodyLimit`` found over the limit.

    Raises:
        RequestEntityTooLarge: the body is over ``MAX_BODY_BYTES``.
    """
    if request.environ.get(TOO_LARGE):
        raise RequestEntityTooLarge()


def read_json() -> Any:
    """Return the request's JSON document, or raise the 4xx that describes what is wrong.

    Raises:
        UnsupportedMediaType: the body is not declared as JSON.
        RequestEntityTooLarge: the body is over the configured limit.
        BadRequest: the body is not a usable JSON document.
    """
    if not request.is_json:
        raise UnsupportedMediaType("unsupported media type: send Content-Type: application/json")
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise BadRequest("request body is empty: expected a JSON object")
    try:
        value = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise BadRequest(f"malformed JSON: nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # includes UnicodeDecodeError and over-long integers
        raise BadRequest(f"malformed JSON: {_reason(exc)}") from None
    if _too_deep(value):
        raise BadRequest(f"malformed JSON: nested deeper than {MAX_DEPTH} levels")
    try:
        # A lone surrogate ("\ud800") parses, then breaks every UTF-8 writer downstream.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest("malformed JSON: strings must be valid Unicode") from None
    return value


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _reason(exc: ValueError) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "the body is not valid UTF-8"
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} (line {exc.lineno}, column {exc.colno})"
    return str(exc).split(";")[0][:200]


def _too_deep(value: Any) -> bool:
    """Tell whether ``value`` nests containers deeper than ``MAX_DEPTH`` (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False
