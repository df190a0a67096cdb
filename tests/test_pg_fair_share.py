"""The fair order between companies on the shared PostgreSQL queue: one order for every instance."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.dispatch.fairness import NEWCOMER_CREDIT_JOBS, NOMINAL_COST_S, FairClock, FairShare
from actors.dispatch.scheduling import WaitingQueue
from actors.model.errors import DuplicateJob, JobNotFound, JobStateConflict
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
C = NOMINAL_COST_S[VIDEO]
CREDIT = NEWCOMER_CREDIT_JOBS * C
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
    assert a.position(ids[1], T0, 60.0) == 2  # its credit: both before x's next
    assert companies_claimed(b, 5, at=T0 + 1) == "yyxxx"


def tags(store: PostgresJobStore) -> dict[str, float]:
    with store._conn() as conn:
        return {str(i): float(v) for i, v in conn.execute("SELECT id, vtime FROM qudemo_jobs")}


def test_the_claim_follows_the_local_queue_s_order_newcomer_credit_included(
        open_pg: Opener) -> None:
    share = FairShare({"w": 3.0})
    store, local = open_pg("a", share=share), WaitingQueue(60.0, fairness=FairClock(share))
    order: dict[str, list[str]] = {"pg": [], "local": []}
    local_tags: dict[str, float | None] = {}

    def arrive(company: str, count: int) -> None:
        for _ in range(count):
            job = store.insert(of(company))
            local_tags[job.id] = local.push(job).vtime

    def take(count: int) -> None:
        for _ in range(count):  # one slot at a time, as jobs end
            order["pg"] += [j.data["company_name"] for j in store.claim(
                {VIDEO: 1}, store.instance_id, ROOMY, T0, 60.0, 30.0)]
            head = local.pop_next((VIDEO,), T0)
            order["local"] += [] if head is None else [head.data["company_name"]]

    arrive("x", 8)
    take(3)
    arrive("y", 3)  # a newcomer: its credit
    take(2)
    arrive("w", 5)  # a newcomer weighing 3: three times the credit in jobs
    take(6)
    arrive("y", 2)  # y's work all ran, it comes back at once: after its own finish,
    take(20)        # not the credit again (the clock has not passed its finish)
    assert order["pg"] == order["local"]
    assert "".join(order["pg"]) == "xxx" + "yy" + "wwwww" + "y" + "xyxy" + "xxx"
    assert tags(store) == local_tags


def test_maintain_forgets_only_the_finishes_the_credit_has_passed(open_pg: Opener) -> None:
    store = open_pg("a")
    store.insert(of("z"))  # tag -credit, finish one job later
    for _ in range(6):
        store.insert(of("x"))
    assert companies_claimed(store, 5, at=T0) == "zxxxx"  # the clock at x's fourth tag
    w = [store.insert(of("w")).id for _ in range(2)]
    assert companies_claimed(store, 2, at=T0) == "ww"
    store.maintain()
    with store._conn() as conn:
        kept = {r[0]: r[1] for r in conn.execute("SELECT company, finish FROM qudemo_fair")}
    # z's finish is the credit behind the clock (the same as none); w's is behind the
    # clock but within the credit: it still places w's next job, so it stays.
    assert kept == {"x": 6 * C - CREDIT, "w": 3 * C - CREDIT}
    assert tags(store)[w[1]] == 2 * C - CREDIT
    next_w = store.insert(of("w")).id
    assert tags(store)[next_w] == 3 * C - CREDIT  # after w's own finish, not the credit again


def test_an_operator_retry_is_tagged_afresh_behind_the_work_queued_since(
        open_pg: Opener) -> None:
    store = open_pg("a")
    first = [store.insert(of("a")) for _ in range(3)]
    (claimed,) = store.claim({VIDEO: 1}, store.instance_id, ROOMY, T0, 60.0, 30.0)
    assert claimed.id == first[0].id
    failed = claimed.replace(state=JobState.FAILED, finished_at=T0 + 1, last_error="boom")
    assert store.finish(failed, store.instance_id)
    later = [store.insert(of("b")).id for _ in range(3)]  # queued after the failure
    old_tag = tags(store)[claimed.id]
    retried = store.requeue(failed.replace(state=JobState.QUEUED, attempts=0, finished_at=None,
                                           started_at=None, last_error=None))
    assert retried.seq == claimed.seq and retried.vtime is not None
    assert retried.vtime > old_tag and tags(store)[claimed.id] == retried.vtime
    stored = store.get(claimed.id)
    assert stored is not None and (stored.state, stored.attempts) == (JobState.QUEUED, 0)
    # Behind every job queued since it failed (and a's own queued work), not first again.
    assert store.position(claimed.id, T0, 60.0) == 6
    claimed_ids = [j.id for j in store.claim({VIDEO: 10}, store.instance_id, ROOMY, T0 + 2,
                                             60.0, 30.0)]
    assert claimed_ids[-1] == claimed.id
    assert set(later) < set(claimed_ids[:-1])


def test_requeue_writes_only_a_failed_job_and_tags_nothing_otherwise(open_pg: Opener) -> None:
    store = open_pg("a")
    queued = store.insert(of("a"))
    with store._conn() as conn:
        before = conn.execute("SELECT finish FROM qudemo_fair").fetchall()
    with pytest.raises(JobStateConflict):  # another instance retried it first
        store.requeue(queued)
    with pytest.raises(JobNotFound):
        store.requeue(of("a"))
    with pytest.raises(ValueError):
        store.requeue(queued.replace(state=JobState.FAILED))
    with store._conn() as conn:  # no company's finish moved for a retry not written
        assert conn.execute("SELECT finish FROM qudemo_fair").fetchall() == before
    # The same video queued again meanwhile: the dedupe index refuses, nothing written.
    done = store.insert(of("a", dedupe_key="a:v1", state=JobState.FAILED, finished_at=T0))
    again = store.insert(of("a", dedupe_key="a:v1"))
    with pytest.raises(DuplicateJob) as caught:
        store.requeue(done.replace(state=JobState.QUEUED, finished_at=None))
    assert caught.value.existing_job_id == again.id
    stored = store.get(done.id)
    assert stored is not None and stored.state == JobState.FAILED


def test_company_counts_read_the_company_column(open_pg: Opener) -> None:
    store = open_pg("a")
    store.insert(of("Straße GmbH"))  # casefolded: "strasse gmbh"; lower(): "straße gmbh"
    store.insert(of("Acme", state=JobState.COMPLETED, finished_at=T0))
    old = store.insert(of("ACME", state=JobState.FAILED, finished_at=T0))
    with store._conn() as conn:  # finished before schema 7: no company in the column
        conn.execute("UPDATE qudemo_jobs SET company = '' WHERE id = %s", (old.id,))
    assert store.company_counts(["strasse gmbh"]) == Counter({(VIDEO, JobState.QUEUED): 1})
    assert store.company_counts(["acme"]) == Counter({(VIDEO, JobState.COMPLETED): 1,
                                                      (VIDEO, JobState.FAILED): 1})
    assert store.company_counts(["acme", "strasse gmbh"], states=[JobState.QUEUED]) == (
        Counter({(VIDEO, JobState.QUEUED): 1}))
    assert store.company_counts([]) == Counter()


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
