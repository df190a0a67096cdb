"""Several job systems on one PostgreSQL queue, in one process: each is an "instance".

Every instance has its own store (connection pool, listener, instance id), its
own actors and worker pools, against one stand-in of the Python API, which
counts the calls in flight. The multi-process version, under gunicorn and
with a SIGKILL, is tests/test_pg_cluster.py.
"""

from __future__ import annotations

import time
from collections import Counter

import psycopg
import pytest

from actors import JobKind, JobState, JobSystem
from actors.model.errors import DuplicateJob, JobNotFound, JobStateConflict
from actors.stores.postgres.store import PostgresJobStore
from tests import pg_server
from tests.postgrest_standin import SERVICE_KEY, PostgrestStandIn
from tests.standin import PythonApiStandIn, Reply
from tests.supabase_support import seeded
from tests.test_actors_support import wait_until

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
pytestmark = pytest.mark.timeout(120)

QA, VIDEO = JobKind.QA, JobKind.VIDEO
start = pg_server.start
Start = pg_server.Start




def question(i: int) -> dict[str, str]:
    return {"question": f"Question {i}?", "company_name": "acme"}


def video(i: int) -> dict[str, str]:
    return {"video_url": f"https://youtu.be/v{i}", "company_name": "acme", "source": "youtube"}


def asked(standin: PythonApiStandIn) -> Counter[str]:
    """How often the stand-in was asked each question."""
    return Counter(call.body["question"] for call in standin.calls("ask-question"))


def test_instances_share_one_queue_and_its_limits(start: Start,
                                                  standin: PythonApiStandIn) -> None:
    standin.set_latency("ask-question", 0.02)
    standin.set_latency("process-video", 0.05)
    a = start(max_concurrent_qa=3, max_concurrent_videos=1)
    b = start(max_concurrent_qa=3, max_concurrent_videos=1)
    c = start(max_concurrent_qa=3, max_concurrent_videos=1)
    instances = [a, b, c]
    ids = [instances[i % 3].submit(QA, question(i)).job.id for i in range(60)]
    ids += [instances[i % 3].submit(VIDEO, video(i)).job.id for i in range(9)]

    def all_completed() -> bool:
        return all(a.get(job_id).state == JobState.COMPLETED for job_id in ids)

    assert wait_until(all_completed, timeout=60)
    # Each instance alone could run 3 questions and 1 video; together they ran no more.
    assert standin.max_unanswered("ask-question") <= 3
    assert standin.max_unanswered("process-video") <= 1
    assert asked(standin) == Counter({f"Question {i}?": 1 for i in range(60)})
    assert len(standin.calls("process-video")) == 9
    # Every instance reads the same jobs, and did some of the work.
    assert {b.get(job_id).state for job_id in ids} == {JobState.COMPLETED}
    assert all(system.snapshot()["shared_queue"]["claimed"] > 0 for system in instances)


def test_a_job_submitted_on_one_instance_starts_on_another_by_wake_up(
        start: Start, standin: PythonApiStandIn) -> None:
    # No poll and no lease beat within the test: only a NOTIFY can wake the other instance.
    slow = {"poll_interval_s": 600.0, "lease_ttl_s": 1800.0}
    a = start(max_concurrent_qa=1, **slow)
    b = start(max_concurrent_qa=2, **slow)
    standin.hold("ask-question")
    first = a.submit(QA, question(1)).job.id
    assert standin.wait_in_flight("ask-question", 1)
    # One question holds a slot: a's own limit (1) is reached, b's (2) is not.
    second = a.submit(QA, question(2)).job.id
    assert standin.wait_in_flight("ask-question", 2)

    def running_on(system: JobSystem) -> set[str]:
        return {r["job_id"] for r in system.snapshot()["running_jobs"]}

    assert second in running_on(b)
    assert first in running_on(a) | running_on(b)
    standin.release("ask-question")


def test_pause_cancel_and_duplicates_are_global(start: Start,
                                                standin: PythonApiStandIn) -> None:
    a = start()
    b = start()
    a.pause(QA)  # an operator pause, set on a
    waiting = b.submit(QA, question(1)).job
    other = b.submit(QA, question(2)).job

    def paused_everywhere() -> bool:
        return all(s.snapshot()["kinds"]["qa"]["pause_reasons"] == ["operator"]
                   for s in (a, b))

    assert wait_until(paused_everywhere)  # snapshots read the database at most once a second
    assert a.get(waiting.id).state == JobState.QUEUED
    assert b.cancel(waiting.id).state == JobState.CANCELLED  # queued on b, cancelled from a
    with pytest.raises(JobStateConflict):
        a.cancel(waiting.id)
    b.resume(QA)  # lifted on b: a claims again too
    assert wait_until(lambda: a.get(other.id).state == JobState.COMPLETED)
    assert asked(standin) == Counter({"Question 2?": 1})

    standin.hold("process-video")
    a.submit(VIDEO, video(1), dedupe_key="acme:v1")
    with pytest.raises(DuplicateJob):
        b.submit(VIDEO, video(1), dedupe_key="acme:v1")
    standin.release("process-video")


def test_retrying_a_failed_video_while_the_same_video_is_active_again_is_409(
        start: Start, standin: PythonApiStandIn) -> None:
    a, b = start(), start()
    standin.script("process-video", Reply(status=400))  # fails for good, at once
    failed = a.submit(VIDEO, video(2), dedupe_key="acme:v2").job
    assert wait_until(lambda: a.get(failed.id).state == JobState.FAILED)
    standin.hold("process-video")
    try:
        again = b.submit(VIDEO, video(2), dedupe_key="acme:v2").job  # active again
        with pytest.raises(DuplicateJob) as refused:
            a.retry(failed.id)  # was a raw UniqueViolation (500)
        assert refused.value.existing_job_id == again.id
        assert a.get(failed.id).state == JobState.FAILED
    finally:
        standin.release("process-video")


def test_a_failed_attempt_is_retried_by_whichever_instance_is_free(
        start: Start, standin: PythonApiStandIn) -> None:
    from tests.standin import Reply

    standin.script("ask-question", Reply(status=503), Reply(status=503))
    a = start(retry_attempts=3)
    b = start(retry_attempts=3)
    job = a.submit(QA, question(7)).job

    assert wait_until(lambda: b.get(job.id).state == JobState.COMPLETED)
    done = b.get(job.id)
    assert done.attempts == 3
    assert len(done.retry_delays_s) == 2
    assert asked(standin) == Counter({"Question 7?": 3})
    assert wait_until(lambda: a.snapshot()["kinds"]["qa"]["completed"] == 1)


def expire_and_reap(pg_url: str, job_id: str) -> None:
    """As if the job's instance had stalled past its lease and its call's hold: expire both;
    a third party reaps it."""
    reaper = PostgresJobStore(pg_url, instance_id="reaper")
    try:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("UPDATE qudemo_jobs SET lease_expires_at = 0, hold_until = 0"
                         " WHERE id = %s", (job_id,))
        assert [j.id for j in reaper.reap_expired(time.time())] == [job_id]
    finally:
        reaper.close()


def test_an_outcome_after_the_lease_moved_on_is_dropped(start: Start, pg_url: str,
                                                        standin: PythonApiStandIn) -> None:
    standin.set_latency("ask-question", 2.0)
    slow = {"poll_interval_s": 600.0, "lease_ttl_s": 1800.0}
    a = start(max_concurrent_qa=1, **slow)
    job = a.submit(QA, question(5)).job
    assert standin.wait_in_flight("ask-question", 1)
    b = start(max_concurrent_qa=2, **slow)
    expire_and_reap(pg_url, job.id)
    # b claims it (a's one worker is still busy with the first attempt): a second call.
    assert standin.wait_calls("ask-question", 2)
    assert wait_until(lambda: a.get(job.id).state == JobState.COMPLETED, timeout=30)
    done = a.get(job.id)
    assert done.attempts == 2
    assert "lease expired" in (done.last_error or "")
    assert wait_until(lambda: a.snapshot()["registry"]["lost_outcomes"] == 1)
    assert b.snapshot()["registry"]["lost_outcomes"] == 0
    assert asked(standin) == Counter({"Question 5?": 2})


def test_an_instance_that_claims_its_own_lapsed_job_again_frees_the_old_worker(
        start: Start, pg_url: str, standin: PythonApiStandIn) -> None:
    standin.set_latency("ask-question", 1.0)
    a = start(max_concurrent_qa=2, poll_interval_s=600.0, lease_ttl_s=1800.0)
    job = a.submit(QA, question(6)).job
    assert standin.wait_in_flight("ask-question", 1)
    expire_and_reap(pg_url, job.id)
    assert standin.wait_calls("ask-question", 2)  # a claimed it again: a second attempt
    assert wait_until(lambda: a.get(job.id).state == JobState.COMPLETED, timeout=30)
    assert a.get(job.id).attempts == 2
    # The superseded attempt's answer was ignored, and its worker is free again.
    assert wait_until(lambda: standin.in_flight("ask-question") == 0)
    assert wait_until(lambda: a.snapshot()["pools"]["qa"]["busy"] == 0)
    assert a.snapshot()["instances"][0]["in_flight"]["qa"] == 0


def test_memory_pressure_seen_by_one_instance_pauses_video_on_all_until_it_lifts_or_dies(
        start: Start, standin: PythonApiStandIn) -> None:
    quick = {"lease_ttl_s": 1.5, "poll_interval_s": 0.2, "memory_threshold_mb": 1000.0,
             "max_memory_mb": 1500.0}
    a = start(**quick)
    b = start(**quick)
    a_id = a.snapshot()["shared_queue"]["instance_id"]
    standin.set_memory(1200.0)  # above the threshold, below the admission limit
    assert a.check_memory().pressure is True

    def video_pause_reasons(system: JobSystem) -> list[str]:
        return list(system.snapshot()["kinds"]["video"]["pause_reasons"])

    assert wait_until(lambda: video_pause_reasons(b) == [f"memory@{a_id}"])
    video_id = b.submit(VIDEO, video(1)).job.id
    qa_id = b.submit(QA, question(1)).job.id
    assert wait_until(lambda: b.get(qa_id).state == JobState.COMPLETED)
    assert b.get(video_id).state == JobState.QUEUED
    standin.set_memory(500.0)
    assert a.check_memory().pressure is False
    assert wait_until(lambda: b.get(video_id).state == JobState.COMPLETED)

    # A pause of an instance that stops heartbeating lifts itself.
    standin.set_memory(1200.0)
    assert a.check_memory().pressure is True
    assert wait_until(lambda: video_pause_reasons(b) == [f"memory@{a_id}"])
    second = b.submit(VIDEO, video(2)).job.id
    a.stop(drain=False)
    assert wait_until(lambda: b.get(second).state == JobState.COMPLETED, timeout=30)
    # The snapshot's view of the database is up to a second old: wait for it to catch up.
    assert wait_until(lambda: video_pause_reasons(b) == [])


def test_an_operator_retry_on_another_instance_runs_a_failed_job_again(
        start: Start, standin: PythonApiStandIn) -> None:
    from tests.standin import Reply

    standin.script("ask-question", Reply(status=400))  # permanent: no retry
    a = start()
    b = start()
    job = a.submit(QA, question(8)).job
    assert wait_until(lambda: a.get(job.id).state == JobState.FAILED)
    assert b.retry(job.id).job.state == JobState.QUEUED
    assert wait_until(lambda: a.get(job.id).state == JobState.COMPLETED)
    assert asked(standin) == Counter({"Question 8?": 2})


def test_retrying_a_job_whose_result_was_not_stored_only_stores_it(
        start: Start, standin: PythonApiStandIn) -> None:
    with PostgrestStandIn() as postgrest:
        seeded(postgrest).fail("videos", count=None, status=503)
        sink = {"supabase_url": postgrest.url, "supabase_service_role_key": SERVICE_KEY,
                "supabase_write_attempts": 2}
        a = start(**sink)
        b = start(**sink)
        job = a.submit(VIDEO, video(5), owner="alice").job
        assert wait_until(lambda: a.get(job.id).state == JobState.FAILED)
        assert (a.get(job.id).last_error or "").startswith("result could not be stored")
        postgrest.recover()
        b.pause(VIDEO)  # global: storing needs no Python API slot, so it goes on
        assert b.retry(job.id).job.state == JobState.PROCESSING
        assert wait_until(lambda: a.get(job.id).state == JobState.COMPLETED)
        assert len(standin.calls("process-video")) == 1  # stored, not processed again
        assert len(postgrest.rows("videos")) == 1


def test_retention_holds_for_the_jobs_of_every_instance(start: Start,
                                                        standin: PythonApiStandIn) -> None:
    # One question at a time across both: they finish in arrival order. A retention pass
    # runs every second.
    a = start(retention_max_jobs=5, retention_s=5.0, max_concurrent_qa=1)
    b = start(retention_max_jobs=5, retention_s=5.0, max_concurrent_qa=1)
    ids = [(a, b)[i % 2].submit(QA, question(i)).job.id for i in range(12)]
    assert wait_until(lambda: len(standin.calls("ask-question")) == 12)

    def finished() -> int:
        return sum(a.snapshot()["kinds"]["qa"][state]
                   for state in ("completed", "failed", "cancelled"))

    def all_finished() -> bool:
        qa = a.snapshot()["kinds"]["qa"]
        return qa["waiting"] + qa["retrying"] + qa["running_everywhere"] == 0

    assert wait_until(all_finished)
    # The newest finished are kept, whichever instance finished them last.
    assert wait_until(lambda: [j for j in ids if _exists(b, j)] == ids[-5:], timeout=30)
    assert wait_until(lambda: finished() == 5)
    assert wait_until(lambda: finished() == 0, timeout=30)  # then all age out


def _exists(system: JobSystem, job_id: str) -> bool:
    try:
        system.get(job_id)
    except JobNotFound:
        return False
    return True


def test_priority_order_holds_across_instances(start: Start, standin: PythonApiStandIn) -> None:
    a = start(max_concurrent_qa=1)  # one question at a time, in total
    b = start(max_concurrent_qa=1)
    a.pause(QA)
    priorities = [3, 1, 2, 3, 1, 2, 1, 3]
    for i, priority in enumerate(priorities):
        (a, b)[i % 2].submit(QA, question(i), priority=priority)
    b.resume(QA)
    assert wait_until(lambda: len(standin.calls("ask-question")) == len(priorities))
    order = [call.body["question"] for call in standin.calls("ask-question")]
    expected = sorted(range(len(priorities)), key=lambda i: (priorities[i], i))
    assert order == [f"Question {i}?" for i in expected]


def test_a_job_running_longer_than_its_lease_is_never_taken_from_a_live_instance(
        start: Start, standin: PythonApiStandIn) -> None:
    short = {"lease_ttl_s": 2.0, "poll_interval_s": 0.1}  # renewed every 0.1 s
    standin.set_latency("ask-question", 5.0)  # two and a half leases long
    a = start(**short)
    job = a.submit(QA, question(9)).job
    assert standin.wait_in_flight("ask-question", 1)
    b = start(**short)  # reaps every 0.1 s: it would take the job if the lease lapsed
    assert wait_until(lambda: a.get(job.id).state == JobState.COMPLETED, timeout=30)
    assert a.get(job.id).attempts == 1
    assert asked(standin) == Counter({"Question 9?": 1})
    assert b.snapshot()["shared_queue"]["reaped"] == 0


def test_the_per_company_bound_counts_every_instances_waiting_jobs(
        start: Start, standin: PythonApiStandIn) -> None:
    from actors.model.errors import QueueFull

    bounds = {"max_concurrent_videos": 1, "max_waiting_videos_per_company": 2}
    a, b = start(**bounds), start(**bounds)
    standin.hold("process-video")
    try:
        a.submit(VIDEO, video(1))
        assert standin.wait_in_flight("process-video", 1)  # running: not waiting
        a.submit(VIDEO, video(2))
        b.submit(VIDEO, video(3))  # acme now has 2 waiting, one submitted on each instance
        for system in (a, b):
            with pytest.raises(QueueFull, match="company 'acme'"):
                system.submit(VIDEO, video(4))
        other = {"video_url": "https://youtu.be/v9", "company_name": "globex", "source": "youtube"}
        assert b.submit(VIDEO, other).job.state == JobState.QUEUED
    finally:
        standin.release("process-video")
