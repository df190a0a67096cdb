"""WSGI entry point for gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Settings are read once from the environment (and ``.env``); a bad value stops
the start with a message naming every bad variable (no secret quoted) and exit
status 3, gunicorn's "worker failed to boot": the master then stops too, rather
than booting another worker that would fail the same way. (Under
``gunicorn.conf.py`` the master has checked the settings before forking already.)

The ``flask`` command (``flask --app wsgi jobs list``, the operator CLI of ``web.cli``)
imports this module too, after setting ``FLASK_RUN_FROM_CLI``. Its commands talk to the
running server over HTTP, so then ``app`` is the CLI's app, which starts no job system:
a second one would contend for the server's job store and its lock.
"""

from __future__ import annotations

import os
import sys

from actors.model.errors import SettingsError
from web import create_app
from web.cli import create_cli_app
from web.settings import EXIT_CONFIG_ERROR, configure_logging, load_settings

if os.environ.get("FLASK_RUN_FROM_CLI") == "true":
    app = create_cli_app()
else:
    try:
        settings = load_settings()
        configure_logging(settings.web)  # only the level under gunicorn (logconfig_dict first)
        app = create_app(settings)
    except SettingsError as exc:
        sys.stderr.write(f"qudemo-jobs: {exc}\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_CONFIG_ERROR) from None
