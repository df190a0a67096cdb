"""The REST API of the QuDemo job backend: a Flask app factory over the actor core.

``create_app(settings=None, *, job_system=None)`` builds one app. Without a
``job_system`` it starts one from ``settings.core`` and owns it: stop it with
``web.context.extension(app).shutdown()`` (gunicorn's ``worker_exit`` does). Blueprints,
one per module: ``submit`` (videos, questions), ``jobs`` (one job, list), ``queue``
(status, monitor, pause/resume), ``health`` (probes), ``metrics`` (Prometheus),
``dashboard`` (the live page, its files and its data), ``openapi`` (the document), ``events``
(live job events over SSE).
Cross-cutting pieces: ``errors``
(the status table), ``auth`` (JWT), ``limits`` (flask-limiter), ``security`` (CORS and
headers), ``models`` (validation), ``body`` (the body limit, JSON bodies),
``video_urls``, ``meeting_links`` and ``url_rules`` (the SSRF policies).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flask import Flask

from actors.model.errors import SettingsError
from web import dashboard, events, health, jobs, metrics, openapi, queue, submit
from web.auth import load_token_verifier
from web.body import BodyLimit, reject_oversized
from web.context import EXTENSION, QudemoExtension
from web.errors import register_error_handlers
from web.limits import init_limits
from web.security import init_security
from web.settings import AppSettings, WebSettings, load_settings

if TYPE_CHECKING:
    from actors.system import JobSystem

__all__ = ["AppSettings", "WebSettings", "create_app", "load_settings"]

logger = logging.getLogger(__name__)


def create_app(settings: AppSettings | None = None, *, job_system: JobSystem | None = None
               ) -> Flask:
    """Build the Flask app; start (and own) a job system unless one is given.

    Raises:
        SettingsError: the web settings are unusable (e.g. production without JWT_SECRET).
    """
    settings = settings if settings is not None else load_settings()
    problems = settings.web.problems()
    if problems:
        raise SettingsError(problems)
    if settings.web.auth_enabled:
        load_token_verifier()  # before the actors start: nothing to stop if it fails
    owns_system = job_system is None
    if job_system is None:
        from actors.system import JobSystem  # keeps web importable without the core

        job_system = JobSystem(settings.core).start()
    try:
        app = _build(settings, job_system, owns_system)
    except BaseException:
        if owns_system:
            job_system.stop(drain=False)
        raise
    if not settings.web.auth_enabled:
        logger.warning("JWT_SECRET is not set: authentication is OFF and every request acts "
                       "as the local admin (APP_ENV=%s); never expose this instance",
                       settings.web.environment)
    return app


def _build(settings: AppSettings, job_system: JobSystem, owns_system: bool) -> Flask:
    app = Flask(__name__, static_folder=None)  # web/static/ is the dashboard's, served there
    app.config.update(
        MAX_CONTENT_LENGTH=settings.web.max_body_bytes,
        # A 500 must be answered as JSON by our handler, even when someone sets TESTING.
        PROPAGATE_EXCEPTIONS=False,
        QUDEMO_SHOW_ERRORS=settings.web.environment == "development",
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions[EXTENSION] = QudemoExtension(
        settings=settings, system=job_system, owns_system=owns_system
    )
    register_error_handlers(app)
    metrics.init_metrics(app, job_system)  # first: its clock also times rate-limited requests
    init_limits(app, settings.web, exempt=[health.bp, metrics.bp, dashboard.bp, openapi.bp])
    init_security(app, settings.web)
    app.wsgi_app = BodyLimit(app.wsgi_app, settings.web.max_body_bytes)  # type: ignore[method-assign]
    app.before_request(reject_oversized)
    events.init_events(app, job_system, settings.streams)
    for module in (submit, jobs, events, queue, health, metrics, dashboard, openapi):
        app.register_blueprint(module.bp)
    return app
