"""Counters and histograms of one job system, for Prometheus (prometheus-client).

Each ``JobSystem`` has its own ``CollectorRegistry``, so several systems (tests,
a REPL) never collide. Gauges that are a reading of the present (waiting,
running, paused, memory) are not kept here: the web layer collects them from
``JobSystem.snapshot()`` at scrape time. What needs history, counts and
distributions, is recorded by the actors as it happens.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from actors.model.jobs import JobKind, JobState

DURATION_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)
WAIT_BUCKETS_S = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600)


class JobMetrics:
    """What happened to jobs: submitted, finished by state, retried; durations and waits."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.submitted = Counter("qudemo_jobs_submitted", "Jobs accepted.", ["kind"],
                                 registry=self.registry)
        self.finished = Counter("qudemo_jobs_finished", "Jobs that reached a final state.",
                                ["kind", "state"], registry=self.registry)
        self.retried = Counter("qudemo_jobs_retried", "Attempts that failed and were retried.",
                               ["kind"], registry=self.registry)
        self.attempt_duration = Histogram(
            "qudemo_job_attempt_duration_seconds", "Duration of one attempt at the Python API.",
            ["kind"], buckets=DURATION_BUCKETS_S, registry=self.registry)
        self.queue_wait = Histogram(
            "qudemo_job_queue_wait_seconds", "Time from queued to started, per attempt.",
            ["kind"], buckets=WAIT_BUCKETS_S, registry=self.registry)
        self.abandoned = Counter(
            "qudemo_calls_abandoned", "Calls past their deadline while the Python API was still"
            " at them (their slot stays held).", ["kind"], registry=self.registry)
        self.abandoned_ended = Counter(
            "qudemo_calls_abandoned_ended", "Abandoned calls that ended (answered or cut at the"
            " hold); their slot is free again.", ["kind"], registry=self.registry)
        # Each series' child, bound once (a labels() lookup costs more than the inc); bound
        # from the start, so the zeros are exposed and rates work at once.
        self._submitted = {kind: self.submitted.labels(kind.value) for kind in JobKind}
        self._abandoned = {kind: self.abandoned.labels(kind.value) for kind in JobKind}
        self._abandoned_ended = {kind: self.abandoned_ended.labels(kind.value)
                                 for kind in JobKind}
        self._retried = {kind: self.retried.labels(kind.value) for kind in JobKind}
        self._finished = {(kind, state): self.finished.labels(kind.value, state.value)
                          for kind in JobKind
                          for state in (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)}
        self._durations = {kind: self.attempt_duration.labels(kind.value) for kind in JobKind}
        self._waits = {kind: self.queue_wait.labels(kind.value) for kind in JobKind}

    def job_submitted(self, kind: JobKind) -> None:
        """Count an accepted job."""
        self._submitted[kind].inc()

    def job_finished(self, kind: JobKind, state: JobState) -> None:
        """Count a job reaching ``state``."""
        self._finished[kind, state].inc()

    def attempt_retried(self, kind: JobKind) -> None:
        """Count a failed attempt that will be retried."""
        self._retried[kind].inc()

    def attempt_ended(self, kind: JobKind, duration_s: float) -> None:
        """Record how long an attempt took."""
        self._durations[kind].observe(duration_s)

    def attempt_started(self, kind: JobKind, waited_s: float) -> None:
        """Record how long a job waited before this attempt started."""
        self._waits[kind].observe(max(0.0, waited_s))

    def call_abandoned(self, kind: JobKind) -> None:
        """Count a call abandoned at its deadline (it keeps its slot)."""
        self._abandoned[kind].inc()

    def abandoned_call_ended(self, kind: JobKind) -> None:
        """Count an abandoned call that ended, freeing its slot."""
        self._abandoned_ended[kind].inc()
