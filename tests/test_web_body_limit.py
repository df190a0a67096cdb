"""``MAX_BODY_BYTES`` holds for every framing: Content-Length and chunked bodies alike."""

from __future__ import annotations

import io
import json

import pytest
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from actors import JobSystem
from tests.url_corpus import LOOM
from tests.web_support import QUESTION, make_app

LIMIT = 1024
QUESTION_PATH = "/api/interactions/i-1/questions"
VIDEO = {"video_url": LOOM, "company_name": "acme"}
# A whole, valid document padded past the limit: its prefix parses, so a cut body would pass.
PADDED = json.dumps(QUESTION).encode() + b" " * (4 * LIMIT)
OVER = json.dumps({**QUESTION, "question": "q" * (2 * LIMIT)}).encode()


@pytest.fixture
def client(job_system: JobSystem) -> FlaskClient:
    return make_app(job_system, max_body_bytes=LIMIT).test_client()


def chunked(client: FlaskClient, path: str, body: bytes, *, terminated: bool = False,
            method: str = "POST") -> TestResponse:
    """Send ``body`` without a length, as ``Transfer-Encoding: chunked`` (dechunked)."""
    overrides = {"wsgi.input_terminated": True} if terminated else {}
    return client.open(path, method=method, input_stream=io.BytesIO(body),
                       headers={"Transfer-Encoding": "chunked",
                                "Content-Type": "application/json"},
                       environ_overrides=overrides)


def assert_too_large(reply: TestResponse) -> None:
    assert reply.status_code == 413, reply.get_data(as_text=True)
    assert reply.json == {"success": False,
                          "error": f"request body too large (limit {LIMIT} bytes)"}
    assert reply.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize("terminated", [False, True], ids=["test-client", "server-dechunked"])
@pytest.mark.parametrize("body", [PADDED, OVER], ids=["valid-prefix", "long-string"])
@pytest.mark.parametrize("path", [QUESTION_PATH, "/api/video/process", "/api/video/videos"])
def test_chunked_body_over_the_limit_is_413(client: FlaskClient, path: str, body: bytes,
                                            terminated: bool) -> None:
    assert_too_large(chunked(client, path, body, terminated=terminated))


def test_chunked_body_within_the_limit_is_read_whole(client: FlaskClient) -> None:
    body = json.dumps(QUESTION).encode() + b" " * (LIMIT - len(json.dumps(QUESTION)))
    assert len(body) == LIMIT
    for terminated in (False, True):  # as the test client sends it, as gunicorn hands it on
        reply = chunked(client, QUESTION_PATH, body, terminated=terminated)
        assert reply.status_code == 202, reply.json
        video = chunked(client, "/api/video/process", json.dumps(VIDEO).encode(),
                        terminated=terminated)
        assert video.status_code in (202, 409), video.json


def test_one_byte_over_is_413_however_it_is_framed(client: FlaskClient) -> None:
    body = json.dumps(QUESTION).encode()
    body += b" " * (LIMIT + 1 - len(body))
    assert_too_large(chunked(client, QUESTION_PATH, body, terminated=True))
    assert_too_large(chunked(client, QUESTION_PATH, body))
    for data in (body, PADDED, OVER):
        assert_too_large(client.post(QUESTION_PATH, data=data,
                                     content_type="application/json"))


def test_a_body_is_refused_on_any_route(client: FlaskClient) -> None:
    """Even a route that reads no body: a client sending a large one is told so."""
    assert_too_large(chunked(client, "/api/queue/video/pause", OVER, terminated=True))
    assert client.post("/api/queue/video/pause").status_code == 200
