//! Durability end to end: state across restarts, kill -9 of the keeper under load (twenty
//! times, checking every acknowledged change after each recovery; and with `fsync =
//! interval` and `never`, which lose nothing acknowledged to a crash of the process either),
//! snapshots, a journal that cannot be written, and a corrupt journal (refused at start and
//! at a restart, then salvaged with `leasehold journal salvage`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use leasehold::core::rand::SplitMix64;
use leasehold::sys::process::wait_for_exit;
use nix::sys::signal::Signal;

use crate::lifecycle::whole_log;
use crate::support::http::{Client, Reply};
use crate::support::wait_until;
use crate::support::{config, contents, scratch, signal_pid, Server, DEADLINE};

/// Bytes before each journal record's body (length and checksum).
const HEADER_BYTES: usize = 8;

fn with_data_dir(dir: &Path, server_extra: &str, rest: &str) -> String {
    config(&format!("data_dir = {dir:?}\n{server_extra}"), rest)
}

fn post(c: &mut Client, path: &str, body: serde_json::Value) -> std::io::Result<Reply> {
    c.post(path, &body.to_string())
}

#[test]
fn state_survives_a_restart() {
    let dir = scratch();
    let cfg = with_data_dir(dir.path(), "workers = 1", "");
    let (ticket, fence, waiter) = {
        let mut s = Server::start(&cfg);
        let mut c = Client::connect(s.addr).unwrap();
        let held = post(&mut c, "/v1/locks/keep/acquire", serde_json::json!({"ttl_ms": 600_000, "owner": "me"}))
            .unwrap()
            .json();
        let ticket = held["ticket"].as_str().unwrap().to_string();
        let put = c.request("PUT", "/v1/locks/keep/data/cfg", &[("x-ticket", &ticket)], "{\"v\":1}").unwrap();
        assert_eq!(put.status, 201);
        let waiter = post(&mut c, "/v1/locks/keep/acquire", serde_json::json!({})).unwrap().json();
        assert_eq!(
            post(&mut c, "/resource", serde_json::json!({"name": "printer", "timeout": 3})).unwrap().status,
            201
        );
        s.signal(Signal::SIGTERM);
        assert_eq!(s.wait_exit(DEADLINE).0.code(), Some(0));
        (ticket, held["fence"].as_u64().unwrap(), waiter["ticket"].as_str().unwrap().to_string())
    };
    let s = Server::start(&cfg);
    let mut c = Client::connect(s.addr).unwrap();
    let mine = c.get(&format!("/v1/locks/keep/tickets/{ticket}")).unwrap().json();
    assert_eq!(
        (mine["status"].as_str(), mine["fence"].as_u64(), mine["owner"].as_str()),
        (Some("acquired"), Some(fence), Some("me"))
    );
    assert_eq!(c.get("/v1/locks/keep/data/cfg").unwrap().json(), serde_json::json!({"v": 1}));
    let theirs = c.get(&format!("/v1/locks/keep/tickets/{waiter}")).unwrap().json();
    assert_eq!((theirs["status"].as_str(), theirs["position"].as_u64()), (Some("queued"), Some(1)));
    assert_eq!(
        post(&mut c, "/resource", serde_json::json!({"name": "printer"})).unwrap().status,
        409,
        "the resource is remembered"
    );
    let next = post(&mut c, "/v1/locks/other/acquire", serde_json::json!({})).unwrap().json();
    assert!(next["fence"].as_u64().unwrap() > fence, "fences only go up across a restart");
}

/// What one client knows was acknowledged.
#[derive(Default)]
struct Known {
    /// lock → (ticket, fence, expires_at_ms) of leases it holds.
    held: HashMap<String, (String, u64, u64)>,
    /// (lock, ticket) of leases it released.
    released: Vec<(String, String)>,
    /// lock → the last value written under it.
    data: HashMap<String, u64>,
    max_fence: u64,
    next_lock: u64,
}

/// One client's acquire / renew / data write / release cycles until `stop`; an answer that
/// does not come (the keeper died under it) makes that lock's state unknown, and the client
/// carries on with a new one.
fn client(
    addr: std::net::SocketAddr,
    id: usize,
    mut known: Known,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    seed: u64,
) -> Known {
    let mut rng = SplitMix64::new(seed);
    let mut c: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let conn = match c.as_mut() {
            Some(conn) => conn,
            None => match Client::connect(addr) {
                Ok(conn) => c.insert(conn),
                Err(_) => continue,
            },
        };
        let ok = |r: &std::io::Result<Reply>, statuses: &[u16]| r.as_ref().is_ok_and(|r| statuses.contains(&r.status));
        if known.held.len() < 3 {
            known.next_lock += 1;
            let lock = format!("c{id}-{}", known.next_lock);
            let r = post(
                conn,
                &format!("/v1/locks/{lock}/acquire"),
                serde_json::json!({"ttl_ms": 600_000, "queue": "none"}),
            );
            if ok(&r, &[200]) {
                let body = r.unwrap().json();
                let fence = body["fence"].as_u64().unwrap();
                known.max_fence = known.max_fence.max(fence);
                known.held.insert(
                    lock,
                    (body["ticket"].as_str().unwrap().to_string(), fence, body["expires_at_ms"].as_u64().unwrap()),
                );
                acked.fetch_add(1, Ordering::Relaxed);
            } else if r.is_err() {
                c = None;
            }
            continue;
        }
        let mut locks: Vec<String> = known.held.keys().cloned().collect();
        locks.sort();
        let lock = locks[rng.below(locks.len())].clone();
        let (ticket, fence, _) = known.held[&lock].clone();
        match rng.below(3) {
            0 => {
                let r = post(conn, &format!("/v1/locks/{lock}/renew"), serde_json::json!({"ticket": ticket}));
                if ok(&r, &[200]) {
                    let expires = r.unwrap().json()["expires_at_ms"].as_u64().unwrap();
                    known.held.insert(lock, (ticket, fence, expires));
                    acked.fetch_add(1, Ordering::Relaxed);
                } else if r.is_err() {
                    c = None;
                }
            }
            1 => {
                let value = rng.next_u64() % 1_000_000;
                let r = conn.request(
                    "PUT",
                    &format!("/v1/locks/{lock}/data/v"),
                    &[("x-ticket", &ticket)],
                    &value.to_string(),
                );
                if ok(&r, &[200, 201]) {
                    known.data.insert(lock, value);
                    acked.fetch_add(1, Ordering::Relaxed);
                } else {
                    // Written or not: unknown.
                    known.data.remove(&lock);
                    if r.is_err() {
                        c = None;
                    }
                }
            }
            _ => {
                let r = post(conn, &format!("/v1/locks/{lock}/release"), serde_json::json!({"ticket": ticket}));
                known.held.remove(&lock);
                if ok(&r, &[200]) {
                    known.released.push((lock, ticket));
                    acked.fetch_add(1, Ordering::Relaxed);
                } else if r.is_err() {
                    c = None;
                }
            }
        }
    }
    known
}

fn wait_acked(acked: &AtomicU64, target: u64) {
    wait_until("progress of the load", || acked.load(Ordering::Relaxed) >= target);
}

#[test]
fn twenty_keeper_kills_under_load_lose_nothing_acknowledged() {
    keeper_kills_under_load_lose_nothing_acknowledged("", 20);
}

#[test]
fn r22_keeper_kills_under_load_with_fsync_interval_lose_nothing_acknowledged() {
    // No sync comes due while the test runs: what survives is what the keeper wrote to the
    // kernel before it answered.
    keeper_kills_under_load_lose_nothing_acknowledged(
        "[journal]\nfsync = \"interval\"\nfsync_interval_ms = 60000\n",
        5,
    );
}

#[test]
fn r22_keeper_kills_under_load_with_fsync_never_lose_nothing_acknowledged() {
    keeper_kills_under_load_lose_nothing_acknowledged("[journal]\nfsync = \"never\"\n", 5);
}

/// Kills the keeper `rounds` times under load, with `journal` as the configuration's
/// `[journal]` section, and checks every acknowledged change after each recovery.
fn keeper_kills_under_load_lose_nothing_acknowledged(journal: &str, rounds: u64) {
    let dir = scratch();
    // Twenty deaths in a minute would trip the crash-storm breaker, and back the restarts
    // off to seconds, at their defaults.
    let mut s = Server::start(&with_data_dir(
        dir.path(),
        "workers = 2\ncrash_storm_exits = 100\nrestart_delay_max_ms = 100",
        journal,
    ));
    const CLIENTS: usize = 6;
    let mut models: Vec<Known> = (0..CLIENTS).map(|_| Known::default()).collect();
    let mut rng = SplitMix64::new(2026);
    let mut highest_fence_before = 0;
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = std::mem::take(&mut models)
            .into_iter()
            .enumerate()
            .map(|(i, known)| {
                let (stop, acked, addr) = (Arc::clone(&stop), Arc::clone(&acked), s.addr);
                let seed = round * 100 + i as u64;
                std::thread::spawn(move || client(addr, i, known, stop, acked, seed))
            })
            .collect();
        // Kill at a random moment of the load.
        wait_acked(&acked, 10 + rng.below(150) as u64);
        let keeper = s.keeper_pid();
        signal_pid(keeper, Signal::SIGKILL);
        assert!(wait_for_exit(keeper, DEADLINE).unwrap());
        s.wait_note("keeper down");
        s.wait_note("keeper up");
        // The recovered keeper serves the load again.
        let after = acked.load(Ordering::Relaxed);
        wait_acked(&acked, after + 30);
        stop.store(true, Ordering::Relaxed);
        models = threads.into_iter().map(|t| t.join().unwrap()).collect();
        // Every acknowledged lease, release and write is as acknowledged.
        let mut c = Client::connect(s.addr).unwrap();
        let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        for known in &models {
            for (lock, (ticket, fence, expires)) in &known.held {
                if *expires > now_ms + 1_000 {
                    let r = c.get(&format!("/v1/locks/{lock}/tickets/{ticket}")).unwrap();
                    assert_eq!(
                        (r.status, r.json()["fence"].as_u64()),
                        (200, Some(*fence)),
                        "round {round}: lease on {lock} lost"
                    );
                }
            }
            for (lock, ticket) in &known.released {
                let r = c.get(&format!("/v1/locks/{lock}/tickets/{ticket}")).unwrap();
                assert_eq!(r.status, 410, "round {round}: a released lease on {lock} came back");
            }
            for (lock, value) in &known.data {
                let r = c.get(&format!("/v1/locks/{lock}/data/v")).unwrap();
                assert_eq!(r.json().as_u64(), Some(*value), "round {round}: the write under {lock} was lost");
            }
        }
        // Fences issued after the recovery are above every fence issued before it.
        let fresh = post(&mut c, &format!("/v1/locks/fence-{round}/acquire"), serde_json::json!({})).unwrap().json();
        let fence = fresh["fence"].as_u64().unwrap();
        let before: u64 = models.iter().map(|k| k.max_fence).max().unwrap_or(0).max(highest_fence_before);
        assert!(fence > before, "round {round}: fence {fence} after recovery, {before} before");
        highest_fence_before = fence;
    }
    let held: usize = models.iter().map(|k| k.held.len()).sum();
    let released: usize = models.iter().map(|k| k.released.len()).sum();
    assert!(held > 0 && released > 0, "the load did little: {held} held, {released} released");
}

#[test]
fn snapshots_replace_the_journal_and_recovery_starts_from_them() {
    let dir = scratch();
    let cfg = with_data_dir(dir.path(), "workers = 1", "[journal]\nsnapshot_bytes = 1048576\nfsync = \"never\"\n");
    let files = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        names.sort();
        names
    };
    let lock_ticket = {
        let mut s = Server::start(&cfg);
        let mut c = Client::connect(s.addr).unwrap();
        let held = post(&mut c, "/v1/locks/big/acquire", serde_json::json!({"ttl_ms": 600_000})).unwrap().json();
        let ticket = held["ticket"].as_str().unwrap().to_string();
        // More than a megabyte of journal: about 6,000 data writes of 200 bytes.
        let value = format!("\"{}\"", "x".repeat(180));
        for i in 0..6_000 {
            let r =
                c.request("PUT", &format!("/v1/locks/big/data/k{}", i % 50), &[("x-ticket", &ticket)], &value).unwrap();
            assert!(r.status == 200 || r.status == 201);
        }
        s.wait_log("snapshot written");
        s.signal(Signal::SIGTERM);
        s.wait_exit(DEADLINE);
        ticket
    };
    let names = files(dir.path());
    assert!(names.iter().any(|n| n.starts_with("snapshot-")), "{names:?}");
    assert_eq!(names.iter().filter(|n| n.starts_with("journal-")).count(), 1, "covered segments are gone: {names:?}");
    let s = Server::start(&cfg);
    s.wait_log("after snapshot");
    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(c.get(&format!("/v1/locks/big/tickets/{lock_ticket}")).unwrap().status, 200);
    assert_eq!(c.get("/v1/locks/big").unwrap().json()["data_keys"], 50);
    let metrics = String::from_utf8(c.get("/metrics").unwrap().body).unwrap();
    for series in [
        "leasehold_journal_bytes ",
        "leasehold_journal_fsync_seconds_count",
        "leasehold_recovery_seconds ",
        "leasehold_snapshot_seconds ",
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }
}

/// Sets a process's soft file-size limit (`unlimited` to lift it).
fn set_fsize(pid: i32, limit: &str) {
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--fsize={limit}:")])
        .output()
        .unwrap();
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
}

fn segment(dir: &Path) -> PathBuf {
    crate::support::segments(dir).pop().expect("a journal segment")
}

#[test]
fn a_journal_that_cannot_be_written_refuses_changes_loses_nothing_and_recovers() {
    let dir = scratch();
    let mut s = Server::start(&with_data_dir(dir.path(), "workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    let held = post(&mut c, "/v1/locks/disk/acquire", serde_json::json!({"ttl_ms": 600_000})).unwrap().json();
    let ticket = held["ticket"].as_str().unwrap().to_string();
    let put = |c: &mut Client, v: &str| c.request("PUT", "/v1/locks/disk/data/v", &[("x-ticket", &ticket)], v).unwrap();
    assert_eq!(put(&mut c, "1").status, 201);
    // The disk is "full": nothing may be written past the journal's current end, even into
    // the segment's preallocated space (for the keeper, and for every keeper the master
    // starts from now on). With no snapshot yet, the journal's bytes are the segment's.
    let metrics = String::from_utf8(c.get("/metrics").unwrap().body).unwrap();
    let written: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("leasehold_journal_bytes "))
        .and_then(|v| v.parse().ok())
        .expect("leasehold_journal_bytes");
    assert!(std::fs::metadata(segment(dir.path())).unwrap().len() > written, "the segment is preallocated");
    set_fsize(s.pid(), &written.to_string());
    set_fsize(s.keeper_pid(), &written.to_string());
    let refused = put(&mut c, "2");
    assert_eq!((refused.status, refused.json()["error"].as_str()), (503, Some("journal_unavailable")));
    assert!(refused.json()["message"].as_str().unwrap().contains("cannot be written"), "{}", refused.json());
    // A new keeper comes up, cannot write either, and serves what is durable.
    s.wait_log("serving reads only");
    s.wait_all_ready(1);
    let mut value = serde_json::Value::Null;
    wait_until("reads coming back", || {
        let r = c.get("/v1/locks/disk/data/v").unwrap();
        value = r.json();
        r.status == 200
    });
    assert_eq!(value, serde_json::json!(1), "the acknowledged write is there, the refused one is not");
    let r = put(&mut c, "3");
    assert_eq!((r.status, r.json()["error"].as_str()), (503, Some("journal_unavailable")));
    assert!(String::from_utf8(c.get("/metrics").unwrap().body).unwrap().contains("leasehold_journal_writable 0\n"));
    // Space returns: within a retry the keeper writes again.
    set_fsize(s.pid(), "unlimited");
    set_fsize(s.keeper_pid(), "unlimited");
    s.wait_log("the journal can be written again");
    assert_eq!(put(&mut c, "4").status, 200);
    assert_eq!(c.get("/v1/locks/disk/data/v").unwrap().json(), serde_json::json!(4));
    assert_eq!(c.get(&format!("/v1/locks/disk/tickets/{ticket}")).unwrap().status, 200, "the lease held throughout");
}

/// Acquires `n` locks `{prefix}-NN` with one-hour leases; returns (lock, ticket, fence).
fn hold_locks(c: &mut Client, prefix: &str, n: usize) -> Vec<(String, String, u64)> {
    (0..n)
        .map(|i| {
            let lock = format!("{prefix}-{i:02}");
            let r = post(c, &format!("/v1/locks/{lock}/acquire"), serde_json::json!({"ttl_ms": 3_600_000})).unwrap();
            assert_eq!(r.status, 200, "{lock}");
            let body = r.json();
            (lock, body["ticket"].as_str().unwrap().to_string(), body["fence"].as_u64().unwrap())
        })
        .collect()
}

/// (offset, body length) of each record a healthy segment holds: `length (u32 BE) | crc32 |
/// body`, up to the zeros after the last one.
fn records_of(bytes: &[u8]) -> Vec<(usize, usize)> {
    let mut records = Vec::new();
    let mut at = 0;
    while at + HEADER_BYTES <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 || at + HEADER_BYTES + len > bytes.len() {
            break;
        }
        records.push((at, len));
        at += HEADER_BYTES + len;
    }
    records
}

/// Flips a byte in the middle of what the segment holds; returns the offset of the record
/// it lands in, and that record's body.
fn flip_middle_byte(segment: &Path) -> (usize, String) {
    let mut bytes = std::fs::read(segment).unwrap();
    let records = records_of(&bytes);
    let (last, last_len) = *records.last().expect("records");
    let middle = (last + HEADER_BYTES + last_len) / 2;
    let &(hit, hit_len) = records.iter().rev().find(|(offset, _)| *offset <= middle).unwrap();
    let body = String::from_utf8_lossy(&bytes[hit + HEADER_BYTES..hit + HEADER_BYTES + hit_len]).to_string();
    bytes[middle] ^= 0x20;
    std::fs::write(segment, &bytes).unwrap();
    (hit, body)
}

fn leasehold_journal(args: &[&Path]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_leasehold"));
    cmd.arg("journal");
    cmd.args(args);
    cmd.output().expect("run leasehold journal")
}

/// Starts a server on `cfg`, takes `n` leases (as [`hold_locks`]) and stops it cleanly.
fn hold_locks_and_stop(cfg: &str, prefix: &str, n: usize) -> Vec<(String, String, u64)> {
    let mut s = Server::start(cfg);
    let mut c = Client::connect(s.addr).unwrap();
    let held = hold_locks(&mut c, prefix, n);
    s.signal(Signal::SIGTERM);
    assert_eq!(s.wait_exit(DEADLINE).0.code(), Some(0));
    held
}

#[test]
fn r12_a_flipped_byte_mid_journal_fails_the_start_and_salvage_keeps_every_valid_change() {
    let dir = scratch();
    let data = dir.path().join("data");
    let cfg = with_data_dir(&data, "workers = 1", "");
    let held = hold_locks_and_stop(&cfg, "r12", 40);
    let segment = segment(&data);
    let (offset, body) = flip_middle_byte(&segment);
    // The middle of the journal is one of the forty acquires: that lease is lost.
    let lost: Vec<&str> =
        held.iter().map(|(lock, _, _)| lock.as_str()).filter(|lock| body.contains(&format!("\"{lock}\""))).collect();
    assert_eq!(lost.len(), 1, "the damaged record is one acquire: {body}");
    let before = contents(&data);

    // The start fails, saying which file and where, and what to run; nothing changed.
    let mut s = Server::spawn_only(&cfg);
    let (status, _) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "log:\n{}", s.log());
    let log = whole_log(&s);
    assert!(log.contains(&format!("{} at byte {offset}", segment.display())), "log:\n{log}");
    assert!(log.contains("leasehold journal verify") && log.contains("leasehold journal salvage"), "log:\n{log}");
    assert!(contents(&data) == before, "the refused start changed the data directory");

    let verify = leasehold_journal(&[Path::new("verify"), &data]);
    let report = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(1), "{report}");
    assert!(report.contains(&format!("byte {offset}: CORRUPT")), "{report}");

    let salvaged = dir.path().join("salvaged");
    let salvage = leasehold_journal(&[Path::new("salvage"), &data, &salvaged]);
    let said = String::from_utf8_lossy(&salvage.stdout);
    assert_eq!(salvage.status.code(), Some(0), "{said}{}", String::from_utf8_lossy(&salvage.stderr));
    assert!(said.contains("kept: ") && said.contains(&format!("at byte {offset}")), "{said}");
    assert!(contents(&data) == before, "the salvage changed the original");

    // Every acknowledged lease whose record is valid is there, with its ticket. Grants
    // replay in order, so the ones before the damaged record keep their fences exactly; the
    // ones after it come one lower (the skipped record's grant is not replayed), which keeps
    // every lock's fences in order, and fences from now on start above all of them.
    let s = Server::start(&with_data_dir(&salvaged, "workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    let hole = held.iter().position(|(lock, _, _)| lost.contains(&lock.as_str())).unwrap();
    for (i, (lock, ticket, fence)) in held.iter().enumerate() {
        let r = c.get(&format!("/v1/locks/{lock}/tickets/{ticket}")).unwrap();
        if i == hole {
            assert_ne!(r.status, 200, "{lock}: its record was skipped");
            continue;
        }
        let body = r.json();
        assert_eq!((r.status, body["status"].as_str()), (200, Some("acquired")), "{lock}: {body}");
        let replayed = if i < hole { *fence } else { fence - 1 };
        assert_eq!(body["fence"].as_u64(), Some(replayed), "{lock}: {body}");
    }
    let highest = held.iter().map(|h| h.2).max().unwrap();
    let next = post(&mut c, "/v1/locks/after/acquire", serde_json::json!({})).unwrap().json();
    assert!(next["fence"].as_u64().unwrap() > highest, "fences only go up: {next}");
}

#[test]
fn r12_a_keeper_restarted_on_a_corrupt_journal_stops_the_service_at_once_and_says_why() {
    let dir = scratch();
    let data = dir.path().join("data");
    let mut s = Server::start(&with_data_dir(&data, "workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    hold_locks(&mut c, "storm", 20);
    // The bit rots under a running keeper (which never reads its journal back), then the
    // keeper dies: the keeper the master starts refuses the journal, and since every later
    // one would too, the service stops rather than restarting it in a loop.
    let segment = segment(&data);
    let (offset, _) = flip_middle_byte(&segment);
    let before = contents(&data);
    signal_pid(s.keeper_pid(), Signal::SIGKILL);
    let (status, _) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "log:\n{}", s.log());
    let log = whole_log(&s);
    assert!(log.contains("refused its journal (corrupt, or in a newer format); stopping"), "log:\n{log}");
    let refusal = format!("{} at byte {offset}", segment.display());
    assert_eq!(log.matches(&refusal).count(), 1, "one refusal, no restart loop; log:\n{log}");
    assert!(contents(&data) == before, "a refusing keeper changed the data directory");
}

#[test]
fn a_snapshot_in_the_previous_format_is_read_once_and_replaced_by_a_checked_one() {
    use leasehold::core::lock::TableLimits;
    use leasehold::journal::store::Store;
    use leasehold::journal::{Rebuild, Snapshot};
    let dir = scratch();
    let data = dir.path().join("data");
    let cfg = with_data_dir(&data, "workers = 1", "");
    let held = hold_locks_and_stop(&cfg, "old", 3);
    // The state as a snapshot of the previous format (the JSON alone, of journal format 1)
    // covering segment 1.
    let mut rebuild = Rebuild::new(leasehold::service::Service::new(TableLimits::DEFAULT, 0, 1), 1);
    drop(Store::open(&data, |found| rebuild.take(found)).unwrap());
    let old = Snapshot {
        version: 1,
        written_by: None,
        fences_reserved: rebuild.fences_reserved,
        service: rebuild.service.export(),
    };
    std::fs::write(data.join("snapshot-0000000000000001.json"), serde_json::to_vec(&old).unwrap()).unwrap();
    let s = Server::start(&cfg);
    s.wait_log("is in the previous format, which has no checksum");
    s.wait_log("snapshot written");
    let mut c = Client::connect(s.addr).unwrap();
    for (lock, ticket, fence) in &held {
        let r = c.get(&format!("/v1/locks/{lock}/tickets/{ticket}")).unwrap();
        assert_eq!((r.status, r.json()["fence"].as_u64()), (200, Some(*fence)), "{lock}");
    }
    let snapshots: Vec<(String, Vec<u8>)> =
        contents(&data).into_iter().filter(|(n, _)| n.starts_with("snapshot-")).collect();
    assert_eq!(snapshots.len(), 1, "the old snapshot is replaced");
    assert!(snapshots[0].1.starts_with(b"LHSNAP02"), "{} is in the framed, checked format", snapshots[0].0);
}
