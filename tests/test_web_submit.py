"""Submitting work over HTTP against the real job system and the stand-in Python API."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from actors import JobSystem, Settings
from tests.standin import DEMO_VIDEO_URL, PythonApiStandIn
from tests.url_corpus import LOOM, LOOM_ID, youtube_url
from tests.web_support import QUESTION, VIDEO, make_app, running_system, wait_job

RANGE = re.compile(r"^(under \d+ (second|minute|hour)s?|\d+-\d+ (seconds|minutes|hours))$")


@pytest.fixture
def client(job_system: JobSystem) -> FlaskClient:
    return make_app(job_system).test_client()


def assert_accepted(reply, kind: str) -> dict:
    assert reply.status_code == 202, reply.json
    body = reply.json
    assert body["success"] is True and body["message"]
    data = body["data"]
    assert set(data) >= {"jobId", "queuePosition", "estimatedWaitTime", "estimatedWaitSeconds",
                         "status"}
    assert data["status"] == "queued"
    assert isinstance(data["queuePosition"], int) and data["queuePosition"] >= 0
    assert RANGE.match(data["estimatedWaitTime"]), data["estimatedWaitTime"]
    assert "NaN" not in data["estimatedWaitTime"]
    assert math.isfinite(data["estimatedWaitSeconds"])
    assert reply.headers["Location"] == f"/api/queue/jobs/{kind}/{data['jobId']}"
    return data


def test_video_process_follows_job_to_completed(client: FlaskClient, standin: PythonApiStandIn):
    reply = client.post("/api/video/process", json={**VIDEO, "meeting_link": None})
    data = assert_accepted(reply, "video")
    job = wait_job(client, reply.headers["Location"], standin)
    assert job["status"] == "completed"
    assert job["id"] == data["jobId"] and job["type"] == "video"
    assert job["result"]["video_url"] == DEMO_VIDEO_URL
    assert job["data"] == {"video_url": DEMO_VIDEO_URL, "company_name": "acme",
                           "source": "youtube", "create_qudemo": False}
    (call,) = standin.calls("process-video")
    assert call.path == "/process-video/acme"
    assert call.body["video_url"] == DEMO_VIDEO_URL and call.body["source"] == "youtube"


def test_video_process_accepts_camel_case(client: FlaskClient, standin: PythonApiStandIn):
    reply = client.post("/api/video/process", json={
        "videoUrl": f"https://loom.com/share/Acme-tour-{LOOM_ID}?sid=1", "companyName": "Acme Corp",
        "meetingLink": "https://calendly.com/acme/demo", "bucketName": "acme-videos"})
    assert_accepted(reply, "video")
    job = wait_job(client, reply.headers["Location"], standin)
    assert job["data"] == {"video_url": LOOM,  # canonical, built from the id
                           "company_name": "Acme Corp", "source": "loom",
                           "create_qudemo": False,
                           "meeting_link": "https://calendly.com/acme/demo",
                           "bucket_name": "acme-videos"}


@pytest.mark.parametrize("body", [
    {"videoUrl": "https://vimeo.com/123456", "companyName": "acme"},
    {"url": "https://vimeo.com/123456", "company_name": "acme", "companyId": "c-1"},
    {"video_url": "https://vimeo.com/123456", "companyName": "acme", "source": "vimeo"},
])
def test_client_video_route_accepts_web_client_bodies(client: FlaskClient,
                                                      standin: PythonApiStandIn, body):
    reply = client.post("/api/video/videos", json=body)
    assert_accepted(reply, "video")
    job = wait_job(client, reply.headers["Location"], standin)
    assert job["data"]["create_qudemo"] is True
    assert job["data"]["source"] == "vimeo"


def test_client_video_route_needs_a_company_name(client: FlaskClient):
    reply = client.post("/api/video/videos", json={"videoUrl": DEMO_VIDEO_URL,
                                                   "companyId": "3f1c"})
    assert reply.status_code == 400
    (detail,) = reply.json["details"]
    assert detail["field"] == "company_name" and "companyId" in detail["message"]


def test_question_follows_job_to_completed(client: FlaskClient, standin: PythonApiStandIn):
    reply = client.post("/api/interactions/int-123/questions", json=QUESTION)
    assert_accepted(reply, "qa")
    assert reply.json["message"] == "Question queued for AI processing"
    job = wait_job(client, reply.headers["Location"], standin)
    assert job["status"] == "completed" and job["type"] == "qa"
    assert job["result"]["answer"]
    assert job["data"] == {"question": "What are the main features?", "company_name": "acme",
                           "interaction_id": "int-123"}
    (call,) = standin.calls("ask-question")
    assert call.body == {"question": "What are the main features?", "company_name": "acme"}


@pytest.fixture
def one_video_slot(fast_settings: Settings) -> Iterator[JobSystem]:
    with running_system(fast_settings, max_concurrent_videos=1) as system:
        yield system


def test_queue_position_and_wait_come_from_the_real_queue(one_video_slot: JobSystem,
                                                          standin: PythonApiStandIn):
    client = make_app(one_video_slot).test_client()
    standin.hold("process-video")
    try:
        first = client.post("/api/video/process", json=VIDEO)
        assert standin.wait_in_flight("process-video", 1)
        second = client.post("/api/video/process", json={
            **VIDEO, "video_url": "https://www.youtube.com/watch?v=aaaaaaaaaaa"})
        third = client.post("/api/video/process", json={
            **VIDEO, "video_url": "https://www.youtube.com/watch?v=bbbbbbbbbbb"})
        positions = [assert_accepted(r, "video")["queuePosition"] for r in (first, second,
                                                                             third)]
        assert positions == [0, 1, 2]
        assert (third.json["data"]["estimatedWaitSeconds"]
                >= second.json["data"]["estimatedWaitSeconds"])
        waiting = client.get(third.headers["Location"]).json["data"]
        assert waiting["status"] == "queued" and waiting["queuePosition"] == 2
    finally:
        standin.release("process-video")


def test_same_video_and_company_while_active_is_409(client: FlaskClient,
                                                    standin: PythonApiStandIn):
    standin.hold("process-video")
    try:
        first = client.post("/api/video/process", json=VIDEO)
        job_id = assert_accepted(first, "video")["jobId"]
        # Another spelling of the same YouTube video, and the company in another case.
        again = client.post("/api/video/process", json={
            "video_url": "https://youtu.be/dQw4w9WgXcQ?si=tracking", "company_name": "ACME"})
        assert again.status_code == 409
        assert again.json["success"] is False
        assert again.json["data"] == {"jobId": job_id}
        other = client.post("/api/video/process", json={**VIDEO, "company_name": "globex"})
        assert other.status_code == 202
    finally:
        standin.release("process-video")
    wait_job(client, first.headers["Location"], standin)
    assert client.post("/api/video/process", json=VIDEO).status_code == 202


def test_full_queue_is_429_with_retry_after(fast_settings: Settings, standin: PythonApiStandIn):
    with running_system(fast_settings, max_concurrent_videos=1, max_waiting_videos=1) as system:
        client = make_app(system).test_client()
        standin.hold("process-video")
        try:
            urls = [youtube_url(f"video{n:07d}") for n in range(3)]
            assert client.post("/api/video/process",
                               json={**VIDEO, "video_url": urls[0]}).status_code == 202
            assert standin.wait_in_flight("process-video", 1)
            assert client.post("/api/video/process",
                               json={**VIDEO, "video_url": urls[1]}).status_code == 202
            full = client.post("/api/video/process", json={**VIDEO, "video_url": urls[2]})
            assert full.status_code == 429
            assert full.json["success"] is False and "full" in full.json["error"]
            # The queue's own delay, not stretched to the rate-limit window.
            assert full.headers["Retry-After"] == "30"
            assert client.post("/api/interactions/i-1/questions",
                               json=QUESTION).status_code == 202
        finally:
            standin.release("process-video")


def test_memory_pressure_refuses_videos_with_503(job_system: JobSystem, client: FlaskClient,
                                                 standin: PythonApiStandIn):
    standin.set_memory(1900.0)
    assert job_system.check_memory().admission_refused
    reply = client.post("/api/video/process", json=VIDEO)
    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "60"
    assert reply.json["success"] is False and "memory" in reply.json["error"].lower()
    assert client.post("/api/interactions/i-1/questions", json=QUESTION).status_code == 202


def test_draining_refuses_with_503(job_system: JobSystem, client: FlaskClient):
    job_system.begin_drain()
    for path, body in (("/api/video/process", VIDEO),
                       ("/api/interactions/i-1/questions", QUESTION)):
        reply = client.post(path, json=body)
        assert reply.status_code == 503
        assert int(reply.headers["Retry-After"]) > 0
        assert reply.json == {"success": False, "error": reply.json["error"]}
