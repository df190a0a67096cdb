"""What the Dispatcher needs from the place jobs wait: the queue-backend interface.

The Dispatcher (dispatcher.py) decides everything about *running* jobs:
workers, slots per Python API instance, deadlines, abandoned calls, retries,
outcomes. Where the *waiting* jobs are, and how the next ones are taken, is a
queue backend's, by composition:

* ``LocalQueue`` (local_queue.py): the waiting order in this process's memory,
  over any store; taking a job is a pop, answered at once.
* ``ClaimingQueue`` (shared_queue.py): the waiting order in PostgreSQL, shared
  by every instance; taking jobs is a claim, made on the backend's own thread
  and answered later with a ``Claimed`` message. No database call ever runs on
  the Dispatcher's thread.

Every method here is called on the Dispatcher's thread, and none may block on
I/O. An answer that needs I/O (a position, a cancel, a snapshot of the shared
queue) is returned as a ``concurrent.futures.Future`` the asker waits on.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from actors.dispatch.fairness import Capped
from actors.model.jobs import Job, JobKind
from actors.model.messages import Claimed

Room = Callable[[], dict[JobKind, int]]
"""How many more jobs of each kind could start now (idle workers and Python API room)."""


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the Python API may take now, as this instance sees it (for a shared claim)."""

    limits: Mapping[JobKind, int]
    """Each kind's limit over every Python API instance."""
    instances: Mapping[str, tuple[int, Mapping[JobKind, int]]]
    """Per instance (base URL): its capacity in all, and the most calls of each kind."""
Answer = Any | Future[Any]
"""A value, or a future of it when the answer needs I/O (the asker waits on it)."""


class DispatcherPort(Protocol):
    """What a queue backend may do to its Dispatcher: tell it messages (from any thread)."""

    def tell(self, message: Any) -> None:
        """Put ``message`` in the Dispatcher's inbox; a stopped Dispatcher ignores it."""


class QueueBackend(Protocol):
    """Where waiting jobs wait and how the Dispatcher takes the next ones."""

    shared: bool
    """Whether other instances take from the same queue."""
    dispatch_after_outcome: bool
    """Whether an outcome frees a slot at once (local), or only once its write wakes us."""

    def start(self, port: DispatcherPort) -> None:
        """Start whatever the backend runs beside the Dispatcher (threads, listeners)."""

    def stop(self) -> None:
        """Stop it; jobs taken but never started go back to the queue."""

    def add(self, job: Job) -> None:
        """A stored, queued job joins the queue (submitted, recovered, retried by an operator)."""

    def take_over(self, job: Job) -> bool:
        """A processed job whose result is not stored: whether to store it here, now."""

    def retry_due(self, job: Job) -> None:
        """A retry's backoff is over: the job may be taken again (the move recorded)."""

    def take(self, room: Room, capped: Capped | None, *, qa_first: bool,
             capacity: Callable[[], Capacity]) -> list[Job]:
        """Jobs to start now, best first, within ``room``; ``processing``, attempt counted.

        ``capped``: companies at their running ceiling here; ``qa_first``: questions take
        the capacity both kinds share before any video; ``capacity``: the Python API's,
        for a claim that counts every instance's calls. A backend that takes
        asynchronously returns none here and tells the Dispatcher ``Claimed`` later.
        """

    def claimed(self, message: Claimed) -> list[Job]:
        """A claim came back: the jobs to start, now the Dispatcher's."""

    def give_back(self, job: Job) -> None:
        """A taken job no slot can take after all: back to its place, its attempt uncounted."""

    def started(self, job: Job) -> None:
        """A job runs (or its result is stored) here: keep whatever makes it this instance's."""

    def shutdown_cut(self, job: Job) -> bool:
        """A call the shutdown cut: whether the queue protects it (else the Dispatcher retries)."""

    def cancel(self, job_id: str, retrying: Job | None) -> Answer:
        """Withdraw a waiting job, or ``retrying`` (its timer stopped); ``True`` if withdrawn."""

    def pause(self, kind: JobKind, reason: str) -> None:
        """Stop taking ``kind`` for ``reason``."""

    def resume(self, kind: JobKind, reason: str) -> bool:
        """Lift the ``reason`` pause of ``kind``; return whether taking may go on now."""

    def pause_reasons(self, kind: JobKind) -> set[str]:
        """The reasons ``kind`` is paused, as far as this instance knows without I/O."""

    def waiting(self, kind: JobKind) -> int:
        """How many jobs of ``kind`` wait, as far as this instance knows without I/O."""

    def position(self, job_id: str, estimate: Callable[[JobKind, int], float]) -> Answer:
        """A waiting job's ``(position, estimated wait)``, or ``None``."""

    def charge(self, job: Job, extra_s: float) -> None:
        """Correct the company's place in the fair order by what an attempt really took."""

    def company_waiting(self) -> Counter[tuple[JobKind, str]]:
        """Waiting jobs per (kind, company) known here (for the snapshot's fallback)."""

    def inspected(self, local: dict[str, Any],
                  companies: Callable[[Mapping[str, Any] | None], dict[str, Any]],
                  running: Collection[str]) -> Answer:
        """The Dispatcher's snapshot with the queue's own view merged in.

        ``companies`` turns the queue's per-company counts (or ``None``: none read) into
        the snapshot's table; ``running`` are the ids of the attempts running here.
        """

    def on_message(self, message: Any) -> bool:
        """Handle a message the backend told its Dispatcher; return whether it was one."""
