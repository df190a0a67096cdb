"""Celery as a peer: its embedded worker, a ``threads`` pool of ``workers``, on Redis.

The worker is Celery's own in-process one (``celery.contrib.testing.worker.start_worker``,
a ``WorkController`` in a thread, without gossip, mingle and heartbeats, which only matter
between workers), a new one each run. Results are ignored (no result backend). Celery's
defaults otherwise: acknowledged when a task starts, four messages prefetched per pool
thread.

One Celery app serves every run of a process (a second app's embedded worker in the same
process takes its messages off Redis and never runs them), so its one task runs the
current run's job body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.contrib.testing.worker import start_worker

from actors.work.python_api import PythonApiClient
from bench.peers import Countdown, drive, one_job

_apps: dict[str, tuple[Celery, Any]] = {}  # broker URL: (app, its task)
_body: Callable[[], None] | None = None  # the current run's job body


def _app(redis_url: str) -> tuple[Celery, Any]:
    """Return this process's Celery app for ``redis_url`` and its task, made once."""
    if redis_url not in _apps:
        app = Celery("bench", broker=redis_url, set_as_current=False)
        app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True,
                        worker_hijack_root_logger=False)

        @app.task(name="bench.ask")
        def ask() -> None:
            if _body is None:
                raise RuntimeError("no Celery benchmark run is in progress")
            _body()

        _apps[redis_url] = (app, ask)
    return _apps[redis_url]


def run_redis(client: PythonApiClient, jobs: int, workers: int, redis_url: str
              ) -> dict[str, Any]:
    """Run ``jobs`` Celery tasks through a threads-pool worker with a Redis broker."""
    global _body
    app, ask = _app(redis_url)
    countdown = Countdown(jobs)
    _body = one_job(client, countdown)
    try:
        with start_worker(app, pool="threads", concurrency=workers, perform_ping_check=False,
                          loglevel="ERROR", shutdown_timeout=30):
            return drive(countdown, ask.delay)
    finally:
        _body = None
