"""The code stays lint-clean (ruff) and type-checks strictly (mypy) on actors/, web/, wsgi.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True,
                          text=True, check=False)


def test_ruff_is_clean() -> None:
    result = run("ruff", "check", "--no-cache", ".")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.timeout(180)
def test_mypy_strict_is_clean() -> None:
    result = run("mypy")  # files and strictness come from [tool.mypy] in pyproject.toml
    assert result.returncode == 0, result.stdout + result.stderr


# A server with neither authentication nor Supabase configured must not pay for their
# libraries (PyJWT loads cryptography, ~8 MB of RSS; httpx ~4 MB): issue 7's idle aim.
UNUSED_LIBRARIES = ("jwt", "cryptography", "httpx", "supabase", "psycopg")
PROBE = """
import json, sys
from web import create_app
app = create_app()
client = app.test_client()
client.post("/api/interactions/x/questions", json={"question": "What is it?"})
client.get("/health")
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1:]))
app.extensions["qudemo"].shutdown(drain=False, timeout_s=5)
print(json.dumps(loaded))
"""


def _loaded_libraries(tmp_path: Path, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *UNUSED_LIBRARIES], cwd=tmp_path, text=True,
        capture_output=True, timeout=60, check=False,
        env={**base, "PYTHONPATH": str(REPO), "PYTHON_API_BASE_URL": "http://127.0.0.1:9",
             "APP_ENV": "development", **env})
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


def test_unconfigured_features_import_nothing(tmp_path: Path) -> None:
    assert _loaded_libraries(tmp_path) == []


def test_authentication_loads_its_verifier_at_start(tmp_path: Path) -> None:
    assert "jwt" in _loaded_libraries(tmp_path, JWT_SECRET="s" * 40)
