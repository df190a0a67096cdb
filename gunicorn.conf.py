"""gunicorn configuration: ``gunicorn -c gunicorn.conf.py wsgi:app``.

One worker process with threads by default: with the SQLite or memory store
job state and the actors live in that process, so a second worker would mean a
second queue with its own limits. With ``QUEUE_STORE=postgres`` the queue is
in the database and shared, so ``WEB_CONCURRENCY`` workers (2 by default) each
run an instance of the job system against it, within the same global limits.
The app (and its actors) is created after the fork (``preload_app`` off) and
stopped in ``worker_exit``. SIGTERM drains: the job system refuses new jobs at
once (503 with Retry-After), running jobs get the graceful timeout to finish.

Environment: ``PORT`` (5000), ``HOST`` (0.0.0.0), ``GUNICORN_THREADS`` (8),
``GUNICORN_TIMEOUT`` (30 s), ``WEB_CONCURRENCY`` (postgres store only, 2),
``QUEUE_DRAIN_TIMEOUT_MS`` (30000; the graceful timeout is this plus 5 s),
``GUNICORN_ACCESS_LOG`` ("-" for stdout, empty for none),
``LOG_LEVEL`` (info), ``LOG_FORMAT`` (``text``, or ``json``: one JSON object per line, job
lifecycle lines with job_id, kind, attempt and event). With ``METRICS_PORT`` set, the
worker also serves ``/metrics`` on that port (``web.metrics.serve_separately``).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

from dotenv import dotenv_values

# The environment first, then the same .env the app reads, so that PORT or
# QUEUE_DRAIN_TIMEOUT_MS set there count here too.
_dotenv = {k: v for k, v in dotenv_values(".env").items() if v is not None} if os.path.isfile(
    ".env") else {}


def _get(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value is not None else _dotenv.get(name, default)


def _int(name: str, default: int) -> int:
    value = _get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"invalid configuration: {name}={value!r} is not an integer") from None


bind = f"{_get('HOST', '0.0.0.0')}:{_int('PORT', 5000)}"
_shared_store = _get("QUEUE_STORE", "sqlite").strip().lower() == "postgres"
# Several workers only when they share the queue; see the module docstring.
workers = max(1, _int("WEB_CONCURRENCY", 2)) if _shared_store else 1
worker_class = "gthread"
threads = _int("GUNICORN_THREADS", 8)
timeout = _int("GUNICORN_TIMEOUT", 30)
_drain_s = _int("QUEUE_DRAIN_TIMEOUT_MS", 30000) / 1000
graceful_timeout = int(_drain_s) + 5
keepalive = 5
preload_app = False
accesslog = _get("GUNICORN_ACCESS_LOG", "-") or None
loglevel = _get("LOG_LEVEL", "info").lower()
_log_format = _get("LOG_FORMAT", "text").strip().lower()
limit_request_line = 8190
limit_request_fields = 100
# gunicorn's runtime control socket (gunicornc) is not used, and one fixed path per user
# would make two instances on one machine collide.
control_socket_disable = True

# Application logs: one line each, with the thread (actor) that wrote it; LOG_FORMAT=json
# makes every line (gunicorn's too) one JSON object (actors.logs.JsonFormatter).
_formatters: dict[str, dict[str, str]] = {
    "plain": {
        "format": "%(asctime)s %(levelname)s [%(process)d %(threadName)s] %(name)s: "
                  "%(message)s",
    },
    "json": {"()": "actors.logs.JsonFormatter"},
}
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"line": _formatters["json" if _log_format == "json" else "plain"]},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "line",
                    "stream": "ext://sys.stderr"},
    },
    "root": {"level": loglevel.upper(), "handlers": ["console"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": ["console"],
                           "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["console"], "propagate": False},
    },
}

if not _shared_store and _int("WEB_CONCURRENCY", 1) > 1:
    logging.getLogger("gunicorn.error").warning(
        "WEB_CONCURRENCY > 1 ignored: with the %s store the job queue lives in one process;"
        " use threads, or QUEUE_STORE=postgres to share the queue between workers",
        _get("QUEUE_STORE", "sqlite"))


def _extension(worker: Any) -> Any:
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("qudemo")


def post_worker_init(worker: Any) -> None:
    """Make SIGTERM start the drain at once, before gunicorn stops accepting."""
    original = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        ext = _extension(worker)
        if ext is not None:
            # A thread, not the handler itself: a handler must not take the locks
            # the interrupted code may hold.
            threading.Thread(target=ext.begin_drain, name="drain-signal").start()
        if callable(original):
            original(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    app = getattr(worker, "wsgi", None)
    if _extension(worker) is not None:
        from web.metrics import serve_separately

        serve_separately(app, _get("HOST", "0.0.0.0"))  # only when METRICS_PORT is set


def worker_exit(server: Any, worker: Any) -> None:
    """Drain and stop the actors: running jobs get the drain timeout to finish."""
    ext = _extension(worker)
    if ext is not None:
        from web.metrics import stop_separate_server

        stop_separate_server(worker.wsgi)
        ext.shutdown(drain=True, timeout_s=_drain_s)
