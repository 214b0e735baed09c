//! Formats that last (docs/journal-format.md, "Formats and evolution"): journals written by
//! earlier builds, committed under `tests/fixtures/journal/`, replay to the state committed
//! beside them.
//!
//! Each `format-N/` directory holds what a build writing journal format N wrote:
//! - `records/`: the journal of one scripted session against the real server (every record
//!   kind, every journaled operation; see [`session`]), cut after its last record;
//! - `snapshot/`: a snapshot of the state half-way through the same records, then the rest
//!   of them in the next segment;
//! - `expected-state.json`: the state both replay to.
//!
//! `make fixtures` runs [`write_the_fixtures_of_this_build`], which writes them for the
//! format this build writes.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};

use leasehold::journal::codec::{self, Reader};
use leasehold::journal::store::{Found, Store};
use leasehold::journal::{self, Record};
use leasehold::service::Service;
use nix::sys::signal::Signal;

use crate::support::http::{Client, Reply};
use crate::support::{config, signal_pid, wait_for, Server, DEADLINE};

/// The format this build writes (before formats were numbered in records: 1).
const FORMAT_WRITTEN: u32 = 1;

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
    let mut service = Service::new(Default::default(), 0, hash_seed);
    let mut fences_reserved = 0;
    Store::open(copy.path(), |found| match found {
        Found::Snapshot(bytes) => {
            let snapshot = journal::decode_snapshot(bytes)?;
            service = Service::import(snapshot.service, hash_seed).map_err(|e| e.to_string())?;
            fences_reserved = snapshot.fences_reserved;
            Ok(())
        }
        Found::Record(bytes) => {
            journal::replay(&mut service, journal::decode_record(bytes)?, &mut fences_reserved);
            Ok(())
        }
    })
    .unwrap_or_else(|e| panic!("{} does not replay: {e}", dir.display()));
    serde_json::json!({ "fences_reserved": fences_reserved, "service": service.export() })
}

/// The records of `dir`'s segments, in order.
fn records_of(dir: &Path) -> Vec<Vec<u8>> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("journal-"))
        .collect();
    segments.sort();
    let mut out = Vec::new();
    for path in segments {
        let bytes = std::fs::read(&path).unwrap();
        let mut reader = Reader::new(&bytes);
        while let Some(body) = reader.next_record().unwrap() {
            out.push(body.to_vec());
        }
    }
    out
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
    let half = records.len() / 2;
    let mut service = Service::new(Default::default(), 0, 1);
    let mut fences_reserved = 0;
    for body in &records[..half] {
        let record: Record = journal::decode_record(body).unwrap();
        store.append(&record).unwrap();
        journal::replay(&mut service, record, &mut fences_reserved);
    }
    store.commit(true).unwrap();
    let snapshot = journal::Snapshot { version: journal::SNAPSHOT_VERSION, fences_reserved, service: service.export() };
    store.snapshot(&serde_json::to_vec(&snapshot).unwrap()).unwrap();
    for body in &records[half..] {
        store.append(&journal::decode_record(body).unwrap()).unwrap();
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
             [[auth.keys]]\nkey = \"fixture-team\"\nrole = \"write\"\nprefix = \"team-a.\"\n"
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
        r#"{"owner":"fixture-waiter","ttl_ms":3600000}"#,
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

/// The first place where `got` and `want` differ, as a path and both values.
fn first_difference(path: &str, got: &serde_json::Value, want: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for key in g.keys().chain(w.keys()) {
                let (a, b) = (g.get(key).unwrap_or(&Value::Null), w.get(key).unwrap_or(&Value::Null));
                if let Some(d) = first_difference(&format!("{path}.{key}"), a, b) {
                    return Some(d);
                }
            }
            None
        }
        (Value::Array(g), Value::Array(w)) if g.len() == w.len() => {
            g.iter().zip(w).enumerate().find_map(|(i, (a, b))| first_difference(&format!("{path}[{i}]"), a, b))
        }
        _ if got == want => None,
        _ => Some(format!("{path}: replayed {got}, expected {want}")),
    }
}

/// Every committed format's fixtures, oldest first.
fn formats() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("tests/fixtures/journal")
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("format-"))
        .collect();
    dirs.sort_by_key(|p| p.file_name().unwrap().to_string_lossy()[7..].parse::<u32>().expect("format-N"));
    dirs
}

#[test]
fn r21_every_committed_journal_replays_to_its_expected_state() {
    let formats = formats();
    assert!(!formats.is_empty(), "no fixtures under {}", fixtures_dir().display());
    for format in formats {
        let want: serde_json::Value =
            serde_json::from_slice(&std::fs::read(format.join("expected-state.json")).unwrap()).unwrap();
        for (case, seed) in [("records", 1), ("records", 0x5eed), ("snapshot", 7)] {
            let got = replay_dir(&format.join(case), seed);
            if let Some(difference) = first_difference("", &got, &want) {
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

/// Writes `tests/fixtures/journal/format-N/` for the format this build writes, from a
/// session against the real server (`make fixtures`; see docs/journal-format.md).
#[test]
#[ignore = "writes the fixtures: run by `make fixtures`"]
fn write_the_fixtures_of_this_build() {
    let to = fixtures_dir().join(format!("format-{FORMAT_WRITTEN}"));
    assert!(!to.exists(), "{} exists: fixtures of a format are written once, never again", to.display());
    let mut s = Server::start(&session_config(60_000));
    let data_dir = s.data_dir();
    session(&mut s);
    copy_cut(&data_dir, &to.join("records"));
    let records = records_of(&to.join("records"));
    write_snapshot_fixture(&records, &to.join("snapshot"));
    let state = replay_dir(&to.join("records"), 1);
    std::fs::write(to.join("expected-state.json"), serde_json::to_string_pretty(&state).unwrap() + "\n").unwrap();
}
