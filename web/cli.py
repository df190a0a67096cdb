"""The operator CLI: ``flask --app wsgi jobs ...`` and ``flask --app wsgi queue ...``.

Every command is a client of the running server's REST API; none starts a job system.
One process owns the job store (an exclusive lock on the SQLite file): a CLI that opened
it would be refused, or worse, run jobs a second time. So ``wsgi.py``, imported by the
``flask`` command (which sets ``FLASK_RUN_FROM_CLI``), builds ``create_cli_app()``: an app
with these commands and no job system, whose routes all answer 503.

    flask --app wsgi jobs list --state failed --kind video
    flask --app wsgi jobs show JOB_ID
    flask --app wsgi jobs retry JOB_ID
    flask --app wsgi jobs cancel JOB_ID
    flask --app wsgi jobs token --user alice --company acme-corp [--admin]
    flask --app wsgi queue pause video
    flask --app wsgi queue resume video
    flask --app wsgi queue status

The server is ``--url`` or ``QUDEMO_URL`` (default ``http://127.0.0.1:$PORT``, ``PORT``
defaulting to 5000); the token is ``--token`` or ``QUDEMO_TOKEN`` (an admin's, to see every
job and pause queues; none when the server's authentication is off). ``flask`` also reads
``.env``. Output is a table; ``--json`` prints the server's JSON instead. Failures print
the server's error and exit 1.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click
import requests
from flask import Flask, Response, jsonify

from actors.runtime.redact import redact_url

F = TypeVar("F", bound=Callable[..., Any])
KINDS = ("video", "qa")
STATES = ("queued", "processing", "retrying", "completed", "failed", "cancelled")
TIMEOUT_S = 15.0
MAX_CELL = 60
CLI_ONLY_RETRY_AFTER_S = 60


def default_url() -> str:
    """Return where the server listens by default: ``http://127.0.0.1:$PORT``."""
    return f"http://127.0.0.1:{os.environ.get('PORT') or 5000}"


def create_cli_app() -> Flask:
    """Build the app the ``flask`` command loads: the commands, no job system, no routes.

    A request that reaches it (``flask run``) is answered 503: serve with gunicorn.
    """
    app = Flask(__name__, static_folder=None)
    app.cli.add_command(jobs)
    app.cli.add_command(queue)

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST", "DELETE"])
    @app.route("/<path:path>", methods=["GET", "POST", "DELETE"])
    def not_served(path: str) -> tuple[Response, int, dict[str, str]]:
        body = jsonify({"success": False, "error": "this process is the operator CLI, not the "
                        "server: run gunicorn -c gunicorn.conf.py wsgi:app"})
        return body, 503, {"Retry-After": str(CLI_ONLY_RETRY_AFTER_S)}

    return app


class Server:
    """The running server's REST API, as the CLI uses it."""

    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def call(self, method: str, path: str, *, ok: Sequence[int] = (200, 202),
             **kwargs: Any) -> tuple[int, dict[str, Any]]:
        """Send one request; return (status, JSON body) or raise ``ClickException``."""
        try:
            reply = self.session.request(method, self.url + path, timeout=TIMEOUT_S, **kwargs)
        except requests.RequestException as exc:
            raise click.ClickException(
                f"cannot reach the server at {redact_url(self.url)} ({type(exc).__name__}); is it "
                "running? Set --url or QUDEMO_URL") from None
        try:
            body: dict[str, Any] = reply.json()
        except ValueError:
            body = {"error": reply.text[:200]}
        if reply.status_code not in ok:
            raise click.ClickException(_error_text(reply.status_code, body))
        return reply.status_code, body

    def find_job(self, job_id: str, kind: str | None) -> tuple[str, dict[str, Any]]:
        """Return (kind, job) of ``job_id``, trying each kind unless one is given."""
        for candidate in (kind,) if kind else KINDS:
            status, body = self.call("GET", f"/api/queue/jobs/{candidate}/{job_id}",
                                     ok=(200, 404))
            if status == 200:
                return candidate, body["data"]
        raise click.ClickException(f"no job {job_id} (or it is not yours)")


def _error_text(status: int, body: dict[str, Any]) -> str:
    text = f"{status}: {body.get('error') or 'error'}"
    for detail in body.get("details") or []:
        if isinstance(detail, dict):
            text += f"\n  {detail.get('field', '')}: {detail.get('message', '')}"
    if status == 401:
        text += "\n  (set --token or QUDEMO_TOKEN)"
    return text


def server_options(command: F) -> F:
    """Add ``--url``, ``--token`` and ``--json`` to ``command`` (as a ``server`` argument)."""
    command = click.option("--json", "as_json", is_flag=True,
                           help="Print the server's JSON instead of a table.")(command)
    command = click.option("--token", envvar="QUDEMO_TOKEN", default=None,
                           help="Bearer token (QUDEMO_TOKEN).", show_envvar=True)(command)
    command = click.option("--url", envvar="QUDEMO_URL", default=default_url,
                           show_default="http://127.0.0.1:$PORT", show_envvar=True,
                           help="The running server (QUDEMO_URL).")(command)
    return command


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Format ``rows`` as a plain-text table with a header line; long cells are cut."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    text = " ".join(text.split())  # one line per row, whatever the error said
    return text if len(text) <= MAX_CELL else text[:MAX_CELL - 1] + "…"


def _when(stamp: str | None) -> str:
    """Shorten an ISO time to ``2024-01-01 12:00:00``."""
    return "-" if not stamp else stamp.replace("T", " ")[:19]


def _print_json(body: Any) -> None:
    click.echo(json.dumps(body, indent=2, ensure_ascii=False))


# --- jobs ---------------------------------------------------------------------------------

@click.group()
def jobs() -> None:
    """List, show, retry and cancel jobs of the running server."""


@jobs.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--kind", type=click.Choice(KINDS), help="Only jobs of this kind.")
@click.option("--owner", help="Only this user's jobs (admins).")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@server_options
def list_jobs(state: str | None, kind: str | None, owner: str | None, limit: int, url: str,
              token: str | None, as_json: bool) -> None:
    """List jobs, newest first."""
    params = {"status": state, "type": kind, "owner": owner, "limit": limit}
    _, body = Server(url, token).call("GET", "/api/queue/jobs",
                                      params={k: v for k, v in params.items() if v})
    if as_json:
        _print_json(body)
        return
    found = body.get("data", [])
    if not found:
        click.echo("no jobs")
        return
    click.echo(table(
        ("ID", "KIND", "STATE", "ATTEMPTS", "CREATED", "LAST ERROR"),
        [(j["id"], j["type"], j["status"], f"{j['attempts']}/{j['maxAttempts']}",
          _when(j.get("createdAt")), j.get("lastError")) for j in found]))


@jobs.command("show")
@click.argument("job_id")
@click.option("--kind", type=click.Choice(KINDS), help="The job's kind (found when omitted).")
@server_options
def show_job(job_id: str, kind: str | None, url: str, token: str | None, as_json: bool) -> None:
    """Show one job: state, times, attempts, error, data and result."""
    _, job = Server(url, token).find_job(job_id, kind)
    if as_json:
        _print_json(job)
        return
    fields = [("id", job["id"]), ("kind", job["type"]), ("state", job["status"]),
              ("priority", job["priority"]),
              ("attempts", f"{job['attempts']}/{job['maxAttempts']}"),
              ("queue position", job.get("queuePosition")),
              ("created", _when(job.get("createdAt"))), ("started", _when(job.get("startedAt"))),
              ("completed", _when(job.get("completedAt"))),
              ("failed", _when(job.get("failedAt"))),
              ("cancelled", _when(job.get("cancelledAt"))),
              ("next attempt", _when(job.get("nextAttemptAt"))),
              ("last error", job.get("lastError"))]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        click.echo(f"{name.ljust(width)}  {'-' if value in (None, '') else value}")
    for name in ("data", "result"):
        if job.get(name) is not None:
            click.echo(f"{name}:")
            click.echo("  " + json.dumps(job[name], indent=2, ensure_ascii=False)
                       .replace("\n", "\n  "))


@jobs.command("retry")
@click.argument("job_id")
@click.option("--kind", type=click.Choice(KINDS), help="The job's kind (found when omitted).")
@server_options
def retry_job(job_id: str, kind: str | None, url: str, token: str | None,
              as_json: bool) -> None:
    """Queue a failed job again, with a fresh attempt budget."""
    server = Server(url, token)
    found_kind, _ = server.find_job(job_id, kind)
    _, body = server.call("POST", f"/api/queue/jobs/{found_kind}/{job_id}/retry")
    if as_json:
        _print_json(body)
        return
    data = body["data"]
    where = (f"position {data['queuePosition']}, estimated wait {data['estimatedWaitTime']}"
             if data["queuePosition"] else "a worker has it already")
    click.echo(f"job {job_id} queued again: {where}")


@jobs.command("cancel")
@click.argument("job_id")
@click.option("--kind", type=click.Choice(KINDS), help="The job's kind (found when omitted).")
@server_options
def cancel_job(job_id: str, kind: str | None, url: str, token: str | None,
               as_json: bool) -> None:
    """Cancel a job that is still waiting (queued or retrying)."""
    server = Server(url, token)
    found_kind, _ = server.find_job(job_id, kind)
    _, body = server.call("DELETE", f"/api/queue/jobs/{found_kind}/{job_id}")
    if as_json:
        _print_json(body)
        return
    click.echo(f"job {job_id} cancelled")


@jobs.command("token")
@click.option("--user", required=True, help="The token's userId.")
@click.option("--company", "companies", multiple=True,
              help="A company (name) the token works for; repeat for several.")
@click.option("--company-id", "company_ids", multiple=True,
              help="A company id, paired in order with --company (repeat).")
@click.option("--admin", is_flag=True, help="Give the token the admin role.")
@click.option("--ttl", "ttl_s", type=click.IntRange(60, 30 * 86400), default=3600,
              show_default=True, help="Seconds until the token expires.")
def mint_token(user: str, companies: tuple[str, ...], company_ids: tuple[str, ...],
               admin: bool, ttl_s: int) -> None:
    """Print a token signed with this machine's JWT_SECRET, for trying the API.

    Refused in production (APP_ENV or NODE_ENV=production): there, tokens come from your
    identity provider. Without JWT_SECRET the server's authentication is off and no token
    is needed.
    """
    environment = (os.environ.get("APP_ENV") or os.environ.get("NODE_ENV") or "").strip()
    if environment.lower() == "production":
        raise click.ClickException("refusing to mint a token in production (APP_ENV="
                                   "production): tokens come from your identity provider")
    secret = os.environ.get("JWT_SECRET")
    if not secret:
        raise click.ClickException("JWT_SECRET is not set (here or in .env): the server's "
                                   "authentication is off (APP_ENV=development), so requests "
                                   "need no token")
    if company_ids and len(company_ids) != len(companies):
        raise click.UsageError("give one --company per --company-id (they pair in order)")
    import jwt

    now = int(time.time())
    claims: dict[str, Any] = {"userId": user, "iat": now, "exp": now + ttl_s}
    if companies:
        claims["companyNames"] = list(companies)
    if company_ids:
        claims["companyIds"] = list(company_ids)
    if admin:
        claims["role"] = "admin"
    click.echo(jwt.encode(claims, secret, algorithm="HS256"))


# --- queue --------------------------------------------------------------------------------

@click.group()
def queue() -> None:
    """Show the queues; pause and resume dispatch of a kind."""


@queue.command("status")
@server_options
def queue_status(url: str, token: str | None, as_json: bool) -> None:
    """Show each kind's counts, limits and pause state, and memory."""
    _, body = Server(url, token).call("GET", "/api/queue/status")
    if as_json:
        _print_json(body)
        return
    data = body["data"]
    rows = [(kind, q["waiting"], f"{q['activeJobs']}/{q['maxConcurrent']}", q["retrying"],
             q["completed"], q["failed"], q["cancelled"],
             ("paused (" + ", ".join(q["pauseReasons"]) + ")") if q["paused"] else "no")
            for kind, q in data["queues"].items()]
    click.echo(table(("KIND", "WAITING", "RUNNING", "RETRYING", "COMPLETED", "FAILED",
                      "CANCELLED", "PAUSED"), rows))
    memory = data["memory"]
    python = memory["python"]
    click.echo("")
    click.echo(table(("MEMORY", "MB", "STATUS"), [
        ("this process", _mb(memory["processRssMb"]), "pressure" if memory["pressure"] else "ok"),
        ("Python API", _mb(python["memoryMb"]),
         python["status"] if python["reachable"] else "unreachable"),
        ("pause threshold", _mb(memory["thresholdMb"]), ""),
        ("refuse threshold", _mb(memory["maxMemoryMb"]), ""),
    ]))
    state = "draining" if data["draining"] else "accepting" if data["accepting"] else "stopped"
    click.echo(f"\nserver: {state}")


def _mb(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def _kind_command(action: str) -> click.Command:
    @click.argument("kind", type=click.Choice(KINDS))
    @server_options
    def command(kind: str, url: str, token: str | None, as_json: bool) -> None:
        _, body = Server(url, token).call("POST", f"/api/queue/{kind}/{action}")
        if as_json:
            _print_json(body)
            return
        data = body["data"]
        reasons = ", ".join(data.get("pauseReasons") or []) or "none"
        click.echo(f"{body['message']}: paused={'yes' if data['paused'] else 'no'} "
                   f"(reasons: {reasons}), waiting={data['waiting']}, "
                   f"running={data['activeJobs']}")

    command.__doc__ = ("Stop dispatching jobs of KIND (they keep queueing; running ones "
                       "finish)." if action == "pause" else
                       "Lift the operator pause of KIND (a memory pause stays until memory "
                       "falls).")
    return click.command(action)(command)


queue.add_command(_kind_command("pause"))
queue.add_command(_kind_command("resume"))
