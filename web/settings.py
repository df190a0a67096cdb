"""Settings of the web layer, read once from the environment together with the core's.

``load_settings`` reads ``actors.model.settings.Settings`` and ``WebSettings`` through one
``EnvReader`` so that a bad deployment is told about every bad variable at once.

Decisions worth knowing (the README's configuration table repeats them):

* ``CORS_ORIGINS`` defaults to nothing: no ``Access-Control-Allow-*`` header is sent, so
  browsers allow only same-origin pages. List origins (``https://app.example.com``,
  comma-separated) to open the API to a web client on another origin; ``*`` is accepted
  but never with credentials (the API uses bearer tokens, not cookies).
* ``VIDEO_URL_ALLOWED_HOSTS`` entries match a URL's host exactly (case-insensitive, one
  trailing dot ignored). An entry written ``*.example.com`` matches every subdomain of
  ``example.com`` but not ``example.com`` itself; list both if both are wanted. IP
  literals are refused as entries, as they are in URLs.
* ``JWT_SECRET`` unset outside production turns authentication off (every request acts
  as the local admin, see ``web.auth``); in production it is required. A secret shorter
  than 32 bytes is refused everywhere: HS256 needs a key at least as long as its hash.
* ``METRICS_ACCESS`` is ``admin`` (the default: ``/metrics`` needs an admin token, or
  nothing when authentication is off) or ``public``. ``METRICS_PORT`` serves the metrics
  on a separate bind instead (no token; keep that port private), and the main port's
  ``/metrics`` then answers 404 (see ``web.metrics``).
* ``LOG_FORMAT`` is ``text`` (the default) or ``json``: one JSON object per line, with
  ``job_id``, ``kind``, ``attempt`` and ``event`` on job lifecycle lines.
* A message about a bad value never quotes a secret: the values of ``SECRET_VARIABLES``
  and the credentials in any URL (``user:password@``, ``?password=``) are shown as ``***``
  (``redact``).
* A bad configuration stops the server: gunicorn's master runs ``main`` in a child process
  before it binds or forks (``gunicorn.conf.py``), and a worker that finds one anyway exits
  with ``EXIT_CONFIG_ERROR``, gunicorn's code for "halt, do not boot another worker".
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from actors.model.errors import SettingsError
from actors.model.settings import EnvReader, Settings, merged_environ, warn_superseded
from actors.runtime.logs import JsonFormatter
from actors.runtime.redact import redact_text, url_secrets
from web.sse import StreamSettings
from web.video_urls import is_ip_literal, valid_hostname

logger = logging.getLogger(__name__)

DEFAULT_VIDEO_HOSTS: tuple[str, ...] = (
    "youtube.com", "www.youtube.com", "m.youtube.com", "youtu.be",
    "loom.com", "www.loom.com", "vimeo.com", "player.vimeo.com",
)
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
LOG_FORMATS = ("text", "json")
METRICS_ACCESS = ("admin", "public")
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"
MIN_JWT_SECRET_BYTES = 32
DEFAULT_READ_MAX_REQUESTS = 18000
"""Reads per client per window by default: 20 a second over the default 15 minutes."""
SECRET_VARIABLES = ("JWT_SECRET", "SUPABASE_SERVICE_ROLE_KEY", "DATABASE_URL",
                    "RATE_LIMIT_STORAGE_URI")
"""Variables whose values are secrets or may hold one: never quoted in a message."""
EXIT_CONFIG_ERROR = 3
"""Exit status for a bad configuration: gunicorn's ``Arbiter.WORKER_BOOT_ERROR``, on which
the master stops instead of booting another worker."""
ADDRESS_VARIABLES = ("PYTHON_API_BASE_URL", "PYTHON_API_BASE_URLS", "SUPABASE_URL")
"""Variables holding addresses: only the credentials in them are secret."""


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSettings:
    """Configuration of the HTTP layer; build with ``load_settings`` or directly in tests."""

    jwt_secret: str | None = field(default=None, repr=False)
    environment: str = "development"
    cors_origins: tuple[str, ...] = ()
    rate_limit_max_requests: int = 200
    rate_limit_read_max_requests: int | None = None
    """The reads budget (``web.limits``). ``None`` (unset) becomes, at construction,
    ``DEFAULT_READ_MAX_REQUESTS`` or ``rate_limit_max_requests`` if that is larger: a
    deployment that raised the one shared budget of earlier versions keeps at least that
    much for its reads."""
    rate_limit_window_s: int = 900
    rate_limit_storage_uri: str = "memory://"
    trust_proxy: int = 0
    video_url_allowed_hosts: tuple[str, ...] = DEFAULT_VIDEO_HOSTS
    max_body_bytes: int = 65536
    log_level: str = "info"
    log_format: str = "text"
    metrics_access: str = "admin"
    metrics_port: int | None = None

    @property
    def production(self) -> bool:
        """Whether this runs in production (``APP_ENV``/``NODE_ENV`` is ``production``)."""
        return self.environment == "production"

    @property
    def auth_enabled(self) -> bool:
        """Whether bearer tokens are required (a ``JWT_SECRET`` is set)."""
        return self.jwt_secret is not None

    @property
    def rate_limit(self) -> str:
        """The general budget in flask-limiter's notation, e.g. ``200 per 900 second``."""
        return f"{self.rate_limit_max_requests} per {self.rate_limit_window_s} second"

    def __post_init__(self) -> None:
        if self.rate_limit_read_max_requests is None:
            # Resolved here, not in a property, so that settings read from an environment
            # that spells the default out equal those read from one that leaves it unset.
            object.__setattr__(self, "rate_limit_read_max_requests",
                               max(DEFAULT_READ_MAX_REQUESTS, self.rate_limit_max_requests))

    @property
    def read_max_requests(self) -> int:
        """Reads of jobs and queues allowed per client per window (``web.limits``)."""
        assert self.rate_limit_read_max_requests is not None  # resolved in __post_init__
        return self.rate_limit_read_max_requests

    @property
    def read_rate_limit(self) -> str:
        """The reads budget in flask-limiter's notation, e.g. ``18000 per 900 second``."""
        return f"{self.read_max_requests} per {self.rate_limit_window_s} second"

    def problems(self) -> list[str]:
        """Return what is wrong with these values (empty when they are usable)."""
        found: list[str] = []
        if not self.jwt_secret and self.environment != "development":
            # Fails closed: without a secret every caller would be the local admin. Only
            # an explicit APP_ENV=development (a laptop) runs like that.
            shown = self.environment or "unset"
            found.append(f"JWT_SECRET is required (APP_ENV is {shown}); only APP_ENV=development"
                         " runs without authentication, every caller acting as the local admin")
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < MIN_JWT_SECRET_BYTES:
            found.append(f"JWT_SECRET must be at least {MIN_JWT_SECRET_BYTES} bytes for HS256 "
                         "(python -c 'import secrets; print(secrets.token_hex(32))')")
        for origin in self.cors_origins:
            if origin != "*" and not _is_origin(origin):
                found.append(f"CORS_ORIGINS entry {redact(origin)!r} is not an origin such as "
                             "https://app.example.com")
        for host in self.video_url_allowed_hosts:
            bare = host[2:] if host.startswith("*.") else host
            if is_ip_literal(bare) or not valid_hostname(bare):
                found.append(f"VIDEO_URL_ALLOWED_HOSTS entry {host!r} is not a host name")
        if not self.video_url_allowed_hosts:
            found.append("VIDEO_URL_ALLOWED_HOSTS must list at least one host")
        scheme = self.rate_limit_storage_uri.split("://", 1)[0]
        if "://" not in self.rate_limit_storage_uri or scheme not in _storage_schemes():
            found.append(f"RATE_LIMIT_STORAGE_URI={redact(self.rate_limit_storage_uri)!r} is "
                         "not a storage URI such as memory:// or redis://host:6379")
        elif missing := _storage_missing_package(scheme):
            found.append(f"RATE_LIMIT_STORAGE_URI={redact(self.rate_limit_storage_uri)!r} "
                         f"needs the Python package {missing} (pip install {missing})")
        if self.rate_limit_read_max_requests is not None and self.rate_limit_read_max_requests < 1:
            found.append("RATE_LIMIT_READ_MAX_REQUESTS must be greater than zero")
        if self.log_level not in LOG_LEVELS:
            found.append(f"LOG_LEVEL={self.log_level!r} must be one of {', '.join(LOG_LEVELS)}")
        if self.log_format not in LOG_FORMATS:
            found.append(f"LOG_FORMAT={self.log_format!r} must be one of {', '.join(LOG_FORMATS)}")
        if self.metrics_access not in METRICS_ACCESS:
            found.append(f"METRICS_ACCESS={self.metrics_access!r} must be one of "
                         f"{', '.join(METRICS_ACCESS)}")
        if self.metrics_port is not None and not 1 <= self.metrics_port <= 65535:
            found.append(f"METRICS_PORT={self.metrics_port} must be a port from 1 to 65535")
        return found

    @classmethod
    def read(cls, env: EnvReader) -> WebSettings:
        """Read web settings through ``env``, leaving problems in ``env.problems``."""
        d = cls()
        window_ms = env.number("RATE_LIMIT_WINDOW_MS", 900000, minimum=1000)
        settings = cls(
            jwt_secret=env.raw("JWT_SECRET"),
            # Unset is not development: authentication is off only when asked for.
            environment=(env.raw("APP_ENV") or env.raw("NODE_ENV") or "").strip().lower(),
            cors_origins=tuple(o.rstrip("/") for o in _split(env.raw("CORS_ORIGINS"))),
            rate_limit_max_requests=env.number("RATE_LIMIT_MAX_REQUESTS", 200, allow_zero=False),
            # 0 stands for unset here; an explicit 0 is refused by allow_zero.
            rate_limit_read_max_requests=env.number("RATE_LIMIT_READ_MAX_REQUESTS", 0,
                                                    allow_zero=False) or None,
            # limits counts windows in whole seconds; round up so a window is never shortened.
            rate_limit_window_s=max(1, math.ceil(window_ms / 1000)),
            rate_limit_storage_uri=env.text("RATE_LIMIT_STORAGE_URI", d.rate_limit_storage_uri),
            trust_proxy=env.number("TRUST_PROXY", 0, maximum=10),
            video_url_allowed_hosts=(
                tuple(h.rstrip(".") for h in _split(env.raw("VIDEO_URL_ALLOWED_HOSTS")))
                or d.video_url_allowed_hosts
            ),
            max_body_bytes=env.number("MAX_BODY_BYTES", 65536, minimum=1024,
                                      maximum=16 * 1024 * 1024),
            log_level=env.choice("LOG_LEVEL", d.log_level, LOG_LEVELS),
            log_format=env.choice("LOG_FORMAT", d.log_format, LOG_FORMATS),
            metrics_access=env.choice("METRICS_ACCESS", d.metrics_access, METRICS_ACCESS),
            metrics_port=env.number("METRICS_PORT", 0, maximum=65535) or None,
        )
        env.problems.extend(settings.problems())
        return settings


@dataclass(frozen=True, slots=True)
class AppSettings:
    """Everything the app factory needs: the core's settings and the web layer's."""

    core: Settings = field(default_factory=Settings)
    web: WebSettings = field(default_factory=WebSettings)
    streams: StreamSettings = field(default_factory=StreamSettings)
    """The live event streams' limits (``web.sse``)."""


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv_path: str | None = ".env"
) -> AppSettings:
    """Read core and web settings from ``environ`` (and ``.env``) through one reader.

    Raises:
        SettingsError: naming every variable whose value is bad, core and web alike; no
            secret value is quoted (``redact``).
    """
    merged = merged_environ(environ, dotenv_path)
    reader = EnvReader(merged)
    core = Settings.read(reader)
    web = WebSettings.read(reader)
    streams = StreamSettings.read(reader)
    if reader.problems:
        secrets = [merged.get(name) or "" for name in SECRET_VARIABLES]
        secrets += [part for name in ADDRESS_VARIABLES for part in url_secrets(merged.get(name))]
        raise SettingsError([redact(problem, secrets) for problem in reader.problems])
    warn_superseded(merged)
    return AppSettings(core=core, web=web, streams=streams)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Return ``text`` with each of ``secrets`` and every credential in a URL as ``***``.

    A URL's user information is hidden whole (``redis://***@host``; a token is often the
    user name), and so are the values of ``password``, ``token``, ``key`` and similar query
    parameters. Secrets shorter than 4 characters are not searched for: no message quotes
    one, and replacing them would garble the text. The one helper is ``actors.runtime.redact``.
    """
    return redact_text(text, secrets)


def main() -> int:
    """Check the environment's settings as the server would; print each problem on a line.

    Returns ``EXIT_CONFIG_ERROR`` when there is one, else 0. gunicorn.conf.py runs this in
    a child process of the master (``python -c "import web.settings as s;
    raise SystemExit(s.main())"``), so that the master itself imports none of the app.
    """
    try:
        load_settings()
    except SettingsError as exc:
        sys.stdout.write("".join(f"{problem}\n" for problem in exc.problems))
        return EXIT_CONFIG_ERROR
    return 0


def configure_logging(settings: WebSettings) -> None:
    """Set up root logging at ``LOG_LEVEL`` in ``LOG_FORMAT``, unless already configured.

    Under gunicorn the root logger already has ``logconfig_dict``'s handler (same level
    and format), so only the level is set here.
    """
    handler = logging.StreamHandler()
    handler.setFormatter(log_formatter(settings.log_format))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler])
    logging.getLogger().setLevel(settings.log_level.upper())


def log_formatter(log_format: str) -> logging.Formatter:
    """Return the formatter of ``LOG_FORMAT``: JSON lines or text with thread names."""
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_LOG_FORMAT)


def _split(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(item.strip().lower() for item in value.split(",") if item.strip())


def _is_origin(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not parts.path.strip("/")
        and not parts.query
        and not parts.fragment
        and "@" not in parts.netloc
    )


def _storage_schemes() -> frozenset[str]:
    import limits.storage  # only needed while validating

    # limits keeps its registry of schemes in a module attribute it does not export.
    registered = getattr(limits.storage, "SCHEMES", None)
    schemes = frozenset(registered or ("memory", "redis", "rediss", "memcached", "mongodb"))
    # flask-limiter is synchronous: an async+ storage would fail on the first request.
    return frozenset(s for s in schemes if not s.startswith("async+"))


def _storage_missing_package(scheme: str) -> str | None:
    """Name the client package the storage of ``scheme`` needs and does not find, if any.

    limits imports it only when the storage is built, in every worker; without this check a
    ``redis://`` URI on an install without ``redis`` would crash each worker at boot instead
    of stopping the server with one line.
    """
    import importlib.util

    import limits.storage

    storage = getattr(limits.storage, "SCHEMES", {}).get(scheme)
    needed = list(getattr(storage, "DEPENDENCIES", None) or ())
    if not needed or any(importlib.util.find_spec(name) is not None for name in needed):
        return None
    return str(needed[0])
