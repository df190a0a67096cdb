"""The services an app holds, kept in ``app.extensions["qudemo"]``.

Views reach the job system only through ``job_system()``: the facade of ``actors``,
never an ``ActorRef``.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flask import Flask, current_app

if TYPE_CHECKING:
    from actors.system import JobSystem
    from web.settings import AppSettings, WebSettings

logger = logging.getLogger(__name__)

EXTENSION = "qudemo"


@dataclass(eq=False)
class QudemoExtension:
    """What one app instance uses: its settings and its job system."""

    settings: AppSettings
    system: JobSystem
    owns_system: bool
    """True when ``create_app`` started the system: then ``shutdown`` stops it."""
    _stopped: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin_drain(self) -> None:
        """Refuse new jobs from now on (SIGTERM), if this app started the system; never blocks."""
        if self.owns_system:
            self.system.begin_drain()

    def shutdown(self, *, drain: bool = True, timeout_s: float | None = None) -> None:
        """Stop the job system if this app started it (once); gunicorn's ``worker_exit``."""
        with self._lock:
            if self._stopped or not self.owns_system:
                return
            self._stopped = True
        logger.info("stopping the job system (drain=%s)", drain)
        self.system.stop(drain=drain, timeout_s=timeout_s)


def extension(app: Flask | None = None) -> QudemoExtension:
    """Return the ``QudemoExtension`` of ``app`` (default: the current app)."""
    target = app if app is not None else current_app
    ext: QudemoExtension = target.extensions[EXTENSION]
    return ext


def job_system() -> JobSystem:
    """Return the current app's job system facade."""
    return extension().system


def web_settings() -> WebSettings:
    """Return the current app's web settings."""
    return extension().settings.web
