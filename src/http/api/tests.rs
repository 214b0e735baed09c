//! API tests: what each route asks of the keeper, and how each answer looks.

use super::*;
use crate::config::Role;
use crate::core::lock::{QueueKind, QueueView};
use crate::core::target::TargetPolicy;
use crate::http::auth::Grant;
use crate::http::parse::Method;
use crate::http::route::{route, ROUTES};

const S: ApiSettings = ApiSettings {
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
        cookie: None,
        original_uri: None,
        origin: None,
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
    LeaseView {
        ticket: Ticket::parse(T).unwrap(),
        fence: 4,
        owner: None,
        weight: 1,
        expires_at_ms: 99,
        claimed: true,
        mode: None,
        user: None,
    }
}

fn place() -> QueueView {
    QueueView { ticket: Ticket::parse(T).unwrap(), position: Some(2), queue_length: 3 }
}

fn json(r: &Response) -> serde_json::Value {
    serde_json::from_slice(&r.body).unwrap()
}

/// The response to a reply its route expects.
fn shaped(f: &Finish, reply: &LockReply) -> Response {
    finish(f, reply).unwrap_or_else(|bug| panic!("{bug}"))
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
            op: LockOp::Acquire { wait_ms: 5000, queue: Some(QueueMode::Lottery), ttl_ms: None, limit: None, .. },
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
    let held =
        shaped(&Finish::EventsHead(lock.clone()), &LockReply::Held { lease: lease(), at_ms: 1, existing: false });
    assert_eq!(held, stream_head());
    let queued =
        shaped(&Finish::EventsHead(lock.clone()), &LockReply::Queued { place: place(), eta_ms: None, existing: false });
    assert_eq!(queued, stream_head());
    // An unknown ticket: the error GET would answer.
    let gone = shaped(&Finish::EventsHead(lock.clone()), &LockReply::TicketUnknown);
    assert_eq!(gone, shaped(&Finish::TicketStatus(lock), &LockReply::TicketUnknown));
    assert_eq!(gone.status, 410);
}

#[test]
fn native_answers_have_their_shapes() {
    let lock = LockName::parse("a").unwrap();
    let r = shaped(&Finish::Acquire(lock.clone()), &LockReply::Held { lease: lease(), at_ms: 7, existing: false });
    assert_eq!(r.status, 200);
    assert_eq!(json(&r)["status"], "acquired");
    assert_eq!(json(&r)["at_ms"], 7);
    let r = shaped(
        &Finish::Acquire(lock.clone()),
        &LockReply::Queued { place: place(), eta_ms: Some(300), existing: false },
    );
    assert_eq!((r.status, json(&r)["position"].as_u64(), json(&r)["eta_ms"].as_u64()), (202, Some(2), Some(300)));
    let r = shaped(
        &Finish::TicketStatus(lock.clone()),
        &LockReply::Queued { place: place(), eta_ms: None, existing: false },
    );
    assert_eq!((r.status, json(&r)["status"].as_str()), (200, Some("queued")));
    assert!(json(&r).get("eta_ms").is_none());
    assert_eq!(shaped(&Finish::Renew(lock.clone()), &LockReply::NotHolder(place())).status, 409);
    assert_eq!(shaped(&Finish::Release(lock.clone()), &LockReply::TicketUnknown).status, 410);
    assert_eq!(json(&shaped(&Finish::Release(lock), &LockReply::Left))["status"], "left");
    assert_eq!(shaped(&Finish::DataGet, &LockReply::Data(Some("[1]".into()))).body, b"[1]");
    assert_eq!(shaped(&Finish::DataGet, &LockReply::Data(None)).status, 404);
    assert_eq!(shaped(&Finish::DataPut, &LockReply::DataWritten { created: true }).status, 201);
    let big = LockReply::Rejected { message: "too big".into(), kind: RejectKind::TooLarge };
    assert_eq!(shaped(&Finish::DataPut, &big).status, 413);
    assert_eq!(shaped(&Finish::LockStatus, &LockReply::LockUnknown).status, 404);
    let info = lock_info();
    let r = shaped(&Finish::LockList, &LockReply::Locks { locks: vec![info], next_after: None });
    assert_eq!(json(&r)["locks"][0]["name"], "a");
    assert!(json(&r)["locks"][0].get("declared").is_none(), "an undeclared lock has no declaration");
}

#[test]
fn a_declared_lock_shows_its_declaration_as_configured() {
    use crate::core::lock::Declaration;
    let declared = Declaration {
        limit: 50,
        admit_per_minute: Some(60),
        max_ttl_ms: Some(60_000),
        ..Declaration::new(None, Some("room-".into()))
    };
    let info = LockInfo { declared: Some(declared), limit: 50, ..lock_info() };
    let r = shaped(&Finish::LockStatus, &LockReply::Lock(info.clone()));
    assert_eq!(r.status, 200);
    assert_eq!(
        json(&r)["declared"],
        serde_json::json!({"prefix":"room-","limit":50,"queue":"fifo","max_ttl_ms":60000,"admit_per_minute":60,"admit_burst":1})
    );
    let r = shaped(&Finish::LockList, &LockReply::Locks { locks: vec![info], next_after: None });
    assert_eq!(json(&r)["locks"][0]["declared"]["admit_per_minute"], 60);
}

fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
}

#[test]
fn compat_answers_are_what_the_php_client_reads() {
    let sel = DataKey::parse("queue").unwrap();
    let data =
        LockReply::CompatData { lease: Some(lease()), resource_id: "R".repeat(26), data: Some("{\"a\":1}".into()) };
    let r = shaped(&Finish::CompatGet(sel.clone()), &data);
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "X-Ticket"), Some(T), "spelled exactly X-Ticket");
    let body = json(&r);
    assert_eq!(body["data"], "{\"a\":1}", "data is a JSON string");
    assert_eq!(body["idResource"], "R".repeat(26));
    assert_eq!(body["selector"], "queue");
    assert_eq!(body["id"].as_str().unwrap().len(), 26);
    let empty = LockReply::CompatData { lease: Some(lease()), resource_id: "R".into(), data: None };
    let r = shaped(&Finish::CompatGet(sel.clone()), &empty);
    assert_eq!((r.status, json(&r)), (202, serde_json::json!({"unavailable": true})));
    assert_eq!(header(&r, "X-Ticket"), Some(T));
    let r =
        shaped(&Finish::CompatGet(sel.clone()), &LockReply::Queued { place: place(), eta_ms: None, existing: false });
    assert_eq!((r.status, header(&r, "X-Ticket")), (202, Some(T)));
    let unlocked_missing = LockReply::CompatData { lease: None, resource_id: "R".into(), data: None };
    assert_eq!(shaped(&Finish::CompatGet(sel), &unlocked_missing).status, 404);
    let r = shaped(&Finish::CompatLock, &LockReply::Queued { place: place(), eta_ms: None, existing: false });
    assert_eq!((r.status, json(&r)), (200, serde_json::json!({"locked": false})));
    let r = shaped(&Finish::CompatLock, &LockReply::Held { lease: lease(), at_ms: 1, existing: false });
    assert_eq!((json(&r), header(&r, "X-Ticket")), (serde_json::json!({"locked": true}), Some(T)));
    let r = shaped(&Finish::CompatPut, &LockReply::Written { ticket: lease().ticket });
    assert_eq!((r.status, r.body.len()), (204, 0));
    assert_eq!(
        shaped(&Finish::CompatPut, &LockReply::Queued { place: place(), eta_ms: None, existing: false }).status,
        409
    );
    assert_eq!(shaped(&Finish::CompatPut, &LockReply::ResourceUnknown).status, 404);
    for reply in [LockReply::Left, LockReply::TicketUnknown, LockReply::Released { fence: 1, at_ms: 2 }] {
        let r = shaped(&Finish::CompatUnlock, &reply);
        assert_eq!((r.status, json(&r)), (200, serde_json::json!({"unlocked": true})));
    }
    let r = shaped(&Finish::CompatCreate, &LockReply::ResourceExists);
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
                    ttl_ms: Some(60_000),
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
    assert_eq!(
        first_event(&lock, &LockReply::Held { lease: lease(), at_ms: 0, existing: false }).unwrap().0,
        "acquired"
    );
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
    let deleted = shaped(&f, &LockReply::ResourceDeleted);
    assert_eq!((deleted.status, deleted.body.len()), (204, 0));
    assert_eq!(shaped(&f, &LockReply::ResourceUnknown).status, 404);
    let busy = shaped(&f, &LockReply::ResourceBusy);
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
            let r = shaped(&f, &reply);
            assert_eq!((r.status, json(&r)), (503, serde_json::json!({"error": code, "message": "why"})));
            assert_eq!(header(&r, "Retry-After"), Some("1"));
        }
    }
}

/// A lock as readers see it, for replies that carry one.
fn lock_info() -> LockInfo {
    LockInfo {
        kind: Default::default(),
        name: LockName::parse("a").unwrap(),
        limit: 1,
        queue: QueueKind::Fifo,
        used: 0,
        holders: vec![],
        queue_length: 0,
        data_keys: 0,
        declared: None,
    }
}

/// One reply of every kind, in declaration order: each kind names the next, so a kind
/// added to `LockReply` does not compile here until it has a sample (and with it a place
/// in `every_reply_kind_is_shaped_by_its_routes_and_only_there`).
fn every_reply() -> Vec<LockReply> {
    use LockReply as R;
    fn after(r: &LockReply) -> Option<LockReply> {
        let info = lock_info;
        let entry = || crate::core::outbox::Entry {
            id: "e1".into(),
            call: Call {
                method: "POST".into(),
                url: "http://example.com/".into(),
                headers: vec![],
                body: String::new(),
            },
            max_attempts: 3,
            attempts: 0,
            state: crate::core::outbox::EntryState::Pending { due_ms: 1 },
            created_ms: 1,
            last_error: None,
            scope: String::new(),
            callback: false,
        };
        Some(match r {
            R::Held { .. } => R::Queued { place: place(), eta_ms: Some(5), existing: false },
            R::Queued { .. } => R::Unavailable { used: 1, limit: 1, queue_length: 0 },
            R::Unavailable { .. } => R::LimitMismatch { limit: 2 },
            R::LimitMismatch { .. } => R::KindMismatch { kind: Default::default() },
            R::KindMismatch { .. } => R::QueueMismatch { queue: QueueKind::Fifo },
            R::QueueMismatch { .. } => R::QueueFull { max_waiters: 4 },
            R::QueueFull { .. } => R::TableFull { max_locks: 5 },
            R::TableFull { .. } => R::Released { fence: 3, at_ms: 6 },
            R::Released { .. } => R::Left,
            R::Left => R::NotHolder(place()),
            R::NotHolder(_) => R::TicketUnknown,
            R::TicketUnknown => R::LockUnknown,
            R::LockUnknown => R::Dropped,
            R::Dropped => R::Lock(info()),
            R::Lock(_) => R::Locks { locks: vec![info()], next_after: Some("a".into()) },
            R::Locks { .. } => R::Data(Some("1".into())),
            R::Data(_) => R::DataWritten { created: false },
            R::DataWritten { .. } => R::DataDeleted { existed: true },
            R::DataDeleted { .. } => {
                R::ResourceCreated { id: "R".repeat(26), name: LockName::parse("a").unwrap(), timeout_s: 0 }
            }
            R::ResourceCreated { .. } => R::ResourceExists,
            R::ResourceExists => R::ResourceDeleted,
            R::ResourceDeleted => R::ResourceBusy,
            R::ResourceBusy => R::OverBudget { budget: Budget::Tickets, limit: 1, message: "full".into() },
            R::OverBudget { .. } => R::ResourceUnknown,
            R::ResourceUnknown => R::CompatData { lease: None, resource_id: "R".repeat(26), data: Some("1".into()) },
            R::CompatData { .. } => R::Written { ticket: lease().ticket },
            R::Written { .. } => R::Rejected { message: "no".into(), kind: RejectKind::Invalid },
            R::Rejected { .. } => R::Failed { message: "broken".into() },
            R::Failed { .. } => R::Cancelled,
            R::Cancelled => R::JournalFailed { message: "disk full".into() },
            R::JournalFailed { .. } => R::Unknown { message: "the leader went".into() },
            R::Unknown { .. } => R::NotLeader { leader: Some("http://node-b:8080".into()) },
            R::NotLeader { .. } => R::OutboxAccepted { id: "e1".into() },
            R::OutboxAccepted { .. } => R::OutboxEntry { entry: entry() },
            R::OutboxEntry { .. } => R::OutboxPage { entries: vec![entry()], next_after: None },
            R::OutboxPage { .. } => R::OutboxRefused { message: "full".into(), kind: OutboxRefusal::Full },
            R::OutboxRefused { .. } => R::OutboxDone,
            R::OutboxDone => R::Overview(Box::default()),
            R::Overview(_) => return None,
        })
    }
    let mut all = vec![R::Held { lease: lease(), at_ms: 1, existing: false }];
    while let Some(next) = after(all.last().unwrap()) {
        all.push(next);
    }
    all
}

/// One way of shaping of every kind, as `every_reply` has one reply of every kind.
fn every_finish() -> Vec<Finish> {
    fn after(f: &Finish) -> Option<Finish> {
        let lock = || LockName::parse("a").unwrap();
        Some(match f {
            Finish::Acquire(_) => Finish::Renew(lock()),
            Finish::Renew(_) => Finish::Release(lock()),
            Finish::Release(_) => Finish::TicketStatus(lock()),
            Finish::TicketStatus(_) => Finish::EventsHead(lock()),
            Finish::EventsHead(_) => Finish::LockStatus,
            Finish::LockStatus => Finish::LockList,
            Finish::LockList => Finish::DataGet,
            Finish::DataGet => Finish::DataPut,
            Finish::DataPut => Finish::DataDelete,
            Finish::DataDelete => Finish::CompatCreate,
            Finish::CompatCreate => Finish::CompatGet(DataKey::parse("sel").unwrap()),
            Finish::CompatGet(_) => Finish::CompatLock,
            Finish::CompatLock => Finish::CompatPut,
            Finish::CompatPut => Finish::CompatUnlock,
            Finish::CompatUnlock => Finish::ResourceDelete,
            Finish::ResourceDelete => Finish::OutboxPut,
            Finish::OutboxPut => Finish::OutboxRead,
            Finish::OutboxRead => Finish::OutboxRetry,
            Finish::OutboxRetry => Finish::OutboxDelete,
            // Room routes shape their own way: src/http/rooms/tests.rs checks them.
            Finish::OutboxDelete | Finish::Room(_) => return None,
        })
    }
    let mut all = vec![Finish::Acquire(LockName::parse("a").unwrap())];
    while let Some(next) = after(all.last().unwrap()) {
        all.push(next);
    }
    all
}

/// The kinds of answer each route gets from the keeper besides the refusals all routes
/// share (README.md's API table and its Small Resource Server notes).
fn answers(f: &Finish) -> &'static [&'static str] {
    match f {
        Finish::Acquire(_) | Finish::TicketStatus(_) | Finish::EventsHead(_) | Finish::CompatLock => {
            &["held", "queued"]
        }
        Finish::Renew(_) => &["held"],
        Finish::Release(_) => &["released", "left"],
        Finish::LockStatus => &["lock"],
        Finish::LockList => &["locks"],
        Finish::DataGet => &["data"],
        Finish::DataPut => &["data_written"],
        Finish::DataDelete => &["data_deleted"],
        Finish::CompatCreate => &["resource_created", "resource_exists"],
        Finish::CompatGet(_) => &["compat_data", "queued"],
        Finish::CompatPut => &["written", "queued"],
        // The original unlocks whatever it is given and always says so.
        Finish::CompatUnlock => &["released", "left", "ticket_unknown"],
        Finish::ResourceDelete => &["resource_deleted", "resource_busy"],
        Finish::OutboxPut => &["outbox_accepted"],
        Finish::OutboxRead => &["outbox_entry", "outbox_page"],
        Finish::OutboxRetry | Finish::OutboxDelete => &["outbox_done"],
        Finish::Room(_) => &[],
    }
}

/// The refusals every route answers alike, each with its status (src/http/status.rs).
const SHARED_REFUSALS: &[(&str, u16)] = &[
    ("unavailable", 409),
    ("limit_mismatch", 409),
    ("queue_mismatch", 409),
    ("kind_mismatch", 409),
    ("queue_full", 429),
    ("table_full", 503),
    ("not_holder", 409),
    ("ticket_unknown", 410),
    ("lock_unknown", 404),
    ("dropped", 409),
    ("over_budget", 503),
    ("resource_unknown", 404),
    ("rejected", 400),
    ("failed", 500),
    ("journal_failed", 503),
    ("not_leader", 503),
    ("unknown", 503),
    ("outbox_refused", 503),
];

/// A reply's kind as the keeper names it on the wire.
fn kind(reply: &LockReply) -> String {
    match serde_json::to_value(reply).unwrap() {
        serde_json::Value::String(unit) => unit,
        serde_json::Value::Object(tagged) => tagged.keys().next().unwrap().clone(),
        other => panic!("{other}"),
    }
}

#[test]
fn every_reply_kind_is_shaped_by_its_routes_and_only_there() {
    let (replies, finishes) = (every_reply(), every_finish());
    let kinds: std::collections::BTreeSet<String> = replies.iter().map(kind).collect();
    assert_eq!(kinds.len(), replies.len(), "one sample of each kind");
    let mut shaped_somewhere = std::collections::BTreeSet::new();
    for reply in &replies {
        let kind = kind(reply);
        let shared = SHARED_REFUSALS.iter().find(|(k, _)| *k == kind).map(|&(_, status)| status);
        let mut refusals = Vec::new();
        let mut answered = Vec::new();
        for f in &finishes {
            match (finish(f, reply), answers(f).contains(&kind.as_str())) {
                (Ok(r), true) => {
                    assert_ne!(r.status, 500, "{kind} for {f:?}");
                    shaped_somewhere.insert(kind.clone());
                    answered.push((f, r));
                }
                (Ok(r), false) => {
                    assert_eq!(Some(r.status), shared, "{kind} for {f:?} is not an answer of this route");
                    refusals.push(r);
                }
                (Err(bug), expected) => {
                    assert!(!expected, "{kind} for {f:?} is this route's answer: {bug}");
                    assert_eq!(shared, None, "{kind} is a refusal every route shares: {bug}");
                    assert_eq!((&bug.finish, bug.reply), (f, kind.as_str()));
                    let r = bug.response();
                    assert_eq!((r.status, json(&r)["error"].as_str()), (500, Some("internal")));
                }
            }
        }
        assert!(refusals.windows(2).all(|w| w[0] == w[1]), "{kind} is refused alike on every route");
        // A route that answers a kind others refuse answers it its own way.
        for (f, r) in answered {
            assert!(refusals.first().is_none_or(|refused| *refused != r), "{kind} for {f:?} is refused, not shaped");
        }
    }
    let never: Vec<&String> = kinds.iter().filter(|k| !shaped_somewhere.contains(*k)).collect();
    let shared: Vec<&str> = SHARED_REFUSALS.iter().map(|(k, _)| *k).filter(|k| *k != "ticket_unknown").collect();
    // `overview` is the dashboard's (shaped by `http::browser`), no route's.
    let mut expected_never: Vec<&str> = shared.into_iter().chain(["cancelled", "overview"]).collect();
    expected_never.sort_unstable();
    assert_eq!(never, expected_never, "every answer kind is shaped by some route");
}

#[test]
fn readiness_needs_a_keeper_and_a_worker_not_draining() {
    let ready = readiness(false, true, None);
    assert_eq!((ready.status, json(&ready)), (200, serde_json::json!({"status": "ready"})));
    for (draining, keeper, code) in
        [(false, false, "keeper_unavailable"), (true, true, "overloaded"), (true, false, "overloaded")]
    {
        let r = readiness(draining, keeper, None);
        assert_eq!((r.status, json(&r)["error"].as_str()), (503, Some(code)), "draining {draining}, keeper {keeper}");
        assert_eq!(header(&r, "Retry-After"), Some("1"));
    }
}

#[test]
fn metrics_page_is_prometheus_text() {
    let r = metrics_page("leasehold_up 1\n".into());
    assert_eq!((r.status, r.content_type, r.body.as_slice()), (200, METRICS_CONTENT_TYPE, &b"leasehold_up 1\n"[..]));
    assert!(METRICS_CONTENT_TYPE.starts_with("text/plain; version=0.0.4"));
}
