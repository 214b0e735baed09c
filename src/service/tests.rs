//! Service tests: waiting requests, follow-ups, event streams, closing channels, resources.

use super::*;
use crate::core::lock::QueueMode;
use crate::core::names::DataKey;

const LIMITS: TableLimits = TableLimits { waiter_ttl_ms: 1_000, claim_ms: 500, ..TableLimits::DEFAULT };

struct World {
    s: Service,
    now: u64,
    next_byte: u8,
    out: Outbox,
}

impl World {
    fn new() -> Self {
        Self { s: Service::new(LIMITS, 60_000, 7), now: 1_000_000, next_byte: 1, out: Vec::new() }
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
        ttl_ms: 30_000,
        limit: 1,
        weight: 1,
        queue: QueueMode::Fifo,
        wait_ms,
        then,
        compat,
    }
}

fn reply_to(out: &Outbox, link: LinkId, id: u64) -> Option<LockReply> {
    out.iter().find_map(|(l, m)| match m {
        FromKeeper::Reply { id: i, reply } if *l == link && *i == id => Some(reply.clone()),
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
    assert!(w.request(2, 7, acquire(None, 2_000, Then::Hold, false)).is_empty());
    assert_eq!(w.s.next_deadline(), Some(w.now + 2_000));
    assert!(reply_to(&w.tick(1_999), 2, 7).is_none());
    let ticket = queued_ticket(reply_to(&w.tick(1), 2, 7));
    // Queued, unwatched: it stays for waiter_ttl_ms unless it comes back.
    assert!(matches!(
        reply_to(&w.request(2, 8, LockOp::Touch { lock: lock(), ticket }), 2, 8),
        Some(LockReply::Queued { .. })
    ));
    w.tick(LIMITS.waiter_ttl_ms);
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
    w.tick(LIMITS.claim_ms);
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
    w.tick(LIMITS.waiter_ttl_ms);
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
    w.tick(LIMITS.waiter_ttl_ms);
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
    assert!(w.request(2, 4, acquire(None, 0, write("{\"a\":1}"), true)).is_empty());
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
