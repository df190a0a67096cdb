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
    """Rows of the core throughput benchmark: each aim as our runner beside its baseline."""
    res, labels = r["results"], r["labels"]

    def figures(name: str) -> str:
        f = res[name]
        text = f"{labels[name]}: {f['jobs_per_s']:.0f} jobs/s, {f['cpu_ms_per_job']:.2f} ms CPU/job"
        if "redis_cpu_ms_per_job" in f:
            text += f" (+ {f['redis_cpu_ms_per_job']:.2f} ms in redis-server)"
        return text

    rows = []
    for c in r["comparisons"]:
        ours, baseline = c["ours"], c["baseline"]
        name = f"core no-op jobs/s, {labels[ours]} vs {labels[baseline]}"
        if c["met"] == "not run":
            rows.append(_row(name, figures(ours), f"{labels[baseline]}: "
                             f"{r['unavailable'][baseline]}", "", c["aim"], "not run"))
        else:
            rows.append(_row(name, figures(ours), figures(baseline),
                             f"{c['jobs_ratio']:.2f} (CPU {c['cpu_ratio']:.2f}x)", c["aim"],
                             c["met"]))
    return rows


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


def overload_rows(r: dict[str, Any]) -> list[str]:
    """Rows of the overload benchmark: adaptive capacity beside the static limits."""
    a, st, aims = r["adaptive"], r["static"], r["aims"]

    def aim(prefix: str) -> str:
        return next(v for k, v in aims.items() if k.startswith(prefix))

    return [
        _row("overload: 5xx from the stand-in", a["server_errors"], st["server_errors"],
             f"{r['errors_vs_static']}", "≤ 0.25", aim("5xx")),
        _row("overload: jobs completed", f"{a['completed']}/{a['jobs']}",
             f"{st['completed']}/{st['jobs']}", "", "all", aim("every job")),
        _row("overload: total time", f"{a['total_s']} s", f"{st['total_s']} s",
             f"{r['time_vs_static']}", "≤ 1", aim("total time")),
        _row("overload: Q&A p50 / p99 (submitted to finished)",
             f"{a['qa_p50_s']} / {a['qa_p99_s']} s", f"{st['qa_p50_s']} / {st['qa_p99_s']} s",
             f"{r['qa_p99_vs_static']}", "p99 < 1", aim("Q&A p99")),
        _row("overload: most calls in progress at the stand-in", a["max_in_progress"],
             st["max_in_progress"], "", f"near the knee ({r['knee']})", ""),
    ]


def _where(machine: dict[str, Any]) -> str:
    return (f"Run {machine['date']} on {machine['platform']}, {machine['cpu_count']} CPUs, "
            f"{machine['memory_gb']} GB, Python {machine['python']}.")


def markdown() -> str:
    """Return the table of every result present, with the date and machine.

    The core throughput and steady-state benchmarks have tables of their own (they are often
    run on their own day).
    """
    rows, machine = [], None
    for name, builder in (("http_enqueue", http_rows), ("isolation", isolation_rows),
                          ("memory", memory_rows)):
        result = read_result(name)
        if result is None:
            continue
        machine = machine or result["machine"]
        rows.extend(builder(result))
    parts = [] if machine is None else [_where(machine), "", HEADER, *rows]
    for name, title, builder in (("core_throughput", "Core throughput", core_rows),
                                 ("retention_steady", "Steady state", steady_rows),
                                 ("overload", "Overload (adaptive vs static)", overload_rows)):
        result = read_result(name)
        if result is not None:
            parts.extend([*([""] if parts else []), f"{title}: " + _where(result["machine"]),
                          "", HEADER, *builder(result)])
    return "\n".join(parts) if parts else "(no results yet: run `python -m bench`)"


if __name__ == "__main__":
    print(markdown())
