"""``GET /openapi.json``: an OpenAPI 3.1 document of every route, built from the app itself.

Paths come from the app's URL map, so a route cannot be missed: building the document
fails when a rule has no entry in ``OPERATIONS`` (the table below says, per endpoint,
what it does, who may call it, its body model and its answers). Request bodies are the
JSON Schemas of the same pydantic models that validate them (``web.models``); response
bodies are those of ``web.responses``. Errors share one shape, ``ErrorResponse``:
400 validation (every problem listed), 401, 403, 404, 405, 409, 413, 415, 429 and 503 (the
last two with ``Retry-After``).

The document is built once per app, on first request, from its settings: the metrics
operation says whether it needs a token (``METRICS_ACCESS``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from werkzeug.routing import Rule

from actors.model.jobs import JobState
from web.idempotency import HEADER, REPLAYED_HEADER
from web.models import ClientVideoBody, QuestionBody, VideoBody
from web.responses import RESPONSE_MODELS

bp = Blueprint("openapi", __name__)

DOCUMENT_KEY = "qudemo_openapi"
REF = "#/components/schemas/{model}"
_PARAMETER = re.compile(r"<(?:[^<>:]*:)?(\w+)>")
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
EXAMPLE_VIDEO_URL = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
EXAMPLE_CLIENT_VIDEO_URL = "https://www.loom.com/share/0123456789abcdef0123456789abcdef"

PATH_PATTERNS = {
    "job_id": r"^[A-Za-z0-9_\-]{1,64}$",
    "interaction_id": r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$",
}
STATUS_TEXT = {
    200: "OK", 202: "Accepted: the job is stored and queued",
    204: "Nothing more to stream: the job has ended and every event was sent",
    400: "Validation failed (details lists every problem)",
    401: "Missing, invalid or expired bearer token",
    403: "Authenticated but not allowed (the admin role is needed, or the company is not "
    "one of the caller's)",
    404: "No such job (or not yours)", 405: "Method not allowed on this path",
    409: "Duplicate job, the job is in the wrong state, or a request with the same "
    "Idempotency-Key is still being handled", 413: "Request body too large",
    415: "Body is not application/json",
    422: "The Idempotency-Key was used with another request",
    429: "Rate limit or queue limit reached",
    503: "Memory pressure, shutting down, or the job system is not answering",
}


def route_template(rule: str) -> str:
    """Return a werkzeug rule as an OpenAPI path: ``/jobs/<any(a, b):kind>`` -> ``/jobs/{kind}``."""
    return _PARAMETER.sub(r"{\1}", rule)


@dataclass(frozen=True, slots=True)
class Operation:
    """What the document says about one endpoint."""

    summary: str
    tag: str
    access: str = "user"
    """``user`` (any valid token), ``admin``, ``none``, or ``metrics`` (per METRICS_ACCESS)."""
    body: type[BaseModel] | None = None
    ok: tuple[int, str | None, str] = (200, None, "application/json")
    """(status, schema name, media types separated by commas) of the success answer."""
    errors: tuple[int, ...] = ()
    limited: bool = True
    """Counted by the rate limit (answers 429)."""
    query: tuple[dict[str, Any], ...] = ()
    description: str = ""
    extra: Mapping[int, str] = field(default_factory=dict)
    """More answers: status -> schema name."""
    idempotent: bool = False
    """Takes an ``Idempotency-Key`` header (web.idempotency): 409 in flight, 422 reused."""
    empty: tuple[int, ...] = ()
    """More answers without a body (204)."""


_JOB = (400, 401, 404, 503)
_SUBMIT = (400, 401, 403, 413, 415, 503)  # 403: another company (web.tenancy)
# An empty filter (?type=) means no filter, as a web form sends it.
_KIND_QUERY = {"schema": {"type": "string", "enum": ["video", "qa", ""]}}
IDEMPOTENCY_PARAMETER: dict[str, Any] = {
    "name": HEADER, "in": "header", "required": False,
    "description": (
        "Makes a retry safe: the same key and request within the retention (24 h) answer "
        "the first request's job again (Idempotent-Replayed: true), another request 422, "
        "while the first is still handled 409. A quoted string (\"...\") or a token; "
        "printable ASCII, at most 255 characters; per caller."),
    "schema": {"type": "string", "minLength": 1, "maxLength": 257,
               "pattern": r"^[\x21-\x7e]+$"},
}
LIST_QUERY: tuple[dict[str, Any], ...] = (
    {"name": "type", "in": "query", "description": "Only jobs of this kind.", **_KIND_QUERY},
    {"name": "kind", "in": "query", "description": "Same as type.", **_KIND_QUERY},
    {"name": "status", "in": "query", "description": "Only jobs in this state.",
     "schema": {"type": "string", "enum": [*(s.value for s in JobState), ""]}},
    {"name": "limit", "in": "query", "description": "At most this many (default 100).",
     "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
    {"name": "owner", "in": "query", "description": "Admins: only this user's jobs.",
     "schema": {"type": "string", "pattern": PATH_PATTERNS["interaction_id"]}},
)

STREAM_QUERY: tuple[dict[str, Any], ...] = (
    {"name": "Last-Event-ID", "in": "header", "required": False,
     "description": "Resume after this event: every later one, none twice (EventSource sends "
                    "it when it reconnects).",
     "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
    {"name": "lastEventId", "in": "query", "description": "Same as Last-Event-ID.",
     "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
    {"name": "access_token", "in": "query",
     "description": "A stream token (POST /api/queue/events/token, or data.eventsToken of a 202)"
                    " for EventSource, which cannot send headers; never an API token.",
     "schema": {"type": "string"}},
)
_STREAM_DOC = (" text/event-stream: events named after the job's state (queued, processing,"
               " retrying, completed, failed, cancelled), data the job as GET shows it, each "
               "with an id; `: keepalive` comments every EVENTS_HEARTBEAT_MS. 429 past "
               "EVENTS_MAX_STREAMS_PER_CALLER open streams.")

OPERATIONS: dict[str, Operation] = {
    "submit.process_video": Operation(
        "Queue a video for processing", "jobs", body=VideoBody,
        ok=(202, "Accepted", "application/json"), errors=(*_SUBMIT, 409), idempotent=True,
        description="snake_case or camelCase fields (videoUrl, companyName, ...)."),
    "submit.client_video": Operation(
        "Queue a video (the web client's body)", "jobs", body=ClientVideoBody,
        ok=(202, "Accepted", "application/json"), errors=(*_SUBMIT, 409), idempotent=True,
        description="videoUrl (or url), companyName (or companyId with Supabase), source."),
    "submit.ask_question": Operation(
        "Queue a question for AI answering", "jobs", body=QuestionBody,
        ok=(202, "Accepted", "application/json"), errors=_SUBMIT, idempotent=True),
    "jobs.get_job": Operation("Read one job", "jobs", ok=(200, "JobReply", "application/json"),
                              errors=_JOB),
    "jobs.cancel_job": Operation("Cancel a queued or retrying job", "jobs",
                                 ok=(200, "JobCancelled", "application/json"),
                                 errors=(*_JOB, 409)),
    "jobs.retry_job": Operation("Queue a failed job again", "jobs",
                                ok=(202, "Accepted", "application/json"),
                                errors=(*_JOB, 403, 409)),
    "jobs.list_jobs": Operation("List jobs, newest first (yours; an admin's: everyone's)",
                                "jobs", ok=(200, "JobList", "application/json"),
                                errors=(400, 401, 503), query=LIST_QUERY),
    "events.job_events": Operation(
        "Follow one job live (server-sent events)", "jobs",
        ok=(200, None, "text/event-stream"), errors=(*_JOB, 429), query=STREAM_QUERY,
        empty=(204,), description="The job's current state first, then every change; the "
        "stream ends after a terminal state." + _STREAM_DOC),
    "events.caller_events": Operation(
        "Follow all your jobs live (an admin's: every job; server-sent events)", "jobs",
        ok=(200, None, "text/event-stream"), errors=(400, 401, 429, 503), query=STREAM_QUERY,
        description="A snapshot event (the unfinished jobs), then every change." + _STREAM_DOC),
    "events.events_token": Operation(
        "A short-lived token for ?access_token= on the event streams", "jobs",
        ok=(200, "EventsTokenReply", "application/json"), errors=(401,),
        description="Good for EVENTS_TOKEN_TTL_MS (10 minutes), for the caller's own jobs."),
    "queue.status": Operation("Per-kind counts, limits, pause state and memory", "queue",
                              ok=(200, "QueueStatusReply", "application/json"),
                              errors=(401, 503)),
    "queue.monitor": Operation("The status with a one-line summary (also logged)", "queue",
                               ok=(200, "MonitorReply", "application/json"),
                               errors=(401, 503)),
    "queue.pause": Operation("Pause dispatch of a kind (operator)", "queue", access="admin",
                             ok=(200, "KindStateReply", "application/json"),
                             errors=(401, 403, 503)),
    "queue.resume": Operation("Lift the operator pause of a kind", "queue", access="admin",
                              ok=(200, "KindStateReply", "application/json"),
                              errors=(401, 403, 503)),
    "dashboard.data": Operation("What the dashboard draws", "operations", access="admin",
                                ok=(200, "DashboardReply", "application/json"),
                                errors=(401, 403, 503), limited=False),
    "dashboard.page": Operation("The live dashboard (HTML)", "operations", access="none",
                                ok=(200, None, "text/html"), limited=False),
    "dashboard.asset": Operation("The dashboard's stylesheet, script and icon", "operations",
                                 access="none", limited=False,
                                 ok=(200, None, "text/css,text/javascript,image/svg+xml")),
    "metrics.metrics": Operation(
        "Prometheus metrics (text exposition format)", "operations", access="metrics",
        ok=(200, None, "text/plain"), errors=(404,), limited=False,
        description="404 when METRICS_PORT serves them on their own port."),
    "openapi.document": Operation("This document", "operations", access="none",
                                  ok=(200, "OpenApiDocument", "application/json"),
                                  limited=False),
    "health.health": Operation("Health: memory, queues, concurrency, overall status",
                               "health", access="none", ok=(200, "Health", "application/json"),
                               limited=False, extra={503: "Health"}),
    "health.live": Operation("Liveness: 200 whenever the process answers", "health",
                             access="none", ok=(200, "Live", "application/json"),
                             limited=False),
    "health.ready": Operation("Readiness: 200 while alive and accepting", "health",
                              access="none", ok=(200, "Ready", "application/json"),
                              limited=False, extra={503: "Ready"}),
}


@bp.get("/openapi.json")
def document() -> Response:
    """Return the OpenAPI 3.1 document of this app."""
    doc = current_app.extensions.get(DOCUMENT_KEY)
    if doc is None:
        doc = build_document(current_app)
        current_app.extensions[DOCUMENT_KEY] = doc
    return jsonify(doc)


def build_document(app: Flask) -> dict[str, Any]:
    """Build the document from ``app``'s URL map and ``OPERATIONS``.

    Raises:
        LookupError: a route has no entry in ``OPERATIONS``.
    """
    settings = app.extensions["qudemo"].settings.web
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        op = OPERATIONS.get(rule.endpoint)
        if op is None:
            raise LookupError(f"route {rule.rule} ({rule.endpoint}) is not described in "
                              "web.openapi.OPERATIONS")
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            paths.setdefault(route_template(rule.rule), {})[method.lower()] = _operation(
                rule, op, settings.metrics_access)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "QuDemo jobs",
            "version": "1.0.0",
            "description": (
                "The job backend in front of the QuDemo Python API. Every reply is JSON "
                "except /metrics, /dashboard and its files. Errors are "
                "{success: false, error, details?}: 400 validation, 401 missing or bad "
                "token, 403 not an admin, 404 no such job (or not yours) or path, 405 "
                "method not allowed on a path, 409 duplicate or wrong state, 413 body too "
                "large, 415 not JSON, 429 rate or queue limit and 503 memory pressure or "
                "shutting down (both with Retry-After). With no JWT_SECRET outside "
                "production, authentication is off and every request is the local admin."),
        },
        "tags": [{"name": n} for n in ("jobs", "queue", "health", "operations")],
        "paths": paths,
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                "description": "HS256 JWT with userId (or sub), exp, optional role: admin."}},
            "responses": {"MethodNotAllowed": _error(405)},
        },
    }


def _schemas() -> dict[str, Any]:
    requests: tuple[type[BaseModel], ...] = (VideoBody, ClientVideoBody, QuestionBody)
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(m, "validation") for m in requests]
    models += [(m, "serialization") for m in RESPONSE_MODELS]
    _, top = models_json_schema(models, ref_template=REF)
    schemas: dict[str, Any] = top.get("$defs", {})
    return schemas


def _operation(rule: Rule, op: Operation, metrics_access: str) -> dict[str, Any]:
    status, schema, media = op.ok
    body = _ref(schema) if schema else {"type": "string"}
    ok: dict[str, Any] = {"description": STATUS_TEXT[status],
                          "content": {kind: {"schema": body} for kind in media.split(",")}}
    if status == 202:
        ok["headers"] = {"Location": {"description": "Where the job can be read.",
                                      "required": True, "schema": {"type": "string"}}}
    parameters = _path_parameters(rule)
    if op.idempotent:
        ok["headers"][REPLAYED_HEADER] = {
            "description": "true: the Idempotency-Key's job, answered again (nothing new made).",
            "schema": {"type": "string", "enum": ["true"]}}
        parameters.append(IDEMPOTENCY_PARAMETER)
    responses: dict[str, Any] = {str(status): ok}
    access = op.access
    if access == "metrics":
        access = "none" if metrics_access == "public" else "admin"
    errors = set(op.errors) | ({404} if _path_parameters(rule) else set())  # a refused value
    if op.idempotent:
        errors |= {400, 409, 422}
    if access != "none":
        errors |= {401} | ({403} if access == "admin" else set())
    if op.limited:
        errors.add(429)
    for code in sorted(errors):
        responses[str(code)] = _error(code)
    for code in op.empty:
        responses[str(code)] = {"description": STATUS_TEXT[code]}
    for code, name in op.extra.items():
        responses[str(code)] = {"description": STATUS_TEXT.get(code, "see schema"),
                                "content": {"application/json": {"schema": _ref(name)}}}
    operation: dict[str, Any] = {
        "operationId": rule.endpoint.replace(".", "_"),
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": [*parameters, *op.query],
        "responses": responses,
    }
    if op.description:
        operation["description"] = op.description
    if access != "none":
        operation["security"] = [{"bearerAuth": []}]
        if access == "admin":
            operation["description"] = (op.description + " Needs the admin role.").strip()
    if op.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(op.body.__name__),
                                             "example": _example(op.body)}},
        }
    if not operation["parameters"]:
        del operation["parameters"]
    return operation


def _path_parameters(rule: Rule) -> list[dict[str, Any]]:
    parameters = []
    for name in _PARAMETER.findall(rule.rule):
        converter = rule._converters.get(name)  # werkzeug keeps them private; read only
        items = getattr(converter, "items", None)
        if items:
            schema: dict[str, Any] = {"type": "string", "enum": sorted(items)}
        elif name in PATH_PATTERNS:
            schema = {"type": "string", "pattern": PATH_PATTERNS[name]}
        else:
            schema = {"type": "string"}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return parameters


def _error(code: int) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": STATUS_TEXT[code],
                              "content": {"application/json": {"schema":
                                                               _ref("ErrorResponse")}}}
    if code in (429, 503):
        answer["headers"] = {"Retry-After": {"description": "Seconds to wait.",
                                             "schema": {"type": "string"}}}
    if code == 401:
        answer["headers"] = {"WWW-Authenticate": {"description": "Bearer challenge.",
                                                  "schema": {"type": "string"}}}
    return answer


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _example(model: type[BaseModel]) -> dict[str, Any]:
    if model is QuestionBody:
        return {"question": "What are the main features?", "companyName": "acme-corp"}
    if model is ClientVideoBody:
        return {"videoUrl": EXAMPLE_CLIENT_VIDEO_URL, "companyName": "acme-corp", "source": "loom"}
    return {"video_url": EXAMPLE_VIDEO_URL, "company_name": "acme-corp", "source": "youtube"}
