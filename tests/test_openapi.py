"""The OpenAPI document: it covers every route, and schemathesis finds the app true to it.

Schemathesis generates requests from ``/openapi.json`` (valid ones and, in negative mode,
invalid ones) and sends them to the app over a real job system and the stand-in Python
API; every answer must be documented (status, media type, headers, body schema) and none
may be a 5xx. One check is left out: ``positive_data_acceptance``. The document's body
schemas are the pydantic models' own, but validation goes further than JSON Schema can
say (the video URL allow-list and SSRF policy, names' character sets), so a body that
fits the schema can still get its documented 400. The request examples are sent too and
must be accepted.

It runs as an admin, anonymously, and with authentication on as each of two non-admin users
of different companies, after both have jobs: then every answer is also checked for the
other user's job ids (none may appear; asking for one is a 404) and the status counts for
the caller's company's jobs alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.checks import CheckFunction
from schemathesis.specs.openapi.checks import positive_data_acceptance
from werkzeug.test import TestResponse

from actors import JobSystem, Settings
from actors.model.jobs import JobKind, JobState
from tests.standin import PythonApiStandIn
from tests.url_corpus import youtube_url
from tests.web_support import SECRET, bearer, make_app, running_system, wait_job
from web.models import ClientVideoBody, QuestionBody, VideoBody
from web.openapi import REF, route_template

ADMIN = bearer("root", role="admin")
MAX_EXAMPLES = 30


@pytest.fixture
def app(job_system: JobSystem) -> Flask:
    return make_app(job_system, jwt_secret=SECRET, rate_limit_max_requests=100000)


def load(app: Flask) -> Any:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app)
    # Unknown query parameters are ignored, as most APIs do (a client's cache-buster must
    # not break a call): do not send them as "invalid" data.
    schema.config.generation.update(allow_extra_parameters=False)
    return schema


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("mode", "headers"), [
    (GenerationMode.POSITIVE, ADMIN),
    (GenerationMode.NEGATIVE, ADMIN),
    (GenerationMode.POSITIVE, {}),
], ids=["valid-admin", "invalid-admin", "valid-anonymous"])
def test_app_is_true_to_its_document(app: Flask, mode: GenerationMode,
                                     headers: dict[str, str]) -> None:
    failures = run_schemathesis(app, mode, headers)
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def run_schemathesis(app: Flask, mode: GenerationMode, headers: dict[str, str], *,
                     aim: Callable[[SearchStrategy[Any]], SearchStrategy[Any]] | None = None,
                     checks: Sequence[CheckFunction] = ()) -> dict[str, str]:
    """Send every operation ``MAX_EXAMPLES`` generated cases; return what failed, by operation.

    ``aim`` rewrites the generated cases (a strategy of cases to a strategy of cases);
    ``checks`` run on every answer after schemathesis's own.
    """
    failures: dict[str, str] = {}
    for result in load(app).get_all_operations():
        operation = result.ok()
        if operation.label == "GET /api/queue/events":
            # An endless stream for any valid call: a WSGI client reads a body to its end.
            # tests/test_e2e_events.py reads it over HTTP; the tenancy test its first event.
            continue
        strategy = operation.as_strategy(generation_mode=mode, headers=headers)

        @given(case=strategy if aim is None else aim(strategy))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            # The token is also given here: with a declared header parameter (Idempotency-Key)
            # schemathesis takes the strategy's Authorization for a generated one otherwise.
            case.call_and_validate(headers=headers or None,
                                   excluded_checks=[positive_data_acceptance],
                                   additional_checks=list(checks))

        try:
            check()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to make invalid
        except (Exception, BaseExceptionGroup) as exc:
            failures[operation.label] = f"{type(exc).__name__}: {exc}"
    return failures


def test_request_examples_are_accepted_as_documented(app: Flask) -> None:
    schema = load(app)
    accepted = []
    for result in schema.get_all_operations():
        operation = result.ok()
        body = operation.definition.raw.get("requestBody")
        if body is None:
            continue
        example = body["content"]["application/json"]["example"]
        case = operation.Case(body=example, media_type="application/json", headers=ADMIN,
                              path_parameters={"interaction_id": "demo-1"})
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
        assert response.status_code == 202, (operation.label, response.text)
        accepted.append(operation.label)
    assert len(accepted) == 3


def test_document_covers_every_route_of_the_app(app: Flask) -> None:
    document = app.test_client().get("/openapi.json").json
    assert document["openapi"] == "3.1.0"
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    served = {(route_template(rule.rule), method.lower()) for rule in app.url_map.iter_rules()
              for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}
    assert documented == served
    for path in ("/health", "/health/live", "/health/ready", "/metrics", "/dashboard",
                 "/openapi.json", "/api/queue/dashboard", "/api/queue/jobs/{kind}/{job_id}"):
        assert path in document["paths"]
    errors = {code for item in document["paths"].values() for op in item.values()
              for code in op["responses"]}
    assert {"400", "401", "403", "404", "409", "413", "415", "429", "503"} <= errors
    method_not_allowed = document["components"]["responses"]["MethodNotAllowed"]
    assert method_not_allowed["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"}


def test_request_bodies_are_the_validating_models_schemas(app: Flask) -> None:
    document = app.test_client().get("/openapi.json").json
    schemas = document["components"]["schemas"]
    for model in (VideoBody, ClientVideoBody, QuestionBody):
        assert schemas[model.__name__] == model.model_json_schema(ref_template=REF)
    submit = document["paths"]["/api/video/process"]["post"]["requestBody"]
    assert submit["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/VideoBody"}
    accepted = document["paths"]["/api/video/process"]["post"]["responses"]["202"]
    assert accepted["headers"]["Location"]["required"] is True
    assert "Retry-After" in document["paths"]["/api/video/process"]["post"]["responses"][
        "503"]["headers"]


def test_metrics_operation_follows_metrics_access(job_system: JobSystem) -> None:
    public = make_app(job_system, jwt_secret=SECRET, metrics_access="public")
    admin = make_app(job_system, jwt_secret=SECRET)
    public_op = public.test_client().get("/openapi.json").json["paths"]["/metrics"]["get"]
    admin_op = admin.test_client().get("/openapi.json").json["paths"]["/metrics"]["get"]
    assert "security" not in public_op and "401" not in public_op["responses"]
    assert admin_op["security"] == [{"bearerAuth": []}] and "403" in admin_op["responses"]


# Authentication on, as two non-admin users of one company each. Before the runs each has a
# completed question and a video waiting (video dispatch paused), and alice a video the
# stand-in holds processing; the runs aim half their job paths at the other user's jobs
# and half their listings at the other user as `owner`, and check every answer for the
# other's job ids. Nothing moves during the runs, so every count can be checked exactly.
JOB = "/api/queue/jobs/{kind}/{job_id}"
JOB_ROUTES = (("GET", JOB), ("DELETE", JOB), ("POST", JOB + "/retry"), ("GET", JOB + "/events"))


@dataclass
class Tenant:
    """A non-admin user of one company, and the jobs (id: (kind, state)) it was given."""

    user: str
    company: str
    jobs: dict[str, tuple[str, str]] = field(default_factory=dict)
    stream_token: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.user, companies=(self.company,))

    def unfinished(self) -> set[str]:
        return {job_id for job_id, (_, state) in self.jobs.items()
                if state in ("queued", "processing")}

    def counts(self) -> tuple[int, int, int]:
        """Its videos waiting and running, and its questions completed."""
        states = list(self.jobs.values())
        return (states.count(("video", "queued")), states.count(("video", "processing")),
                states.count(("qa", "completed")))


@pytest.fixture
def tenant_system(fast_settings: Settings) -> Iterator[JobSystem]:
    # The held video stays processing for the whole test: no job timeout may end it.
    with running_system(fast_settings, job_timeout_s=300.0) as system:
        yield system


@pytest.fixture
def tenant_app(tenant_system: JobSystem) -> Flask:
    return make_app(tenant_system, jwt_secret=SECRET, rate_limit_max_requests=100000)


@pytest.fixture
def tenants(tenant_app: Flask, tenant_system: JobSystem,
            standin: PythonApiStandIn) -> Iterator[dict[str, Tenant]]:
    client = tenant_app.test_client()
    alice, bob = made = Tenant("alice", "alice-co"), Tenant("bob", "bob-co")

    def submit(tenant: Tenant, path: str, body: dict[str, str]) -> TestResponse:
        reply = client.post(path, json={**body, "company_name": tenant.company},
                            headers=tenant.headers)
        assert reply.status_code == 202, reply.json
        tenant.jobs[reply.json["data"]["jobId"]] = (reply.json["data"]["type"], "")
        return reply

    for tenant in made:
        reply = submit(tenant, "/api/interactions/demo-1/questions",
                       {"question": f"What does {tenant.user} sell?"})
        tenant.stream_token = reply.json["data"]["eventsToken"]
        wait_job(client, reply.headers["Location"], standin, headers=tenant.headers)
    standin.hold("process-video")
    try:
        submit(alice, "/api/video/process", {"video_url": youtube_url("aliceRun")})
        assert standin.wait_in_flight("process-video", 1, timeout=10)
        tenant_system.pause(JobKind.VIDEO)
        for tenant in made:
            submit(tenant, "/api/video/process", {"video_url": youtube_url(f"{tenant.user}Wait")})
        for tenant in made:
            tenant.jobs = {job_id: (kind, tenant_system.get(job_id).state.value)
                           for job_id, (kind, _) in tenant.jobs.items()}
        assert (alice.counts(), bob.counts()) == ((1, 1, 1), (1, 0, 1))
        yield {tenant.user: tenant for tenant in made}
    finally:
        standin.release("process-video")


def aimed_at(other: Tenant) -> Callable[[SearchStrategy[Any]], SearchStrategy[Any]]:
    """Point half the generated job paths at ``other``'s jobs, half the listings at its owner."""
    jobs = st.sampled_from(sorted(other.jobs.items()))

    def aim(strategy: SearchStrategy[Any]) -> SearchStrategy[Any]:
        @st.composite
        def cases(draw: st.DrawFn) -> Any:
            case = draw(strategy)
            if "job_id" in (case.path_parameters or {}) and draw(st.booleans()):
                job_id, (kind, _) = draw(jobs)
                case.path_parameters = {**case.path_parameters, "kind": kind, "job_id": job_id}
            if case.operation.label == "GET /api/queue/jobs" and draw(st.booleans()):
                case.query = {**(case.query or {}), "owner": other.user}
            return case

        return cases()

    return aim


def never_shows(other: Tenant) -> CheckFunction:
    """A check: no answer names ``other``'s jobs, and asking for one of them is a 404."""
    def never_shows_another_users_jobs(ctx: Any, response: Any, case: Any) -> None:
        asked = (case.path_parameters or {}).get("job_id")
        text = response.content.decode(errors="replace") + repr(dict(response.headers))
        shown = [job_id for job_id in other.jobs if job_id in text and job_id != asked]
        assert not shown, f"{other.user}'s jobs {shown} shown: {text[:500]}"
        if asked in other.jobs:
            assert response.status_code == 404, f"{other.user}'s job {asked} answered " \
                                                 f"{response.status_code}: {text[:500]}"

    return never_shows_another_users_jobs


def counts_own_companies(system: JobSystem, caller: Tenant) -> CheckFunction:
    """A check: the status and monitor count the caller's company's jobs, no one else's."""
    def counts_only_the_callers_companies(ctx: Any, response: Any, case: Any) -> None:
        if case.operation.label not in ("GET /api/queue/status", "GET /api/queue/monitor") \
                or response.status_code != 200:
            return
        data = response.json()["data"]
        assert data["companies"] == [caller.company]
        for kind in JobKind:
            # Only the caller submits for its company, and its videos are held or paused:
            # their states (and every kind's total) cannot change between the answer and this.
            own = [job.state for job in system.list_jobs(kind=kind, owner=caller.user,
                                                         limit=1000)]
            queue = data["queues"][kind.value]
            assert sum(queue[name] for name in STATE_COUNTS) == len(own), (kind, queue)
            if kind is JobKind.VIDEO:
                assert (queue["waiting"], queue["activeJobs"]) == (
                    own.count(JobState.QUEUED), own.count(JobState.PROCESSING)), queue

    return counts_only_the_callers_companies


STATE_COUNTS = ("waiting", "activeJobs", "retrying", "completed", "failed", "cancelled")


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("caller", "other"), [("bob", "alice"), ("alice", "bob")],
                         ids=["as-bob", "as-alice"])
def test_a_user_gets_documented_answers_and_never_another_users_jobs(
        tenant_app: Flask, tenant_system: JobSystem, tenants: dict[str, Tenant],
        caller: str, other: str) -> None:
    me, them = tenants[caller], tenants[other]
    failures = run_schemathesis(tenant_app, GenerationMode.POSITIVE, me.headers,
                                aim=aimed_at(them),
                                checks=[never_shows(them), counts_own_companies(tenant_system, me)])
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())

    # Every route of one job, for each of the other's jobs: 404, as for no job at all;
    # the caller's stream token in the URL (as EventSource sends it) too.
    schema = load(tenant_app)
    for job_id, (kind, _) in them.jobs.items():
        where = {"kind": kind, "job_id": job_id}
        for method, path in JOB_ROUTES:
            case = schema[path][method].Case(path_parameters=where, headers=me.headers)
            response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
            assert response.status_code == 404, (method, path, response.text)
        case = schema[JOB + "/events"]["GET"].Case(path_parameters=where,
                                                   query={"access_token": me.stream_token})
        response = case.call_and_validate(excluded_checks=[positive_data_acceptance])
        assert response.status_code == 404, response.text

    # The listing, the stream of all one's jobs and the counts are the caller's own.
    client = tenant_app.test_client()
    for query in ("limit=100", f"owner={them.user}"):  # owner is an admin's filter
        listing = client.get(f"/api/queue/jobs?{query}", headers=me.headers).json["data"]
        assert {job["id"] for job in listing} == set(me.jobs), query
    name, snapshot = first_event(client, "/api/queue/events", me.headers)
    assert name == "snapshot" and {job["id"] for job in snapshot["jobs"]} == me.unfinished()
    assert client.get("/api/queue/status", headers=me.headers).json["data"]["companies"] == [
        me.company]
    both = tuple(map(sum, zip(me.counts(), them.counts(), strict=True)))
    for headers, seen in ((me.headers, me.counts()), (ADMIN, both)):  # an admin sees both
        queues = client.get("/api/queue/status", headers=headers).json["data"]["queues"]
        assert (queues["video"]["waiting"], queues["video"]["activeJobs"],
                queues["qa"]["completed"]) == seen, queues

    # Nothing the caller sent changed the other's jobs.
    assert {job_id: (kind, tenant_system.get(job_id).state.value)
            for job_id, (kind, _) in them.jobs.items()} == them.jobs


def first_event(client: FlaskClient, path: str, headers: dict[str, str]) -> tuple[str, Any]:
    """The name and data of an event stream's first event (this stream never ends)."""
    reply = client.get(path, headers=headers, buffered=False)
    assert reply.status_code == 200 and reply.mimetype == "text/event-stream", reply.status
    text = ""
    try:
        for chunk in reply.response:
            text += chunk.decode() if isinstance(chunk, bytes) else str(chunk)
            for block in text.split("\n\n")[:-1]:  # the complete ones
                fields = dict(line.split(": ", 1) for line in block.splitlines()
                              if ": " in line and not line.startswith(":"))
                if "data" in fields:
                    return fields.get("event", "message"), json.loads(fields["data"])
    finally:
        reply.close()
    raise AssertionError(f"the stream ended before its first event: {text!r}")
