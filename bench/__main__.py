"""Run every benchmark, write ``bench/results/*.json`` and ``summary.png``, print the table.

    .venv/bin/pip install -e '.[bench]' && .venv/bin/python -m bench [--only NAME ...] [--quick]

Each benchmark is bounded in time (the whole run takes about fifteen minutes on 2 CPUs),
starts what it measures itself, and talks to 127.0.0.1 only. ``--quick`` shortens every
benchmark for a smoke run, written to a temporary directory (never over the published ones).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    chart,
    core_throughput,
    fairness,
    http_enqueue,
    isolation,
    memory,
    overload,
    report,
    retention_steady,
)
from bench.common import results_dir, use_results_dir

FULL: dict[str, Callable[[], Any]] = {
    "http_enqueue": lambda: http_enqueue.run(duration_s=10.0, repeat=2),
    "core_throughput": lambda: core_throughput.run(jobs=2000, repeat=3),
    "isolation": lambda: isolation.run(questions=400, interval_s=0.005, repeat=3),
    "fairness": lambda: fairness.run(seeds=5, repeat=3),
    "memory": lambda: memory.run(jobs=10_000, batch=2_000),
    "retention_steady": lambda: retention_steady.run(jobs=10_000, repeat=3, pg_jobs=2000,
                                                     pg_repeat=3),
    "overload": lambda: overload.run(videos=4, questions=120, repeat=2),
}
QUICK: dict[str, Callable[[], Any]] = {
    "http_enqueue": lambda: http_enqueue.run(duration_s=2.0, repeat=1),
    "core_throughput": lambda: core_throughput.run(jobs=300, repeat=1),
    "isolation": lambda: isolation.run(questions=60, interval_s=0.005, repeat=1),
    "fairness": lambda: fairness.run(seeds=2, repeat=1),
    "memory": lambda: memory.run(jobs=1_000, batch=500),
    "retention_steady": lambda: retention_steady.run(jobs=300, repeat=1, pg_jobs=200,
                                                     pg_repeat=1),
    "overload": lambda: overload.run(videos=2, questions=40, repeat=1),
}


def main(argv: list[str] | None = None) -> int:
    """Run the chosen benchmarks in order; return 1 if any of them failed."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(FULL), metavar="NAME",
                        help=f"run only these ({', '.join(FULL)})")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the job systems' own logs are not the point
    plan = QUICK if args.quick else FULL
    if args.quick:  # a smoke run never overwrites the published results
        use_results_dir(Path(tempfile.mkdtemp(prefix="bench-quick-")))
        print(f"--quick: results in {results_dir()}", flush=True)
    failed = []
    for name in args.only or list(plan):
        started = time.monotonic()
        print(f"== {name} ...", flush=True)
        try:
            result = plan[name]()
        except Exception as exc:  # one broken benchmark must not hide the others
            logging.getLogger("bench").exception("%s failed", name)
            failed.append(f"{name}: {exc}")
            continue
        aims = "; ".join(f"{aim}: {met}" for aim, met in result.get("aims", {}).items())
        print(f"   {time.monotonic() - started:.0f} s. {aims}", flush=True)
    print(f"chart: {chart.render()}, {chart.overload_plot()}\n")
    print(report.markdown())
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
