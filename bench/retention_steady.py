"""Steady state: end-to-end throughput with 0, 10,000 and 100,000 retained finished jobs.

The same no-op jobs as ``core_throughput`` (one question each, answered at once by the
stand-in of the Python API in its own process, 10 at a time, submitted from one thread,
timed from the first submission to the last completion) through a ``JobSystem`` whose store
already holds ``retained`` finished jobs, written straight into the store before the run.
``QUEUE_RETENTION_MAX_JOBS`` is the retained count (10,000 for the empty store, which the run
never reaches), so every job a full store finishes takes it past its cap and retention works
throughout the run, as it does in production once the cap is reached. A trim removes a tenth
of the cap at once (hysteresis), so how much a run removes depends on its length: a SQLite run
finishes 10,000 jobs, a whole number of trim cycles at both levels (one at 100,000, ten at
10,000), so it removes about as many finished jobs as it finishes, as the steady state does.
PostgreSQL runs are shorter (2,000 jobs): each still starts with the trim of a tenth of the cap
(10,000 jobs at 100,000), five times the steady state's share, so its figure is the worst case.
Each run reports how many finished jobs retention removed while it ran.

* SQLite: a template file per level is filled once (one transaction), and each run starts
  from a fresh copy of it.
* PostgreSQL, when a server can be had (``DATABASE_URL``, or a throwaway one from the
  installed binaries, as ``bench/pg_claim.py --fast`` starts it: fsync off, so the database's
  work is measured, not the disk's flushes): one schema per level, brought back to the level
  and vacuumed before each run; fewer and shorter runs (``pg_jobs``, ``pg_repeat``), as the
  shared store takes a few round trips per submission.

Each level runs ``repeat`` times, interleaved with the others; the median counts, as a ratio
to the empty store in the same run. Beside jobs/s, each run reports this process's CPU time
per job (every thread of the job system; not the stand-in's, nor PostgreSQL's), which a
shared machine disturbs less. Aim (issue 16): at least 0.9 of the empty store at 10,000 and
at 100,000 retained jobs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from actors import JobKind, JobSystem, Settings
from actors.model.jobs import Job, JobState, dumps, freeze, new_job_id
from actors.stores.sqlite import SqliteJobStore
from bench import peers
from bench.common import StandInProcess, ratio, write_result

NAME = "retention_steady"
WORKERS = 10
LEVELS = (0, 10_000, 100_000)
EMPTY_CAP = 10_000  # the default cap: the empty store's run never reaches it
AIM = 0.9
ANSWER = freeze({"success": True, "answer": "This is the answer.", "sources": ["a", "b"],
                 "video_url": "https://youtu.be/abc", "start": 1.0, "end": 2.0})


def finished_jobs(count: int, *, now: float) -> Iterator[Job]:
    """Yield ``count`` completed questions, the oldest first, finished within the last hour."""
    for n in range(count):
        at = now - 3600.0 + 3000.0 * n / max(count, 1)
        yield Job(id=new_job_id(), kind=JobKind.QA, priority=1, data=freeze(peers.QUESTION),
                  owner="bench", created_at=at - 0.01, seq=n + 1, state=JobState.COMPLETED,
                  attempts=1, started_at=at - 0.005, finished_at=at, result=ANSWER)


def cap_for(retained: int) -> int:
    """The retention cap of a run: the retained count, so a full store is at its cap."""
    return retained or EMPTY_CAP


def drive(system: JobSystem, jobs: int) -> dict[str, Any]:
    """Submit ``jobs`` questions; time until every one finished; report what is retained."""
    registry = system.metrics.registry

    def finished() -> float:
        return sum(registry.get_sample_value(
            "qudemo_jobs_finished_total", {"kind": "qa", "state": state}) or 0.0
            for state in ("completed", "failed"))

    pause = threading.Event()
    cpu_started = time.process_time()
    started = time.perf_counter()
    for _ in range(jobs):
        system.submit(JobKind.QA, peers.QUESTION)
    deadline = time.monotonic() + 600
    while finished() < jobs and time.monotonic() < deadline:
        pause.wait(0.002)
    elapsed = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    if finished() < jobs:
        raise RuntimeError(f"only {finished():.0f} of {jobs} jobs finished")
    failed = registry.get_sample_value(
        "qudemo_jobs_finished_total", {"kind": "qa", "state": "failed"}) or 0.0
    return {"jobs": jobs, "failed": int(failed), "seconds": round(elapsed, 3),
            "jobs_per_s": round(jobs / elapsed, 1),
            # This process's CPU (every thread; not the stand-in's, nor PostgreSQL's):
            # steadier than jobs/s on a shared machine.
            "cpu_ms_per_job": round(cpu_s * 1000 / jobs, 3),
            "retained_at_end": system.snapshot()["registry"]["retained_finished"]}


# --- SQLite ------------------------------------------------------------------------------

def sqlite_template(path: Path, retained: int) -> Path:
    """Create a store file at ``path`` holding ``retained`` finished jobs; return ``path``."""
    SqliteJobStore(path).close()  # the schema, as the program creates it
    db = sqlite3.connect(path)
    try:
        with db:
            db.executemany(
                "INSERT INTO jobs (id, kind, state, owner, seq, created_at, finished_at, record)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ((j.id, j.kind.value, j.state.value, j.owner, j.seq, j.created_at,
                  j.finished_at, dumps(j)) for j in finished_jobs(retained, now=time.time())))
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        db.close()
    return path


def sqlite_run(url: str, template: Path, retained: int, jobs: int) -> dict[str, Any]:
    """One run on a fresh copy of ``template``."""
    with tempfile.TemporaryDirectory(prefix="bench-steady-") as tmp:
        path = Path(tmp) / "jobs.sqlite3"
        shutil.copyfile(template, path)
        system = JobSystem(Settings(
            python_api_base_url=url, store="sqlite", db_path=str(path),
            max_concurrent_qa=WORKERS, max_waiting_qa=10_000_000,
            retention_max_jobs=cap_for(retained))).start()
        try:
            return drive(system, jobs)
        finally:
            system.stop(drain=False)


# --- PostgreSQL --------------------------------------------------------------------------

@contextlib.contextmanager
def pg_levels(levels: tuple[int, ...]) -> Iterator[tuple[str, dict[int, str]]]:
    """Yield (where, {level: URL}): one fresh schema per level on a server, dropped after."""
    import psycopg
    from psycopg import sql

    from actors.stores.postgres.store import PostgresJobStore
    from bench.pg_claim import database
    from tests.pg_server import with_search_path

    with database(fast=True) as (base, where):
        schemas = {level: f"qudemo_steady_{uuid.uuid4().hex[:8]}" for level in levels}
        with psycopg.connect(base, autocommit=True) as conn:
            for schema in schemas.values():
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            urls = {level: with_search_path(base, s) for level, s in schemas.items()}
            for url in urls.values():
                PostgresJobStore(url, instance_id="bench-migrate", pool_size=2).close()
            yield where, urls
        finally:
            with psycopg.connect(base, autocommit=True) as conn:
                for schema in schemas.values():
                    conn.execute(sql.SQL("DROP SCHEMA {} CASCADE")
                                 .format(sql.Identifier(schema)))


def pg_fill(url: str, retained: int) -> None:
    """Bring the schema back to ``retained`` finished jobs (nothing else in it), then vacuum.

    What a previous run finished is deleted (the newest first), the filler is topped up
    with jobs older than anything there, so a run's retention removes the filler first.
    The empty level is truncated instead: like a new table, it has no statistics (an
    empty table vacuumed and analysed would mislead the planner for the whole run).
    """
    import psycopg

    from actors.stores.postgres.store import PostgresJobStore

    if retained == 0:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE qudemo_jobs")
        return
    store = PostgresJobStore(url, instance_id="bench-filler", pool_size=2)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM qudemo_jobs WHERE finished_at IS NULL")
            row = conn.execute("SELECT count(*) FROM qudemo_jobs").fetchone()
            have = int(row[0]) if row else 0
            if have > retained:
                conn.execute("DELETE FROM qudemo_jobs WHERE id IN (SELECT id FROM qudemo_jobs"
                             " ORDER BY finished_at DESC LIMIT %s)", (have - retained,))
            row = conn.execute("SELECT min(finished_at) FROM qudemo_jobs").fetchone()
        oldest = row[0] if row else None
        now = (oldest if oldest is not None else time.time()) - 1.0
        batch: list[Job] = []
        for job in finished_jobs(max(0, retained - have), now=now):
            batch.append(job)
            if len(batch) == 5000:
                store.add_many(batch)
                batch.clear()
        if batch:
            store.add_many(batch)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE qudemo_jobs")
    finally:
        store.close()


def pg_run(url: str, standin: str, retained: int, jobs: int) -> dict[str, Any]:
    """One run of a ``QUEUE_STORE=postgres`` job system on a schema holding ``retained``."""
    pg_fill(url, retained)
    system = JobSystem(Settings(
        python_api_base_url=standin, store="postgres", database_url=url,
        max_concurrent_qa=WORKERS, max_waiting_qa=10_000_000, memory_check_interval_s=3600.0,
        retention_max_jobs=cap_for(retained))).start()
    try:
        return drive(system, jobs)
    finally:
        system.stop(drain=False)


# --- the benchmark -----------------------------------------------------------------------

def _summary(runs: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    median = {level: statistics.median(r["jobs_per_s"] for r in results)
              for level, results in runs.items()}
    empty = median[0]
    return {str(level): {"retained": level, "cap": cap_for(level), "jobs_per_s": value,
                         "vs_empty": ratio(value, empty),
                         "runs_jobs_per_s": [r["jobs_per_s"] for r in runs[level]],
                         "cpu_ms_per_job": statistics.median(r["cpu_ms_per_job"]
                                                             for r in runs[level]),
                         "retained_at_end": [r["retained_at_end"] for r in runs[level]],
                         "removed_in_run": [level + r["jobs"] - r["retained_at_end"]
                                            for r in runs[level]],
                         "removed_per_job": round(statistics.median(
                             (level + r["jobs"] - r["retained_at_end"]) / r["jobs"]
                             for r in runs[level]), 2),
                         "failed": sum(r["failed"] for r in runs[level])}
            for level, value in median.items()}


def _interleaved(repeat: int, levels: tuple[int, ...],
                 one: Callable[[int], dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    runs: dict[int, list[dict[str, Any]]] = {level: [] for level in levels}
    for _ in range(repeat):
        for level in levels:
            runs[level].append(one(level))
    return runs


def run(jobs: int = 10_000, repeat: int = 3, levels: tuple[int, ...] = LEVELS,
        postgres: bool = True, pg_jobs: int = 2000, pg_repeat: int = 3) -> dict[str, Any]:
    """Run every level ``repeat`` times per store; write ``bench/results/retention_steady.json``."""
    results: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    with StandInProcess() as standin, tempfile.TemporaryDirectory(prefix="bench-tpl-") as tmp:
        templates = {level: sqlite_template(Path(tmp) / f"retained-{level}.sqlite3", level)
                     for level in levels}
        sqlite_run(standin.url, templates[0], 0, 200)  # warm the stand-in and the client
        results["sqlite"] = _summary(_interleaved(
            repeat, levels, lambda level: sqlite_run(standin.url, templates[level], level, jobs)))
        if postgres:
            try:
                with pg_levels(levels) as (where, urls):
                    results["postgres"] = _summary(_interleaved(
                        pg_repeat, levels,
                        lambda level: pg_run(urls[level], standin.url, level, pg_jobs)))
                    results["postgres"]["database"] = where
            except (ImportError, SystemExit) as exc:  # no psycopg, or no server to be had
                unavailable["postgres"] = str(exc) or type(exc).__name__
    aims = {}
    for store, summary in results.items():
        for level in levels[1:]:
            value = summary[str(level)]["vs_empty"]
            aims[f"{store}: {level:,} retained >= {AIM} x empty"] = (
                "met" if value is not None and value >= AIM else "not met")
    result = {
        "setup": {"jobs_per_run": jobs, "repeat": repeat, "pg_jobs_per_run": pg_jobs,
                  "pg_repeat": pg_repeat, "concurrency": WORKERS, "levels": list(levels),
                  "job": "POST /ask-question to a stand-in answering at once (own process)",
                  "cap": "QUEUE_RETENTION_MAX_JOBS = the retained count (empty: 10,000)",
                  "figure": "median jobs/s, first submission to last completion"},
        "results": results,
        "unavailable": unavailable,
        "aims": aims,
    }
    write_result(NAME, result)
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
