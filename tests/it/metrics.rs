//! `/metrics` of the real server, end to end: grants and expiries counted (a holder that
//! stops renewing shows as an expiry), dropped waiters by reason, the queue-wait histogram,
//! long-polls left out of the request-latency histogram, the figures of every process by
//! role, and the keeper's families kept (with `leasehold_keeper_up 0`) while it is killed.
//! Every wait for a figure is a poll with a deadline.

use nix::sys::signal::Signal;

use crate::support::http::{once, Client};
use crate::support::{config, signal_pid, wait_for, Server, DEADLINE};
use leasehold::sys::process::wait_for_exit;

/// The whole page.
fn page(s: &Server) -> String {
    String::from_utf8(once(s.addr, "GET", "/metrics", &[], "").body).expect("UTF-8 metrics")
}

/// The value of the sample `series` (name with its labels, exactly as rendered).
fn value(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Polls `/metrics` until `series` has the value `want`; returns the page.
fn wait_value(s: &Server, series: &str, want: f64) -> String {
    wait_for(&format!("{series} = {want}"), || {
        let page = page(s);
        match value(&page, series) {
            Some(v) if v == want => Ok(page),
            other => Err(other),
        }
    })
}

/// The families a page declares (`# TYPE` lines).
fn families(page: &str) -> Vec<String> {
    page.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(str::to_string).collect()
}

fn acquire(c: &mut Client, lock: &str, body: &str) -> serde_json::Value {
    let r = c.post(&format!("/v1/locks/{lock}/acquire"), body).unwrap();
    assert!(r.status == 200 || r.status == 202, "acquire {lock}: {} {}", r.status, String::from_utf8_lossy(&r.body));
    r.json()
}

fn release(c: &mut Client, lock: &str, ticket: &str) {
    let r = c.post(&format!("/v1/locks/{lock}/release"), &format!(r#"{{"ticket":"{ticket}"}}"#)).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn grants_and_expiries_are_counted_and_a_holder_that_stops_renewing_is_an_expiry() {
    let s = Server::start(&config("workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    let first = page(&s);
    assert_eq!(value(&first, "leasehold_lease_grants_total"), Some(0.0), "{first}");
    assert_eq!(value(&first, "leasehold_lease_expiries_total{reason=\"ttl\"}"), Some(0.0));
    // Released: a grant, not an expiry.
    let kept = acquire(&mut c, "kept", r#"{"ttl_ms":60000}"#);
    release(&mut c, "kept", kept["ticket"].as_str().unwrap());
    // Never renewed: it expires after 200 ms.
    acquire(&mut c, "dies", r#"{"ttl_ms":200}"#);
    let page = wait_value(&s, "leasehold_lease_expiries_total{reason=\"ttl\"}", 1.0);
    assert_eq!(value(&page, "leasehold_lease_grants_total"), Some(2.0), "{page}");
    assert_eq!(value(&page, "leasehold_lease_expiries_total{reason=\"unclaimed\"}"), Some(0.0));
    assert_eq!(value(&page, "leasehold_leases"), Some(0.0));
}

#[test]
fn read_write_grants_are_counted_by_mode_at_once_and_from_the_queue() {
    let s = Server::start(&config("workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    let first = page(&s);
    assert_eq!(value(&first, "leasehold_rw_grants_total{mode=\"shared\"}"), Some(0.0), "{first}");
    // Two readers at once, a writer queued behind them, a semaphore's grant not counted.
    let r1 = acquire(&mut c, "rw", r#"{"mode":"shared","ttl_ms":60000}"#);
    let r2 = acquire(&mut c, "rw", r#"{"mode":"shared","ttl_ms":60000}"#);
    let w = acquire(&mut c, "rw", r#"{"mode":"exclusive","ttl_ms":60000}"#);
    assert!(w["position"].is_u64(), "the writer waits: {w}");
    acquire(&mut c, "plain", r#"{"ttl_ms":60000}"#);
    // A user's second acquire is its place from before, not a new grant.
    let u = acquire(&mut c, "rw-user", r#"{"mode":"shared","user":"u1","ttl_ms":60000}"#);
    let again = acquire(&mut c, "rw-user", r#"{"mode":"shared","user":"u1","ttl_ms":60000}"#);
    assert_eq!(again["ticket"], u["ticket"], "{again}");
    release(&mut c, "rw", r1["ticket"].as_str().unwrap());
    release(&mut c, "rw", r2["ticket"].as_str().unwrap());
    let page = wait_value(&s, "leasehold_rw_grants_total{mode=\"exclusive\"}", 1.0);
    assert_eq!(value(&page, "leasehold_rw_grants_total{mode=\"shared\"}"), Some(3.0), "{page}");
    assert_eq!(value(&page, "leasehold_lease_grants_total"), Some(5.0), "{page}");
}

#[test]
fn dropped_waiters_are_counted_by_reason() {
    // A waiter that does not poll for 2 s is dropped.
    let s = Server::start(&config("workers = 1", "[locks]\nwaiter_ttl_ms = 2000"));
    let mut c = Client::connect(s.addr).unwrap();
    acquire(&mut c, "q", r#"{"ttl_ms":60000}"#);
    let gone = acquire(&mut c, "q", "{}");
    assert_eq!(gone["status"], "queued", "{gone}");
    let leaving = acquire(&mut c, "q", "{}");
    let ticket = leaving["ticket"].as_str().unwrap();
    let left = c.request("DELETE", &format!("/v1/locks/q/tickets/{ticket}"), &[], "").unwrap();
    assert_eq!(left.status, 200, "left before its waiter_ttl: {}", String::from_utf8_lossy(&left.body));
    let page = wait_value(&s, "leasehold_waiters_dropped_total{reason=\"waiter_ttl\"}", 1.0);
    assert_eq!(value(&page, "leasehold_waiters_dropped_total{reason=\"left\"}"), Some(1.0), "{page}");
    assert_eq!(value(&page, "leasehold_waiters_dropped_total{reason=\"limit_lowered\"}"), Some(0.0));
    assert_eq!(value(&page, "leasehold_waiters"), Some(0.0));
    assert_eq!(value(&page, "leasehold_queue_wait_seconds_count"), Some(0.0), "no waiter was granted");
}

#[test]
fn a_waited_grant_is_in_the_queue_wait_histogram_and_not_in_the_request_latency() {
    let s = Server::start(&config("workers = 1", ""));
    let mut holder = Client::connect(s.addr).unwrap();
    let held = acquire(&mut holder, "w", r#"{"ttl_ms":60000}"#);
    // A long-poll: it waits up to 20 s in the queue.
    let mut waiter = Client::connect(s.addr).unwrap();
    let body = r#"{"wait_ms":20000}"#;
    let head = format!("POST /v1/locks/w/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len());
    waiter.send_raw(format!("{head}{body}").as_bytes()).unwrap();
    s.wait_waiting_requests(1, None);
    release(&mut holder, "w", held["ticket"].as_str().unwrap());
    let granted = waiter.read_reply().unwrap();
    assert_eq!(granted.status, 200, "{}", String::from_utf8_lossy(&granted.body));
    let page = page(&s);
    assert_eq!(value(&page, "leasehold_http_requests_total{route=\"acquire\",status=\"200\"}"), Some(2.0), "{page}");
    assert_eq!(
        value(&page, "leasehold_http_request_duration_seconds_count{route=\"acquire\"}"),
        Some(1.0),
        "only the acquire that did not wait is timed:\n{page}"
    );
    assert_eq!(value(&page, "leasehold_queue_wait_seconds_count"), Some(1.0), "{page}");
    // The keeper measures waits in whole milliseconds: a grant within the millisecond of the
    // enqueue adds 0 to the sum (seen on a fast machine), so only its presence is certain.
    assert!(value(&page, "leasehold_queue_wait_seconds_sum").is_some_and(|s| s >= 0.0), "{page}");
    assert_eq!(value(&page, "leasehold_queue_wait_seconds_bucket{le=\"+Inf\"}"), Some(1.0));
    assert_eq!(value(&page, "leasehold_lease_grants_total"), Some(2.0));
}

#[test]
fn every_process_reports_its_memory_cpu_and_start_time_by_role() {
    let s = Server::start(&config("workers = 2", ""));
    let page = page(&s);
    let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    for labels in [
        r#"role="master""#,
        r#"role="keeper""#,
        r#"role="courier""#,
        r#"role="worker",slot="0""#,
        r#"role="worker",slot="1""#,
    ] {
        let rss = value(&page, &format!("leasehold_process_resident_memory_bytes{{{labels}}}"));
        assert!(rss.is_some_and(|b| b > 1_000_000.0), "{labels}: {rss:?}\n{page}");
        let cpu = value(&page, &format!("leasehold_process_cpu_seconds_total{{{labels}}}"));
        assert!(cpu.is_some_and(|s| s >= 0.0), "{labels}: {cpu:?}");
        let start = value(&page, &format!("leasehold_process_start_time_seconds{{{labels}}}"));
        // Started by this test: within the deadline before now (and not in the future).
        assert!(start.is_some_and(|t| t <= now_s + 1.0 && t > now_s - DEADLINE.as_secs_f64()), "{labels}: {start:?}");
    }
}

#[test]
fn the_keepers_families_stay_with_keeper_up_0_while_it_is_killed_and_a_recovery_counts_from_zero() {
    let s = Server::start(&config("workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    acquire(&mut c, "held", r#"{"ttl_ms":60000}"#);
    let before = page(&s);
    assert_eq!(value(&before, "leasehold_keeper_up"), Some(1.0));
    assert_eq!(value(&before, "leasehold_lease_grants_total"), Some(1.0));
    assert!(before.contains("leasehold_process_resident_memory_bytes{role=\"keeper\"}"), "{before}");
    // The keeper dies while the master is held, so it is not restarted yet; a scrape is
    // sent meanwhile and answered once the master runs again.
    let keeper = s.keeper_pid();
    s.signal(Signal::SIGSTOP);
    signal_pid(keeper, Signal::SIGKILL);
    assert!(wait_for_exit(keeper, DEADLINE).unwrap());
    let mut scrape = Client::connect(s.addr).unwrap();
    scrape.send_raw(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.signal(Signal::SIGCONT);
    let during = String::from_utf8(scrape.read_reply().unwrap().body).unwrap();
    assert_eq!(value(&during, "leasehold_keeper_up"), Some(0.0), "{during}");
    assert_eq!(families(&during), families(&before), "the same families while the keeper is down");
    assert_eq!(value(&during, "leasehold_lease_grants_total"), Some(1.0), "its last figures:\n{during}");
    assert_eq!(value(&during, "leasehold_leases"), Some(1.0));
    assert!(
        !during.contains("leasehold_process_resident_memory_bytes{role=\"keeper\"}"),
        "no figures of a process that is gone:\n{during}"
    );
    // The new keeper recovers the lease from its journal, and does not count the replay.
    let after = wait_value(&s, "leasehold_keeper_up", 1.0);
    assert_eq!(value(&after, "leasehold_leases"), Some(1.0), "{after}");
    assert_eq!(value(&after, "leasehold_lease_grants_total"), Some(0.0), "{after}");
}
