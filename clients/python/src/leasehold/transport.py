"""HTTP/1.1 to one leasehold server: keep-alive connections, one per thread.

What it owns: the base URL, the API key header, TLS, timeouts, and the connections. Each
thread gets a connection of its own (a lease's renewer thread included), kept alive between
calls, so a renewal never waits behind a long-poll of another thread. A connection the
server closed while it was idle (``http.keepalive_timeout_ms``) is noticed before a
request goes out and replaced; a request that breaks on a kept connection anyway is sent
again on a fresh one only when it is *safe* (it may be repeated without changing its
effect: reads, renewals, data writes and deletes). A 503 with ``Retry-After`` (docs/api.md,
"Errors") is waited out and asked again, a few times, for safe calls only.

What it must not do: decide what an answer means (``client.py`` does), or repeat a call
that is not safe.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import socket
import ssl
import threading
import time
import urllib.parse
import weakref
from typing import Any, Dict, Mapping, Optional, Tuple

from .errors import ConnectionFailed, LeaseholdError, error_from_answer

__all__ = ["Answer", "Transport", "USER_AGENT"]

USER_AGENT = "leasehold-python/0.1.0"

#: How many times a safe call is asked again after a 503 with ``Retry-After``.
DEFAULT_RETRIES = 3

#: The longest a 503's ``Retry-After`` is waited before asking again (the server says 1).
MAX_RETRY_AFTER_S = 30.0


class Answer:
    """One answer: its status, headers (names lower-cased) and body."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        """The body as JSON (``None`` for an empty body)."""
        if not self.body:
            return None
        return json.loads(self.body.decode("utf-8"))

    @property
    def retry_after(self) -> Optional[float]:
        """``Retry-After`` in seconds, when it is a number."""
        return parse_retry_after(self.headers.get("retry-after"))

    def error(self) -> LeaseholdError:
        """The exception this (error) answer stands for."""
        return error_from_answer(self.status, self.body, self.retry_after)


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` as seconds (the server sends whole seconds; a date is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if seconds != seconds or seconds < 0:
        return None
    return seconds


class Transport:
    """Connections to one server, and requests over them."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: Optional[str],
        bearer: bool,
        timeout: float,
        ssl_context: Optional[ssl.SSLContext],
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"base_url must be http:// or https://, not {base_url!r}")
        if not parts.hostname:
            raise ValueError(f"base_url has no host: {base_url!r}")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"base_url must be scheme://host[:port][/path]: {base_url!r}")
        if ssl_context is not None and parts.scheme != "https":
            raise ValueError("ssl_context is for https:// URLs")
        self.base_url = base_url.rstrip("/")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.retries = retries
        self.ssl_context = ssl_context
        if self.https and self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()
        self.headers: Dict[str, str] = {"User-Agent": USER_AGENT}
        if api_key is not None:
            if bearer:
                self.headers["Authorization"] = f"Bearer {api_key}"
            else:
                self.headers["x-api-key"] = api_key
        self._local = threading.local()
        self._lock = threading.Lock()
        # Weak: a thread that ends takes its connection with it (its thread-local goes).
        self._open: "weakref.WeakSet[http.client.HTTPConnection]" = weakref.WeakSet()
        self._pid = os.getpid()

    # -- connections --------------------------------------------------------------------

    def connect(self, timeout: Optional[float]) -> http.client.HTTPConnection:
        """A new connection (not yet open), not kept for the thread: an event stream's."""
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout, context=self.ssl_context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _connection(self) -> Tuple[http.client.HTTPConnection, bool]:
        """This thread's connection, and whether it was used before (kept alive)."""
        if os.getpid() != self._pid:
            # A forked child must not write to its parent's sockets: it starts afresh.
            with self._lock:
                self._open = weakref.WeakSet()
                self._pid = os.getpid()
            self._local = threading.local()
        conn: Optional[http.client.HTTPConnection] = getattr(self._local, "conn", None)
        if conn is not None and conn.sock is not None and _dropped(conn.sock):
            conn.close()
        if conn is None:
            conn = self.connect(self.timeout)
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        return conn, conn.sock is not None

    def close_thread(self) -> None:
        """Closes the calling thread's connection (a renewer's, when it ends)."""
        conn: Optional[http.client.HTTPConnection] = getattr(self._local, "conn", None)
        if conn is None:
            return
        self._local.conn = None
        conn.close()
        with self._lock:
            self._open.discard(conn)

    def close(self) -> None:
        """Closes every connection of every thread (each reconnects if used again)."""
        with self._lock:
            conns, self._open = list(self._open), weakref.WeakSet()
        for conn in conns:
            conn.close()
        self._local = threading.local()

    # -- requests -----------------------------------------------------------------------

    def path(self, path: str, query: Optional[Mapping[str, Any]] = None) -> str:
        """The request target: the base URL's path, ``path``, and the query (``None``s left out)."""
        target = self.prefix + path
        if query:
            pairs = [(k, str(v)) for k, v in query.items() if v is not None]
            if pairs:
                target += "?" + urllib.parse.urlencode(pairs)
        return target

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        safe: bool = False,
        retry_unavailable: Optional[bool] = None,
    ) -> Answer:
        """Sends one request and returns its answer, whatever its status.

        ``path`` is the full request target (see :meth:`path`). ``safe`` says the call may
        be sent twice: then a kept connection that broke is replaced and the call sent again,
        and (unless ``retry_unavailable`` is false) a 503 with ``Retry-After`` is waited out
        and asked again up to ``retries`` times. Raises :class:`ConnectionFailed` when no
        answer could be had.
        """
        if retry_unavailable is None:
            retry_unavailable = safe
        all_headers = dict(self.headers)
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        if headers:
            all_headers.update(headers)
        timeout = self.timeout if timeout is None else timeout
        unavailable_left = self.retries if retry_unavailable else 0
        # Waiting out a 503 never takes a call past its timeout (a renewal's is the time
        # left on its lease).
        deadline = time.monotonic() + timeout
        while True:
            answer = self._once(method, path, body, all_headers, timeout, safe)
            if answer.status != 503 or unavailable_left <= 0:
                return answer
            pause = answer.retry_after
            if pause is None or time.monotonic() + min(pause, MAX_RETRY_AFTER_S) >= deadline:
                return answer
            unavailable_left -= 1
            time.sleep(min(pause, MAX_RETRY_AFTER_S))

    def _once(
        self,
        method: str,
        path: str,
        body: Optional[bytes],
        headers: Dict[str, str],
        timeout: float,
        safe: bool,
    ) -> Answer:
        attempt = 0
        while True:
            attempt += 1
            conn, kept = self._connection()
            try:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
                conn.request(method, path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                answer = Answer(
                    response.status,
                    {k.lower(): v for k, v in response.getheaders()},
                    data,
                )
                if response.will_close:
                    conn.close()
                return answer
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                # A kept connection may have been closed by the server just as the request
                # went out: a safe call goes again, once, on a fresh connection.
                if safe and kept and attempt == 1 and not isinstance(e, socket.timeout):
                    continue
                raise ConnectionFailed(
                    f"{method} {self.base_url}{path}: {_describe(e)}"
                ) from e


def _dropped(sock: socket.socket) -> bool:
    """Whether an idle kept connection was closed by its peer (it reads as ready: EOF)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def _describe(e: BaseException) -> str:
    if isinstance(e, socket.timeout):
        return "timed out"
    if isinstance(e, http.client.RemoteDisconnected):
        return "the server closed the connection without answering"
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
