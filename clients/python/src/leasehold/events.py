"""A ticket's Server-Sent Events, read as an iterator.

docs/api.md, "Event streams": the server answers ``text/event-stream`` with
``Connection: close``; each event has an ``id``, an ``event`` name and one line of JSON
``data``; ``: ping`` comments keep an idle stream alive; the stream ends after ``expired``,
``released`` or ``dropped`` (or with ``retry:`` when the server drains). The stream has a
connection of its own, closed with the stream.
"""

from __future__ import annotations

import http.client
import json
import socket
from types import TracebackType
from typing import Any, Iterator, List, Optional, Type

from .errors import ConnectionFailed
from .models import Event

__all__ = ["EventStream"]

#: The longest line read (the server's events are one short line of JSON each).
MAX_LINE_BYTES = 1 << 20


class EventStream:
    """An open event stream; iterate it for :class:`Event` values, close it when done.

    ``retry_ms`` is the last ``retry:`` the server sent (a drain: reconnect after that long
    with ``last_event_id``), ``last_event_id`` the id of the last event read.
    """

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._response = response
        self.retry_ms: Optional[int] = None
        self.last_event_id: Optional[str] = None
        self.closed = False

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        event = self.next_event()
        if event is None:
            raise StopIteration
        return event

    def next_event(self) -> Optional[Event]:
        """The next event, or ``None`` once the server ended the stream."""
        name = "message"
        data: List[str] = []
        event_id: Optional[str] = None
        while not self.closed:
            try:
                raw = self._response.readline(MAX_LINE_BYTES)
            except (OSError, http.client.HTTPException, ValueError) as e:
                if self.closed:
                    return None
                if isinstance(e, socket.timeout):
                    raise ConnectionFailed("the event stream was silent past its timeout") from e
                raise ConnectionFailed(f"the event stream broke: {e}") from e
            if not raw:
                self.close()
                return None
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if line == "":
                if data or event_id is not None:
                    if event_id is not None:
                        self.last_event_id = event_id
                    return Event(event=name, data=_decode("\n".join(data)), id=event_id)
                name = "message"
                continue
            if line.startswith(":"):
                continue  # a comment: ": ping"
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value
            elif field == "retry" and value.isdigit():
                self.retry_ms = int(value)
        return None

    def close(self) -> None:
        """Ends the stream (the server then stops counting it as the ticket's presence)."""
        if self.closed:
            return
        self.closed = True
        self._response.close()
        self._conn.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.close()


def _decode(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
