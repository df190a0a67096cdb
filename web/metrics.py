"""Prometheus metrics: ``GET /metrics`` (or a separate bind) in the text exposition format.

One scrape renders, from a per-app ``CollectorRegistry``:

* the job system's own registry (``actors.runtime.metrics.JobMetrics``): the counters and
  histograms the actors record as things happen (submitted, finished by state, retried,
  attempt durations, queue waits);
* ``SnapshotCollector``: gauges read from one ``JobSystem.snapshot()`` at scrape time
  (waiting, running, retrying, paused, pool workers, memory, thresholds, the Python API);
* HTTP requests by route, method and status, counted in an ``after_request`` hook. The
  route is the URL rule written as in the OpenAPI document (``/api/queue/jobs/{kind}/
  {job_id}``), never the raw path, and unknown methods count as ``other``: a client cannot
  grow the label set;
* the process, platform and garbage-collector collectors of prometheus-client.

Under gunicorn with several workers, ``web.metrics_shared`` replaces that registry with one
that reads every worker's figures from a shared directory (prometheus-client's multiprocess
mode), so that any worker's answer is the whole server's.

Access (``METRICS_ACCESS``): ``admin`` (the default) needs an admin bearer token, which
with authentication off every request is; ``public`` needs nothing. With ``METRICS_PORT``
set, one gunicorn worker serves the same registry on that port instead
(``serve_separately``; the others keep trying to bind it, so that one takes over when the
serving worker exits), with no token, for a scraper on a private network, and the main
port's ``/metrics`` answers 404: the metrics are never reachable where the API is public.
``/metrics`` is exempt from the rate limit (a scraper must not eat a client's budget).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from werkzeug.exceptions import NotFound

from actors.runtime.redact import redact_url
from web.auth import current_principal
from web.context import extension
from web.errors import NotAllowed
from web.openapi import route_template

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from actors.system import JobSystem

logger = logging.getLogger(__name__)

bp = Blueprint("metrics", __name__)

METRICS_EXTENSION = "qudemo_metrics"
MIB = 1024 * 1024
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
HTTP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
KNOWN_PAUSE_REASONS = ("operator", "memory", "process memory")
"""Pause reasons always exported (0 when inactive): the operator's and the watchdog's two."""
BIND_RETRY_S = 1.0
"""How often a worker that could not bind ``METRICS_PORT`` tries again (``keep_trying``)."""


@dataclass(eq=False)
class AppMetrics:
    """One app's registry, its HTTP counters, and the separate-bind server when running."""

    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    server: WSGIServer | None = field(default=None, repr=False)
    binding: threading.Thread | None = field(default=None, repr=False)
    """The thread that keeps trying to bind ``METRICS_PORT`` (``keep_trying``), if any."""
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class _Forward(Collector):
    """Collects another registry (the job system's) as part of this one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        """Yield every metric of the forwarded registry."""
        yield from self.registry.collect()


class SnapshotCollector(Collector):
    """Gauges read from ``JobSystem.snapshot()`` when Prometheus scrapes."""

    def __init__(self, system: JobSystem) -> None:
        self.system = system

    def describe(self) -> list[Metric]:
        """Describe nothing: registering must not take a snapshot."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Yield the gauges of one snapshot (only ``qudemo_up 0`` when it fails)."""
        yield from self.read()[1]

    def read(self) -> tuple[bool, list[Metric]]:
        """Return whether the snapshot was taken, and its gauges (only ``qudemo_up 0`` if not)."""
        up = GaugeMetricFamily("qudemo_up", "1 while every actor of the job system is alive "
                               "and answering.")
        try:
            snapshot = self.system.snapshot()
            alive = self.system.alive
        except Exception as exc:  # a scrape reports a broken core; it must not fail
            logger.warning("metrics: job system did not answer: %s", exc)
            up.add_metric([], 0)
            return False, [up]
        up.add_metric([], 1 if alive else 0)
        return True, [up, *self._gauges(snapshot)]

    def _gauges(self, snapshot: dict[str, Any]) -> Iterator[Metric]:
        yield _gauge("qudemo_accepting", "1 while new jobs are accepted (0 while draining).",
                     snapshot.get("accepting"))
        yield from _queue_gauges(snapshot)
        yield from _company_gauges(snapshot)
        yield from _shared_queue_gauges(snapshot)
        yield from _pool_metrics(snapshot)
        yield from _memory_gauges(snapshot)
        yield from _python_api_gauges(snapshot)
        supabase = snapshot.get("supabase") or {}
        if supabase.get("configured"):
            yield _gauge("qudemo_supabase_up", "1 when Supabase answered its last health probe.",
                         supabase.get("reachable"))
        mailbox = GaugeMetricFamily("qudemo_actor_mailbox_messages",
                                    "Messages waiting in each actor's mailbox.", labels=["actor"])
        for actor in snapshot.get("actors", []):
            mailbox.add_metric([str(actor.get("name"))], actor.get("mailbox") or 0)
        yield mailbox
        yield _gauge("qudemo_timers_pending", "Timers (backoffs, ticks, deadlines) pending.",
                     snapshot.get("timers_pending"))


def _gauge(name: str, documentation: str, value: Any) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation)
    if value is not None:
        gauge.add_metric([], float(value))
    return gauge


def _shared_queue_gauges(snapshot: dict[str, Any]) -> Iterator[Metric]:
    """With the postgres store: slots held on every instance, and this one's wake-ups."""
    shared = snapshot.get("shared_queue")
    if not shared:
        return
    running = GaugeMetricFamily("qudemo_jobs_running_all_instances",
                                "Jobs holding a slot on every instance of the shared queue.",
                                labels=["kind"])
    for kind, counts in snapshot.get("kinds", {}).items():
        if counts.get("running_everywhere") is not None:
            running.add_metric([kind], float(counts["running_everywhere"]))
    yield running
    yield _gauge("qudemo_shared_queue_listening",
                 "1 while wake-ups (LISTEN/NOTIFY) arrive; 0: polling only.", shared["listening"])
    yield _gauge("qudemo_shared_queue_store_failures",
                 "Store calls of this instance that failed (the database away).",
                 shared["store_failures"])


def _queue_gauges(snapshot: dict[str, Any]) -> Iterator[Metric]:
    kinds: dict[str, Any] = snapshot.get("kinds", {})
    families = {
        key: GaugeMetricFamily(name, text, labels=["kind"])
        for key, name, text in (
            ("waiting", "qudemo_jobs_waiting", "Jobs queued, waiting for a free slot."),
            ("running", "qudemo_jobs_running", "Jobs with an attempt in flight."),
            ("abandoned", "qudemo_calls_abandoned_holding",
             "Calls past their deadline that the Python API is still at; each holds a slot."),
            ("retrying", "qudemo_jobs_retrying", "Jobs waiting out a backoff before a retry."),
            ("paused", "qudemo_queue_paused", "1 while dispatch of this kind is paused."),
            ("max_concurrent", "qudemo_queue_max_concurrent", "Attempts allowed in flight."),
            ("max_waiting", "qudemo_queue_max_waiting", "Waiting jobs before new ones get 429."),
        )
    }
    reasons = GaugeMetricFamily("qudemo_queue_pause_reason",
                                "1 for each reason dispatch of this kind is paused "
                                "(operator, memory, process memory).", labels=["kind", "reason"])
    oldest = GaugeMetricFamily("qudemo_jobs_running_oldest_seconds",
                               "Age of the longest-running attempt (0 when none runs).",
                               labels=["kind"])
    ages: dict[str, float] = {}
    for job in snapshot.get("running_jobs", []):
        ages[job["kind"]] = max(ages.get(job["kind"], 0.0), float(job.get("age_s") or 0.0))
    for kind, counts in kinds.items():
        for key, family in families.items():
            value = counts.get(key)
            if value is not None:
                family.add_metric([kind], float(value))
        active = set(counts.get("pause_reasons") or ())
        for reason in sorted(active | set(KNOWN_PAUSE_REASONS)):
            reasons.add_metric([kind, reason], 1 if reason in active else 0)
        oldest.add_metric([kind], ages.get(kind, 0.0))
    yield from families.values()
    yield reasons
    yield oldest


def _company_gauges(snapshot: dict[str, Any]) -> Iterator[Metric]:
    """Per company waiting, running and share: the busiest 20 per kind, the rest "(others)".

    Company names are user data: the label set is bounded by the snapshot's top list.
    """
    waiting = GaugeMetricFamily("qudemo_company_jobs_waiting", "Jobs of one company waiting "
                                "(queued or retrying); the busiest 20 per kind by name.",
                                labels=["kind", "company"])
    running = GaugeMetricFamily("qudemo_company_jobs_running", "Jobs of one company holding a"
                                " slot.", labels=["kind", "company"])
    share = GaugeMetricFamily("qudemo_company_share", "A company's part of the kind's running "
                              "jobs (0..1).", labels=["kind", "company"])
    fair = GaugeMetricFamily("qudemo_company_fair_share", "What a company's weight entitles it"
                             " to among the companies with work (0..1).",
                             labels=["kind", "company"])
    count = GaugeMetricFamily("qudemo_companies_with_work", "Companies with jobs of the kind "
                              "waiting or running.", labels=["kind"])
    for kind, shares in (snapshot.get("companies") or {}).items():
        count.add_metric([kind], float(shares["count"]))
        for name, row in shares["companies"].items():
            waiting.add_metric([kind, name], float(row["waiting"]))
            running.add_metric([kind, name], float(row["running"]))
            share.add_metric([kind, name], float(row["share"]))
            fair.add_metric([kind, name], float(row["fair_share"]))
    yield from (waiting, running, share, fair, count)


def _pool_metrics(snapshot: dict[str, Any]) -> Iterator[Metric]:
    size = GaugeMetricFamily("qudemo_workers", "Worker actors in the pool.", labels=["kind"])
    alive = GaugeMetricFamily("qudemo_workers_alive", "Worker actors alive.", labels=["kind"])
    busy = GaugeMetricFamily("qudemo_workers_busy", "Worker actors running a job.",
                             labels=["kind"])
    restarts = CounterMetricFamily("qudemo_worker_restarts",
                                   "Dead workers the pool replaced.", labels=["kind"])
    for kind, pool in snapshot.get("pools", {}).items():
        size.add_metric([kind], pool.get("size") or 0)
        alive.add_metric([kind], pool.get("alive") or 0)
        busy.add_metric([kind], pool.get("busy") or 0)
        restarts.add_metric([kind], pool.get("restarts") or 0)
    yield from (size, alive, busy, restarts)


def _memory_gauges(snapshot: dict[str, Any]) -> Iterator[Metric]:
    memory = snapshot.get("memory", {})
    python = memory.get("python_api", {})

    def mib(value: Any) -> float | None:
        return None if value is None else float(value) * MIB

    yield _gauge("qudemo_memory_process_bytes", "This process's resident memory at the "
                 "watchdog's last reading.", mib(memory.get("process_rss_mb")))
    yield _gauge("qudemo_memory_python_api_bytes", "The Python API's memory at the last "
                 "reading (the highest of its instances).", mib(python.get("memory_mb")))
    yield _gauge("qudemo_memory_threshold_bytes", "Above this (this process or the Python "
                 "API) video dispatch pauses (MEMORY_THRESHOLD_MB).",
                 mib(memory.get("threshold_mb")))
    yield _gauge("qudemo_memory_max_bytes", "Above this new video jobs are refused "
                 "(QUEUE_MAX_MEMORY_MB).", mib(memory.get("max_memory_mb")))
    yield _gauge("qudemo_memory_pressure", "1 while memory pressure pauses video dispatch.",
                 memory.get("pressure"))
    yield _gauge("qudemo_memory_admission_refused", "1 while new video jobs are refused.",
                 memory.get("admission_refused"))
    yield _gauge("qudemo_memory_checked_timestamp_seconds", "When memory was last read "
                 "(Unix time).", memory.get("checked_at"))


def _python_api_gauges(snapshot: dict[str, Any]) -> Iterator[Metric]:
    memory = snapshot.get("memory", {})
    reachable = GaugeMetricFamily("qudemo_python_api_up", "1 when the Python API instance "
                                  "answered its last /memory-status reading.",
                                  labels=["instance"])
    available = GaugeMetricFamily("qudemo_python_api_available", "1 while the instance takes "
                                  "work (breaker closed, no memory pressure).",
                                  labels=["instance"])
    in_flight = GaugeMetricFamily("qudemo_python_api_in_flight", "Calls in flight at the "
                                  "instance.", labels=["instance", "kind"])
    instance_memory = GaugeMetricFamily("qudemo_python_api_instance_memory_bytes",
                                        "Memory the instance reported.", labels=["instance"])
    limit = GaugeMetricFamily("qudemo_python_api_concurrency_limit", "Calls of the kind the "
                              "instance may have now (adaptive: the limiter's current limit; "
                              "kind \"all\": both kinds together).", labels=["instance", "kind"])
    checked = memory.get("checked_at") is not None
    for item in snapshot.get("instances", []):
        url = redact_url(str(item.get("url")))  # a label is shown: never its credentials
        if checked:  # before the first reading nothing is known, not "down"
            reachable.add_metric([url], 1 if item.get("reachable") else 0)
        available.add_metric([url], 1 if item.get("state") == "ok" else 0)
        for kind, count in (item.get("in_flight") or {}).items():
            in_flight.add_metric([url, kind], count)
        for kind, count in (item.get("limits") or {}).items():
            limit.add_metric([url, kind], count)
        capacity = item.get("capacity") or {}
        if capacity.get("limit") is not None:
            limit.add_metric([url, "all"], capacity["limit"])
        if item.get("memory_mb") is not None:
            instance_memory.add_metric([url], float(item["memory_mb"]) * MIB)
    yield from (reachable, available, in_flight, instance_memory, limit)


# --- the app side ---------------------------------------------------------------------------

def init_metrics(app: Flask, system: JobSystem) -> AppMetrics:
    """Give ``app`` its registry and the request-counting hooks; call before ``init_limits``.

    Registered first, the ``before_request`` hook times every request, including those
    the rate limiter refuses.
    """
    # The *_created series double every counter for little use; off process-wide (also for
    # the job system's registry, which is rendered here).
    disable_created_metrics()  # type: ignore[no-untyped-call]
    registry = CollectorRegistry()
    requests = Counter("qudemo_http_requests", "HTTP requests answered, by route, method and "
                       "status.", ["route", "method", "status"], registry=registry)
    latency = Histogram("qudemo_http_request_duration_seconds", "Time to answer an HTTP "
                        "request, by route.", ["route", "method"], buckets=HTTP_BUCKETS_S,
                        registry=registry)
    registry.register(_Forward(system.metrics.registry))
    registry.register(SnapshotCollector(system))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    metrics = AppMetrics(registry=registry, requests=requests, latency=latency)
    app.extensions[METRICS_EXTENSION] = metrics

    @app.before_request
    def _start_clock() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count_request(response: Response) -> Response:
        rule = request.url_rule
        route = route_template(rule.rule) if rule is not None else "unmatched"
        method = request.method if request.method in HTTP_METHODS else "other"
        requests.labels(route, method, str(response.status_code)).inc()
        started = g.get("metrics_started")
        if started is not None:
            latency.labels(route, method).observe(time.perf_counter() - started)
        return response

    return metrics


def app_metrics(app: Flask | None = None) -> AppMetrics:
    """Return the ``AppMetrics`` of ``app`` (default: the current app)."""
    target = app if app is not None else current_app
    metrics: AppMetrics = target.extensions[METRICS_EXTENSION]
    return metrics


@bp.get("/metrics")
def metrics() -> Response:
    """Render every metric in Prometheus's text format (access per ``METRICS_ACCESS``)."""
    settings = extension().settings.web
    if settings.metrics_port is not None:
        raise NotFound("metrics are served on their own port (METRICS_PORT)")
    if settings.metrics_access != "public" and not current_principal().is_admin:
        raise NotAllowed("metrics need the admin role (METRICS_ACCESS=admin)")
    body = generate_latest(app_metrics().registry)
    return Response(body, status=200, content_type=CONTENT_TYPE_PLAIN_0_0_4)


def serve_separately(app: Flask, host: str, *, keep_trying: bool = False) -> WSGIServer | None:
    """Serve ``app``'s metrics on ``METRICS_PORT`` (when set) from a daemon thread.

    Called by gunicorn's ``post_worker_init`` in each worker process. Returns the
    server (``stop_separate_server`` closes it), or ``None`` when no port is set or it
    is taken. With ``keep_trying`` a taken port is tried again every ``BIND_RETRY_S``
    from a daemon thread until this worker serves it or is stopped: of several workers
    one serves the port, and when it exits (a reload, a crash) another takes over.
    """
    port = extension(app).settings.web.metrics_port
    if port is None:
        return None
    metrics = app_metrics(app)
    metrics.stopping.clear()  # served again after a stop_separate_server
    server = _bind(metrics, host, port, quiet=False, keep_trying=keep_trying)
    if server is None and keep_trying:
        def retry() -> None:
            while not metrics.stopping.wait(BIND_RETRY_S):
                if _bind(metrics, host, port, quiet=True, keep_trying=True) is not None:
                    return

        metrics.binding = threading.Thread(target=retry, name="metrics-port-bind", daemon=True)
        metrics.binding.start()
    return server


def _bind(metrics: AppMetrics, host: str, port: int, *, quiet: bool,
          keep_trying: bool) -> WSGIServer | None:
    """Start the ``METRICS_PORT`` server when the port is free; ``None`` when it is taken."""
    with metrics.lock:
        if metrics.stopping.is_set():
            return None
        try:
            server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
        except OSError as exc:
            if not quiet:
                # Several gunicorn workers: whichever binds first serves the port, and with
                # several workers its registry reports all of them (web.metrics_shared).
                logger.log(logging.INFO if keep_trying else logging.WARNING,
                           "metrics port %d not served by this worker (%s)%s", port,
                           exc.strerror or exc, "; it takes the port over once it is free"
                           if keep_trying else "")
            return None
        metrics.server = server
    logger.info("metrics served on %s:%d/metrics (METRICS_PORT)", host, port)
    return server


def stop_separate_server(app: Flask) -> None:
    """Close the ``METRICS_PORT`` server of ``app``, if one runs, and stop trying to bind it."""
    metrics = app.extensions.get(METRICS_EXTENSION)
    if metrics is None:
        return
    metrics.stopping.set()
    if metrics.binding is not None:
        metrics.binding.join(timeout=5)
        metrics.binding = None
    with metrics.lock:
        if metrics.server is not None:
            metrics.server.shutdown()
            metrics.server.server_close()
            metrics.server = None
