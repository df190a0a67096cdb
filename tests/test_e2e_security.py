"""The real server under gunicorn: no secret in any reply or log line; body limits on the wire.

The server runs with canaries in every secret setting (credentials in the Python API's
addresses, the database URL, the Supabase key, the JWT secret) at ``LOG_LEVEL=debug``
with the access log on. Every route the OpenAPI document lists is called as an anonymous
caller, a user and an admin; then the server's whole log is searched. Bodies are sent
over a raw socket with ``Transfer-Encoding: chunked``.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests

from tests.gunicorn_server import GunicornServer, free_port
from tests.postgrest_standin import PostgrestStandIn
from tests.standin import PythonApiStandIn, Reply
from tests.supabase_support import seeded
from tests.url_corpus import LOOM, YT
from tests.web_support import TEST_COMPANIES

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

PASSWORD = "pw-canary-e2e-41d7"
TOKEN_USER = "tok-canary-e2e-9b03"
DB_PASSWORD = "db-canary-e2e-77ac"
SERVICE_KEY = "key-canary-e2e-2f5e9a"
JWT_SECRET = "jwt-canary-e2e-0123456789abcdef0123456789abcdef"
CANARIES = (PASSWORD, TOKEN_USER, DB_PASSWORD, SERVICE_KEY, JWT_SECRET)
LIMIT = 2048
TERMINAL = ("completed", "failed", "cancelled")
ASSETS = ("dashboard.css", "dashboard.js", "dashboard-icon.svg")


def auth(user: str, role: str | None = None) -> dict[str, str]:
    claims: dict[str, Any] = {"userId": user, "exp": int(time.time()) + 3600,
                              "companyNames": list(TEST_COMPANIES)}
    if role:
        claims["role"] = role
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}


ALICE, ADMIN = auth("alice"), auth("root", "admin")


def leaks(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary in text]


@pytest.fixture(scope="module")
def module_standin() -> Iterator[PythonApiStandIn]:
    with PythonApiStandIn() as server:
        yield server


@pytest.fixture(scope="module")
def postgrest() -> Iterator[PostgrestStandIn]:
    with PostgrestStandIn(key=SERVICE_KEY) as server:
        yield seeded(server)


@pytest.fixture(scope="module")
def server(module_standin: PythonApiStandIn, postgrest: PostgrestStandIn,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    workdir: Path = tmp_path_factory.mktemp("security")
    answering = module_standin.url.replace("http://", f"http://qudemo:{PASSWORD}@")
    env = {
        "PYTHON_API_BASE_URL": f"{answering},http://{TOKEN_USER}@127.0.0.1:{free_port()}",
        "PYTHON_API_BREAKER_FAILURES": "1",
        "APP_ENV": "production", "JWT_SECRET": JWT_SECRET,
        "DATABASE_URL": f"postgresql://jobs:{DB_PASSWORD}@127.0.0.1:1/jobs",
        "SUPABASE_URL": postgrest.url, "SUPABASE_SERVICE_ROLE_KEY": SERVICE_KEY,
        "QUEUE_STORE": "sqlite", "QUEUE_DB_PATH": str(workdir / "jobs.sqlite3"),
        "QUEUE_BACKOFF_DELAY": "50", "QUEUE_BACKOFF_MAX_MS": "200",
        "MEMORY_CHECK_INTERVAL_MS": "200", "PYTHON_API_STATUS_TIMEOUT_MS": "300",
        "MAX_BODY_BYTES": str(LIMIT), "LOG_LEVEL": "debug", "GUNICORN_ACCESS_LOG": "-",
        "METRICS_ACCESS": "admin",
    }
    gunicorn = GunicornServer(workdir, env).start()
    yield gunicorn
    gunicorn.stop()


def follow(server: GunicornServer, location: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def finished() -> bool:
        found.update(server.request("GET", location, headers=ALICE).json()["data"])
        return found["status"] in TERMINAL

    assert server.wait_until(finished, 30), found
    return found


def test_no_reply_and_no_log_line_holds_a_secret(server: GunicornServer,
                                                 module_standin: PythonApiStandIn) -> None:
    module_standin.script("ask-question", *[Reply(status=422, body={"detail": "nope"})] * 3)
    ids: dict[str, str] = {}
    for kind, path, body in (
            ("video", "/api/video/process", {"video_url": YT, "company_name": "acme"}),
            ("qa", "/api/interactions/i-1/questions",
             {"question": "What is it?", "companyName": "acme"})):
        reply = server.request("POST", path, headers=ALICE, json=body)
        assert reply.status_code == 202, reply.text
        ids[kind] = reply.json()["data"]["jobId"]
        follow(server, reply.headers["Location"])
    document = server.request("GET", "/openapi.json").json()
    calls = []
    for template, operations in document["paths"].items():
        for kind in ("video", "qa"):
            path = (template.replace("{kind}", kind).replace("{job_id}", ids[kind])
                    .replace("{interaction_id}", "i-1"))
            for name in (ASSETS if "{name}" in path else ("",)):
                calls += [(method.upper(), path.replace("{name}", name))
                          for method in operations]
    found: list[str] = []
    for headers in ({}, ALICE, ADMIN):
        for method, path in sorted(set(calls)):
            body = ({"video_url": LOOM, "company_name": "acme"} if "/api/video/" in path
                    else {"question": "Again?", "companyName": "acme"})
            if method == "GET" and path.endswith("/events"):
                text = first_event(server, path, headers)  # a stream: its first event
            else:
                reply = server.request(method, path, headers=headers,
                                       json=body if method == "POST" else None)
                text = reply.text + str(reply.headers)
            found += [f"{method} {path}: {c}" for c in leaks(text)]
    assert found == []
    health = server.request("GET", "/health").text
    assert re.findall(r"https?://", health) == [], health
    metrics = server.request("GET", "/metrics", headers=ADMIN).text
    assert 'instance="http://***@127.0.0.1:' in metrics
    log = server.log()
    assert "job system started (Python API http://***@127.0.0.1:" in log
    assert leaks(log) == [], [line for line in log.splitlines() if leaks(line)]


def first_event(server: GunicornServer, path: str, headers: dict[str, str]) -> str:
    """The headers and the first event of an event stream (the per-caller one never ends)."""
    with requests.get(server.url + path, headers=headers, stream=True, timeout=10) as reply:
        text = str(reply.headers)
        if reply.status_code != 200:
            return text + reply.text
        for line in reply.iter_lines(decode_unicode=True):
            text += f"{line}\n"
            if not line and "data:" in text:
                break
        return text


def raw_request(server: GunicornServer, path: str, chunks: list[bytes], *,
                token: dict[str, str] = ALICE) -> tuple[int, dict[str, Any]]:
    """Send a chunked POST over a raw socket; return the status and the JSON body."""
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: {token['Authorization']}\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for chunk in chunks:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body was sent
        reply = b""
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            reply += data
    status_line, _, rest = reply.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in headers.lower():
        body = _dechunk(body)
    return int(status_line.split()[1]), json.loads(body)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out, body = out + body[:size], body[size + 2:]
    return out


def question_chunks(question: str, pad: int = 0, size: int = 500) -> list[bytes]:
    body = json.dumps({"question": question, "companyName": "acme"}).encode() + b" " * pad
    return [body[i:i + size] for i in range(0, len(body), size)]


def test_chunked_body_over_the_limit_is_413(server: GunicornServer) -> None:
    for chunks in (question_chunks("What is it?", pad=4 * LIMIT),  # a valid prefix
                   question_chunks("q" * (3 * LIMIT)),
                   question_chunks("What is it?", pad=LIMIT, size=1)):
        status, body = raw_request(server, "/api/interactions/i-1/questions", chunks)
        assert (status, body) == (413, {"success": False, "error":
                                        f"request body too large (limit {LIMIT} bytes)"})


def test_large_chunked_body_still_gets_its_413(server: GunicornServer) -> None:
    """Far more than the limit (and than the server drains): the answer still arrives."""
    status, _ = raw_request(server, "/api/video/process", [b" " * 65536] * 8)
    assert status == 413


def test_chunked_body_within_the_limit_is_read_whole(server: GunicornServer,
                                                     module_standin: PythonApiStandIn) -> None:
    question = "Is the whole question read? " + "x" * (LIMIT - 200)
    status, body = raw_request(server, "/api/interactions/i-2/questions",
                               question_chunks(question, size=100))
    assert status == 202, body
    job = follow(server, f"/api/queue/jobs/qa/{body['data']['jobId']}")
    assert job["data"]["question"] == question


def test_content_length_over_the_limit_is_413(server: GunicornServer) -> None:
    reply = server.request("POST", "/api/interactions/i-1/questions", headers=ALICE,
                           data=b'{"question": "x", "companyName": "acme"}' + b" " * LIMIT,
                           timeout=10)
    assert reply.status_code == 413
    assert reply.json()["error"] == f"request body too large (limit {LIMIT} bytes)"
