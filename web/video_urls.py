r"""The video URL policy: which URLs the Python API may be asked to fetch.

The Python API downloads whatever ``video_url`` names, from inside our network, so a
URL is a request we make on the client's behalf (SSRF). A URL passes only when:

* it is printable ASCII with no whitespace or backslash (parsers disagree on those:
  ``https://loom.com\\@evil`` is ``evil`` to a browser), at most 2048 characters;
* its scheme is ``http`` or ``https``;
* it has no user-info (``https://loom.com@169.254.169.254/`` is the metadata service);
* its host is a DNS name, never an IP literal in any spelling (``[::1]``, ``127.1``,
  ``2130706433``, ``0x7f000001``);
* its port is absent, 80 or 443;
* its host is in the allow-list (exact match, or ``*.example.com`` for subdomains).

Only the host decides: ``http://169.254.169.254/?x=loom.com`` is refused because the
host is an address, whatever the query says.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit

MAX_URL_LENGTH = 2048
ALLOWED_PORTS = frozenset({80, 443})
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)\Z")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)\Z")
_SAFE = re.compile(r"^[\x21-\x7e]+\Z")
_YOUTUBE_ID = re.compile(r"^[A-Za-z0-9_-]{6,32}\Z")
_TRACKING = frozenset({"si", "feature", "fbclid", "gclid", "pp"})

SOURCE_FAMILIES: dict[str, tuple[str, ...]] = {
    "youtube": ("youtube.com", "youtu.be", "youtube-nocookie.com"),
    "loom": ("loom.com",),
    "vimeo": ("vimeo.com",),
}
"""Which registrable domains (and their subdomains) make which ``source``."""


@dataclass(frozen=True, slots=True)
class VideoUrl:
    """A video URL that passed the policy."""

    url: str
    """The URL as given (stripped): what the Python API receives."""
    host: str
    """The lower-case host, without a trailing dot."""
    source: str | None
    """``youtube``, ``loom`` or ``vimeo`` when the host belongs to one, else ``None``."""
    key: str
    """A normalised form for duplicate detection (same video, same key)."""


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


def source_of(host: str) -> str | None:
    """Return the source family of ``host`` (``youtube``, ``loom``, ``vimeo``) or ``None``."""
    for source, domains in SOURCE_FAMILIES.items():
        if any(host == d or host.endswith("." + d) for d in domains):
            return source
    return None


def check_video_url(raw: str, allowed: Iterable[str]) -> VideoUrl:
    """Return the parsed URL if it passes the policy.

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
    if parts.scheme.lower() not in ("http", "https"):
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
    if port is not None and port not in ALLOWED_PORTS:
        raise ValueError("must not name a port other than 80 or 443")
    if not host_allowed(host, allowed):
        raise ValueError(f"host {host!r} is not an allowed video host")
    source = source_of(host)
    return VideoUrl(url=text, host=host, source=source, key=_dedupe_key(parts, host, source))


def _dedupe_key(parts: SplitResult, host: str, source: str | None) -> str:
    """Return one key for every spelling of the same video (youtu.be/X == watch?v=X)."""
    path = parts.path
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
             if k.lower() not in _TRACKING and not k.lower().startswith("utm_")]
    if source == "youtube":
        video_id = _youtube_id(host, path, dict(query))
        if video_id:
            return f"youtube:{video_id}"
    bare_host = host.removeprefix("www.").removeprefix("m.")
    tail = f"?{urlencode(sorted(query))}" if query else ""
    return f"{bare_host}{path.rstrip('/') or '/'}{tail}"


def _youtube_id(host: str, path: str, query: dict[str, str]) -> str | None:
    candidate: str | None = None
    segments = [s for s in path.split("/") if s]
    if host == "youtu.be" and segments:
        candidate = segments[0]
    elif "v" in query:
        candidate = query["v"]
    elif len(segments) >= 2 and segments[0] in ("embed", "shorts", "live", "v"):
        candidate = segments[1]
    if candidate and _YOUTUBE_ID.match(candidate):
        return candidate
    return None
