"""Fixtures: the real leasehold server, started from ``$LEASEHOLD_BIN``, and clients of it.

Nothing is built here: ``tests/python.sh`` runs ``cargo build`` and exports
``LEASEHOLD_BIN``. A server gets a configuration file in a temporary directory (its data
directory beside it) that listens on a free loopback port (``127.0.0.1:0``); the port is
read from its "serving on ADDRESS" log line, then ``/readyz`` is polled until it answers
200, with a deadline. It is stopped with SIGTERM (and waited for) at the end.

Keys (README, "Configuration", API keys): ``WRITE_KEY`` (role ``write``, the operator's and
the tests' default), ``LOCK_KEY``, ``READ_KEY`` and ``TENANT_KEY`` (``write`` under the
prefix ``tenant-``).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
sys.path.insert(0, str(SRC))

import leasehold  # noqa: E402

WRITE_KEY = "test-write-key-0123456789abcdef"
LOCK_KEY = "test-lock-key-0123456789abcdef"
READ_KEY = "test-read-key-0123456789abcdef"
TENANT_KEY = "test-tenant-key-0123456789abcdef"

#: How long anything a test waits for may take (the machine is small and shared).
DEADLINE_S = 30.0

_names = itertools.count(1)


def wait_until(what: str, condition: Callable[[], bool], within_s: float = DEADLINE_S) -> None:
    """Polls ``condition`` until it holds; fails naming ``what`` after ``within_s``."""
    deadline = time.monotonic() + within_s
    pause = 0.005
    while not condition():
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"{what}: not within {within_s}s")
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.1)


class Server:
    """A running ``leasehold serve``."""

    def __init__(self, extra_config: str = "") -> None:
        binary = os.environ.get("LEASEHOLD_BIN")
        if not binary:
            pytest.fail("LEASEHOLD_BIN is not set: run the tests with tests/python.sh")
        self.dir = tempfile.TemporaryDirectory(prefix="leasehold-py-")
        root = Path(self.dir.name)
        config = root / "leasehold.toml"
        config.write_text(
            "[server]\n"
            'listen = ["127.0.0.1:0"]\n'
            f"data_dir = {str(root / 'data')!r}\n"
            "workers = 2\n"
            'log_level = "info"\n'
            f"{extra_config}\n"
            "[journal]\n"
            'fsync = "never"\n'
            "[[auth.keys]]\n"
            f'key = "{WRITE_KEY}"\nrole = "write"\n'
            "[[auth.keys]]\n"
            f'key = "{LOCK_KEY}"\nrole = "lock"\n'
            "[[auth.keys]]\n"
            f'key = "{READ_KEY}"\nrole = "read"\n'
            "[[auth.keys]]\n"
            f'key = "{TENANT_KEY}"\nrole = "write"\nprefix = "tenant-"\n'
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LEASEHOLD_", "RESOURCE_", "NOTIFY_SOCKET"))}
        self.log: List[str] = []
        self._log_grew = threading.Condition()
        self.process = subprocess.Popen(
            [binary, "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        address = self._wait_log(r"serving on (\d+\.\d+\.\d+\.\d+:\d+)")
        self.url = f"http://{address}"
        #: The first TLS listener's URL, when ``[tls]`` gave one (marked ``(tls)`` in the log).
        self.tls_url: Optional[str] = None
        if "[tls]" in extra_config:
            self.tls_url = "https://" + self._wait_log(r"(\d+\.\d+\.\d+\.\d+:\d+) \(tls\)")
        wait_until("the server is ready", self._ready)

    def _read_log(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if os.environ.get("LEASEHOLD_TEST_LOG"):
                print(line, file=sys.stderr)
            with self._log_grew:
                self.log.append(line)
                self._log_grew.notify_all()
        with self._log_grew:
            self._log_grew.notify_all()

    def _wait_log(self, pattern: str) -> str:
        deadline = time.monotonic() + DEADLINE_S
        seen = 0
        with self._log_grew:
            while True:
                for line in self.log[seen:]:
                    found = re.search(pattern, line)
                    if found:
                        return found.group(1)
                seen = len(self.log)
                if self.process.poll() is not None:
                    pytest.fail(f"the server exited ({self.process.returncode}):\n" + "\n".join(self.log))
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"no log line {pattern!r} within {DEADLINE_S}s:\n" + "\n".join(self.log))
                self._log_grew.wait(min(left, 0.5))

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as answer:
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def client(self, api_key: Optional[str] = WRITE_KEY, **kwargs: object) -> leasehold.Client:
        """A client of this server (with the write key unless told otherwise)."""
        return leasehold.Client(self.url, api_key=api_key, **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.dir.cleanup()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    running = Server()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(server: Server) -> Iterator[leasehold.Client]:
    c = server.client()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def lock_name(request: pytest.FixtureRequest) -> str:
    """A lock name no other test uses."""
    base = re.sub(r"[^A-Za-z0-9_.-]", "-", request.node.name)[:150]
    return f"{base}-{next(_names)}"
