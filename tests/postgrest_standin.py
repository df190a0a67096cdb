"""A stand-in of Supabase's REST API (PostgREST), served on 127.0.0.1 for the tests.

It speaks the part of PostgREST's wire format that supabase-py uses, on
``/rest/v1/<table>``, with tables kept in memory:

* ``GET``/``HEAD`` with ``select=a,b``, filters ``col=eq.v`` / ``neq.v`` / ``is.null``,
  ``limit`` and ``offset``: ``200`` and a JSON array;
* ``POST`` with a JSON object or array, ``Prefer: return=minimal|representation`` and
  ``resolution=merge-duplicates|ignore-duplicates``, ``on_conflict=cols`` (default the
  primary key ``id``) and ``columns=``: an insert, or an upsert keyed by the conflict
  columns; ``201`` (``200`` when every row merged into an existing one); a duplicate key
  without a resolution is ``409`` with SQLSTATE ``23505``;
* PostgREST's error body ``{code, details, hint, message}``: ``PGRST205`` for an unknown
  table (404), ``PGRST204`` for an unknown column (400), ``PGRST100`` for a filter it
  does not understand (400), and ``401`` without the right ``apikey`` and bearer token.

Every request is recorded (method, path, table, query pairs, lower-cased headers, body,
status). Tests make it fail on demand (the next N requests of a method to a table
answer an error), hold requests until released, and trickle answers (applied as usual,
then a body sent a byte at a time that never completes). Only the standard library is used,
so the stand-in cannot share a bug with the client under test.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from tests.loopback_server import LoopbackHandler, LoopbackServer

logger = logging.getLogger(__name__)

SERVICE_KEY = "test-service-role-key"
SCHEMA: Mapping[str, tuple[str, ...]] = {
    "companies": ("id", "name", "display_name", "user_id", "created_at"),
    "user_companies": ("user_id", "company_id", "role", "created_at"),
    "videos": ("id", "company_id", "user_id", "video_url", "video_name", "created_at"),
    "qudemos": ("id", "title", "description", "video_url", "thumbnail_url", "company_id",
                "created_by", "is_active", "created_at", "updated_at", "video_name"),
    "questions": ("id", "interaction_id", "question", "answer", "sources", "video_url",
                  "start", "end", "created_at"),
}
"""The tables and their columns, as the README's CREATE TABLE statements declare them."""
TRICKLE_LENGTH = 1_000_000
"""The Content-Length a trickled answer promises (and never delivers)."""


@dataclass(frozen=True)
class Request:
    """One request the stand-in received."""

    method: str
    path: str
    table: str | None
    query: tuple[tuple[str, str], ...]
    headers: Mapping[str, str]
    body: Any
    status: int = 0

    def param(self, name: str) -> str | None:
        """The first value of query parameter ``name``."""
        return next((v for k, v in self.query if k == name), None)

    @property
    def prefer(self) -> set[str]:
        """The ``Prefer`` header's preferences."""
        return {p.strip() for p in self.headers.get("prefer", "").split(",") if p.strip()}


@dataclass
class _Failure:
    method: str
    remaining: int | None  # None: until recover()
    status: int
    body: Any
    raw: bytes | None = None


@dataclass
class _Reply:
    status: int
    body: Any = None
    raw: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    trickle: _Trickle | None = None


@dataclass
class _Trickle:
    method: str
    remaining: int | None  # None: until recover()
    interval_s: float
    for_s: float


def _error(status: int, code: str | None, message: str, details: str | None = None,
           hint: str | None = None) -> _Reply:
    return _Reply(status, {"code": code, "details": details, "hint": hint, "message": message})


class _Handler(LoopbackHandler):
    """Hand a request to the stand-in and write its reply."""

    log_level = logging.DEBUG

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        raw = self.read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        standin = cast("PostgrestStandIn", self.server.owner)
        reply = standin._handle(method, self.path, headers, raw)
        if reply is None:  # stopped while held
            self.close_connection = True
            return
        if reply.trickle is not None:
            self._trickle(reply, standin)
            return
        payload = reply.raw if reply.raw is not None else (
            b"" if reply.body is None else json.dumps(reply.body).encode())
        try:
            self.send_head(reply.status, len(payload), reply.headers,
                           "application/json; charset=utf-8" if payload else None)
            if method != "HEAD":
                self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    def _trickle(self, reply: _Reply, standin: PostgrestStandIn) -> None:
        """Promise a long body and send it a byte per interval until the client leaves."""
        assert reply.trickle is not None
        self.close_connection = True
        deadline = time.monotonic() + reply.trickle.for_s
        try:
            self.send_head(reply.status, TRICKLE_LENGTH, reply.headers)
            self.wfile.flush()
            while time.monotonic() < deadline:
                if standin._stop_event.wait(reply.trickle.interval_s):
                    return
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:
            return  # the client left: what a deadline does


class PostgrestStandIn(LoopbackServer):
    """A controllable fake of Supabase's ``/rest/v1``; see the module doc."""

    handler = _Handler
    thread_name = "PostgrestStandIn"
    label = "PostgREST stand-in"
    logger = logger

    def __init__(self, *, key: str = SERVICE_KEY, schema: Mapping[str, Iterable[str]] = SCHEMA,
                 host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.key = key
        self._columns = {table: tuple(columns) for table, columns in schema.items()}
        self._tables: dict[str, list[dict[str, Any]]] = {table: [] for table in schema}
        self._requests: list[Request] = []
        self._failures: dict[str, deque[_Failure]] = {}
        self._held: set[str] = set()
        self._gate = threading.Event()
        self._trickles: dict[str, deque[_Trickle]] = {}

    # lifecycle
    def _on_stop(self) -> None:
        """Release held requests."""
        self._gate.set()

    @property
    def url(self) -> str:
        """The project URL, as ``SUPABASE_URL`` takes it (the API is under ``/rest/v1``)."""
        return super().url

    # controls
    def seed(self, table: str, *rows: Mapping[str, Any]) -> None:
        """Add rows to ``table`` as they are (no request is recorded)."""
        with self._cond:
            self._tables[table].extend(dict(row) for row in rows)

    def fail(self, table: str, *, count: int | None = 1, method: str = "POST",
             status: int = 503, code: str | None = "PGRST001",
             message: str = "Database client error. Retrying the connection.",
             raw: bytes | None = None) -> None:
        """Answer the next ``count`` ``method`` requests to ``table`` with an error.

        ``count=None`` fails them until ``recover``; ``raw`` sends that body (e.g. a
        proxy's HTML page) instead of PostgREST's JSON error.
        """
        body = {"code": code, "details": None, "hint": None, "message": message}
        with self._cond:
            self._failures.setdefault(table, deque()).append(
                _Failure(method, count, status, body, raw))

    def recover(self, table: str | None = None) -> None:
        """Drop the scripted failures and trickles of ``table`` (of every table when ``None``)."""
        with self._cond:
            if table is None:
                self._failures.clear()
                self._trickles.clear()
            else:
                self._failures.pop(table, None)
                self._trickles.pop(table, None)

    def trickle(self, table: str, *, count: int | None = 1, method: str = "POST",
                interval_s: float = 0.05, for_s: float = 30.0) -> None:
        """Trickle the answers to the next ``count`` ``method`` requests to ``table``.

        Each is applied as usual, then answered with its status and a body that promises
        ``TRICKLE_LENGTH`` bytes and sends one every ``interval_s`` (a read timeout never
        fires), for ``for_s`` or until the client leaves or the stand-in stops.
        ``count=None`` trickles until ``recover``.
        """
        with self._cond:
            self._trickles.setdefault(table, deque()).append(
                _Trickle(method, count, interval_s, for_s))

    def hold(self, table: str) -> None:
        """Make requests to ``table`` wait (received, recorded) until ``release``."""
        with self._cond:
            self._held.add(table)

    def release(self) -> None:
        """Let every held request go on; nothing is held afterwards."""
        with self._cond:
            self._held.clear()
            self._gate.set()
            self._gate = threading.Event()
            self._cond.notify_all()

    # observation
    def rows(self, table: str) -> list[dict[str, Any]]:
        """A copy of ``table``'s rows."""
        with self._cond:
            return copy.deepcopy(self._tables[table])

    def requests(self, table: str | None = None, method: str | None = None) -> list[Request]:
        """Requests received, in order, filtered by table and method."""
        with self._cond:
            return [r for r in self._requests
                    if (table is None or r.table == table)
                    and (method is None or r.method == method)]

    def wait_requests(self, table: str, count: int, *, method: str | None = None,
                      timeout: float = 5.0) -> bool:
        """Wait until ``table`` has received ``count`` requests (of ``method``)."""
        return self.wait_for(lambda s: len(s.requests(table, method)) >= count, timeout)

    # serving
    def _handle(self, method: str, target: str, headers: dict[str, str],
                raw: bytes) -> _Reply | None:
        parts = urlsplit(target)
        query = tuple(parse_qsl(parts.query, keep_blank_values=True))
        segments = [unquote(s) for s in parts.path.split("/") if s]
        table = segments[2] if len(segments) == 3 and segments[:2] == ["rest", "v1"] else None
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        with self._cond:
            index = len(self._requests)
            self._requests.append(Request(method, parts.path, table, query, headers, body))
            gate = self._gate if table in self._held else None
            self._cond.notify_all()
        if gate is not None:
            gate.wait()
            if self._stop_event.is_set():
                return None
        with self._cond:
            reply = self._reply(method, parts.path, table, query, headers, body)
            if table is not None and reply.status < 400:
                reply.trickle = self._next_trickle(table, method)
            self._requests[index] = Request(method, parts.path, table, query, headers, body,
                                            reply.status)
            self._cond.notify_all()
            return reply

    def _next_trickle(self, table: str, method: str) -> _Trickle | None:
        queue = self._trickles.get(table)
        if not queue:
            return None
        for trickle in list(queue):
            if trickle.method != method:
                continue
            if trickle.remaining is not None:
                trickle.remaining -= 1
                if trickle.remaining <= 0:
                    queue.remove(trickle)
            return trickle
        return None

    def _reply(self, method: str, path: str, table: str | None,
               query: tuple[tuple[str, str], ...], headers: Mapping[str, str],
               body: Any) -> _Reply:
        bearer = f"Bearer {self.key}"
        if headers.get("apikey") != self.key or headers.get("authorization") != bearer:
            return _Reply(401, {"message": "Invalid API key",
                                "hint": "Double check your Supabase `anon` or `service_role` "
                                        "API key."})
        if table is None:
            if path.rstrip("/") == "/rest/v1" and method in ("GET", "HEAD"):
                return _Reply(200, {"swagger": "2.0", "paths": {}})
            return _error(404, None, "not found")
        if table not in self._tables:
            return _error(404, "PGRST205",
                          f"Could not find the table 'public.{table}' in the schema cache")
        failure = self._next_failure(table, method)
        if failure is not None:
            return _Reply(failure.status, None if failure.raw is not None else failure.body,
                          failure.raw)
        match method:
            case "GET" | "HEAD":
                return self._select(table, query)
            case "POST":
                return self._insert(table, query, headers, body)
        return _error(405, "PGRST117", f"Unsupported HTTP method: {method}")

    def _next_failure(self, table: str, method: str) -> _Failure | None:
        queue = self._failures.get(table)
        if not queue:
            return None
        for failure in list(queue):
            if failure.method != method:
                continue
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    queue.remove(failure)
            return failure
        return None

    def _select(self, table: str, query: tuple[tuple[str, str], ...]) -> _Reply:
        rows = self._tables[table]
        columns = self._columns[table]
        select = "*"
        limit: int | None = None
        offset = 0
        for name, value in query:
            if name == "select":
                select = value
            elif name == "limit":
                limit = int(value)
            elif name == "offset":
                offset = int(value)
            elif name in ("order", "columns"):
                continue
            else:
                if name not in columns:
                    return _error(400, "42703", f"column {table}.{name} does not exist")
                op, _, operand = value.partition(".")
                if op not in ("eq", "neq", "is", "in"):
                    return _error(400, "PGRST100", f"unsupported filter operator {op!r}")
                rows = [r for r in rows if _matches(r.get(name), op, operand)]
        rows = rows[offset:] if limit is None else rows[offset:offset + limit]
        wanted = columns if select in ("*", "") else tuple(c.strip() for c in select.split(","))
        unknown = [c for c in wanted if c not in columns]
        if unknown:
            return _error(400, "42703", f"column {table}.{unknown[0]} does not exist")
        return _Reply(200, [{c: copy.deepcopy(r.get(c)) for c in wanted} for r in rows])

    def _insert(self, table: str, query: tuple[tuple[str, str], ...],
                headers: Mapping[str, str], body: Any) -> _Reply:
        payload = [body] if isinstance(body, dict) else body
        if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
            return _error(400, "PGRST102", "Empty or invalid json")
        columns = self._columns[table]
        params = dict(query)
        listed = [c.strip().strip('"') for c in params.get("columns", "").split(",") if c.strip()]
        for row in payload:
            for name in row:
                if name not in columns:
                    return _error(400, "PGRST204", f"Could not find the '{name}' column of "
                                  f"'{table}' in the schema cache")
        prefer = {p.strip() for p in headers.get("prefer", "").split(",") if p.strip()}
        resolution = next((p.split("=", 1)[1] for p in prefer if p.startswith("resolution=")),
                          None)
        conflict = [c.strip() for c in params.get("on_conflict", "id").split(",") if c.strip()]
        written: list[dict[str, Any]] = []
        inserted = 0
        for row in payload:
            new = {c: row.get(c) for c in (listed or row)}
            key = tuple(new.get(c) for c in conflict)
            existing = next((r for r in self._tables[table]
                             if tuple(r.get(c) for c in conflict) == key), None)
            if existing is None:
                full = {c: new.get(c) for c in columns}
                self._tables[table].append(full)
                written.append(full)
                inserted += 1
            elif resolution == "merge-duplicates":
                existing.update(new)
                written.append(existing)
            elif resolution == "ignore-duplicates":
                continue
            else:
                detail = ", ".join(f"{c}" for c in conflict)
                return _error(409, "23505", f'duplicate key value violates unique constraint '
                              f'"{table}_pkey"', f"Key ({detail})=({key}) already exists.")
        status = 201 if inserted or not written else 200
        if "return=representation" in prefer:
            return _Reply(status, copy.deepcopy(written))
        return _Reply(status)


def _matches(value: Any, op: str, operand: str) -> bool:
    if op == "in":  # in.(a,b,c): PostgREST's list, values unquoted here
        listed = {v.strip().strip('"') for v in operand.strip("()").split(",")}
        return value is not None and str(value) in listed
    if op == "is":
        return value is None if operand == "null" else str(value).lower() == operand
    text = "" if value is None else (json.dumps(value) if isinstance(value, bool) else str(value))
    return (text == operand) == (op == "eq") and value is not None
