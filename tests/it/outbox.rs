//! The outbox end to end: calls accepted over HTTP, delivered by the courier to a local
//! sink with retries and backoff, dead-lettered and retried by hand, bounded, refused for
//! targets on this machine, lock callbacks, and kill -9 of the courier and of the keeper
//! in the middle of deliveries.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::http::Client;
use crate::support::{config, signal_pid, Server, DEADLINE};

/// One request the sink received.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    /// What the sink answered.
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// A local HTTP endpoint answering every request with the status in `status` (settable).
/// While `hold` is set, it keeps each request waiting for its answer (a slow target).
struct Sink {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    received: Arc<Mutex<Vec<Received>>>,
    hold: Arc<(Mutex<bool>, Condvar)>,
}

impl Sink {
    fn new(status: u16) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let status = Arc::new(AtomicU16::new(status));
        let received = Arc::new(Mutex::new(Vec::new()));
        let hold = Arc::new((Mutex::new(false), Condvar::new()));
        let (st, rec, held) = (Arc::clone(&status), Arc::clone(&received), Arc::clone(&hold));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let (st, rec, held) = (Arc::clone(&st), Arc::clone(&rec), Arc::clone(&held));
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
                        let body = String::from_utf8_lossy(&got[end + 4..end + 4 + len]).to_string();
                        let (lock, released) = &*held;
                        let mut holding = lock.lock().unwrap();
                        let was_held = *holding;
                        while *holding {
                            holding = released.wait(holding).unwrap();
                        }
                        drop(holding);
                        // A held request's client may have gone meanwhile: it was not answered.
                        let status = if was_held { 0 } else { st.load(Ordering::SeqCst) };
                        rec.lock().unwrap().push(Received { at: Instant::now(), status, headers, body });
                        let _ = conn.write_all(
                            format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
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
        let deadline = Instant::now() + DEADLINE;
        while Arc::strong_count(&self.hold) < 2 + n {
            assert!(Instant::now() < deadline, "no request is being held");
            std::thread::yield_now();
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived.
    fn wait_for(&self, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            assert!(Instant::now() < deadline, "{} of {n} requests reached the sink", got.len());
            std::thread::yield_now();
        }
    }
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
    let deadline = Instant::now() + DEADLINE;
    loop {
        let r = c.get(path).unwrap();
        if r.status == status {
            return r.json();
        }
        assert!(Instant::now() < deadline, "GET {path} stayed {} ({})", r.status, String::from_utf8_lossy(&r.body));
        std::thread::yield_now();
    }
}

#[test]
fn a_call_that_fails_twice_is_delivered_once_with_backoff_its_key_and_signature() {
    let s = server("");
    let sink = Sink::new(503);
    let mut c = Client::connect(s.addr).unwrap();
    let (status, accepted) = put(&mut c, serde_json::json!({"url": sink.url(), "body": {"n": 1}, "max_attempts": 5}));
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    let failures = sink.wait_for(2);
    sink.status.store(200, Ordering::SeqCst);
    let all = sink.wait_for(3);
    // Gone once delivered: no further attempt can come.
    wait_status(&mut c, &format!("/v1/outbox/{id}"), 404);
    let all_now = sink.received();
    assert_eq!(all_now.len(), 3, "exactly one success after two failures");
    assert_eq!(all_now.iter().filter(|r| r.status == 200).count(), 1);
    for r in &all {
        assert_eq!(r.headers.get("idempotency-key"), Some(&id));
        assert_eq!(r.body, r#"{"n":1}"#);
        let ts: u64 = r.headers["x-leasehold-timestamp"].parse().unwrap();
        let expected = leasehold::core::signature::sign(b"s3cret", ts, r.body.as_bytes());
        assert_eq!(r.headers.get("x-leasehold-signature"), Some(&expected));
    }
    // Full jitter: each retry within its ceiling (100 ms, then 200 ms) plus handling time.
    let gap = failures[1].at - failures[0].at;
    assert!(gap <= Duration::from_millis(100 + 500), "second attempt {gap:?} after the first");
    let metrics = String::from_utf8(c.get("/metrics").unwrap().body).unwrap();
    assert!(metrics.contains("leasehold_deliveries_total{result=\"delivered\"} 1\n"), "{metrics}");
    assert!(metrics.contains("leasehold_deliveries_total{result=\"retried\"} 2\n"));
}

#[test]
fn a_call_that_keeps_failing_is_dead_lettered_then_retried_by_hand() {
    let s = server("");
    let sink = Sink::new(500);
    let mut c = Client::connect(s.addr).unwrap();
    let (_, accepted) = put(&mut c, serde_json::json!({"url": sink.url(), "max_attempts": 3}));
    let id = accepted["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + DEADLINE;
    let failed = loop {
        let page = c.get("/v1/outbox?state=failed").unwrap().json();
        if let Some(entry) = page["entries"].as_array().and_then(|e| e.first()).cloned() {
            break entry;
        }
        assert!(Instant::now() < deadline, "never dead-lettered");
        std::thread::yield_now();
    };
    assert_eq!((failed["id"].as_str(), failed["attempts"].as_u64()), (Some(id.as_str()), Some(3)));
    assert!(failed["last_error"].as_str().unwrap().contains("HTTP 500"), "{failed}");
    assert_eq!(sink.received().len(), 3, "max_attempts attempts, no more");
    // A 4xx at once: not retried.
    sink.status.store(404, Ordering::SeqCst);
    let (_, other) = put(&mut c, serde_json::json!({"url": sink.url(), "max_attempts": 9}));
    let other_id = other["id"].as_str().unwrap();
    let entry = loop {
        let e = c.get(&format!("/v1/outbox/{other_id}")).unwrap().json();
        if e["state"] == "failed" {
            break e;
        }
        assert!(Instant::now() < deadline, "a 404 was retried: {e}");
        std::thread::yield_now();
    };
    assert_eq!(entry["attempts"], 1);
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
    let deadline = Instant::now() + DEADLINE;
    while s.courier_pid().is_none_or(|p| p == courier) {
        assert!(Instant::now() < deadline, "no new courier");
        std::thread::yield_now();
    }
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
    let deadline = Instant::now() + DEADLINE;
    let entry = loop {
        let e = c.get(&format!("/v1/outbox/{id}")).unwrap().json();
        if e["state"] == "failed" {
            break e;
        }
        assert!(Instant::now() < deadline, "never refused: {e}");
        std::thread::yield_now();
    };
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
    let deadline = Instant::now() + DEADLINE;
    loop {
        let metrics = String::from_utf8(c.get("/metrics").unwrap().body).unwrap();
        if metrics.contains("leasehold_callbacks_refused_total 1\n") {
            break;
        }
        assert!(Instant::now() < deadline, "the second callback was not refused");
        std::thread::yield_now();
    }
    // Calls still have their room.
    for _ in 0..2 {
        assert_eq!(put(&mut c, serde_json::json!({"url": "https://h.example.com/", "not_before_ms": later})).0, 202);
    }
    // Each budget's use and limit are in the metrics.
    let metrics = String::from_utf8(c.get("/metrics").unwrap().body).unwrap();
    for line in [
        "leasehold_budget_used{budget=\"outbox_calls\"} 2",
        "leasehold_budget_limit{budget=\"outbox_calls\"} 2",
        "leasehold_budget_used{budget=\"outbox_callbacks\"} 1",
        "leasehold_budget_limit{budget=\"outbox_callbacks\"} 1",
        "leasehold_budget_limit{budget=\"outbox_bytes\"} 268435456",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in:\n{metrics}");
    }
    sink.set_hold(false);
}
