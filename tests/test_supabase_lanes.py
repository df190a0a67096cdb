"""Results are stored without head-of-line blocking: lanes, deadlines, outages, the bound.

Real actors, the Python API stand-in and the PostgREST stand-in; every wait is on
something observable (a job's state, the stand-in's requests, the writer's snapshot).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.model.errors import ResultStoreUnavailable
from actors.results import writer as result_writer
from actors.results.rows import row_id
from actors.results.supabase import ResultSink
from tests.postgrest_standin import PostgrestStandIn
from tests.standin import PythonApiStandIn
from tests.supabase_support import ACME_ID, LOOM_URL, FixedClock, seeded, with_supabase
from tests.test_actors_support import started, wait_state, wait_until

VIDEO = {"video_url": LOOM_URL, "company_name": "acme", "source": "loom",
         "create_qudemo": True}


def question(n: int) -> dict[str, Any]:
    return {"question": f"What is feature {n}?", "company_name": "acme",
            "interaction_id": f"int-{n}"}


@pytest.fixture
def postgrest() -> Iterator[PostgrestStandIn]:
    with PostgrestStandIn() as standin:
        yield seeded(standin)


def qa_lane(system: JobSystem) -> dict[str, Any]:
    lanes: dict[str, Any] = system.snapshot()["supabase"].get("lanes") or {}
    return dict(lanes.get("qa") or {})


def test_questions_are_stored_while_a_video_write_is_held(
        fast_settings: Settings, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    settings = with_supabase(fast_settings, postgrest, supabase_timeout_s=60.0)
    postgrest.hold("videos")
    with started(settings, clock=FixedClock()) as system:
        try:
            video_id = system.submit(JobKind.VIDEO, VIDEO, owner="alice").job.id
            assert postgrest.wait_requests("videos", 1, method="POST", timeout=10)
            qa_id = system.submit(JobKind.QA, question(1), owner="bob").job.id

            job = wait_state(system, qa_id)
            assert job.state == JobState.COMPLETED, job.last_error
            assert [r["id"] for r in postgrest.rows("questions")] == [row_id(qa_id, "question")]
            # Meanwhile the video's write is still held: received, never answered.
            (video_write,) = postgrest.requests("videos", "POST")
            assert video_write.status == 0
            assert system.get(video_id).state == JobState.PROCESSING
            lanes = system.snapshot()["supabase"]["lanes"]
            assert lanes["video"]["writing"] == video_id
            assert lanes["video"]["backlog"] == 1
            assert lanes["video"]["oldest_age_s"] >= 0
            assert lanes["qa"]["backlog"] == 0 and lanes["qa"]["state"] == "open"
        finally:
            postgrest.release()
        job = wait_state(system, video_id)
    assert job.state == JobState.COMPLETED, job.last_error
    assert len(postgrest.rows("videos")) == 1 and len(postgrest.rows("qudemos")) == 1


def test_an_outage_costs_one_write_per_round_not_one_per_waiting_result(
        fast_settings: Settings, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    settings = with_supabase(fast_settings, postgrest, supabase_timeout_s=0.2,
                             supabase_write_attempts=100, backoff_base_s=0.05,
                             backoff_max_s=0.2, backoff_jitter=0.0)
    waiting = 5
    postgrest.hold("questions")  # a black hole: every write costs its whole timeout
    with started(settings, clock=FixedClock()) as system:
        try:
            ids = [system.submit(JobKind.QA, question(n), owner="bob").job.id
                   for n in range(waiting)]

            def three_rounds_with_all_waiting() -> dict[str, Any] | None:
                lane = qa_lane(system)
                done = (lane.get("backlog") == waiting and lane.get("failed_rounds", 0) >= 3
                        and lane.get("state") == "backing_off")
                return lane if done else None

            lane = wait_until(three_rounds_with_all_waiting, "three failed rounds")
            sent = len(postgrest.requests("questions", "POST"))
            # One write per round (the next may just have gone out), not one per result.
            assert lane["failed_rounds"] <= sent <= lane["failed_rounds"] + 1
            assert lane["next_round_in_s"] is not None
            for job_id in ids:
                job = system.get(job_id)
                assert job.state == JobState.PROCESSING and job.result is not None
        finally:
            postgrest.release()  # Supabase is back; the writes it swallowed land now too
        jobs = [wait_state(system, job_id) for job_id in ids]
        assert qa_lane(system)["state"] == "open"
    assert [j.state for j in jobs] == [JobState.COMPLETED] * waiting
    # Writes cut at their deadline and applied late upsert the same rows: one per job.
    assert sorted(r["id"] for r in postgrest.rows("questions")) == sorted(
        row_id(job_id, "question") for job_id in ids)


def test_a_trickling_answer_is_cut_at_the_write_deadline(
        fast_settings: Settings, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    # Each byte comes well within httpx's read timeout: only an overall deadline ends it.
    settings = with_supabase(fast_settings, postgrest, supabase_timeout_s=0.5,
                             backoff_jitter=0.0)
    postgrest.trickle("questions", count=1, interval_s=0.05)
    with started(settings, clock=FixedClock()) as system:
        job_id = system.submit(JobKind.QA, question(1), owner="bob").job.id
        job = wait_state(system, job_id)
        supabase = system.snapshot()["supabase"]
    assert job.state == JobState.COMPLETED, job.last_error
    assert "deadline of 0.5s" in (supabase["last_error"] or ""), supabase["last_error"]
    assert supabase["write_retries"] == 1
    # The trickled write was applied before its answer was cut; the next one upserted
    # the very same row.
    first, second = postgrest.requests("questions", "POST")
    assert first.body == second.body
    assert postgrest.rows("questions") == [first.body]


def test_a_video_write_trickling_in_its_second_row_is_cut_and_written_again(
        fast_settings: Settings, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    settings = with_supabase(fast_settings, postgrest, supabase_timeout_s=0.6,
                             backoff_jitter=0.0)
    postgrest.trickle("qudemos", count=1, interval_s=0.05)
    with started(settings, clock=FixedClock()) as system:
        job = wait_state(system, system.submit(JobKind.VIDEO, VIDEO, owner="alice").job.id)
    assert job.state == JobState.COMPLETED, job.last_error
    assert [r.status for r in postgrest.requests("videos", "POST")] == [201, 200]
    assert len(postgrest.rows("videos")) == 1 and len(postgrest.rows("qudemos")) == 1


def test_past_the_backlog_bound_results_wait_on_their_records_and_are_stored_later(
        fast_settings: Settings, postgrest: PostgrestStandIn, standin: PythonApiStandIn,
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(result_writer, "BACKLOG_LIMIT", 2, raising=False)
    settings = with_supabase(fast_settings, postgrest, supabase_timeout_s=60.0)
    postgrest.hold("questions")
    with started(settings, clock=FixedClock()) as system:
        try:
            ids = [system.submit(JobKind.QA, question(n), owner="bob").job.id
                   for n in range(5)]
            lane = wait_until(lambda: (lane := qa_lane(system)).get("backlog") == 5 and lane,
                              "five results in the Q&A lane")
            assert (lane["held"], lane["deferred"], lane["limit"]) == (2, 3, 2)
            assert lane["writing"] in ids
            assert system.snapshot()["supabase"]["deferred_total"] == 3
            for job_id in ids:  # every accepted job kept: processing, its result recorded
                job = system.get(job_id)
                assert job.state == JobState.PROCESSING and job.result is not None
        finally:
            postgrest.release()
        jobs = [wait_state(system, job_id) for job_id in ids]
        assert qa_lane(system)["backlog"] == 0
    assert [j.state for j in jobs] == [JobState.COMPLETED] * 5
    written = [r.body["id"] for r in postgrest.requests("questions", "POST")]
    assert sorted(written) == sorted(row_id(job_id, "question") for job_id in ids)  # once each
    answers = {r["id"]: r["answer"] for r in postgrest.rows("questions")}
    assert set(answers) == set(written) and set(answers.values()) == {"This is the answer."}


def test_a_stop_cuts_a_write_in_flight_and_keeps_its_job(
        fast_settings: Settings, postgrest: PostgrestStandIn, standin: PythonApiStandIn):
    settings = with_supabase(fast_settings, postgrest, supabase_timeout_s=60.0)
    postgrest.hold("questions")
    try:
        system = JobSystem(settings, clock=FixedClock()).start()
        try:
            job_id = system.submit(JobKind.QA, question(1), owner="bob").job.id
            assert postgrest.wait_requests("questions", 1, method="POST", timeout=10)
            job = system.get(job_id)
        finally:
            # Within the writer's stop timeout, not the write's 60 s: stop() raises
            # pykka.Timeout otherwise, and the lane would be left running.
            system.stop(drain=False)
    finally:
        postgrest.release()
    assert job.state == JobState.PROCESSING and job.result is not None


def test_a_trickling_company_lookup_ends_at_its_deadline(
        fast_settings: Settings, postgrest: PostgrestStandIn):
    sink = ResultSink(with_supabase(fast_settings, postgrest, supabase_timeout_s=0.3))
    try:
        postgrest.trickle("companies", method="GET", interval_s=0.05)
        with pytest.raises(ResultStoreUnavailable, match=r"deadline of 0\.3s"):
            sink.resolve_company(company_name="acme")
        assert sink.resolve_company(company_name="acme").id == ACME_ID  # the next one passes
    finally:
        sink.close()
