"""Semaphores (``limit``, ``weight``) and read/write locks (``mode``), as docs/api.md,
"Tickets, leases and fencing tokens", defines them: a lease takes ``weight`` of the lock's
``limit`` permits; shared leases hold a read/write lock together, an exclusive one alone,
and a waiting writer is not passed by readers that come later."""

from __future__ import annotations

import threading
from typing import List

import pytest

import leasehold
from conftest import Server, wait_until


def test_semaphore_admits_holders_up_to_its_permits(client: leasehold.Client, lock_name: str) -> None:
    with client.lock(lock_name, ttl="30s", limit=3, weight=2) as heavy:
        with pytest.raises(leasehold.NotAcquired):
            with client.lock(lock_name, ttl="30s", limit=3, weight=2):
                pytest.fail("4 permits of 3 granted")
        with client.lock(lock_name, ttl="30s", limit=3) as light:
            assert light.fence != heavy.fence
            status = client.lock_status(lock_name)
            assert (status["kind"], status["limit"], status["used"]) == ("semaphore", 3, 3)
            assert sorted(h["weight"] for h in status["holders"]) == [1, 2]


def test_readers_share_and_a_writer_is_alone(client: leasehold.Client, lock_name: str) -> None:
    with client.lock(lock_name, ttl="30s", mode="shared", owner="r1") as r1:
        with client.lock(lock_name, ttl="30s", mode="shared", owner="r2") as r2:
            assert r1.grant is not None and r1.grant.mode == "shared"
            assert r2.fence > r1.fence
            status = client.lock_status(lock_name)
            assert (status["kind"], status["limit"], status["used"]) == ("rw", 0, 2)
            assert {h["mode"] for h in status["holders"]} == {"shared"}
            with pytest.raises(leasehold.NotAcquired):
                with client.lock(lock_name, ttl="30s", mode="exclusive"):
                    pytest.fail("a writer beside readers")
    with client.lock(lock_name, ttl="30s", mode="exclusive") as writer:
        assert writer.grant is not None and writer.grant.mode == "exclusive"
        with pytest.raises(leasehold.NotAcquired):
            with client.lock(lock_name, ttl="30s", mode="shared"):
                pytest.fail("a reader beside a writer")


def test_waiting_writer_is_not_passed_by_later_readers(server: Server, client: leasehold.Client, lock_name: str) -> None:
    reader = client.lock(lock_name, ttl="30s", mode="shared").acquire()
    order: List[str] = []
    writer_client, late_client = server.client(), server.client()

    def writer() -> None:
        with writer_client.lock(lock_name, ttl="30s", mode="exclusive", wait="20s"):
            order.append("writer")

    writing = threading.Thread(target=writer)
    writing.start()
    wait_until("the writer waits", lambda: client.lock_status(lock_name)["queue_length"] == 1)
    # A reader that comes later queues behind the writer instead of joining the reader.
    late = late_client.acquire(lock_name, ttl="30s", mode="shared")
    assert isinstance(late, leasehold.Place) and late.position == 2
    reader.release()
    writing.join(timeout=30)
    assert order == ["writer"]
    granted = late_client.acquire(lock_name, ttl="30s", mode="shared", ticket=late.ticket, wait="10s")
    assert isinstance(granted, leasehold.Grant)
    late_client.release(lock_name, granted.ticket)
    writer_client.close()
    late_client.close()


def test_mode_with_limit_is_bad_request(client: leasehold.Client, lock_name: str) -> None:
    with pytest.raises(leasehold.BadRequest):
        client.acquire(lock_name, mode="shared", limit=2)
