"""Reading the PostgreSQL event log without ever skipping an event that commits late.

Event ids come from one sequence, but transactions commit in their own order: the
event with id 41 can become visible after id 42 (two instances writing at once). A
reader that went on from 42 would never see 41. So readers only go up to the
*horizon*: the highest id below which every id is either visible or known never to
come (its transaction rolled back).

How the horizon moves (``EventHorizon.advance``, one statement, one snapshot):

* it counts the visible ids above the current horizon; when they are all there
  (``count == max - horizon``) the horizon is their maximum;
* otherwise some id below ``max`` is missing. Its transaction took the id before the
  one that took ``max`` did, and that one has committed, so it is among the
  transactions running in this snapshot, all of whose xids are below the snapshot's
  ``xmax``. The pair (``max``, ``xmax``) is kept; once a later snapshot's ``xmin``
  reaches that ``xmax``, every such transaction has ended, and an id up to ``max``
  still missing will never come (a rollback, or an event retention deleted): the
  horizon goes to ``max``.

A gap thus costs at most one poll (a fraction of a second under load), never a
timeout, and ids left by retention below the horizon cost nothing.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg

from actors.model.events import JobEvent
from actors.stores.postgres.schema import JOB_COLUMNS, row_to_job

_ADVANCE_SQL = (
    "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint,"
    " pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
    " (SELECT max(id) FROM qudemo_job_events WHERE id > %(after)s),"
    " (SELECT count(*) FROM qudemo_job_events WHERE id > %(after)s)"
)
_EVENT_COLUMNS = f"id, at, {JOB_COLUMNS}"


class EventHorizon:
    """The id up to which this process may read the shared event log (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0
        self._pending: tuple[int, int] | None = None  # (max id seen past a gap, xmax then)

    def __repr__(self) -> str:
        return f"<EventHorizon {self.value} pending={self._pending}>"

    def advance(self, conn: psycopg.Connection[Any]) -> int:
        """Move the horizon as far as is safe now; return it."""
        with self._lock:
            # A second look at once: with no writer running, a gap (a rollback, events
            # retention removed) is passed in the same call. A third after passing one.
            for _ in range(3):
                row = conn.execute(_ADVANCE_SQL, {"after": self.value}).fetchone()
                assert row is not None
                xmin, xmax, newest, count = int(row[0]), int(row[1]), row[2], int(row[3])
                if newest is None:
                    return self.value
                newest = int(newest)
                if count == newest - self.value:
                    self.value, self._pending = newest, None
                    return self.value
                if self._pending is None:
                    self._pending = (newest, xmax)
                    continue
                upto, seen_xmax = self._pending
                if xmin < seen_xmax:
                    return self.value  # a transaction that may hold a missing id still runs
                self.value, self._pending = max(self.value, upto), None
            return self.value


def read_events(conn: psycopg.Connection[Any], after_id: int, upto: int, *,
                job_id: str | None, owner: str | None, limit: int) -> list[JobEvent]:
    """Return the events in (``after_id``, ``upto``], oldest first, optionally filtered."""
    if upto <= after_id:
        return []
    where = ["id > %s", "id <= %s"]
    args: list[object] = [after_id, upto]
    for column, value in (("job_id", job_id), ("owner", owner)):
        if value is not None:
            where.append(f"{column} = %s")
            args.append(value)
    rows = conn.execute(f"SELECT {_EVENT_COLUMNS} FROM qudemo_job_events WHERE"
                        f" {' AND '.join(where)} ORDER BY id LIMIT %s",
                        (*args, max(0, limit))).fetchall()
    return [JobEvent(id=int(r[0]), at=float(r[1]), job=row_to_job(r[2:])) for r in rows]
