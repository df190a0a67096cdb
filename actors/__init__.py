"""The QuDemo job system's actor core, usable on its own (no Flask needed).

>>> from actors import JobSystem, Settings, JobKind
>>> system = JobSystem(Settings.from_env()).start()
"""

from __future__ import annotations

from actors.model.errors import QueueError
from actors.model.jobs import Job, JobKind, JobState
from actors.model.settings import Settings
from actors.system import JobSystem, Submission

__all__ = ["Job", "JobKind", "JobState", "JobSystem", "QueueError", "Settings", "Submission"]
