"""The video URL policy: which videos the Python API may be asked to fetch, and how.

The Python API downloads whatever ``video_url`` names, from inside our network, so a
URL is a request made on the client's behalf (SSRF). Checking the host alone is not
enough: an allowed host can send the fetch elsewhere (``youtube.com/redirect?q=...``,
``youtube.com/attribution_link?u=...``). So a URL is accepted **by its shape**, and what
the Python API receives is **built from the video's id**, never the client's string.

A URL passes when it keeps the common rules (``web.url_rules``: http(s), printable
ASCII, no user-info, a DNS host and no IP literal), has no port or 80/443, its host is
in ``VIDEO_URL_ALLOWED_HOSTS``, and, when the host belongs to a known platform, it has
one of that platform's video shapes:

=========  ==========================================================  ==========================
platform   accepted (the id must match its pattern exactly)            forwarded
=========  ==========================================================  ==========================
YouTube    ``(www|m|music.)youtube.com/watch?v=ID``, ``youtu.be/ID``,    ``https://www.youtube.com/
           ``/shorts/ID``, ``/embed/ID``, ``/live/ID``;                  watch?v=ID``
           ``youtube-nocookie.com/embed/ID``; ID: 11 of ``[A-Za-z0-9_-]``
Loom       ``(www.)loom.com/share/ID`` (also ``/share/Title-ID``),      ``https://www.loom.com/
           ``/embed/ID``; ID: 32 hex digits                              share/ID``
Vimeo      ``(www.)vimeo.com/ID``, ``vimeo.com/ID/HASH``,               ``https://vimeo.com/ID``
           ``player.vimeo.com/video/ID(?h=HASH)``; ID: digits           (``/HASH`` when unlisted)
=========  ==========================================================  ==========================

Anything else on a platform's domain (another path, another subdomain, a redirector)
is refused with a message saying what is accepted. Other query parameters and the
fragment are dropped (``t=42s``, ``si=...``, ``list=...``). A host of no known platform
that an operator added to the allow-list is taken as given (its rules are the
operator's), normalised: lower-case host, no default port, no fragment.

The duplicate key of a video is its platform and id (``youtube:dQw4w9WgXcQ``), so every
spelling of one video is one job.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlunsplit

from web.url_rules import (
    MAX_URL_LENGTH,
    HttpUrl,
    host_allowed,
    is_ip_literal,
    parse_http_url,
    valid_hostname,
)

__all__ = ["ALLOWED_PORTS", "MAX_URL_LENGTH", "SOURCE_FAMILIES", "VideoUrl", "check_video_url",
           "host_allowed", "is_ip_literal", "source_of", "valid_hostname"]

ALLOWED_PORTS = frozenset({80, 443})
YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}\Z")
LOOM_ID = re.compile(r"(?:[A-Za-z0-9-]*-)?([0-9a-fA-F]{32})\Z")
"""A Loom share id, optionally after the title slug Loom puts in front of it."""
VIMEO_ID = re.compile(r"[1-9][0-9]{0,11}\Z")
VIMEO_HASH = re.compile(r"[0-9a-f]{6,20}\Z")
_TRACKING = frozenset({"si", "feature", "fbclid", "gclid", "pp"})
_YOUTUBE_REDIRECTS = frozenset({"redirect", "attribution_link", "url", "supported_browsers"})
_NOT_IDS = frozenset({"videoseries"})
"""Eleven characters that name a YouTube page, not a video (``/embed/videoseries?list=``)."""

SOURCE_FAMILIES: dict[str, tuple[str, ...]] = {
    "youtube": ("youtube.com", "youtu.be", "youtube-nocookie.com"),
    "loom": ("loom.com",),
    "vimeo": ("vimeo.com",),
}
"""Which registrable domains (and their subdomains) make which ``source``."""

YOUTUBE_SHAPES = ("https://www.youtube.com/watch?v=<id>, https://youtu.be/<id>, "
                  "/shorts/<id>, /embed/<id> or /live/<id>, with an 11-character id")
LOOM_SHAPES = "https://www.loom.com/share/<id> or /embed/<id>, with a 32-hex-digit id"
VIMEO_SHAPES = ("https://vimeo.com/<number>, https://vimeo.com/<number>/<hash> or "
                "https://player.vimeo.com/video/<number>")


@dataclass(frozen=True, slots=True)
class VideoUrl:
    """A video URL that passed the policy."""

    url: str
    """What the Python API receives: the canonical URL built from the id (known platforms)."""
    host: str
    """The lower-case host the client wrote, without a trailing dot."""
    source: str | None
    """``youtube``, ``loom`` or ``vimeo`` when the host belongs to one, else ``None``."""
    key: str
    """A normalised form for duplicate detection (same video, same key)."""
    video_id: str | None = None
    """The platform's id of the video (``None`` on a host of no known platform)."""


def source_of(host: str) -> str | None:
    """Return the source family of ``host`` (``youtube``, ``loom``, ``vimeo``) or ``None``."""
    for source, domains in SOURCE_FAMILIES.items():
        if any(host == d or host.endswith("." + d) for d in domains):
            return source
    return None


def check_video_url(raw: str, allowed: Iterable[str]) -> VideoUrl:
    """Return the checked video, with the canonical URL to forward.

    Raises:
        ValueError: with a message saying which rule the URL broke, or which shapes
            its platform accepts.
    """
    url = parse_http_url(raw)
    if url.port is not None and url.port not in ALLOWED_PORTS:
        raise ValueError("must not name a port other than 80 or 443")
    if not host_allowed(url.host, allowed):
        raise ValueError(f"host {url.host!r} is not an allowed video host")
    source = source_of(url.host)
    if source is None:
        return _operator_host(url)
    video_id, canonical = _PLATFORMS[source](url, _segments(url.path), _query(url.query))
    return VideoUrl(url=canonical, host=url.host, source=source, key=f"{source}:{video_id}",
                    video_id=video_id)


def _segments(path: str) -> list[str]:
    """Return the path's segments; one trailing slash is allowed, empty segments are kept."""
    if path.endswith("/") and len(path) > 1:
        path = path[:-1]
    return path[1:].split("/") if path.startswith("/") else [path]


def _query(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


def _one(query: list[tuple[str, str]], name: str) -> str | None:
    """Return the one value of ``name``; refuse it given twice (which was meant?)."""
    values = [v for k, v in query if k == name]
    if len(values) > 1:
        raise ValueError(f"names more than one video ({name}= is given {len(values)} times)")
    return values[0] if values else None


def _youtube(url: HttpUrl, segments: list[str], query: list[tuple[str, str]]
             ) -> tuple[str, str]:
    host, candidate = url.host, None
    if segments and segments[0] in _YOUTUBE_REDIRECTS and host != "youtu.be":
        raise ValueError("is a YouTube redirect link, not a video: send the video's own "
                         f"address ({YOUTUBE_SHAPES})")
    if host == "youtu.be":
        candidate = segments[0] if len(segments) == 1 else None
    elif host in ("youtube.com", "www.youtube.com", "m.youtube.com", "music.youtube.com"):
        if segments == ["watch"]:
            candidate = _one(query, "v")
        elif len(segments) == 2 and segments[0] in ("shorts", "embed", "live"):
            candidate = segments[1]
    elif host in ("youtube-nocookie.com", "www.youtube-nocookie.com"):
        candidate = segments[1] if len(segments) == 2 and segments[0] == "embed" else None
    else:
        raise ValueError(f"host {host!r} serves no YouTube videos: use {YOUTUBE_SHAPES}")
    if candidate is None or not YOUTUBE_ID.match(candidate) or candidate in _NOT_IDS:
        raise ValueError(f"is not a YouTube video URL: use {YOUTUBE_SHAPES}")
    return candidate, f"https://www.youtube.com/watch?v={candidate}"


def _loom(url: HttpUrl, segments: list[str], query: list[tuple[str, str]]) -> tuple[str, str]:
    if url.host not in ("loom.com", "www.loom.com"):
        raise ValueError(f"host {url.host!r} serves no Loom videos: use {LOOM_SHAPES}")
    found = None
    if len(segments) == 2 and segments[0] == "share":
        found = LOOM_ID.match(segments[1])
    elif len(segments) == 2 and segments[0] == "embed":
        found = LOOM_ID.match(segments[1]) if len(segments[1]) == 32 else None
    if found is None:
        raise ValueError(f"is not a Loom video URL: use {LOOM_SHAPES}")
    video_id = found.group(1).lower()
    return video_id, f"https://www.loom.com/share/{video_id}"


def _vimeo(url: HttpUrl, segments: list[str], query: list[tuple[str, str]]) -> tuple[str, str]:
    video_id, secret = None, None
    if url.host in ("vimeo.com", "www.vimeo.com"):
        if len(segments) in (1, 2):
            video_id = segments[0]
            secret = segments[1] if len(segments) == 2 else None
    elif url.host == "player.vimeo.com":
        if len(segments) == 2 and segments[0] == "video":
            video_id, secret = segments[1], _one(query, "h")
    else:
        raise ValueError(f"host {url.host!r} serves no Vimeo videos: use {VIMEO_SHAPES}")
    if (video_id is None or not VIMEO_ID.match(video_id)
            or (secret is not None and not VIMEO_HASH.match(secret))):
        raise ValueError(f"is not a Vimeo video URL: use {VIMEO_SHAPES}")
    tail = f"/{secret}" if secret else ""  # an unlisted video is reachable only with it
    return video_id, f"https://vimeo.com/{video_id}{tail}"


_PLATFORMS: dict[str, Callable[[HttpUrl, list[str], list[tuple[str, str]]], tuple[str, str]]] = {
    "youtube": _youtube, "loom": _loom, "vimeo": _vimeo,
}


def _operator_host(url: HttpUrl) -> VideoUrl:
    """Accept a URL on a host an operator allowed that belongs to no known platform."""
    netloc = url.host if url.port in (None, 80 if url.scheme == "http" else 443) else (
        f"{url.host}:{url.port}")
    path = url.path or "/"
    normalised = urlunsplit((url.scheme, netloc, path, url.query, ""))
    query = [(k, v) for k, v in _query(url.query)
             if k.lower() not in _TRACKING and not k.lower().startswith("utm_")]
    tail = f"?{urlencode(sorted(query))}" if query else ""
    key = f"{url.host.removeprefix('www.')}{path.rstrip('/') or '/'}{tail}"
    return VideoUrl(url=normalised, host=url.host, source=None, key=key)
