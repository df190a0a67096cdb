"""Reading a JSON request body without ever answering 500.

Flask's ``request.get_json`` turns most bad input into a 400, but not all of it: a deeply
nested document raises ``RecursionError`` (a 500), and ``NaN``/``Infinity`` are accepted.
This reader answers each case with the right 4xx:

* not ``application/json`` (or ``+json``) -> 415;
* longer than ``MAX_CONTENT_LENGTH`` -> 413 (werkzeug raises it while reading);
* empty, malformed, invalid UTF-8, ``NaN``, too deep, lone surrogates -> 400.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from flask import request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

MAX_DEPTH = 32


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
