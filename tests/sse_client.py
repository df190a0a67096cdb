"""A small server-sent events client for the tests: a real HTTP/1.1 connection, parsed by hand.

Only the standard library (``http.client``), so that it shares no code with the server.
``next_event`` blocks until an event (or a comment, when asked) arrives, with a timeout
that turns a missing event into a failure, never a hang.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Event:
    """One SSE event as a client sees it."""

    name: str
    id: int | None
    data: Any
    comments: list[str] = field(default_factory=list)


class StreamEnded(Exception):
    """The server ended the stream."""


class SseClient:
    """One open event stream (``GET`` with ``Accept: text/event-stream``)."""

    def __init__(self, base_url: str, path: str, *, headers: dict[str, str] | None = None,
                 timeout_s: float = 20.0) -> None:
        host, port = base_url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout_s)
        self.conn.request("GET", path, headers={"Accept": "text/event-stream",
                                                **(headers or {})})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.headers = dict(self.response.getheaders())
        self.comments: list[str] = []
        self.retry_ms: int | None = None

    def __enter__(self) -> SseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def body(self) -> str:
        """The whole body of a non-stream answer."""
        return self.response.read().decode()

    def next_event(self) -> Event:
        """Return the next event; comments (heartbeats) are collected in ``comments``.

        Raises:
            StreamEnded: the server ended the stream.
            TimeoutError: nothing arrived within the timeout.
        """
        while True:
            block = self._block()
            if isinstance(block, Event):
                return block

    def _block(self) -> Event | str | None:
        """Read up to the next blank line: an event, a comment's text, or None (retry only)."""
        name, event_id, data, comment = "message", None, [], None
        while True:
            try:
                raw = self.response.readline()
            except TimeoutError as exc:
                raise TimeoutError("no event within the timeout") from exc
            if not raw:
                raise StreamEnded()
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if data:
                    return Event(name, event_id, json.loads("\n".join(data)))
                return comment
            if line.startswith(":"):
                comment = line[1:].strip()
                self.comments.append(comment)
                continue
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "id":
                event_id = int(value)
            elif key == "data":
                data.append(value)
            elif key == "retry":
                self.retry_ms = int(value)

    def events_to_end(self, limit: int = 100) -> list[Event]:
        """Read events until the server ends the stream."""
        found: list[Event] = []
        for _ in range(limit):
            try:
                found.append(self.next_event())
            except StreamEnded:
                return found
        raise AssertionError(f"the stream did not end after {limit} events")

    def wait_comment(self, text: str) -> None:
        """Read until a comment ``text`` arrives (an event in between is an error)."""
        while True:
            block = self._block()
            if isinstance(block, Event):
                raise AssertionError(f"an event instead of the comment {text!r}: {block}")
            if block == text:
                return

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()
