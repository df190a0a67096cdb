"""Idempotency keys: a submission retried under the same key makes one job, not two.

A client sends ``Idempotency-Key`` (IETF httpapi draft) with a submission; the web layer
checks the header and fingerprints the request (``web/idempotency.py``), and the job
carries an ``IdempotencyKey`` to the JobRegistry. There, in the one step that stores a
new job (``AddJob``):

* a live key of the same caller with the same fingerprint names a job: no job is made,
  that job is answered again (``Replayed``);
* a live key with another fingerprint is refused (``IdempotencyKeyReused``, 422);
* otherwise the job is stored, and its key with it, in the same store transaction: the
  key exists exactly when its job was accepted. Refusals (queue full, duplicate,
  memory, a failing store) store nothing, so the client may retry under the same key.

A key lives until ``expires_at`` (``QUEUE_IDEMPOTENCY_RETENTION_MS`` after its job was
made, 24 h by default), or for as long as its job is retained, whichever ends first: a
key whose job retention has removed counts as unused. Expired keys are removed by the
registry's retention timer, in batches.

With the shared PostgreSQL store two instances may take the same key at the same
moment: the key's row is inserted with ``ON CONFLICT`` in the job's own transaction, so
exactly one job is made, and the other instance finds the key taken
(``IdempotencyKeyTaken``) and answers that job instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_KEY_LENGTH = 255
"""The longest key accepted (characters; printable ASCII only)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyKey:
    """A submission's ``Idempotency-Key``: whose it is, the key, the request's fingerprint."""

    scope: str
    """The caller the key belongs to (its user id): another caller's same key is another key."""
    key: str
    fingerprint: str
    """What the request asked for (a hash): the same key with another request is refused."""
    expires_at: float = math.inf
    """When the key is forgotten (epoch seconds); set by ``JobSystem.submit``."""
