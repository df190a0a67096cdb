"""Several Python API instances: routing by room, per-instance limits and memory, the breaker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from actors import JobKind, JobState, JobSystem, Settings
from actors.work.instances import CLOSED, HALF_OPEN, OPEN, InstanceSet
from tests.standin import PythonApiStandIn
from tests.test_actors_support import wait_until

VIDEO, QA = JobKind.VIDEO, JobKind.QA


# --- pure logic --------------------------------------------------------------------------


def make_set(n: int = 2, threshold: int = 2) -> InstanceSet:
    return InstanceSet(tuple(f"http://i{k}" for k in range(n)), {VIDEO: 2, QA: 3},
                       failure_threshold=threshold, open_s=10.0)


def test_choose_takes_the_instance_with_most_room() -> None:
    instances = make_set(3)
    a, b, c = instances.instances
    instances.started(a, QA)
    instances.started(a, QA)
    instances.started(b, QA)
    assert instances.choose(QA, now=0.0) is c
    instances.started(c, QA)
    instances.started(c, QA)
    assert instances.choose(QA, now=0.0) is b
    assert instances.choose(QA, now=0.0, avoid="http://i1") is not b


def test_per_instance_limits() -> None:
    instances = make_set(2)
    for instance in instances.instances:
        instances.started(instance, VIDEO)
        instances.started(instance, VIDEO)
    assert instances.choose(VIDEO, now=0.0) is None
    assert not instances.has_room(VIDEO, now=0.0)
    assert instances.has_room(QA, now=0.0)


def test_pressure_keeps_video_away_but_not_questions() -> None:
    instances = make_set(2)
    a, b = instances.instances
    a.pressure = True
    assert instances.choose(VIDEO, now=0.0) is b
    assert a.state == "pressure"
    b.pressure = True
    assert instances.choose(VIDEO, now=0.0) is None
    assert instances.choose(QA, now=0.0) is not None


def test_breaker_opens_half_opens_and_closes_on_a_probe() -> None:
    instances = make_set(2, threshold=2)
    a, b = instances.instances
    instances.started(a, QA)
    assert not instances.ended(a.url, QA, broke=True, now=0.0)
    instances.started(a, QA)
    assert instances.ended(a.url, QA, broke=True, now=1.0)
    assert a.breaker == OPEN and instances.choose(QA, now=2.0) is b
    assert instances.next_change(now=2.0) == pytest.approx(9.0)
    assert instances.half_open(now=11.0) == [a]
    assert a.state == HALF_OPEN and instances.choose(QA, now=11.0, avoid=b.url) is b
    assert instances.probed(a.url, answered=False, now=11.0) == OPEN
    assert a.open_until == pytest.approx(31.0)  # the period doubled
    assert instances.probed(a.url, answered=True, now=12.0) is None  # still open: ignored
    instances.half_open(now=31.0)
    assert instances.probed(a.url, answered=True, now=31.0) == CLOSED
    assert a.failures == 0 and instances.choose(QA, now=31.0, avoid=b.url) is a


def test_a_success_resets_the_count_of_failures() -> None:
    instances = make_set(2, threshold=2)
    a = instances.instances[0]
    for broke in (True, False, True):
        instances.started(a, QA)
        instances.ended(a.url, QA, broke=broke, now=0.0)
    assert a.breaker == CLOSED and a.failures == 1


def test_one_instance_has_no_breaker() -> None:
    instances = make_set(1, threshold=1)
    (a,) = instances.instances
    instances.started(a, QA)
    assert not instances.ended(a.url, QA, broke=True, now=0.0)
    assert a.breaker == CLOSED and not instances.all_open(now=0.0)


# --- real actors against several stand-ins ---------------------------------------------


@pytest.fixture
def standins() -> Iterator[list[PythonApiStandIn]]:
    with ExitStack() as stack:
        yield [stack.enter_context(PythonApiStandIn()) for _ in range(3)]


def multi_settings(fast_settings: Settings, servers: list[PythonApiStandIn], **changes: object
                   ) -> Settings:
    defaults: dict[str, object] = {"max_concurrent_videos": 1, "max_concurrent_qa": 2,
                                   "breaker_failures": 1, "breaker_open_s": 0.2}
    return fast_settings.replace(python_api_base_url=",".join(s.url for s in servers),
                                 **{**defaults, **changes})


def video(i: int) -> dict[str, str]:
    return {"video_url": f"https://youtu.be/multi-{i}", "company_name": "acme",
            "source": "youtube"}


def question(i: int) -> dict[str, str]:
    return {"question": f"Question {i}?", "company_name": "acme"}


def test_work_spreads_and_limits_hold_per_instance(
    fast_settings: Settings, standins: list[PythonApiStandIn]
) -> None:
    for server in standins:
        server.hold("process-video")
        server.hold("ask-question")
    # The static limits (adaptive capacity starts lower: tests/test_adaptive_capacity.py).
    settings = multi_settings(fast_settings, standins, adaptive_concurrency=False)
    system = JobSystem(settings).start()
    try:
        videos = [system.submit(VIDEO, video(i)).job.id for i in range(5)]
        questions = [system.submit(QA, question(i)).job.id for i in range(9)]
        for server in standins:  # every instance is filled to its own limit, no more
            assert server.wait_in_flight("process-video", 1)
            assert server.wait_in_flight("ask-question", 2)
        snapshot = system.snapshot()
        assert snapshot["kinds"]["video"]["waiting"] == 2
        assert snapshot["kinds"]["qa"]["waiting"] == 3
        assert [i["in_flight"] for i in snapshot["instances"]] == [{"video": 1, "qa": 2}] * 3
        for server in standins:
            server.release("process-video")
            server.release("ask-question")
        assert wait_until(lambda: all(system.get(j).state == JobState.COMPLETED
                                      for j in videos + questions))
        for server in standins:
            assert server.max_in_flight("process-video") <= 1
            assert server.max_in_flight("ask-question") <= 2
        assert sum(len(s.calls("process-video")) for s in standins) == 5
    finally:
        system.stop()


def test_a_dead_instance_is_routed_around_and_taken_back_after_it_recovers(
    fast_settings: Settings, standins: list[PythonApiStandIn]
) -> None:
    first, second = standins[:2]
    port = first.port
    settings = multi_settings(fast_settings, [first, second], retry_attempts=3,
                              backoff_base_s=30.0, backoff_max_s=30.0)
    first.hold("ask-question")
    system = JobSystem(settings).start()
    try:
        stuck = system.submit(QA, question(1)).job.id  # goes to the first instance (most room)
        assert first.wait_in_flight("ask-question", 1)
        first.stop()  # the instance dies mid-call
        job = None

        def finished() -> bool:
            nonlocal job
            job = system.get(stuck)
            return job.state == JobState.COMPLETED

        # Retried on the other instance at once, not after the 30 s backoff.
        assert wait_until(finished), job
        assert job is not None and job.attempts == 2
        assert second.calls("ask-question")[0].body["question"] == "Question 1?"
        states = {i["url"]: i["state"] for i in system.snapshot()["instances"]}
        assert states[first.url] in ("open", "half-open")

        with PythonApiStandIn(port=port) as revived:  # back on the same address
            assert wait_until(lambda: {i["url"]: i["state"] for i in
                                       system.snapshot()["instances"]}[revived.url] == "ok")
            second.hold("ask-question")
            revived.hold("ask-question")
            for i in range(4):
                system.submit(QA, question(10 + i))
            assert revived.wait_in_flight("ask-question", 2)  # work goes there again
            second.release("ask-question")
            revived.release("ask-question")
    finally:
        system.stop()


def test_memory_pressure_on_one_instance_pauses_video_only_there(
    fast_settings: Settings, standins: list[PythonApiStandIn]
) -> None:
    first, second = standins[:2]
    settings = multi_settings(fast_settings, [first, second], max_concurrent_videos=2)
    system = JobSystem(settings, rss_reader=lambda: 100.0).start()
    try:
        first.set_memory(1800.0)  # above MEMORY_THRESHOLD_MB (1600)
        system.check_memory()
        snapshot = system.snapshot()
        states = {i["url"]: i["state"] for i in snapshot["instances"]}
        assert states == {first.url: "pressure", second.url: "ok"}
        assert not snapshot["kinds"]["video"]["paused"]  # not paused everywhere
        first.hold("ask-question")
        second.hold("ask-question")
        videos = [system.submit(VIDEO, video(i)).job.id for i in range(3)]
        questions = [system.submit(QA, question(i)).job.id for i in range(4)]
        assert first.wait_in_flight("ask-question", 2) and second.wait_in_flight("ask-question", 2)
        first.release("ask-question")
        second.release("ask-question")
        assert wait_until(lambda: all(system.get(j).state == JobState.COMPLETED
                                      for j in videos + questions))
        assert first.calls("process-video") == []  # video never went to the pressured one
        assert len(second.calls("process-video")) == 3
        first.set_memory(500.0)
        system.check_memory()
        more = system.submit(VIDEO, video(9)).job.id
        assert wait_until(lambda: system.get(more).state == JobState.COMPLETED)
        assert {i["state"] for i in system.snapshot()["instances"]} == {"ok"}
    finally:
        system.stop()


def test_all_instances_down_jobs_wait_with_attempts_unspent_and_resume(
    fast_settings: Settings, standins: list[PythonApiStandIn]
) -> None:
    first, second = standins[:2]
    port = second.port
    settings = multi_settings(fast_settings, [first, second], retry_attempts=5,
                              breaker_open_s=0.1)
    first.stop()
    second.stop()
    system = JobSystem(settings).start()
    try:
        opener = system.submit(QA, question(1)).job.id  # fails on both: both breakers open
        assert wait_until(lambda: system.snapshot()["all_instances_open"])
        assert system.get(opener).attempts == 2
        waiting = system.submit(QA, question(2)).job.id
        # Probes keep failing and reopening the breakers; nothing is sent, nothing is spent.
        assert wait_until(lambda: system.snapshot()["kinds"]["qa"]["waiting"] == 2)
        assert system.get(waiting).attempts == 0
        assert system.get(opener).attempts == 2
        with PythonApiStandIn(port=port) as back:
            assert wait_until(lambda: all(system.get(j).state == JobState.COMPLETED
                                          for j in (opener, waiting)), timeout=20)
            assert system.get(opener).attempts == 3
            assert system.get(waiting).attempts == 1
            assert len(back.calls("ask-question")) == 2
    finally:
        system.stop()


def test_health_and_status_show_each_instance(
    fast_settings: Settings, standins: list[PythonApiStandIn]
) -> None:
    from web import AppSettings, WebSettings, create_app

    first, second = standins[:2]
    system = JobSystem(multi_settings(fast_settings, [first, second]),
                       rss_reader=lambda: 100.0).start()
    try:
        first.set_memory(1800.0)
        system.check_memory()
        app = create_app(AppSettings(core=system.settings, web=WebSettings()), job_system=system)
        client = app.test_client()
        health = client.get("/health").json
        # /health is anonymous: instances by their place in the list, never an address.
        instances = {i["instance"]: i for i in health["health"]["pythonInstances"]}
        assert instances[1]["state"] == "pressure"
        assert instances[1]["memoryMb"] == 1800.0
        assert instances[2]["state"] == "ok"
        assert instances[2]["inFlight"] == {"video": 0, "qa": 0}
        assert all("url" not in i for i in instances.values())
        assert health["status"] == "degraded"
        assert "Python API instance 1 of 2 pressure" in health["reasons"]
        status = client.get("/api/queue/status").json["data"]
        assert [i["url"] for i in status["pythonInstances"]] == [first.url, second.url]
    finally:
        system.stop()
