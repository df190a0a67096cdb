"""Live job events end to end: a real HTTP client reading streams from a real gunicorn.

Snapshot first, every change to the terminal state and the end of the stream, resume with
Last-Event-ID (after a restart too, and on a second instance of a shared PostgreSQL store),
the stream tokens for EventSource, the bound on streams per caller, and 100 open streams
with the probes and job reads still answering: the streams hold none of the 8 threads.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from tests import pg_server
from tests.gunicorn_server import GunicornServer
from tests.sse_client import Event, SseClient, StreamEnded
from tests.standin import PythonApiStandIn, Reply
from web.stream_tokens import mint

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url

SECRET = "e2e-secret-0123456789abcdef0123456789abcdef"
CHANGES = ["processing", "retrying", "queued", "processing", "completed"]
"""A question whose first call answers 503, from its queued snapshot on."""


def auth(user: str, role: str | None = None) -> dict[str, str]:
    claims: dict[str, Any] = {"userId": user, "exp": int(time.time()) + 3600,
                              "companyNames": ["acme"]}
    if role:
        claims["role"] = role
    return {"Authorization": f"Bearer {jwt.encode(claims, SECRET, algorithm='HS256')}"}


ADMIN = auth("ops", "admin")


def base_env(standin: PythonApiStandIn, **extra: str) -> dict[str, str]:
    return {
        "PYTHON_API_BASE_URL": standin.url, "APP_ENV": "production", "JWT_SECRET": SECRET,
        "QUEUE_STORE": "sqlite", "QUEUE_BACKOFF_DELAY": "50", "QUEUE_BACKOFF_MAX_MS": "200",
        "PYTHON_API_STATUS_TIMEOUT_MS": "500", "EVENTS_HEARTBEAT_MS": "300",
        "EVENTS_MAX_STREAMS_PER_CALLER": "3", "RATE_LIMIT_MAX_REQUESTS": "100000",
        "GUNICORN_ACCESS_LOG": "-", **extra,
    }


@pytest.fixture(scope="module")
def standin() -> Iterator[PythonApiStandIn]:
    with PythonApiStandIn() as server:
        yield server


@pytest.fixture(scope="module")
def server(standin: PythonApiStandIn, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[GunicornServer]:
    gunicorn = GunicornServer(tmp_path_factory.mktemp("events"), base_env(standin)).start()
    yield gunicorn
    gunicorn.stop()


def ask(server: GunicornServer, headers: dict[str, str], question: str = "What?"
        ) -> dict[str, Any]:
    reply = server.request("POST", "/api/interactions/demo-1/questions", headers=headers,
                           json={"question": question, "companyName": "acme"})
    assert reply.status_code == 202, reply.text
    data: dict[str, Any] = reply.json()["data"]
    return data


def pause_qa(server: GunicornServer, paused: bool, headers: dict[str, str] = ADMIN) -> None:
    reply = server.request("POST", f"/api/queue/qa/{'pause' if paused else 'resume'}",
                           headers=headers)
    assert reply.status_code == 200, reply.text


def job_path(job_id: str) -> str:
    return f"/api/queue/jobs/qa/{job_id}/events"


def names(events: list[Event]) -> list[str]:
    return [e.name for e in events]


def follow_a_retried_question(server: GunicornServer, standin: PythonApiStandIn,
                              user: str) -> tuple[str, Event, list[Event]]:
    """Submit a question while questions are paused, follow it: (job id, snapshot, changes)."""
    pause_qa(server, True)
    data = ask(server, auth(user))
    with SseClient(server.url, data["eventsUrl"]) as stream:  # the 202's URL: token inside
        assert stream.status == 200 and stream.headers["Content-Type"].startswith(
            "text/event-stream")
        snapshot = stream.next_event()
        standin.script("ask-question", Reply(status=503))
        pause_qa(server, False)
        changes = stream.events_to_end()
    return data["jobId"], snapshot, changes


def test_a_job_stream_sends_its_state_then_every_change_and_ends(
        server: GunicornServer, standin: PythonApiStandIn) -> None:
    job_id, snapshot, changes = follow_a_retried_question(server, standin, "alice")
    assert snapshot.name == "queued" and snapshot.data["queuePosition"] == 1
    assert names(changes) == CHANGES
    ids = [snapshot.id, *[e.id for e in changes]]
    assert ids == sorted(set(ids))  # every event has an id, growing
    # The data is the job GET's shape; the owner sees error categories, never the text.
    got = server.request("GET", f"/api/queue/jobs/qa/{job_id}", headers=auth("alice")).json()
    assert changes[-1].data == got["data"]
    assert set(snapshot.data) == set(got["data"])
    retrying = changes[1].data
    assert retrying["retryInSeconds"] > 0 and retrying["nextAttemptAt"]
    assert retrying["lastError"] == "the processing service failed"
    assert changes[-1].data["result"]["answer"] == "This is the answer."
    # An admin sees the full error text, as in the job GET.
    with SseClient(server.url, job_path(job_id), headers={**ADMIN, "Last-Event-ID": str(
            ids[0])}) as admin:
        assert "503" in admin.events_to_end()[1].data["lastError"]


def test_last_event_id_resumes_without_loss_or_duplicates(
        server: GunicornServer, standin: PythonApiStandIn) -> None:
    job_id, snapshot, changes = follow_a_retried_question(server, standin, "alice")
    seen = [snapshot, *changes]
    for k, last in enumerate(seen[:-1]):
        with SseClient(server.url, job_path(job_id),
                       headers={**auth("alice"), "Last-Event-ID": str(last.id)}) as again:
            rest = again.events_to_end()
        assert [(e.id, e.name) for e in rest] == [(e.id, e.name) for e in seen[k + 1:]]
    # The query parameter does the same (for clients that build the URL themselves).
    with SseClient(server.url, f"{job_path(job_id)}?lastEventId={seen[2].id}",
                   headers=auth("alice")) as again:
        assert [e.id for e in again.events_to_end()] == [e.id for e in seen[3:]]
    # After the terminal event there is nothing left: 204 (EventSource stops reconnecting).
    with SseClient(server.url, job_path(job_id),
                   headers={**auth("alice"), "Last-Event-ID": str(seen[-1].id)}) as done:
        assert done.status == 204
    with SseClient(server.url, job_path(job_id),
                   headers={**auth("alice"), "Last-Event-ID": "x1"}) as bad:
        assert bad.status == 400


def test_the_caller_stream_carries_all_of_ones_jobs_and_only_those(
        server: GunicornServer, standin: PythonApiStandIn) -> None:
    with SseClient(server.url, "/api/queue/events", headers=auth("erin")) as mine, \
            SseClient(server.url, "/api/queue/events", headers=auth("frank")) as other:
        opened = mine.next_event()
        assert opened.name == "snapshot" and opened.data["jobs"] == []
        assert other.next_event().name == "snapshot"
        first = ask(server, auth("erin"), "One?")["jobId"]
        second = ask(server, auth("erin"), "Two?")["jobId"]
        got: list[Event] = []
        while [e.data["id"] for e in got if e.name == "completed"] != [first, second]:
            got.append(mine.next_event())
        assert {e.data["id"] for e in got} == {first, second}
        # frank's stream saw none of it: the next thing it gets is a heartbeat.
        other.wait_comment("keepalive")
    # Resuming the caller stream replays exactly what followed.
    with SseClient(server.url, "/api/queue/events",
                   headers={**auth("erin"), "Last-Event-ID": str(got[1].id)}) as again:
        replayed = [again.next_event() for _ in got[2:]]
    assert [(e.id, e.name) for e in replayed] == [(e.id, e.name) for e in got[2:]]


def test_stream_tokens_are_scoped_short_lived_and_never_api_tokens(
        server: GunicornServer) -> None:
    data = ask(server, auth("alice"))
    token = data["eventsToken"]
    assert data["eventsUrl"].endswith(f"?access_token={token}")
    # Bob's token does not open alice's job: as if it did not exist.
    bobs = server.request("POST", "/api/queue/events/token", headers=auth("bob")).json()
    assert bobs["data"]["expiresIn"] == 600
    with SseClient(server.url, f"{job_path(data['jobId'])}?access_token="
                               f"{bobs['data']['token']}") as stranger:
        assert stranger.status == 404
    # The caller stream with bob's token is bob's.
    with SseClient(server.url, bobs["data"]["eventsUrl"]) as own:
        assert own.status == 200 and own.next_event().name == "snapshot"
    # A normal (long-lived) JWT in the URL is refused; a stream token is no API token.
    api_token = auth("alice")["Authorization"].split()[1]
    with SseClient(server.url, f"{job_path(data['jobId'])}?access_token={api_token}") as url:
        assert url.status == 401 and "never accepted in a URL" in url.body()
    as_bearer = server.request("GET", f"/api/queue/jobs/qa/{data['jobId']}",
                               headers={"Authorization": f"Bearer {token}"})
    assert as_bearer.status_code == 401
    expired = mint("alice", SECRET, ttl_s=600, now=time.time() - 3600)
    with SseClient(server.url, f"{job_path(data['jobId'])}?access_token={expired}") as old:
        assert old.status == 401 and "expired" in old.body()
    # No token reaches the access log.
    assert server.wait_until(lambda: "access_token=***" in server.log(), 10)
    assert token not in server.log() and bobs["data"]["token"] not in server.log()


def test_streams_per_caller_are_bounded(server: GunicornServer) -> None:
    open_ones = [SseClient(server.url, "/api/queue/events", headers=auth("carol"))
                 for _ in range(3)]
    try:
        for stream in open_ones:
            assert stream.next_event().name == "snapshot"
        with SseClient(server.url, "/api/queue/events", headers=auth("carol")) as fourth:
            assert fourth.status == 429 and fourth.headers.get("Retry-After")
        with SseClient(server.url, "/api/queue/events", headers=auth("dave")) as others:
            assert others.status == 200  # another caller is not affected
        open_ones.pop().close()

        def admitted_again() -> bool:
            with SseClient(server.url, "/api/queue/events", headers=auth("carol")) as again:
                return again.status == 200

        assert server.wait_until(admitted_again, 20)  # the closed stream's place is free
    finally:
        for stream in open_ones:
            stream.close()


def test_a_hundred_open_streams_leave_the_api_answering(
        server: GunicornServer) -> None:
    streams = [SseClient(server.url, "/api/queue/events", headers=auth(f"crowd-{i}"))
               for i in range(100)]
    try:
        assert all(s.status == 200 and s.next_event().name == "snapshot" for s in streams)
        # 100 streams open, 8 threads: probes and normal requests still answer.
        live = server.request("GET", "/health/live", timeout=10)
        assert live.status_code == 200
        data = ask(server, auth("crowd-7"))
        got = server.request("GET", f"/api/queue/jobs/qa/{data['jobId']}",
                             headers=auth("crowd-7"), timeout=10)
        assert got.status_code == 200
        # Every stream is alive: the job reaches its owner's, heartbeats reach the others.
        assert streams[7].next_event().data["id"] == data["jobId"]
        for stream in streams[:7]:
            stream.wait_comment("keepalive")
    finally:
        for stream in streams:
            stream.close()


def test_streams_end_at_sigterm_and_resume_after_the_restart(
        standin: PythonApiStandIn, tmp_path: Path) -> None:
    # A drain timeout of 10 minutes: a stream that held the worker would hold the exit.
    env = base_env(standin, QUEUE_DRAIN_TIMEOUT_MS="600000")
    first = GunicornServer(tmp_path, env).start()
    try:
        pause_qa(first, True)
        data = ask(first, auth("alice"))
        with SseClient(first.url, data["eventsUrl"], timeout_s=60) as stream:
            snapshot = stream.next_event()
            assert snapshot.name == "queued"
            first.signal()
            with pytest.raises(StreamEnded):
                stream.next_event()
        assert first.wait_exit(timeout_s=60) == 0
    finally:
        first.stop()
    # The same file, a new process: the pause is gone, the job runs; nothing is lost.
    second = GunicornServer(tmp_path, env).start()
    try:
        with SseClient(second.url, job_path(data["jobId"]),
                       headers={**auth("alice"), "Last-Event-ID": str(snapshot.id)}) as again:
            rest = again.events_to_end()
        assert names(rest) == ["processing", "completed"]
        assert all(e.id > snapshot.id for e in rest)
    finally:
        second.stop()


def test_resume_on_another_instance_of_the_shared_store(
        standin: PythonApiStandIn, tmp_path: Path, pg_url: str) -> None:
    env = base_env(standin, QUEUE_STORE="postgres", DATABASE_URL=pg_url, WEB_CONCURRENCY="1",
                   GUNICORN_ACCESS_LOG="")
    a = GunicornServer(tmp_path, env).start()
    b = GunicornServer(tmp_path, env).start()
    try:
        pause_qa(a, True)  # a global pause: neither instance takes the job
        data = ask(a, auth("alice"))
        with SseClient(a.url, data["eventsUrl"]) as on_a:
            seen = [on_a.next_event()]
            standin.script("ask-question", Reply(status=503))
            pause_qa(b, False)
            seen += [on_a.next_event(), on_a.next_event()]  # processing, retrying
        # The client reconnects to the other instance, where it left off.
        with SseClient(b.url, job_path(data["jobId"]),
                       headers={**auth("alice"), "Last-Event-ID": str(seen[-1].id)}) as on_b:
            rest = on_b.events_to_end()
        with SseClient(b.url, job_path(data["jobId"]),
                       headers={**auth("alice"), "Last-Event-ID": "0"}) as everything:
            logged = everything.events_to_end()
        # What a's stream and then b's gave is the whole log, once each, in order. (A shared
        # queue claims a retry when it is due: retrying goes straight to processing.)
        assert [(e.id, e.name) for e in seen + rest] == [(e.id, e.name) for e in logged]
        assert names(logged) == ["queued", "processing", "retrying", "processing", "completed"]
    finally:
        a.stop()
        b.stop()
