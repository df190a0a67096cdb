"""HTTP enqueue: ``POST /api/interactions/{id}/questions`` at 32 connections, beside a bare route.

Five servers, one after the other, each under the shipped gunicorn configuration
(``gunicorn -c gunicorn.conf.py``: one worker, ``GUNICORN_THREADS`` threads, access log on):

* ``bare``: ``bench.bare_app`` (parses the same JSON, answers 202): the limit;
* ``memory``: the real app with ``QUEUE_STORE=memory``;
* ``sqlite``: the real app with ``QUEUE_STORE=sqlite`` (the default);
* ``memory_api_2s`` and ``sqlite_api_2s``: the same against a stand-in that answers a
  question after 2 s, as the real Python API does (within seconds).

The real app runs with authentication off, a rate limit and queue bound far above what the
run reaches, and a stand-in of the Python API in its own process. Answering at once, it
makes every accepted question be processed too, in the same server process, while the load
runs (the worst case for the server's CPU); answering after 2 s, at most
``QUEUE_MAX_CONCURRENT_QA`` questions are in flight and the rest wait, as in production.

Aims (issues 7 and 4): each store at least 0.8 of the bare route's throughput with p99 at
most 1.5 times the bare route's; the SQLite store costs at most 20% of the memory store's
throughput.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import GunicornProcess, StandInProcess, ratio, rss_mb, write_result
from bench.loadgen import run_load

NAME = "http_enqueue"
PATH = "/api/interactions/bench-1/questions"
BODY = json.dumps({"question": "What are the main features?",
                   "companyName": "acme-corp"}).encode()
CONNECTIONS = 32
STORES = ("memory", "sqlite")
# The real Python API answers a question in seconds; with a stand-in that does too, the
# server spends its CPU on taking requests, not on processing each one at once.
SLOW_API_S = 2.0
SLOW_SUFFIX = "_api_2s"


def server_env(store: str, standin_url: str, workdir: Path) -> dict[str, str]:
    """Return the environment of the real server for ``store``."""
    return {
        "PYTHON_API_BASE_URL": standin_url,
        "APP_ENV": "development",
        "QUEUE_STORE": store,
        "QUEUE_DB_PATH": str(workdir / "jobs.sqlite3"),
        "QUEUE_MAX_WAITING_QA": "10000000",
        "QUEUE_MAX_WAITING_QA_PER_COMPANY": "10000000",  # every question is one company's
        "RATE_LIMIT_MAX_REQUESTS": "1000000000",
        "QUEUE_RETENTION_MAX_JOBS": "1000000",
    }


def measure(app: str, env: dict[str, str], duration_s: float) -> dict[str, Any]:
    """Start one server, drive it, stop it; return the load figures and the worker's RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        workdir = Path(tmp)
        env = {k: v.replace("{workdir}", tmp) for k, v in env.items()}
        with GunicornProcess(app, workdir, env) as server:
            figures = run_load(server.port, PATH, BODY, connections=CONNECTIONS,
                               duration_s=duration_s)
            figures["worker_rss_mb_after"] = round(rss_mb(server.worker_pid()), 1)
    return figures


def run(duration_s: float = 10.0, repeat: int = 2) -> dict[str, Any]:
    """Run the five servers ``repeat`` times, interleaved; write the results.

    Each figure is the median over the repeats (this machine is shared).
    """
    names = ("bare", *STORES, *(f"{store}{SLOW_SUFFIX}" for store in STORES))
    rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with StandInProcess() as standin, StandInProcess(latency_qa_s=SLOW_API_S) as slow:
        for _ in range(repeat):
            # The shipped gunicorn.conf.py checks the settings at start, whatever the app.
            rounds["bare"].append(measure("bench.bare_app:app", {"APP_ENV": "development"},
                                          duration_s))
            for store in STORES:
                for suffix, url in (("", standin.url), (SLOW_SUFFIX, slow.url)):
                    env = server_env(store, url, Path("{workdir}"))
                    rounds[f"{store}{suffix}"].append(measure("wsgi:app", env, duration_s))
    runs: dict[str, Any] = {
        name: {**{key: round(statistics.median(r[key] for r in found), 2)
                  for key in ("throughput_rps", "p50_ms", "p99_ms", "max_ms",
                              "worker_rss_mb_after")},
               "rounds": found}
        for name, found in rounds.items()}
    bare = runs["bare"]
    for name in names[1:]:
        runs[name]["throughput_vs_bare"] = ratio(runs[name]["throughput_rps"],
                                                 bare["throughput_rps"])
        runs[name]["p99_vs_bare"] = ratio(runs[name]["p99_ms"], bare["p99_ms"])
    sqlite_vs_memory = ratio(runs["sqlite"]["throughput_rps"], runs["memory"]["throughput_rps"])
    aims = {
        f"{name}: throughput >= 0.8 x bare and p99 <= 1.5 x bare": _met(
            (runs[name]["throughput_vs_bare"] or 0) >= 0.8
            and (runs[name]["p99_vs_bare"] or 99) <= 1.5)
        for name in names[1:]
    }
    aims["sqlite store costs at most 20% of enqueue throughput (issue 4)"] = _met(
        (sqlite_vs_memory or 0) >= 0.8)
    result = {
        "setup": {"connections": CONNECTIONS, "duration_s": duration_s, "warmup_s": 1.0,
                  "repeat": repeat, "figure": "median over repeats",
                  "path": PATH, "server": "gunicorn -c gunicorn.conf.py (as shipped)",
                  "auth": "off",
                  "standin": "own process; answers at once, or after "
                             f"{SLOW_API_S:g} s for the '{SLOW_SUFFIX}' runs"},
        "runs": runs,
        "sqlite_vs_memory_throughput": sqlite_vs_memory,
        "aims": aims,
    }
    write_result(NAME, result)
    return result


def _met(ok: bool) -> str:
    return "met" if ok else "not met"


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
