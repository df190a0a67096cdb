"""Overload: a burst of jobs against a Python API with a knee, static limits beside adaptive.

The stand-in (``tests/standin.py``, in its own process) has an overload knee: a request
that arrives while more than ``KNEE`` work requests (both kinds) are in progress takes five
times longer, and every other such request fails (500, 503 in turn), counted by the
stand-in itself. The same burst (``videos`` videos, then ``questions`` questions, all
submitted at once) runs through a JobSystem with static limits
(``QUEUE_ADAPTIVE_CONCURRENCY=false``: 2 videos and 10 questions per instance) and with
the adaptive capacity (the default), one after the other in the same run, each against a
fresh stand-in. While a run goes on, its instance's limit is sampled every 50 ms for the
plot of the limit over time.

Aims (issue 20), adaptive against static: at most a quarter of the 5xx, every job
completed, total time no longer, Q&A p99 (submission to finish) lower.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Any

from actors import JobKind, JobState, JobSystem, Settings
from bench.common import REPO, percentile, ratio, write_result

NAME = "overload"
KNEE = 4
LATENCY_QA_S = 0.2
LATENCY_VIDEO_S = 1.0
SAMPLE_S = 0.05

_STANDIN_CODE = """
import json, logging, sys
logging.disable(logging.INFO)
from tests.standin import Knee, PythonApiStandIn
standin = PythonApiStandIn("127.0.0.1", 0)
standin.set_latency("ask-question", float(sys.argv[1]))
standin.set_latency("process-video", float(sys.argv[2]))
standin.set_knee(Knee(limit=int(sys.argv[3]), slowdown=5.0, fail_every=2, statuses=(500, 503)))
standin.start()
print(standin.port, flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
print(json.dumps({"max_in_progress": standin.max_unanswered_work(),
                  "overloaded": standin.overloaded(), "failures": standin.failed_by_knee(),
                  "calls": len(standin.calls("ask-question"))
                           + len(standin.calls("process-video"))}),
      flush=True)
standin.stop()
"""


class KneeStandIn:
    """The stand-in with a knee in a child process; its own counts read when it stops."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.stats: dict[str, Any] = {}

    def __enter__(self) -> KneeStandIn:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _STANDIN_CODE, str(LATENCY_QA_S), str(LATENCY_VIDEO_S),
             str(KNEE)], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        port = self.proc.stdout.readline().strip()
        if not port.isdigit():
            raise RuntimeError("the stand-in did not start")
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.close()
        line = self.proc.stdout.readline()
        self.stats = json.loads(line) if line.strip() else {}
        self.proc.wait(timeout=10)


def one_run(adaptive: bool, videos: int, questions: int) -> dict[str, Any]:
    """Run the burst once; return its figures, as the stand-in and the job system saw them."""
    with KneeStandIn() as standin:
        settings = Settings(
            python_api_base_url=standin.url, store="memory", adaptive_concurrency=adaptive,
            backoff_base_s=0.5, backoff_max_s=5.0, job_timeout_s=30.0,
            memory_check_interval_s=3600.0, max_waiting_qa=100_000,
        )
        system = JobSystem(settings).start()
        samples: list[tuple[float, int, int, int]] = []
        stop = threading.Event()
        try:
            started = time.monotonic()

            def sample() -> None:
                while not stop.wait(SAMPLE_S):
                    instance = system.snapshot()["instances"][0]
                    samples.append((round(time.monotonic() - started, 3),
                                    int(instance["capacity"]["limit"]),
                                    int(instance["limits"]["qa"]),
                                    sum(instance["in_flight"].values())))

            sampler = threading.Thread(target=sample, name="bench-sampler", daemon=True)
            sampler.start()
            ids = [system.submit(JobKind.VIDEO, {
                "video_url": f"https://www.youtube.com/watch?v=overload{n:03d}",
                "company_name": "acme", "source": "youtube"}).job.id for n in range(videos)]
            ids += [system.submit(JobKind.QA, {"question": f"Question {n}?",
                                               "company_name": "acme"}).job.id
                    for n in range(questions)]
            pause = threading.Event()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                jobs = [system.get(i) for i in ids]
                if all(j.state in (JobState.COMPLETED, JobState.FAILED) for j in jobs):
                    break
                pause.wait(0.05)
            elapsed = time.monotonic() - started
            stop.set()
            sampler.join(5)
            capacity = system.snapshot()["instances"][0]["capacity"]
        finally:
            stop.set()
            system.stop(drain=False)
    qa = [j for j in jobs if j.kind == JobKind.QA]
    qa_latency = [(j.finished_at or 0) - j.created_at for j in qa if j.finished_at]
    video_latency = [(j.finished_at or 0) - j.created_at for j in jobs
                     if j.kind == JobKind.VIDEO and j.finished_at]
    return {
        "mode": "adaptive" if adaptive else "static",
        "jobs": len(jobs),
        "completed": sum(1 for j in jobs if j.state == JobState.COMPLETED),
        "failed": sum(1 for j in jobs if j.state == JobState.FAILED),
        "attempts": sum(j.attempts for j in jobs),
        "total_s": round(elapsed, 2),
        "server_errors": sum(standin.stats.get("failures", {}).values()),
        "failures_by_status": standin.stats.get("failures", {}),
        "overloaded_calls": standin.stats.get("overloaded"),
        "calls": standin.stats.get("calls"),
        "max_in_progress": standin.stats.get("max_in_progress"),
        "qa_p50_s": round(percentile(qa_latency, 0.5), 3),
        "qa_p99_s": round(percentile(qa_latency, 0.99), 3),
        "video_max_s": round(max(video_latency, default=float("nan")), 3),
        "final_capacity": {k: capacity.get(k) for k in ("limit", "reason", "last_signal")},
        "limit_over_time": samples,
    }


def run(videos: int = 4, questions: int = 120, repeat: int = 1) -> dict[str, Any]:
    """Run static and adaptive ``repeat`` times each, interleaved; write the result."""
    runs: dict[str, list[dict[str, Any]]] = {"static": [], "adaptive": []}
    for _ in range(repeat):
        for adaptive_mode in (False, True):
            outcome = one_run(adaptive_mode, videos, questions)
            runs[outcome["mode"]].append(outcome)
    static, adaptive = runs["static"][-1], runs["adaptive"][-1]

    def worst(mode: str, key: str) -> float:
        return max(float(r[key]) for r in runs[mode])

    def best(mode: str, key: str) -> float:
        return min(float(r[key]) for r in runs[mode])

    aims = {
        "5xx at most a quarter of static's": worst("adaptive", "server_errors")
        <= best("static", "server_errors") / 4,
        "every job completed": all(r["failed"] == 0 and r["completed"] == r["jobs"]
                                   for r in runs["adaptive"]),
        "total time no longer than static": worst("adaptive", "total_s")
        <= best("static", "total_s"),
        "Q&A p99 lower": worst("adaptive", "qa_p99_s") < best("static", "qa_p99_s"),
    }
    result = {
        "knee": KNEE, "latency_qa_s": LATENCY_QA_S, "latency_video_s": LATENCY_VIDEO_S,
        "videos": videos, "questions": questions, "repeat": repeat,
        "static": static, "adaptive": adaptive,
        "runs": {mode: [{k: v for k, v in r.items() if k != "limit_over_time"} for r in rs]
                 for mode, rs in runs.items()},
        "errors_vs_static": ratio(adaptive["server_errors"], static["server_errors"]),
        "time_vs_static": ratio(adaptive["total_s"], static["total_s"]),
        "qa_p99_vs_static": ratio(adaptive["qa_p99_s"], static["qa_p99_s"]),
        "aims": {aim: "met" if met else "NOT met" for aim, met in aims.items()},
    }
    write_result(NAME, result)
    return result


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR)
    out = run()
    print(json.dumps({k: v for k, v in out.items() if k not in ("static", "adaptive")},
                     indent=2))
