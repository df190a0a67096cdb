"""Memory: RSS of the idle server, and RSS growth as finished jobs are retained, per store.

Idle: the real app and the bare Flask app (``bench.bare_app``, the baseline) under the
shipped gunicorn configuration; RSS (psutil) of gunicorn's worker process once it has
answered a few requests and settled.

Retained: a fresh process per variant drives a JobSystem with retention far above the run
(nothing is pruned) against a stand-in answering at once, and samples its own RSS after
every batch of finished jobs (after a warm-up batch, after ``gc.collect()``). The growth is
the least-squares slope, extrapolated to 100k jobs (the run is scaled down to stay within
the time budget). Variants: the ``memory`` and ``sqlite`` stores as shipped.

Idle is measured twice: with authentication off (no ``JWT_SECRET``, the embedded
default), and on (a ``JWT_SECRET``, so PyJWT and ``cryptography`` are loaded at start;
the requests carry no token and are answered 401).

Aims (issue 7): idle under 60 MB; with the SQLite store, RSS flat as retained jobs grow
(here: growth per 100k jobs under 10% of the memory store's).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    GunicornProcess,
    StandInProcess,
    ratio,
    rss_mb,
    wait_until,
    write_result,
)
from bench.loadgen import run_load

NAME = "memory"
IDLE_AIM_MB = 60.0
VARIANTS = ("memory", "sqlite")
JWT_SECRET = "bench-secret-" + "x" * 32  # long enough for the production check


def idle_rss(app: str, env: dict[str, str]) -> float:
    """Start ``app``, send it a few requests, let it settle; return its worker's RSS in MB."""
    from bench.http_enqueue import BODY, PATH

    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp, \
            GunicornProcess(app, Path(tmp), env) as server:
        run_load(server.port, PATH, BODY, connections=2, duration_s=0.5, warmup_s=0.0)
        threading.Event().wait(2.0)  # let the start-up and the requests settle
        return round(rss_mb(server.worker_pid()), 1)


def child(variant: str, jobs: int, batch: int, url: str) -> dict[str, Any]:
    """In a fresh process: run ``jobs`` no-op jobs in batches; sample RSS after each."""
    import os

    from actors import JobKind, JobSystem, Settings
    from bench.peers import QUESTION

    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        store = variant
        settings = Settings(python_api_base_url=url, store=store,
                            db_path=str(Path(tmp) / "jobs.sqlite3"), max_waiting_qa=10_000_000,
                            retention_max_jobs=10_000_000)
        system = JobSystem(settings).start()
        registry = system.metrics.registry
        samples = []
        try:
            for done in range(batch, jobs + batch + 1, batch):  # the first batch warms up
                for _ in range(batch):
                    system.submit(JobKind.QA, QUESTION)
                if not wait_until(lambda d=done: (registry.get_sample_value(
                        "qudemo_jobs_finished_total",
                        {"kind": "qa", "state": "completed"}) or 0) >= d, 300, 0.01):
                    raise RuntimeError("jobs did not finish")
                gc.collect()
                samples.append({"retained": done,
                                "rss_mb": round(rss_mb(os.getpid()), 2),
                                "timer_heap": len(system.timers._heap)})
        finally:
            system.stop(drain=False)
    return {"samples": samples}


def slope_per_100k(samples: list[dict[str, Any]]) -> float:
    """Return the least-squares slope of RSS over retained jobs, in MB per 100k jobs."""
    points = samples[1:]  # after the warm-up batch
    xs = [p["retained"] for p in points]
    ys = [p["rss_mb"] for p in points]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    return round(cov / var * 100_000, 1)


def run(jobs: int = 15_000, batch: int = 2_500) -> dict[str, Any]:
    """Measure idle RSS and retained growth; write ``bench/results/memory.json``."""
    retained: dict[str, Any] = {}
    with StandInProcess() as standin:
        app_env = {"PYTHON_API_BASE_URL": standin.url, "QUEUE_DB_PATH": "jobs.sqlite3",
                   "APP_ENV": "development"}
        idle = {"bare_mb": idle_rss("bench.bare_app:app", {}),
                "app_mb": idle_rss("wsgi:app", app_env),
                "app_auth_mb": idle_rss("wsgi:app", {**app_env, "JWT_SECRET": JWT_SECRET})}
        for variant in VARIANTS:
            out = subprocess.run(
                [sys.executable, "-m", "bench.memory", "--child", variant, str(jobs),
                 str(batch), standin.url],
                cwd=REPO, capture_output=True, text=True, timeout=600, check=True)
            samples = json.loads(out.stdout.strip().splitlines()[-1])["samples"]
            retained[variant] = {"samples": samples,
                                 "growth_mb_per_100k": slope_per_100k(samples)}
    idle["app_vs_bare"] = ratio(idle["app_mb"], idle["bare_mb"])
    idle["app_auth_vs_bare"] = ratio(idle["app_auth_mb"], idle["bare_mb"])
    base = retained["memory"]["growth_mb_per_100k"]
    for variant in VARIANTS:
        retained[variant]["vs_memory_store"] = ratio(retained[variant]["growth_mb_per_100k"],
                                                     base)
    flat = retained["sqlite"]["vs_memory_store"]
    aims = {f"idle server under {IDLE_AIM_MB:g} MB RSS":
            "met" if idle["app_mb"] < IDLE_AIM_MB else "not met",
            f"idle server with authentication on under {IDLE_AIM_MB:g} MB RSS":
            "met" if idle["app_auth_mb"] < IDLE_AIM_MB else "not met",
            "sqlite store: RSS flat as retained jobs grow (< 10% of the memory store's growth)":
            "met" if flat is not None and flat < 0.1 else "not met"}
    result = {
        "setup": {"jobs": jobs, "batch": batch, "warmup_batch": batch,
                  "extrapolated": f"slope over {jobs} jobs scaled to 100k",
                  "idle": "gunicorn worker RSS after a few requests, shipped config"},
        "idle": idle,
        "retained": retained,
        "aims": aims,
    }
    write_result(NAME, result)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        variant, count, size, address = sys.argv[2:6]
        print(json.dumps(child(variant, int(count), int(size), address)))
    else:
        print(json.dumps(run(), indent=2))
