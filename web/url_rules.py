r"""Rules every URL we pass on must keep, whatever it is for (videos, meeting links).

A URL a client gives us is a request we, or the Python API, may make from inside our
network (SSRF), so before any field-specific rule a URL must:

* be printable ASCII with no whitespace or backslash (parsers disagree on those:
  ``https://loom.com\\@evil`` is ``evil`` to a browser), at most 2048 characters;
* have the scheme ``http`` or ``https``;
* carry no user-info (``https://loom.com@169.254.169.254/`` is the metadata service);
* name a DNS host, never an IP literal in any spelling (``[::1]``, ``127.1``,
  ``2130706433``, ``0x7f000001``).

``parse_http_url`` applies them and returns the parts; the field's own module decides
the port, the host and the path.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL_LENGTH = 2048
DEFAULT_PORTS = {"http": 80, "https": 443}
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)\Z")
_SAFE = re.compile(r"^[\x21-\x7e]+\Z")


@dataclass(frozen=True, slots=True)
class HttpUrl:
    """The parts of a URL that passed the common rules."""

    scheme: str
    """``http`` or ``https`` (lower case)."""
    host: str
    """The lower-case DNS host, without a trailing dot."""
    port: int | None
    """The port as written, or ``None``."""
    path: str
    query: str
    fragment: str


def valid_hostname(host: str) -> bool:
    """Tell whether ``host`` is a syntactically valid DNS name (lower-case labels)."""
    labels = host.split(".")
    return 0 < len(host) <= 253 and all(_LABEL.match(label) for label in labels)


def is_ip_literal(host: str) -> bool:
    """Tell whether ``host`` is an IP address in any spelling a resolver would accept."""
    bare = host.strip("[]")
    try:
        ipaddress.ip_address(bare)
        return True
    except ValueError:
        pass
    labels = bare.rstrip(".").split(".")
    # WHATWG URL parsing treats a host whose last label is numeric as IPv4 (127.1, 0x7f.1).
    if labels and _NUMERIC_LABEL.match(labels[-1].lower()):
        return True
    try:
        socket.inet_aton(bare)
        return True
    except (OSError, ValueError):
        return False


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Tell whether ``host`` matches an allow-list entry (exact, or ``*.`` for subdomains)."""
    for entry in allowed:
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and host != entry[2:]:
                return True
        elif host == entry:
            return True
    return False


def parse_http_url(raw: str) -> HttpUrl:
    """Return the parts of ``raw`` if it keeps the common rules.

    Raises:
        ValueError: with a message saying which rule the URL broke.
    """
    text = raw.strip()
    if not text:
        raise ValueError("must not be empty")
    if len(text) > MAX_URL_LENGTH:
        raise ValueError(f"must be at most {MAX_URL_LENGTH} characters")
    if not _SAFE.match(text) or "\\" in text:
        raise ValueError("must be printable ASCII without spaces or backslashes "
                         "(percent-encode other characters)")
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError("is not a valid URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("must be an http or https URL")
    if "@" in parts.netloc:
        raise ValueError("must not contain user information")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError("must name a host")
    if is_ip_literal(host) or parts.netloc.startswith("["):
        raise ValueError("must name a host, not an IP address")
    if not valid_hostname(host):
        raise ValueError("has an invalid host name")
    return HttpUrl(scheme=scheme, host=host, port=port, path=parts.path, query=parts.query,
                   fragment=parts.fragment)
