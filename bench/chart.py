"""The summary chart, ``bench/results/summary.png``: each benchmark as a ratio to its baseline.

Five panels from ``bench/results/*.json`` (matplotlib, Agg backend): HTTP enqueue and
core throughput relative to their limits, Q&A latency idle and busy, RSS over
retained jobs, and throughput with retained jobs relative to the empty store. A dashed
line marks each aim. ``python -m bench.chart`` redraws it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.common import read_result, results_dir

OURS, LIMIT, PEER, DURABLE = "#2a6fb0", "#999999", "#d08c2c", "#8c5a2c"


def _bars(ax: Any, labels: list[str], values: list[float], colors: list[str],
          notes: list[str]) -> None:
    bars = ax.bar(labels, values, color=colors)
    ax.set_ylim(0, max(values, default=1) * 1.22)
    for bar, note in zip(bars, notes, strict=True):
        ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                    textcoords="offset points")
    ax.tick_params(axis="x", labelsize=8)


def http_panel(ax: Any, r: dict[str, Any]) -> None:
    """Throughput of each server relative to the bare route, with the 0.8 aim."""
    runs = r["runs"]
    names = list(runs)
    base = runs["bare"]["throughput_rps"]
    labels = {"bare": "bare\nFlask", "memory": "memory", "sqlite": "sqlite",
              "memory_api_2s": "memory\nAPI 2 s", "sqlite_api_2s": "sqlite\nAPI 2 s"}
    _bars(ax, [labels.get(n, n) for n in names],
          [runs[n]["throughput_rps"] / base for n in names],
          [LIMIT if n == "bare" else OURS for n in names],
          [f"{runs[n]['throughput_rps']:.0f}/s\np99 {runs[n]['p99_ms']:.0f} ms" for n in names])
    ax.axhline(0.8, ls="--", color="k", lw=0.8)
    ax.set_ylabel("throughput / bare route")
    ax.set_title("HTTP enqueue, 32 connections", fontsize=10)


def core_panel(ax: Any, r: dict[str, Any]) -> None:
    """Jobs per second relative to the ThreadPoolExecutor, with the 0.5 aim."""
    res, labels, durable = r["results"], r["labels"], set(r["durable"])
    names = list(res)
    colors = [LIMIT if n == "threadpool" else OURS if n.startswith("jobsystem")
              else DURABLE if n in durable else PEER for n in names]
    _bars(ax, [labels[n].replace(" store", "") for n in names],
          [res[n]["vs_threadpool"] for n in names], colors,
          [f"{res[n]['jobs_per_s']:.0f}/s" for n in names])
    ax.tick_params(axis="x", labelsize=7, labelrotation=35)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    ax.axhline(0.5, ls="--", color="k", lw=0.8)
    ax.set_ylabel("jobs/s / ThreadPoolExecutor")
    ax.set_title(f"Core throughput, {r['machine']['date'][:10]}: no-op jobs "
                 "(orange: in memory, brown: durable)", fontsize=9)


def isolation_panel(ax: Any, r: dict[str, Any]) -> None:
    """Q&A p50 and p99 latency, idle and with 200 videos waiting."""
    labels, values, colors, notes = [], [], [], []
    for store, f in r["results"].items():
        for phase in ("idle", "busy"):
            labels.append(f"{store}\n{phase}")
            values.append(f[phase]["p99_ms"])
            colors.append(LIMIT if phase == "idle" else OURS)
            notes.append(f"p50 {f[phase]['p50_ms']:.1f}\np99 {f[phase]['p99_ms']:.1f}")
    _bars(ax, labels, values, colors, notes)
    ax.set_ylabel("Q&A p99 latency (ms)")
    ax.set_title("Isolation: Q&A with 200 videos waiting", fontsize=10)


def memory_panel(ax: Any, r: dict[str, Any]) -> None:
    """RSS over retained finished jobs per variant; idle RSS in the title."""
    labels = {"memory": "memory store", "sqlite": "sqlite store"}
    for variant, v in r["retained"].items():
        xs = [s["retained"] / 1000 for s in v["samples"]]
        ys = [s["rss_mb"] for s in v["samples"]]
        ax.plot(xs, ys, marker="o", ms=3,
                label=f"{labels.get(variant, variant)}: +{v['growth_mb_per_100k']:.0f} MB/100k")
    ax.set_xlabel("finished jobs retained (thousands)")
    ax.set_ylabel("RSS (MB)")
    ax.legend(fontsize=7)
    idle = r["idle"]
    auth = f", auth on {idle['app_auth_mb']:.0f}" if "app_auth_mb" in idle else ""
    ax.set_title(f"Memory (idle server {idle['app_mb']:.0f} MB{auth}, "
                 f"bare {idle['bare_mb']:.0f} MB)", fontsize=10)


def steady_panel(ax: Any, r: dict[str, Any]) -> None:
    """Jobs per second with finished jobs retained, relative to the empty store, aim 0.9."""
    labels, values, colors, notes = [], [], [], []
    for store, levels in r["results"].items():
        for key, f in levels.items():
            if key == "database":
                continue
            labels.append(f"{store}\n{f['retained'] // 1000}k")
            values.append(f["vs_empty"])
            colors.append(LIMIT if f["retained"] == 0 else OURS)
            notes.append(f"{f['jobs_per_s']:.0f}/s")
    _bars(ax, labels, values, colors, notes)
    ax.axhline(0.9, ls="--", color="k", lw=0.8)
    ax.set_ylabel("jobs/s / empty store")
    ax.set_title(f"Steady state, {r['machine']['date'][:10]}: finished jobs retained",
                 fontsize=10)


def render(path: Path | None = None) -> Path | None:
    """Draw every panel whose results exist; return the PNG's path (``None`` if none)."""
    path = path or results_dir() / "summary.png"
    panels = [(name, draw, read_result(name)) for name, draw in (
        ("http_enqueue", http_panel), ("core_throughput", core_panel),
        ("isolation", isolation_panel), ("memory", memory_panel),
        ("retention_steady", steady_panel))]
    panels = [p for p in panels if p[2] is not None]
    if not panels:
        return None
    columns = max(2, -(-len(panels) // 2))
    fig, axes = plt.subplots(2, columns, figsize=(5.5 * columns, 8))
    machine = panels[0][2]["machine"]
    for ax, (_, draw, result) in zip(axes.flat, panels, strict=False):
        draw(ax, result)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(f"QuDemo jobs benchmarks, {machine['date']}, {machine['cpu_count']} CPUs, "
                 f"Python {machine['python']} (dashed: aim)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path



def overload_plot(path: Path | None = None) -> Path | None:
    """Draw ``overload.png``: the adaptive limit over time beside the static run, the knee."""
    result = read_result("overload")
    if result is None:
        return None
    path = path or results_dir() / "overload.png"
    fig, ax = plt.subplots(figsize=(9, 4))
    for mode, color in (("static", PEER), ("adaptive", OURS)):
        samples = result[mode]["limit_over_time"]
        times = [t for t, *_ in samples]
        if mode == "adaptive":
            ax.step(times, [limit for _, limit, _, _ in samples], where="post", color=color,
                    lw=1.6, label="adaptive: limit of the instance (both kinds)")
        ax.plot(times, [n for *_, n in samples], color=color, lw=0.8, alpha=0.7,
                label=f"{mode}: calls in flight ({result[mode]['server_errors']} 5xx, "
                      f"done in {result[mode]['total_s']:.1f} s)")
    ax.axhline(result["knee"], ls="--", color="k", lw=0.8, label="the stand-in's knee")
    ax.set_xlabel("seconds since the burst")
    ax.set_ylabel("calls")
    ax.set_ylim(0, 13)
    ax.legend(fontsize=7, loc="upper right")
    machine = result["machine"]
    ax.set_title(f"Overload: {result['videos']} videos + {result['questions']} questions, knee "
                 f"at {result['knee']}; {machine['date'][:10]}, {machine['cpu_count']} CPUs",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    print(render())
    print(overload_plot())
