"""No secret in any reply, metric, repr or log line (canaries in every secret setting).

The Python API's addresses carry credentials (``http://user:CANARY@host``), the database
URL and the Supabase key are canaries too. Every route is called as an anonymous caller,
a user and an admin (and with authentication off); no reply, header, metric, snapshot,
repr or log line may contain a canary. Anonymous ``/health`` shows no address at all.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from actors import JobSystem, Settings
from actors.model.errors import SettingsError
from tests.gunicorn_server import free_port
from tests.postgrest_standin import PostgrestStandIn
from tests.standin import PythonApiStandIn, Reply
from tests.supabase_support import seeded
from tests.url_corpus import LOOM, YT
from tests.web_support import QUESTION, bearer, make_app, wait_job
from web import load_settings
from web.cli import queue
from web.dashboard import ASSETS

PASSWORD = "pw-canary-5c1b9e"
TOKEN_USER = "tok-canary-8d2f41"
DB_PASSWORD = "db-canary-3e7a90"
SERVICE_KEY = "key-canary-b41f6d2e"
JWT_CANARY = "jwt-canary-0123456789abcdef0123456789abcdef"
CANARIES = (PASSWORD, TOKEN_USER, DB_PASSWORD, SERVICE_KEY, JWT_CANARY)
URL_IN_TEXT = re.compile(r"https?://[^\s\"'<>,]+")


def leaks(text: str) -> list[str]:
    """Return the canaries found in ``text``."""
    return [canary for canary in CANARIES if canary in text]


@pytest.fixture
def postgrest() -> Iterator[PostgrestStandIn]:
    with PostgrestStandIn(key=SERVICE_KEY) as server:
        yield seeded(server)


@pytest.fixture
def secret_settings(fast_settings: Settings, standin: PythonApiStandIn,
                    postgrest: PostgrestStandIn) -> Settings:
    """Two Python API instances with credentials (one answers, one never does)."""
    answering = standin.url.replace("http://", f"http://qudemo:{PASSWORD}@")
    silent = f"http://{TOKEN_USER}@127.0.0.1:{free_port()}"
    return fast_settings.replace(
        python_api_base_url=f"{answering},{silent}", breaker_failures=1,
        database_url=f"postgresql://jobs:{DB_PASSWORD}@db.internal:5432/jobs",
        supabase_url=postgrest.url, supabase_service_role_key=SERVICE_KEY)


@pytest.fixture
def secret_system(secret_settings: Settings) -> Iterator[JobSystem]:
    system = JobSystem(secret_settings).start()
    try:
        yield system
    finally:
        system.stop(drain=False)


def _paths(app: Flask, values: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Every (method, path) the app serves, with each path argument filled in."""
    adapter = app.url_map.bind("localhost")
    found: list[tuple[str, str]] = []
    for rule in app.url_map.iter_rules():
        args = sorted(rule.arguments)
        choices = [values.get(arg, ["x"]) for arg in args]
        for combo in itertools.product(*choices):
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                try:
                    path = adapter.build(rule.endpoint, dict(zip(args, combo, strict=True)),
                                         method=method)
                except Exception:  # a converter refusing a value (e.g. another kind)
                    continue
                found.append((method, path))
    return sorted(set(found))


def _body(path: str) -> dict[str, Any]:
    if path.startswith("/api/video/"):
        return {"video_url": LOOM, "company_name": "acme", "meeting_link":
                "https://calendly.com/acme"}
    if path.endswith("/questions"):
        return QUESTION
    return {}


def _sweep(client: FlaskClient, app: Flask, values: dict[str, list[str]],
           callers: dict[str, dict[str, str]]) -> list[str]:
    """Call every route as every caller; return a description of each leak."""
    found = []
    for caller, headers in callers.items():
        for method, path in _paths(app, values):
            reply = client.open(path, method=method, headers=headers,
                                json=_body(path) if method == "POST" else None,
                                buffered=False)
            text = _first_part(reply) + str(list(reply.headers))
            found += [f"{caller} {method} {path}: {c}" for c in leaks(text)]
    return found


def _first_part(reply: Any) -> str:
    """The whole body, or an event stream's first event (the per-caller one never ends)."""
    if reply.mimetype != "text/event-stream":
        return str(reply.get_data(as_text=True))
    text = ""
    for chunk in reply.response:
        text += chunk.decode() if isinstance(chunk, bytes) else str(chunk)
        if "\n\n" in text and "data:" in text:
            break
    reply.close()
    return text


def _finish_some_jobs(client: FlaskClient, system: JobSystem, standin: PythonApiStandIn,
                      headers: dict[str, str]) -> dict[str, list[str]]:
    """Leave a completed video, a failed question and a breaker that opened; return ids."""
    video = client.post("/api/video/process", headers=headers,
                        json={"video_url": YT, "company_name": "acme"})
    assert video.status_code == 202, video.json
    wait_job(client, video.headers["Location"], standin, headers=headers, timeout=10)
    standin.script("ask-question", *[Reply(status=422, body={"detail": "bad question"})] * 3)
    question = client.post("/api/interactions/i-1/questions", headers=headers, json=QUESTION)
    assert question.status_code == 202, question.json
    wait_job(client, question.headers["Location"], standin, headers=headers, timeout=10)
    system.check_memory()  # reads both instances: the silent one is logged, its breaker opens
    return {"job_id": [video.json["data"]["jobId"], question.json["data"]["jobId"]],
            "kind": ["video", "qa"], "interaction_id": ["i-1"], "name": list(ASSETS)}


def test_no_reply_of_any_route_holds_a_secret(secret_system: JobSystem,
                                              standin: PythonApiStandIn,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(secret_system, jwt_secret=JWT_CANARY)
    client = app.test_client()
    admin = {"Authorization": bearer("root", role="admin", secret=JWT_CANARY)["Authorization"]}
    user = {"Authorization": bearer("alice", secret=JWT_CANARY)["Authorization"]}
    values = _finish_some_jobs(client, secret_system, standin, user)
    callers = {"anonymous": {}, "user": user, "admin": admin}
    assert _sweep(client, app, values, callers) == []
    assert leaks(caplog.text) == []
    assert leaks(repr(secret_system) + repr(secret_system.settings) + repr(secret_system.clients)
                 + str(secret_system.snapshot())) == []


def test_no_secret_with_authentication_off(secret_system: JobSystem, standin: PythonApiStandIn,
                                           caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = make_app(secret_system)
    client = app.test_client()
    values = _finish_some_jobs(client, secret_system, standin, {})
    assert _sweep(client, app, values, {"local admin": {}}) == []
    assert leaks(caplog.text) == []


def test_addresses_are_shown_redacted_to_operators(secret_system: JobSystem,
                                                   standin: PythonApiStandIn) -> None:
    client = make_app(secret_system, jwt_secret=JWT_CANARY).test_client()
    admin = bearer("root", role="admin", secret=JWT_CANARY)
    instances = client.get("/api/queue/status", headers=admin).json["data"]["pythonInstances"]
    port = standin.url.rsplit(":", 1)[1]
    assert instances[0]["url"] == f"http://***@127.0.0.1:{port}"
    assert instances[1]["url"].startswith("http://***@127.0.0.1:")
    assert [i["instance"] for i in instances] == [1, 2]
    metrics = client.get("/metrics", headers=admin).get_data(as_text=True)
    assert f'instance="http://***@127.0.0.1:{port}"' in metrics
    dashboard = client.get("/api/queue/dashboard", headers=admin).json["data"]
    assert dashboard["pythonInstances"][0]["url"] == f"http://***@127.0.0.1:{port}"
    # ... while the Python API still gets them, as basic auth (what requests did with them)
    reply = client.post("/api/interactions/i-1/questions", headers=admin, json=QUESTION)
    wait_job(client, reply.headers["Location"], standin, headers=admin)
    assert (standin.calls("ask-question")[0].authorization or "").startswith("Basic ")


def test_anonymous_health_shows_no_address(secret_system: JobSystem,
                                           standin: PythonApiStandIn) -> None:
    standin.set_memory(1800.0)
    secret_system.check_memory()  # instance 1 under pressure: a reason names it
    client = make_app(secret_system, jwt_secret=JWT_CANARY).test_client()
    reply = client.get("/health")
    text = reply.get_data(as_text=True)
    assert URL_IN_TEXT.findall(text) == [], text
    instances = reply.json["health"]["pythonInstances"]
    assert [i["instance"] for i in instances] == [1, 2]
    assert all("url" not in i for i in instances)
    assert "Python API instance 1 of 2 pressure" in reply.json["reasons"], reply.json
    for path in ("/health/live", "/health/ready"):
        assert URL_IN_TEXT.findall(client.get(path).get_data(as_text=True)) == []


BAD_ENVIRONMENTS = [
    {"PYTHON_API_BASE_URL": f"ftp://qudemo:{PASSWORD}@python:5001"},
    {"PYTHON_API_BASE_URL": f"http://qudemo:{PASSWORD}@python:50x1"},
    {"PYTHON_API_BASE_URL": f"http://a:{PASSWORD}@python:5001,http://b:{PASSWORD}@python:5001"},
    {"PYTHON_API_BASE_URLS": f"http://{TOKEN_USER}@python:5001,nonsense"},
    {"SUPABASE_URL": f"ftp://sb:{PASSWORD}@x.supabase.co",
     "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY},
    {"DATABASE_URL": f"mysql://jobs:{DB_PASSWORD}@db:3306/jobs", "QUEUE_STORE": "postgres"},
    {"JWT_SECRET": "short", "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY},
    {"RATE_LIMIT_STORAGE_URI": f"bogus://:{PASSWORD}@cache:6379"},
]


def test_settings_errors_quote_no_secret() -> None:
    found = []
    for environ in BAD_ENVIRONMENTS:
        for load in (load_settings, Settings.from_env):
            try:
                load(environ, dotenv_path=None)
            except SettingsError as exc:
                assert exc.problems
                found += [f"{sorted(environ)}: {c}" for c in leaks(str(exc))]
            else:  # the core alone does not read the web's variables
                assert "JWT_SECRET" in environ or "RATE_LIMIT_STORAGE_URI" in environ
    assert found == []


def test_two_addresses_differing_only_in_credentials_are_refused() -> None:
    with pytest.raises(SettingsError, match="twice") as caught:
        JobSystem(Settings(store="memory", python_api_base_url=(
            f"http://a:{PASSWORD}@python:5001,http://b:{PASSWORD}@python:5001")))
    assert leaks(str(caught.value)) == []


def test_the_cli_shows_its_server_address_redacted() -> None:
    url = f"http://ops:{PASSWORD}@127.0.0.1:{free_port()}"
    result = CliRunner().invoke(queue, ["status"], env={"QUDEMO_URL": url})
    assert result.exit_code == 1
    assert "cannot reach the server at http://***@127.0.0.1:" in result.output
    assert leaks(result.output) == []


def test_no_secret_in_logs_of_a_failing_settings_run(caplog: pytest.LogCaptureFixture,
                                                     secret_settings: Settings) -> None:
    """The start line names the instances by their shown address only."""
    caplog.set_level(logging.DEBUG)
    system = JobSystem(secret_settings).start()
    system.stop(drain=False)
    assert "job system started (Python API http://***@127.0.0.1:" in caplog.text
    assert leaks(caplog.text) == []
