"""Who is calling: bearer JWTs (HS256), owners, and the admin role.

A request carries ``Authorization: Bearer <JWT>`` signed with ``JWT_SECRET`` (HS256 only;
``alg: none`` and every other algorithm are refused). The token must carry ``exp``; the
user is its ``userId`` claim, else ``sub``; ``role: "admin"`` makes an admin; the
companies it works for are its ``companyId``/``companyName`` claims (``web.tenancy``). A job
belongs to the user who submitted it: anyone else is told it does not exist (404), so
job ids cannot be probed. Admins see and act on every job and control the queues.

With no ``JWT_SECRET`` outside production, authentication is off: every request acts as
the local admin ``local`` (a developer's laptop has one user, who runs the queue too).
``create_app`` logs a warning saying so. Production refuses to start without a secret.

Tokens and secrets are never logged; failures log only their reason.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import g, request

from actors.model.jobs import Job
from web.company_claims import BadCompanyClaims, Memberships, claimed_memberships
from web.context import web_settings
from web.errors import AuthRequired, NotAllowed

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
ALGORITHMS = ["HS256"]
LEEWAY_S = 10
MAX_USER_ID = 256


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of one request."""

    user_id: str
    is_admin: bool = False
    authenticated: bool = True
    """False when authentication is off and this is the local admin."""
    claimed: Memberships | None = None
    """The companies the token names (``web.tenancy``); ``None`` when it names none."""

    def can_see(self, job: Job) -> bool:
        """Tell whether this caller may see (and act on) ``job``."""
        return self.is_admin or job.owner == self.user_id


LOCAL_ADMIN = Principal(user_id="local", is_admin=True, authenticated=False)


def current_principal() -> Principal:
    """Return the caller of the current request (authenticating on first use).

    Raises:
        AuthRequired: the token is missing, invalid or expired.
    """
    principal = g.get("principal")
    if principal is None:
        principal = _authenticate()
        g.principal = principal
    return principal  # type: ignore[no-any-return]


def require_user(view: F) -> F:
    """Decorate a view that needs an authenticated caller."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        current_principal()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def require_admin(view: F) -> F:
    """Decorate a view that needs the admin role (403 for other authenticated callers)."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not current_principal().is_admin:
            raise NotAllowed()
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def load_token_verifier() -> None:
    """Import PyJWT now, so the first authenticated request does not pay for it.

    PyJWT pulls in ``cryptography`` (about 8 MB of RSS) when it is installed, which
    a server with authentication off never needs; so it is imported only here and in
    ``_authenticate``.
    """
    import jwt  # noqa: F401


def _authenticate() -> Principal:
    secret = web_settings().jwt_secret
    if secret is None:
        return LOCAL_ADMIN
    import jwt  # loaded by load_token_verifier at start when auth is on; a dict lookup here

    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("authentication required: send Authorization: Bearer <token>",
                            None)
    try:
        claims = jwt.decode(token, secret, algorithms=ALGORITHMS, leeway=LEEWAY_S,
                            options={"require": ["exp"]})
    except jwt.ExpiredSignatureError:
        raise _unauthorized("token expired", "invalid_token") from None
    except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
        logger.info("rejected a bearer token: %s", type(exc).__name__)
        raise _unauthorized("invalid token", "invalid_token") from None
    user = claims.get("userId", claims.get("sub"))
    if isinstance(user, bool) or not isinstance(user, str | int):
        raise _unauthorized("invalid token: no userId or sub claim", "invalid_token")
    user_id = str(user).strip()
    if not user_id or len(user_id) > MAX_USER_ID or not user_id.isprintable():
        raise _unauthorized("invalid token: bad userId or sub claim", "invalid_token")
    try:
        claimed = claimed_memberships(claims)
    except BadCompanyClaims as exc:
        raise _unauthorized(f"invalid token: {exc}", "invalid_token") from None
    return Principal(user_id=user_id, is_admin=claims.get("role") == "admin", claimed=claimed)


def _unauthorized(message: str, error: str | None) -> AuthRequired:
    challenge = 'Bearer realm="qudemo"'
    if error:
        challenge += f', error="{error}"'
    return AuthRequired(message, headers={"WWW-Authenticate": challenge})
