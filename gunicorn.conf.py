"""gunicorn configuration: ``gunicorn -c gunicorn.conf.py wsgi:app``.

One worker process with threads by default: with the SQLite or memory store
job state and the actors live in that process, so a second worker would mean a
second queue with its own limits. With ``QUEUE_STORE=postgres`` the queue is
in the database and shared, so ``WEB_CONCURRENCY`` workers (2 by default) each
run an instance of the job system against it, within the same global limits.
The app (and its actors) is created after the fork (``preload_app`` off) and
stopped in ``worker_exit``. SIGTERM drains: the job system refuses new jobs at
once (503 with Retry-After), running jobs get ``QUEUE_DRAIN_TIMEOUT_MS`` from the
signal to finish. SIGHUP reloads: gunicorn boots the new worker before it stops the
old one; with the SQLite store the new worker's boot waits (``post_fork``) until the
old one has drained and released the store.

Environment: ``PORT`` (5000), ``HOST`` (0.0.0.0), ``GUNICORN_THREADS`` (8),
``GUNICORN_TIMEOUT`` (30 s), ``WEB_CONCURRENCY`` (postgres store only, 2),
``QUEUE_DRAIN_TIMEOUT_MS`` (30000; the graceful timeout is this plus 5 s),
``GUNICORN_ACCESS_LOG`` ("-" for stdout, empty for none),
``LOG_LEVEL`` (info), ``LOG_FORMAT`` (``text``, or ``json``: one JSON object per line, job
lifecycle lines with job_id, kind, attempt and event). With ``METRICS_PORT`` set, one
worker also serves ``/metrics`` on that port (``web.metrics.serve_separately``; the others
keep trying to bind it, so one takes over when it exits). With several workers, the master
makes a fresh directory for prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
kept across reloads, removed at exit) and every scrape reports all the workers
(``web.metrics_shared``).

A bad configuration stops gunicorn, with exit status 3 and one line naming every bad
variable (no secret quoted): ``on_starting`` checks this file's variables and every setting
of the app (``web.settings.main``, in a child process so that the master imports none of the
app and workers forked after a SIGHUP load its code afresh) before the master binds or
forks. On SIGHUP ``on_reload`` checks again and, when the new configuration is bad, stops
the server (the running workers drain) instead of booting workers that cannot start.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from dotenv import dotenv_values
from gunicorn.errors import HaltServer

from serving import SlowClientLimits, configure

# The environment first, then the same .env the app reads, so that PORT or
# QUEUE_DRAIN_TIMEOUT_MS set there count here too.
_dotenv = {k: v for k, v in dotenv_values(".env").items() if v is not None} if os.path.isfile(
    ".env") else {}


def _get(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value is not None else _dotenv.get(name, default)


CONFIG_ERROR = 3
"""Exit status for a bad configuration (gunicorn's WORKER_BOOT_ERROR, as in wsgi.py)."""
CHECK_TIMEOUT_S = 60
_problems: list[str] = []
"""What is wrong with this file's own variables; reported (with the app's) in on_starting."""


def _int(name: str, default: int, minimum: int = 0, maximum: int | None = None) -> int:
    value = _get(name, "").strip()
    if not value:
        return default
    if not re.fullmatch(r"-?[0-9]{1,9}", value):  # int() also takes ' 5', '1_0', '\u0661'
        _problems.append(f"{name}={value!r} is not an integer")
        return default
    number = int(value)
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        _problems.append(f"{name}={value!r} must be {bounds}")
        return default
    return number


bind = f"{_get('HOST', '0.0.0.0')}:{_int('PORT', 5000, minimum=1, maximum=65535)}"
_shared_store = _get("QUEUE_STORE", "sqlite").strip().lower() == "postgres"
# Several workers only when they share the queue; see the module docstring.
workers = max(1, _int("WEB_CONCURRENCY", 2)) if _shared_store else 1
# gthread, except that a request is read whole in the event loop before a thread serves it,
# under these deadlines (serving.py; README "Slow clients"): slow clients hold no thread.
worker_class = "serving.RequestBufferingWorker"
configure(SlowClientLimits(
    head_timeout_s=_int("HTTP_HEAD_TIMEOUT_MS", 10000, minimum=100) / 1000,
    body_timeout_s=_int("HTTP_BODY_TIMEOUT_MS", 30000, minimum=100) / 1000,
    body_min_rate=_int("HTTP_BODY_MIN_RATE", 1024),
    send_timeout_s=_int("HTTP_SEND_TIMEOUT_MS", 30000, minimum=100) / 1000,
    max_connections_per_client=_int("HTTP_MAX_CONNECTIONS_PER_CLIENT", 0),
))
threads = _int("GUNICORN_THREADS", 8, minimum=1)
timeout = _int("GUNICORN_TIMEOUT", 30)
_drain_s = _int("QUEUE_DRAIN_TIMEOUT_MS", 30000) / 1000
graceful_timeout = int(_drain_s) + 5
keepalive = 5
preload_app = False
accesslog = _get("GUNICORN_ACCESS_LOG", "-") or None
# The access log hides ?access_token= values (the events routes' stream tokens, serving.py).
logger_class = "serving.RedactingLogger"
loglevel = _get("LOG_LEVEL", "info").strip().lower()
if loglevel not in ("debug", "info", "warning", "error", "critical"):
    loglevel = "info"  # so that logging works; the app's check names LOG_LEVEL
_log_format = _get("LOG_FORMAT", "text").strip().lower()
limit_request_line = 8190
limit_request_fields = 100
# gunicorn's runtime control socket (gunicornc) is not used, and one fixed path per user
# would make two instances on one machine collide.
control_socket_disable = True

# Application logs: one line each, with the thread (actor) that wrote it; LOG_FORMAT=json
# makes every line (gunicorn's too) one JSON object (actors.runtime.logs.JsonFormatter).
_formatters: dict[str, dict[str, str]] = {
    "plain": {
        "format": "%(asctime)s %(levelname)s [%(process)d %(threadName)s] %(name)s: "
                  "%(message)s",
    },
    "json": {"()": "actors.runtime.logs.JsonFormatter"},
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


def on_starting(server: Any) -> None:
    """Stop here, before binding or forking, when any setting is bad (exit status 3)."""
    problems = _all_problems()
    if problems:
        sys.stderr.write(f"qudemo-jobs: invalid configuration: {'; '.join(problems)}\n")
        sys.stderr.flush()
        if server.pidfile is not None:
            server.pidfile.unlink()
        raise SystemExit(CONFIG_ERROR)
    _share_metrics(server, fresh=True)


def on_reload(server: Any) -> None:
    """On SIGHUP: when the configuration went bad, stop (old workers drain) with the reason."""
    problems = _all_problems()
    if problems:
        raise HaltServer(f"invalid configuration: {'; '.join(problems)}", CONFIG_ERROR)
    _share_metrics(server, fresh=False)


METRICS_DIR_PREFIX = "qudemo-metrics-"
"""The shared metrics directory's name starts so; only such a directory is ever removed."""


def _share_metrics(server: Any, *, fresh: bool) -> None:
    """With several workers, make the directory they share their metrics in.

    Set before any worker is forked, so that each worker's prometheus-client starts in
    multiprocess mode (``web.metrics_shared``). A new directory at start, so that no earlier
    run's counts are summed; kept across a reload, so that counters go on. With one worker
    nothing changes: it renders its own registry.
    """
    if server.cfg.workers <= 1 or (not fresh and _metrics_dir() is not None):
        return
    try:
        directory = tempfile.mkdtemp(prefix=METRICS_DIR_PREFIX)  # mode 0700: this user's only
    except OSError as exc:  # metrics are no reason not to serve
        server.log.warning("metrics: no directory to share them (%s); each /metrics answer "
                           "is one worker's", exc)
        return
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = directory


def _metrics_dir() -> str | None:
    """Return the shared metrics directory this master made, if any."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
    if os.path.basename(directory).startswith(METRICS_DIR_PREFIX) and os.path.isdir(directory):
        return directory
    return None


def child_exit(server: Any, worker: Any) -> None:
    """Drop an exited worker's gauges from the shared metrics (its counts stay in the sums)."""
    directory = _metrics_dir()
    if directory is not None:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(worker.pid, directory)


def on_exit(server: Any) -> None:
    """Remove the shared metrics directory."""
    directory = _metrics_dir()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)


def _all_problems() -> list[str]:
    """Return this file's problems and the app's, each once, in order."""
    return list(dict.fromkeys([*_problems, *_app_problems()]))


def _app_problems() -> list[str]:
    """Return what ``web.settings.main`` finds wrong, run in a child process.

    The child sees this process's environment, working directory and import path (with
    ``--pythonpath`` and ``chdir``), so it reads the same ``.env`` the worker will. If it
    cannot run at all, the worker checks the settings itself (and halts gunicorn).
    """
    path = os.pathsep.join(p for p in sys.path if p)
    code = "import web.settings as s; raise SystemExit(s.main())"
    try:
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": path}, timeout=CHECK_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        logging.getLogger("gunicorn.error").warning(
            "settings not checked before forking (%s); the worker checks them", exc)
        return []
    if done.returncode == CONFIG_ERROR:
        return [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0:
        # Its output is not shown: a traceback may quote a secret. The worker meets the
        # same failure and reports it (and exits with status 3, which stops gunicorn).
        logging.getLogger("gunicorn.error").warning(
            "settings not checked before forking (the check exited with status %s); the "
            "worker checks them", done.returncode)
    return []


def _extension(worker: Any) -> Any:
    app = getattr(worker, "wsgi", None)
    return getattr(app, "extensions", {}).get("qudemo")


def post_fork(server: Any, worker: Any) -> None:
    """On a reload, make the new worker wait for the old one to hand over the SQLite store.

    gunicorn forks the new worker before it sends SIGTERM to the old one, which owns the
    store's lock until it has drained and stopped. Without waiting, the new worker's
    boot fails and gunicorn halts the master. The workers forked before this one and
    still running are its predecessors: the store waits for the lock (up to the graceful
    timeout, by which the old one has released it) instead of refusing at once. The boot
    waits, so nothing is answered 503 for want of a store: the old worker answers what it
    has accepted, new connections wait in the listen queue until this worker serves.

    An old worker that has not let go by then: this one exits with status 1, which does
    not halt gunicorn; the master starts a fresh worker once the old one is gone (it kills
    a hung one after ``timeout``), and that one, with no predecessor, takes the store.
    """
    previous = sorted(pid for pid in server.WORKERS if pid != worker.pid)
    if _get("QUEUE_STORE", "sqlite").strip().lower() != "sqlite" or not previous:
        return
    from actors.stores.sqlite import expect_handover

    def heartbeat() -> None:
        worker.notify()  # a boot waiting for the store is not a hung worker
        if not worker.alive:  # told to stop while waiting: exit, nothing started yet
            raise SystemExit(0)

    def on_timeout() -> None:
        server.log.error("worker %s exits without the job store; a fresh worker takes it "
                         "once the previous one has gone", worker.pid)
        raise SystemExit(1)  # not 3 (a boot error halts the master)

    pids = ", ".join(str(pid) for pid in previous)
    expect_handover(f"the previous worker (pid {pids})", float(server.cfg.graceful_timeout),
                    heartbeat=heartbeat, on_timeout=on_timeout)


def post_worker_init(worker: Any) -> None:
    """Make SIGTERM start the drain at once, before gunicorn stops accepting."""
    original = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        if getattr(worker, "qudemo_drain_until", None) is None:
            # The drain timeout counts from the signal, not from worker_exit (after the
            # open connections): the old worker of a reload releases the store in time.
            worker.qudemo_drain_until = time.monotonic() + _drain_s
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
        from web.metrics_shared import share_across_workers

        directory = _metrics_dir()
        if worker.cfg.workers > 1 and directory is not None:
            share_across_workers(app, directory)  # before serving: the port serves it too
        # Only when METRICS_PORT is set; a sibling worker may hold it: take over when it exits.
        serve_separately(app, _get("HOST", "0.0.0.0"), keep_trying=True)


def worker_exit(server: Any, worker: Any) -> None:
    """Drain and stop the actors: running jobs get the drain timeout to finish.

    The drain timeout counts from SIGTERM when there was one; what is still running
    when it ends is cut, and stays in the store for the next start (or the new worker
    of a reload) to recover.
    """
    ext = _extension(worker)
    if ext is not None:
        from web.metrics import stop_separate_server
        from web.metrics_shared import stop_sharing

        stop_separate_server(worker.wsgi)  # at once: a sibling takes the port over
        until = getattr(worker, "qudemo_drain_until", None)
        left_s = _drain_s if until is None else max(0.0, until - time.monotonic())
        ext.shutdown(drain=True, timeout_s=left_s)
        stop_sharing(worker.wsgi)  # after the drain, which the gauges show until then
