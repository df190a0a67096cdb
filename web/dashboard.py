"""The live dashboard: ``GET /dashboard`` (a static page) and ``GET /api/queue/dashboard``.

The page is plain HTML, CSS and JavaScript from ``web/static/``, served at ``/dashboard``
and ``/dashboard/<file>`` (no build step, nothing from a CDN, so it works offline). Its
script polls ``/api/queue/dashboard`` every two seconds (``?refresh=SECONDS`` changes
that; polling stops while the tab is hidden) and draws per kind waiting, running (each
job with its age), retrying, completed, failed; recent failures with their error; memory
of this process and of the Python API against the thresholds; and the pause state, with
pause and resume buttons that call ``POST /api/queue/<kind>/pause|resume``. Each running
job and each failure says what it is (``actors.runtime.snapshot.describe_job``: company, owner,
the video's URL or the question's first words); a failure has a Retry button that calls
``POST /api/queue/jobs/<kind>/<id>/retry`` and shows its outcome in place. Two tables
come from the status sections as ``web.queue.queue_status`` builds them: Capacity, each
Python API instance's adaptive limit and why it last moved (``pythonInstances[].capacity``),
and Companies, each company's waiting and running jobs and share per kind (``fairShare``).

Authentication: the page and its files carry no data and need no token. The data and
the buttons need the admin role (the data shows every owner's jobs and errors). With
authentication on, the page asks for an admin token, keeps it in ``sessionStorage`` (this
tab only, gone when it closes; never a cookie, so no CSRF) and sends it as
``Authorization: Bearer``. With authentication off every request is the local admin.

The page has its own Content-Security-Policy (``web.security.DASHBOARD_CSP``): scripts,
styles, images and fetches from this origin only, no inline code, no framing. The page,
its data and its files are exempt from the rate limit: a dashboard left open would
otherwise use up the operator's budget.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request

from actors.model.jobs import JobState
from actors.runtime.snapshot import describe_job
from web.auth import require_admin
from web.context import job_system
from web.present import iso, shown_error
from web.queue import queue_status
from web.security import DASHBOARD_CSP

logger = logging.getLogger(__name__)

bp = Blueprint("dashboard", __name__)

RECENT_FAILURES = 10
STATIC = Path(__file__).resolve().parent / "static"
FILES = {"dashboard.html": "text/html", "dashboard.css": "text/css",
         "dashboard.js": "text/javascript", "dashboard-icon.svg": "image/svg+xml"}
"""Every file the dashboard serves, with its media type; nothing else in the folder is."""
ASSETS = tuple(name for name in FILES if name != "dashboard.html")


@bp.get("/dashboard")
def page() -> Response:
    """Serve the dashboard page (its data needs an admin token, the page does not)."""
    response = _file_response("dashboard.html")
    response.headers["Content-Security-Policy"] = DASHBOARD_CSP
    return response


@bp.get("/dashboard/<any(" + ", ".join(f'"{n}"' for n in ASSETS) + "):name>")
def asset(name: str) -> Response:
    """Serve one of the dashboard's files (its stylesheet, script and icon)."""
    return _file_response(name)


@functools.cache
def _read(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def _file_response(name: str) -> Response:
    """Answer with a file kept in memory (a few kB), revalidated by its ETag."""
    response = Response(_read(name), mimetype=FILES[name])
    response.headers["Cache-Control"] = "no-cache"
    response.add_etag()
    response.make_conditional(request)  # a 304 when the browser's copy is current
    return response


@bp.get("/api/queue/dashboard")
@require_admin
def data() -> Response:
    """Return what the dashboard draws: queues, capacity, companies, jobs, failures, memory."""
    return jsonify({"success": True, "data": dashboard_data()})


def dashboard_data() -> dict[str, Any]:
    """Assemble the dashboard's data from one snapshot and the most recent failures."""
    system = job_system()
    snapshot = system.snapshot()
    failed = system.list_jobs(state=JobState.FAILED, limit=RECENT_FAILURES)
    running = sorted(snapshot.get("running_jobs", []), key=lambda j: -float(j.get("age_s", 0)))
    return {
        **queue_status(snapshot),
        "running": [{"id": job["job_id"], "type": job["kind"], "company": job.get("company"),
                     "owner": job.get("owner"), "summary": job.get("summary"),
                     "attempt": job["attempt"], "ageSeconds": job["age_s"],
                     "worker": job.get("worker"), "abandoned": bool(job.get("abandoned"))}
                    for job in running],
        "failures": [{"id": job.id, "type": job.kind.value, **describe_job(job),
                      "attempts": job.attempts, "failedAt": iso(job.finished_at),
                      "lastError": shown_error(job)}
                     for job in failed],
        "pools": {kind: {"size": pool.get("size"), "alive": pool.get("alive"),
                         "busy": pool.get("busy"), "restarts": pool.get("restarts")}
                  for kind, pool in snapshot.get("pools", {}).items()},
    }
