//! Waiting rooms, pure (docs/api.md, "Waiting rooms"): the routes under `/v1/rooms`, planned
//! into keeper operations on each room's lock `room:<name>` and shaped from the keeper's
//! answers, as [`super::api`] does for the lock routes. [`plan`] takes the time (`now_ms`,
//! wall-clock, the keeper's clock) as an argument; [`finish`] shapes replies. Cookies and
//! tokens are sealed with the room's secret ([`crate::core::seal`]); whatever they or the
//! request carry is checked here before it is used, and every refusal is a status with a
//! JSON body (the waiting page's own refusal is a page).
//!
//! - The gate (`GET …/gate`, for a proxy's `auth_request`) reads the session cookie
//!   `lh_session_<room>` and renews its lease, at most up to the session's end.
//! - The wait route (`GET …/wait`) joins the line, or comes back to one's place (the place
//!   cookie `lh_place_<room>`), and answers the page, or 303 with the session cookie once
//!   admitted. Its return path is a path on this site only (open-redirect proof).
//! - The events route streams the visitor's own ticket, with the ticket token of the page.
//! - Revoke (`DELETE …/sessions/{ticket}`) releases a session's lease (the origin's call).
//! - `GET /v1/rooms` and `GET /v1/rooms/{room}` show capacity, use and line.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::api::{self, first_event_id, Finish, Plan, Unexpected};
use super::auth::Grant;
use super::browser::{TicketClaim, TICKET_PURPOSE};
use super::pages::wait;
use super::parse::{Method, Request};
use super::response::Response;
use super::route::{query_param, RouteDef, RouteId};
use super::status::{error, ErrorCode};
use crate::config::{valid_return_path, Config, RoomConfig, ROOM_LOCK_PREFIX};
use crate::core::lock::QueueView;
use crate::core::names::{LockName, Owner, Ticket};
use crate::core::seal::{open, seal};
use crate::ipc::message::{LockInfo, LockOp, LockReply, Then};

/// Seal purpose of the session cookie.
pub const PURPOSE_SESSION: &str = "room-session";
/// Seal purpose of the place cookie.
pub const PURPOSE_PLACE: &str = "room-place";
/// Header of the gate's answer: the session's ticket.
pub const X_LEASEHOLD_TICKET: &str = "X-Leasehold-Ticket";
/// Header of the gate's answer: the session's fence.
pub const X_LEASEHOLD_FENCE: &str = "X-Leasehold-Fence";
/// How long the place cookie lasts (the waiter TTL drops an absent waiter long before).
pub const PLACE_COOKIE_MAX_AGE_S: u64 = 86_400;
/// The start of the label a session's lease takes when its visitor first comes back
/// through the place cookie, before the admission's time (wall clock, ms). A lease keeps
/// its first label (docs/api.md, the acquire's `ticket`), so a place cookie brought back
/// later finds the first admission's time, and its session ends when the first one does.
pub const ADMITTED_AT: &str = "room session since ";
/// Paths a return path may not start with: the rooms' own routes (a loop).
const ROOM_PATHS: &str = "/v1/rooms/";
/// Content type of the pages.
const HTML: &str = "text/html; charset=utf-8";

/// The session cookie's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    /// The room.
    pub room: String,
    /// The lease's ticket.
    pub ticket: Ticket,
    /// The lease's fence.
    pub fence: u64,
    /// When the visitor was admitted (keeper's clock).
    pub started_ms: u64,
}

/// The place cookie's payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Place {
    /// The room.
    pub room: String,
    /// The waiter's ticket.
    pub ticket: Ticket,
}

/// The rooms of the configuration, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rooms {
    by_name: BTreeMap<String, Arc<RoomConfig>>,
    /// `locks.min_ttl_ms`: the shortest renewal the keeper takes.
    min_ttl_ms: u64,
}

impl Rooms {
    /// The rooms of `config`.
    pub fn new(config: &Config) -> Self {
        Self::from_rooms(config.rooms.iter().cloned(), config.locks.table.min_ttl_ms)
    }

    /// Rooms from their configurations.
    pub fn from_rooms(rooms: impl IntoIterator<Item = RoomConfig>, min_ttl_ms: u64) -> Self {
        Self { by_name: rooms.into_iter().map(|r| (r.name.clone(), Arc::new(r))).collect(), min_ttl_ms }
    }

    fn find(&self, name: &str) -> Result<&Arc<RoomConfig>, Response> {
        self.by_name.get(name).ok_or_else(|| error(ErrorCode::NotFound, "no such room"))
    }
}

/// How to shape the keeper's answer to a room route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomFinish {
    /// The gate's renewal of the session with `fence`.
    Gate {
        /// The room.
        room: Arc<RoomConfig>,
        /// The session cookie's fence.
        fence: u64,
    },
    /// The wait route's acquire.
    Wait {
        /// The room.
        room: Arc<RoomConfig>,
        /// Where the visitor goes once admitted.
        next: String,
        /// The valid session the request came with, if any (its start is kept).
        session: Option<Session>,
    },
    /// Revoke: the release of a session's lease.
    Revoke(LockName),
    /// `GET /v1/rooms/{room}`.
    One(Arc<RoomConfig>),
    /// `GET /v1/rooms`.
    List(Vec<Arc<RoomConfig>>),
}

/// The name of room `room`'s cookie of `kind` (`session`, `place`).
pub fn cookie_name(kind: &str, room: &str) -> String {
    format!("lh_{kind}_{room}")
}

/// The value of cookie `name` in a `Cookie` header (the first one of that name).
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// The session of `room` that `req` carries, if it is valid at `now_ms`: it opens under the
/// room's secret, names this room, and has not reached `max_session_ms`.
pub fn valid_session(req: &Request, room: &RoomConfig, now_ms: u64) -> Option<Session> {
    let value = cookie(req.cookie.as_deref()?, &cookie_name("session", &room.name))?;
    let session: Session = open(room.secret.as_bytes(), PURPOSE_SESSION, value).ok()?;
    (session.room == room.name && now_ms < session.started_ms.saturating_add(room.max_session_ms)).then_some(session)
}

fn valid_place(req: &Request, room: &RoomConfig) -> Option<Place> {
    let value = cookie(req.cookie.as_deref()?, &cookie_name("place", &room.name))?;
    let place: Place = open(room.secret.as_bytes(), PURPOSE_PLACE, value).ok()?;
    (place.room == room.name).then_some(place)
}

/// Where an admitted visitor goes: `next` from the query, else the proxy's
/// `X-Original-URI`, else the room's `origin`. A candidate that is not a path on this site
/// ([`valid_return_path`]), or that is one of the rooms' own routes, is ignored.
pub fn return_path(query: &str, original_uri: Option<&str>, origin: &str) -> String {
    let usable = |p: &str| valid_return_path(p) && !p.starts_with(ROOM_PATHS);
    query_param(query, "next")
        .filter(|p| usable(p))
        .or_else(|| original_uri.filter(|p| usable(p)).map(str::to_string))
        .unwrap_or_else(|| origin.to_string())
}

/// The TTL a renewal of `session` gets at `now_ms`: `session_ttl_ms`, but not past the
/// session's end (and never below the keeper's `min_ttl_ms`).
fn renewal_ttl_ms(room: &RoomConfig, session: &Session, now_ms: u64, min_ttl_ms: u64) -> u64 {
    let left = session.started_ms.saturating_add(room.max_session_ms).saturating_sub(now_ms);
    room.session_ttl_ms.min(left).max(min_ttl_ms)
}

/// 401 `no_session`.
pub fn no_session(message: &str) -> Response {
    error(ErrorCode::NoSession, message).with_header("Cache-Control", "no-store")
}

fn ask(op: LockOp, finish: RoomFinish) -> Plan {
    Plan::Ask { op, finish: Finish::Room(Box::new(finish)), waits: false }
}

/// Decides what a request to a room route needs (`def.id` is a room route); `now_ms` is
/// the wall clock.
pub fn plan(
    def: &RouteDef,
    params: &[String],
    query: &str,
    req: &Request,
    rooms: &Rooms,
    grant: Grant<'_>,
    now_ms: u64,
) -> Plan {
    match plan_inner(def, params, query, req, rooms, grant, now_ms) {
        Ok(plan) => plan,
        Err(response) => Plan::Now(response),
    }
}

fn plan_inner(
    def: &RouteDef,
    params: &[String],
    query: &str,
    req: &Request,
    rooms: &Rooms,
    grant: Grant<'_>,
    now_ms: u64,
) -> Result<Plan, Response> {
    let room = || rooms.find(params.first().map_or("", String::as_str));
    let visible = |room: &RoomConfig| room.lock.as_str().starts_with(grant.prefix);
    Ok(match def.id {
        RouteId::RoomGate => {
            let room = room()?;
            let session = valid_session(req, room, now_ms)
                .ok_or_else(|| no_session("no valid session cookie for this room (none, expired or not ours)"))?;
            let ttl_ms = renewal_ttl_ms(room, &session, now_ms, rooms.min_ttl_ms);
            let op = LockOp::Renew { lock: room.lock.clone(), ticket: session.ticket, ttl_ms: Some(ttl_ms) };
            ask(op, RoomFinish::Gate { room: room.clone(), fence: session.fence })
        }
        RouteId::RoomWait => {
            let room = room()?;
            let next = return_path(query, req.original_uri.as_deref(), &room.origin);
            let session = valid_session(req, room, now_ms);
            // A session comes back to its lease (renewed up to its end); a waiter to its place,
            // its lease labelled with this time if it was admitted (kept if labelled before).
            let (ticket, ttl_ms, owner) = match (&session, valid_place(req, room)) {
                (Some(s), _) => (Some(s.ticket), Some(renewal_ttl_ms(room, s, now_ms, rooms.min_ttl_ms)), None),
                (None, Some(place)) => (Some(place.ticket), None, Owner::parse(&format!("{ADMITTED_AT}{now_ms}")).ok()),
                (None, None) => (None, None, None),
            };
            let op = LockOp::Acquire {
                lock: room.lock.clone(),
                ticket,
                owner,
                ttl_ms,
                limit: None,
                weight: 1,
                queue: None,
                wait_ms: 0,
                then: Then::Hold,
                compat: false,
                callback: None,
                mode: None,
                user: None,
            };
            ask(op, RoomFinish::Wait { room: room.clone(), next, session })
        }
        RouteId::RoomEvents => {
            let room = room()?;
            let token = query_param(query, "token")
                .and_then(|t| open::<TicketClaim>(room.secret.as_bytes(), TICKET_PURPOSE, &t).ok())
                .filter(|t| t.lock == room.lock)
                .ok_or_else(|| no_session("events of a room need ?token= from its waiting page"))?;
            if req.method == Method::Head {
                let op = LockOp::Touch { lock: token.lock.clone(), ticket: token.ticket };
                return Ok(Plan::Ask { op, finish: Finish::EventsHead(token.lock), waits: false });
            }
            let first_event_id = first_event_id(req.last_event_id.as_deref());
            Plan::Stream { lock: token.lock, ticket: token.ticket, first_event_id }
        }
        RouteId::RoomRevoke => {
            let room = room()?;
            if !visible(room) {
                return Err(error(ErrorCode::Forbidden, "this API key may not use this room's lock"));
            }
            let ticket = Ticket::parse(params.get(1).map_or("", String::as_str))
                .map_err(|e| error(ErrorCode::BadRequest, &e.to_string()))?;
            ask(LockOp::Release { lock: room.lock.clone(), ticket }, RoomFinish::Revoke(room.lock.clone()))
        }
        RouteId::RoomStatus => {
            let room = room()?;
            if !visible(room) {
                return Err(error(ErrorCode::Forbidden, "this API key may not read this room's lock"));
            }
            ask(LockOp::Status { lock: room.lock.clone() }, RoomFinish::One(room.clone()))
        }
        RouteId::RoomList => {
            let list: Vec<Arc<RoomConfig>> = rooms.by_name.values().filter(|r| visible(r)).cloned().collect();
            if list.is_empty() {
                return Ok(Plan::Now(Response::json(200, &serde_json::json!({ "rooms": [] }))));
            }
            let prefix = if ROOM_LOCK_PREFIX.starts_with(grant.prefix) { ROOM_LOCK_PREFIX } else { grant.prefix };
            let op = LockOp::List { prefix: prefix.to_string(), after: None, limit: u32::MAX };
            ask(op, RoomFinish::List(list))
        }
        _ => return Err(error(ErrorCode::Internal, "not a room route")),
    })
}

/// A room as `GET /v1/rooms` shows it, with its lock as the keeper sees it (`None`: not in
/// the table, so empty).
fn view(room: &RoomConfig, info: Option<&LockInfo>) -> serde_json::Value {
    serde_json::json!({
        "name": room.name,
        "lock": room.lock,
        "capacity": room.capacity,
        "in_use": info.map_or(0, |i| i.used),
        "queue_length": info.map_or(0, |i| i.queue_length),
        "admit_per_minute": room.admit_per_minute,
        "admit_burst": room.admit_burst,
        "session_ttl_ms": room.session_ttl_ms,
        "max_session_ms": room.max_session_ms,
        "waiter_ttl_ms": room.waiter_ttl_ms,
    })
}

fn cookie_header(name: &str, value: &str, max_age_s: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}")
}

/// The response to the keeper's `reply` to a room route's operation.
pub fn finish(f: &RoomFinish, reply: &LockReply) -> Result<Response, Unexpected> {
    use LockReply as R;
    Ok(match f {
        RoomFinish::Gate { room, fence } => match reply {
            R::Held { lease, .. } if lease.fence == *fence => Response::json(
                200,
                &serde_json::json!({
                    "status": "admitted", "room": room.name, "ticket": lease.ticket,
                    "fence": lease.fence, "expires_at_ms": lease.expires_at_ms,
                }),
            )
            .with_header(X_LEASEHOLD_TICKET, lease.ticket.to_string())
            .with_header(X_LEASEHOLD_FENCE, lease.fence.to_string())
            .with_header("Cache-Control", "no-store"),
            R::Held { .. } => no_session("the session's lease was granted again: this cookie is stale"),
            other => {
                let refused = api::finish(&Finish::Renew(room.lock.clone()), other)?;
                // The server's troubles stay what they are (503 and the like); for the
                // visitor, every other refusal means the same: no session.
                if refused.status >= 500 {
                    refused
                } else {
                    no_session("the session has ended (it expired or was revoked)")
                }
            }
        },
        RoomFinish::Wait { room, next, session } => match reply {
            R::Held { lease, at_ms, .. } => {
                let kept = session.as_ref().filter(|s| s.ticket == lease.ticket && s.fence == lease.fence);
                let admitted_ms = lease.owner.as_ref().and_then(|o| o.as_str().strip_prefix(ADMITTED_AT)?.parse().ok());
                let started_ms = kept.map_or(admitted_ms.unwrap_or(*at_ms), |s| s.started_ms);
                let value = seal(
                    room.secret.as_bytes(),
                    PURPOSE_SESSION,
                    &Session { room: room.name.clone(), ticket: lease.ticket, fence: lease.fence, started_ms },
                );
                let left_s = started_ms.saturating_add(room.max_session_ms).saturating_sub(*at_ms) / 1000;
                let body = format!(
                    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Your turn</title></head>\
                     <body><main><p><a href=\"{}\">Continue</a></p></main></body></html>\n",
                    super::pages::escape_html(next)
                );
                Response::text(303, HTML, body)
                    .with_header("Location", next.clone())
                    .with_header(
                        "Set-Cookie",
                        cookie_header(&cookie_name("session", &room.name), &value, left_s, room.cookie_secure),
                    )
                    .with_header(
                        "Set-Cookie",
                        cookie_header(&cookie_name("place", &room.name), "", 0, room.cookie_secure),
                    )
                    .with_header("Cache-Control", "no-store")
            }
            R::Queued { place, eta_ms, .. } => queued_page(room, next, place, *eta_ms),
            other => {
                let refused = api::finish(&Finish::Acquire(room.lock.clone()), other)?;
                if refused.status == 429 || refused.status == 503 {
                    let refresh_s = wait::refresh_s(room.waiter_ttl_ms);
                    Response::text(503, HTML, wait::render_full(&room.title, refresh_s))
                        .with_header("Retry-After", refresh_s.to_string())
                        .with_header("Cache-Control", "no-store")
                } else {
                    refused
                }
            }
        },
        RoomFinish::Revoke(lock) => match reply {
            R::Released { .. } | R::Left => {
                Response { status: 204, content_type: "application/json", headers: Vec::new(), body: Vec::new() }
            }
            other => api::finish(&Finish::Release(lock.clone()), other)?,
        },
        RoomFinish::One(room) => match reply {
            R::Lock(info) => Response::json(200, &view(room, Some(info))),
            R::LockUnknown => Response::json(200, &view(room, None)),
            other => api::finish(&Finish::LockStatus, other)?,
        },
        RoomFinish::List(rooms) => match reply {
            R::Locks { locks, .. } => {
                let by_name: BTreeMap<&str, &LockInfo> = locks.iter().map(|l| (l.name.as_str(), l)).collect();
                let views: Vec<_> = rooms.iter().map(|r| view(r, by_name.get(r.lock.as_str()).copied())).collect();
                Response::json(200, &serde_json::json!({ "rooms": views }))
            }
            other => api::finish(&Finish::LockList, other)?,
        },
    })
}

/// The waiting page for a queued visitor, with the place cookie that keeps the place.
fn queued_page(room: &RoomConfig, next: &str, place: &QueueView, eta_ms: Option<u64>) -> Response {
    let secret = room.secret.as_bytes();
    let token = seal(secret, TICKET_PURPOSE, &TicketClaim { lock: room.lock.clone(), ticket: place.ticket });
    let events = format!("/v1/rooms/{}/events?token={token}", room.name);
    let html = wait::render(&wait::WaitPage {
        room: &room.name,
        title: &room.title,
        message: &room.message,
        position: place.position,
        queue_length: place.queue_length,
        eta_ms,
        refresh_s: wait::refresh_s(room.waiter_ttl_ms),
        events: &events,
        next,
    });
    let value = seal(secret, PURPOSE_PLACE, &Place { room: room.name.clone(), ticket: place.ticket });
    Response::text(200, HTML, html)
        .with_header(
            "Set-Cookie",
            cookie_header(&cookie_name("place", &room.name), &value, PLACE_COOKIE_MAX_AGE_S, room.cookie_secure),
        )
        .with_header("Cache-Control", "no-store")
        .with_header("Content-Security-Policy", wait::content_security_policy())
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Referrer-Policy", "no-referrer")
}

#[cfg(test)]
mod tests;
