"""I3 on a real PostgreSQL: leases fence the work, a lost lease stops local work first.

The partition is real: a TCP proxy between one instance and PostgreSQL stops
forwarding bytes and leaves every connection open (what a half-open network
path looks like). What counts is measured by the Python API stand-in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import psycopg
import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.model.errors import JobSystemUnavailable
from actors.stores.postgres.store import PostgresJobStore
from tests import pg_server
from tests.pg_server import T0, make_job
from tests.standin import PythonApiStandIn
from tests.tcp_proxy import TcpProxy
from tests.test_actors_support import wait_until

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
open_pg = pg_server.open_pg
pytestmark = pytest.mark.timeout(120)

VIDEO = JobKind.VIDEO
ONE_VIDEO = {JobKind.VIDEO: 1, JobKind.QA: 10}
Opener = Callable[..., PostgresJobStore]


def test_an_expired_lease_is_never_renewed(open_pg: Opener) -> None:
    a, b = open_pg("a"), open_pg("b")
    first, second = a.insert(make_job(VIDEO)), a.insert(make_job(VIDEO))
    (mine,) = a.claim({VIDEO: 1}, "a", ONE_VIDEO, T0, 60.0, 10.0)
    assert mine.id == first.id
    # a stalls past its lease; b finds the slot free and takes the next video.
    (theirs,) = b.claim({VIDEO: 1}, "b", ONE_VIDEO, T0 + 11, 60.0, 10.0)
    assert theirs.id == second.id
    # a wakes and renews: too late, its lease is not revived (that would hold 2 slots of 1).
    assert a.renew_leases("a", [first.id], 10.0, now=T0 + 12) == set()
    assert a.in_flight(T0 + 12)[VIDEO] == 1


def test_a_slot_stays_held_past_a_lost_lease_until_the_calls_hold(open_pg: Opener) -> None:
    a, b = open_pg("a"), open_pg("b")
    job, waiting = a.insert(make_job(VIDEO)), a.insert(make_job(VIDEO))
    a.claim({VIDEO: 1}, "a", ONE_VIDEO, T0, 60.0, 5.0, 20.0)  # lease 5 s, hold 20 s
    # a died at once; its call may still be at the Python API until T0 + 20.
    assert b.reap_expired(T0 + 6) == []
    assert b.claim({VIDEO: 1}, "b", ONE_VIDEO, T0 + 6, 60.0, 5.0, 20.0) == []
    assert b.in_flight(T0 + 6)[VIDEO] == 1
    (reaped,) = b.reap_expired(T0 + 21)
    assert reaped.id == job.id and reaped.state == JobState.QUEUED
    claimed = b.claim({VIDEO: 1}, "b", ONE_VIDEO, T0 + 21, 60.0, 5.0, 20.0)
    assert [j.id for j in claimed] == [job.id]  # its place kept, ahead of the other
    assert waiting.id != job.id


@pytest.fixture
def proxy(pg_base_url: str) -> Iterator[TcpProxy]:
    with TcpProxy.for_url(pg_base_url) as tcp:
        yield tcp


def owner_of(pg_url: str, job_id: str) -> str | None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        row = conn.execute("SELECT lease_owner FROM qudemo_jobs WHERE id = %s",
                           (job_id,)).fetchone()
    return None if row is None else row[0]


def fenced(system: JobSystem) -> bool | None:
    """Whether ``system`` has fenced itself; ``None`` while it does not answer in time."""
    try:
        return bool(system.snapshot()["shared_queue"]["fenced"])
    except JobSystemUnavailable:  # busy with a call the partition holds up
        return None


def test_a_partitioned_instance_fences_itself_and_no_video_runs_twice(
    pg_url: str, proxy: TcpProxy, fast_settings: Settings, standin: PythonApiStandIn
) -> None:
    shared = dataclasses.replace(
        fast_settings, store="postgres", max_concurrent_videos=1, lease_ttl_s=1.5,
        poll_interval_s=0.3, job_timeout_s=2.0, abandoned_hold_s=4.0,
        db_statement_timeout_s=0.5)
    standin.set_latency("process-video", 2.5)  # outlives the lease, not the hold
    a = JobSystem(dataclasses.replace(shared, database_url=proxy.route(pg_url))).start()
    b: JobSystem | None = None
    try:
        first = a.submit(VIDEO, {"video_url": "https://youtu.be/p1", "company_name": "acme",
                                 "source": "youtube"}).job.id
        assert standin.wait_in_flight("process-video", 1, timeout=10)
        assert owner_of(pg_url, first) == a.snapshot()["shared_queue"]["instance_id"]
        proxy.blackhole()  # a's connections stay open; nothing crosses any more
        b = JobSystem(dataclasses.replace(shared, database_url=pg_url)).start()
        second = b.submit(VIDEO, {"video_url": "https://youtu.be/p2", "company_name": "acme",
                                  "source": "youtube"}).job.id
        wait_until(lambda: fenced(a), "a to fence itself", timeout=30)
        # Both videos finish (b takes a's back once its hold is over), one at a time.
        wait_until(lambda: all(b.get(j).state in (JobState.COMPLETED, JobState.FAILED)
                               for j in (first, second)), "both videos to finish", timeout=60)
        assert standin.wait_for(lambda s: s.in_flight("process-video") == 0, 10)
        assert standin.max_unanswered("process-video") == 1
        calls = standin.calls("process-video")
        for i, call in enumerate(calls):  # the same video never twice at once
            for later in calls[i + 1:]:
                if later.body["video_url"] == call.body["video_url"]:
                    assert call.finished_at is not None, calls
                    assert later.started_at >= call.finished_at, calls
        proxy.heal()
        wait_until(lambda: fenced(a) is False, "the fence to lift", timeout=30)
    finally:
        proxy.cut()
        proxy.heal()
        a.stop(drain=False)
        if b is not None:
            b.stop(drain=False)
