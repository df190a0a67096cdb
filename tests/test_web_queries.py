"""Query strings: no value, however odd, answers 5xx; a bad value is a 400 naming its parameter.

Every route of the app is swept (its URL rules, filled with real ids), under every query
parameter the OpenAPI document declares for it plus a few it does not, with a corpus of
values that tripped parsers before: Unicode digits (``int()`` accepts Arabic-Indic ones,
``str.isdigit()`` accepts superscripts), numbers past ``int()``'s digit limit, signs, blanks,
NUL bytes, percent-escapes that are not UTF-8, and repeated keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from actors import JobSystem
from tests.standin import PythonApiStandIn
from tests.web_support import QUESTION, SECRET, bearer, make_app, wait_job
from web.dashboard import ASSETS
from web.jobs import MAX_LIST
from web.openapi import route_template

LIST = "/api/queue/jobs"

ODD_VALUES = [
    # Digits int() or str.isdigit() take that are not ASCII: superscript two, Arabic-Indic
    # one, fullwidth five, mathematical one, one half, Roman twelve, NKo one.
    "%C2%B2", "%D9%A1", "%EF%BC%95", "%F0%9D%9F%99", "%C2%BD", "%E2%85%AB", "%DF%81",
    "1%C2%B2", "%D9%A1%D9%A0",
    # Numbers: huge (past int()'s 4300-digit limit too), signed, spaced, other notations.
    "9" * 30, "9" * 5000, "-1", "-0", "0", "00", "+5", "%205", "5%20", "%095", "0x10", "1_0",
    "1.5", "1e3", "NaN", "inf", "501", "0010",
    # Blanks, NULs, control and invisible characters.
    "", "%20", "%00", "5%00", "%00video", "video%00", "%0D%0AX-Injected:%201", "%E2%80%AE",
    "%EF%BB%BF5",
    # Percent-escapes that are not UTF-8 (lone byte, truncated, overlong, surrogate,
    # past U+10FFFF) and escapes that are not escapes at all.
    "%FF", "%C3%28", "%C0%80", "%ED%A0%80", "%F4%90%80%80", "%E2%82", "%", "%zz", "%25",
    # Words and shapes of other query dialects.
    "VIDEO", "qa,video", "null", "true", "[]", "%7B%7D", "a" * 3000, "..%2F..%2F",
]
ODD_FORMS = ["{name}", "{name}=1&{name}=2", "{name}=5&{name}=%C2%B2", "{name}=&{name}=",
             "{name}[]=1", "{name}%00=1", "=5", "&&&", "{name}==5", "{name}=5;{name}=6"]
"""Whole query strings around one parameter: bare keys, repeats, empty names, separators."""
EXTRA_NAMES = ("limit", "x")
"""Names swept on every route besides its declared ones: an undeclared one, and ``limit``."""
BAD_LIST_VALUES = {
    "limit": ["%C2%B2", "%D9%A1", "%EF%BC%95", "9" * 30, "9" * 5000, "-1", "0", "+5", "%205",
              "1.5", "1e3", "", "%00", "5%00", "%FF", "501", "%EF%BB%BF5"],
    "type": ["VIDEO", "qa,video", "%00", "video%00", "%FF", "%C3%28", "a" * 3000],
    "kind": ["VIDEO", "%00", "%FF"],
    "status": ["%00", "done", "%E2%80%AE", "%FF"],
    "owner": ["%00", "5%00", "%FF", "a" * 3000, "%0D%0AX-Injected:%201", "..%2F..%2F"],
}
"""Values the job list must refuse with a 400 naming the parameter (as an admin)."""
REPEATED = ["{name}=1&{name}=2", "{name}=5&{name}=%C2%B2", "{name}=&{name}="]


@pytest.fixture
def admin_app(job_system: JobSystem) -> Flask:
    """Authentication off: every request is the local admin (so ``owner`` is read)."""
    return make_app(job_system, rate_limit_max_requests=10**6)


@pytest.fixture
def user_app(job_system: JobSystem) -> Flask:
    return make_app(job_system, jwt_secret=SECRET, rate_limit_max_requests=10**6)


@pytest.fixture
def job_id(admin_app: Flask, standin: PythonApiStandIn) -> str:
    """A finished question job, so the job routes answer 200 rather than 404."""
    client = admin_app.test_client()
    reply = client.post("/api/interactions/i-1/questions", json=QUESTION)
    assert reply.status_code == 202, reply.json
    wait_job(client, reply.headers["Location"], standin)
    return str(reply.json["data"]["jobId"])


def declared_query(app: Flask) -> dict[tuple[str, str], list[str]]:
    """Return ``(path template, method) -> query parameter names`` from the OpenAPI document."""
    document = app.test_client().get("/openapi.json").json
    return {(path, method.upper()): [p["name"] for p in op.get("parameters", [])
                                     if p["in"] == "query"]
            for path, operations in document["paths"].items()
            for method, op in operations.items()}


def requests_to_sweep(app: Flask, job_id: str) -> Iterator[tuple[str, str, list[str]]]:
    """Yield ``(method, path, query names)`` for every route and method of ``app``."""
    samples = {"kind": "qa", "job_id": job_id, "interaction_id": "i-1", "name": ASSETS[0]}
    declared = declared_query(app)
    adapter = app.url_map.bind("localhost")
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            path = adapter.build(rule.endpoint, {k: samples[k] for k in rule.arguments},
                                 method=method)
            names = declared.get((route_template(rule.rule), method), [])
            yield method, path, [*names, *(n for n in EXTRA_NAMES if n not in names)]


def send(client: FlaskClient, method: str, path: str, query: str,
         headers: dict[str, str]) -> Any:
    body = QUESTION if method == "POST" else None
    return client.open(path, method=method, query_string=query, json=body, headers=headers)


def check_answer(reply: Any, where: tuple[str, ...]) -> None:
    """No 5xx; an error is our JSON error; a success is JSON unless the route serves a file."""
    assert reply.status_code < 500, (where, reply.status_code, reply.get_data()[:300])
    if reply.status_code >= 400:
        assert reply.is_json, (where, reply.status_code, reply.get_data()[:300])
        assert reply.json["success"] is False and reply.json["error"], where
    elif reply.status_code != 304:
        files = ("text/html", "text/css", "text/javascript", "image/svg+xml", "text/plain",
                 "text/event-stream")
        assert reply.is_json or reply.mimetype in files, (where, reply.mimetype)
        reply.close()  # an event stream is not read: closing it ends its generator


@pytest.mark.timeout(300)
@pytest.mark.parametrize("caller", ["admin", "user"])
def test_odd_query_values_never_answer_5xx(caller: str, admin_app: Flask, user_app: Flask,
                                           job_id: str):
    app = admin_app if caller == "admin" else user_app
    headers = bearer("alice") if caller == "user" else {}
    client = app.test_client()
    swept = 0
    for method, path, names in requests_to_sweep(app, job_id):
        for name in names:
            queries = [f"{name}={value}" for value in ODD_VALUES]
            queries += [form.format(name=name) for form in ODD_FORMS]
            for query in queries:
                check_answer(send(client, method, path, query, headers),
                             (caller, method, path, query[:80]))
                swept += 1
    assert swept > 2000  # every route was reached, not just the first


@pytest.mark.parametrize(("name", "value"),
                         [(name, value) for name, values in BAD_LIST_VALUES.items()
                          for value in values])
def test_bad_list_values_are_a_400_naming_the_parameter(admin_app: Flask, name: str,
                                                        value: str):
    reply = admin_app.test_client().get(LIST, query_string=f"{name}={value}")
    assert reply.status_code == 400, (name, value, reply.json)
    assert reply.json["success"] is False and reply.json["error"].startswith(f"{name}: ")
    assert name in {d["field"] for d in reply.json["details"]}, reply.json


@pytest.mark.parametrize("name", ["type", "kind", "status", "limit", "owner"])
@pytest.mark.parametrize("form", REPEATED)
def test_a_repeated_list_parameter_is_a_400_naming_it(admin_app: Flask, name: str, form: str):
    reply = admin_app.test_client().get(LIST, query_string=form.format(name=name))
    assert reply.status_code == 400, reply.json
    assert {d["field"] for d in reply.json["details"]} == {name}
    assert "once" in reply.json["details"][0]["message"]


def test_unicode_digit_limit_is_a_400_not_a_500(admin_app: Flask):
    """The reported case: ``?limit=²`` was a 500 (``'²'.isdigit()`` but ``int('²')`` fails)."""
    reply = admin_app.test_client().get(LIST + "?limit=%C2%B2")
    assert reply.status_code == 400
    assert reply.json["details"] == [{"field": "limit",
                                      "message": f"must be an integer from 1 to {MAX_LIST}"}]


@pytest.mark.parametrize(("query", "count"), [
    ("limit=1", 1), (f"limit={MAX_LIST}", 2), ("limit=0001", 1), ("type=qa&limit=1", 1),
    ("type=&status=&kind=", 2), ("status=completed", 2), ("owner=local", 2),
    ("owner=someone-else", 0), ("unknown=%C2%B2", 2), ("x=1&x=2", 2),
])
def test_good_list_values_still_work(admin_app: Flask, standin: PythonApiStandIn,
                                     job_id: str, query: str, count: int):
    client = admin_app.test_client()
    second = client.post("/api/interactions/i-2/questions", json=QUESTION)
    wait_job(client, second.headers["Location"], standin)
    reply = client.get(LIST, query_string=query)
    assert reply.status_code == 200, reply.json
    assert len(reply.json["data"]) == count


def test_a_user_may_not_widen_the_list_with_owner(user_app: Flask, job_id: str):
    """``owner`` is an admin's filter; a user's odd owner is ignored, not a 500 or a leak."""
    client = user_app.test_client()
    for value in ("%00", "%FF", "alice", "local"):
        reply = client.get(LIST, query_string=f"owner={value}", headers=bearer("alice"))
        assert reply.status_code == 200, reply.json
        assert reply.json["data"] == []  # the job belongs to the local admin
