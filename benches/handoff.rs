//! Contended hand-off over HTTP: 1,000 clients long-poll one mutex in FIFO order; each
//! releases as soon as it is granted. A hand-off's latency is the time from the moment a
//! holder's release is sent to the moment the next waiter's grant arrives, both read on
//! this process's monotonic clock. Runs the real release binary (2 workers, loopback).
//!
//! `cargo bench --bench handoff` (part of `make bench`); `LEASEHOLD_BENCH_WAITERS` changes
//! the number of waiters.

mod common;

use std::net::TcpStream;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{call_json as call, Server};

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let waiters: usize = std::env::var("LEASEHOLD_BENCH_WAITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 2\nlog_level = \"warn\"\ndata_dir = {:?}\n[journal]\nfsync = \"never\"\n",
        dir.path().join("data")
    );
    let server = Server::start(dir.path(), &config, Duration::from_secs(30));
    let addr = server.addr;

    let mut holder = TcpStream::connect(addr).unwrap();
    let (_, held) = call(&mut holder, "/v1/locks/hot/acquire", r#"{"ttl_ms":600000}"#);
    let mut queue = TcpStream::connect(addr).unwrap();
    let tickets: Vec<String> = (0..waiters)
        .map(|_| {
            let (status, body) = call(&mut queue, "/v1/locks/hot/acquire", r#"{"ttl_ms":600000}"#);
            assert_eq!(status, 202);
            body["ticket"].as_str().unwrap().to_string()
        })
        .collect();
    let epoch = Instant::now();
    let start = Arc::new(Barrier::new(waiters + 1));
    let threads: Vec<_> = tickets
        .into_iter()
        .map(|ticket| {
            let start = Arc::clone(&start);
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut c = TcpStream::connect(addr).unwrap();
                    c.set_nodelay(true).unwrap();
                    start.wait();
                    let body = format!(r#"{{"ticket":"{ticket}","wait_ms":60000,"ttl_ms":600000}}"#);
                    let (status, granted) = call(&mut c, "/v1/locks/hot/acquire", &body);
                    let granted_at = epoch.elapsed().as_micros() as u64;
                    assert_eq!(status, 200, "{granted}");
                    let released_at = epoch.elapsed().as_micros() as u64;
                    call(&mut c, "/v1/locks/hot/release", &format!(r#"{{"ticket":"{ticket}"}}"#));
                    (granted["fence"].as_u64().unwrap(), granted_at, released_at)
                })
                .unwrap()
        })
        .collect();
    start.wait();
    // Let every waiter's long-poll reach the server before the first release.
    while !server.metrics().contains(&format!("leasehold_waiting_requests {waiters}\n")) {}
    let first_release = epoch.elapsed().as_micros() as u64;
    let ticket = held["ticket"].as_str().unwrap();
    call(&mut holder, "/v1/locks/hot/release", &format!(r#"{{"ticket":"{ticket}"}}"#));
    let mut grants: Vec<(u64, u64, u64)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total = epoch.elapsed().as_micros() as u64 - first_release;
    grants.sort_unstable();
    let mut latencies: Vec<u64> = Vec::with_capacity(grants.len());
    latencies.push(grants[0].1.saturating_sub(first_release));
    for pair in grants.windows(2) {
        latencies.push(pair[1].1.saturating_sub(pair[0].2));
    }
    latencies.sort_unstable();
    drop(server);
    println!(
        "contended hand-off, {waiters} long-polling waiters on one mutex (HTTP, 2 workers): {} hand-offs in {:.2} s ({:.0}/s); release sent -> next grant received: p50 {} us, p99 {} us, max {} us",
        latencies.len(),
        total as f64 / 1e6,
        latencies.len() as f64 / (total as f64 / 1e6),
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
}
