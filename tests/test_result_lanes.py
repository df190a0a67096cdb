"""The ResultWriter's lanes as pure bookkeeping: states, the bound, read-backs, order."""

from __future__ import annotations

import pytest

from actors.model.jobs import Job, JobKind, JobState
from actors.results.lanes import LaneState, PendingWrite, WriteLane


def job(n: int, **changes: object) -> Job:
    return Job(id=f"j{n}", kind=JobKind.QA, priority=1, state=JobState.PROCESSING,
               result={"answer": f"a{n}"}).replace(**changes)


def pending(n: int, *, since: float = 0.0, attempt: int = 1) -> PendingWrite:
    return PendingWrite(job=job(n), result={"answer": f"a{n}"}, at=100.0 + n,
                        attempt=attempt, since=since)


def test_one_write_at_a_time_in_order():
    lane = WriteLane(JobKind.QA, limit=10)
    for n in range(3):
        assert lane.accept(pending(n))
    first = lane.next_write()
    assert first is not None and first.job.id == "j0"
    assert lane.next_write() is None  # busy
    assert lane.finish() is first
    lane.reopen()
    nxt = lane.next_write()
    assert nxt is not None and nxt.job.id == "j1"
    assert "j1" in lane and "j2" in lane and "j0" not in lane


def test_a_failed_write_backs_off_the_lane_then_one_probe_goes_out():
    lane = WriteLane(JobKind.QA, limit=10)
    for n in range(3):
        lane.accept(pending(n))
    lane.next_write()
    failed = lane.finish()
    lane.back_off(now=10.0, delay_s=5.0)
    lane.requeue(failed)
    assert (lane.state, lane.failed_rounds, lane.next_round_at) == (LaneState.BACKING_OFF, 1,
                                                                    15.0)
    assert lane.next_write() is None  # nothing goes out while backing off
    assert lane.waiting() == ["j0"]
    lane.probe()
    probe = lane.next_write()
    # The failed one went to the back: one result Supabase keeps failing holds no one up.
    assert lane.state == LaneState.PROBING and probe is not None and probe.job.id == "j1"
    assert lane.next_write() is None  # one probe at a time
    lane.finish()
    lane.back_off(now=20.0, delay_s=10.0)
    assert lane.failed_rounds == 2
    lane.probe()
    lane.next_write()
    lane.finish()
    lane.reopen()
    assert (lane.state, lane.failed_rounds, lane.next_round_at) == (LaneState.OPEN, 0, None)
    retried = [p for p in lane.queued if p.job.id == "j0"]
    assert [p.attempt for p in retried] == [2]


def test_past_the_bound_results_are_deferred_in_order_and_read_back_when_there_is_room():
    lane = WriteLane(JobKind.QA, limit=2)
    assert [lane.accept(pending(n, since=float(n))) for n in range(5)] == [
        True, True, False, False, False]
    assert (lane.held, len(lane.deferred)) == (2, 3)
    assert lane.view()["backlog"] == 5 and lane.view()["oldest_since"] == 0.0
    lane.next_write()
    lane.finish()
    lane.reopen()
    assert lane.next_write() is not None  # j1 is written before anything is read back
    assert lane.next_load() == ()  # busy
    lane.finish()
    assert lane.next_load() == ("j2", "j3")  # room for two
    assert lane.busy and lane.next_write() is None
    assert lane.accept(pending(5)) is False  # still deferred: order is kept
    skipped = lane.loaded([("j2", job(2)), ("j3", job(3, state=JobState.COMPLETED))])
    assert skipped == [("j3", "the job is completed now")]
    queued = lane.queued[0]
    assert (queued.job.id, queued.at, queued.since) == ("j2", 102.0, 2.0)  # rows as before
    assert list(lane.deferred) == ["j4", "j5"]


def test_a_failed_read_back_puts_the_results_first_in_line_again():
    lane = WriteLane(JobKind.QA, limit=1)
    for n in range(4):
        lane.accept(pending(n))
    lane.next_write()
    lane.finish()
    assert lane.next_load() == ("j1",)
    lane.load_failed()
    assert list(lane.deferred) == ["j1", "j2", "j3"]
    assert lane.loaded([("j1", None)]) == []  # not being read back any more: ignored
    assert lane.next_load() == ("j1",)
    assert lane.loaded([("j1", None)]) == [("j1", "the job is gone")]
    assert lane.idle is False and lane.next_load() == ("j2",)


def test_a_lane_holds_at_least_one_result():
    with pytest.raises(ValueError):
        WriteLane(JobKind.VIDEO, limit=0)
