//! Connection state machine tests: ordering, pipelining, timeouts, drain, errors.

use super::*;
use crate::http::parse::Limits;

const CFG: ConnConfig = ConnConfig {
    limits: Limits { max_request_line_bytes: 8192, max_header_bytes: 4096, max_body_bytes: 1024 },
    header_timeout_ms: 1_000,
    keepalive_timeout_ms: 5_000,
    max_unsent_bytes: 64 * 1024,
};

fn ok(tag: &str) -> Response {
    Response::text(200, "text/plain", tag.to_string())
}

fn feed(c: &mut Conn, bytes: &str, now: u64) -> Vec<Seq> {
    let mut reqs = Vec::new();
    c.feed(bytes.as_bytes(), now, &CFG, &mut reqs);
    reqs.into_iter().map(|(s, _)| s).collect()
}

fn take_output(c: &mut Conn, now: u64) -> String {
    let out = String::from_utf8(c.output().to_vec()).unwrap();
    c.advance(out.len(), now);
    out
}

const GET: &str = "GET / HTTP/1.1\r\nHost: h\r\n\r\n";

#[test]
fn pipelined_responses_go_out_in_request_order() {
    let mut c = Conn::new(0);
    let seqs = feed(&mut c, &GET.repeat(3), 1);
    assert_eq!(seqs, vec![0, 1, 2]);
    c.respond(2, &ok("third"), 2);
    c.respond(1, &ok("second"), 2);
    assert_eq!(c.output(), b"", "nothing may pass the first response");
    c.respond(0, &ok("first"), 3);
    let out = take_output(&mut c, 4);
    let first = out.find("first").unwrap();
    let second = out.find("second").unwrap();
    let third = out.find("third").unwrap();
    assert!(first < second && second < third, "{out}");
    assert!(!out.contains("Connection: close"));
    assert_eq!(c.status(), Status::Open);
}

#[test]
fn a_full_pipeline_stops_reading_until_answers_are_sent() {
    let mut c = Conn::new(0);
    let seqs = feed(&mut c, &GET.repeat(MAX_PIPELINE + 3), 1);
    assert_eq!(seqs.len(), MAX_PIPELINE);
    assert!(!c.wants_read(&CFG));
    for s in seqs {
        c.respond(s, &ok("x"), 2);
    }
    take_output(&mut c, 2);
    let mut more = Vec::new();
    c.resume(3, &CFG, &mut more);
    assert_eq!(more.len(), 3, "buffered requests are parsed once there is room");
    assert!(c.wants_read(&CFG));
}

#[test]
fn connection_close_request_is_answered_then_closed() {
    let mut c = Conn::new(0);
    let seqs = feed(&mut c, "GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\n", 1);
    assert_eq!(seqs, vec![0]);
    c.respond(0, &ok("bye"), 2);
    assert!(take_output(&mut c, 3).contains("Connection: close"));
    assert_eq!(c.status(), Status::Done);
}

#[test]
fn a_bad_request_is_answered_after_earlier_ones_then_lingers() {
    let mut c = Conn::new(0);
    let seqs = feed(&mut c, &format!("{GET}BROKEN\r\n\r\n"), 1);
    assert_eq!(seqs, vec![0]);
    assert_eq!(c.output(), b"", "the error waits for the earlier response");
    c.respond(0, &ok("fine"), 2);
    let out = take_output(&mut c, 3);
    assert!(out.starts_with("HTTP/1.1 200"));
    assert!(out.contains("HTTP/1.1 400 Bad Request"), "{out}");
    assert!(out.ends_with("}"), "JSON error body: {out}");
    assert_eq!(c.status(), Status::Linger);
    feed(&mut c, "more junk the client still sends", 4);
    assert_eq!(c.status(), Status::Linger);
    c.on_timer(3 + LINGER_MS, &CFG);
    assert_eq!(c.status(), Status::Done);
}

#[test]
fn slow_headers_get_408() {
    let mut c = Conn::new(0);
    feed(&mut c, "GET / HTTP/1.1\r\nHo", 10);
    assert_eq!(c.deadline(&CFG), Some(CFG.header_timeout_ms), "the first request's clock starts at accept");
    c.on_timer(CFG.header_timeout_ms - 1, &CFG);
    assert_eq!(c.output(), b"");
    c.on_timer(CFG.header_timeout_ms, &CFG);
    let out = take_output(&mut c, CFG.header_timeout_ms);
    assert!(out.starts_with("HTTP/1.1 408 Request Timeout"), "{out}");
    assert!(out.contains("\"error\":\"request_timeout\""));
}

#[test]
fn the_request_clock_of_a_later_request_starts_at_its_first_byte() {
    let mut c = Conn::new(0);
    feed(&mut c, GET, 1);
    c.respond(0, &ok("a"), 1);
    take_output(&mut c, 1);
    assert_eq!(c.deadline(&CFG), Some(1 + CFG.keepalive_timeout_ms), "idle keep-alive");
    feed(&mut c, "GET", 3_000);
    assert_eq!(c.deadline(&CFG), Some(3_000 + CFG.header_timeout_ms));
}

#[test]
fn idle_keep_alive_closes_quietly_and_silent_connections_too() {
    let mut c = Conn::new(0);
    c.on_timer(CFG.header_timeout_ms, &CFG);
    assert_eq!((c.status(), c.output().len()), (Status::Done, 0), "never sent a byte: no 408");
    let mut c = Conn::new(0);
    feed(&mut c, GET, 1);
    c.respond(0, &ok("a"), 1);
    take_output(&mut c, 1);
    c.on_timer(1 + CFG.keepalive_timeout_ms, &CFG);
    assert_eq!((c.status(), c.output().len()), (Status::Done, 0));
}

#[test]
fn waiting_for_our_own_answer_has_no_timeout() {
    let mut c = Conn::new(0);
    feed(&mut c, GET, 1);
    assert_eq!(c.deadline(&CFG), None);
}

#[test]
fn a_client_that_stops_reading_is_dropped() {
    let mut c = Conn::new(0);
    feed(&mut c, GET, 1);
    c.respond(0, &ok("a"), 2);
    c.advance(3, 2);
    assert_eq!(c.deadline(&CFG), Some(2 + CFG.keepalive_timeout_ms));
    c.on_timer(2 + CFG.keepalive_timeout_ms, &CFG);
    assert_eq!(c.status(), Status::Done);
}

#[test]
fn drain_answers_in_flight_requests_with_close() {
    let mut c = Conn::new(0);
    feed(&mut c, GET, 1);
    c.drain(2);
    c.respond(0, &ok("last"), 3);
    assert!(take_output(&mut c, 3).contains("Connection: close"));
    assert_eq!(c.status(), Status::Done);
}

#[test]
fn drain_gives_an_idle_connection_a_grace_for_its_next_request() {
    let mut c = Conn::new(0);
    feed(&mut c, GET, 1);
    c.respond(0, &ok("a"), 1);
    take_output(&mut c, 1);
    c.drain(2);
    assert_eq!(c.status(), Status::Open);
    assert_eq!(c.deadline(&CFG), Some(1 + DRAIN_IDLE_GRACE_MS));
    // The next request arrives within the grace: it is served, with close.
    assert_eq!(feed(&mut c, GET, 50), vec![1]);
    c.respond(1, &ok("b"), 51);
    assert!(take_output(&mut c, 51).contains("Connection: close"));
    assert_eq!(c.status(), Status::Done);
    // A connection idle for longer than the grace closes at once.
    let mut c = Conn::new(0);
    feed(&mut c, GET, 1);
    c.respond(0, &ok("a"), 1);
    take_output(&mut c, 1);
    c.drain(1 + DRAIN_IDLE_GRACE_MS);
    assert_eq!(c.status(), Status::Done);
}

#[test]
fn peer_eof_answers_pending_then_closes() {
    let mut c = Conn::new(0);
    feed(&mut c, GET, 1);
    c.on_peer_eof(2);
    assert_eq!(c.status(), Status::Open);
    c.respond(0, &ok("a"), 3);
    take_output(&mut c, 3);
    assert_eq!(c.status(), Status::Done);
}

#[test]
fn continue_is_sent_only_at_the_head_of_the_line() {
    let mut c = Conn::new(0);
    feed(&mut c, "POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n", 1);
    assert_eq!(take_output(&mut c, 1), "HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(feed(&mut c, "{}", 2), vec![0]);
    let mut c = Conn::new(0);
    feed(&mut c, &format!("{GET}POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"), 1);
    assert_eq!(c.output(), b"", "a 100 may not overtake the pending response");
}

#[test]
fn responses_for_unknown_requests_are_ignored() {
    let mut c = Conn::new(0);
    c.respond(5, &ok("stray"), 1);
    assert_eq!(c.output(), b"");
}

#[test]
fn drain_treats_a_connection_that_sent_nothing_as_idle() {
    let mut c = Conn::new(100);
    c.drain(150);
    assert_eq!(c.deadline(&CFG), Some(100 + DRAIN_IDLE_GRACE_MS), "not the header timeout");
    // A request that arrives within the grace is still served.
    assert_eq!(feed(&mut c, GET, 200), vec![0]);
    c.respond(0, &ok("late"), 201);
    assert!(take_output(&mut c, 201).contains("Connection: close"));
    assert_eq!(c.status(), Status::Done);
    // A partial request keeps its own clock.
    let mut c = Conn::new(0);
    feed(&mut c, "GET / HT", 1);
    c.drain(2);
    assert_eq!(c.deadline(&CFG), Some(CFG.header_timeout_ms));
}

#[test]
fn a_stream_carries_pushed_events_until_ended_or_the_client_goes() {
    let head = Response::text(200, "text/event-stream", String::new());
    let mut c = Conn::new(0);
    assert_eq!(feed(&mut c, &format!("{GET}{GET}"), 1), vec![0, 1]);
    c.respond_stream(1, &head, 2);
    assert!(!c.is_streaming(), "the stream waits for the answer before it");
    c.respond(0, &ok("first"), 3);
    assert!(c.is_streaming());
    c.stream_push(b"event: a\n\n", 4, &CFG);
    let out = take_output(&mut c, 5);
    assert!(out.contains("first"));
    assert!(
        out.contains("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\nevent: a"),
        "{out}"
    );
    assert!(!out.split("event-stream").nth(1).unwrap().contains("Content-Length"));
    assert_eq!(c.deadline(&CFG), None, "no idle timeout on a stream");
    assert!(c.wants_read(&CFG), "reads, to notice the client going");
    feed(&mut c, "ignored input", 6);
    c.stream_end(7);
    assert_eq!(c.status(), Status::Done);
    // The client goes.
    let mut c = Conn::new(0);
    feed(&mut c, GET, 1);
    c.respond_stream(0, &head, 2);
    take_output(&mut c, 2);
    c.on_peer_eof(3);
    assert_eq!(c.status(), Status::Done);
    // A drain ends a stream.
    let mut c = Conn::new(0);
    feed(&mut c, GET, 1);
    c.respond_stream(0, &head, 2);
    c.drain(3);
    take_output(&mut c, 4);
    assert_eq!(c.status(), Status::Done);
}

/// A response with a body of `n` bytes.
fn sized(n: usize) -> Response {
    Response::text(200, "text/plain", "x".repeat(n))
}

#[test]
fn r12_a_client_that_does_not_read_stops_being_read_until_it_drains() {
    let mut c = Conn::new(0);
    let reply = 20 * 1024;
    // A client pipelines far more than the server may buffer answers for.
    let sent = 500;
    let mut answered = 0;
    let mut seqs = feed(&mut c, &GET.repeat(sent), 1);
    for &s in &seqs {
        c.respond(s, &sized(reply), 2);
        answered += 1;
    }
    // Answers go nowhere (the client does not read): parsing stops at the limit, and so
    // does reading (the requests already read wait in the buffer).
    let mut more = Vec::new();
    c.resume(3, &CFG, &mut more);
    assert!(more.is_empty(), "parsed past the unsent limit");
    assert!(!c.wants_read(&CFG), "reads past the unsent limit");
    assert!(c.input.len() <= GET.len() * sent, "{}", c.input.len());
    assert!(c.unsent_bytes() >= CFG.max_unsent_bytes);
    // At most the limit plus one pipeline of answers is ever queued.
    assert!(c.unsent_bytes() < CFG.max_unsent_bytes + MAX_PIPELINE * (reply + 100), "{}", c.unsent_bytes());
    // The client reads a little at a time; every request is answered, in order, and the
    // queue never grows past the same bound.
    let mut read = 0;
    while answered < sent {
        let n = c.output().len().min(7_000);
        read += n;
        c.advance(n, 4);
        assert!(c.output.len() < 2 * (CFG.max_unsent_bytes + MAX_PIPELINE * (reply + 100)), "the buffer grew");
        let mut reqs = Vec::new();
        c.resume(5, &CFG, &mut reqs);
        seqs = reqs.into_iter().map(|(s, _)| s).collect();
        for &s in &seqs {
            assert_eq!(s, answered as Seq, "answers out of order");
            c.respond(s, &sized(reply), 6);
            answered += 1;
        }
    }
    read += c.output().len();
    let one = {
        let mut b = Vec::new();
        sized(reply).encode(false, &mut b);
        b.len()
    };
    assert_eq!(read, sent * one, "every answer was sent whole");
}

#[test]
fn r12_answers_waiting_for_an_earlier_one_count_as_unsent() {
    let mut c = Conn::new(0);
    let seqs = feed(&mut c, &GET.repeat(8), 1);
    for &s in seqs.iter().skip(1) {
        c.respond(s, &sized(20 * 1024), 2);
    }
    assert!(c.output().is_empty(), "they wait for the first");
    assert!(c.unsent_bytes() > CFG.max_unsent_bytes);
    assert!(!c.wants_read(&CFG));
    c.respond(0, &ok("first"), 3);
    let n = c.output().len();
    c.advance(n, 4);
    assert_eq!(c.unsent_bytes(), 0);
    assert!(c.wants_read(&CFG));
}

#[test]
fn r12_an_event_stream_that_falls_too_far_behind_is_dropped() {
    let head = Response::text(200, "text/event-stream", String::new());
    let mut c = Conn::new(0);
    feed(&mut c, GET, 1);
    c.respond_stream(0, &head, 2);
    let event = [b'e'; 1000];
    for _ in 0..CFG.max_unsent_bytes / event.len() - 1 {
        c.stream_push(&event, 3, &CFG);
    }
    assert_eq!(c.status(), Status::Open);
    c.stream_push(&event, 3, &CFG);
    c.stream_push(&event, 3, &CFG);
    assert_eq!(c.status(), Status::Done, "a stream buffered past the limit");
}

#[test]
fn r12_head_is_answered_without_the_body_and_the_next_request_follows() {
    let mut c = Conn::new(0);
    let seqs = feed(&mut c, &format!("HEAD /x HTTP/1.1\r\nHost: h\r\n\r\n{GET}"), 1);
    assert_eq!(seqs, vec![0, 1]);
    let body = Response::json(200, &serde_json::json!({"status": "ok"}));
    c.respond(0, &body, 2);
    c.respond(1, &body, 2);
    let out = take_output(&mut c, 3);
    let mut get = Vec::new();
    body.encode(false, &mut get);
    let get = String::from_utf8(get).unwrap();
    let head = get.strip_suffix(r#"{"status":"ok"}"#).unwrap();
    assert!(head.contains("Content-Length: 15\r\n"), "{head}");
    assert_eq!(out, format!("{head}{get}"));
    assert_eq!(c.status(), Status::Open);
}

#[test]
fn r12_a_half_closed_client_with_a_waiting_request_is_probed_then_answered() {
    let mut c = Conn::new(0);
    feed(&mut c, GET, 1);
    c.on_peer_eof(2);
    assert!(!c.wants_read(&CFG), "nothing more is read");
    assert!(c.probe(2));
    assert_eq!(take_output(&mut c, 2), "HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(c.status(), Status::Open, "the request is still answered");
    assert_eq!(c.deadline(&CFG), None, "waiting for our own answer");
    c.respond(0, &ok("granted"), 3);
    let out = take_output(&mut c, 4);
    assert!(out.ends_with("Connection: close\r\n\r\ngranted"), "{out}");
    assert_eq!(c.status(), Status::Done);
    // HTTP/1.0 clients may not get interim responses.
    let mut c = Conn::new(0);
    feed(&mut c, "GET / HTTP/1.0\r\n\r\n", 1);
    c.on_peer_eof(2);
    assert!(!c.probe(2));
    assert_eq!(c.output(), b"");
}

#[test]
fn r12_input_read_while_there_is_no_room_is_parsed_before_more_is_read() {
    let mut c = Conn::new(0);
    let seqs = feed(&mut c, &GET.repeat(MAX_PIPELINE + 3), 1);
    assert_eq!(seqs.len(), MAX_PIPELINE);
    for s in seqs {
        c.respond(s, &ok("x"), 2);
    }
    take_output(&mut c, 2);
    assert!(!c.wants_read(&CFG), "three whole requests wait in the buffer: no reading before they are parsed");
    let mut more = Vec::new();
    c.resume(3, &CFG, &mut more);
    assert_eq!(more.len(), 3);
    assert!(c.wants_read(&CFG));
    // A partial request is no reason to stop reading.
    let mut c = Conn::new(0);
    assert!(feed(&mut c, "GET / HT", 1).is_empty());
    assert!(c.wants_read(&CFG));
}
