"""dramatiq as a peer: a ``Worker`` of ``workers`` threads on a StubBroker or a RedisBroker.

Default middleware, retries off (a no-op job never fails), results not kept (dramatiq keeps
none without its Results middleware). A RedisBroker acknowledges a message after the job
ran; the StubBroker keeps its queues in this process.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker

from actors.work.python_api import PythonApiClient
from bench.peers import Countdown, drive, one_job


def run_stub(client: PythonApiClient, jobs: int, workers: int) -> dict[str, Any]:
    """Run ``jobs`` messages through a StubBroker (in memory)."""
    return _run(StubBroker(), client, jobs, workers)


def run_redis(client: PythonApiClient, jobs: int, workers: int, redis_url: str
              ) -> dict[str, Any]:
    """Run ``jobs`` messages through a RedisBroker on ``redis_url``."""
    return _run(RedisBroker(url=redis_url), client, jobs, workers)


def _run(broker: dramatiq.Broker, client: PythonApiClient, jobs: int, workers: int
         ) -> dict[str, Any]:
    broker.emit_after("process_boot")
    countdown = Countdown(jobs)
    body = one_job(client, countdown)

    @dramatiq.actor(broker=broker, max_retries=0, queue_name="bench")
    def ask() -> None:
        body()

    worker = dramatiq.Worker(broker, worker_threads=workers, worker_timeout=100)
    worker.start()
    try:
        return drive(countdown, ask.send)
    finally:
        worker.stop()
        broker.close()
