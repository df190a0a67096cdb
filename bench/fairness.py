"""Fair share: a big, a medium and a small company on two video slots, fair order vs FIFO.

Two parts, each running FIFO and the fair order in the same run:

* ``replay``: the Dispatcher's own ``WaitingQueue`` and ``FairClock`` (the code that orders
  the local queue) driven on a virtual clock through a day of work with mixed video
  lengths (1, 3 and 10 minutes), so the figures are in Python API minutes, not milliseconds
  of a stand-in. The big company queues 60 videos at 0:00, the medium 20 at 0:10, the small
  4 at 0:30 (weights 1:1:1, then 2:1:1 for the big one). FIFO is the same queue with one
  company for all. Measured cost is charged as the Dispatcher does (``charge``).
* ``actors``: real JobSystems against the stand-in (own process, 20 ms per video, two
  slots), the same arrivals in jobs: jobs per second fair vs FIFO (one company for all).

Figures: the small company's p99 wait (aim: at most its own work's length, its videos one
after the other, plus one job of the others), Jain's fairness index of the service the big
and the medium company received divided by their weights while both had work waiting
(aim: >= 0.95), and throughput (aim: >= 0.95 of FIFO). The aims are judged on the five
workloads; ``wide`` replays many more (seeds 0 to ``wide_seeds - 1``) to show how often each
holds, for FIFO, the fair order without the newcomer credit (plain SFQ) and with it.
"""

from __future__ import annotations

import heapq
import json
import random
import time
from typing import Any

from actors import JobKind, JobSystem, Settings
from actors.dispatch.fairness import NEWCOMER_CREDIT_JOBS, NOMINAL_COST_S, FairClock, FairShare
from actors.dispatch.scheduling import WaitingQueue
from actors.model.jobs import Job
from bench.common import StandInProcess, percentile, ratio, wait_until, write_result

NAME = "fairness"
SLOTS = 2
VIDEO = JobKind.VIDEO
ARRIVALS = (("big", 60, 0.0), ("medium", 20, 600.0), ("small", 4, 1800.0))
"""(company, videos, when they are queued, in seconds)."""
LENGTHS_S = (60.0, 180.0, 600.0)


def workload(seed: int) -> list[tuple[Job, float]]:
    """The jobs (arrival order) and their lengths: mixed sizes, drawn once per seed."""
    rng = random.Random(seed)
    jobs: list[tuple[Job, float]] = []
    for company, count, at in ARRIVALS:
        for _ in range(count):
            seq = len(jobs) + 1
            job = Job(id=f"{company}-{seq}", kind=VIDEO, priority=2, seq=seq, created_at=at,
                      data={"company_name": company})
            jobs.append((job, rng.choice(LENGTHS_S)))
    return jobs


def replay(jobs: list[tuple[Job, float]], weights: dict[str, float] | None,
           fifo: bool, credit_jobs: float = NEWCOMER_CREDIT_JOBS) -> dict[str, Any]:
    """Run the jobs through a WaitingQueue on a virtual clock; return waits and service."""
    share = FairShare(weights or {}, credit_jobs)
    queue = WaitingQueue(0.0, fairness=FairClock(share))
    length = {job.id: size for job, size in jobs}
    company = {job.id: job.data["company_name"] for job, _ in jobs}
    arrivals = sorted(((job.created_at, job.seq, job) for job, _ in jobs), key=lambda a: a[:2])
    running: list[tuple[float, str]] = []  # (end, job id)
    ran: list[tuple[str, float, float]] = []  # (company, start, end)
    waits: dict[str, list[float]] = {name: [] for name, _, _ in ARRIVALS}
    now, i = 0.0, 0
    while i < len(arrivals) or running or len(queue):
        next_arrival = arrivals[i][0] if i < len(arrivals) else float("inf")
        next_end = running[0][0] if running else float("inf")
        now = min(next_arrival, next_end)
        while running and running[0][0] <= now:
            _, job_id = heapq.heappop(running)
            if not fifo:
                queue.fair.charge(VIDEO, 2, company[job_id], length[job_id] - NOMINAL_COST_S[VIDEO])
        while i < len(arrivals) and arrivals[i][0] <= now:
            job = arrivals[i][2]
            queue.push(job.replace(data={"company_name": "all"}) if fifo else job)
            i += 1
        while len(running) < SLOTS and len(queue):
            head = queue.pop_next((VIDEO,), now)
            assert head is not None
            heapq.heappush(running, (now + length[head.id], head.id))
            ran.append((company[head.id], now, now + length[head.id]))
            waits[company[head.id]].append(now - head.created_at)
    return {"waits": waits, "ran": ran, "makespan_s": now}


def jain(ran: list[tuple[str, float, float]], weights: dict[str, float]
         ) -> tuple[float, float, float]:
    """Jain's index of service / weight of big and medium while both had work (backlogged).

    The small company is never backlogged for long (that is the point); its figure is its wait.
    """
    names = ("big", "medium")
    start = max(at for name, _, at in ARRIVALS if name in names)
    end = min(max(e for c, _, e in ran if c == name) for name in names)
    served = dict.fromkeys(names, 0.0)
    for name, s, e in ran:
        if name in served:
            served[name] += max(0.0, min(e, end) - max(s, start))
    x = [served[name] / weights.get(name, 1.0) for name in names]
    index = sum(x) ** 2 / (len(x) * sum(v * v for v in x)) if any(x) else float("nan")
    return round(index, 4), start, end


ORDERS = (("fifo", True, NEWCOMER_CREDIT_JOBS), ("fair", False, NEWCOMER_CREDIT_JOBS))
WIDE_ORDERS = (*ORDERS, ("fair_no_credit", False, 0.0))


def replay_figures(seed: int, weights: dict[str, float],
                   orders: tuple[tuple[str, bool, float], ...] = ORDERS) -> dict[str, Any]:
    """FIFO and the fair order (and more ``orders``: label, FIFO?, credit) on one workload."""
    jobs = workload(seed)
    small = [size for job, size in jobs if job.data["company_name"] == "small"]
    one_other = max(size for job, size in jobs if job.data["company_name"] != "small")
    figures: dict[str, Any] = {}
    for label, fifo, credit_jobs in orders:
        run = replay(jobs, weights, fifo, credit_jobs)
        index, start, end = jain(run["ran"], weights)
        figures[label] = {
            "small_p99_wait_min": round(percentile(run["waits"]["small"], 0.99) / 60, 1),
            "small_max_wait_min": round(max(run["waits"]["small"]) / 60, 1),
            "medium_p99_wait_min": round(percentile(run["waits"]["medium"], 0.99) / 60, 1),
            "big_p99_wait_min": round(percentile(run["waits"]["big"], 0.99) / 60, 1),
            "jain_index": index,
            "window_min": [round(start / 60, 1), round(end / 60, 1)],
            "makespan_min": round(run["makespan_s"] / 60, 1),
        }
    aim_s = sum(small) + one_other  # its own work's length plus one job of the others
    figures["small_aim_min"] = round(aim_s / 60, 1)
    figures["throughput_vs_fifo"] = ratio(figures["fifo"]["makespan_min"],
                                          figures["fair"]["makespan_min"])
    return figures


def actors_run(url: str, fifo: bool) -> dict[str, Any]:
    """Real actors: the arrivals (in job counts) through a JobSystem; jobs/s and small waits."""
    settings = Settings(python_api_base_url=url, store="memory", max_concurrent_videos=SLOTS)
    if "adaptive_concurrency" in Settings.__dataclass_fields__:
        settings = settings.replace(adaptive_concurrency=False)  # the order, not the capacity
    system = JobSystem(settings).start()
    try:
        ids: dict[str, list[str]] = {}
        began = time.monotonic()
        for company, count, _ in ARRIVALS:
            for n in range(count):
                data = {"video_url": f"https://youtu.be/{company[:3]}{n:08d}",
                        "company_name": "acme" if fifo else company, "source": "youtube"}
                ids.setdefault(company, []).append(system.submit(VIDEO, data).job.id)
        every = [job_id for found in ids.values() for job_id in found]
        if not wait_until(lambda: all(system.get(j).state.finished for j in every), 300, 0.01):
            raise RuntimeError("videos did not finish")
        took = time.monotonic() - began
        small = [system.get(j) for j in ids["small"]]
        waits = [((job.started_at or 0.0) - job.created_at) * 1000 for job in small]
    finally:
        system.stop(drain=False)
    return {"jobs_per_s": round(len(every) / took, 1), "small_p99_wait_ms": round(
        percentile(waits, 0.99), 1)}


WEIGHTS = {"equal weights": {}, "big weighs 2": {"big": 2.0}}


def wide(seeds: int) -> dict[str, Any]:
    """Per weighting and order, over ``seeds`` workloads: how often each aim holds."""
    found: dict[str, Any] = {}
    for name, weights in WEIGHTS.items():
        runs = [replay_figures(seed, weights, WIDE_ORDERS) for seed in range(seeds)]
        found[name] = {label: {
            "small_within_aim": sum(r[label]["small_p99_wait_min"] <= r["small_aim_min"]
                                    for r in runs),
            "jain_at_least_0_95": sum(r[label]["jain_index"] >= 0.95 for r in runs),
            "jain_min": min(r[label]["jain_index"] for r in runs),
            "jain_median": round(percentile([r[label]["jain_index"] for r in runs], 0.5), 4),
            "small_p99_wait_median_min": round(percentile(
                [r[label]["small_p99_wait_min"] for r in runs], 0.5), 1),
            "makespan_vs_fifo_min": min(ratio(r["fifo"]["makespan_min"],
                                              r[label]["makespan_min"]) or 0.0 for r in runs),
            "workloads": seeds} for label, _, _ in WIDE_ORDERS}
    return found


def run(seeds: int = 5, repeat: int = 3, wide_seeds: int = 100) -> dict[str, Any]:
    """Both parts (and the replay over ``wide_seeds`` workloads); write the results."""
    replays = {name: [replay_figures(seed, weights) for seed in range(seeds)]
               for name, weights in WEIGHTS.items()}
    actors: dict[str, list[dict[str, Any]]] = {"fifo": [], "fair": []}
    with StandInProcess(latency_video_s=0.02) as standin:
        for _ in range(repeat):
            for label in ("fifo", "fair"):
                actors[label].append(actors_run(standin.url, label == "fifo"))
    best = {label: max(r["jobs_per_s"] for r in found) for label, found in actors.items()}
    worst_replay = {name: {
        "small_p99_wait_min": max(r["fair"]["small_p99_wait_min"] for r in runs),
        "small_p99_wait_fifo_min": max(r["fifo"]["small_p99_wait_min"] for r in runs),
        "small_aim_min": min(r["small_aim_min"] for r in runs),
        "small_within_aim": sum(r["fair"]["small_p99_wait_min"] <= r["small_aim_min"]
                                for r in runs),
        "seeds": len(runs),
        "jain_min": min(r["fair"]["jain_index"] for r in runs),
        "jain_fifo_min": min(r["fifo"]["jain_index"] for r in runs),
        "throughput_vs_fifo_min": min(r["throughput_vs_fifo"] or 0.0 for r in runs)}
        for name, runs in replays.items()}
    throughput = ratio(best["fair"], best["fifo"])
    aims = {}
    for name, w in worst_replay.items():
        aims[f"{name}: small p99 wait <= its work + one other job"] = (
            "met" if w["small_within_aim"] == w["seeds"]
            else f"met in {w['small_within_aim']} of {w['seeds']} workloads")
        aims[f"{name}: Jain's index >= 0.95"] = "met" if w["jain_min"] >= 0.95 else "not met"
    aims["actors: throughput >= 0.95 of FIFO"] = (
        "met" if throughput is not None and throughput >= 0.95 else "not met")
    result = {
        "setup": {"slots": SLOTS, "arrivals": [list(a) for a in ARRIVALS],
                  "lengths_s": list(LENGTHS_S), "seeds": seeds, "repeat": repeat,
                  "newcomer_credit_jobs": NEWCOMER_CREDIT_JOBS, "wide_seeds": wide_seeds,
                  "replay": "WaitingQueue + FairClock on a virtual clock; worst over seeds",
                  "wide": "the replay over seeds 0 .. wide_seeds-1: counts of workloads",
                  "actors": "JobSystem (memory store), stand-in 20 ms per video; best of "
                            "repeats"},
        "replay": worst_replay,
        "replay_runs": replays,
        "wide": wide(wide_seeds) if wide_seeds > 0 else {},
        "actors": {"runs": actors, "best_jobs_per_s": best, "throughput_vs_fifo": throughput},
        "aims": aims,
    }
    write_result(NAME, result)
    return result


if __name__ == "__main__":
    print(json.dumps({k: v for k, v in run().items() if k != "replay_runs"}, indent=2))
