//! The real server over HTTP: routes, statuses, process names, access rules, the malformed
//! request corpus, the connection limit and the pings of an idle event stream.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::http::{acquire, once, Client};
use crate::support::wait_until;
use crate::support::{config, Server};

#[test]
fn serves_health_and_lock_routes_and_names_its_processes() {
    let s = Server::start(&config("workers = 2", ""));
    let mut names: Vec<String> = s.children().into_iter().map(|(_, n)| n).collect();
    names.sort();
    assert_eq!(names, vec!["lh-courier", "lh-keeper", "lh-worker-0", "lh-worker-1"]);
    assert_eq!(std::fs::read_to_string(format!("/proc/{}/comm", s.pid())).unwrap().trim(), "lh-master");

    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(c.get("/healthz").unwrap().json()["status"], "ok");
    assert_eq!(c.get("/readyz").unwrap().status, 200);

    let held = c.post("/v1/locks/report/acquire", r#"{"ttl_ms":5000,"owner":"host-a"}"#).unwrap();
    assert_eq!(held.status, 200);
    let held = held.json();
    assert_eq!(
        (held["status"].as_str(), held["lock"].as_str(), held["owner"].as_str()),
        (Some("acquired"), Some("report"), Some("host-a"))
    );
    let ticket = held["ticket"].as_str().unwrap().to_string();
    assert_eq!(ticket.len(), 22);
    let fence = held["fence"].as_u64().unwrap();

    // Someone else: try-lock fails, a queued acquire waits in line.
    let busy = acquire(&mut c, "report").unwrap();
    assert_eq!((busy.status, busy.json()["error"].as_str()), (409, Some("unavailable")));
    let queued = c.post("/v1/locks/report/acquire", r#"{"ttl_ms":5000}"#).unwrap();
    assert_eq!((queued.status, queued.json()["position"].as_u64()), (202, Some(1)));
    let mismatch = c.post("/v1/locks/report/acquire", r#"{"limit":2}"#).unwrap();
    assert_eq!((mismatch.status, mismatch.json()["error"].as_str()), (409, Some("limit_mismatch")));

    let renewed = c.post("/v1/locks/report/renew", &format!(r#"{{"ticket":"{ticket}","ttl_ms":9000}}"#)).unwrap();
    assert_eq!((renewed.status, renewed.json()["status"].as_str()), (200, Some("renewed")));
    let released = c.post("/v1/locks/report/release", &format!(r#"{{"ticket":"{ticket}"}}"#)).unwrap();
    assert_eq!((released.status, released.json()["fence"].as_u64()), (200, Some(fence)));
    let again = c.post("/v1/locks/report/release", &format!(r#"{{"ticket":"{ticket}"}}"#)).unwrap();
    assert_eq!((again.status, again.json()["error"].as_str()), (410, Some("lease_lost")));

    // Bad input: 400 with a JSON error naming the problem.
    for (path, body, needle) in [
        ("/v1/locks/report/acquire", "{not json", "invalid JSON"),
        ("/v1/locks/report/acquire", r#"{"ttl":5}"#, "unknown field"),
        ("/v1/locks/report/acquire", r#"{"ttl_ms":1}"#, "ttl_ms"),
        ("/v1/locks/report/renew", r#"{"ticket":"short"}"#, "ticket"),
        ("/v1/locks/a%20b/acquire", "{}", "lock name"),
    ] {
        let r = c.post(path, body).unwrap();
        assert_eq!(r.status, 400, "{path} {body}");
        let j = r.json();
        assert_eq!(j["error"], "bad_request");
        assert!(j["message"].as_str().unwrap().contains(needle), "{j}");
    }
    let unknown = c.get("/v1/nothing").unwrap();
    assert_eq!((unknown.status, unknown.json()["error"].as_str()), (404, Some("not_found")));
    let wrong = c.get("/v1/locks/report/acquire").unwrap();
    assert_eq!((wrong.status, wrong.header("Allow")), (405, Some("POST")));

    let metrics = String::from_utf8(c.get("/metrics").unwrap().body).unwrap();
    for series in [
        "leasehold_http_requests_total{route=\"acquire\",status=\"200\"} 1",
        "leasehold_http_requests_total{route=\"acquire\",status=\"409\"} 2",
        "leasehold_http_request_duration_seconds_count{route=\"release\"} 2",
        "leasehold_open_connections{worker=",
        "leasehold_workers{state=\"ready\"} 2",
        "leasehold_keeper_up 1",
        "leasehold_leases 1",
        "leasehold_waiters 0",
        "leasehold_restarts_total{role=\"worker\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} missing from:\n{metrics}");
    }
}

#[test]
fn api_keys_guard_lock_routes() {
    let s = Server::start(&config(
        "",
        "[[auth.keys]]\nkey = \"reader-secret\"\nrole = \"read\"\n[[auth.keys]]\nkey = \"jobs-secret\"\nrole = \"lock\"\nprefix = \"jobs:\"\n",
    ));
    let path = "/v1/locks/jobs:a/acquire";
    let no_key = once(s.addr, "POST", path, &[], "{}");
    assert_eq!((no_key.status, no_key.json()["error"].as_str()), (401, Some("unauthorized")));
    // A 401 says where the key goes (README, "API keys"); a 403 does not ask for one.
    assert!(no_key.header("www-authenticate").is_some_and(|v| v.contains("x-api-key")), "{:?}", no_key.headers);
    let wrong = once(s.addr, "POST", path, &[("x-api-key", "wrong")], "{}");
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("www-authenticate").is_some(), "{:?}", wrong.headers);
    let reader = once(s.addr, "POST", path, &[("x-api-key", "reader-secret")], "{}");
    assert_eq!((reader.status, reader.json()["error"].as_str()), (403, Some("forbidden")));
    assert!(reader.header("www-authenticate").is_none(), "{:?}", reader.headers);
    assert_eq!(once(s.addr, "POST", "/v1/locks/other/acquire", &[("x-api-key", "jobs-secret")], "{}").status, 403);
    assert_eq!(once(s.addr, "POST", path, &[("X-Api-Key", "jobs-secret")], "{}").status, 200);
    assert_eq!(once(s.addr, "GET", "/metrics", &[], "").status, 401);
    assert_eq!(once(s.addr, "GET", "/metrics", &[("x-api-key", "reader-secret")], "").status, 200);
    assert_eq!(once(s.addr, "GET", "/healthz", &[], "").status, 200, "health checks need no key");
}

/// Sends `raw` on a new connection and returns the status of the one response.
fn status_of(addr: std::net::SocketAddr, raw: &[u8]) -> (u16, serde_json::Value) {
    let mut c = Client::connect(addr).unwrap();
    c.send_raw(raw).unwrap();
    let r = c.read_reply().unwrap();
    assert!(r.closes(), "an error closes the connection");
    (r.status, r.json())
}

#[test]
fn malformed_requests_get_their_status_and_the_server_carries_on() {
    let s = Server::start(&config(
        "workers = 1",
        "[http]\nheader_timeout_ms = 300\nmax_header_bytes = 2048\nmax_body_bytes = 1024\n",
    ));
    let huge_header = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(4000));
    let huge_uri = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "u".repeat(9000));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("bad request line", b"GARBAGE\r\n\r\n".to_vec(), 400),
        ("binary garbage", b"\x00\x01\x02\x03\xff\xfe\r\n\r\n".to_vec(), 400),
        ("duplicate content-length", b"POST /v1/locks/a/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}".to_vec(), 400),
        ("conflicting content-length", b"POST /v1/locks/a/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{} ".to_vec(), 400),
        ("te and cl", b"POST /v1/locks/a/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("missing host", b"GET /healthz HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("huge header", huge_header.into_bytes(), 431),
        ("huge uri", huge_uri.into_bytes(), 414),
        ("huge body", b"POST /v1/locks/a/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".to_vec(), 413),
    ];
    for (what, raw, want) in cases {
        let (status, body) = status_of(s.addr, &raw);
        assert_eq!(status, want, "{what}");
        assert!(body["error"].is_string() && body["message"].is_string(), "{what}: {body}");
    }
    // Slow headers: the header section never completes; 408 comes at the deadline.
    let started = Instant::now();
    let (status, body) = status_of(s.addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    assert_eq!((status, body["error"].as_str()), (408, Some("request_timeout")));
    // (The clock has millisecond steps and starts at the accept.)
    assert!(started.elapsed() >= Duration::from_millis(290), "408 before the timeout: {:?}", started.elapsed());
    // A chunked body is accepted.
    let mut c = Client::connect(s.addr).unwrap();
    c.send_raw(b"POST /v1/locks/chunky/acquire HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"ttl\r\n9\r\n_ms\":5000\r\n1\r\n}\r\n0\r\n\r\n").unwrap();
    assert_eq!(c.read_reply().unwrap().status, 200);
    // Pipelined requests are answered in order on one connection.
    c.send_raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nPOST /v1/locks/chunky/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n{\"queue\":\"none\"}GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let statuses: Vec<u16> = (0..3).map(|_| c.read_reply().unwrap().status).collect();
    assert_eq!(statuses, vec![200, 409, 200]);
    // The worker survived all of it.
    assert_eq!(once(s.addr, "GET", "/healthz", &[], "").status, 200);
    assert_eq!(s.worker_pids().len(), 1);
}

#[test]
fn a_worker_at_max_connections_answers_503() {
    let s = Server::start(&config("workers = 1\nmax_connections = 3", ""));
    let mut held: Vec<Client> = (0..3).map(|_| Client::connect(s.addr).unwrap()).collect();
    for c in held.iter_mut() {
        assert_eq!(c.get("/healthz").unwrap().status, 200);
    }
    let mut extra = Client::connect(s.addr).unwrap();
    let r = extra.read_reply().unwrap();
    assert_eq!((r.status, r.header("Retry-After"), r.json()["error"].as_str()), (503, Some("1"), Some("overloaded")));
    drop(held.pop());
    // Room again once one closes (the worker notices the close first).
    wait_until("room after a close", || {
        Client::connect(s.addr).unwrap().get("/healthz").is_ok_and(|r| r.status == 200)
    });
}

/// Sets a process's soft open-file limit with `prlimit` (the hard limit stays).
fn set_nofile(pid: i32, limit: usize) {
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={limit}:")])
        .output()
        .expect("run prlimit");
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_worker_out_of_descriptors_keeps_the_connection_queued_and_takes_it_later() {
    let s = Server::start(&config("workers = 1", ""));
    let worker = s.worker_pids()[0];
    let limits = std::fs::read_to_string(format!("/proc/{worker}/limits")).unwrap();
    let soft: usize = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
        .expect("the worker's soft limit");
    let mut old = Client::connect(s.addr).unwrap();
    assert_eq!(old.get("/healthz").unwrap().status, 200);
    // A new descriptor takes the lowest free number; a limit at that number leaves none:
    // accept fails with EMFILE.
    let used: Vec<usize> = std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    let lowest_free = (0..).find(|n| !used.contains(n)).unwrap();
    set_nofile(worker, lowest_free);
    let mut waiting = Client::connect(s.addr).unwrap();
    waiting.send_raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    s.wait_log("accept failed");
    // The existing connection is still served meanwhile.
    assert_eq!(old.get("/healthz").unwrap().status, 200);
    set_nofile(worker, soft);
    assert_eq!(waiting.read_reply().expect("the queued connection is taken later").status, 200);
}

#[test]
fn r22_an_idle_event_stream_gets_a_ping_every_event_ping_ms() {
    const PING_MS: u64 = 300;
    let s = Server::start(&config("workers = 1", &format!("[http]\nevent_ping_ms = {PING_MS}\n")));
    let mut c = Client::connect(s.addr).unwrap();
    let held = c.post("/v1/locks/quiet/acquire", r#"{"ttl_ms":600000}"#).unwrap().json();
    let ticket = held["ticket"].as_str().unwrap();
    let mut stream = TcpStream::connect(s.addr).unwrap();
    // No ping within 10 s (33 intervals) is a failure: a stream pinged at the 15 s default
    // instead of the configured interval would fail here.
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let opened = Instant::now();
    write!(stream, "GET /v1/locks/quiet/events?ticket={ticket} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        assert!(reader.read_line(&mut head).unwrap() > 0, "the stream ended: {head}");
    }
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");
    // Nothing happens on the lock: after its first event the stream only pings.
    let mut before_first_ping = String::new();
    for k in 1..=3u32 {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(reader.read_line(&mut line).unwrap() > 0, "the stream ended");
            if line == ": ping\n" {
                break;
            }
            assert_eq!(k, 1, "only pings after the first one, got {line:?}");
            before_first_ping.push_str(&line);
        }
        // A lower bound only: the k-th ping cannot be written before k intervals after the
        // stream opened (the worker's clock counts whole milliseconds).
        let at_least = Duration::from_millis(u64::from(k) * (PING_MS - 1));
        assert!(opened.elapsed() >= at_least, "ping {k} after {:?}", opened.elapsed());
        let mut blank = String::new();
        reader.read_line(&mut blank).unwrap();
        assert_eq!(blank, "\n", "a ping is a comment line and a blank line");
    }
    assert!(before_first_ping.contains("event: acquired"), "{before_first_ping}");
}
