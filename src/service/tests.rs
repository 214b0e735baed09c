//! Service tests: waiting requests, follow-ups, event streams, closing channels, resources.

use super::*;
use crate::core::lock::{Declaration, QueueMode};
use crate::core::names::DataKey;

fn limits() -> TableLimits {
    TableLimits { waiter_ttl_ms: 1_000, claim_ms: 500, ..TableLimits::DEFAULT }
}

struct World {
    s: Service,
    now: u64,
    next_byte: u8,
    out: Outbox,
}

impl World {
    fn new() -> Self {
        Self { s: Service::new(limits(), 60_000, 7), now: 1_000_000, next_byte: 1, out: Vec::new() }
    }

    fn send(&mut self, link: LinkId, message: ToKeeper) -> Outbox {
        self.next_byte += 1;
        let fresh = [self.next_byte; 16];
        self.s.handle(link, message, Moment::new(self.now, 42), fresh, &mut self.out);
        std::mem::take(&mut self.out)
    }

    fn request(&mut self, link: LinkId, id: u64, op: LockOp) -> Outbox {
        self.send(link, ToKeeper::Request { id, op })
    }

    fn tick(&mut self, ms: u64) -> Outbox {
        self.now += ms;
        self.s.expire(Moment::new(self.now, 42), &mut self.out);
        std::mem::take(&mut self.out)
    }
}

fn lock() -> LockName {
    LockName::parse("printer").unwrap()
}

fn acquire(ticket: Option<Ticket>, wait_ms: u64, then: Then, compat: bool) -> LockOp {
    LockOp::Acquire {
        lock: lock(),
        ticket,
        owner: None,
        ttl_ms: Some(30_000),
        limit: Some(1),
        weight: 1,
        queue: Some(QueueMode::Fifo),
        wait_ms,
        then,
        compat,
        callback: None,
        mode: None,
        user: None,
    }
}

fn reply_to(out: &Outbox, link: LinkId, id: u64) -> Option<LockReply> {
    out.iter().find_map(|(l, m)| match m {
        FromKeeper::Reply { id: i, reply } if *l == link && *i == id => Some(reply.clone()),
        _ => None,
    })
}

/// What the keeper said of request `id` of `link` when it began to wait, if it did.
fn waiting(out: &Outbox, link: LinkId, id: u64) -> Option<LockReply> {
    out.iter().find_map(|(l, m)| match m {
        FromKeeper::Waiting { id: i, reply } if *l == link && *i == id => Some(reply.clone()),
        _ => None,
    })
}

fn held(reply: Option<LockReply>) -> LeaseView {
    match reply {
        Some(LockReply::Held { lease, .. }) => lease,
        other => panic!("expected held, got {other:?}"),
    }
}

fn queued_ticket(reply: Option<LockReply>) -> Ticket {
    match reply {
        Some(LockReply::Queued { place, .. }) => place.ticket,
        other => panic!("expected queued, got {other:?}"),
    }
}

#[test]
fn a_waiting_acquire_is_answered_when_granted() {
    let mut w = World::new();
    let first = held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    let out = w.request(2, 7, acquire(None, 10_000, Then::Hold, false));
    assert!(reply_to(&out, 2, 7).is_none(), "no answer while it waits");
    assert_eq!(w.s.stats().waiting_requests, 1);
    let out = w.request(1, 2, LockOp::Release { lock: lock(), ticket: first.ticket });
    assert!(matches!(reply_to(&out, 1, 2), Some(LockReply::Released { .. })));
    let granted = held(reply_to(&out, 2, 7));
    assert!(granted.claimed, "a waiter whose request is open claims at once");
    assert!(granted.fence > first.fence);
    assert_eq!(w.s.stats().waiting_requests, 0);
}

#[test]
fn a_wait_that_ends_answers_with_the_place_and_the_waiter_stays() {
    let mut w = World::new();
    held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    let began = w.request(2, 7, acquire(None, 2_000, Then::Hold, false));
    assert_eq!(began.len(), 1, "no answer while it waits, only where it stands: {began:?}");
    let placed = queued_ticket(waiting(&began, 2, 7));
    assert_eq!(w.s.next_deadline(), Some(w.now + 2_000));
    assert!(reply_to(&w.tick(1_999), 2, 7).is_none());
    let ticket = queued_ticket(reply_to(&w.tick(1), 2, 7));
    assert_eq!(ticket, placed, "the place it was told of when it began to wait");
    // Queued, unwatched: it stays for waiter_ttl_ms unless it comes back.
    assert!(matches!(
        reply_to(&w.request(2, 8, LockOp::Touch { lock: lock(), ticket }), 2, 8),
        Some(LockReply::Queued { .. })
    ));
    w.tick(limits().waiter_ttl_ms);
    assert_eq!(
        reply_to(&w.request(2, 9, LockOp::Touch { lock: lock(), ticket }), 2, 9),
        Some(LockReply::TicketUnknown)
    );
}

#[test]
fn the_wait_is_capped_at_max_wait_ms() {
    let mut w = World::new();
    held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    w.request(2, 7, acquire(None, 10_000_000, Then::Hold, false));
    assert_eq!(w.s.wait_deadlines.first().map(|d| d.0), Some(w.now + 60_000));
}

#[test]
fn a_cancelled_wait_gets_no_answer_and_its_grant_is_unclaimed() {
    let mut w = World::new();
    let first = held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    w.request(2, 7, acquire(None, 10_000, Then::Hold, false));
    assert_eq!(reply_to(&w.send(2, ToKeeper::Cancel { id: 7 }), 2, 7), Some(LockReply::Cancelled));
    assert!(w.send(2, ToKeeper::Cancel { id: 7 }).is_empty(), "a second cancel has nothing to answer");
    let out = w.request(1, 2, LockOp::Release { lock: lock(), ticket: first.ticket });
    assert!(reply_to(&out, 2, 7).is_none(), "not granted to a dead socket");
    let view = w.s.table().lock_view("printer").unwrap();
    assert_eq!(view.holders.len(), 1);
    assert!(!view.holders[0].claimed, "it holds only the claim window");
    w.tick(limits().claim_ms);
    assert!(w.s.table().lock_view("printer").is_none(), "the unclaimed grant lapsed");
}

#[test]
fn a_second_wait_for_a_ticket_supersedes_the_first() {
    let mut w = World::new();
    held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    let ticket = queued_ticket(reply_to(&w.request(2, 5, acquire(None, 0, Then::Hold, false)), 2, 5));
    w.request(2, 6, acquire(Some(ticket), 10_000, Then::Hold, false));
    let out = w.request(3, 9, acquire(Some(ticket), 10_000, Then::Hold, false));
    assert_eq!(queued_ticket(reply_to(&out, 2, 6)), ticket, "the first learns its place");
    assert_eq!(w.s.stats().waiting_requests, 1);
    w.send(3, ToKeeper::Cancel { id: 9 });
    // Both watches ended: the waiter is absent after waiter_ttl_ms.
    w.tick(limits().waiter_ttl_ms);
    assert_eq!(w.s.table().lock_view("printer").unwrap().queue_length, 0);
}

#[test]
fn a_closed_channel_ends_its_waits_and_streams() {
    let mut w = World::new();
    held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    w.request(2, 7, acquire(None, 10_000, Then::Hold, false));
    let ticket = queued_ticket(reply_to(&w.request(3, 1, acquire(None, 0, Then::Hold, false)), 3, 1));
    w.request(2, 8, LockOp::Watch { lock: lock(), ticket });
    assert_eq!(w.s.stats(), ServiceStats { waiting_requests: 1, event_streams: 1, resources: 0, ops_total: 4 });
    w.s.link_closed(2, Moment::new(w.now, 1), &mut w.out);
    assert_eq!((w.s.stats().waiting_requests, w.s.stats().event_streams), (0, 0));
    w.tick(limits().waiter_ttl_ms);
    assert_eq!(w.s.table().lock_view("printer").unwrap().queue_length, 0, "both waiters were unwatched");
}

#[test]
fn a_stream_sees_positions_then_acquired_then_released() {
    let mut w = World::new();
    let first = held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    let second = queued_ticket(reply_to(&w.request(1, 2, acquire(None, 0, Then::Hold, false)), 1, 2));
    let third = queued_ticket(reply_to(&w.request(1, 3, acquire(None, 0, Then::Hold, false)), 1, 3));
    let out = w.request(5, 1, LockOp::Watch { lock: lock(), ticket: third });
    assert!(matches!(reply_to(&out, 5, 1), Some(LockReply::Queued { place, .. }) if place.position == Some(2)));
    let events = |out: &Outbox| -> Vec<TicketEvent> {
        out.iter()
            .filter_map(|(l, m)| match m {
                FromKeeper::Event { ticket, event, .. } if *l == 5 && *ticket == third => Some(event.clone()),
                _ => None,
            })
            .collect()
    };
    let out = w.request(1, 4, LockOp::Release { lock: lock(), ticket: first.ticket });
    assert_eq!(events(&out), vec![TicketEvent::Position { position: 1, queue_length: 1 }]);
    let out = w.request(1, 5, LockOp::Release { lock: lock(), ticket: second });
    let got = events(&out);
    assert!(matches!(&got[..], [TicketEvent::Acquired(lease)] if lease.ticket == third && lease.claimed), "{got:?}");
    let out = w.request(1, 6, LockOp::Release { lock: lock(), ticket: third });
    assert!(matches!(&events(&out)[..], [TicketEvent::Released { .. }]));
    w.send(5, ToKeeper::Unwatch { lock: lock(), ticket: third });
    assert_eq!(w.s.stats().event_streams, 0);
}

#[test]
fn compat_write_waits_then_writes_and_releases_or_leaves_in_time() {
    let mut w = World::new();
    let resource = LockName::parse("printer").unwrap();
    let created = reply_to(&w.request(1, 1, LockOp::CreateResource { name: resource.clone(), timeout_s: 2 }), 1, 1);
    assert!(matches!(created, Some(LockReply::ResourceCreated { ref id, .. }) if id.len() == 26));
    assert_eq!(
        reply_to(&w.request(1, 2, LockOp::CreateResource { name: resource, timeout_s: 2 }), 1, 2),
        Some(LockReply::ResourceExists)
    );
    let key = DataKey::parse("A4").unwrap();
    let write = |value: &str| Then::WriteAndRelease { key: key.clone(), value: value.into() };
    let holder = held(reply_to(&w.request(1, 3, acquire(None, 0, Then::Hold, true)), 1, 3));
    // A write while held waits (the resource's 2 s), then gives up: nothing written, not queued.
    let began = w.request(2, 4, acquire(None, 0, write("{\"a\":1}"), true));
    assert!(reply_to(&began, 2, 4).is_none() && waiting(&began, 2, 4).is_some(), "{began:?}");
    let out = w.tick(2_000);
    assert!(matches!(reply_to(&out, 2, 4), Some(LockReply::Queued { .. })));
    assert_eq!(w.s.table().lock_view("printer").unwrap().queue_length, 0);
    // Another write waits and is done at the release, atomically with the grant.
    w.request(2, 5, acquire(None, 0, write("{\"b\":2}"), true));
    let out = w.request(1, 6, LockOp::Release { lock: lock(), ticket: holder.ticket });
    assert!(matches!(reply_to(&out, 2, 5), Some(LockReply::Written { .. })));
    assert_eq!(w.s.table().data("printer", "A4"), Some("{\"b\":2}"));
    assert_eq!(w.s.table().lock_view("printer").unwrap().used, 0, "the write released its lock");
    // Read without locking.
    let read = reply_to(&w.request(3, 1, LockOp::CompatRead { resource: lock(), key: key.clone() }), 3, 1);
    assert!(matches!(read, Some(LockReply::CompatData { lease: None, data: Some(ref d), .. }) if d == "{\"b\":2}"));
    // Unknown resources are refused.
    let other = LockOp::CompatRead { resource: LockName::parse("nope").unwrap(), key };
    assert_eq!(reply_to(&w.request(3, 2, other), 3, 2), Some(LockReply::ResourceUnknown));
}

#[test]
fn queued_answers_carry_an_estimate_once_the_lock_has_history() {
    let mut w = World::new();
    let a = held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    let r = reply_to(&w.request(1, 2, acquire(None, 0, Then::Hold, false)), 1, 2);
    assert!(matches!(r, Some(LockReply::Queued { eta_ms: None, .. })), "no history yet");
    let b = queued_ticket(r);
    // B is admitted from the queue (timed), holds for 400 ms, and releases.
    w.request(1, 3, LockOp::Release { lock: lock(), ticket: a.ticket });
    w.now += 400;
    w.request(1, 4, LockOp::Release { lock: lock(), ticket: b });
    held(reply_to(&w.request(1, 5, acquire(None, 0, Then::Hold, false)), 1, 5));
    let r = reply_to(&w.request(1, 6, acquire(None, 0, Then::Hold, false)), 1, 6);
    assert!(matches!(r, Some(LockReply::Queued { eta_ms: Some(400), .. })), "{r:?}");
}

/// An acquire of `printer` that leaves its shape to the declaration.
fn plain_acquire() -> LockOp {
    let mut op = acquire(None, 0, Then::Hold, false);
    if let LockOp::Acquire { limit, queue, ttl_ms, .. } = &mut op {
        (*limit, *queue, *ttl_ms) = (None, None, None);
    }
    op
}

fn eta(reply: Option<LockReply>) -> Option<u64> {
    match reply {
        Some(LockReply::Queued { eta_ms, .. }) => eta_ms,
        other => panic!("expected queued, got {other:?}"),
    }
}

#[test]
fn the_estimate_of_a_rate_limited_lock_is_the_later_of_its_next_tokens_and_its_hold_times() {
    let mut w = World::new();
    // Waiters stay a minute unseen here (the global waiter TTL is 1 s).
    let declared = vec![Declaration {
        limit: 2,
        admit_per_minute: Some(60),
        waiter_ttl_ms: Some(60_000),
        ..Declaration::new(Some(lock()), None)
    }];
    w.s.reconfigure(TableLimits { declared, ..limits() }, 60_000, Moment::new(w.now, 0), &mut Vec::new());
    let t = w.now;
    let a = held(reply_to(&w.request(1, 1, plain_acquire()), 1, 1));
    // The first grant took the only token; one comes back every second. No hold times yet.
    let b = reply_to(&w.request(1, 2, plain_acquire()), 1, 2);
    assert_eq!(eta(b.clone()), Some(1_000), "{b:?}");
    let b = queued_ticket(b);
    let c = reply_to(&w.request(1, 3, plain_acquire()), 1, 3);
    assert_eq!(eta(c.clone()), Some(2_000), "the second in line waits for the second token");
    let c = queued_ticket(c);
    w.now = t + 500;
    let seen = w.request(1, 4, LockOp::Touch { lock: lock(), ticket: c });
    assert_eq!(eta(reply_to(&seen, 1, 4)), Some(1_500), "a position read later counts from then");
    // B goes in by the timer at t + 1 s (and claims its grant), and holds for 5 s; A leaves
    // at t + 2 s for C.
    w.tick(500);
    held(reply_to(&w.request(1, 50, LockOp::Touch { lock: lock(), ticket: b }), 1, 50));
    w.now = t + 2_000;
    w.request(1, 5, LockOp::Release { lock: lock(), ticket: a.ticket });
    held(reply_to(&w.request(1, 51, LockOp::Touch { lock: lock(), ticket: c }), 1, 51));
    w.now = t + 6_000;
    w.request(1, 6, LockOp::Release { lock: lock(), ticket: b });
    let view = w.s.table().lock_view("printer").unwrap();
    assert_eq!(view.used, 1, "C holds");
    held(reply_to(&w.request(1, 7, plain_acquire()), 1, 7));
    // Now the hold time says 5 s / 2 permits and the rate 1 s: the larger wins.
    assert_eq!(eta(reply_to(&w.request(1, 8, plain_acquire()), 1, 8)), Some(2_500));
    // An undeclared lock has no rate: no history, no estimate.
    let mut other = acquire(None, 0, Then::Hold, false);
    if let LockOp::Acquire { lock, .. } = &mut other {
        *lock = LockName::parse("scanner").unwrap();
    }
    held(reply_to(&w.request(1, 9, other.clone()), 1, 9));
    assert_eq!(eta(reply_to(&w.request(1, 10, other), 1, 10)), None);
}

#[test]
fn a_declared_lock_shows_its_declaration_in_its_status_and_in_lists() {
    let mut w = World::new();
    let declaration =
        Declaration { limit: 3, admit_per_minute: Some(60), ..Declaration::new(None, Some("print".into())) };
    let limits = TableLimits { declared: vec![declaration.clone()], ..limits() };
    w.s.reconfigure(limits, 60_000, Moment::new(w.now, 0), &mut Vec::new());
    held(reply_to(&w.request(1, 1, plain_acquire()), 1, 1));
    match reply_to(&w.request(1, 2, LockOp::Status { lock: lock() }), 1, 2) {
        Some(LockReply::Lock(info)) => assert_eq!((info.limit, info.declared), (3, Some(declaration.clone()))),
        other => panic!("expected the lock, got {other:?}"),
    }
    let list = LockOp::List { prefix: String::new(), after: None, limit: 10 };
    match reply_to(&w.request(1, 3, list), 1, 3) {
        Some(LockReply::Locks { locks, .. }) => assert_eq!(locks[0].declared, Some(declaration)),
        other => panic!("expected a page, got {other:?}"),
    }
}

#[test]
fn lists_come_in_pages() {
    let mut w = World::new();
    for name in ["a1", "a2", "a3", "b1"] {
        w.request(1, 1, LockOp::acquire(LockName::parse(name).unwrap(), 1_000));
    }
    let page = |w: &mut World, after: Option<String>| match reply_to(
        &w.request(1, 9, LockOp::List { prefix: "a".into(), after, limit: 2 }),
        1,
        9,
    ) {
        Some(LockReply::Locks { locks, next_after }) => {
            (locks.into_iter().map(|l| l.name.to_string()).collect::<Vec<_>>(), next_after)
        }
        other => panic!("{other:?}"),
    };
    let (first, next) = page(&mut w, None);
    assert_eq!((first, next.clone()), (vec!["a1".to_string(), "a2".to_string()], Some("a2".to_string())));
    let (second, next) = page(&mut w, next);
    assert_eq!((second, next), (vec!["a3".to_string()], None));
}

fn deliveries(out: &Outbox, link: LinkId) -> Vec<crate::core::outbox::Delivery> {
    out.iter()
        .filter(|(l, _)| *l == link)
        .flat_map(|(_, m)| match m {
            FromKeeper::Deliver { deliveries } => deliveries.clone(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn the_courier_gets_due_calls_up_to_its_capacity_and_a_lost_courier_gives_them_back() {
    use crate::core::backoff::Outcome;
    let mut w = World::new();
    let call = |n: u32| LockOp::OutboxPut {
        call: Call {
            method: "POST".into(),
            url: format!("https://h.example/{n}"),
            headers: Vec::new(),
            body: String::new(),
        },
        max_attempts: Some(3),
        not_before_ms: None,
        scope: String::new(),
    };
    let ids: Vec<String> = (0..3)
        .map(|n| match reply_to(&w.request(1, u64::from(n), call(n)), 1, u64::from(n)) {
            Some(LockReply::OutboxAccepted { id }) => id,
            other => panic!("{other:?}"),
        })
        .collect();
    // No courier yet: nothing is handed out, and nothing is due for the keeper's clock.
    assert_eq!(w.s.next_deadline(), None);
    let out = w.send(9, ToKeeper::CourierReady { capacity: 2 });
    let first = deliveries(&out, 9);
    assert_eq!(first.iter().map(|d| &d.id).collect::<Vec<_>>(), ids[..2].iter().collect::<Vec<_>>());
    // A result frees a place: the third goes out; the failed one waits (a minute, as the
    // target asked).
    let report = |id: &str, outcome| ToKeeper::Delivered {
        id: id.to_string(),
        outcome,
        retry_after_ms: Some(60_000),
        error: Some("HTTP 503".into()),
        took_ms: 5,
    };
    let out = w.send(9, report(&ids[0], Outcome::Status(503)));
    assert_eq!(deliveries(&out, 9).iter().map(|d| &d.id).collect::<Vec<_>>(), vec![&ids[2]]);
    assert!(w.s.next_deadline().is_none(), "no room: the retry is not due for anyone yet");
    w.send(9, report(&ids[1], Outcome::Status(200)));
    assert!(w.s.next_deadline().is_some(), "room again: the retry's time matters");
    // The courier's channel closes: what it held comes back, and a new courier gets it.
    w.s.link_closed(9, Moment::new(w.now, 1), &mut w.out);
    w.out.clear();
    let out = w.tick(60_000);
    assert!(deliveries(&out, 9).is_empty());
    let again = deliveries(&w.send(10, ToKeeper::CourierReady { capacity: 8 }), 10);
    let mut again: Vec<&String> = again.iter().map(|d| &d.id).collect();
    again.sort();
    assert_eq!(again, vec![&ids[0], &ids[2]], "the retried call and the one in flight; the delivered one is gone");
    // Everything survives an export.
    let copy = Service::import(w.s.export(), 7).unwrap();
    assert_eq!(copy.export(), w.s.export());
}

#[test]
fn a_callback_becomes_an_outbox_call_when_its_waiter_is_admitted() {
    let mut w = World::new();
    let holder = match reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1) {
        Some(LockReply::Held { lease, .. }) => lease.ticket,
        other => panic!("{other:?}"),
    };
    let mut with_callback = acquire(None, 0, Then::Hold, false);
    if let LockOp::Acquire { callback, .. } = &mut with_callback {
        *callback = Some(crate::core::names::CallbackUrl::parse("https://h.example/cb").unwrap());
    }
    let queued = reply_to(&w.request(1, 2, with_callback), 1, 2);
    assert!(matches!(queued, Some(LockReply::Queued { .. })), "{queued:?}");
    assert_eq!(w.s.outbox().stats().pending, 0);
    w.request(1, 3, LockOp::Release { lock: lock(), ticket: holder });
    let pending = w.s.outbox().page(crate::core::outbox::Listing::Pending, "", None, 10).0;
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].scope.as_str(), pending[0].callback), ("printer", true), "the lock's tenant owns it");
    let body: serde_json::Value = serde_json::from_str(&pending[0].call.body).unwrap();
    assert_eq!((body["event"].as_str(), body["lock"].as_str()), (Some("acquired"), Some("printer")));
    assert_eq!(pending[0].call.url, "https://h.example/cb");
}

fn over_budget(reply: Option<LockReply>) -> (Budget, u64) {
    match reply {
        Some(LockReply::OverBudget { budget, limit, .. }) => (budget, limit),
        other => panic!("expected over_budget, got {other:?}"),
    }
}

#[test]
fn resources_are_bounded_and_a_deleted_one_takes_its_data_and_can_come_back() {
    let mut w = World::new();
    w.s.reconfigure(TableLimits { max_resources: 2, ..limits() }, 60_000, Moment::new(0, 0), &mut Vec::new());
    let name = |n: &str| LockName::parse(n).unwrap();
    let create = |n: &str| LockOp::CreateResource { name: name(n), timeout_s: 0 };
    assert!(matches!(reply_to(&w.request(1, 1, create("printer")), 1, 1), Some(LockReply::ResourceCreated { .. })));
    assert!(matches!(reply_to(&w.request(1, 2, create("scanner")), 1, 2), Some(LockReply::ResourceCreated { .. })));
    assert_eq!(over_budget(reply_to(&w.request(1, 3, create("fax")), 1, 3)), (Budget::Resources, 2));
    // A name that exists is still answered as such at the cap.
    assert_eq!(reply_to(&w.request(1, 4, create("printer")), 1, 4), Some(LockReply::ResourceExists));
    assert_eq!(w.s.stats().resources, 2);
    // Data under the resource, then a holder: deleting is refused while the lock is in use.
    let write = Then::WriteAndRelease { key: DataKey::parse("A4").unwrap(), value: "1".into() };
    assert!(matches!(reply_to(&w.request(1, 5, acquire(None, 0, write, true)), 1, 5), Some(LockReply::Written { .. })));
    let holder = held(reply_to(&w.request(1, 6, acquire(None, 0, Then::Hold, true)), 1, 6));
    let delete = |n: &str| LockOp::DeleteResource { name: name(n) };
    assert_eq!(reply_to(&w.request(1, 7, delete("printer")), 1, 7), Some(LockReply::ResourceBusy));
    assert_eq!(w.s.stats().resources, 2, "nothing was deleted");
    assert_eq!(w.s.table().data("printer", "A4"), Some("1"));
    w.request(1, 8, LockOp::Release { lock: lock(), ticket: holder.ticket });
    assert_eq!(reply_to(&w.request(1, 9, delete("printer")), 1, 9), Some(LockReply::ResourceDeleted));
    assert_eq!(w.s.stats().resources, 1);
    assert!(w.s.table().lock_view("printer").is_none(), "the data went with it, and so did the lock");
    assert_eq!(w.s.table().stats().data_bytes, 0);
    assert_eq!(reply_to(&w.request(1, 10, delete("printer")), 1, 10), Some(LockReply::ResourceUnknown));
    // A resource never used has no lock: deleting it is fine too. Then both names are free.
    assert_eq!(reply_to(&w.request(1, 11, delete("scanner")), 1, 11), Some(LockReply::ResourceDeleted));
    assert!(matches!(reply_to(&w.request(1, 12, create("printer")), 1, 12), Some(LockReply::ResourceCreated { .. })));
    assert!(matches!(reply_to(&w.request(1, 13, create("fax")), 1, 13), Some(LockReply::ResourceCreated { .. })));
    // A deletion is a change: it is journaled, unlike a read.
    assert!(!Service::reads_only(&ToKeeper::Request { id: 1, op: delete("fax") }));
}

#[test]
fn event_streams_are_bounded_in_total_and_a_refused_one_counts_for_nothing() {
    let mut w = World::new();
    w.s.reconfigure(TableLimits { max_event_streams: 2, ..limits() }, 60_000, Moment::new(0, 0), &mut Vec::new());
    let holder = held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    let ticket = queued_ticket(reply_to(&w.request(1, 2, acquire(None, 0, Then::Hold, false)), 1, 2));
    let watch = LockOp::Watch { lock: lock(), ticket };
    assert!(matches!(reply_to(&w.request(5, 1, watch.clone()), 5, 1), Some(LockReply::Queued { .. })));
    assert!(matches!(reply_to(&w.request(6, 1, watch.clone()), 6, 1), Some(LockReply::Queued { .. })));
    assert_eq!(over_budget(reply_to(&w.request(7, 1, watch.clone()), 7, 1)), (Budget::EventStreams, 2));
    assert_eq!(w.s.stats().event_streams, 2);
    // The refused stream did not become a watcher: closing the two that opened leaves the
    // waiter unwatched, so it is dropped after waiter_ttl_ms.
    w.send(5, ToKeeper::Unwatch { lock: lock(), ticket });
    w.s.link_closed(6, Moment::new(w.now, 1), &mut w.out);
    assert_eq!(w.s.stats().event_streams, 0);
    assert!(matches!(reply_to(&w.request(7, 2, watch), 7, 2), Some(LockReply::Queued { .. })), "room again");
    w.send(7, ToKeeper::Unwatch { lock: lock(), ticket });
    w.tick(limits().waiter_ttl_ms);
    assert_eq!(w.s.table().lock_view("printer").unwrap().queue_length, 0);
    // A snapshot restores the count.
    w.request(8, 1, LockOp::Watch { lock: lock(), ticket: holder.ticket });
    let copy = Service::import(w.s.export(), 7).unwrap();
    assert_eq!(copy.stats().event_streams, 1);
}

#[test]
fn totals_of_the_table_reach_the_wire_as_over_budget_naming_what_was_refused() {
    let mut w = World::new();
    w.s.reconfigure(
        TableLimits { max_tickets_total: 1, max_data_bytes_total: 4, ..limits() },
        60_000,
        Moment::new(0, 0),
        &mut Vec::new(),
    );
    let holder = held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    let refused = reply_to(&w.request(1, 2, acquire(None, 0, Then::Hold, false)), 1, 2);
    assert_eq!(over_budget(refused), (Budget::Tickets, 1));
    let put = |k: &str, v: &str| LockOp::PutData {
        lock: lock(),
        ticket: holder.ticket,
        key: DataKey::parse(k).unwrap(),
        value: v.into(),
    };
    assert_eq!(reply_to(&w.request(1, 3, put("ab", "12")), 1, 3), Some(LockReply::DataWritten { created: true }));
    match reply_to(&w.request(1, 4, put("cd", "1")), 1, 4) {
        Some(LockReply::OverBudget { budget: Budget::DataBytes, limit: 4, message }) => {
            assert!(message.contains("\"cd\""), "the message names the key: {message}");
        }
        other => panic!("expected data_bytes over budget, got {other:?}"),
    }
    assert_eq!(w.s.table().data("printer", "cd"), None);
}

#[test]
fn budgets_list_every_bounded_quantity_with_its_use_and_limit() {
    let mut w = World::new();
    let holder = held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    queued_ticket(reply_to(&w.request(1, 2, acquire(None, 0, Then::Hold, false)), 1, 2));
    let put =
        LockOp::PutData { lock: lock(), ticket: holder.ticket, key: DataKey::parse("k").unwrap(), value: "[1]".into() };
    w.request(1, 3, put);
    w.request(1, 4, LockOp::CreateResource { name: LockName::parse("r").unwrap(), timeout_s: 0 });
    w.request(2, 1, LockOp::Watch { lock: lock(), ticket: holder.ticket });
    let budgets: Vec<(String, u64, u64)> = w.s.budgets().into_iter().map(|b| (b.name, b.used, b.limit)).collect();
    let (d, o) = (TableLimits::DEFAULT, crate::core::outbox::OutboxLimits::DEFAULT);
    assert_eq!(
        budgets,
        vec![
            ("locks".to_string(), 1, u64::from(d.max_locks)),
            ("tickets".to_string(), 2, u64::from(d.max_tickets_total)),
            ("data_bytes".to_string(), 4, d.max_data_bytes_total),
            ("resources".to_string(), 1, u64::from(d.max_resources)),
            ("event_streams".to_string(), 1, u64::from(d.max_event_streams)),
            ("outbox_calls".to_string(), 0, u64::from(o.max_entries)),
            ("outbox_callbacks".to_string(), 0, u64::from(o.max_callbacks)),
            ("outbox_bytes".to_string(), 0, o.max_total_bytes),
        ]
    );
    // A reload's new limits show at once.
    w.s.reconfigure(TableLimits { max_resources: 9, ..limits() }, 60_000, Moment::new(0, 0), &mut Vec::new());
    assert!(w.s.budgets().iter().any(|b| b.name == "resources" && b.limit == 9));
}

// ----- lease counters (metrics) -----

#[test]
fn grants_expiries_and_queue_waits_are_counted() {
    let mut w = World::new();
    let first = held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    assert_eq!(w.s.lease_counters().grants, 1, "an immediate grant");
    // A waiting request, granted 1.5 s after it queued.
    w.request(2, 7, acquire(None, 60_000, Then::Hold, false));
    w.now += 1_500;
    held(reply_to(&w.request(1, 2, LockOp::Release { lock: lock(), ticket: first.ticket }), 2, 7));
    let c = w.s.lease_counters().clone();
    assert_eq!(c.grants, 2, "a grant from the queue");
    assert_eq!(c.queue_wait.count(), 1);
    assert_eq!(c.queue_wait.sum_us, 1_500_000);
    assert_eq!((c.expired, c.expired_unclaimed), (0, 0));
    // The holder does not renew: its lease runs out (30 s).
    w.tick(30_000);
    let c = w.s.lease_counters();
    assert_eq!((c.expired, c.expired_unclaimed), (1, 0));
    assert!(w.s.queued_at_ms.is_empty(), "no waiter is timed any more");
}

#[test]
fn a_renewal_or_a_re_entry_is_not_a_grant() {
    let mut w = World::new();
    let lease = held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    w.request(1, 2, LockOp::Renew { lock: lock(), ticket: lease.ticket, ttl_ms: None });
    held(reply_to(&w.request(1, 3, acquire(Some(lease.ticket), 0, Then::Hold, false)), 1, 3));
    assert_eq!(w.s.lease_counters().grants, 1);
}

#[test]
fn dropped_waiters_are_counted_by_reason_and_forgotten() {
    let mut w = World::new();
    let first = held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    // One waiter leaves by itself; one is never seen again (waiter_ttl_ms is 1 s).
    let leaving = queued_ticket(reply_to(&w.request(2, 2, acquire(None, 0, Then::Hold, false)), 2, 2));
    queued_ticket(reply_to(&w.request(3, 3, acquire(None, 0, Then::Hold, false)), 3, 3));
    assert_eq!(w.s.queued_at_ms.len(), 2);
    let out = w.request(2, 4, LockOp::Release { lock: lock(), ticket: leaving });
    assert!(matches!(reply_to(&out, 2, 4), Some(LockReply::Left)));
    w.tick(1_000);
    let c = w.s.lease_counters();
    assert_eq!((c.dropped_left, c.dropped_waiter_ttl, c.dropped_limit_lowered), (1, 1, 0));
    assert!(w.s.queued_at_ms.is_empty(), "dropped waiters are not timed any more");
    // A waiter admitted while not connected that never claims its grant (claim_ms 500).
    w.request(4, 5, acquire(None, 0, Then::Hold, false));
    w.request(1, 6, LockOp::Release { lock: lock(), ticket: first.ticket });
    assert_eq!(w.s.lease_counters().queue_wait.count(), 1);
    w.tick(500);
    let c = w.s.lease_counters();
    assert_eq!((c.expired, c.expired_unclaimed), (0, 1));
    assert_eq!(c.grants, 2);
}

#[test]
fn counters_reset_but_queued_waiters_keep_their_times() {
    let mut w = World::new();
    let first = held(reply_to(&w.request(1, 1, acquire(None, 0, Then::Hold, false)), 1, 1));
    w.request(2, 2, acquire(None, 60_000, Then::Hold, false));
    w.s.reset_lease_counters();
    assert_eq!(w.s.lease_counters(), &LeaseCounters::default());
    w.now += 2_000;
    held(reply_to(&w.request(1, 3, LockOp::Release { lock: lock(), ticket: first.ticket }), 2, 2));
    assert_eq!(w.s.lease_counters().queue_wait.sum_us, 2_000_000);
    assert_eq!(w.s.lease_counters().grants, 1);
}

#[test]
fn overview_lists_the_busiest_locks_every_declared_room_and_the_outbox() {
    let mut w = World::new();
    let room = Declaration {
        limit: 10,
        admit_per_minute: Some(30),
        ..Declaration::new(Some(LockName::parse("room:shop").unwrap()), None)
    };
    let limits = TableLimits { declared: vec![room.clone()], ..limits() };
    w.s.reconfigure(limits, 60_000, Moment::new(w.now, 0), &mut Vec::new());
    held(reply_to(&w.request(1, 1, plain_acquire()), 1, 1));
    w.request(1, 2, acquire(None, 0, Then::Hold, false));
    let overview = |w: &mut World, id| match reply_to(&w.request(1, id, LockOp::Overview { busiest: 5 }), 1, id) {
        Some(LockReply::Overview(o)) => o,
        other => panic!("expected an overview, got {other:?}"),
    };
    let o = overview(&mut w, 3);
    assert_eq!((o.locks, o.holders, o.waiters), (1, 1, 1));
    assert_eq!(o.busiest.len(), 1);
    assert_eq!((o.busiest[0].name.as_str(), o.busiest[0].used, o.busiest[0].queue_length), ("printer", 1, 1));
    // The idle room is shown from its declaration.
    assert_eq!(o.rooms.len(), 1);
    assert_eq!((o.rooms[0].name.as_str(), o.rooms[0].limit, o.rooms[0].used), ("room:shop", 10, 0));
    assert_eq!(o.rooms[0].declared.as_ref().and_then(|d| d.admit_per_minute), Some(30));
    assert_eq!(o.outbox, crate::ipc::overview::OutboxCounts::default());
    assert!(Service::reads_only(&ToKeeper::Request { id: 4, op: LockOp::Overview { busiest: 1 } }));
}
