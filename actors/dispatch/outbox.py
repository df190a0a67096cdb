"""The Dispatcher's messages to the JobRegistry, sent once per step of the Dispatcher.

Handling one message, the Dispatcher often has several moves to record: a job's
outcome and the start of the job that takes its slot, a retry queued and the
next started. Each used to be a message of its own, and each a store commit.
The outbox collects them and sends them together when the step ends, as one
``RecordBatch`` (one message, one store transaction). The order is kept, and
nothing waits longer than the step that made it: the Dispatcher flushes after
every message, and before it tells another actor that may tell the registry
in turn (the ResultWriter), so the registry always sees a job's moves in order.
"""

from __future__ import annotations

from typing import Any

import pykka

from actors.model.messages import RecordBatch, RecordResult, Transition


class RegistryOutbox:
    """Collects the registry messages of one Dispatcher step; ``flush`` sends them."""

    def __init__(self, registry: pykka.ActorRef[Any]) -> None:
        self.registry = registry
        self._pending: list[Transition | RecordResult] = []

    def tell(self, message: Transition | RecordResult) -> None:
        """Record a move, sent with the others of this step."""
        self._pending.append(message)

    def flush(self) -> None:
        """Send what this step recorded: one message, or none."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        self.registry.tell(pending[0] if len(pending) == 1
                           else RecordBatch(messages=tuple(pending)))
