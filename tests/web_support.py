"""Helpers for the web tests: apps over the real job system, tokens, and bounded waits."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
from flask import Flask
from flask.testing import FlaskClient

from actors import JobSystem, Settings
from tests.standin import DEMO_VIDEO_URL, PythonApiStandIn
from web import AppSettings, WebSettings, create_app

SECRET = "test-secret-0123456789abcdef0123456789abcdef"
VIDEO = {"video_url": DEMO_VIDEO_URL, "company_name": "acme"}
QUESTION = {"question": "What are the main features?", "companyName": "acme"}
TERMINAL = ("completed", "failed", "cancelled")


def make_app(system: JobSystem, **web: Any) -> Flask:
    """Build an app over ``system`` with ``WebSettings(**web)``."""
    return create_app(AppSettings(core=system.settings, web=WebSettings(**web)), job_system=system)


@contextlib.contextmanager
def running_system(settings: Settings, **changes: Any) -> Iterator[JobSystem]:
    """Start a job system with ``changes`` applied to ``settings``; stop it afterwards."""
    system = JobSystem(settings.replace(**changes)).start()
    try:
        yield system
    finally:
        system.stop(drain=False)


TEST_COMPANIES = ("acme", "acme-corp", "Acme Corp", "a", "initech", "globex")
"""The companies the suite's bodies name; a test token works for them unless told otherwise."""
COMPANY_CLAIMS = frozenset({"companyId", "companyName", "companyIds", "companyNames"})


def token(user: str | int | None = "alice", *, role: str | None = None, exp_in: float = 3600,
          secret: str = SECRET, algorithm: str = "HS256",
          companies: tuple[str, ...] | None = TEST_COMPANIES, **claims: Any) -> str:
    """Return a signed JWT with ``userId``, ``role``, ``exp`` and company claims.

    ``companies`` become the ``companyNames`` claim unless ``claims`` name companies
    themselves; ``None`` leaves the token without company claims.
    """
    payload: dict[str, Any] = {**claims}
    if companies is not None and not COMPANY_CLAIMS & payload.keys():
        payload["companyNames"] = list(companies)
    if user is not None:
        payload.setdefault("userId", user)
    if role is not None:
        payload["role"] = role
    if exp_in is not None:
        payload["exp"] = int(time.time() + exp_in)
    return jwt.encode(payload, secret if algorithm != "none" else None, algorithm=algorithm)


def bearer(user: str | int | None = "alice", **kwargs: Any) -> dict[str, str]:
    """Return an ``Authorization`` header for ``user``."""
    return {"Authorization": f"Bearer {token(user, **kwargs)}"}


def wait_job(client: FlaskClient, location: str, standin: PythonApiStandIn, *,
             states: tuple[str, ...] = TERMINAL, headers: dict[str, str] | None = None,
             timeout: float = 5.0) -> dict[str, Any]:
    """Poll the job API (bounded) until the job reaches one of ``states``; return its data.

    First waits until the stand-in has answered everything it received, then polls briefly:
    the job's transition follows the answer by one actor message.
    """
    standin.wait_for(lambda s: all(c.finished_at is not None for c in s.calls()), timeout)
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while True:
        reply = client.get(location, headers=headers or {})
        assert reply.status_code == 200, reply.json
        data: dict[str, Any] = reply.json["data"]
        if data["status"] in states:
            return data
        assert time.monotonic() < deadline, f"job stuck in {data['status']}: {data}"
        pause.wait(0.01)
