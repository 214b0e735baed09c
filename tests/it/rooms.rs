//! Waiting rooms end to end over plain HTTP against the real binary (docs/api.md "Waiting
//! rooms"): visitors that keep their cookies as a browser would, a capacity-2 room that
//! admits two (303 with a session cookie) and shows the third its place, the gate that
//! admits exactly the valid sessions, a revoke that ends a session and lets the next waiter
//! in, the page's no-JavaScript refresh, the visitor's event stream with its ticket token,
//! and return paths that never leave the site. (Through nginx and Chromium: other tests.)

use std::collections::BTreeMap;
use std::net::SocketAddr;

use leasehold::core::seal::{open, seal};
use leasehold::http::rooms::{Session, PURPOSE_SESSION};

use crate::support::http::{once, Reply};
use crate::support::sse::Events;
use crate::support::{config, wait_for, Server};

const SECRET: &str = "rooms-test-secret-0123456789abcdef";

fn rooms_config() -> String {
    config(
        "workers = 1",
        &format!(
            r#"
[[rooms]]
name = "shop"
capacity = 2
session_ttl_ms = 60000
max_session_ms = 600000
waiter_ttl_ms = 12000
secret = "{SECRET}"
origin = "/home"
title = "Shop <busy>"
cookie_secure = false

[[rooms]]
name = "other"
capacity = 100
secret = "{SECRET}"
cookie_secure = false
"#
        ),
    )
}

/// One visitor: the cookies a browser would keep.
#[derive(Default, Debug)]
struct Visitor {
    jar: BTreeMap<String, String>,
}

impl Visitor {
    fn cookie_header(&self) -> String {
        self.jar.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// `GET path` with the visitor's cookies (and `extra` headers); keeps what it is set.
    fn get(&mut self, addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> Reply {
        let cookies = self.cookie_header();
        let mut headers: Vec<(&str, &str)> = extra.to_vec();
        if !cookies.is_empty() {
            headers.push(("Cookie", &cookies));
        }
        let reply = once(addr, "GET", path, &headers, "");
        for (name, value) in &reply.headers {
            if !name.eq_ignore_ascii_case("set-cookie") {
                continue;
            }
            let pair = value.split(';').next().unwrap();
            let (k, v) = pair.split_once('=').unwrap();
            if value.contains("Max-Age=0") {
                self.jar.remove(k);
            } else {
                self.jar.insert(k.to_string(), v.to_string());
            }
        }
        reply
    }

    fn session(&self) -> Session {
        open(SECRET.as_bytes(), PURPOSE_SESSION, &self.jar["lh_session_shop"]).expect("a session cookie")
    }
}

fn gate(addr: SocketAddr, room: &str, cookie: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = cookie.map(|c| vec![("Cookie", c)]).unwrap_or_default();
    once(addr, "GET", &format!("/v1/rooms/{room}/gate"), &headers, "")
}

fn body(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The first event of a room's event stream, by name and data.
fn first_event(addr: SocketAddr, path: &str) -> (String, serde_json::Value) {
    let (_, name, data) = Events::open_path(addr, path, &[]).next();
    (name, data)
}

#[test]
fn room_admits_capacity_queues_the_rest_and_the_gate_admits_only_valid_sessions() {
    let s = Server::start(&rooms_config());
    let addr = s.addr;
    let wait = "/v1/rooms/shop/wait?next=%2Fapp%3Fx%3D1";

    // Two visitors go in: 303 to the return path, with a session cookie.
    let (mut a, mut b, mut c) = (Visitor::default(), Visitor::default(), Visitor::default());
    for v in [&mut a, &mut b] {
        let r = v.get(addr, wait, &[]);
        assert_eq!((r.status, r.header("Location")), (303, Some("/app?x=1")), "{}", body(&r));
        let set = r.headers.iter().find(|(n, v)| n == "Set-Cookie" && v.starts_with("lh_session_shop=")).unwrap();
        assert!(set.1.contains("; Path=/; HttpOnly; SameSite=Lax; Max-Age=600"), "{set:?}");
        assert!(!set.1.contains("Secure"), "cookie_secure = false");
        assert!(v.jar.contains_key("lh_session_shop") && !v.jar.contains_key("lh_place_shop"));
    }

    // The third waits: the page, with position 1 of 1, its place cookie, and the refresh.
    let r = c.get(addr, wait, &[]);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
    let page = body(&r);
    assert!(page.contains(r#"aria-live="polite">1</dd>"#), "position 1: {page}");
    assert!(page.contains(r#"id="queue-length" aria-labelledby="queue-length-label">1</dd>"#), "{page}");
    assert!(page.contains(r#"<noscript><meta http-equiv="refresh" content="4"></noscript>"#), "{page}");
    assert!(page.contains("<h1>Shop &lt;busy&gt;</h1>"), "the title is escaped: {page}");
    assert!(c.jar.contains_key("lh_place_shop"));
    // A reload keeps the place (the same ticket: still first, still one in line).
    let again = c.get(addr, wait, &[]);
    assert!(body(&again).contains(r#"aria-live="polite">1</dd>"#), "{}", body(&again));
    assert_eq!(again.status, 200);

    // The page's token opens the visitor's own event stream; a bad token does not.
    let token = page.split("events?token=").nth(1).unwrap().split('"').next().unwrap().to_string();
    let (name, data) = first_event(addr, &format!("/v1/rooms/shop/events?token={token}"));
    assert_eq!((name.as_str(), data["position"].as_u64()), ("position", Some(1)), "{data}");
    let r = once(addr, "GET", "/v1/rooms/shop/events?token=x.y", &[], "");
    assert_eq!((r.status, r.json()["error"].as_str()), (401, Some("no_session")));
    let r = once(addr, "GET", &format!("/v1/rooms/other/events?token={token}"), &[], "");
    assert_eq!(r.status, 401, "a token for another room's lock");

    // The gate: 200 for the valid sessions, with the ticket and fence.
    let sa = a.session();
    let r = gate(addr, "shop", Some(&a.cookie_header()));
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.header("X-Leasehold-Ticket"), Some(sa.ticket.to_string().as_str()));
    assert_eq!(r.header("X-Leasehold-Fence"), Some(sa.fence.to_string().as_str()));
    assert_eq!((r.json()["status"].as_str(), r.json()["room"].as_str()), (Some("admitted"), Some("shop")));
    assert_eq!(gate(addr, "shop", Some(&b.cookie_header())).status, 200);

    // 401 no_session: no cookie, a forged one, another room's, an expired one, a waiter's.
    let refused = |cookie: Option<&str>, what: &str| {
        let r = gate(addr, "shop", cookie);
        assert_eq!((r.status, r.json()["error"].as_str()), (401, Some("no_session")), "{what}: {}", body(&r));
    };
    refused(None, "no cookie");
    let value = &a.jar["lh_session_shop"];
    let (payload, tag) = value.split_once('.').unwrap();
    let flipped = if tag.starts_with('A') { "B" } else { "A" };
    refused(Some(&format!("lh_session_shop={payload}.{flipped}{}", &tag[1..])), "a tampered tag");
    let forged = seal(b"another-secret-another-secret-0000", PURPOSE_SESSION, &sa);
    refused(Some(&format!("lh_session_shop={forged}")), "sealed with another secret");
    let mut o = Visitor::default();
    assert_eq!(o.get(addr, "/v1/rooms/other/wait", &[]).status, 303);
    let other_value = o.jar["lh_session_other"].clone();
    refused(Some(&format!("lh_session_shop={other_value}")), "another room's session");
    assert_eq!(gate(addr, "other", Some(&format!("lh_session_other={other_value}"))).status, 200);
    let expired = Session { started_ms: sa.started_ms - 600_000, ..sa.clone() };
    let expired = seal(SECRET.as_bytes(), PURPOSE_SESSION, &expired);
    refused(Some(&format!("lh_session_shop={expired}")), "past max_session_ms");
    refused(Some(&c.cookie_header()), "a waiter's place cookie");

    // The views.
    let r = once(addr, "GET", "/v1/rooms/shop", &[], "");
    let view = r.json();
    assert_eq!(
        (view["capacity"].as_u64(), view["in_use"].as_u64(), view["queue_length"].as_u64()),
        (Some(2), Some(2), Some(1))
    );
    let r = once(addr, "GET", "/v1/rooms", &[], "");
    assert_eq!(r.json()["rooms"].as_array().unwrap().len(), 2);
    let r = once(addr, "GET", "/v1/rooms/nope/gate", &[], "");
    assert_eq!((r.status, r.json()["error"].as_str()), (404, Some("not_found")));

    // The origin revokes a's session: its gate is 401, and the waiter goes in when it comes back.
    let revoke = format!("/v1/rooms/shop/sessions/{}", sa.ticket);
    assert_eq!(once(addr, "DELETE", &revoke, &[], "").status, 204);
    refused(Some(&a.cookie_header()), "a revoked session");
    let r = c.get(addr, wait, &[]);
    assert_eq!((r.status, r.header("Location")), (303, Some("/app?x=1")), "{}", body(&r));
    assert!(!c.jar.contains_key("lh_place_shop"), "the place cookie is cleared");
    assert_eq!(gate(addr, "shop", Some(&c.cookie_header())).status, 200);
    let r = once(addr, "DELETE", &revoke, &[], "");
    assert_eq!((r.status, r.json()["error"].as_str()), (410, Some("lease_lost")));

    // A revoked visitor who comes back is a new waiter, at the back of the line.
    let r = a.get(addr, wait, &[]);
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(body(&r).contains(r#"aria-live="polite">1</dd>"#));
}

#[test]
fn a_place_cookie_kept_after_admission_brings_back_the_first_session_not_a_new_one() {
    let s = Server::start(&rooms_config());
    let addr = s.addr;
    let wait = "/v1/rooms/shop/wait";
    // Two fill the room; the third waits, and keeps its place cookie whatever it is told (a
    // client that is not a browser).
    let (mut a, mut b, mut c) = (Visitor::default(), Visitor::default(), Visitor::default());
    assert_eq!((a.get(addr, wait, &[]).status, b.get(addr, wait, &[]).status), (303, 303));
    assert_eq!(c.get(addr, wait, &[]).status, 200);
    let place = c.jar["lh_place_shop"].clone();
    // a leaves; c comes back, is admitted, and its place cookie is cleared.
    assert_eq!(once(addr, "DELETE", &format!("/v1/rooms/shop/sessions/{}", a.session().ticket), &[], "").status, 204);
    assert_eq!(c.get(addr, wait, &[]).status, 303);
    let first = c.session();
    assert!(!c.jar.contains_key("lh_place_shop"));
    // Later by the wall clock, it drops the session cookie and brings the place cookie back.
    wait_for("the wall clock past the session's start", || {
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        if now_ms > first.started_ms + 20 {
            Ok(())
        } else {
            Err(now_ms)
        }
    });
    let mut replay = Visitor::default();
    replay.jar.insert("lh_place_shop".into(), place);
    let r = replay.get(addr, wait, &[]);
    assert_eq!(r.status, 303, "{}", body(&r));
    let second = replay.session();
    assert_eq!((second.ticket, second.fence), (first.ticket, first.fence), "the same lease");
    assert_eq!(second.started_ms, first.started_ms, "a place cookie brought back must not start the session again");
    // The lease shows the admission's time as its label.
    let view = once(addr, "GET", "/v1/locks/room:shop", &[], "").json();
    let labels: Vec<&str> = view["holders"].as_array().unwrap().iter().filter_map(|h| h["owner"].as_str()).collect();
    assert_eq!(labels, [format!("room session since {}", first.started_ms)], "{view}");
}

#[test]
fn room_return_paths_never_leave_the_site() {
    let s = Server::start(&rooms_config());
    let addr = s.addr;
    /// A query, the request's headers, and where the visitor is sent.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("next=https%3A%2F%2Fevil.example%2F", &[], "/"),
        ("next=%2F%2Fevil.example%2Fx", &[], "/"),
        ("next=%2F%5Cevil.example", &[], "/"),
        ("next=javascript%3Aalert(1)", &[], "/"),
        ("next=%2Fa%0D%0ASet-Cookie%3A%20x%3Dy", &[], "/"),
        ("next=%2F%2Fevil.example", &[("X-Original-URI", "/from-proxy?q=1")], "/from-proxy?q=1"),
        ("", &[("X-Original-URI", "//evil.example/")], "/"),
        ("next=%2Fok", &[("X-Original-URI", "/from-proxy")], "/ok"),
    ];
    for (query, headers, expected) in cases {
        // A fresh visitor each time (the room has room for all of them).
        let r = Visitor::default().get(addr, &format!("/v1/rooms/other/wait?{query}"), headers);
        assert_eq!((r.status, r.header("Location")), (303, Some(*expected)), "{query} {headers:?}");
    }
    // The shop's origin is where a visitor goes when nothing else is usable.
    let r = Visitor::default().get(addr, "/v1/rooms/shop/wait?next=%2F%2Fevil.example", &[]);
    assert_eq!(r.header("Location"), Some("/home"));
}
