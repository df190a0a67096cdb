"""Live job events over server-sent events (README "Live job events").

* ``GET /api/queue/jobs/<kind>/<id>/events``: the job's current state first, then every
  change, each an SSE event named after the state (``queued``, ``processing``,
  ``retrying``, ``completed``, ``failed``, ``cancelled``) whose data is the job exactly
  as ``GET /api/queue/jobs/<kind>/<id>`` shows it (``web.present.job_json``: a non-admin
  sees ``lastError`` as a category), plus ``retryInSeconds`` on ``retrying``. The stream
  ends after a terminal state; asked again after it, it answers 204 (EventSource stops).
* ``GET /api/queue/events``: the caller's own jobs (an admin's: every job); first a
  ``snapshot`` event (the unfinished jobs), then every change of any of them. It does
  not end by itself.
* ``POST /api/queue/events/token``: a short-lived token for ``?access_token=``
  (``web.stream_tokens``), since EventSource cannot send headers.

Every event has an ``id`` from the job store's event log (``actors.stores.events``). A client
that reconnects with ``Last-Event-ID`` (or ``?lastEventId=``) gets every event after
that one, none twice, on any instance of a shared store, after restarts too: events
are read from the store, never from this process's memory. Open streams per caller and
per process are bounded (429, 503); streams hold no thread under the buffering worker
(``web.sse``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from actors.model.errors import JobNotFound, QueueError, ShuttingDown
from actors.model.events import JobEvent
from actors.model.jobs import FINISHED_STATES, Job, JobState
from actors.stores.events import EventFeed, Subscription
from web.auth import Principal, current_principal, require_user
from web.context import extension, job_system, web_settings
from web.errors import ApiError, RequestInvalid
from web.models import JOB_ID, check_path_id, query_value
from web.present import iso, job_json
from web.sse import EventStream, StreamSettings
from web.stream_tokens import events_links, mint, verify

if TYPE_CHECKING:
    from actors.stores.base import JobStore
    from actors.system import JobSystem

logger = logging.getLogger(__name__)

bp = Blueprint("events", __name__)
SERVICE = "qudemo.events"
JOB_EVENTS_PATH = "/api/queue/jobs/<any(video, qa):kind>/<job_id>/events"
PAGE = 500
MAX_BACKLOG = 5000
"""Most events one answer replays; past it the stream ends there and the client resumes."""
MAX_SNAPSHOT_JOBS = 100
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class TooManyStreams(ApiError):
    """Too many open event streams."""

    status = 429


class StreamsFull(ApiError):
    """This server has as many open event streams as it takes."""

    status = 503


class EventService:
    """One app's streams: the event feed (started on first use) and the open-stream counts."""

    def __init__(self, system: JobSystem, settings: StreamSettings) -> None:
        self.system = system
        self.settings = settings
        self._feed: EventFeed | None = None
        self._lock = threading.Lock()
        self._open: Counter[str] = Counter()
        self._positions: dict[int, int | None] = {}
        self._rendered: dict[tuple[int, bool, bool], bytes] = {}

    def __repr__(self) -> str:
        return f"<EventService open={self.open_total} feed={self._feed!r}>"

    @property
    def open_total(self) -> int:
        """How many streams are open in this process."""
        return self._open.total()

    @property
    def store(self) -> JobStore:
        """The job store whose event log the streams read."""
        store = self.system.store
        if store is None:
            raise ShuttingDown("the job system is not started")
        return store

    def feed(self) -> EventFeed:
        """The running event feed of this process."""
        with self._lock:
            if self._feed is None or self._feed.stopped:
                self._feed = EventFeed(self.store, poll_s=self.settings.poll_s,
                                       until=self.stopped).start()
            return self._feed

    def admit(self, user_id: str) -> Callable[[], None]:
        """Count a new stream of ``user_id``; return its release (idempotent).

        Raises:
            TooManyStreams: the caller has ``max_per_caller`` open already (429).
            StreamsFull: the process has ``max_total`` open already (503).
        """
        retry = {"Retry-After": "5"}
        with self._lock:
            if self._open[user_id] >= self.settings.max_per_caller:
                raise TooManyStreams(f"at most {self.settings.max_per_caller} open event "
                                     "streams per caller; close one first", headers=retry)
            if self._open.total() >= self.settings.max_total:
                raise StreamsFull("this server has as many open event streams as it takes;"
                                  " try again later", headers=retry)
            self._open[user_id] += 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._lock:
                self._open[user_id] -= 1
                if self._open[user_id] <= 0:
                    del self._open[user_id]

        return release

    def stopped(self) -> bool:
        """Whether the job system has stopped (then open streams end)."""
        return not self.system.accepting and not self.system.draining

    def position(self, event: JobEvent) -> int | None:
        """The queue position of a queued job, as of ``event`` (asked once per event)."""
        if event.id in self._positions:
            return self._positions[event.id]
        try:
            found = self.system.queue_position(event.job.id)
        except QueueError:
            found = None
        if len(self._positions) > 1000:
            self._positions.clear()
        self._positions[event.id] = found
        return found

    def rendered(self, event: JobEvent, *, with_position: bool, full_error: bool) -> bytes:
        """``event`` as SSE, rendered once for every stream that shows it the same way.

        Called on the feed's thread mostly (request threads for replays): a race renders
        an event twice, never wrongly.
        """
        key = (event.id, with_position, full_error)
        found = self._rendered.get(key)
        if found is None:
            position = self.position(event) if with_position else None
            found = sse(event.job.state.value, event.id,
                        job_payload(event.job, position, full_error=full_error))
            if len(self._rendered) > 2000:
                self._rendered.clear()
            self._rendered[key] = found
        return found

    def close(self) -> None:
        """Stop the feed (the streams it fed get nothing more)."""
        with self._lock:
            feed, self._feed = self._feed, None
        if feed is not None:
            feed.stop()


def init_events(app: Flask, system: JobSystem, settings: StreamSettings) -> None:
    """Give ``app`` its event streams (the blueprint is registered by the factory)."""
    app.extensions[SERVICE] = EventService(system, settings)


def service(app: Flask | None = None) -> EventService:
    """Return the ``EventService`` of ``app`` (default: the current app)."""
    found: EventService = (app or current_app).extensions[SERVICE]
    return found


# --- turning events into SSE ----------------------------------------------------------------

def sse(name: str, event_id: int, payload: Any) -> bytes:
    """One SSE event; JSON on one ``data:`` line (json.dumps never writes a newline)."""
    data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event_id}\nevent: {name}\ndata: {data}\n\n".encode()


def job_payload(job: Job, position: int | None, *, full_error: bool) -> dict[str, Any]:
    """The data of a job event: the job GET's shape (plus ``retryInSeconds`` when retrying)."""
    shown = job_json(job, position, full_error=full_error)
    if job.state is JobState.RETRYING and job.retry_delays_s:
        shown["retryInSeconds"] = round(job.retry_delays_s[-1], 3)
    return shown


class Follower:
    """Turns one stream's events into SSE: filters them, renders them, ends on a terminal state.

    Live events may arrive (on the feed's thread) before the stream exists: they wait
    until ``attach``. Every event is sent once, in id order: ids at or below the last
    one sent are dropped (a replay and the live feed overlap by design).
    """

    def __init__(self, svc: EventService, *, job_id: str | None, owner: str | None,
                 full_error: bool, end_on_terminal: bool) -> None:
        self.svc = svc
        self.job_id = job_id
        self.owner = owner
        self.full_error = full_error
        self.end_on_terminal = end_on_terminal
        self.stream: EventStream | None = None
        self.last_id = 0
        self.ended = False
        self._pending: list[JobEvent] = []
        self._lock = threading.Lock()

    def matches(self, event: JobEvent) -> bool:
        """Whether ``event`` belongs on this stream."""
        job = event.job
        return ((self.job_id is None or job.id == self.job_id)
                and (self.owner is None or job.owner == self.owner))

    def render(self, events: list[JobEvent]) -> bytes:
        """Render the matching events past ``last_id``; note a terminal one."""
        wanted = [e for e in events if e.id > self.last_id and self.matches(e)]
        newest = {e.job.id: e.id for e in wanted}
        out = bytearray()
        for event in wanted:
            if self.ended:
                break
            queued = event.job.state is JobState.QUEUED and newest[event.job.id] == event.id
            out += self.svc.rendered(event, with_position=queued, full_error=self.full_error)
            self.last_id = event.id
            if self.end_on_terminal and event.job.state in FINISHED_STATES:
                self.ended = True
        return bytes(out)

    def deliver(self, events: list[JobEvent]) -> None:
        """The feed's callback: send (or keep, before ``attach``) new events."""
        with self._lock:
            if self.stream is None:
                self._pending.extend(events)
                return
            if self.ended:
                return
            chunk = self.render(events)
            if chunk or self.ended:
                self.stream.push(chunk, last=self.ended)

    def attach(self, stream: EventStream) -> None:
        """Start sending into ``stream``: first what arrived meanwhile."""
        with self._lock:
            self.stream = stream
            pending, self._pending = self._pending, []
            chunk = self.render(pending) if not self.ended else b""
            if chunk or self.ended:
                stream.push(chunk, last=self.ended)


# --- routes ---------------------------------------------------------------------------------

@bp.get(JOB_EVENTS_PATH)
def job_events(kind: str, job_id: str) -> Response:
    """Stream one job's state, then its every change, until a terminal state."""
    caller = _caller()
    problems = check_path_id(job_id, "jobId", JOB_ID)
    if problems:
        raise RequestInvalid(details=problems)
    after = _last_event_id()
    job = job_system().get(job_id)
    if job.kind.value != kind or not caller.can_see(job):
        raise JobNotFound()
    if request.method == "HEAD":
        return _headers_only()
    svc = service()
    release = svc.admit(caller.user_id)
    try:
        follower = Follower(svc, job_id=job.id, owner=None, full_error=caller.is_admin,
                            end_on_terminal=True)
        sub, horizon = svc.feed().subscribe(follower.deliver)
        try:
            logged, truncated = _replay(svc.store, 0, job_id=job.id)
            last = logged[-1] if logged else JobEvent(id=horizon, job=job, at=time.time())
            if after is not None and last.id <= after and last.job.state in FINISHED_STATES:
                raise _SeenToTheEnd()
            # Without Last-Event-ID: the current state; with it: every change after it.
            replay = [last] if after is None else [e for e in logged if e.id > after]
            follower.last_id = max(after or 0, 0)
            return _open(svc, follower, sub, release, replay, truncated and after is not None)
        except BaseException:
            svc.feed().unsubscribe(sub)
            raise
    except _SeenToTheEnd:
        release()
        return Response(status=204, headers=STREAM_HEADERS)
    except BaseException:
        release()
        raise


@bp.get("/api/queue/events")
def caller_events() -> Response:
    """Stream every change of the caller's jobs (an admin's: all jobs); never ends by itself."""
    caller = _caller()
    after = _last_event_id()
    owner = None if caller.is_admin else caller.user_id
    if request.method == "HEAD":
        return _headers_only()
    svc = service()
    release = svc.admit(caller.user_id)
    try:
        follower = Follower(svc, job_id=None, owner=owner, full_error=caller.is_admin,
                            end_on_terminal=False)
        sub, horizon = svc.feed().subscribe(follower.deliver)
        try:
            if after is not None:
                replay, truncated = _replay(svc.store, after, owner=owner)
                follower.last_id = after
                return _open(svc, follower, sub, release, replay, truncated)
            jobs = [job for state in (JobState.QUEUED, JobState.PROCESSING, JobState.RETRYING)
                    for job in job_system().list_jobs(state=state, owner=owner,
                                                      limit=MAX_SNAPSHOT_JOBS)]
            shown = [job_json(job, full_error=caller.is_admin) for job in jobs]
            snapshot = sse("snapshot", horizon, {"jobs": shown, "at": iso(time.time())})
            follower.last_id = horizon
            return _open(svc, follower, sub, release, [], False, opening=snapshot)
        except BaseException:
            svc.feed().unsubscribe(sub)
            raise
    except BaseException:
        release()
        raise


@bp.post("/api/queue/events/token")
@require_user
def events_token() -> Response:
    """Mint a short-lived token for ``?access_token=`` on the events routes (own jobs only)."""
    principal = current_principal()
    ttl_s = extension().settings.streams.token_ttl_s
    secret = web_settings().jwt_secret
    token = None if secret is None else mint(principal.user_id, secret, ttl_s=ttl_s)
    links = events_links(None)
    return jsonify({"success": True, "data": {
        "token": token, "expiresIn": int(ttl_s),
        "expiresAt": iso(time.time() + ttl_s) if token else None,
        "eventsUrl": links["eventsUrl"]}})


# --- plumbing -------------------------------------------------------------------------------

class _SeenToTheEnd(Exception):
    """The client has every event of a finished job: 204, so that EventSource stops."""


def _open(svc: EventService, follower: Follower, sub: Subscription,
          release: Callable[[], None], replay: list[JobEvent], truncated: bool, *,
          opening: bytes = b"") -> Response:
    """Answer with a stream: the retry hint, the opening events, then what the feed brings."""
    first = f"retry: {svc.settings.retry_ms}\n\n".encode() + opening + follower.render(replay)
    feed = svc.feed()

    def closed() -> None:
        feed.unsubscribe(sub)
        release()

    stream = EventStream(first, heartbeat_s=svc.settings.heartbeat_s,
                         socket=request.environ.get("gunicorn.socket"), on_close=closed,
                         should_end=svc.stopped)
    if truncated:
        follower.ended = True  # the client reconnects from the last id it got
    follower.attach(stream)
    if follower.ended:
        feed.unsubscribe(sub)
    response = Response(stream, mimetype="text/event-stream", headers=STREAM_HEADERS,
                        direct_passthrough=True)
    return response


def _replay(store: JobStore, after: int, **only: str | None) -> tuple[list[JobEvent], bool]:
    """Read the logged events after ``after`` (at most MAX_BACKLOG); say if more remain."""
    found: list[JobEvent] = []
    while len(found) < MAX_BACKLOG:
        page = store.events_after(after, limit=PAGE, **only)
        found += page
        if len(page) < PAGE:
            return found, False
        after = page[-1].id
    return found, True


def _caller() -> Principal:
    """The caller: the Authorization header, else a stream token in ``access_token``."""
    problems: list[dict[str, str]] = []
    token = query_value(request.args, "access_token", problems)
    if problems:
        raise RequestInvalid(details=problems)
    secret = web_settings().jwt_secret
    if token and secret is not None and not request.headers.get("Authorization"):
        return verify(token, secret)
    return current_principal()


def _last_event_id() -> int | None:
    """``Last-Event-ID`` (header), else ``lastEventId`` (query); ``None`` when neither."""
    problems: list[dict[str, str]] = []
    value = request.headers.get("Last-Event-ID")
    field = "Last-Event-ID"
    if value is None or not value.strip():
        value, field = query_value(request.args, "lastEventId", problems), "lastEventId"
    if problems:
        raise RequestInvalid(details=problems)
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 18:
        raise RequestInvalid(details=[{"field": field,
                                       "message": "must be the id of an event (digits)"}])
    return int(value)


def _headers_only() -> Response:
    return Response(status=200, mimetype="text/event-stream", headers=STREAM_HEADERS)
