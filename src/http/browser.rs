//! Browser access and the dashboard, pure (docs/api.md, "Browser access" and "Dashboard").
//!
//! - **Ticket tokens.** With `browser.secret`, native acquire answers carry a
//!   `ticket_token`: `{lock, ticket}` sealed ([`crate::core::seal`], purpose `ticket`). A
//!   request without an API key that carries `token=` in its query may read that one
//!   ticket's status (`GET /v1/locks/{name}/tickets/{ticket}`) and events
//!   (`GET /v1/locks/{name}/events?ticket=`): [`BrowserRules::admit_token`]. A token that
//!   does not open, or names another lock or ticket, is 401 as a missing key is.
//! - **CORS.** A request whose `Origin` is listed in `browser.cors_origins` (exactly; no
//!   wildcard) gets `Access-Control-Allow-Origin: <origin>` and `Vary: Origin` on its
//!   answer, errors too ([`with_cors`]); an `OPTIONS` preflight is answered here
//!   ([`BrowserRules::preflight`]). An origin not listed gets no CORS headers.
//! - **Dashboard.** `GET /ui` is one embedded page ([`ui_page`]: HTML, CSS and JavaScript
//!   inline, no framework, no build step, a Content-Security-Policy that allows its own
//!   inline script and style by hash and nothing else); `GET /v1/ui/events` streams
//!   `snapshot` events shaped by [`snapshot_event`] from the keeper's overview and the
//!   processes the worker learnt from the master's metrics ([`processes_from_metrics`]).
//!
//! Nothing here reads a clock or a socket: the worker passes everything in.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::admit::{Admitted, Refused, WWW_AUTHENTICATE};
use super::auth::Grant;
use super::pages::{csp_hash, json_for_script};
use super::parse::Method;
use super::response::Response;
use super::route::{query_param, route, RouteError, RouteId};
use super::status::{error, ErrorCode};
use crate::config::{BrowserConfig, Role};
use crate::core::names::{LockName, Ticket};
use crate::core::seal;
use crate::ipc::message::LockInfo;
use crate::ipc::overview::{Overview, ROOM_LOCK_PREFIX};

/// The seal purpose of ticket tokens.
pub const TICKET_PURPOSE: &str = "ticket";
/// The request headers a preflight allows.
pub const CORS_ALLOW_HEADERS: &str = "x-api-key, authorization, content-type, last-event-id";
/// The answer headers a page may read besides the simple ones.
pub const CORS_EXPOSE_HEADERS: &str = "Retry-After, X-Ticket, Allow";
/// The methods a preflight allows on a path that takes any method (`/health`).
const ANY_METHOD: &str = "GET, HEAD, POST, PUT, DELETE, PATCH";
/// The metrics label of CORS preflight answers.
pub const LABEL_PREFLIGHT: &str = "cors_preflight";
/// How often an open dashboard gets a snapshot.
pub const DASHBOARD_EVERY_MS: u64 = 1_000;
/// How many of the busiest locks a snapshot lists.
pub const DASHBOARD_BUSIEST: u32 = 20;
/// Most processes a snapshot lists (workers are at most 256, plus master, keeper, courier).
pub const MAX_SNAPSHOT_PROCESSES: usize = 260;

/// The dashboard page as written; [`ui_page`] fills in its settings.
const UI_TEMPLATE: &str = include_str!("pages/ui.html");
/// Where the page's settings go (inside a `<script type="application/json">`).
const UI_SETTINGS_SLOT: &str = "__UI_SETTINGS__";

/// What a ticket token vouches for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketClaim {
    /// The lock.
    pub lock: LockName,
    /// The ticket.
    pub ticket: Ticket,
}

/// The browser rules in force (from `[browser]`).
#[derive(Clone)]
pub struct BrowserRules {
    secret: Option<Vec<u8>>,
    origins: Vec<String>,
    max_age_s: u64,
}

impl std::fmt::Debug for BrowserRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("BrowserRules")
            .field("tokens", &self.secret.is_some())
            .field("origins", &self.origins)
            .field("max_age_s", &self.max_age_s)
            .finish()
    }
}

impl BrowserRules {
    /// Rules from the configuration.
    pub fn new(config: &BrowserConfig) -> Self {
        Self {
            secret: config.secret.as_ref().map(|s| s.as_bytes().to_vec()),
            origins: config.cors_origins.clone(),
            max_age_s: config.cors_max_age_s,
        }
    }

    /// The ticket token of `ticket` on `lock`, when tokens are on.
    pub fn ticket_token(&self, lock: &LockName, ticket: Ticket) -> Option<String> {
        let secret = self.secret.as_deref()?;
        Some(seal::seal(secret, TICKET_PURPOSE, &TicketClaim { lock: lock.clone(), ticket }))
    }

    /// `response` (an answer to an acquire on `lock`) with its ticket's token added, when
    /// tokens are on and it is a 200 or 202 JSON object with a `ticket`; else as it was.
    pub fn with_ticket_token(&self, lock: &LockName, response: Response) -> Response {
        if self.secret.is_none() || !matches!(response.status, 200 | 202) {
            return response;
        }
        let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice(&response.body) else { return response };
        let Some(ticket) = body.get("ticket").and_then(|t| t.as_str()).and_then(|t| Ticket::parse(t).ok()) else {
            return response;
        };
        let Some(token) = self.ticket_token(lock, ticket) else { return response };
        body.insert("ticket_token".into(), serde_json::Value::String(token));
        Response { body: serde_json::to_vec(&body).unwrap_or(response.body.clone()), ..response }
    }

    /// The origin to allow on the answer to a request that came with `origin`: the one
    /// listed, or `None` (no CORS headers).
    pub fn cors_origin<'a>(&'a self, origin: Option<&str>) -> Option<&'a str> {
        let origin = origin?;
        self.origins.iter().find(|o| o.eq_ignore_ascii_case(origin)).map(String::as_str)
    }

    /// The answer to an `OPTIONS` request when it is a CORS preflight (it has an `Origin`
    /// and CORS is configured): 204 with the path's methods for a listed origin, 403 for
    /// another, 404 for no such path. `None`: not a preflight (routed as any request).
    pub fn preflight(&self, target: &str, origin: Option<&str>) -> Option<Response> {
        let origin = origin?;
        if self.origins.is_empty() {
            return None;
        }
        let Some(allowed) = self.cors_origin(Some(origin)) else {
            return Some(error(
                ErrorCode::Forbidden,
                "this origin may not call the API from a browser (browser.cors_origins)",
            ));
        };
        let methods = match route(Method::Options, target) {
            Ok(_) => ANY_METHOD.to_string(),
            Err(RouteError::MethodNotAllowed { allow }) => allow,
            Err(RouteError::NotFound) => return Some(with_cors(error(ErrorCode::NotFound, "no such route"), allowed)),
            Err(RouteError::BadPath) => {
                return Some(with_cors(error(ErrorCode::BadRequest, "the path has an invalid %-escape"), allowed))
            }
        };
        let response =
            Response { status: 204, content_type: "application/json", headers: Vec::new(), body: Vec::new() }
                .with_header("Access-Control-Allow-Origin", allowed)
                .with_header("Vary", "Origin")
                .with_header("Access-Control-Allow-Methods", methods)
                .with_header("Access-Control-Allow-Headers", CORS_ALLOW_HEADERS)
                .with_header("Access-Control-Max-Age", self.max_age_s.to_string());
        Some(response)
    }

    /// Admits a request by its ticket token: `None` when the token does not apply (tokens
    /// off, an API key given, no `token=` in the query, or a route other than a ticket's
    /// status or events), so the API key rules decide; else the token's verdict. An
    /// admitted request may read that ticket only (its grant is `read` on any name: the
    /// two routes look at nothing else, and the token fixed the lock and the ticket).
    pub fn admit_token<'a>(
        &self,
        method: Method,
        target: &'a str,
        api_key: Option<&str>,
    ) -> Option<Result<Admitted<'a>, Refused>> {
        let secret = self.secret.as_deref()?;
        if api_key.is_some() {
            return None;
        }
        let (_, query) = target.split_once('?')?;
        let token = query_param(query, "token")?;
        let matched = route(method, target).ok()?;
        let def = matched.def;
        let ticket = match def.id {
            RouteId::TicketStatus => matched.params.get(1).cloned(),
            RouteId::Events => query_param(query, "ticket"),
            _ => return None,
        };
        let valid = seal::open::<TicketClaim>(secret, TICKET_PURPOSE, &token).is_ok_and(|claim| {
            matched.params.first().is_some_and(|name| name == claim.lock.as_str())
                && ticket.and_then(|t| Ticket::parse(&t).ok()) == Some(claim.ticket)
        });
        Some(if valid {
            let grant = Grant { prefix: "", role: Role::Read };
            Ok(Admitted { def, params: matched.params, query: matched.query, grant })
        } else {
            let message = "the ticket token is not valid for this lock and ticket";
            let response = error(ErrorCode::Unauthorized, message).with_header("WWW-Authenticate", WWW_AUTHENTICATE);
            Err(Refused { label: def.label, response })
        })
    }
}

/// `response` with the CORS headers that allow `origin` to read it.
pub fn with_cors(response: Response, origin: &str) -> Response {
    response
        .with_header("Access-Control-Allow-Origin", origin)
        .with_header("Vary", "Origin")
        .with_header("Access-Control-Expose-Headers", CORS_EXPOSE_HEADERS)
}

/// The dashboard streams a worker may open: `None` when one more fits, else the answer.
pub fn dashboard_refusal(open: usize, max: u64) -> Option<Response> {
    if (open as u64) < max {
        return None;
    }
    let message = if max == 0 {
        "dashboards are turned off (browser.max_dashboards = 0)".to_string()
    } else {
        format!("this worker carries its maximum of {max} dashboard streams (browser.max_dashboards)")
    };
    Some(error(ErrorCode::Overloaded, &message))
}

/// The text of the first inline element between `open` and `close` in the page's
/// `<head>` or `<body>` (the comment before `<html>` is skipped).
fn inline_text<'a>(page: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let from = page.find("<head>")?;
    let start = from + page[from..].find(open)? + open.len();
    let end = start + page[start..].find(close)?;
    Some(&page[start..end])
}

/// What the page needs to know before it asks for anything.
#[derive(Serialize)]
struct UiSettings {
    /// Whether the server needs an API key (then the page asks for one first).
    needs_key: bool,
    /// Where the snapshots come from.
    events: &'static str,
    /// Milliseconds between snapshots.
    every_ms: u64,
}

/// The answer to `GET /ui`: the page, with its settings, `Cache-Control: no-store`, and a
/// Content-Security-Policy that lets it run its own inline script and style (by hash),
/// connect to this server, and nothing else.
pub fn ui_page(needs_key: bool) -> Response {
    let settings = UiSettings { needs_key, events: "/v1/ui/events", every_ms: DASHBOARD_EVERY_MS };
    let page = UI_TEMPLATE.replacen(UI_SETTINGS_SLOT, &json_for_script(&settings), 1);
    let script = csp_hash(inline_text(&page, "<script>", "</script>").unwrap_or_default());
    let style = csp_hash(inline_text(&page, "<style>", "</style>").unwrap_or_default());
    let csp = format!(
        "default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    Response::text(200, "text/html; charset=utf-8", page)
        .with_header("Cache-Control", "no-store")
        .with_header("Content-Security-Policy", csp)
        .with_header("X-Content-Type-Options", "nosniff")
        .with_header("Referrer-Policy", "no-referrer")
}

/// One process as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessRow {
    /// `master`, `keeper`, `courier` or `worker`.
    pub role: String,
    /// A worker's slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    /// Resident memory, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resident_bytes: Option<u64>,
    /// CPU time, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<f64>,
    /// Start time, ms since the Unix epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<u64>,
    /// A worker's open connections.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_connections: Option<u64>,
}

/// The label `name` of a sample's `{…}` label set.
fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// The processes the master's `/metrics` page shows (its `leasehold_process_*` families,
/// and each worker's `leasehold_open_connections`): master, keeper, courier, then workers
/// by slot; at most [`MAX_SNAPSHOT_PROCESSES`]. Lines it does not know are skipped.
pub fn processes_from_metrics(text: &str) -> Vec<ProcessRow> {
    fn rank(role: &str) -> u8 {
        match role {
            "master" => 0,
            "keeper" => 1,
            "courier" => 2,
            "worker" => 3,
            _ => 4,
        }
    }
    let mut rows: BTreeMap<(u8, String, Option<u32>), ProcessRow> = BTreeMap::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Some((name, rest)) = series.split_once('{') else { continue };
        let labels = rest.trim_end_matches('}');
        let Ok(number) = value.parse::<f64>() else { continue };
        let (role, slot) = match name {
            "leasehold_open_connections" => ("worker".to_string(), label(labels, "worker")),
            "leasehold_process_resident_memory_bytes"
            | "leasehold_process_cpu_seconds_total"
            | "leasehold_process_start_time_seconds" => match label(labels, "role") {
                Some(role) => (role.to_string(), label(labels, "slot")),
                None => continue,
            },
            _ => continue,
        };
        let slot = slot.and_then(|s| s.parse::<u32>().ok());
        let key = (rank(&role), role.clone(), slot);
        if !rows.contains_key(&key) && rows.len() >= MAX_SNAPSHOT_PROCESSES {
            continue;
        }
        let row = rows.entry(key).or_insert_with(|| ProcessRow {
            role,
            slot,
            resident_bytes: None,
            cpu_seconds: None,
            started_at_ms: None,
            open_connections: None,
        });
        match name {
            "leasehold_open_connections" => row.open_connections = Some(number as u64),
            "leasehold_process_resident_memory_bytes" => row.resident_bytes = Some(number as u64),
            "leasehold_process_cpu_seconds_total" => row.cpu_seconds = Some(number),
            _ => row.started_at_ms = Some((number * 1e3) as u64),
        }
    }
    rows.into_values().collect()
}

/// The worker that sends a snapshot, as it knows itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerView {
    /// Its slot.
    pub slot: u32,
    /// Its process id.
    pub pid: u32,
    /// Its open connections.
    pub open_connections: u64,
    /// Its open dashboard streams.
    pub dashboards: u64,
    /// Whether it has a channel to the keeper.
    pub keeper_connected: bool,
}

/// A waiting room as the dashboard shows it: the lock `room:<name>`.
#[derive(Serialize)]
struct RoomRow<'a> {
    name: &'a str,
    lock: &'a str,
    capacity: u32,
    in_use: u32,
    waiting: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    admit_per_minute: Option<u32>,
    admit_burst: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_ttl_ms: Option<u64>,
}

fn room_row(info: &LockInfo) -> RoomRow<'_> {
    let declared = info.declared.as_ref();
    RoomRow {
        name: info.name.as_str().strip_prefix(ROOM_LOCK_PREFIX).unwrap_or(info.name.as_str()),
        lock: info.name.as_str(),
        capacity: info.limit,
        in_use: info.used,
        waiting: info.queue_length,
        admit_per_minute: declared.and_then(|d| d.admit_per_minute),
        admit_burst: declared.map_or(1, |d| d.admit_burst),
        session_ttl_ms: declared.and_then(|d| d.default_ttl_ms),
    }
}

/// The data of a `snapshot` event for the dashboard (compact JSON): the keeper's
/// `overview` (`None` while the worker has no keeper, or the keeper did not answer with
/// one), the processes, and the worker itself. Its size is bounded: the overview's lists
/// and the processes are.
pub fn snapshot_data(overview: Option<&Overview>, processes: &[ProcessRow], worker: &WorkerView) -> String {
    let data = match overview {
        Some(o) => serde_json::json!({
            "keeper": true,
            "at_ms": o.at_ms,
            "locks": {
                "total": o.locks,
                "holders": o.holders,
                "waiters": o.waiters,
                "event_streams": o.event_streams,
                "busiest": o.busiest,
            },
            "rooms": o.rooms.iter().map(room_row).collect::<Vec<_>>(),
            "outbox": o.outbox,
            "processes": processes,
            "worker": worker,
        }),
        None => serde_json::json!({
            "keeper": false,
            "processes": processes,
            "worker": worker,
        }),
    };
    data.to_string()
}

/// The `snapshot` event `id` that carries `data` (from [`snapshot_data`]; one line of
/// JSON, so one `data:` line).
pub fn snapshot_event(id: u64, data: &str) -> Vec<u8> {
    format!("id: {id}\nevent: snapshot\ndata: {data}\n\n").into_bytes()
}

#[cfg(test)]
mod tests;
