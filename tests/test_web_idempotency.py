"""Idempotency-Key on the submission routes: replay, 422, 409, per caller, retention, restarts.

Over the real job system and the stand-in Python API; jobs are counted where they are
made (the job list) and where they run (the stand-in). The shared PostgreSQL store's
part is tests/test_pg_idempotency.py.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from actors import JobKind, JobSystem, Settings
from actors.model.errors import IdempotencyKeyTaken
from actors.model.idempotency import IdempotencyKey
from actors.model.jobs import Job, new_job_id
from actors.runtime.timers import Clock
from actors.stores.memory import MemoryJobStore
from actors.stores.sqlite import SqliteJobStore
from tests.standin import PythonApiStandIn
from tests.test_actors_support import wait_until
from tests.web_support import QUESTION, SECRET, VIDEO, bearer, make_app, wait_job

QUESTIONS = "/api/interactions/i-1/questions"
KEY = {"Idempotency-Key": '"8e03978e-40d5-43e8-bc93-6894a57f9324"'}


@pytest.fixture
def client(job_system: JobSystem) -> FlaskClient:
    return make_app(job_system).test_client()


def job_ids(system: JobSystem) -> list[str]:
    return [job.id for job in system.list_jobs(limit=500)]


def test_a_retried_question_is_answered_with_its_first_job(job_system: JobSystem,
                                                           client: FlaskClient,
                                                           standin: PythonApiStandIn) -> None:
    first = client.post(QUESTIONS, json=QUESTION, headers=KEY)
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    job_id = first.json["data"]["jobId"]

    again = client.post(QUESTIONS, json=QUESTION, headers=KEY)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["data"]["jobId"] == job_id
    assert again.headers["Location"] == first.headers["Location"]
    wait_job(client, first.headers["Location"], standin)

    # Once it has run, the key still answers the same job, now completed.
    late = client.post(QUESTIONS, json=QUESTION, headers=KEY)
    assert (late.status_code, late.json["data"]["jobId"]) == (202, job_id)
    assert late.json["data"]["status"] == "completed"
    assert job_ids(job_system) == [job_id]
    assert len(standin.calls("ask-question")) == 1
    # Without a key every request is a new job, as before.
    assert client.post(QUESTIONS, json=QUESTION).json["data"]["jobId"] != job_id


def test_a_retried_video_is_replayed_not_refused_as_a_duplicate(
        job_system: JobSystem, client: FlaskClient, standin: PythonApiStandIn) -> None:
    standin.hold("process-video")
    try:
        first = client.post("/api/video/videos", json=VIDEO, headers=KEY)
        again = client.post("/api/video/videos", json=VIDEO, headers=KEY)
        assert again.status_code == 202, again.json  # not the duplicate's 409
        assert again.json["data"]["jobId"] == first.json["data"]["jobId"]
        assert again.headers["Idempotent-Replayed"] == "true"
    finally:
        standin.release("process-video")
    wait_job(client, first.headers["Location"], standin)
    assert len(standin.calls("process-video")) == 1


def test_the_same_request_serialised_again_matches(client: FlaskClient) -> None:
    first = client.post(QUESTIONS, headers=KEY, content_type="application/json",
                        data='{"question": "What are the main features?", "companyName": "acme"}')
    again = client.post(QUESTIONS, headers=KEY, content_type="application/json",
                        data='{"companyName":"acme","question":"What are the main features?"}')
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.json["data"]["jobId"] == first.json["data"]["jobId"]


@pytest.mark.parametrize(("path", "body"), [
    (QUESTIONS, {**QUESTION, "question": "Another question?"}),
    ("/api/interactions/i-2/questions", QUESTION),  # the same body for another interaction
    ("/api/video/process", VIDEO),
])
def test_the_same_key_with_another_request_is_422(job_system: JobSystem, client: FlaskClient,
                                                  path: str, body: dict[str, Any]) -> None:
    first = client.post(QUESTIONS, json=QUESTION, headers=KEY)
    assert first.status_code == 202
    other = client.post(path, json=body, headers=KEY)
    assert other.status_code == 422
    assert other.json["success"] is False
    assert "Idempotency-Key" in other.json["error"]
    assert job_ids(job_system) == [first.json["data"]["jobId"]]


class HeldStore(MemoryJobStore):
    """A memory store whose first ``add`` waits until the test lets it go (the registry waits)."""

    def __init__(self) -> None:
        super().__init__()
        self.adding = threading.Event()
        self.go_on = threading.Event()

    def add(self, job: Job) -> None:
        if not self.adding.is_set():
            self.adding.set()
            assert self.go_on.wait(5)
        super().add(job)


def test_the_same_key_while_its_first_request_is_handled_is_409(
        fast_settings: Settings, standin: PythonApiStandIn) -> None:
    store = HeldStore()
    system = JobSystem(fast_settings, store=store).start()
    try:
        app = make_app(system)
        replies: list[Any] = []
        first = threading.Thread(target=lambda: replies.append(
            app.test_client().post(QUESTIONS, json=QUESTION, headers=KEY)))
        first.start()
        try:
            assert store.adding.wait(5)  # the first request is inside the JobRegistry's add
            busy = app.test_client().post(QUESTIONS, json=QUESTION, headers=KEY)
            assert busy.status_code == 409, busy.json
            assert "still being handled" in busy.json["error"]
        finally:
            store.go_on.set()
            first.join(10)
        assert replies[0].status_code == 202
        job_id = replies[0].json["data"]["jobId"]
        again = app.test_client().post(QUESTIONS, json=QUESTION, headers=KEY)
        assert (again.status_code, again.json["data"]["jobId"]) == (202, job_id)
        assert job_ids(system) == [job_id]
    finally:
        system.stop(drain=False)


def test_keys_belong_to_their_caller(job_system: JobSystem) -> None:
    client = make_app(job_system, jwt_secret=SECRET).test_client()
    alice = {**KEY, **bearer("alice", companyId="c-1", companyName="acme")}
    bob = {**KEY, **bearer("bob", companyId="c-1", companyName="acme")}
    first = client.post(QUESTIONS, json=QUESTION, headers=alice)
    other = client.post(QUESTIONS, json=QUESTION, headers=bob)
    assert (first.status_code, other.status_code) == (202, 202)
    assert "Idempotent-Replayed" not in other.headers
    assert first.json["data"]["jobId"] != other.json["data"]["jobId"]
    # Each one's retry finds its own job; another body is a 422 for the key's owner only.
    assert (client.post(QUESTIONS, json=QUESTION, headers=bob).json["data"]["jobId"]
            == other.json["data"]["jobId"])
    assert client.post(QUESTIONS, json={**QUESTION, "question": "Other?"},
                       headers=alice).status_code == 422
    assert len(job_ids(job_system)) == 2


@pytest.mark.parametrize("value", [
    "", '""', "x" * 256, '"' + "x" * 256 + '"', "caf\u00e9", '"caf\u00e9"', "two words",
    '"unterminated', '"bad\\escape"', '"a";p=1', '"a" "b"', 'a"b',
])
def test_a_bad_key_is_400_and_makes_no_job(job_system: JobSystem, client: FlaskClient,
                                           value: str) -> None:
    reply = client.post(QUESTIONS, json=QUESTION, headers={"Idempotency-Key": value})
    assert reply.status_code == 400, (value, reply.json)
    assert reply.json["details"][0]["field"] == "Idempotency-Key"
    assert reply.json["error"].startswith("Idempotency-Key ")
    assert job_ids(job_system) == []


def test_a_key_sent_twice_is_400(client: FlaskClient) -> None:
    reply = client.post(QUESTIONS, json=QUESTION,
                        headers=[("Idempotency-Key", "a"), ("Idempotency-Key", "a")])
    assert reply.status_code == 400


@pytest.mark.parametrize(("value", "same_as"), [
    ('"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
    ('"with \\"quotes\\" and spaces"', None),
    ("k" * 255, None),
])
def test_keys_in_the_drafts_form_and_as_tokens_are_accepted(client: FlaskClient, value: str,
                                                            same_as: str | None) -> None:
    first = client.post(QUESTIONS, json=QUESTION, headers={"Idempotency-Key": value})
    assert first.status_code == 202
    again = client.post(QUESTIONS, json=QUESTION, headers={"Idempotency-Key": same_as or value})
    assert again.headers.get("Idempotent-Replayed") == "true"  # a String and its token: one key


def test_refused_requests_store_no_key(job_system: JobSystem, client: FlaskClient,
                                       standin: PythonApiStandIn) -> None:
    invalid = client.post("/api/video/process", json={**VIDEO, "video_url": "ftp://x"},
                          headers=KEY)
    assert invalid.status_code == 400
    standin.set_memory(1900.0)
    assert job_system.check_memory().admission_refused
    refused = client.post("/api/video/process", json=VIDEO, headers=KEY)
    assert refused.status_code == 503
    standin.set_memory(500.0)
    assert not job_system.check_memory().admission_refused
    # The same key again, now with a body that can be accepted: a job, not a 422 or a replay.
    accepted = client.post("/api/video/process", json=VIDEO, headers=KEY)
    assert accepted.status_code == 202, accepted.json
    assert "Idempotent-Replayed" not in accepted.headers
    assert job_ids(job_system) == [accepted.json["data"]["jobId"]]


class SkippingClock(Clock):
    """The real wall clock plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def time(self) -> float:
        return super().time() + self.offset_s


def key_rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0])


def test_a_key_is_forgotten_after_its_retention(fast_settings: Settings, tmp_path: Path,
                                                standin: PythonApiStandIn) -> None:
    clock = SkippingClock()
    path = tmp_path / "jobs.sqlite3"
    settings = fast_settings.replace(store="sqlite", db_path=str(path),
                                     idempotency_retention_s=60.0)
    system = JobSystem(settings, clock=clock).start()
    try:
        client = make_app(system).test_client()
        first = client.post(QUESTIONS, json=QUESTION, headers=KEY).json["data"]["jobId"]
        clock.offset_s = 59.0
        assert client.post(QUESTIONS, json=QUESTION, headers=KEY).json["data"]["jobId"] == first
        clock.offset_s = 61.0
        # Expired: removed by the registry's retention timer (every second) ...
        wait_until(lambda: key_rows(path) == 0, "the expired key to be removed")
        # ... and a new request under it is a new job (the old one is still retained).
        later = client.post(QUESTIONS, json=QUESTION, headers=KEY)
        assert later.status_code == 202 and "Idempotent-Replayed" not in later.headers
        assert later.json["data"]["jobId"] != first
        assert len(job_ids(system)) == 2
        assert key_rows(path) == 1
    finally:
        system.stop(drain=False)


def test_keys_survive_a_restart_with_sqlite(fast_settings: Settings, tmp_path: Path,
                                            standin: PythonApiStandIn) -> None:
    settings = fast_settings.replace(store="sqlite", db_path=str(tmp_path / "jobs.sqlite3"))
    system = JobSystem(settings).start()
    try:
        client = make_app(system).test_client()
        first = client.post(QUESTIONS, json=QUESTION, headers=KEY)
        wait_job(client, first.headers["Location"], standin)
    finally:
        system.stop(drain=False)
    system = JobSystem(settings).start()
    try:
        client = make_app(system).test_client()
        again = client.post(QUESTIONS, json=QUESTION, headers=KEY)
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.json["data"] == {**again.json["data"], "jobId": first.json["data"]["jobId"],
                                      "status": "completed"}
        assert client.post(QUESTIONS, json={**QUESTION, "question": "Other?"},
                           headers=KEY).status_code == 422
        assert len(job_ids(system)) == 1
        assert len(standin.calls("ask-question")) == 1
    finally:
        system.stop(drain=False)


# --- the stores: a key is stored with its job, in one transaction ----------------------


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    opened = MemoryJobStore() if request.param == "memory" else SqliteJobStore(
        tmp_path / "jobs.sqlite3")
    yield opened
    opened.close()


def keyed(key: str = "k", fingerprint: str = "f", *, at: float = 1000.0,
          expires_at: float = 2000.0, scope: str = "u1") -> Job:
    return Job(id=new_job_id(), kind=JobKind.QA, priority=1, owner=scope, created_at=at,
               idempotency=IdempotencyKey(scope=scope, key=key, fingerprint=fingerprint,
                                          expires_at=expires_at))


def test_a_store_refuses_a_live_key_and_stores_nothing_of_the_job(store: Any) -> None:
    first = keyed()
    store.add(first)
    found = store.keyed_job("u1", "k", now=1500.0)
    assert found is not None and (found.fingerprint, found.job.id) == ("f", first.id)
    second = keyed(fingerprint="g", at=1500.0)
    with pytest.raises(IdempotencyKeyTaken) as taken:
        store.add(second)
    assert taken.value.found is not None and taken.value.found.job.id == first.id
    assert store.get(second.id) is None
    assert store.keyed_job("u2", "k", now=1500.0) is None  # another caller's key
    # Expired at 2000: no longer found, taken over by the next job, pruned by time.
    assert store.keyed_job("u1", "k", now=2000.0) is None
    store.add(keyed(key="other", at=1200.0, expires_at=2200.0))
    third = keyed(fingerprint="h", at=2500.0, expires_at=3500.0)
    store.add(third)
    assert store.keyed_job("u1", "k", now=2600.0).job.id == third.id  # type: ignore[union-attr]
    assert store.prune_idempotency_keys(expired_at=3000.0, limit=10) == 1
    assert store.keyed_job("u1", "k", now=3000.0) is not None


def test_a_key_whose_job_was_removed_counts_as_unused(store: Any) -> None:
    first = keyed()
    store.add(first)
    store.remove([first.id])
    assert store.keyed_job("u1", "k", now=1500.0) is None
    second = keyed(at=1500.0)
    store.add(second)
    assert store.keyed_job("u1", "k", now=1600.0).job.id == second.id  # type: ignore[union-attr]


# --- documented where clients look --------------------------------------------------------


def test_the_document_and_cors_name_the_header(job_system: JobSystem) -> None:
    client = make_app(job_system, cors_origins=("https://app.example",)).test_client()
    paths = client.get("/openapi.json").json["paths"]
    for path in ("/api/video/process", "/api/video/videos",
                 "/api/interactions/{interaction_id}/questions"):
        operation = paths[path]["post"]
        assert "Idempotency-Key" in [p["name"] for p in operation["parameters"]]
        assert {"400", "409", "422"} <= set(operation["responses"])
        assert "Idempotent-Replayed" in operation["responses"]["202"]["headers"]
    preflight = client.options(QUESTIONS, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type, idempotency-key"})
    allowed = preflight.headers.get("Access-Control-Allow-Headers", "").lower()
    assert "idempotency-key" in allowed
    reply = client.post(QUESTIONS, json=QUESTION, headers={**KEY, "Origin": "https://app.example"})
    assert "Idempotent-Replayed" in reply.headers.get("Access-Control-Expose-Headers", "")
