"""``https://`` against the server's own TLS listener (``[tls]``, docs/operations.md "TLS"):
the client locks and renews over TLS with the private CA that signed the server's
certificate in its ``ssl_context``, keeps its connection, and is refused without that CA.
The certificates are made with the ``openssl`` command (the server's own TLS tests need it
too)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from conftest import WRITE_KEY, Server, wait_until

import leasehold


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _certificates(d: Path) -> Tuple[Path, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
             "-days", "1", "-subj", "/CN=leasehold test CA")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", "1", "-extfile", str(ext))
    return ca, cert, key


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[Server, Path]]:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make the test certificates")
    ca, cert, key = _certificates(tmp_path_factory.mktemp("tls"))
    running = Server(f'\n[tls]\nlisten = ["127.0.0.1:0"]\ncert_file = "{cert}"\nkey_file = "{key}"\n')
    try:
        yield running, ca
    finally:
        running.stop()


def _client(server: Server, ca: Path) -> leasehold.Client:
    assert server.tls_url is not None, "the server has a TLS listener"
    return leasehold.Client(server.tls_url, api_key=WRITE_KEY, ssl_context=ssl.create_default_context(cafile=str(ca)))


def test_locks_and_renews_over_tls(tls_server: Tuple[Server, Path], lock_name: str) -> None:
    server, ca = tls_server
    client = _client(server, ca)
    try:
        with client.lock(lock_name, ttl="1500ms") as lease:
            first = lease.grant
            assert first is not None
            seen: List[int] = [first.expires_at_ms]

            def renewed_twice() -> bool:
                grant = lease.grant
                assert grant is not None
                if grant.expires_at_ms != seen[-1]:
                    seen.append(grant.expires_at_ms)
                return len(seen) >= 3

            wait_until("two renewals over TLS", renewed_twice)
            lease.check()
            assert client.lock_status(lock_name)["holders"][0]["fence"] == first.fence
        # Released at the end of the block: the lock is forgotten.
        with pytest.raises(leasehold.NotFound):
            client.lock_status(lock_name)
    finally:
        client.close()


def test_https_keeps_its_connection(tls_server: Tuple[Server, Path]) -> None:
    server, ca = tls_server
    client = _client(server, ca)
    try:
        assert client.health()["status"] == "ok"
        sock = client.transport._local.conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        assert client.health()["status"] == "ok"
        assert client.transport._local.conn.sock is sock
    finally:
        client.close()


def test_https_without_the_ca_is_refused(tls_server: Tuple[Server, Path]) -> None:
    server, _ = tls_server
    assert server.tls_url is not None
    client = leasehold.Client(server.tls_url, timeout=5)
    with pytest.raises(leasehold.ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        client.health()


def test_ssl_context_is_for_https_only() -> None:
    with pytest.raises(ValueError):
        leasehold.Client("http://127.0.0.1:1", ssl_context=ssl.create_default_context())
