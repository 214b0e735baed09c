"""What the server answers, as typed values.

Each keeps the whole JSON object it came from in ``raw``, so a field this client does not
name yet (docs/api.md may grow) is still at hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Union

__all__ = ["Grant", "Place", "Standing", "Event", "Page"]


def _int(body: Mapping[str, Any], key: str) -> Optional[int]:
    value = body.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(body: Mapping[str, Any], key: str) -> Optional[str]:
    value = body.get(key)
    return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Grant:
    """A lease: an acquire's 200 ``acquired``, a renewal's 200 ``renewed``, or a ticket's
    status while it holds."""

    lock: str
    ticket: str
    fence: int
    expires_at_ms: int
    at_ms: Optional[int]
    owner: Optional[str]
    weight: int
    mode: Optional[str]
    existing: bool
    ticket_token: Optional[str]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @property
    def ttl_ms(self) -> Optional[int]:
        """The TTL the server granted (its clock at both ends), when it said when."""
        if self.at_ms is None:
            return None
        return max(0, self.expires_at_ms - self.at_ms)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Grant":
        ticket, fence, expires = _str(body, "ticket"), _int(body, "fence"), _int(body, "expires_at_ms")
        if ticket is None or fence is None or expires is None:
            raise ValueError(f"not a lease: {dict(body)!r}")
        return cls(
            lock=_str(body, "lock") or "",
            ticket=ticket,
            fence=fence,
            expires_at_ms=expires,
            at_ms=_int(body, "at_ms"),
            owner=_str(body, "owner"),
            weight=_int(body, "weight") or 1,
            mode=_str(body, "mode"),
            existing=body.get("existing") is True,
            ticket_token=_str(body, "ticket_token"),
            raw=dict(body),
        )


@dataclass(frozen=True)
class Place:
    """A place in a lock's queue: an acquire's 202 ``queued``, or a ticket's status while it
    waits. ``position`` is ``None`` in a lottery queue; ``eta_ms`` is the server's estimate of
    the wait, when it has one."""

    lock: str
    ticket: str
    position: Optional[int]
    queue_length: int
    eta_ms: Optional[int]
    existing: bool
    ticket_token: Optional[str]
    raw: Dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> "Place":
        ticket = _str(body, "ticket")
        if ticket is None:
            raise ValueError(f"not a place in a queue: {dict(body)!r}")
        return cls(
            lock=_str(body, "lock") or "",
            ticket=ticket,
            position=_int(body, "position"),
            queue_length=_int(body, "queue_length") or 0,
            eta_ms=_int(body, "eta_ms"),
            existing=body.get("existing") is True,
            ticket_token=_str(body, "ticket_token"),
            raw=dict(body),
        )


#: Where a ticket stands: holding a lease, or waiting in line.
Standing = Union[Grant, Place]


@dataclass(frozen=True)
class Event:
    """One Server-Sent Event of a ticket's stream (docs/api.md, "Event streams").

    ``event`` is ``position``, ``acquired``, ``expired``, ``released`` or ``dropped``;
    ``data`` its decoded JSON; ``id`` its id (pass the last one as ``last_event_id`` to
    continue after a reconnect)."""

    event: str
    data: Any
    id: Optional[str]

    @property
    def final(self) -> bool:
        """Whether the stream ends after this event."""
        return self.event in ("expired", "released", "dropped")


@dataclass(frozen=True)
class Page:
    """A page of a list (locks or outbox entries); ``next_after`` continues it (``None`` on
    the last page)."""

    items: List[Dict[str, Any]]
    next_after: Optional[str]
