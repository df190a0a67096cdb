"""The OpenAPI document: it covers every route, and schemathesis finds the app true to it.

Schemathesis generates requests from ``/openapi.json`` (valid ones and, in negative mode,
invalid ones) and sends them to the app over a real job system and the stand-in Python
API; every answer must be documented (status, media type, headers, body schema) and none
may be a 5xx. One check is left out: ``positive_data_acceptance``. The document's body
schemas are the pydantic models' own, but validation goes further than JSON Schema can
say (the video URL allow-list and SSRF policy, names' character sets), so a body that
fits the schema can still get its documented 400. The request examples are sent too and
must be accepted.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import positive_data_acceptance

from actors import JobSystem
from tests.web_support import SECRET, bearer, make_app
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
    failures: dict[str, str] = {}
    for result in load(app).get_all_operations():
        operation = result.ok()
        if operation.label == "GET /api/queue/events":
            # An endless stream for any valid call: a WSGI client reads a body to its end.
            # tests/test_e2e_events.py reads it over HTTP.
            continue

        @given(case=operation.as_strategy(generation_mode=mode, headers=headers))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            # The token is also given here: with a declared header parameter (Idempotency-Key)
            # schemathesis takes the strategy's Authorization for a generated one otherwise.
            case.call_and_validate(headers=headers or None,
                                   excluded_checks=[positive_data_acceptance])

        try:
            check()
        except Unsatisfiable:
            assert mode is GenerationMode.NEGATIVE, operation.label  # nothing to make invalid
        except (Exception, BaseExceptionGroup) as exc:
            failures[operation.label] = f"{type(exc).__name__}: {exc}"
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


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
