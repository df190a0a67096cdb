"""Claim throughput of the PostgreSQL store beside a bare SKIP LOCKED claim loop.

Runs on a throwaway server started from the installed PostgreSQL binaries
(durable settings: fsync and synchronous commit on), or on ``DATABASE_URL``
when set (in a fresh schema, dropped afterwards). For 1, 2 and 3 concurrent
claimers (threads, each with its own connection pool: separate instances), it
drains the same number of waiting jobs both ways (``--repeat`` times; the
median run counts):

* ``store``: ``PostgresJobStore.claim`` (advisory lock per kind, global limit
  count, SKIP LOCKED, lease) then ``finish`` of each claimed job;
* ``bare``: ``UPDATE ... WHERE id IN (SELECT ... ORDER BY priority, seq LIMIT n
  FOR UPDATE SKIP LOCKED)`` then an ``UPDATE`` to completed: the limit of what
  a claim on this database can do.

Every claimed job is finished at once, so the per-kind limit (set high) never
binds: this measures the claim machinery, not the Python API. Prints a table
and writes bench/results/pg_claim.json.

    .venv/bin/python bench/pg_claim.py [--jobs 2000] [--batch 1] [--repeat 3] [--fast]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from actors.model.jobs import Job, JobKind, JobState, new_job_id  # noqa: E402
from actors.stores.postgres.store import PostgresJobStore  # noqa: E402
from tests.pg_server import PgServer, find_bin_dir, with_search_path  # noqa: E402

LIMITS = {JobKind.QA: 1_000_000, JobKind.VIDEO: 1_000_000}
BARE_TABLE = """
CREATE TABLE bare_jobs (id text PRIMARY KEY, kind text NOT NULL, state text NOT NULL,
                        priority smallint NOT NULL, seq bigserial, attempts int NOT NULL DEFAULT 0);
CREATE INDEX bare_jobs_waiting ON bare_jobs (priority, seq) WHERE state = 'queued';
"""


@contextmanager
def database(fast: bool) -> Iterator[tuple[str, str]]:
    """Yield (base URL, where) for a throwaway server, or DATABASE_URL."""
    given = os.environ.get("DATABASE_URL")
    if given:
        yield given, "DATABASE_URL"
        return
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL binaries found and DATABASE_URL unset")
    with PgServer(bin_dir, durable=not fast) as server:
        yield server.url, f"throwaway {bin_dir.parent.name} ({'fast' if fast else 'durable'})"


def drain(claimers: int, make_claim: Callable[[int], Callable[[], int]]) -> dict[str, Any]:
    """Run ``claimers`` threads until the queue is empty; return throughput and latency."""
    latencies: list[list[float]] = [[] for _ in range(claimers)]
    counts = [0] * claimers
    loops = [make_claim(n) for n in range(claimers)]
    start = threading.Barrier(claimers + 1)

    def run(n: int) -> None:
        start.wait()
        while True:
            began = time.perf_counter()
            got = loops[n]()
            latencies[n].append(time.perf_counter() - began)
            if not got:
                return
            counts[n] += got

    threads = [threading.Thread(target=run, args=(n,)) for n in range(claimers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    every = sorted(x for per in latencies for x in per)
    return {"claimers": claimers, "jobs": sum(counts), "seconds": round(elapsed, 3),
            "jobs_per_s": round(sum(counts) / elapsed, 1),
            "cycle_ms_p50": round(statistics.median(every) * 1000, 2),
            "cycle_ms_p99": round(every[int(len(every) * 0.99) - 1] * 1000, 2)}


def store_run(url: str, jobs: int, claimers: int, batch: int) -> dict[str, Any]:
    """Drain ``jobs`` through PostgresJobStore.claim + finish."""
    stores = [PostgresJobStore(url, instance_id=f"bench-{n}", pool_size=2)
              for n in range(claimers + 1)]
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE qudemo_jobs")
        now = time.time()
        stores[0].add_many(Job(id=new_job_id(), kind=JobKind.QA, priority=1 + i % 3,
                               created_at=now) for i in range(jobs))

        def make_claim(n: int) -> Callable[[], int]:
            store = stores[n + 1]

            def one() -> int:
                claimed = store.claim({JobKind.QA: batch}, store.instance_id, LIMITS,
                                      time.time(), 60.0, 30.0)
                for job in claimed:
                    store.finish(job.replace(state=JobState.COMPLETED, finished_at=time.time()),
                                 store.instance_id)
                return len(claimed)
            return one

        return drain(claimers, make_claim)
    finally:
        for store in stores:
            store.close()


def bare_run(url: str, jobs: int, claimers: int, batch: int) -> dict[str, Any]:
    """Drain ``jobs`` through a bare SELECT ... FOR UPDATE SKIP LOCKED claim loop."""
    conns = [psycopg.connect(url, autocommit=True) for _ in range(claimers + 1)]
    try:
        conns[0].execute("TRUNCATE bare_jobs")
        with conns[0].cursor() as cursor:
            cursor.executemany("INSERT INTO bare_jobs (id, kind, state, priority)"
                               " VALUES (%s, 'qa', 'queued', %s)",
                               [(new_job_id(), 1 + i % 3) for i in range(jobs)])

        def make_claim(n: int) -> Callable[[], int]:
            conn = conns[n + 1]

            def one() -> int:
                rows = conn.execute(
                    "UPDATE bare_jobs SET state = 'processing', attempts = attempts + 1"
                    " WHERE id IN (SELECT id FROM bare_jobs WHERE state = 'queued'"
                    " ORDER BY priority, seq LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING id",
                    (batch,)).fetchall()
                for (job_id,) in rows:
                    conn.execute("UPDATE bare_jobs SET state = 'completed' WHERE id = %s",
                                 (job_id,))
                return len(rows)
            return one

        return drain(claimers, make_claim)
    finally:
        for conn in conns:
            conn.close()


def main() -> None:
    """Run the benchmark, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs drained per run")
    parser.add_argument("--batch", type=int, default=1, help="jobs asked for per claim")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the median counts")
    parser.add_argument("--fast", action="store_true", help="throwaway server without fsync")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with database(args.fast) as (base, where):
        schema = f"qudemo_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            version = conn.execute("SHOW server_version").fetchone()
        url = with_search_path(base, schema)
        try:
            PostgresJobStore(url).close()  # migrate
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(BARE_TABLE)
            for claimers in (1, 2, 3):
                for mode, run in (("store", store_run), ("bare", bare_run)):
                    runs = [run(url, args.jobs, claimers, args.batch)
                            for _ in range(args.repeat)]
                    row = {"mode": mode, **sorted(runs, key=lambda r: r["jobs_per_s"])[
                        len(runs) // 2], "runs_jobs_per_s": [r["jobs_per_s"] for r in runs]}
                    results.append(row)
                    print(f"{mode:>5}  claimers={claimers}  {row['jobs_per_s']:>8} jobs/s"
                          f"  p50 {row['cycle_ms_p50']} ms  p99 {row['cycle_ms_p99']} ms"
                          f"  (runs: {row['runs_jobs_per_s']})")
        finally:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    report = {"benchmark": "pg_claim", "database": where,
              "server_version": version[0] if version else None, "jobs_per_run": args.jobs,
              "batch": args.batch, "repeat": args.repeat, "cpus": os.cpu_count(),
              "python": platform.python_version(),
              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}
    out = REPO / "bench" / "results" / "pg_claim.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'claimers':>8} | {'store jobs/s':>12} | {'bare jobs/s':>11} | store/bare")
    for claimers in (1, 2, 3):
        store, bare = (next(r for r in results if r["mode"] == m and r["claimers"] == claimers)
                       for m in ("store", "bare"))
        ratio = store["jobs_per_s"] / bare["jobs_per_s"] if bare["jobs_per_s"] else 0.0
        print(f"{claimers:>8} | {store['jobs_per_s']:>12} | {bare['jobs_per_s']:>11} |"
              f" {ratio:.2f}")
    print(f"written to {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
