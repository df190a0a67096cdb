"""Settings of the job system, read once from the environment.

Environment variables keep the names the Node backend was deployed with
(``QUEUE_BACKOFF_DELAY`` in milliseconds, ...); the conversion to seconds
happens here and nowhere else. Everything else receives a ``Settings``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

from actors.errors import SettingsError
from actors.jobs import JobKind

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class KindLimits:
    """The limits that apply to one kind of job."""

    max_concurrent: int
    max_waiting: int
    default_priority: int


class EnvReader:
    """Reads typed values from an environment mapping, collecting every problem."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def raw(self, name: str) -> str | None:
        """Return the stripped value of ``name``, or ``None`` when unset or empty."""
        value = self.environ.get(name)
        if value is None or not value.strip():
            return None
        return value.strip()

    def number(
        self,
        name: str,
        default: float,
        *,
        minimum: float = 0,
        allow_zero: bool = True,
        integer: bool = True,
        maximum: float | None = None,
    ) -> Any:
        """Read a number; record a problem (and return the default) when it is bad."""
        text = self.raw(name)
        if text is None:
            return default
        try:
            value: float = int(text) if integer else float(text)
        except ValueError:
            kind = "an integer" if integer else "a number"
            self.problems.append(f"{name}={text!r} is not {kind}")
            return default
        if value != value or value in (float("inf"), float("-inf")):
            self.problems.append(f"{name}={text!r} is not a finite number")
            return default
        if value < minimum:
            self.problems.append(f"{name}={text!r} must be at least {minimum:g}")
            return default
        if value == 0 and not allow_zero:
            self.problems.append(f"{name}={text!r} must be greater than zero")
            return default
        if maximum is not None and value > maximum:
            self.problems.append(f"{name}={text!r} must be at most {maximum:g}")
            return default
        return value

    def ms_as_s(self, name: str, default_ms: float, *, allow_zero: bool = False) -> float:
        """Read milliseconds and return seconds."""
        return float(self.number(name, default_ms, allow_zero=allow_zero)) / 1000.0

    def text(self, name: str, default: str) -> str:
        """Read a string."""
        value = self.raw(name)
        return default if value is None else value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """Read one of ``choices`` (case-insensitive)."""
        value = self.text(name, default).lower()
        if value not in choices:
            self.problems.append(f"{name}={value!r} must be one of {', '.join(choices)}")
            return default
        return value

    def flag(self, name: str, default: bool) -> bool:
        """Read a boolean (1/0, true/false, yes/no, on/off)."""
        value = self.raw(name)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        self.problems.append(f"{name}={value!r} is not a boolean (use true or false)")
        return default

    def url(self, name: str, default: str) -> str:
        """Read an http(s) base URL without a trailing slash."""
        value = self.text(name, default).rstrip("/")
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problems.append(f"{name}={value!r} is not an http(s) URL")
            return default.rstrip("/")
        return value

    def check(self, condition: bool, problem: str) -> None:
        """Record ``problem`` unless ``condition`` holds."""
        if not condition:
            self.problems.append(problem)


def merged_environ(
    environ: Mapping[str, str] | None = None, dotenv_path: str | None = ".env"
) -> dict[str, str]:
    """Return ``environ`` (default ``os.environ``) over the values of a ``.env`` file."""
    merged: dict[str, str] = {}
    if dotenv_path and os.path.isfile(dotenv_path):
        merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    return merged


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Configuration of the actor core; build with ``Settings.from_env`` or directly in tests."""

    max_concurrent_videos: int = 2
    max_concurrent_qa: int = 10
    video_priority: int = 2
    qa_priority: int = 1
    max_waiting_videos: int = 500
    max_waiting_qa: int = 2000
    retry_attempts: int = 3
    backoff_base_s: float = 5.0
    backoff_max_s: float = 300.0
    backoff_jitter: float = 0.2
    job_timeout_s: float = 300.0
    aging_s: float = 60.0
    max_memory_mb: float = 1600.0
    memory_threshold_mb: float = 1600.0
    memory_resume_ratio: float = 0.9
    memory_check_interval_s: float = 10.0
    python_api_base_url: str = "http://localhost:5001"
    python_api_connect_timeout_s: float = 5.0
    python_api_status_timeout_s: float = 2.0
    retention_s: float = 86400.0
    retention_max_jobs: int = 10000
    drain_timeout_s: float = 30.0
    worker_max_restarts: int = 5
    worker_restart_window_s: float = 60.0
    ask_timeout_s: float = 10.0
    overdue_grace_s: float = 10.0
    """How long past its hard deadline a silent worker is presumed dead (not from env)."""
    store: str = "sqlite"
    """``sqlite`` (durable, the default) or ``memory``."""
    db_path: str = "./data/jobs.sqlite3"
    db_synchronous: str = "normal"

    def limits(self, kind: JobKind) -> KindLimits:
        """Return the limits of ``kind``; a new kind adds one line here."""
        match kind:
            case JobKind.VIDEO:
                return KindLimits(
                    self.max_concurrent_videos, self.max_waiting_videos, self.video_priority
                )
            case JobKind.QA:
                return KindLimits(self.max_concurrent_qa, self.max_waiting_qa, self.qa_priority)
        raise ValueError(f"unknown job kind {kind!r}")  # pragma: no cover

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, dotenv_path: str | None = ".env"
    ) -> Settings:
        """Read settings from ``environ`` (and a ``.env`` file); report every bad value at once.

        Raises:
            SettingsError: naming every variable whose value is bad.
        """
        reader = EnvReader(merged_environ(environ, dotenv_path))
        settings = cls.read(reader)
        if reader.problems:
            raise SettingsError(reader.problems)
        return settings

    @classmethod
    def read(cls, env: EnvReader) -> Settings:
        """Read settings through ``env``, leaving problems in ``env.problems``."""
        d = cls()
        num: Callable[..., Any] = env.number
        settings = cls(
            max_concurrent_videos=num("QUEUE_MAX_CONCURRENT_VIDEOS", 2, allow_zero=False),
            max_concurrent_qa=num("QUEUE_MAX_CONCURRENT_QA", 10, allow_zero=False),
            video_priority=num("QUEUE_VIDEO_PRIORITY", 2, minimum=1, maximum=3),
            qa_priority=num("QUEUE_QA_PRIORITY", 1, minimum=1, maximum=3),
            max_waiting_videos=num("QUEUE_MAX_WAITING_VIDEOS", d.max_waiting_videos,
                                   allow_zero=False),
            max_waiting_qa=num("QUEUE_MAX_WAITING_QA", d.max_waiting_qa, allow_zero=False),
            retry_attempts=num("QUEUE_RETRY_ATTEMPTS", 3, allow_zero=False),
            backoff_base_s=env.ms_as_s("QUEUE_BACKOFF_DELAY", 5000, allow_zero=True),
            backoff_max_s=env.ms_as_s("QUEUE_BACKOFF_MAX_MS", 300000),
            backoff_jitter=num("QUEUE_BACKOFF_JITTER", 0.2, integer=False, maximum=1),
            job_timeout_s=env.ms_as_s("QUEUE_JOB_TIMEOUT_MS", 300000),
            aging_s=env.ms_as_s("QUEUE_AGING_MS", 60000),
            max_memory_mb=num("QUEUE_MAX_MEMORY_MB", 1600, integer=False, allow_zero=False),
            memory_threshold_mb=num("MEMORY_THRESHOLD_MB", 1600, integer=False,
                                    allow_zero=False),
            memory_resume_ratio=num("MEMORY_RESUME_RATIO", 0.9, integer=False,
                                    allow_zero=False, maximum=1),
            memory_check_interval_s=env.ms_as_s("MEMORY_CHECK_INTERVAL_MS", 10000),
            python_api_base_url=env.url("PYTHON_API_BASE_URL", d.python_api_base_url),
            python_api_connect_timeout_s=env.ms_as_s("PYTHON_API_CONNECT_TIMEOUT_MS", 5000),
            python_api_status_timeout_s=env.ms_as_s("PYTHON_API_STATUS_TIMEOUT_MS", 2000),
            retention_s=env.ms_as_s("QUEUE_RETENTION_MS", 86400000),
            retention_max_jobs=num("QUEUE_RETENTION_MAX_JOBS", d.retention_max_jobs,
                                   allow_zero=False),
            drain_timeout_s=env.ms_as_s("QUEUE_DRAIN_TIMEOUT_MS", 30000, allow_zero=True),
            worker_max_restarts=num("WORKER_MAX_RESTARTS", 5),
            worker_restart_window_s=env.ms_as_s("WORKER_RESTART_WINDOW_MS", 60000),
            store=env.choice("QUEUE_STORE", d.store, ("sqlite", "memory")),
            db_path=env.text("QUEUE_DB_PATH", d.db_path),
            db_synchronous=env.choice("QUEUE_DB_SYNCHRONOUS", d.db_synchronous,
                                      ("normal", "full")),
        )
        env.check(
            settings.backoff_max_s >= settings.backoff_base_s,
            "QUEUE_BACKOFF_MAX_MS must not be below QUEUE_BACKOFF_DELAY",
        )
        return settings
