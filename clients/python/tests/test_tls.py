"""``https://`` with ``ssl_context``: a server whose certificate a private CA signed is
trusted through that CA, and refused without it. The server here is a small stand-in on the
standard library (the certificates are made with the ``openssl`` command, skipped when it is
missing); the client's side is what is under test: TLS, the CA, a kept connection."""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Iterator, Tuple

import pytest

import leasehold


class _Health(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "version": "stub", "build": "stub"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[str, Path]]:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make certificates with")
    d = tmp_path_factory.mktemp("tls")
    ca_key, ca, key, csr, cert = (str(d / n) for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
             "-days", "1", "-subj", "/CN=leasehold test CA")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
             "-days", "1", "-extfile", str(ext))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}", Path(ca)
    finally:
        server.shutdown()
        server.server_close()


def test_https_with_a_private_ca_keeps_its_connection(tls_server: Tuple[str, Path]) -> None:
    url, ca = tls_server
    client = leasehold.Client(url, ssl_context=ssl.create_default_context(cafile=str(ca)))
    assert client.health()["status"] == "ok"
    sock = client.transport._local.conn.sock
    assert isinstance(sock, ssl.SSLSocket)
    assert client.health()["status"] == "ok"
    assert client.transport._local.conn.sock is sock
    client.close()


def test_https_without_the_ca_is_refused(tls_server: Tuple[str, Path]) -> None:
    url, _ = tls_server
    client = leasehold.Client(url, timeout=5)
    with pytest.raises(leasehold.ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        client.health()


def test_ssl_context_is_for_https_only() -> None:
    with pytest.raises(ValueError):
        leasehold.Client("http://127.0.0.1:1", ssl_context=ssl.create_default_context())
