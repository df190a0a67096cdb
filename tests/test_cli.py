"""The operator CLI (``flask --app wsgi jobs|queue ...``) against a real server under gunicorn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tests.gunicorn_server import REPO, GunicornServer, free_port
from tests.standin import PythonApiStandIn, Reply
from tests.url_corpus import youtube_url
from tests.web_support import SECRET, token
from web.cli import jobs, queue, table

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

ADMIN_TOKEN = token("root", role="admin")
TERMINAL = ("completed", "failed", "cancelled")


@pytest.fixture(scope="module")
def module_standin() -> Iterator[PythonApiStandIn]:
    with PythonApiStandIn() as server:
        yield server


@pytest.fixture(scope="module")
def server(module_standin: PythonApiStandIn, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[GunicornServer]:
    workdir = tmp_path_factory.mktemp("cli")
    env = {"PYTHON_API_BASE_URL": module_standin.url, "JWT_SECRET": SECRET,
           "QUEUE_STORE": "sqlite", "QUEUE_DB_PATH": str(workdir / "jobs.sqlite3"),
           "QUEUE_BACKOFF_DELAY": "50", "GUNICORN_ACCESS_LOG": ""}
    gunicorn = GunicornServer(workdir, env).start()
    yield gunicorn
    gunicorn.stop()


@pytest.fixture
def standin(module_standin: PythonApiStandIn) -> Iterator[PythonApiStandIn]:
    module_standin.reset()
    yield module_standin
    module_standin.reset()


def cli(server: GunicornServer, group: Any, *args: str, auth: str | None = ADMIN_TOKEN
        ) -> Result:
    """Run one CLI command in-process; the server is reached over HTTP as from a shell."""
    env = {"QUDEMO_URL": server.url, "QUDEMO_TOKEN": auth}
    return CliRunner().invoke(group, list(args), env=env, catch_exceptions=False)


def submit(server: GunicornServer, path: str, body: dict[str, Any]) -> str:
    reply = server.request("POST", path, json=body,
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert reply.status_code == 202, reply.text
    return str(reply.json()["data"]["jobId"])


def follow(server: GunicornServer, kind: str, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def finished() -> bool:
        reply = server.request("GET", f"/api/queue/jobs/{kind}/{job_id}",
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        found.update(reply.json()["data"])
        return found["status"] in TERMINAL

    assert server.wait_until(finished, 20), found
    return found


def test_list_show_and_retry_a_failed_video(server: GunicornServer,
                                            standin: PythonApiStandIn) -> None:
    standin.script("process-video", Reply(status=400, body={"detail": "bad video"}))
    job_id = submit(server, "/api/video/process", {
        "video_url": youtube_url("cli-failed-1"), "company_name": "acme"})
    assert follow(server, "video", job_id)["status"] == "failed"

    listed = cli(server, jobs, "list", "--state", "failed", "--kind", "video")
    assert listed.exit_code == 0, listed.output
    header, rule, *rows = listed.output.splitlines()
    assert header.split() == ["ID", "KIND", "STATE", "ATTEMPTS", "CREATED", "LAST", "ERROR"]
    assert set(rule) <= {"-", " "}
    row = next(r for r in rows if r.startswith(job_id))
    assert row.split()[1:4] == ["video", "failed", "1/3"] and "400" in row

    shown = cli(server, jobs, "show", job_id)
    assert shown.exit_code == 0, shown.output
    lines = dict(line.split(None, 1) for line in shown.output.splitlines()[:3])
    assert lines == {"id": job_id, "kind": "video", "state": "failed"}
    assert "last error" in shown.output and youtube_url("cli-failed-1") in shown.output

    retried = cli(server, jobs, "retry", job_id)
    assert retried.exit_code == 0, retried.output
    assert retried.output.startswith(f"job {job_id} queued again: ")
    assert follow(server, "video", job_id)["status"] == "completed"
    completed = cli(server, jobs, "list", "--state", "completed")
    assert any(r.startswith(job_id) for r in completed.output.splitlines())


def test_pause_cancel_status_resume(server: GunicornServer, standin: PythonApiStandIn) -> None:
    paused = cli(server, queue, "pause", "video")
    assert paused.exit_code == 0, paused.output
    assert "video queue paused" in paused.output and "paused=yes" in paused.output
    try:
        job_id = submit(server, "/api/video/process", {
            "video_url": youtube_url("cli-cancel-1"), "company_name": "acme"})
        status = cli(server, queue, "status")
        assert status.exit_code == 0, status.output
        rows = {line.split()[0]: line for line in status.output.splitlines() if line.strip()}
        assert rows["KIND"].split()[:3] == ["KIND", "WAITING", "RUNNING"]
        assert rows["video"].split()[1] == "1" and "paused (operator)" in rows["video"]
        assert rows["qa"].split()[-1] == "no"
        assert "Python API" in status.output and "server: accepting" in status.output

        cancelled = cli(server, jobs, "cancel", job_id)
        assert cancelled.exit_code == 0 and cancelled.output.strip() == f"job {job_id} cancelled"
        again = cli(server, jobs, "cancel", job_id)
        assert again.exit_code == 1 and "409" in again.output
    finally:
        resumed = cli(server, queue, "resume", "video")
    assert resumed.exit_code == 0 and "paused=no" in resumed.output
    assert not standin.calls("process-video")  # the cancelled job never ran


def test_json_output(server: GunicornServer, standin: PythonApiStandIn) -> None:
    job_id = submit(server, "/api/interactions/i-1/questions",
                    {"question": "What is it?", "companyName": "acme"})
    follow(server, "qa", job_id)
    shown = cli(server, jobs, "show", job_id, "--kind", "qa", "--json")
    assert json.loads(shown.output)["result"]["answer"] == "This is the answer."
    status = json.loads(cli(server, queue, "status", "--json").output)
    assert status["data"]["queues"]["qa"]["completed"] >= 1


def test_errors_are_readable(server: GunicornServer) -> None:
    missing = cli(server, jobs, "show", "0123456789abcdef")
    assert missing.exit_code == 1 and "no job 0123456789abcdef" in missing.output
    anonymous = cli(server, queue, "status", auth=None)
    assert anonymous.exit_code == 1
    assert "401: authentication required" in anonymous.output and "QUDEMO_TOKEN" in anonymous.output
    not_admin = cli(server, queue, "pause", "video", auth=token("alice"))
    assert not_admin.exit_code == 1 and "403" in not_admin.output
    down = CliRunner().invoke(queue, ["status", "--url", f"http://127.0.0.1:{free_port()}"])
    assert down.exit_code == 1 and "cannot reach the server" in down.output


def test_the_flask_command_starts_no_second_job_system(server: GunicornServer,
                                                       tmp_path: Path) -> None:
    # The same environment as the server, the same SQLite file: a CLI that opened the job
    # store would be refused by the server's lock. It talks to the server instead.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update({**server.env, "QUDEMO_URL": server.url, "QUDEMO_TOKEN": ADMIN_TOKEN})
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "queue", "status"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].split()[:2] == ["KIND", "WAITING"]
    assert "job system started" not in done.stderr
    assert server.request("GET", "/health/ready").status_code == 200
    usage = subprocess.run([sys.executable, "-m", "flask", "--app", "wsgi", "--help"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert "jobs" in usage.stdout and "queue" in usage.stdout
    assert str(REPO) in env["PYTHONPATH"]


def test_table_layout() -> None:
    text = table(("ID", "ERROR"), [("a", "x" * 100), ("bb", "line one\nline two"), ("c", None)])
    lines = text.splitlines()
    assert lines[0] == "ID  ERROR" and lines[1].startswith("--  ---")
    assert lines[2].endswith("…") and len(lines[2]) == 4 + 60
    assert lines[3] == "bb  line one line two" and lines[4] == "c   -"


def test_a_minted_token_works_for_its_companies_only(server: GunicornServer,
                                                     standin: PythonApiStandIn) -> None:
    minted = CliRunner().invoke(jobs, ["token", "--user", "dana", "--company", "acme"],
                                env={"JWT_SECRET": SECRET, "APP_ENV": ""})
    assert minted.exit_code == 0, minted.output
    bearer_header = {"Authorization": f"Bearer {minted.output.strip()}"}
    body = {"question": "What is it?", "companyName": "acme"}
    own = server.request("POST", "/api/interactions/i-1/questions", json=body,
                         headers=bearer_header)
    assert own.status_code == 202, own.text
    other = server.request("POST", "/api/interactions/i-1/questions", headers=bearer_header,
                           json={**body, "companyName": "globex"})
    assert other.status_code == 403
    assert server.request("POST", "/api/queue/video/pause",
                          headers=bearer_header).status_code == 403  # not an admin
    admin = CliRunner().invoke(jobs, ["token", "--user", "ops", "--admin"],
                               env={"JWT_SECRET": SECRET, "APP_ENV": ""})
    paused = server.request("POST", "/api/queue/video/pause",
                            headers={"Authorization": f"Bearer {admin.output.strip()}"})
    assert paused.status_code == 200
    assert server.request("POST", "/api/queue/video/resume", headers={
        "Authorization": f"Bearer {admin.output.strip()}"}).status_code == 200


@pytest.mark.parametrize(("env", "message"), [
    ({"JWT_SECRET": SECRET, "APP_ENV": "production"}, "refusing to mint a token in production"),
    ({"JWT_SECRET": SECRET, "APP_ENV": "", "NODE_ENV": "production"}, "in production"),
    ({"JWT_SECRET": "", "APP_ENV": "development"}, "JWT_SECRET is not set"),
])
def test_no_token_is_minted_in_production_or_without_a_secret(env: dict[str, str],
                                                               message: str) -> None:
    result = CliRunner().invoke(jobs, ["token", "--user", "dana"], env=env)
    assert result.exit_code == 1
    assert message in result.output
