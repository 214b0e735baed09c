//! Declared locks end to end (`[[locks.declare]]`, docs/api.md "Declared locks"), through
//! the real server: a declaration fixes a lock's shape (an acquire may leave it out, one
//! that states another is refused), its TTL bounds and default, by name or by prefix; the
//! status shows it; a reload that raises a declared limit admits a waiter at once;
//! `check-config` names a bad entry's key. And the issue's acceptance run of the admission
//! rate: 300 waiters on a lock declared at 60 grants a minute, timed by the server's own
//! grant times (the `at_ms` of each callback).

use std::time::{Duration, Instant};

use crate::client::leasehold;
use crate::outbox::Sink;
use crate::support::http::{Client, Reply};
use crate::support::{config, wait_for, wait_for_within, Server};

fn acquire(c: &mut Client, lock: &str, body: &str) -> Reply {
    c.post(&format!("/v1/locks/{lock}/acquire"), body).unwrap()
}

/// The error code of a refusal, with its body for messages.
fn error(r: &Reply) -> (u16, String) {
    (r.status, r.json()["error"].as_str().unwrap_or_default().to_string())
}

const DECLARATIONS: &str = r#"
[[locks.declare]]
name = "pool"
limit = 3
min_ttl_ms = 1000
max_ttl_ms = "1m"
default_ttl_ms = "20s"
waiter_ttl_ms = "1m"
claim_ms = "1m"

[[locks.declare]]
name = "settings"
kind = "rw"

[[locks.declare]]
prefix = "room-"
limit = 2
queue = "lottery"
"#;

#[test]
fn a_declared_lock_has_its_shape_from_the_server_and_refuses_another() {
    let mut s = Server::start(&config("workers = 1", DECLARATIONS));
    let mut c = Client::connect(s.addr).unwrap();

    // A semaphore declared with 3 permits: an acquire that says nothing gets them, and the
    // declared default TTL.
    let first = acquire(&mut c, "pool", "{}");
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    let lease = first.json();
    assert_eq!(lease["expires_at_ms"].as_u64().unwrap() - lease["at_ms"].as_u64().unwrap(), 20_000, "{lease}");
    // Renewed to the declared maximum, so it outlasts the reload below.
    let renew = format!(r#"{{"ticket":"{}","ttl_ms":60000}}"#, lease["ticket"].as_str().unwrap());
    assert_eq!(c.post("/v1/locks/pool/renew", &renew).unwrap().status, 200);
    let status = c.get("/v1/locks/pool").unwrap().json();
    assert_eq!((status["limit"].as_u64(), status["used"].as_u64()), (Some(3), Some(1)), "{status}");
    assert_eq!(
        status["declared"],
        serde_json::json!({"name":"pool","limit":3,"queue":"fifo","min_ttl_ms":1000,"max_ttl_ms":60000,
            "default_ttl_ms":20000,"admit_burst":1,"waiter_ttl_ms":60000,"claim_ms":60000}),
        "{status}"
    );
    // Another shape is refused, whether or not the lock is in use; the same one passes.
    let r = acquire(&mut c, "pool", r#"{"limit":2}"#);
    assert_eq!(error(&r), (409, "limit_mismatch".into()));
    assert_eq!(r.json()["limit"], 3);
    assert_eq!(error(&acquire(&mut c, "pool", r#"{"queue":"lottery"}"#)), (409, "queue_mismatch".into()));
    let r = acquire(&mut c, "pool", r#"{"mode":"shared"}"#);
    assert_eq!((error(&r), r.json()["kind"].as_str()), ((409, "kind_mismatch".into()), Some("semaphore")));
    assert_eq!(acquire(&mut c, "pool", r#"{"limit":3,"queue":"fifo","ttl_ms":60000}"#).status, 200);
    // TTLs outside the declared bounds (both inside the global ones) are 400, naming them.
    for ttl in [500, 120_000] {
        let r = acquire(&mut c, "pool", &format!(r#"{{"ttl_ms":{ttl}}}"#));
        assert_eq!(error(&r), (400, "bad_request".into()), "ttl_ms {ttl}");
        let message = r.json()["message"].as_str().unwrap().to_string();
        assert!(message.contains("between 1000 and 60000"), "{message}");
    }
    // Undeclared, the same acquire sets the shape as ever.
    assert_eq!(acquire(&mut c, "free", r#"{"limit":2,"ttl_ms":500}"#).status, 200);

    // A declared read/write lock: a plain acquire is a writer, `mode: shared` a reader, and
    // a permit count is the other kind.
    let writer = acquire(&mut c, "settings", "{}");
    assert_eq!((writer.status, writer.json()["mode"].as_str()), (200, Some("exclusive")));
    let ticket = writer.json()["ticket"].as_str().unwrap().to_string();
    let r = acquire(&mut c, "settings", r#"{"limit":2}"#);
    assert_eq!((error(&r), r.json()["kind"].as_str()), ((409, "kind_mismatch".into()), Some("rw")));
    let release = format!(r#"{{"ticket":"{ticket}"}}"#);
    assert_eq!(c.post("/v1/locks/settings/release", &release).unwrap().status, 200);
    // Free again, the lock keeps its declared kind: two readers hold it together.
    for _ in 0..2 {
        let reader = acquire(&mut c, "settings", r#"{"mode":"shared"}"#);
        assert_eq!((reader.status, reader.json()["mode"].as_str()), (200, Some("shared")));
    }
    let r = acquire(&mut c, "settings", r#"{"limit":2}"#);
    assert_eq!(error(&r), (409, "kind_mismatch".into()), "refused while free too, not only while in use");
    let status = c.get("/v1/locks/settings").unwrap().json();
    assert_eq!((status["kind"].as_str(), status["used"].as_u64()), (Some("rw"), Some(2)), "{status}");
    assert_eq!(status["declared"]["kind"], "rw", "{status}");

    // A prefix declaration shapes every name under it.
    for name in ["room-a", "room-b"] {
        assert_eq!(acquire(&mut c, name, "{}").status, 200, "{name}");
        let status = c.get(&format!("/v1/locks/{name}")).unwrap().json();
        assert_eq!((status["limit"].as_u64(), status["queue"].as_str()), (Some(2), Some("lottery")), "{status}");
        assert_eq!(status["declared"]["prefix"], "room-", "{status}");
        assert_eq!(error(&acquire(&mut c, name, r#"{"limit":5}"#)), (409, "limit_mismatch".into()));
    }
    assert!(c.get("/v1/locks/room").unwrap().status == 404, "the prefix itself is another name");

    // `leasehold status` marks declared locks.
    let out = leasehold(&s, &["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("pool (declared) ")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("free ")), "{text}");

    // The pool is full (3 of 3): a fourth waits. A reload that raises the declared limit
    // admits it at once.
    assert_eq!(acquire(&mut c, "pool", r#"{"ttl_ms":60000}"#).status, 200);
    let waiter = acquire(&mut c, "pool", "{}");
    assert_eq!(waiter.status, 202, "{}", String::from_utf8_lossy(&waiter.body));
    let waiter = waiter.json()["ticket"].as_str().unwrap().to_string();
    let raised = DECLARATIONS.replacen("limit = 3", "limit = 4", 1);
    let text = std::fs::read_to_string(&s.config_path).unwrap().replace(DECLARATIONS, &raised);
    std::fs::write(&s.config_path, text).unwrap();
    s.reload_and_wait_old_workers_gone(1);
    let mut c = Client::connect(s.addr).unwrap();
    let held = wait_for("the waiter to hold after the reload", || {
        let r = c.get(&format!("/v1/locks/pool/tickets/{waiter}")).unwrap();
        if r.status == 200 && r.json()["status"] == "acquired" {
            Ok(r.json())
        } else {
            Err(String::from_utf8_lossy(&r.body).to_string())
        }
    });
    assert!(held["fence"].as_u64().is_some(), "{held}");
    let status = c.get("/v1/locks/pool").unwrap().json();
    assert_eq!((status["limit"].as_u64(), status["used"].as_u64()), (Some(4), Some(4)), "{status}");
    assert_eq!(status["declared"]["limit"], 4);
    assert_eq!(status["queue_length"], 0);
}

#[test]
fn check_config_refuses_a_bad_declaration_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leasehold.toml");
    let text = "[[locks.declare]]\nname = \"ok\"\n\n[[locks.declare]]\nname = \"bad\"\nlimit = 0\n\n\
                [[locks.declare]]\nprefix = \"rw-\"\nkind = \"rw\"\nqueue = \"lottery\"\n\n\
                [[locks.declare]]\nname = \"ok\"\nadmit_per_minute = 60\n";
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leasehold"))
        .arg("check-config")
        .arg(&file)
        .env_remove("LEASEHOLD_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 problems"), "{stderr}");
    for line in [
        "locks.declare[1].limit: 0 is out of range; it must be between 1 and 10000",
        "locks.declare[2].kind: a read/write lock (kind = \"rw\") has no limit and queues in arrival order",
        "locks.declare[3].name: declares name \"ok\" again (locks.declare[0] did)",
    ] {
        assert!(stderr.contains(line), "{line:?} missing from: {stderr}");
    }
    // Fixed, it passes.
    std::fs::write(&file, "[[locks.declare]]\nname = \"ok\"\nadmit_per_minute = 60\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_leasehold")).arg("check-config").arg(&file).output();
    assert_eq!(out.unwrap().status.code(), Some(0));
}

/// Waiters of the acceptance run.
const WAITERS: u64 = 300;
/// Its rate: a token a second.
const PER_MINUTE: u64 = 60;
/// Its bucket: one token, so grants are at least a second apart.
const BURST: u64 = 1;
const MINUTE_MS: u64 = 60_000;

/// The most grants the bucket lets out within any `span_ms` (docs/api.md, "Admission
/// rate"): its burst, plus one per token interval elapsed.
fn most_grants(span_ms: u64) -> u64 {
    BURST + span_ms * PER_MINUTE / MINUTE_MS
}

/// Checks the grant times `at_ms` (sorted) against the bucket's bound: every window of a
/// minute (from each grant on) holds at most `most_grants(60 s)`, and consecutive grants
/// of a bucket of one are a token interval apart at least.
fn assert_within_the_bucket(at_ms: &[u64]) {
    for (i, &start) in at_ms.iter().enumerate() {
        let in_window = at_ms[i..].iter().take_while(|&&t| t < start + MINUTE_MS).count() as u64;
        assert!(
            in_window <= most_grants(MINUTE_MS),
            "{in_window} grants in the minute from {start}, above the bound {}",
            most_grants(MINUTE_MS)
        );
    }
    for pair in at_ms.windows(2) {
        assert!(pair[1] - pair[0] >= MINUTE_MS / PER_MINUTE, "grants {pair:?} closer than a token interval");
    }
}

#[test]
fn r17_admit_per_minute_60_lets_300_waiters_in_at_the_declared_rate_and_never_faster() {
    // A large limit, so only the rate holds waiters back; waiters and their unclaimed grants
    // stay for the whole run (10 minutes), though nobody polls: each is called back.
    let declared = format!(
        "[locks]\nmax_wait_ms = 600000\n\n[[locks.declare]]\nname = \"waiting-room\"\nlimit = 1000\n\
         admit_per_minute = {PER_MINUTE}\nadmit_burst = {BURST}\nwaiter_ttl_ms = 600000\nclaim_ms = 600000\n\n\
         [outbox]\nallow_local = true\n"
    );
    let s = Server::start(&config("workers = 1", &declared));
    let sink = Sink::new(200);
    let mut c = Client::connect(s.addr).unwrap();
    // The first grant takes the bucket's only token at once (it is full), and starts the clock.
    let plug = acquire(&mut c, "waiting-room", r#"{"ttl_ms":600000}"#);
    assert_eq!(plug.status, 200, "{}", String::from_utf8_lossy(&plug.body));
    let started = Instant::now();
    let first_ms = plug.json()["at_ms"].as_u64().unwrap();
    let body = serde_json::json!({"ttl_ms": 600000, "callback": sink.url()}).to_string();
    let mut tickets = std::collections::HashSet::new();
    for i in 1..=WAITERS {
        let r = acquire(&mut c, "waiting-room", &body);
        assert_eq!(r.status, 202, "waiter {i}: {}", String::from_utf8_lossy(&r.body));
        let place = r.json();
        tickets.insert(place["ticket"].as_str().unwrap().to_string());
        // Its estimate is when its token comes: the i-th after the first grant's.
        let eta_ms = place["eta_ms"].as_u64().unwrap_or_else(|| panic!("waiter {i} has no estimate: {place}"));
        let expected_ms = (i * MINUTE_MS / PER_MINUTE) as i64 - started.elapsed().as_millis() as i64;
        assert!((eta_ms as i64 - expected_ms).abs() <= 1_500, "waiter {i}: eta {eta_ms} ms, expected {expected_ms}");
    }
    // Every grant is called back with the server's time; the bound is checked as they come,
    // so a rate that is too fast fails within its first minute.
    let at_ms = wait_for_within(
        "every waiter to be admitted and called back",
        Duration::from_millis(WAITERS * MINUTE_MS / PER_MINUTE),
        || {
            let mut at_ms: Vec<u64> = vec![first_ms];
            for r in sink.received() {
                let event: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                if event["event"] == "acquired" {
                    assert!(tickets.contains(event["ticket"].as_str().unwrap()), "{event}");
                    at_ms.push(event["at_ms"].as_u64().unwrap());
                }
            }
            at_ms.sort_unstable();
            assert_within_the_bucket(&at_ms);
            if at_ms.len() as u64 == WAITERS + 1 {
                Ok(at_ms)
            } else {
                Err(format!("{} of {} granted", at_ms.len(), WAITERS + 1))
            }
        },
    );
    // The rate was reached, not only respected: the grants span one token interval per
    // waiter (the first grant took the burst), and not much more.
    let span_ms = at_ms.last().unwrap() - at_ms[0];
    let least_ms = (WAITERS + 1 - BURST) * MINUTE_MS / PER_MINUTE;
    assert!(span_ms >= least_ms, "{span_ms} ms for {} grants", at_ms.len());
    assert!(span_ms <= least_ms + least_ms / 20, "{span_ms} ms for {} grants: the rate was not reached", at_ms.len());
    let busiest =
        (0..at_ms.len()).map(|i| at_ms[i..].iter().take_while(|&&t| t < at_ms[i] + MINUTE_MS).count()).max().unwrap();
    // A fresh connection: the first one sat idle past the keep-alive timeout.
    let mut c = Client::connect(s.addr).unwrap();
    let status = c.get("/v1/locks/waiting-room").unwrap().json();
    assert_eq!((status["used"].as_u64(), status["queue_length"].as_u64()), (Some(WAITERS + 1), Some(0)), "{status}");
    println!(
        "admission rate: {} grants over {span_ms} ms (least {least_ms}); busiest minute {busiest} (bound {}); \
         test ran {:?}",
        at_ms.len(),
        most_grants(MINUTE_MS),
        started.elapsed()
    );
}
