"""The README table: every figure beside its baseline and the ratio, and every aim met or not.

``python -m bench.report`` prints the Markdown table from ``bench/results/*.json``; the
runner prints it too, at the end of a run.
"""

from __future__ import annotations

from typing import Any

from bench.common import read_result

HEADER = ("| benchmark | measured | baseline (same run) | ratio | aim | |\n"
          "|---|---|---|---|---|---|")


def _row(*cells: Any) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def http_rows(r: dict[str, Any]) -> list[str]:
    """Rows of the HTTP enqueue benchmark."""
    runs, bare, aims = r["runs"], r["runs"]["bare"], r["aims"]
    rows = []
    for name, s in runs.items():
        if name == "bare":
            continue
        store, _, api = name.partition("_api_")
        where = f", Python API answering in {api}" if api else ""
        aim = next(v for k, v in aims.items() if k.startswith(f"{name}:"))
        rows.append(_row(
            f"HTTP enqueue, {store} store{where} (32 conn.)",
            f"{s['throughput_rps']:.0f} req/s, p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms",
            f"bare Flask: {bare['throughput_rps']:.0f} req/s, p99 {bare['p99_ms']:.0f} ms",
            f"{s['throughput_vs_bare']:.2f} (p99 {s['p99_vs_bare']:.1f}x)",
            "≥ 0.8, p99 ≤ 1.5x", aim))
    rows.append(_row("HTTP enqueue, sqlite vs memory store",
                     f"{runs['sqlite']['throughput_rps']:.0f} req/s",
                     f"memory store: {runs['memory']['throughput_rps']:.0f} req/s",
                     f"{r['sqlite_vs_memory_throughput']:.2f}", "≥ 0.8 (issue 4)",
                     list(aims.values())[-1]))
    return rows


def core_rows(r: dict[str, Any]) -> list[str]:
    """Rows of the core throughput benchmark."""
    res, aims = r["results"], list(r["aims"].values())
    limit = res["threadpool"]["jobs_per_s"]
    def cpu(name: str) -> str:
        value = res[name].get("cpu_ms_per_job")
        return f", {value:.2f} ms CPU/job" if value is not None else ""

    peers = "; ".join(f"{p} {res[p]['jobs_per_s']:.0f} ({res[p]['vs_threadpool']:.2f}{cpu(p)})"
                      for p in ("dramatiq", "huey") if p in res)
    peers += "".join(f", {p}: {why}" for p, why in r.get("unavailable", {}).items())
    return [_row(f"core no-op jobs/s, {store} store",
                 f"{res[f'jobsystem_{store}']['jobs_per_s']:.0f} jobs/s"
                 f"{cpu(f'jobsystem_{store}')}",
                 f"ThreadPoolExecutor {limit:.0f}{cpu('threadpool')}; {peers}",
                 f"{res[f'jobsystem_{store}']['vs_threadpool']:.2f}",
                 "≥ 0.5; ahead of both peers", f"{aims[2 * n]}; {aims[2 * n + 1]}")
            for n, store in enumerate(("memory", "sqlite"))]


def isolation_rows(r: dict[str, Any]) -> list[str]:
    """Rows of the isolation benchmark."""
    aims = list(r["aims"].values())
    rows = []
    for n, (store, f) in enumerate(r["results"].items()):
        rows.append(_row(
            f"Q&A latency, 200 videos waiting, {store} store",
            f"p50 {f['busy']['p50_ms']:.1f} ms, p99 {f['busy']['p99_ms']:.1f} ms",
            f"idle: p50 {f['idle']['p50_ms']:.1f} ms, p99 {f['idle']['p99_ms']:.1f} ms",
            f"{f['p99_busy_vs_idle']:.2f} (p99 {f['p99_busy_minus_idle_ms']:+.1f} ms)",
            "p99 ≤ idle + 20 ms", aims[n]))
    return rows


def memory_rows(r: dict[str, Any]) -> list[str]:
    """Rows of the memory benchmark."""
    idle, ret, aims = r["idle"], r["retained"], list(r["aims"].values())
    base = ret["memory"]["growth_mb_per_100k"]
    rows = [_row("idle server RSS (gunicorn worker), auth off", f"{idle['app_mb']:.1f} MB",
                 f"bare Flask: {idle['bare_mb']:.1f} MB", f"{idle['app_vs_bare']:.2f}",
                 "< 60 MB", aims[0])]
    if "app_auth_mb" in idle:
        rows.append(_row("idle server RSS (gunicorn worker), auth on",
                         f"{idle['app_auth_mb']:.1f} MB", f"bare Flask: {idle['bare_mb']:.1f} MB",
                         f"{idle['app_auth_vs_bare']:.2f}", "< 60 MB", aims[1]))
    sqlite_aim = aims[-1]
    labels = {"memory": "memory store", "sqlite": "sqlite store"}
    for variant, label in labels.items():
        if variant not in ret:
            continue
        v = ret[variant]
        rows.append(_row(f"RSS growth per 100k retained jobs, {label}",
                         f"{v['growth_mb_per_100k']:.1f} MB",
                         f"memory store: {base:.1f} MB", f"{v['vs_memory_store']:.2f}",
                         "flat (< 0.1)" if variant == "sqlite" else "",
                         sqlite_aim if variant == "sqlite" else ""))
    return rows


def steady_rows(r: dict[str, Any]) -> list[str]:
    """Rows of the steady-state (retained jobs) benchmark."""
    rows = []
    for store, levels in r["results"].items():
        empty = levels["0"]
        for key, f in levels.items():
            if key in ("0", "database"):
                continue
            aim = r["aims"].get(f"{store}: {f['retained']:,} retained >= 0.9 x empty", "")
            rows.append(_row(
                f"core no-op jobs/s, {store} store, {f['retained']:,} finished jobs retained"
                f" (cap {f['cap']:,})",
                f"{f['jobs_per_s']:.0f} jobs/s, {f['cpu_ms_per_job']:.2f} ms CPU/job"
                f" ({f.get('removed_per_job', 0):.1f} removed per job finished)",
                f"empty store: {empty['jobs_per_s']:.0f} jobs/s, "
                f"{empty['cpu_ms_per_job']:.2f} ms CPU/job",
                f"{f['vs_empty']:.2f}", "≥ 0.9", aim))
    rows.extend(_row(f"steady state, {store} store", why, "", "", "≥ 0.9", "not run")
                for store, why in r.get("unavailable", {}).items())
    return rows


def _where(machine: dict[str, Any]) -> str:
    return (f"Run {machine['date']} on {machine['platform']}, {machine['cpu_count']} CPUs, "
            f"{machine['memory_gb']} GB, Python {machine['python']}.")


def markdown() -> str:
    """Return the table of every result present, with the date and machine.

    The steady-state benchmark has a table of its own (it is often run on its own day).
    """
    rows, machine = [], None
    for name, builder in (("http_enqueue", http_rows), ("core_throughput", core_rows),
                          ("isolation", isolation_rows), ("memory", memory_rows)):
        result = read_result(name)
        if result is None:
            continue
        machine = machine or result["machine"]
        rows.extend(builder(result))
    parts = [] if machine is None else [_where(machine), "", HEADER, *rows]
    steady = read_result("retention_steady")
    if steady is not None:
        parts.extend([*([""] if parts else []), "Steady state: " + _where(steady["machine"]),
                      "", HEADER, *steady_rows(steady)])
    return "\n".join(parts) if parts else "(no results yet: run `python -m bench`)"


if __name__ == "__main__":
    print(markdown())
