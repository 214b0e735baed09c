//! Formats that last (docs/journal-format.md, "Formats and evolution"): journals written by
//! earlier builds, committed under `tests/fixtures/journal/`, replay to the state committed
//! beside them.
//!
//! Each `format-N/` directory holds what a build writing journal format N wrote:
//! - `records/`: the journal of one scripted session against the real server (every record
//!   kind, every journaled operation; see [`session`]), cut after its last record;
//! - `snapshot/`: a snapshot of the state half-way through the same records, then the rest
//!   of them in the next segment;
//! - `expected-state.json`: the state both replay to;
//! - `records.jsonl` (from format 2): one record of every kind, every optional field set,
//!   as that format writes it ([`every_record`]).
//!
//! Besides replaying them, the tests here start the real server on a journal of an older
//! and of a newer format. `make fixtures` runs [`write_the_fixtures_of_this_build`], which writes them for the
//! format this build writes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use leasehold::core::backoff::{Backoff, Outcome};
use leasehold::core::lock::{Declaration, LockKind, LockMode, QueueKind, QueueMode, TableLimits};
use leasehold::core::names::{DataKey, LockName, Ticket};
use leasehold::core::outbox::{Call, OutboxLimits};
use leasehold::ipc::message::{LockOp, Then, ToKeeper};
use leasehold::journal::codec::{self, Reader};
use leasehold::journal::store::Store;
use leasehold::journal::{self, Rebuild, Record, SegmentReader};
use leasehold::service::{OutboxSettings, Service};
use nix::sys::signal::Signal;

use crate::support::http::{Client, Reply};
use crate::support::{config, contents, scratch, segments, signal_pid, wait_for, Server, DEADLINE};

const ADMIN: (&str, &str) = ("x-api-key", "fixture-admin");
const TEAM: (&str, &str) = ("x-api-key", "fixture-team");

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal")
}

/// Replays the journal directory `dir` (a copy: recovery may cut a torn tail) the way a
/// keeper recovers, and returns the state it holds as JSON.
fn replay_dir(dir: &Path, hash_seed: u64) -> serde_json::Value {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    let mut rebuild = Rebuild::new(Service::new(Default::default(), 0, hash_seed), hash_seed);
    Store::open(copy.path(), |found| rebuild.take(found)).unwrap_or_else(|e| {
        panic!(
            "{} no longer replays: {e}. Journals of that format can no longer be read: older formats must stay \
                 readable (docs/journal-format.md, \"Formats and evolution\")",
            dir.display()
        )
    });
    let Rebuild { service, fences_reserved, .. } = rebuild;
    serde_json::json!({ "fences_reserved": fences_reserved, "service": service.export() })
}

/// The records of `dir`'s segments, in order.
fn records_of(dir: &Path) -> Vec<Vec<u8>> {
    segments(dir).iter().flat_map(|path| bodies(path)).collect()
}

/// Copies the journal of a stopped server's data directory into `to`, each segment cut to
/// its records and one zero header (segments are preallocated with megabytes of zeros).
fn copy_cut(data_dir: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(data_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("journal-") {
            let bytes = std::fs::read(&path).unwrap();
            let mut reader = Reader::new(&bytes);
            while reader.next_record().unwrap().is_some() {}
            let end = (reader.offset() + codec::HEADER_BYTES).min(bytes.len());
            std::fs::write(to.join(&name), &bytes[..end]).unwrap();
        } else if name.starts_with("snapshot-") && name.ends_with(".json") {
            std::fs::copy(&path, to.join(&name)).unwrap();
        }
    }
}

/// Writes `records` as a snapshot of the state after the first half, then the second half
/// in the next segment, with the store's own writer.
fn write_snapshot_fixture(records: &[Vec<u8>], to: &Path) {
    let work = tempfile::tempdir().unwrap();
    let (mut store, _) = Store::open(work.path(), |_| Ok(())).unwrap();
    store.set_segment_header(journal::segment_header());
    let mut service = Service::new(Default::default(), 0, 1);
    let mut fences_reserved = 0;
    let mut reader = SegmentReader::new();
    let records: Vec<Record> = records.iter().filter_map(|body| reader.read(body).unwrap()).collect();
    let half = records.len() / 2;
    for record in &records[..half] {
        let record = record.clone();
        store.append(&record).unwrap();
        journal::replay(&mut service, record, &mut fences_reserved);
    }
    store.commit(true).unwrap();
    let snapshot = journal::Snapshot::new(fences_reserved, service.export());
    store.snapshot(&serde_json::to_vec(&snapshot).unwrap()).unwrap();
    for record in &records[half..] {
        store.append(record).unwrap();
    }
    store.commit(true).unwrap();
    drop(store);
    copy_cut(work.path(), to);
}

fn request(c: &mut Client, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut all = vec![ADMIN];
    all.extend_from_slice(headers);
    if headers.iter().any(|(n, _)| *n == "x-api-key") {
        all.remove(0);
    }
    c.request(method, path, &all, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn ok(c: &mut Client, method: &str, path: &str, headers: &[(&str, &str)], body: &str, want: u16) -> Reply {
    let r = request(c, method, path, headers, body);
    assert_eq!(r.status, want, "{method} {path} {body}: {}", String::from_utf8_lossy(&r.body));
    r
}

fn ticket(r: &Reply) -> String {
    r.json()["ticket"].as_str().expect("a ticket").to_string()
}

/// The configuration of the session: two workers (a reload replaces their channels), keys
/// with and without a prefix, the outbox allowed to call this host (a closed port).
fn session_config(max_wait_ms: u64) -> String {
    config(
        "workers = 2",
        &format!(
            "[locks]\nmax_wait_ms = {max_wait_ms}\nmin_ttl_ms = 100\n\n[outbox]\nallow_local = true\n\n\
             [[auth.keys]]\nkey = \"fixture-admin\"\nrole = \"write\"\n\n\
             [[auth.keys]]\nkey = \"fixture-team\"\nrole = \"write\"\nprefix = \"team-a.\"\n\n\
             [[locks.declare]]\nname = \"fx-room\"\nlimit = 10\nadmit_per_minute = 1\nwaiter_ttl_ms = 3600000\n\n\
             [[locks.declare]]\nprefix = \"fx-gate-\"\nadmit_per_minute = 1\n"
        ),
    )
}

/// A scripted session through every journaled operation and every record kind: leases,
/// queues (FIFO, lottery, semaphore), data, renewals, releases, presence, an event stream,
/// a cancelled wait, an expiry with a callback, Small Resource Server resources, outbox
/// calls (failed, retried, pending, deleted), a reload with new limits (new channels), and
/// a keeper killed and recovered. Leaves the server stopped.
fn session(s: &mut Server) {
    let mut c = Client::connect(s.addr).unwrap();
    // A held mutex with data, and a FIFO waiter.
    let holder = ticket(&ok(
        &mut c,
        "POST",
        "/v1/locks/fx-mutex/acquire",
        &[],
        r#"{"owner":"fixture-holder","ttl_ms":3600000}"#,
        200,
    ));
    ok(&mut c, "PUT", "/v1/locks/fx-mutex/data/v", &[("x-ticket", &holder)], r#"{"n":1}"#, 201);
    ok(&mut c, "PUT", "/v1/locks/fx-mutex/data/w", &[("x-ticket", &holder)], r#""gone""#, 201);
    ok(&mut c, "DELETE", "/v1/locks/fx-mutex/data/w", &[("x-ticket", &holder)], "", 200);
    let waiter = ticket(&ok(
        &mut c,
        "POST",
        "/v1/locks/fx-mutex/acquire",
        &[],
        r#"{"owner":"fixture-waiter","ttl_ms":3600000,"user":"fixture-user"}"#,
        202,
    ));
    ok(&mut c, "POST", "/v1/locks/fx-mutex/renew", &[], &format!(r#"{{"ticket":"{holder}","ttl_ms":7200000}}"#), 200);
    // A semaphore of 3 permits: 2 + 1 held, 2 more wanted.
    for (owner, weight, status) in [("sem-a", 2, 200), ("sem-b", 1, 200), ("sem-c", 2, 202)] {
        ok(
            &mut c,
            "POST",
            "/v1/locks/fx-sem/acquire",
            &[],
            &format!(r#"{{"owner":"{owner}","limit":3,"weight":{weight},"ttl_ms":3600000}}"#),
            status,
        );
    }
    // A lottery queue.
    for (owner, status) in [("lot-1", 200), ("lot-2", 202), ("lot-3", 202)] {
        ok(
            &mut c,
            "POST",
            "/v1/locks/fx-lottery/acquire",
            &[],
            &format!(r#"{{"owner":"{owner}","queue":"lottery","ttl_ms":3600000}}"#),
            status,
        );
    }
    // A read/write lock (from format 4): two readers hold it, a writer waits, and a reader
    // behind the writer waits too (it does not pass it).
    for (owner, mode, status) in
        [("rw-r1", "shared", 200), ("rw-r2", "shared", 200), ("rw-w", "exclusive", 202), ("rw-r3", "shared", 202)]
    {
        ok(
            &mut c,
            "POST",
            "/v1/locks/fx-rw/acquire",
            &[],
            &format!(r#"{{"owner":"{owner}","mode":"{mode}","ttl_ms":3600000}}"#),
            status,
        );
    }
    // A declared lock (from format 4) admitting one a minute: the first caller goes in with
    // the declared shape, the second waits for a token, a third that states another limit
    // is refused. And a declared lock released at once: its bucket outlives it.
    ok(&mut c, "POST", "/v1/locks/fx-room/acquire", &[], r#"{"owner":"room-1","ttl_ms":3600000}"#, 200);
    ok(&mut c, "POST", "/v1/locks/fx-room/acquire", &[], r#"{"owner":"room-2","ttl_ms":3600000}"#, 202);
    ok(&mut c, "POST", "/v1/locks/fx-room/acquire", &[], r#"{"owner":"room-3","limit":2}"#, 409);
    let gate = ticket(&ok(&mut c, "POST", "/v1/locks/fx-gate-1/acquire", &[], "{}", 200));
    ok(&mut c, "POST", "/v1/locks/fx-gate-1/release", &[], &format!(r#"{{"ticket":"{gate}"}}"#), 200);
    // Released, and left the queue.
    let gone = ticket(&ok(&mut c, "POST", "/v1/locks/fx-released/acquire", &[], r#"{"ttl_ms":3600000}"#, 200));
    ok(&mut c, "POST", "/v1/locks/fx-released/release", &[], &format!(r#"{{"ticket":"{gone}"}}"#), 200);
    let left = ticket(&ok(&mut c, "POST", "/v1/locks/fx-lottery/acquire", &[], r#"{"queue":"lottery"}"#, 202));
    ok(&mut c, "DELETE", &format!("/v1/locks/fx-lottery/tickets/{left}"), &[], "", 200);
    // Presence: a look at one's ticket, then an event stream opened and closed.
    ok(&mut c, "GET", &format!("/v1/locks/fx-mutex/tickets/{waiter}"), &[], "", 200);
    {
        let mut stream = TcpStream::connect(s.addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(
            stream,
            "GET /v1/locks/fx-mutex/events?ticket={waiter} HTTP/1.1\r\nHost: x\r\nx-api-key: {}\r\n\r\n",
            ADMIN.1
        )
        .unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&seen).contains("\n\n") || !String::from_utf8_lossy(&seen).contains("event:") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "the event stream ended: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    }
    wait_for("the event stream to close", || {
        let metrics = String::from_utf8_lossy(&request(&mut c, "GET", "/metrics", &[], "").body).to_string();
        let open = metrics.lines().find(|l| l.starts_with("leasehold_budget_used{budget=\"event_streams\"}"));
        if open.is_some_and(|l| l.ends_with(" 0")) {
            Ok(())
        } else {
            Err(open.map(str::to_string))
        }
    });
    // A wait whose client hangs up.
    {
        let mut waiting = Client::connect(s.addr).unwrap();
        let body = r#"{"owner":"fixture-impatient","wait_ms":60000}"#;
        waiting
            .send_raw(
                format!(
                    "POST /v1/locks/fx-mutex/acquire HTTP/1.1\r\nHost: x\r\nx-api-key: {}\r\nContent-Length: {}\r\n\r\n{body}",
                    ADMIN.1,
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
        s.wait_waiting_requests(1, Some(ADMIN.1));
    }
    s.wait_waiting_requests(0, Some(ADMIN.1));
    // An expiry, with a callback to a closed port (so the courier fails it).
    ok(
        &mut c,
        "POST",
        "/v1/locks/fx-short/acquire",
        &[],
        r#"{"owner":"short","ttl_ms":100,"callback":"http://127.0.0.1:9/expired"}"#,
        200,
    );
    wait_for("fx-short to expire", || {
        let r = request(&mut c, "GET", "/v1/locks/fx-short", &[], "");
        if r.status == 404 || r.json()["holders"].as_array().is_some_and(Vec::is_empty) {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&r.body).to_string())
        }
    });
    // Small Resource Server resources: one written through, one read under its lock and
    // unlocked, one registered and deleted.
    ok(&mut c, "POST", "/resource", &[], r#"{"name":"fx-printer","timeout":5}"#, 201);
    ok(&mut c, "PUT", "/resource/fx-printer/A4", &[], r#"{"status":"ready"}"#, 204);
    let r = ok(&mut c, "GET", "/resource/fx-printer/A4", &[], "", 200);
    let compat_ticket = r.header("x-ticket").expect("X-Ticket").to_string();
    ok(&mut c, "PUT", "/resource/fx-printer/A4/unlock", &[("X-Ticket", &compat_ticket)], "", 200);
    ok(&mut c, "POST", "/resource", &[], r#"{"name":"fx-gone","timeout":-1}"#, 201);
    ok(&mut c, "DELETE", "/resource/fx-gone", &[], "", 204);
    // The outbox, under a prefixed key: a call that fails (a closed port) and is
    // dead-lettered, then retried by hand; one not due for decades; one deleted.
    let failing = ok(
        &mut c,
        "POST",
        "/v1/outbox",
        &[TEAM],
        r#"{"url":"http://127.0.0.1:9/hook","headers":{"x-fixture":"1"},"body":{"k":1},"max_attempts":1}"#,
        202,
    )
    .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let wait_failed = |c: &mut Client, times: u64| {
        wait_for("the failing call to be dead-lettered", || {
            let r = request(c, "GET", &format!("/v1/outbox/{failing}"), &[TEAM], "");
            let v = r.json();
            if v["state"] == "failed" && v["attempts"].as_u64() == Some(times) {
                Ok(())
            } else {
                Err(v)
            }
        })
    };
    wait_failed(&mut c, 1);
    ok(&mut c, "POST", &format!("/v1/outbox/{failing}/retry"), &[TEAM], "", 200);
    wait_failed(&mut c, 1);
    let later = r#"{"url":"http://127.0.0.1:9/later","method":"PUT","body":"text","not_before_ms":4102444800000}"#;
    ok(&mut c, "POST", "/v1/outbox", &[], later, 202);
    let deleted = ok(&mut c, "POST", "/v1/outbox", &[], later, 202).json()["id"].as_str().unwrap().to_string();
    ok(&mut c, "DELETE", &format!("/v1/outbox/{deleted}"), &[], "", 200);
    // A reload with a new limit: the keeper journals it, and the old workers' channels close.
    let text = std::fs::read_to_string(&s.config_path).unwrap();
    std::fs::write(&s.config_path, text.replace("max_wait_ms = 60000", "max_wait_ms = 45000")).unwrap();
    s.signal(Signal::SIGUSR1);
    s.wait_note("RELOADING=1");
    s.wait_note("READY=1");
    // A keeper killed: its successor reserves fences above any it may have handed out.
    let keeper = s.keeper_pid();
    signal_pid(keeper, Signal::SIGKILL);
    s.wait_note("keeper down");
    s.wait_note("keeper up");
    let mut c = wait_for("a request served after the recovery", || {
        let mut c = Client::connect(s.addr).map_err(|e| e.to_string())?;
        let r = request(&mut c, "POST", "/v1/locks/team-a.after/acquire", &[TEAM], r#"{"ttl_ms":3600000}"#);
        if r.status == 200 {
            Ok(c)
        } else {
            Err(String::from_utf8_lossy(&r.body).to_string())
        }
    });
    ok(&mut c, "POST", "/v1/locks/fx-mutex/release", &[], &format!(r#"{{"ticket":"{holder}"}}"#), 200);
    s.signal(Signal::SIGTERM);
    let (status, _) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", s.log());
}

/// The first place where `got` and `want` differ, as a path and both values. With
/// `strict` false, members of `got` that `want` does not have are let pass: the state of
/// a newer build may hold more than an older fixture knew of.
fn first_difference(path: &str, got: &serde_json::Value, want: &serde_json::Value, strict: bool) -> Option<String> {
    use serde_json::Value;
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            let extra = g.keys().filter(|k| strict && !w.contains_key(*k));
            for key in w.keys().chain(extra) {
                let (a, b) = (g.get(key).unwrap_or(&Value::Null), w.get(key).unwrap_or(&Value::Null));
                if let Some(d) = first_difference(&format!("{path}.{key}"), a, b, strict) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => {
            g.iter().zip(w).enumerate().find_map(|(i, (a, b))| first_difference(&format!("{path}[{i}]"), a, b, strict))
        }
        _ if got == want => None,
        _ => Some(format!("{path}: replayed {got}, expected {want}")),
    }
}

/// N of a `format-N` directory.
fn format_number(dir: &Path) -> u32 {
    dir.file_name().unwrap().to_string_lossy()[7..].parse::<u32>().expect("format-N")
}

/// Every committed format's fixtures, oldest first.
fn formats() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures/journal")
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("format-"))
        .collect();
    dirs.sort_by_key(|p| format_number(p));
    dirs
}

#[test]
fn r21_every_committed_journal_replays_to_its_expected_state() {
    let formats = formats();
    assert!(!formats.is_empty(), "no fixtures under {}", fixtures_dir().display());
    for format in formats {
        let want: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format.join("expected-state.json")).unwrap()).unwrap();
        // The current format's state must match member for member; an older format's, in
        // every member it had.
        let strict = format.ends_with(format!("format-{}", journal::FORMAT));
        for (case, seed) in [("records", 1), ("records", 0x5eed), ("snapshot", 7)] {
            let got = replay_dir(&format.join(case), seed);
            if let Some(difference) = first_difference("", &got, &want, strict) {
                panic!(
                    "{}/{case} no longer replays to the state it was written with: {difference}. The journal \
                     format changed in a way older journals cannot follow; see docs/journal-format.md, \
                     \"Formats and evolution\"",
                    format.display()
                );
            }
        }
    }
}

/// The lock named `name` in an exported state.
fn lock<'a>(state: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    state["service"]["table"]["locks"].as_array().unwrap().iter().find(|l| l["name"] == name)
}

fn owners(lock: &serde_json::Value, of: &str) -> Vec<(String, u64)> {
    lock[of]
        .as_array()
        .map(|a| {
            a.iter().map(|t| (t["owner"].as_str().unwrap_or("").to_string(), t["weight"].as_u64().unwrap())).collect()
        })
        .unwrap_or_default()
}

#[test]
fn r21_the_fixtures_hold_what_their_session_did() {
    // What `session` did, read back from every format's replayed state: the fixtures
    // record that session, not whatever a build happened to write.
    for format in formats() {
        let state = replay_dir(&format.join("records"), 3);
        let at = format.display();
        let mutex = lock(&state, "fx-mutex").unwrap_or_else(|| panic!("{at}: no fx-mutex"));
        assert_eq!(owners(mutex, "holders"), [("fixture-waiter".to_string(), 1)], "{at}: the waiter took over");
        let number: u32 = format.file_name().unwrap().to_string_lossy()[7..].parse().unwrap();
        if number >= 4 {
            // From format 4, the waiter's acquire named its user, and its lease keeps it.
            assert_eq!(mutex["holders"][0]["user"], "fixture-user", "{at}");
        }
        assert_eq!(mutex["data"]["v"], r#"{"n":1}"#, "{at}");
        assert!(mutex["data"].get("w").is_none(), "{at}: data w was deleted");
        let sem = lock(&state, "fx-sem").unwrap();
        assert_eq!(sem["limit"], 3, "{at}");
        assert_eq!(owners(sem, "holders"), [("sem-a".to_string(), 2), ("sem-b".to_string(), 1)], "{at}");
        assert_eq!(owners(sem, "waiters"), [("sem-c".to_string(), 2)], "{at}");
        let lottery = lock(&state, "fx-lottery").unwrap();
        assert_eq!(lottery["queue"], "lottery", "{at}");
        assert_eq!(owners(lottery, "holders"), [("lot-1".to_string(), 1)], "{at}");
        assert_eq!(owners(lottery, "waiters"), [("lot-2".to_string(), 1), ("lot-3".to_string(), 1)], "{at}");
        if format_number(&format) >= 4 {
            let rw = lock(&state, "fx-rw").unwrap_or_else(|| panic!("{at}: no fx-rw"));
            assert_eq!((&rw["kind"], &rw["limit"]), (&serde_json::json!("rw"), &serde_json::json!(0)), "{at}");
            let modes = |of: &str| -> Vec<(String, String)> {
                rw[of]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| (t["owner"].as_str().unwrap().into(), t["mode"].as_str().unwrap().into()))
                    .collect()
            };
            let pair = |o: &str, m: &str| (o.to_string(), m.to_string());
            assert_eq!(modes("holders"), [pair("rw-r1", "shared"), pair("rw-r2", "shared")], "{at}");
            assert_eq!(modes("waiters"), [pair("rw-w", "exclusive"), pair("rw-r3", "shared")], "{at}");
            let room = lock(&state, "fx-room").unwrap_or_else(|| panic!("{at}: no fx-room"));
            assert_eq!(room["limit"], 10, "{at}: the declared limit");
            assert_eq!(owners(room, "holders"), [("room-1".to_string(), 1)], "{at}");
            assert_eq!(owners(room, "waiters"), [("room-2".to_string(), 1)], "{at}: waiting for a token");
            assert!(room["admit_tat_us"].is_u64() && room["admit_timer_ms"].is_u64(), "{at}: {room}");
            let buckets = &state["service"]["table"]["admit_buckets"];
            assert!(buckets["fx-gate-1"].is_u64(), "{at}: the bucket outlives fx-gate-1: {buckets}");
        }
        for gone in ["fx-released", "fx-short"] {
            assert!(lock(&state, gone).is_none_or(|l| owners(l, "holders").is_empty()), "{at}: {gone} is held");
        }
        // The lease taken after the recovery has a fence above every fence before it.
        let after = lock(&state, "team-a.after").unwrap();
        let fence = after["holders"][0]["fence"].as_u64().unwrap();
        let locks = state["service"]["table"]["locks"].as_array().unwrap();
        let before = locks
            .iter()
            .filter(|l| l["name"] != "team-a.after" && l["name"] != "fx-mutex")
            .flat_map(|l| l["holders"].as_array().into_iter().flatten().map(|h| h["fence"].as_u64().unwrap()))
            .max()
            .unwrap();
        assert!(fence > before, "{at}: fence {fence} after the recovery, {before} before");
        // The reload's new limit.
        assert_eq!(state["service"]["max_wait_ms"], 45000, "{at}");
        // Resources: the printer with its A4 data, not the deleted one.
        let printer = lock(&state, "fx-printer").unwrap();
        assert_eq!(printer["data"], serde_json::json!({"A4": r#"{"status":"ready"}"#}), "{at}");
        assert!(owners(printer, "holders").is_empty(), "{at}: the printer was unlocked");
        let resources = state["service"]["resources"].to_string();
        assert!(resources.contains("fx-printer") && !resources.contains("fx-gone"), "{at}: {resources}");
        // The outbox: the expiry's callback, the dead-lettered call of the team, the call
        // due in 2100; not the deleted one.
        let outbox = state["service"]["outbox"].as_array().unwrap();
        let urls: Vec<&str> = outbox.iter().map(|e| e["call"]["url"].as_str().unwrap()).collect();
        assert_eq!(urls, ["http://127.0.0.1:9/expired", "http://127.0.0.1:9/hook", "http://127.0.0.1:9/later"], "{at}");
        assert_eq!((outbox[1]["state"].as_str(), outbox[1]["scope"].as_str()), (Some("failed"), Some("team-a.")));
        assert_eq!(outbox[2]["due_ms"], 4_102_444_800_000_u64, "{at}");
    }
}

fn de<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap()
}

/// One record of every kind this build journals, every optional field set. Built with
/// struct literals: a field added to any record, message, operation or limit does not
/// compile until it is set here, and then changes the encoding that
/// `format-N/records.jsonl` pins.
fn every_record() -> Vec<Record> {
    let lock: LockName = de(serde_json::json!("printer"));
    let ticket: Ticket = de(serde_json::json!("AAECAwQFBgcICQoLDA0ODw"));
    let key: DataKey = de(serde_json::json!("A4"));
    let input =
        |message: ToKeeper| Record::Input { link: 3, at_ms: 1_800_000_000_000, entropy: 42, fresh: ticket, message };
    let request = |op: LockOp| input(ToKeeper::Request { id: 7, op });
    let acquire = |queue: QueueMode, then: Then| LockOp::Acquire {
        lock: lock.clone(),
        ticket: Some(ticket),
        owner: Some(de(serde_json::json!("worker-1"))),
        ttl_ms: Some(30_000),
        limit: Some(3),
        weight: 2,
        queue: Some(queue),
        wait_ms: 5_000,
        then,
        compat: true,
        callback: Some(de(serde_json::json!("https://hooks.example/lock"))),
        mode: Some(LockMode::Shared),
        user: Some(de(serde_json::json!("user-1"))),
    };
    let delivered = |outcome: Outcome| {
        input(ToKeeper::Delivered {
            id: "01M8F529YDQV9KRR9ZRW4ME2FB".into(),
            outcome,
            retry_after_ms: Some(2_000),
            error: Some("status 503".into()),
            took_ms: 12,
        })
    };
    vec![
        Record::Configure {
            limits: TableLimits {
                min_ttl_ms: 1,
                max_ttl_ms: 2,
                max_limit: 3,
                max_locks: 4,
                max_waiters_per_lock: 5,
                waiter_ttl_ms: 6,
                claim_ms: 7,
                max_data_keys: 8,
                max_data_bytes: 9,
                max_data_bytes_total: 10,
                max_tickets_total: 11,
                max_resources: 12,
                max_event_streams: 13,
                callback_presence: true,
                default_ttl_ms: 24,
                declared: vec![
                    Declaration {
                        kind: LockKind::Rw,
                        min_ttl_ms: Some(25),
                        max_ttl_ms: Some(26),
                        default_ttl_ms: Some(27),
                        admit_per_minute: Some(28),
                        admit_burst: 29,
                        waiter_ttl_ms: Some(30),
                        claim_ms: Some(31),
                        ..Declaration::new(Some(lock.clone()), None)
                    },
                    Declaration {
                        limit: 32,
                        queue: QueueKind::Lottery,
                        ..Declaration::new(None, Some("room-".into()))
                    },
                ],
            },
            max_wait_ms: 14,
            outbox: OutboxSettings {
                limits: OutboxLimits {
                    max_entries: 15,
                    max_body_bytes: 16,
                    max_attempts: 17,
                    backoff: Backoff { base_ms: 18, factor: 19, cap_ms: 20 },
                    max_callbacks: 21,
                    max_total_bytes: 22,
                },
                default_attempts: 23,
            },
            at_ms: 33,
            entropy: 34,
        },
        request(acquire(QueueMode::Fifo, Then::Hold)),
        // An acquire that leaves its shape and TTL to the lock's declaration.
        request(LockOp::Acquire {
            lock: lock.clone(),
            ticket: None,
            owner: None,
            ttl_ms: None,
            limit: None,
            weight: 1,
            queue: None,
            wait_ms: 0,
            then: Then::Hold,
            compat: false,
            callback: None,
            mode: None,
            user: None,
        }),
        request(acquire(QueueMode::Lottery, Then::ReadData { key: key.clone() })),
        request(acquire(QueueMode::None, Then::WriteAndRelease { key: key.clone(), value: "{\"a\":1}".into() })),
        request(LockOp::Renew { lock: lock.clone(), ticket, ttl_ms: Some(60_000) }),
        request(LockOp::Release { lock: lock.clone(), ticket }),
        request(LockOp::Touch { lock: lock.clone(), ticket }),
        request(LockOp::Watch { lock: lock.clone(), ticket }),
        request(LockOp::PutData { lock: lock.clone(), ticket, key: key.clone(), value: "[1,2]".into() }),
        request(LockOp::DeleteData { lock: lock.clone(), ticket, key: key.clone() }),
        request(LockOp::CreateResource { name: lock.clone(), timeout_s: -1 }),
        request(LockOp::DeleteResource { name: lock.clone() }),
        request(LockOp::OutboxPut {
            call: Call {
                method: "PUT".into(),
                url: "https://hooks.example/x?y=1".into(),
                headers: vec![("x-a".into(), "b".into())],
                body: "text".into(),
            },
            max_attempts: Some(4),
            not_before_ms: Some(1_900_000_000_000),
            scope: "team-a.".into(),
        }),
        request(LockOp::OutboxRetry { id: "01M8F529YDQV9KRR9ZRW4ME2FB".into(), scope: "team-a.".into() }),
        request(LockOp::OutboxDelete { id: "01M8F529YDQV9KRR9ZRW4ME2FB".into(), scope: "team-a.".into() }),
        input(ToKeeper::Cancel { id: 7 }),
        input(ToKeeper::Unwatch { lock: lock.clone(), ticket }),
        input(ToKeeper::CourierReady { capacity: 4 }),
        delivered(Outcome::Status(503)),
        delivered(Outcome::Timeout),
        delivered(Outcome::ConnectionFailed),
        delivered(Outcome::Denied),
        Record::Expire { at_ms: 1_800_000_000_001, entropy: 43 },
        Record::LinkClosed { link: 3, at_ms: 1_800_000_000_002, entropy: 44 },
        Record::ResetPresence { at_ms: 1_800_000_000_003 },
        Record::ReserveFences { up_to: 65_536 },
        Record::RaiseFences { floor: 65_537 },
        Record::ExtendLeases { by_ms: 2_500 },
    ]
}

/// The kinds `record` is of: its record kind, and for inputs the message, operation,
/// queue, follow-up and outcome kinds. Every match is exhaustive, so a new kind anywhere
/// does not compile until it is named here (and then [`KINDS`] and [`every_record`] must
/// have it).
fn kinds(record: &Record) -> Vec<&'static str> {
    let message = match record {
        Record::Configure { .. } => return vec!["configure"],
        Record::Expire { .. } => return vec!["expire"],
        Record::LinkClosed { .. } => return vec!["link_closed"],
        Record::ResetPresence { .. } => return vec!["reset_presence"],
        Record::ReserveFences { .. } => return vec!["reserve_fences"],
        Record::RaiseFences { .. } => return vec!["raise_fences"],
        Record::ExtendLeases { .. } => return vec!["extend_leases"],
        Record::Input { message, .. } => message,
    };
    let op = match message {
        ToKeeper::Request { op, .. } => op,
        ToKeeper::Cancel { .. } => return vec!["cancel"],
        ToKeeper::Unwatch { .. } => return vec!["unwatch"],
        ToKeeper::CourierReady { .. } => return vec!["courier_ready"],
        ToKeeper::Delivered { outcome, .. } => {
            return vec![match outcome {
                Outcome::Status(_) => "delivered:status",
                Outcome::Timeout => "delivered:timeout",
                Outcome::ConnectionFailed => "delivered:connection_failed",
                Outcome::Denied => "delivered:denied",
            }]
        }
    };
    match op {
        LockOp::Acquire { queue, then, .. } => vec![
            "acquire",
            match queue {
                Some(QueueMode::Fifo) => "queue:fifo",
                Some(QueueMode::Lottery) => "queue:lottery",
                Some(QueueMode::None) => "queue:none",
                None => "queue:declared",
            },
            match then {
                Then::Hold => "then:hold",
                Then::ReadData { .. } => "then:read_data",
                Then::WriteAndRelease { .. } => "then:write_and_release",
            },
        ],
        LockOp::Renew { .. } => vec!["renew"],
        LockOp::Release { .. } => vec!["release"],
        LockOp::Touch { .. } => vec!["touch"],
        LockOp::Watch { .. } => vec!["watch"],
        LockOp::PutData { .. } => vec!["put_data"],
        LockOp::DeleteData { .. } => vec!["delete_data"],
        LockOp::CreateResource { .. } => vec!["create_resource"],
        LockOp::DeleteResource { .. } => vec!["delete_resource"],
        LockOp::OutboxPut { .. } => vec!["outbox_put"],
        LockOp::OutboxRetry { .. } => vec!["outbox_retry"],
        LockOp::OutboxDelete { .. } => vec!["outbox_delete"],
        // Reads change nothing and are never journaled.
        LockOp::Status { .. }
        | LockOp::List { .. }
        | LockOp::GetData { .. }
        | LockOp::CompatRead { .. }
        | LockOp::OutboxList { .. }
        | LockOp::OutboxGet { .. }
        | LockOp::Overview { .. } => vec!["a read"],
    }
}

/// Every kind [`kinds`] names for a journaled record.
const KINDS: &[&str] = &[
    "configure",
    "expire",
    "link_closed",
    "reset_presence",
    "reserve_fences",
    "raise_fences",
    "extend_leases",
    "cancel",
    "unwatch",
    "courier_ready",
    "delivered:status",
    "delivered:timeout",
    "delivered:connection_failed",
    "delivered:denied",
    "acquire",
    "queue:fifo",
    "queue:lottery",
    "queue:none",
    "queue:declared",
    "then:hold",
    "then:read_data",
    "then:write_and_release",
    "renew",
    "release",
    "touch",
    "watch",
    "put_data",
    "delete_data",
    "create_resource",
    "delete_resource",
    "outbox_put",
    "outbox_retry",
    "outbox_delete",
];

/// The records of [`every_record`] as this build writes them, one per line.
fn every_record_written() -> String {
    every_record().iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect()
}

#[test]
fn r21_every_kind_of_record_has_a_sample() {
    let samples = every_record();
    let mut seen: Vec<&str> = samples.iter().flat_map(kinds).collect();
    seen.sort_unstable();
    seen.dedup();
    let mut want = KINDS.to_vec();
    want.sort_unstable();
    assert_eq!(seen, want, "every_record must hold one record of each kind, and KINDS name them all");
}

#[test]
fn r21_records_of_the_current_format_are_written_as_its_fixture_pins() {
    let path = fixtures_dir().join(format!("format-{}/records.jsonl", journal::FORMAT));
    let pinned = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; the fixtures of journal format {} are missing (make fixtures)",
            path.display(),
            journal::FORMAT
        )
    });
    let now = every_record_written();
    for (i, (was, is)) in pinned.lines().zip(now.lines()).enumerate() {
        assert_eq!(
            was,
            is,
            "record {i} ({:?}) of journal format {} is written differently now. A change to what a record holds is \
             a new journal format: raise journal::FORMAT, convert older records in SegmentReader if their meaning \
             changed, and run `make fixtures` (docs/journal-format.md, \"Formats and evolution\")",
            kinds(&every_record()[i]),
            journal::FORMAT
        );
    }
    assert_eq!(pinned.lines().count(), now.lines().count(), "{}: a record kind was added or removed", path.display());
}

#[test]
fn r21_the_records_every_format_pinned_are_still_read() {
    for format in formats() {
        let Ok(pinned) = std::fs::read_to_string(format.join("records.jsonl")) else { continue };
        let number: u32 = format.file_name().unwrap().to_string_lossy()[7..].parse().unwrap();
        let mut reader = SegmentReader::new();
        let header = serde_json::json!({"format": {"format": number}}).to_string();
        assert_eq!(reader.read(header.as_bytes()), Ok(None), "{}", format.display());
        for (i, line) in pinned.lines().enumerate() {
            let read = reader.read(line.as_bytes());
            assert!(
                matches!(read, Ok(Some(_))),
                "{}: record {i} is no longer read: {read:?}; older formats must stay readable (docs/journal-format.md)",
                format.display()
            );
        }
    }
}

/// Every file of `dir` but the keeper's lock file, with its bytes.
fn journal_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = contents(dir);
    files.remove("keeper.lock");
    files
}

/// A data directory (inside `dir`) holding a copy of `fixture`.
fn data_from(dir: &Path, fixture: &Path) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir(&data).unwrap();
    for entry in std::fs::read_dir(fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), data.join(entry.file_name())).unwrap();
    }
    data
}

/// The bodies of the records of the segment at `path`, in order.
fn bodies(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).unwrap();
    let mut reader = Reader::new(&bytes);
    let mut out = Vec::new();
    while let Some(body) = reader.next_record().unwrap() {
        out.push(body.to_vec());
    }
    out
}

#[test]
fn r21_a_journal_in_a_newer_format_is_refused_naming_the_format_and_nothing_changes() {
    let dir = scratch();
    let data = data_from(dir.path(), &fixtures_dir().join(format!("format-{}/records", journal::FORMAT)));
    // What a build of a later format would write: its format record, and records of a
    // kind this build has never heard of.
    let segment = data.join("journal-0000000000000001.log");
    let mut records = bodies(&segment);
    records[0] = br#"{"format":{"format":99,"written_by":"leasehold 9.1.0"}}"#.to_vec();
    records.push(br#"{"frobnicate":{"lock":"fx-mutex","how":"sideways"}}"#.to_vec());
    let mut bytes = Vec::new();
    for body in &records {
        codec::frame(body, &mut bytes);
    }
    bytes.extend_from_slice(&[0; codec::HEADER_BYTES]);
    std::fs::write(&segment, &bytes).unwrap();
    let before = journal_files(&data);
    let mut s = Server::spawn_only(&config(&format!("data_dir = {data:?}"), ""));
    let (status, _) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "log:\n{}", s.log());
    let log = crate::lifecycle::whole_log(&s);
    for needle in [
        segment.display().to_string().as_str(),
        "journal format 99",
        "written by leasehold 9.1.0",
        "written by a newer leasehold",
        "has changed nothing",
    ] {
        assert!(log.contains(needle), "{needle:?} not in the log:\n{log}");
    }
    assert!(journal_files(&data) == before, "the refusing keeper changed the data directory");
}

#[test]
fn r21_a_journal_in_an_older_format_is_read_then_rewritten_in_the_current_one() {
    let dir = scratch();
    let data = data_from(dir.path(), &fixtures_dir().join("format-1/records"));
    let cfg = config(&format!("data_dir = {data:?}\nworkers = 1"), "");
    let s = Server::start(&cfg);
    s.wait_log("the journal is in format 1");
    s.wait_log("snapshot written");
    // What the session of format 1 left that no clock takes away: the resource's data and
    // the outbox's entries.
    let mut c = Client::connect(s.addr).unwrap();
    let read = c.get("/resource/fx-printer/A4?lock=0").unwrap();
    assert_eq!((read.status, read.json()["data"].as_str()), (200, Some(r#"{"status":"ready"}"#)));
    // (The courier of this server may meanwhile dead-letter the callback to this host,
    // which it does not allow.)
    let failed = c.get("/v1/outbox?state=failed").unwrap().json();
    let hook = failed["entries"].as_array().unwrap().iter().find(|e| e["call"]["url"] == "http://127.0.0.1:9/hook");
    assert_eq!(hook.map(|e| &e["scope"]), Some(&serde_json::json!("team-a.")), "{failed}");
    drop(s);
    // The directory is in the current format now: a snapshot that says so, and a segment
    // that starts with the format record.
    let files = journal_files(&data);
    let (_, snapshot) = files.iter().find(|(n, _)| n.starts_with("snapshot-")).expect("a snapshot");
    assert!(snapshot.starts_with(journal::snapshot::MAGIC), "a snapshot in the framed container");
    assert_eq!(journal::snapshot::decode(snapshot).unwrap().version, journal::FORMAT);
    let last = files.keys().filter(|n| n.starts_with("journal-")).max().unwrap();
    let first: serde_json::Value = serde_json::from_slice(&bodies(&data.join(last))[0]).unwrap();
    assert_eq!(first["format"]["format"], journal::FORMAT, "{first}");
    // And a second start reads it as it is.
    let s = Server::start(&cfg);
    s.wait_log("recovered");
    assert!(!s.log().contains("the journal is in format"), "{}", s.log());
}

/// Writes `tests/fixtures/journal/format-N/` for the format this build writes, from a
/// session against the real server (`make fixtures`; see docs/journal-format.md).
#[test]
#[ignore = "writes the fixtures: run by `make fixtures`"]
fn write_the_fixtures_of_this_build() {
    let to = fixtures_dir().join(format!("format-{}", journal::FORMAT));
    assert!(!to.exists(), "{} exists: fixtures of a format are written once, never again", to.display());
    let mut s = Server::start(&session_config(60_000));
    let data_dir = s.data_dir();
    session(&mut s);
    copy_cut(&data_dir, &to.join("records"));
    let records = records_of(&to.join("records"));
    write_snapshot_fixture(&records, &to.join("snapshot"));
    std::fs::write(to.join("records.jsonl"), every_record_written()).unwrap();
    let state = replay_dir(&to.join("records"), 1);
    std::fs::write(to.join("expected-state.json"), serde_json::to_string_pretty(&state).unwrap() + "\n").unwrap();
}
