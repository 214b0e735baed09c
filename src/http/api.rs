//! The HTTP API, pure: what each route asks of the keeper, and what each answer looks like
//! on the wire. [`plan`] turns a request into an immediate response or a keeper operation
//! (with the [`Finish`] that shapes its answer); [`finish`] turns the keeper's reply into
//! the response. Event streams are framed here too ([`sse_event`]).
//!
//! Native answers are JSON objects with a `status` (`acquired`, `queued`, `renewed`,
//! `released`, `left`, …); errors come from the one table in [`super::status`]. The Small
//! Resource Server routes answer exactly as its PHP client expects (`X-Ticket`, `data` as a
//! JSON string, 202 `{"unavailable":true}`, `{"locked":bool}`, `{"unlocked":true}`), with
//! the deliberate fixes the README lists under "Small Resource Server compatibility".

use serde::{Deserialize, Serialize};

use super::auth::Grant;
use super::parse::{Method, Request};
use super::response::{Response, EVENT_STREAM};
use super::route::{compat_locks, query_param, RouteDef, RouteId};
use super::status::{error, ErrorCode};
use crate::config::Role;
use crate::core::lock::{LeaseView, LockKind, LockMode, QueueMode};
use crate::core::names::CallbackUrl;
use crate::core::names::{DataKey, LockName, Owner, Ticket, UserId};
use crate::core::outbox::Call;
use crate::core::target::{parse_target, TargetPolicy};
use crate::ipc::message::{
    Budget, ClusterStatus, LockInfo, LockOp, LockReply, OutboxRefusal, RejectKind, Then, TicketEvent,
};
use crate::service::resources::row_id;
use crate::version;

/// The header that carries a Small Resource Server ticket, spelled as its client reads it.
pub const X_TICKET: &str = "X-Ticket";
/// Default page size of `GET /v1/locks`.
pub const DEFAULT_LIST_LIMIT: u32 = 100;
/// Largest `Last-Event-ID` a stream continues from: 2^53 - 1, the largest integer every
/// JSON and JavaScript client reads exactly, and far enough from `u64::MAX` that the ids
/// after it never overflow. A larger id, or one that is not a decimal number, is ignored
/// (the stream starts again at 1), as an unusable `Last-Event-ID` usually is.
pub const MAX_LAST_EVENT_ID: u64 = (1 << 53) - 1;

/// The OpenAPI 3.1 document of the native API, as committed (docs/openapi.json), answered
/// by `GET /v1/openapi.json`. Embedded at build time: the binary describes itself.
pub const OPENAPI_JSON: &str = include_str!("../../docs/openapi.json");

/// Settings the API needs from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiSettings {
    /// TTL of Small Resource Server locks.
    pub compat_lease_ttl_ms: u64,
    /// Which URLs the outbox and lock callbacks may call.
    pub targets: TargetPolicy,
}

/// Methods an outbox call may use.
const OUTBOX_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE"];
/// Headers an outbox call may not set (the courier sets them, or they frame the message).
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "idempotency-key",
    "x-leasehold-signature",
    "x-leasehold-timestamp",
];
/// Most headers on one outbox call.
const MAX_OUTBOX_HEADERS: usize = 32;

/// What a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Answer now.
    Now(Response),
    /// Ask the keeper; shape its answer with `finish`. `waits`: the keeper may hold the
    /// answer (cancel it if the client goes).
    Ask {
        /// The operation.
        op: LockOp,
        /// How to answer.
        finish: Finish,
        /// The keeper may answer late.
        waits: bool,
    },
    /// Open an event stream for a ticket.
    Stream {
        /// The lock.
        lock: LockName,
        /// The ticket.
        ticket: Ticket,
        /// The id of the first event (after `Last-Event-ID`).
        first_event_id: u64,
    },
    /// Gather the metrics (from the master; answered with [`metrics_page`]).
    Metrics,
    /// Say whether this worker is ready (only the worker knows: answered with [`readiness`]).
    Ready,
    /// The dashboard page (the worker knows whether keys are needed: answered with
    /// [`super::browser::ui_page`]).
    UiPage,
    /// Open a dashboard stream (the worker bounds them: [`super::browser`]).
    UiEvents,
}

/// How to shape the keeper's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// `POST …/acquire`.
    Acquire(LockName),
    /// `POST …/renew`.
    Renew(LockName),
    /// `POST …/release` and `DELETE …/tickets/{ticket}`.
    Release(LockName),
    /// `GET …/tickets/{ticket}`.
    TicketStatus(LockName),
    /// `HEAD …/events`: the stream's head if the ticket is known, without a stream.
    EventsHead(LockName),
    /// `GET /v1/locks/{name}`.
    LockStatus,
    /// `GET /v1/locks`.
    LockList,
    /// `GET …/data/{key}`.
    DataGet,
    /// `PUT …/data/{key}`.
    DataPut,
    /// `DELETE …/data/{key}`.
    DataDelete,
    /// `POST /resource`.
    CompatCreate,
    /// `GET /resource/{name}/{selector}`.
    CompatGet(DataKey),
    /// `PUT /resource/{name}/{selector}/lock`.
    CompatLock,
    /// `PUT /resource/{name}/{selector}`.
    CompatPut,
    /// `PUT|POST /resource/{name}/{selector}/unlock`.
    CompatUnlock,
    /// `DELETE /resource/{name}`.
    ResourceDelete,
    /// `POST /v1/outbox`.
    OutboxPut,
    /// `GET /v1/outbox`, `GET /v1/outbox/{id}`.
    OutboxRead,
    /// `POST /v1/outbox/{id}/retry`.
    OutboxRetry,
    /// `DELETE /v1/outbox/{id}`.
    OutboxDelete,
    /// A waiting room's route (shaped by [`super::rooms::finish`]).
    Room(Box<super::rooms::RoomFinish>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboxBody {
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
    /// A string is sent as it is; any other JSON value is sent as its JSON text.
    body: Option<serde_json::Value>,
    max_attempts: Option<u32>,
    not_before_ms: Option<u64>,
}

/// Checks an outbox call and turns it into the keeper's form.
fn outbox_call(b: OutboxBody, targets: &TargetPolicy) -> Result<(Call, Option<u32>, Option<u64>), Response> {
    // Stored as the one parser wrote it: what was checked is what is called.
    let url = parse_target(&b.url, targets).map_err(bad)?.as_str().to_string();
    let method = b.method.unwrap_or_else(|| "POST".into()).to_ascii_uppercase();
    if !OUTBOX_METHODS.contains(&method.as_str()) {
        return Err(bad(format!("method must be one of {}", OUTBOX_METHODS.join(", "))));
    }
    if b.headers.len() > MAX_OUTBOX_HEADERS {
        return Err(bad(format!("at most {MAX_OUTBOX_HEADERS} headers")));
    }
    for (name, value) in &b.headers {
        let token =
            !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c));
        // Values: visible ASCII, spaces and tabs (no line breaks to smuggle headers in).
        if !token || !value.bytes().all(|c| c == b'\t' || (b' '..=b'~').contains(&c)) {
            return Err(bad(format!("header {name:?} is not a valid header")));
        }
        if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            return Err(bad(format!("header {name} is set by the server")));
        }
    }
    let body = match b.body {
        None => String::new(),
        Some(serde_json::Value::String(text)) => text,
        Some(value) => value.to_string(),
    };
    let call = Call { method, url, headers: b.headers.into_iter().collect(), body };
    Ok((call, b.max_attempts, b.not_before_ms))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    owner: Option<String>,
    ttl_ms: Option<u64>,
    limit: Option<u32>,
    weight: Option<u32>,
    queue: Option<QueueMode>,
    wait_ms: Option<u64>,
    ticket: Option<String>,
    callback: Option<String>,
    mode: Option<LockMode>,
    user: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RenewBody {
    ticket: String,
    ttl_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReleaseBody {
    ticket: String,
}

#[derive(Deserialize)]
struct CreateBody {
    name: Option<String>,
    timeout: Option<i64>,
}

fn bad(e: impl std::fmt::Display) -> Response {
    error(ErrorCode::BadRequest, &e.to_string())
}

/// Parses a JSON body; an empty body is `{}`.
fn json_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Response> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) { b"{}" } else { body };
    serde_json::from_slice(body).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// Checks that a body is one JSON document; returns its text without surrounding space.
fn json_document(body: &[u8]) -> Result<String, Response> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let text = std::str::from_utf8(body).map_err(bad)?;
    Ok(text.trim().to_string())
}

fn ticket_from(text: &str) -> Result<Ticket, Response> {
    Ticket::parse(text).map_err(bad)
}

/// The ticket in `x-ticket`, if any (a malformed one is refused).
fn header_ticket(req: &Request) -> Result<Option<Ticket>, Response> {
    match req.ticket.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(t) => ticket_from(t).map(Some),
    }
}

fn ask(op: LockOp, finish: Finish) -> Plan {
    Plan::Ask { op, finish, waits: false }
}

/// Decides what a routed, authorised request needs. `params` are the route's decoded path
/// parameters, `query` its query string, `grant` what the caller may do (the name prefix
/// its key is limited to, "" for any, and its role).
pub fn plan(def: &RouteDef, params: &[String], query: &str, req: &Request, s: &ApiSettings, grant: Grant<'_>) -> Plan {
    match plan_inner(def, params, query, req, s, grant) {
        Ok(plan) => plan,
        Err(response) => Plan::Now(response),
    }
}

fn param(params: &[String], i: usize) -> &str {
    params.get(i).map_or("", String::as_str)
}

fn plan_inner(
    def: &RouteDef,
    params: &[String],
    query: &str,
    req: &Request,
    s: &ApiSettings,
    grant: Grant<'_>,
) -> Result<Plan, Response> {
    let scope = grant.prefix;
    // Outbox headers, bodies and queries may carry credentials or a lease's ticket: only
    // the write role sees them.
    let redact = grant.role < Role::Write;
    let lock = || LockName::parse(param(params, 0)).map_err(bad);
    let key = || DataKey::parse(param(params, 1)).map_err(bad);
    Ok(match def.id {
        RouteId::Healthz => Plan::Now(Response::json(
            200,
            &serde_json::json!({"status": "ok", "version": version::VERSION, "build": version::build()}),
        )),
        RouteId::CompatHealth => Plan::Now(Response::json(200, &serde_json::json!({"heath": "ok"}))),
        RouteId::Readyz => Plan::Ready,
        RouteId::Metrics => Plan::Metrics,
        RouteId::OpenApi => Plan::Now(Response::text(200, "application/json", OPENAPI_JSON.to_string())),
        RouteId::Ui => Plan::UiPage,
        // It shows every lock: a key limited to a prefix would see other tenants' names.
        RouteId::UiEvents if !scope.is_empty() => {
            return Err(error(ErrorCode::Forbidden, "the dashboard shows every lock: it needs a key without a prefix"))
        }
        // HEAD: the stream's head, without a stream.
        RouteId::UiEvents if req.method == Method::Head => Plan::Now(stream_head()),
        RouteId::UiEvents => Plan::UiEvents,
        RouteId::Acquire => {
            let lock = lock()?;
            let b: AcquireBody = json_body(&req.body)?;
            let wait_ms = b.wait_ms.unwrap_or(0);
            let op = LockOp::Acquire {
                lock: lock.clone(),
                ticket: b.ticket.as_deref().map(ticket_from).transpose()?,
                owner: b.owner.as_deref().map(Owner::parse).transpose().map_err(bad)?,
                ttl_ms: b.ttl_ms,
                limit: b.limit,
                weight: b.weight.unwrap_or(1),
                queue: b.queue,
                wait_ms,
                then: Then::Hold,
                compat: false,
                callback: match b.callback.as_deref() {
                    None => None,
                    // Stored as the one parser wrote it: what was checked is what is called.
                    Some(url) => {
                        Some(CallbackUrl::parse(parse_target(url, &s.targets).map_err(bad)?.as_str()).map_err(bad)?)
                    }
                },
                mode: b.mode,
                user: b.user.as_deref().map(UserId::parse).transpose().map_err(bad)?,
            };
            Plan::Ask { op, finish: Finish::Acquire(lock), waits: wait_ms > 0 }
        }
        RouteId::Renew => {
            let lock = lock()?;
            let b: RenewBody = json_body(&req.body)?;
            let op = LockOp::Renew { lock: lock.clone(), ticket: ticket_from(&b.ticket)?, ttl_ms: b.ttl_ms };
            ask(op, Finish::Renew(lock))
        }
        RouteId::Release => {
            let lock = lock()?;
            let b: ReleaseBody = json_body(&req.body)?;
            ask(LockOp::Release { lock: lock.clone(), ticket: ticket_from(&b.ticket)? }, Finish::Release(lock))
        }
        RouteId::TicketStatus => {
            let lock = lock()?;
            let ticket = ticket_from(param(params, 1))?;
            ask(LockOp::Touch { lock: lock.clone(), ticket }, Finish::TicketStatus(lock))
        }
        RouteId::TicketLeave => {
            let lock = lock()?;
            let ticket = ticket_from(param(params, 1))?;
            ask(LockOp::Release { lock: lock.clone(), ticket }, Finish::Release(lock))
        }
        RouteId::Events => {
            let lock = lock()?;
            let text = query_param(query, "ticket").ok_or_else(|| bad("events need ?ticket=<your ticket>"))?;
            let ticket = ticket_from(&text)?;
            if req.method == Method::Head {
                // Checked as GET checks it (a known ticket), answered with the head alone.
                return Ok(ask(LockOp::Touch { lock: lock.clone(), ticket }, Finish::EventsHead(lock)));
            }
            Plan::Stream { lock, ticket, first_event_id: first_event_id(req.last_event_id.as_deref()) }
        }
        RouteId::LockStatus => ask(LockOp::Status { lock: lock()? }, Finish::LockStatus),
        RouteId::LockList => {
            let limit = match query_param(query, "limit") {
                None => DEFAULT_LIST_LIMIT,
                Some(v) => v.parse::<u32>().map_err(|_| bad("limit must be a whole number"))?,
            };
            // A key limited to a prefix lists only names under it.
            let asked = query_param(query, "prefix").unwrap_or_default();
            let prefix = if asked.starts_with(scope) {
                asked
            } else if scope.starts_with(&asked) {
                scope.to_string()
            } else {
                return Err(error(ErrorCode::Forbidden, "this API key may not list these names"));
            };
            let op = LockOp::List { prefix, after: query_param(query, "after").filter(|a| !a.is_empty()), limit };
            ask(op, Finish::LockList)
        }
        RouteId::DataGet => ask(LockOp::GetData { lock: lock()?, key: key()? }, Finish::DataGet),
        RouteId::OutboxPut => {
            let (call, max_attempts, not_before_ms) = outbox_call(json_body(&req.body)?, &s.targets)?;
            let op = LockOp::OutboxPut { call, max_attempts, not_before_ms, scope: scope.to_string() };
            ask(op, Finish::OutboxPut)
        }
        RouteId::OutboxList => {
            let failed = match query_param(query, "state").as_deref() {
                None | Some("pending") => false,
                Some("failed") => true,
                Some(_) => return Err(bad("state must be pending or failed")),
            };
            let limit = match query_param(query, "limit") {
                None => DEFAULT_LIST_LIMIT,
                Some(v) => v.parse::<u32>().map_err(|_| bad("limit must be a whole number"))?,
            };
            let after = query_param(query, "after").filter(|a| !a.is_empty());
            let op = LockOp::OutboxList { failed, after, limit, scope: scope.to_string(), redact };
            ask(op, Finish::OutboxRead)
        }
        RouteId::OutboxGet => {
            let op = LockOp::OutboxGet { id: param(params, 0).to_string(), scope: scope.to_string(), redact };
            ask(op, Finish::OutboxRead)
        }
        RouteId::OutboxRetry => {
            let op = LockOp::OutboxRetry { id: param(params, 0).to_string(), scope: scope.to_string() };
            ask(op, Finish::OutboxRetry)
        }
        RouteId::OutboxDelete => {
            let op = LockOp::OutboxDelete { id: param(params, 0).to_string(), scope: scope.to_string() };
            ask(op, Finish::OutboxDelete)
        }
        RouteId::DataPut => {
            let (lock, key) = (lock()?, key()?);
            let ticket = header_ticket(req)?.ok_or_else(|| bad("data writes need the x-ticket header of a holder"))?;
            let value = json_document(&req.body)?;
            ask(LockOp::PutData { lock, ticket, key, value }, Finish::DataPut)
        }
        RouteId::DataDelete => {
            let (lock, key) = (lock()?, key()?);
            let ticket = header_ticket(req)?.ok_or_else(|| bad("data deletes need the x-ticket header of a holder"))?;
            ask(LockOp::DeleteData { lock, ticket, key }, Finish::DataDelete)
        }
        RouteId::CompatCreate => {
            let b: CreateBody = json_body(&req.body)?;
            let name = b.name.filter(|n| !n.is_empty()).ok_or_else(|| bad("name is required"))?;
            let name = LockName::parse(&name).map_err(bad)?;
            if !name.as_str().starts_with(scope) {
                return Err(error(ErrorCode::Forbidden, "this API key may not use this resource name"));
            }
            ask(LockOp::CreateResource { name, timeout_s: b.timeout.unwrap_or(0) }, Finish::CompatCreate)
        }
        RouteId::CompatGet => {
            let (resource, selector) = (lock()?, key()?);
            if !compat_locks(query) {
                return Ok(ask(LockOp::CompatRead { resource, key: selector.clone() }, Finish::CompatGet(selector)));
            }
            let then = Then::ReadData { key: selector.clone() };
            Plan::Ask {
                op: compat_acquire(resource, header_ticket(req)?, then, s),
                finish: Finish::CompatGet(selector),
                waits: true,
            }
        }
        RouteId::CompatLock => {
            let (resource, _) = (lock()?, key()?);
            Plan::Ask {
                op: compat_acquire(resource, header_ticket(req)?, Then::Hold, s),
                finish: Finish::CompatLock,
                waits: true,
            }
        }
        RouteId::CompatPut => {
            let (resource, selector) = (lock()?, key()?);
            let body: &[u8] =
                if req.body.iter().all(u8::is_ascii_whitespace) || req.body == b"0" { b"{}" } else { &req.body };
            let value = json_document(body)?;
            let then = Then::WriteAndRelease { key: selector, value };
            Plan::Ask {
                op: compat_acquire(resource, header_ticket(req)?, then, s),
                finish: Finish::CompatPut,
                waits: true,
            }
        }
        // The name is the route's first parameter: the key's prefix was checked on it.
        RouteId::ResourceDelete => ask(LockOp::DeleteResource { name: lock()? }, Finish::ResourceDelete),
        RouteId::CompatUnlock => {
            let (resource, _) = (lock()?, key()?);
            let ticket = header_ticket(req)?.ok_or_else(|| bad("unlock needs the x-ticket header"))?;
            ask(LockOp::Release { lock: resource, ticket }, Finish::CompatUnlock)
        }
        // They need the rooms and the time: the worker plans them with `rooms::plan`.
        RouteId::RoomGate
        | RouteId::RoomWait
        | RouteId::RoomEvents
        | RouteId::RoomRevoke
        | RouteId::RoomList
        | RouteId::RoomStatus => return Err(error(ErrorCode::Internal, "room routes are planned by rooms::plan")),
    })
}

/// The id of a stream's first event: one after `Last-Event-ID` if that is a usable id
/// (decimal, at most [`MAX_LAST_EVENT_ID`]), else 1.
pub fn first_event_id(last_event_id: Option<&str>) -> u64 {
    let last = last_event_id
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&id| id <= MAX_LAST_EVENT_ID)
        .unwrap_or(0);
    last + 1
}

fn compat_acquire(resource: LockName, ticket: Option<Ticket>, then: Then, s: &ApiSettings) -> LockOp {
    LockOp::Acquire {
        lock: resource,
        ticket,
        owner: None,
        ttl_ms: Some(s.compat_lease_ttl_ms),
        limit: Some(1),
        weight: 1,
        queue: Some(QueueMode::Fifo),
        wait_ms: 0,
        then,
        compat: true,
        callback: None,
        mode: None,
        user: None,
    }
}

#[derive(Serialize)]
struct Acquired<'a> {
    status: &'static str,
    lock: &'a str,
    ticket: Ticket,
    fence: u64,
    owner: Option<&'a str>,
    weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<LockMode>,
    expires_at_ms: u64,
    at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    /// An acquire with a `user` got that user's lease back, as it stands.
    #[serde(skip_serializing_if = "is_false")]
    existing: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl<'a> Acquired<'a> {
    fn new(status: &'static str, lock: &'a str, lease: &'a LeaseView, at_ms: u64) -> Self {
        Acquired {
            status,
            lock,
            ticket: lease.ticket,
            fence: lease.fence,
            owner: lease.owner.as_ref().map(Owner::as_str),
            weight: lease.weight,
            mode: lease.mode,
            expires_at_ms: lease.expires_at_ms,
            at_ms,
            user: lease.user.as_ref().map(UserId::as_str),
            existing: false,
        }
    }

    fn existing(mut self, existing: bool) -> Self {
        self.existing = existing;
        self
    }
}

#[derive(Serialize)]
struct Queued<'a> {
    status: &'static str,
    lock: &'a str,
    ticket: Ticket,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u32>,
    queue_length: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    eta_ms: Option<u64>,
    /// An acquire with a `user` got that user's place back, as it stands.
    #[serde(skip_serializing_if = "is_false")]
    existing: bool,
}

#[derive(Serialize)]
struct Released<'a> {
    status: &'static str,
    lock: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    fence: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    at_ms: Option<u64>,
}

#[derive(Serialize)]
struct CompatRow<'a> {
    id: String,
    #[serde(rename = "idResource")]
    id_resource: &'a str,
    selector: &'a str,
    data: &'a str,
}

/// A keeper reply of a kind its route never gets: a bug on one side of the channel or the
/// other. It is answered 500 `internal` ([`Unexpected::response`]), and the worker logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unexpected {
    /// How the answer was to be shaped (which route asked).
    pub finish: Finish,
    /// The kind of reply that came, as the keeper names it on the wire (`held`, `locks`, …).
    pub reply: &'static str,
}

impl std::fmt::Display for Unexpected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unexpected answer from the keeper: {} for {:?}", self.reply, self.finish)
    }
}

impl std::error::Error for Unexpected {}

impl Unexpected {
    /// The response: 500 `internal`, saying what came (the kind only: a reply may carry a
    /// ticket).
    pub fn response(&self) -> Response {
        error(ErrorCode::Internal, &self.to_string())
    }
}

/// The answer to a reply its route does not shape itself: a refusal every route answers
/// alike, or [`Unexpected`] for a reply meant for other routes. No wildcard: a kind added
/// to `LockReply` does not compile until it is sorted here.
fn refusal(f: &Finish, reply: &LockReply) -> Result<Response, Unexpected> {
    use LockReply as R;
    let unexpected = |kind: &'static str| Err(Unexpected { finish: f.clone(), reply: kind });
    Ok(match reply {
        R::Unavailable { used, limit, queue_length } => {
            #[derive(Serialize)]
            struct Busy {
                used: u32,
                limit: u32,
                queue_length: u32,
            }
            error_with(ErrorCode::Unavailable, "the lock is taken", Busy { used: *used, limit: *limit, queue_length: *queue_length })
        }
        R::LimitMismatch { limit } => {
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
        R::KindMismatch { kind } => {
            #[derive(Serialize)]
            struct Kind {
                kind: LockKind,
            }
            let message = match kind {
                LockKind::Rw => "the lock is a read/write lock; ask with mode shared or exclusive, without limit or weight",
                LockKind::Semaphore => "the lock is a semaphore (limit and weight); ask without mode",
            };
            error_with(ErrorCode::KindMismatch, message, Kind { kind: *kind })
        }
        R::QueueMismatch { queue } => {
            let kind = serde_json::to_string(queue).unwrap_or_default();
            error(ErrorCode::QueueMismatch, &format!("the lock's queue is {kind}; ask with the same queue"))
        }
        R::QueueFull { max_waiters } => {
            error(ErrorCode::QueueFull, &format!("the lock's queue is full ({max_waiters} waiters)"))
        }
        R::TableFull { max_locks } => {
            error(ErrorCode::TableFull, &format!("the server holds its maximum of {max_locks} locks"))
        }
        R::OverBudget { budget, message, .. } => error(
            match budget {
                Budget::Tickets => ErrorCode::TicketsFull,
                Budget::DataBytes => ErrorCode::DataFull,
                Budget::Resources => ErrorCode::ResourcesFull,
                Budget::EventStreams => ErrorCode::StreamsFull,
            },
            message,
        ),
        R::NotHolder(place) => {
            #[derive(Serialize)]
            struct Place {
                #[serde(skip_serializing_if = "Option::is_none")]
                position: Option<u32>,
                queue_length: u32,
            }
            error_with(
                ErrorCode::NotHolder,
                "this ticket is waiting in the queue; it does not hold the lock",
                Place { position: place.position, queue_length: place.queue_length },
            )
        }
        R::TicketUnknown => error(
            ErrorCode::LeaseLost,
            "no lease or place in the queue for this ticket: it expired, was released, or was never issued for this lock",
        ),
        R::Dropped => error(
            ErrorCode::LimitMismatch,
            "the lock's limit was lowered below this waiter's weight: it left the queue",
        ),
        R::LockUnknown => error(ErrorCode::NotFound, "no such lock"),
        R::ResourceUnknown => error(ErrorCode::NotFound, "Resource not found"),
        R::Rejected { message, kind: RejectKind::TooLarge } => error(ErrorCode::PayloadTooLarge, message),
        R::Rejected { message, kind: RejectKind::Invalid } => error(ErrorCode::BadRequest, message),
        R::Failed { message } => error(ErrorCode::Internal, message),
        R::JournalFailed { message } => error(ErrorCode::JournalUnavailable, message),
        R::NotLeader { leader } => super::status::not_leader(leader.as_deref()),
        R::Unknown { message } => error(ErrorCode::KeeperUnavailable, message),
        R::OutboxRefused { message, kind } => error(
            match kind {
                OutboxRefusal::Full => ErrorCode::OutboxFull,
                OutboxRefusal::TooLarge => ErrorCode::PayloadTooLarge,
                OutboxRefusal::Invalid => ErrorCode::BadRequest,
                OutboxRefusal::Unknown => ErrorCode::NotFound,
                OutboxRefusal::Conflict => ErrorCode::WrongState,
            },
            message,
        ),
        // Answers only some routes get (each route's arm in `finish` shapes its own).
        R::Held { .. } => return unexpected("held"),
        R::Queued { .. } => return unexpected("queued"),
        R::Released { .. } => return unexpected("released"),
        R::Left => return unexpected("left"),
        R::Lock(_) => return unexpected("lock"),
        R::Locks { .. } => return unexpected("locks"),
        R::Data(_) => return unexpected("data"),
        R::DataWritten { .. } => return unexpected("data_written"),
        R::DataDeleted { .. } => return unexpected("data_deleted"),
        R::ResourceCreated { .. } => return unexpected("resource_created"),
        R::ResourceExists => return unexpected("resource_exists"),
        R::ResourceDeleted => return unexpected("resource_deleted"),
        R::ResourceBusy => return unexpected("resource_busy"),
        R::CompatData { .. } => return unexpected("compat_data"),
        R::Written { .. } => return unexpected("written"),
        R::OutboxAccepted { .. } => return unexpected("outbox_accepted"),
        R::OutboxEntry { .. } => return unexpected("outbox_entry"),
        R::OutboxPage { .. } => return unexpected("outbox_page"),
        R::OutboxDone => return unexpected("outbox_done"),
        R::Overview(_) => return unexpected("overview"),
        // The worker cancels a wait only for a client that has gone: nobody is answered.
        R::Cancelled => return unexpected("cancelled"),
    })
}

fn error_with<X: Serialize>(code: ErrorCode, message: &str, extra: X) -> Response {
    super::status::error_with(code, message, extra)
}

fn queued_body<'a>(
    status: &'static str,
    lock: &'a str,
    place: &crate::core::lock::QueueView,
    eta_ms: Option<u64>,
) -> Queued<'a> {
    Queued {
        status,
        lock,
        ticket: place.ticket,
        position: place.position,
        queue_length: place.queue_length,
        eta_ms,
        existing: false,
    }
}

/// A 204 with no body.
fn no_content() -> Response {
    Response { status: 204, content_type: "application/json", headers: Vec::new(), body: Vec::new() }
}

/// The response to the keeper's `reply` to the operation `f` was planned with. Each route
/// shapes the answers it gets; every other reply is a refusal all routes share, or
/// [`Unexpected`] (sorted in `refusal`). One arm per [`Finish`]: a route added there does not
/// compile until its answers are shaped here.
pub fn finish(f: &Finish, reply: &LockReply) -> Result<Response, Unexpected> {
    use LockReply as R;
    Ok(match f {
        Finish::Acquire(lock) => match reply {
            R::Held { lease, at_ms, existing } => {
                Response::json(200, &Acquired::new("acquired", lock.as_str(), lease, *at_ms).existing(*existing))
            }
            R::Queued { place, eta_ms, existing } => Response::json(
                202,
                &Queued { existing: *existing, ..queued_body("queued", lock.as_str(), place, *eta_ms) },
            ),
            other => return refusal(f, other),
        },
        Finish::Renew(lock) => match reply {
            R::Held { lease, at_ms, .. } => {
                Response::json(200, &Acquired::new("renewed", lock.as_str(), lease, *at_ms))
            }
            other => return refusal(f, other),
        },
        Finish::Release(lock) => match reply {
            R::Released { fence, at_ms } => Response::json(
                200,
                &Released { status: "released", lock: lock.as_str(), fence: Some(*fence), at_ms: Some(*at_ms) },
            ),
            R::Left => Response::json(200, &Released { status: "left", lock: lock.as_str(), fence: None, at_ms: None }),
            other => return refusal(f, other),
        },
        Finish::TicketStatus(lock) => match reply {
            R::Held { lease, at_ms, .. } => {
                Response::json(200, &Acquired::new("acquired", lock.as_str(), lease, *at_ms))
            }
            R::Queued { place, eta_ms, .. } => {
                Response::json(200, &queued_body("queued", lock.as_str(), place, *eta_ms))
            }
            other => return refusal(f, other),
        },
        Finish::EventsHead(_) => match reply {
            R::Held { .. } | R::Queued { .. } => stream_head(),
            other => return refusal(f, other),
        },
        Finish::LockStatus => match reply {
            R::Lock(info) => Response::json(200, info),
            other => return refusal(f, other),
        },
        Finish::LockList => match reply {
            R::Locks { locks, next_after } => {
                #[derive(Serialize)]
                struct Page<'a> {
                    locks: &'a [LockInfo],
                    next_after: &'a Option<String>,
                }
                Response::json(200, &Page { locks, next_after })
            }
            other => return refusal(f, other),
        },
        Finish::DataGet => match reply {
            R::Data(Some(value)) => Response {
                status: 200,
                content_type: "application/json",
                headers: Vec::new(),
                body: value.clone().into_bytes(),
            },
            R::Data(None) => error(ErrorCode::NotFound, "no such data key"),
            other => return refusal(f, other),
        },
        Finish::DataPut => match reply {
            R::DataWritten { created } => {
                let (status, word) = if *created { (201, "created") } else { (200, "updated") };
                Response::json(status, &serde_json::json!({ "status": word }))
            }
            other => return refusal(f, other),
        },
        Finish::DataDelete => match reply {
            R::DataDeleted { existed: true } => Response::json(200, &serde_json::json!({ "status": "deleted" })),
            R::DataDeleted { existed: false } => error(ErrorCode::NotFound, "no such data key"),
            other => return refusal(f, other),
        },
        Finish::CompatCreate => match reply {
            R::ResourceCreated { id, name, timeout_s } => {
                Response::json(201, &serde_json::json!({ "id": id, "name": name, "timeout": timeout_s }))
            }
            R::ResourceExists => error(ErrorCode::AlreadyExists, "Resource already exists"),
            other => return refusal(f, other),
        },
        Finish::ResourceDelete => match reply {
            R::ResourceDeleted => no_content(),
            R::ResourceBusy => error(
                ErrorCode::WrongState,
                "the resource's lock has holders or waiters; release it first (nothing was deleted)",
            ),
            other => return refusal(f, other),
        },
        Finish::CompatGet(selector) => match reply {
            R::CompatData { lease, resource_id, data } => {
                let ticket_header = |r: Response| match lease {
                    Some(lease) => r.with_header(X_TICKET, lease.ticket.to_string()),
                    None => r,
                };
                match data {
                    Some(data) => ticket_header(Response::json(
                        200,
                        &CompatRow {
                            id: row_id(resource_id, selector.as_str()),
                            id_resource: resource_id,
                            selector: selector.as_str(),
                            data,
                        },
                    )),
                    // Locked but empty: the caller holds the lock now (as in the original).
                    None if lease.is_some() => {
                        ticket_header(Response::json(202, &serde_json::json!({ "unavailable": true })))
                    }
                    None => error(ErrorCode::NotFound, "no data for this selector"),
                }
            }
            R::Queued { place, .. } => Response::json(202, &serde_json::json!({ "unavailable": true }))
                .with_header(X_TICKET, place.ticket.to_string()),
            other => return refusal(f, other),
        },
        Finish::CompatLock => match reply {
            R::Held { lease, .. } => Response::json(200, &serde_json::json!({ "locked": true }))
                .with_header(X_TICKET, lease.ticket.to_string()),
            R::Queued { place, .. } => Response::json(200, &serde_json::json!({ "locked": false }))
                .with_header(X_TICKET, place.ticket.to_string()),
            other => return refusal(f, other),
        },
        Finish::CompatPut => match reply {
            R::Written { .. } => no_content(),
            R::Queued { .. } => {
                error(ErrorCode::Unavailable, "the resource stayed locked for its whole timeout; nothing was written")
            }
            other => return refusal(f, other),
        },
        Finish::CompatUnlock => match reply {
            // The original unlocks whatever it is given and always says so.
            R::Released { .. } | R::Left | R::TicketUnknown => {
                Response::json(200, &serde_json::json!({ "unlocked": true }))
            }
            other => return refusal(f, other),
        },
        Finish::OutboxPut => match reply {
            R::OutboxAccepted { id } => Response::json(202, &serde_json::json!({ "status": "accepted", "id": id })),
            other => return refusal(f, other),
        },
        Finish::OutboxRead => match reply {
            R::OutboxEntry { entry } => Response::json(200, entry),
            R::OutboxPage { entries, next_after } => {
                Response::json(200, &serde_json::json!({ "entries": entries, "next_after": next_after }))
            }
            other => return refusal(f, other),
        },
        Finish::OutboxRetry => match reply {
            R::OutboxDone => Response::json(200, &serde_json::json!({ "status": "retrying" })),
            other => return refusal(f, other),
        },
        Finish::OutboxDelete => match reply {
            R::OutboxDone => Response::json(200, &serde_json::json!({ "status": "deleted" })),
            other => return refusal(f, other),
        },
        Finish::Room(room) => return super::rooms::finish(room, reply),
    })
}

/// The answer of `GET /readyz`: 200 while this worker takes requests and reaches the keeper
/// (README.md: "readiness (keeper reachable)"); 503 `overloaded` while it drains (a load
/// balancer should stop sending here), 503 `keeper_unavailable` while it has no keeper. In
/// cluster mode the body also says where the node stands (docs/cluster.md, "Watching a
/// cluster"): a follower is ready too, for reads.
pub fn readiness(draining: bool, keeper_connected: bool, cluster: Option<&ClusterStatus>) -> Response {
    if draining {
        error(ErrorCode::Overloaded, "this worker is draining")
    } else if keeper_connected {
        let mut body = serde_json::json!({"status": "ready"});
        if let Some(status) = cluster {
            body["cluster"] = serde_json::to_value(status).unwrap_or_default();
        }
        Response::json(200, &body)
    } else {
        error(ErrorCode::KeeperUnavailable, "the keeper is not reachable")
    }
}

/// The content type of `GET /metrics` (the Prometheus text format).
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The answer of `GET /metrics`, from the text the master gathered.
pub fn metrics_page(text: String) -> Response {
    Response::text(200, METRICS_CONTENT_TYPE, text)
}

/// The head of an event stream (its body follows, event by event, until it closes).
pub fn stream_head() -> Response {
    Response::text(200, EVENT_STREAM, String::new())
        .with_header("Cache-Control", "no-cache")
        .with_header("X-Accel-Buffering", "no")
}

/// The comment sent on an idle stream.
pub const SSE_PING: &[u8] = b": ping\n\n";

/// The last thing a stream ended by a drain sends: its client reconnects after a second
/// (with `Last-Event-ID`, to another worker or node), not after its own default.
pub const SSE_RETRY_HINT: &[u8] = b"retry: 1000\n\n";

/// One Server-Sent Event.
pub fn sse_event<T: Serialize>(id: u64, name: &str, data: &T) -> Vec<u8> {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    format!("id: {id}\nevent: {name}\ndata: {json}\n\n").into_bytes()
}

/// The event for where a ticket stands now (the first event of a stream), from the
/// keeper's answer to `watch`; `None` if the ticket is unknown.
pub fn first_event(lock: &LockName, reply: &LockReply) -> Option<(&'static str, serde_json::Value)> {
    match reply {
        LockReply::Held { lease, .. } => Some(("acquired", acquired_json(lock, lease))),
        LockReply::Queued { place, eta_ms, .. } => Some((
            "position",
            serde_json::json!({ "position": place.position, "queue_length": place.queue_length, "eta_ms": eta_ms }),
        )),
        _ => None,
    }
}

fn acquired_json(lock: &LockName, lease: &LeaseView) -> serde_json::Value {
    let mut event = serde_json::json!({
        "lock": lock, "ticket": lease.ticket, "fence": lease.fence,
        "owner": lease.owner, "weight": lease.weight, "expires_at_ms": lease.expires_at_ms,
    });
    if let Some(mode) = lease.mode {
        event["mode"] = serde_json::json!(mode);
    }
    if let Some(user) = &lease.user {
        event["user"] = serde_json::json!(user);
    }
    event
}

/// The stream event for a keeper event, and whether the stream ends after it.
pub fn stream_event(lock: &LockName, event: &TicketEvent) -> (&'static str, serde_json::Value, bool) {
    match event {
        TicketEvent::Position { position, queue_length } => {
            ("position", serde_json::json!({ "position": position, "queue_length": queue_length }), false)
        }
        TicketEvent::Acquired(lease) => ("acquired", acquired_json(lock, lease), false),
        TicketEvent::Expired { fence, unclaimed } => {
            ("expired", serde_json::json!({ "fence": fence, "unclaimed": unclaimed }), true)
        }
        TicketEvent::Released { fence } => ("released", serde_json::json!({ "fence": fence }), true),
        TicketEvent::Dropped => ("dropped", serde_json::json!({}), true),
    }
}

#[cfg(test)]
mod tests;
