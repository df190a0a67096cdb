"""Per-client rate limiting with flask-limiter, and which address is "the client".

One application-wide budget per client address (``RATE_LIMIT_MAX_REQUESTS`` per
``RATE_LIMIT_WINDOW_MS``, like the Node backend's express-rate-limit), shared by every
route; the health blueprint is exempt so probes never starve.

Headers are written here rather than by flask-limiter: its own (``X-RateLimit-*`` with an
epoch reset) also set ``Retry-After`` on *every* response and raise an existing one to the
window's end, which would turn a queue-full ``Retry-After: 30`` into fifteen minutes. We
send the IETF draft names that express-rate-limit's ``standardHeaders`` sent:

* ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` (seconds until the
  window resets), ``RateLimit-Policy`` (``200;w=900``) on every limited response;
* ``Retry-After`` (seconds) only on the 429 the limiter itself raised.

The client address is the socket peer unless ``TRUST_PROXY`` is N > 0: then werkzeug's
``ProxyFix`` takes the N-th address from the right of ``X-Forwarded-For`` (what the
nearest N proxies appended) and ignores anything the client wrote before it.
"""

from __future__ import annotations

import logging
import math
import time

from flask import Blueprint, Flask, Response
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from werkzeug.middleware.proxy_fix import ProxyFix

from web.settings import WebSettings

logger = logging.getLogger(__name__)


def init_limits(app: Flask, settings: WebSettings, exempt: list[Blueprint]) -> Limiter:
    """Install proxy handling, the limiter and its headers on ``app``."""
    if settings.trust_proxy > 0:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trust_proxy)  # type: ignore[method-assign]
    limiter = Limiter(
        key_func=get_remote_address,
        app=app,
        application_limits=[settings.rate_limit],
        storage_uri=settings.rate_limit_storage_uri,
        strategy="fixed-window",
        headers_enabled=False,
        key_prefix="qudemo",
        # A storage outage (redis down) must not turn every request into a 500: fail open
        # and log; the job system's own queue bounds still protect the Python API.
        swallow_errors=True,
    )
    for blueprint in exempt:
        limiter.exempt(blueprint)
    policy = f"{settings.rate_limit_max_requests};w={settings.rate_limit_window_s}"

    @app.after_request
    def _rate_limit_headers(response: Response) -> Response:
        try:
            current = limiter.current_limit
            reset_at = current.reset_at if current is not None else 0
        except Exception:  # storage unreachable: the request was let through, say nothing
            logger.warning("rate-limit storage unavailable; headers omitted", exc_info=True)
            return response
        if current is None:  # exempt or unknown route
            return response
        # limits rounds the reset time up to a whole second; never claim more than a window.
        reset_in = min(settings.rate_limit_window_s, max(0, math.ceil(reset_at - time.time())))
        response.headers["RateLimit-Limit"] = str(current.limit.amount)
        response.headers["RateLimit-Remaining"] = str(max(0, current.remaining))
        response.headers["RateLimit-Reset"] = str(reset_in)
        response.headers["RateLimit-Policy"] = policy
        if current.breached and response.status_code == 429:
            response.headers["Retry-After"] = str(max(1, reset_in))
        return response

    return limiter
