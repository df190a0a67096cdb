"""Helpers shared by the ``test_actors_*`` modules (this module holds no tests).

Everything here waits on something observable, polling in a bounded loop
with ``threading.Event().wait`` between polls; nothing sleeps and hopes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from actors import Job, JobKind, JobState, JobSystem, Settings
from actors.model.errors import JobNotFound
from tests.standin import PythonApiStandIn

T = TypeVar("T")

WAIT_S = 10.0
"""Overall bound of every wait: generous, since the box is busy; a pass takes far less."""

FINISHED = (JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED)


def video(n: int, company: str = "acme") -> dict[str, Any]:
    """The data of a video job, told apart from others at the stand-in by its URL."""
    return {"video_url": f"https://www.youtube.com/watch?v=video{n:03d}",
            "company_name": company, "source": "youtube"}


def question(n: int, company: str = "acme") -> dict[str, Any]:
    """The data of a Q&A job, told apart from others at the stand-in by its text."""
    return {"question": f"question {n:03d}?", "company_name": company}


def video_urls(standin: PythonApiStandIn) -> list[str]:
    """The video URLs the stand-in was asked to process, in arrival order."""
    return [call.body["video_url"] for call in standin.calls("process-video")]


def questions(standin: PythonApiStandIn) -> list[str]:
    """The questions the stand-in was asked, in arrival order."""
    return [call.body["question"] for call in standin.calls("ask-question")]


def wait_until(probe: Callable[[], T], what: str = "the condition", timeout: float = WAIT_S) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` on timeout."""
    pause = threading.Event()
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        pause.wait(0.01)


def wait_state(system: JobSystem, job_id: str, *states: JobState,
               timeout: float = WAIT_S) -> Job:
    """Wait until the job is in one of ``states`` (default: any finished state)."""
    wanted = states or FINISHED

    def probe() -> Job | None:
        job = system.get(job_id)
        return job if job.state in wanted else None

    try:
        return wait_until(probe, f"job {job_id} to be {'/'.join(s.value for s in wanted)}",
                          timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {system.get(job_id)!r}") from None


def wait_gone(system: JobSystem, job_id: str, timeout: float = WAIT_S) -> None:
    """Wait until the job has been removed from the registry."""

    def probe() -> bool:
        try:
            system.get(job_id)
        except JobNotFound:
            return True
        return False

    wait_until(probe, f"job {job_id} to be removed", timeout)


def submit_all(system: JobSystem, kind: JobKind, datas: list[dict[str, Any]],
               **kwargs: Any) -> list[str]:
    """Submit one job per data, in order; return their ids."""
    return [system.submit(kind, data, **kwargs).job.id for data in datas]


@contextmanager
def started(settings: Settings, **kwargs: Any) -> Iterator[JobSystem]:
    """A started ``JobSystem`` built with ``kwargs``, stopped (without drain) afterwards."""
    system = JobSystem(settings, **kwargs).start()
    try:
        yield system
    finally:
        system.stop(drain=False)


def actor_thread_names() -> list[str]:
    """Names of the live threads of the job system (actors and timers)."""
    prefixes = ("Dispatcher", "JobRegistry", "MemoryWatchdog", "VideoWorker", "QAWorker",
                "Timers")
    return [t.name for t in threading.enumerate() if t.name.startswith(prefixes)]
