"""A lease held by this process: taken, renewed in the background, released.

``with client.lock("nightly-report", ttl="30s", wait="1m") as lease:`` waits in the lock's
queue (long-polls of at most the server's ``locks.max_wait_ms`` each, keeping its ticket so
it keeps its place), then a renewer thread renews the lease every ``renew_every`` (a third
of the TTL by default, as the command line does: README, "The command line"). The lease is
*lost* when the server says it is gone (410 ``lease_lost``: it expired, or an operator
released it) or when it could not be renewed before it ran out by this process's clock
(the call's start plus the TTL). Then ``lease.lost`` is set, ``on_lost(lease)`` is called
once, and ``lease.check()`` raises :class:`~leasehold.LeaseLost`: a body that checks between
steps stops within one renew interval of the loss. At the block's end the renewer stops and
the lease is released.

Pass ``lease.fence`` to storage that checks fencing tokens (docs/api.md, "Tickets, leases
and fencing tokens"): a lease can always be lost between a check and a write.
"""

from __future__ import annotations

import logging
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Optional, Type

from .errors import (
    ConnectionFailed,
    LeaseholdError,
    LeaseLost,
    LockTimeout,
    NotHolder,
    QueueFull,
    ServerError,
)
from .models import Grant, Place

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Lease"]

log = logging.getLogger("leasehold")

#: The shortest renew interval (each renewal is a round trip).
MIN_RENEW_EVERY_MS = 50

#: After a failed renewal, the next try comes this fraction of the interval later.
RETRY_FRACTION = 4

#: How long a failed acquire (connection, 503, 429) pauses before asking again.
ACQUIRE_RETRY_PAUSE_S = 0.5


class Lease:
    """A lease on one lock, for a ``with`` block (see the module's docs).

    While held: ``fence``, ``ticket``, ``grant`` (the last :class:`Grant`), ``ttl_ms`` and
    ``renew_every_ms``. ``lost`` is a :class:`threading.Event`, set when the lease is lost;
    ``lost_reason`` says why.
    """

    def __init__(
        self,
        client: "Client",
        name: str,
        *,
        ttl_ms: Optional[int],
        wait_ms: int,
        limit: Optional[int] = None,
        weight: Optional[int] = None,
        mode: Optional[str] = None,
        queue: Optional[str] = None,
        owner: Optional[str] = None,
        user: Optional[str] = None,
        renew_every_ms: Optional[int] = None,
        on_lost: Optional[Callable[["Lease"], None]] = None,
    ) -> None:
        if renew_every_ms is not None and renew_every_ms < MIN_RENEW_EVERY_MS:
            raise ValueError(f"renew_every must be at least {MIN_RENEW_EVERY_MS}ms")
        if renew_every_ms is not None and ttl_ms is not None and renew_every_ms >= ttl_ms:
            raise ValueError("renew_every must be shorter than the TTL")
        self.client = client
        self.name = name
        self.wait_ms = wait_ms
        self.on_lost = on_lost
        self.lost = threading.Event()
        self.lost_reason: Optional[str] = None
        self.released = False
        self.grant: Optional[Grant] = None
        self._ttl_ms = ttl_ms
        self._renew_every_ms = renew_every_ms
        self._acquire_args: dict[str, Any] = {
            "limit": limit,
            "weight": weight,
            "mode": mode,
            "queue": queue,
            "owner": owner,
            "user": user,
        }
        self._valid_until = 0.0
        self._state = threading.Lock()
        self._stop = threading.Event()
        self._renewer: Optional[threading.Thread] = None

    # -- what the holder reads ----------------------------------------------------------

    @property
    def ticket(self) -> str:
        """The lease's ticket (its credential for renew, release and data writes)."""
        return self._held().ticket

    @property
    def fence(self) -> int:
        """The lease's fencing token: higher than any granted before it, on any lock."""
        return self._held().fence

    @property
    def ttl_ms(self) -> int:
        """The TTL the lease is renewed with."""
        self._held()
        assert self._ttl_ms is not None
        return self._ttl_ms

    @property
    def renew_every_ms(self) -> int:
        """How often the renewer renews."""
        self._held()
        assert self._renew_every_ms is not None
        return self._renew_every_ms

    def check(self) -> None:
        """Raises :class:`~leasehold.LeaseLost` if the lease is lost, or has run out by this
        process's clock without a renewal; returns otherwise."""
        if not self.lost.is_set() and self.grant is not None and time.monotonic() >= self._valid_until:
            self._lose("not renewed before it ran out")
        if self.lost.is_set():
            raise LeaseLost(
                f"the lease on {self.name} is lost: {self.lost_reason}",
                code="lease_lost",
            )

    @property
    def held(self) -> bool:
        """Whether the lease is held: acquired, not lost, not released."""
        return self.grant is not None and not self.released and not self.lost.is_set()

    # -- data under the lock ------------------------------------------------------------

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under the lock at ``key``, or ``default``."""
        return self.client.get_data(self.name, key, default)

    def put(self, key: str, value: Any) -> str:
        """Stores ``value`` (JSON) at ``key`` under the lock, as its holder."""
        return self.client.put_data(self.name, key, value, self.ticket)

    def delete(self, key: str) -> None:
        """Deletes ``key`` under the lock, as its holder."""
        self.client.delete_data(self.name, key, self.ticket)

    # -- life -----------------------------------------------------------------------------

    def acquire(self) -> "Lease":
        """Takes the lease (waiting up to ``wait``) and starts renewing it."""
        if self.grant is not None:
            raise RuntimeError("a Lease is taken once; make another with client.lock()")
        deadline = time.monotonic() + self.wait_ms / 1000
        queue = self._acquire_args["queue"]
        if queue is None and self.wait_ms == 0:
            queue = "none"
        args = dict(self._acquire_args, queue=queue)
        ticket: Optional[str] = None
        last: Optional[Place] = None
        while True:
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            sent = time.monotonic()
            try:
                standing = self.client.acquire(
                    self.name,
                    ttl=self._ttl_ms / 1000 if self._ttl_ms is not None else None,
                    wait=left_ms / 1000 if left_ms > 0 else None,
                    ticket=ticket,
                    **args,
                )
            except (ConnectionFailed, ServerError, QueueFull) as e:
                # The server may be restarting, or out of capacity for now: ask again while
                # the wait lasts (with the ticket, if there is one, to keep the place).
                if time.monotonic() >= deadline:
                    raise
                pause = e.retry_after if e.retry_after is not None else ACQUIRE_RETRY_PAUSE_S
                time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
                continue
            if isinstance(standing, Grant):
                self._start(standing, sent)
                return self
            ticket, last = standing.ticket, standing
            if time.monotonic() >= deadline:
                try:
                    self.client.leave(self.name, standing.ticket)
                except LeaseholdError as e:
                    log.debug("could not leave the queue of %s: %s", self.name, e)
                raise LockTimeout(
                    f"the lock {self.name} was not granted within {self.wait_ms} ms",
                    status=202,
                    code="queued",
                    body=last.raw,
                )

    def release(self) -> None:
        """Stops renewing and releases the lease (a lease already lost is left alone)."""
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join()
        with self._state:
            if self.released or self.grant is None:
                return
            self.released = True
        if self.lost.is_set():
            return
        try:
            self.client.release(self.name, self.grant.ticket)
        except LeaseLost:
            pass
        except LeaseholdError as e:
            # The lease then ends with its TTL; the caller's work is done either way.
            log.warning("could not release %s (it ends with its TTL): %s", self.name, e)

    def __enter__(self) -> "Lease":
        return self.acquire()

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "lost" if self.lost.is_set() else "released" if self.released else "held" if self.grant else "new"
        fence = f" fence={self.grant.fence}" if self.grant else ""
        return f"<Lease {self.name}{fence} {state}>"

    # -- the renewer ----------------------------------------------------------------------

    def _held(self) -> Grant:
        if self.grant is None:
            raise RuntimeError("the lease is not acquired yet")
        return self.grant

    def _start(self, grant: Grant, sent: float) -> None:
        if self._ttl_ms is None:
            self._ttl_ms = grant.ttl_ms
        if self._ttl_ms is None or self._ttl_ms <= 0:
            self.grant = grant
            self.release()
            raise LeaseholdError(f"the server granted {self.name} without a TTL: {grant.raw!r}")
        if self._renew_every_ms is None:
            self._renew_every_ms = max(MIN_RENEW_EVERY_MS, self._ttl_ms // 3)
        self.grant = grant
        self._valid_until = sent + self._ttl_ms / 1000
        self._renewer = threading.Thread(
            target=self._renew_loop,
            name=f"leasehold-renew-{self.name}",
            daemon=True,
        )
        self._renewer.start()

    def _renew_loop(self) -> None:
        try:
            self._renew_until_stopped()
        finally:
            self.client.transport.close_thread()

    def _renew_until_stopped(self) -> None:
        assert self.grant is not None and self._ttl_ms is not None and self._renew_every_ms is not None
        interval_s = self._renew_every_ms / 1000
        pause_s = interval_s
        ticket = self.grant.ticket
        while not self._stop.wait(pause_s):
            sent = time.monotonic()
            left_s = self._valid_until - sent
            if left_s <= 0:
                self._lose("not renewed before it ran out")
                return
            try:
                grant = self.client.renew(self.name, ticket, self._ttl_ms / 1000, timeout=max(0.1, left_s))
            except (LeaseLost, NotHolder) as e:
                self._lose(f"the server says {e}")
                return
            except LeaseholdError as e:
                if time.monotonic() >= self._valid_until:
                    self._lose(f"not renewed before it ran out: {e}")
                    return
                log.debug("renewing %s failed, trying again: %s", self.name, e)
                pause_s = max(MIN_RENEW_EVERY_MS / 1000, interval_s / RETRY_FRACTION)
                continue
            if self._stop.is_set():
                return
            self.grant = grant
            self._valid_until = sent + self._ttl_ms / 1000
            pause_s = interval_s

    def _lose(self, reason: str) -> None:
        with self._state:
            if self.lost.is_set() or self.released:
                return
            self.lost_reason = reason
            self.lost.set()
        self._stop.set()
        log.warning("the lease on %s is lost: %s", self.name, reason)
        if self.on_lost is not None:
            try:
                self.on_lost(self)
            except Exception:  # the callback's failure must not kill the renewer silently
                log.exception("on_lost of the lease on %s failed", self.name)
