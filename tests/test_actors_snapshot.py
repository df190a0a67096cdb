"""What a REPL user sees: snapshot() as plain data, readable reprs, the job record itself."""

from __future__ import annotations

import json

import pykka

from actors import Job, JobKind, JobState, JobSystem, Settings
from actors.model.jobs import LEGAL_TRANSITIONS, dumps, freeze, is_legal
from actors.model.messages import AddJob, Inspect, Transition
from actors.runtime.timers import Clock, TimerService
from actors.stores.memory import MemoryJobStore
from actors.stores.registry import JobRegistry
from tests.standin import PythonApiStandIn
from tests.test_actors_support import question, started, video, wait_state

KIND_KEYS = {"waiting", "running", "retrying", "completed", "failed", "cancelled", "paused",
             "max_concurrent", "max_waiting"}


def test_snapshot_is_plain_data_covering_every_actor_and_kind(
    fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    settings = fast_settings.replace(max_concurrent_videos=1, max_concurrent_qa=2)
    standin.hold("process-video")
    with started(settings) as system:
        running = system.submit(JobKind.VIDEO, video(0)).job.id
        assert standin.wait_in_flight("process-video", 1)
        waiting = system.submit(JobKind.VIDEO, video(1)).job.id
        done = system.submit(JobKind.QA, question(0)).job.id
        wait_state(system, done, JobState.COMPLETED)
        system.pause(JobKind.QA)

        snapshot = system.snapshot()
        json.dumps(snapshot)  # plain data all the way down

        assert snapshot["state"] == "running"
        assert snapshot["accepting"] is True
        assert snapshot["draining"] is False
        video_counts, qa_counts = snapshot["kinds"]["video"], snapshot["kinds"]["qa"]
        assert set(video_counts) >= KIND_KEYS
        assert set(qa_counts) >= KIND_KEYS
        assert (video_counts["running"], video_counts["waiting"]) == (1, 1)
        assert (video_counts["max_concurrent"], video_counts["max_waiting"]) == (1, 500)
        assert (qa_counts["completed"], qa_counts["max_concurrent"]) == (1, 2)
        assert (video_counts["paused"], qa_counts["paused"]) == (False, True)

        names = [actor["name"] for actor in snapshot["actors"]]
        assert names[:3] == ["JobRegistry", "Dispatcher", "MemoryWatchdog"]
        assert sorted(names[3:]) == ["QAWorker qa-1", "QAWorker qa-2", "VideoWorker video-1"]
        for actor in snapshot["actors"]:
            assert actor["alive"] is True
            assert isinstance(actor["mailbox"], int) and actor["mailbox"] >= 0
        busy = next(a for a in snapshot["actors"] if a["name"] == "VideoWorker video-1")
        assert busy["job_id"] == running

        assert [job["job_id"] for job in snapshot["running_jobs"]] == [running]
        assert snapshot["running_jobs"][0]["attempt"] == 1
        assert snapshot["pools"]["video"] == {"size": 1, "alive": 1, "busy": 1, "restarts": 0,
                                              "failed": False, "revivals": 0}
        assert snapshot["supervisor"] == {"restarts": 0, "failed_pools": []}
        assert set(snapshot["memory"]) >= {"process_rss_mb", "python_api", "threshold_mb",
                                           "max_memory_mb", "pressure", "admission_refused"}
        assert snapshot["registry"]["illegal_transitions"] == 0
        assert snapshot["timers_pending"] >= 1  # at least the retention purge is armed

        standin.release("process-video")
        system.resume(JobKind.QA)
        wait_state(system, waiting, JobState.COMPLETED)


def test_reprs_read_well_in_a_repl(job_system: JobSystem) -> None:
    assert repr(job_system).startswith("<JobSystem running python_api=http://127.0.0.1:")
    job = wait_state(job_system, job_system.submit(JobKind.QA, question(1)).job.id)
    assert repr(job) == f"<Job {job.id[:8]} qa p1 completed attempts=1/3>"
    assert "PythonApiClient http://127.0.0.1:" in repr(job_system.client)


def test_a_job_record_round_trips_through_plain_data() -> None:
    job = Job(id="abc", kind=JobKind.VIDEO, priority=2, data=freeze(video(1)), owner="u1",
              state=JobState.RETRYING, attempts=1, created_at=1.5, seq=7,
              retry_delays_s=(0.5,), result=freeze({"sources": ["a", "b"]}))
    plain = job.to_dict()
    assert json.loads(dumps(job)) == plain
    assert plain["data"] == video(1)
    assert plain["state"] == "retrying"
    assert Job.from_dict(plain) == job
    assert job.state.finished is False and JobState.CANCELLED.finished is True


def test_the_state_machine_allows_only_the_documented_moves() -> None:
    allowed = {(src, dst) for src, targets in LEGAL_TRANSITIONS.items() for dst in targets}
    assert allowed == {
        (JobState.QUEUED, JobState.PROCESSING), (JobState.QUEUED, JobState.CANCELLED),
        (JobState.PROCESSING, JobState.COMPLETED), (JobState.PROCESSING, JobState.FAILED),
        (JobState.PROCESSING, JobState.RETRYING), (JobState.PROCESSING, JobState.QUEUED),
        (JobState.RETRYING, JobState.QUEUED), (JobState.RETRYING, JobState.CANCELLED),
        (JobState.RETRYING, JobState.FAILED), (JobState.FAILED, JobState.QUEUED),
    }
    assert not is_legal(JobState.COMPLETED, JobState.QUEUED)
    assert not is_legal(JobState.CANCELLED, JobState.PROCESSING)


def test_the_registry_refuses_an_illegal_transition_and_never_applies_it(
    fast_settings: Settings,
) -> None:
    """The JobRegistry on its own, as from a REPL: a real actor, asked from outside."""
    timers = TimerService().start()
    store = MemoryJobStore()
    registry = JobRegistry.start(fast_settings, store=store, timers=timers, clock=Clock())
    try:
        job = registry.ask(AddJob(job=Job(id="j1", kind=JobKind.QA, priority=1)), timeout=5)
        assert job.state == JobState.QUEUED and job.seq == 1

        registry.tell(Transition(job_id="j1", target=JobState.COMPLETED, at=1.0))  # skips one
        registry.tell(Transition(job_id="nope", target=JobState.PROCESSING, at=1.0))
        registry.tell(Transition(job_id="j1", target=JobState.PROCESSING, at=2.0, attempts=1))
        state = registry.ask(Inspect(), timeout=5)

        assert state["illegal_transitions"] == 2
        stored = store.get("j1")
        assert stored is not None
        assert (stored.state, stored.attempts, stored.started_at) == (JobState.PROCESSING, 1, 2.0)
        assert stored.finished_at is None
        assert state["counts"]["qa"]["processing"] == 1
        assert state["counts"]["qa"]["queued"] == 0
        assert state["counts"]["qa"]["completed"] == 0
    finally:
        registry.stop(block=True, timeout=5)
        timers.stop()
    assert pykka.ActorRegistry.get_all() == []

