"""Idempotency-Key with the shared PostgreSQL store: one job per key across instances.

Two instances (job systems, each with its own store and app) on one database, as in
tests/test_pg_shared.py; the stores' part on two stores opened on one schema.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from actors import JobKind, JobState
from actors.model.errors import IdempotencyKeyTaken
from actors.model.idempotency import IdempotencyKey
from actors.stores.postgres.store import PostgresJobStore
from tests import pg_server
from tests.standin import PythonApiStandIn
from tests.test_actors_support import wait_state
from tests.web_support import QUESTION, make_app, wait_job

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
open_pg = pg_server.open_pg
pytestmark = pytest.mark.timeout(120)

QUESTIONS = "/api/interactions/i-1/questions"
KEY = {"Idempotency-Key": '"8e03978e-40d5-43e8-bc93-6894a57f9324"'}
start = pg_server.start
Start = pg_server.Start




def keyed(key: str = "k", fingerprint: str = "f", *, at: float = pg_server.T0,
          expires_at: float = pg_server.T0 + 100.0):  # type: ignore[no-untyped-def]
    return pg_server.make_job(created_at=at, idempotency=IdempotencyKey(
        scope="u1", key=key, fingerprint=fingerprint, expires_at=expires_at))


def test_a_key_taken_on_one_store_is_refused_on_another(
        open_pg: Callable[..., PostgresJobStore]) -> None:
    a, b = open_pg("a"), open_pg("b")
    first = a.insert(keyed())
    second = keyed(fingerprint="g", at=pg_server.T0 + 1)
    with pytest.raises(IdempotencyKeyTaken) as taken:
        b.insert(second)
    assert taken.value.found is not None
    assert (taken.value.found.fingerprint, taken.value.found.job.id) == ("f", first.id)
    assert b.get(second.id) is None  # the job's insert went with the key's
    assert b.keyed_job("u1", "k", now=pg_server.T0 + 1).job.id == first.id  # type: ignore[union-attr]
    assert b.keyed_job("u1", "k", now=pg_server.T0 + 100) is None  # expired
    # Expired keys are taken over, and pruned by time; a key goes with its job.
    third = b.insert(keyed(fingerprint="h", at=pg_server.T0 + 200, expires_at=pg_server.T0 + 300))
    assert a.keyed_job("u1", "k", now=pg_server.T0 + 201).job.id == third.id  # type: ignore[union-attr]
    a.insert(keyed(key="other", at=pg_server.T0 + 10))
    assert a.prune_idempotency_keys(expired_at=pg_server.T0 + 150, limit=10) == 1
    a.remove([third.id])
    assert a.keyed_job("u1", "k", now=pg_server.T0 + 201) is None
    fourth = a.insert(keyed(at=pg_server.T0 + 202, expires_at=pg_server.T0 + 400))
    assert b.keyed_job("u1", "k", now=pg_server.T0 + 203).job.id == fourth.id  # type: ignore[union-attr]


def test_a_key_is_shared_by_instances(start: Start, standin: PythonApiStandIn) -> None:
    a, b = start(), start()
    on_a, on_b = make_app(a).test_client(), make_app(b).test_client()
    first = on_a.post(QUESTIONS, json=QUESTION, headers=KEY)
    assert first.status_code == 202
    again = on_b.post(QUESTIONS, json=QUESTION, headers=KEY)
    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["data"]["jobId"] == first.json["data"]["jobId"]
    assert on_b.post(QUESTIONS, json={**QUESTION, "question": "Other?"},
                     headers=KEY).status_code == 422
    wait_job(on_a, first.headers["Location"], standin)
    assert [job.id for job in b.list_jobs()] == [first.json["data"]["jobId"]]
    assert len(standin.calls("ask-question")) == 1


def test_instances_taking_one_key_at_once_make_one_job(start: Start,
                                                       standin: PythonApiStandIn) -> None:
    instances = [start(), start()]
    claim = IdempotencyKey(scope="alice", key="k-1", fingerprint="same request")
    gate = threading.Barrier(8)
    answers: list[tuple[str, bool]] = []
    lock = threading.Lock()

    def submit(n: int) -> None:
        gate.wait(5)
        sub = instances[n % 2].submit(JobKind.QA, {"question": "Q?", "company_name": "acme"},
                                      owner="alice", idempotency=claim)
        with lock:
            answers.append((sub.job.id, sub.replayed))

    threads = [threading.Thread(target=submit, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 8
    assert len({job_id for job_id, _ in answers}) == 1
    assert sorted(replayed for _, replayed in answers) == [False] + [True] * 7
    (job,) = instances[0].list_jobs()
    wait_state(instances[1], job.id, JobState.COMPLETED)
    assert len(standin.calls("ask-question")) == 1
