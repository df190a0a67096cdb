"""The deployment files agree with the code, without a Docker engine or a Render account.

* ``Dockerfile``: its command is the server's start command, it exposes the port
  ``gunicorn.conf.py`` binds, and its HEALTHCHECK command, run for real, passes against a
  served app and fails without one.
* ``render.yaml``: parses, starts the same command, checks a health path that answers,
  keeps the store on its disk, and sets only variables the code reads, with valid values.
* ``.env.example`` and the README's configuration table list exactly the variables the
  code reads. What is read is recorded, not listed here: ``Settings.read`` and
  ``WebSettings.read`` run over a mapping that records every key looked up, and
  ``gunicorn.conf.py`` runs in a subprocess whose ``os.environ`` does the same.
"""

from __future__ import annotations

import ast
import configparser
import contextlib
import fnmatch
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from werkzeug.serving import make_server

from actors import JobSystem
from actors.model.errors import SettingsError
from actors.model.settings import EnvReader, Settings
from web import AppSettings, WebSettings, create_app
from web.settings import load_settings

REPO = Path(__file__).resolve().parent.parent
START_COMMAND = ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
RENDER_SHUTDOWN_DELAY_S = 30
"""Render sends SIGKILL this long after SIGTERM unless maxShutdownDelaySeconds says otherwise."""
TOOL_VARIABLES = {"PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR",
                  "PIP_DISABLE_PIP_VERSION_CHECK", "GUNICORN_CMD_ARGS"}
"""Variables the image sets for Python, pip and gunicorn themselves, not for our code."""
RENDER_VARIABLES = {"PYTHON_VERSION"}
"""Variables the Render Blueprint sets for Render's build, not for our code."""
SEED_VARIABLES = (
    "SUPABASE_URL", "SUPABASE_ANON_KEY", "SUPABASE_SERVICE_ROLE_KEY",
    "QUEUE_MAX_CONCURRENT_VIDEOS", "QUEUE_MAX_CONCURRENT_QA", "QUEUE_VIDEO_PRIORITY",
    "QUEUE_QA_PRIORITY", "QUEUE_RETRY_ATTEMPTS", "QUEUE_BACKOFF_DELAY", "QUEUE_MAX_MEMORY_MB",
    "QUEUE_JOB_TIMEOUT_MS", "MAX_CONCURRENT_VIDEO_PROCESSING", "MAX_CONCURRENT_QA_REQUESTS",
    "MEMORY_THRESHOLD_MB", "REQUEST_TIMEOUT_MS", "PYTHON_API_BASE_URL", "NODE_ENV",
    "ENABLE_DEBUG_LOGS",
)
"""The Node backend's documented variables (its README's env block and production example)."""
SEED_ENDPOINTS = ("POST /api/video/process", "POST /api/interactions/{interactionId}/questions",
                  "GET /api/queue/jobs/{video,qa}/{jobId}", "GET /api/queue/status",
                  "GET /api/queue/monitor", "GET /health")
GUNICORN_KEYS = ("bind", "workers", "worker_class", "threads", "timeout", "graceful_timeout",
                 "accesslog", "loglevel")
ENV_LINE = re.compile(r"^#\s?([A-Z][A-Z0-9_]*)=(.*)$")
"""A variable in .env.example: ``# NAME=default`` (commented, so a copy changes nothing)."""


# --- what the code reads ----------------------------------------------------------------

class RecordingEnviron(Mapping[str, str]):
    """An environment mapping that records every key looked up, however it is looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.seen: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.seen.add(key)
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        raise AssertionError("settings must look variables up by name, not iterate them")

    def __len__(self) -> int:
        return len(self.values)


def settings_reads(environ: Mapping[str, str]) -> set[str]:
    """Return the variables Settings.read and WebSettings.read look up in ``environ``."""
    recording = RecordingEnviron(environ)
    reader = EnvReader(recording)
    Settings.read(reader)
    WebSettings.read(reader)
    return recording.seen


GUNICORN_PROBE = """
import json, os, runpy, sys
path = os.path.abspath(sys.argv[1])
seen = set()

class Recording(dict):
    def _note(self, key):
        # Count a lookup made by gunicorn.conf.py itself, directly or through one helper
        # such as os.getenv, not one the standard library makes on its own.
        frame = sys._getframe(2)
        for _ in range(2):
            if frame is None:
                break
            if os.path.abspath(frame.f_code.co_filename) == path:
                seen.add(key)
                break
            frame = frame.f_back

    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self._note(key)
        return super().get(key, default)

    def __contains__(self, key):
        self._note(key)
        return super().__contains__(key)

os.environ = Recording(os.environ)
namespace = runpy.run_path(path)
print(json.dumps({"read": sorted(seen),
                  "config": {key: namespace.get(key) for key in json.loads(sys.argv[2])}}))
"""


def gunicorn_probe(environ: Mapping[str, str]) -> dict[str, Any]:
    """Evaluate gunicorn.conf.py under exactly ``environ``; return what it read and set."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **environ}
    result = subprocess.run(
        [sys.executable, "-c", GUNICORN_PROBE, str(REPO / "gunicorn.conf.py"),
         json.dumps(GUNICORN_KEYS)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    probe: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    # PATH is the probe's own; a real read of it would be a surprise worth seeing.
    probe["read"] = set(probe["read"]) - ({"PATH"} - set(environ))
    return probe


def bind_port(config: Mapping[str, Any]) -> int:
    """Return the port of gunicorn's ``bind`` (``host:port``)."""
    return int(str(config["bind"]).rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    """The variables of .env.example with the values shown."""
    return parse_env_example()


@pytest.fixture(scope="module")
def reads(env_example: dict[str, str]) -> set[str]:
    """Every variable the code reads: core and web settings, and gunicorn.conf.py.

    Read twice, with nothing set and with every documented value set, so a lookup that
    happens only when another variable is unset (or set) is seen too.
    """
    names = settings_reads({}) | settings_reads(env_example)
    names |= gunicorn_probe({})["read"] | gunicorn_probe(env_example)["read"]
    return names


# --- the files --------------------------------------------------------------------------

def parse_env_example() -> dict[str, str]:
    """Return ``{name: value}`` of .env.example, failing on a variable listed twice."""
    found: dict[str, str] = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        match = ENV_LINE.match(line)
        if match:
            name, value = match.groups()
            assert name not in found, f".env.example lists {name} twice"
            found[name] = value
        else:
            assert not re.match(r"^\s*[A-Z][A-Z0-9_]*\s*=", line), (
                f".env.example: {line!r} is active; show defaults commented (# NAME=value)"
            )
    return found


def readme_table_variables() -> set[str]:
    """Return every variable named in the first column of the README's configuration table."""
    readme = (REPO / "README.md").read_text()
    match = re.search(r"^## Configuration\n(.*?)(?=^## )", readme, re.S | re.M)
    assert match, "README.md has no '## Configuration' section"
    names: set[str] = set()
    for line in match.group(1).splitlines():
        if line.startswith("|"):
            first_cell = line.split("|")[1]
            names.update(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    return names


def dockerfile() -> list[tuple[str, str]]:
    """Return the Dockerfile's instructions as ``(INSTRUCTION, arguments)``, lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def docker_args(keyword: str) -> list[str]:
    """Return the arguments of every ``keyword`` instruction, in order."""
    return [arguments for kw, arguments in dockerfile() if kw == keyword]


def docker_env() -> dict[str, str]:
    """Return the variables the image sets with ENV."""
    env: dict[str, str] = {}
    for arguments in docker_args("ENV"):
        for pair in shlex.split(arguments):
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def healthcheck_command() -> list[str]:
    """Return the HEALTHCHECK's exec-form command."""
    (arguments,) = docker_args("HEALTHCHECK")
    _, _, command = arguments.partition(" CMD ")
    argv: list[str] = json.loads(command)
    return argv


def render_service() -> dict[str, Any]:
    """Return the one web service of render.yaml."""
    blueprint = yaml.safe_load((REPO / "render.yaml").read_text())
    services = [s for s in blueprint["services"] if s.get("type") == "web"]
    assert len(services) == 1, "render.yaml should define exactly one web service"
    service: dict[str, Any] = services[0]
    return service


def render_env(service: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Return render.yaml's envVars by key."""
    entries = {entry["key"]: entry for entry in service["envVars"]}
    assert len(entries) == len(service["envVars"]), "render.yaml sets a variable twice"
    return entries


def route_rules(app: Flask) -> set[str]:
    """Return the paths of the app's GET routes."""
    return {rule.rule for rule in app.url_map.iter_rules() if "GET" in (rule.methods or ())}


@pytest.fixture
def app(job_system: JobSystem) -> Flask:
    """The real app over a real (in-memory) job system."""
    return create_app(AppSettings(core=job_system.settings), job_system=job_system)


@contextlib.contextmanager
def serving(app: Flask) -> Iterator[int]:
    """Serve ``app`` on 127.0.0.1 (a real socket) while in the block; yield the port."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="deploy-test-server")
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    """Run the Dockerfile's HEALTHCHECK command as Docker would, with ``PORT`` set."""
    argv = healthcheck_command()
    assert argv[0] == "python", "the slim image's interpreter is 'python'"
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PORT": str(port)}
    return subprocess.run([sys.executable, *argv[1:]], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


# --- variables: .env.example and the README table -----------------------------------------

def test_the_recorders_see_what_the_code_reads(reads: set[str]) -> None:
    # Guards the probes themselves: were they blind, every comparison below would pass.
    assert {"QUEUE_MAX_CONCURRENT_VIDEOS", "JWT_SECRET", "PORT"} <= reads


def test_env_example_lists_every_variable_read_and_nothing_else(
    env_example: dict[str, str], reads: set[str]
) -> None:
    documented = set(env_example)
    missing, extra = sorted(reads - documented), sorted(documented - reads)
    assert not missing, f"read but missing from .env.example: {missing}"
    assert not extra, f"in .env.example but never read: {extra}"


def test_readme_table_lists_every_variable_read_and_nothing_else(reads: set[str]) -> None:
    table = readme_table_variables()
    assert not reads - table, f"read but missing from README's table: {sorted(reads - table)}"
    assert not table - reads, f"in README's table but never read: {sorted(table - reads)}"


def test_env_example_shows_the_defaults(env_example: dict[str, str]) -> None:
    # Uncommenting every line must change nothing: the values shown are the defaults
    # (on a laptop: authentication off is asked for explicitly, or the start is refused).
    laptop = {"APP_ENV": "development"}
    assert (load_settings({**env_example, **laptop}, dotenv_path=None)
            == load_settings(laptop, dotenv_path=None))
    assert gunicorn_probe(env_example)["config"] == gunicorn_probe({})["config"]


def test_env_example_says_what_each_variable_means() -> None:
    lines = (REPO / ".env.example").read_text().splitlines()
    for above, line in itertools.pairwise(lines):
        if ENV_LINE.match(line):
            meaning = above.lstrip("#").strip()
            assert above.startswith("#") and meaning and not ENV_LINE.match(above) \
                and not meaning.startswith("---"), f"no one-line meaning above {line!r}"


# --- Dockerfile ---------------------------------------------------------------------------

def test_dockerfile_runs_the_start_command() -> None:
    (command,) = docker_args("CMD")
    assert json.loads(command) == START_COMMAND
    assert (REPO / "gunicorn.conf.py").is_file()
    tree = ast.parse((REPO / "wsgi.py").read_text())
    assigned = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                for target in node.targets if isinstance(target, ast.Name)}
    assert "app" in assigned, "wsgi.py must define the 'app' that 'wsgi:app' names"


def test_dockerfile_exposes_the_port_gunicorn_binds() -> None:
    exposed = [int(port.split("/")[0]) for arguments in docker_args("EXPOSE")
               for port in arguments.split()]
    image_env = {k: v for k, v in docker_env().items() if k not in TOOL_VARIABLES}
    config = gunicorn_probe(image_env)["config"]
    assert exposed == [bind_port(config)]
    # The HEALTHCHECK falls back to the same port when PORT is not set.
    default = re.search(r"os\.environ\.get\('PORT', '(\d+)'\)", " ".join(healthcheck_command()))
    assert default and int(default.group(1)) == bind_port(config)


def test_dockerfile_healthcheck_passes_on_a_served_app_and_fails_without_one(
    app: Flask,
) -> None:
    path = re.search(r"127\.0\.0\.1:%s(/[\w/]*)", " ".join(healthcheck_command()))
    assert path and path.group(1) in route_rules(app)
    assert path.group(1) == "/health/live", "Docker's HEALTHCHECK is the liveness probe"
    with serving(app) as port:
        passed = run_healthcheck(port)
    assert passed.returncode == 0, passed.stderr
    failed = run_healthcheck(port)  # the server is gone: connection refused
    assert failed.returncode != 0


def test_dockerfile_installs_dependencies_before_the_code() -> None:
    steps = dockerfile()
    install = next(i for i, (kw, args) in enumerate(steps) if kw == "RUN" and "pip install" in args)
    copies = [(i, args) for i, (kw, args) in enumerate(steps) if kw == "COPY"]
    before = [args for i, args in copies if i < install]
    assert before == ["pyproject.toml ./"], "only packaging files may be copied before pip"
    assert "tomllib" in steps[install][1] and "'dependencies'" in steps[install][1]
    assert any(i > install for i, _ in copies), "the code is copied after the dependencies"


def test_dockerfile_copies_everything_the_server_imports() -> None:
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    packages = [p for p in setup["options.packages.find"]["include"].split() if "*" not in p]
    sources = {src.rstrip("/") for arguments in docker_args("COPY")
               for src in shlex.split(arguments)[:-1]}
    assert {*packages, "wsgi.py", "gunicorn.conf.py"} <= sources
    ignore = dockerignore_patterns()
    for source in sources:
        root = REPO / source
        files = [p for p in root.rglob("*.py")] if root.is_dir() else [root]
        dropped = [f for f in files if ignored(f.relative_to(REPO).as_posix(), ignore)]
        assert not dropped, f".dockerignore drops what COPY {source} needs: {dropped}"


def dockerignore_patterns() -> list[str]:
    """Return the patterns of .dockerignore, in order."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    """Tell whether Docker leaves ``path`` out of the context (the last matching line wins)."""
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if bare.startswith("**/"):
            tail = bare[3:]
            hit = any(fnmatch.fnmatchcase("/".join(parts[i: j + 1]), tail)
                      for i in range(len(parts)) for j in range(i, len(parts)))
        else:
            hit = any(fnmatch.fnmatchcase(prefix, bare) for prefix in prefixes)
        if hit:
            result = not negate
    return result


@pytest.mark.parametrize(("path", "left_out"), [
    (".env", True), ("web/.env", True), (".env.production", True), (".env.example", False),
    ("data/jobs.sqlite3", True), ("jobs.sqlite3-wal", True), (".git/config", True),
    (".venv/bin/python", True), ("web/__pycache__/auth.cpython-311.pyc", True),
    ("tests/conftest.py", True), ("actors/system.py", False), ("web/__init__.py", False),
    ("wsgi.py", False), ("gunicorn.conf.py", False), ("pyproject.toml", False),
])
def test_dockerignore_keeps_secrets_and_state_out_and_the_code_in(path: str,
                                                                   left_out: bool) -> None:
    assert ignored(path, dockerignore_patterns()) is left_out


def test_dockerfile_runs_as_a_non_root_user_with_the_store_on_its_volume() -> None:
    steps = dockerfile()
    assert steps[0][0] == "FROM" and steps[0][1].startswith("python:3.11-slim")
    users = [(i, args) for i, (kw, args) in enumerate(steps) if kw == "USER"]
    cmd = max(i for i, (kw, _) in enumerate(steps) if kw == "CMD")
    assert users and users[-1][0] < cmd
    user = users[-1][1].split(":")[0]
    assert user not in ("root", "0")
    volumes = [v for args in docker_args("VOLUME") for v in json.loads(args)]
    db_path = docker_env()["QUEUE_DB_PATH"]
    volume = next(v for v in volumes if db_path.startswith(v.rstrip("/") + "/"))
    volume_at = next(i for i, (kw, _) in enumerate(steps) if kw == "VOLUME")
    assert any(kw == "RUN" and f"chown {user}" in args and volume in args
               for kw, args in steps[:volume_at]), "the volume must belong to the server's user"


def test_dockerfile_sets_only_variables_the_code_reads_with_valid_values(reads: set[str]) -> None:
    image_env = docker_env()
    assert not set(image_env) - reads - TOOL_VARIABLES
    given = {k: v for k, v in image_env.items() if k in reads}
    with pytest.raises(SettingsError, match="JWT_SECRET is required"):
        load_settings(given, dotenv_path=None)  # fails closed: a deploy must bring its secret
    settings = load_settings({**given, "JWT_SECRET": "s" * 32}, dotenv_path=None)
    assert settings.core.store == "sqlite"


# --- render.yaml --------------------------------------------------------------------------

def test_render_blueprint_builds_and_starts_like_the_image() -> None:
    service = render_service()
    assert service["runtime"] == "python"
    assert service["buildCommand"] == "pip install ."
    assert shlex.split(service["startCommand"]) == START_COMMAND
    (command,) = docker_args("CMD")
    assert shlex.split(service["startCommand"]) == json.loads(command)
    assert re.fullmatch(r"3\.11\.\d+", render_env(service)["PYTHON_VERSION"]["value"])


def test_render_health_check_path_answers_on_a_healthy_app(app: Flask) -> None:
    path = render_service()["healthCheckPath"]
    assert path in route_rules(app)
    reply = app.test_client().get(path)
    assert reply.status_code == 200, reply.get_json()


def test_render_keeps_the_job_store_on_its_disk() -> None:
    service = render_service()
    env = render_env(service)
    mount = service["disk"]["mountPath"].rstrip("/")
    assert env["QUEUE_STORE"]["value"] == "sqlite"
    assert env["QUEUE_DB_PATH"]["value"].startswith(mount + "/")
    assert "numInstances" not in service and "scaling" not in service, "one instance per disk"


def test_render_sets_the_seed_variables_and_only_variables_the_code_reads(
    reads: set[str]
) -> None:
    env = render_env(render_service())
    wanted = {"PYTHON_API_BASE_URL", "MEMORY_THRESHOLD_MB", "SUPABASE_URL",
              "SUPABASE_SERVICE_ROLE_KEY", "JWT_SECRET", "APP_ENV",
              *(v for v in SEED_VARIABLES if v.startswith("QUEUE_"))}
    assert not wanted - set(env), f"render.yaml lacks {sorted(wanted - set(env))}"
    assert not set(env) - reads - RENDER_VARIABLES, (
        f"render.yaml sets variables nothing reads: {sorted(set(env) - reads - RENDER_VARIABLES)}"
    )
    for secret in ("JWT_SECRET", "SUPABASE_SERVICE_ROLE_KEY"):
        assert env[secret].get("sync") is False and "value" not in env[secret], secret
    assert env["APP_ENV"]["value"] == "production"


def render_values(service: Mapping[str, Any]) -> dict[str, str]:
    """Return render.yaml's variables as the service would see them (prompted ones filled)."""
    prompted = {"JWT_SECRET": "s" * 32, "PYTHON_API_BASE_URL": "https://python-api.example.com",
                "CORS_ORIGINS": "https://app.example.com",
                "SUPABASE_URL": "https://project.supabase.co",
                "SUPABASE_SERVICE_ROLE_KEY": "service-role-key"}
    values: dict[str, str] = {}
    for key, entry in render_env(service).items():
        if key in RENDER_VARIABLES:
            continue
        values[key] = str(entry["value"]) if "value" in entry else prompted[key]
    return values


def test_render_values_are_valid_settings() -> None:
    try:
        settings = load_settings(render_values(render_service()), dotenv_path=None)
    except SettingsError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"render.yaml's values do not start the service: {exc}")
    assert settings.web.production and settings.web.auth_enabled


def test_render_drain_ends_before_render_kills_the_process() -> None:
    service = render_service()
    config = gunicorn_probe(render_values(service))["config"]
    limit = service.get("maxShutdownDelaySeconds", RENDER_SHUTDOWN_DELAY_S)
    assert config["graceful_timeout"] < limit, (
        f"gunicorn may drain {config['graceful_timeout']} s but Render kills after {limit} s"
    )


# --- README and the migration guide ---------------------------------------------------------

def test_readme_deploy_section_names_what_the_files_use() -> None:
    readme = (REPO / "README.md").read_text()
    deploy = re.search(r"^## Deploy\n(.*?)(?=^## )", readme, re.S | re.M)
    assert deploy, "README.md has no '## Deploy' section"
    assert readme.index("## Deploy") < readme.index("## Tests")
    text = deploy.group(1)
    service = render_service()
    for needle in ("render.yaml", service["healthCheckPath"], service["disk"]["mountPath"],
                   "docker build", "/health/live", docker_env()["QUEUE_DB_PATH"]):
        assert needle in text, f"README's Deploy section does not mention {needle!r}"


def test_migration_guide_covers_every_seed_variable_and_endpoint() -> None:
    guide = (REPO / "docs" / "migration.md").read_text()
    missing = [name for name in SEED_VARIABLES if f"`{name}`" not in guide]
    assert not missing, f"docs/migration.md does not map {missing}"
    for endpoint in SEED_ENDPOINTS:
        path = endpoint.split(" ", 1)[1]
        assert path in guide, f"docs/migration.md does not map {endpoint}"
    assert "docs/migration.md" in (REPO / "README.md").read_text()
