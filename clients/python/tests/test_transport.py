"""Connections: one kept-alive connection per thread, a connection the server closed while
idle replaced before the next call (README, ``http.keepalive_timeout_ms``), and a 503 with
``Retry-After`` asked again for safe calls only (docs/api.md, "Errors" and "Headers")."""

from __future__ import annotations

import http.server
import json
import threading
from typing import Iterator, List, Tuple

import pytest

import leasehold
from conftest import Server, wait_until
from leasehold.transport import _dropped


@pytest.fixture(scope="module")
def short_keepalive() -> Iterator[Server]:
    running = Server("[http]\nkeepalive_timeout_ms = 300")
    try:
        yield running
    finally:
        running.stop()


def test_connection_is_kept_between_calls(client: leasehold.Client) -> None:
    client.health()
    conn = client.transport._local.conn
    sock = conn.sock
    assert sock is not None
    client.health()
    client.ready()
    assert client.transport._local.conn is conn and conn.sock is sock


def test_connection_closed_while_idle_is_replaced(short_keepalive: Server, lock_name: str) -> None:
    client = short_keepalive.client()
    for call in (client.health, lambda: client.acquire(lock_name, ttl="30s")):
        client.health()
        sock = client.transport._local.conn.sock
        assert sock is not None
        wait_until("the server closes the idle connection", lambda: _dropped(sock))
        call()  # an acquire is not safe to repeat: the closed connection is seen before it goes
        assert client.transport._local.conn.sock is not sock
    client.close()


def test_a_long_poll_does_not_hold_up_renewals(server: Server, lock_name: str) -> None:
    client = server.client()
    with client.lock(lock_name, ttl="1500ms") as lease:
        waited: List[BaseException] = []

        def wait_in_line() -> None:
            try:
                client.acquire(lock_name + "-other", ttl="30s")  # takes the other lock
                client.acquire(lock_name + "-other", ttl="30s", wait="5s")  # waits 5 s, same client
            except BaseException as e:  # noqa: BLE001 - reported below
                waited.append(e)

        first = lease.grant
        assert first is not None
        waiting = threading.Thread(target=wait_in_line)
        waiting.start()
        def long_poll_waits() -> bool:
            try:
                return bool(client.lock_status(lock_name + "-other")["queue_length"] == 1)
            except leasehold.NotFound:  # the thread has not taken it yet
                return False

        wait_until("a long-poll waits", long_poll_waits)
        # While that thread's connection waits, the renewer's renews, more than once.
        expiries = {first.expires_at_ms}

        def renewed_twice() -> bool:
            assert lease.grant is not None
            expiries.add(lease.grant.expires_at_ms)
            return len(expiries) >= 3

        wait_until("renewals during the long-poll", renewed_twice)
        lease.check()
        waiting.join(timeout=30)
        assert not waited
    client.close()


class _Stub(http.server.BaseHTTPRequestHandler):
    """Answers 503 with Retry-After: 0 to the first request of each path, then 200."""

    protocol_version = "HTTP/1.1"
    seen: List[Tuple[str, str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        first = all(path != self.path for _, path in self.seen)
        self.seen.append((self.command, self.path))
        if first:
            body = json.dumps({"error": "keeper_unavailable", "message": "the keeper is restarting"}).encode()
            self.send_response(503)
            self.send_header("Retry-After", "0")
        else:
            body = json.dumps({"status": "ok", "id": "x" * 26}).encode()
            self.send_response(200 if self.command == "GET" else 202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_503_with_retry_after_is_asked_again_for_safe_calls_only() -> None:
    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Stub)
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        client = leasehold.Client(f"http://127.0.0.1:{stub.server_address[1]}")
        assert client.health()["status"] == "ok"
        assert _Stub.seen == [("GET", "/healthz"), ("GET", "/healthz")]
        with pytest.raises(leasehold.Unavailable) as caught:
            client.outbox_submit("https://hooks.example.com/x")
        assert caught.value.retry_after == 0 and caught.value.code == "keeper_unavailable"
        assert _Stub.seen[2:] == [("POST", "/v1/outbox")]
        client.close()
    finally:
        stub.shutdown()
        stub.server_close()
