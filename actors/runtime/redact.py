"""Showing addresses and messages without the credentials they may carry.

One place decides how a secret is hidden, and everything that shows an address (the
snapshot, reprs, log lines, ``/api/queue/status``, metric labels, settings errors, the
CLI) goes through it:

* ``redact_url`` hides a URL's user information whole (``http://***@host:5001``: a token
  is often the user name) and the values of query parameters named like secrets
  (``?token=***``). A URL without them comes back unchanged, so it is safe to call twice.
* ``redact_text`` does the same for every URL inside free text, and replaces each of the
  given secrets (a service key, a JWT secret, a database URL) wherever it appears.
* ``hide_addresses`` replaces every URL in free text by ``[address]``: for anonymous
  replies (``/health``), which show no address at all.

Redaction is for showing only: the real URL stays where it is used (the Python API
client sends its credentials as HTTP basic auth, never as part of a shown URL).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import SplitResult, urlsplit, urlunsplit

HIDDEN = "***"
ADDRESS = "[address]"
MIN_SECRET_CHARS = 4
"""Shorter secrets are not searched for: replacing them would garble ordinary words."""

_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*://"
_URL_IN_TEXT = re.compile(_SCHEME + r"[^\s'\"<>,]+")
"""A URL inside free text; a comma ends it (a list of addresses is several URLs)."""
_SECRET_PARAM = re.compile(
    r"(?P<key>(?:^|[?&;])(?:password|passwd|pwd|secret|token|access_token|api_?key|apikey|"
    r"key|auth|sig|signature)=)[^&;#\s'\"]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """Return ``url`` with its user information and secret query values as ``***``.

    A URL that does not parse cleanly is redacted as text: everything between ``://``
    and its last ``@`` is hidden (``http://user:pa/ss@host`` splits oddly, and must not
    show ``pa``).
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a malformed authority
    except ValueError:
        return _redact_loose(url)
    if "@" in url and "@" not in parts.netloc:
        return _redact_loose(url)  # an "@" past the authority: user-info read as a path
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{HIDDEN}@{netloc.rpartition('@')[2]}"
    query = _SECRET_PARAM.sub(rf"\g<key>{HIDDEN}", parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_urls(urls: str) -> str:
    """Return a comma-separated list of URLs with each one redacted."""
    return ",".join(redact_url(u.strip()) for u in urls.split(","))


def redact_text(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return ``text`` with every URL redacted and each of ``secrets`` as ``***``."""
    given = [s for s in secrets if s]
    found = {s for s in (*given, *(s.strip() for s in given)) if len(s) >= MIN_SECRET_CHARS}
    for secret in sorted(found, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def hide_addresses(text: str) -> str:
    """Return ``text`` with every URL in it replaced by ``[address]``."""
    return _URL_IN_TEXT.sub(ADDRESS, text)


def url_secrets(value: str | None) -> tuple[str, ...]:
    """Return the secrets inside a setting's ``value``, to search for with ``redact_text``.

    A URL (or a comma-separated list of them) gives each password (or user name without
    one), and the whole value when it carries any; a value that is not a URL (a key, a
    ``key=value`` connection string) is a secret whole.
    """
    if not value or not value.strip():
        return ()
    if "://" not in value:
        return (value,)
    found: list[str] = []
    for part in value.split(","):
        try:
            parts = urlsplit(part.strip())
            secret = parts.password or parts.username
        except ValueError:
            secret = None
        if secret or "@" in part:
            found += [part.strip(), *([secret] if secret else [])]
    return (value, *found) if found else ()


def _redact_loose(url: str) -> str:
    if "://" not in url or "@" not in url:
        return _SECRET_PARAM.sub(rf"\g<key>{HIDDEN}", url)
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{HIDDEN}@{rest.rpartition('@')[2]}"
