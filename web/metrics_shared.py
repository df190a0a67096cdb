"""Metrics of the whole server when gunicorn runs several workers (prometheus-client multiprocess).

gunicorn's master (``gunicorn.conf.py``) makes a fresh directory at start and sets
``PROMETHEUS_MULTIPROC_DIR`` before it forks, so every counter and histogram a worker records
(the actors' ``JobMetrics``, the HTTP counters) lives in a file of that directory; when a
worker exits, the master removes its live gauges (``mark_process_dead``). ``share_across_workers``
then gives the worker's app a registry that reads the directory, so whichever worker answers a
scrape (``/metrics`` or ``METRICS_PORT``) reports:

* counters and histograms summed over every worker this server has run (a worker that exited
  keeps its counts in the sum, so a restart is no counter reset);
* the snapshot gauges of every live worker, which ``SnapshotPublisher`` writes: each worker
  writes its own every ``PUBLISH_INTERVAL_S``, and the answering one just before it answers.
  A worker's own reading (``qudemo_up``, ``qudemo_jobs_running``, pools, memory, the Python
  API as it sees it, ...) carries a ``pid`` label (mode ``liveall``); a reading of the shared
  queue that every worker takes alike (``QUEUE_WIDE``: waiting, retrying, running on every
  instance, the limits) is one series without ``pid``, the most recently written (mode
  ``livemostrecent``);
* ``process_*`` of every live worker, read from ``/proc/<pid>`` at scrape time, with ``pid``,
  and ``python_info``. ``python_gc_*`` describe only the process that answers, so they are
  left out.

With one worker (the SQLite and memory stores) none of this runs: ``web.metrics`` renders the
process's own registry, as in a REPL.
"""

from __future__ import annotations

import glob
import logging
import math
import os
import threading
from collections.abc import Callable, Iterator
from typing import Literal, TypeVar

from flask import Flask
from prometheus_client import CollectorRegistry, Counter, Gauge, values
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from web.context import extension
from web.metrics import SnapshotCollector, app_metrics

logger = logging.getLogger(__name__)

SHARED_EXTENSION = "qudemo_metrics_shared"
PUBLISH_INTERVAL_S = 5.0
"""How old another worker's snapshot gauges may be in a scrape (the answering one's are fresh)."""
QUEUE_WIDE = frozenset({
    "qudemo_jobs_waiting", "qudemo_jobs_retrying", "qudemo_jobs_running_all_instances",
    "qudemo_queue_max_concurrent", "qudemo_queue_max_waiting",
    "qudemo_memory_threshold_bytes", "qudemo_memory_max_bytes",
})
"""Snapshot gauges that read the shared queue or the settings: the same on every worker."""
LIVE_FILE_PREFIX = "gauge_liveall_"
_M = TypeVar("_M", Gauge, Counter)


def share_across_workers(app: Flask, directory: str) -> bool:
    """Make ``app``'s metrics those of every gunicorn worker writing to ``directory``.

    Called by gunicorn's ``post_worker_init`` (with several workers) before
    ``serve_separately``. Returns False, leaving this worker's own registry in place, when
    prometheus-client did not start in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` unset
    when it was first imported): the files would then hold nothing.
    """
    if values.ValueClass is values.MutexValue:  # the single-process value class
        logger.error("metrics: PROMETHEUS_MULTIPROC_DIR was not set when prometheus_client was"
                     " imported; /metrics shows only the worker that answers")
        return False
    publisher = SnapshotPublisher(SnapshotCollector(extension(app).system))
    registry = CollectorRegistry()
    registry.register(WholeServerCollector(directory, publisher))
    registry.register(WorkerProcessCollector(directory))
    PlatformCollector(registry=registry)
    app_metrics(app).registry = registry
    app.extensions[SHARED_EXTENSION] = publisher
    publisher.start()
    logger.info("metrics: every worker's, shared in %s", directory)
    return True


def stop_sharing(app: Flask) -> None:
    """Stop writing this worker's snapshot gauges (``worker_exit``, after the job system)."""
    publisher = app.extensions.pop(SHARED_EXTENSION, None)
    if publisher is not None:
        publisher.stop()


def live_worker_pids(directory: str) -> list[int]:
    """Return the workers that published gauges and have not been marked dead."""
    pids = []
    for path in glob.glob(os.path.join(directory, LIVE_FILE_PREFIX + "*.db")):
        pid = os.path.basename(path)[len(LIVE_FILE_PREFIX):-len(".db")]
        if pid.isdigit():
            pids.append(int(pid))
    return sorted(pids)


class WholeServerCollector(Collector):
    """Every worker's counters, histograms and gauges, this worker's snapshot written first."""

    def __init__(self, directory: str, publisher: SnapshotPublisher) -> None:
        self.publisher = publisher
        self.files = MultiProcessCollector(None, path=directory)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterator[Metric]:
        """Yield the merged metrics of the shared directory."""
        try:
            self.publisher.publish()
        except Exception:  # a scrape must not fail; the last figures written still stand
            logger.exception("metrics: could not write this worker's snapshot gauges")
        yield from self.files.collect()  # type: ignore[no-untyped-call]


class WorkerProcessCollector(Collector):
    """``process_*`` of every live worker, each with its ``pid``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Metric]:
        """Yield one family per process metric, one sample per worker (Linux: ``/proc``)."""
        families: dict[str, Metric] = {}
        for pid in live_worker_pids(self.directory):
            # A worker that has just exited yields nothing (ProcessCollector skips what it
            # cannot read), until the master has marked it dead.
            reader = ProcessCollector(pid=_constant(pid), registry=None)
            for family in reader.collect():
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type))
                for sample in family.samples:
                    merged.add_sample(sample.name, {**sample.labels, "pid": str(pid)},
                                      sample.value)
        yield from families.values()


class SnapshotPublisher:
    """Writes one worker's snapshot gauges into the shared directory, for any worker's scrape."""

    def __init__(self, collector: SnapshotCollector,
                 interval_s: float = PUBLISH_INTERVAL_S) -> None:
        self.collector = collector
        self.interval_s = interval_s
        self._gauges: dict[str, tuple[Gauge, tuple[str, ...]]] = {}
        self._counters: dict[str, tuple[Counter, tuple[str, ...]]] = {}
        self._counted: dict[tuple[str, tuple[str, ...]], float] = {}
        self._written: dict[str, set[tuple[str, ...]]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Publish now, then every ``interval_s`` from a daemon thread."""
        self.publish()
        self._thread = threading.Thread(target=self._run, name="metrics-publisher",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop publishing; what was written stays until the master marks the worker dead."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.publish()
            except Exception:  # keep publishing: the next round may succeed
                logger.exception("metrics: could not write this worker's snapshot gauges")

    def publish(self) -> None:
        """Take one snapshot and write its gauges (and its one counter) to this worker's files.

        A series the snapshot no longer has is set to 0 (a pause reason lifted, say); when
        the snapshot failed, every series of this worker but ``qudemo_up 0`` is set to NaN:
        unknown, not zero. Queue-wide series are left as they are: another worker's, or
        this one's next reading, replaces them.
        """
        with self._lock:
            ok, families = self.collector.read()
            seen: dict[str, set[tuple[str, ...]]] = {}
            for family in families:
                if family.type == "counter":
                    self._count(family)
                else:
                    seen[family.name] = self._set(family)
            for name, written in self._written.items():
                if name in QUEUE_WIDE:
                    continue
                gauge, _ = self._gauges[name]
                for labels in written - seen.get(name, set()):
                    _child(gauge, labels).set(0.0 if ok else math.nan)

    def _set(self, family: Metric) -> set[tuple[str, ...]]:
        written: set[tuple[str, ...]] = set()
        for sample in family.samples:
            if family.name not in self._gauges:
                mode: Literal["liveall", "livemostrecent"] = (
                    "livemostrecent" if family.name in QUEUE_WIDE else "liveall")
                names = tuple(sample.labels)
                self._gauges[family.name] = (Gauge(
                    family.name, family.documentation, names, registry=None,
                    multiprocess_mode=mode), names)
            gauge, names = self._gauges[family.name]
            labels = tuple(sample.labels[n] for n in names)
            _child(gauge, labels).set(sample.value)
            written.add(labels)
        if written:  # a family without samples has no gauge yet
            self._written.setdefault(family.name, set()).update(written)
        return written

    def _count(self, family: Metric) -> None:
        """Add what a snapshot counter (restarts) grew by since the last reading."""
        for sample in family.samples:
            if family.name not in self._counters:
                names = tuple(sample.labels)
                self._counters[family.name] = (Counter(
                    family.name, family.documentation, names, registry=None), names)
            counter, names = self._counters[family.name]
            labels = tuple(sample.labels[n] for n in names)
            last = self._counted.get((family.name, labels), 0.0)
            child = _child(counter, labels)  # exported from the start, 0 until a restart
            if sample.value > last:
                child.inc(sample.value - last)
            self._counted[(family.name, labels)] = sample.value


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


def _child(metric: _M, labels: tuple[str, ...]) -> _M:
    return metric.labels(*labels) if labels else metric
