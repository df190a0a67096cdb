"""Reading, cancelling, retrying and listing jobs over HTTP."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from actors import JobSystem, Settings
from tests.standin import PythonApiStandIn, Reply
from tests.web_support import QUESTION, VIDEO, make_app, running_system, wait_job

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
JOB_KEYS = {"id", "type", "status", "priority", "createdAt", "startedAt", "completedAt",
            "failedAt", "attempts", "lastError", "result", "data"}


@pytest.fixture
def client(job_system: JobSystem) -> FlaskClient:
    return make_app(job_system).test_client()


def test_completed_job_shape(client: FlaskClient, standin: PythonApiStandIn):
    location = client.post("/api/interactions/i-9/questions", json=QUESTION).headers["Location"]
    job = wait_job(client, location, standin)
    assert set(job) >= JOB_KEYS
    assert job["status"] == "completed" and job["priority"] == 1 and job["attempts"] == 1
    for key in ("createdAt", "startedAt", "completedAt"):
        assert ISO.match(job[key]), job[key]
    assert job["createdAt"] <= job["startedAt"] <= job["completedAt"]
    assert job["failedAt"] is None and job["lastError"] is None
    assert job["result"]["answer"] == "This is the answer."


def test_failed_job_has_failed_at_and_error(client: FlaskClient, standin: PythonApiStandIn):
    standin.script("process-video", Reply(status=400, body={"detail": "unsupported video"}))
    location = client.post("/api/video/process", json=VIDEO).headers["Location"]
    job = wait_job(client, location, standin)
    assert job["status"] == "failed"
    assert ISO.match(job["failedAt"]) and job["completedAt"] is None
    assert job["lastError"] and job["result"] is None


def test_job_of_the_other_kind_is_404(client: FlaskClient, standin: PythonApiStandIn):
    reply = client.post("/api/interactions/i-9/questions", json=QUESTION)
    job_id = reply.json["data"]["jobId"]
    assert client.get(f"/api/queue/jobs/qa/{job_id}").status_code == 200
    wrong = client.get(f"/api/queue/jobs/video/{job_id}")
    assert wrong.status_code == 404 and wrong.json["success"] is False
    assert client.get(f"/api/queue/jobs/other/{job_id}").status_code == 404
    wait_job(client, reply.headers["Location"], standin)


def test_unknown_and_malformed_job_ids(client: FlaskClient):
    missing = client.get("/api/queue/jobs/video/0123456789abcdef")
    assert missing.status_code == 404 and missing.json == {"success": False,
                                                          "error": "No such job."}
    bad = client.get("/api/queue/jobs/video/" + "x" * 65)
    assert bad.status_code == 400 and bad.json["details"][0]["field"] == "jobId"
    assert client.get("/api/queue/jobs/video/a%20b").status_code == 400


def test_cancel_waiting_job_then_conflict(fast_settings: Settings, standin: PythonApiStandIn):
    # Both video slots from the start: the third video must wait behind two running ones.
    with running_system(fast_settings, adaptive_initial_concurrency=12) as system:
        client = make_app(system).test_client()
        standin.hold("process-video")
        try:
            running = client.post("/api/video/process", json=VIDEO)
            assert standin.wait_in_flight("process-video", 1)
            second = client.post("/api/video/process", json={
                **VIDEO, "video_url": "https://www.youtube.com/watch?v=waiting0001"})
            assert standin.wait_in_flight("process-video", 2)  # both slots busy now
            third = client.post("/api/video/process", json={
                **VIDEO, "video_url": "https://www.youtube.com/watch?v=waiting9999"})
            assert third.json["data"]["queuePosition"] == 1
            cancelled = client.delete(third.headers["Location"])
            assert cancelled.status_code == 200, cancelled.json
            assert cancelled.json["data"]["status"] == "cancelled"
            assert ISO.match(cancelled.json["data"]["cancelledAt"])
            again = client.delete(third.headers["Location"])
            assert again.status_code == 409 and again.json["success"] is False
            busy = client.delete(running.headers["Location"])
            assert busy.status_code == 409
        finally:
            standin.release("process-video")
        for location in (running.headers["Location"], second.headers["Location"]):
            assert wait_job(client, location, standin)["status"] == "completed"


def test_retry_failed_job(client: FlaskClient, standin: PythonApiStandIn):
    standin.script("ask-question", Reply(status=422, body={"detail": "bad"}))
    reply = client.post("/api/interactions/i-1/questions", json=QUESTION)
    location = reply.headers["Location"]
    assert wait_job(client, location, standin)["status"] == "failed"
    retried = client.post(location + "/retry")
    assert retried.status_code == 202, retried.json
    assert retried.headers["Location"] == location
    assert retried.json["data"]["jobId"] == reply.json["data"]["jobId"]
    job = wait_job(client, location, standin, states=("completed",))
    assert job["attempts"] == 1 and job["failedAt"] is None
    conflict = client.post(location + "/retry")
    assert conflict.status_code == 409 and "failed" in conflict.json["error"]


def test_list_jobs_filters(client: FlaskClient, standin: PythonApiStandIn):
    video = client.post("/api/video/process", json=VIDEO)
    question = client.post("/api/interactions/i-1/questions", json=QUESTION)
    for reply in (video, question):
        wait_job(client, reply.headers["Location"], standin)
    everything = client.get("/api/queue/jobs").json["data"]
    assert {job["id"] for job in everything} == {video.json["data"]["jobId"],
                                                 question.json["data"]["jobId"]}
    only_qa = client.get("/api/queue/jobs?type=qa&status=completed&limit=5").json["data"]
    assert [job["type"] for job in only_qa] == ["qa"]
    bad = client.get("/api/queue/jobs?type=nope&status=weird&limit=0")
    assert bad.status_code == 400
    assert {d["field"] for d in bad.json["details"]} == {"type", "status", "limit"}
