"""The same no-op jobs run by the limit and by two peers, in-process, for core throughput.

A job is one ``POST /ask-question`` through ``actors.work.python_api.PythonApiClient`` (the
client the job system's workers use) to a stand-in that answers at once. Each runner
starts its machinery, then times from the first submission to the last completion, with
``workers`` jobs at a time:

* ``threadpool``: ``concurrent.futures.ThreadPoolExecutor``, the limit (no queue
  bookkeeping, no records, no retries);
* ``dramatiq``: dramatiq's ``StubBroker`` and a ``Worker`` with ``workers`` threads,
  default middleware (retries off, as a no-op job never fails);
* ``huey``: ``MemoryHuey`` and its consumer with ``workers`` threads, defaults otherwise.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from actors.dispatch.attempts import AttemptCall
from actors.work.python_api import PythonApiClient

QUESTION = {"question": "What are the main features?", "company_name": "acme-corp"}
TIMEOUT_S = 300.0


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


def run_threadpool(client: PythonApiClient, jobs: int, workers: int) -> dict[str, Any]:
    """Run ``jobs`` calls on a ThreadPoolExecutor of ``workers`` threads."""
    countdown = Countdown(jobs)
    job = one_job(client, countdown)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        started = time.perf_counter()
        for _ in range(jobs):
            pool.submit(job)
        finished = countdown.wait(600)
        elapsed = time.perf_counter() - started
    return _outcome(countdown, elapsed, finished)


def run_dramatiq(client: PythonApiClient, jobs: int, workers: int) -> dict[str, Any]:
    """Run ``jobs`` dramatiq messages through a StubBroker and a Worker."""
    import dramatiq
    from dramatiq.brokers.stub import StubBroker

    broker = StubBroker()
    broker.emit_after("process_boot")
    countdown = Countdown(jobs)
    body = one_job(client, countdown)

    @dramatiq.actor(broker=broker, max_retries=0, queue_name="bench")
    def ask() -> None:
        body()

    worker = dramatiq.Worker(broker, worker_threads=workers, worker_timeout=100)
    worker.start()
    try:
        started = time.perf_counter()
        for _ in range(jobs):
            ask.send()
        finished = countdown.wait(600)
        elapsed = time.perf_counter() - started
    finally:
        worker.stop()
        broker.close()
    return _outcome(countdown, elapsed, finished)


def run_huey(client: PythonApiClient, jobs: int, workers: int) -> dict[str, Any]:
    """Run ``jobs`` huey tasks through MemoryHuey and its thread consumer."""
    from huey import MemoryHuey

    huey = MemoryHuey("bench", immediate=False)
    countdown = Countdown(jobs)
    body = one_job(client, countdown)

    @huey.task()
    def ask() -> None:
        body()

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM,
                                                        signal.SIGHUP)}
    consumer = huey.create_consumer(workers=workers, worker_type="thread", periodic=False)
    consumer.start()  # installs signal handlers: given back below
    try:
        started = time.perf_counter()
        for _ in range(jobs):
            ask()
        finished = countdown.wait(600)
        elapsed = time.perf_counter() - started
    finally:
        consumer.stop(graceful=True)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return _outcome(countdown, elapsed, finished)


def _outcome(countdown: Countdown, elapsed_s: float, finished: bool) -> dict[str, Any]:
    if not finished:
        raise RuntimeError(f"only {countdown.done} of {countdown.total} jobs finished")
    return {"jobs": countdown.total, "failed": countdown.failed,
            "seconds": round(elapsed_s, 3), "jobs_per_s": round(countdown.total / elapsed_s, 1)}
