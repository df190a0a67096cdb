"""huey as a peer: its thread consumer with ``workers`` threads on MemoryHuey or SqliteHuey.

Defaults otherwise (no periodic tasks). SqliteHuey keeps its queue in a file of a fresh
temporary directory, with huey's defaults: WAL journal, SQLite's default ``synchronous``
(FULL: every commit is flushed to disk; the job system's store defaults to NORMAL).
"""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path
from typing import Any

from huey import Huey, MemoryHuey, SqliteHuey

from actors.work.python_api import PythonApiClient
from bench.peers import Countdown, drive, one_job


def run_memory(client: PythonApiClient, jobs: int, workers: int) -> dict[str, Any]:
    """Run ``jobs`` tasks through MemoryHuey (in memory)."""
    return _run(MemoryHuey("bench", immediate=False), client, jobs, workers)


def run_sqlite(client: PythonApiClient, jobs: int, workers: int) -> dict[str, Any]:
    """Run ``jobs`` tasks through SqliteHuey, in a file of a fresh temporary directory."""
    with tempfile.TemporaryDirectory(prefix="bench-huey-") as tmp:
        huey = SqliteHuey("bench", filename=str(Path(tmp) / "huey.sqlite3"))
        try:
            return _run(huey, client, jobs, workers)
        finally:
            huey.storage.close()


def _run(huey: Huey, client: PythonApiClient, jobs: int, workers: int) -> dict[str, Any]:
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
        return drive(countdown, ask)
    finally:
        consumer.stop(graceful=True)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
