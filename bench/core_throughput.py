"""Core throughput: no-op jobs per second through the JobSystem, beside the limit and peers.

A job is one question answered by a stand-in of the Python API that answers at once (in
its own process). ``JobSystem`` runs them through the JobRegistry, the Dispatcher and the
QA worker pool, with the memory and with the SQLite store; ``threadpool`` (the limit),
``dramatiq`` and ``huey`` make the same calls through the same client (``bench.peers``).
Every runner has ``QUEUE_MAX_CONCURRENT_QA`` (10) jobs at a time, submits every job from
one thread, and is timed from the first submission to the last completion. Each runner
runs ``repeat`` times, interleaved; the median counts.

Aim (issue 7): the JobSystem at least 0.5 of the ThreadPoolExecutor, and ahead of both peers.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actors import JobKind, JobSystem, Settings
from actors.runtime.timers import TimerService
from actors.work.python_api import PythonApiClient
from bench import peers
from bench.common import StandInProcess, ratio, write_result

NAME = "core_throughput"
WORKERS = 10


def run_jobsystem(url: str, store: str, jobs: int) -> dict[str, Any]:
    """Submit ``jobs`` questions to a fresh JobSystem; time until every one finished."""
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        settings = Settings(
            python_api_base_url=url, store=store, db_path=str(Path(tmp) / "jobs.sqlite3"),
            max_concurrent_qa=WORKERS, max_waiting_qa=10_000_000,
            retention_max_jobs=10_000_000,
        )
        system = JobSystem(settings).start()
        try:
            registry = system.metrics.registry

            def finished() -> float:
                return sum(registry.get_sample_value(
                    "qudemo_jobs_finished_total", {"kind": "qa", "state": state}) or 0.0
                    for state in ("completed", "failed"))

            pause = threading.Event()
            started = time.perf_counter()
            for _ in range(jobs):
                system.submit(JobKind.QA, peers.QUESTION)
            deadline = time.monotonic() + 600
            while finished() < jobs and time.monotonic() < deadline:
                pause.wait(0.002)
            elapsed = time.perf_counter() - started
            failed = registry.get_sample_value(
                "qudemo_jobs_finished_total", {"kind": "qa", "state": "failed"}) or 0.0
            if finished() < jobs:
                raise RuntimeError(f"only {finished():.0f} of {jobs} jobs finished")
        finally:
            system.stop(drain=False)
    return {"jobs": jobs, "failed": int(failed), "seconds": round(elapsed, 3),
            "jobs_per_s": round(jobs / elapsed, 1)}


def _with_client(url: str, runner: Callable[[PythonApiClient, int, int], dict[str, Any]]
                 ) -> Callable[[int], dict[str, Any]]:
    def run(jobs: int) -> dict[str, Any]:
        timers = TimerService("bench-timers").start()
        client = PythonApiClient(url, timers=timers, pool_size=WORKERS + 2)
        try:
            return runner(client, jobs, WORKERS)
        finally:
            client.close()
            timers.stop()
    return run


def run(jobs: int = 2000, repeat: int = 3) -> dict[str, Any]:
    """Run every runner ``repeat`` times and write ``bench/results/core_throughput.json``."""
    runs: dict[str, list[dict[str, Any]]] = {}
    unavailable: dict[str, str] = {}
    with StandInProcess() as standin:
        runners: dict[str, Callable[[int], dict[str, Any]]] = {
            "threadpool": _with_client(standin.url, peers.run_threadpool),
            "jobsystem_memory": lambda n: run_jobsystem(standin.url, "memory", n),
            "jobsystem_sqlite": lambda n: run_jobsystem(standin.url, "sqlite", n),
        }
        for peer in ("dramatiq", "huey"):
            try:
                __import__(peer)
            except ImportError:
                unavailable[peer] = "not installed (pip install -e '.[bench]')"
                continue
            runners[peer] = _with_client(standin.url, getattr(peers, f"run_{peer}"))
        runners["threadpool"](200)  # warm the stand-in's threads and connections
        for _ in range(repeat):
            for name, runner in runners.items():
                cpu_started = time.process_time()
                result = runner(jobs)
                # CPU of this whole process (every thread) per job: the runs are CPU-bound,
                # so this is what separates the runners.
                result["cpu_ms_per_job"] = round(
                    (time.process_time() - cpu_started) * 1000 / jobs, 3)
                runs.setdefault(name, []).append(result)
    median = {name: statistics.median(r["jobs_per_s"] for r in results)
              for name, results in runs.items()}
    limit = median["threadpool"]
    summary = {name: {"jobs_per_s": value, "vs_threadpool": ratio(value, limit),
                      "runs_jobs_per_s": [r["jobs_per_s"] for r in runs[name]],
                      "cpu_ms_per_job": statistics.median(r["cpu_ms_per_job"]
                                                          for r in runs[name]),
                      "failed": sum(r["failed"] for r in runs[name])}
               for name, value in median.items()}
    peer_best = max((median[p] for p in ("dramatiq", "huey") if p in median), default=None)
    aims = {}
    for store in ("memory", "sqlite"):
        ours = median[f"jobsystem_{store}"]
        aims[f"{store}: >= 0.5 x ThreadPoolExecutor"] = "met" if ours >= 0.5 * limit else "not met"
        ahead = peer_best is not None and ours > peer_best and not unavailable
        aims[f"{store}: ahead of dramatiq and huey"] = "met" if ahead else "not met"
    result = {
        "setup": {"jobs_per_run": jobs, "repeat": repeat, "concurrency": WORKERS,
                  "job": "POST /ask-question to a stand-in answering at once (own process)",
                  "figure": "median jobs/s, first submission to last completion"},
        "results": summary,
        "unavailable": unavailable,
        "aims": aims,
    }
    write_result(NAME, result)
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
