"""The client's one exception hierarchy.

Every failure is a :class:`LeaseholdError`. An error answer of the server (docs/api.md,
"Errors": ``{"error": CODE, "message": TEXT}`` plus fields to act on) becomes the subclass
for its code, or for its status when the code is one this client does not know, carrying
``status``, ``code``, ``message``, ``retry_after`` (seconds, from ``Retry-After``) and the
whole JSON ``body``. A failure to reach the server at all is :class:`ConnectionFailed`
(``status`` is ``None``).
"""

from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional, Type

__all__ = [
    "LeaseholdError",
    "ConnectionFailed",
    "BadRequest",
    "Unauthorized",
    "Forbidden",
    "NotFound",
    "MethodNotAllowed",
    "Conflict",
    "NotAcquired",
    "LockTimeout",
    "LimitMismatch",
    "QueueMismatch",
    "KindMismatch",
    "NotHolder",
    "WrongState",
    "LeaseLost",
    "PayloadTooLarge",
    "QueueFull",
    "ServerError",
    "Unavailable",
    "error_from_answer",
]


class LeaseholdError(Exception):
    """Any failure of a call to leasehold.

    ``status`` is the HTTP status (``None`` when no answer came), ``code`` the error code of
    the JSON body (``None`` without one), ``message`` its text, ``retry_after`` the seconds
    of a ``Retry-After`` header (``None`` without one) and ``body`` the decoded JSON body
    (empty without one).
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        code: Optional[str] = None,
        retry_after: Optional[float] = None,
        body: Optional[Mapping[str, Any]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.retry_after = retry_after
        self.body: Dict[str, Any] = dict(body or {})

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        code = f" {self.code}" if self.code else ""
        return f"{self.status}{code}: {self.message}"


class ConnectionFailed(LeaseholdError):
    """The server could not be reached, or the connection broke before an answer came."""


class BadRequest(LeaseholdError):
    """400 ``bad_request``: a malformed request, or a value out of its bounds."""


class Unauthorized(LeaseholdError):
    """401: no API key, or one the server does not know."""


class Forbidden(LeaseholdError):
    """403 ``forbidden``: the key's role or name prefix does not allow this call."""


class NotFound(LeaseholdError):
    """404 ``not_found``: no such lock, data key, outbox entry or route."""


class MethodNotAllowed(LeaseholdError):
    """405 ``method_not_allowed``."""


class Conflict(LeaseholdError):
    """409: the request conflicts with the lock's or the entry's state."""


class NotAcquired(Conflict):
    """The lock could not be had: a try-lock found it taken (409 ``unavailable``).

    Also the base of :class:`LockTimeout`, so one ``except NotAcquired`` covers both.
    """


class LockTimeout(NotAcquired):
    """The wait in the queue ran out before the lock was granted.

    Raised by the client itself (``status`` 202, ``code`` ``"queued"``), with the last
    place in line in ``body`` (``position``, ``queue_length``, ``eta_ms``).
    """


class LimitMismatch(Conflict):
    """409 ``limit_mismatch``: the lock has another permit count (``body["limit"]``)."""


class QueueMismatch(Conflict):
    """409 ``queue_mismatch``: the lock has another queue kind."""


class KindMismatch(Conflict):
    """409 ``kind_mismatch``: a semaphore asked as a read/write lock, or the reverse."""


class NotHolder(Conflict):
    """409 ``not_holder``: the ticket waits in the queue; it does not hold the lock."""


class WrongState(Conflict):
    """409 ``wrong_state``: an outbox entry's state does not allow the call."""


class LeaseLost(LeaseholdError):
    """The lease is gone: 410 ``lease_lost`` (expired, released, or an unknown ticket).

    :meth:`leasehold.Lease.check` raises it too once the lease is known lost.
    """


class PayloadTooLarge(LeaseholdError):
    """413 ``payload_too_large``."""


class QueueFull(LeaseholdError):
    """429 ``queue_full``: the lock's queue is full (``retry_after`` says when to retry)."""


class ServerError(LeaseholdError):
    """A 5xx answer."""


class Unavailable(ServerError):
    """503: the server is out of some capacity for now, or its keeper is restarting.

    ``code`` says which (``keeper_unavailable``, ``overloaded``, ``table_full``, …);
    ``retry_after`` says when to ask again.
    """


_BY_CODE: Dict[str, Type[LeaseholdError]] = {
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "no_session": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "method_not_allowed": MethodNotAllowed,
    "unavailable": NotAcquired,
    "limit_mismatch": LimitMismatch,
    "queue_mismatch": QueueMismatch,
    "kind_mismatch": KindMismatch,
    "not_holder": NotHolder,
    "wrong_state": WrongState,
    "lease_lost": LeaseLost,
    "payload_too_large": PayloadTooLarge,
    "queue_full": QueueFull,
}

_BY_STATUS: Dict[int, Type[LeaseholdError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    409: Conflict,
    410: LeaseLost,
    413: PayloadTooLarge,
    429: QueueFull,
    503: Unavailable,
}


def error_from_answer(
    status: int, body: bytes, retry_after: Optional[float]
) -> LeaseholdError:
    """The exception for an error answer: its status, its raw body, its ``Retry-After``."""
    decoded: Dict[str, Any] = {}
    try:
        value = json.loads(body.decode("utf-8")) if body else None
        if isinstance(value, dict):
            decoded = value
    except (UnicodeDecodeError, ValueError):
        pass
    code = decoded.get("error")
    code = code if isinstance(code, str) else None
    message = decoded.get("message")
    if not isinstance(message, str):
        text = body.decode("utf-8", "replace").strip()
        message = text[:200] if text else f"HTTP {status}"
    cls = _BY_CODE.get(code or "")
    if cls is None:
        cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else LeaseholdError
    return cls(message, status=status, code=code, retry_after=retry_after, body=decoded)
