"""Error answers become exceptions: docs/api.md, "Errors" (``{"error": CODE, "message":
TEXT}`` plus fields to act on) and "Access: API keys and roles" (401 without a key, 403 for a
role too low or a name outside the key's prefix)."""

from __future__ import annotations

import socket

import pytest

import leasehold
from conftest import LOCK_KEY, READ_KEY, TENANT_KEY, WRITE_KEY, Server
from leasehold.errors import error_from_answer


def test_no_key_is_unauthorized(server: Server, lock_name: str) -> None:
    with pytest.raises(leasehold.Unauthorized) as caught:
        server.client(api_key=None).acquire(lock_name)
    assert caught.value.status == 401 and caught.value.code == "unauthorized"
    with pytest.raises(leasehold.Unauthorized):
        server.client(api_key="not-a-configured-key").lock_status(lock_name)


def test_bearer_key_is_the_same_key(server: Server, lock_name: str) -> None:
    client = server.client(api_key=WRITE_KEY, bearer=True)
    with client.lock(lock_name, ttl="30s") as lease:
        assert lease.fence >= 1
    client.close()


def test_role_too_low_is_forbidden(server: Server, lock_name: str) -> None:
    reader = server.client(api_key=READ_KEY)
    with pytest.raises(leasehold.Forbidden) as caught:
        reader.acquire(lock_name)
    assert caught.value.status == 403 and caught.value.code == "forbidden"
    # The lock role may lock, but not write data (the write role's).
    locker = server.client(api_key=LOCK_KEY)
    with locker.lock(lock_name, ttl="30s") as lease:
        with pytest.raises(leasehold.Forbidden):
            lease.put("k", 1)


def test_name_outside_the_keys_prefix_is_forbidden(server: Server, lock_name: str) -> None:
    tenant = server.client(api_key=TENANT_KEY)
    with pytest.raises(leasehold.Forbidden):
        tenant.acquire(lock_name)
    with tenant.lock("tenant-" + lock_name, ttl="30s") as lease:
        assert lease.held


def test_value_out_of_bounds_is_bad_request_with_the_servers_message(
    client: leasehold.Client, lock_name: str
) -> None:
    # docs/api.md: ttl_ms is 100 to 86,400,000 by default.
    with pytest.raises(leasehold.BadRequest) as caught:
        client.acquire(lock_name, ttl="5ms")
    error = caught.value
    assert error.status == 400 and error.code == "bad_request"
    assert "ttl_ms" in error.message and "5" in error.message
    assert str(error).startswith("400 bad_request: ")


def test_bad_ticket_is_bad_request(client: leasehold.Client, lock_name: str) -> None:
    # docs/api.md: a ticket is 22 URL-safe base64 characters; anything else is 400.
    with pytest.raises(leasehold.BadRequest):
        client.renew(lock_name, "short")


def test_unknown_lock_is_not_found(client: leasehold.Client, lock_name: str) -> None:
    with pytest.raises(leasehold.NotFound) as caught:
        client.lock_status(lock_name)
    assert caught.value.status == 404 and caught.value.code == "not_found"


def test_limit_and_kind_mismatches_carry_their_fields(client: leasehold.Client, lock_name: str) -> None:
    held = client.acquire(lock_name, limit=3, ttl="30s")
    assert isinstance(held, leasehold.Grant)
    with pytest.raises(leasehold.LimitMismatch) as limit:
        client.acquire(lock_name, limit=2, queue="none")
    assert limit.value.status == 409 and limit.value.body["limit"] == 3
    with pytest.raises(leasehold.KindMismatch) as kind:
        client.acquire(lock_name, mode="shared", queue="none")
    assert kind.value.code == "kind_mismatch" and kind.value.body["kind"] == "semaphore"
    assert isinstance(kind.value, leasehold.Conflict)
    client.release(lock_name, held.ticket)


def test_a_queued_tickets_renewal_is_not_holder(client: leasehold.Client, lock_name: str) -> None:
    held = client.acquire(lock_name, ttl="30s")
    queued = client.acquire(lock_name, ttl="30s")
    assert isinstance(held, leasehold.Grant) and isinstance(queued, leasehold.Place)
    with pytest.raises(leasehold.NotHolder) as caught:
        client.renew(lock_name, queued.ticket)
    assert caught.value.body["position"] == 1
    client.leave(lock_name, queued.ticket)
    client.release(lock_name, held.ticket)


def test_unreachable_server_is_connection_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Nothing listens on the port now.
    client = leasehold.Client(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(leasehold.ConnectionFailed) as caught:
        client.health()
    assert caught.value.status is None


def test_error_from_answer_maps_codes_then_statuses() -> None:
    known = error_from_answer(503, b'{"error":"table_full","message":"full"}', 1.0)
    assert isinstance(known, leasehold.Unavailable)
    assert (known.status, known.code, known.message, known.retry_after) == (503, "table_full", "full", 1.0)
    # An unknown code falls back on its status; a body that is not JSON keeps its text.
    assert isinstance(error_from_answer(410, b'{"error":"new_code","message":"x"}', None), leasehold.LeaseLost)
    plain = error_from_answer(502, b"Bad Gateway", None)
    assert isinstance(plain, leasehold.ServerError) and plain.code is None and plain.message == "Bad Gateway"
    assert type(error_from_answer(418, b"", None)) is leasehold.LeaseholdError


def test_base_url_is_checked() -> None:
    for bad in ("ftp://x", "localhost:8080", "http://", "http://u:p@host/"):
        with pytest.raises(ValueError):
            leasehold.Client(bad)
