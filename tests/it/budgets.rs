//! Issue 12, totals and budgets, end to end: every server-wide total refuses with its own
//! 503 code and changes nothing, resources can be deleted (with the write role, within the
//! key's prefix), every budget shows in `/metrics` with its use and limit, and a reload
//! applies new limits.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::http::{once, Client, Reply};
use crate::support::{config, Server, DEADLINE};

const KEYS: &str = "\
[[auth.keys]]
key = \"write-secret\"
role = \"write\"
[[auth.keys]]
key = \"lock-secret\"
role = \"lock\"
[[auth.keys]]
key = \"team-a-secret\"
role = \"write\"
prefix = \"team-a:\"
";

fn call(s: &Server, key: &str, method: &str, path: &str, body: &str) -> Reply {
    once(s.addr, method, path, &[("x-api-key", key)], body)
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Asserts a refusal by a server-wide total: 503, its code, `Retry-After`.
fn assert_full(r: &Reply, code: &str) {
    assert_eq!(r.status, 503, "{}", text(r));
    assert_eq!(r.json()["error"], code, "{}", text(r));
    assert!(r.header("Retry-After").is_some(), "no Retry-After on {code}");
}

fn acquire(c: &mut Client, lock: &str) -> Reply {
    c.post(&format!("/v1/locks/{lock}/acquire"), "{\"ttl_ms\":60000}").unwrap()
}

fn ticket_of(r: &Reply) -> String {
    r.json()["ticket"].as_str().unwrap_or_else(|| panic!("no ticket in {}", text(r))).to_string()
}

fn put_data(c: &mut Client, lock: &str, key: &str, ticket: &str, body: &str) -> Reply {
    c.request("PUT", &format!("/v1/locks/{lock}/data/{key}"), &[("x-ticket", ticket)], body).unwrap()
}

/// Polls `/metrics` until it has `line` (with a deadline).
fn wait_metric(s: &Server, key: Option<&str>, line: &str) -> String {
    let headers: Vec<(&str, &str)> = key.map(|k| vec![("x-api-key", k)]).unwrap_or_default();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let page = String::from_utf8(once(s.addr, "GET", "/metrics", &headers, "").body).unwrap();
        if page.lines().any(|l| l == line) {
            return page;
        }
        assert!(Instant::now() < deadline, "/metrics never had {line:?}:\n{page}");
    }
}

#[test]
fn r12_data_writes_past_the_total_are_refused_and_nothing_is_written() {
    let s = Server::start(&config("workers = 1", "[locks]\nmax_data_bytes = 100\nmax_data_bytes_total = 150\n"));
    let mut c = Client::connect(s.addr).unwrap();
    let a = ticket_of(&acquire(&mut c, "store-a"));
    let b = ticket_of(&acquire(&mut c, "store-b"));
    // "x" + 90 bytes on one lock: 91 of the 150.
    let ninety = format!("\"{}\"", "9".repeat(88));
    assert_eq!(put_data(&mut c, "store-a", "x", &a, &ninety).status, 201);
    // Within this lock's own 100 bytes, but past the total: refused, naming the key.
    let sixty = format!("\"{}\"", "6".repeat(58));
    let refused = put_data(&mut c, "store-b", "y", &b, &sixty);
    assert_full(&refused, "data_full");
    assert!(refused.json()["message"].as_str().unwrap().contains("\"y\""), "{}", text(&refused));
    assert_eq!(c.get("/v1/locks/store-b/data/y").unwrap().status, 404, "nothing was written");
    // What fits still goes in; freeing bytes makes room.
    assert_eq!(put_data(&mut c, "store-b", "y", &b, "[1]").status, 201);
    let del = c.request("DELETE", "/v1/locks/store-a/data/x", &[("x-ticket", &a)], "").unwrap();
    assert_eq!(del.status, 200);
    assert_eq!(put_data(&mut c, "store-b", "y", &b, &sixty).status, 200);
    assert_eq!(c.get("/v1/locks/store-b/data/y").unwrap().body, sixty.as_bytes());
}

#[test]
fn r12_tickets_past_the_total_are_refused_until_one_ends() {
    let s = Server::start(&config("workers = 1", "[locks]\nmax_tickets_total = 2\n"));
    let mut c = Client::connect(s.addr).unwrap();
    let first = ticket_of(&acquire(&mut c, "t1"));
    // A waiter takes a ticket as a holder does.
    assert_eq!(acquire(&mut c, "t1").status, 202);
    let refused = acquire(&mut c, "t2");
    assert_full(&refused, "tickets_full");
    assert_eq!(c.get("/v1/locks/t2").unwrap().status, 404, "the refused acquire left no lock");
    // Its own ticket still renews.
    let renew = c.post("/v1/locks/t1/renew", &serde_json::json!({ "ticket": first }).to_string()).unwrap();
    assert_eq!(renew.status, 200);
    // Releasing frees one (the waiter is admitted and keeps its own).
    let release = c.post("/v1/locks/t1/release", &serde_json::json!({ "ticket": first }).to_string()).unwrap();
    assert_eq!(release.status, 200);
    assert_eq!(acquire(&mut c, "t2").status, 200);
}

#[test]
fn r12_resource_registrations_past_the_cap_are_refused() {
    let s = Server::start(&config("workers = 1", &format!("[locks]\nmax_resources = 2\n{KEYS}")));
    let create = |name: &str| call(&s, "write-secret", "POST", "/resource", &format!("{{\"name\":\"{name}\"}}"));
    assert_eq!(create("r1").status, 201);
    assert_eq!(create("r2").status, 201);
    assert_full(&create("r3"), "resources_full");
    assert_eq!(call(&s, "write-secret", "GET", "/resource/r3/sel?lock=0", "").status, 404, "r3 was not registered");
    // A deletion makes room.
    assert_eq!(call(&s, "write-secret", "DELETE", "/resource/r1", "").status, 204);
    assert_eq!(create("r3").status, 201);
}

#[test]
fn r12_delete_resource_deletes_it_with_its_data_and_the_name_can_be_registered_again() {
    let s = Server::start(&config("workers = 1", KEYS));
    let w = "write-secret";
    assert_eq!(call(&s, w, "POST", "/resource", r#"{"name":"printer","timeout":-1}"#).status, 201);
    assert_eq!(call(&s, w, "PUT", "/resource/printer/A4", r#"{"status":"ready"}"#).status, 204);
    // While someone holds its lock, it stays, data and all.
    let locked = call(&s, w, "PUT", "/resource/printer/A4/lock", "");
    assert_eq!(locked.json()["locked"], true);
    let ticket = locked.header("X-Ticket").unwrap().to_string();
    let busy = call(&s, w, "DELETE", "/resource/printer", "");
    assert_eq!(busy.status, 409, "{}", text(&busy));
    assert_eq!(busy.json()["error"], "wrong_state");
    assert_eq!(call(&s, w, "GET", "/resource/printer/A4?lock=0", "").status, 200);
    let unlock = once(s.addr, "PUT", "/resource/printer/A4/unlock", &[("x-api-key", w), ("X-Ticket", &ticket)], "");
    assert_eq!(unlock.status, 200);
    // Deleted: 204, then the resource is unknown on every route.
    let deleted = call(&s, w, "DELETE", "/resource/printer", "");
    assert_eq!((deleted.status, deleted.body.len()), (204, 0));
    let gone = call(&s, w, "GET", "/resource/printer/A4?lock=0", "");
    assert_eq!((gone.status, gone.json()["message"].as_str()), (404, Some("Resource not found")));
    assert_eq!(call(&s, w, "GET", "/resource/printer/A4", "").status, 404);
    assert_eq!(call(&s, w, "DELETE", "/resource/printer", "").status, 404);
    // The data went with it: a new registration of the name starts empty.
    assert_eq!(call(&s, w, "GET", "/v1/locks/printer/data/A4", "").status, 404);
    assert_eq!(call(&s, w, "POST", "/resource", r#"{"name":"printer","timeout":-1}"#).status, 201);
    let fresh = call(&s, w, "GET", "/resource/printer/A4?lock=0", "");
    assert_eq!((fresh.status, fresh.json()["message"].as_str()), (404, Some("no data for this selector")));
}

#[test]
fn r12_a_prefix_limited_write_key_cannot_delete_another_prefix_s_resource() {
    let s = Server::start(&config("workers = 1", KEYS));
    assert_eq!(call(&s, "write-secret", "POST", "/resource", r#"{"name":"team-b:printer"}"#).status, 201);
    assert_eq!(call(&s, "team-a-secret", "POST", "/resource", r#"{"name":"team-a:printer"}"#).status, 201);
    let other = call(&s, "team-a-secret", "DELETE", "/resource/team-b:printer", "");
    assert_eq!(other.status, 403, "{}", text(&other));
    assert_eq!(other.json()["error"], "forbidden");
    // A key below write may not delete either.
    assert_eq!(call(&s, "lock-secret", "DELETE", "/resource/team-a:printer", "").status, 403);
    // Both are still registered; the key deletes what is under its own prefix.
    assert_eq!(call(&s, "write-secret", "POST", "/resource", r#"{"name":"team-b:printer"}"#).status, 409);
    assert_eq!(call(&s, "team-a-secret", "DELETE", "/resource/team-a:printer", "").status, 204);
}

/// Opens an event stream and reads its head; returns the connection and its status line.
fn open_stream(s: &Server, lock: &str, ticket: &str) -> (BufReader<TcpStream>, String) {
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET /v1/locks/{lock}/events?ticket={ticket} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line);
    }
    (reader, head)
}

#[test]
fn r12_event_streams_past_the_total_are_refused() {
    let s = Server::start(&config("workers = 2", "[locks]\nmax_event_streams = 1\n"));
    let mut c = Client::connect(s.addr).unwrap();
    let ticket = ticket_of(&acquire(&mut c, "watched"));
    let (first, head) = open_stream(&s, "watched", &ticket);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let refused = once(s.addr, "GET", &format!("/v1/locks/watched/events?ticket={ticket}"), &[], "");
    assert_full(&refused, "streams_full");
    // Once the first closes, there is room again.
    drop(first);
    wait_metric(&s, None, "leasehold_budget_used{budget=\"event_streams\"} 0");
    let (_second, head) = open_stream(&s, "watched", &ticket);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[test]
fn r12_budgets_are_visible_in_metrics_with_use_and_limit() {
    let limits = "[locks]\nmax_locks = 1000\nmax_tickets_total = 900\nmax_data_bytes = 100\n\
                  max_data_bytes_total = 800\nmax_resources = 700\nmax_event_streams = 600\n";
    let s = Server::start(&config("workers = 1", limits));
    let mut c = Client::connect(s.addr).unwrap();
    let holder = ticket_of(&acquire(&mut c, "m1"));
    assert_eq!(acquire(&mut c, "m1").status, 202);
    assert_eq!(put_data(&mut c, "m1", "k", &holder, "[1]").status, 201);
    assert_eq!(c.post("/resource", r#"{"name":"m2"}"#).unwrap().status, 201);
    let (_stream, head) = open_stream(&s, "m1", &holder);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let page = wait_metric(&s, None, "leasehold_budget_used{budget=\"event_streams\"} 1");
    for (budget, used, limit) in [
        ("locks", 1, 1000),
        ("tickets", 2, 900),
        ("data_bytes", 4, 800),
        ("resources", 1, 700),
        ("event_streams", 1, 600),
    ] {
        let want_used = format!("leasehold_budget_used{{budget=\"{budget}\"}} {used}");
        let want_limit = format!("leasehold_budget_limit{{budget=\"{budget}\"}} {limit}");
        assert!(page.lines().any(|l| l == want_used), "no {want_used:?} in:\n{page}");
        assert!(page.lines().any(|l| l == want_limit), "no {want_limit:?} in:\n{page}");
    }
    assert!(page.contains("# TYPE leasehold_budget_used gauge"));
    assert!(page.contains("# TYPE leasehold_budget_limit gauge"));
}

#[test]
fn r12_a_reload_applies_new_budgets() {
    let mut s = Server::start(&config("workers = 1", "[locks]\nmax_resources = 1\n"));
    let create = |s: &Server, name: &str| once(s.addr, "POST", "/resource", &[], &format!("{{\"name\":\"{name}\"}}"));
    assert_eq!(create(&s, "one").status, 201);
    assert_full(&create(&s, "two"), "resources_full");
    let text = std::fs::read_to_string(&s.config_path).unwrap();
    std::fs::write(&s.config_path, text.replace("max_resources = 1", "max_resources = 3")).unwrap();
    s.signal(Signal::SIGHUP);
    s.wait_note("RELOADING=1");
    s.wait_note("READY=1");
    wait_metric(&s, None, "leasehold_budget_limit{budget=\"resources\"} 3");
    assert_eq!(create(&s, "two").status, 201);
    assert_eq!(create(&s, "three").status, 201);
    assert_full(&create(&s, "four"), "resources_full");
}
