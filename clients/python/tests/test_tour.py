"""The README's "Python client" tour, run as it is written there (with this test server's
URL and key instead of ``http://localhost:8080``, and a lock name of its own)."""

from __future__ import annotations

import leasehold
from conftest import WRITE_KEY, Server


def test_readme_tour(server: Server, lock_name: str) -> None:
    name, licences, config = lock_name, "licences-" + lock_name, "config-" + lock_name
    client = leasehold.Client(server.url, api_key=WRITE_KEY)

    # --- as in README.md, "Python client" (lock names and the URL aside) ---
    with client.lock(name, ttl="30s", wait="1m", owner="host-a") as lease:
        print(lease.fence, lease.ticket)
        lease.put("progress", {"done": 42})
        lease.check()

        try:
            client.lock(name).acquire()
        except leasehold.NotAcquired as e:
            print(e.status, e.code, e.body["used"])
            assert (e.status, e.code, e.body["used"]) == (409, "unavailable", 1)
        place = client.acquire(name, owner="host-b")
        assert isinstance(place, leasehold.Place) and place.position == 1
        events = client.events(name, place.ticket)

    seen = []
    for event in events:
        seen.append(event.event)
        if event.event == "acquired":
            client.release(name, place.ticket)
    assert seen == ["position", "acquired", "released"]
    assert client.get_data(name, "progress") == {"done": 42}

    with client.lock(licences, limit=3, weight=2):
        assert client.lock_status(licences)["used"] == 2
    with client.lock(config, mode="shared"), client.lock(config, mode="shared"):
        assert client.lock_status(config)["used"] == 2
    assert [lock["name"] for lock in client.locks(prefix=name).items] == [name]

    entry = client.outbox_submit("https://hooks.example.com/deploy", body={"v": 42}, max_attempts=10)
    print(client.outbox_get(entry)["state"], client.outbox_list(state="failed").items)
    # --- end of the tour ---

    client.close()
