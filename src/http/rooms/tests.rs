//! Waiting room tests: cookies, return paths, what each room route asks of the keeper, and
//! how each answer looks.

use super::*;
use crate::config::Role;
use crate::core::lock::LeaseView;
use crate::http::route::route;

const SECRET: &str = "0123456789abcdef0123456789abcdef";
const T: &str = "AAAAAAAAAAAAAAAAAAAAAA";
const NOW: u64 = 1_000_000;

fn config(name: &str) -> RoomConfig {
    let text = format!(
        "[[rooms]]\nname = \"{name}\"\ncapacity = 2\nsecret = \"{SECRET}\"\nsession_ttl_ms = 60000\n\
         max_session_ms = 600000\nwaiter_ttl_ms = 9000\norigin = \"/home\"\ncookie_secure = false\n"
    );
    Config::load(Some(&text), &[]).unwrap().rooms.remove(0)
}

fn rooms() -> Rooms {
    let mut other = config("other");
    other.secret = "ffffffffffffffffffffffffffffffff".into();
    Rooms::from_rooms([config("shop"), other], 100)
}

fn ticket() -> Ticket {
    Ticket::parse(T).unwrap()
}

fn request(target: &str, cookie: Option<String>, original_uri: Option<&str>) -> Request {
    Request {
        method: Method::Get,
        target: target.into(),
        minor_version: 1,
        keep_alive: true,
        api_key: None,
        ticket: None,
        last_event_id: None,
        cookie,
        original_uri: original_uri.map(str::to_string),
        origin: None,
        expect_continue: false,
        body: Vec::new(),
    }
}

fn session_cookie(room: &str, secret: &str, started_ms: u64) -> String {
    let value = seal(
        secret.as_bytes(),
        PURPOSE_SESSION,
        &Session { room: room.into(), ticket: ticket(), fence: 7, started_ms },
    );
    format!("a=b; lh_session_shop={value}; c=d")
}

fn plan_at(method: Method, target: &str, cookie: Option<String>, now_ms: u64) -> Plan {
    let mut req = request(target, cookie, None);
    req.method = method;
    let m = route(method, target).unwrap();
    plan(m.def, &m.params, m.query, &req, &rooms(), Grant { prefix: "", role: Role::Write }, now_ms)
}

fn refused(p: &Plan) -> (u16, String) {
    match p {
        Plan::Now(r) => {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            (r.status, body["error"].as_str().unwrap_or_default().to_string())
        }
        other => panic!("expected an immediate answer, got {other:?}"),
    }
}

fn header<'a>(r: &'a Response, name: &str) -> Vec<&'a str> {
    r.headers.iter().filter(|(h, _)| *h == name).map(|(_, v)| v.as_str()).collect()
}

fn lease(fence: u64) -> LeaseView {
    LeaseView {
        ticket: ticket(),
        fence,
        owner: None,
        weight: 1,
        expires_at_ms: NOW + 60_000,
        claimed: true,
        mode: None,
        user: None,
    }
}

#[test]
fn cookie_finds_a_value_by_exact_name() {
    let header = "lh_session_shop2=x; lh_session_shop = \"v1\" ;other=y; lh_session_shop=v2";
    assert_eq!(cookie(header, "lh_session_shop"), Some("v1"));
    assert_eq!(cookie(header, "other"), Some("y"));
    assert_eq!(cookie(header, "lh_session"), None);
    assert_eq!(cookie("", "a"), None);
}

#[test]
fn return_path_takes_next_then_original_uri_then_origin_and_ignores_other_sites() {
    assert_eq!(return_path("next=%2Fa%3Fb%3D1", Some("/orig"), "/home"), "/a?b=1");
    assert_eq!(return_path("next=https%3A%2F%2Fevil.example%2F", Some("/orig"), "/home"), "/orig");
    assert_eq!(return_path("next=%2F%2Fevil.example", None, "/home"), "/home");
    assert_eq!(return_path("next=/v1/rooms/shop/wait", None, "/home"), "/home", "no loop through the room");
    assert_eq!(return_path("", Some("//evil.example/x"), "https://shop.example/"), "https://shop.example/");
    assert_eq!(return_path("next=%2Fa%0D%0ASet-Cookie:x", None, "/home"), "/home");
}

#[test]
fn gate_without_a_valid_cookie_is_401_no_session() {
    let gate = "/v1/rooms/shop/gate";
    assert_eq!(refused(&plan_at(Method::Get, gate, None, NOW)), (401, "no_session".into()));
    let forged = session_cookie("shop", "ffffffffffffffffffffffffffffffff", NOW);
    assert_eq!(refused(&plan_at(Method::Get, gate, Some(forged), NOW)), (401, "no_session".into()));
    // Sealed with the right secret but for another room.
    let other = session_cookie("other", SECRET, NOW);
    assert_eq!(refused(&plan_at(Method::Get, gate, Some(other), NOW)), (401, "no_session".into()));
    // Past max_session_ms (600 s after its start).
    let old = session_cookie("shop", SECRET, NOW - 600_000);
    assert_eq!(refused(&plan_at(Method::Get, gate, Some(old), NOW)), (401, "no_session".into()));
    let garbage = Some("lh_session_shop=%%%; x".to_string());
    assert_eq!(refused(&plan_at(Method::Get, gate, garbage, NOW)), (401, "no_session".into()));
    assert_eq!(refused(&plan_at(Method::Get, "/v1/rooms/nope/gate", None, NOW)), (404, "not_found".into()));
}

#[test]
fn gate_with_a_valid_cookie_renews_up_to_the_session_end() {
    let fresh = session_cookie("shop", SECRET, NOW - 1_000);
    let Plan::Ask { op, finish, .. } = plan_at(Method::Get, "/v1/rooms/shop/gate", Some(fresh), NOW) else {
        panic!("asks the keeper")
    };
    let lock = LockName::parse("room:shop").unwrap();
    assert_eq!(op, LockOp::Renew { lock: lock.clone(), ticket: ticket(), ttl_ms: Some(60_000) });
    // 30 s before the end: renewed for those 30 s only.
    let late = session_cookie("shop", SECRET, NOW - 570_000);
    let Plan::Ask { op, .. } = plan_at(Method::Get, "/v1/rooms/shop/gate", Some(late), NOW) else { panic!() };
    assert_eq!(op, LockOp::Renew { lock, ticket: ticket(), ttl_ms: Some(30_000) });
    // The keeper's answers.
    let ok = api::finish(&finish, &LockReply::Held { lease: lease(7), at_ms: NOW, existing: false }).unwrap();
    assert_eq!((ok.status, header(&ok, X_LEASEHOLD_FENCE), header(&ok, X_LEASEHOLD_TICKET)), (200, vec!["7"], vec![T]));
    let body: serde_json::Value = serde_json::from_slice(&ok.body).unwrap();
    assert_eq!((body["status"].as_str(), body["room"].as_str()), (Some("admitted"), Some("shop")));
    let regranted = api::finish(&finish, &LockReply::Held { lease: lease(8), at_ms: NOW, existing: false }).unwrap();
    assert_eq!(regranted.status, 401);
    let gone = api::finish(&finish, &LockReply::TicketUnknown).unwrap();
    assert_eq!(gone.status, 401);
    let away = api::finish(&finish, &LockReply::Unknown { message: "keeper lost".into() }).unwrap();
    assert_eq!(away.status, 503, "the server's trouble is not the visitor's");
}

#[test]
fn wait_acquires_with_the_place_or_session_ticket_and_the_return_path() {
    let place = seal(SECRET.as_bytes(), PURPOSE_PLACE, &Place { room: "shop".into(), ticket: ticket() });
    let req = request("/v1/rooms/shop/wait?next=%2Fcart", Some(format!("lh_place_shop={place}")), None);
    let m = route(Method::Get, &req.target).unwrap();
    let Plan::Ask { op: LockOp::Acquire { ticket: t, ttl_ms, queue, limit, wait_ms, owner, .. }, finish, .. } =
        plan(m.def, &m.params, m.query, &req, &rooms(), Grant { prefix: "", role: Role::Read }, NOW)
    else {
        panic!("acquires")
    };
    assert_eq!((t, ttl_ms, queue, limit, wait_ms), (Some(ticket()), None, None, None, 0));
    // The place's lease, if admitted, is labelled with this time (the keeper keeps a first label).
    assert_eq!(owner.as_ref().map(|o| o.as_str().to_string()), Some(format!("{ADMITTED_AT}{NOW}")));
    let Finish::Room(f) = &finish else { panic!() };
    let RoomFinish::Wait { next, session, .. } = f.as_ref() else { panic!() };
    assert_eq!((next.as_str(), session), ("/cart", &None));
    // A place cookie of another room is not used.
    let other = seal(SECRET.as_bytes(), PURPOSE_PLACE, &Place { room: "other".into(), ticket: ticket() });
    let Plan::Ask { op: LockOp::Acquire { ticket: t, .. }, .. } =
        plan_at(Method::Get, "/v1/rooms/shop/wait", Some(format!("lh_place_shop={other}")), NOW)
    else {
        panic!()
    };
    assert_eq!(t, None);
}

#[test]
fn wait_granted_is_303_with_the_session_cookie_and_the_place_cleared() {
    let room = Arc::new(config("shop"));
    let f = Finish::Room(Box::new(RoomFinish::Wait { room: room.clone(), next: "/cart".into(), session: None }));
    let r = api::finish(&f, &LockReply::Held { lease: lease(9), at_ms: NOW, existing: false }).unwrap();
    assert_eq!((r.status, header(&r, "Location")), (303, vec!["/cart"]));
    let cookies = header(&r, "Set-Cookie");
    assert!(cookies[0].starts_with("lh_session_shop="), "{cookies:?}");
    assert!(cookies[0].ends_with("; Path=/; HttpOnly; SameSite=Lax; Max-Age=600"), "{cookies:?}");
    assert_eq!(cookies[1], "lh_place_shop=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    let value = cookies[0].split_once('=').unwrap().1.split(';').next().unwrap();
    let s: Session = open(SECRET.as_bytes(), PURPOSE_SESSION, value).unwrap();
    assert_eq!(s, Session { room: "shop".into(), ticket: ticket(), fence: 9, started_ms: NOW });
    // A session that comes back keeps its start; Secure when configured.
    let mut secure = config("shop");
    secure.cookie_secure = true;
    let kept = Session { room: "shop".into(), ticket: ticket(), fence: 9, started_ms: NOW - 100_000 };
    let f = Finish::Room(Box::new(RoomFinish::Wait { room: Arc::new(secure), next: "/".into(), session: Some(kept) }));
    let r = api::finish(&f, &LockReply::Held { lease: lease(9), at_ms: NOW, existing: false }).unwrap();
    let cookie = header(&r, "Set-Cookie")[0];
    assert!(cookie.ends_with("; Max-Age=500; Secure"), "{cookie}");
    let value = cookie.split_once('=').unwrap().1.split(';').next().unwrap();
    assert_eq!(open::<Session>(SECRET.as_bytes(), PURPOSE_SESSION, value).unwrap().started_ms, NOW - 100_000);
}

#[test]
fn a_place_cookie_brought_back_after_admission_gets_the_first_admissions_end() {
    // The lease was labelled at its first admission, 400 s ago; the visitor dropped the
    // session cookie and came back with the place cookie the server had cleared.
    let room = Arc::new(config("shop"));
    let f = Finish::Room(Box::new(RoomFinish::Wait { room, next: "/".into(), session: None }));
    let mut labelled = lease(9);
    labelled.owner = Some(Owner::parse(&format!("{ADMITTED_AT}{}", NOW - 400_000)).unwrap());
    let r = api::finish(&f, &LockReply::Held { lease: labelled, at_ms: NOW, existing: false }).unwrap();
    let cookie = header(&r, "Set-Cookie")[0];
    let value = cookie.split_once('=').unwrap().1.split(';').next().unwrap();
    let s: Session = open(SECRET.as_bytes(), PURPOSE_SESSION, value).unwrap();
    assert_eq!(s.started_ms, NOW - 400_000, "a second session must not start again");
    assert!(cookie.ends_with("; Max-Age=200"), "it ends with the first session (max_session 600 s): {cookie}");
    // Past the first session's end, the gate refuses the cookie.
    let later = Some(format!("lh_session_shop={value}"));
    assert_eq!(refused(&plan_at(Method::Get, "/v1/rooms/shop/gate", later, NOW + 200_000)).0, 401);
}

#[test]
fn wait_queued_is_the_page_with_a_place_cookie_and_a_token_for_this_lock_only() {
    let room = Arc::new(config("shop"));
    let f = Finish::Room(Box::new(RoomFinish::Wait { room, next: "/cart".into(), session: None }));
    let place = QueueView { ticket: ticket(), position: Some(1), queue_length: 1 };
    let r = api::finish(&f, &LockReply::Queued { place, eta_ms: None, existing: false }).unwrap();
    assert_eq!((r.status, r.content_type), (200, HTML));
    assert!(header(&r, "Set-Cookie")[0].starts_with("lh_place_shop="));
    assert!(header(&r, "Set-Cookie")[0].contains("Max-Age=86400"));
    assert_eq!(header(&r, "Cache-Control"), vec!["no-store"]);
    assert_eq!(header(&r, "Content-Security-Policy").len(), 1);
    let html = String::from_utf8(r.body).unwrap();
    assert!(html.contains(r#"aria-live="polite">1</dd>"#), "{html}");
    assert!(html.contains(r#"content="3""#), "9 s waiter TTL: a reload every 3 s");
    let token = html.split("token=").nth(1).unwrap().split('"').next().unwrap();
    let t: TicketClaim = open(SECRET.as_bytes(), TICKET_PURPOSE, token).unwrap();
    assert_eq!((t.lock.as_str(), t.ticket), ("room:shop", ticket()));
    // The token opens the room's events; the other room's secret does not take it.
    let p = plan_at(Method::Get, &format!("/v1/rooms/shop/events?token={token}"), None, NOW);
    assert!(matches!(p, Plan::Stream { ref lock, .. } if lock.as_str() == "room:shop"), "{p:?}");
    let p = plan_at(Method::Get, &format!("/v1/rooms/other/events?token={token}"), None, NOW);
    assert_eq!(refused(&p), (401, "no_session".into()));
    assert_eq!(refused(&plan_at(Method::Get, "/v1/rooms/shop/events", None, NOW)), (401, "no_session".into()));
}

#[test]
fn wait_refused_for_a_full_line_is_a_503_page() {
    let room = Arc::new(config("shop"));
    let f = Finish::Room(Box::new(RoomFinish::Wait { room, next: "/".into(), session: None }));
    let r = api::finish(&f, &LockReply::QueueFull { max_waiters: 5 }).unwrap();
    assert_eq!((r.status, r.content_type, header(&r, "Retry-After")), (503, HTML, vec!["3"]));
}

#[test]
fn revoke_checks_the_key_prefix_on_the_room_lock_and_answers_204_or_410() {
    let target = format!("/v1/rooms/shop/sessions/{T}");
    let m = route(Method::Delete, &target).unwrap();
    let req = request(&target, None, None);
    let p = plan(m.def, &m.params, m.query, &req, &rooms(), Grant { prefix: "team-a:", role: Role::Lock }, NOW);
    assert_eq!(refused(&p), (403, "forbidden".into()));
    let p = plan(m.def, &m.params, m.query, &req, &rooms(), Grant { prefix: "room:s", role: Role::Lock }, NOW);
    let Plan::Ask { op, finish, .. } = p else { panic!() };
    assert_eq!(op, LockOp::Release { lock: LockName::parse("room:shop").unwrap(), ticket: ticket() });
    let done = api::finish(&finish, &LockReply::Released { fence: 3, at_ms: NOW }).unwrap();
    assert_eq!(done.status, 204);
    assert_eq!(api::finish(&finish, &LockReply::TicketUnknown).unwrap().status, 410);
    let bad = plan_at(Method::Delete, "/v1/rooms/shop/sessions/not-a-ticket", None, NOW);
    assert_eq!(refused(&bad), (400, "bad_request".into()));
}

#[test]
fn views_show_capacity_use_and_line_of_the_rooms_a_key_may_see() {
    let Plan::Ask { op, finish, .. } = plan_at(Method::Get, "/v1/rooms", None, NOW) else { panic!() };
    assert!(matches!(op, LockOp::List { ref prefix, .. } if prefix == "room:"));
    let r = api::finish(&finish, &LockReply::Locks { locks: Vec::new(), next_after: None }).unwrap();
    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(body["rooms"].as_array().unwrap().len(), 2);
    assert_eq!((body["rooms"][1]["name"].as_str(), body["rooms"][1]["capacity"].as_u64()), (Some("shop"), Some(2)));
    assert_eq!(body["rooms"][1]["in_use"], 0);
    let Plan::Ask { finish, .. } = plan_at(Method::Get, "/v1/rooms/shop", None, NOW) else { panic!() };
    let r = api::finish(&finish, &LockReply::LockUnknown).unwrap();
    assert_eq!(r.status, 200);
    let req = request("/v1/rooms", None, None);
    let m = route(Method::Get, "/v1/rooms").unwrap();
    let p = plan(m.def, &m.params, m.query, &req, &rooms(), Grant { prefix: "team-a:", role: Role::Read }, NOW);
    let Plan::Now(r) = p else { panic!("nothing to ask: {p:?}") };
    assert_eq!(r.body, br#"{"rooms":[]}"#);
}
