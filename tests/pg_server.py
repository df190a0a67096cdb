"""A throwaway PostgreSQL server for the tests (and bench/), or the one ``DATABASE_URL`` names.

With ``DATABASE_URL`` set, that server is used (each test gets its own schema,
dropped afterwards; nothing else in the database is touched). Otherwise a
server is started from the installed binaries (``initdb`` and ``pg_ctl`` on
PATH or under ``/usr/lib/postgresql/*/bin``): a fresh cluster in a temporary
directory, listening on 127.0.0.1 on a free port only, its socket in that
directory, stopped and deleted at the end of the session. PostgreSQL refuses
to run as root, so as root it runs as the ``postgres`` system user (created
when missing).

No binaries and no ``DATABASE_URL``: the tests that need the server are
skipped, except under CI (``CI=true``), where that is a failure.

Test modules use the fixtures by assignment (``pg_url = pg_server.pg_url``); the
helpers at the end serve the store's tests.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from actors import JobSystem, Settings
from actors.model.jobs import Job, JobKind, freeze, new_job_id
from actors.stores.postgres.store import PostgresJobStore

SERVER_USER = "postgres"
"""The system user the server runs as when the tests run as root."""


def find_bin_dir() -> Path | None:
    """Return the directory of ``initdb`` and ``pg_ctl`` (newest version first), or ``None``."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", path))

    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if (Path(found) / "initdb").exists() and (Path(found) / "pg_ctl").exists():
            return Path(found)
    return None


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def with_search_path(url: str, schema: str) -> str:
    """Return ``url`` with ``options=-c search_path=<schema>`` added to its query."""
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}options={quote(f'-c search_path={schema}', safe='')}"


class PgServer:
    """A PostgreSQL cluster in a temporary directory, on 127.0.0.1 (a context manager)."""

    def __init__(self, bin_dir: Path, *, durable: bool = False) -> None:
        self.bin_dir = bin_dir
        self.durable = durable
        """False (tests): fsync and synchronous commit off, for speed; data is throwaway."""
        self.root = Path(tempfile.mkdtemp(prefix="qudemo-pg-"))
        self.port = 0
        self._user: str | None = None
        if os.geteuid() == 0:  # postgres refuses to run as root
            self._user = _ensure_user(SERVER_USER)
            entry = pwd.getpwnam(self._user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def __repr__(self) -> str:
        return f"<PgServer {self.url} in {self.root}>"

    @property
    def url(self) -> str:
        """The superuser's connection URL (trust authentication, 127.0.0.1 only)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        log = self.root / "commands.log"
        with open(log, "a") as out:  # never a pipe: the postmaster would keep it open
            result = subprocess.run([str(self.bin_dir / args[0]), *args[1:]], cwd=self.root,
                                    user=self._user, stdout=out, stderr=subprocess.STDOUT,
                                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                         "LC_ALL": "C"}, timeout=120, check=False)
        if result.returncode != 0:
            server_log = self.root / "server.log"
            tail = server_log.read_text()[-2000:] if server_log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}):\n"
                               f"{log.read_text()[-2000:]}\n{tail}")

    def start(self) -> PgServer:
        """Create the cluster and start the server; retried on another port if one was taken."""
        self._run("initdb", "-D", str(self.root / "data"), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        (self.root / "sock").mkdir()
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.root / "sock", entry.pw_uid, entry.pw_gid)
        options = "-c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        for attempt in range(3):
            self.port = free_port()
            try:
                self._run("pg_ctl", "-D", str(self.root / "data"), "-l",
                          str(self.root / "server.log"), "-w", "-t", "60", "-o",
                          f"-h 127.0.0.1 -p {self.port} -k {self.root / 'sock'} {options}",
                          "start")
                return self
            except RuntimeError:
                if attempt == 2:
                    self.stop()
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def halt(self) -> None:
        """Stop the server (fast shutdown), keeping its data: an outage, ended by ``resume``."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the halted server again on the same port."""
        options = "-c max_connections=200"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", str(self.root / "server.log"),
                  "-w", "-t", "60", "-o",
                  f"-h 127.0.0.1 -p {self.port} -k {self.root / 'sock'} {options}", "start")

    def stop(self) -> None:
        """Stop the server (fast shutdown) and delete its directory."""
        if (self.root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):  # it was not running
                self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PgServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def _ensure_user(name: str) -> str:
    """Return ``name``, creating it as a system user without a login when missing."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
    return name


@pytest.fixture(scope="session")
def pg_base_url() -> Iterator[str]:
    """A PostgreSQL server for the session: ``DATABASE_URL``, or a throwaway one."""
    given = os.environ.get("DATABASE_URL")
    if given:
        yield given
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        reason = ("PostgreSQL is not installed (no initdb/pg_ctl on PATH or under "
                  "/usr/lib/postgresql/*/bin) and DATABASE_URL is unset")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must have it (.ci/run installs it)")
        pytest.skip(reason)
    with _shared_server(bin_dir) as server:
        yield server.url


_shared: list[PgServer] = []
_users = 0


@contextlib.contextmanager
def _shared_server(bin_dir: Path) -> Iterator[PgServer]:
    """One server for every module that assigns the fixture, stopped after the last one."""
    global _users
    if not _shared:
        _shared.append(PgServer(bin_dir).start())
    _users += 1
    try:
        yield _shared[0]
    finally:
        _users -= 1
        if _users == 0:
            _shared.pop().stop()


@pytest.fixture
def pg_url(pg_base_url: str) -> Iterator[str]:
    """A connection URL whose ``search_path`` is a fresh schema, dropped after the test."""
    schema = f"qudemo_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_base_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield with_search_path(pg_base_url, schema)
    finally:
        with psycopg.connect(pg_base_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


# --- helpers for the store's tests -------------------------------------------------------

T0 = 1_000_000.0
"""A fixed wall-clock time the store tests count from (claims take explicit times)."""


class ManualClock:
    """A wall clock that moves only when told (the store's ``clock`` argument)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_job(kind: JobKind = JobKind.QA, **changes: Any) -> Job:
    """Return a queued job of ``kind`` created at ``T0`` (``changes`` override any field)."""
    data = ({"question": "q?", "company_name": "acme"} if kind == JobKind.QA
            else {"video_url": "https://youtu.be/v", "company_name": "acme", "source": "youtube"})
    job = Job(id=new_job_id(), kind=kind, priority=1 if kind == JobKind.QA else 2,
              data=freeze(data), owner="u1", created_at=T0)
    return job.replace(**changes)


@pytest.fixture
def open_pg(pg_url: str) -> Iterator[Callable[..., PostgresJobStore]]:
    """Open stores on the test's schema (each one an "instance"); all closed afterwards."""
    opened: list[PostgresJobStore] = []

    def open_store(instance_id: str = "a", **kwargs: Any) -> PostgresJobStore:
        store = PostgresJobStore(pg_url, instance_id=instance_id, **kwargs)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


Start = Callable[..., JobSystem]
"""Starts one job system on the test's schema with some settings changed."""


@pytest.fixture
def start(pg_url: str, fast_settings: Settings) -> Iterator[Start]:
    """Start instances ("servers") on the test's schema; all stopped afterwards."""
    started: list[JobSystem] = []

    def start_instance(**changes: object) -> JobSystem:
        settings = dataclasses.replace(fast_settings, store="postgres", database_url=pg_url,
                                       **changes)  # type: ignore[arg-type]
        system = JobSystem(settings).start()
        started.append(system)
        return system

    yield start_instance
    for system in started:
        system.stop(drain=False)
