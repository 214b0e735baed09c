//! Hostile and unusual clients against the real server: a client that pipelines requests
//! and never reads the answers, ambiguous or uncommon request heads, `HEAD`, event ids at
//! the end of their range, and a waiter that shuts down its sending side.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::http::{once, Client, Reply};
use crate::support::{config, Server, DEADLINE};

const MIB: u64 = 1024 * 1024;
/// `http.max_unsent_bytes` by default.
const MAX_UNSENT_BYTES: u64 = MIB;
/// Requests one connection may have waiting for answers (the worker's pipeline limit).
const MAX_PIPELINE: u64 = 32;
/// A write that makes no progress for this long means the server stopped reading.
const STALL: Duration = Duration::from_secs(2);

/// A process's resident memory in bytes, if it still runs.
fn rss_bytes(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim();
    kib.parse::<u64>().ok().map(|k| k * 1024)
}

/// Samples a process's RSS every 10 ms until stopped: the peak, and whether it crossed a
/// bound (so a writer can give up at once instead of feeding a runaway process).
struct RssWatch {
    stop: mpsc::Sender<()>,
    peak: Arc<AtomicU64>,
    over: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl RssWatch {
    fn start(pid: i32, bound: u64) -> RssWatch {
        let (stop, stopped) = mpsc::channel::<()>();
        let peak = Arc::new(AtomicU64::new(0));
        let over = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (peak, over) = (Arc::clone(&peak), Arc::clone(&over));
            move || {
                while let Some(rss) = rss_bytes(pid) {
                    peak.fetch_max(rss, Ordering::SeqCst);
                    if rss > bound {
                        over.store(true, Ordering::SeqCst);
                    }
                    // The sampling period; a stop ends it at once.
                    if stopped.recv_timeout(Duration::from_millis(10)) != Err(mpsc::RecvTimeoutError::Timeout) {
                        return;
                    }
                }
            }
        });
        RssWatch { stop, peak, over, thread }
    }

    fn over(&self) -> bool {
        self.over.load(Ordering::SeqCst)
    }

    /// Stops sampling; returns the peak.
    fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.thread.join().unwrap();
        self.peak.load(Ordering::SeqCst)
    }
}

/// Writes `bytes` until they are all written, the server stops taking them (no progress
/// for [`STALL`]), or `give_up()`; returns how many were written.
fn write_until_stalled(stream: &mut TcpStream, bytes: &[u8], give_up: &dyn Fn() -> bool) -> usize {
    stream.set_write_timeout(Some(STALL)).unwrap();
    let mut at = 0;
    while at < bytes.len() && !give_up() {
        let end = (at + 16 * 1024).min(bytes.len());
        match stream.write(&bytes[at..end]) {
            Ok(n) => at += n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("the server broke the connection while being written to: {e}"),
        }
    }
    at
}

/// One metric's value (the first sample line that starts with `series`).
fn metric(s: &Server, series: &str) -> Option<u64> {
    let text = String::from_utf8(once(s.addr, "GET", "/metrics", &[], "").body).unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Requests answered by the server so far, every route and status (but these polls).
fn answered(s: &Server) -> u64 {
    let text = String::from_utf8(once(s.addr, "GET", "/metrics", &[], "").body).unwrap();
    text.lines()
        .filter(|l| l.starts_with("leasehold_http_requests_total{") && !l.contains("route=\"metrics\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Waits until the server has answered nothing new for a second: whatever it took from
/// the clients has been answered (or it has stopped taking anything).
fn wait_until_quiet(s: &Server, watch: &RssWatch) {
    let deadline = Instant::now() + DEADLINE;
    let mut last = (answered(s), Instant::now());
    loop {
        assert!(Instant::now() < deadline, "the server never went quiet");
        if watch.over() {
            return;
        }
        let now = answered(s);
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= Duration::from_secs(1) {
            return;
        }
    }
}

/// A pipeline of requests: their bytes, where each ends, and what each expects.
struct Pipeline<K> {
    bytes: Vec<u8>,
    ends: Vec<usize>,
    kinds: Vec<K>,
}

impl<K: Copy> Pipeline<K> {
    fn new(total_bytes: usize, request: impl Fn(usize) -> (String, K)) -> Pipeline<K> {
        let mut p = Pipeline { bytes: Vec::with_capacity(total_bytes), ends: Vec::new(), kinds: Vec::new() };
        while p.bytes.len() < total_bytes {
            let (text, kind) = request(p.ends.len());
            p.bytes.extend_from_slice(text.as_bytes());
            p.ends.push(p.bytes.len());
            p.kinds.push(kind);
        }
        p
    }

    /// The requests whose first byte went out when `written` bytes were written.
    fn started(&self, written: usize) -> usize {
        let whole = self.ends.partition_point(|&end| end <= written);
        if whole < self.ends.len() && written > self.ends.get(whole.wrapping_sub(1)).copied().unwrap_or(0) {
            whole + 1
        } else {
            whole
        }
    }
}

/// The non-reading pipeliner: `pipeline` is written on a fresh connection until the server
/// stops reading it, while the worker's RSS is watched against `baseline + bound`. Then the
/// client finishes the request it was in the middle of, adds a last `Connection: close`
/// request to `/healthz`, and reads every answer it is owed, checking each with `check` in
/// order. Returns (bytes the server took before it stopped reading, peak RSS).
fn pipeline_without_reading<K: Copy>(
    s: &Server,
    pipeline: &Pipeline<K>,
    bound: u64,
    check: impl Fn(usize, K, &Reply),
) -> (usize, u64) {
    let worker = s.worker_pids()[0];
    let baseline = rss_bytes(worker).unwrap();
    let watch = RssWatch::start(worker, baseline + bound);
    let mut client = Client::connect(s.addr).unwrap();
    let mut writer = client.stream_clone();
    let written = write_until_stalled(&mut writer, &pipeline.bytes, &|| watch.over());
    wait_until_quiet(s, &watch);
    let peak = watch.stop();
    assert!(
        peak <= baseline + bound,
        "the worker grew from {} MiB to {} MiB (bound: {} MiB more) for a client that does not read",
        baseline / MIB,
        peak / MIB,
        bound / MIB
    );
    assert!(written < pipeline.bytes.len(), "the server read all {written} bytes of a client that never reads");
    let unsent = metric(s, "leasehold_unsent_bytes{worker=\"0\"}").unwrap();
    assert!(unsent >= MAX_UNSENT_BYTES, "the worker stopped reading with only {unsent} bytes unsent");
    assert_eq!(metric(s, "leasehold_max_unsent_bytes"), Some(MAX_UNSENT_BYTES));
    // Now the client reads all it is owed (and finishes what it was writing meanwhile).
    let owed = pipeline.started(written);
    let rest = pipeline.bytes[written..pipeline.ends[owed - 1]].to_vec();
    let finish = std::thread::spawn(move || {
        writer.set_write_timeout(None).unwrap();
        writer.write_all(&rest).unwrap();
        writer.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    });
    for i in 0..owed {
        let reply = client.read_reply().unwrap_or_else(|e| panic!("answer {i} of {owed} is missing: {e}"));
        assert!(!reply.closes(), "answer {i} closes the connection");
        check(i, pipeline.kinds[i], &reply);
    }
    finish.join().unwrap();
    let last = client.read_reply().expect("the last answer");
    assert_eq!((last.status, last.json()["status"].as_str()), (200, Some("ok")), "answers were lost or added");
    assert!(last.closes());
    (written, peak)
}

/// Holders of the big lock.
const HOLDERS: usize = 5_000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Ask {
    /// `GET /v1/locks/wide`: the big answer.
    Wide,
    /// `GET /v1/locks/absent`: a small 404.
    Absent,
    /// `GET /healthz` padded to 8 KiB: a small answer for many bytes of request.
    Health,
}

/// Requests for big answers at the head of the pipeline: if the server read them all, it
/// would hold 200 of them (60 MiB here).
const BIG_ASKS: usize = 400;
/// Bytes of requests a non-reading client tries to write: more than the kernel's socket
/// buffers can take on both sides (net.ipv4.tcp_rmem and tcp_wmem allow up to 32 and 4 MiB
/// by default), so the writes stall once the server stops reading.
const PIPELINE_BYTES: usize = 48 << 20;

#[test]
fn r12_a_client_that_never_reads_big_answers_cannot_grow_its_worker() {
    let s = Server::start(&config("workers = 1", "[journal]\nfsync = \"never\"\n"));
    // A semaphore with many holders: its status is a big answer (default max_limit: 10000).
    let mut c = Client::connect(s.addr).unwrap();
    let body = format!(r#"{{"limit":{HOLDERS},"ttl_ms":3600000}}"#);
    let acquire =
        format!("POST /v1/locks/wide/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    for batch in 0..HOLDERS / 25 {
        c.send_raw(acquire.repeat(25).as_bytes()).unwrap();
        for i in 0..25 {
            let r = c.read_reply().unwrap();
            assert_eq!(r.status, 200, "acquire {}: {}", batch * 25 + i, String::from_utf8_lossy(&r.body));
        }
    }
    let status = c.get("/v1/locks/wide").unwrap();
    assert_eq!(status.json()["holders"].as_array().unwrap().len(), HOLDERS);
    let answer_bytes = status.body.len() as u64;
    // The memory a worker may hold for one connection: the unsent limit, plus answers to
    // the requests already taken when it was reached (at most the pipeline limit), plus
    // the keeper's frame of one answer and its parsed form while it is being re-encoded,
    // plus the input buffer (one 64 KiB read and a partial request):
    //   1 MiB + 32 × answer + 3 × answer + 0.1 MiB  (answer ≈ 0.3 MiB here: ~12 MiB).
    // The bound is more than twice that, for the allocator's slack: 32 MiB.
    assert!(answer_bytes < 400 * 1024, "the arithmetic below assumes answers under 400 KiB, not {answer_bytes}");
    let held = MAX_UNSENT_BYTES + (MAX_PIPELINE + 3) * answer_bytes + MIB / 10;
    let bound = 32 * MIB;
    assert!(2 * held <= bound, "{held}");
    let pad = "p".repeat(8 * 1024);
    let pipeline = Pipeline::new(PIPELINE_BYTES, |i| match i {
        _ if i < BIG_ASKS && i % 2 == 0 => ("GET /v1/locks/wide HTTP/1.1\r\nHost: x\r\n\r\n".into(), Ask::Wide),
        _ if i < BIG_ASKS => ("GET /v1/locks/absent HTTP/1.1\r\nHost: x\r\n\r\n".into(), Ask::Absent),
        _ => (format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n"), Ask::Health),
    });
    let (written, peak) = pipeline_without_reading(&s, &pipeline, bound, |i, kind, r| match kind {
        Ask::Wide => {
            assert_eq!(r.status, 200, "answer {i}");
            assert_eq!(r.body.len() as u64, answer_bytes, "answer {i} is whole");
            assert_eq!(r.json()["holders"].as_array().unwrap().len(), HOLDERS, "answer {i}");
        }
        Ask::Absent => {
            assert_eq!((r.status, r.json()["error"].as_str()), (404, Some("not_found")), "answer {i}");
        }
        Ask::Health => assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")), "answer {i}"),
    });
    eprintln!("big answers: the server took {written} bytes, peak worker RSS {} MiB", peak / MIB);
}

#[test]
fn r12_a_client_that_never_reads_healthz_answers_cannot_grow_its_worker() {
    let s = Server::start(&config("workers = 1", ""));
    // Answers of about 100 bytes for requests of 37: if the server read them all, 48 MiB
    // of requests would queue 130 MiB of answers. Held per connection: the 1 MiB limit, 32
    // small answers and the input buffer; the bound leaves room for the allocator.
    let pipeline = Pipeline::new(PIPELINE_BYTES, |_| ("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_string(), ()));
    let (written, peak) = pipeline_without_reading(&s, &pipeline, 16 * MIB, |i, (), r| {
        assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("ok")), "answer {i}");
    });
    eprintln!("healthz: the server took {written} bytes, peak worker RSS {} MiB", peak / MIB);
}

/// A raw connection that reads answers head and body separately (for `HEAD`, interim
/// answers and streams).
struct Raw {
    reader: BufReader<TcpStream>,
}

/// A response head: status and header lines (names as sent).
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn content_length(&self) -> usize {
        self.header("content-length").and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no length: {self:?}"))
    }
}

impl Raw {
    fn connect(s: &Server) -> Raw {
        let stream = TcpStream::connect(s.addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        Raw { reader: BufReader::new(stream) }
    }

    fn send(&mut self, bytes: &str) {
        self.reader.get_mut().write_all(bytes.as_bytes()).unwrap();
    }

    /// The next response head (interim ones included).
    fn head(&mut self) -> Head {
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end_matches("\r\n");
            if line.is_empty() {
                return Head { status, headers };
            }
            let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("bad header line {line:?}"));
            headers.push((name.to_string(), value.to_string()));
        }
    }

    fn body(&mut self, length: usize) -> Vec<u8> {
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        body
    }

    /// A whole response with a length: head and JSON body.
    fn response(&mut self) -> (Head, serde_json::Value) {
        let head = self.head();
        let body = self.body(head.content_length());
        (head, serde_json::from_slice(&body).unwrap())
    }

    /// The next Server-Sent Event as (id, name).
    fn event(&mut self) -> (u64, String) {
        let (mut id, mut name) = (None, String::new());
        loop {
            let mut line = String::new();
            assert!(self.reader.read_line(&mut line).unwrap() > 0, "the stream ended");
            let line = line.trim_end_matches('\n');
            if line.is_empty() && !name.is_empty() {
                return (id.expect("every event has an id"), name);
            }
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.parse().unwrap_or_else(|_| panic!("id {v:?}")));
            } else if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_string();
            }
        }
    }

    /// Whether the server closed the connection (after everything read so far).
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }
}

fn post_json(c: &mut Client, path: &str, body: serde_json::Value) -> Reply {
    c.post(path, &body.to_string()).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn ticket_of(r: &Reply) -> String {
    r.json()["ticket"].as_str().unwrap_or_else(|| panic!("no ticket: {}", String::from_utf8_lossy(&r.body))).to_string()
}

#[test]
fn r12_duplicate_api_keys_are_a_400_with_a_json_body() {
    let keys = "[[auth.keys]]\nkey = \"reader-key-0001\"\nrole = \"read\"\n\
                [[auth.keys]]\nkey = \"writer-key-0001\"\nrole = \"write\"\n";
    let s = Server::start(&config("workers = 1", keys));
    // One key alone works; the reader may not write.
    let read = [("x-api-key", "reader-key-0001")];
    assert_eq!(once(s.addr, "GET", "/v1/locks", &read, "").status, 200);
    let denied = once(s.addr, "PUT", "/v1/locks/d/data/k", &[("x-api-key", "reader-key-0001"), ("x-ticket", "x")], "1");
    assert_eq!(denied.status, 403);
    // Two keys, whichever order: refused, whatever either would allow.
    for pair in [["reader-key-0001", "writer-key-0001"], ["writer-key-0001", "reader-key-0001"]] {
        let r = once(s.addr, "GET", "/v1/locks", &[("x-api-key", pair[0]), ("X-Api-Key", pair[1])], "");
        assert_eq!(r.status, 400, "{pair:?}");
        let body = r.json();
        assert_eq!(body["error"], "bad_request", "{body}");
        assert!(body["message"].as_str().unwrap().contains("x-api-key"), "{body}");
    }
}

#[test]
fn r12_absolute_form_targets_are_routed_by_their_path() {
    let s = Server::start(&config("workers = 1", ""));
    let mut raw = Raw::connect(&s);
    let body = r#"{"ttl_ms":30000}"#;
    raw.send(&format!(
        "POST http://{addr}/v1/locks/absolute/acquire HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\r\n{body}\
         GET HTTP://elsewhere.example:81/v1/locks?prefix=abs HTTP/1.1\r\nHost: {addr}\r\n\r\n\
         GET http://{addr} HTTP/1.1\r\nHost: {addr}\r\n\r\n\
         GET http://{addr}/healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n",
        body.len(),
        addr = s.addr
    ));
    let (head, acquired) = raw.response();
    assert_eq!((head.status, acquired["status"].as_str()), (200, Some("acquired")), "{acquired}");
    let (head, list) = raw.response();
    assert_eq!(head.status, 200);
    assert_eq!(list["locks"][0]["name"], "absolute", "routed by path and query: {list}");
    let (head, _) = raw.response();
    assert_eq!(head.status, 404, "an authority alone names the path /");
    let (head, health) = raw.response();
    assert_eq!((head.status, health["status"].as_str()), (200, Some("ok")));
    // The forms that are not for an origin server: a clear refusal with a JSON body.
    for (request, status, code) in [
        ("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
        ("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501, "not_implemented"),
        ("GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
        ("GET example.com:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
        ("GET ftp://example.com/healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    ] {
        let mut raw = Raw::connect(&s);
        raw.send(request);
        let (head, body) = raw.response();
        assert_eq!((head.status, body["error"].as_str()), (status, Some(code)), "{request:?}: {body}");
    }
}

#[test]
fn r12_head_answers_as_get_without_the_body_and_the_connection_goes_on() {
    let s = Server::start(&config("workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    post_json(&mut c, "/v1/locks/h/acquire", serde_json::json!({"ttl_ms": 60_000, "owner": "o"}));
    let waiter = ticket_of(&post_json(&mut c, "/v1/locks/h/acquire", serde_json::json!({})));
    let mut raw = Raw::connect(&s);
    let paths = ["/healthz", "/v1/locks/h", "/v1/locks", "/nope", "/metrics"];
    let mut pipelined = String::new();
    for path in paths {
        pipelined.push_str(&format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\nGET {path} HTTP/1.1\r\nHost: x\r\n\r\n"));
    }
    raw.send(&pipelined);
    for path in paths {
        let head = raw.head();
        let get = raw.head();
        let body = raw.body(get.content_length());
        assert_eq!(head.status, get.status, "HEAD {path}");
        if path == "/metrics" {
            // The text changes between the two requests; its shape does not.
            assert_eq!(head.header("Content-Type"), get.header("Content-Type"));
            assert!(head.content_length() > 0);
        } else {
            assert_eq!(head.headers, get.headers, "HEAD {path}: the same head as GET, Content-Length included");
        }
        assert_eq!(get.content_length(), body.len());
    }
    // A route that only takes POST says so, without HEAD.
    raw.send("HEAD /v1/locks/h/acquire HTTP/1.1\r\nHost: x\r\n\r\n");
    let refused = raw.head();
    assert_eq!((refused.status, refused.header("Allow")), (405, Some("POST")));
    // An event stream: HEAD checks the ticket and answers the stream's head, then the
    // connection serves the next request (no stream follows).
    raw.send(&format!(
        "HEAD /v1/locks/h/events?ticket={waiter} HTTP/1.1\r\nHost: x\r\n\r\n\
         HEAD /v1/locks/h/events?ticket=AAAAAAAAAAAAAAAAAAAAAA HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    ));
    let stream = raw.head();
    assert_eq!((stream.status, stream.header("Content-Type")), (200, Some("text/event-stream")), "{stream:?}");
    assert_eq!(stream.header("Content-Length"), None, "a stream's head has no length, as for GET");
    assert_eq!(stream.header("Connection"), None, "the connection stays open");
    let unknown = raw.head();
    assert_eq!(unknown.status, 410, "{unknown:?}");
    let (after, health) = raw.response();
    assert_eq!((after.status, health["status"].as_str()), (200, Some("ok")));
}

#[test]
fn r12_a_last_event_id_near_u64_max_starts_the_ids_over_instead_of_wrapping() {
    let s = Server::start(&config("workers = 1", ""));
    let worker = s.worker_pids();
    let mut c = Client::connect(s.addr).unwrap();
    let holder = post_json(&mut c, "/v1/locks/ids/acquire", serde_json::json!({"ttl_ms": 60_000}));
    let waiter = ticket_of(&post_json(&mut c, "/v1/locks/ids/acquire", serde_json::json!({})));
    let open = |last: &str| {
        let mut raw = Raw::connect(&s);
        raw.send(&format!(
            "GET /v1/locks/ids/events?ticket={waiter} HTTP/1.1\r\nHost: x\r\nLast-Event-ID: {last}\r\n\r\n"
        ));
        let head = raw.head();
        assert_eq!(head.status, 200, "Last-Event-ID {last}: {head:?}");
        raw
    };
    let mut wrapped = open(&(u64::MAX - 1).to_string());
    let mut garbage = open("not-a-number");
    let mut edge = open("9007199254740991");
    assert_eq!(wrapped.event(), (1, "position".into()), "an id that cannot be continued is ignored");
    assert_eq!(garbage.event(), (1, "position".into()));
    assert_eq!(edge.event(), (9_007_199_254_740_992, "position".into()), "the largest usable id continues");
    post_json(&mut c, "/v1/locks/ids/release", serde_json::json!({ "ticket": ticket_of(&holder) }));
    assert_eq!(wrapped.event(), (2, "acquired".into()));
    assert_eq!(garbage.event(), (2, "acquired".into()));
    assert_eq!(edge.event(), (9_007_199_254_740_993, "acquired".into()));
    assert_eq!(s.worker_pids(), worker, "the worker lived through it");
}

#[test]
fn r12_a_half_closed_waiter_is_answered_when_granted() {
    let s = Server::start(&config("workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    let holder = post_json(&mut c, "/v1/locks/half/acquire", serde_json::json!({"ttl_ms": 60_000}));
    let mut waiter = Raw::connect(&s);
    let body = r#"{"ttl_ms":30000,"wait_ms":60000}"#;
    waiter.send(&format!(
        "POST /v1/locks/half/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    s.wait_waiting_requests(1, None);
    // The client says it will send nothing more, and keeps reading.
    waiter.reader.get_ref().shutdown(Shutdown::Write).unwrap();
    // The server has seen the end of input when it probes: an interim answer, which an
    // HTTP/1.1 client skips.
    let interim = waiter.head();
    assert_eq!(interim.status, 100, "{interim:?}");
    s.wait_waiting_requests(1, None);
    let released = post_json(&mut c, "/v1/locks/half/release", serde_json::json!({ "ticket": ticket_of(&holder) }));
    assert_eq!(released.status, 200);
    let (head, granted) = waiter.response();
    assert_eq!((head.status, granted["status"].as_str()), (200, Some("acquired")), "{granted}");
    assert_eq!(head.header("Connection"), Some("close"), "nothing more will come: the answer closes");
    assert!(waiter.closed());
    // The lease is the waiter's: held, claimed, with the fence after the holder's.
    let view = c.get("/v1/locks/half").unwrap().json();
    assert_eq!((view["used"].as_u64(), view["holders"][0]["claimed"].as_bool()), (Some(1), Some(true)), "{view}");
    assert!(granted["fence"].as_u64() > holder.json()["fence"].as_u64());
}

#[test]
fn a_waiter_that_closes_its_socket_is_still_cancelled_when_its_input_ends() {
    let s = Server::start(&config("workers = 1", "[locks]\nclaim_ms = 60000\n"));
    let mut c = Client::connect(s.addr).unwrap();
    let holder = post_json(&mut c, "/v1/locks/gone/acquire", serde_json::json!({"ttl_ms": 60_000}));
    let mut waiter = TcpStream::connect(s.addr).unwrap();
    let body = r#"{"wait_ms":60000}"#;
    write!(waiter, "POST /v1/locks/gone/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    s.wait_waiting_requests(1, None);
    // A whole close looks like a half close to the server, until its probe meets a reset.
    drop(waiter);
    s.wait_waiting_requests(0, None);
    post_json(&mut c, "/v1/locks/gone/release", serde_json::json!({ "ticket": ticket_of(&holder) }));
    let view = c.get("/v1/locks/gone").unwrap().json();
    assert_eq!(view["holders"][0]["claimed"], false, "granted to nobody: {view}");
}
