"""Data under a lock (docs/api.md, "Data under a lock"): holders write with their ticket
(201 created, 200 updated), anyone with ``read`` reads, a queued ticket is ``not_holder``,
an unknown one ``lease_lost``."""

from __future__ import annotations

import pytest

import leasehold
from conftest import READ_KEY, Server


def test_holder_writes_reads_and_deletes(server: Server, client: leasehold.Client, lock_name: str) -> None:
    with client.lock(lock_name, ttl="30s") as lease:
        assert lease.put("progress", {"done": 42}) == "created"
        assert lease.put("progress", {"done": 43}) == "updated"
        assert lease.get("progress") == {"done": 43}
        reader = server.client(api_key=READ_KEY)
        assert reader.get_data(lock_name, "progress") == {"done": 43}
        assert client.lock_status(lock_name)["data_keys"] == 1
        lease.delete("progress")
        assert lease.get("progress", "gone") == "gone"
        with pytest.raises(leasehold.NotFound):
            client.get_data(lock_name, "progress")
        with pytest.raises(leasehold.NotFound):
            lease.delete("progress")
        reader.close()


def test_data_outlives_the_lease_and_keys_are_one_path_segment(client: leasehold.Client, lock_name: str) -> None:
    with client.lock(lock_name, ttl="30s") as lease:
        lease.put("a:b", [1, "two", None])
    assert client.get_data(lock_name, "a:b") == [1, "two", None]
    with client.lock(lock_name, ttl="30s") as lease:
        lease.delete("a:b")


def test_writes_need_a_holders_ticket(client: leasehold.Client, lock_name: str) -> None:
    holder = client.acquire(lock_name, ttl="30s")
    queued = client.acquire(lock_name, ttl="30s")
    assert isinstance(holder, leasehold.Grant) and isinstance(queued, leasehold.Place)
    with pytest.raises(leasehold.NotHolder):
        client.put_data(lock_name, "k", 1, queued.ticket)
    client.leave(lock_name, queued.ticket)
    client.release(lock_name, holder.ticket)
    with pytest.raises(leasehold.LeaseLost):
        client.put_data(lock_name, "k", 1, holder.ticket)
