"""Shared fixtures: a stand-in Python API on 127.0.0.1 and a real job system against it."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pykka
import pytest

from actors import JobSystem, Settings
from tests.standin import PythonApiStandIn


@pytest.fixture
def standin() -> Iterator[PythonApiStandIn]:
    """A fresh stand-in of the Python API contract (DESIGN.md §4)."""
    with PythonApiStandIn() as server:
        yield server


@pytest.fixture
def fast_settings(standin: PythonApiStandIn) -> Settings:
    """Settings pointing at the stand-in, with short delays so tests finish quickly."""
    return Settings(
        python_api_base_url=standin.url,
        store="memory",
        backoff_base_s=0.05,
        backoff_max_s=0.2,
        job_timeout_s=10.0,
        memory_check_interval_s=3600.0,  # tests tick the watchdog themselves
        python_api_status_timeout_s=0.5,
        drain_timeout_s=5.0,
        ask_timeout_s=5.0,
    )


@pytest.fixture
def job_system(fast_settings: Settings) -> Iterator[JobSystem]:
    """A started job system with the in-memory store, stopped after the test."""
    system = JobSystem(fast_settings).start()
    try:
        yield system
    finally:
        system.stop(drain=False)


@pytest.fixture(autouse=True)
def _no_actor_left_behind() -> Iterator[None]:
    """Fail a test that leaves actors running; stop them so the next test starts clean."""
    yield
    leftovers = pykka.ActorRegistry.get_all()
    pykka.ActorRegistry.stop_all(block=True, timeout=5)
    assert not leftovers, f"actors left running: {leftovers}"
    prefixes = ("Dispatcher", "JobRegistry", "MemoryWatchdog", "VideoWorker", "QAWorker", "Timers",
                "PgLeaseKeeper", "PgStatementWatch",
                "PgListener", "PgQueueWrites", "PgQueueReads")
    alive = [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]
    assert not alive, f"actor threads left running: {alive}"
