//! The native API end to end: waiting, fairness, semaphores, presence, event streams, data,
//! status and listing, against the real server.

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use crate::support::http::{once, Client, Reply};
use crate::support::sse::Events;
use crate::support::{config, wait_for, wait_until, Server};

fn post(c: &mut Client, path: &str, body: serde_json::Value) -> Reply {
    c.post(path, &body.to_string()).unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

fn acquire_waiting(c: &mut Client, lock: &str, extra: serde_json::Value) -> Reply {
    let mut body = serde_json::json!({"ttl_ms": 30_000, "wait_ms": 60_000});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    post(c, &format!("/v1/locks/{lock}/acquire"), body)
}

fn release(c: &mut Client, lock: &str, ticket: &str) -> Reply {
    post(c, &format!("/v1/locks/{lock}/release"), serde_json::json!({ "ticket": ticket }))
}

fn ticket_of(r: &Reply) -> String {
    r.json()["ticket"]
        .as_str()
        .unwrap_or_else(|| panic!("no ticket in {}", String::from_utf8_lossy(&r.body)))
        .to_string()
}

#[test]
fn mutual_exclusion_64_clients_100_cycles_keeps_a_racy_counter_exact() {
    let s = Server::start(&config("workers = 2", ""));
    const CLIENTS: usize = 64;
    const CYCLES: u64 = 100;
    let counter = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (counter, start, addr) = (Arc::clone(&counter), Arc::clone(&start), s.addr);
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                let mut grants = Vec::new();
                start.wait();
                for _ in 0..CYCLES {
                    let r = acquire_waiting(&mut c, "counter", serde_json::json!({}));
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    let body = r.json();
                    // A read-modify-write that loses updates unless only one client runs it.
                    let seen = counter.load(Ordering::SeqCst);
                    std::thread::yield_now();
                    counter.store(seen + 1, Ordering::SeqCst);
                    grants.push((seen, body["fence"].as_u64().unwrap()));
                    assert_eq!(release(&mut c, "counter", &ticket_of(&r)).status, 200);
                }
                grants
            })
        })
        .collect();
    let mut grants: Vec<(u64, u64)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    assert_eq!(counter.load(Ordering::SeqCst), CLIENTS as u64 * CYCLES, "a lost update: two holders at once");
    // The counter value each holder read orders the grants; fences must rise in that order.
    grants.sort_unstable();
    assert!(grants.iter().enumerate().all(|(i, &(seen, _))| seen == i as u64));
    assert!(grants.windows(2).all(|w| w[0].1 < w[1].1), "fences not strictly increasing in grant order");
}

#[test]
fn a_semaphore_of_3_with_weights_1_and_2_never_holds_more_than_3() {
    let s = Server::start(&config("workers = 2", ""));
    const CLIENTS: usize = 12;
    const CYCLES: usize = 25;
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = s.addr;
            std::thread::spawn(move || {
                let weight = 1 + (i % 2) as u64;
                let mut c = Client::connect(addr).unwrap();
                let mut spans = Vec::new();
                for _ in 0..CYCLES {
                    let r = acquire_waiting(&mut c, "licences", serde_json::json!({"limit": 3, "weight": weight}));
                    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    let granted_at = r.json()["at_ms"].as_u64().unwrap();
                    let done = release(&mut c, "licences", &ticket_of(&r));
                    spans.push((granted_at, done.json()["at_ms"].as_u64().unwrap(), weight));
                }
                spans
            })
        })
        .collect();
    let spans: Vec<(u64, u64, u64)> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    // Sweep the server's own timestamps; at equal times releases come first (a grant a
    // release made room for carries the release's time or later).
    let mut events: Vec<(u64, i64)> = Vec::new();
    for &(from, to, w) in &spans {
        events.push((from, w as i64));
        events.push((to, -(w as i64)));
    }
    events.sort_by_key(|&(t, delta)| (t, delta));
    let mut held = 0;
    for (t, delta) in events {
        held += delta;
        assert!(held <= 3, "{held} permits held at {t}");
    }
    assert_eq!(held, 0);
}

/// Queues `n` waiters one after another (so their order is known) and returns their tickets.
fn queue_in_order(s: &Server, lock: &str, n: usize, queue: &str) -> Vec<String> {
    let mut c = Client::connect(s.addr).unwrap();
    (0..n)
        .map(|_| {
            let r = post(
                &mut c,
                &format!("/v1/locks/{lock}/acquire"),
                serde_json::json!({"queue": queue, "ttl_ms": 30_000}),
            );
            assert_eq!(r.status, 202);
            ticket_of(&r)
        })
        .collect()
}

/// Has every ticket long-poll for its grant, release at once, and report its fence; returns
/// the fences by ticket index, after `release_first` frees the lock.
fn grant_order(s: &Server, lock: &str, tickets: &[String], queue: &str, release_first: impl FnOnce()) -> Vec<u64> {
    let ready = Arc::new(Barrier::new(tickets.len() + 1));
    let threads: Vec<_> = tickets
        .iter()
        .cloned()
        .map(|ticket| {
            let (addr, lock, queue, ready) = (s.addr, lock.to_string(), queue.to_string(), Arc::clone(&ready));
            std::thread::spawn(move || {
                let mut c = Client::connect(addr).unwrap();
                ready.wait();
                let r = acquire_waiting(&mut c, &lock, serde_json::json!({"ticket": ticket, "queue": queue}));
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                let fence = r.json()["fence"].as_u64().unwrap();
                assert_eq!(release(&mut c, &lock, &ticket).status, 200);
                fence
            })
        })
        .collect();
    ready.wait();
    release_first();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn fifo_grants_200_waiters_in_exactly_their_order() {
    let s = Server::start(&config("workers = 2", ""));
    let mut holder = Client::connect(s.addr).unwrap();
    let held = post(&mut holder, "/v1/locks/line/acquire", serde_json::json!({"ttl_ms": 60_000}));
    let tickets = queue_in_order(&s, "line", 200, "fifo");
    let fences = grant_order(&s, "line", &tickets, "fifo", || {
        // Every waiter is long-polling before the holder lets go.
        s.wait_waiting_requests(200, None);
        assert_eq!(release(&mut holder, "line", &ticket_of(&held)).status, 200);
    });
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "not granted in queue order: {fences:?}");
}

#[test]
fn lottery_grants_every_waiter_but_not_in_fifo_order() {
    // The server draws from OS entropy, so this run cannot be seeded; the chance that 30
    // lottery grants come out in arrival order is 1/30!, about 4e-33. (The lease table's own
    // tests check the draw's fairness with fixed seeds.)
    let s = Server::start(&config("workers = 2", ""));
    let mut holder = Client::connect(s.addr).unwrap();
    let held = post(&mut holder, "/v1/locks/draw/acquire", serde_json::json!({"ttl_ms": 60_000, "queue": "lottery"}));
    let tickets = queue_in_order(&s, "draw", 30, "lottery");
    let fences = grant_order(&s, "draw", &tickets, "lottery", || {
        s.wait_waiting_requests(30, None);
        assert_eq!(release(&mut holder, "draw", &ticket_of(&held)).status, 200);
    });
    assert_eq!(fences.len(), 30, "everyone was granted");
    let mut sorted = fences.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 30, "one grant each");
    assert!(fences.windows(2).any(|w| w[0] > w[1]), "lottery granted in arrival order: {fences:?}");
}

#[test]
fn a_vanished_waiter_never_stalls_the_queue() {
    let s = Server::start(&config("workers = 2", "[locks]\nclaim_ms = 300\nwaiter_ttl_ms = 500\n"));
    let mut holder = Client::connect(s.addr).unwrap();
    let held = post(&mut holder, "/v1/locks/stall/acquire", serde_json::json!({"ttl_ms": 60_000}));
    // A long-polls, then its client vanishes mid-wait.
    let mut a = Client::connect(s.addr).unwrap();
    a.send_raw(b"POST /v1/locks/stall/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n{\"wait_ms\":60000}")
        .unwrap();
    s.wait_waiting_requests(1, None);
    drop(a);
    s.wait_waiting_requests(0, None);
    // B queues behind A and waits.
    let b = std::thread::spawn({
        let addr = s.addr;
        move || acquire_waiting(&mut Client::connect(addr).unwrap(), "stall", serde_json::json!({}))
    });
    s.wait_waiting_requests(1, None);
    let released = release(&mut holder, "stall", &ticket_of(&held));
    let released_at = released.json()["at_ms"].as_u64().unwrap();
    let granted = b.join().unwrap();
    assert_eq!(granted.status, 200);
    let granted_at = granted.json()["at_ms"].as_u64().unwrap();
    // A either dropped out as absent or was admitted unclaimed and lapsed: B is in within
    // claim_ms + waiter_ttl_ms, by the server's own clock, plus the keeper's timer firing
    // late: a few ms when idle, 3 s allowed for the stalls a loaded machine shows. (With the
    // defaults, 5 s and 10 s, B would wait longer still.)
    assert!(granted_at - released_at <= 300 + 500 + 3_000, "B waited {} ms", granted_at - released_at);
}

/// The server's clock (ms since the epoch), read from the `at_ms` of a try-lock of a lock
/// no test holds, released at once.
fn server_now_ms(c: &mut Client) -> u64 {
    let r = post(c, "/v1/locks/clock-probe/acquire", serde_json::json!({"queue": "none"}));
    release(c, "clock-probe", &ticket_of(&r));
    r.json()["at_ms"].as_u64().unwrap()
}

#[test]
fn an_event_stream_shows_positions_then_acquired_then_released() {
    let s = Server::start(&config("workers = 2", ""));
    let mut c = Client::connect(s.addr).unwrap();
    let h = post(&mut c, "/v1/locks/sse/acquire", serde_json::json!({"ttl_ms": 60_000}));
    let a = ticket_of(&post(&mut c, "/v1/locks/sse/acquire", serde_json::json!({})));
    let b = ticket_of(&post(&mut c, "/v1/locks/sse/acquire", serde_json::json!({})));
    let mut events = Events::open(s.addr, "sse", &b);
    let (id1, name, data) = events.next();
    assert_eq!((name.as_str(), data["position"].as_u64()), ("position", Some(2)));
    // The holder leaves: A is admitted, B moves up.
    release(&mut c, "sse", &ticket_of(&h));
    let (id2, name, data) = events.next();
    assert_eq!(
        (name.as_str(), data["position"].as_u64(), data["queue_length"].as_u64()),
        ("position", Some(1), Some(1))
    );
    release(&mut c, "sse", &a);
    let (id3, name, data) = events.next();
    assert_eq!((name.as_str(), data["ticket"].as_str()), ("acquired", Some(b.as_str())));
    assert!(id1 < id2 && id2 < id3, "ids rise");
    release(&mut c, "sse", &b);
    let (_, name, _) = events.next();
    assert_eq!(name, "released");
    assert!(events.ended(), "the stream ends with the lease");
    // An unknown ticket gets no stream.
    let r = once(s.addr, "GET", "/v1/locks/sse/events?ticket=AAAAAAAAAAAAAAAAAAAAAA", &[], "");
    assert_eq!(r.status, 410);
}

#[test]
fn an_open_stream_is_presence_and_closing_it_is_absence_after_waiter_ttl() {
    let s = Server::start(&config("workers = 1", "[locks]\nwaiter_ttl_ms = 400\n"));
    let mut c = Client::connect(s.addr).unwrap();
    post(&mut c, "/v1/locks/p/acquire", serde_json::json!({"ttl_ms": 60_000}));
    let w = ticket_of(&post(&mut c, "/v1/locks/p/acquire", serde_json::json!({})));
    let events = Events::open(s.addr, "p", &w);
    // The passing of time is what is under test here: three presence windows go by, on the
    // server's clock, with only the stream open, and the waiter is still queued.
    let opened_ms = server_now_ms(&mut c);
    wait_until("three presence windows to pass", || server_now_ms(&mut c) >= opened_ms + 3 * 400);
    let status = c.get(&format!("/v1/locks/p/tickets/{w}")).unwrap();
    assert_eq!((status.status, status.json()["status"].as_str()), (200, Some("queued")));
    // The status poll itself counted as presence; close the stream and let one window pass.
    drop(events);
    wait_for("the waiter to leave", || {
        let view = c.get("/v1/locks/p").unwrap().json();
        if view["queue_length"] == 0 {
            Ok(())
        } else {
            Err(view)
        }
    });
    let gone = c.get(&format!("/v1/locks/p/tickets/{w}")).unwrap();
    assert_eq!(gone.status, 410);
}

#[test]
fn tickets_status_list_and_fenced_data() {
    let s = Server::start(&config("workers = 2", ""));
    let mut c = Client::connect(s.addr).unwrap();
    let h = post(&mut c, "/v1/locks/cfg/acquire", serde_json::json!({"ttl_ms": 60_000, "owner": "deployer"}));
    let holder = ticket_of(&h);
    let w = post(&mut c, "/v1/locks/cfg/acquire", serde_json::json!({}));
    let waiter = ticket_of(&w);
    // Ticket status.
    let mine = c.get(&format!("/v1/locks/cfg/tickets/{holder}")).unwrap();
    assert_eq!((mine.status, mine.json()["status"].as_str()), (200, Some("acquired")));
    let theirs = c.get(&format!("/v1/locks/cfg/tickets/{waiter}")).unwrap();
    assert_eq!((theirs.json()["status"].as_str(), theirs.json()["position"].as_u64()), (Some("queued"), Some(1)));
    // Lock status.
    let view = c.get("/v1/locks/cfg").unwrap().json();
    assert_eq!((view["used"].as_u64(), view["queue_length"].as_u64()), (Some(1), Some(1)));
    assert_eq!(view["holders"][0]["owner"], "deployer");
    assert!(view["holders"][0].get("ticket").is_none(), "tickets are never shown to readers");
    assert!(view["holders"][0]["expires_in_ms"].as_u64().unwrap() <= 60_000);
    assert_eq!(c.get("/v1/locks/nothing-here").unwrap().status, 404);
    // Fenced data: only a holder writes; anyone reads.
    let put = |c: &mut Client, ticket: &str, body: &str| {
        c.request("PUT", "/v1/locks/cfg/data/release", &[("x-ticket", ticket)], body).unwrap()
    };
    assert_eq!(put(&mut c, &holder, r#"{"version":"1.2.3"}"#).status, 201);
    assert_eq!(put(&mut c, &holder, r#"{"version":"1.2.4"}"#).status, 200);
    assert_eq!(put(&mut c, &waiter, r#"{"version":"evil"}"#).status, 409, "a waiter may not write");
    assert_eq!(put(&mut c, "AAAAAAAAAAAAAAAAAAAAAA", "{}").status, 410);
    assert_eq!(c.request("PUT", "/v1/locks/cfg/data/release", &[], "{}").unwrap().status, 400, "no ticket");
    assert_eq!(put(&mut c, &holder, "{not json").status, 400);
    let got = c.get("/v1/locks/cfg/data/release").unwrap();
    assert_eq!(got.json(), serde_json::json!({"version": "1.2.4"}));
    assert_eq!(c.get("/v1/locks/cfg/data/other").unwrap().status, 404);
    let del = c.request("DELETE", "/v1/locks/cfg/data/release", &[("x-ticket", &holder)], "").unwrap();
    assert_eq!(del.status, 200);
    assert_eq!(c.get("/v1/locks/cfg/data/release").unwrap().status, 404);
    // Leave the queue; release through the ticket route.
    let left = c.request("DELETE", &format!("/v1/locks/cfg/tickets/{waiter}"), &[], "").unwrap();
    assert_eq!(left.json()["status"], "left");
    let done = c.request("DELETE", &format!("/v1/locks/cfg/tickets/{holder}"), &[], "").unwrap();
    assert_eq!(done.json()["status"], "released");
    // Listing in pages.
    for i in 0..5 {
        post(&mut c, &format!("/v1/locks/page-{i}/acquire"), serde_json::json!({}));
    }
    let first = c.get("/v1/locks?prefix=page-&limit=3").unwrap().json();
    let names: Vec<&str> = first["locks"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["page-0", "page-1", "page-2"]);
    let after = first["next_after"].as_str().unwrap();
    let second = c.get(&format!("/v1/locks?prefix=page-&limit=3&after={after}")).unwrap().json();
    assert_eq!(second["locks"].as_array().unwrap().len(), 2);
    assert!(second["next_after"].is_null());
}

#[test]
fn a_waiting_request_is_cancelled_when_its_client_disconnects() {
    let s = Server::start(&config("workers = 1", "[locks]\nclaim_ms = 60000\n"));
    let mut c = Client::connect(s.addr).unwrap();
    let h = post(&mut c, "/v1/locks/gone/acquire", serde_json::json!({"ttl_ms": 60_000}));
    let mut waiter = TcpStream::connect(s.addr).unwrap();
    waiter
        .write_all(b"POST /v1/locks/gone/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n{\"wait_ms\":60000}")
        .unwrap();
    s.wait_waiting_requests(1, None);
    drop(waiter);
    s.wait_waiting_requests(0, None);
    // Still queued, under the presence rules: the release admits it, but only for claim_ms,
    // since nobody is there to be told.
    release(&mut c, "gone", &ticket_of(&h));
    let view = c.get("/v1/locks/gone").unwrap().json();
    assert_eq!(view["holders"][0]["claimed"], false, "{view}");
}

#[test]
fn a_wait_is_answered_with_the_place_when_it_ends() {
    let s = Server::start(&config("workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    post(&mut c, "/v1/locks/slow/acquire", serde_json::json!({"ttl_ms": 60_000}));
    let r = post(&mut c, "/v1/locks/slow/acquire", serde_json::json!({"wait_ms": 300}));
    assert_eq!((r.status, r.json()["position"].as_u64()), (202, Some(1)));
    // The place is kept for the next poll.
    let again = post(&mut c, "/v1/locks/slow/acquire", serde_json::json!({"ticket": ticket_of(&r)}));
    assert_eq!((again.status, ticket_of(&again)), (202, ticket_of(&r)));
}

#[test]
fn r22_an_event_stream_reconnected_with_last_event_id_continues_the_ids() {
    let s = Server::start(&config("workers = 2", ""));
    let mut c = Client::connect(s.addr).unwrap();
    let h = post(&mut c, "/v1/locks/resume/acquire", serde_json::json!({"ttl_ms": 60_000}));
    let a = ticket_of(&post(&mut c, "/v1/locks/resume/acquire", serde_json::json!({})));
    let b = ticket_of(&post(&mut c, "/v1/locks/resume/acquire", serde_json::json!({})));
    // A first connection: the ids start at 1.
    let mut first = Events::open(s.addr, "resume", &b);
    let (id, name, data) = first.next();
    assert_eq!((id, name.as_str(), data["position"].as_u64()), (1, "position", Some(2)));
    release(&mut c, "resume", &ticket_of(&h));
    let (last, name, data) = first.next();
    assert_eq!((last, name.as_str(), data["position"].as_u64()), (2, "position", Some(1)));
    // The client drops and comes back with the last id it saw: the ids go on from there,
    // through the rest of the ticket's life.
    drop(first);
    let mut again = Events::open_after(s.addr, "resume", &b, Some(last));
    let (id, name, data) = again.next();
    assert_eq!((id, name.as_str(), data["position"].as_u64()), (3, "position", Some(1)), "{data}");
    release(&mut c, "resume", &a);
    let (id, name, data) = again.next();
    assert_eq!((id, name.as_str(), data["ticket"].as_str()), (4, "acquired", Some(b.as_str())));
    release(&mut c, "resume", &b);
    let (id, name, _) = again.next();
    assert_eq!((id, name.as_str()), (5, "released"));
    assert!(again.ended(), "the stream ends with the lease");
}

#[test]
fn r22_a_queue_at_max_waiters_per_lock_refuses_with_429_queue_full() {
    let s = Server::start(&config("workers = 1", "[locks]\nmax_waiters_per_lock = 2\n"));
    let mut c = Client::connect(s.addr).unwrap();
    let h = post(&mut c, "/v1/locks/line/acquire", serde_json::json!({"ttl_ms": 60_000}));
    assert_eq!(h.status, 200);
    let waiters: Vec<String> = (0..2)
        .map(|_| {
            let r = post(&mut c, "/v1/locks/line/acquire", serde_json::json!({}));
            assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
            ticket_of(&r)
        })
        .collect();
    let full = post(&mut c, "/v1/locks/line/acquire", serde_json::json!({}));
    assert_eq!((full.status, full.json()["error"].as_str()), (429, Some("queue_full")), "{}", full.json());
    assert_eq!(c.get("/v1/locks/line").unwrap().json()["queue_length"], 2, "the refused one did not queue");
    // A waiter already in line keeps its place when it polls again.
    let again = post(&mut c, "/v1/locks/line/acquire", serde_json::json!({"ticket": waiters[0]}));
    assert_eq!((again.status, ticket_of(&again)), (202, waiters[0].clone()));
    // Room again once one leaves.
    assert_eq!(release(&mut c, "line", &waiters[1]).json()["status"], "left");
    assert_eq!(post(&mut c, "/v1/locks/line/acquire", serde_json::json!({})).status, 202);
}

#[test]
fn r22_data_over_max_data_bytes_is_413_and_nothing_is_written() {
    let s = Server::start(&config("workers = 1", "[locks]\nmax_data_bytes = 100\n"));
    let mut c = Client::connect(s.addr).unwrap();
    let ticket = ticket_of(&post(&mut c, "/v1/locks/small/acquire", serde_json::json!({"ttl_ms": 60_000})));
    let put = |c: &mut Client, key: &str, value: &str| {
        c.request("PUT", &format!("/v1/locks/small/data/{key}"), &[("x-ticket", &ticket)], value).unwrap()
    };
    // A JSON string of n characters is n + 2 bytes; with the key, a lock holds 100 bytes.
    let string = |n: usize| format!("\"{}\"", "x".repeat(n));
    let too_big = put(&mut c, "a", &string(98));
    assert_eq!(
        (too_big.status, too_big.json()["error"].as_str()),
        (413, Some("payload_too_large")),
        "{}",
        too_big.json()
    );
    assert_eq!(c.get("/v1/locks/small/data/a").unwrap().status, 404, "nothing written");
    assert_eq!(put(&mut c, "a", &string(97)).status, 201, "exactly 100 bytes fit");
    // Every key of the lock counts: a second key past the lock's bytes is refused.
    assert_eq!(put(&mut c, "b", "1").status, 413);
    assert_eq!(c.get("/v1/locks/small/data/b").unwrap().status, 404);
    assert_eq!(c.get("/v1/locks/small/data/a").unwrap().body, string(97).as_bytes(), "the first value is kept");
    // A replaced value counts once.
    assert_eq!(put(&mut c, "a", &string(90)).status, 200);
}

#[test]
fn r22_renew_answers_for_a_holder_a_waiter_and_a_lost_lease() {
    let s = Server::start(&config("workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    let holder = ticket_of(&post(&mut c, "/v1/locks/rn/acquire", serde_json::json!({"ttl_ms": 60_000})));
    let waiter = ticket_of(&post(&mut c, "/v1/locks/rn/acquire", serde_json::json!({})));
    let renew = |c: &mut Client, ticket: &str, ttl_ms: u64| {
        post(c, "/v1/locks/rn/renew", serde_json::json!({"ticket": ticket, "ttl_ms": ttl_ms}))
    };
    // The holder: renewed for the TTL asked, from the moment of the renewal.
    let renewed = renew(&mut c, &holder, 5_000);
    let body = renewed.json();
    assert_eq!((renewed.status, body["status"].as_str()), (200, Some("renewed")), "{body}");
    assert_eq!(body["expires_at_ms"].as_u64().unwrap(), body["at_ms"].as_u64().unwrap() + 5_000, "{body}");
    // A waiter holds nothing to renew: 409 not_holder, and it stays queued.
    let refused = renew(&mut c, &waiter, 5_000);
    assert_eq!((refused.status, refused.json()["error"].as_str()), (409, Some("not_holder")), "{}", refused.json());
    let view = c.get("/v1/locks/rn").unwrap().json();
    assert_eq!((view["used"].as_u64(), view["queue_length"].as_u64()), (Some(1), Some(1)), "{view}");
    // A released lease is lost.
    release(&mut c, "rn", &holder);
    let lost = renew(&mut c, &holder, 5_000);
    assert_eq!((lost.status, lost.json()["error"].as_str()), (410, Some("lease_lost")), "{}", lost.json());
}

#[test]
fn r17_one_place_per_user_a_second_acquire_gets_the_first_ticket_back() {
    let s = Server::start(&config("workers = 2", ""));
    let mut c = Client::connect(s.addr).unwrap();
    let path = "/v1/locks/room/acquire";
    let first = post(&mut c, path, serde_json::json!({"user": "u-1", "ttl_ms": 30_000}));
    assert_eq!(first.status, 200);
    let first = first.json();
    assert_eq!(first["user"], "u-1");
    assert!(first.get("existing").is_none(), "a new place: {first}");
    // Again, with other fields: the same lease as it stands, said so.
    let again = post(&mut c, path, serde_json::json!({"user": "u-1", "ttl_ms": 90_000, "owner": "x"})).json();
    assert_eq!(
        (&again["ticket"], &again["fence"], &again["existing"]),
        (&first["ticket"], &first["fence"], &serde_json::json!(true))
    );
    assert_eq!(again["expires_at_ms"], first["expires_at_ms"], "not renewed: {again}");
    // Another user queues, once, however often it enters.
    let queued = post(&mut c, path, serde_json::json!({"user": "u-2"}));
    assert_eq!(queued.status, 202);
    let twice = post(&mut c, path, serde_json::json!({"user": "u-2"}));
    assert_eq!(twice.status, 202);
    let (queued, twice) = (queued.json(), twice.json());
    assert_eq!(
        (&twice["ticket"], &twice["position"], &twice["existing"]),
        (&queued["ticket"], &serde_json::json!(1), &serde_json::json!(true))
    );
    let lock = c.get("/v1/locks/room").unwrap().json();
    assert_eq!((lock["queue_length"].as_u64(), &lock["holders"][0]["user"]), (Some(1), &"u-1".into()), "{lock}");
    // A user id is validated like a lock name.
    for bad in [serde_json::json!(""), serde_json::json!("a/b"), serde_json::json!("x".repeat(201))] {
        let r = post(&mut c, path, serde_json::json!({ "user": bad }));
        assert_eq!(r.status, 400, "{bad}: {}", String::from_utf8_lossy(&r.body));
    }
    // Once the first lease ends, the user takes a new place.
    assert_eq!(release(&mut c, "room", first["ticket"].as_str().unwrap()).status, 200);
    let new = post(&mut c, path, serde_json::json!({"user": "u-1"})).json();
    assert_ne!(new["ticket"], first["ticket"]);
    assert!(new.get("existing").is_none(), "{new}");
}
