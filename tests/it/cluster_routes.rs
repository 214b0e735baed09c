//! Every route of the route table through a follower, as through the leader (docs/cluster.md,
//! "The peer link" and "Clients"): the requests are generated from `ROUTES`, row by row,
//! by one `match` on `RouteId` without a wildcard (a route added to the table does not
//! compile until it is exercised here), and every row must be reached by at least one
//! request (each request is routed by the server's own router to find its row). The same
//! sequence runs through the leader and through a follower, on names of its own; per
//! request, the status, the error code, the headers and the body, with the values that
//! differ by nature (tickets, fences, times, ids, the names' prefix) normalised, must be
//! the same. A long-poll held on the follower is answered at its grant.
//!
//! `/healthz`, `/readyz` and `/metrics` are each node's own: of those only the status and
//! the expected keys or series are compared. What answers cannot show: a read answered
//! from the follower's replica instead of being forwarded gives the leader's answer as
//! long as the replica is in step, as it is on an idle cluster (reads kept on the follower
//! on purpose passed here), so that is not checked here.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use leasehold::http::parse::Method;
use leasehold::http::route::{route, RouteDef, RouteId, ROUTES};
use serde_json::{json, Value};

use crate::support::etcd::EtcdCluster;
use crate::support::http::{once, Reply};
use crate::support::nodes::Nodes;
use crate::support::sse::Events;
use crate::support::{wait_for, DEADLINE};

/// A ticket no lock issued (22 characters of the ticket alphabet).
const UNKNOWN_TICKET: &str = "AAAAAAAAAAAAAAAAAAAAAA";
/// A lease long enough to outlive the sequence.
const LONG: &str = r#"{"ttl_ms":60000}"#;
/// Each node's extra configuration: the outbox may call loopback (where nothing listens:
/// each attempt fails at once), and a waiter that does not poll stays queued for the whole
/// test (so what a lock shows does not depend on how long the sequence took).
const CONFIG: &str = "[outbox]\nallow_local = true\nbase_ms = 20\ncap_ms = 50\n[locks]\nwaiter_ttl_ms = 600000\n";
/// Keys whose values differ between two runs of the same sequence by nature: tickets,
/// fences, times, ids (of outbox entries, resources and their rows), and the pages' cursor.
const VOLATILE: &[&str] = &[
    "ticket",
    "fence",
    "at_ms",
    "expires_at_ms",
    "expires_in_ms",
    "eta_ms",
    "due_ms",
    "since_ms",
    "created_ms",
    "id",
    "idResource",
    "next_after",
];
/// Series every node's `/metrics` has (it is the node's own page: only their presence is
/// compared).
const SERIES: &[&str] = &[
    "leasehold_keeper_up",
    "leasehold_workers",
    "leasehold_http_requests_total",
    "leasehold_open_connections",
    "leasehold_leases",
    "leasehold_event_streams",
    "leasehold_outbox_calls",
    "leasehold_cluster_role",
    "leasehold_cluster_epoch",
    "leasehold_cluster_applied_batch",
    "leasehold_cluster_lag_batches",
];

/// One answer as compared: what was asked (names written with `{p}`), and what came back,
/// normalised.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    /// The row of `ROUTES` the server's router matches the request to.
    row: usize,
    request: String,
    status: u16,
    /// The `error` code of a JSON error body.
    error: Option<String>,
    /// Headers but `Content-Length` (the names' lengths differ), names in lower case.
    headers: Vec<(String, String)>,
    /// The body normalised, or for a node-local route what is compared of it.
    body: Value,
}

/// One run of the sequence through one node.
struct Run {
    addr: SocketAddr,
    /// Every name of the run starts with it (`via-leader-`, `via-follower-`).
    prefix: &'static str,
    /// A loopback port where nothing listens: the outbox's calls there fail at once.
    dead: u16,
    seen: Vec<Seen>,
    /// The fences granted to this run (acquire answers), in order.
    fences: Vec<u64>,
    /// Each ticket and id the answers carried, with its alias (`<ticket 3>`: the third
    /// one seen), by which requests and answers name it.
    aliases: Vec<(String, String)>,
}

/// The row of `ROUTES` that serves `method` on `target`; every request of the sequence
/// must be one the table routes.
fn row_of(method: Method, target: &str) -> usize {
    let matched = route(method, target).unwrap_or_else(|e| panic!("{method:?} {target} is not routed: {e:?}"));
    ROUTES.iter().position(|d| d == matched.def).expect("a row of the table")
}

/// Every key of `value`, recursively, as dotted paths (array items as `[]`).
fn key_paths(value: &Value, at: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                out.insert(path.clone());
                key_paths(v, &path, out);
            }
        }
        Value::Array(items) => {
            for v in items {
                key_paths(v, &format!("{at}[]"), out);
            }
        }
        _ => {}
    }
}

/// The body as JSON; a body that is not JSON as a string; an empty one as null.
fn body_value(reply: &Reply) -> Value {
    if reply.body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(&reply.body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&reply.body).into()))
}

/// `HEAD target` on a connection of its own: the status and headers (the answer has no
/// body, whatever its `Content-Length` says).
fn head(addr: SocketAddr, target: &str) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(stream, "HEAD {target} HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut text = Vec::new();
    let mut byte = [0u8; 1];
    while !text.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).unwrap_or_else(|e| panic!("HEAD {target}: {e}"));
        assert_eq!(n, 1, "HEAD {target}: closed before a whole head: {:?}", String::from_utf8_lossy(&text));
        text.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap();
    let headers = lines.filter_map(|l| l.split_once(": ")).map(|(n, v)| (n.to_string(), v.to_string())).collect();
    Reply { status, headers, body: Vec::new() }
}

/// A ticket from an answer's body, or from its `X-Ticket` header; the unknown ticket when
/// there is none (the sequence goes on alike, and the answers show the difference).
fn ticket_of(reply: &Reply) -> String {
    let body = body_value(reply);
    body["ticket"].as_str().or_else(|| reply.header("x-ticket")).unwrap_or(UNKNOWN_TICKET).to_string()
}

impl Run {
    fn new(addr: SocketAddr, prefix: &'static str, dead: u16) -> Run {
        Run { addr, prefix, dead, seen: Vec::new(), fences: Vec::new(), aliases: Vec::new() }
    }

    /// The alias of ticket or id `value` (`kind`), given at its first sight.
    fn alias(&mut self, kind: &str, value: &str) -> String {
        if let Some((_, alias)) = self.aliases.iter().find(|(v, _)| v == value) {
            return alias.clone();
        }
        let alias = format!("<{kind} {}>", self.aliases.len() + 1);
        self.aliases.push((value.to_string(), alias.clone()));
        alias
    }

    /// `text` with the run's prefix written `{p}` and every ticket and id it knows by its
    /// alias.
    fn text(&self, text: &str) -> String {
        let mut out = text.replace(self.prefix, "{p}");
        for (value, alias) in &self.aliases {
            out = out.replace(value.as_str(), alias);
        }
        out
    }

    /// `value` with tickets and ids by their aliases, the other volatile keys' values
    /// written `<key>` (null stays null: whether they are there is compared), and strings
    /// as [`Run::text`] writes them.
    fn normalise(&mut self, value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    let v = match (k.as_str(), v) {
                        ("ticket" | "id" | "idResource", Value::String(text)) => json!(self.alias(k, text)),
                        (key, v) if VOLATILE.contains(&key) && !v.is_null() => json!(format!("<{k}>")),
                        _ => self.normalise(v),
                    };
                    out.insert(k.clone(), v);
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|v| self.normalise(v)).collect()),
            Value::String(text) => Value::String(self.text(text)),
            other => other.clone(),
        }
    }

    /// A name of this run.
    fn name(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Sends a request whose answer is compared whole (normalised).
    fn send(&mut self, method: Method, target: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let reply = once(self.addr, method.as_str(), target, headers, body);
        let value = body_value(&reply);
        if let Some(fence) = value["fence"].as_u64().filter(|_| value["status"] == "acquired") {
            self.fences.push(fence);
        }
        let shown = self.normalise(&value);
        self.record(method, target, &reply, shown);
        reply
    }

    /// Sends `HEAD target`, compared as any answer.
    fn head(&mut self, target: &str) -> Reply {
        let reply = head(self.addr, target);
        self.record(Method::Head, target, &reply, Value::Null);
        reply
    }

    /// Sends a request to a route each node answers itself: what is compared is
    /// `summary` of its answer.
    fn send_local(&mut self, method: Method, target: &str, summary: fn(&Reply) -> Value) -> Reply {
        let reply = once(self.addr, method.as_str(), target, &[], "");
        let shown = summary(&reply);
        let mut kept = reply.clone();
        // Its headers are the node's own too: only the content type is compared.
        kept.headers.retain(|(n, _)| n.eq_ignore_ascii_case("content-type"));
        self.record(method, target, &kept, shown);
        reply
    }

    fn record(&mut self, method: Method, target: &str, reply: &Reply, body: Value) {
        let mut headers: Vec<(String, String)> = reply
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
            .filter(|(n, _)| n != "content-length")
            .collect();
        for (n, v) in &mut headers {
            *v = if n == "x-ticket" { self.alias("ticket", v) } else { self.text(v) };
        }
        headers.sort();
        let error =
            serde_json::from_slice::<Value>(&reply.body).ok().and_then(|b| b["error"].as_str().map(str::to_string));
        let request = format!("{} {}", method.as_str(), self.text(target));
        self.seen.push(Seen { row: row_of(method, target), request, status: reply.status, error, headers, body });
    }

    /// The lock's status, not recorded (a condition waited for).
    fn queue_length(&self, lock: &str) -> Value {
        once(self.addr, "GET", &format!("/v1/locks/{lock}"), &[], "").json()["queue_length"].clone()
    }

    /// Waits until outbox entry `id` has failed (not recorded: its delivery is the
    /// leader's courier's, on its own time).
    fn wait_failed(&self, id: &str) {
        wait_for("the outbox entry to fail", || {
            let entry = once(self.addr, "GET", &format!("/v1/outbox/{id}"), &[], "");
            let body = body_value(&entry);
            (body["state"] == "failed").then_some(()).ok_or(body)
        });
    }
}

/// `/healthz`, `/readyz`: the body's keys (the values are the node's own).
fn keys_only(reply: &Reply) -> Value {
    let mut keys = BTreeSet::new();
    key_paths(&body_value(reply), "", &mut keys);
    json!(keys)
}

/// `/metrics`: which of the expected series the page has.
fn series_present(reply: &Reply) -> Value {
    let text = String::from_utf8_lossy(&reply.body);
    let has = |name: &str| {
        text.lines().any(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
    };
    SERIES.iter().map(|s| (s.to_string(), json!(has(s)))).collect::<serde_json::Map<_, _>>().into()
}

/// The requests for one row of the table, sent through `run`. One arm per route and no
/// wildcard: a route added to the table does not compile until it is exercised here.
fn exercise(run: &mut Run, def: &RouteDef) {
    use Method::{Delete, Get, Post, Put};
    match def.id {
        // Node-local: each node answers these itself (liveness, its own readiness and
        // role, its own metrics), so only the status and the presence of the expected
        // keys or series are compared.
        RouteId::Healthz => {
            run.send_local(Get, "/healthz", keys_only);
        }
        RouteId::Readyz => {
            run.send_local(Get, "/readyz", keys_only);
        }
        // The document is the binary's own, the same on every node.
        RouteId::OpenApi => {
            run.send_local(Get, "/v1/openapi.json", |r| json!(r.body.len()));
        }
        // The dashboard: the page is the same everywhere; the stream's snapshots are the
        // node's own view, so only its head is compared.
        RouteId::Ui => {
            run.send_local(Get, "/ui", |r| json!(r.body.len()));
        }
        RouteId::UiEvents => {
            run.head("/v1/ui/events");
        }
        RouteId::Metrics => {
            let page = run.send_local(Get, "/metrics", series_present);
            let present = series_present(&page);
            assert!(present.as_object().unwrap().values().all(|v| v == true), "{present}");
        }
        RouteId::Acquire => {
            let lock = run.name("acquired");
            let path = format!("/v1/locks/{lock}/acquire");
            let holder = ticket_of(&run.send(Post, &path, &[], r#"{"ttl_ms":60000,"owner":"host-a"}"#));
            run.send(Post, &path, &[], r#"{"queue":"none"}"#);
            run.send(Post, &path, &[], LONG);
            run.send(Post, &path, &[], r#"{"limit":2}"#);
            run.send(Post, &path, &[], r#"{"queue":"lottery"}"#);
            run.send(Post, &path, &[], r#"{"no_such_field":1}"#);
            run.send(Post, &path, &[], "{not json");
            // The holder's ticket enters its lease again.
            run.send(Post, &path, &[], &format!(r#"{{"ticket":"{holder}","ttl_ms":60000}}"#));
            // A wait that runs out.
            run.send(Post, &path, &[], r#"{"ttl_ms":60000,"wait_ms":200}"#);
            let too_long = "x".repeat(201);
            run.send(Post, &format!("/v1/locks/{too_long}/acquire"), &[], "{}");
            // A long-poll held by this node is answered at its grant, the holder's release.
            let lock = run.name("long-poll");
            let path = format!("/v1/locks/{lock}/acquire");
            let first = run.send(Post, &path, &[], LONG);
            let addr = run.addr;
            let waiting = {
                let path = path.clone();
                std::thread::spawn(move || {
                    let reply = once(addr, "POST", &path, &[], r#"{"ttl_ms":60000,"wait_ms":20000}"#);
                    (reply, Instant::now())
                })
            };
            wait_for("the long-poll to wait", || {
                let length = run.queue_length(&lock);
                (length == 1).then_some(()).ok_or(length)
            });
            let released_at = Instant::now();
            let release = format!(r#"{{"ticket":"{}"}}"#, ticket_of(&first));
            run.send(Post, &format!("/v1/locks/{lock}/release"), &[], &release);
            let (granted, answered_at) = waiting.join().expect("the long-poll");
            let value = body_value(&granted);
            assert_eq!(granted.status, 200, "the long-poll through {}: {value}", run.prefix);
            assert!(value["fence"].as_u64() > body_value(&first)["fence"].as_u64(), "{value}");
            eprintln!(
                "{}long-poll answered {} ms after the release was sent",
                run.prefix,
                answered_at.saturating_duration_since(released_at).as_millis()
            );
            run.fences.extend(value["fence"].as_u64());
            let shown = run.normalise(&value);
            run.record(Post, &path, &granted, shown);
        }
        RouteId::Renew => {
            let lock = run.name("renewed");
            let base = format!("/v1/locks/{lock}");
            let holder = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            let waiter = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            let path = format!("{base}/renew");
            run.send(Post, &path, &[], &format!(r#"{{"ticket":"{holder}","ttl_ms":60000}}"#));
            run.send(Post, &path, &[], &format!(r#"{{"ticket":"{holder}"}}"#));
            run.send(Post, &path, &[], &format!(r#"{{"ticket":"{waiter}"}}"#));
            run.send(Post, &path, &[], &format!(r#"{{"ticket":"{UNKNOWN_TICKET}"}}"#));
            run.send(Post, &path, &[], r#"{"ticket":"not-a-ticket"}"#);
            run.send(Post, &path, &[], "{}");
        }
        RouteId::Release => {
            let lock = run.name("released");
            let base = format!("/v1/locks/{lock}");
            let holder = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            let waiter = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            let path = format!("{base}/release");
            // The waiter leaves the queue; the holder releases; again, it is gone.
            run.send(Post, &path, &[], &format!(r#"{{"ticket":"{waiter}"}}"#));
            run.send(Post, &path, &[], &format!(r#"{{"ticket":"{holder}"}}"#));
            run.send(Post, &path, &[], &format!(r#"{{"ticket":"{holder}"}}"#));
            run.send(Post, &path, &[], r#"{"ticket":"not-a-ticket"}"#);
            run.send(
                Post,
                &format!("/v1/locks/{}/release", run.name("never-taken")),
                &[],
                &format!(r#"{{"ticket":"{UNKNOWN_TICKET}"}}"#),
            );
        }
        RouteId::TicketStatus => {
            let lock = run.name("tickets");
            let base = format!("/v1/locks/{lock}");
            let holder = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            let waiter = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            run.send(Get, &format!("{base}/tickets/{holder}"), &[], "");
            run.send(Get, &format!("{base}/tickets/{waiter}"), &[], "");
            run.send(Get, &format!("{base}/tickets/{UNKNOWN_TICKET}"), &[], "");
            run.send(Get, &format!("{base}/tickets/not-a-ticket"), &[], "");
            run.head(&format!("{base}/tickets/{holder}"));
        }
        RouteId::TicketLeave => {
            let lock = run.name("left");
            let base = format!("/v1/locks/{lock}");
            let holder = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            let waiter = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            run.send(Delete, &format!("{base}/tickets/{waiter}"), &[], "");
            run.send(Delete, &format!("{base}/tickets/{holder}"), &[], "");
            run.send(Delete, &format!("{base}/tickets/{holder}"), &[], "");
            run.send(Delete, &format!("{base}/tickets/not-a-ticket"), &[], "");
        }
        RouteId::Events => {
            let lock = run.name("streamed");
            let base = format!("/v1/locks/{lock}");
            let holder = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            let waiter = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            run.head(&format!("{base}/events?ticket={waiter}"));
            run.head(&format!("{base}/events?ticket={UNKNOWN_TICKET}"));
            run.send(Get, &format!("{base}/events"), &[], "");
            run.send(Get, &format!("{base}/events?ticket=not-a-ticket"), &[], "");
            run.send(Get, &format!("{base}/events?ticket={UNKNOWN_TICKET}"), &[], "");
            // The waiter's stream: where it stands, its grant at the holder's release, and
            // its own release, which ends it.
            let mut events = Events::open(run.addr, &lock, &waiter);
            let mut got = vec![events.next()];
            run.send(Post, &format!("{base}/release"), &[], &format!(r#"{{"ticket":"{holder}"}}"#));
            got.push(events.next());
            run.send(Post, &format!("{base}/release"), &[], &format!(r#"{{"ticket":"{waiter}"}}"#));
            got.push(events.next());
            let shown: Vec<Value> = got.iter().map(|(id, name, data)| json!([id, name, run.normalise(data)])).collect();
            let stream = Reply {
                status: 200,
                headers: vec![("Content-Type".into(), "text/event-stream".into())],
                body: Vec::new(),
            };
            run.record(Get, &format!("{base}/events?ticket={waiter}"), &stream, json!(shown));
        }
        RouteId::LockStatus => {
            let lock = run.name("status");
            let base = format!("/v1/locks/{lock}");
            run.send(
                Post,
                &format!("{base}/acquire"),
                &[],
                r#"{"ttl_ms":60000,"owner":"host-b","limit":3,"weight":2}"#,
            );
            run.send(Post, &format!("{base}/acquire"), &[], r#"{"ttl_ms":60000,"limit":3,"weight":2}"#);
            run.send(Get, &base, &[], "");
            run.head(&base);
            run.send(Get, &format!("/v1/locks/{}", run.name("no-such-lock")), &[], "");
            run.send(Get, &format!("/v1/locks/{}", "x".repeat(201)), &[], "");
        }
        RouteId::LockList => {
            let prefix = run.prefix;
            run.send(Get, &format!("/v1/locks?prefix={prefix}"), &[], "");
            run.send(Get, &format!("/v1/locks?prefix={prefix}&limit=2"), &[], "");
            run.send(Get, &format!("/v1/locks?prefix={prefix}s&after={prefix}acquired&limit=1"), &[], "");
            run.send(Get, &format!("/v1/locks?prefix={prefix}&limit=many"), &[], "");
            run.head(&format!("/v1/locks?prefix={prefix}"));
        }
        RouteId::DataGet => {
            let base = format!("/v1/locks/{}", run.name("data-read"));
            let holder = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            run.send(Put, &format!("{base}/data/k"), &[("x-ticket", &holder)], r#"{"v":[1,2]}"#);
            run.send(Get, &format!("{base}/data/k"), &[], "");
            run.send(Get, &format!("{base}/data/none"), &[], "");
            run.send(Get, &format!("/v1/locks/{}/data/k", run.name("no-such-lock")), &[], "");
            run.head(&format!("{base}/data/k"));
        }
        RouteId::DataPut => {
            let base = format!("/v1/locks/{}", run.name("data-written"));
            let holder = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            let waiter = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            let path = format!("{base}/data/k");
            run.send(Put, &path, &[("x-ticket", &holder)], "[3]");
            run.send(Put, &path, &[("x-ticket", &holder)], "\"text\"");
            run.send(Put, &path, &[("x-ticket", &waiter)], "[4]");
            run.send(Put, &path, &[("x-ticket", UNKNOWN_TICKET)], "[4]");
            run.send(Put, &path, &[], "[4]");
            run.send(Put, &path, &[("x-ticket", &holder)], "{not json");
            run.send(Get, &path, &[], "");
        }
        RouteId::DataDelete => {
            let base = format!("/v1/locks/{}", run.name("data-deleted"));
            let holder = ticket_of(&run.send(Post, &format!("{base}/acquire"), &[], LONG));
            let path = format!("{base}/data/k");
            run.send(Put, &path, &[("x-ticket", &holder)], "{}");
            run.send(Delete, &path, &[], "");
            run.send(Delete, &path, &[("x-ticket", UNKNOWN_TICKET)], "");
            run.send(Delete, &path, &[("x-ticket", &holder)], "");
            run.send(Delete, &path, &[("x-ticket", &holder)], "");
            run.send(Get, &path, &[], "");
        }
        // Answered by the worker alone, alike on every node: compared whole.
        RouteId::CompatHealth => {
            run.send(Get, "/health", &[], "");
            run.send(Post, "/health", &[], "");
        }
        RouteId::CompatCreate => {
            let create = |name: &str, timeout: i64| json!({"name": name, "timeout": timeout}).to_string();
            run.send(Post, "/resource", &[], &create(&run.name("printer"), -1));
            run.send(Post, "/resource", &[], &create(&run.name("printer"), 5));
            run.send(Post, "/resource", &[], &create(&run.name("scratch"), -1));
            run.send(Post, "/resource", &[], r#"{"timeout":3}"#);
            run.send(Post, "/resource", &[], "");
        }
        RouteId::CompatGet => {
            let base = format!("/resource/{}", run.name("printer"));
            run.send(Get, &format!("{base}/A4?lock=0"), &[], "");
            // Locked and empty: 202 with the ticket, which holds now.
            let held = ticket_of(&run.send(Get, &format!("{base}/A4"), &[], ""));
            run.send(Get, &format!("{base}/A4?lock=1"), &[("X-Ticket", &held)], "");
            // Another client's locking read waits once (timeout -1) and is turned away.
            let other = ticket_of(&run.send(Get, &format!("{base}/A4"), &[], ""));
            run.send(Put, &format!("{base}/A4/unlock"), &[("X-Ticket", &other)], "");
            run.send(Put, &format!("{base}/A4"), &[("X-Ticket", &held)], r#"{"status":"ready"}"#);
            run.send(Get, &format!("{base}/A4?lock=0"), &[], "");
            let reader = ticket_of(&run.send(Get, &format!("{base}/A4"), &[], ""));
            run.send(Put, &format!("{base}/A4/unlock"), &[("X-Ticket", &reader)], "");
            run.send(Get, &format!("/resource/{}/A4", run.name("no-such-resource")), &[], "");
            run.send(Get, &format!("/resource/{}/A4?lock=0", run.name("no-such-resource")), &[], "");
            run.head(&format!("{base}/A4?lock=0"));
        }
        RouteId::CompatLock => {
            let base = format!("/resource/{}", run.name("printer"));
            let held = ticket_of(&run.send(Put, &format!("{base}/A4/lock"), &[], ""));
            run.send(Put, &format!("{base}/A4/lock"), &[("X-Ticket", &held)], "");
            let other = ticket_of(&run.send(Put, &format!("{base}/B5/lock"), &[], ""));
            run.send(Put, &format!("{base}/B5/unlock"), &[("X-Ticket", &other)], "");
            run.send(Put, &format!("{base}/A4/unlock"), &[("X-Ticket", &held)], "");
            run.send(Put, &format!("/resource/{}/A4/lock", run.name("no-such-resource")), &[], "");
        }
        RouteId::CompatPut => {
            let base = format!("/resource/{}", run.name("printer"));
            run.send(Put, &format!("{base}/A4"), &[], r#"{"jobs":[1,2]}"#);
            run.send(Put, &format!("{base}/empty"), &[], "");
            let held = ticket_of(&run.send(Put, &format!("{base}/A4/lock"), &[], ""));
            run.send(Put, &format!("{base}/A4"), &[], "[3]");
            run.send(Put, &format!("{base}/A4"), &[("X-Ticket", &held)], "{oops");
            run.send(Put, &format!("{base}/A4"), &[("X-Ticket", &held)], r#"{"jobs":[]}"#);
            run.send(Get, &format!("{base}/A4?lock=0"), &[], "");
            run.send(Put, &format!("/resource/{}/A4", run.name("no-such-resource")), &[], "{}");
        }
        RouteId::CompatUnlock => {
            // Two rows, `PUT` and `POST`: each is sent with its own method.
            let method = def.method.expect("an unlock row names its method");
            let base = format!("/resource/{}", run.name("printer"));
            let held = ticket_of(&run.send(Put, &format!("{base}/A4/lock"), &[], ""));
            let waiter = ticket_of(&run.send(Put, &format!("{base}/A4/lock"), &[], ""));
            run.send(method, &format!("{base}/A4/unlock"), &[("X-Ticket", &waiter)], "");
            run.send(method, &format!("{base}/A4/unlock"), &[("X-Ticket", &held)], "");
            run.send(method, &format!("{base}/A4/unlock"), &[("X-Ticket", UNKNOWN_TICKET)], "");
            run.send(method, &format!("{base}/A4/unlock"), &[], "");
            run.send(Get, &format!("/v1/locks/{}", run.name("printer")), &[], "");
        }
        RouteId::ResourceDelete => {
            let scratch = run.name("scratch");
            let held = ticket_of(&run.send(Put, &format!("/resource/{scratch}/x/lock"), &[], ""));
            run.send(Delete, &format!("/resource/{scratch}"), &[], "");
            run.send(Put, &format!("/resource/{scratch}/x/unlock"), &[("X-Ticket", &held)], "");
            run.send(Delete, &format!("/resource/{scratch}"), &[], "");
            run.send(Delete, &format!("/resource/{scratch}"), &[], "");
            run.send(Get, &format!("/resource/{scratch}/x?lock=0"), &[], "");
        }
        RouteId::OutboxPut => {
            let url = format!("http://127.0.0.1:{}/hook", run.dead);
            // Not due for an hour: it stays pending. Then one with a single attempt, which
            // fails at once (nothing listens there).
            let later = wall_ms() + 3_600_000;
            let body = json!({"url": url, "body": {"n": 1}, "not_before_ms": later, "headers": {"x-from": run.prefix}});
            run.send(Post, "/v1/outbox", &[], &body.to_string());
            let body = json!({"url": url, "method": "PUT", "body": "text", "max_attempts": 1});
            let failing = body_value(&run.send(Post, "/v1/outbox", &[], &body.to_string()));
            run.wait_failed(failing["id"].as_str().unwrap_or("none"));
            run.send(Post, "/v1/outbox", &[], r#"{"url":"ftp://example.com/x"}"#);
            run.send(Post, "/v1/outbox", &[], &json!({"url": url, "method": "TRACE"}).to_string());
            run.send(Post, "/v1/outbox", &[], &json!({"url": url, "headers": {"Host": "x"}}).to_string());
            run.send(Post, "/v1/outbox", &[], &json!({"url": url, "max_attempts": 0}).to_string());
            run.send(Post, "/v1/outbox", &[], "{}");
        }
        RouteId::OutboxList => {
            run.send(Get, "/v1/outbox", &[], "");
            run.send(Get, "/v1/outbox?state=pending&limit=1", &[], "");
            run.send(Get, "/v1/outbox?state=failed", &[], "");
            run.send(Get, "/v1/outbox?state=gone", &[], "");
            run.send(Get, "/v1/outbox?limit=many", &[], "");
            run.head("/v1/outbox");
        }
        RouteId::OutboxGet => {
            for (state, id) in outbox_ids(run) {
                let entry = run.send(Get, &format!("/v1/outbox/{id}"), &[], "");
                assert_eq!(body_value(&entry)["state"], state, "{}", run.prefix);
            }
            run.send(Get, "/v1/outbox/no-such-entry", &[], "");
        }
        RouteId::OutboxRetry => {
            for (state, id) in outbox_ids(run) {
                run.send(Post, &format!("/v1/outbox/{id}/retry"), &[], "");
                if state == "failed" {
                    run.wait_failed(&id);
                }
            }
            run.send(Post, "/v1/outbox/no-such-entry/retry", &[], "");
        }
        RouteId::OutboxDelete => {
            for (_, id) in outbox_ids(run) {
                run.send(Delete, &format!("/v1/outbox/{id}"), &[], "");
                run.send(Delete, &format!("/v1/outbox/{id}"), &[], "");
                run.send(Get, &format!("/v1/outbox/{id}"), &[], "");
            }
            run.send(Get, "/v1/outbox", &[], "");
        }
        // No rooms in these runs: each room route answers as a single node does (404 for
        // an unknown room, an empty list).
        RouteId::RoomGate | RouteId::RoomWait | RouteId::RoomEvents | RouteId::RoomStatus | RouteId::RoomList => {
            run.send(Get, &def.pattern.replace("{room}", "shop"), &[], "");
        }
        RouteId::RoomRevoke => {
            run.send(Delete, "/v1/rooms/shop/sessions/AAAAAAAAAAAAAAAAAAAAAA", &[], "");
        }
    }
}

/// The wall clock in ms (an outbox entry's `not_before_ms` is one).
fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The run's outbox entries as (state, id), pending first (not recorded: the ids are
/// what the requests are built from; the lists themselves are compared in `OutboxList`).
fn outbox_ids(run: &Run) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for state in ["pending", "failed"] {
        let page = once(run.addr, "GET", &format!("/v1/outbox?state={state}"), &[], "").json();
        for entry in page["entries"].as_array().into_iter().flatten() {
            out.push((state.to_string(), entry["id"].as_str().unwrap_or_default().to_string()));
        }
    }
    out
}

/// Runs the whole sequence through `run`'s node, row by row in table order.
fn run_all(run: &mut Run) {
    for def in ROUTES {
        let before = run.seen.len();
        exercise(run, def);
        assert!(run.seen.len() > before, "{:?} {}: no request", def.method, def.pattern);
    }
}

#[test]
fn r14_every_route_of_the_table_through_a_follower_behaves_as_through_the_leader() {
    let etcd = EtcdCluster::start();
    let cluster = Nodes::start_peered_with(&etcd, 3, 1, CONFIG);
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let started = Instant::now();
    let mut via_leader = Run::new(cluster.nodes[leader].addr, "via-leader-", dead);
    run_all(&mut via_leader);
    let leader_took = started.elapsed();
    let mut via_follower = Run::new(cluster.nodes[follower].addr, "via-follower-", dead);
    run_all(&mut via_follower);
    let follower_took = started.elapsed() - leader_took;

    // Every row of the table was reached, by the router's own reckoning.
    let reached: BTreeSet<usize> = via_leader.seen.iter().map(|s| s.row).collect();
    let missed: Vec<String> = (0..ROUTES.len())
        .filter(|i| !reached.contains(i))
        .map(|i| format!("{:?} {}", ROUTES[i].method, ROUTES[i].pattern))
        .collect();
    assert!(missed.is_empty(), "rows no request reached: {missed:?}");

    // The same answers, request by request.
    assert_eq!(
        via_follower.seen.iter().map(|s| &s.request).collect::<Vec<_>>(),
        via_leader.seen.iter().map(|s| &s.request).collect::<Vec<_>>(),
        "the same sequence"
    );
    let differ: Vec<String> = via_leader
        .seen
        .iter()
        .zip(&via_follower.seen)
        .filter(|(l, f)| l != f)
        .map(|(l, f)| format!("{}\n  via the leader:   {l:?}\n  via a follower:   {f:?}", l.request))
        .collect();
    assert!(differ.is_empty(), "{} of {} answers differ:\n{}", differ.len(), via_leader.seen.len(), differ.join("\n"));

    // The sequence is not vacuous: what each kind of answer should be, through both.
    let statuses: BTreeSet<u16> = via_leader.seen.iter().map(|s| s.status).collect();
    for status in [200, 201, 202, 204, 400, 404, 409, 410] {
        assert!(statuses.contains(&status), "no answer {status}: {statuses:?}");
    }
    // One fence counter, the leader's: the follower's grants come after the leader's.
    let (last_via_leader, first_via_follower) =
        (via_leader.fences.iter().max().copied(), via_follower.fences.iter().min().copied());
    assert!(first_via_follower > last_via_leader, "{:?} {:?}", via_leader.fences, via_follower.fences);
    // The node-local routes say which node answered.
    let role = |addr| once(addr, "GET", "/readyz", &[], "").json()["cluster"]["role"].clone();
    assert_eq!(role(cluster.nodes[leader].addr), "leader");
    assert_eq!(role(cluster.nodes[follower].addr), "follower");
    eprintln!(
        "{} rows ({} routes), {} requests through each node: {} ms through the leader, {} ms through a follower",
        ROUTES.len(),
        ROUTES.iter().map(|d| d.id).collect::<std::collections::HashSet<_>>().len(),
        via_leader.seen.len(),
        leader_took.as_millis(),
        follower_took.as_millis()
    );
}
