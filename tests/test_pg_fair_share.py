"""The fair order between companies on the shared PostgreSQL queue: one order for every instance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.dispatch.fairness import FairShare
from actors.model.jobs import Job, freeze
from actors.stores.postgres.store import PostgresJobStore
from tests import pg_server
from tests.pg_server import T0, make_job
from tests.standin import PythonApiStandIn
from tests.test_actors_support import video, wait_state, wait_until
from tests.test_fair_share import company_calls
from tests.test_pg_shared import start

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
open_pg = pg_server.open_pg
pytestmark = pytest.mark.timeout(120)
__all__ = ["start"]  # the fixture, used by name

VIDEO = JobKind.VIDEO
ROOMY = {VIDEO: 100, JobKind.QA: 100}
Opener = Callable[..., PostgresJobStore]
Start = Callable[..., JobSystem]


def of(company: str, **changes: object) -> Job:
    job = make_job(VIDEO, **changes)
    return job.replace(data=freeze({**job.data, "company_name": company}))


def companies_claimed(store: PostgresJobStore, free: int, *, at: float,
                      ceilings: dict[JobKind, int] | None = None) -> str:
    jobs = store.claim({VIDEO: free}, store.instance_id, ROOMY, at, 60.0, 30.0,
                       ceilings=ceilings)
    return "".join(job.data["company_name"] for job in jobs)


def test_tags_are_shared_by_instances_and_claims_interleave(open_pg: Opener) -> None:
    a, b = open_pg("a"), open_pg("b", share=FairShare({"heavy": 3.0}))
    for _ in range(6):
        a.insert(of("x"))  # an old backlog, on instance a
    assert companies_claimed(a, 2, at=T0) == "xx"
    ids = [b.insert(of("y")).id for _ in range(2)]  # a newcomer, on instance b
    assert b.position(ids[0], T0, 60.0) == 1  # next, everywhere
    assert a.position(ids[1], T0, 60.0) == 3
    assert companies_claimed(b, 5, at=T0 + 1) == "yxyxx"


def test_weights_and_ceilings_in_the_claim(open_pg: Opener) -> None:
    a = open_pg("a", share=FairShare({"h": 3.0}))  # heavy h weighs 3, light l 1
    for _ in range(12):
        a.insert(of("h"))
    for _ in range(12):
        a.insert(of("l"))
    assert companies_claimed(a, 8, at=T0) == "hlhhhlhh"
    # At most 7 of one company hold a slot: h (6 running) gets one more, l the rest...
    assert companies_claimed(a, 4, at=T0, ceilings={VIDEO: 7}) == "hlll"
    # ...and once both are at it, nothing is claimed, though slots and jobs are left.
    assert companies_claimed(a, 4, at=T0, ceilings={VIDEO: 7}) == "ll"
    assert companies_claimed(a, 4, at=T0, ceilings={VIDEO: 7}) == ""


def two_slots(**changes: object) -> dict[str, object]:
    """Two video slots in all, static: the order is under test, not the capacity."""
    if "adaptive_concurrency" in Settings.__dataclass_fields__:
        changes.setdefault("adaptive_concurrency", False)
    return {"max_concurrent_videos": 2, **changes}


def test_two_instances_a_second_company_starts_within_the_next_dispatches(
        start: Start, standin: PythonApiStandIn) -> None:
    standin.hold("process-video")
    a, b = start(**two_slots()), start(**two_slots())
    ids = [a.submit(VIDEO, video(n, "a")).job.id for n in range(30)]
    assert standin.wait_in_flight("process-video", 2)  # A alone: both slots (global)
    firsts = [b.submit(VIDEO, video(100 + n, "b")) for n in range(3)]
    assert firsts[0].queue_position == 1

    def counts() -> tuple[int, int, int] | None:  # the database's counts: at most 1 s old
        view = a.snapshot()["companies"]["video"]["companies"]
        found = (view.get("a", {}).get("running"), view.get("a", {}).get("waiting"),
                 view.get("b", {}).get("waiting"))
        return found if found == (2, 28, 3) else None

    assert wait_until(counts, "every instance's companies in the snapshot")
    standin.release("process-video")
    for job_id in [*ids, *(s.job.id for s in firsts)]:
        assert wait_state(a, job_id, timeout=60).state == JobState.COMPLETED
    order = company_calls(standin)
    assert [i for i, c in enumerate(order) if c == "b"][-1] <= 8, order  # FIFO: 30 to 32
    assert standin.max_unanswered("process-video") <= 2


def test_two_instances_weights_three_to_one_split_the_first_sixteen(
        start: Start, standin: PythonApiStandIn) -> None:
    standin.hold("process-video")
    weights = (("a", 3.0),)
    a, b = start(**two_slots(company_weights=weights)), start(**two_slots(company_weights=weights))
    ids = [a.submit(VIDEO, video(n, "a")).job.id for n in range(20)]
    assert standin.wait_in_flight("process-video", 2)
    ids += [b.submit(VIDEO, video(100 + n, "b")).job.id for n in range(20)]
    standin.release("process-video")
    for job_id in ids:
        wait_state(a, job_id, JobState.COMPLETED, timeout=60)
    split = Counter(company_calls(standin)[:16])
    assert 11 <= split["a"] <= 13 and split["a"] + split["b"] == 16, split
