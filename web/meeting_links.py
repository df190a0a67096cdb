"""The ``meeting_link`` policy: a public web address, passed on to the Python API.

A meeting link (a Zoom, Meet or Calendly page) is stored with the video by the Python
API, which may fetch it, so it gets a policy of its own. It passes when it keeps the
common rules (``web.url_rules``: http(s), printable ASCII, no user-info, a DNS host,
never an IP literal), and also:

* its port is absent or the scheme's default (``http`` 80, ``https`` 443);
* its host has at least two labels (``intranet``, ``metadata``: single-label names are
  resolved inside the network);
* its host is not a local or internal name: ``localhost``, and names under ``local``,
  ``localhost``, ``internal`` (``metadata.google.internal``), ``localdomain``,
  ``home.arpa`` and the other suffixes of ``INTERNAL_SUFFIXES``;
* its host does not spell an IP address inside a name (``127.0.0.1.nip.io``,
  ``10-0-0-1.example.com``): wildcard DNS services resolve those to the address.

What is forwarded is rebuilt from the checked parts (lower-case host, no default port),
so the Python API parses exactly what was checked. A public name can still resolve to a
private address (DNS is the resolver's, at fetch time): the Python API's network must not
reach internal services anyway (README, Security).
"""

from __future__ import annotations

import re
from urllib.parse import urlunsplit

from web.url_rules import DEFAULT_PORTS, parse_http_url

INTERNAL_SUFFIXES = frozenset({
    "localhost", "local", "internal", "intranet", "localdomain", "lan", "home", "corp",
    "private", "home.arpa", "arpa", "test", "invalid", "example", "onion", "alt", "svc",
    "cluster.local", "consul",
})
"""Names under these are never public (RFC 6761, RFC 6762, RFC 8375, common intranets)."""
_DOTTED_IPV4 = re.compile(r"(^|\.)(\d{1,3}\.){3}\d{1,3}(\.|$)")
_DASHED_IPV4 = re.compile(r"(^|[.-])(\d{1,3}-){3}\d{1,3}([.-]|$)")


def check_meeting_link(raw: str) -> str:
    """Return the meeting link to forward (rebuilt from its checked parts).

    Raises:
        ValueError: with a message saying which rule the link broke.
    """
    url = parse_http_url(raw)
    if url.port is not None and url.port != DEFAULT_PORTS[url.scheme]:
        raise ValueError(f"must not name a port ({url.scheme} uses "
                         f"{DEFAULT_PORTS[url.scheme]})")
    host = url.host
    if "." not in host:
        raise ValueError("must name a public host: a single-label name is internal")
    if any(host == suffix or host.endswith("." + suffix) for suffix in INTERNAL_SUFFIXES):
        raise ValueError(f"must name a public host: {host!r} is a local or internal name")
    if _DOTTED_IPV4.search(host) or _DASHED_IPV4.search(host):
        raise ValueError(f"must name a public host: {host!r} spells an IP address")
    return urlunsplit((url.scheme, host, url.path or "/", url.query, url.fragment))
