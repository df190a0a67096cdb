"""``lastError``: a short category for the job's owner, the Python API's text for admins."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from actors import JobSystem, Settings
from tests.standin import PythonApiStandIn, Reply
from tests.web_support import QUESTION, SECRET, VIDEO, bearer, make_app, running_system, wait_job

RAW = "Traceback: /srv/python-api/app/pipeline.py line 42: whisper worker 10.1.2.3 died"
ALICE = bearer("alice")
ADMIN = bearer("root", role="admin")


@pytest.fixture
def client(job_system: JobSystem) -> FlaskClient:
    return make_app(job_system, jwt_secret=SECRET).test_client()


def _failed_question(client: FlaskClient, standin: PythonApiStandIn, *replies: Reply) -> str:
    standin.script("ask-question", *replies)
    reply = client.post("/api/interactions/i-1/questions", headers=ALICE, json=QUESTION)
    assert reply.status_code == 202, reply.json
    location = reply.headers["Location"]
    assert wait_job(client, location, standin, headers=ALICE)["status"] == "failed"
    return location


@pytest.mark.parametrize("replies, category", [
    ((Reply(status=422, body={"detail": RAW}),), "rejected by the processing service"),
    ((Reply(status=500, body={"detail": RAW}),) * 3, "the processing service failed"),
    ((Reply(status=200, body={"success": False, "detail": RAW}),),
     "the processing service failed"),
    ((Reply(status=429, body={"detail": RAW}),) * 3, "the processing service was busy"),
])
def test_owner_sees_the_category_admin_the_text(client: FlaskClient, standin: PythonApiStandIn,
                                                replies: tuple[Reply, ...],
                                                category: str) -> None:
    location = _failed_question(client, standin, *replies)
    own = client.get(location, headers=ALICE).json["data"]
    assert own["lastError"] == category
    assert RAW not in str(client.get("/api/queue/jobs", headers=ALICE).json)
    full = client.get(location, headers=ADMIN).json["data"]["lastError"]
    assert RAW in full and full != category
    listed = client.get("/api/queue/jobs?status=failed", headers=ADMIN).json["data"]
    assert any(RAW in (job["lastError"] or "") for job in listed)
    failures = client.get("/api/queue/dashboard", headers=ADMIN).json["data"]["failures"]
    assert RAW in failures[0]["lastError"]  # the dashboard's data is the admins'


def test_timed_out_attempts_say_so(fast_settings: Settings, standin: PythonApiStandIn) -> None:
    with running_system(fast_settings, job_timeout_s=0.3, abandoned_hold_s=0.3,
                        retry_attempts=1) as system:
        client = make_app(system, jwt_secret=SECRET).test_client()
        standin.script("ask-question", Reply(delay_s=2.0))
        reply = client.post("/api/interactions/i-1/questions", headers=ALICE, json=QUESTION)
        data = wait_job(client, reply.headers["Location"], standin, headers=ALICE)
        assert (data["status"], data["lastError"]) == ("failed", "timed out")
        admin = client.get(reply.headers["Location"], headers=ADMIN).json["data"]
        assert admin["lastError"].startswith("DeadlineExceeded: /ask-question")


def test_retrying_job_shows_the_category_while_it_waits(fast_settings: Settings,
                                                        standin: PythonApiStandIn) -> None:
    with running_system(fast_settings, backoff_base_s=30.0, backoff_max_s=30.0) as system:
        client = make_app(system, jwt_secret=SECRET).test_client()
        standin.script("process-video", Reply(status=503, body={"detail": RAW}))
        reply = client.post("/api/video/process", headers=ALICE, json=VIDEO)
        data = wait_job(client, reply.headers["Location"], standin, headers=ALICE,
                        states=("retrying",))
        assert data["lastError"] == "the processing service failed"
        cancelled = client.delete(reply.headers["Location"], headers=ALICE).json["data"]
        assert cancelled["lastError"] == "the processing service failed"
