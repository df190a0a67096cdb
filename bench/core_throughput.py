"""Core throughput: no-op jobs per second through the JobSystem, beside the limit and peers.

A job is one question answered by a stand-in of the Python API that answers at once (in
its own process). ``JobSystem`` runs them through the JobRegistry, the Dispatcher and the
QA worker pool, with the memory and with the SQLite store; ``threadpool`` (the limit) and
every peer of ``bench.peers.PEERS`` make the same calls through the same client: dramatiq
and huey in memory, huey on SQLite, dramatiq, RQ and Celery on a local ``redis-server``
(``bench.redis_server``, started here, emptied before each run). Every runner has
``QUEUE_MAX_CONCURRENT_QA`` (10) jobs at a time, submits every job from one thread, and is
timed from the first submission to the last completion. Each runner runs ``repeat`` times,
interleaved; the median counts. Each run also records this process's CPU time per job
(every thread: the runs are CPU-bound) and, for the Redis peers, redis-server's.

Aims: the JobSystem at least 0.5 of the ThreadPoolExecutor (issue 7); issue 19: the memory
store more jobs/s and less CPU per job than each in-memory peer, the SQLite store more jobs/s
than each durable peer and at least 0.8 of the memory store.
"""

from __future__ import annotations

import contextlib
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
from bench.redis_server import RedisServer, redis_version

NAME = "core_throughput"
WORKERS = 10
LABELS = {"threadpool": "ThreadPoolExecutor", "jobsystem_memory": "memory store",
          "jobsystem_sqlite": "SQLite store"}


def run_jobsystem(url: str, store: str, jobs: int) -> dict[str, Any]:
    """Submit ``jobs`` questions to a fresh JobSystem; time until every one finished."""
    with tempfile.TemporaryDirectory(prefix="bench-core-") as tmp:
        settings = Settings(
            python_api_base_url=url, store=store, db_path=str(Path(tmp) / "jobs.sqlite3"),
            max_concurrent_qa=WORKERS, max_waiting_qa=10_000_000,
            max_waiting_qa_per_company=10_000_000,  # every job is one company's
            retention_max_jobs=10_000_000,
        )
        system = JobSystem(settings).start()
        try:
            # The two counters' children, collected alone: the registry's get_sample_value
            # collects every metric (about 0.25 ms a call, every 2 ms of the run: the
            # harness's cost, not the runner's).
            done = [system.metrics.finished.labels("qa", state)
                    for state in ("completed", "failed")]

            def finished() -> float:
                return sum(child.collect()[0].samples[0].value for child in done)

            pause = threading.Event()
            started = time.perf_counter()
            for _ in range(jobs):
                system.submit(JobKind.QA, peers.QUESTION)
            deadline = time.monotonic() + 600
            while finished() < jobs and time.monotonic() < deadline:
                pause.wait(0.002)
            elapsed = time.perf_counter() - started
            failed = done[1].collect()[0].samples[0].value
            if finished() < jobs:
                raise RuntimeError(f"only {finished():.0f} of {jobs} jobs finished")
        finally:
            system.stop(drain=False)
    return {"jobs": jobs, "failed": int(failed), "seconds": round(elapsed, 3),
            "jobs_per_s": round(jobs / elapsed, 1)}


def _with_client(url: str, runner: Callable[..., dict[str, Any]],
                 redis: RedisServer | None = None) -> Callable[[int], dict[str, Any]]:
    """Bind ``runner`` to a fresh client (and an emptied Redis server, when it has one)."""

    def run(jobs: int) -> dict[str, Any]:
        extra = {}
        if redis is not None:
            redis.flush()
            extra["redis_url"] = redis.url
        timers = TimerService("bench-timers").start()
        client = PythonApiClient(url, timers=timers, pool_size=WORKERS + 2)
        try:
            return runner(client, jobs, WORKERS, **extra)
        finally:
            client.close()
            timers.stop()

    return run


def _measure(runner: Callable[[int], dict[str, Any]], jobs: int,
             redis: RedisServer | None) -> dict[str, Any]:
    """Run once; add this process's CPU per job (and redis-server's, for a Redis peer)."""
    cpu_started = time.process_time()
    redis_started = redis.cpu_s() if redis is not None else 0.0
    result = runner(jobs)
    # CPU of this whole process (every thread) per job: the runs are CPU-bound, so this is
    # what separates the runners. The stand-in's CPU is no runner's.
    result["cpu_ms_per_job"] = round((time.process_time() - cpu_started) * 1000 / jobs, 3)
    if redis is not None:
        result["redis_cpu_ms_per_job"] = round((redis.cpu_s() - redis_started) * 1000 / jobs, 3)
    return result


def _comparison(res: dict[str, dict[str, Any]], ours: str, baseline: str, aim: str,
                met: Callable[[float, float], bool]) -> dict[str, Any]:
    """Compare two runners' medians: jobs/s and CPU per job ratios, and whether ``met``."""
    jobs = ratio(res[ours]["jobs_per_s"], res[baseline]["jobs_per_s"])
    cpu = ratio(res[ours]["cpu_ms_per_job"], res[baseline]["cpu_ms_per_job"])
    ok = jobs is not None and cpu is not None and met(jobs, cpu)
    return {"ours": ours, "baseline": baseline, "jobs_ratio": jobs, "cpu_ratio": cpu,
            "aim": aim, "met": "met" if ok else "not met"}


def _comparisons(res: dict[str, dict[str, Any]], unavailable: dict[str, str]
                 ) -> list[dict[str, Any]]:
    """Every aim as a comparison of our runner with its baseline (or a peer not run)."""
    rows = []
    for store in ("memory", "sqlite"):
        ours = f"jobsystem_{store}"
        rows.append(_comparison(res, ours, "threadpool", "≥ 0.5 (issue 7)",
                                lambda jobs, _cpu: jobs >= 0.5))
        if store == "sqlite":
            rows.append(_comparison(res, ours, "jobsystem_memory", "≥ 0.8",
                                    lambda jobs, _cpu: jobs >= 0.8))
        for peer in peers.PEERS:
            if peer.durable != (store == "sqlite"):
                continue
            aim = "more jobs/s" if peer.durable else "more jobs/s, less CPU/job"
            if peer.name in unavailable:
                rows.append({"ours": ours, "baseline": peer.name, "aim": aim, "met": "not run"})
            elif peer.durable:
                rows.append(_comparison(res, ours, peer.name, aim, lambda jobs, _cpu: jobs > 1))
            else:
                rows.append(_comparison(res, ours, peer.name, aim,
                                        lambda jobs, cpu: jobs > 1 and cpu < 1))
    return rows


def run(jobs: int = 2000, repeat: int = 3) -> dict[str, Any]:
    """Run every runner ``repeat`` times and write ``bench/results/core_throughput.json``."""
    runs: dict[str, list[dict[str, Any]]] = {}
    unavailable: dict[str, str] = {}
    labels = dict(LABELS)
    with StandInProcess() as standin, contextlib.ExitStack() as stack:
        runners: dict[str, Callable[[int], dict[str, Any]]] = {
            "threadpool": _with_client(standin.url, peers.run_threadpool),
            "jobsystem_memory": lambda n: run_jobsystem(standin.url, "memory", n),
            "jobsystem_sqlite": lambda n: run_jobsystem(standin.url, "sqlite", n),
        }
        redis: RedisServer | None = None
        uses_redis = set()
        for peer in peers.PEERS:
            labels[peer.name] = peer.label
            why = peer.unavailable()
            if why is not None:
                unavailable[peer.name] = why
                continue
            if peer.redis:
                redis = redis or stack.enter_context(RedisServer())
                uses_redis.add(peer.name)
            runners[peer.name] = _with_client(standin.url, peer.runner(),
                                              redis if peer.redis else None)
        runners["threadpool"](200)  # warm the stand-in's threads and connections
        for _ in range(repeat):
            for name, runner in runners.items():
                result = _measure(runner, jobs, redis if name in uses_redis else None)
                runs.setdefault(name, []).append(result)
    summary = {name: _summary(results) for name, results in runs.items()}
    limit = summary["threadpool"]["jobs_per_s"]
    for figures in summary.values():
        figures["vs_threadpool"] = ratio(figures["jobs_per_s"], limit)
    comparisons = _comparisons(summary, unavailable)
    result = {
        "setup": {"jobs_per_run": jobs, "repeat": repeat, "concurrency": WORKERS,
                  "job": "POST /ask-question to a stand-in answering at once (own process)",
                  "figure": "median jobs/s, first submission to last completion",
                  "redis": "redis-server " + (redis_version() or "not run")
                           + ", appendonly yes, appendfsync everysec, no RDB snapshots"},
        "labels": labels,
        "durable": [p.name for p in peers.PEERS if p.durable],
        "results": summary,
        "unavailable": unavailable,
        "comparisons": comparisons,
        "aims": {f"{labels[c['ours']]} vs {labels[c['baseline']]}: {c['aim']}": c["met"]
                 for c in comparisons},
    }
    write_result(NAME, result)
    return result


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of one runner's repeats, and every repeat's jobs/s."""
    summary = {"jobs_per_s": statistics.median(r["jobs_per_s"] for r in results),
               "runs_jobs_per_s": [r["jobs_per_s"] for r in results],
               "cpu_ms_per_job": statistics.median(r["cpu_ms_per_job"] for r in results),
               "failed": sum(r["failed"] for r in results)}
    if "redis_cpu_ms_per_job" in results[0]:
        summary["redis_cpu_ms_per_job"] = statistics.median(r["redis_cpu_ms_per_job"]
                                                            for r in results)
    return summary


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
