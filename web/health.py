"""Health probes: ``/health`` (the seed's shape), ``/health/live``, ``/health/ready``.

``/health`` answers 200 ``healthy`` or ``degraded`` (a queue paused, memory pressure, the
Python API unreachable or unhealthy, draining, Supabase configured but unreachable) and
503 ``unhealthy`` when an actor of the core is dead or the core does not answer, the job
store cannot be reached or written (``health.store``: reachable, writable, latency, last
error), or a kind has no live worker.
``memory.node`` repeats ``memory.process`` for the dashboards built on the Node backend;
``health.supabase`` is ``{configured, reachable}`` (``reachable`` null when not configured).
``/health/live`` is 200 while the core actors answer a ping (within ``LIVE_TIMEOUT_S``), 503
when one is dead or stuck, so the platform restarts the process; ``/health/ready`` is 200
while the core is alive, accepting and not unhealthy, else 503 with ``Retry-After`` (a
draining instance must leave the load balancer) and the reasons. All three are exempt from
the rate limit and need no token, so they show no address (Python API instances are
numbered; their redacted addresses are in the authenticated ``/api/queue/status``) and no
secret: free text (reasons, the store's last error) has every URL replaced by ``[address]``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, Response, jsonify

from actors.runtime.redact import hide_addresses, redact_text
from web.context import extension, job_system
from web.present import instances_json, iso

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

NOT_READY_RETRY_AFTER_S = 10
LIVE_TIMEOUT_S = 3.0
"""How long each core actor may take to answer the liveness ping (Docker's check allows 4 s)."""


@bp.get("/health")
def health() -> Response:
    """Report memory, queues, concurrency and an overall status."""
    system = job_system()
    try:
        snapshot = system.snapshot()
        alive = system.alive
    except Exception as exc:  # a probe reports a broken core; it must never 500
        logger.warning("health: job system did not answer: %s", exc)
        return _reply(503, "unhealthy", ["job system not answering"], None)
    reasons = _degraded_reasons(snapshot)
    broken = _unhealthy_reasons(snapshot)
    if not alive:
        broken.insert(0, "an actor of the job system is dead")
    if broken:
        return _reply(503, "unhealthy", [*broken, *reasons], snapshot)
    return _reply(200, "degraded" if reasons else "healthy", reasons, snapshot)


@bp.get("/health/live")
def live() -> Response:
    """Answer 200 while the core actors answer a ping, else 503 (restart me)."""
    try:
        answering = job_system().responsive(LIVE_TIMEOUT_S)
    except Exception as exc:  # a probe answers, it does not crash
        logger.warning("liveness: job system did not answer: %s", exc)
        answering = False
    response = jsonify({"status": "alive" if answering else "not answering",
                        "timestamp": iso(time.time())})
    if not answering:
        response.status_code = 503
    return response


@bp.get("/health/ready")
def ready() -> Response:
    """Answer 200 while the core is alive and accepting jobs, else 503 with Retry-After."""
    system = job_system()
    broken: list[str] = []
    try:
        alive, accepting = system.alive, system.accepting
        if alive and accepting:
            broken = _unhealthy_reasons(system.snapshot())
    except Exception as exc:  # same as above: a probe answers, it does not crash
        logger.warning("readiness: job system did not answer: %s", exc)
        alive = accepting = False
    reasons = [text for ok, text in ((alive, "job system not alive"),
                                     (accepting, "not accepting jobs (draining or stopped)"))
               if not ok] + broken
    response = jsonify({"status": "not ready" if reasons else "ready", "reasons": reasons,
                        "timestamp": iso(time.time())})
    if reasons:
        response.status_code = 503
        response.headers["Retry-After"] = str(NOT_READY_RETRY_AFTER_S)
    return response


def _unhealthy_reasons(snapshot: dict[str, Any]) -> list[str]:
    """What makes this instance unable to do its work (503): store, workers."""
    reasons: list[str] = []
    store = snapshot.get("store") or {}
    if not store.get("reachable", True):
        reasons.append(f"job store unreachable ({store.get('last_error') or 'no answer'})")
    elif not store.get("writable", True):
        reasons.append(f"job store not writable ({store.get('last_error') or 'failing'});"
                       f" {store.get('parked_writes', 0)} change(s) waiting to be written")
    reasons += [f"no live {kind} worker" for kind, pool in (snapshot.get("pools") or {}).items()
                if not pool.get("alive")]
    return reasons


def _degraded_reasons(snapshot: dict[str, Any]) -> list[str]:
    reasons = [f"{name} queue paused ({', '.join(k.get('pause_reasons') or ['?'])})"
               for name, k in snapshot.get("kinds", {}).items() if k.get("paused")]
    memory = snapshot.get("memory", {})
    python = memory.get("python_api", {})
    if memory.get("pressure"):
        reasons.append("memory pressure")
    if memory.get("checked_at") is None:
        pass  # no reading yet: nothing is known to be wrong
    elif not python.get("reachable", False):
        reasons.append("Python API unreachable")
    elif python.get("status") in ("critical", "error"):
        reasons.append(f"Python API memory status {python.get('status')}")
    if snapshot.get("draining") or not snapshot.get("accepting", True):
        reasons.append("not accepting jobs (draining or stopped)")
    if snapshot.get("all_instances_open"):
        reasons.append("no Python API instance is available (every breaker open): jobs wait")
    else:
        instances = snapshot.get("instances", [])
        # By number, not address: /health is anonymous (addresses: /api/queue/status).
        reasons += [f"Python API instance {number} of {len(instances)} {i['state']}"
                    for number, i in enumerate(instances, start=1)
                    if len(instances) > 1 and i.get("state") != "ok"]
    reasons += [f"{kind} worker pool failed (restarts used up; it starts again after a while)"
                for kind in snapshot.get("supervisor", {}).get("failed_pools", [])]
    supabase = snapshot.get("supabase") or {}
    if supabase.get("configured") and not supabase.get("reachable"):
        reasons.append(f"Supabase unreachable ({supabase.get('error') or 'no answer'}): "
                       "results wait to be stored")
    return reasons


def _reply(status: int, overall: str, reasons: list[str],
           snapshot: dict[str, Any] | None) -> Response:
    body: dict[str, Any] = {"status": overall, "timestamp": iso(time.time()),
                            "reasons": [_anonymous(reason) for reason in reasons]}
    if snapshot is not None:
        body["health"] = _details(snapshot)
    response = jsonify(body)
    response.status_code = status
    return response


def _details(snapshot: dict[str, Any]) -> dict[str, Any]:
    memory = snapshot.get("memory", {})
    python = memory.get("python_api", {})
    process = {"rss": memory.get("process_rss_mb")}
    kinds = snapshot.get("kinds", {})
    pools = snapshot.get("pools", {})
    supabase = snapshot.get("supabase") or {}
    store = snapshot.get("store") or {}
    return {
        "memory": {
            "process": process,
            "node": dict(process),  # kept for dashboards built on the Node backend
            "python": {"memory_mb": python.get("memory_mb"),
                       "status": python.get("status", "unknown"),
                       "reachable": bool(python.get("reachable", False))},
            "thresholdMb": memory.get("threshold_mb"),
            "pressure": bool(memory.get("pressure", False)),
        },
        "queues": {
            name: {"waiting": k.get("waiting", 0), "activeJobs": k.get("running", 0),
                   "abandonedCalls": k.get("abandoned", 0),
                   "retrying": k.get("retrying", 0), "paused": bool(k.get("paused", False))}
            for name, k in kinds.items()
        },
        "concurrency": {
            name: {"active": k.get("running", 0), "abandoned": k.get("abandoned", 0),
                   "max": k.get("max_concurrent"),
                   "workers": pools.get(name, {}).get("size"),
                   "workersAlive": pools.get(name, {}).get("alive")}
            for name, k in kinds.items()
        },
        "pythonInstances": instances_json(snapshot, addresses=False),
        "accepting": bool(snapshot.get("accepting", False)),
        "draining": bool(snapshot.get("draining", False)),
        "supabase": {"configured": bool(supabase.get("configured", False)),
                     "reachable": supabase.get("reachable")},
        "store": {"kind": store.get("kind"), "reachable": bool(store.get("reachable", True)),
                  "writable": bool(store.get("writable", True)),
                  "latencyMs": store.get("latency_ms"),
                  "lastError": (None if store.get("last_error") is None
                                else _anonymous(str(store["last_error"]))),
                  "parkedWrites": store.get("parked_writes", 0)},
    }


def _anonymous(text: str) -> str:
    """Return free text fit for an anonymous reply: no address, no configured secret."""
    core = extension().settings.core
    return hide_addresses(redact_text(text, (core.database_url, core.supabase_service_role_key)))
