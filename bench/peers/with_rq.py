"""RQ as a peer: ``workers`` SimpleWorkers, each in a thread of this process, on Redis.

RQ's default ``Worker`` forks a process per job, so it could not use this process's client;
``SimpleWorker`` runs the job in the worker's own thread. Two changes make it run in a
thread: no signal handlers (only the main thread may install them) and RQ's
``TimerDeathPenalty`` for the job timeout (its default uses SIGALRM). RQ's defaults
otherwise: each job is a Redis hash moved through the started and finished registries, its
record and result kept for 500 s. The workers stop after a second without work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from redis import Redis
from rq import Queue, SimpleWorker
from rq.timeouts import TimerDeathPenalty
from rq.worker import WorkerStatus

from actors.work.python_api import PythonApiClient
from bench.common import wait_until
from bench.peers import WAIT_S, Countdown, drive, one_job

_body: Callable[[], None] | None = None  # the current run's job body (see ``ask``)


def ask() -> None:
    """Run the current run's job body: RQ names a job by its import path, not a closure."""
    if _body is None:
        raise RuntimeError("no RQ benchmark run is in progress")
    _body()


class ThreadWorker(SimpleWorker):
    """An RQ SimpleWorker that runs in a thread other than the main one."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        """Install nothing: the benchmark stops its workers, not signals."""


def run_redis(client: PythonApiClient, jobs: int, workers: int, redis_url: str
              ) -> dict[str, Any]:
    """Run ``jobs`` RQ jobs through ``workers`` ThreadWorkers on ``redis_url``."""
    global _body
    connection = Redis.from_url(redis_url)
    queue = Queue("bench", connection=connection)
    countdown = Countdown(jobs)
    _body = one_job(client, countdown)
    pool = [ThreadWorker([queue], connection=connection) for _ in range(workers)]
    threads = [threading.Thread(target=w.work, name=f"rq-{n}", daemon=True,
                                kwargs={"max_idle_time": 1, "logging_level": "ERROR"})
               for n, w in enumerate(pool)]
    for thread in threads:
        thread.start()
    try:
        if not wait_until(lambda: all(w.get_state() == WorkerStatus.IDLE for w in pool), 30):
            raise RuntimeError("the RQ workers did not start")
        return drive(countdown, lambda: queue.enqueue(ask))
    finally:
        for thread in threads:
            thread.join(WAIT_S)
        _body = None
        connection.close()
