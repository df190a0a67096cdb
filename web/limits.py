"""Rate limits that fit how clients behave: per user, with a separate budget for reads.

Two budgets, both counted with flask-limiter in fixed windows of ``RATE_LIMIT_WINDOW_MS``:

* **reads** (``RATE_LIMIT_READ_MAX_REQUESTS``): ``GET``/``HEAD`` on a route under
  ``/api/queue/`` (one job, the job list, the queue status and monitor, the job event
  streams). Following jobs is what a client does all day, so this budget is large: the
  default (18,000 per 15 minutes, 20 a second) outlasts a client polling several jobs
  every second, hour after hour.
* **general** (``RATE_LIMIT_MAX_REQUESTS``): everything else that is counted:
  submissions, cancels, retries, pauses and resumes. This is the budget that protects the
  Python API from floods, so it stays strict.

Whose budget: the user's (``user:<id>``) when the request carries a bearer token that
``web.auth`` verifies; otherwise the client address's (``addr:<ip>``). A token that is
missing, expired, forged or malformed counts against the address, so an invalid token can
never pick its own bucket (or spend someone else's). Two users behind one NAT have two
budgets; anonymous callers behind it share one.

Never counted: the health probes, ``/metrics``, the dashboard and ``/openapi.json``
(exempt blueprints), requests that match no route (flask-limiter skips them), and CORS
preflights (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``): a
browser sends one before a cross-origin call, and a 429 to it fails the call with a
``TypeError`` before the client can read our JSON.

Headers are written here rather than by flask-limiter: its own (``X-RateLimit-*`` with an
epoch reset) also set ``Retry-After`` on *every* response and raise an existing one to the
window's end, which would turn a queue-full ``Retry-After: 30`` into fifteen minutes. We
send the IETF draft names that express-rate-limit's ``standardHeaders`` sent, for the
budget the request was counted in:

* ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` (seconds until the
  window resets), ``RateLimit-Policy`` (``200;w=900``) on every limited response;
* ``Retry-After`` (seconds) only on the 429 the limiter itself raised.

The client address is the socket peer unless ``TRUST_PROXY`` is N > 0: then werkzeug's
``ProxyFix`` takes the N-th address from the right of ``X-Forwarded-For`` (what the
nearest N proxies appended) and ignores anything the client wrote before it.

Counters live in ``RATE_LIMIT_STORAGE_URI``: with ``memory://`` (the default) each gunicorn
worker counts on its own, so with N workers a client may get up to N times a budget.
"""

from __future__ import annotations

import logging
import math
import time

from flask import Blueprint, Flask, Response, g, request
from flask_limiter import ApplicationLimit, Limiter
from flask_limiter.util import get_remote_address
from werkzeug.middleware.proxy_fix import ProxyFix

from web.auth import current_principal
from web.settings import WebSettings

logger = logging.getLogger(__name__)

READ_METHODS = frozenset({"GET", "HEAD"})
READ_PREFIX = "/api/queue/"
"""Routes under this prefix, read with GET/HEAD, count in the reads budget."""


def init_limits(app: Flask, settings: WebSettings, exempt: list[Blueprint]) -> Limiter:
    """Install proxy handling, the two budgets and their headers on ``app``."""
    if settings.trust_proxy > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trust_proxy)  # type: ignore[method-assign]
    limiter = Limiter(
        key_func=client_key,
        app=app,
        application_limits=[
            # Distinct scopes keep distinct counters even when both budgets are equal.
            ApplicationLimit(settings.read_rate_limit, scope="reads",
                             exempt_when=lambda: not is_read()),
            ApplicationLimit(settings.rate_limit, scope="general", exempt_when=is_read),
        ],
        storage_uri=settings.rate_limit_storage_uri,
        strategy="fixed-window",
        headers_enabled=False,
        key_prefix="qudemo",
        # A storage outage (redis down) must not turn every request into a 500: fail open
        # and log; the job system's own queue bounds still protect the Python API.
        swallow_errors=True,
    )
    limiter.request_filter(is_preflight)
    for blueprint in exempt:
        limiter.exempt(blueprint)

    @app.after_request
    def _rate_limit_headers(response: Response) -> Response:
        try:
            current = limiter.current_limit
            reset_at = current.reset_at if current is not None else 0
        except Exception:  # storage unreachable: the request was let through, say nothing
            logger.warning("rate-limit storage unavailable; headers omitted", exc_info=True)
            return response
        if current is None:  # exempt, a preflight, or an unknown route
            return response
        window_s = current.limit.get_expiry()
        # limits rounds the reset time up to a whole second; never claim more than a window.
        reset_in = min(window_s, max(0, math.ceil(reset_at - time.time())))
        response.headers["RateLimit-Limit"] = str(current.limit.amount)
        response.headers["RateLimit-Remaining"] = str(max(0, current.remaining))
        response.headers["RateLimit-Reset"] = str(reset_in)
        response.headers["RateLimit-Policy"] = f"{current.limit.amount};w={window_s}"
        if current.breached and response.status_code == 429:
            response.headers["Retry-After"] = str(max(1, reset_in))
        return response

    return limiter


def client_key() -> str:
    """Return whose budget the current request spends: ``user:<id>`` or ``addr:<ip>``.

    Only a token that ``web.auth`` verifies names a user; anything else is the address.
    """
    key = g.get("rate_limit_key")
    if key is None:
        user = _verified_user()
        key = f"user:{user}" if user is not None else f"addr:{get_remote_address()}"
        g.rate_limit_key = key  # flask-limiter asks once per budget; verify the token once
    return str(key)


def is_read() -> bool:
    """Tell whether the current request reads jobs or queues (the reads budget)."""
    rule = request.url_rule
    return (request.method in READ_METHODS and rule is not None
            and rule.rule.startswith(READ_PREFIX))


def is_preflight() -> bool:
    """Tell whether the current request is a CORS preflight (never counted, never refused)."""
    return (request.method == "OPTIONS" and "Origin" in request.headers
            and "Access-Control-Request-Method" in request.headers)


def _verified_user() -> str | None:
    if not request.headers.get("Authorization"):
        return None  # no token: nothing to verify, the address it is
    try:
        principal = current_principal()
    except Exception:
        # Whatever refused the token (AuthRequired, or anything unexpected) must land the
        # request in the address's bucket: flask-limiter swallows an exception raised here
        # and lets the request through uncounted. The view raises it again for the reply.
        return None
    # With authentication off every caller is the local admin: one user for all would
    # merge every client into one budget, so count addresses.
    return principal.user_id if principal.authenticated else None
