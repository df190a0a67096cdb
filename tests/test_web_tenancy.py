"""Company tenancy: work only for one's own companies, from token claims or Supabase's tables.

Every route that makes work (video, client video, question, retry) checks the company; the
status counts a user sees are their companies' own; listings and reads stay the caller's
own jobs. Measured at the Python API stand-in: a refused job never reaches it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from actors import JobSystem, Settings
from tests.postgrest_standin import PostgrestStandIn
from tests.standin import DEMO_VIDEO_URL, PythonApiStandIn, Reply
from tests.supabase_support import ACME_ID, GLOBEX_ID, seeded, with_supabase
from tests.test_actors_support import started, wait_until
from tests.web_support import SECRET, bearer, make_app, wait_job

ALICE_CO = {"video_url": DEMO_VIDEO_URL, "company_name": "alice-co"}
BOB_CO = {"video_url": DEMO_VIDEO_URL, "company_name": "bob-co"}
VIDEO_PATHS = ("/api/video/process", "/api/video/videos")


def alice(**claims: object) -> dict[str, str]:
    return bearer("alice", **(claims or {"companyName": "alice-co"}))


def bob(**claims: object) -> dict[str, str]:
    return bearer("bob", **(claims or {"companyName": "bob-co"}))


@pytest.fixture
def client(job_system: JobSystem) -> FlaskClient:
    return make_app(job_system, jwt_secret=SECRET).test_client()


def company_paths(standin: PythonApiStandIn) -> list[str]:
    return [call.path for call in standin.calls()]


@pytest.mark.parametrize("path", VIDEO_PATHS)
def test_a_video_for_another_company_is_403_and_never_reaches_the_python_api(
        client: FlaskClient, standin: PythonApiStandIn, path: str) -> None:
    reply = client.post(path, json=ALICE_CO, headers=bob())
    assert reply.status_code == 403, reply.json
    assert reply.json["success"] is False
    assert reply.json["error"] == "you are not a member of company 'alice-co'"
    assert reply.json["details"] == [{"field": "company_name",
                                      "message": "is not one of the caller's companies"}]
    own = client.post(path, json=BOB_CO, headers=bob())
    assert own.status_code == 202, own.json
    wait_job(client, own.headers["Location"], standin, headers=bob())
    assert [p for p in company_paths(standin) if p.startswith("/process-video")] == [
        "/process-video/bob-co"]


def test_a_question_for_another_company_is_403(client: FlaskClient,
                                               standin: PythonApiStandIn) -> None:
    question = {"question": "What does it do?", "companyName": "alice-co"}
    reply = client.post("/api/interactions/i-1/questions", json=question, headers=bob())
    assert reply.status_code == 403
    assert "alice-co" in reply.json["error"]
    own = client.post("/api/interactions/i-1/questions", json=question, headers=alice())
    assert own.status_code == 202
    wait_job(client, own.headers["Location"], standin, headers=alice())
    assert [c.body["company_name"] for c in standin.calls("ask-question")] == ["alice-co"]


def test_names_are_compared_without_case_and_lists_of_companies_work(
        client: FlaskClient) -> None:
    several = alice(companyNames=["Alice-Co", "side-project"])
    for company in ("alice-co", "ALICE-CO", "side-project"):
        reply = client.post("/api/video/process", headers=several,
                            json={"video_url": f"https://youtu.be/{company[:4]}abcdefg",
                                  "company_name": company})
        assert reply.status_code == 202, (company, reply.json)
    assert client.post("/api/video/process", json=BOB_CO, headers=several).status_code == 403


def test_a_token_naming_no_company_can_submit_nothing_and_is_told_why(
        client: FlaskClient) -> None:
    reply = client.post("/api/video/process", json=ALICE_CO,
                        headers=bearer("carol", companies=None))
    assert reply.status_code == 403
    assert "companyName" in reply.json["error"]
    # Reading is still allowed: the status answers, with no company's counts.
    status = client.get("/api/queue/status", headers=bearer("carol", companies=None))
    assert status.status_code == 200 and status.json["data"]["companies"] == []


@pytest.mark.parametrize("claims", [
    {"companyNames": "alice-co"},            # not a list
    {"companyIds": [{"id": 1}]},             # not strings
    {"companyName": ""},
    {"companyName": "x" * 200},
    {"companyNames": ["ok", True]},
])
def test_malformed_company_claims_make_the_token_invalid(client: FlaskClient,
                                                         claims: dict) -> None:
    reply = client.post("/api/video/process", json=ALICE_CO, headers=bearer("alice", **claims))
    assert reply.status_code == 401, reply.json
    assert reply.json["error"].startswith("invalid token: ")


def test_an_admin_submits_for_any_company(client: FlaskClient) -> None:
    admin = bearer("ops", role="admin", companies=None)
    assert client.post("/api/video/process", json=ALICE_CO, headers=admin).status_code == 202


def test_a_lone_company_id_is_named_from_the_tokens_paired_claims(
        client: FlaskClient, standin: PythonApiStandIn) -> None:
    paired = alice(companyIds=["c-1", "c-2"], companyNames=["alice-co", "alice-labs"])
    # The web client's exact body: camelCase, a companyId, source as a URL, meetingLink null.
    body = {"videoUrl": DEMO_VIDEO_URL, "companyId": "c-2",
            "source": "https://docs.alice-labs.example.com/product", "meetingLink": None}
    reply = client.post("/api/video/videos", json=body, headers=paired)
    assert reply.status_code == 202, reply.json
    job = wait_job(client, reply.headers["Location"], standin, headers=paired)
    assert job["data"]["company_name"] == "alice-labs"
    assert job["data"]["company_id"] == "c-2"
    assert job["data"]["source"] == "youtube"  # the platform comes from the video's address
    assert job["data"]["knowledge_source"] == "https://docs.alice-labs.example.com/product"
    assert "meeting_link" not in job["data"]
    # An id that is not one of the caller's: without Supabase there is no name for it.
    other = client.post("/api/video/videos", json={**body, "companyId": "c-9"}, headers=paired)
    assert other.status_code == 400
    assert other.json["error"].startswith("company_name: Field required")
    # An id and a name that are different companies of the caller.
    mixed = client.post("/api/video/videos", headers=paired,
                        json={**body, "companyId": "c-1", "companyName": "alice-labs"})
    assert mixed.status_code == 403
    assert mixed.json["error"] == "company_id and company_name name different companies"


def test_a_knowledge_source_address_gets_the_public_address_policy(
        client: FlaskClient) -> None:
    body = {"videoUrl": DEMO_VIDEO_URL, "companyName": "alice-co",
            "source": "http://169.254.169.254/latest/meta-data"}
    reply = client.post("/api/video/videos", json=body, headers=alice())
    assert reply.status_code == 400
    assert [d["field"] for d in reply.json["details"]] == ["knowledge_source"]


def test_retry_needs_the_company_still(client: FlaskClient, standin: PythonApiStandIn) -> None:
    standin.script("process-video", Reply(status=400))  # permanent: fails at once
    location = client.post("/api/video/process", json=ALICE_CO, headers=alice()).headers[
        "Location"]
    assert wait_job(client, location, standin, headers=alice())["status"] == "failed"
    moved = alice(companyName="alice-new-co")  # alice has left alice-co
    reply = client.post(location + "/retry", headers=moved)
    assert reply.status_code == 403
    assert client.post(location + "/retry", headers=alice()).status_code == 202


def test_status_counts_are_the_callers_companies_own(client: FlaskClient,
                                                     standin: PythonApiStandIn) -> None:
    standin.hold("process-video")
    try:
        for n in range(3):
            body = {"video_url": f"https://youtu.be/alice{n:02d}wxyz", "company_name": "alice-co"}
            assert client.post("/api/video/process", json=body, headers=alice()).status_code == 202
        body = {"video_url": "https://youtu.be/bob000000xy", "company_name": "bob-co"}
        assert client.post("/api/video/process", json=body, headers=bob()).status_code == 202

        def video_counts(headers: dict[str, str]) -> tuple[int, int]:
            queue = client.get("/api/queue/status", headers=headers).json["data"]["queues"][
                "video"]
            return queue["waiting"], queue["activeJobs"]

        # Some run at once (as many as the capacity allows), the others wait; all are held.
        assert wait_until(lambda: standin.in_flight("process-video") >= 1)
        assert wait_until(lambda: sum(video_counts(alice())) == 3)
        assert sum(video_counts(bob())) == 1
        admin = bearer("ops", role="admin")
        running = standin.in_flight("process-video")
        assert wait_until(lambda: video_counts(admin) == (4 - running, running))
        data = client.get("/api/queue/status", headers=bob()).json["data"]
        assert data["companies"] == ["bob-co"]
        assert "pythonInstances" not in data and "abandonedCalls" not in data["queues"]["video"]
    finally:
        standin.release("process-video")


def test_one_companys_flood_meets_its_own_bound_and_others_go_on(
        fast_settings: Settings, standin: PythonApiStandIn) -> None:
    settings = fast_settings.replace(max_concurrent_videos=1, max_waiting_videos=50,
                                     max_waiting_videos_per_company=2)
    standin.hold("process-video")
    with started(settings) as system:
        client = make_app(system, jwt_secret=SECRET).test_client()
        try:
            codes = []
            for n in range(5):
                body = {"video_url": f"https://youtu.be/flood{n:02d}wxyz",
                        "company_name": "alice-co"}
                codes.append(client.post("/api/video/process", json=body,
                                         headers=alice()).status_code)
                if n == 0:  # the first runs: it takes no place among the waiting
                    assert standin.wait_in_flight("process-video", 1)
            assert codes == [202, 202, 202, 429, 429]
            refused = client.post("/api/video/process", headers=alice(),
                                  json={"video_url": "https://youtu.be/flood99wxyz",
                                        "company_name": "alice-co"})
            assert refused.status_code == 429 and refused.headers["Retry-After"]
            assert "alice-co" in refused.json["error"]
            assert client.post("/api/video/process", json=BOB_CO, headers=bob()).status_code == 202
            standin.release("process-video")
            # Once the company's jobs have run, its places are free again.
            assert standin.wait_calls("process-video", 4)
            assert wait_until(lambda: system.snapshot()["kinds"]["video"]["waiting"] == 0)
            again = client.post("/api/video/process", headers=alice(),
                                json={"video_url": "https://youtu.be/flood99wxyz",
                                      "company_name": "alice-co"})
            assert again.status_code == 202, again.json
        finally:
            standin.release("process-video")


# --- memberships from Supabase's tables ----------------------------------------------


@pytest.fixture
def postgrest() -> Iterator[PostgrestStandIn]:
    with PostgrestStandIn() as standin:
        seeded(standin)
        # alice owns acme (companies.user_id); bob is a member of globex (user_companies).
        standin.seed("companies", {"id": "9d1c4b5e-0000-4000-8000-00000000a11c",
                                   "name": "alice-co", "user_id": "alice"})
        standin.seed("user_companies", {"user_id": "bob", "company_id": GLOBEX_ID})
        standin.seed("user_companies", {"user_id": "alice", "company_id": ACME_ID})
        yield standin


@pytest.fixture
def supabase_client(fast_settings: Settings,
                    postgrest: PostgrestStandIn) -> Iterator[FlaskClient]:
    with started(with_supabase(fast_settings, postgrest)) as system:
        yield make_app(system, jwt_secret=SECRET).test_client()


def test_memberships_come_from_supabase_when_the_token_names_none(
        supabase_client: FlaskClient, postgrest: PostgrestStandIn,
        standin: PythonApiStandIn) -> None:
    plain_alice, plain_bob = bearer("alice", companies=None), bearer("bob", companies=None)
    for company in ("alice-co", "acme"):
        body = {"video_url": f"https://youtu.be/{company[:4]}supabas", "company_name": company}
        reply = supabase_client.post("/api/video/process", json=body, headers=plain_alice)
        assert reply.status_code == 202, (company, reply.json)
    refused = supabase_client.post("/api/video/process", headers=plain_bob,
                                   json={"video_url": DEMO_VIDEO_URL, "company_name": "acme"})
    assert refused.status_code == 403
    globex = supabase_client.post("/api/video/process", headers=plain_bob,
                                  json={"video_url": DEMO_VIDEO_URL, "company_name": "globex"})
    assert globex.status_code == 202, globex.json
    # The web client's lone companyId, named from bob's own memberships.
    client_body = {"videoUrl": "https://youtu.be/globexvideo", "companyId": GLOBEX_ID,
                   "meetingLink": None}
    assert supabase_client.post("/api/video/videos", json=client_body,
                                headers=plain_bob).status_code == 202
    # A member's companies are read once, then cached.
    lookups = [r for r in postgrest.requests("user_companies") if r.method == "GET"]
    assert len(lookups) == 2  # one for alice, one for bob
    # Somebody else's company id resolves (Supabase knows it) but is still not bob's.
    theirs = supabase_client.post("/api/video/videos", headers=plain_bob,
                                  json={**client_body, "companyId": ACME_ID})
    assert theirs.status_code == 403


def test_supabase_failing_a_membership_lookup_is_a_503_not_a_guess(
        supabase_client: FlaskClient, postgrest: PostgrestStandIn) -> None:
    postgrest.fail("user_companies", method="GET", status=503)
    reply = supabase_client.post("/api/video/process", headers=bearer("bob", companies=None),
                                 json={"video_url": DEMO_VIDEO_URL, "company_name": "globex"})
    assert reply.status_code == 503, reply.json
    assert reply.headers["Retry-After"]
