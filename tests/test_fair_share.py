"""The fair order between companies: pure ordering, settings, real actors and the stand-in."""

from __future__ import annotations

from collections import Counter

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.dispatch.fairness import (
    NEWCOMER_CREDIT_JOBS,
    NOMINAL_COST_S,
    FairClock,
    FairShare,
    describe_companies,
)
from actors.dispatch.scheduling import WaitingQueue
from actors.model.errors import SettingsError
from actors.model.jobs import Job
from actors.model.settings import parse_company_weights
from tests.standin import PythonApiStandIn
from tests.test_actors_support import started, video, wait_state, wait_until

VIDEO, QA = JobKind.VIDEO, JobKind.QA
C = NOMINAL_COST_S[VIDEO]  # one video of a weight-1 company, in virtual time
CREDIT = NEWCOMER_CREDIT_JOBS * C


class Jobs:
    """Makes jobs of named companies in arrival order (seq), like the registry does."""

    def __init__(self) -> None:
        self.seq = 0

    def __call__(self, company: str, kind: JobKind = VIDEO, priority: int = 2,
                 created_at: float = 0.0) -> Job:
        self.seq += 1
        return Job(id=f"{company}{self.seq}", kind=kind, priority=priority, seq=self.seq,
                   created_at=created_at, data={"company_name": company})


def queue_of(weights: dict[str, float] | None = None, aging_s: float = 60.0) -> WaitingQueue:
    return WaitingQueue(aging_s, fairness=FairClock(FairShare(weights or {})))


def companies(order: list[Job]) -> str:
    return "".join(job.data["company_name"] for job in order)


def pop(queue: WaitingQueue, count: int, now: float = 0.0, **kwargs: object) -> list[Job]:
    popped = []
    for _ in range(count):
        job = queue.pop_next((VIDEO, QA), now, **kwargs)  # type: ignore[arg-type]
        if job is None:
            break
        popped.append(job)
    return popped


# --- the order -----------------------------------------------------------------------


def test_equal_weights_interleave_whoever_queued_first() -> None:
    make, queue = Jobs(), queue_of()
    for _ in range(4):
        queue.push(make("a"))
    for _ in range(4):
        queue.push(make("b"))
    assert companies(pop(queue, 8)) == "abababab"


def test_weights_three_to_one_give_three_to_one_while_both_wait() -> None:
    make, queue = Jobs(), queue_of({"a": 3.0})
    for _ in range(30):
        queue.push(make("a"))
    for _ in range(30):
        queue.push(make("b"))
    first = Counter(companies(pop(queue, 16)))
    assert first == Counter({"a": 12, "b": 4})
    assert Counter(companies(pop(queue, 16))) == Counter({"a": 12, "b": 4})


def test_a_newcomer_does_not_wait_behind_an_old_backlog() -> None:
    make, queue = Jobs(), queue_of()
    for _ in range(30):
        queue.push(make("a"))
    assert companies(pop(queue, 2)) == "aa"  # both slots busy
    for _ in range(3):
        queue.push(make("b"))
    assert queue.position("b31", now=0.0) == 1  # its real place: next
    order = companies(pop(queue, 8))
    assert order == "bbabaaaa"  # B's three go within the next four dispatches


def test_a_newcomer_starts_its_credit_behind_the_clock_then_takes_its_share() -> None:
    make, queue = Jobs(), queue_of()
    for _ in range(40):
        queue.push(make("a"))
    pop(queue, 20)  # the clock has moved well past 0
    clock = queue.fair.now(VIDEO, 2)
    assert clock == 19 * C - CREDIT  # a's own credit was used at its start
    b = [queue.push(make("b")) for _ in range(6)]
    assert [job.vtime for job in b[:2]] == [clock - CREDIT, clock - CREDIT + C]
    # a's next job is tagged one job past the clock: b's first three go before it (ties go
    # to the earlier arrival), then the two alternate: b owes nothing, is owed nothing.
    assert companies(pop(queue, 11)) == "bbbababab" + "aa"


def test_a_burst_split_in_two_earns_the_credit_only_once() -> None:
    make, queue = Jobs(), queue_of()
    queue.fair.PRUNE_EVERY = 1  # a prune never drops a finish that still counts
    for _ in range(40):
        queue.push(make("a"))
    pop(queue, 20)
    clock = queue.fair.now(VIDEO, 2)
    first = [queue.push(make("b")) for _ in range(2)]
    assert companies(pop(queue, 2)) == "bb"  # the credit: both go at once
    # b comes straight back for more: it continues after its own work, not from the
    # clock minus the credit again, so two bursts get what one would have.
    second = [queue.push(make("b")) for _ in range(2)]
    assert [job.vtime for job in first + second] == [clock - CREDIT + n * C for n in range(4)]
    assert companies(pop(queue, 4)) == "baba"


def test_a_heavier_newcomer_gets_its_weight_times_the_credit_in_jobs() -> None:
    make, queue = Jobs(), queue_of({"b": 3.0})
    for _ in range(10):
        queue.push(make("a"))
    pop(queue, 2)
    for _ in range(10):
        queue.push(make("b"))
    # The credit is virtual time, the same for all: b's jobs step C/3, so six fit in it.
    assert companies(pop(queue, 9)) == "bbbbbbabb"


def test_an_idle_company_banks_no_credit() -> None:
    make, queue = Jobs(), queue_of()
    queue.push(make("b"))
    for _ in range(40):
        queue.push(make("a"))
    assert companies(pop(queue, 21)) == "ba" + "a" * 19  # b idle while a works alone
    for _ in range(6):  # b comes back: it is not owed the 19 jobs a ran meanwhile,
        queue.push(make("b"))  # only the credit (its first jobs before a's next)
    assert queue.get("b42").vtime == queue.fair.now(VIDEO, 2) - CREDIT  # type: ignore[union-attr]
    assert companies(pop(queue, 8)) == "bbbababa"


def test_a_retried_job_keeps_its_place_and_aging_does_not_reorder_a_priority() -> None:
    make, queue = Jobs(), queue_of(aging_s=10.0)
    for _ in range(10):
        queue.push(make("a", created_at=0.0))  # an old backlog: aged by now
    started_a = pop(queue, 2)
    for _ in range(3):
        queue.push(make("b", created_at=100.0))
    # Its attempt failed; the retried job comes back with its tag, before later arrivals
    # (b's first is tagged before it: the newcomer's credit, given when b came).
    retried = queue.push(started_a[1].replace(state=JobState.QUEUED))
    assert retried.vtime == started_a[1].vtime
    at_100 = [j.id for j in pop(queue, 6, now=100.0)]
    assert at_100[:3] == ["b11", "a2", "b12"]
    # The same order whatever the time: aging only lifts a priority's fair head.
    again, queue2 = Jobs(), queue_of(aging_s=10.0)
    for _ in range(10):
        queue2.push(again("a", created_at=0.0))
    pop(queue2, 2)
    for _ in range(3):
        queue2.push(again("b", created_at=100.0))
    assert [j.id for j in pop(queue2, 5, now=100.0)] == [j for j in at_100 if j != "a2"]


def test_a_retried_newcomer_job_keeps_its_credit_and_aging_does_not_move_it() -> None:
    make, queue = Jobs(), queue_of(aging_s=10.0)
    for _ in range(10):
        queue.push(make("a", created_at=0.0))
    pop(queue, 4, now=0.0)
    b = queue.push(make("b", created_at=50.0))
    assert b.vtime == queue.fair.now(VIDEO, 2) - CREDIT
    assert queue.pop_next((VIDEO,), 50.0) == b
    pop(queue, 2, now=50.0)  # the clock moves on while b's attempt fails
    # Back with the same tag, still first, however long the others have waited.
    assert queue.push(b.replace(state=JobState.QUEUED)).vtime == b.vtime
    assert queue.position("b11", now=1000.0) == 1
    assert queue.pop_next((VIDEO,), 1000.0) == b


def test_aging_still_lifts_a_low_priority_head_across_priorities() -> None:
    make, queue = Jobs(), queue_of(aging_s=10.0)
    queue.push(make("a", priority=3, created_at=0.0))
    queue.push(make("b", priority=1, created_at=25.0))
    assert [j.id for j in pop(queue, 2, now=25.0)] == ["a1", "b2"]  # aged to priority 1


def test_a_company_at_its_ceiling_is_passed_over_never_waited_on() -> None:
    make, queue = Jobs(), queue_of()
    for _ in range(5):
        queue.push(make("a"))
    queue.push(make("b"))
    queue.push(make("b"))
    first = queue.pop_next((VIDEO,), 0.0, capped=lambda kind, company: company == "a")
    assert first is not None and first.id == "b6"
    # Only the capped company waits: nothing is taken for it.
    assert queue.pop_next((VIDEO,), 0.0, capped=lambda kind, company: company != "x") is None


def test_measured_cost_counts_a_long_job_pays_for_its_length() -> None:
    clock = FairClock()
    for company in ("long", "short"):
        clock.tag(VIDEO, 2, company)
    clock.charge(VIDEO, 2, "long", 3 * NOMINAL_COST_S[VIDEO])  # ran 4 x its nominal length
    clock.charge(VIDEO, 2, "short", -NOMINAL_COST_S[VIDEO])  # ran almost nothing
    assert clock.tag(VIDEO, 2, "long") > clock.tag(VIDEO, 2, "short")
    # A refund never takes a company before its own waiting jobs (FIFO within a company).
    clock.charge(VIDEO, 2, "short", -10 * NOMINAL_COST_S[VIDEO])
    before = clock.tag(VIDEO, 2, "short")
    assert clock.tag(VIDEO, 2, "short") >= before


def test_kinds_and_priorities_keep_clocks_of_their_own() -> None:
    make, queue = Jobs(), queue_of()
    for _ in range(10):
        queue.push(make("a", kind=QA, priority=1))
    pop(queue, 5)
    # A video of a newcomer is not placed by the questions' clock.
    assert queue.push(make("b")).vtime == -CREDIT
    assert queue.push(make("b", priority=3)).vtime == -CREDIT


def test_the_company_view_is_bounded_and_sums_the_rest() -> None:
    waiting = Counter({(VIDEO, f"c{n:02d}"): n + 1 for n in range(30)})
    running = Counter({(VIDEO, "c29"): 2, (VIDEO, "c00"): 2})
    view = describe_companies(waiting, running, FairShare({"c29": 3.0}), top=5)["video"]
    assert view["count"] == 30
    assert len(view["companies"]) == 6 and "(others)" in view["companies"]
    assert view["companies"]["c29"] == {"waiting": 30, "running": 2, "weight": 3.0,
                                        "share": 0.5, "fair_share": round(3 / 32, 4)}
    assert view["companies"]["(others)"]["running"] == 2
    assert sum(row["waiting"] for row in view["companies"].values()) == sum(waiting.values())


# --- settings ------------------------------------------------------------------------


def test_company_weights_and_ceilings_are_read_and_checked() -> None:
    settings = Settings.from_env({
        "QUEUE_COMPANY_WEIGHTS": "Acme:3, beta:0.5,gamma-co:2",
        "QUEUE_MAX_CONCURRENT_VIDEOS_PER_COMPANY": "1",
    }, dotenv_path=None)
    assert dict(settings.company_weights) == {"acme": 3.0, "beta": 0.5, "gamma-co": 2.0}
    assert settings.limits(VIDEO).max_concurrent_per_company == 1
    assert settings.limits(QA).max_concurrent_per_company is None
    assert Settings.from_env({}, dotenv_path=None).company_weights == ()

    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"QUEUE_COMPANY_WEIGHTS": "acme:0,beta,gamma:x,delta:inf",
                           "QUEUE_MAX_CONCURRENT_QA_PER_COMPANY": "0"}, dotenv_path=None)
    text = str(caught.value)
    for expected in ("'acme' must be above 0", "'beta' is not name:weight", "'gamma'",
                     "'delta' must be above 0", "QUEUE_MAX_CONCURRENT_QA_PER_COMPANY"):
        assert expected in text
    assert parse_company_weights("a:1,A:2")[1] == ["QUEUE_COMPANY_WEIGHTS names 'a' twice"]


# --- real actors, the stand-in's call order --------------------------------------------


def company_calls(standin: PythonApiStandIn) -> str:
    """The companies of the videos the stand-in was asked to process, in arrival order."""
    return "".join(call.path.rsplit("/", 1)[1] for call in standin.calls("process-video"))


def two_video_slots(settings: Settings, **changes: object) -> Settings:
    if hasattr(settings, "adaptive_concurrency"):  # static slots: the order is under test
        changes.setdefault("adaptive_concurrency", False)
    return settings.replace(max_concurrent_videos=2, **changes)


def test_a_second_company_starts_within_the_next_dispatches_not_after_the_backlog(
        fast_settings: Settings, standin: PythonApiStandIn) -> None:
    standin.hold("process-video")
    with started(two_video_slots(fast_settings)) as system:
        a_ids = [system.submit(VIDEO, video(n, "a")).job.id for n in range(30)]
        assert standin.wait_in_flight("process-video", 2)  # A alone keeps both slots busy
        b = [system.submit(VIDEO, video(100 + n, "b")) for n in range(3)]
        assert b[0].queue_position == 1  # its real place, and so a short wait
        assert b[0].estimated_wait_s < system.submit(VIDEO, video(99, "a")).estimated_wait_s
        view = system.snapshot()["companies"]["video"]["companies"]
        assert (view["a"]["running"], view["a"]["waiting"], view["b"]["waiting"]) == (2, 29, 3)
        assert view["a"]["share"] == 1.0 and view["b"]["fair_share"] == 0.5
        standin.release("process-video")
        for job_id in [*a_ids, *(s.job.id for s in b)]:
            assert wait_state(system, job_id).state == JobState.COMPLETED
    order = company_calls(standin)
    assert order[:2] == "aa"
    # B's three videos were the 3rd, 4th and 6th dispatched (FIFO: 31st to 33rd); two
    # workers may swap neighbours on their way to the stand-in.
    assert [i for i, c in enumerate(order) if c == "b"][-1] <= 7, order


def test_weights_three_to_one_split_the_first_sixteen_dispatches_twelve_to_four(
        fast_settings: Settings, standin: PythonApiStandIn) -> None:
    standin.hold("process-video")
    settings = two_video_slots(fast_settings, company_weights=(("a", 3.0),))
    with started(settings) as system:
        ids = [system.submit(VIDEO, video(n, "a")).job.id for n in range(20)]
        assert standin.wait_in_flight("process-video", 2)
        ids += [system.submit(VIDEO, video(100 + n, "b")).job.id for n in range(20)]
        standin.release("process-video")
        for job_id in ids:
            wait_state(system, job_id, JobState.COMPLETED)
    split = Counter(company_calls(standin)[:16])
    assert 11 <= split["a"] <= 13 and split["a"] + split["b"] == 16, split


def test_a_company_ceiling_passes_its_jobs_over_and_never_blocks_another(
        fast_settings: Settings, standin: PythonApiStandIn) -> None:
    standin.hold("process-video")
    settings = two_video_slots(fast_settings, max_concurrent_videos_per_company=1)
    with started(settings) as system:
        a_ids = [system.submit(VIDEO, video(n, "a")).job.id for n in range(3)]
        assert standin.wait_in_flight("process-video", 1)
        assert system.snapshot()["kinds"]["video"]["running"] == 1  # a is at its ceiling
        b_id = system.submit(VIDEO, video(100, "b")).job.id  # the free slot is b's at once
        assert standin.wait_in_flight("process-video", 2)
        assert wait_until(lambda: system.get(b_id).state == JobState.PROCESSING)
        standin.release("process-video")
        for job_id in [*a_ids, b_id]:
            wait_state(system, job_id, JobState.COMPLETED)
    assert standin.max_unanswered("process-video") <= 2
    assert company_calls(standin) == "abaa"


def test_job_system_snapshot_shows_companies(job_system: JobSystem) -> None:
    view = job_system.snapshot()["companies"]
    assert view["video"] == {"companies": {}, "count": 0}


# --- status and metrics --------------------------------------------------------------


def test_status_shows_the_fair_share_to_admins_only_and_metrics_are_bounded(
        fast_settings: Settings, standin: PythonApiStandIn) -> None:
    from tests.test_metrics import parse
    from tests.web_support import SECRET, bearer, make_app

    standin.hold("process-video")
    with started(two_video_slots(fast_settings, company_weights=(("a", 3.0),))) as system:
        client = make_app(system, jwt_secret=SECRET).test_client()
        for n in range(4):
            system.submit(VIDEO, video(n, "a"))
        for n in range(30):  # more companies than the label set names
            system.submit(VIDEO, video(100 + n, f"small-{n:02d}"))
        assert standin.wait_in_flight("process-video", 2)
        admin = bearer("ops", role="admin")
        data = client.get("/api/queue/status", headers=admin).json["data"]
        shares = data["fairShare"]["video"]
        assert shares["count"] == 31 and len(shares["companies"]) == 21
        assert shares["companies"]["a"] == {"waiting": 2, "running": 2, "weight": 3.0,
                                            "share": 1.0, "fairShare": round(3 / 33, 4)}
        assert shares["companies"]["(others)"]["waiting"] == 11
        mine = client.get("/api/queue/status", headers=bearer("al", companyName="a")).json
        assert "fairShare" not in mine["data"]  # other companies' names and counts
        samples = parse(client.get("/metrics", headers=admin).get_data(as_text=True))
        named = {dict(labels)["company"] for name, labels in samples
                 if name == "qudemo_company_jobs_waiting"}
        assert len(named) == 21 and "a" in named and "(others)" in named
        standin.release("process-video")
