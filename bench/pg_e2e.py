"""End-to-end throughput of the shared PostgreSQL queue with 1, 2 and 3 instances.

Beside each run, in the same run and on the same database, a bare baseline
does the same work with nothing of ours: processes of threads that each loop
``UPDATE ... FOR UPDATE SKIP LOCKED`` (claim one job), ``POST /ask-question``
to the same stand-in, ``UPDATE`` to completed. That is the limit of a
PostgreSQL queue in front of this Python API on this machine.

* ``system``: N processes, each a ``JobSystem`` with ``QUEUE_STORE=postgres``
  (actors, pools, leases, wake-ups, global limits), started and idle before
  the clock starts; the benchmark then inserts the jobs in one transaction
  (one ``NOTIFY``) and times until every one is completed.
* ``bare``: N processes with ``LIMIT / N`` threads each, so the same number of
  calls is in flight at most as the system's global limit allows.

The stand-in answers at once in its own process, so the queue's own cost is
what is measured; the CPU its processes used per job (instances, or bare
loops; the database's own CPU is not counted) is reported beside. Prints a
table and writes bench/results/pg_e2e.json.

    .venv/bin/python bench/pg_e2e.py [--jobs 1500] [--repeat 3] [--limit 6] [--fast]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from actors.model.jobs import Job, JobKind, freeze, new_job_id  # noqa: E402
from actors.stores.postgres.store import PostgresJobStore  # noqa: E402
from bench.common import StandInProcess  # noqa: E402
from bench.pg_claim import database  # noqa: E402
from tests.pg_server import with_search_path  # noqa: E402

_INSTANCE_CODE = """
import logging, sys
logging.disable(logging.CRITICAL)
from actors import JobSystem, Settings
url, standin, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
system = JobSystem(Settings(python_api_base_url=standin, store="postgres", database_url=url,
                            max_concurrent_qa=limit, memory_check_interval_s=3600.0,
                            retention_max_jobs=10**7, max_waiting_qa=10**7)).start()
print("ready", flush=True)
sys.stdin.read()
system.stop(drain=False)
"""

_BARE_CODE = """
import sys, threading, requests, psycopg
url, standin, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
go = threading.Event()

def loop():
    session = requests.Session()
    with psycopg.connect(url, autocommit=True) as conn:
        go.wait()
        while True:
            row = conn.execute(
                "UPDATE bare_jobs SET state = 'processing', attempts = attempts + 1"
                " WHERE id = (SELECT id FROM bare_jobs WHERE state = 'queued'"
                " ORDER BY priority, seq LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id").fetchone()
            if row is None:
                return
            reply = session.post(standin + "/ask-question", timeout=30,
                                 json={"question": "q?", "company_name": "acme"})
            reply.raise_for_status()
            conn.execute("UPDATE bare_jobs SET state = 'completed' WHERE id = %s", row)

workers = [threading.Thread(target=loop) for _ in range(threads)]
for worker in workers:
    worker.start()
print("ready", flush=True)
sys.stdin.readline()
go.set()
for worker in workers:
    worker.join()
print("done", flush=True)
"""
BARE_TABLE = """
CREATE TABLE IF NOT EXISTS bare_jobs (id text PRIMARY KEY, kind text NOT NULL,
    state text NOT NULL, priority smallint NOT NULL, seq bigserial,
    attempts int NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS bare_jobs_waiting ON bare_jobs (priority, seq)
    WHERE state = 'queued';
"""


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError("a benchmark process did not start")
    return proc


def _finish(procs: list[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
    for proc in procs:
        proc.wait(timeout=60)


def _count(url: str, table: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE state = 'completed'")
                           .format(sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def _wait_completed(url: str, table: str, jobs: int, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while _count(url, table) < jobs:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{table}: not all {jobs} jobs completed in {timeout_s:g}s")
        time.sleep(0.01)  # a benchmark's poll, not a test's wait


def _cpu_s(procs: list[subprocess.Popen[str]]) -> float:
    """CPU seconds used so far by ``procs`` (all their threads)."""
    total = 0.0
    for proc in procs:
        times = psutil.Process(proc.pid).cpu_times()
        total += times.user + times.system
    return total


def system_run(url: str, standin: str, jobs: int, instances: int,
               limit: int) -> tuple[float, float]:
    """Return jobs/s and CPU ms per job of ``instances`` job systems draining ``jobs``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE qudemo_jobs")
    procs = [_spawn(_INSTANCE_CODE, url, standin, str(limit)) for _ in range(instances)]
    try:
        store = PostgresJobStore(url, instance_id="bench-submitter", pool_size=2)
        try:
            now = time.time()
            batch = [Job(id=new_job_id(), kind=JobKind.QA, priority=1, created_at=now,
                         data=freeze({"question": f"q{i}?", "company_name": "acme"}))
                     for i in range(jobs)]
            cpu = _cpu_s(procs)
            began = time.perf_counter()
            store.add_many(batch)
            _wait_completed(url, "qudemo_jobs", jobs)
            elapsed = time.perf_counter() - began
            return jobs / elapsed, (_cpu_s(procs) - cpu) * 1000 / jobs
        finally:
            store.close()
    finally:
        _finish(procs)


def bare_run(url: str, standin: str, jobs: int, instances: int,
             limit: int) -> tuple[float, float]:
    """Return jobs/s and CPU ms per job of the bare loop with the same concurrency."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE bare_jobs")
        with conn.cursor() as cursor:
            cursor.executemany("INSERT INTO bare_jobs (id, kind, state, priority)"
                               " VALUES (%s, 'qa', 'queued', 1)",
                               [(new_job_id(),) for _ in range(jobs)])
    threads = [limit // instances + (1 if n < limit % instances else 0)
               for n in range(instances)]
    procs = [_spawn(_BARE_CODE, url, standin, str(t)) for t in threads]
    try:
        cpu = _cpu_s(procs)
        began = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for proc in procs:
            assert proc.stdout is not None
            proc.stdout.readline()  # "done"
        elapsed = time.perf_counter() - began
        used = _cpu_s(procs) - cpu
        if _count(url, "bare_jobs") != jobs:
            raise RuntimeError("the bare loop lost jobs")
        return jobs / elapsed, used * 1000 / jobs
    finally:
        _finish(procs)


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1500, help="questions drained per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the median counts")
    parser.add_argument("--limit", type=int, default=6, help="QUEUE_MAX_CONCURRENT_QA (global)")
    parser.add_argument("--fast", action="store_true", help="throwaway server without fsync")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    with database(args.fast) as (base, where), StandInProcess() as standin:
        schema = f"qudemo_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        url = with_search_path(base, schema)
        try:
            PostgresJobStore(url).close()  # migrate
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(BARE_TABLE)
            for instances in (1, 2, 3):
                cell: dict[str, Any] = {"instances": instances}
                for mode, run in (("system", system_run), ("bare", bare_run)):
                    runs = [run(url, standin.url, args.jobs, instances, args.limit)
                            for _ in range(args.repeat)]
                    cell[mode] = statistics.median(round(r[0], 1) for r in runs)
                    cell[f"{mode}_runs"] = [round(r[0], 1) for r in runs]
                    cell[f"{mode}_cpu_ms_per_job"] = round(statistics.median(r[1] for r in runs),
                                                           2)
                cell["ratio"] = round(cell["system"] / cell["bare"], 3)
                rows.append(cell)
                print(f"instances={instances}  system {cell['system']:>7} jobs/s"
                      f" ({cell['system_cpu_ms_per_job']} ms CPU/job)  bare {cell['bare']:>7}"
                      f" jobs/s ({cell['bare_cpu_ms_per_job']} ms CPU/job)"
                      f"  ratio {cell['ratio']:.2f}", flush=True)
        finally:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    report = {"benchmark": "pg_e2e", "database": where, "jobs_per_run": args.jobs,
              "global_qa_limit": args.limit, "repeat": args.repeat, "cpus": os.cpu_count(),
              "python": platform.python_version(),
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": rows}
    out = REPO / "bench" / "results" / "pg_e2e.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
