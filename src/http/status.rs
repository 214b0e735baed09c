//! THE table from outcomes to status codes and JSON bodies. Every error body is
//! `{"error": code, "message": text}` (plus fields that help the client act on it).
//!
//! | code | status | when |
//! |---|---|---|
//! | `bad_request` | 400 | malformed request, body or argument; an ambiguous one (two `Host`, `Content-Length`, `x-api-key` or `Authorization` fields; different keys in `x-api-key` and `Authorization: Bearer`) |
//! | `unauthorized` | 401 | no key, or an unknown key, while keys are configured |
//! | `no_session` | 401 | a waiting room's gate: no valid session cookie (none, forged, expired, another room's, revoked); a room's event stream without a valid token |
//! | `forbidden` | 403 | the key's role or prefix does not allow this; a non-loopback client with no keys configured |
//! | `not_found` | 404 | no such route, lock, data key or resource |
//! | `method_not_allowed` | 405 | the route exists with other methods (`Allow` lists them) |
//! | `request_timeout` | 408 | the request did not arrive within `header_timeout_ms` |
//! | `unavailable` | 409 | try-lock (`queue: "none"`) and the lock is taken; a Small Resource Server `PUT` that could not get the lock within the resource's timeout |
//! | `limit_mismatch` | 409 | the lock has another permit count (or lowered it below a waiter's weight) |
//! | `queue_mismatch` | 409 | the lock has another queue discipline |
//! | `kind_mismatch` | 409 | the lock is of another kind: a semaphore asked with `mode`, or a read/write lock asked with a `limit` or `weight` |
//! | `not_holder` | 409 | the ticket waits in the queue; it does not hold the lock |
//! | `already_exists` | 409 | `POST /resource` for a name that is registered |
//! | `wrong_state` | 409 | an outbox entry's state does not allow it (retrying one that has not failed, deleting one being delivered); deleting a resource whose lock has holders or waiters |
//! | `lease_lost` | 410 | the lease expired or was released, or the ticket is unknown |
//! | `payload_too_large` | 413 | body over `max_body_bytes`, or data over `max_data_bytes` / `max_data_keys` |
//! | `uri_too_long` | 414 | request line over 8 KiB |
//! | `expectation_failed` | 417 | an `Expect` other than `100-continue` |
//! | `queue_full` | 429 | the lock's queue is at `max_waiters_per_lock` (`Retry-After`) |
//! | `header_too_large` | 431 | header section over `max_header_bytes` |
//! | `internal` | 500 | a bug; the message says what |
//! | `not_implemented` | 501 | a transfer coding other than chunked; `CONNECT`; `OPTIONS *` |
//! | `keeper_unavailable` | 503 | the keeper is restarting (`Retry-After`) |
//! | `overloaded` | 503 | the worker is at `max_connections` (`Retry-After`) |
//! | `table_full` | 503 | the table holds `max_locks` locks (`Retry-After`) |
//! | `journal_unavailable` | 503 | the change could not be journaled (disk full, I/O error); nothing changed (`Retry-After`) |
//! | `not_leader` | 503 | cluster mode: this node does not lead, so it changes nothing; `leader` names the URL of the node that leads, when one does (also in the `Leasehold-Leader` header; `Retry-After`) |
//! | `outbox_full` | 503 | the outbox holds `outbox.max_entries` calls (`Retry-After`) |
//! | `tickets_full` | 503 | holders and waiters of all locks together number `locks.max_tickets_total`: no new ticket is issued (`Retry-After`) |
//! | `data_full` | 503 | the write would take the data of all locks together past `locks.max_data_bytes_total`; nothing was written (`Retry-After`) |
//! | `resources_full` | 503 | `locks.max_resources` resources are registered (`Retry-After`) |
//! | `streams_full` | 503 | `locks.max_event_streams` event streams are open (`Retry-After`) |
//!
//! The rule behind the limits: a request or a single lock over its own limit is the
//! client's to fix (413 `payload_too_large`, 429 `queue_full`); a server-wide total that is
//! reached is a capacity the server is out of, shared by every client, so it is a 503 with
//! `Retry-After` and a code of its own (`table_full`, `tickets_full`, `data_full`,
//! `resources_full`, `streams_full`, `outbox_full`).

use serde::Serialize;

use super::parse::HttpError;
use super::response::Response;

/// Seconds a client is told to wait in `Retry-After`.
pub const RETRY_AFTER_S: u32 = 1;

/// Every error code with its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400
    BadRequest,
    /// 401
    Unauthorized,
    /// 401
    NoSession,
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
    KindMismatch,
    /// 409
    NotHolder,
    /// 409
    AlreadyExists,
    /// 409
    WrongState,
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
    /// 503
    JournalUnavailable,
    /// 503
    NotLeader,
    /// 503
    OutboxFull,
    /// 503
    TicketsFull,
    /// 503
    DataFull,
    /// 503
    ResourcesFull,
    /// 503
    StreamsFull,
}

impl ErrorCode {
    /// Every code, in the order of the table above.
    pub const ALL: &'static [ErrorCode] = &[
        Self::BadRequest,
        Self::Unauthorized,
        Self::NoSession,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::Unavailable,
        Self::LimitMismatch,
        Self::QueueMismatch,
        Self::KindMismatch,
        Self::NotHolder,
        Self::AlreadyExists,
        Self::WrongState,
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
        Self::JournalUnavailable,
        Self::NotLeader,
        Self::OutboxFull,
        Self::TicketsFull,
        Self::DataFull,
        Self::ResourcesFull,
        Self::StreamsFull,
    ];

    /// Status code and wire code.
    pub fn parts(self) -> (u16, &'static str) {
        match self {
            Self::BadRequest => (400, "bad_request"),
            Self::Unauthorized => (401, "unauthorized"),
            Self::NoSession => (401, "no_session"),
            Self::Forbidden => (403, "forbidden"),
            Self::NotFound => (404, "not_found"),
            Self::MethodNotAllowed => (405, "method_not_allowed"),
            Self::RequestTimeout => (408, "request_timeout"),
            Self::Unavailable => (409, "unavailable"),
            Self::LimitMismatch => (409, "limit_mismatch"),
            Self::QueueMismatch => (409, "queue_mismatch"),
            Self::KindMismatch => (409, "kind_mismatch"),
            Self::NotHolder => (409, "not_holder"),
            Self::AlreadyExists => (409, "already_exists"),
            Self::WrongState => (409, "wrong_state"),
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
            Self::JournalUnavailable => (503, "journal_unavailable"),
            Self::NotLeader => (503, "not_leader"),
            Self::OutboxFull => (503, "outbox_full"),
            Self::TicketsFull => (503, "tickets_full"),
            Self::DataFull => (503, "data_full"),
            Self::ResourcesFull => (503, "resources_full"),
            Self::StreamsFull => (503, "streams_full"),
        }
    }

    fn retry_after(self) -> bool {
        matches!(
            self,
            Self::QueueFull
                | Self::KeeperUnavailable
                | Self::Overloaded
                | Self::TableFull
                | Self::JournalUnavailable
                | Self::NotLeader
                | Self::OutboxFull
                | Self::TicketsFull
                | Self::DataFull
                | Self::ResourcesFull
                | Self::StreamsFull
        )
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

/// An error response with extra fields beside `error` and `message`.
pub fn error_with<X: Serialize>(code: ErrorCode, message: &str, extra: X) -> Response {
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

/// A change asked of a node that does not lead (cluster mode, docs/cluster.md "Clients"):
/// 503 `not_leader` with `Retry-After`, and the leader's URL, when one leads, in `leader`
/// and in the `Leasehold-Leader` header, where a client sends the request again.
pub fn not_leader(leader: Option<&str>) -> Response {
    #[derive(Serialize)]
    struct Leader<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        leader: Option<&'a str>,
    }
    let message = match leader {
        Some(_) => "this node does not lead the cluster; send the request to the leader",
        None => "no node leads the cluster now; retry",
    };
    let response = error_with(ErrorCode::NotLeader, message, Leader { leader });
    match leader {
        Some(url) => response.with_header("Leasehold-Leader", url.to_string()),
        None => response,
    }
}

/// A whole error response with `Connection: close`, for writing straight to a socket that
/// is refused before any request is read.
pub fn canned(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    error(code, message).encode(true, &mut out);
    out
}

/// The whole answer to a connection a worker refuses at `server.max_connections`.
pub fn at_connection_limit() -> Vec<u8> {
    canned(ErrorCode::Overloaded, "this worker is at its connection limit")
}

/// The whole answer to a plain HTTP request sent to a TLS listener (`tls.listen`), in
/// clear, before the connection is closed.
pub fn plain_http_on_tls() -> Vec<u8> {
    canned(ErrorCode::BadRequest, "this port speaks TLS: use https://")
}

/// The whole answer to a connection the master cannot hand to any worker (fd-passing
/// mode: every worker's hand-off socket is full, or no worker is ready).
pub fn no_worker_free() -> Vec<u8> {
    canned(ErrorCode::Overloaded, "no worker can take this connection")
}

/// A request for the keeper while the worker has no keeper channel (the keeper is
/// restarting; the worker has asked the master for a new channel).
pub fn keeper_restarting() -> Response {
    error(ErrorCode::KeeperUnavailable, "the keeper is restarting; retry")
}

/// A request whose sending to the keeper failed: the channel is lost, and nothing was sent.
pub fn keeper_unreachable() -> Response {
    error(ErrorCode::KeeperUnavailable, "the keeper is not reachable; retry")
}

/// A request in flight when its keeper channel was replaced by a newer one.
pub fn keeper_replaced_in_flight() -> Response {
    error(ErrorCode::KeeperUnavailable, "the keeper channel was replaced while this request was in flight")
}

/// A request in flight when the keeper channel was lost: whether it took effect is unknown.
pub fn keeper_lost_in_flight() -> Response {
    error(ErrorCode::KeeperUnavailable, "the keeper restarted while this request was in flight; its effect is unknown")
}

/// A request whose operation does not fit in one frame to the keeper. Nothing was sent, so
/// the channel stays good for every other request.
pub fn too_large_for_keeper() -> Response {
    error(ErrorCode::PayloadTooLarge, "the request is too large to pass to the keeper")
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn keeper_troubles_are_503_keeper_unavailable_with_retry_after_except_a_request_too_large() {
        for r in [keeper_restarting(), keeper_unreachable(), keeper_replaced_in_flight(), keeper_lost_in_flight()] {
            assert_eq!((r.status, body(&r)["error"].as_str()), (503, Some("keeper_unavailable")), "{r:?}");
            assert!(r.headers.contains(&("Retry-After", "1".into())), "{r:?}");
        }
        // The client's to fix, and nothing to wait for: no Retry-After.
        let r = too_large_for_keeper();
        assert_eq!((r.status, body(&r)["error"].as_str()), (413, Some("payload_too_large")));
        assert!(r.headers.is_empty(), "{r:?}");
    }

    #[test]
    fn not_leader_names_the_leader_in_the_body_and_a_header_when_one_leads() {
        let r = not_leader(Some("http://node-b:8080"));
        assert_eq!((r.status, body(&r)["error"].as_str()), (503, Some("not_leader")));
        assert_eq!(body(&r)["leader"], "http://node-b:8080");
        assert!(r.headers.contains(&("Leasehold-Leader", "http://node-b:8080".into())), "{r:?}");
        assert!(r.headers.contains(&("Retry-After", "1".into())), "{r:?}");
        let r = not_leader(None);
        assert!(body(&r).get("leader").is_none(), "{r:?}");
        assert!(!r.headers.iter().any(|(h, _)| *h == "Leasehold-Leader"), "{r:?}");
    }

    #[test]
    fn at_connection_limit_and_no_worker_free_are_whole_503s_overloaded_that_close() {
        for bytes in [at_connection_limit(), no_worker_free()] {
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
            assert!(text.contains("\r\nConnection: close\r\n") && text.contains("\r\nRetry-After: 1\r\n"), "{text}");
            assert!(text.ends_with("}") && text.contains("\"error\":\"overloaded\""), "{text}");
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
}
