"""The ``Idempotency-Key`` request header of the submission routes (IETF httpapi draft).

``@idempotent`` goes under ``@require_user`` on a route that makes a job; the view passes
``idempotency_key()`` to ``JobSystem.submit``. What a client sees:

* no header: as before, every request may make a job;
* a bad header: 400 naming ``Idempotency-Key`` (two of them; empty; over 255 characters;
  not printable ASCII; a ``"quoted"`` value that is not a Structured Field String). The
  draft's form is a String (``Idempotency-Key: "8e03978e-..."``); a bare token of visible
  ASCII (``Idempotency-Key: 8e03978e-...``, what most clients send) is taken as is;
* the first request with a key makes its job (202) and the key remembers it, for
  ``QUEUE_IDEMPOTENCY_RETENTION_MS`` (24 h) or as long as the job is retained;
* the same key and request again: 202 with the same ``jobId`` (its current status and
  place) and ``Idempotent-Replayed: true``; no job is made;
* the same key with another request: 422;
* the same key while its first request is still being handled by this instance: 409
  (retry once it is answered). On another instance the database decides: one of the
  two makes the job, the other answers it, replayed;
* keys are the caller's (``current_principal().user_id``): another user's same key is
  another key. Requests refused before a job is made (400, 409 duplicate, 429, 503...)
  store nothing, so the client may retry under the same key.

**The fingerprint** is the method, the path and the body *as parsed JSON*, serialised
canonically (sorted keys, no spaces) and hashed with SHA-256: a client that serialises
its body again for a retry (another key order or spacing) still matches, and any change
of a value, or of the route (an interaction id is in the path), is another request. A
body that is not JSON is fingerprinted by its bytes (its request fails validation anyway).
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

from flask import Response, current_app, g, request

from actors.model.idempotency import MAX_KEY_LENGTH, IdempotencyKey
from web.auth import current_principal
from web.errors import ApiError, RequestInvalid

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_G_KEY = "qudemo_idempotency"
_EXTENSION = "qudemo.idempotency"

F = TypeVar("F", bound=Callable[..., Response])


class KeyInFlight(ApiError):
    """A request with the same key is still being handled (draft: 409, retry as is)."""

    status = 409
    default_message = ("a request with this Idempotency-Key is still being handled; retry "
                       "once it has been answered")


class InFlight:
    """The (caller, key) pairs whose first request this app is handling right now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: set[tuple[str, str]] = set()

    @contextmanager
    def hold(self, scope: str, key: str) -> Iterator[None]:
        """Hold ``(scope, key)`` for one request.

        Raises:
            KeyInFlight: another request holds it.
        """
        pair = (scope, key)
        with self._lock:
            if pair in self._held:
                raise KeyInFlight()
            self._held.add(pair)
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(pair)


def idempotent(view: F) -> F:
    """Honour an ``Idempotency-Key`` on a submission route (see the module docstring)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        values = request.headers.getlist(HEADER)
        if not values:
            return view(*args, **kwargs)
        key = parse_key(values)
        scope = current_principal().user_id
        in_flight: InFlight = current_app.extensions.setdefault(_EXTENSION, InFlight())
        with in_flight.hold(scope, key):
            setattr(g, _G_KEY, IdempotencyKey(scope=scope, key=key,
                                              fingerprint=fingerprint()))
            return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def idempotency_key() -> IdempotencyKey | None:
    """The current request's key for ``JobSystem.submit`` (``None``: the request has none)."""
    key: IdempotencyKey | None = g.get(_G_KEY)
    return key


def parse_key(values: list[str]) -> str:
    """Return the key from the header's values.

    Raises:
        RequestInvalid: there is more than one, or it is not a key we accept.
    """
    if len(values) > 1:
        _invalid("must be sent once")
    value = values[0].strip(" \t")
    if value.startswith('"'):
        key = _sf_string(value)
    elif '"' in value or "\\" in value or not all("!" <= c <= "~" for c in value):
        _invalid('must be a quoted string ("...") or a token of visible ASCII characters')
    else:
        key = value
    if not key:
        _invalid("must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        _invalid(f"must be at most {MAX_KEY_LENGTH} characters")
    return key


def fingerprint() -> str:
    """Return the SHA-256 of the request's method, path and canonical JSON body."""
    raw = request.get_data(cache=True)
    try:
        body = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):  # not JSON: validation answers 400 anyway
        body = raw
    digest = hashlib.sha256(f"{request.method} {request.path}\n".encode())
    digest.update(body)
    return digest.hexdigest()


def _sf_string(value: str) -> str:
    """Parse an RFC 8941 String: ``"..."``, a backslash escapes only ``"`` and itself."""
    out: list[str] = []
    chars = iter(value[1:])
    for char in chars:
        if char == "\\":
            escaped = next(chars, "")
            if escaped not in ('"', "\\"):
                _invalid("is not a valid string: only \\\" and \\\\ may be escaped")
            out.append(escaped)
        elif char == '"':
            if next(chars, None) is not None:
                _invalid("must be one quoted string, with nothing after it")
            return "".join(out)
        elif not " " <= char <= "~":
            _invalid("must be printable ASCII")
        else:
            out.append(char)
    _invalid("is not a valid string: the closing quote is missing")


def _invalid(problem: str) -> NoReturn:
    message = f"{HEADER} {problem}"
    raise RequestInvalid(message, details=[{"field": HEADER, "message": problem}])
