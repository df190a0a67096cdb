"""A job event: one change of a job's state, as the job store's event log records it."""

from __future__ import annotations

from dataclasses import dataclass

from actors.model.jobs import Job


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One change of a job: the job as it was right after it (its ``state`` names the event).

    Attributes:
        id: Position in the store's log; later events have larger ids.
        job: The job as of this event.
        at: When the change was written (epoch seconds, the store's clock).
    """

    id: int
    job: Job
    at: float


EventList = list[JobEvent]
"""A name for the stores, whose own ``list`` method shadows the builtin in their classes."""
