"""One Python API instance's capacity is one, whichever backend instance sends to it (issue 20).

Two job systems share one PostgreSQL queue and one stand-in of the Python API,
which counts the work requests (both kinds) it has received and not answered.
Each system's adaptive capacity for the stand-in is 3 (its minimum and its
start); the stand-in holds every request, so no answer moves the limit while
it is measured. Before the capacity lived with the shared queue's slots, each
backend spent its own 3, and the per-kind limits over both did not bound the
total: the stand-in counted 7 at once (2026-12-01), here it counts 3.
"""

from __future__ import annotations

import pytest

from actors import JobKind, JobState
from tests import pg_server
from tests.standin import PythonApiStandIn
from tests.test_actors_support import wait_until

pg_base_url = pg_server.pg_base_url
pg_url = pg_server.pg_url
start = pg_server.start
Start = pg_server.Start
pytestmark = pytest.mark.timeout(120)

QA, VIDEO = JobKind.QA, JobKind.VIDEO
CAPACITY = {"adaptive_concurrency": True, "adaptive_min_concurrency": 3,
            "adaptive_initial_concurrency": 3, "qa_reserved_concurrency": 1,
            "max_concurrent_qa": 3, "max_concurrent_videos": 2, "poll_interval_s": 0.1,
            # No deadline or hold ends while the stand-in holds the calls: past its hold a
            # call counts as ended here (by design), while the stand-in still holds it.
            "job_timeout_s": 300.0}


def claims(system: object) -> int:
    return int(system.snapshot()["shared_queue"]["claims"])  # type: ignore[attr-defined]


def test_two_backends_together_stay_within_one_instance_capacity(
        start: Start, standin: PythonApiStandIn) -> None:
    standin.hold("ask-question")
    standin.hold("process-video")
    a = start(**CAPACITY)
    b = start(**CAPACITY)
    videos = [b.submit(VIDEO, {"video_url": f"https://youtu.be/v{i}", "company_name": "acme",
                               "source": "youtube"}).job.id for i in range(4)]
    questions = [a.submit(QA, {"question": f"Question {i}?", "company_name": "acme"}).job.id
                 for i in range(6)]
    assert wait_until(lambda: standin.max_unanswered_work() >= 3, timeout=30)
    # The backends look for more work a few times more (each beat of a backend with room
    # of its own claims, and one of them has: together they hold 3 of their 6): one that
    # counted only its own calls would send more now.
    seen = claims(a) + claims(b)
    assert wait_until(lambda: claims(a) + claims(b) >= seen + 6, timeout=30)
    assert standin.max_unanswered_work() == 3  # measured at the stand-in, both kinds
    assert standin.max_unanswered("process-video") <= 2
    standin.release("ask-question")
    standin.release("process-video")

    def finished() -> bool:
        return all(a.get(job_id).state == JobState.COMPLETED for job_id in videos + questions)

    assert wait_until(finished, timeout=60)
    assert len(standin.calls("ask-question")) == 6
    assert len(standin.calls("process-video")) == 4
