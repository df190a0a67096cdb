"""A bad configuration stops the server: under real gunicorn the master exits, naming the variable.

The start command is run as the Dockerfile's ``CMD`` (which is the README's and Render's),
in a copy of what the image holds, with the image's ``ENV``. Each case waits on the master
process itself, with a bound: before the fix a worker failed, gunicorn booted another one
about once a second, and the master held the port forever. No secret value may appear in
anything the server writes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from actors.model.errors import SettingsError
from tests.gunicorn_server import REPO, GunicornServer, free_port
from tests.test_deploy_files import START_COMMAND, docker_args, docker_env
from web.settings import load_settings, redact

EXIT_BOUND_S = 30.0
"""How long the master may take to give up (about 1.5 s measured; generous for busy CI)."""
CONFIG_ERROR = 3
"""gunicorn's WORKER_BOOT_ERROR, which is what the master exits with for a bad setting too."""


@dataclass(frozen=True)
class Case:
    """One bad configuration: what is set, which variables the message must name."""

    env: Mapping[str, str]
    names: tuple[str, ...]
    secrets: tuple[str, ...] = field(default=())


CASES = {
    "production-without-jwt-secret": Case({"APP_ENV": "production"}, ("JWT_SECRET",)),
    "short-jwt-secret": Case({"APP_ENV": "production", "JWT_SECRET": "hunter2-short-jwt"},
                             ("JWT_SECRET",), ("hunter2-short-jwt",)),
    "non-numeric-limit": Case({"QUEUE_MAX_CONCURRENT_VIDEOS": "abc"},
                              ("QUEUE_MAX_CONCURRENT_VIDEOS",)),
    "database-url-scheme": Case(
        {"QUEUE_STORE": "postgres",
         "DATABASE_URL": "mysql://jobs:hunter2-db-pw@db.internal:3306/jobs"},
        ("DATABASE_URL",), ("hunter2-db-pw", "db.internal")),
    "hold-below-deadline": Case({"QUEUE_JOB_TIMEOUT_MS": "60000",
                                 "QUEUE_ABANDONED_HOLD_MS": "1000"},
                                ("QUEUE_ABANDONED_HOLD_MS",)),
    "rate-limit-storage-with-password": Case(
        {"RATE_LIMIT_STORAGE_URI": "bogus://:hunter2-redis-pw@cache:6379/0"},
        ("RATE_LIMIT_STORAGE_URI",), ("hunter2-redis-pw",)),
    "python-api-url-with-password": Case(
        {"PYTHON_API_BASE_URL": "ftp://svc:hunter2-api-pw@python.internal"},
        ("PYTHON_API_BASE_URL",), ("hunter2-api-pw",)),
    "supabase-key-without-url": Case(
        {"SUPABASE_URL": "not a url", "SUPABASE_SERVICE_ROLE_KEY": "hunter2-service-role"},
        ("SUPABASE_URL",), ("hunter2-service-role",)),
    "several-at-once-gunicorns-own-too": Case(
        {"PORT": "five-thousand", "GUNICORN_THREADS": "0", "QUEUE_MAX_CONCURRENT_QA": "-3",
         "JWT_SECRET": "hunter2-tiny"},
        ("PORT", "GUNICORN_THREADS", "QUEUE_MAX_CONCURRENT_QA", "JWT_SECRET"),
        ("hunter2-tiny",)),
}


@dataclass
class Exited:
    """How a server run ended: exit code, everything it wrote, how long it took."""

    code: int
    output: str
    seconds: float


def image_copy(root: Path) -> Path:
    """Copy what the Dockerfile copies into the image (after pip) to ``root``; return it."""
    app = root / "app"
    app.mkdir()
    for arguments in docker_args("COPY"):
        *sources, _ = shlex.split(arguments)
        for source in sources:
            if source == "pyproject.toml":
                continue  # only read by pip in its own layer
            src = REPO / source
            if src.is_dir():
                shutil.copytree(src, app / source, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, app / source)
    return app


def image_env(workdir: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The image's ENV, on 127.0.0.1 and a free port, data in ``workdir``, plus ``extra``."""
    env = {**docker_env(), "QUEUE_DB_PATH": str(workdir / "jobs.sqlite3")}
    base = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR")}
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**base, **env, "PATH": path, "HOST": "127.0.0.1", "PORT": str(free_port()),
            "GUNICORN_ACCESS_LOG": "", **extra}


def run_until_exit(argv: list[str], cwd: Path, env: Mapping[str, str]) -> Exited:
    """Run ``argv`` and wait (at most ``EXIT_BOUND_S``) for it to exit by itself."""
    log = cwd / "server.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=EXIT_BOUND_S)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:  # still serving (or rebooting workers): not an exit
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    output = log.read_text(errors="replace")
    assert code is not None, (f"gunicorn still running after {EXIT_BOUND_S} s "
                              f"({output.count('Booting worker')} workers booted):\n{output}")
    return Exited(code, output, time.monotonic() - started)


def check_refusal(exited: Exited, case: Case) -> None:
    """The master exited with the configuration error, naming every variable, no secret."""
    assert exited.code == CONFIG_ERROR, exited.output
    assert "invalid configuration" in exited.output, exited.output
    for name in case.names:
        assert name in exited.output, (name, exited.output)
    for secret in case.secrets:
        assert secret not in exited.output, (secret, exited.output)
    assert "Traceback" not in exited.output, exited.output


@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_start_command_exits_on_a_bad_setting_before_forking(tmp_path: Path, case: Case):
    """The image's CMD: the master checks every setting before it binds or forks a worker."""
    (command,) = docker_args("CMD")
    assert json.loads(command) == START_COMMAND
    app = image_copy(tmp_path)
    exited = run_until_exit(START_COMMAND, app, image_env(tmp_path, case.env))
    check_refusal(exited, case)
    assert "Booting worker" not in exited.output, exited.output
    assert "Listening at" not in exited.output, exited.output  # the port was never taken


@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["non-numeric-limit", "short-jwt-secret",
                                  "database-url-scheme"])
def test_a_worker_failing_on_settings_halts_the_master(tmp_path: Path, name: str):
    """Without gunicorn.conf.py (no check in the master) the worker's exit code halts it."""
    case = CASES[name]
    app = image_copy(tmp_path)
    (app / "gunicorn.conf.py").unlink()  # gunicorn would read ./gunicorn.conf.py by default
    env = image_env(tmp_path, case.env)
    argv = ["gunicorn", "--bind", f"127.0.0.1:{env['PORT']}", "--no-control-socket", "wsgi:app"]
    exited = run_until_exit(argv, app, env)
    check_refusal(exited, case)
    assert exited.output.count("Booting worker") == 1, exited.output
    assert "Worker failed to boot" in exited.output, exited.output


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_reload_with_a_bad_setting_stops_the_server_after_draining(tmp_path: Path):
    """SIGHUP after ``.env`` went bad: the master says why and stops, old worker drained."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("QUEUE_MAX_CONCURRENT_VIDEOS=2\n")
    server = GunicornServer(tmp_path, {"QUEUE_STORE": "memory", "GUNICORN_ACCESS_LOG": ""})
    server.start()
    try:
        assert server.request("GET", "/health/live").status_code == 200
        dotenv.write_text("QUEUE_MAX_CONCURRENT_VIDEOS=abc\n"
                          "DATABASE_URL=mysql://jobs:hunter2-db-pw@db.internal/jobs\n")
        server.signal(signal.SIGHUP)
        code = server.wait_exit(timeout_s=EXIT_BOUND_S)
        log = server.log()
        assert code == CONFIG_ERROR, log
        assert "QUEUE_MAX_CONCURRENT_VIDEOS" in log and "DATABASE_URL" in log, log
        assert "hunter2-db-pw" not in log, log
        assert "job system stopped" in log, log  # the old worker drained and stopped
    finally:
        server.stop()


@pytest.mark.parametrize("text", [
    "X='redis://:hunter2@cache:6379/0'", "X='rediss://user:hunter2@cache'",
    "X='https://token-hunter2@example.com/a'", "X='http://a:b@c/x', 'http://u:hunter2@h'",
    "X='https://api.example.com/?api_key=hunter2&x=1'", "X='redis://h/0?password=hunter2'",
    "X='postgresql://u:hunter2/with/slash@db/x'",
])
def test_redact_hides_passwords_in_urls(text: str):
    assert "hunter2" not in redact(text)
    assert redact("X='https://python.internal:5001/api'") == "X='https://python.internal:5001/api'"


def test_load_settings_never_quotes_a_secret():
    environ = {"APP_ENV": "production", "JWT_SECRET": "hunter2-jwt",
               "CORS_ORIGINS": "https://app:hunter2-cors@example.com",
               "RATE_LIMIT_STORAGE_URI": "bogus://:hunter2-redis@cache",
               "PYTHON_API_BASE_URL": "ftp://svc:hunter2-api@python.internal",
               "SUPABASE_URL": "hunter2-service-role", "SUPABASE_SERVICE_ROLE_KEY":
               "hunter2-service-role", "DATABASE_URL": "mysql://u:hunter2-db@h/x"}
    with pytest.raises(SettingsError) as refused:
        load_settings(environ, dotenv_path=None)
    message = str(refused.value)
    for name in ("JWT_SECRET", "CORS_ORIGINS", "RATE_LIMIT_STORAGE_URI", "PYTHON_API_BASE_URL",
                 "SUPABASE_URL", "DATABASE_URL"):
        assert name in message, (name, message)
    assert "hunter2" not in message, message
