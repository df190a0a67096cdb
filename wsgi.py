"""WSGI entry point for gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app``.

Settings are read once from the environment (and ``.env``); a bad value stops
the start with a message naming every bad variable.
"""

from __future__ import annotations

import sys

from actors.errors import SettingsError
from web import create_app
from web.settings import load_settings

try:
    app = create_app(load_settings())
except SettingsError as exc:
    sys.stderr.write(f"qudemo-jobs: {exc}\n")
    raise SystemExit(2) from None
