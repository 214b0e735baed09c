//! Replay determinism: a service driven live by random messages, the way the keeper drives
//! it (journal the record, then handle the input with the record's time and entropy), and
//! a second one rebuilt by replaying the journal's bytes (some through a snapshot), end in
//! the same state, having sent the same replies, events and deliveries record by record;
//! a read, which is not journaled, changes nothing a replay rebuilds. And the journal's
//! damage rules with real records: torn tails recover, corruption is reported by `verify`,
//! and `salvage` keeps exactly the valid records.

use std::collections::BTreeMap;

use super::*;
use crate::core::backoff::Outcome;
use crate::core::lock::{Declaration, LockMode, QueueMode, TableLimits};
use crate::core::names::{CallbackUrl, DataKey, LockName, UserId};
use crate::core::outbox::{Call, EntryState};
use crate::core::rand::SplitMix64;
use crate::ipc::message::{FromKeeper, LockOp, LockReply, Then};
use crate::service::LinkId;

fn limits() -> TableLimits {
    TableLimits { waiter_ttl_ms: 800, claim_ms: 300, ..TableLimits::DEFAULT }
}

/// Worker channels are 0..WORKER_LINKS; the courier's channel comes after them.
const WORKER_LINKS: usize = 3;
const COURIER_LINK: usize = WORKER_LINKS;

/// Ids of the outbox entries in `service`, those with the courier first.
fn outbox_ids(service: &Service) -> (Vec<String>, Vec<String>) {
    let entries = service.outbox().export();
    let in_flight = entries.iter().filter(|e| matches!(e.state, EntryState::InFlight { .. })).map(|e| e.id.clone());
    (in_flight.collect(), entries.iter().map(|e| e.id.clone()).collect())
}

/// A random message from a worker or the courier: lock operations (waits, data, callbacks,
/// event streams), outbox calls and their listing, retries and deletions, the courier's
/// arrival and its reports. `tickets` are the tickets issued so far.
fn random_message(
    rng: &mut SplitMix64,
    now_ms: u64,
    tickets: &[Ticket],
    next_id: &mut u64,
    service: &Service,
) -> (LinkId, ToKeeper) {
    let lock = LockName::parse(["a", "b", "c"][rng.below(3)]).unwrap();
    let on_b = lock.as_str() == "b";
    // Mostly a recently issued ticket; now and then one nobody was given.
    let recent = &tickets[tickets.len().saturating_sub(12)..];
    let picked = match recent.get(rng.below(recent.len() + 1)) {
        Some(t) if rng.below(8) != 0 => Some(*t),
        _ if rng.below(2) == 0 => Some(Ticket::from_bytes([0xEE; 16])),
        _ => None,
    };
    let ticket = || picked;
    let (in_flight, ids) = outbox_ids(service);
    let id_of = |rng: &mut SplitMix64, ids: &[String]| match ids.get(rng.below(ids.len() + 1)) {
        Some(id) => id.clone(),
        None => "AAAAAAAAAAAAAAAAAAAAAA".to_string(),
    };
    *next_id += 1;
    let id = *next_id;
    let link = rng.below(WORKER_LINKS);
    let op = match rng.below(17) {
        0..=2 => LockOp::Acquire {
            lock,
            ticket: if rng.below(3) == 0 { ticket() } else { None },
            owner: None,
            ttl_ms: (rng.below(8) != 0).then(|| 200 + rng.below(2_000) as u64),
            // Lock "b" may be declared: its acquires often leave the shape to the declaration.
            limit: if on_b && rng.below(2) == 0 { None } else { Some(2) },
            weight: 1 + rng.below(2) as u32,
            queue: [None, Some(QueueMode::Fifo), Some(QueueMode::None), Some(QueueMode::Lottery)][rng.below(4)],
            wait_ms: [0, 0, 500][rng.below(3)],
            then: if rng.below(4) == 0 {
                Then::WriteAndRelease { key: DataKey::parse("k").unwrap(), value: format!("{}", rng.below(100)) }
            } else {
                Then::Hold
            },
            compat: false,
            callback: (rng.below(4) == 0).then(|| CallbackUrl::parse("http://hooks.test/cb").unwrap()),
            mode: [None, None, Some(LockMode::Shared), Some(LockMode::Exclusive)][rng.below(4)],
            user: (rng.below(3) == 0).then(|| UserId::parse(["u1", "u2"][rng.below(2)]).unwrap()),
        },
        3 => match ticket() {
            Some(ticket) => LockOp::Release { lock, ticket },
            None => LockOp::Status { lock },
        },
        4 => match ticket() {
            Some(ticket) if rng.below(2) == 0 => LockOp::Renew { lock, ticket, ttl_ms: None },
            Some(ticket) => LockOp::Touch { lock, ticket },
            None => LockOp::Status { lock },
        },
        5 => match ticket() {
            Some(ticket) => LockOp::Watch { lock, ticket },
            None => LockOp::Status { lock },
        },
        6 => match ticket() {
            Some(ticket) => LockOp::PutData { lock, ticket, key: DataKey::parse("k").unwrap(), value: "1".into() },
            None => LockOp::GetData { lock, key: DataKey::parse("k").unwrap() },
        },
        7 => match ticket() {
            Some(ticket) => return (link, ToKeeper::Unwatch { lock, ticket }),
            None => LockOp::List { prefix: String::new(), after: None, limit: 10 },
        },
        8 => return (link, ToKeeper::Cancel { id: rng.below(*next_id as usize) as u64 }),
        9 | 10 => LockOp::OutboxPut {
            call: Call {
                method: "POST".into(),
                url: "http://hooks.test/x".into(),
                headers: Vec::new(),
                body: format!("{}", rng.below(1_000)),
            },
            max_attempts: [None, Some(1), Some(3)][rng.below(3)],
            not_before_ms: [None, None, Some(now_ms + rng.below(600) as u64)][rng.below(3)],
            scope: String::new(),
        },
        11 => LockOp::OutboxList {
            failed: rng.below(2) == 0,
            after: None,
            limit: 10,
            scope: String::new(),
            redact: false,
        },
        12 => LockOp::OutboxGet { id: id_of(rng, &ids), scope: String::new(), redact: false },
        13 => LockOp::OutboxRetry { id: id_of(rng, &ids), scope: String::new() },
        14 => LockOp::OutboxDelete { id: id_of(rng, &ids), scope: String::new() },
        15 => return (COURIER_LINK, ToKeeper::CourierReady { capacity: 1 + rng.below(3) as u32 }),
        _ => {
            let outcome =
                [Outcome::Status(200), Outcome::Status(503), Outcome::ConnectionFailed, Outcome::Timeout][rng.below(4)];
            let message = ToKeeper::Delivered {
                id: id_of(rng, &in_flight),
                outcome,
                retry_after_ms: [None, Some(50)][rng.below(2)],
                error: (outcome != Outcome::Status(200)).then(|| "no".to_string()),
                took_ms: rng.below(50) as u64,
            };
            return (COURIER_LINK, message);
        }
    };
    (link, ToKeeper::Request { id, op })
}

/// The keeper's live side, run the way `process::keeper` runs it: a message that may change
/// state is journaled (encoded as the keeper encodes it) and handed to [`Service::handle`]
/// with the time and entropy of its record; an expiry run and a closed channel likewise
/// through [`Service::expire`] and [`Service::link_closed`]; reads are handled without a
/// record; new limits go through [`replay`], as the keeper applies a reload; fences are
/// reserved in blocks.
struct Live {
    service: Service,
    /// The journal: every record, encoded.
    journal: Vec<u8>,
    /// What the service sent while handling each record, by record.
    sent: Vec<Outbox>,
    fences_reserved: u64,
    /// Tickets the service has handed out, in order.
    issued: Vec<Ticket>,
    /// Reads handled (without a record).
    reads: usize,
}

impl Live {
    fn new() -> Self {
        let mut live = Live {
            service: Service::new(limits(), 2_000, 1),
            journal: Vec::new(),
            sent: Vec::new(),
            fences_reserved: 0,
            issued: Vec::new(),
            reads: 0,
        };
        let configure = Record::Configure {
            limits: limits(),
            max_wait_ms: 2_000,
            outbox: OutboxSettings::default(),
            at_ms: 0,
            entropy: 0,
        };
        live.journal(&configure);
        let mut out = Vec::new();
        replay_answering(&mut live.service, configure, &mut live.fences_reserved, &mut out);
        live.sent(out);
        live
    }

    /// Keeps what the service sent for the record just handled (and the tickets in it).
    fn sent(&mut self, out: Outbox) {
        for (_, message) in &out {
            let ticket = match message {
                FromKeeper::Reply { reply: LockReply::Held { lease, .. }, .. } => lease.ticket,
                FromKeeper::Reply { reply: LockReply::Queued { place, .. }, .. } => place.ticket,
                _ => continue,
            };
            if !self.issued.contains(&ticket) {
                self.issued.push(ticket);
            }
        }
        self.sent.push(out);
    }

    fn journal<T: serde::Serialize>(&mut self, record: &T) {
        codec::encode(record, &mut self.journal).unwrap();
    }

    fn input(&mut self, link: LinkId, message: ToKeeper, at: Moment, fresh: [u8; 16]) {
        let mut out = Vec::new();
        if Service::reads_only(&message) {
            // Not journaled, so it must not change anything a replay rebuilds.
            let before = self.service.export();
            self.service.handle(link, message.clone(), at, fresh, &mut out);
            assert_eq!(self.service.export(), before, "a read that is not journaled changed the state: {message:?}");
            self.reads += 1;
            return;
        }
        let (at_ms, entropy) = (at.now_ms, at.entropy);
        self.journal(&InputRef::Input { link, at_ms, entropy, fresh: Ticket::from_bytes(fresh), message: &message });
        self.service.handle(link, message, at, fresh, &mut out);
        self.sent(out);
    }

    fn expire(&mut self, at: Moment) {
        self.journal(&Record::Expire { at_ms: at.now_ms, entropy: at.entropy });
        let mut out = Vec::new();
        self.service.expire(at, &mut out);
        self.sent(out);
    }

    fn link_closed(&mut self, link: LinkId, at: Moment) {
        self.journal(&Record::LinkClosed { link, at_ms: at.now_ms, entropy: at.entropy });
        let mut out = Vec::new();
        self.service.link_closed(link, at, &mut out);
        self.sent(out);
    }

    fn reload(&mut self, limits: TableLimits, max_wait_ms: u64, at_ms: u64) {
        let record =
            Record::Configure { limits, max_wait_ms, outbox: OutboxSettings::default(), at_ms, entropy: at_ms };
        self.journal(&record);
        let mut out = Vec::new();
        replay_answering(&mut self.service, record, &mut self.fences_reserved, &mut out);
        self.sent(out);
    }

    /// The end of a keeper turn: fences past the reservation get a new one first.
    fn end_turn(&mut self) {
        let next = self.service.table().next_fence();
        if next >= self.fences_reserved {
            self.fences_reserved = next + 8;
            self.journal(&Record::ReserveFences { up_to: self.fences_reserved });
            self.sent(Vec::new());
        }
    }
}

/// Decodes every record of a journal.
fn records_of(journal: &[u8]) -> Vec<Record> {
    codec::survey(journal)
        .map(|piece| match piece {
            codec::Piece::Record { body, .. } => decode_record(body).unwrap(),
            other => panic!("the live journal is damaged: {other:?}"),
        })
        .collect()
}

/// Replays `records` into `service`; checks that each sends what the live run sent for it
/// (after `normal` on both sides).
fn replay_and_compare(
    service: &mut Service,
    records: &[Record],
    sent: &[Outbox],
    fences_reserved: &mut u64,
    normal: fn(Outbox) -> Outbox,
    what: &str,
) {
    for (i, (record, live_sent)) in records.iter().zip(sent).enumerate() {
        let mut out = Vec::new();
        replay_answering(service, record.clone(), fences_reserved, &mut out);
        assert_eq!(
            normal(out),
            normal(live_sent.clone()),
            "{what}: record {i} ({record:?}) sends something else in the replay"
        );
    }
}

/// Messages as they are.
fn exact(out: Outbox) -> Outbox {
    out
}

/// Messages without wait estimates: the hold-time averages behind them are not part of a
/// snapshot (a service restored from one estimates again once its locks have a history).
fn without_estimates(mut out: Outbox) -> Outbox {
    for (_, message) in &mut out {
        if let FromKeeper::Reply { reply: LockReply::Queued { eta_ms, .. }, .. }
        | FromKeeper::Waiting { reply: LockReply::Queued { eta_ms, .. }, .. } = message
        {
            *eta_ms = None;
        }
    }
    out
}

/// What a history exercised: the kinds of messages the live service sent, and answers to
/// waiting requests sent later than their request (by an expiry, a closed channel or
/// another request).
fn coverage(records: &[Record], sent: &[Outbox], seen: &mut BTreeMap<&'static str, usize>) {
    for (record, out) in records.iter().zip(sent) {
        let own = match record {
            Record::Input { link, message: ToKeeper::Request { id, .. }, .. } => Some((*link, *id)),
            _ => None,
        };
        for (link, message) in out {
            let kind = match message {
                FromKeeper::Reply { id, .. } if own != Some((*link, *id)) => "a wait answered later",
                FromKeeper::Reply { reply: LockReply::Held { .. }, .. } => "held",
                FromKeeper::Reply { reply: LockReply::Queued { eta_ms: Some(_), .. }, .. } => "queued with an estimate",
                FromKeeper::Reply { reply: LockReply::Written { .. }, .. } => "written and released",
                FromKeeper::Reply { reply: LockReply::OutboxAccepted { .. }, .. } => "outbox call accepted",
                FromKeeper::Reply { reply: LockReply::OutboxDone, .. } => "outbox entry retried or deleted",
                FromKeeper::Waiting { .. } => "a wait begun",
                FromKeeper::Event { .. } => "event",
                FromKeeper::Deliver { .. } => "delivery handed out",
                _ => continue,
            };
            *seen.entry(kind).or_default() += 1;
        }
    }
}

#[test]
fn r22_live_handling_and_a_replay_of_its_journal_end_in_the_same_state_with_the_same_replies() {
    let mut seen = BTreeMap::new();
    let mut reads = 0;
    for seed in 0..40u64 {
        let mut rng = SplitMix64::new(seed);
        let mut live = Live::new();
        let mut now = 1_000_000;
        let mut next_id = 0;
        let mut snapshot_at = None;
        for step in 0..400 {
            now += rng.below(120) as u64;
            let at = Moment::new(now, rng.next_u64());
            let mut fresh = [0u8; 16];
            fresh[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            fresh[8..].copy_from_slice(&(step as u64).to_le_bytes());
            match rng.below(14) {
                0 => live.expire(at),
                1 if step % 5 == 0 => live.link_closed(rng.below(WORKER_LINKS + 1), at),
                2 if step % 25 == 0 => {
                    // Now and then lock "b" is declared, with a rate: a reload that changes
                    // a declaration admits and drops, and a replay must do the same.
                    let declared = match rng.below(3) {
                        0 => Vec::new(),
                        _ => vec![Declaration {
                            limit: 1 + rng.below(3) as u32,
                            admit_per_minute: Some(600 + rng.below(600) as u32),
                            ..Declaration::new(Some(LockName::parse("b").unwrap()), None)
                        }],
                    };
                    let limits = TableLimits { max_waiters_per_lock: 1 + rng.below(4) as u32, declared, ..limits() };
                    live.reload(limits, 1_000 + rng.below(2_000) as u64, now);
                }
                _ => {
                    let (link, message) = random_message(&mut rng, now, &live.issued, &mut next_id, &live.service);
                    live.input(link, message, at, fresh);
                }
            }
            // As the keeper's loop does after each turn: what is due is expired.
            if live.service.next_deadline().is_some_and(|d| d <= now) {
                live.expire(Moment::new(now, rng.next_u64()));
            }
            live.end_turn();
            if step == 200 {
                let snapshot = Snapshot::new(live.fences_reserved, live.service.export());
                snapshot_at = Some((live.sent.len(), serde_json::to_vec(&snapshot).unwrap()));
            }
        }
        let records = records_of(&live.journal);
        assert_eq!(records.len(), live.sent.len(), "seed {seed}: one record per live step");
        coverage(&records, &live.sent, &mut seen);
        reads += live.reads;
        // From nothing, through every record.
        let mut rebuilt = Service::new(TableLimits::DEFAULT, 0, 2);
        let mut reserved = 0;
        let what = format!("seed {seed}, full replay");
        replay_and_compare(&mut rebuilt, &records, &live.sent, &mut reserved, exact, &what);
        assert_eq!(rebuilt.export(), live.service.export(), "seed {seed}: full replay differs");
        assert_eq!(reserved, live.fences_reserved, "seed {seed}: fence reservations differ");
        // From the snapshot, through the records after it.
        let (from, bytes) = snapshot_at.unwrap();
        let snapshot = decode_snapshot(&bytes).unwrap();
        let mut resumed = Service::import(snapshot.service, 3).unwrap();
        let mut reserved = snapshot.fences_reserved;
        let what = format!("seed {seed}, replay from the snapshot");
        replay_and_compare(&mut resumed, &records[from..], &live.sent[from..], &mut reserved, without_estimates, &what);
        assert_eq!(resumed.export(), live.service.export(), "seed {seed}: replay from the snapshot differs");
        // The histories reach what they are meant to exercise.
        assert!(live.service.table().stats().next_fence > 1, "seed {seed}: nothing was granted");
    }
    println!("reads: {reads}, records by what they sent: {seen:?}");
    assert!(reads > 1_000, "only {reads} reads");
    for kind in [
        "a wait answered later",
        "a wait begun",
        "held",
        "queued with an estimate",
        "written and released",
        "outbox call accepted",
        "outbox entry retried or deleted",
        "event",
        "delivery handed out",
    ] {
        assert!(seen.get(kind).is_some_and(|&n| n >= 10), "the histories rarely or never reach {kind:?}: {seen:?}");
    }
}

#[test]
fn r22_a_read_hands_no_due_call_to_the_courier() {
    // A read is not journaled: handling it must change nothing a replay rebuilds, even when
    // a call fell due since the last expiry run.
    let mut service = Service::new(limits(), 2_000, 1);
    let mut out = Vec::new();
    let at = |ms| Moment::new(ms, 7);
    service.handle(COURIER_LINK, ToKeeper::CourierReady { capacity: 4 }, at(1_000), [1; 16], &mut out);
    let call =
        Call { method: "POST".into(), url: "http://hooks.test/x".into(), headers: Vec::new(), body: String::new() };
    let put = LockOp::OutboxPut { call, max_attempts: None, not_before_ms: Some(1_100), scope: String::new() };
    service.handle(0, ToKeeper::Request { id: 1, op: put }, at(1_000), [2; 16], &mut out);
    assert_eq!(service.next_deadline(), Some(1_100));
    let before = service.export();
    for (id, op) in [
        LockOp::Status { lock: LockName::parse("a").unwrap() },
        LockOp::OutboxList { failed: false, after: None, limit: 10, scope: String::new(), redact: false },
    ]
    .into_iter()
    .enumerate()
    {
        let read = ToKeeper::Request { id: 2 + id as u64, op };
        assert!(Service::reads_only(&read));
        service.handle(0, read, at(1_200), [3; 16], &mut out);
        assert_eq!(service.export(), before, "a read handed out a due call");
    }
    // The next expiry run (journaled) hands it out.
    service.expire(at(1_200), &mut out);
    assert!(matches!(out.last(), Some((COURIER_LINK, FromKeeper::Deliver { .. }))), "{out:?}");
}

/// Writes `records` through a store in `dir` (one commit each).
fn write_journal(dir: &std::path::Path, records: &[Record]) {
    let (mut store, _) = store::Store::open(dir, |_| Ok(())).unwrap();
    for r in records {
        store.append(r).unwrap();
        store.commit(false).unwrap();
    }
    store.sync().unwrap();
}

/// Opens the journal in `dir` and replays it into a fresh service.
fn recover(dir: &std::path::Path) -> (Service, store::Recovery) {
    let mut service = Service::new(limits(), 2_000, 9);
    let mut reserved = 0;
    let (_, recovery) = store::Store::open(dir, |found| {
        if let store::Found::Record(bytes) = found {
            let record: Record = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
            replay(&mut service, record, &mut reserved);
        }
        Ok(())
    })
    .unwrap();
    (service, recovery)
}

fn acquire_record(i: u8, at_ms: u64) -> Record {
    Record::Input {
        link: 0,
        at_ms,
        entropy: u64::from(i),
        fresh: Ticket::from_bytes([i; 16]),
        message: ToKeeper::Request {
            id: u64::from(i),
            op: LockOp::acquire(LockName::parse(&format!("lock-{i}")).unwrap(), 60_000),
        },
    }
}

#[test]
fn a_journal_cut_at_every_byte_of_its_last_record_recovers_to_the_record_before() {
    let records: Vec<Record> = (1..=6).map(|i| acquire_record(i, 1_000_000 + u64::from(i))).collect();
    let whole = tempfile::tempdir().unwrap();
    write_journal(whole.path(), &records);
    let segment = std::fs::read_dir(whole.path()).unwrap().next().unwrap().unwrap().path();
    let file = std::fs::read(&segment).unwrap();
    // The segment holds the records, then zeros (its preallocated rest).
    let mut bytes = Vec::new();
    for r in &records {
        codec::encode(r, &mut bytes).unwrap();
    }
    assert_eq!(&file[..bytes.len()], &bytes[..]);
    assert!(file[bytes.len()..].iter().all(|&b| b == 0) && file.len() > bytes.len() + codec::HEADER_BYTES);
    let mut last = Vec::new();
    codec::encode(&records[5], &mut last).unwrap();
    let last_start = bytes.len() - last.len();
    let expected = {
        let mut s = Service::new(limits(), 2_000, 1);
        let mut reserved = 0;
        for r in &records[..5] {
            replay(&mut s, r.clone(), &mut reserved);
        }
        s.export()
    };
    for cut in last_start..bytes.len() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(segment.file_name().unwrap()), &bytes[..cut]).unwrap();
        let (service, recovery) = recover(dir.path());
        assert_eq!(service.export(), expected, "cut at byte {cut}");
        assert_eq!(recovery.records, 5);
        assert_eq!(recovery.dropped.is_some(), cut > last_start, "cut at byte {cut}");
        // The cut file takes new records after the good ones.
        let (mut store, _) = store::Store::open(dir.path(), |_| Ok(())).unwrap();
        store.append(&records[5]).unwrap();
        store.commit(true).unwrap();
        drop(store);
        assert_eq!(recover(dir.path()).1.records, 6, "cut at byte {cut}: the appended record follows");
        // The same torn write inside preallocated space: the rest of the file is zeros.
        let dir = tempfile::tempdir().unwrap();
        let mut torn = bytes[..cut].to_vec();
        torn.resize(cut + 4096, 0);
        std::fs::write(dir.path().join(segment.file_name().unwrap()), &torn).unwrap();
        let (service, recovery) = recover(dir.path());
        assert_eq!((service.export(), recovery.records), (expected.clone(), 5), "cut at byte {cut}, zeros after");
    }
    // A flipped bit in the last record: recovered to the record before it.
    for byte in last_start..bytes.len() {
        let dir = tempfile::tempdir().unwrap();
        let mut damaged = bytes.clone();
        damaged[byte] ^= 0x10;
        std::fs::write(dir.path().join(segment.file_name().unwrap()), &damaged).unwrap();
        let (service, recovery) = recover(dir.path());
        assert_eq!(service.export(), expected, "bit flipped in byte {byte}");
        assert!(recovery.dropped.is_some());
    }
}

#[test]
fn the_borrowed_input_record_encodes_exactly_as_the_owned_one() {
    let Record::Input { link, at_ms, entropy, fresh, message } = acquire_record(3, 5) else { unreachable!() };
    let owned =
        serde_json::to_string(&Record::Input { link, at_ms, entropy, fresh, message: message.clone() }).unwrap();
    let borrowed = serde_json::to_string(&InputRef::Input { link, at_ms, entropy, fresh, message: &message }).unwrap();
    assert_eq!(owned, borrowed);
}

/// Opens the journal in `dir` (snapshot included) and replays it into a fresh service;
/// also returns the highest fence reservation seen.
fn recover_all(dir: &std::path::Path) -> (Service, store::Recovery, u64) {
    let mut rebuild = Rebuild::new(Service::new(limits(), 2_000, 9), 9);
    let (_, recovery) = store::Store::open(dir, |found| rebuild.take(found)).unwrap();
    (rebuild.service, recovery, rebuild.fences_reserved)
}

/// Every file of `dir` with its bytes.
fn contents(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// A journal of 30 acquires of distinct locks: a snapshot of the state after the first 5
/// (`snapshot-1`), the other 25 in `journal-2`. Returns the records.
fn journal_with_snapshot(dir: &std::path::Path) -> Vec<Record> {
    let records: Vec<Record> = (1..=30).map(|i| acquire_record(i, 1_000_000 + u64::from(i))).collect();
    write_journal(dir, &records[..5]);
    let (service, _, _) = recover_all(dir);
    let (mut store, _) = store::Store::open(dir, |_| Ok(())).unwrap();
    let snapshot = Snapshot::new(7, service.export());
    store.snapshot(&serde_json::to_vec(&snapshot).unwrap()).unwrap();
    for r in &records[5..] {
        store.append(r).unwrap();
        store.commit(false).unwrap();
    }
    store.sync().unwrap();
    records
}

/// Where each record of a segment starts.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    codec::survey(bytes)
        .filter_map(|p| if let codec::Piece::Record { offset, .. } = p { Some(offset) } else { None })
        .collect()
}

/// Damages records `which` (indexes in `journal-2`): a flipped body byte, or for the
/// second one a length over the maximum. Returns their offsets.
fn damage(dir: &std::path::Path, which: &[usize]) -> Vec<usize> {
    let path = dir.join(store::segment_name(2));
    let mut bytes = std::fs::read(&path).unwrap();
    let starts = record_starts(&bytes);
    let offsets: Vec<usize> = which.iter().map(|&i| starts[i]).collect();
    for (n, &at) in offsets.iter().enumerate() {
        if n % 2 == 0 {
            bytes[at + codec::HEADER_BYTES + 20] ^= 0x04;
        } else {
            bytes[at] = 0x7f;
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    offsets
}

#[test]
fn r12_salvage_keeps_every_valid_record_and_leaves_the_original_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let records = journal_with_snapshot(dir.path());
    // Records 10 and 20 of the segment (the 16th and 26th acquires) are damaged.
    damage(dir.path(), &[10, 20]);
    let before = contents(dir.path());
    let out = tempfile::tempdir().unwrap();
    let new_dir = out.path().join("salvaged");
    let salvaged = inspect::salvage(dir.path(), &new_dir).unwrap();
    assert!(contents(dir.path()) == before, "the original changed");
    assert_eq!((salvaged.records, salvaged.skipped), (23, true));
    // The state of every valid record: the snapshot, then the segment without the two.
    let expected = {
        let mut s = Service::new(limits(), 2_000, 1);
        let mut reserved = 0;
        for (i, r) in records.iter().enumerate() {
            if i != 15 && i != 25 {
                replay(&mut s, r.clone(), &mut reserved);
            }
        }
        s.export()
    };
    let (service, recovery, reserved) = recover_all(&new_dir);
    assert_eq!(service.export(), expected);
    // The 23, the fence reservation, and the segment's format record.
    assert_eq!((recovery.snapshot, recovery.records, recovery.dropped), (Some(1), 25, None));
    assert_eq!(reserved, 7 + inspect::SALVAGE_FENCE_JUMP, "fences jump past the snapshot's reservation");
    assert!(!inspect::verify(&new_dir).unwrap().is_corrupt());
    let text = salvaged.to_string();
    assert!(text.contains("kept: 23 valid records") && text.contains("skipped: a corrupt spot"), "{text}");
}

#[test]
fn r12_salvage_of_a_clean_journal_copies_it_whole_and_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    journal_with_snapshot(dir.path());
    let (service, _, reserved) = recover_all(dir.path());
    let out = tempfile::tempdir().unwrap();
    let salvaged = inspect::salvage(dir.path(), out.path()).unwrap();
    assert_eq!((salvaged.records, salvaged.skipped, salvaged.fences_from), (25, false, None));
    let (copy, _, copy_reserved) = recover_all(out.path());
    assert_eq!((copy.export(), copy_reserved), (service.export(), reserved));
}

#[test]
fn salvage_into_a_directory_that_is_not_empty_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    journal_with_snapshot(dir.path());
    let out = tempfile::tempdir().unwrap();
    std::fs::write(out.path().join("something"), b"x").unwrap();
    let err = inspect::salvage(dir.path(), out.path()).unwrap_err();
    assert!(matches!(err, inspect::InspectError::Usage(_)), "{err}");
    assert_eq!(contents(out.path()).len(), 1);
    let err = inspect::salvage(dir.path(), dir.path()).unwrap_err();
    assert!(matches!(err, inspect::InspectError::Usage(_)), "{err}");
    let err = inspect::verify(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(err, inspect::InspectError::Usage(_)), "{err}");
}

#[test]
fn r12_verify_reports_every_file_and_every_damaged_spot_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    journal_with_snapshot(dir.path());
    let clean = inspect::verify(dir.path()).unwrap();
    assert!(!clean.is_corrupt() && clean.spots().is_empty());
    assert!(clean.to_string().contains("ok: 25 valid records, no damage"), "{clean}");
    let offsets = damage(dir.path(), &[10, 20]);
    let before = contents(dir.path());
    let report = inspect::verify(dir.path()).unwrap();
    assert!(contents(dir.path()) == before, "verify changed the directory");
    let segment = store::segment_name(2);
    assert_eq!(
        report.spots(),
        vec![
            (segment.as_str(), offsets[0] as u64, inspect::Verdict::Corrupt),
            (segment.as_str(), offsets[1] as u64, inspect::Verdict::Corrupt)
        ]
    );
    assert!(report.is_corrupt());
    let text = report.to_string();
    for needle in [
        format!("{}: ", store::snapshot_name(1)),
        "a valid snapshot; its checksum matches".to_string(),
        format!("{segment}: "),
        "bytes 0..".to_string(),
        ": 10 valid records".to_string(),
        format!("byte {}: CORRUPT: a record whose checksum does not match", offsets[0]),
        format!("byte {}: CORRUPT: a record length of", offsets[1]),
        "zeros (not yet written)".to_string(),
        format!("corrupt: 2 corrupt spots (first: {segment} at byte {})", offsets[0]),
    ] {
        assert!(text.contains(&needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn verify_of_a_torn_tail_says_the_keeper_cuts_it() {
    let dir = tempfile::tempdir().unwrap();
    journal_with_snapshot(dir.path());
    let path = dir.path().join(store::segment_name(2));
    let mut bytes = std::fs::read(&path).unwrap();
    let starts = record_starts(&bytes);
    let last = *starts.last().unwrap();
    // The last record half written: its second half is still zeros.
    let mut one = Vec::new();
    codec::encode(&acquire_record(30, 1_000_030), &mut one).unwrap();
    for b in &mut bytes[last + one.len() / 2..last + one.len()] {
        *b = 0;
    }
    std::fs::write(&path, &bytes).unwrap();
    let report = inspect::verify(dir.path()).unwrap();
    assert_eq!(report.spots(), vec![(store::segment_name(2).as_str(), last as u64, inspect::Verdict::Torn)]);
    assert!(!report.is_corrupt());
    let text = report.to_string();
    assert!(text.contains("TORN") && text.contains("ok: 24 valid records and a torn tail"), "{text}");
}

#[test]
fn r12_verify_of_a_snapshot_whose_checksum_fails_reports_corruption() {
    let dir = tempfile::tempdir().unwrap();
    journal_with_snapshot(dir.path());
    let path = dir.path().join(store::snapshot_name(1));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let report = inspect::verify(dir.path()).unwrap();
    assert_eq!(report.spots(), vec![(store::snapshot_name(1).as_str(), 0, inspect::Verdict::Corrupt)]);
    assert!(report.to_string().contains("a snapshot whose checksum does not match"), "{report}");
}

#[test]
fn a_batch_s_time_is_its_latest_record_s_and_a_batch_it_cannot_read_is_an_error() {
    let mut batch = Vec::new();
    codec::frame(&segment_header(), &mut batch);
    codec::encode(&Record::Expire { at_ms: 9, entropy: 1 }, &mut batch).unwrap();
    codec::encode(&Record::ReserveFences { up_to: 100 }, &mut batch).unwrap();
    codec::encode(&Record::ResetPresence { at_ms: 5 }, &mut batch).unwrap();
    assert_eq!(batch_time(&batch), Ok(9));
    // Format 1 (no format record) reads too; an empty batch has no time.
    let mut old = Vec::new();
    codec::encode(&Record::ResetPresence { at_ms: 5 }, &mut old).unwrap();
    assert_eq!(batch_time(&old), Ok(5));
    assert_eq!(batch_time(&[]), Ok(0));
    // A batch in a newer format is refused, naming it.
    let mut newer = Vec::new();
    codec::frame(br#"{"format":{"format":99}}"#, &mut newer);
    assert!(matches!(batch_time(&newer), Err(FormatError::Newer { format: 99, .. })));
    assert!(batch_time(b"\x00\x00\x00\x05junk!").is_err());
}
