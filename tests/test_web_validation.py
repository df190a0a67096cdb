"""Validation: every problem listed, the video URL policy (SSRF), and no input ever a 5xx."""

from __future__ import annotations

import json

import pytest
from flask import Flask
from flask.testing import FlaskClient

from actors import JobSystem
from tests.standin import PythonApiStandIn
from tests.web_support import QUESTION, SECRET, VIDEO, bearer, make_app, wait_job
from web.settings import DEFAULT_VIDEO_HOSTS
from web.video_urls import check_video_url, host_allowed, is_ip_literal

YOUTUBE = "https://www.youtube.com/watch?v=dQw4w9WgXcQ"
POST_ROUTES = ("/api/video/process", "/api/video/videos", "/api/interactions/i-1/questions")

BAD_URLS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://169.254.169.254/?x=loom.com",
    "http://169.254.169.254#@loom.com",
    "http://loom.com@169.254.169.254/",
    "https://user:pass@www.youtube.com/watch?v=dQw4w9WgXcQ",
    "http://127.0.0.1/",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://0/",
    "http://[::1]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[fd00::1]:443/",
    "http://localhost/",
    "http://metadata.google.internal/",
    "https://youtube.com.evil.com/watch?v=x",
    "https://evilyoutube.com/watch?v=x",
    "https://www.youtube.com:8080/watch?v=x",
    "https://www.youtube.com:0/",
    "https://www.youtube.com:99999/",
    "https://www.youtube.com:abc/",
    "ftp://www.youtube.com/video",
    "file:///etc/passwd",
    "gopher://loom.com:70/",
    "javascript:alert(1)",
    "//www.youtube.com/watch?v=x",
    "www.youtube.com/watch?v=x",
    "https://loom.com\\@evil.com/",
    "https://loom.com\t.evil.com/",
    "https://lo om.com/",
    "https://%6coom.com/",
    "https://l\u043e\u043em.com/",  # Cyrillic o's
    "https:///share/abc",
    "https://",
    "",
    "   ",
    "https://www.loom.com/share/" + "a" * 2100,
    "https://sub.loom.com/share/abc",  # a subdomain is not in the default list
]


@pytest.fixture
def app(job_system: JobSystem) -> Flask:
    return make_app(job_system, max_body_bytes=8192)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_video_urls_are_refused_naming_video_url(client: FlaskClient, url: str):
    for path, body in (("/api/video/process", {"video_url": url, "company_name": "acme"}),
                       ("/api/video/videos", {"url": url, "companyName": "acme"})):
        reply = client.post(path, json=body)
        assert reply.status_code == 400, (url, reply.json)
        assert [d["field"] for d in reply.json["details"]] == ["video_url"], reply.json


@pytest.mark.parametrize("url, source, canonical", [
    ("https://www.youtube.com/watch?v=dQw4w9WgXcQ", "youtube", YOUTUBE),
    ("https://youtu.be/dQw4w9WgXcQ", "youtube", YOUTUBE),
    ("http://m.youtube.com/watch?v=dQw4w9WgXcQ", "youtube", YOUTUBE),
    ("https://YOUTUBE.com./watch?v=dQw4w9WgXcQ", "youtube", YOUTUBE),
    ("https://www.youtube.com:443/watch?v=dQw4w9WgXcQ", "youtube", YOUTUBE),
    ("https://www.loom.com/share/0123456789abcdef0123456789abcdef", "loom",
     "https://www.loom.com/share/0123456789abcdef0123456789abcdef"),
    ("https://player.vimeo.com/video/123", "vimeo", "https://vimeo.com/123"),
])
def test_allowed_video_urls(url: str, source: str, canonical: str):
    checked = check_video_url(url, DEFAULT_VIDEO_HOSTS)
    assert checked.source == source and checked.url == canonical


def test_allow_list_matching_rules():
    assert host_allowed("a.example.com", ["*.example.com"])
    assert host_allowed("a.b.example.com", ["*.example.com"])
    assert not host_allowed("example.com", ["*.example.com"])
    assert not host_allowed("badexample.com", ["*.example.com"])
    assert host_allowed("example.com", ["example.com"])
    assert not host_allowed("www.example.com", ["example.com"])
    assert all(is_ip_literal(h) for h in ("10.0.0.1", "::1", "2130706433", "0x7f.1", "1.2.3"))
    assert not any(is_ip_literal(h) for h in ("loom.com", "1.example.com", "x1"))


def test_same_video_spellings_share_a_dedupe_key():
    keys = {check_video_url(url, DEFAULT_VIDEO_HOSTS).key for url in (
        "https://www.youtube.com/watch?v=dQw4w9WgXcQ",
        "https://youtu.be/dQw4w9WgXcQ",
        "https://m.youtube.com/watch?v=dQw4w9WgXcQ&utm_source=x&feature=share",
        "https://www.youtube.com/embed/dQw4w9WgXcQ",
    )}
    assert keys == {"youtube:dQw4w9WgXcQ"}


def test_every_problem_is_listed(client: FlaskClient):
    reply = client.post("/api/video/process", json={
        "video_url": "http://10.0.0.1/", "company_name": "../etc", "source": 7,
        "meeting_link": "javascript:alert(1)", "bucket_name": "X", "create_qudemo": "yes",
        "companyId": "bad id!"})
    assert reply.status_code == 400
    first = reply.json["details"][0]
    # The client shows ``error``: it names the first problem and says there are more.
    assert reply.json["error"] == (f"{first['field']}: {first['message']} "
                                   f"(and 6 more problems: see details)")
    fields = {d["field"] for d in reply.json["details"]}
    assert fields == {"video_url", "company_name", "source", "meeting_link", "bucket_name",
                      "create_qudemo", "company_id"}
    assert all(d["message"] for d in reply.json["details"])
    missing = client.post("/api/video/process", json={})
    assert {d["field"] for d in missing.json["details"]} == {"video_url", "company_name"}


def test_source_must_match_the_host(client: FlaskClient):
    reply = client.post("/api/video/process", json={**VIDEO, "source": "loom"})
    assert reply.status_code == 400
    assert reply.json["details"] == [{"field": "source", "message":
                                      "'loom' does not match the video host (youtube)"}]


@pytest.mark.parametrize("question, ok", [
    ("", False), ("   ", False), ("x" * 2001, False), ("a\x00b", False), ("a\x1bb", False),
    ("\ufeff", False), ("\u200b \u200b", False), (5, False), (None, False), (["q"], False),
    ("x" * 2000, True), ("  Was kostet es? \u00e4\u00f6\u00fc \U0001f600\n", True),
])
def test_question_rules(client: FlaskClient, standin: PythonApiStandIn, question, ok: bool):
    reply = client.post("/api/interactions/i-1/questions",
                        json={"question": question, "companyName": "acme"})
    if ok:
        assert reply.status_code == 202, reply.json
        wait_job(client, reply.headers["Location"], standin)
    else:
        assert reply.status_code == 400
        assert [d["field"] for d in reply.json["details"]] == ["question"]


def test_path_and_body_problems_are_reported_together(client: FlaskClient):
    reply = client.post("/api/interactions/" + "a" * 200 + "/questions",
                        json={"question": "", "companyName": "acme"})
    assert reply.status_code == 400
    assert {d["field"] for d in reply.json["details"]} == {"interactionId", "question"}


def test_trailing_newline_in_ids_is_refused(client: FlaskClient):
    reply = client.post("/api/interactions/i-1%0A/questions", json=QUESTION)
    assert reply.status_code == 400 and reply.json["details"][0]["field"] == "interactionId"
    assert client.get("/api/queue/jobs/video/abc%0A").status_code == 400


def test_http_errors_are_json(client: FlaskClient):
    checks = [
        (client.get("/no/such/route"), 404),
        (client.get("/api/video/process"), 405),
        (client.put("/api/queue/status"), 405),
        (client.post("/api/video/process", data="x" * 9000,
                     content_type="application/json"), 413),
        (client.post("/api/video/process", data="video_url=x", content_type="text/plain"), 415),
        (client.post("/api/video/process", data={"video_url": "x"}), 415),
        (client.post("/api/video/process", data="{bad json", content_type="application/json"),
         400),
    ]
    for reply, status in checks:
        assert reply.status_code == status, (status, reply.data[:200])
        assert reply.is_json and reply.json["success"] is False and reply.json["error"]
    assert "GET" not in checks[1][0].headers["Allow"] and "POST" in checks[1][0].headers["Allow"]
    assert "8192" in checks[3][0].json["error"]


def _bodies() -> list[tuple[bytes, str]]:
    as_json = "application/json"
    docs = [None, True, 0, -1, 10**30, 1.5e308, "", "string", [], [VIDEO], {}, {"": ""},
            {"video_url": None, "company_name": None}, {"video_url": [], "company_name": {}},
            {"video_url": 10**20, "company_name": True}, {"question": {"a": 1}},
            {"question": "q", "companyName": "\u0000"}, {"question": "\ufeff", "companyName": "a"},
            {"videoUrl": "https://youtu.be/\u202e", "companyName": "\u00e9"},
            {**VIDEO, "create_qudemo": 1}, {**VIDEO, "source": ""}, {**VIDEO, "source": None},
            {**VIDEO, "meeting_link": "https://"}, {**VIDEO, "bucket_name": ["a"]},
            {**QUESTION, "question": "\U0001f600" * 2001}, {"question": "q" * 10, "a": [[[]]]}]
    bodies = [(json.dumps(doc).encode(), as_json) for doc in docs]
    bodies += [
        (b"", as_json), (b"   ", as_json), (b"nul", as_json), (b"NaN", as_json),
        (b'{"question": NaN, "companyName": Infinity}', as_json), (b"1e999999", as_json),
        (b"9" * 4400, as_json), (b'{"question": "\\ud800", "companyName": "a"}', as_json),
        (b'{"question": "a\x00b"}', as_json), (b"\xff\xfe\xfa", as_json),
        (b'{"video_url": "\xc3\x28"}', as_json), (b"[" * 2000 + b"]" * 2000, as_json),
        (b'{"a":' * 40 + b"1" + b"}" * 40, as_json), (b'{"a": 1,}', as_json),
        ("\ufeff{}".encode(), as_json), ('{"question": "x"}'.encode("utf-16"), as_json),
        (b"<xml/>", "application/xml"), (b"a=b", "application/x-www-form-urlencoded"),
        (b"{}", "application/json; charset=latin-1"), (b"{}", "application/problem+json"),
        (b"{}", ""), (b"{}", "multipart/form-data; boundary=x"),
    ]
    return bodies


def test_malformed_input_never_yields_5xx(client: FlaskClient):
    for path in POST_ROUTES:
        for body, content_type in _bodies():
            reply = client.post(path, data=body, content_type=content_type or None)
            assert reply.status_code < 500, (path, body[:80], content_type, reply.json)
            assert reply.is_json, (path, body[:80])
            if reply.status_code >= 400:
                assert reply.json["success"] is False


def test_odd_paths_and_ids_never_yield_5xx(client: FlaskClient):
    odd = ["%00", "%ff", "..%2f..%2f", "a" * 5000, "%E2%80%AE", "\u00e9", "%0d%0aX: y", "~", "."]
    for value in odd:
        for path in (f"/api/queue/jobs/video/{value}", f"/api/queue/jobs/qa/{value}/retry",
                     f"/api/interactions/{value}/questions", f"/api/queue/{value}/pause"):
            for method in ("get", "post", "delete"):
                reply = getattr(client, method)(path, json=QUESTION)
                assert reply.status_code < 500, (method, path, reply.json)
                assert reply.is_json


def test_unexpected_errors_are_json_500_without_details(job_system: JobSystem):
    for environment, shows in (("test", False), ("development", True)):
        # Outside development a secret is required (authentication fails closed).
        secret = {"jwt_secret": SECRET} if environment != "development" else {}
        app = make_app(job_system, environment=environment, **secret)

        def explode() -> str:
            raise RuntimeError("secret internals")

        app.add_url_rule("/boom", "boom", explode)
        reply = app.test_client().get("/boom", headers=bearer("root", role="admin"))
        assert reply.status_code == 500
        assert reply.json["success"] is False and reply.json["error"] == "internal server error"
        assert ("secret internals" in reply.get_data(as_text=True)) is shows
