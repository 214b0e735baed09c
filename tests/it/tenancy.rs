//! Tenancy by key prefix, on every route of the table: a key limited to `team-a:`, with the
//! strongest role, tries each route against another tenant's objects (a held lock with
//! data, a resource, an outbox call with credentials in its headers, a lock callback
//! carrying a ticket) and must neither see nor change any of them. The routes come from the
//! route table and are matched exhaustively, so a new route does not compile until it says
//! how it is attacked here.

use std::net::SocketAddr;

use leasehold::http::route::{RouteId, ROUTES};

use crate::support::http::{once, Reply};
use crate::support::{config, Server};

const KEYS: &str = "\
[[auth.keys]]
key = \"a-write\"
role = \"write\"
prefix = \"team-a:\"
[[auth.keys]]
key = \"a-read\"
role = \"read\"
prefix = \"team-a:\"
[[auth.keys]]
key = \"b-write\"
role = \"write\"
prefix = \"team-b:\"
[[auth.keys]]
key = \"admin\"
role = \"write\"
";

/// Never delivered: the calls stay pending for the whole test.
const LATER_MS: u64 = 4_000_000_000_000;

fn call(addr: SocketAddr, key: &str, method: &str, path: &str, body: &str) -> Reply {
    once(addr, method, path, &[("x-api-key", key)], body)
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// What tenant B owns, as its own key and an unlimited key see it.
#[derive(Debug, PartialEq)]
struct Victim {
    lock: serde_json::Value,
    data: String,
    resource_data: u16,
    outbox: serde_json::Value,
}

struct Setup {
    ticket: String,
    outbox_id: String,
}

fn victim(addr: SocketAddr, s: &Setup) -> Victim {
    let admin = |method, path: &str| call(addr, "admin", method, path, "");
    let mut lock = admin("GET", "/v1/locks/team-b:job").json();
    // Time left moves on; everything else must not.
    for h in lock["holders"].as_array_mut().unwrap() {
        h.as_object_mut().unwrap().remove("expires_in_ms");
    }
    Victim {
        lock,
        data: text(&admin("GET", "/v1/locks/team-b:job/data/secret")),
        resource_data: admin("GET", "/resource/team-b:res/sel?lock=0").status,
        outbox: admin("GET", &format!("/v1/outbox/{}", s.outbox_id)).json(),
    }
}

fn set_up(addr: SocketAddr) -> Setup {
    let b = |method, path: &str, body: &str| call(addr, "b-write", method, path, body);
    let held = b("POST", "/v1/locks/team-b:job/acquire", r#"{"ttl_ms":600000,"owner":"b"}"#);
    assert_eq!(held.status, 200, "{}", text(&held));
    let ticket = held.json()["ticket"].as_str().unwrap().to_string();
    let headers = [("x-api-key", "b-write"), ("x-ticket", ticket.as_str())];
    let put = once(addr, "PUT", "/v1/locks/team-b:job/data/secret", &headers, "\"b-data\"").status;
    assert_eq!(put, 201);
    assert_eq!(b("POST", "/resource", r#"{"name":"team-b:res","timeout":-1}"#).status, 201);
    let outbox = serde_json::json!({
        "url": "https://hooks.example.com/b?token=b-query-secret",
        "headers": {"Authorization": "Bearer b-header-secret"},
        "body": {"b": "body-secret"},
        "not_before_ms": LATER_MS,
    });
    let accepted = b("POST", "/v1/outbox", &outbox.to_string());
    assert_eq!(accepted.status, 202, "{}", text(&accepted));
    let outbox_id = accepted.json()["id"].as_str().unwrap().to_string();
    Setup { ticket, outbox_id }
}

#[test]
fn r12_a_prefix_key_can_neither_see_nor_change_another_tenant_on_any_route() {
    let s = Server::start(&config("workers = 1", &format!("[outbox]\nallow_local = true\n{KEYS}")));
    let addr = s.addr;
    let setup = set_up(addr);
    let before = victim(addr, &setup);
    let (t, id) = (setup.ticket.as_str(), setup.outbox_id.as_str());
    let ticket_body = format!(r#"{{"ticket":"{t}"}}"#);
    let secrets = ["b-data", "b-header-secret", "body-secret", "b-query-secret", t, id];
    let mut covered = 0;
    for def in ROUTES {
        let method = def.method.map_or("GET", |m| m.as_str());
        let attack = |path: &str, body: &str| {
            let r = call(addr, "a-write", method, path, body);
            let shown = text(&r);
            for secret in secrets {
                assert!(!shown.contains(secret), "{method} {path} revealed {secret:?}: {shown}");
            }
            r
        };
        // What a refusal must look like: the key may not name another tenant's lock.
        let refused = |path: &str, body: &str| {
            let r = attack(path, body);
            assert!(matches!(r.status, 401 | 403), "{method} {path} with a team-a key: {} {}", r.status, text(&r));
        };
        match def.id {
            RouteId::Healthz | RouteId::Readyz | RouteId::OpenApi | RouteId::CompatHealth => {
                attack(def.pattern, "");
            }
            RouteId::Ui => {
                attack("/ui", "");
            }
            // The dashboard shows every lock: a key limited to a prefix may not open it.
            RouteId::UiEvents => refused("/v1/ui/events", ""),
            RouteId::Metrics => {
                let r = attack("/metrics", "");
                assert!(!text(&r).contains("team-b"), "metrics name another tenant's lock");
            }
            RouteId::Acquire => refused("/v1/locks/team-b:job/acquire", "{}"),
            RouteId::Renew => refused("/v1/locks/team-b:job/renew", &ticket_body),
            RouteId::Release => refused("/v1/locks/team-b:job/release", &ticket_body),
            RouteId::TicketStatus | RouteId::TicketLeave => refused(&format!("/v1/locks/team-b:job/tickets/{t}"), ""),
            RouteId::Events => refused(&format!("/v1/locks/team-b:job/events?ticket={t}"), ""),
            RouteId::LockStatus => refused("/v1/locks/team-b:job", ""),
            RouteId::LockList => {
                let own = attack("/v1/locks", "");
                assert_eq!(own.status, 200);
                assert!(!text(&own).contains("team-b"), "{}", text(&own));
                refused("/v1/locks?prefix=team-b:", "");
                // A wider prefix is narrowed to the key's own.
                let wider = attack("/v1/locks?prefix=team", "");
                assert!(wider.status == 200 && !text(&wider).contains("team-b"), "{}", text(&wider));
            }
            RouteId::DataGet | RouteId::DataDelete => refused("/v1/locks/team-b:job/data/secret", ""),
            RouteId::DataPut => refused("/v1/locks/team-b:job/data/secret", "\"overwritten\""),
            RouteId::CompatCreate => refused("/resource", r#"{"name":"team-b:new","timeout":-1}"#),
            RouteId::CompatGet => {
                refused("/resource/team-b:res/sel", "");
                refused("/resource/team-b:res/sel?lock=0", "");
            }
            RouteId::CompatLock => refused("/resource/team-b:res/sel/lock", ""),
            RouteId::CompatPut => refused("/resource/team-b:res/sel", r#"{"x":1}"#),
            RouteId::CompatUnlock => refused("/resource/team-b:res/sel/unlock", ""),
            RouteId::ResourceDelete => refused("/resource/team-b:res", ""),
            RouteId::OutboxPut => {
                // A call of one's own, which the other tenant in turn does not see.
                let body = serde_json::json!({"url": "https://hooks.example.com/a", "not_before_ms": LATER_MS});
                let r = attack("/v1/outbox", &body.to_string());
                assert_eq!(r.status, 202, "{}", text(&r));
                let mine = r.json()["id"].as_str().unwrap().to_string();
                let from_b = call(addr, "b-write", "GET", &format!("/v1/outbox/{mine}"), "");
                assert_eq!(from_b.status, 404, "team-b sees team-a's call");
            }
            RouteId::OutboxList => {
                for state in ["pending", "failed"] {
                    let page = attack(&format!("/v1/outbox?state={state}&limit=1000"), "");
                    assert_eq!(page.status, 200);
                }
            }
            RouteId::OutboxGet | RouteId::OutboxDelete => {
                assert_eq!(attack(&format!("/v1/outbox/{id}"), "").status, 404, "{method}");
            }
            RouteId::OutboxRetry => assert_eq!(attack(&format!("/v1/outbox/{id}/retry"), "").status, 404),
            // No rooms here: every room is unknown, and the list is empty (tests/it/rooms.rs
            // checks a key's prefix on a room's lock).
            RouteId::RoomGate | RouteId::RoomWait | RouteId::RoomEvents | RouteId::RoomRevoke | RouteId::RoomStatus => {
                let path = def.pattern.replace("{room}", "team-b").replace("{ticket}", t);
                assert_eq!(attack(&path, "").status, 404, "{method} {path}");
            }
            RouteId::RoomList => assert_eq!(attack("/v1/rooms", "").status, 200),
        }
        covered += 1;
    }
    assert_eq!(covered, ROUTES.len());
    assert_eq!(victim(addr, &setup), before, "team-b's objects changed");
}

#[test]
fn r12_outbox_readers_below_write_see_no_headers_bodies_or_queries() {
    let s = Server::start(&config("workers = 1", &format!("[outbox]\nallow_local = true\n{KEYS}")));
    let addr = s.addr;
    let body = serde_json::json!({
        "url": "https://hooks.example.com/a?token=q-secret",
        "headers": {"Authorization": "Bearer h-secret"},
        "body": "b-secret",
        "not_before_ms": LATER_MS,
    });
    let id = call(addr, "a-write", "POST", "/v1/outbox", &body.to_string()).json()["id"].as_str().unwrap().to_string();
    // A lock callback under team-a: its body carries the waiter's ticket.
    let holder = call(addr, "a-write", "POST", "/v1/locks/team-a:cb/acquire", r#"{"ttl_ms":60000}"#).json();
    let cb = r#"{"callback":"http://127.0.0.1:9/cb"}"#;
    let waiter = call(addr, "a-write", "POST", "/v1/locks/team-a:cb/acquire", cb).json();
    let release = format!(r#"{{"ticket":"{}"}}"#, holder["ticket"].as_str().unwrap());
    assert_eq!(call(addr, "a-write", "POST", "/v1/locks/team-a:cb/release", &release).status, 200);
    let waiter_ticket = waiter["ticket"].as_str().unwrap();
    let writer = text(&call(addr, "a-write", "GET", "/v1/outbox?limit=1000", ""));
    let reader_page = text(&call(addr, "a-read", "GET", "/v1/outbox?limit=1000", ""));
    let reader_one = text(&call(addr, "a-read", "GET", &format!("/v1/outbox/{id}"), ""));
    for secret in ["q-secret", "h-secret", "b-secret"] {
        assert!(writer.contains(secret), "the write role sees the whole call: {writer}");
        assert!(!reader_page.contains(secret) && !reader_one.contains(secret), "{secret} shown to a reader");
    }
    assert!(reader_one.contains("https://hooks.example.com/a"), "{reader_one}");
    // The callback belongs to team-a (its lock's tenant), and a reader never sees its ticket.
    let pending_or_failed =
        format!("{reader_page}{}", text(&call(addr, "a-read", "GET", "/v1/outbox?state=failed", "")));
    assert!(pending_or_failed.contains("/cb"), "the callback is listed for its tenant: {pending_or_failed}");
    assert!(!pending_or_failed.contains(waiter_ticket), "a reader saw a ticket");
    let b_page = text(&call(addr, "b-write", "GET", "/v1/outbox?state=failed", ""));
    assert!(!b_page.contains("/cb"), "another tenant sees the callback: {b_page}");
}
