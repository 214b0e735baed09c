"""leasehold: a client for the leasehold lock server, standard library only.

    import leasehold

    client = leasehold.Client("http://127.0.0.1:8080", api_key="...")
    with client.lock("nightly-report", ttl="30s", wait="1m") as lease:
        for step in work:
            lease.check()          # raises LeaseLost once the lease is gone
            step(fence=lease.fence)

The lease is renewed in the background and released at the block's end. The rest of the
API (semaphores, read/write locks, queue positions, events, data under a lock, the outbox)
is one method per route on :class:`Client`; docs/api.md in the server's repository is the
reference.
"""

from .client import MISSING, Client
from .duration import Duration, parse_ms
from .errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    KindMismatch,
    LeaseholdError,
    LeaseLost,
    LimitMismatch,
    LockTimeout,
    MethodNotAllowed,
    NotAcquired,
    NotFound,
    NotHolder,
    PayloadTooLarge,
    QueueFull,
    QueueMismatch,
    ServerError,
    Unauthorized,
    Unavailable,
    WrongState,
)
from .events import EventStream
from .lease import Lease
from .models import Event, Grant, Page, Place, Standing

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Lease",
    "Grant",
    "Place",
    "Standing",
    "Event",
    "EventStream",
    "Page",
    "Duration",
    "parse_ms",
    "MISSING",
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
]
