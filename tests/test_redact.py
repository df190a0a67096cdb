"""``actors.runtime.redact``: the one helper that shows addresses and messages without secrets."""

from __future__ import annotations

import pytest

from actors.runtime.redact import hide_addresses, redact_text, redact_url, url_secrets

PASSWORD = "pw-canary-5c1b9e"
TOKEN_USER = "tok-canary-8d2f41"
DB_PASSWORD = "db-canary-3e7a90"
SERVICE_KEY = "key-canary-b41f6d2e"
CANARIES = (PASSWORD, TOKEN_USER, DB_PASSWORD, SERVICE_KEY)


def leaks(text: str) -> list[str]:
    return [canary for canary in CANARIES if canary in text]


@pytest.mark.parametrize("url, shown", [
    ("http://localhost:5001", "http://localhost:5001"),
    (f"http://user:{PASSWORD}@python:5001/x?y=1", "http://***@python:5001/x?y=1"),
    (f"https://{TOKEN_USER}@python", "https://***@python"),
    (f"http://user:{PASSWORD}@host@python", "http://***@python"),
    (f"http://user:pa/{PASSWORD}@python", "http://***@python"),
    (f"http://user:pa?{PASSWORD}@python", "http://***@python"),
    (f"http://us/er:{PASSWORD}@python", "http://***@python"),
    (f"http://python/api?token={PASSWORD}&a=1", "http://python/api?token=***&a=1"),
    (f"http://u:{PASSWORD}@[::1]:99999", "http://***@[::1]:99999"),
    ("http://***@python:5001", "http://***@python:5001"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_url(shown) == shown


def test_redact_text_and_hide_addresses() -> None:
    text = (f"PYTHON_API_BASE_URL='http://a:{PASSWORD}@h1,http://{TOKEN_USER}@h2' bad; "
            f"key {SERVICE_KEY} and {DB_PASSWORD}")
    assert leaks(redact_text(text, [SERVICE_KEY, f" {DB_PASSWORD} "])) == []
    assert hide_addresses("Python API http://a:b@h:1 open; see https://x.co/a") == (
        "Python API [address] open; see [address]")


def test_url_secrets() -> None:
    assert url_secrets("http://localhost:5001") == ()
    assert url_secrets(None) == ()
    assert PASSWORD in url_secrets(f"http://a:{PASSWORD}@h,http://b@h2")
    assert TOKEN_USER in url_secrets(f"http://{TOKEN_USER}@h")
    assert url_secrets(SERVICE_KEY) == (SERVICE_KEY,)
    assert url_secrets(f"host=db password={DB_PASSWORD}") == (f"host=db password={DB_PASSWORD}",)
