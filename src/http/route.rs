//! The one route table: method + path pattern → route, with the role it needs. Path
//! parameters are percent-decoded; the handlers validate them (lock names, tickets).
//! Unknown paths are 404; a known path with another method is 405 with `Allow`. `HEAD`
//! takes every `GET` route (answered as `GET` would be, without the body) and is listed
//! in `Allow` wherever `GET` is. docs/api.md documents every route for clients.

use super::parse::Method;
use crate::config::Role;

/// Every route the server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteId {
    /// Liveness.
    Healthz,
    /// Readiness (the keeper answers).
    Readyz,
    /// Prometheus metrics.
    Metrics,
    /// The OpenAPI document of the native API (docs/openapi.json).
    OpenApi,
    /// Take a lease or queue (optionally waiting).
    Acquire,
    /// Extend a lease.
    Renew,
    /// Give up a lease or leave the queue.
    Release,
    /// Where a ticket stands (counts as presence).
    TicketStatus,
    /// Leave the queue, or release.
    TicketLeave,
    /// Server-Sent Events for a ticket.
    Events,
    /// One lock.
    LockStatus,
    /// A page of locks.
    LockList,
    /// Read a data key.
    DataGet,
    /// Write a data key (holder only).
    DataPut,
    /// Delete a data key (holder only).
    DataDelete,
    /// Small Resource Server: health (any method).
    CompatHealth,
    /// Small Resource Server: register a resource.
    CompatCreate,
    /// Small Resource Server: read a selector, locking unless `lock=0`.
    CompatGet,
    /// Small Resource Server: lock only.
    CompatLock,
    /// Small Resource Server: write a selector (takes the lock, writes, releases).
    CompatPut,
    /// Small Resource Server: unlock.
    CompatUnlock,
    /// Delete a Small Resource Server resource (a native route: the original has none).
    ResourceDelete,
    /// Accept an HTTP call for later delivery.
    OutboxPut,
    /// A page of outbox entries.
    OutboxList,
    /// One outbox entry.
    OutboxGet,
    /// Try a failed outbox entry again.
    OutboxRetry,
    /// Remove an outbox entry.
    OutboxDelete,
    /// A waiting room's gate (for a proxy's `auth_request`).
    RoomGate,
    /// A waiting room's page (joins the line, or admits with a session cookie).
    RoomWait,
    /// A room visitor's ticket as Server-Sent Events (with a ticket token).
    RoomEvents,
    /// End a room session (release its lease).
    RoomRevoke,
    /// Every room.
    RoomList,
    /// One room.
    RoomStatus,
    /// The dashboard page (docs/api.md, "Dashboard").
    Ui,
    /// The dashboard's snapshots, as Server-Sent Events.
    UiEvents,
}

impl RouteId {
    /// Whether the route's first path parameter is a lock (or resource) name, which a key
    /// limited to a prefix must match. (An outbox id is not a name: outbox entries are
    /// scoped by the tenant that created them, in the keeper.)
    pub fn names_lock(self) -> bool {
        match self {
            Self::Acquire
            | Self::Renew
            | Self::Release
            | Self::TicketStatus
            | Self::TicketLeave
            | Self::Events
            | Self::LockStatus
            | Self::DataGet
            | Self::DataPut
            | Self::DataDelete
            | Self::CompatGet
            | Self::CompatLock
            | Self::CompatPut
            | Self::CompatUnlock
            | Self::ResourceDelete => true,
            Self::Healthz
            | Self::Readyz
            | Self::Metrics
            | Self::OpenApi
            | Self::LockList
            | Self::CompatHealth
            | Self::CompatCreate
            | Self::OutboxPut
            | Self::OutboxList
            | Self::OutboxGet
            | Self::OutboxRetry
            | Self::OutboxDelete
            | Self::Ui
            | Self::UiEvents => false,
            // A room's lock is `room:<name>`: `rooms::plan` checks the prefix on it.
            Self::RoomGate
            | Self::RoomWait
            | Self::RoomEvents
            | Self::RoomRevoke
            | Self::RoomList
            | Self::RoomStatus => false,
        }
    }

    /// Whether this is a waiting room's route (planned by `http::rooms`).
    pub fn is_room(self) -> bool {
        matches!(
            self,
            Self::RoomGate | Self::RoomWait | Self::RoomEvents | Self::RoomRevoke | Self::RoomList | Self::RoomStatus
        )
    }

    /// Whether this is a Small Resource Server route (its client expects 401, not 403, for
    /// a key without the role).
    pub fn is_compat(self) -> bool {
        matches!(
            self,
            Self::CompatHealth
                | Self::CompatCreate
                | Self::CompatGet
                | Self::CompatLock
                | Self::CompatPut
                | Self::CompatUnlock
        )
    }
}

/// One row of the route table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteDef {
    /// Method (`None`: any).
    pub method: Option<Method>,
    /// Path pattern; `{…}` is one path segment.
    pub pattern: &'static str,
    /// The route.
    pub id: RouteId,
    /// The role a key needs (`None`: open to anyone who can connect).
    pub role: Option<Role>,
    /// Label in metrics.
    pub label: &'static str,
}

const fn row(method: Method, pattern: &'static str, id: RouteId, role: Option<Role>, label: &'static str) -> RouteDef {
    RouteDef { method: Some(method), pattern, id, role, label }
}

const READ: Option<Role> = Some(Role::Read);
const LOCK: Option<Role> = Some(Role::Lock);
const WRITE: Option<Role> = Some(Role::Write);

/// The route table: the one place that says which routes exist and who may call them.
pub const ROUTES: &[RouteDef] = &[
    row(Method::Get, "/healthz", RouteId::Healthz, None, "healthz"),
    row(Method::Get, "/readyz", RouteId::Readyz, None, "readyz"),
    row(Method::Get, "/metrics", RouteId::Metrics, READ, "metrics"),
    // The API's description holds no data, so it opens for anyone (as /healthz does).
    row(Method::Get, "/v1/openapi.json", RouteId::OpenApi, None, "openapi"),
    row(Method::Post, "/v1/locks/{name}/acquire", RouteId::Acquire, LOCK, "acquire"),
    row(Method::Post, "/v1/locks/{name}/renew", RouteId::Renew, LOCK, "renew"),
    row(Method::Post, "/v1/locks/{name}/release", RouteId::Release, LOCK, "release"),
    row(Method::Get, "/v1/locks/{name}/tickets/{ticket}", RouteId::TicketStatus, LOCK, "ticket_status"),
    row(Method::Delete, "/v1/locks/{name}/tickets/{ticket}", RouteId::TicketLeave, LOCK, "ticket_leave"),
    row(Method::Get, "/v1/locks/{name}/events", RouteId::Events, READ, "events"),
    row(Method::Get, "/v1/locks/{name}", RouteId::LockStatus, READ, "lock_status"),
    row(Method::Get, "/v1/locks", RouteId::LockList, READ, "lock_list"),
    row(Method::Get, "/v1/locks/{name}/data/{key}", RouteId::DataGet, READ, "data_get"),
    row(Method::Put, "/v1/locks/{name}/data/{key}", RouteId::DataPut, WRITE, "data_put"),
    row(Method::Delete, "/v1/locks/{name}/data/{key}", RouteId::DataDelete, WRITE, "data_delete"),
    RouteDef { method: None, pattern: "/health", id: RouteId::CompatHealth, role: None, label: "compat_health" },
    row(Method::Post, "/resource", RouteId::CompatCreate, WRITE, "compat_create"),
    // Reading without the lock (`?lock=0`) needs only `read`: see `needed_role`.
    row(Method::Get, "/resource/{name}/{selector}", RouteId::CompatGet, LOCK, "compat_get"),
    row(Method::Put, "/resource/{name}/{selector}/lock", RouteId::CompatLock, LOCK, "compat_lock"),
    row(Method::Put, "/resource/{name}/{selector}", RouteId::CompatPut, WRITE, "compat_put"),
    row(Method::Put, "/resource/{name}/{selector}/unlock", RouteId::CompatUnlock, LOCK, "compat_unlock"),
    row(Method::Post, "/resource/{name}/{selector}/unlock", RouteId::CompatUnlock, LOCK, "compat_unlock"),
    row(Method::Delete, "/resource/{name}", RouteId::ResourceDelete, WRITE, "resource_delete"),
    row(Method::Post, "/v1/outbox", RouteId::OutboxPut, WRITE, "outbox_put"),
    row(Method::Get, "/v1/outbox", RouteId::OutboxList, READ, "outbox_list"),
    row(Method::Get, "/v1/outbox/{id}", RouteId::OutboxGet, READ, "outbox_get"),
    row(Method::Post, "/v1/outbox/{id}/retry", RouteId::OutboxRetry, WRITE, "outbox_retry"),
    row(Method::Delete, "/v1/outbox/{id}", RouteId::OutboxDelete, WRITE, "outbox_delete"),
    // The cookie or the token is the credential of the first three (docs/api.md "Waiting rooms").
    row(Method::Get, "/v1/rooms/{room}/gate", RouteId::RoomGate, None, "room_gate"),
    row(Method::Get, "/v1/rooms/{room}/wait", RouteId::RoomWait, None, "room_wait"),
    row(Method::Get, "/v1/rooms/{room}/events", RouteId::RoomEvents, None, "room_events"),
    row(Method::Delete, "/v1/rooms/{room}/sessions/{ticket}", RouteId::RoomRevoke, LOCK, "room_revoke"),
    row(Method::Get, "/v1/rooms", RouteId::RoomList, READ, "room_list"),
    row(Method::Get, "/v1/rooms/{room}", RouteId::RoomStatus, READ, "room_status"),
    // The page holds no data (the events need `read`), so it opens for anyone.
    row(Method::Get, "/ui", RouteId::Ui, None, "ui"),
    row(Method::Get, "/v1/ui/events", RouteId::UiEvents, READ, "ui_events"),
];

/// The role a matched request needs: the table's, except that a Small Resource Server read
/// with `lock=0` takes no lock and needs only `read`.
pub fn needed_role(def: &RouteDef, query: &str) -> Option<Role> {
    if def.id == RouteId::CompatGet && !compat_locks(query) {
        return READ;
    }
    def.role
}

/// Whether a Small Resource Server read takes the lock: yes unless `lock` is a number equal
/// to zero (`0`, `00`, `0.0`), as the original decides.
pub fn compat_locks(query: &str) -> bool {
    match query_param(query, "lock") {
        None => true,
        Some(v) => !v.trim().parse::<f64>().is_ok_and(|n| n == 0.0),
    }
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space).
pub fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(&v.replace('+', " "))).flatten()
    })
}

/// Metrics label of requests that matched no route.
pub const LABEL_UNROUTED: &str = "unrouted";

/// A matched request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'a> {
    /// The table row.
    pub def: &'static RouteDef,
    /// Path parameters, decoded, in pattern order.
    pub params: Vec<String>,
    /// The query string (without `?`; empty if none).
    pub query: &'a str,
}

/// Why no route matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// No such path.
    NotFound,
    /// The path exists with other methods (listed for `Allow`).
    MethodNotAllowed {
        /// Methods, comma-separated.
        allow: String,
    },
    /// A path segment is not valid percent-encoding.
    BadPath,
}

/// Decodes `%XX` escapes; `None` on a bad escape or a result that is not UTF-8.
pub fn percent_decode(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_string());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let value = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Matches `path` against `pattern`, collecting the placeholder segments (not decoded yet).
fn match_path<'a>(pattern: &str, path: &'a str, params: &mut Vec<&'a str>) -> bool {
    params.clear();
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some(want), Some(got)) if want.starts_with('{') && !got.is_empty() => params.push(got),
            (Some(want), Some(got)) if want == got => {}
            _ => return false,
        }
    }
}

/// Whether a row for `row_method` serves a request with `method`: the same method, or
/// `HEAD` on a `GET` row.
fn serves(row_method: Method, method: Method) -> bool {
    row_method == method || (row_method == Method::Get && method == Method::Head)
}

/// Finds the route for `method` and `target` (path and query).
pub fn route(method: Method, target: &str) -> Result<Matched<'_>, RouteError> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut allow: Vec<&str> = Vec::new();
    let mut raw = Vec::new();
    for def in ROUTES {
        if !match_path(def.pattern, path, &mut raw) {
            continue;
        }
        if let Some(only) = def.method.filter(|m| !serves(*m, method)) {
            for m in [Some(only), (only == Method::Get).then_some(Method::Head)].into_iter().flatten() {
                if !allow.contains(&m.as_str()) {
                    allow.push(m.as_str());
                }
            }
            continue;
        }
        let params = raw.iter().map(|p| percent_decode(p)).collect::<Option<Vec<_>>>().ok_or(RouteError::BadPath)?;
        return Ok(Matched { def, params, query });
    }
    if allow.is_empty() {
        Err(RouteError::NotFound)
    } else {
        Err(RouteError::MethodNotAllowed { allow: allow.join(", ") })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A concrete path for a pattern.
    pub(crate) fn example_path(pattern: &str) -> String {
        pattern
            .replace("{name}", "some-lock")
            .replace("{ticket}", "AAAAAAAAAAAAAAAAAAAAAA")
            .replace("{key}", "k")
            .replace("{selector}", "sel")
    }

    #[test]
    fn every_route_in_the_table_resolves_to_itself() {
        for def in ROUTES {
            let target = format!("{}?x=1", example_path(def.pattern));
            let m = route(def.method.unwrap_or(Method::Patch), &target).unwrap();
            assert_eq!(m.def.id, def.id, "{}", def.pattern);
            assert_eq!(m.query, "x=1");
            if def.pattern.contains("{name}") {
                assert_eq!(m.params[0], "some-lock");
            }
        }
    }

    #[test]
    fn compat_reads_lock_unless_lock_is_zero() {
        for (query, locks) in [
            ("", true),
            ("lock=1", true),
            ("lock=0", false),
            ("lock=00", false),
            ("lock=0.0", false),
            ("lock=false", true),
            ("lock=", true),
        ] {
            assert_eq!(compat_locks(query), locks, "{query:?}");
        }
        let get = ROUTES.iter().find(|d| d.id == RouteId::CompatGet).unwrap();
        assert_eq!(needed_role(get, "lock=0"), Some(Role::Read));
        assert_eq!(needed_role(get, ""), Some(Role::Lock));
        assert_eq!(query_param("a=1&ticket=x%2By&b", "ticket").as_deref(), Some("x+y"));
        assert_eq!(query_param("prefix=a+b", "prefix").as_deref(), Some("a b"));
        assert_eq!(query_param("b", "b").as_deref(), Some(""));
    }

    #[test]
    fn names_are_percent_decoded() {
        let m = route(Method::Post, "/v1/locks/a%3Ab%2Fc/acquire").unwrap();
        assert_eq!(m.params, vec!["a:b/c".to_string()]);
        assert_eq!(route(Method::Post, "/v1/locks/a%zz/acquire"), Err(RouteError::BadPath));
    }

    #[test]
    fn unknown_paths_and_wrong_methods() {
        assert_eq!(route(Method::Get, "/nope"), Err(RouteError::NotFound));
        assert_eq!(route(Method::Post, "/v1/locks//acquire"), Err(RouteError::NotFound));
        assert_eq!(
            route(Method::Get, "/v1/locks/x/acquire"),
            Err(RouteError::MethodNotAllowed { allow: "POST".into() })
        );
        assert_eq!(route(Method::Post, "/healthz/"), Err(RouteError::NotFound));
        assert_eq!(
            route(Method::Post, "/v1/locks/x/data/k"),
            Err(RouteError::MethodNotAllowed { allow: "GET, HEAD, PUT, DELETE".into() })
        );
    }

    #[test]
    fn r12_head_takes_every_get_route_and_nothing_else() {
        for def in ROUTES {
            let path = example_path(def.pattern);
            match (def.method, route(Method::Head, &path)) {
                (Some(Method::Get) | None, Ok(m)) => assert_eq!(m.def.id, def.id, "{}", def.pattern),
                (Some(Method::Get) | None, Err(e)) => panic!("HEAD {path}: {e:?}"),
                // Another row of the same path may be a GET row (data keys, tickets).
                (Some(_), found) => assert!(
                    found.as_ref().is_ok_and(|m| m.def.method == Some(Method::Get))
                        || matches!(&found, Err(RouteError::MethodNotAllowed { allow }) if !allow.contains("HEAD")),
                    "HEAD {path}: {found:?}"
                ),
            }
        }
        assert_eq!(
            route(Method::Head, "/v1/locks/x/acquire"),
            Err(RouteError::MethodNotAllowed { allow: "POST".into() })
        );
    }
}
