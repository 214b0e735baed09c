//! Scenario tests for the lease table, one rule each. The model-based tests in
//! `tests/it/model.rs` then compare random histories against a naive reference.

use super::*;

const LIMITS: TableLimits = TableLimits {
    min_ttl_ms: 10,
    max_ttl_ms: 1_000_000,
    max_limit: 100,
    max_locks: 1_000,
    max_waiters_per_lock: 3,
    waiter_ttl_ms: 1_000,
    claim_ms: 200,
    max_data_keys: 2,
    max_data_bytes: 64,
    max_data_bytes_total: 1_000_000,
    max_tickets_total: 1_000_000,
    max_resources: 1_000,
    max_event_streams: 1_000,
    callback_presence: true,
    default_ttl_ms: 1_000,
    declared: Vec::new(),
};

fn name(s: &str) -> LockName {
    LockName::parse(s).unwrap()
}

fn t(n: u8) -> Ticket {
    Ticket::from_bytes([n; 16])
}

fn at(now_ms: u64) -> Moment {
    Moment::new(now_ms, now_ms.wrapping_mul(0x9E37_79B9))
}

struct Harness {
    table: LockTable,
    out: Vec<Output>,
}

impl Harness {
    fn new() -> Self {
        Self { table: LockTable::new(LIMITS, 42), out: Vec::new() }
    }

    fn op(&mut self, op: Op, now: u64) -> Reply {
        self.out.clear();
        let reply = self.table.apply(op, at(now), &mut self.out);
        self.table.check_invariants().unwrap();
        reply
    }

    fn acquire(&mut self, lock: &str, ticket: u8, now: u64, f: impl FnOnce(&mut Acquire)) -> Reply {
        let mut a = Acquire {
            lock: name(lock),
            ticket: None,
            new_ticket: t(ticket),
            owner: None,
            ttl_ms: Some(1_000),
            limit: Some(1),
            weight: 1,
            queue: Some(QueueMode::Fifo),
            watch: false,
            callback: None,
            mode: None,
            user: None,
            wait_ms: 0,
        };
        f(&mut a);
        self.op(Op::Acquire(a), now)
    }

    fn release(&mut self, lock: &str, ticket: u8, now: u64) -> Reply {
        self.op(Op::Release { lock: name(lock), ticket: t(ticket) }, now)
    }

    fn expire(&mut self, now: u64) -> usize {
        self.out.clear();
        let n = self.table.expire(at(now), &mut self.out);
        self.table.check_invariants().unwrap();
        n
    }

    fn granted(&self) -> Vec<Ticket> {
        self.out
            .iter()
            .filter_map(|o| match o {
                Output::Granted { lease, .. } => Some(lease.ticket),
                _ => None,
            })
            .collect()
    }
}

fn fence_of(reply: &Reply) -> u64 {
    match reply {
        Reply::Held(l) => l.fence,
        other => panic!("expected a lease, got {other:?}"),
    }
}

#[test]
fn acquire_free_lock_grants_with_first_fence() {
    let mut h = Harness::new();
    let reply = h.acquire("a", 1, 0, |_| {});
    assert_eq!(fence_of(&reply), 1);
    let Reply::Held(lease) = reply else { unreachable!() };
    assert_eq!(lease.expires_at_ms, 1_000);
    assert!(lease.claimed);
    assert_eq!(h.table.next_deadline(), Some(1_000));
}

#[test]
fn acquire_held_mutex_queues_then_release_admits_with_higher_fence() {
    let mut h = Harness::new();
    let f1 = fence_of(&h.acquire("a", 1, 0, |_| {}));
    let queued = h.acquire("a", 2, 0, |a| a.watch = true);
    assert_eq!(queued, Reply::Queued(QueueView { ticket: t(2), position: Some(1), queue_length: 1 }));
    assert_eq!(h.release("a", 1, 10), Reply::Released { fence: f1 });
    assert_eq!(h.granted(), vec![t(2)]);
    let Some(Output::Granted { lease, .. }) = h.out.iter().find(|o| matches!(o, Output::Granted { .. })) else {
        panic!("no grant")
    };
    assert!(lease.fence > f1);
    assert!(lease.claimed, "a watched waiter is connected and claims at once");
    assert_eq!(lease.expires_at_ms, 10 + 1_000);
}

#[test]
fn try_lock_on_held_lock_is_unavailable_and_changes_nothing() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |_| {});
    let before = h.table.export();
    let reply = h.acquire("a", 2, 0, |a| a.queue = Some(QueueMode::None));
    assert_eq!(reply, Reply::Unavailable { used: 1, limit: 1, queue_length: 0 });
    assert_eq!(h.table.export(), before);
}

#[test]
fn reacquire_with_own_ticket_is_reentrant_and_keeps_fence() {
    let mut h = Harness::new();
    let f = fence_of(&h.acquire("a", 1, 0, |_| {}));
    let again = h.acquire("a", 9, 500, |a| a.ticket = Some(t(1)));
    assert_eq!(fence_of(&again), f);
    let Reply::Held(lease) = again else { unreachable!() };
    assert_eq!(lease.ticket, t(1));
    assert_eq!(lease.expires_at_ms, 1_500);
    assert_eq!(h.table.stats().holders, 1);
}

#[test]
fn unknown_ticket_on_acquire_gets_a_fresh_place() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |_| {});
    let reply = h.acquire("a", 2, 0, |a| a.ticket = Some(t(77)));
    assert_eq!(reply, Reply::Queued(QueueView { ticket: t(2), position: Some(1), queue_length: 1 }));
}

#[test]
fn fifo_head_blocks_smaller_waiters_behind_it() {
    let mut h = Harness::new();
    h.acquire("s", 1, 0, |a| (a.limit, a.weight) = (Some(3), 2));
    // Head wants 2 (only 1 free): it waits, and the weight-1 newcomer may not barge past it.
    assert!(matches!(h.acquire("s", 2, 0, |a| (a.limit, a.weight) = (Some(3), 2)), Reply::Queued(_)));
    assert!(matches!(h.acquire("s", 3, 0, |a| (a.limit, a.weight) = (Some(3), 1)), Reply::Queued(_)));
    assert_eq!(h.release("s", 1, 1), Reply::Released { fence: 1 });
    assert_eq!(h.granted(), vec![t(2), t(3)]);
}

#[test]
fn weight_above_limit_and_bad_ttl_are_rejected() {
    let mut h = Harness::new();
    assert!(matches!(
        h.acquire("s", 1, 0, |a| (a.limit, a.weight) = (Some(2), 3)),
        Reply::Rejected(CoreError::OutOfRange { field: "weight", .. })
    ));
    assert!(matches!(
        h.acquire("s", 1, 0, |a| a.ttl_ms = Some(5)),
        Reply::Rejected(CoreError::OutOfRange { field: "ttl_ms", .. })
    ));
    assert!(matches!(
        h.acquire("s", 1, 0, |a| a.limit = Some(0)),
        Reply::Rejected(CoreError::OutOfRange { field: "limit", .. })
    ));
    assert_eq!(h.table.stats().locks, 0);
}

#[test]
fn limit_mismatch_only_while_the_lock_has_participants() {
    let mut h = Harness::new();
    h.acquire("s", 1, 0, |a| a.limit = Some(2));
    assert_eq!(h.acquire("s", 2, 0, |a| a.limit = Some(3)), Reply::LimitMismatch { limit: 2 });
    assert_eq!(
        h.acquire("s", 2, 0, |a| (a.limit, a.queue) = (Some(2), Some(QueueMode::Lottery))),
        Reply::QueueMismatch { queue: QueueKind::Fifo }
    );
    h.release("s", 1, 0);
    assert!(matches!(h.acquire("s", 2, 0, |a| a.limit = Some(3)), Reply::Held(_)));
}

#[test]
fn lease_expires_at_its_deadline_and_passes_on() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |_| {});
    h.acquire("a", 2, 0, |a| a.watch = true);
    assert_eq!(h.expire(999), 0);
    assert_eq!(h.expire(1_000), 1);
    assert!(matches!(h.out[0], Output::Expired { unclaimed: false, fence: 1, .. }));
    assert_eq!(h.granted(), vec![t(2)]);
    assert_eq!(h.release("a", 1, 1_001), Reply::TicketUnknown);
}

#[test]
fn renew_extends_and_never_releases() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |_| {});
    let renewed = h.op(Op::Renew { lock: name("a"), ticket: t(1), ttl_ms: Some(5_000) }, 900);
    let Reply::Held(lease) = renewed else { panic!("{renewed:?}") };
    assert_eq!(lease.expires_at_ms, 5_900);
    assert_eq!(h.expire(2_000), 0);
    assert_eq!(h.table.stats().holders, 1);
    assert_eq!(h.op(Op::Renew { lock: name("a"), ticket: t(2), ttl_ms: None }, 0), Reply::TicketUnknown);
}

#[test]
fn unwatched_waiter_is_dropped_after_waiter_ttl_unless_it_polls() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |a| a.ttl_ms = Some(100_000));
    h.acquire("a", 2, 0, |_| {});
    h.acquire("a", 3, 0, |_| {});
    // Ticket 3 polls at 900, so it survives the 1 000 ms mark; ticket 2 does not.
    h.op(Op::Touch { lock: name("a"), ticket: t(3) }, 900);
    h.expire(1_000);
    assert_eq!(h.out, vec![Output::Dropped { lock: name("a"), ticket: t(2), reason: DropReason::Absent }]);
    h.expire(1_900);
    assert!(matches!(h.out[0], Output::Dropped { reason: DropReason::Absent, .. }));
    assert_eq!(h.table.stats().waiters, 0);
}

#[test]
fn callback_waiter_stays_until_its_wait_ends_unseen_then_is_dropped() {
    let mut h = Harness::new();
    let url = CallbackUrl::parse("http://hooks.test/x").unwrap();
    h.acquire("a", 1, 0, |a| a.ttl_ms = Some(100_000));
    // A callback waiter that never polls, waiting 5 waiter TTLs; one without a callback
    // asking for the same wait (ignored: it must poll).
    h.acquire("a", 2, 0, |a| {
        a.callback = Some(url.clone());
        a.wait_ms = 5_000;
    });
    h.acquire("a", 3, 0, |a| a.wait_ms = 5_000);
    h.expire(1_000);
    assert_eq!(h.out, vec![Output::Dropped { lock: name("a"), ticket: t(3), reason: DropReason::Absent }]);
    // A restart keeps the rest of the wait.
    h.table.reset_presence(2_000);
    h.expire(4_999);
    assert_eq!(h.table.stats().waiters, 1, "the callback waiter is present for its whole wait");
    // A poll near the end gives it the usual window past the wait.
    h.op(Op::Touch { lock: name("a"), ticket: t(2) }, 4_500);
    h.expire(5_499);
    assert_eq!(h.table.stats().waiters, 1);
    h.expire(5_500);
    assert_eq!(h.out, vec![Output::Dropped { lock: name("a"), ticket: t(2), reason: DropReason::Absent }]);
    // Admitted within its wait: granted, and called back.
    h.acquire("a", 4, 6_000, |a| {
        a.callback = Some(url.clone());
        a.wait_ms = 60_000;
    });
    h.release("a", 1, 50_000);
    assert_eq!(h.granted(), vec![t(4)]);
    assert!(h.out.iter().any(|o| matches!(o, Output::CallbackDue { event: CallbackEvent::Acquired, .. })));
}

#[test]
fn callback_waiters_are_dropped_at_waiter_ttl_under_limits_journaled_before_the_rule() {
    let mut h = Harness::new();
    h.table.set_limits(TableLimits { callback_presence: false, ..LIMITS }, at(0), &mut Vec::new());
    h.acquire("a", 1, 0, |a| a.ttl_ms = Some(100_000));
    h.acquire("a", 2, 0, |a| {
        a.callback = Some(CallbackUrl::parse("http://hooks.test/x").unwrap());
        a.wait_ms = 5_000;
    });
    h.expire(1_000);
    assert_eq!(h.table.stats().waiters, 0);
    let old: TableLimits = serde_json::from_str(
        r#"{"min_ttl_ms":1,"max_ttl_ms":2,"max_limit":3,"max_locks":4,"max_waiters_per_lock":5,"waiter_ttl_ms":6,"claim_ms":7,"max_data_keys":8,"max_data_bytes":9}"#,
    )
    .unwrap();
    assert!(!old.callback_presence, "limits journaled before the rule read without it");
}

#[test]
fn one_place_per_user_returns_the_existing_ticket_as_it_stands() {
    let mut h = Harness::new();
    let user = || Some(UserId::parse("alice").unwrap());
    let Reply::Held(first) = h.acquire("u", 1, 0, |a| {
        a.user = user();
        a.ttl_ms = Some(100_000);
    }) else {
        panic!()
    };
    assert_eq!(first.user, user());
    // Again while holding: the same lease, not renewed, whatever the other fields say.
    let again = h.acquire("u", 2, 10, |a| {
        a.user = user();
        a.ttl_ms = Some(50_000);
        a.owner = Some(Owner::parse("other").unwrap());
    });
    assert_eq!(again, Reply::Held(first.clone()));
    // Another user queues; twice, one place; a poll by user counts as presence.
    let bob = || Some(UserId::parse("bob").unwrap());
    let Reply::Queued(place) = h.acquire("u", 3, 20, |a| a.user = bob()) else { panic!() };
    assert_eq!(h.acquire("u", 4, 900, |a| a.user = bob()), Reply::Queued(place.clone()));
    assert_eq!(h.table.stats().waiters, 1);
    h.expire(1_500);
    assert_eq!(h.table.stats().waiters, 1, "the second acquire was seen at 900");
    // A given, known ticket wins over the user.
    assert!(matches!(h.acquire("u", 5, 1_600, |a| {
        a.user = bob();
        a.ticket = Some(t(1));
    }), Reply::Held(l) if l.ticket == t(1)));
    // Once the first place ends, the user takes a new one.
    h.release("u", 1, 1_700);
    assert_eq!(h.granted(), vec![t(3)]);
    let Reply::Queued(new) = h.acquire("u", 6, 1_800, |a| a.user = user()) else { panic!() };
    assert_eq!(new.ticket, t(6));
    // Exported and imported with its users; two places for one user are refused.
    let mut state = h.table.export();
    assert!(LockTable::import(&state, LIMITS, 1).is_ok());
    state.locks[0].waiters[0].user = bob();
    let err = LockTable::import(&state, LIMITS, 1).unwrap_err().to_string();
    assert!(err.contains("two places"), "{err}");
}

#[test]
fn watched_waiter_stays_until_unwatched_plus_waiter_ttl() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |a| a.ttl_ms = Some(100_000));
    h.acquire("a", 2, 0, |a| a.watch = true);
    h.expire(50_000);
    assert_eq!(h.table.stats().waiters, 1);
    h.op(Op::Unwatch { lock: name("a"), ticket: t(2) }, 50_000);
    h.expire(50_999);
    assert_eq!(h.table.stats().waiters, 1);
    h.expire(51_000);
    assert_eq!(h.table.stats().waiters, 0);
}

#[test]
fn admitted_absent_waiter_gets_claim_window_then_lapses_to_next() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |_| {});
    h.acquire("a", 2, 0, |a| a.ttl_ms = Some(10_000)); // unwatched; polls keep it
    h.acquire("a", 3, 0, |a| a.watch = true);
    h.op(Op::Touch { lock: name("a"), ticket: t(2) }, 500);
    h.release("a", 1, 600);
    let Some(Output::Granted { lease, .. }) = h.out.get(1) else { panic!("{:?}", h.out) };
    assert_eq!(lease.ticket, t(2));
    assert!(!lease.claimed);
    assert_eq!(lease.expires_at_ms, 600 + LIMITS.claim_ms);
    h.expire(800);
    assert_eq!(h.out[0], Output::Expired { lock: name("a"), ticket: t(2), fence: 2, unclaimed: true });
    assert_eq!(h.granted(), vec![t(3)]);
}

#[test]
fn admitted_waiter_that_shows_up_claims_its_full_ttl() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |_| {});
    h.acquire("a", 2, 0, |a| a.ttl_ms = Some(10_000));
    h.release("a", 1, 100);
    let reply = h.op(Op::Touch { lock: name("a"), ticket: t(2) }, 150);
    let Reply::Held(lease) = reply else { panic!("{reply:?}") };
    assert!(lease.claimed);
    assert_eq!(lease.expires_at_ms, 10_150);
}

#[test]
fn release_of_waiter_is_leave_and_moves_watched_waiters_up() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |a| a.ttl_ms = Some(100_000));
    h.acquire("a", 2, 0, |a| a.watch = true);
    h.acquire("a", 3, 0, |a| a.watch = true);
    h.acquire("a", 4, 0, |_| {});
    assert_eq!(h.release("a", 2, 1), Reply::Left);
    assert_eq!(h.out, vec![Output::Moved { lock: name("a"), ticket: t(3), position: 1, queue_length: 2 }]);
}

#[test]
fn queue_full_refuses_new_waiters_but_not_known_ones() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |_| {});
    for n in 2..=4 {
        assert!(matches!(h.acquire("a", n, 0, |_| {}), Reply::Queued(_)));
    }
    assert_eq!(h.acquire("a", 5, 0, |_| {}), Reply::QueueFull { max_waiters: 3 });
    assert!(matches!(h.acquire("a", 9, 0, |a| a.ticket = Some(t(3))), Reply::Queued(_)));
}

#[test]
fn lottery_admits_a_drawn_waiter_and_keeps_a_heavy_candidate_until_it_fits() {
    let mut h = Harness::new();
    let lottery = |a: &mut Acquire| (a.queue, a.limit, a.ttl_ms) = (Some(QueueMode::Lottery), Some(2), Some(100_000));
    h.acquire("l", 1, 0, |a| {
        lottery(a);
        a.weight = 2;
    });
    h.acquire("l", 2, 0, |a| {
        lottery(a);
        a.watch = true;
        a.weight = 2;
    });
    h.acquire("l", 3, 0, |a| {
        lottery(a);
        a.watch = true;
    });
    h.release("l", 1, 1);
    // Whoever was drawn first, both end up admitted (2 + 1 > 2, so one at a time).
    let first = h.granted();
    assert_eq!(first.len(), 1);
    let other = if first[0] == t(2) { 3 } else { 2 };
    let Reply::Released { .. } = h.release("l", if first[0] == t(2) { 2 } else { 3 }, 2) else { panic!() };
    assert_eq!(h.granted(), vec![t(other)]);
}

#[test]
fn lottery_order_differs_from_fifo_over_many_draws() {
    // 8 waiters, admitted one by one: over 40 seeds, the lottery must sometimes not grant in
    // arrival order (the chance of strict arrival order 40 times is (1/8!)^40).
    let mut out_of_order = 0;
    for seed in 0..40u64 {
        let mut table = LockTable::new(LIMITS, seed);
        let mut out = Vec::new();
        let mk = |n: u8, ticket: Option<Ticket>| {
            Op::Acquire(Acquire {
                lock: name("l"),
                ticket,
                new_ticket: t(n),
                owner: None,
                ttl_ms: Some(100_000),
                limit: Some(1),
                weight: 1,
                queue: Some(QueueMode::Lottery),
                watch: true,
                callback: None,
                mode: None,
                user: None,
                wait_ms: 0,
            })
        };
        let mut limits = LIMITS;
        limits.max_waiters_per_lock = 100;
        table.set_limits(limits, at(0), &mut Vec::new());
        // The first holder's ticket is 9 (an all-zero ticket is the table's admission timer).
        table.apply(mk(9, None), Moment::new(0, seed), &mut out);
        for n in 1..=8 {
            table.apply(mk(n, None), Moment::new(0, seed), &mut out);
        }
        let mut holder = t(9);
        let mut order = Vec::new();
        for step in 1..=8u64 {
            out.clear();
            table.apply(Op::Release { lock: name("l"), ticket: holder }, Moment::new(step, seed ^ step), &mut out);
            let Some(Output::Granted { lease, .. }) = out.iter().find(|o| matches!(o, Output::Granted { .. })) else {
                panic!("no grant")
            };
            holder = lease.ticket;
            order.push(holder.as_bytes()[0]);
        }
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (1..=8).collect::<Vec<u8>>(), "everyone is granted exactly once");
        if order != sorted {
            out_of_order += 1;
        }
    }
    assert!(out_of_order > 30, "lottery looked like FIFO in {} of 40 runs", 40 - out_of_order);
}

#[test]
fn set_limit_raise_admits_lower_below_used_is_refused_and_heavy_waiters_drop() {
    let mut h = Harness::new();
    h.acquire("s", 1, 0, |a| (a.limit, a.ttl_ms) = (Some(2), Some(100_000)));
    h.acquire("s", 2, 0, |a| (a.limit, a.weight, a.ttl_ms) = (Some(2), 2, Some(100_000)));
    assert_eq!(h.op(Op::SetLimit { lock: name("s"), limit: 3 }, 1), Reply::LimitSet { limit: 3 });
    assert_eq!(h.granted(), vec![t(2)]);
    assert_eq!(h.op(Op::SetLimit { lock: name("s"), limit: 2 }, 2), Reply::LimitInUse { used: 3 });
    h.acquire("s", 3, 0, |a| (a.limit, a.weight) = (Some(3), 3));
    h.release("s", 2, 3);
    assert_eq!(h.op(Op::SetLimit { lock: name("s"), limit: 2 }, 4), Reply::LimitSet { limit: 2 });
    assert_eq!(h.out, vec![Output::Dropped { lock: name("s"), ticket: t(3), reason: DropReason::LimitLowered }]);
    assert_eq!(h.op(Op::SetLimit { lock: name("nope"), limit: 2 }, 4), Reply::LockUnknown);
}

#[test]
fn data_writes_are_fenced_and_size_limited() {
    let mut h = Harness::new();
    h.acquire("d", 1, 0, |_| {});
    h.acquire("d", 2, 0, |_| {});
    let key = |k: &str| DataKey::parse(k).unwrap();
    let put =
        |k: &str, v: &str, ticket: u8| Op::PutData { lock: name("d"), ticket: t(ticket), key: key(k), value: v.into() };
    assert_eq!(h.op(put("x", "1", 1), 0), Reply::DataWritten { created: true });
    assert_eq!(h.op(put("x", "2", 1), 0), Reply::DataWritten { created: false });
    assert!(matches!(h.op(put("x", "3", 2), 0), Reply::NotHolder(_)));
    assert_eq!(h.op(put("x", "3", 7), 0), Reply::TicketUnknown);
    assert_eq!(h.table.data("d", "x"), Some("2"));
    assert_eq!(h.op(put("y", "[]", 1), 0), Reply::DataWritten { created: true });
    assert!(matches!(
        h.op(put("z", "0", 1), 0),
        Reply::Rejected(CoreError::DataTooLarge { limit: "max_data_keys", .. })
    ));
    let big = "9".repeat(70);
    assert!(matches!(
        h.op(put("x", &big, 1), 0),
        Reply::Rejected(CoreError::DataTooLarge { limit: "max_data_bytes", .. })
    ));
    assert_eq!(h.table.data("d", "x"), Some("2"), "a refused write changes nothing");
    // Data keeps the lock alive after everyone leaves.
    h.release("d", 2, 0);
    h.release("d", 1, 0);
    assert_eq!(h.table.stats().locks, 1);
    assert_eq!(h.table.data_entries("d").len(), 2);
    h.acquire("d", 3, 0, |_| {});
    let del = |k: &str| Op::DeleteData { lock: name("d"), ticket: t(3), key: key(k) };
    assert_eq!(h.op(del("x"), 0), Reply::DataDeleted { existed: true });
    assert_eq!(h.op(del("x"), 0), Reply::DataDeleted { existed: false });
    assert_eq!(h.op(del("y"), 0), Reply::DataDeleted { existed: true });
    h.release("d", 3, 0);
    assert_eq!(h.table.stats().locks, 0, "an empty lock is forgotten");
}

#[test]
fn callbacks_fire_on_admission_after_waiting_and_on_expiry() {
    let mut h = Harness::new();
    let url = CallbackUrl::parse("http://hooks.test/x").unwrap();
    h.acquire("c", 1, 0, |a| a.callback = Some(url.clone()));
    h.acquire("c", 2, 0, |a| {
        a.callback = Some(url.clone());
        a.watch = true;
    });
    h.expire(1_000);
    let events: Vec<(CallbackEvent, Ticket)> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Output::CallbackDue { event, ticket, .. } => Some((*event, *ticket)),
            _ => None,
        })
        .collect();
    assert_eq!(events, vec![(CallbackEvent::Expired, t(1)), (CallbackEvent::Acquired, t(2))]);
}

#[test]
fn table_full_refuses_new_locks() {
    let mut limits = LIMITS;
    limits.max_locks = 2;
    let mut h = Harness::new();
    h.table.set_limits(limits, at(0), &mut Vec::new());
    h.acquire("a", 1, 0, |_| {});
    h.acquire("b", 1, 0, |_| {});
    assert_eq!(h.acquire("c", 1, 0, |_| {}), Reply::TableFull { max_locks: 2 });
    assert!(matches!(h.acquire("a", 2, 0, |_| {}), Reply::Queued(_)));
}

#[test]
fn tickets_total_refuses_new_tickets_but_not_known_ones() {
    let mut limits = LIMITS;
    limits.max_tickets_total = 3;
    let mut h = Harness::new();
    h.table.set_limits(limits, at(0), &mut Vec::new());
    assert!(matches!(h.acquire("a", 1, 0, |_| {}), Reply::Held(_)));
    assert!(matches!(h.acquire("a", 2, 0, |_| {}), Reply::Queued(_)));
    assert!(matches!(h.acquire("b", 3, 0, |_| {}), Reply::Held(_)));
    // Holders and waiters count alike: neither a new lease nor a new waiter is issued.
    assert_eq!(h.acquire("c", 4, 0, |_| {}), Reply::TicketsFull { max_tickets: 3 });
    assert_eq!(h.acquire("a", 4, 0, |_| {}), Reply::TicketsFull { max_tickets: 3 });
    assert_eq!(h.table.stats().locks, 2, "a refused acquire creates no lock");
    // Known tickets still renew or keep their place.
    assert!(matches!(h.acquire("a", 9, 0, |a| a.ticket = Some(t(1))), Reply::Held(_)));
    assert!(matches!(h.acquire("a", 9, 0, |a| a.ticket = Some(t(2))), Reply::Queued(_)));
    // A release frees one ticket; the admitted waiter keeps its own (a waiter became a holder).
    h.release("a", 1, 1);
    assert_eq!(h.granted(), vec![t(2)]);
    let stats = h.table.stats();
    assert_eq!((stats.holders, stats.waiters), (2, 0));
    assert!(matches!(h.acquire("c", 4, 1, |_| {}), Reply::Held(_)));
    assert_eq!(h.acquire("d", 5, 1, |_| {}), Reply::TicketsFull { max_tickets: 3 });
}

#[test]
fn data_total_refuses_growing_writes_and_is_kept_on_every_path() {
    let mut limits = LIMITS;
    limits.max_data_bytes_total = 20;
    let mut h = Harness::new();
    h.table.set_limits(limits.clone(), at(0), &mut Vec::new());
    h.acquire("a", 1, 0, |_| {});
    h.acquire("b", 2, 0, |_| {});
    let key = |k: &str| DataKey::parse(k).unwrap();
    let put = |lock: &str, ticket: u8, k: &str, v: &str| Op::PutData {
        lock: name(lock),
        ticket: t(ticket),
        key: key(k),
        value: v.into(),
    };
    // 1 + 9 bytes on each lock: 20 in total, exactly the maximum.
    assert_eq!(h.op(put("a", 1, "x", "123456789"), 0), Reply::DataWritten { created: true });
    assert_eq!(h.op(put("b", 2, "y", "123456789"), 0), Reply::DataWritten { created: true });
    assert_eq!(h.table.stats().data_bytes, 20);
    // One more byte anywhere is refused, naming the key, and nothing is written.
    assert_eq!(h.op(put("a", 1, "z", ""), 0), Reply::DataFull { key: key("z"), max_bytes: 20 });
    assert_eq!(h.op(put("b", 2, "y", "1234567890"), 0), Reply::DataFull { key: key("y"), max_bytes: 20 });
    assert_eq!(h.table.data("b", "y"), Some("123456789"));
    assert_eq!(h.table.data("a", "z"), None);
    assert_eq!(h.table.stats().data_bytes, 20);
    // Overwriting with the same size or smaller passes.
    assert_eq!(h.op(put("b", 2, "y", "987654321"), 0), Reply::DataWritten { created: false });
    assert_eq!(h.op(put("b", 2, "y", "1"), 0), Reply::DataWritten { created: false });
    assert_eq!(h.table.stats().data_bytes, 12);
    // Deleting frees bytes for others.
    let del = Op::DeleteData { lock: name("a"), ticket: t(1), key: key("x") };
    assert_eq!(h.op(del, 0), Reply::DataDeleted { existed: true });
    assert_eq!(h.table.stats().data_bytes, 2);
    assert_eq!(h.op(put("a", 1, "x", "12345678901234567"), 0), Reply::DataWritten { created: true });
    assert_eq!(h.table.stats().data_bytes, 20);
    // A lowered total keeps what is stored; writes that do not grow it still pass.
    limits.max_data_bytes_total = 5;
    h.table.set_limits(limits.clone(), at(0), &mut Vec::new());
    assert_eq!(h.op(put("a", 1, "x", "1"), 0), Reply::DataWritten { created: false });
    assert_eq!(h.table.stats().data_bytes, 4);
    assert_eq!(h.op(put("b", 2, "q", "12"), 0), Reply::DataFull { key: key("q"), max_bytes: 5 });
    // An import counts the bytes of what it loads.
    let copy = LockTable::import(&h.table.export(), limits, 7).unwrap();
    assert_eq!(copy.stats().data_bytes, 4);
}

#[test]
fn clear_data_removes_the_data_of_an_idle_lock_and_refuses_a_busy_one() {
    let mut h = Harness::new();
    h.acquire("r", 1, 0, |_| {});
    h.acquire("r", 2, 0, |_| {});
    let put = Op::PutData { lock: name("r"), ticket: t(1), key: DataKey::parse("k").unwrap(), value: "\"v\"".into() };
    assert_eq!(h.op(put, 0), Reply::DataWritten { created: true });
    let clear = || Op::ClearData { lock: name("r") };
    assert_eq!(h.op(clear(), 0), Reply::LockBusy { holders: 1, waiters: 1 });
    h.release("r", 1, 0);
    assert_eq!(h.op(clear(), 0), Reply::LockBusy { holders: 1, waiters: 0 });
    assert_eq!(h.table.data("r", "k"), Some("\"v\""), "a busy lock keeps its data");
    h.release("r", 2, 0);
    assert_eq!(h.op(clear(), 0), Reply::DataCleared { keys: 1 });
    assert_eq!((h.table.stats().locks, h.table.stats().data_bytes), (0, 0));
    assert_eq!(h.op(clear(), 0), Reply::LockUnknown);
}

#[test]
fn limits_journaled_before_the_totals_existed_load_with_no_total() {
    let mut old = serde_json::to_value(TableLimits::DEFAULT).unwrap();
    let fields = old.as_object_mut().unwrap();
    for total in ["max_data_bytes_total", "max_tickets_total", "max_resources", "max_event_streams"] {
        assert!(fields.remove(total).is_some(), "{total} is serialized");
    }
    let loaded: TableLimits = serde_json::from_value(old).unwrap();
    assert_eq!(loaded.max_data_bytes_total, u64::MAX);
    assert_eq!(
        (loaded.max_tickets_total, loaded.max_resources, loaded.max_event_streams),
        (u32::MAX, u32::MAX, u32::MAX)
    );
    assert_eq!(loaded.max_data_bytes, TableLimits::DEFAULT.max_data_bytes);
}

#[test]
fn fence_floor_only_raises() {
    let mut h = Harness::new();
    h.table.restore_fence_floor(100);
    assert_eq!(fence_of(&h.acquire("a", 1, 0, |_| {})), 100);
    h.table.restore_fence_floor(5);
    assert_eq!(h.table.next_fence(), 101);
}

#[test]
fn import_refuses_a_state_that_breaks_an_invariant() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |_| {});
    h.acquire("a", 2, 0, |_| {});
    let good = h.table.export();
    assert!(LockTable::import(&good, LIMITS, 1).is_ok());

    let mut over = good.clone();
    over.locks[0].holders[0].weight = 2;
    assert!(LockTable::import(&over, LIMITS, 1).is_err(), "holders over the limit");

    let mut stale_fence = good.clone();
    stale_fence.next_fence = 1;
    assert!(LockTable::import(&stale_fence, LIMITS, 1).is_err(), "fence not below next_fence");

    let mut both = good.clone();
    both.locks[0].waiters[0].ticket = both.locks[0].holders[0].ticket;
    assert!(LockTable::import(&both, LIMITS, 1).is_err(), "holding and waiting");

    let mut head_fits = good.clone();
    head_fits.locks[0].holders.clear();
    assert!(LockTable::import(&head_fits, LIMITS, 1).is_err(), "FIFO head fits but waits");

    let mut queued_twice = good;
    let waiter = queued_twice.locks[0].waiters[0].clone();
    queued_twice.locks[0].waiters.push(waiter);
    assert!(LockTable::import(&queued_twice, LIMITS, 1).is_err(), "queued twice");

    // Fences are unique across locks.
    h.acquire("b", 3, 0, |a| a.limit = Some(2));
    h.acquire("b", 4, 0, |a| a.limit = Some(2));
    let mut shared_fence = h.table.export();
    let fence = shared_fence.locks[0].holders[0].fence;
    shared_fence.locks[1].holders[1].fence = fence;
    assert!(LockTable::import(&shared_fence, LIMITS, 1).is_err(), "a fence held twice");
    let mut same_ticket = h.table.export();
    same_ticket.locks[1].holders[1].ticket = same_ticket.locks[1].holders[0].ticket;
    assert!(LockTable::import(&same_ticket, LIMITS, 1).is_err(), "a ticket holding twice");
    assert!(LockTable::import(&h.table.export(), LIMITS, 1).is_ok());
}

#[test]
fn reset_presence_gives_every_waiter_a_fresh_window() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |a| a.ttl_ms = Some(100_000));
    h.acquire("a", 2, 0, |a| a.watch = true);
    h.acquire("a", 3, 0, |_| {});
    h.table.reset_presence(5_000);
    h.table.check_invariants().unwrap();
    h.expire(5_999);
    assert_eq!(h.table.stats().waiters, 2);
    h.expire(6_000);
    assert_eq!(h.table.stats().waiters, 0);
}

#[test]
fn extend_leases_moves_every_holders_expiry_and_nothing_else() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |a| a.ttl_ms = Some(1_000));
    h.acquire("b", 2, 0, |a| {
        a.ttl_ms = Some(3_000);
        a.limit = Some(2);
    });
    h.acquire("b", 3, 500, |a| {
        a.ttl_ms = Some(3_000);
        a.limit = Some(2);
    });
    // A waiter keeps its own presence window.
    h.acquire("a", 4, 0, |a| a.ttl_ms = Some(100_000));
    let fences: Vec<u64> =
        ["a", "b"].iter().flat_map(|n| h.table.lock_view(n).unwrap().holders).map(|v| v.fence).collect();
    h.table.extend_leases(2_000);
    h.table.check_invariants().unwrap();
    let after: Vec<u64> =
        ["a", "b"].iter().flat_map(|n| h.table.lock_view(n).unwrap().holders).map(|v| v.fence).collect();
    assert_eq!(fences, after, "fences are unchanged");
    // Lock a's holder ran to 1 000 ms and now to 3 000 ms.
    h.expire(2_999);
    assert_eq!(h.table.ticket_view("a", t(1)).map(|v| matches!(v, TicketView::Holding(_))), Some(true));
    h.expire(3_000);
    assert!(!matches!(h.table.ticket_view("a", t(1)), Some(TicketView::Holding(_))), "expired at 1 000 + 2 000");
    // The semaphore's holders: 3 000 + 2 000 and 3 500 + 2 000.
    h.expire(4_999);
    assert_eq!(h.table.lock_view("b").unwrap().used, 2);
    h.expire(5_000);
    assert_eq!(h.table.lock_view("b").unwrap().used, 1);
    h.expire(5_500);
    assert!(h.table.lock_view("b").is_none_or(|v| v.used == 0));
}

#[test]
fn a_holder_coming_back_with_an_owner_takes_it_once_and_a_waiter_does_not() {
    let mut h = Harness::new();
    let owner = |s: &str| Some(Owner::parse(s).unwrap());
    let label = |r: &Reply| match r {
        Reply::Held(l) => l.owner.as_ref().map(|o| o.as_str().to_string()),
        other => panic!("expected a lease, got {other:?}"),
    };
    h.acquire("o", 1, 0, |_| {});
    // A waiter that comes back with an owner keeps none: its label is its acquire's.
    assert!(matches!(h.acquire("o", 2, 10, |_| {}), Reply::Queued(_)));
    let again = h.acquire("o", 9, 20, |a| {
        a.ticket = Some(t(2));
        a.owner = owner("late");
    });
    assert!(matches!(again, Reply::Queued(_)), "{again:?}");
    // The holder without a label takes the first one it comes back with, and keeps it.
    let first = h.acquire("o", 9, 30, |a| {
        a.ticket = Some(t(1));
        a.owner = owner("first");
    });
    assert_eq!(label(&first).as_deref(), Some("first"));
    let second = h.acquire("o", 9, 40, |a| {
        a.ticket = Some(t(1));
        a.owner = owner("second");
    });
    assert_eq!(label(&second).as_deref(), Some("first"));
    assert_eq!(h.table.lock_view("o").unwrap().holders[0].owner, owner("first"));
    // Admitted, the waiter's lease has no label either.
    h.release("o", 1, 50);
    assert_eq!(h.granted(), vec![t(2)]);
    assert_eq!(h.table.lock_view("o").unwrap().holders[0].owner, None);
}

#[test]
fn views_hide_tickets_and_list_pages_by_name() {
    let mut h = Harness::new();
    for (i, n) in ["b", "a", "c", "ab"].iter().enumerate() {
        h.acquire(n, i as u8 + 1, 0, |a| a.owner = Some(Owner::parse("me").unwrap()));
    }
    let view = h.table.lock_view("a").unwrap();
    assert_eq!(view.holders[0].owner.as_ref().map(Owner::as_str), Some("me"));
    let json = serde_json::to_string(&view).unwrap();
    assert!(!json.contains(&t(2).to_string()), "a lock view must not reveal tickets: {json}");
    let page: Vec<String> = h.table.list("", None, 2).into_iter().map(|v| v.name.to_string()).collect();
    assert_eq!(page, ["a", "ab"]);
    let page: Vec<String> = h.table.list("", Some("ab"), 2).into_iter().map(|v| v.name.to_string()).collect();
    assert_eq!(page, ["b", "c"]);
    let page: Vec<String> = h.table.list("a", None, 10).into_iter().map(|v| v.name.to_string()).collect();
    assert_eq!(page, ["a", "ab"]);
    assert!(matches!(h.table.ticket_view("a", t(2)), Some(TicketView::Holding(_))));
    assert_eq!(h.table.ticket_view("a", t(9)), None);
}

#[test]
fn expire_at_the_end_of_time_ends_everything_without_overflow() {
    let mut h = Harness::new();
    h.acquire("a", 1, 0, |_| {});
    h.acquire("b", 2, 0, |_| {});
    assert_eq!(h.expire(u64::MAX), 2);
    assert_eq!(h.table.stats().locks, 0);
    assert_eq!(h.table.next_deadline(), None);
}

fn shared(a: &mut Acquire) {
    a.mode = Some(LockMode::Shared);
    a.watch = true;
}

fn exclusive(a: &mut Acquire) {
    a.mode = Some(LockMode::Exclusive);
    a.watch = true;
}

#[test]
fn rw_readers_share_and_a_writer_waits_for_all_of_them() {
    let mut h = Harness::new();
    let r1 = h.acquire("rw", 1, 0, shared);
    let Reply::Held(lease) = &r1 else { panic!("{r1:?}") };
    assert_eq!((lease.mode, lease.weight), (Some(LockMode::Shared), 1));
    assert!(matches!(h.acquire("rw", 2, 0, shared), Reply::Held(_)));
    assert!(matches!(h.acquire("rw", 3, 0, exclusive), Reply::Queued(_)));
    let view = h.table.lock_view("rw").unwrap();
    assert_eq!((view.kind, view.limit, view.used, view.queue_length), (LockKind::Rw, 0, 2, 1));
    h.release("rw", 1, 1);
    assert!(h.granted().is_empty(), "a reader still holds");
    h.release("rw", 2, 2);
    assert_eq!(h.granted(), vec![t(3)]);
    let Some(Output::Granted { lease, .. }) = h.out.iter().find(|o| matches!(o, Output::Granted { .. })) else {
        panic!("{:?}", h.out)
    };
    assert_eq!(lease.mode, Some(LockMode::Exclusive));
    assert!(lease.fence > fence_of(&r1));
}

#[test]
fn rw_a_waiting_writer_is_not_passed_by_later_readers() {
    let mut h = Harness::new();
    h.acquire("rw", 1, 0, shared);
    assert!(matches!(h.acquire("rw", 2, 0, exclusive), Reply::Queued(_)));
    // The lock is shared now, but a writer waits: a new reader queues behind it.
    let queued = h.acquire("rw", 3, 0, shared);
    assert_eq!(queued, Reply::Queued(QueueView { ticket: t(3), position: Some(2), queue_length: 2 }));
    let try_once = h.acquire("rw", 4, 0, |a| {
        a.mode = Some(LockMode::Shared);
        a.queue = Some(QueueMode::None);
    });
    assert_eq!(try_once, Reply::Unavailable { used: 1, limit: 0, queue_length: 2 });
    h.release("rw", 1, 1);
    assert_eq!(h.granted(), vec![t(2)], "the writer first");
    h.release("rw", 2, 2);
    assert_eq!(h.granted(), vec![t(3)]);
}

#[test]
fn rw_consecutive_readers_at_the_head_go_in_together_up_to_the_next_writer() {
    let mut h = Harness::new();
    h.acquire("rw", 1, 0, exclusive);
    h.acquire("rw", 2, 0, shared);
    h.acquire("rw", 3, 0, shared);
    h.acquire("rw", 4, 0, exclusive);
    h.release("rw", 1, 1);
    assert_eq!(h.granted(), vec![t(2), t(3)], "both readers at once, not the writer behind them");
    let fences: Vec<u64> = h
        .out
        .iter()
        .filter_map(|o| match o {
            Output::Granted { lease, .. } => Some(lease.fence),
            _ => None,
        })
        .collect();
    assert!(fences[0] < fences[1], "a fence per grant: {fences:?}");
    assert_eq!(h.table.lock_view("rw").unwrap().queue_length, 1);
}

#[test]
fn rw_a_plain_acquire_of_a_read_write_lock_is_a_writer() {
    let mut h = Harness::new();
    h.acquire("rw", 1, 0, shared);
    let plain = h.acquire("rw", 2, 0, |a| a.watch = true);
    assert!(matches!(plain, Reply::Queued(_)), "{plain:?}");
    h.release("rw", 1, 1);
    let Some(Output::Granted { lease, .. }) = h.out.iter().find(|o| matches!(o, Output::Granted { .. })) else {
        panic!("{:?}", h.out)
    };
    assert_eq!(lease.mode, Some(LockMode::Exclusive));
}

#[test]
fn rw_kinds_do_not_mix_and_mode_refuses_a_count_or_a_lottery() {
    let mut h = Harness::new();
    h.acquire("sem", 1, 0, |a| a.limit = Some(2));
    assert_eq!(h.acquire("sem", 2, 0, shared), Reply::KindMismatch { kind: LockKind::Semaphore });
    h.acquire("rw", 3, 0, shared);
    assert_eq!(h.acquire("rw", 4, 0, |a| a.limit = Some(2)), Reply::KindMismatch { kind: LockKind::Rw });
    assert_eq!(h.op(Op::SetLimit { lock: name("rw"), limit: 5 }, 0), Reply::KindMismatch { kind: LockKind::Rw });
    for f in [|a: &mut Acquire| a.limit = Some(2), |a: &mut Acquire| a.queue = Some(QueueMode::Lottery)] {
        let reply = h.acquire("other", 5, 0, |a| {
            shared(a);
            f(a);
        });
        assert!(matches!(reply, Reply::Rejected(CoreError::Incompatible { .. })), "{reply:?}");
    }
    // Once nobody uses it, a lock takes the next caller's kind.
    h.release("rw", 3, 1);
    assert!(matches!(h.acquire("rw", 6, 1, |a| a.limit = Some(3)), Reply::Held(_)));
    assert_eq!(h.table.lock_view("rw").unwrap().kind, LockKind::Semaphore);
}

#[test]
fn rw_locks_export_modes_and_import_the_same_table() {
    let mut h = Harness::new();
    h.acquire("rw", 1, 0, shared);
    h.acquire("rw", 2, 0, shared);
    h.acquire("rw", 3, 0, exclusive);
    h.acquire("rw", 4, 0, shared);
    let state = h.table.export();
    let lock = &state.locks[0];
    assert_eq!((lock.kind, lock.limit), (LockKind::Rw, 0));
    assert!(lock.holders.iter().all(|l| l.mode == Some(LockMode::Shared) && l.weight == 1));
    let modes: Vec<_> = lock.waiters.iter().map(|w| w.mode).collect();
    assert_eq!(modes, [Some(LockMode::Exclusive), Some(LockMode::Shared)]);
    let back = LockTable::import(&state, LIMITS, 7).unwrap();
    assert_eq!(back.export(), state);
    // A state whose read/write lease has no mode is refused.
    let mut broken = state.clone();
    broken.locks[0].holders[0].mode = None;
    assert!(LockTable::import(&broken, LIMITS, 7).is_err());
    let mut broken = state;
    broken.locks[0].waiters[0].mode = Some(LockMode::Exclusive);
    broken.locks[0].holders[0].mode = Some(LockMode::Exclusive);
    assert!(LockTable::import(&broken, LIMITS, 7).is_err(), "a writer beside a reader");
}
