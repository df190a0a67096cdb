"""WSGI entry point for gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Settings are read once from the environment (and ``.env``); a bad value stops
the start with a message naming every bad variable.
"""

from __future__ import annotations

import sys

from actors.errors import SettingsError
from web import create_app
from web.settings import configure_logging, load_settings

try:
    settings = load_settings()
    configure_logging(settings.web)  # a no-op under gunicorn, whose logconfig_dict comes first
    app = create_app(settings)
except SettingsError as exc:
    sys.stderr.write(f"qudemo-jobs: {exc}\n")
    raise SystemExit(2) from None
