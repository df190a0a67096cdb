"""Supabase through the REST API: ``/health`` and ``/api/video/videos`` with a lone companyId."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from actors import JobSystem, Settings
from tests.postgrest_standin import PostgrestStandIn
from tests.standin import DEMO_VIDEO_URL, PythonApiStandIn
from tests.supabase_support import ACME_ID, GLOBEX_ID, LOOM_URL, seeded, with_supabase
from tests.test_actors_support import started
from tests.web_support import make_app, wait_job


@pytest.fixture
def postgrest() -> Iterator[PostgrestStandIn]:
    with PostgrestStandIn() as standin:
        yield seeded(standin)


@pytest.fixture
def system(fast_settings: Settings, postgrest: PostgrestStandIn) -> Iterator[JobSystem]:
    with started(with_supabase(fast_settings, postgrest)) as system:
        yield system


@pytest.fixture
def client(system: JobSystem) -> FlaskClient:
    return make_app(system).test_client()


def test_health_says_supabase_is_configured_and_reachable(client: FlaskClient,
                                                          postgrest: PostgrestStandIn):
    reply = client.get("/health")
    assert reply.status_code == 200
    assert reply.json["status"] == "healthy", reply.json["reasons"]
    assert reply.json["health"]["supabase"] == {"configured": True, "reachable": True}
    (probe,) = postgrest.requests("companies")
    assert probe.method == "HEAD" and dict(probe.query) == {"select": "id", "limit": "1"}
    client.get("/health")
    assert len(postgrest.requests("companies")) == 1  # answered from the cache


def test_health_is_degraded_when_supabase_does_not_answer(fast_settings: Settings):
    with PostgrestStandIn() as gone:
        url = gone.url
    settings = fast_settings.replace(supabase_url=url, supabase_service_role_key="k")
    with started(settings) as system:
        reply = make_app(system).test_client().get("/health")
    assert reply.status_code == 200
    assert reply.json["status"] == "degraded"
    assert reply.json["health"]["supabase"] == {"configured": True, "reachable": False}
    assert any(r.startswith("Supabase unreachable") for r in reply.json["reasons"])


def test_health_is_degraded_when_supabase_refuses_the_key(fast_settings: Settings,
                                                          postgrest: PostgrestStandIn):
    settings = fast_settings.replace(supabase_url=postgrest.url,
                                     supabase_service_role_key="not-the-key")
    with started(settings) as system:
        reply = make_app(system).test_client().get("/health")
    assert reply.json["status"] == "degraded"
    assert "Supabase unreachable (answered 401): results wait to be stored" in \
        reply.json["reasons"]


def test_health_without_supabase(job_system: JobSystem):
    reply = make_app(job_system).test_client().get("/health")
    assert reply.json["health"]["supabase"] == {"configured": False, "reachable": None}


def test_client_video_with_only_a_company_id_is_resolved_to_its_name(
        client: FlaskClient, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    reply = client.post("/api/video/videos", json={"videoUrl": LOOM_URL, "companyId": GLOBEX_ID})
    assert reply.status_code == 202, reply.json
    job = wait_job(client, reply.headers["Location"], standin)
    assert job["status"] == "completed", job["lastError"]
    assert job["data"]["company_name"] == "globex"
    assert job["data"]["company_id"] == GLOBEX_ID
    assert job["data"]["create_qudemo"] is True  # the default of /api/video/videos
    (call,) = standin.calls("process-video")
    assert call.path == "/process-video/globex"
    assert [r["company_id"] for r in postgrest.rows("videos")] == [GLOBEX_ID]
    assert [r["company_id"] for r in postgrest.rows("qudemos")] == [GLOBEX_ID]
    assert [r["user_id"] for r in postgrest.rows("videos")] == ["local"]
    lookups = postgrest.requests("companies", "GET")
    assert [dict(r.query)["id"] for r in lookups] == [f"eq.{GLOBEX_ID}"] * 2  # web, worker


def test_client_video_with_an_unknown_company_id_is_refused(client: FlaskClient,
                                                            standin: PythonApiStandIn):
    reply = client.post("/api/video/videos", json={
        "videoUrl": LOOM_URL, "companyId": "00000000-0000-4000-8000-000000000000"})
    assert reply.status_code == 400
    (detail,) = reply.json["details"]
    assert detail["field"] == "company_id" and "unknown company id" in detail["message"]
    assert standin.calls("process-video") == []


def test_client_video_company_lookup_outage_is_a_503(client: FlaskClient,
                                                     postgrest: PostgrestStandIn):
    postgrest.fail("companies", method="GET", status=503)
    reply = client.post("/api/video/videos", json={"videoUrl": LOOM_URL, "companyId": ACME_ID})
    assert reply.status_code == 503
    assert int(reply.headers["Retry-After"]) >= 1
    assert "company lookup by id" in reply.json["error"]


def test_video_process_creates_no_qudemo_unless_asked(client: FlaskClient,
                                                      postgrest: PostgrestStandIn,
                                                      standin: PythonApiStandIn):
    reply = client.post("/api/video/process", json={"video_url": DEMO_VIDEO_URL,
                                                    "company_name": "acme"})
    assert reply.status_code == 202, reply.json
    assert wait_job(client, reply.headers["Location"], standin)["status"] == "completed"
    (row,) = postgrest.rows("videos")
    assert row["company_id"] == ACME_ID and row["video_url"] == DEMO_VIDEO_URL
    assert postgrest.rows("qudemos") == []


def test_without_supabase_a_lone_company_id_is_still_a_clear_400(job_system: JobSystem):
    client = make_app(job_system).test_client()
    reply = client.post("/api/video/videos", json={"videoUrl": LOOM_URL, "companyId": ACME_ID})
    assert reply.status_code == 400
    (detail,) = reply.json["details"]
    assert detail["field"] == "company_name" and "Supabase" in detail["message"]
