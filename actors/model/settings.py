"""Settings of the job system, read once from the environment.

Environment variables keep the names the Node backend was deployed with
(``QUEUE_BACKOFF_DELAY`` in milliseconds, ...); the conversion to seconds
happens here and nowhere else. Everything else receives a ``Settings``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from dotenv import dotenv_values

from actors.model.errors import SettingsError
from actors.model.jobs import JobKind
from actors.runtime.redact import redact_text, redact_url, redact_urls, url_secrets

T = TypeVar("T")
logger = logging.getLogger(__name__)

SECRET_VARIABLES = ("PYTHON_API_BASE_URL", "PYTHON_API_BASE_URLS", "DATABASE_URL",
                    "SUPABASE_URL", "SUPABASE_SERVICE_ROLE_KEY")
"""Core variables whose values are, or may hold, secrets: never quoted in a message."""
_ADDRESS_FIELDS = ("python_api_base_url", "supabase_url")

MAX_COMPANY_WEIGHT = 1000.0
"""The largest weight ``QUEUE_COMPANY_WEIGHTS`` accepts."""

TABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}\Z")
"""A Postgres identifier that needs no quoting (table names go into URL paths)."""


@dataclass(frozen=True, slots=True)
class KindLimits:
    """The limits that apply to one kind of job."""

    max_concurrent: int
    max_waiting: int
    default_priority: int
    max_waiting_per_company: int | None = None
    """At most this many of one company's jobs wait (``None``: only ``max_waiting``)."""
    max_concurrent_per_company: int | None = None
    """At most this many of one company's jobs run (``None``: no ceiling; its jobs are passed
    over while it is at it, never waited on)."""


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

    def url_list(self, name: str, default: str) -> str:
        """Read a comma-separated list of http(s) base URLs; return them joined by commas.

        A bad value is quoted with its credentials hidden (``actors.runtime.redact``); two entries
        that differ only in their credentials are the same address.
        """
        urls = [u.strip().rstrip("/") for u in self.text(name, default).split(",") if u.strip()]
        bad = [u for u in urls if not _is_http_url(u)]
        if bad or not urls:
            self.problems.append(f"{name}={redact_urls(self.text(name, default))!r} is not a "
                                 "comma-separated list of http(s) URLs")
            return default
        if len({redact_url(u) for u in urls}) != len(urls):
            self.problems.append(f"{name} lists an address twice")
        return ",".join(urls)

    def url(self, name: str, default: str) -> str:
        """Read an http(s) base URL without a trailing slash (quoted redacted when bad)."""
        value = self.text(name, default).rstrip("/")
        if not _is_http_url(value):
            self.problems.append(f"{name}={redact_url(value)!r} is not an http(s) URL")
            return default.rstrip("/")
        return value

    def check(self, condition: bool, problem: str) -> None:
        """Record ``problem`` unless ``condition`` holds."""
        if not condition:
            self.problems.append(problem)


def _is_http_url(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


SUPERSEDED = {
    "MAX_CONCURRENT_VIDEO_PROCESSING": "QUEUE_MAX_CONCURRENT_VIDEOS",
    "MAX_CONCURRENT_QA_REQUESTS": "QUEUE_MAX_CONCURRENT_QA",
    "REQUEST_TIMEOUT_MS": "QUEUE_JOB_TIMEOUT_MS",
    "ENABLE_DEBUG_LOGS": "LOG_LEVEL=debug",
    "SUPABASE_ANON_KEY": "SUPABASE_SERVICE_ROLE_KEY (the backend writes as the service role)",
}
"""Node backend variables that are not read here, and what replaced them."""


def warn_superseded(environ: Mapping[str, str]) -> list[str]:
    """Log (and return) a warning for each Node backend variable set that is not read here."""
    found = [f"{name} is set but not read; use {SUPERSEDED[name]}"
             for name in SUPERSEDED if (environ.get(name) or "").strip()]
    for line in found:
        logger.warning("%s", line)
    return found


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
    adaptive_concurrency: bool = True
    """One adaptive capacity per Python API instance, shared by the kinds (README, Capacity).

    ``False``: each kind has its own static limit, ``max_concurrent_*``.
    """
    adaptive_min_concurrency: int = 2
    """The adaptive limit of an instance (both kinds together) never goes below this."""
    adaptive_initial_concurrency: int | None = None
    """Where an instance's adaptive limit starts; ``None``: at ``adaptive_min_concurrency``."""
    qa_reserved_concurrency: int = 1
    """Capacity of an instance that video never takes: a question never waits for a video."""
    adaptive_latency_tolerance: float = 1.5
    """Latency up to this many times a kind's baseline counts as healthy."""
    adaptive_backoff_ratio: float = 0.7
    """An overload signal (429/503/5xx, timeout, memory warning) keeps this fraction."""
    adaptive_baseline_window_s: float = 60.0
    """A kind's minimum latency (the baseline) is re-measured this often."""
    video_priority: int = 2
    qa_priority: int = 1
    max_waiting_videos: int = 500
    max_waiting_qa: int = 2000
    max_waiting_videos_per_company: int = 100
    max_waiting_qa_per_company: int = 400
    company_weights: tuple[tuple[str, float], ...] = ()
    """``QUEUE_COMPANY_WEIGHTS``: (casefolded company, weight) pairs; others weigh 1."""
    max_concurrent_videos_per_company: int | None = None
    """At most this many videos of one company run at once, everywhere (``None``: no ceiling)."""
    max_concurrent_qa_per_company: int | None = None
    """The same for one company's questions."""
    retry_attempts: int = 3
    backoff_base_s: float = 5.0
    backoff_max_s: float = 300.0
    backoff_jitter: float = 0.2
    job_timeout_s: float = 300.0
    abandoned_hold_s: float | None = None
    """How long, from its start, a call abandoned at its deadline keeps its slot at most.

    The Python API goes on processing a request whose client left, so the slot is
    held until the answer arrives or this hold ends (then the call is cut). ``None``:
    twice ``job_timeout_s``. Never below ``job_timeout_s``.
    """
    retry_timed_out_videos: bool = False
    """Retry a video whose call was still at the Python API at the deadline (see README)."""
    aging_s: float = 60.0
    max_memory_mb: float = 1600.0
    memory_threshold_mb: float = 1600.0
    memory_resume_ratio: float = 0.9
    memory_check_interval_s: float = 10.0
    python_api_base_url: str = "http://localhost:5001"
    python_api_connect_timeout_s: float = 5.0
    python_api_status_timeout_s: float = 2.0
    breaker_failures: int = 3
    """Consecutive connection failures or 5xx that open an instance's breaker (2+ instances)."""
    breaker_open_s: float = 30.0
    """How long an open breaker keeps work away; doubles on each failed probe (up to 16x)."""
    retention_s: float = 86400.0
    retention_max_jobs: int = 10000
    idempotency_retention_s: float = 86400.0
    """How long an ``Idempotency-Key`` is remembered after its job was made."""
    drain_timeout_s: float = 30.0
    worker_max_restarts: int = 5
    worker_restart_window_s: float = 60.0
    ask_timeout_s: float = 10.0
    overdue_grace_s: float = 10.0
    """How long past its deadline (or its hold) a silent worker is presumed dead (not from env)."""
    store: str = "sqlite"
    """``sqlite`` (durable, the default), ``memory``, or ``postgres`` (shared by instances)."""
    db_path: str = "./data/jobs.sqlite3"
    db_synchronous: str = "normal"
    database_url: str | None = field(default=None, repr=False)
    """PostgreSQL connection string for ``store="postgres"`` (holds a password: never shown)."""
    db_statement_timeout_s: float = 10.0
    """No PostgreSQL statement may run longer (``store="postgres"``)."""
    lease_ttl_s: float = 30.0
    """How long a claimed job's lease lives without renewal (``store="postgres"``)."""
    poll_interval_s: float = 5.0
    """Fallback poll of the shared queue when no wake-up came (``store="postgres"``)."""
    supabase_url: str | None = None
    """Supabase, where results are stored; ``None``: off, results stay in the job store."""
    supabase_service_role_key: str | None = field(default=None, repr=False)
    supabase_table_videos: str = "videos"
    supabase_table_qudemos: str = "qudemos"
    supabase_table_questions: str = "questions"
    supabase_table_companies: str = "companies"
    supabase_table_user_companies: str = "user_companies"
    supabase_write_attempts: int = 5
    """Writes of one result before its job fails (backoff as for attempts, QUEUE_BACKOFF_*)."""
    supabase_timeout_s: float = 10.0

    def __repr__(self) -> str:
        # Addresses with their credentials hidden; the database URL and the key not at all.
        shown = [f"{f.name}={_shown(f.name, getattr(self, f.name))!r}"
                 for f in dataclasses.fields(self) if f.repr]
        return f"Settings({', '.join(shown)})"

    @property
    def call_hold_s(self) -> float:
        """The hold of an abandoned call, from its start (``abandoned_hold_s`` or its default)."""
        if self.abandoned_hold_s is None:
            return 2 * self.job_timeout_s
        return max(self.abandoned_hold_s, self.job_timeout_s)

    @property
    def python_api_urls(self) -> tuple[str, ...]:
        """Every Python API address (``python_api_base_url`` may list several, comma-separated)."""
        return tuple(u.strip().rstrip("/") for u in self.python_api_base_url.split(",")
                     if u.strip())

    def limits(self, kind: JobKind) -> KindLimits:
        """Return the limits of ``kind``; a new kind adds one line here."""
        match kind:
            case JobKind.VIDEO:
                return KindLimits(
                    self.max_concurrent_videos, self.max_waiting_videos, self.video_priority,
                    self.max_waiting_videos_per_company, self.max_concurrent_videos_per_company,
                )
            case JobKind.QA:
                return KindLimits(self.max_concurrent_qa, self.max_waiting_qa, self.qa_priority,
                                  self.max_waiting_qa_per_company,
                                  self.max_concurrent_qa_per_company)
        raise ValueError(f"unknown job kind {kind!r}")  # pragma: no cover

    @property
    def supabase_enabled(self) -> bool:
        """Whether results are written to Supabase (URL and service role key both set)."""
        return bool(self.supabase_url and self.supabase_service_role_key)

    def supabase_problems(self) -> list[str]:
        """Return what is wrong with the Supabase settings (empty when usable or off)."""
        found: list[str] = []
        if bool(self.supabase_url) != bool(self.supabase_service_role_key):
            found.append("SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY must be set together "
                         "(both, or neither to keep results in the job store only)")
        for env_name, table in (("SUPABASE_TABLE_VIDEOS", self.supabase_table_videos),
                                ("SUPABASE_TABLE_QUDEMOS", self.supabase_table_qudemos),
                                ("SUPABASE_TABLE_QUESTIONS", self.supabase_table_questions),
                                ("SUPABASE_TABLE_COMPANIES", self.supabase_table_companies),
                                ("SUPABASE_TABLE_USER_COMPANIES",
                                 self.supabase_table_user_companies)):
            if not TABLE_NAME.match(table):
                found.append(f"{env_name}={table!r} is not a table name (letters, digits, "
                             "'_', not starting with a digit)")
        return found

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
        merged = merged_environ(environ, dotenv_path)
        reader = EnvReader(merged)
        settings = cls.read(reader)
        if reader.problems:
            secrets = [s for name in SECRET_VARIABLES for s in url_secrets(merged.get(name))]
            raise SettingsError([redact_text(p, secrets) for p in reader.problems])
        warn_superseded(merged)
        return settings

    @classmethod
    def read(cls, env: EnvReader) -> Settings:
        """Read settings through ``env``, leaving problems in ``env.problems``."""
        d = cls()
        num: Callable[..., Any] = env.number
        settings = cls(
            max_concurrent_videos=num("QUEUE_MAX_CONCURRENT_VIDEOS", 2, allow_zero=False),
            max_concurrent_qa=num("QUEUE_MAX_CONCURRENT_QA", 10, allow_zero=False),
            adaptive_concurrency=env.flag("QUEUE_ADAPTIVE_CONCURRENCY", True),
            adaptive_min_concurrency=num("QUEUE_ADAPTIVE_MIN_CONCURRENCY",
                                         d.adaptive_min_concurrency, allow_zero=False),
            adaptive_initial_concurrency=num("QUEUE_ADAPTIVE_INITIAL_CONCURRENCY", 0) or None,
            qa_reserved_concurrency=num("QUEUE_QA_RESERVED_CONCURRENCY",
                                        d.qa_reserved_concurrency),
            adaptive_latency_tolerance=num("QUEUE_ADAPTIVE_LATENCY_TOLERANCE",
                                           d.adaptive_latency_tolerance, integer=False,
                                           minimum=1),
            adaptive_backoff_ratio=num("QUEUE_ADAPTIVE_BACKOFF_RATIO", d.adaptive_backoff_ratio,
                                       integer=False, allow_zero=False, maximum=0.99),
            adaptive_baseline_window_s=env.ms_as_s("QUEUE_ADAPTIVE_BASELINE_WINDOW_MS", 60000),
            video_priority=num("QUEUE_VIDEO_PRIORITY", 2, minimum=1, maximum=3),
            qa_priority=num("QUEUE_QA_PRIORITY", 1, minimum=1, maximum=3),
            max_waiting_videos=num("QUEUE_MAX_WAITING_VIDEOS", d.max_waiting_videos,
                                   allow_zero=False),
            max_waiting_qa=num("QUEUE_MAX_WAITING_QA", d.max_waiting_qa, allow_zero=False),
            max_waiting_videos_per_company=num("QUEUE_MAX_WAITING_VIDEOS_PER_COMPANY",
                                               d.max_waiting_videos_per_company,
                                               allow_zero=False),
            max_waiting_qa_per_company=num("QUEUE_MAX_WAITING_QA_PER_COMPANY",
                                           d.max_waiting_qa_per_company, allow_zero=False),
            company_weights=_company_weights(env),
            max_concurrent_videos_per_company=(
                num("QUEUE_MAX_CONCURRENT_VIDEOS_PER_COMPANY", 1, allow_zero=False)
                if env.raw("QUEUE_MAX_CONCURRENT_VIDEOS_PER_COMPANY") else None),
            max_concurrent_qa_per_company=(
                num("QUEUE_MAX_CONCURRENT_QA_PER_COMPANY", 1, allow_zero=False)
                if env.raw("QUEUE_MAX_CONCURRENT_QA_PER_COMPANY") else None),
            retry_attempts=num("QUEUE_RETRY_ATTEMPTS", 3, allow_zero=False),
            backoff_base_s=env.ms_as_s("QUEUE_BACKOFF_DELAY", 5000, allow_zero=True),
            backoff_max_s=env.ms_as_s("QUEUE_BACKOFF_MAX_MS", 300000),
            backoff_jitter=num("QUEUE_BACKOFF_JITTER", 0.2, integer=False, maximum=1),
            job_timeout_s=env.ms_as_s("QUEUE_JOB_TIMEOUT_MS", 300000),
            abandoned_hold_s=(env.ms_as_s("QUEUE_ABANDONED_HOLD_MS", 600000)
                              if env.raw("QUEUE_ABANDONED_HOLD_MS") else None),
            retry_timed_out_videos=env.flag("QUEUE_RETRY_TIMED_OUT_VIDEOS", False),
            aging_s=env.ms_as_s("QUEUE_AGING_MS", 60000),
            max_memory_mb=num("QUEUE_MAX_MEMORY_MB", 1600, integer=False, allow_zero=False),
            memory_threshold_mb=num("MEMORY_THRESHOLD_MB", 1600, integer=False,
                                    allow_zero=False),
            memory_resume_ratio=num("MEMORY_RESUME_RATIO", 0.9, integer=False,
                                    allow_zero=False, maximum=1),
            memory_check_interval_s=env.ms_as_s("MEMORY_CHECK_INTERVAL_MS", 10000),
            python_api_base_url=(
                env.url_list("PYTHON_API_BASE_URLS", d.python_api_base_url)
                if env.raw("PYTHON_API_BASE_URLS")
                else env.url_list("PYTHON_API_BASE_URL", d.python_api_base_url)
            ),
            breaker_failures=num("PYTHON_API_BREAKER_FAILURES", 3, allow_zero=False),
            breaker_open_s=env.ms_as_s("PYTHON_API_BREAKER_OPEN_MS", 30000),
            python_api_connect_timeout_s=env.ms_as_s("PYTHON_API_CONNECT_TIMEOUT_MS", 5000),
            python_api_status_timeout_s=env.ms_as_s("PYTHON_API_STATUS_TIMEOUT_MS", 2000),
            retention_s=env.ms_as_s("QUEUE_RETENTION_MS", 86400000),
            retention_max_jobs=num("QUEUE_RETENTION_MAX_JOBS", d.retention_max_jobs,
                                   allow_zero=False),
            idempotency_retention_s=env.ms_as_s("QUEUE_IDEMPOTENCY_RETENTION_MS", 86400000),
            drain_timeout_s=env.ms_as_s("QUEUE_DRAIN_TIMEOUT_MS", 30000, allow_zero=True),
            worker_max_restarts=num("WORKER_MAX_RESTARTS", 5),
            worker_restart_window_s=env.ms_as_s("WORKER_RESTART_WINDOW_MS", 60000),
            store=env.choice("QUEUE_STORE", d.store, ("sqlite", "memory", "postgres")),
            db_path=env.text("QUEUE_DB_PATH", d.db_path),
            db_synchronous=env.choice("QUEUE_DB_SYNCHRONOUS", d.db_synchronous,
                                      ("normal", "full")),
            database_url=env.raw("DATABASE_URL"),
            db_statement_timeout_s=env.ms_as_s("QUEUE_DB_STATEMENT_TIMEOUT_MS", 10000),
            lease_ttl_s=env.ms_as_s("QUEUE_LEASE_TTL_MS", 30000),
            poll_interval_s=env.ms_as_s("QUEUE_POLL_INTERVAL_MS", 5000),
            supabase_url=env.url("SUPABASE_URL", "") if env.raw("SUPABASE_URL") else None,
            supabase_service_role_key=env.raw("SUPABASE_SERVICE_ROLE_KEY"),
            supabase_table_videos=env.text("SUPABASE_TABLE_VIDEOS", d.supabase_table_videos),
            supabase_table_qudemos=env.text("SUPABASE_TABLE_QUDEMOS", d.supabase_table_qudemos),
            supabase_table_questions=env.text("SUPABASE_TABLE_QUESTIONS",
                                              d.supabase_table_questions),
            supabase_table_companies=env.text("SUPABASE_TABLE_COMPANIES",
                                              d.supabase_table_companies),
            supabase_table_user_companies=env.text("SUPABASE_TABLE_USER_COMPANIES",
                                                   d.supabase_table_user_companies),
            supabase_write_attempts=num("SUPABASE_WRITE_ATTEMPTS", d.supabase_write_attempts,
                                        allow_zero=False),
            supabase_timeout_s=env.ms_as_s("SUPABASE_TIMEOUT_MS", 10000),
        )
        env.problems.extend(settings.supabase_problems())
        env.check(
            settings.backoff_max_s >= settings.backoff_base_s,
            "QUEUE_BACKOFF_MAX_MS must not be below QUEUE_BACKOFF_DELAY",
        )
        env.check(
            settings.abandoned_hold_s is None
            or settings.abandoned_hold_s >= settings.job_timeout_s,
            "QUEUE_ABANDONED_HOLD_MS must not be below QUEUE_JOB_TIMEOUT_MS (an abandoned call"
            " keeps its slot at least until its deadline)",
        )
        env.problems.extend(settings.capacity_problems())
        env.problems.extend(settings.database_problems())
        return settings

    def capacity_problems(self) -> list[str]:
        """Return what is wrong with the adaptive capacity's settings (empty when usable)."""
        if not self.adaptive_concurrency:
            return []
        found: list[str] = []
        most = self.max_concurrent_videos + self.max_concurrent_qa
        if self.adaptive_min_concurrency > most:
            found.append(f"QUEUE_ADAPTIVE_MIN_CONCURRENCY must not exceed QUEUE_MAX_CONCURRENT_"
                         f"VIDEOS + QUEUE_MAX_CONCURRENT_QA ({most})")
        if self.qa_reserved_concurrency >= self.adaptive_min_concurrency:
            found.append("QUEUE_QA_RESERVED_CONCURRENCY must be below "
                         "QUEUE_ADAPTIVE_MIN_CONCURRENCY (else video could never run at the "
                         "minimum)")
        return found

    def database_problems(self) -> list[str]:
        """Return what is wrong with the PostgreSQL settings (the URL itself is never quoted)."""
        if self.database_url is None:
            return (["QUEUE_STORE=postgres needs DATABASE_URL (a postgresql:// connection string)"]
                    if self.store == "postgres" else [])
        try:
            scheme = urlsplit(self.database_url).scheme
        except ValueError:
            scheme = ""
        if scheme not in ("postgresql", "postgres"):
            return ["DATABASE_URL is not a postgresql:// connection string (value not shown: "
                    "it may hold a password)"]
        return []


def parse_company_weights(text: str) -> tuple[dict[str, float], list[str]]:
    """Parse ``name:weight,name:weight`` (``QUEUE_COMPANY_WEIGHTS``); return weights, problems.

    Names are casefolded like ``Job.company``; a weight is a positive number up to 1000.
    """
    weights: dict[str, float] = {}
    problems: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, sep, value = item.rpartition(":")
        name = name.strip().casefold()
        if not sep or not name:
            problems.append(f"QUEUE_COMPANY_WEIGHTS entry {item!r} is not name:weight")
            continue
        try:
            weight = float(value)
        except ValueError:
            problems.append(f"QUEUE_COMPANY_WEIGHTS weight of {name!r} ({value.strip()!r}) is not"
                            " a number")
            continue
        if not 0 < weight <= MAX_COMPANY_WEIGHT:  # also refuses nan and inf
            problems.append(f"QUEUE_COMPANY_WEIGHTS weight of {name!r} must be above 0 and at"
                            f" most {MAX_COMPANY_WEIGHT:g}")
            continue
        if name in weights:
            problems.append(f"QUEUE_COMPANY_WEIGHTS names {name!r} twice")
        weights[name] = weight
    return weights, problems


def _company_weights(env: EnvReader) -> tuple[tuple[str, float], ...]:
    """Read ``QUEUE_COMPANY_WEIGHTS`` (``name:weight,...``); bad entries are problems."""
    weights, problems = parse_company_weights(env.text("QUEUE_COMPANY_WEIGHTS", ""))
    env.problems.extend(problems)
    return tuple(sorted(weights.items()))


def _shown(name: str, value: Any) -> Any:
    """Return a settings value as a repr may show it (addresses redacted)."""
    if name in _ADDRESS_FIELDS and isinstance(value, str):
        return redact_urls(value)
    return value
