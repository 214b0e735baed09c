"""Queue positions, ETAs and a ticket's event stream (docs/api.md, "Event streams" and
"GET /v1/locks/{name}/tickets/{ticket}"): the first event says where the ticket stands, an
``acquired`` event comes when it is admitted, and the stream ends after ``released``."""

from __future__ import annotations

import leasehold
import pytest


def test_a_waiters_place_and_its_events_until_released(client: leasehold.Client, lock_name: str) -> None:
    holder = client.acquire(lock_name, ttl="30s", owner="a")
    assert isinstance(holder, leasehold.Grant)
    place = client.acquire(lock_name, ttl="30s", owner="b")
    assert isinstance(place, leasehold.Place)
    assert (place.position, place.queue_length) == (1, 1)
    standing = client.ticket_status(lock_name, place.ticket)
    assert isinstance(standing, leasehold.Place) and standing.position == 1

    with client.events(lock_name, place.ticket, timeout=30) as events:
        first = next(events)
        assert first.event == "position" and first.id == "1"
        assert first.data["position"] == 1 and first.data["queue_length"] == 1
        assert "eta_ms" in first.data
        client.release(lock_name, holder.ticket)
        granted = next(events)
        assert granted.event == "acquired"
        assert granted.data["ticket"] == place.ticket and granted.data["fence"] > holder.fence
        standing = client.ticket_status(lock_name, place.ticket)
        assert isinstance(standing, leasehold.Grant) and standing.fence == granted.data["fence"]
        client.release(lock_name, place.ticket)
        last = next(events)
        assert last.event == "released" and last.final
        assert last.data["fence"] == granted.data["fence"]
        assert events.last_event_id == "3"
        assert list(events) == []  # the server ended the stream


def test_events_of_an_unknown_ticket_is_lease_lost(client: leasehold.Client, lock_name: str) -> None:
    grant = client.acquire(lock_name, ttl="30s")
    assert isinstance(grant, leasehold.Grant)
    client.release(lock_name, grant.ticket)
    with pytest.raises(leasehold.LeaseLost):
        client.events(lock_name, grant.ticket)


def test_ticket_status_of_a_holder_is_its_lease(client: leasehold.Client, lock_name: str) -> None:
    with client.lock(lock_name, ttl="30s") as lease:
        standing = client.ticket_status(lock_name, lease.ticket)
        assert isinstance(standing, leasehold.Grant)
        assert standing.fence == lease.fence and standing.ticket == lease.ticket


def test_a_reconnecting_stream_continues_its_ids(client: leasehold.Client, lock_name: str) -> None:
    # docs/api.md: ids count from one past the Last-Event-ID a reconnecting client sends.
    with client.lock(lock_name, ttl="30s") as lease:
        with client.events(lock_name, lease.ticket, last_event_id="41", timeout=30) as events:
            first = next(events)
            assert (first.event, first.id) == ("acquired", "42")
            assert first.data["fence"] == lease.fence


def test_one_place_per_user(client: leasehold.Client, lock_name: str) -> None:
    # docs/api.md, "One place per user": the user's ticket comes back, with existing: true.
    first = client.acquire(lock_name, ttl="30s", user="u-7f3a9c")
    again = client.acquire(lock_name, ttl="30s", user="u-7f3a9c")
    assert isinstance(first, leasehold.Grant) and isinstance(again, leasehold.Grant)
    assert (again.ticket, again.fence, again.existing, first.existing) == (first.ticket, first.fence, True, False)
    client.release(lock_name, first.ticket)
