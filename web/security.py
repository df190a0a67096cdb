"""CORS from an allow-list, and security headers in the spirit of Helmet's defaults.

CORS: with ``CORS_ORIGINS`` empty (the default) no CORS header is ever sent and browsers
keep pages of other origins out. Listed origins get ``Access-Control-Allow-Origin``
echoed back, the ``Authorization``, ``Content-Type`` and ``Idempotency-Key`` request
headers, and our ``Location``, ``Retry-After``, ``RateLimit-*`` and ``Idempotent-Replayed``
response headers. Credentials (cookies)
are never allowed: the API authenticates with bearer tokens.

Headers: every response is JSON, so the Content-Security-Policy forbids everything
(``default-src 'none'``) and framing is limited to the same origin (``frame-ancestors
'self'``, matching ``X-Frame-Options: SAMEORIGIN``). ``Strict-Transport-Security`` is
sent only in production, where TLS terminates in front of us: on a laptop it would pin
``localhost`` to HTTPS for every other project. The one HTML page, ``/dashboard``, sets
``DASHBOARD_CSP`` itself (kept after this, as every header here is only a default): its
script, style, images and fetches from this origin only, nothing inline, no framing.
Responses are ``Cache-Control: no-store``
because job data belongs to one user. The ``Server`` header is the WSGI server's
(gunicorn's is set in ``gunicorn.conf.py``); the app never adds one.
"""

from __future__ import annotations

from flask import Flask, Response
from flask_cors import CORS

from web.settings import WebSettings

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'self'; base-uri 'none'; "
                               "form-action 'none'",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Origin-Agent-Cluster": "?1",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-DNS-Prefetch-Control": "off",
    "X-Download-Options": "noopen",
    "X-Frame-Options": "SAMEORIGIN",
    "X-Permitted-Cross-Domain-Policies": "none",
    "X-XSS-Protection": "0",
}
DASHBOARD_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                 "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                 "form-action 'none'")
"""The policy of ``/dashboard`` (``web.dashboard``): exactly what the page needs."""
HSTS = "max-age=15552000; includeSubDomains"
EXPOSED_HEADERS = ["Location", "Retry-After", "RateLimit-Limit", "RateLimit-Remaining",
                   "RateLimit-Reset", "RateLimit-Policy", "Idempotent-Replayed"]


def init_security(app: Flask, settings: WebSettings) -> None:
    """Install CORS (when origins are listed) and the security headers on ``app``."""
    if settings.cors_origins:
        origins = "*" if "*" in settings.cors_origins else list(settings.cors_origins)
        CORS(
            app,
            resources={r"/*": {"origins": origins}},
            methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
            expose_headers=EXPOSED_HEADERS,
            supports_credentials=False,
            max_age=600,
        )
    production = settings.production

    @app.after_request
    def _security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Cache-Control", "no-store")
        if production:
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        response.headers.pop("Server", None)
        return response
