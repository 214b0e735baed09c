//! Small Resource Server compatibility: the scenarios of the research report (§8.3, each
//! marked compat or fix) and the PHP client's exact request sequences (§8.2), at the HTTP
//! level against the real server.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::http::{Client, Reply};
use crate::support::{config, Server};

const READ: &str = "read-key-0001";
const READ_LOCK: &str = "lock-key-0002";
const WRITE: &str = "write-key-0003";

/// A server with the three Small Resource Server keys, as its environment would set them.
fn server(extra: &str) -> Server {
    Server::start_with_env(
        &config("workers = 2", extra),
        &[("RESOURCE_READ", READ), ("RESOURCE_READ_LOCK", READ_LOCK), ("RESOURCE_WRITE", WRITE)],
    )
}

/// The PHP client's request: `accept: application/json`, `x-api-key`, and `X-Ticket` when
/// it has one.
fn php(c: &mut Client, method: &str, path: &str, key: &str, ticket: Option<&str>, body: &str) -> Reply {
    let mut headers = vec![("accept", "application/json"), ("x-api-key", key)];
    if let Some(t) = ticket {
        headers.push(("X-Ticket", t));
    }
    if !body.is_empty() {
        headers.push(("content-type", "application/json"));
    }
    c.request(method, path, &headers, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// The `X-Ticket` header, read the way the PHP client reads it: by exact name.
fn x_ticket(r: &Reply) -> String {
    r.headers
        .iter()
        .find(|(n, _)| n == "X-Ticket")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no header spelled exactly X-Ticket in {:?}", r.headers))
}

fn create(c: &mut Client, name: &str, timeout: i64) -> Reply {
    php(c, "POST", "/resource", WRITE, None, &serde_json::json!({"name": name, "timeout": timeout}).to_string())
}

#[test]
fn s1_s2_s3_health_keys_and_creation() {
    let s = server("");
    let mut c = Client::connect(s.addr).unwrap();
    // 1 (compat): any method, no key, the original's spelling.
    for method in ["GET", "POST", "DELETE"] {
        let r = c.request(method, "/health", &[], "").unwrap();
        assert_eq!((r.status, r.json()), (200, serde_json::json!({"heath": "ok"})));
    }
    // 2 (compat): missing key and wrong key are 401; a READ key writing is 401.
    assert_eq!(c.request("POST", "/resource", &[], "{\"name\":\"x\"}").unwrap().status, 401);
    assert_eq!(php(&mut c, "POST", "/resource", "nope-nope", None, "{\"name\":\"x\"}").status, 401);
    assert_eq!(php(&mut c, "POST", "/resource", READ, None, "{\"name\":\"x\"}").status, 401);
    assert_eq!(php(&mut c, "PUT", "/resource/x/a", READ_LOCK, None, "{}").status, 401);
    // 3 (compat): 201 with id, name and timeout; a duplicate is 409.
    let r = create(&mut c, "printer", 120);
    assert_eq!(r.status, 201);
    let body = r.json();
    assert_eq!((body["name"].as_str(), body["timeout"].as_i64()), (Some("printer"), Some(120)));
    let id = body["id"].as_str().unwrap();
    assert_eq!(id.len(), 26);
    assert!(id.bytes().all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b)), "Crockford base32: {id}");
    let dup = create(&mut c, "printer", 5);
    assert_eq!(dup.status, 409);
    assert_eq!(dup.json()["message"], "Resource already exists");
    // Fix: a missing or invalid body is 400, not 500.
    assert_eq!(php(&mut c, "POST", "/resource", WRITE, None, "").status, 400);
    assert_eq!(php(&mut c, "POST", "/resource", WRITE, None, "{\"timeout\":3}").status, 400);
}

#[test]
fn s4_s5_s6_s7_empty_selector_write_release_fifo_and_reentry() {
    let s = server("");
    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(create(&mut c, "printer", 1).status, 201);
    // 4 (compat): a locking GET of an empty selector answers 202 + X-Ticket, and holds.
    let a = php(&mut c, "GET", "/resource/printer/A4?lock=1", READ_LOCK, None, "");
    assert_eq!((a.status, a.json()), (202, serde_json::json!({"unavailable": true})));
    let ta = x_ticket(&a);
    // 7 (compat): re-entrance with the holder's ticket: success, the queue does not grow.
    let again = php(&mut c, "PUT", "/resource/printer/A4/lock", READ_LOCK, Some(&ta), "");
    assert_eq!((again.status, again.json(), x_ticket(&again)), (200, serde_json::json!({"locked": true}), ta.clone()));
    // 6 (compat): B then C queue (timeout 1 s: each gets 202 / locked:false with its ticket).
    let b = php(&mut c, "GET", "/resource/printer/A4", READ_LOCK, None, "");
    assert_eq!(b.status, 202);
    let tb = x_ticket(&b);
    let cc = php(&mut c, "PUT", "/resource/printer/A4/lock", READ_LOCK, None, "");
    assert_eq!(cc.json(), serde_json::json!({"locked": false}));
    let tc = x_ticket(&cc);
    let status = c.request("GET", "/v1/locks/printer", &[("x-api-key", READ)], "").unwrap().json();
    assert_eq!(status["queue_length"], 2, "re-entry did not queue: {status}");
    // 5 (compat): PUT with the holder's ticket stores, answers 204, and releases.
    let put = php(&mut c, "PUT", "/resource/printer/A4", WRITE, Some(&ta), "{\"status\":\"ready\"}");
    assert_eq!((put.status, put.body.len()), (204, 0));
    // B, polling with its ticket, holds now and reads the data as a JSON string.
    let b2 = php(&mut c, "GET", "/resource/printer/A4", READ_LOCK, Some(&tb), "");
    assert_eq!((b2.status, x_ticket(&b2)), (200, tb.clone()));
    let row = b2.json();
    assert_eq!(row["data"], "{\"status\":\"ready\"}", "data is a JSON string");
    assert_eq!(row["selector"], "A4");
    assert_eq!(row["idResource"].as_str().unwrap().len(), 26);
    // C still waits behind B; B unlocks; C holds.
    assert_eq!(php(&mut c, "PUT", "/resource/printer/A4/lock", READ_LOCK, Some(&tc), "").json()["locked"], false);
    let unlocked = php(&mut c, "PUT", "/resource/printer/A4/unlock", READ_LOCK, Some(&tb), "");
    assert_eq!((unlocked.status, unlocked.json()), (200, serde_json::json!({"unlocked": true})));
    assert_eq!(php(&mut c, "PUT", "/resource/printer/A4/lock", READ_LOCK, Some(&tc), "").json()["locked"], true);
}

#[test]
fn s8_s9_unlock_by_anyone_and_the_lock_covers_the_whole_resource() {
    let s = server("");
    let mut c = Client::connect(s.addr).unwrap();
    create(&mut c, "doc", 1);
    let holder = php(&mut c, "PUT", "/resource/doc/A/lock", READ_LOCK, None, "");
    let th = x_ticket(&holder);
    // 9 (compat): holding through selector A blocks selector B.
    let other = php(&mut c, "PUT", "/resource/doc/B/lock", READ_LOCK, None, "");
    assert_eq!(other.json()["locked"], false);
    let tw = x_ticket(&other);
    // 8 (compat): unlock with an unknown ticket says unlocked; a waiter that unlocks leaves.
    let unknown = php(&mut c, "POST", "/resource/doc/A/unlock", READ_LOCK, Some("AAAAAAAAAAAAAAAAAAAAAA"), "");
    assert_eq!((unknown.status, unknown.json()), (200, serde_json::json!({"unlocked": true})));
    assert_eq!(php(&mut c, "PUT", "/resource/doc/B/unlock", READ_LOCK, Some(&tw), "").status, 200);
    let status = c.request("GET", "/v1/locks/doc", &[("x-api-key", READ)], "").unwrap().json();
    assert_eq!(status["queue_length"], 0, "the waiter left");
    assert_eq!(php(&mut c, "PUT", "/resource/doc/A/unlock", READ_LOCK, Some(&th), "").status, 200);
    assert_eq!(c.request("GET", "/v1/locks/doc", &[("x-api-key", READ)], "").unwrap().status, 404, "free");
}

#[test]
fn s10_timeouts_are_the_server_side_wait_and_a_gone_client_stops_waiting() {
    let s = server("[locks]\nmax_wait_ms = 3000\n");
    let mut c = Client::connect(s.addr).unwrap();
    create(&mut c, "once", -1);
    create(&mut c, "forever", 0);
    assert_eq!(php(&mut c, "PUT", "/resource/once/x/lock", READ_LOCK, None, "").json()["locked"], true);
    let h2 = x_ticket(&php(&mut c, "PUT", "/resource/forever/x/lock", READ_LOCK, None, ""));
    // timeout < 0: one try, answered at once. A try that waited would be answered only
    // after max_wait_ms (3 s), so that is the bound: one request takes a few ms when idle,
    // and the bound leaves room for the stalls of a second or more a loaded machine shows.
    let started = Instant::now();
    assert_eq!(php(&mut c, "PUT", "/resource/once/x/lock", READ_LOCK, None, "").json()["locked"], false);
    assert!(started.elapsed() < Duration::from_millis(3_000), "a try-once waited");
    // timeout = 0: waits, but (fix) only up to max_wait_ms, not forever. (A lower bound: a
    // slow machine only makes the wait longer. The keeper's clock counts whole milliseconds,
    // so its deadline may fall up to 1 ms before the request's arrival + 3 s: hence 2 ms.)
    let started = Instant::now();
    let r = php(&mut c, "PUT", "/resource/forever/x/lock", READ_LOCK, None, "");
    assert_eq!(r.json()["locked"], false);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(3_000 - 2), "the server-side wait was not held: {waited:?}");
    // timeout = 0 and the lock is freed while waiting: the waiter gets it.
    let waiting = std::thread::spawn({
        let addr = s.addr;
        move || php(&mut Client::connect(addr).unwrap(), "GET", "/resource/forever/x", READ_LOCK, None, "")
    });
    s.wait_waiting_requests(1, Some(READ));
    assert_eq!(php(&mut c, "PUT", "/resource/forever/x/unlock", READ_LOCK, Some(&h2), "").status, 200);
    let got = waiting.join().unwrap();
    assert_eq!(got.status, 202, "holds the lock of an empty selector");
    // Fix: a client that hangs up while waiting stops waiting (no lock taken for it later).
    let mut gone = TcpStream::connect(s.addr).unwrap();
    write!(
        gone,
        "PUT /resource/forever/x/lock HTTP/1.1\r\nHost: x\r\nx-api-key: {READ_LOCK}\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    s.wait_waiting_requests(1, Some(READ));
    drop(gone);
    s.wait_waiting_requests(0, Some(READ));
}

#[test]
fn s11_s12_s13_s14_the_deliberate_fixes() {
    let s = server("[locks]\ncompat_lease_ttl_ms = 45000\n");
    let mut c = Client::connect(s.addr).unwrap();
    // 11 (fix): unknown resource is 404 on GET, lock and PUT.
    assert_eq!(php(&mut c, "GET", "/resource/nope/a", READ_LOCK, None, "").status, 404);
    assert_eq!(php(&mut c, "GET", "/resource/nope/a?lock=0", READ, None, "").status, 404);
    assert_eq!(php(&mut c, "PUT", "/resource/nope/a/lock", READ_LOCK, None, "").status, 404);
    assert_eq!(php(&mut c, "PUT", "/resource/nope/a", WRITE, None, "{}").status, 404);
    create(&mut c, "box", 1);
    // 12 (fix): PUT without a ticket locks, writes, releases: 204 and the lock is free.
    assert_eq!(php(&mut c, "PUT", "/resource/box/a", WRITE, None, "[1,2]").status, 204);
    assert_eq!(c.request("GET", "/v1/locks/box", &[("x-api-key", READ)], "").unwrap().json()["used"], 0);
    // A PUT that cannot get the lock in time: 409 and nothing written.
    let holder = x_ticket(&php(&mut c, "PUT", "/resource/box/a/lock", READ_LOCK, None, ""));
    let refused = php(&mut c, "PUT", "/resource/box/a", WRITE, None, "[3]");
    assert_eq!((refused.status, refused.json()["error"].as_str()), (409, Some("unavailable")));
    let read = php(&mut c, "GET", "/resource/box/a?lock=0", READ, None, "");
    assert_eq!((read.status, read.json()["data"].as_str()), (200, Some("[1,2]")), "nothing was written");
    assert!(read.headers.iter().all(|(n, _)| n != "X-Ticket"), "no ticket without a lock");
    // Invalid JSON is 400 and writes nothing.
    assert_eq!(php(&mut c, "PUT", "/resource/box/a", WRITE, Some(&holder), "{oops").status, 400);
    // 13 (fix): lock=0 on a missing selector is 404.
    assert_eq!(php(&mut c, "GET", "/resource/box/none?lock=0", READ, None, "").status, 404);
    // 14 (fix): a READ key cannot lock, neither by GET nor by /lock.
    assert_eq!(php(&mut c, "GET", "/resource/box/a", READ, None, "").status, 401);
    assert_eq!(php(&mut c, "PUT", "/resource/box/a/lock", READ, None, "").status, 401);
    // Leases, not eternal locks: the compat lock carries a TTL (compat_lease_ttl_ms, set to
    // 45 s above).
    let view = c.request("GET", "/v1/locks/box", &[("x-api-key", READ)], "").unwrap().json();
    let left = view["holders"][0]["expires_in_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= 45_000, "{view}");
}

#[test]
fn the_php_client_sequences() {
    // The resource's 300 s timeout is capped by max_wait_ms: a busy read waits 0.5 s here.
    let s = server("[locks]\nmax_wait_ms = 500\n");
    let mut c = Client::connect(s.addr).unwrap();
    // Factory::createResource('printer', 300): POST /resource {name, timeout} → 201.
    let created = create(&mut c, "printer", 300);
    assert_eq!(created.status, 201);
    // Resource::writeData('queue', [...]) with no ticket yet: PUT → 204.
    assert_eq!(php(&mut c, "PUT", "/resource/printer/queue", WRITE, None, "{\"jobs\":[1,2]}").status, 204);
    // getData('queue', true): GET ?lock=1 → 200; `data` decodes to the document; the ticket
    // comes in X-Ticket.
    let got = php(&mut c, "GET", "/resource/printer/queue?lock=1", WRITE, None, "");
    assert_eq!(got.status, 200);
    assert_eq!(got.header("Content-Type"), Some("application/json"));
    let doc: serde_json::Value = serde_json::from_str(got.json()["data"].as_str().unwrap()).unwrap();
    assert_eq!(doc, serde_json::json!({"jobs": [1, 2]}));
    let ticket = x_ticket(&got);
    // writeData after the GET sends that X-Ticket: 204, and the lock is released.
    assert_eq!(php(&mut c, "PUT", "/resource/printer/queue", WRITE, Some(&ticket), "{\"jobs\":[]}").status, 204);
    // lockData: 200 {"locked": true} with a new ticket.
    let locked = php(&mut c, "PUT", "/resource/printer/queue/lock", WRITE, Some(&ticket), "");
    assert_eq!(locked.json(), serde_json::json!({"locked": true}));
    let ticket = x_ticket(&locked);
    // Another client's getData('queue', true) is 202 (the bundle throws EmptyDataException)
    // and keeps its own ticket.
    let mut other = Client::connect(s.addr).unwrap();
    let busy = php(&mut other, "GET", "/resource/printer/queue?lock=1", WRITE, None, "");
    assert_eq!((busy.status, busy.json()), (202, serde_json::json!({"unavailable": true})));
    let other_ticket = x_ticket(&busy);
    assert_ne!(other_ticket, ticket);
    // unlockData after a 202 with a ticket: PUT …/unlock with X-Ticket → 200.
    assert_eq!(php(&mut other, "PUT", "/resource/printer/queue/unlock", WRITE, Some(&other_ticket), "").status, 200);
    assert_eq!(php(&mut c, "PUT", "/resource/printer/queue/unlock", WRITE, Some(&ticket), "").status, 200);
    // getData('queue', false): ?lock=0 → 200 with the data.
    let plain = php(&mut c, "GET", "/resource/printer/queue?lock=0", WRITE, None, "");
    assert_eq!(plain.json()["data"], "{\"jobs\":[]}");
}
