"""Short-lived tokens for event streams in a URL (``?access_token=``), where EventSource needs them.

A browser's ``EventSource`` cannot send an ``Authorization`` header, so the events routes
also take a token in the query string. A URL ends up in proxy logs, browser history and
``Referer`` headers, so that token is not the caller's API token:

* it is minted by the API (``POST /api/queue/events/token``, and in every 202 reply),
  for the caller it was minted for, and lets only that caller's own jobs' events be read
  (never an admin's view of every job, even when an admin minted it);
* it lives ``EVENTS_TOKEN_TTL_MS`` (10 minutes by default): enough to open a stream and
  reconnect; an open stream stays open past it;
* it is a JWT (HS256) signed with a key *derived* from ``JWT_SECRET`` (an HMAC of a fixed
  label), with ``purpose: "events"``: the API's own token check, which uses the secret
  itself, refuses it, so it is useless as an API token; and an API token in the URL
  fails this check, so the long-lived one is never accepted there.

Neither kind of token is ever logged (gunicorn's access log goes through
``serving.RedactingLogger``, which hides ``access_token`` values).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from typing import TYPE_CHECKING

from web.auth import Principal, current_principal
from web.context import extension, web_settings
from web.errors import AuthRequired

if TYPE_CHECKING:
    from actors.model.jobs import Job

logger = logging.getLogger(__name__)

PURPOSE = "events"
_LABEL = b"qudemo-jobs events stream token v1"
_ALGORITHMS = ["HS256"]
LEEWAY_S = 10


def _key(secret: str) -> bytes:
    """The signing key: never the API's secret itself (an HMAC of a fixed label under it)."""
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).digest()


def mint(user_id: str, secret: str, *, ttl_s: float, now: float | None = None) -> str:
    """Return a stream token for ``user_id``'s own jobs, valid for ``ttl_s``."""
    import jwt  # loaded at start when authentication is on (web.auth.load_token_verifier)

    issued = int(time.time() if now is None else now)
    claims = {"sub": user_id, "purpose": PURPOSE, "iat": issued, "exp": issued + int(ttl_s)}
    return jwt.encode(claims, _key(secret), algorithm="HS256")


def verify(token: str, secret: str) -> Principal:
    """Return the caller a stream token stands for (own jobs only, never an admin).

    Raises:
        AuthRequired: not a valid, unexpired stream token (an API token included).
    """
    import jwt

    try:
        claims = jwt.decode(token, _key(secret), algorithms=_ALGORITHMS, leeway=LEEWAY_S,
                            options={"require": ["exp", "sub", "purpose"]})
    except jwt.ExpiredSignatureError:
        raise _refused("access_token expired; get a new one from POST "
                       "/api/queue/events/token") from None
    except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
        logger.info("rejected a stream token: %s", type(exc).__name__)
        raise _refused("access_token is not an events token (POST /api/queue/events/token);"
                       " API tokens are never accepted in a URL") from None
    user = claims.get("sub")
    if claims.get("purpose") != PURPOSE or not isinstance(user, str) or not user.strip():
        raise _refused("access_token is not an events token")
    return Principal(user_id=user.strip(), is_admin=False)


def events_links(job: Job | None) -> dict[str, str | None]:
    """Return where the current caller follows ``job`` (``None``: all its jobs) with EventSource.

    ``eventsUrl`` carries a fresh stream token (``?access_token=``) when authentication
    is on; ``eventsToken`` is that token alone (``None`` when authentication is off).
    """
    path = ("/api/queue/events" if job is None
            else f"/api/queue/jobs/{job.kind.value}/{job.id}/events")
    secret = web_settings().jwt_secret
    if secret is None:
        return {"eventsUrl": path, "eventsToken": None}
    token = mint(current_principal().user_id, secret,
                 ttl_s=extension().settings.streams.token_ttl_s)
    return {"eventsUrl": f"{path}?access_token={token}", "eventsToken": token}


def _refused(message: str) -> AuthRequired:
    return AuthRequired(message, headers={"WWW-Authenticate":
                                          'Bearer realm="qudemo", error="invalid_token"'})
