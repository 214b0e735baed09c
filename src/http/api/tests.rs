//! API tests: what each route asks of the keeper, and how each answer looks.

use super::*;
use crate::config::Role;
use crate::core::lock::{QueueKind, QueueView};
use crate::core::target::TargetPolicy;
use crate::http::auth::Grant;
use crate::http::parse::Method;
use crate::http::route::{route, ROUTES};

const S: ApiSettings = ApiSettings {
    default_ttl_ms: 30_000,
    compat_lease_ttl_ms: 60_000,
    targets: TargetPolicy {
        allow_hosts: Vec::new(),
        deny_hosts: Vec::new(),
        allow_local: false,
        allow_private: false,
        own_addresses: Vec::new(),
    },
};
const T: &str = "AAAAAAAAAAAAAAAAAAAAAA";

fn request(method: Method, target: &str, body: &str, ticket: Option<&str>) -> Request {
    Request {
        method,
        target: target.into(),
        minor_version: 1,
        keep_alive: true,
        api_key: None,
        ticket: ticket.map(str::to_string),
        last_event_id: None,
        expect_continue: false,
        body: body.as_bytes().to_vec(),
    }
}

fn plan_for(method: Method, target: &str, body: &str, ticket: Option<&str>) -> Plan {
    let req = request(method, target, body, ticket);
    let m = route(method, target).unwrap();
    plan(m.def, &m.params, m.query, &req, &S, Grant { prefix: "", role: Role::Write })
}

fn status(p: &Plan) -> u16 {
    match p {
        Plan::Now(r) => r.status,
        other => panic!("expected an immediate answer, got {other:?}"),
    }
}

fn lease() -> LeaseView {
    LeaseView { ticket: Ticket::parse(T).unwrap(), fence: 4, owner: None, weight: 1, expires_at_ms: 99, claimed: true }
}

fn place() -> QueueView {
    QueueView { ticket: Ticket::parse(T).unwrap(), position: Some(2), queue_length: 3 }
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn every_route_plans_something_without_panicking() {
    for def in ROUTES {
        let target = crate::http::route::tests::example_path(def.pattern);
        let method = def.method.unwrap_or(Method::Get);
        for body in ["", "{}", "not json", "{\"ticket\":\"AAAAAAAAAAAAAAAAAAAAAA\"}"] {
            let _ = plan_for(method, &target, body, Some(T));
            let _ = plan_for(method, &target, body, None);
        }
    }
}

#[test]
fn acquire_with_a_wait_may_be_answered_late() {
    match plan_for(Method::Post, "/v1/locks/a/acquire", r#"{"wait_ms":5000,"queue":"lottery","owner":"me"}"#, None) {
        Plan::Ask {
            op: LockOp::Acquire { wait_ms: 5000, queue: QueueMode::Lottery, ttl_ms: 30_000, .. },
            waits: true,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(status(&plan_for(Method::Post, "/v1/locks/a/acquire", r#"{"wait":5}"#, None)), 400);
    assert_eq!(status(&plan_for(Method::Post, "/v1/locks/a/renew", "{}", None)), 400, "renew needs a ticket");
    assert_eq!(status(&plan_for(Method::Get, "/v1/locks/a/tickets/nope", "", None)), 400);
}

#[test]
fn data_writes_need_a_ticket_and_json() {
    assert_eq!(status(&plan_for(Method::Put, "/v1/locks/a/data/k", "{}", None)), 400);
    assert_eq!(status(&plan_for(Method::Put, "/v1/locks/a/data/k", "{oops", Some(T))), 400);
    match plan_for(Method::Put, "/v1/locks/a/data/k", " [1, 2] ", Some(T)) {
        Plan::Ask { op: LockOp::PutData { value, .. }, .. } => assert_eq!(value, "[1, 2]"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn events_need_a_ticket_and_resume_after_the_last_id() {
    assert_eq!(status(&plan_for(Method::Get, "/v1/locks/a/events", "", None)), 400);
    let mut req = request(Method::Get, &format!("/v1/locks/a/events?ticket={T}"), "", None);
    req.last_event_id = Some("41".into());
    let m = route(Method::Get, &req.target).unwrap();
    assert!(matches!(
        plan(m.def, &m.params, m.query, &req, &S, Grant { prefix: "", role: Role::Write }),
        Plan::Stream { first_event_id: 42, .. }
    ));
}

#[test]
fn r12_a_last_event_id_that_cannot_be_continued_is_ignored() {
    let first = |last: &str| {
        let mut req = request(Method::Get, &format!("/v1/locks/a/events?ticket={T}"), "", None);
        req.last_event_id = Some(last.into());
        let m = route(Method::Get, &req.target).unwrap();
        match plan(m.def, &m.params, m.query, &req, &S, Grant { prefix: "", role: Role::Write }) {
            Plan::Stream { first_event_id, .. } => first_event_id,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(first(" 41 "), 42);
    assert_eq!(first(&MAX_LAST_EVENT_ID.to_string()), MAX_LAST_EVENT_ID + 1);
    // Ids that would leave no room to count on (or overflow at once) start over at 1.
    for last in [
        (MAX_LAST_EVENT_ID + 1).to_string(),
        (u64::MAX - 1).to_string(),
        u64::MAX.to_string(),
        "99999999999999999999999".into(),
        "+5".into(),
        "-1".into(),
        "abc".into(),
        "".into(),
    ] {
        assert_eq!(first(&last), 1, "{last:?}");
    }
}

#[test]
fn r12_head_of_events_checks_the_ticket_without_opening_a_stream() {
    let target = format!("/v1/locks/a/events?ticket={T}");
    match plan_for(Method::Head, &target, "", None) {
        Plan::Ask { op: LockOp::Touch { .. }, finish: Finish::EventsHead(_), waits: false } => {}
        other => panic!("{other:?}"),
    }
    let lock = LockName::parse("a").unwrap();
    let held = finish(&Finish::EventsHead(lock.clone()), &LockReply::Held { lease: lease(), at_ms: 1 });
    assert_eq!(held, stream_head());
    let queued = finish(&Finish::EventsHead(lock.clone()), &LockReply::Queued { place: place(), eta_ms: None });
    assert_eq!(queued, stream_head());
    // An unknown ticket: the error GET would answer.
    let gone = finish(&Finish::EventsHead(lock.clone()), &LockReply::TicketUnknown);
    assert_eq!(gone, finish(&Finish::TicketStatus(lock), &LockReply::TicketUnknown));
    assert_eq!(gone.status, 410);
}

#[test]
fn native_answers_have_their_shapes() {
    let lock = LockName::parse("a").unwrap();
    let r = finish(&Finish::Acquire(lock.clone()), &LockReply::Held { lease: lease(), at_ms: 7 });
    assert_eq!(r.status, 200);
    assert_eq!(json(&r)["status"], "acquired");
    assert_eq!(json(&r)["at_ms"], 7);
    let r = finish(&Finish::Acquire(lock.clone()), &LockReply::Queued { place: place(), eta_ms: Some(300) });
    assert_eq!((r.status, json(&r)["position"].as_u64(), json(&r)["eta_ms"].as_u64()), (202, Some(2), Some(300)));
    let r = finish(&Finish::TicketStatus(lock.clone()), &LockReply::Queued { place: place(), eta_ms: None });
    assert_eq!((r.status, json(&r)["status"].as_str()), (200, Some("queued")));
    assert!(json(&r).get("eta_ms").is_none());
    assert_eq!(finish(&Finish::Renew(lock.clone()), &LockReply::NotHolder(place())).status, 409);
    assert_eq!(finish(&Finish::Release(lock.clone()), &LockReply::TicketUnknown).status, 410);
    assert_eq!(json(&finish(&Finish::Release(lock), &LockReply::Left))["status"], "left");
    assert_eq!(finish(&Finish::DataGet, &LockReply::Data(Some("[1]".into()))).body, b"[1]");
    assert_eq!(finish(&Finish::DataGet, &LockReply::Data(None)).status, 404);
    assert_eq!(finish(&Finish::DataPut, &LockReply::DataWritten { created: true }).status, 201);
    let big = LockReply::Rejected { message: "too big".into(), kind: RejectKind::TooLarge };
    assert_eq!(finish(&Finish::DataPut, &big).status, 413);
    assert_eq!(finish(&Finish::LockStatus, &LockReply::LockUnknown).status, 404);
    let info = LockInfo {
        name: LockName::parse("a").unwrap(),
        limit: 1,
        queue: QueueKind::Fifo,
        used: 0,
        holders: vec![],
        queue_length: 0,
        data_keys: 0,
    };
    let r = finish(&Finish::LockList, &LockReply::Locks { locks: vec![info], next_after: None });
    assert_eq!(json(&r)["locks"][0]["name"], "a");
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

#[test]
fn compat_answers_are_what_the_php_client_reads() {
    let sel = DataKey::parse("queue").unwrap();
    let data =
        LockReply::CompatData { lease: Some(lease()), resource_id: "R".repeat(26), data: Some("{\"a\":1}".into()) };
    let r = finish(&Finish::CompatGet(sel.clone()), &data);
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "X-Ticket"), Some(T), "spelled exactly X-Ticket");
    let body = json(&r);
    assert_eq!(body["data"], "{\"a\":1}", "data is a JSON string");
    assert_eq!(body["idResource"], "R".repeat(26));
    assert_eq!(body["selector"], "queue");
    assert_eq!(body["id"].as_str().unwrap().len(), 26);
    let empty = LockReply::CompatData { lease: Some(lease()), resource_id: "R".into(), data: None };
    let r = finish(&Finish::CompatGet(sel.clone()), &empty);
    assert_eq!((r.status, json(&r)), (202, serde_json::json!({"unavailable": true})));
    assert_eq!(header(&r, "X-Ticket"), Some(T));
    let r = finish(&Finish::CompatGet(sel.clone()), &LockReply::Queued { place: place(), eta_ms: None });
    assert_eq!((r.status, header(&r, "X-Ticket")), (202, Some(T)));
    let unlocked_missing = LockReply::CompatData { lease: None, resource_id: "R".into(), data: None };
    assert_eq!(finish(&Finish::CompatGet(sel), &unlocked_missing).status, 404);
    let r = finish(&Finish::CompatLock, &LockReply::Queued { place: place(), eta_ms: None });
    assert_eq!((r.status, json(&r)), (200, serde_json::json!({"locked": false})));
    let r = finish(&Finish::CompatLock, &LockReply::Held { lease: lease(), at_ms: 1 });
    assert_eq!((json(&r), header(&r, "X-Ticket")), (serde_json::json!({"locked": true}), Some(T)));
    let r = finish(&Finish::CompatPut, &LockReply::Written { ticket: lease().ticket });
    assert_eq!((r.status, r.body.len()), (204, 0));
    assert_eq!(finish(&Finish::CompatPut, &LockReply::Queued { place: place(), eta_ms: None }).status, 409);
    assert_eq!(finish(&Finish::CompatPut, &LockReply::ResourceUnknown).status, 404);
    for reply in [LockReply::Left, LockReply::TicketUnknown, LockReply::Released { fence: 1, at_ms: 2 }] {
        let r = finish(&Finish::CompatUnlock, &reply);
        assert_eq!((r.status, json(&r)), (200, serde_json::json!({"unlocked": true})));
    }
    let r = finish(&Finish::CompatCreate, &LockReply::ResourceExists);
    assert_eq!((r.status, json(&r)["message"].as_str()), (409, Some("Resource already exists")));
}

#[test]
fn compat_requests_become_acquires_with_follow_ups() {
    match plan_for(Method::Put, "/resource/printer/A4", "", Some(T)) {
        Plan::Ask {
            op:
                LockOp::Acquire {
                    then: Then::WriteAndRelease { value, .. },
                    compat: true,
                    ticket: Some(_),
                    ttl_ms: 60_000,
                    ..
                },
            finish: Finish::CompatPut,
            waits: true,
        } => {
            assert_eq!(value, "{}", "an empty body stores {{}}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(status(&plan_for(Method::Put, "/resource/printer/A4", "{bad", None)), 400);
    assert!(matches!(
        plan_for(Method::Get, "/resource/printer/A4?lock=0", "", None),
        Plan::Ask { op: LockOp::CompatRead { .. }, .. }
    ));
    assert!(matches!(
        plan_for(Method::Get, "/resource/printer/A4", "", None),
        Plan::Ask { op: LockOp::Acquire { then: Then::ReadData { .. }, .. }, .. }
    ));
    assert_eq!(status(&plan_for(Method::Put, "/resource/printer/A4/unlock", "", None)), 400, "unlock needs a ticket");
    assert_eq!(status(&plan_for(Method::Post, "/resource", "{}", None)), 400, "a name is required");
    assert_eq!(status(&plan_for(Method::Post, "/resource", "{\"name\":\"a b\"}", None)), 400);
    match plan_for(Method::Post, "/resource", "{\"name\":\"printer\",\"timeout\":-1}", None) {
        Plan::Ask { op: LockOp::CreateResource { timeout_s: -1, .. }, .. } => {}
        other => panic!("{other:?}"),
    }
    let Plan::Now(health) = plan_for(Method::Delete, "/health", "", None) else { panic!() };
    assert_eq!(json(&health), serde_json::json!({"heath": "ok"}));
}

#[test]
fn stream_events_are_framed_and_terminal_ones_end_the_stream() {
    assert_eq!(
        String::from_utf8(sse_event(3, "position", &serde_json::json!({"position": 1}))).unwrap(),
        "id: 3\nevent: position\ndata: {\"position\":1}\n\n"
    );
    let lock = LockName::parse("a").unwrap();
    assert!(!stream_event(&lock, &TicketEvent::Acquired(lease())).2);
    assert!(stream_event(&lock, &TicketEvent::Expired { fence: 1, unclaimed: false }).2);
    assert_eq!(first_event(&lock, &LockReply::TicketUnknown), None);
    assert_eq!(first_event(&lock, &LockReply::Held { lease: lease(), at_ms: 0 }).unwrap().0, "acquired");
}

#[test]
fn a_key_limited_to_a_prefix_lists_only_under_it() {
    let req = request(Method::Get, "/v1/locks", "", None);
    let m = route(Method::Get, "/v1/locks?prefix=jo").unwrap();
    assert!(
        matches!(plan(m.def, &m.params, m.query, &req, &S, Grant { prefix: "jobs:", role: Role::Write }), Plan::Ask { op: LockOp::List { ref prefix, .. }, .. } if prefix == "jobs:")
    );
    let m = route(Method::Get, "/v1/locks?prefix=jobs:x").unwrap();
    assert!(
        matches!(plan(m.def, &m.params, m.query, &req, &S, Grant { prefix: "jobs:", role: Role::Write }), Plan::Ask { op: LockOp::List { ref prefix, .. }, .. } if prefix == "jobs:x")
    );
    let m = route(Method::Get, "/v1/locks?prefix=other").unwrap();
    assert!(
        matches!(plan(m.def, &m.params, m.query, &req, &S, Grant { prefix: "jobs:", role: Role::Write }), Plan::Now(ref r) if r.status == 403)
    );
}

#[test]
fn outbox_calls_are_checked_before_they_reach_the_keeper() {
    let body = |json: serde_json::Value| OutboxBody::deserialize(json).map_err(|e| e.to_string());
    let ok = outbox_call(
        body(serde_json::json!({"url": "https://h.example/x", "headers": {"X-A": "1"}, "body": {"a": 1}})).unwrap(),
        &S.targets,
    )
    .unwrap();
    assert_eq!((ok.0.method.as_str(), ok.0.body.as_str()), ("POST", r#"{"a":1}"#));
    assert_eq!(ok.0.headers, vec![("X-A".to_string(), "1".to_string())]);
    let refused = |json: serde_json::Value| outbox_call(body(json).unwrap(), &S.targets).unwrap_err().status;
    assert_eq!(refused(serde_json::json!({"url": "http://127.0.0.1/"})), 400);
    assert_eq!(refused(serde_json::json!({"url": "https://h.example/", "method": "CONNECT"})), 400);
    assert_eq!(refused(serde_json::json!({"url": "https://h.example/", "headers": {"Idempotency-Key": "x"}})), 400);
    assert_eq!(refused(serde_json::json!({"url": "https://h.example/", "headers": {"X-A": "1\r\nX-B: 2"}})), 400);
    assert_eq!(refused(serde_json::json!({"url": "https://h.example/", "headers": {"X A": "1"}})), 400);
    assert!(
        body(serde_json::json!({"url": "https://h.example/", "retries": 3})).is_err(),
        "unknown fields are refused"
    );
}

#[test]
fn resource_delete_plans_a_keeper_delete_and_answers_204_404_or_409() {
    let p = plan_for(Method::Delete, "/resource/printer", "", None);
    let name = LockName::parse("printer").unwrap();
    assert_eq!(p, Plan::Ask { op: LockOp::DeleteResource { name }, finish: Finish::ResourceDelete, waits: false });
    assert_eq!(status(&plan_for(Method::Delete, "/resource/a%2Fb", "", None)), 400, "an invalid name");
    let f = Finish::ResourceDelete;
    let deleted = finish(&f, &LockReply::ResourceDeleted);
    assert_eq!((deleted.status, deleted.body.len()), (204, 0));
    assert_eq!(finish(&f, &LockReply::ResourceUnknown).status, 404);
    let busy = finish(&f, &LockReply::ResourceBusy);
    assert_eq!((busy.status, json(&busy)["error"].as_str()), (409, Some("wrong_state")));
}

#[test]
fn every_budget_refusal_is_a_503_with_its_own_code_and_retry_after() {
    for (budget, code) in [
        (Budget::Tickets, "tickets_full"),
        (Budget::DataBytes, "data_full"),
        (Budget::Resources, "resources_full"),
        (Budget::EventStreams, "streams_full"),
    ] {
        let reply = LockReply::OverBudget { budget, limit: 3, message: "why".into() };
        for f in [Finish::Acquire(LockName::parse("x").unwrap()), Finish::DataPut, Finish::CompatCreate] {
            let r = finish(&f, &reply);
            assert_eq!((r.status, json(&r)), (503, serde_json::json!({"error": code, "message": "why"})));
            assert_eq!(header(&r, "Retry-After"), Some("1"));
        }
    }
}
