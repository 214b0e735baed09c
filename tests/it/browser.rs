//! Browser access against the real server over plain HTTP (docs/api.md, "Browser access"
//! and "Dashboard"): the ticket token of an acquire answer opens that ticket's status and
//! events without a key, and nothing else; CORS on answers and preflights for listed
//! origins only; the `/ui` page; the dashboard stream's role, bound and snapshots.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};

use crate::support::http::{once, Client, Reply};
use crate::support::{config, Server, DEADLINE};

const SECRET: &str = "a-browser-secret-of-at-least-32-bytes";
const APP: &str = "https://app.example";

fn server(browser: &str) -> Server {
    let keys = "\
[[auth.keys]]
key = \"lock-secret\"
role = \"lock\"
[[auth.keys]]
key = \"read-secret\"
role = \"read\"
";
    Server::start(&config("workers = 1", &format!("[browser]\n{browser}\n{keys}")))
}

fn acquire(addr: SocketAddr, lock: &str, owner: &str) -> Reply {
    let body = format!(r#"{{"owner":"{owner}","ttl_ms":60000}}"#);
    let r = once(addr, "POST", &format!("/v1/locks/{lock}/acquire"), &[("x-api-key", "lock-secret")], &body);
    assert!(r.status == 200 || r.status == 202, "acquire {lock}: {} {}", r.status, String::from_utf8_lossy(&r.body));
    r
}

fn field(r: &Reply, name: &str) -> String {
    r.json()[name].as_str().unwrap_or_else(|| panic!("no {name} in {}", r.json())).to_string()
}

/// An event stream read over a raw connection: the head, then events as (name, data).
struct Stream {
    head: String,
    reader: BufReader<TcpStream>,
}

impl Stream {
    fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Stream {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let extra: String = headers.iter().map(|(n, v)| format!("{n}: {v}\r\n")).collect();
        write!(stream, "GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        Stream { head, reader }
    }

    fn status(&self) -> u16 {
        self.head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    fn has_header(&self, line: &str) -> bool {
        self.head.lines().any(|l| l.trim_end().eq_ignore_ascii_case(line))
    }

    /// The next event as (name, data).
    fn next(&mut self) -> (String, serde_json::Value) {
        let (mut name, mut data) = (String::new(), serde_json::Value::Null);
        loop {
            let mut line = String::new();
            assert!(self.reader.read_line(&mut line).unwrap() > 0, "the stream ended");
            let line = line.trim_end_matches('\n');
            if line.is_empty() && !name.is_empty() {
                return (name, data);
            }
            if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = serde_json::from_str(v).unwrap();
            }
        }
    }
}

#[test]
fn ticket_token_from_an_acquire_opens_that_tickets_status_and_events_without_a_key() {
    let s = server(&format!("secret = \"{SECRET}\"\ncors_origins = [\"{APP}\"]"));
    let held = acquire(s.addr, "jobs", "holder");
    let queued = acquire(s.addr, "jobs", "waiter");
    assert_eq!((held.status, queued.status), (200, 202));
    let (t1, k1) = (field(&held, "ticket"), field(&held, "ticket_token"));
    let (t2, k2) = (field(&queued, "ticket"), field(&queued, "ticket_token"));

    let status = once(s.addr, "GET", &format!("/v1/locks/jobs/tickets/{t1}?token={k1}"), &[], "");
    assert_eq!((status.status, field(&status, "status")), (200, "acquired".to_string()));
    let waiting = once(s.addr, "GET", &format!("/v1/locks/jobs/tickets/{t2}?token={k2}"), &[], "");
    assert_eq!((waiting.status, waiting.json()["position"].as_u64()), (200, Some(1)));

    // Its events, from a page of a listed origin.
    let mut events = Stream::open(s.addr, &format!("/v1/locks/jobs/events?ticket={t2}&token={k2}"), &[("Origin", APP)]);
    assert_eq!(events.status(), 200, "{}", events.head);
    assert!(events.has_header(&format!("Access-Control-Allow-Origin: {APP}")), "{}", events.head);
    let (name, data) = events.next();
    assert_eq!((name.as_str(), data["position"].as_u64()), ("position", Some(1)));

    // Not another ticket's, not another lock's, not a forged one, not another route.
    let refused = |method: &str, target: String| {
        let r = once(s.addr, method, &target, &[], "");
        assert_eq!(r.status, 401, "{method} {target}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["error"], "unauthorized");
    };
    refused("GET", format!("/v1/locks/jobs/tickets/{t2}?token={k1}"));
    refused("GET", format!("/v1/locks/jobs/events?ticket={t1}&token={k2}"));
    acquire(s.addr, "other", "x");
    refused("GET", format!("/v1/locks/other/tickets/{t1}?token={k1}"));
    let (payload, tag) = k1.split_once('.').unwrap();
    // The tag with its first character changed (the payload is the holder's own).
    let flipped = match tag.strip_prefix('A') {
        Some(rest) => format!("B{rest}"),
        None => format!("A{}", &tag[1..]),
    };
    refused("GET", format!("/v1/locks/jobs/tickets/{t1}?token={payload}.{flipped}"));
    refused("GET", format!("/v1/locks/jobs/tickets/{t1}?token=not-a-token"));
    refused("DELETE", format!("/v1/locks/jobs/tickets/{t1}?token={k1}"));
    refused("GET", format!("/v1/locks/jobs?token={k1}"));
    refused("GET", format!("/v1/locks/jobs/tickets/{t1}"));
    // The lease is untouched by all that.
    let still = once(s.addr, "GET", &format!("/v1/locks/jobs/tickets/{t1}?token={k1}"), &[], "");
    assert_eq!(field(&still, "status"), "acquired");
}

#[test]
fn without_a_browser_secret_acquire_answers_carry_no_token() {
    let s = server("");
    let held = acquire(s.addr, "jobs", "holder");
    assert!(held.json().get("ticket_token").is_none(), "{}", held.json());
}

#[test]
fn cors_headers_go_to_listed_origins_on_answers_errors_and_preflights_only() {
    let s = server(&format!("cors_origins = [\"{APP}\"]\ncors_max_age_s = 120"));
    let allowed = |r: &Reply| r.header("Access-Control-Allow-Origin").map(str::to_string);
    let ok = once(s.addr, "GET", "/healthz", &[("Origin", APP)], "");
    assert_eq!((ok.status, allowed(&ok)), (200, Some(APP.to_string())));
    assert_eq!(ok.header("Vary"), Some("Origin"));
    let error = once(s.addr, "GET", "/v1/locks/jobs", &[("Origin", APP)], "");
    assert_eq!((error.status, allowed(&error)), (401, Some(APP.to_string())), "errors too");
    for other in ["https://evil.example", "null", "https://app.example.evil"] {
        let r = once(s.addr, "GET", "/healthz", &[("Origin", other)], "");
        assert_eq!((r.status, allowed(&r)), (200, None), "{other}");
    }
    assert_eq!(allowed(&once(s.addr, "GET", "/healthz", &[], "")), None, "no Origin, no CORS");

    let preflight = |origin: &str, path: &str| {
        let headers = [
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "x-api-key, content-type"),
        ];
        once(s.addr, "OPTIONS", path, &headers, "")
    };
    let p = preflight(APP, "/v1/locks/jobs/acquire");
    assert_eq!((p.status, allowed(&p)), (204, Some(APP.to_string())));
    assert_eq!(p.header("Access-Control-Allow-Methods"), Some("POST"));
    assert!(p.header("Access-Control-Allow-Headers").is_some_and(|h| h.contains("x-api-key")));
    assert_eq!(p.header("Access-Control-Max-Age"), Some("120"));
    let data = preflight(APP, "/v1/locks/jobs/data/k");
    assert_eq!(data.header("Access-Control-Allow-Methods"), Some("GET, HEAD, PUT, DELETE"));
    let denied = preflight("https://evil.example", "/v1/locks/jobs/acquire");
    assert_eq!((denied.status, allowed(&denied)), (403, None));
    assert_eq!(denied.json()["error"], "forbidden");
    // A browser's real call after the preflight.
    let mut c = Client::connect(s.addr).unwrap();
    let body = r#"{"ttl_ms":1000}"#;
    let headers = [("Origin", APP), ("x-api-key", "lock-secret"), ("Content-Type", "application/json")];
    let r = c.request("POST", "/v1/locks/jobs/acquire", &headers, body).unwrap();
    assert_eq!((r.status, allowed(&r)), (200, Some(APP.to_string())));
    // OPTIONS that is not a preflight (no Origin) is routed as before: 405.
    assert_eq!(once(s.addr, "OPTIONS", "/v1/locks/jobs/acquire", &[], "").status, 405);
}

#[test]
fn ui_serves_the_dashboard_page() {
    let s = server("");
    let r = once(s.addr, "GET", "/ui", &[], "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert!(r.header("Content-Security-Policy").is_some_and(|c| c.contains("script-src 'sha256-")));
    let page = String::from_utf8(r.body).unwrap();
    assert!(page.contains("<html lang=\"en\">") && page.contains("id=\"busiest\""), "{page:.300}");
    assert!(page.contains("\"needs_key\":true"), "keys are configured: the page asks for one");
}

#[test]
fn ui_events_need_the_read_role_and_show_a_held_lock_and_its_queue() {
    let s = server("max_dashboards = 1");
    assert_eq!(once(s.addr, "GET", "/v1/ui/events", &[], "").status, 401);
    assert_eq!(once(s.addr, "GET", "/v1/ui/events", &[("x-api-key", "wrong-key")], "").status, 401);
    acquire(s.addr, "printer", "host-a");
    acquire(s.addr, "printer", "host-b");
    acquire(s.addr, "printer", "host-c");
    acquire(s.addr, "a-quiet", "host-d");

    let mut dashboard = Stream::open(s.addr, "/v1/ui/events", &[("x-api-key", "read-secret")]);
    assert_eq!(dashboard.status(), 200, "{}", dashboard.head);
    assert!(dashboard.has_header("Content-Type: text/event-stream"), "{}", dashboard.head);
    let (name, first) = dashboard.next();
    assert_eq!(name, "snapshot");
    assert_eq!(first["keeper"], true, "{first}");
    assert_eq!((first["locks"]["total"].as_u64(), first["locks"]["waiters"].as_u64()), (Some(2), Some(2)));
    let top = &first["locks"]["busiest"][0];
    assert_eq!(
        (top["name"].as_str(), top["used"].as_u64(), top["queue_length"].as_u64()),
        (Some("printer"), Some(1), Some(2))
    );
    assert_eq!(top["holders"][0]["owner"], "host-a");
    assert!(top["holders"][0].get("ticket").is_none(), "a snapshot never shows tickets");
    assert_eq!(first["locks"]["busiest"][1]["name"], "a-quiet", "busiest first, not by name");
    assert_eq!(first["outbox"]["pending"], 0);
    assert_eq!(first["worker"]["slot"], 0);
    assert!(s.worker_pids().contains(&(first["worker"]["pid"].as_i64().unwrap() as i32)), "{first}");

    // One stream per worker here: a second is refused while the first is open.
    let second = once(s.addr, "GET", "/v1/ui/events", &[("x-api-key", "read-secret")], "");
    assert_eq!((second.status, second.json()["error"].as_str()), (503, Some("overloaded")));

    // Snapshots keep coming, and soon list the processes from the master's metrics.
    let mut roles = Vec::new();
    for _ in 0..20 {
        let (name, snapshot) = dashboard.next();
        assert_eq!(name, "snapshot");
        roles = snapshot["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["role"].as_str().unwrap_or_default().to_string())
            .collect();
        if roles.iter().any(|r| r == "keeper") {
            break;
        }
    }
    for role in ["master", "keeper", "worker"] {
        assert!(roles.iter().any(|r| r == role), "no {role} in {roles:?}");
    }
    // Closing the stream frees its place.
    drop(dashboard);
    crate::support::wait_for("the dashboard's place to be free", || {
        let r = Stream::open(s.addr, "/v1/ui/events", &[("x-api-key", "read-secret")]);
        if r.status() == 200 {
            Ok(())
        } else {
            Err(r.status())
        }
    });
}
