//! The outbox end to end: calls accepted over HTTP, delivered by the courier to a local
//! sink with retries and backoff, dead-lettered and retried by hand, bounded, refused for
//! targets on this machine, lock callbacks, and kill -9 of the courier and of the keeper
//! in the middle of deliveries.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::http::Client;
use crate::support::{config, signal_pid, wait_for, wait_for_within, wait_until, Server};

/// One request the sink received.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    /// When the whole request had arrived.
    pub(crate) at: Instant,
    /// When the answer was decided, just before it was written.
    answered: Instant,
    /// What the sink answered.
    pub(crate) status: u16,
    pub(crate) headers: HashMap<String, String>,
    pub(crate) body: String,
}

/// How the sink answers one request.
#[derive(Debug, Clone, Copy)]
struct Answer {
    status: u16,
    /// A `Retry-After` header, in seconds.
    retry_after_s: Option<u32>,
}

/// `status` with no `Retry-After`.
const fn answer(status: u16) -> Answer {
    Answer { status, retry_after_s: None }
}

/// A local HTTP endpoint. It answers the requests it receives, in the order they arrive,
/// from its script, and every request past the script with the status in `status`
/// (settable). While `hold` is set, it keeps each request waiting for its answer (a slow
/// target), and answers it when released if its client is still there.
pub(crate) struct Sink {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    received: Arc<Mutex<Vec<Received>>>,
    hold: Arc<(Mutex<bool>, Condvar)>,
}

impl Sink {
    pub(crate) fn new(status: u16) -> Sink {
        Self::scripted(&[], status)
    }

    /// Answers the first requests from `script`, in order, then every other with `then`:
    /// what each attempt gets is decided before it is made, whatever the timing.
    fn scripted(script: &[Answer], then: u16) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(then));
        let received = Arc::new(Mutex::new(Vec::new()));
        let hold = Arc::new((Mutex::new(false), Condvar::new()));
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<Answer>>()));
        let (st, rec, held) = (Arc::clone(&status), Arc::clone(&received), Arc::clone(&hold));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (st, rec, held, script) =
                    (Arc::clone(&st), Arc::clone(&rec), Arc::clone(&held), Arc::clone(&script));
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let Ok(n) = conn.read(&mut chunk) else { return };
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&got).to_string();
                        let Some(end) = text.find("\r\n\r\n") else { continue };
                        let headers: HashMap<String, String> = text[..end]
                            .lines()
                            .skip(1)
                            .filter_map(|l| l.split_once(':'))
                            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                            .collect();
                        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                        if got.len() < end + 4 + len {
                            continue;
                        }
                        let at = Instant::now();
                        let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
                        let (lock, released) = &*held;
                        let mut holding = lock.lock().unwrap();
                        let was_held = *holding;
                        while *holding {
                            holding = released.wait(holding).unwrap();
                        }
                        drop(holding);
                        // A held request's client may have gone meanwhile (a killed courier):
                        // then it is recorded as not answered (status 0).
                        let planned = if was_held && client_gone(&mut conn) {
                            answer(0)
                        } else {
                            script.lock().unwrap().pop_front().unwrap_or_else(|| answer(st.load(Ordering::SeqCst)))
                        };
                        let status = planned.status;
                        let retry_after =
                            planned.retry_after_s.map(|s| format!("Retry-After: {s}\r\n")).unwrap_or_default();
                        // Recorded before it is written, so whatever the server does on
                        // this answer comes after the test can see it.
                        rec.lock().unwrap().push(Received { at, answered: Instant::now(), status, headers, body });
                        let _ = conn.write_all(
                            format!(
                                "HTTP/1.1 {status} X\r\n{retry_after}Content-Length: 2\r\nConnection: close\r\n\r\nok"
                            )
                            .as_bytes(),
                        );
                        return;
                    }
                });
            }
        });
        Sink { addr, status, received, hold }
    }

    /// Holds (`true`) or releases every request.
    fn set_hold(&self, on: bool) {
        *self.hold.0.lock().unwrap() = on;
        self.hold.1.notify_all();
    }

    /// Waits until `n` requests are being held.
    fn wait_held(&self, n: usize) {
        // Each connection's thread holds one more handle on `hold` while it runs.
        wait_until(&format!("{n} requests held by the sink"), || Arc::strong_count(&self.hold) >= 2 + n);
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub(crate) fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have been answered (or are being answered).
    pub(crate) fn wait_for(&self, n: usize) -> Vec<Received> {
        wait_for(&format!("{n} requests to reach the sink"), || {
            let got = self.received();
            if got.len() >= n {
                Ok(got)
            } else {
                Err(got.len())
            }
        })
    }
}

/// Whether the client of `conn` has closed its end (it sends nothing more after its
/// request, so any end of input means it is gone).
fn client_gone(conn: &mut std::net::TcpStream) -> bool {
    conn.set_nonblocking(true).unwrap();
    let gone = !matches!(conn.read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    conn.set_nonblocking(false).unwrap();
    gone
}

/// A server whose outbox may call loopback, with a fast backoff.
fn server(extra: &str) -> Server {
    Server::start(&config(
        "workers = 1\ncrash_storm_exits = 100\nrestart_delay_max_ms = 100",
        &format!("[outbox]\nallow_local = true\nbase_ms = 100\ncap_ms = 400\nsecret = \"s3cret\"\n{extra}"),
    ))
}

fn put(c: &mut Client, body: serde_json::Value) -> (u16, serde_json::Value) {
    let r = c.post("/v1/outbox", &body.to_string()).unwrap();
    (r.status, r.json())
}

/// Waits until `GET path` answers `status`.
fn wait_status(c: &mut Client, path: &str, status: u16) -> serde_json::Value {
    wait_for(&format!("GET {path} to answer {status}"), || {
        let r = c.get(path).unwrap();
        if r.status == status {
            Ok(r.json())
        } else {
            Err(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)))
        }
    })
}

/// Waits until the entry `id` is in `state`; returns it.
fn wait_state(c: &mut Client, id: &str, state: &str) -> serde_json::Value {
    wait_for(&format!("outbox entry {id} to be {state}"), || {
        let entry = c.get(&format!("/v1/outbox/{id}")).unwrap().json();
        if entry["state"] == state {
            Ok(entry)
        } else {
            Err(entry)
        }
    })
}

/// The server's metrics, as text.
fn metrics(c: &mut Client) -> String {
    String::from_utf8(c.get("/metrics").unwrap().body).unwrap()
}

/// The value of the metric sample `name` (with its labels), if the metrics have it.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_call_that_fails_twice_is_delivered_once_with_backoff_its_key_and_signature() {
    let s = server("");
    // Each attempt's answer is set before the call is made: two failures (the first asking
    // for a second's pause), then success. No switching while retries are under way.
    let sink = Sink::scripted(&[Answer { status: 503, retry_after_s: Some(1) }, answer(503), answer(200)], 500);
    let mut c = Client::connect(s.addr).unwrap();
    let (status, accepted) = put(&mut c, serde_json::json!({"url": sink.url(), "body": {"n": 1}, "max_attempts": 5}));
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    // Gone once delivered: no further attempt can come.
    wait_status(&mut c, &format!("/v1/outbox/{id}"), 404);
    let all = sink.received();
    let statuses: Vec<u16> = all.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 503, 200], "exactly one success after two failures");
    for r in &all {
        assert_eq!(r.headers.get("idempotency-key"), Some(&id));
        assert_eq!(r.body, r#"{"n":1}"#);
        let ts: u64 = r.headers["x-leasehold-timestamp"].parse().unwrap();
        let expected = leasehold::core::signature::sign(b"s3cret", ts, r.body.as_bytes());
        assert_eq!(r.headers.get("x-leasehold-signature"), Some(&expected));
    }
    // Each attempt after the previous one's answer; the target's Retry-After (1 s, longer
    // than the 100 ms backoff ceiling) is a floor. A lower bound, so a slow machine cannot
    // break it: the server's clock counts whole milliseconds, and 10 ms covers that and the
    // drift between its wall clock and this test's monotonic one.
    assert!(all.windows(2).all(|w| w[1].at > w[0].answered), "attempts overlap");
    let paused = all[1].at - all[0].answered;
    assert!(paused >= Duration::from_millis(1_000 - 10), "the retry came {paused:?} after a Retry-After: 1");
    let text = metrics(&mut c);
    for (sample, value) in [
        ("leasehold_deliveries_total{result=\"delivered\"}", 1.0),
        ("leasehold_deliveries_total{result=\"retried\"}", 2.0),
        ("leasehold_deliveries_total{result=\"failed\"}", 0.0),
        ("leasehold_delivery_seconds_count", 3.0),
    ] {
        assert_eq!(metric(&text, sample), Some(value), "{sample} in:\n{text}");
    }
}

#[test]
fn a_call_that_keeps_failing_is_dead_lettered_then_retried_by_hand() {
    let s = server("");
    let sink = Sink::new(500);
    let mut c = Client::connect(s.addr).unwrap();
    let (_, accepted) = put(&mut c, serde_json::json!({"url": sink.url(), "max_attempts": 3}));
    let id = accepted["id"].as_str().unwrap().to_string();
    let failed = wait_for("the call to be dead-lettered", || {
        let page = c.get("/v1/outbox?state=failed").unwrap().json();
        page["entries"].as_array().and_then(|e| e.first()).cloned().ok_or(page)
    });
    assert_eq!((failed["id"].as_str(), failed["attempts"].as_u64()), (Some(id.as_str()), Some(3)));
    assert!(failed["last_error"].as_str().unwrap().contains("HTTP 500"), "{failed}");
    assert_eq!(sink.received().len(), 3, "max_attempts attempts, no more");
    // A 4xx at once: not retried.
    sink.status.store(404, Ordering::SeqCst);
    let (_, other) = put(&mut c, serde_json::json!({"url": sink.url(), "max_attempts": 9}));
    let other_id = other["id"].as_str().unwrap();
    let entry = wait_state(&mut c, other_id, "failed");
    assert_eq!(entry["attempts"], 1, "a 404 was retried: {entry}");
    // Retried by hand once the target works.
    sink.status.store(200, Ordering::SeqCst);
    let r = c.post(&format!("/v1/outbox/{id}/retry"), "").unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    wait_status(&mut c, &format!("/v1/outbox/{id}"), 404);
    // Retrying what is not failed, or an unknown id, is refused; a failed entry deletes.
    assert_eq!(c.post(&format!("/v1/outbox/{id}/retry"), "").unwrap().status, 404);
    assert_eq!(c.request("DELETE", &format!("/v1/outbox/{other_id}"), &[], "").unwrap().status, 200);
    assert_eq!(c.get(&format!("/v1/outbox/{other_id}")).unwrap().status, 404);
}

#[test]
fn a_full_outbox_refuses_with_503_and_loses_nothing_and_local_targets_are_refused() {
    let s = server("max_entries = 2");
    let sink = Sink::new(200);
    let mut c = Client::connect(s.addr).unwrap();
    let later = 4_000_000_000_000u64; // far in the future: the calls stay pending
    for _ in 0..2 {
        assert_eq!(put(&mut c, serde_json::json!({"url": sink.url(), "not_before_ms": later})).0, 202);
    }
    let (status, body) = put(&mut c, serde_json::json!({"url": sink.url()}));
    assert_eq!((status, body["error"].as_str()), (503, Some("outbox_full")), "{body}");
    let page = c.get("/v1/outbox").unwrap().json();
    assert_eq!(page["entries"].as_array().unwrap().len(), 2, "both accepted calls are kept");
    // The default policy: nothing on this machine, and only http(s).
    let strict = Server::start(&config("workers = 1", ""));
    let mut c = Client::connect(strict.addr).unwrap();
    for url in
        [sink.url(), "http://localhost:9/x".to_string(), "http://169.254.169.254/".to_string(), "ftp://h/".to_string()]
    {
        let (status, body) = put(&mut c, serde_json::json!({"url": url}));
        assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "{url}: {body}");
    }
    let r = c.post("/v1/locks/x/acquire", &serde_json::json!({"callback": sink.url()}).to_string()).unwrap();
    assert_eq!(r.status, 400, "a callback to this machine is refused too");
    let (status, _) = put(&mut c, serde_json::json!({"url": "https://example.com/x", "headers": {"Host": "evil"}}));
    assert_eq!(status, 400, "headers the server sets cannot be given");
}

#[test]
fn callbacks_fire_when_a_waiter_is_admitted_and_when_a_lease_expires() {
    let s = server("");
    let sink = Sink::new(200);
    let mut c = Client::connect(s.addr).unwrap();
    let held = c.post("/v1/locks/cb/acquire", r#"{"ttl_ms":60000}"#).unwrap().json();
    let body = serde_json::json!({"ttl_ms": 300, "callback": sink.url()}).to_string();
    let queued = c.post("/v1/locks/cb/acquire", &body).unwrap().json();
    assert_eq!(queued["status"], "queued");
    let waiter = queued["ticket"].as_str().unwrap().to_string();
    // The holder leaves: the waiter is admitted (not connected: a claim window), then its
    // lease runs out without a release.
    let ticket = held["ticket"].as_str().unwrap();
    assert_eq!(c.post("/v1/locks/cb/release", &format!(r#"{{"ticket":"{ticket}"}}"#)).unwrap().status, 200);
    let got = sink.wait_for(2);
    let events: Vec<serde_json::Value> = got.iter().map(|r| serde_json::from_str(&r.body).unwrap()).collect();
    assert_eq!(events[0]["event"], "acquired");
    assert_eq!(events[1]["event"], "expired");
    for e in &events {
        assert_eq!((e["lock"].as_str(), e["ticket"].as_str()), (Some("cb"), Some(waiter.as_str())));
        assert!(e["fence"].as_u64().unwrap() > held["fence"].as_u64().unwrap());
    }
    assert_ne!(got[0].headers["idempotency-key"], got[1].headers["idempotency-key"]);
}

#[test]
fn r17_a_callback_only_waiter_outlasts_silence_then_is_admitted_and_called_back() {
    // Issue 17: a waiter that never polls is dropped after `locks.waiter_ttl_ms` (10 s by
    // default), unless it gave a callback: then it waits for its webhook until its wait ends
    // (here `max_wait_ms`, 2 minutes, since it holds no request). The holder keeps the lock
    // through 30 s of silence from both waiters, three waiter TTLs, as the issue asks.
    const SILENCE: Duration = Duration::from_secs(30);
    let s = server("\n[locks]\nmax_wait_ms = 120000");
    let sink = Sink::new(200);
    let mut c = Client::connect(s.addr).unwrap();
    let held = c.post("/v1/locks/quiet/acquire", r#"{"ttl_ms":120000}"#).unwrap().json();
    let plain_sent = Instant::now();
    let plain = c.post("/v1/locks/quiet/acquire", r#"{"ttl_ms":120000}"#).unwrap();
    assert_eq!(plain.status, 202, "a plain waiter, for contrast");
    let body = serde_json::json!({"ttl_ms": 120000, "callback": sink.url()}).to_string();
    let queued = c.post("/v1/locks/quiet/acquire", &body).unwrap();
    assert_eq!(queued.status, 202, "{}", String::from_utf8_lossy(&queued.body));
    let waiter = queued.json()["ticket"].as_str().unwrap().to_string();
    let silent_since = Instant::now();
    // Silence from both waiters: only the lock's status is read, which is no ticket's
    // presence. The callback waiter is in the queue at every look; the plain one leaves
    // after one waiter TTL.
    let (mut looks, mut plain_left) = (0, None);
    wait_for_within("30 s of silence, with only the callback waiter still queued", SILENCE, || {
        let lock = c.get("/v1/locks/quiet").unwrap().json();
        let queue_length = lock["queue_length"].as_u64().unwrap();
        assert!(queue_length >= 1, "the callback waiter was dropped after {:?}: {lock}", silent_since.elapsed());
        if queue_length == 1 {
            plain_left.get_or_insert_with(|| plain_sent.elapsed());
        }
        looks += 1;
        if silent_since.elapsed() >= SILENCE && queue_length == 1 {
            Ok(())
        } else {
            Err(format!("{:?} of silence, {queue_length} queued", silent_since.elapsed()))
        }
    });
    assert!(looks > 1, "the queue was looked at through the silence");
    let plain_left = plain_left.expect("the plain waiter left");
    assert!(plain_left >= Duration::from_secs(10), "the plain waiter left after {plain_left:?}, before its TTL");
    assert!(sink.received().is_empty(), "no callback before the admission");
    // The holder leaves: the silent waiter is admitted and called back.
    let ticket = held["ticket"].as_str().unwrap();
    assert_eq!(c.post("/v1/locks/quiet/release", &format!(r#"{{"ticket":"{ticket}"}}"#)).unwrap().status, 200);
    let got = sink.wait_for(1);
    let event: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!((event["event"].as_str(), event["ticket"].as_str()), (Some("acquired"), Some(waiter.as_str())));
    assert!(event["fence"].as_u64().unwrap() > held["fence"].as_u64().unwrap());
    let lock = c.get("/v1/locks/quiet").unwrap().json();
    assert_eq!(lock["holders"].as_array().map(Vec::len), Some(1), "{lock}");
    println!("r17: the callback waiter was admitted after {:?} of silence", silent_since.elapsed());
}

#[test]
fn kill_9_of_the_courier_and_of_the_keeper_loses_no_call() {
    let mut s = server("");
    let sink = Sink::new(503);
    let mut c = Client::connect(s.addr).unwrap();
    let ids: Vec<String> = (0..10)
        .map(|i| {
            put(&mut c, serde_json::json!({"url": sink.url(), "body": {"i": i}, "max_attempts": 25})).1["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // Deliveries are failing and being retried; then the target hangs, so calls are in
    // flight with the courier when it is killed.
    sink.wait_for(5);
    sink.set_hold(true);
    sink.wait_held(1);
    let courier = s.courier_pid().expect("a courier");
    signal_pid(courier, Signal::SIGKILL);
    wait_until("a new courier", || s.courier_pid().is_some_and(|p| p != courier));
    // The calls the dead courier held are made again by the new one (still held here),
    // and then the keeper dies with calls in flight too.
    sink.wait_held(2);
    signal_pid(s.keeper_pid(), Signal::SIGKILL);
    s.wait_note("keeper down");
    s.wait_note("keeper up");
    // The target recovers: every accepted call arrives, under its own key.
    sink.status.store(200, Ordering::SeqCst);
    sink.set_hold(false);
    let mut c = Client::connect(s.addr).unwrap();
    for id in &ids {
        wait_status(&mut c, &format!("/v1/outbox/{id}"), 404);
    }
    let delivered: std::collections::HashSet<String> =
        sink.received().iter().filter(|r| r.status == 200).map(|r| r.headers["idempotency-key"].clone()).collect();
    for id in &ids {
        assert!(delivered.contains(id), "{id} never reached the sink");
    }
}

/// POSTs a call to `url` and returns the status and error code.
fn submit(c: &mut Client, url: &str) -> (u16, String) {
    let (status, body) = put(c, serde_json::json!({"url": url, "not_before_ms": 4_000_000_000_000u64}));
    (status, body["error"].as_str().unwrap_or_default().to_string())
}

#[test]
fn r12_targets_on_this_host_or_private_networks_are_refused_in_every_spelling() {
    let s = Server::start(&config("workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    let mut urls: Vec<String> = [
        "http://127.1/",
        "http://0x7f000001/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://127.0.0.1./",
        "http://localhost./",
        "http://127%2e0.0.1/",
        "http://[::ffff:127.0.0.1]/",
        "http://10.0.0.1/",
        "http://172.16.5.4/",
        "http://192.168.0.1/",
        "http://0xc0a80001/",
        "http://100.64.0.1/",
        "http://[fc00::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://169.254.169.254/",
    ]
    .iter()
    .map(|u| u.to_string())
    .collect();
    // Every address of this host's own interfaces, whatever its class.
    for ip in leasehold::sys::interfaces::own_addresses().unwrap() {
        urls.push(match ip {
            std::net::IpAddr::V4(v4) => format!("http://{v4}/"),
            std::net::IpAddr::V6(v6) => format!("http://[{v6}]/"),
        });
    }
    for url in &urls {
        assert_eq!(submit(&mut c, url), (400, "bad_request".to_string()), "{url}");
        let cb = serde_json::json!({ "callback": url }).to_string();
        assert_eq!(c.post("/v1/locks/ssrf/acquire", &cb).unwrap().status, 400, "callback {url}");
    }
    let page = c.get("/v1/outbox").unwrap().json();
    assert_eq!(page["entries"].as_array().unwrap().len(), 0, "nothing piles up as a dead letter: {page}");
}

#[test]
fn r12_host_lists_hold_for_every_spelling_and_for_resolved_addresses() {
    let sink = Sink::new(200);
    let port = sink.addr.port();
    let s = server("deny_hosts = [\"127.0.0.1\", \"::1\"]");
    let mut c = Client::connect(s.addr).unwrap();
    for host in ["127.0.0.1", "0x7f000001", "2130706433", "127.1", "127.0.0.1.", "0177.0.0.1", "[::ffff:7f00:1]"] {
        assert_eq!(submit(&mut c, &format!("http://{host}:{port}/x")).0, 400, "{host}");
    }
    // A name passes the name rules; the addresses it resolves to are refused at connect
    // time, so the call fails without reaching the sink.
    let (_, accepted) = put(&mut c, serde_json::json!({"url": format!("http://localhost:{port}/x")}));
    let id = accepted["id"].as_str().expect("a name is accepted").to_string();
    let entry = wait_state(&mut c, &id, "failed");
    assert!(entry["last_error"].as_str().unwrap().contains("may not call"), "{entry}");
    assert!(sink.received().is_empty(), "the sink was called");
    // allow_hosts: the host that is checked is the host that is called.
    let only = server("allow_hosts = [\"*.example.com\"]");
    let mut c = Client::connect(only.addr).unwrap();
    for url in [
        format!("http://127.0.0.1:{port}\\.example.com/x"),
        format!("http://127.0.0.1:{port}\\@a.example.com/x"),
        format!("http://a.example.com@127.0.0.1:{port}/x"),
    ] {
        assert_eq!(submit(&mut c, &url).0, 400, "{url}");
    }
    assert_eq!(submit(&mut c, "https://hooks.example.com./x").0, 202);
}

#[test]
fn r12_a_page_too_large_for_one_frame_is_cut_and_breaks_no_other_request() {
    let s = server("max_total_bytes = 67108864");
    let mut c = Client::connect(s.addr).unwrap();
    // 300 calls of 60 KB: 18 MB, more than one IPC frame holds.
    let body = "x".repeat(60_000);
    let mut ids = Vec::new();
    for _ in 0..300 {
        let (status, accepted) = put(
            &mut c,
            serde_json::json!({"url": "https://hooks.example.com/x", "body": body, "not_before_ms": 4_000_000_000_000u64}),
        );
        assert_eq!(status, 202, "{accepted}");
        ids.push(accepted["id"].as_str().unwrap().to_string());
    }
    // A long-poll on the same worker, waiting while the listing runs.
    let held = c.post("/v1/locks/frame/acquire", r#"{"ttl_ms":60000}"#).unwrap().json();
    let mut waiter = Client::connect(s.addr).unwrap();
    let wait = r#"{"wait_ms":20000}"#;
    let head = format!("POST /v1/locks/frame/acquire HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n", wait.len());
    waiter.send_raw(format!("{head}{wait}").as_bytes()).unwrap();
    s.wait_waiting_requests(1, None);
    let mut listed = Vec::new();
    let mut after = String::new();
    loop {
        let r = c.get(&format!("/v1/outbox?limit=1000&after={after}")).unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body[..r.body.len().min(300)]));
        assert!(r.body.len() <= 1024 * 1024 + 64, "a page of {} bytes", r.body.len());
        let page = r.json();
        listed.extend(page["entries"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_string()));
        match page["next_after"].as_str() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    // Every call once, in id order (ids sort by acceptance time, to the millisecond).
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "pages are in id order without repeats");
    ids.sort();
    assert!(listed == ids, "{} of {} calls listed", listed.len(), ids.len());
    // The waiter's channel to the keeper survived: it is granted when the holder leaves.
    let release = format!(r#"{{"ticket":"{}"}}"#, held["ticket"].as_str().unwrap());
    assert_eq!(c.post("/v1/locks/frame/release", &release).unwrap().status, 200);
    let granted = waiter.read_reply().unwrap();
    assert_eq!((granted.status, granted.json()["status"].as_str()), (200, Some("acquired")));
}

#[test]
fn r12_headers_count_in_a_calls_size_and_callbacks_cannot_crowd_out_calls() {
    let s = server("max_body_bytes = 4096\nmax_entries = 2\nmax_callbacks = 1");
    let mut c = Client::connect(s.addr).unwrap();
    let later = 4_000_000_000_000u64;
    // A header bomb: each header fits, together they do not.
    let headers: serde_json::Map<String, serde_json::Value> =
        (0..4).map(|i| (format!("X-Bomb-{i}"), serde_json::Value::from("v".repeat(1_500)))).collect();
    let (status, body) =
        put(&mut c, serde_json::json!({"url": "https://h.example.com/", "headers": headers, "not_before_ms": later}));
    assert_eq!((status, body["error"].as_str()), (413, Some("payload_too_large")), "{body}");
    // Lock callbacks fill their own budget; the refused one is counted.
    let sink = Sink::new(200);
    sink.set_hold(true);
    let holder = c.post("/v1/locks/cbs/acquire", r#"{"ttl_ms":60000,"limit":2,"weight":2}"#).unwrap().json();
    for _ in 0..2 {
        let body = serde_json::json!({"limit": 2, "callback": sink.url()}).to_string();
        assert_eq!(c.post("/v1/locks/cbs/acquire", &body).unwrap().json()["status"], "queued");
    }
    let release = format!(r#"{{"ticket":"{}"}}"#, holder["ticket"].as_str().unwrap());
    assert_eq!(c.post("/v1/locks/cbs/release", &release).unwrap().status, 200);
    wait_until("the second callback to be refused", || {
        metric(&metrics(&mut c), "leasehold_callbacks_refused_total") == Some(1.0)
    });
    // Calls still have their room.
    for _ in 0..2 {
        assert_eq!(put(&mut c, serde_json::json!({"url": "https://h.example.com/", "not_before_ms": later})).0, 202);
    }
    // Each budget's use and limit are in the metrics.
    let text = metrics(&mut c);
    for line in [
        "leasehold_budget_used{budget=\"outbox_calls\"} 2",
        "leasehold_budget_limit{budget=\"outbox_calls\"} 2",
        "leasehold_budget_used{budget=\"outbox_callbacks\"} 1",
        "leasehold_budget_limit{budget=\"outbox_callbacks\"} 1",
        "leasehold_budget_limit{budget=\"outbox_bytes\"} 268435456",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    sink.set_hold(false);
}

#[test]
fn r22_a_call_over_max_body_bytes_is_413_and_max_attempts_is_capped() {
    let s = server("max_body_bytes = 1024\nmax_attempts = 4\ndefault_attempts = 3");
    let mut c = Client::connect(s.addr).unwrap();
    let later = 4_000_000_000_000u64;
    let call = |body: &str, attempts: Option<u32>| {
        let mut call = serde_json::json!({"url": "https://h.example.com/", "body": body, "not_before_ms": later});
        if let Some(n) = attempts {
            call["max_attempts"] = n.into();
        }
        call
    };
    // A string body is sent as is: 1,024 bytes fit, 1,025 do not.
    let (status, body) = put(&mut c, call(&"x".repeat(1_025), None));
    assert_eq!((status, body["error"].as_str()), (413, Some("payload_too_large")), "{body}");
    let (status, fits) = put(&mut c, call(&"x".repeat(1_024), None));
    assert_eq!(status, 202, "{fits}");
    // max_attempts: 1 to outbox.max_attempts; unsaid, outbox.default_attempts.
    for attempts in [0, 5, 1_000] {
        let (status, body) = put(&mut c, call("", Some(attempts)));
        assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")), "max_attempts {attempts}: {body}");
    }
    let (status, most) = put(&mut c, call("", Some(4)));
    assert_eq!(status, 202, "{most}");
    let attempts_of = |c: &mut Client, id: &serde_json::Value| {
        c.get(&format!("/v1/outbox/{}", id.as_str().unwrap())).unwrap().json()["max_attempts"].as_u64()
    };
    assert_eq!(attempts_of(&mut c, &most["id"]), Some(4));
    assert_eq!(attempts_of(&mut c, &fits["id"]), Some(3), "the default");
    // Nothing refused was kept.
    let page = c.get("/v1/outbox").unwrap().json();
    assert_eq!(page["entries"].as_array().unwrap().len(), 2, "{page}");
}

#[test]
fn r22_outbox_metrics_count_calls_by_state_and_attempts_by_result() {
    let s = server("");
    let (refusing, slow) = (Sink::new(404), Sink::new(200));
    slow.set_hold(true);
    let mut c = Client::connect(s.addr).unwrap();
    let later = 4_000_000_000_000u64;
    // One call waits for its time, one is refused by its target (failed at once), one is
    // with a target that does not answer yet.
    put(&mut c, serde_json::json!({"url": "https://h.example.com/", "not_before_ms": later}));
    let (_, refused) = put(&mut c, serde_json::json!({"url": refusing.url()}));
    wait_state(&mut c, refused["id"].as_str().unwrap(), "failed");
    let (_, held) = put(&mut c, serde_json::json!({"url": slow.url()}));
    let held_id = held["id"].as_str().unwrap().to_string();
    slow.wait_held(1);
    let text = metrics(&mut c);
    for (sample, value) in [
        ("leasehold_outbox_calls{state=\"pending\"}", 1.0),
        ("leasehold_outbox_calls{state=\"in_flight\"}", 1.0),
        ("leasehold_outbox_calls{state=\"failed\"}", 1.0),
        ("leasehold_deliveries_total{result=\"delivered\"}", 0.0),
        ("leasehold_deliveries_total{result=\"retried\"}", 0.0),
        ("leasehold_deliveries_total{result=\"failed\"}", 1.0),
        ("leasehold_delivery_seconds_count", 1.0),
    ] {
        assert_eq!(metric(&text, sample), Some(value), "{sample} in:\n{text}");
    }
    // The time an attempt takes is what the histogram measures: let some pass.
    std::thread::sleep(Duration::from_millis(50));
    slow.set_hold(false);
    wait_status(&mut c, &format!("/v1/outbox/{held_id}"), 404);
    let text = metrics(&mut c);
    for (sample, value) in [
        ("leasehold_outbox_calls{state=\"pending\"}", 1.0),
        ("leasehold_outbox_calls{state=\"in_flight\"}", 0.0),
        ("leasehold_deliveries_total{result=\"delivered\"}", 1.0),
        ("leasehold_delivery_seconds_count", 2.0),
        ("leasehold_delivery_seconds_bucket{le=\"+Inf\"}", 2.0),
    ] {
        assert_eq!(metric(&text, sample), Some(value), "{sample} in:\n{text}");
    }
    // The held attempt took at least as long as the target held it (the courier counts
    // whole milliseconds, hence the 2 ms).
    let answered = slow.received()[0].clone();
    let held_s = (answered.answered - answered.at).as_secs_f64();
    let sum = metric(&text, "leasehold_delivery_seconds_sum").unwrap();
    assert!(sum >= held_s - 0.002, "delivery_seconds_sum {sum} s, yet one attempt was held {held_s} s");
}

#[test]
fn r22_host_lists_decide_end_to_end_which_calls_are_made() {
    let sink = Sink::new(200);
    let port = sink.addr.port();
    // allow_hosts: names and suffixes; deny_hosts wins over them.
    let s = server("allow_hosts = [\"localhost\", \"*.example.com\"]\ndeny_hosts = [\"bad.example.com\"]");
    let mut c = Client::connect(s.addr).unwrap();
    for url in [
        format!("http://127.0.0.1:{port}/x"),
        "https://bad.example.com/x".to_string(),
        "https://BAD.example.com./x".to_string(),
        "https://example.org/x".to_string(),
        "https://example.com.evil.org/x".to_string(),
    ] {
        assert_eq!(submit(&mut c, &url), (400, "bad_request".to_string()), "{url}");
    }
    for url in ["https://good.example.com/x", "https://a.b.example.com/x"] {
        assert_eq!(submit(&mut c, url).0, 202, "{url}");
    }
    let refused = serde_json::json!({ "callback": format!("http://127.0.0.1:{port}/cb") }).to_string();
    assert_eq!(c.post("/v1/locks/listed/acquire", &refused).unwrap().status, 400, "a callback follows the lists");
    // An allowed name is called.
    let (status, accepted) = put(&mut c, serde_json::json!({"url": format!("http://localhost:{port}/x")}));
    assert_eq!(status, 202, "{accepted}");
    wait_status(&mut c, &format!("/v1/outbox/{}", accepted["id"].as_str().unwrap()), 404);
    assert_eq!(sink.received().iter().filter(|r| r.status == 200).count(), 1, "the allowed call arrived");
    // deny_hosts blocks: a literal in the block at submission, a name resolving into it at
    // connect time.
    let blocked = server("deny_hosts = [\"127.0.0.0/8\", \"::1/128\"]");
    let mut c = Client::connect(blocked.addr).unwrap();
    assert_eq!(submit(&mut c, &format!("http://127.0.0.5:{port}/x")).0, 400);
    let (_, accepted) = put(&mut c, serde_json::json!({"url": format!("http://localhost:{port}/x")}));
    let entry = wait_state(&mut c, accepted["id"].as_str().unwrap(), "failed");
    assert!(entry["last_error"].as_str().unwrap().contains("may not call"), "{entry}");
    assert_eq!(entry["attempts"], 1, "a refused address is not retried: {entry}");
    assert_eq!(sink.received().len(), 1, "the blocked call never reached the sink");
}

#[test]
fn r14_in_a_cluster_the_leaders_courier_delivers_and_a_failover_makes_the_calls_in_flight_again() {
    use crate::support::etcd::EtcdCluster;
    use crate::support::nodes::{Follow, Nodes, Outcome};
    let etcd = EtcdCluster::start();
    let mut cluster = Nodes::start_with(
        &etcd,
        3,
        1,
        "[outbox]\nallow_local = true\nbase_ms = 100\ncap_ms = 400\nsecret = \"s3cret\"",
    );
    let sink = Sink::new(200);
    // The target hangs: calls stay in flight with the leader's courier.
    sink.set_hold(true);
    let mut client = Follow::new(cluster.addrs(), 0);
    let ids: Vec<String> = (0..5)
        .map(|i| {
            let body = serde_json::json!({"url": sink.url(), "body": {"i": i}, "max_attempts": 25}).to_string();
            match client.send("POST", "/v1/outbox", &[], &body) {
                Outcome::Answer(r) if r.status == 202 || r.status == 201 => {
                    r.json()["id"].as_str().unwrap().to_string()
                }
                other => panic!("outbox put: {other:?}"),
            }
        })
        .collect();
    sink.wait_held(1);
    let leader = cluster.leader();
    cluster.nodes[leader].kill();
    // A new leader's courier makes every call again, the ones the dead leader's courier
    // held included; the target answers now.
    let new = cluster.leader();
    sink.status.store(200, Ordering::SeqCst);
    sink.set_hold(false);
    // Read on the leader: a follower's replica may be behind.
    for id in &ids {
        wait_status(&mut Client::connect(cluster.nodes[new].addr).unwrap(), &format!("/v1/outbox/{id}"), 404);
    }
    let delivered: std::collections::HashSet<String> =
        sink.received().iter().filter(|r| r.status == 200).map(|r| r.headers["idempotency-key"].clone()).collect();
    for id in &ids {
        assert!(delivered.contains(id), "{id} never reached the sink");
    }
}
