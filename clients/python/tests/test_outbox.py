"""The outbox (docs/api.md, "The outbox"): a call accepted for later (202 with its id),
listed among the pending, read, deleted; retrying one that has not failed is 409
``wrong_state``; another tenant's entry is 404. The entries are due far in the future
(``not_before_ms``), so nothing is delivered while the test looks."""

from __future__ import annotations

import time

import pytest

import leasehold
from conftest import TENANT_KEY, Server

AN_HOUR_MS = 3_600_000


def test_submit_list_get_retry_delete(server: Server, client: leasehold.Client) -> None:
    later = int(time.time() * 1000) + AN_HOUR_MS
    entry_id = client.outbox_submit(
        "https://hooks.example.com/deploy",
        body={"v": 42},
        headers={"X-Source": "tests"},
        max_attempts=2,
        not_before_ms=later,
    )
    assert len(entry_id) == 26
    entry = client.outbox_get(entry_id)
    assert entry["state"] == "pending" and entry["max_attempts"] == 2
    assert entry["call"]["method"] == "POST" and entry["call"]["body"] == '{"v":42}'
    assert entry["due_ms"] >= later
    pending = client.outbox_list(state="pending")
    assert entry_id in [e["id"] for e in pending.items]
    with pytest.raises(leasehold.WrongState) as caught:
        client.outbox_retry(entry_id)
    assert caught.value.status == 409
    tenant = server.client(api_key=TENANT_KEY)
    with pytest.raises(leasehold.NotFound):
        tenant.outbox_get(entry_id)
    tenant.close()
    client.outbox_delete(entry_id)
    with pytest.raises(leasehold.NotFound):
        client.outbox_get(entry_id)


def test_refused_target_is_bad_request(client: leasehold.Client) -> None:
    # README, "Outbox": never to this host unless configured.
    with pytest.raises(leasehold.BadRequest):
        client.outbox_submit("http://127.0.0.1:1/x")
