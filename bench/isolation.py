"""Isolation: Q&A latency while 200 video jobs wait and every video slot is busy, beside idle.

One JobSystem per store against a stand-in of the Python API (own process) that answers
questions at once and holds every video for an hour. Phase ``idle``: questions arrive at a
steady pace on an otherwise idle system. Phase ``busy``: 202 videos are submitted first,
so that both video slots are held and 200 videos wait; then the same questions. A
question's latency is its own record's ``finished_at - created_at``: from ``submit`` to the
Dispatcher taking its answer, timed by the system's clock, not by a poller.

Aim (issue 7): p99 in ``busy`` within 20 ms of p99 in ``idle``.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
from pathlib import Path
from typing import Any

from actors import JobKind, JobState, JobSystem, Settings
from bench.common import StandInProcess, percentile, wait_until, write_result
from bench.peers import QUESTION

NAME = "isolation"
VIDEOS_WAITING = 200
AIM_MS = 20.0


def ask_questions(system: JobSystem, count: int, interval_s: float) -> list[float]:
    """Submit ``count`` questions ``interval_s`` apart; return their latencies in ms."""
    pause = threading.Event()
    ids = []
    for _ in range(count):
        ids.append(system.submit(JobKind.QA, QUESTION).job.id)
        pause.wait(interval_s)

    def all_done() -> bool:
        return all(system.get(job_id).state.finished for job_id in ids)

    if not wait_until(all_done, 60, 0.05):
        raise RuntimeError("questions did not finish")
    jobs = [system.get(job_id) for job_id in ids]
    if any(job.state is not JobState.COMPLETED for job in jobs):
        raise RuntimeError("a question failed")
    return [((job.finished_at or 0.0) - job.created_at) * 1000 for job in jobs]


def latency_figures(latencies_ms: list[float]) -> dict[str, Any]:
    """Return count, p50, p99 and max of ``latencies_ms``."""
    return {"questions": len(latencies_ms),
            "p50_ms": round(percentile(latencies_ms, 0.5), 2),
            "p99_ms": round(percentile(latencies_ms, 0.99), 2),
            "max_ms": round(max(latencies_ms), 2)}


def measure(url: str, store: str, questions: int, interval_s: float) -> dict[str, Any]:
    """Run the idle phase, fill the video queue, run the busy phase; return both."""
    with tempfile.TemporaryDirectory(prefix="bench-iso-") as tmp:
        settings = Settings(python_api_base_url=url, store=store,
                            db_path=str(Path(tmp) / "jobs.sqlite3"))
        system = JobSystem(settings).start()
        try:
            ask_questions(system, 50, interval_s)  # warm-up, not counted
            idle = ask_questions(system, questions, interval_s)
            for n in range(VIDEOS_WAITING + settings.max_concurrent_videos):
                system.submit(JobKind.VIDEO, {"video_url": f"https://youtu.be/bench{n:04d}",
                                              "company_name": "acme-corp",
                                              "source": "youtube"})

            def video_slots_busy() -> bool:
                video = system.snapshot()["kinds"]["video"]
                return bool(video["running"] == settings.max_concurrent_videos
                            and video["waiting"] == VIDEOS_WAITING)

            if not wait_until(video_slots_busy, 30, 0.05):
                raise RuntimeError(f"video slots not busy: {system.snapshot()['kinds']}")
            busy = ask_questions(system, questions, interval_s)
            still = system.snapshot()["kinds"]["video"]
        finally:
            system.stop(drain=False)
    return {"idle": latency_figures(idle), "busy": latency_figures(busy),
            "video_during_busy": {"running": still["running"], "waiting": still["waiting"]}}


def run(questions: int = 400, interval_s: float = 0.005, repeat: int = 3) -> dict[str, Any]:
    """Measure both stores ``repeat`` times and write ``bench/results/isolation.json``.

    Each figure is the median over the repeats (this machine is shared: one run's p99
    rests on its four worst questions).
    """
    results: dict[str, Any] = {}
    with StandInProcess(latency_qa_s=0.0, latency_video_s=3600.0) as standin:
        runs: dict[str, list[dict[str, Any]]] = {"memory": [], "sqlite": []}
        for _ in range(repeat):
            for store, found in runs.items():
                found.append(measure(standin.url, store, questions, interval_s))
    for store, found in runs.items():
        figures: dict[str, Any] = {
            phase: {key: statistics.median(r[phase][key] for r in found)
                    for key in ("p50_ms", "p99_ms", "max_ms")}
            for phase in ("idle", "busy")}
        figures["runs"] = found
        idle, busy = figures["idle"], figures["busy"]
        figures["p99_busy_minus_idle_ms"] = round(busy["p99_ms"] - idle["p99_ms"], 2)
        figures["p99_busy_vs_idle"] = round(busy["p99_ms"] / idle["p99_ms"], 3)
        results[store] = figures
    aims = {f"{store}: busy p99 within {AIM_MS:g} ms of idle p99":
            "met" if results[store]["p99_busy_minus_idle_ms"] <= AIM_MS else "not met"
            for store in results}
    result = {
        "setup": {"questions_per_phase": questions, "interval_s": interval_s,
                  "repeat": repeat, "figure": "median over repeats",
                  "videos_waiting": VIDEOS_WAITING, "video_slots": 2,
                  "latency": "job record finished_at - created_at"},
        "results": results,
        "aims": aims,
    }
    write_result(NAME, result)
    return result


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
