"""Job lifecycle logging: one line per event, with fields a JSON log can carry.

Every lifecycle event (accepted, started, retrying, completed, failed,
cancelled, requeued, interrupted, recovered; with Supabase also processed and
store_retrying) is logged exactly once, by the actor that
decides it, with ``extra=job_fields(...)``. ``JsonFormatter`` turns a record
into one JSON object per line (``LOG_FORMAT=json``) including those fields.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from actors.model.jobs import JobKind

JOB_FIELDS = ("job_id", "kind", "attempt", "event")


def job_fields(job_id: str, kind: JobKind, event: str, attempt: int | None = None
               ) -> dict[str, Any]:
    """Return the ``extra`` of a lifecycle log line."""
    return {"job_id": job_id, "kind": kind.value, "attempt": attempt, "event": f"job.{event}"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, logger, thread, message, job fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the JSON line for ``record``."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        for name in JOB_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)
