"""web.metrics_shared: how one worker's snapshot gauges are written for every worker's scrape.

prometheus-client picks its value class when it is imported, from ``PROMETHEUS_MULTIPROC_DIR``;
here the multiprocess one is swapped in for the test (and a temporary directory named), so the
publisher writes real files that ``MultiProcessCollector`` reads back, as under gunicorn.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from actors import JobSystem
from tests.web_support import make_app
from web.metrics import app_metrics
from web.metrics_shared import (
    SnapshotPublisher,
    WorkerProcessCollector,
    live_worker_pids,
    share_across_workers,
)

PID = str(os.getpid())


class ScriptedSnapshot:
    """Stands in for ``SnapshotCollector``: answers what the test sets."""

    def __init__(self) -> None:
        self.answer: tuple[bool, list[Metric]] = (True, [])

    def read(self) -> tuple[bool, list[Metric]]:
        return self.answer


@pytest.fixture
def shared_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())
    yield str(tmp_path)
    close = getattr(values, "close_all_multiprocess_files", None)
    if close is not None:
        close()


def merged(directory: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in MultiProcessCollector(None, path=directory).collect()
            for s in family.samples}


def families(up: float, reasons: dict[str, float], waiting: float,
             restarts: float) -> list[Metric]:
    reason = GaugeMetricFamily("qudemo_queue_pause_reason", "Reasons.", labels=["kind", "reason"])
    for name, value in reasons.items():
        reason.add_metric(["video", name], value)
    queued = GaugeMetricFamily("qudemo_jobs_waiting", "Waiting.", labels=["kind"])
    queued.add_metric(["video"], waiting)
    restarted = CounterMetricFamily("qudemo_worker_restarts", "Restarts.", labels=["kind"])
    restarted.add_metric(["video"], restarts)
    return [GaugeMetricFamily("qudemo_up", "Up.", value=up), reason, queued, restarted]


def test_a_workers_gauges_carry_its_pid_and_queue_wide_ones_do_not(shared_dir: str) -> None:
    snapshot = ScriptedSnapshot()
    publisher = SnapshotPublisher(snapshot)  # type: ignore[arg-type]
    snapshot.answer = (True, families(1, {"operator": 0, "memory@a:1:x": 1}, 3, 0))
    publisher.publish()
    found = merged(shared_dir)
    assert found[("qudemo_up", (("pid", PID),))] == 1
    assert found[("qudemo_queue_pause_reason", (("kind", "video"), ("pid", PID),
                                                ("reason", "memory@a:1:x")))] == 1
    assert found[("qudemo_jobs_waiting", (("kind", "video"),))] == 3  # one series, no pid
    assert found[("qudemo_worker_restarts_total", (("kind", "video"),))] == 0  # from the start
    assert live_worker_pids(shared_dir) == [os.getpid()]


def test_vanished_series_read_zero_a_failed_snapshot_nan_and_restarts_only_grow(
        shared_dir: str) -> None:
    snapshot = ScriptedSnapshot()
    publisher = SnapshotPublisher(snapshot)  # type: ignore[arg-type]
    reason = ("qudemo_queue_pause_reason", (("kind", "video"), ("pid", PID),
                                            ("reason", "memory@a:1:x")))
    snapshot.answer = (True, families(1, {"memory@a:1:x": 1}, 3, 2))
    publisher.publish()
    snapshot.answer = (True, families(1, {}, 4, 3))  # the pause lifted, one more restart
    publisher.publish()
    found = merged(shared_dir)
    assert found[reason] == 0
    assert found[("qudemo_jobs_waiting", (("kind", "video"),))] == 4
    assert found[("qudemo_worker_restarts_total", (("kind", "video"),))] == 3
    snapshot.answer = (False, [GaugeMetricFamily("qudemo_up", "Up.", value=0)])
    publisher.publish()
    found = merged(shared_dir)
    assert found[("qudemo_up", (("pid", PID),))] == 0
    assert math.isnan(found[reason])  # unknown, not zero
    assert found[("qudemo_jobs_waiting", (("kind", "video"),))] == 4  # left for others
    assert found[("qudemo_worker_restarts_total", (("kind", "video"),))] == 3
    mark_process_dead(os.getpid(), shared_dir)  # what the master does when a worker exits
    found = merged(shared_dir)
    assert ("qudemo_up", (("pid", PID),)) not in found
    assert found[("qudemo_worker_restarts_total", (("kind", "video"),))] == 3  # counts stay
    assert live_worker_pids(shared_dir) == []


def test_process_metrics_of_every_live_worker(shared_dir: str) -> None:
    snapshot = ScriptedSnapshot()
    snapshot.answer = (True, families(1, {}, 0, 0))
    SnapshotPublisher(snapshot).publish()  # type: ignore[arg-type]
    found: dict[str, Any] = {f.name: f for f in WorkerProcessCollector(shared_dir).collect()}
    if not found:
        pytest.skip("no /proc here")
    rss = found["process_resident_memory_bytes"].samples
    assert [s.labels for s in rss] == [{"pid": PID}] and rss[0].value > 0


def test_one_process_keeps_its_own_registry(job_system: JobSystem, tmp_path: Path) -> None:
    app = make_app(job_system)
    registry = app_metrics(app).registry
    # prometheus-client was imported without PROMETHEUS_MULTIPROC_DIR: nothing to share.
    assert share_across_workers(app, str(tmp_path)) is False
    assert app_metrics(app).registry is registry
    assert app.test_client().get("/metrics").status_code == 200
