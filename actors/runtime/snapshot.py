"""The system snapshot: what every actor reported, assembled into one piece of plain data.

``JobSystem.snapshot()`` asks the Dispatcher, the JobRegistry and the
MemoryWatchdog to ``Inspect`` themselves and hands the answers here. The shape
is what the REPL, ``/health``, ``/api/queue/status``, the metrics and the
dashboard read.

A running job is described by what it is (``describe_job``: company, owner, a one-line
summary) without its whole data: the snapshot is built often and kept small, and a
job's data may hold more than an operator needs to see.
"""

from __future__ import annotations

from typing import Any

from actors.model.jobs import Job, JobKind
from actors.model.settings import Settings
from actors.runtime.redact import redact_url

SUMMARY_CHARS = 60
"""How much of a question a summary keeps, before its ellipsis."""
ELLIPSIS = "\u2026"


def assemble_snapshot(
    settings: Settings,
    *,
    state: str,
    dispatch: dict[str, Any],
    records: dict[str, Any],
    memory: dict[str, Any],
    actors: list[dict[str, Any]],
    supabase: dict[str, Any],
    timers_pending: int,
) -> dict[str, Any]:
    """Return the snapshot built from the actors' ``Inspect`` answers."""
    kinds: dict[str, Any] = {}
    for kind in JobKind:
        limits = settings.limits(kind)
        counts = records["counts"][kind.value]
        kinds[kind.value] = {
            **dispatch["kinds"][kind.value],
            "completed": counts["completed"],
            "failed": counts["failed"],
            "cancelled": counts["cancelled"],
            "max_concurrent": limits.max_concurrent,
            "max_waiting": limits.max_waiting,
            "max_concurrent_per_company": limits.max_concurrent_per_company,
            "call_hold_s": settings.call_hold_s,
        }
    last = memory["last"] or {}
    workers = [{"name": f"{info['actor']} {worker_id}", "alive": info["alive"],
                "mailbox": info["mailbox"], "job_id": info["job_id"]}
               for pool in dispatch["pools"].values()
               for worker_id, info in pool["workers"].items()]
    return {
        "state": state,
        "accepting": state == "running",
        "draining": state == "draining",
        "kinds": kinds,
        "running_jobs": dispatch["running_jobs"],
        "pools": {k: {key: v for key, v in p.items() if key != "workers"}
                  for k, p in dispatch["pools"].items()},
        "supervisor": {
            "restarts": sum(p["restarts"] for p in dispatch["pools"].values()),
            "failed_pools": [k for k, p in dispatch["pools"].items() if p["failed"]],
        },
        "memory": {
            "process_rss_mb": last.get("process_rss_mb"),
            "python_api": {
                "memory_mb": last.get("python_api_mb"),
                "status": last.get("python_api_status", "unknown"),
                "reachable": bool(last.get("python_api_reachable", False)),
            },
            "threshold_mb": memory["threshold_mb"],
            "max_memory_mb": memory["max_memory_mb"],
            "pressure": memory["pressure"],
            "admission_refused": memory["admission_refused"],
            "checked_at": last.get("checked_at"),
        },
        "instances": _instances(dispatch["instances"], last.get("instances") or ()),
        "all_instances_open": dispatch["all_instances_open"],
        # per kind, the companies with work: waiting, running, weight, share, fair share
        "companies": dispatch.get("companies"),
        "shared_queue": dispatch.get("shared"),  # None unless the store is shared (postgres)
        "registry": {k: v for k, v in records.items() if k != "counts"},
        "store": _store(records, dispatch.get("shared")),
        "supabase": supabase,
        "timers_pending": timers_pending,
        "actors": actors + workers,
    }


def describe_job(job: Job) -> dict[str, str | None]:
    """Return what ``job`` is, for operators: its company, its owner and a one-line summary.

    The summary of a video is its canonical URL (``data.video_url``, redacted as every URL
    shown is); of a question, its first words (``first_words``).
    """
    company = job.data.get("company_name")
    if job.kind is JobKind.VIDEO:
        url = job.data.get("video_url")
        summary = redact_url(url) if isinstance(url, str) and url else None
    else:
        question = job.data.get("question")
        summary = first_words(question) if isinstance(question, str) and question else None
    return {"company": company if isinstance(company, str) else None,
            "owner": job.owner, "summary": summary}


def first_words(text: str, limit: int = SUMMARY_CHARS) -> str:
    """Return ``text`` on one line, cut to at most ``limit`` characters on a word boundary.

    A cut text ends in an ellipsis; a single word longer than ``limit`` is cut inside it.
    """
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    head = line[:limit + 1]  # one more: a space just past the limit ends a whole word
    cut = head.rpartition(" ")[0] or line[:limit]
    return (cut.rstrip(" ,;:.-") or cut) + ELLIPSIS


def _instances(routing: list[dict[str, Any]], readings: Any) -> list[dict[str, Any]]:
    """Merge the Dispatcher's view of each Python API instance with its last memory reading."""
    by_url = {redact_url(r["url"]): r for r in readings}  # as describe() shows them
    return [
        {**item, "status": by_url.get(item["url"], {}).get("status", "unknown"),
         "reachable": bool(by_url.get(item["url"], {}).get("reachable", False))}
        for item in routing
    ]


def _store(records: dict[str, Any], shared: dict[str, Any] | None) -> dict[str, Any]:
    """The job store as a component of health: reachable, writable, latency, last error."""
    kind = (records.get("store") or {}).get("kind")
    writable = bool(records.get("store_writable", True))
    error = records.get("store_error")
    latency_ms = None
    reachable = True
    if shared is not None:  # the shared store: the Dispatcher's last reading of it
        reachable = bool(shared.get("store_reachable", True)) and not shared.get("fenced")
        latency_ms = shared.get("store_latency_ms")
        error = error or shared.get("store_error")
        if shared.get("fenced"):
            error = error or "leases cannot be renewed: this instance is fenced"
    return {"kind": kind, "reachable": reachable, "writable": writable and reachable,
            "latency_ms": latency_ms, "last_error": error,
            "parked_writes": records.get("parked_writes", 0)}
