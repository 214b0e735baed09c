//! THE table from outcomes to status codes and JSON bodies. Every error body is
//! `{"error": code, "message": text}` (plus fields that help the client act on it).
//!
//! | code | status | when |
//! |---|---|---|
//! | `bad_request` | 400 | malformed request, body or argument |
//! | `unauthorized` | 401 | no key, or an unknown key, while keys are configured |
//! | `forbidden` | 403 | the key's role or prefix does not allow this; a non-loopback client with no keys configured |
//! | `not_found` | 404 | no such route |
//! | `method_not_allowed` | 405 | the route exists with other methods (`Allow` lists them) |
//! | `request_timeout` | 408 | the request did not arrive within `header_timeout_ms` |
//! | `unavailable` | 409 | try-lock (`queue: "none"`) and the lock is taken |
//! | `limit_mismatch` | 409 | the lock has another permit count |
//! | `queue_mismatch` | 409 | the lock has another queue discipline |
//! | `not_holder` | 409 | the ticket waits in the queue; it does not hold the lock |
//! | `lease_lost` | 410 | the lease expired or was released, or the ticket is unknown |
//! | `payload_too_large` | 413 | body over `max_body_bytes` |
//! | `uri_too_long` | 414 | request line over 8 KiB |
//! | `expectation_failed` | 417 | an `Expect` other than `100-continue` |
//! | `queue_full` | 429 | the lock's queue is at `max_waiters_per_lock` (`Retry-After`) |
//! | `header_too_large` | 431 | header section over `max_header_bytes` |
//! | `internal` | 500 | a bug; the message says what |
//! | `not_implemented` | 501 | a transfer coding other than chunked |
//! | `keeper_unavailable` | 503 | the keeper is restarting (`Retry-After`) |
//! | `overloaded` | 503 | the worker is at `max_connections` (`Retry-After`) |
//! | `table_full` | 503 | the table holds `max_locks` locks (`Retry-After`) |

use serde::Serialize;

use super::parse::HttpError;
use super::response::Response;
use crate::core::names::Ticket;
use crate::ipc::message::LockReply;

/// Seconds a client is told to wait in `Retry-After`.
pub const RETRY_AFTER_S: u32 = 1;

/// Every error code with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400
    BadRequest,
    /// 401
    Unauthorized,
    /// 403
    Forbidden,
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
    /// 408
    RequestTimeout,
    /// 409
    Unavailable,
    /// 409
    LimitMismatch,
    /// 409
    QueueMismatch,
    /// 409
    NotHolder,
    /// 410
    LeaseLost,
    /// 413
    PayloadTooLarge,
    /// 414
    UriTooLong,
    /// 417
    ExpectationFailed,
    /// 429
    QueueFull,
    /// 431
    HeaderTooLarge,
    /// 500
    Internal,
    /// 501
    NotImplemented,
    /// 503
    KeeperUnavailable,
    /// 503
    Overloaded,
    /// 503
    TableFull,
}

impl ErrorCode {
    /// Every code, in the order of the table above.
    pub const ALL: &'static [ErrorCode] = &[
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::Unavailable,
        Self::LimitMismatch,
        Self::QueueMismatch,
        Self::NotHolder,
        Self::LeaseLost,
        Self::PayloadTooLarge,
        Self::UriTooLong,
        Self::ExpectationFailed,
        Self::QueueFull,
        Self::HeaderTooLarge,
        Self::Internal,
        Self::NotImplemented,
        Self::KeeperUnavailable,
        Self::Overloaded,
        Self::TableFull,
    ];

    /// Status code and wire code.
    pub fn parts(self) -> (u16, &'static str) {
        match self {
            Self::BadRequest => (400, "bad_request"),
            Self::Unauthorized => (401, "unauthorized"),
            Self::Forbidden => (403, "forbidden"),
            Self::NotFound => (404, "not_found"),
            Self::MethodNotAllowed => (405, "method_not_allowed"),
            Self::RequestTimeout => (408, "request_timeout"),
            Self::Unavailable => (409, "unavailable"),
            Self::LimitMismatch => (409, "limit_mismatch"),
            Self::QueueMismatch => (409, "queue_mismatch"),
            Self::NotHolder => (409, "not_holder"),
            Self::LeaseLost => (410, "lease_lost"),
            Self::PayloadTooLarge => (413, "payload_too_large"),
            Self::UriTooLong => (414, "uri_too_long"),
            Self::ExpectationFailed => (417, "expectation_failed"),
            Self::QueueFull => (429, "queue_full"),
            Self::HeaderTooLarge => (431, "header_too_large"),
            Self::Internal => (500, "internal"),
            Self::NotImplemented => (501, "not_implemented"),
            Self::KeeperUnavailable => (503, "keeper_unavailable"),
            Self::Overloaded => (503, "overloaded"),
            Self::TableFull => (503, "table_full"),
        }
    }

    fn retry_after(self) -> bool {
        matches!(self, Self::QueueFull | Self::KeeperUnavailable | Self::Overloaded | Self::TableFull)
    }
}

#[derive(Serialize)]
struct ErrorBody<'a, X: Serialize> {
    error: &'a str,
    message: &'a str,
    #[serde(flatten)]
    extra: X,
}

#[derive(Serialize)]
struct NoExtra {}

fn error_with<X: Serialize>(code: ErrorCode, message: &str, extra: X) -> Response {
    let (status, wire) = code.parts();
    let response = Response::json(status, &ErrorBody { error: wire, message, extra });
    if code.retry_after() {
        response.with_header("Retry-After", RETRY_AFTER_S.to_string())
    } else {
        response
    }
}

/// An error response.
pub fn error(code: ErrorCode, message: &str) -> Response {
    error_with(code, message, NoExtra {})
}

/// A whole error response with `Connection: close`, for writing straight to a socket that
/// is refused before any request is read.
pub fn canned(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    error(code, message).encode(true, &mut out);
    out
}

/// The response to a request the parser refused.
pub fn http_error(e: &HttpError) -> Response {
    let code = match e {
        HttpError::BadRequest(_) => ErrorCode::BadRequest,
        HttpError::HeaderTooLarge => ErrorCode::HeaderTooLarge,
        HttpError::UriTooLong => ErrorCode::UriTooLong,
        HttpError::BodyTooLarge { .. } => ErrorCode::PayloadTooLarge,
        HttpError::NotImplemented(_) => ErrorCode::NotImplemented,
        HttpError::ExpectationFailed => ErrorCode::ExpectationFailed,
    };
    error(code, &e.to_string())
}

/// Which lock operation a reply answers (the same reply reads differently for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockAction {
    /// acquire
    Acquire,
    /// renew
    Renew,
    /// release
    Release,
}

#[derive(Serialize)]
struct Acquired<'a> {
    status: &'static str,
    lock: &'a str,
    ticket: Ticket,
    fence: u64,
    owner: Option<&'a str>,
    weight: u32,
    expires_at_ms: u64,
}

#[derive(Serialize)]
struct Queued<'a> {
    status: &'static str,
    lock: &'a str,
    ticket: Ticket,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u32>,
    queue_length: u32,
}

#[derive(Serialize)]
struct Released<'a> {
    status: &'static str,
    lock: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fence: Option<u64>,
}

/// The HTTP response to the keeper's `reply` to `action` on lock `lock`.
pub fn lock_reply(action: LockAction, lock: &str, reply: &LockReply) -> Response {
    match reply {
        LockReply::Held(lease) => Response::json(
            200,
            &Acquired {
                status: if action == LockAction::Renew { "renewed" } else { "acquired" },
                lock,
                ticket: lease.ticket,
                fence: lease.fence,
                owner: lease.owner.as_ref().map(|o| o.as_str()),
                weight: lease.weight,
                expires_at_ms: lease.expires_at_ms,
            },
        ),
        LockReply::Queued(q) if action == LockAction::Acquire => Response::json(
            202,
            &Queued { status: "queued", lock, ticket: q.ticket, position: q.position, queue_length: q.queue_length },
        ),
        LockReply::Queued(q) | LockReply::NotHolder(q) => {
            #[derive(Serialize)]
            struct Place {
                #[serde(skip_serializing_if = "Option::is_none")]
                position: Option<u32>,
                queue_length: u32,
            }
            error_with(
                ErrorCode::NotHolder,
                "this ticket is waiting in the queue; it does not hold the lock",
                Place { position: q.position, queue_length: q.queue_length },
            )
        }
        LockReply::Released { fence } => Response::json(200, &Released { status: "released", lock, fence: Some(*fence) }),
        LockReply::Left => Response::json(200, &Released { status: "left", lock, fence: None }),
        LockReply::Unavailable { used, limit, queue_length } => {
            #[derive(Serialize)]
            struct Busy {
                used: u32,
                limit: u32,
                queue_length: u32,
            }
            error_with(
                ErrorCode::Unavailable,
                "the lock is taken",
                Busy { used: *used, limit: *limit, queue_length: *queue_length },
            )
        }
        LockReply::LimitMismatch { limit } => {
            #[derive(Serialize)]
            struct Limit {
                limit: u32,
            }
            error_with(
                ErrorCode::LimitMismatch,
                &format!("the lock has {limit} permits; ask with the same limit"),
                Limit { limit: *limit },
            )
        }
        LockReply::QueueMismatch { queue } => {
            let kind = serde_json::to_string(queue).unwrap_or_default();
            error(ErrorCode::QueueMismatch, &format!("the lock's queue is {kind}; ask with the same queue"))
        }
        LockReply::QueueFull { max_waiters } => {
            error(ErrorCode::QueueFull, &format!("the lock's queue is full ({max_waiters} waiters)"))
        }
        LockReply::TableFull { max_locks } => {
            error(ErrorCode::TableFull, &format!("the server holds its maximum of {max_locks} locks"))
        }
        LockReply::TicketUnknown => error(
            ErrorCode::LeaseLost,
            "no lease or place in the queue for this ticket: it expired, was released, or was never issued for this lock",
        ),
        LockReply::LockUnknown => error(ErrorCode::NotFound, "no such lock"),
        LockReply::Rejected { message } => error(ErrorCode::BadRequest, message),
        LockReply::Failed { message } => error(ErrorCode::Internal, message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lock::{LeaseView, QueueView};

    fn body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn every_error_has_a_json_body_with_code_and_message() {
        for &code in ErrorCode::ALL {
            let r = error(code, "why");
            let (status, wire) = code.parts();
            assert_eq!(r.status, status);
            assert_eq!(body(&r), serde_json::json!({"error": wire, "message": "why"}));
            assert_eq!(r.headers.iter().any(|(h, _)| *h == "Retry-After"), code.retry_after());
        }
    }

    #[test]
    fn module_docs_list_every_code() {
        let docs = include_str!("status.rs");
        for &code in ErrorCode::ALL {
            let (status, wire) = code.parts();
            assert!(docs.contains(&format!("//! | `{wire}` | {status} |")), "{wire} is not documented");
        }
    }

    #[test]
    fn replies_map_to_their_statuses() {
        let ticket = Ticket::from_bytes([1; 16]);
        let lease = LeaseView { ticket, fence: 9, owner: None, weight: 1, expires_at_ms: 100, claimed: true };
        let place = QueueView { ticket, position: Some(2), queue_length: 3 };
        let held = lock_reply(LockAction::Acquire, "a", &LockReply::Held(lease.clone()));
        assert_eq!(held.status, 200);
        assert_eq!(body(&held)["status"], "acquired");
        assert_eq!(body(&held)["fence"], 9);
        assert_eq!(body(&lock_reply(LockAction::Renew, "a", &LockReply::Held(lease)))["status"], "renewed");
        let queued = lock_reply(LockAction::Acquire, "a", &LockReply::Queued(place.clone()));
        assert_eq!((queued.status, body(&queued)["position"].as_u64()), (202, Some(2)));
        assert_eq!(lock_reply(LockAction::Renew, "a", &LockReply::NotHolder(place)).status, 409);
        assert_eq!(lock_reply(LockAction::Release, "a", &LockReply::TicketUnknown).status, 410);
        let busy = lock_reply(LockAction::Acquire, "a", &LockReply::Unavailable { used: 1, limit: 1, queue_length: 0 });
        assert_eq!((busy.status, body(&busy)["error"].as_str()), (409, Some("unavailable")));
        assert_eq!(body(&busy)["limit"], 1);
        assert_eq!(lock_reply(LockAction::Release, "a", &LockReply::Released { fence: 3 }).status, 200);
    }
}
