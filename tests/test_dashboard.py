"""The dashboard over HTTP: its page and files, its data, who may read it, and what it loads."""

from __future__ import annotations

import re

import pytest
from flask.testing import FlaskClient

from actors import JobSystem
from actors.model.settings import Settings
from actors.runtime.snapshot import SUMMARY_CHARS, first_words
from tests.standin import DEMO_VIDEO_URL, PythonApiStandIn, Reply
from tests.url_corpus import youtube_url
from tests.web_support import QUESTION, SECRET, VIDEO, bearer, make_app, running_system, wait_job
from web.dashboard import FILES, STATIC
from web.security import DASHBOARD_CSP

ADMIN = bearer("root", role="admin")


@pytest.fixture
def client(job_system: JobSystem) -> FlaskClient:
    return make_app(job_system, jwt_secret=SECRET).test_client()


def test_page_and_files_need_no_token(client: FlaskClient) -> None:
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert page.headers["Content-Security-Policy"] == DASHBOARD_CSP
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    for name, mimetype in FILES.items():
        if name == "dashboard.html":
            continue
        reply = client.get(f"/dashboard/{name}")
        assert reply.status_code == 200 and reply.mimetype == mimetype, name
        assert client.get(f"/dashboard/{name}",
                          headers={"If-None-Match": reply.headers["ETag"]}).status_code == 304
    for other in ("/dashboard/dashboard.html", "/dashboard/../models.py", "/static/dashboard.js",
                  "/dashboard/nope.js"):
        assert client.get(other).status_code == 404, other


def test_files_work_offline_under_the_policy() -> None:
    html = (STATIC / "dashboard.html").read_text()
    everything = "".join((STATIC / name).read_text() for name in FILES)
    assert not re.search(r'(?<!xmlns=")https?://', everything), "nothing from another origin"
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "no inline script (script-src 'self')"
    assert not re.search(r"<style|\sstyle=", html), "no inline style (style-src 'self')"
    assert not re.search(r"\son[a-z]+=", html), "no inline event handlers"
    assert "innerHTML" not in (STATIC / "dashboard.js").read_text(), "server text is never HTML"
    for reference in re.findall(r'(?:href|src)="([^"]+)"', html):
        assert reference.removeprefix("/dashboard/") in FILES, reference


def test_data_is_for_admins(client: FlaskClient) -> None:
    assert client.get("/api/queue/dashboard").status_code == 401
    assert client.get("/api/queue/dashboard", headers=bearer("alice")).status_code == 403
    reply = client.get("/api/queue/dashboard", headers=ADMIN)
    assert reply.status_code == 200
    data = reply.json["data"]
    assert set(data["queues"]) == {"video", "qa"}
    assert data["running"] == [] and data["failures"] == []
    assert {"processRssMb", "thresholdMb", "maxMemoryMb", "python"} <= set(data["memory"])


def test_data_shows_running_jobs_and_failures(client: FlaskClient,
                                              standin: PythonApiStandIn) -> None:
    standin.script("ask-question", Reply(status=400, body={"detail": "unknown company"}))
    failed = client.post("/api/interactions/i-1/questions", json=QUESTION, headers=ADMIN)
    wait_job(client, failed.headers["Location"], standin, headers=ADMIN)
    standin.hold("process-video")
    try:
        running = client.post("/api/video/process", json=VIDEO, headers=ADMIN)
        assert standin.wait_in_flight("process-video", 1)
        data = client.get("/api/queue/dashboard", headers=ADMIN).json["data"]
    finally:
        standin.release("process-video")
    wait_job(client, running.headers["Location"], standin, headers=ADMIN)
    (job,) = data["running"]
    assert job["id"] == running.json["data"]["jobId"] and job["type"] == "video"
    assert job["attempt"] == 1 and job["ageSeconds"] >= 0 and job["worker"]
    (failure,) = data["failures"]
    assert failure["id"] == failed.json["data"]["jobId"]
    assert "unknown company" in failure["lastError"] and failure["failedAt"]
    assert data["queues"]["video"]["activeJobs"] == 1 and data["queues"]["qa"]["failed"] == 1


def test_data_shows_each_companys_share(client: FlaskClient,
                                        standin: PythonApiStandIn) -> None:
    # At the starting capacity (2, one kept for questions) one video runs: acme's runs,
    # globex's waits.
    standin.hold("process-video")
    try:
        first = client.post("/api/video/process", headers=bearer("alice"), json={
            "video_url": youtube_url("dash-acme"), "company_name": "acme"})
        assert standin.wait_in_flight("process-video", 1)
        second = client.post("/api/video/process", headers=bearer("bob"), json={
            "video_url": youtube_url("dash-globex"), "company_name": "globex"})
        assert second.status_code == 202, second.json
        data = client.get("/api/queue/dashboard", headers=ADMIN).json["data"]
    finally:
        standin.release("process-video")
    for reply in (first, second):
        wait_job(client, reply.headers["Location"], standin, headers=ADMIN)
    video = data["fairShare"]["video"]
    assert video["count"] == 2
    assert video["companies"] == {
        "acme": {"waiting": 0, "running": 1, "weight": 1.0, "share": 1.0, "fairShare": 0.5},
        "globex": {"waiting": 1, "running": 0, "weight": 1.0, "share": 0.0, "fairShare": 0.5}}
    assert data["fairShare"]["qa"] == {"count": 0, "companies": {}}


def test_data_shows_each_instances_capacity_and_why_it_moved(
        fast_settings: Settings, standin: PythonApiStandIn) -> None:
    with running_system(fast_settings, adaptive_initial_concurrency=6) as system:
        client = make_app(system, jwt_secret=SECRET).test_client()
        (before,) = client.get("/api/queue/dashboard", headers=ADMIN).json["data"][
            "pythonInstances"]
        assert before["instance"] == 1 and before["url"] == standin.url
        assert before["capacity"]["limit"] == 6
        assert before["capacity"]["reason"] == "start: QUEUE_ADAPTIVE_INITIAL_CONCURRENCY"
        # A 503 is overload: the limit is cut (6 x 0.7 -> 4), and the retry is answered.
        standin.script("ask-question", Reply(status=503, body={"detail": "busy"}))
        asked = client.post("/api/interactions/i-1/questions", json=QUESTION, headers=ADMIN)
        assert wait_job(client, asked.headers["Location"], standin,
                        headers=ADMIN)["status"] == "completed"
        (after,) = client.get("/api/queue/dashboard", headers=ADMIN).json["data"][
            "pythonInstances"]
    capacity = after["capacity"]
    assert capacity["adaptive"] and capacity["limit"] == 4
    assert capacity["reason"] == capacity["lastSignal"] == "qa answered 503"
    assert capacity["movedSecondsAgo"] >= 0


LONG_QUESTION = ("Which of the plans fits a team of five people working remotely across "
                 "three time zones?")


def test_data_says_what_each_job_is(client: FlaskClient, standin: PythonApiStandIn) -> None:
    alice, bob = bearer("alice"), bearer("bob")
    standin.script("ask-question", Reply(status=400, body={"detail": "unknown company"}))
    failed = client.post("/api/interactions/i-1/questions", headers=alice,
                         json={"question": LONG_QUESTION, "companyName": "Acme Corp"})
    wait_job(client, failed.headers["Location"], standin, headers=ADMIN)
    standin.hold("process-video")
    try:  # a URL that is not the canonical one: the job keeps (and shows) the canonical one
        running = client.post("/api/video/process", headers=bob, json={
            "video_url": "https://youtu.be/dQw4w9WgXcQ?t=42", "company_name": "initech"})
        assert running.status_code == 202, running.json
        assert standin.wait_in_flight("process-video", 1)
        data = client.get("/api/queue/dashboard", headers=ADMIN).json["data"]
    finally:
        standin.release("process-video")
    wait_job(client, running.headers["Location"], standin, headers=ADMIN)
    (job,) = data["running"]
    assert job["type"] == "video" and job["company"] == "initech" and job["owner"] == "bob"
    assert job["summary"] == DEMO_VIDEO_URL
    (failure,) = data["failures"]
    assert failure["type"] == "qa" and failure["company"] == "Acme Corp"
    assert failure["owner"] == "alice"
    assert failure["summary"] == "Which of the plans fits a team of five people working\u2026"
    assert len(failure["summary"]) <= SUMMARY_CHARS + 1


def test_a_question_is_summed_up_in_its_first_words() -> None:
    assert first_words("  What is\nit?  ") == "What is it?"
    exact = "x" * (SUMMARY_CHARS - 3) + " yz"
    assert first_words(exact) == exact  # at the limit: whole
    assert first_words(exact + " more") == exact + "\u2026"  # a space just past the limit
    assert first_words("one, two, three", limit=9) == "one, two\u2026"  # no dangling comma
    assert first_words("x" * 100, limit=10) == "x" * 10 + "\u2026"  # one long word: cut inside


def test_dashboard_is_exempt_from_the_rate_limit(job_system: JobSystem) -> None:
    client = make_app(job_system, rate_limit_read_max_requests=2).test_client()
    for _ in range(4):
        for path in ("/dashboard", "/dashboard/dashboard.js", "/api/queue/dashboard"):
            assert client.get(path).status_code == 200, path
    assert [client.get("/api/queue/status").status_code for _ in range(3)] == [200, 200, 429]
