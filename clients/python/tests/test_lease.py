"""``client.lock()``: taking, renewing, losing and releasing a lease against the real server.

The expectations are docs/api.md's ("Tickets, leases and fencing tokens"): a lease lasts its
TTL from its grant or last renewal, renewing keeps the fence, a released or expired lease
is 410 ``lease_lost``, fences only go up. The lost-lease test is issue 20's acceptance: an
operator releases the lock while the ``with`` body works, and the body's work stops within
one renew interval.
"""

from __future__ import annotations

import threading
import time
from typing import List

import pytest

import leasehold
from conftest import WRITE_KEY, Server, wait_until


def test_lock_grants_a_fenced_lease_and_releases_it_at_the_end(client: leasehold.Client, lock_name: str) -> None:
    with client.lock(lock_name, ttl="30s", owner="host-a") as lease:
        assert lease.held
        assert len(lease.ticket) == 22
        assert lease.fence >= 1
        assert lease.ttl_ms == 30_000
        assert lease.renew_every_ms == 10_000  # a third of the TTL
        status = client.lock_status(lock_name)
        assert status["used"] == 1
        assert [h["owner"] for h in status["holders"]] == ["host-a"]
        assert status["holders"][0]["fence"] == lease.fence
        first = lease.fence
    assert lease.released and not lease.lost.is_set()
    # Released: the lock is forgotten (no holder, waiter or data), and the ticket is gone.
    with pytest.raises(leasehold.NotFound):
        client.lock_status(lock_name)
    with pytest.raises(leasehold.LeaseLost):
        client.renew(lock_name, lease.ticket)
    with client.lock(lock_name) as again:
        assert again.fence > first


def test_lock_is_released_when_the_body_raises(client: leasehold.Client, lock_name: str) -> None:
    with pytest.raises(ZeroDivisionError):
        with client.lock(lock_name, ttl="30s"):
            1 / 0
    with pytest.raises(leasehold.NotFound):
        client.lock_status(lock_name)


def test_lock_without_ttl_takes_the_servers_default(client: leasehold.Client, lock_name: str) -> None:
    # README: locks.default_ttl_ms is 30 s unless configured.
    with client.lock(lock_name) as lease:
        assert lease.ttl_ms == 30_000


def test_lock_renews_the_lease_past_its_ttl_with_the_same_fence(client: leasehold.Client, lock_name: str) -> None:
    with client.lock(lock_name, ttl="1500ms") as lease:
        assert lease.renew_every_ms == 500
        first = lease.grant
        assert first is not None
        # Three renewals: each moves expires_at_ms on; the lease outlives its first TTL.
        seen: List[int] = [first.expires_at_ms]

        def renewed_three_times() -> bool:
            grant = lease.grant
            assert grant is not None
            if grant.expires_at_ms != seen[-1]:
                seen.append(grant.expires_at_ms)
            return len(seen) >= 4

        wait_until("three renewals", renewed_three_times)
        lease.check()
        assert lease.grant is not None and lease.grant.fence == first.fence
        assert client.lock_status(lock_name)["holders"][0]["fence"] == first.fence


def test_try_lock_on_a_taken_lock_raises_not_acquired(client: leasehold.Client, lock_name: str) -> None:
    with client.lock(lock_name, ttl="30s"):
        with pytest.raises(leasehold.NotAcquired) as caught:
            with client.lock(lock_name, ttl="30s"):
                pytest.fail("granted a taken lock")
        assert not isinstance(caught.value, leasehold.LockTimeout)
        assert caught.value.status == 409 and caught.value.code == "unavailable"
        assert caught.value.body["used"] == 1 and caught.value.body["limit"] == 1


def test_waiting_past_wait_raises_lock_timeout_and_leaves_the_queue(client: leasehold.Client, lock_name: str) -> None:
    with client.lock(lock_name, ttl="30s"):
        started = time.monotonic()
        with pytest.raises(leasehold.LockTimeout) as caught:
            with client.lock(lock_name, ttl="30s", wait="300ms"):
                pytest.fail("granted a taken lock")
        assert time.monotonic() - started >= 0.3
        assert isinstance(caught.value, leasehold.NotAcquired)
        assert caught.value.body["position"] == 1
        # The waiter left the queue rather than waiting for its presence to lapse.
        assert client.lock_status(lock_name)["queue_length"] == 0


def test_waiting_lock_is_granted_when_the_holder_releases(
    server: Server, client: leasehold.Client, lock_name: str
) -> None:
    holder = client.lock(lock_name, ttl="30s").acquire()
    other = server.client()
    granted: List[int] = []

    def wait_in_line() -> None:
        with other.lock(lock_name, ttl="30s", wait="20s") as lease:
            granted.append(lease.fence)

    waiter = threading.Thread(target=wait_in_line)
    waiter.start()
    wait_until("a waiter in the queue", lambda: client.lock_status(lock_name)["queue_length"] == 1)
    holder.release()
    waiter.join(timeout=30)
    assert granted and granted[0] > holder.fence
    other.close()


def test_lost_lease_stops_the_body_within_one_renew_interval(server: Server, lock_name: str) -> None:
    """Issue 20: an operator releases the lock while the body works (with the lease's
    ticket, as `leasehold release NAME TICKET` does, on a key of its own); the body's next
    check fails within one renew interval of the release (plus a round trip's slack), well
    before the lease's TTL would have run out."""
    renew_every_s = 0.5
    ttl_s = 3.0  # the loss must be seen long before the TTL could end the lease
    slack_s = 0.5  # one renewal's round trip on a small, shared machine
    worker = server.client()
    operator = server.client(api_key=WRITE_KEY)
    callbacks: List[str] = []
    released_at: List[float] = []

    def operator_release(ticket: str) -> None:
        released_at.append(time.monotonic())
        answer = operator.release(lock_name, ticket)
        assert answer["status"] == "released"

    with worker.lock(lock_name, ttl=ttl_s, renew_every=renew_every_s, on_lost=lambda l: callbacks.append(l.lost_reason or "")) as lease:
        assert lease.renew_every_ms == 500
        first_grant = lease.grant
        operator_thread = None
        deadline = time.monotonic() + 10 * ttl_s
        while True:
            try:
                lease.check()
            except leasehold.LeaseLost:
                seen_at = time.monotonic()
                break
            # The operator releases just after a renewal: the worst case, a whole interval
            # before the next renewal can learn of it.
            if operator_thread is None and lease.grant is not first_grant:
                operator_thread = threading.Thread(target=operator_release, args=(lease.ticket,))
                operator_thread.start()
            assert time.monotonic() < deadline, "the loss was never seen"
            lease.lost.wait(0.005)  # one unit of the body's work
        assert operator_thread is not None
        operator_thread.join()
    detected_s = seen_at - released_at[0]
    print(f"lost lease seen {detected_s * 1000:.0f} ms after the operator's release (renew interval {renew_every_s * 1000:.0f} ms)")
    assert detected_s <= renew_every_s + slack_s
    assert lease.lost.is_set() and not lease.held
    assert callbacks and "lease_lost" in callbacks[0]
    assert "lease_lost" in (lease.lost_reason or "")
    worker.close()
    operator.close()


def test_lease_that_cannot_be_renewed_is_lost_when_it_runs_out(lock_name: str) -> None:
    """A server that goes away: the lease is lost by this process's clock at the end of the
    TTL, and the callback is called."""
    own = Server()
    try:
        client = own.client()
        lost = threading.Event()
        with client.lock(lock_name, ttl="1s", on_lost=lambda _: lost.set()) as lease:
            acquired_at = time.monotonic()
            own.stop()
            assert lost.wait(10), "the lease was never declared lost"
            assert time.monotonic() - acquired_at >= 1.0 - 0.05
            with pytest.raises(leasehold.LeaseLost):
                lease.check()
            assert "ran out" in (lease.lost_reason or "")
        client.close()
    finally:
        own.stop()


def test_renew_of_a_released_ticket_is_lease_lost(client: leasehold.Client, lock_name: str) -> None:
    grant = client.acquire(lock_name, ttl="30s")
    assert isinstance(grant, leasehold.Grant)
    renewed = client.renew(lock_name, grant.ticket, ttl="20s")
    assert renewed.fence == grant.fence and renewed.ttl_ms == 20_000
    assert client.release(lock_name, grant.ticket)["status"] == "released"
    with pytest.raises(leasehold.LeaseLost) as caught:
        client.renew(lock_name, grant.ticket)
    assert caught.value.status == 410 and caught.value.code == "lease_lost"
