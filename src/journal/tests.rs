//! Replay determinism: a service driven by random messages, and a second one rebuilt from
//! the journal records of the first (some through a snapshot), end in the same state. And
//! the journal's damage rules with real records: torn tails recover, corruption is
//! reported by `verify`, and `salvage` keeps exactly the valid records.

use super::*;
use crate::core::lock::{QueueMode, TableLimits};
use crate::core::names::{DataKey, LockName};
use crate::core::rand::SplitMix64;
use crate::ipc::message::{LockOp, Then};

const LIMITS: TableLimits = TableLimits { waiter_ttl_ms: 800, claim_ms: 300, ..TableLimits::DEFAULT };

fn random_message(rng: &mut SplitMix64, tickets: &[Ticket], next_id: &mut u64) -> ToKeeper {
    let lock = LockName::parse(["a", "b", "c"][rng.below(3)]).unwrap();
    let picked = tickets.get(rng.below(tickets.len().max(1))).copied();
    let ticket = || picked;
    *next_id += 1;
    let id = *next_id;
    let op = match rng.below(9) {
        0..=2 => LockOp::Acquire {
            lock,
            ticket: if rng.below(3) == 0 { ticket() } else { None },
            owner: None,
            ttl_ms: 200 + rng.below(2_000) as u64,
            limit: 2,
            weight: 1 + rng.below(2) as u32,
            queue: [QueueMode::Fifo, QueueMode::None][rng.below(2)],
            wait_ms: [0, 0, 500][rng.below(3)],
            then: if rng.below(4) == 0 {
                Then::WriteAndRelease { key: DataKey::parse("k").unwrap(), value: format!("{}", rng.below(100)) }
            } else {
                Then::Hold
            },
            compat: false,
            callback: None,
        },
        3 => match ticket() {
            Some(ticket) => LockOp::Release { lock, ticket },
            None => LockOp::Status { lock },
        },
        4 => match ticket() {
            Some(ticket) => LockOp::Renew { lock, ticket, ttl_ms: None },
            None => LockOp::Status { lock },
        },
        5 => match ticket() {
            Some(ticket) => LockOp::Watch { lock, ticket },
            None => LockOp::Status { lock },
        },
        6 => match ticket() {
            Some(ticket) => LockOp::PutData { lock, ticket, key: DataKey::parse("k").unwrap(), value: "1".into() },
            None => LockOp::Status { lock },
        },
        7 => match ticket() {
            Some(ticket) => return ToKeeper::Unwatch { lock, ticket },
            None => LockOp::Status { lock },
        },
        _ => return ToKeeper::Cancel { id: rng.below(*next_id as usize) as u64 },
    };
    ToKeeper::Request { id, op }
}

#[test]
fn a_replay_of_the_records_rebuilds_the_same_state() {
    for seed in 0..40u64 {
        let mut rng = SplitMix64::new(seed);
        let mut live = Service::new(LIMITS, 2_000, 1);
        let mut records: Vec<Record> =
            vec![Record::Configure { limits: LIMITS, max_wait_ms: 2_000, outbox: OutboxSettings::default() }];
        let mut out: Outbox = Vec::new();
        let mut tickets: Vec<Ticket> = Vec::new();
        let mut now = 1_000_000;
        let mut next_id = 0;
        let mut snapshot_at = None;
        for step in 0..400 {
            now += rng.below(120) as u64;
            let entropy = rng.next_u64();
            let mut fresh = [0u8; 16];
            fresh[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
            fresh[8..].copy_from_slice(&(step as u64).to_le_bytes());
            tickets.push(Ticket::from_bytes(fresh));
            let link = rng.below(3);
            let record = match rng.below(12) {
                0 => Record::Expire { at_ms: now, entropy },
                1 if step % 5 == 0 => Record::LinkClosed { link, at_ms: now, entropy },
                _ => {
                    let message = random_message(&mut rng, &tickets, &mut next_id);
                    if Service::reads_only(&message) {
                        live.handle(link, message, Moment::new(now, entropy), fresh, &mut out);
                        continue;
                    }
                    Record::Input { link, at_ms: now, entropy, fresh: Ticket::from_bytes(fresh), message }
                }
            };
            let mut reserved = 0;
            replay(&mut live, record.clone(), &mut reserved);
            records.push(record);
            if step == 200 {
                snapshot_at = Some((records.len(), serde_json::to_vec(&live.export()).unwrap()));
            }
        }
        // From nothing, through every record.
        let mut rebuilt = Service::new(TableLimits::DEFAULT, 0, 2);
        let mut reserved = 0;
        for r in records.iter().cloned() {
            replay(&mut rebuilt, serde_json::from_value(serde_json::to_value(r).unwrap()).unwrap(), &mut reserved);
        }
        assert_eq!(rebuilt.export(), live.export(), "seed {seed}: full replay differs");
        // From the snapshot, through the records after it.
        let (from, bytes) = snapshot_at.unwrap();
        let mut resumed = Service::import(serde_json::from_slice(&bytes).unwrap(), 3).unwrap();
        for r in records[from..].iter().cloned() {
            replay(&mut resumed, r, &mut reserved);
        }
        assert_eq!(resumed.export(), live.export(), "seed {seed}: replay from the snapshot differs");
        assert!(live.table().stats().next_fence > 1, "seed {seed}: nothing was granted");
    }
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
    let mut service = Service::new(LIMITS, 2_000, 9);
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
        let mut s = Service::new(LIMITS, 2_000, 1);
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
    let mut service = Service::new(LIMITS, 2_000, 9);
    let mut reserved = 0;
    let (_, recovery) = store::Store::open(dir, |found| {
        match found {
            store::Found::Snapshot(bytes) => {
                let snapshot = decode_snapshot(bytes)?;
                service = Service::import(snapshot.service, 9).map_err(|e| e.to_string())?;
                reserved = snapshot.fences_reserved;
            }
            store::Found::Record(bytes) => replay(&mut service, decode_record(bytes)?, &mut reserved),
        }
        Ok(())
    })
    .unwrap();
    (service, recovery, reserved)
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
    let snapshot = Snapshot { version: SNAPSHOT_VERSION, fences_reserved: 7, service: service.export() };
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
        let mut s = Service::new(LIMITS, 2_000, 1);
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
    assert_eq!((recovery.snapshot, recovery.records, recovery.dropped), (Some(1), 24, None));
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
