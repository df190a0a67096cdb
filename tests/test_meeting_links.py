"""``web.meeting_links``: the meeting link policy over the crafted corpus."""

from __future__ import annotations

from tests.url_corpus import MEETING_LINKS
from web.meeting_links import check_meeting_link


def test_meeting_link_policy_over_the_corpus() -> None:
    wrong = []
    for url, expected in MEETING_LINKS.items():
        try:
            forwarded: str | None = check_meeting_link(url)
        except ValueError:
            forwarded = None
        if forwarded != expected:
            wrong.append(f"{url!r} -> {forwarded!r}, not {expected!r}")
    assert wrong == []
