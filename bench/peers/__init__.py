"""The same no-op jobs run by the limit and by peers, in-process, for core throughput.

A job is one ``POST /ask-question`` through ``actors.work.python_api.PythonApiClient`` (the
client the job system's workers use) to a stand-in that answers at once. Each runner starts
its machinery, then times from the first submission to the last completion (``drive``), with
``workers`` jobs at a time, every job submitted from one thread. One module per peer family:

* here, ``threadpool``: ``concurrent.futures.ThreadPoolExecutor``, the limit (no queue
  bookkeeping, no records, no retries);
* ``bench.peers.with_dramatiq``: a ``Worker`` with ``workers`` threads on ``StubBroker`` (in
  memory) or ``RedisBroker`` (durable), default middleware, retries off;
* ``bench.peers.with_huey``: the thread consumer with ``workers`` threads on ``MemoryHuey`` or
  ``SqliteHuey`` (durable, huey's defaults: WAL, SQLite's default ``synchronous``);
* ``bench.peers.with_rq``: ``workers`` RQ ``SimpleWorker`` threads on Redis;
* ``bench.peers.with_celery``: Celery's embedded worker, ``threads`` pool of ``workers``, on
  Redis, results ignored.

``PEERS`` lists every peer with what it needs; the Redis peers get the URL of the
benchmark's own ``redis-server`` (``bench.redis_server``) as ``redis_url``.
"""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from actors.dispatch.attempts import AttemptCall
from actors.work.python_api import PythonApiClient

QUESTION = {"question": "What are the main features?", "company_name": "acme-corp"}
TIMEOUT_S = 300.0
WAIT_S = 600.0


class Countdown:
    """Counts finished jobs; ``wait`` returns when ``total`` have finished."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._all = threading.Event()

    def finish(self, ok: bool = True) -> None:
        """Count one finished job."""
        with self._lock:
            self.done += 1
            self.failed += 0 if ok else 1
            if self.done >= self.total:
                self._all.set()

    def wait(self, timeout_s: float) -> bool:
        """Wait until every job finished; return whether they did."""
        return self._all.wait(timeout_s)


def one_job(client: PythonApiClient, countdown: Countdown) -> Callable[[], None]:
    """Return the job body: ask one question, count the outcome."""

    def job() -> None:
        try:
            client.ask_question(QUESTION, call=AttemptCall("bench", 1, timeout_s=TIMEOUT_S,
                                                           hold_s=TIMEOUT_S))
        except Exception:
            countdown.finish(ok=False)
            raise
        countdown.finish()

    return job


def drive(countdown: Countdown, submit: Callable[[], object]) -> dict[str, Any]:
    """Submit ``countdown.total`` jobs from this thread; time until the last one finished."""
    started = time.perf_counter()
    for _ in range(countdown.total):
        submit()
    finished = countdown.wait(WAIT_S)
    elapsed = time.perf_counter() - started
    if not finished:
        raise RuntimeError(f"only {countdown.done} of {countdown.total} jobs finished")
    return {"jobs": countdown.total, "failed": countdown.failed,
            "seconds": round(elapsed, 3), "jobs_per_s": round(countdown.total / elapsed, 1)}


def run_threadpool(client: PythonApiClient, jobs: int, workers: int) -> dict[str, Any]:
    """Run ``jobs`` calls on a ThreadPoolExecutor of ``workers`` threads."""
    countdown = Countdown(jobs)
    job = one_job(client, countdown)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return drive(countdown, lambda: pool.submit(job))


@dataclass(frozen=True)
class Peer:
    """One peer runner: where it lives, what it needs, how the results name it."""

    name: str  # its key in the results
    label: str  # how the README's table names it
    package: str  # what must be importable for it to run
    durable: bool  # its queue survives a restart (SQLite file or Redis append-only file)
    function: str  # ``module:function``, called as (client, jobs, workers[, redis_url=])
    redis: bool = False  # needs the benchmark's redis-server

    def runner(self) -> Callable[..., dict[str, Any]]:
        """Return the run function (its module is imported now, not before)."""
        module, _, function = self.function.partition(":")
        runner: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module),
                                                        function)
        return runner

    def unavailable(self) -> str | None:
        """Return why this peer cannot run here, or ``None`` when it can."""
        if importlib.util.find_spec(self.package) is None:
            return f"{self.package} not installed (pip install -e '.[bench]')"
        if self.redis and shutil.which("redis-server") is None:
            return "redis-server not found (apt-get install redis-server)"
        return None


PEERS = (
    Peer("dramatiq_stub", "dramatiq, StubBroker", "dramatiq", False,
         "bench.peers.with_dramatiq:run_stub"),
    Peer("huey_memory", "huey, MemoryHuey", "huey", False, "bench.peers.with_huey:run_memory"),
    Peer("huey_sqlite", "huey, SqliteHuey", "huey", True, "bench.peers.with_huey:run_sqlite"),
    Peer("dramatiq_redis", "dramatiq, RedisBroker", "dramatiq", True,
         "bench.peers.with_dramatiq:run_redis", redis=True),
    Peer("rq_redis", "RQ, Redis", "rq", True, "bench.peers.with_rq:run_redis", redis=True),
    Peer("celery_redis", "Celery, Redis broker", "celery", True,
         "bench.peers.with_celery:run_redis", redis=True),
)
