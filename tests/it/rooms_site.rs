//! Issue 18's acceptance, end to end: a waiting room in front of a website, as an operator
//! runs it (docs/api.md "Waiting rooms"). A real nginx includes
//! `contrib/nginx/waiting-room.conf` unmodified in front of the real server and an origin;
//! visitors are headless Chromium (a few) and cookie-keeping HTTP clients (the rest). What is
//! checked is what the docs promise: a room of capacity N lets N sessions reach the origin at
//! once, everyone else sees the waiting page with a position that counts down, each waiter is
//! moved on when a session ends, nothing reaches the origin without a valid session cookie,
//! and a browser without JavaScript still moves on (meta refresh). Screenshots of the waiting
//! page (waiting, at the moment of admission, without JavaScript) and of `/ui` under that load
//! are kept under `target/test-artifacts/`.

use std::collections::{HashSet, VecDeque};

use serde_json::json;

use crate::support::browser::{png_size, Browser, Options};
use crate::support::http::once;
use crate::support::nginx::Nginx;
use crate::support::visitor::{text_by_id, Visitor};
use crate::support::{config, wait_for, Server};

/// The rooms' signing secrets (at least 32 bytes, as the docs require).
const SHOP_SECRET: &str = "shop-secret-0123456789abcdef0123456789";
const BRIEF_SECRET: &str = "brief-secret-0123456789abcdef012345678";
/// A session's longest life in the room `shop` (long: these tests end sessions by revoking).
const SHOP_MAX_SESSION_MS: u64 = 3_600_000;

/// Two rooms: `shop` (capacity `capacity`) and `brief` (capacity 1, sessions of at most
/// 2.5 s, idle for at most 1 s), both over plain HTTP on loopback (`cookie_secure = false`).
fn rooms(capacity: u32) -> String {
    format!(
        "[[rooms]]
name = \"shop\"
capacity = {capacity}
session_ttl_ms = 600000
max_session_ms = {SHOP_MAX_SESSION_MS}
waiter_ttl_ms = 120000
secret = \"{SHOP_SECRET}\"
origin = \"https://shop.example/\"
title = \"The shop is busy\"
message = \"You are in line. This page moves you on when it is your turn.\"
cookie_secure = false

[[rooms]]
name = \"brief\"
capacity = 1
session_ttl_ms = 1000
max_session_ms = 2500
secret = \"{BRIEF_SECRET}\"
origin = \"https://brief.example/\"
cookie_secure = false
"
    )
}

/// The sealed payload of a cookie (its first part, base64url JSON): sealing vouches for a
/// payload, it does not hide it.
fn payload(cookie: &str) -> serde_json::Value {
    use base64::Engine;
    let body = cookie.split('.').next().unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// The room `shop` as its read view tells it: (sessions in use, visitors waiting).
fn shop_counts(s: &Server) -> (u64, u64) {
    let j = once(s.addr, "GET", "/v1/rooms/shop", &[], "").json();
    (j["in_use"].as_u64().unwrap_or_else(|| panic!("{j}")), j["queue_length"].as_u64().unwrap_or_else(|| panic!("{j}")))
}

/// A visitor's request for `path` answered by the origin (after any redirects): its
/// `X-Leasehold-Ticket` as the origin saw it.
fn reaches_origin(v: &mut Visitor, path: &str) -> Result<String, String> {
    let hops = v.follow(path);
    let (_, last) = hops.last().unwrap();
    let html = String::from_utf8_lossy(&last.body).to_string();
    match (last.status, text_by_id(&html, "origin"), text_by_id(&html, "ticket")) {
        (200, Some(_), Some(ticket)) if !ticket.is_empty() => Ok(ticket),
        _ => Err(format!("{} {html}", last.status)),
    }
}

/// A visitor's position on the waiting page it is answered for `path`.
fn position(v: &mut Visitor, path: &str) -> Result<u64, String> {
    let reply = v.get(path);
    let html = String::from_utf8_lossy(&reply.body).to_string();
    match (reply.status, text_by_id(&html, "position").and_then(|p| p.parse().ok())) {
        (200, Some(p)) => Ok(p),
        _ => Err(format!("{} {html}", reply.status)),
    }
}

/// Revokes the session of `ticket` in room `shop`, as the origin would.
fn revoke(s: &Server, ticket: &str) {
    let r = once(s.addr, "DELETE", &format!("/v1/rooms/shop/sessions/{ticket}"), &[], "");
    assert_eq!(r.status, 204, "revoke {ticket}: {}", String::from_utf8_lossy(&r.body));
}

#[test]
fn r18_fifty_visitors_on_a_room_of_ten_behind_nginx_wait_their_turn_and_nothing_else_reaches_the_origin() {
    let s = Server::start(&config("workers = 2", &rooms(10)));
    let site = Nginx::waiting_room("shop", s.addr);
    let base = format!("http://{}", site.addr());

    // Ten visitors reach the origin at once, each admitted by the waiting page's 303.
    let mut admitted: VecDeque<(Visitor, String)> = VecDeque::new();
    for i in 0..10 {
        let mut v = Visitor::new(site.addr());
        let path = format!("/item/{i}");
        let hops = v.follow(&path);
        assert_eq!(hops[0].1.status, 303, "{}", String::from_utf8_lossy(&hops[0].1.body));
        let ticket = reaches_origin(&mut v, &path).unwrap();
        let cookie = v.cookie("lh_session_shop").expect("a session cookie").to_string();
        assert_eq!(payload(&cookie)["ticket"], ticket.as_str(), "the cookie names the ticket the origin sees");
        admitted.push_back((v, ticket));
    }
    assert_eq!(shop_counts(&s), (10, 0));
    // All ten at the origin together: each of them again, with no one having left.
    for (v, ticket) in admitted.iter_mut() {
        assert_eq!(reaches_origin(v, "/again").as_ref(), Ok(&*ticket));
    }

    // Forty more wait: three browsers first, then 37 HTTP visitors, in that order.
    let browsers: Vec<Browser> = (0..3).map(|_| Browser::start("r18_fifty_visitors")).collect();
    for (i, b) in browsers.iter().enumerate() {
        b.goto(&format!("{base}/browse/{i}"));
        let expected = (i + 1).to_string();
        b.wait_text("#position", "the browser's position", |p| p == expected);
    }
    let shot = browsers[2].screenshot("waiting");
    assert!(png_size(&std::fs::read(&shot).unwrap()).is_ok(), "{}", shot.display());
    let mut waiting: VecDeque<Visitor> = VecDeque::new();
    for i in 0..37u64 {
        let mut v = Visitor::new(site.addr());
        assert_eq!(position(&mut v, "/").unwrap(), 4 + i);
        assert!(v.cookie("lh_place_shop").is_some());
        waiting.push_back(v);
    }
    assert_eq!(shop_counts(&s), (10, 40));
    // The dashboard under this load: the room full, forty waiting (the server is on loopback
    // with no API key configured, so the read role is anyone's there).
    let dashboard = Browser::start("r18_fifty_visitors");
    dashboard.goto(&format!("http://{}/ui", s.addr));
    let row = dashboard.wait_text("#rooms tbody", "the room on the dashboard, full, with 40 waiting", |t| {
        t.contains("shop")
            && t.split_whitespace().filter(|w| *w == "10").count() >= 2
            && t.split_whitespace().any(|w| w == "40")
    });
    dashboard.wait_text("#busiest", "the room's lock among the busiest", |t| t.contains("room:shop"));
    let shot = dashboard.screenshot("ui-under-load");
    assert!(png_size(&std::fs::read(&shot).unwrap()).is_ok(), "{row}");
    drop(dashboard);

    // Nothing reaches the origin without a valid session cookie of this room.
    let live = payload(admitted[0].0.cookie("lh_session_shop").unwrap());
    let mut forgers = Vec::new();
    // Signed with another secret, naming a live session.
    let forged = leasehold::core::seal::seal(b"not-the-rooms-secret-0123456789abcdef", "room-session", &live);
    // Signed with the room's own secret, but its session began longer ago than the room allows.
    let mut old = live.clone();
    old["started_ms"] = json!(live["started_ms"].as_u64().unwrap() - SHOP_MAX_SESSION_MS - 1_000);
    let expired = leasehold::core::seal::seal(SHOP_SECRET.as_bytes(), "room-session", &old);
    // A real session of the other room, under this room's cookie name.
    let mut brief = Visitor::new(s.addr);
    assert_eq!(brief.get("/v1/rooms/brief/wait?next=/").status, 303);
    let other_room = brief.cookie("lh_session_brief").expect("a session of room brief").to_string();
    // The live cookie with one byte of its payload changed.
    let mut tampered = admitted[0].0.cookie("lh_session_shop").unwrap().to_string().into_bytes();
    tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for (what, cookie) in
        [("forged", &forged), ("expired", &expired), ("other room's", &other_room), ("tampered", &tampered)]
    {
        let gate = once(s.addr, "GET", "/v1/rooms/shop/gate", &[("Cookie", &format!("lh_session_shop={cookie}"))], "");
        assert_eq!(gate.status, 401, "a {what} cookie at the gate: {}", String::from_utf8_lossy(&gate.body));
        let mut v = Visitor::new(site.addr());
        v.set_cookie("lh_session_shop", cookie);
        let reply = v.get("/secret");
        let html = String::from_utf8_lossy(&reply.body).to_string();
        assert!(text_by_id(&html, "origin").is_none(), "a {what} cookie reached the origin: {html}");
        assert!(text_by_id(&html, "position").is_some(), "a {what} cookie gets the waiting page: {html}");
        forgers.push(v);
    }

    // Sessions end one by one (revoked by the origin); each time the first in line moves on
    // and everyone behind counts down by one. The browsers move on by themselves.
    let mut next_browser = 0;
    let mut moved = 0;
    let mut returned = 0;
    while moved < 40 {
        let (mut gone, ticket) = admitted.pop_front().unwrap();
        revoke(&s, &ticket);
        // A revoked visitor is back on the waiting page, at the back of the line (behind
        // everyone counted below: positions ahead of it do not change).
        let back = position(&mut gone, "/after").unwrap_or_else(|e| panic!("a revoked session: {e}"));
        assert!(back >= 40 - moved, "{back}");
        returned += 1;
        if next_browser < browsers.len() {
            let b = &browsers[next_browser];
            if next_browser == 0 {
                // The moment of admission: the page says so before it moves on.
                b.wait_text("#turn", "the page to say it is the visitor's turn", |t| t.contains("your turn"));
                b.screenshot("admitted");
            }
            // The browsers still waiting see their positions count down.
            for (later, c) in browsers.iter().enumerate().skip(next_browser + 1) {
                let expected = (later - next_browser).to_string();
                c.wait_text("#position", "a browser's position counting down", |p| p == expected);
            }
            let url = b.wait_url("the first browser in line to reach the origin", |u| !u.is_empty());
            b.wait_text("#origin", "the origin page in the admitted browser", |t| t == "The origin");
            let session = b.cookie("lh_session_shop").expect("the browser's session cookie");
            assert!(url.contains(&format!("/browse/{next_browser}")), "moved on to where it asked to go: {url}");
            admitted.push_back((Visitor::new(site.addr()), payload(&session)["ticket"].as_str().unwrap().to_string()));
            next_browser += 1;
        } else {
            let mut v = waiting.pop_front().unwrap();
            let ticket = reaches_origin(&mut v, "/").unwrap();
            admitted.push_back((v, ticket));
        }
        moved += 1;
        // Everyone still in line is one place further on.
        for (i, v) in waiting.iter_mut().enumerate() {
            let ahead = (browsers.len() - next_browser) as u64;
            assert_eq!(position(v, "/").unwrap(), ahead + 1 + i as u64, "after {moved} sessions ended");
        }
        assert_eq!(shop_counts(&s).0, 10, "always ten sessions while the line lasts");
    }
    assert_eq!(shop_counts(&s), (10, (forgers.len() + returned) as u64));

    // The origin saw only admitted tickets: 50 visitors, nobody else.
    let seen: HashSet<String> = site.origin_requests().into_iter().map(|r| r.ticket.unwrap_or_default()).collect();
    assert!(!seen.contains(""), "a request reached the origin without a ticket");
    assert_eq!(seen.len(), 50, "{seen:?}");
}

#[test]
fn r18_a_session_ends_at_max_session_ms_and_its_cookie_no_longer_opens_the_gate() {
    let s = Server::start(&config("workers = 1", &rooms(1)));
    let mut v = Visitor::new(s.addr);
    assert_eq!(v.get("/v1/rooms/brief/wait?next=/in").status, 303);
    let cookie = format!("lh_session_brief={}", v.cookie("lh_session_brief").unwrap());
    // Kept alive by activity (gate checks far more often than its 1 s session TTL)...
    let started = std::time::Instant::now();
    let ended = wait_for("the session to end at its 2.5 s limit", || {
        let gate = once(s.addr, "GET", "/v1/rooms/brief/gate", &[("Cookie", &cookie)], "");
        match gate.status {
            401 => Ok(started.elapsed()),
            200 => Err("still admitted"),
            other => panic!("gate answered {other}"),
        }
    });
    // ...past its idle TTL, but not past max_session_ms, counted from the admission.
    assert!(ended.as_millis() > 1_200, "ended after {ended:?}: the gate checks did not renew it");
    // The place is free again (once the lease's last renewal, at least `locks.min_ttl_ms`,
    // has run out): the next visitor is admitted.
    let mut next = Visitor::new(s.addr);
    wait_for("the next visitor to be admitted", || match next.get("/v1/rooms/brief/wait?next=/").status {
        303 => Ok(()),
        other => Err(other),
    });
}

#[test]
fn r18_without_javascript_the_waiting_page_moves_on_by_meta_refresh() {
    let s = Server::start(&config("workers = 1", &rooms(1)));
    let site = Nginx::waiting_room("shop", s.addr);
    let mut holder = Visitor::new(site.addr());
    let ticket = reaches_origin(&mut holder, "/").unwrap();
    let plain = Browser::start_with("r18_without_javascript", Options { javascript: false });
    plain.goto(&format!("http://{}/plain", site.addr()));
    assert_eq!(plain.wait_text("#position", "the position, with no script", |p| !p.is_empty()), "1");
    assert!(plain.source().contains("http-equiv=\"refresh\""), "{}", plain.source());
    plain.screenshot("waiting-without-javascript");
    revoke(&s, &ticket);
    plain.wait_text("#origin", "the meta refresh to take the browser to the origin", |t| t == "The origin");
    assert!(plain.url().ends_with("/plain"), "{}", plain.url());
}
