"""The client: one method per route of the native API (docs/api.md, "Routes").

Each method sends one request (safe ones may be sent again, see ``transport.py``) and
returns the answer as a typed value, or raises the :mod:`leasehold.errors` exception of the
error answer. :meth:`Client.lock` is the high-level part: a :class:`~leasehold.Lease` that
waits for the lock, renews it in the background and releases it.
"""

from __future__ import annotations

import json
import ssl
import urllib.parse
from typing import Any, Callable, Dict, Iterator, Mapping, Optional

from .duration import Duration, parse_ms
from .errors import ConnectionFailed, LeaseholdError, NotFound
from .events import EventStream
from .lease import Lease
from .models import Grant, Page, Place, Standing
from .transport import DEFAULT_RETRIES, Answer, Transport

__all__ = ["Client", "DEFAULT_TIMEOUT_S", "MISSING"]

#: How long a call may take (a waiting acquire: its wait, plus this).
DEFAULT_TIMEOUT_S = 10.0


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: The default of :meth:`Client.get_data`'s ``default``: raise :class:`NotFound`.
MISSING: Any = _Missing()


def segment(text: str) -> str:
    """``text`` as one path segment (percent-encoded; the server decodes it)."""
    return urllib.parse.quote(text, safe="")


class Client:
    """A client of one leasehold server.

    ``base_url`` is ``http://`` or ``https://`` (with ``ssl_context`` for a private CA),
    ``api_key`` is sent as ``x-api-key`` (as ``Authorization: Bearer`` with
    ``bearer=True``), ``timeout`` (seconds) bounds each call; a waiting acquire gets its
    wait on top. Safe calls are asked again up to ``retries`` times after a 503 with
    ``Retry-After``. Thread-safe: each thread has its own keep-alive connection. After a
    ``fork`` the child opens connections of its own.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8080",
        api_key: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        ssl_context: Optional[ssl.SSLContext] = None,
        *,
        bearer: bool = False,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = float(timeout)
        self.transport = Transport(
            base_url,
            api_key=api_key,
            bearer=bearer,
            timeout=self.timeout,
            ssl_context=ssl_context,
            retries=retries,
        )

    @property
    def base_url(self) -> str:
        """The server's URL, as given (without a trailing ``/``)."""
        return self.transport.base_url

    def close(self) -> None:
        """Closes the connections (a later call opens a new one)."""
        self.transport.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Optional[Mapping[str, Any]] = None,
        body: Optional[Mapping[str, Any]] = None,
        raw_body: Optional[bytes] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Optional[float] = None,
        safe: bool,
        ok: tuple[int, ...] = (200,),
    ) -> Answer:
        data = raw_body
        if body is not None:
            data = json.dumps({k: v for k, v in body.items() if v is not None}).encode("utf-8")
        answer = self.transport.request(
            method,
            self.transport.path(path, query),
            body=data,
            headers=headers,
            timeout=timeout,
            safe=safe,
        )
        if answer.status not in ok:
            raise answer.error()
        return answer

    @staticmethod
    def _json(answer: Answer) -> Any:
        try:
            return answer.json()
        except ValueError as e:
            raise LeaseholdError(
                f"the server answered {answer.status} with a body that is not JSON",
                status=answer.status,
            ) from e

    # -- locks --------------------------------------------------------------------------

    def acquire(
        self,
        name: str,
        *,
        ttl: Optional[Duration] = None,
        wait: Optional[Duration] = None,
        limit: Optional[int] = None,
        weight: Optional[int] = None,
        queue: Optional[str] = None,
        mode: Optional[str] = None,
        owner: Optional[str] = None,
        user: Optional[str] = None,
        ticket: Optional[str] = None,
        callback: Optional[str] = None,
    ) -> Standing:
        """``POST /v1/locks/{name}/acquire``, once: a :class:`Grant` (200) or a
        :class:`Place` in the queue (202).

        ``wait`` makes the server hold the answer until the grant or until it runs out
        (capped at the server's ``locks.max_wait_ms``); ``queue="none"`` is a try-lock,
        which raises :class:`~leasehold.NotAcquired` when the lock is taken. ``limit`` and
        ``weight`` make a semaphore; ``mode`` (``"shared"``, ``"exclusive"``) a read/write
        lock. Not repeated on failure (a second acquire would be a second ticket), except
        with ``ticket``, which makes it safe.
        """
        wait_ms = parse_ms(wait) if wait is not None else None
        body: Dict[str, Any] = {
            "ttl_ms": parse_ms(ttl) if ttl is not None else None,
            "wait_ms": wait_ms,
            "limit": limit,
            "weight": weight,
            "queue": queue,
            "mode": mode,
            "owner": owner,
            "user": user,
            "ticket": ticket,
            "callback": callback,
        }
        answer = self._call(
            "POST",
            f"/v1/locks/{segment(name)}/acquire",
            body=body,
            timeout=self.timeout + (wait_ms or 0) / 1000,
            safe=ticket is not None,
            ok=(200, 202),
        )
        return _standing(self._json(answer), answer.status == 200)

    def renew(self, name: str, ticket: str, ttl: Optional[Duration] = None, *, timeout: Optional[float] = None) -> Grant:
        """``POST /v1/locks/{name}/renew``: the lease, extended (the same fence).

        Raises :class:`~leasehold.LeaseLost` when the lease is gone, and
        :class:`~leasehold.NotHolder` for a ticket still in the queue.
        """
        body = {"ticket": ticket, "ttl_ms": parse_ms(ttl) if ttl is not None else None}
        answer = self._call(
            "POST",
            f"/v1/locks/{segment(name)}/renew",
            body=body,
            timeout=timeout,
            safe=True,
        )
        return Grant.from_json(self._json(answer))

    def release(self, name: str, ticket: str) -> Dict[str, Any]:
        """``POST /v1/locks/{name}/release``: ``{"status": "released", "fence", …}`` for a
        holder, ``{"status": "left"}`` for a waiter; :class:`~leasehold.LeaseLost` when the
        ticket is gone."""
        answer = self._call("POST", f"/v1/locks/{segment(name)}/release", body={"ticket": ticket}, safe=False)
        result: Dict[str, Any] = self._json(answer)
        return result

    def leave(self, name: str, ticket: str) -> Dict[str, Any]:
        """``DELETE /v1/locks/{name}/tickets/{ticket}``: leave the queue, or release."""
        answer = self._call("DELETE", f"/v1/locks/{segment(name)}/tickets/{segment(ticket)}", safe=True)
        result: Dict[str, Any] = self._json(answer)
        return result

    def ticket_status(self, name: str, ticket: str) -> Standing:
        """``GET /v1/locks/{name}/tickets/{ticket}``: a :class:`Grant` while it holds, a
        :class:`Place` (position, queue length, ETA) while it waits. Counts as the ticket's
        presence. :class:`~leasehold.LeaseLost` when the ticket is gone."""
        answer = self._call("GET", f"/v1/locks/{segment(name)}/tickets/{segment(ticket)}", safe=True)
        body = self._json(answer)
        return _standing(body, body.get("status") == "acquired")

    def lock_status(self, name: str) -> Dict[str, Any]:
        """``GET /v1/locks/{name}``: the lock as readers see it (holders without tickets);
        :class:`~leasehold.NotFound` when the server does not know it."""
        result: Dict[str, Any] = self._json(self._call("GET", f"/v1/locks/{segment(name)}", safe=True))
        return result

    def locks(self, prefix: Optional[str] = None, after: Optional[str] = None, limit: Optional[int] = None) -> Page:
        """``GET /v1/locks``: one page of locks by name."""
        query = {"prefix": prefix, "after": after, "limit": limit}
        body = self._json(self._call("GET", "/v1/locks", query=query, safe=True))
        return Page(items=list(body.get("locks", [])), next_after=body.get("next_after"))

    def iter_locks(self, prefix: Optional[str] = None, page_size: Optional[int] = None) -> Iterator[Dict[str, Any]]:
        """Every lock under ``prefix``, page after page."""
        after: Optional[str] = None
        while True:
            page = self.locks(prefix=prefix, after=after, limit=page_size)
            yield from page.items
            if page.next_after is None:
                return
            after = page.next_after

    def events(
        self,
        name: str,
        ticket: str,
        *,
        last_event_id: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> EventStream:
        """``GET /v1/locks/{name}/events?ticket=``: the ticket's events, on a connection of
        their own. An open stream counts as the ticket's presence. ``timeout`` bounds the
        silence between two reads (the server pings every ``http.event_ping_ms``, 15 s by
        default); ``None``, the default, waits as long as the stream lasts."""
        target = self.transport.path(f"/v1/locks/{segment(name)}/events", {"ticket": ticket})
        headers = dict(self.transport.headers)
        headers["Accept"] = "text/event-stream"
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        conn = self.transport.connect(self.timeout)
        try:
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
        except OSError as e:
            conn.close()
            raise ConnectionFailed(f"GET {self.base_url}{target}: {e}") from e
        except Exception:
            conn.close()
            raise
        if response.status != 200:
            body = response.read()
            conn.close()
            raise Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body).error()
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return EventStream(conn, response)

    def lock(
        self,
        name: str,
        ttl: Optional[Duration] = None,
        wait: Duration = 0,
        *,
        limit: Optional[int] = None,
        weight: Optional[int] = None,
        mode: Optional[str] = None,
        queue: Optional[str] = None,
        owner: Optional[str] = None,
        user: Optional[str] = None,
        renew_every: Optional[Duration] = None,
        on_lost: Optional[Callable[[Lease], None]] = None,
    ) -> Lease:
        """A lease on ``name``, taken when its ``with`` block starts (or by
        :meth:`Lease.acquire`), renewed every ``renew_every`` (a third of the TTL by
        default) until the block ends, then released.

        ``wait`` is how long to wait in line (``0``, the default: try once, and raise
        :class:`~leasehold.NotAcquired` when the lock is taken; past the wait,
        :class:`~leasehold.LockTimeout`). ``ttl`` is the lease's (the lock's declared
        default, else the server's, when not given). ``on_lost(lease)`` is called, from the
        renewer thread, when the lease is lost; ``lease.lost`` is set then and
        ``lease.check()`` raises :class:`~leasehold.LeaseLost`.
        """
        return Lease(
            self,
            name,
            ttl_ms=parse_ms(ttl) if ttl is not None else None,
            wait_ms=parse_ms(wait),
            limit=limit,
            weight=weight,
            mode=mode,
            queue=queue,
            owner=owner,
            user=user,
            renew_every_ms=parse_ms(renew_every) if renew_every is not None else None,
            on_lost=on_lost,
        )

    # -- data under a lock --------------------------------------------------------------

    def get_data(self, name: str, key: str, default: Any = MISSING) -> Any:
        """``GET /v1/locks/{name}/data/{key}``: the JSON value; ``default`` when there is
        none (:class:`~leasehold.NotFound` without a default)."""
        try:
            answer = self._call("GET", f"/v1/locks/{segment(name)}/data/{segment(key)}", safe=True)
        except NotFound:
            if default is MISSING:
                raise
            return default
        return self._json(answer)

    def put_data(self, name: str, key: str, value: Any, ticket: str) -> str:
        """``PUT /v1/locks/{name}/data/{key}`` with the holder's ``ticket``: ``"created"``
        or ``"updated"``."""
        answer = self._call(
            "PUT",
            f"/v1/locks/{segment(name)}/data/{segment(key)}",
            raw_body=json.dumps(value).encode("utf-8"),
            headers={"x-ticket": ticket, "Content-Type": "application/json"},
            safe=True,
            ok=(200, 201),
        )
        status: str = self._json(answer)["status"]
        return status

    def delete_data(self, name: str, key: str, ticket: str) -> None:
        """``DELETE /v1/locks/{name}/data/{key}`` with the holder's ``ticket``
        (:class:`~leasehold.NotFound` when there is none)."""
        self._call(
            "DELETE",
            f"/v1/locks/{segment(name)}/data/{segment(key)}",
            headers={"x-ticket": ticket},
            safe=True,
        )

    # -- the outbox ---------------------------------------------------------------------

    def outbox_submit(
        self,
        url: str,
        *,
        method: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        body: Any = None,
        max_attempts: Optional[int] = None,
        not_before_ms: Optional[int] = None,
    ) -> str:
        """``POST /v1/outbox``: an HTTP call the server makes later, at least once; its id.

        ``body``: a string is sent as it is, other JSON as its text. Not repeated on
        failure (a second submission would be a second call)."""
        payload = {
            "url": url,
            "method": method,
            "headers": dict(headers) if headers is not None else None,
            "body": body,
            "max_attempts": max_attempts,
            "not_before_ms": not_before_ms,
        }
        answer = self._call("POST", "/v1/outbox", body=payload, safe=False, ok=(202,))
        entry_id: str = self._json(answer)["id"]
        return entry_id

    def outbox_list(self, state: Optional[str] = None, after: Optional[str] = None, limit: Optional[int] = None) -> Page:
        """``GET /v1/outbox``: a page of entries (``state``: ``"pending"`` or ``"failed"``)."""
        query = {"state": state, "after": after, "limit": limit}
        body = self._json(self._call("GET", "/v1/outbox", query=query, safe=True))
        return Page(items=list(body.get("entries", [])), next_after=body.get("next_after"))

    def outbox_get(self, entry_id: str) -> Dict[str, Any]:
        """``GET /v1/outbox/{id}``: one entry."""
        result: Dict[str, Any] = self._json(self._call("GET", f"/v1/outbox/{segment(entry_id)}", safe=True))
        return result

    def outbox_retry(self, entry_id: str) -> None:
        """``POST /v1/outbox/{id}/retry``: a failed entry tried again
        (:class:`~leasehold.WrongState` if it has not failed)."""
        self._call("POST", f"/v1/outbox/{segment(entry_id)}/retry", safe=False)

    def outbox_delete(self, entry_id: str) -> None:
        """``DELETE /v1/outbox/{id}`` (:class:`~leasehold.WrongState` while in flight)."""
        self._call("DELETE", f"/v1/outbox/{segment(entry_id)}", safe=True)

    # -- health -------------------------------------------------------------------------

    def health(self) -> Dict[str, Any]:
        """``GET /healthz``: ``{"status": "ok", "version", "build"}``."""
        result: Dict[str, Any] = self._json(self._call("GET", "/healthz", safe=True))
        return result

    def ready(self) -> Dict[str, Any]:
        """``GET /readyz``: ``{"status": "ready", …}``, or :class:`~leasehold.Unavailable`
        (asked once: readiness is the question)."""
        answer = self.transport.request("GET", self.transport.path("/readyz"), safe=True, retry_unavailable=False)
        if answer.status != 200:
            raise answer.error()
        result: Dict[str, Any] = self._json(answer)
        return result


def _standing(body: Any, granted: bool) -> Standing:
    if not isinstance(body, dict):
        raise LeaseholdError(f"unexpected answer: {body!r}")
    return Grant.from_json(body) if granted else Place.from_json(body)
