//! The fuzz targets' bodies: one function per parser, each taking the fuzzer's bytes.
//!
//! Every binary in `src/bin/` hands its input to one of these, and the main crate's corpus
//! replay test includes this very file and feeds it every seed under `fuzz/seeds/`, so what
//! the fuzzer checks is what `make test` replays. A function returns normally for any
//! input; a panic, including a failed check below, is a finding. Only the main crate's
//! public API is used, as a worker, the keeper or `check-config` would use it.
//!
//! Must not: do I/O, read a clock or keep state between calls (an input must replay alike).

use leasehold::config::Config;
use leasehold::http::conn::{Conn, ConnConfig, Seq, Status};
use leasehold::http::parse::{Limits, Parser, Progress, Request};
use leasehold::http::response::Response;
use leasehold::ipc::frame::{self, FrameDecoder, FrameError, DEFAULT_MAX_FRAME_BYTES};
use leasehold::ipc::message::{FromKeeper, ToChild, ToKeeper, ToMaster};
use leasehold::journal::codec::{self, Reader, HEADER_BYTES};
use leasehold::journal::{Record, SegmentReader};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A target's body: takes one input, panics on a finding.
pub type Body = fn(&[u8]);

/// Every target: its name (the binary's and the seed directory's) and its body.
pub const TARGETS: &[(&str, Body)] = &[
    ("http_parse", http_parse),
    ("http_conn", http_conn),
    ("ipc_frame", ipc_frame),
    ("journal_record", journal_record),
    ("config_load", config_load),
];

/// Request line limits a fuzz input can pick (the last is the server's).
const LINE_BYTES: [usize; 4] = [16, 64, 256, 8 * 1024];
/// Header section limits a fuzz input can pick (the last is the server's default).
const HEADER_BYTES_CHOICES: [usize; 4] = [16, 64, 1024, 16 * 1024];
/// Body limits a fuzz input can pick (the last is the server's default).
const BODY_BYTES: [usize; 4] = [0, 16, 4096, 1024 * 1024];
/// Frame maximums a fuzz input can pick (the last is the channels' default).
const FRAME_BYTES: [u32; 4] = [0, 16, 4096, DEFAULT_MAX_FRAME_BYTES];

/// Request limits from one byte: two bits each for the line, header and body limits.
/// `0x2b` gives the parser unit tests' limits, `0x3f` the server's defaults.
fn limits_from(b: u8) -> Limits {
    Limits {
        max_request_line_bytes: LINE_BYTES[usize::from(b & 3)],
        max_header_bytes: HEADER_BYTES_CHOICES[usize::from((b >> 2) & 3)],
        max_body_bytes: BODY_BYTES[usize::from((b >> 4) & 3)],
    }
}

/// The pieces a stream arrives in: all at once for `step` 0, else `step` bytes at a time.
fn pieces(stream: &[u8], step: u8) -> Vec<&[u8]> {
    if step == 0 || stream.is_empty() {
        vec![stream]
    } else {
        stream.chunks(usize::from(step)).collect()
    }
}

/// Feeds `pieces` to one parser the way a connection does: every request that came out,
/// and the status of the error that stopped it, if one did.
fn parse_stream(pieces: &[&[u8]], limits: &Limits) -> (Vec<Request>, Option<u16>) {
    let mut parser = Parser::new();
    let mut buf = Vec::new();
    let mut requests = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match parser.parse(&buf, limits) {
                Ok(Progress::NeedMore { consumed, .. }) => {
                    assert!(consumed <= buf.len(), "consumed {consumed} of {} bytes", buf.len());
                    buf.drain(..consumed);
                    break;
                }
                Ok(Progress::Done { request, consumed }) => {
                    assert!(consumed > 0 && consumed <= buf.len(), "consumed {consumed} of {} bytes", buf.len());
                    assert!(request.body.len() <= limits.max_body_bytes, "a body over the limit came out");
                    buf.drain(..consumed);
                    requests.push(*request);
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    return (requests, Some(e.status()));
                }
            }
        }
    }
    (requests, None)
}

/// The HTTP/1.1 request parser. Input: `[step, limits, stream…]`. The stream is parsed
/// whole and again in pieces of `step` bytes; the parser promises the same requests (and
/// the same refusal) whatever the split, so a difference is a finding too.
pub fn http_parse(data: &[u8]) {
    let [step, limits, ref stream @ ..] = *data else { return };
    let limits = limits_from(limits);
    let whole = parse_stream(&[stream], &limits);
    let split = parse_stream(&pieces(stream, step), &limits);
    assert_eq!(whole, split, "the same bytes in pieces of {step} parsed differently");
}

/// Reads bytes off the front of a fuzz input.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

/// The connection state machine, driven the way a worker drives it. Input: `[limits,
/// (op, arg, …)*]`, each op one of: bytes from the client (read only when the connection
/// wants to read, as the worker does), a response to a pending request, an event stream
/// start, push or end, bytes written, time passing, a deadline firing, a drain, the peer's
/// end of stream, a resume, or an answer to a request that was never made.
pub fn http_conn(data: &[u8]) {
    let mut input = Cursor(data);
    let Some(limits) = input.byte() else { return };
    let cfg = ConnConfig {
        limits: limits_from(limits),
        header_timeout_ms: 1_000,
        keepalive_timeout_ms: 5_000,
        // Small caps, so the unsent-output bound is reached often: 64 B to 8 KiB.
        max_unsent_bytes: 64 << ((limits >> 4) & 7),
    };
    let mut now_ms = 0u64;
    let mut conn = Conn::new(now_ms);
    let mut pending: Vec<Seq> = Vec::new();
    let mut requests = Vec::new();
    while let Some(op) = input.byte() {
        let arg = input.byte().unwrap_or(0);
        let pick =
            |pending: &mut Vec<Seq>| (!pending.is_empty()).then(|| pending.remove(usize::from(arg) % pending.len()));
        match op % 11 {
            0 => {
                let bytes = input.take(usize::from(arg) + 1);
                if conn.wants_read(&cfg) {
                    conn.feed(bytes, now_ms, &cfg, &mut requests);
                }
            }
            1 => {
                if let Some(seq) = pick(&mut pending) {
                    let status = [200, 201, 204, 400, 404, 409, 503][usize::from(arg) % 7];
                    let response = Response::text(status, "text/plain", "x".repeat(usize::from(arg)));
                    conn.respond(seq, &response, now_ms);
                }
            }
            2 => {
                if let Some(seq) = pick(&mut pending) {
                    conn.respond_stream(seq, &Response::text(200, "text/event-stream", String::new()), now_ms);
                }
            }
            3 => {
                let bytes = input.take(usize::from(arg));
                conn.stream_push(bytes, now_ms, &cfg);
            }
            4 => conn.stream_end(now_ms),
            5 => {
                let written = conn.output().len().min(usize::from(arg) * 8);
                conn.advance(written, now_ms);
            }
            6 => {
                now_ms += u64::from(arg) * 25;
                conn.on_timer(now_ms, &cfg);
            }
            7 => {
                if let Some(due) = conn.deadline(&cfg) {
                    now_ms = now_ms.max(due);
                    conn.on_timer(now_ms, &cfg);
                }
            }
            8 => conn.drain(now_ms),
            9 => conn.on_peer_eof(now_ms),
            _ => {
                if arg % 2 == 0 {
                    conn.resume(now_ms, &cfg, &mut requests);
                } else {
                    // An answer for a request this connection never had is ignored.
                    conn.respond(u64::from(arg) + 1_000, &Response::text(200, "text/plain", String::new()), now_ms);
                }
            }
        }
        for (seq, request) in requests.drain(..) {
            assert!(request.body.len() <= cfg.limits.max_body_bytes, "a body over the limit came out");
            assert!(!pending.contains(&seq), "request {seq} was handed out twice");
            pending.push(seq);
        }
        if conn.status() == Status::Done {
            // The worker closes the socket: nothing more happens to this connection.
            assert!(!conn.wants_read(&cfg), "a finished connection still wants to read");
            return;
        }
    }
}

/// Decodes `body` as `T`; if it is one, it must encode into a frame that decodes to the
/// same value (a message a process accepts is one it could have been sent).
fn round_trip_frame<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(body: &[u8]) {
    let Ok(message) = frame::decode::<T>(body) else { return };
    let mut bytes = Vec::new();
    frame::encode(&message, DEFAULT_MAX_FRAME_BYTES, &mut bytes).expect("an accepted message encodes");
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    decoder.feed(&bytes);
    let again = decoder.next_frame().expect("its frame is in bounds").expect("its frame is whole");
    assert_eq!(frame::decode::<T>(again).expect("its frame decodes"), message);
}

/// Feeds `pieces` to one frame decoder: every frame body, then the error that stopped it.
fn frame_stream(pieces: &[&[u8]], max_bytes: u32) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(max_bytes);
    let mut bodies = Vec::new();
    for piece in pieces {
        decoder.feed(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(body)) => {
                    assert!(body.len() <= max_bytes as usize, "a frame over the maximum came out");
                    bodies.push(body.to_vec());
                }
                Ok(None) => break,
                Err(e) => return (bodies, Some(e)),
            }
        }
    }
    (bodies, None)
}

/// The IPC frame decoder and every message type read from a channel. Input: `[step,
/// max, stream…]`: the stream is decoded whole and in pieces of `step` bytes (the same
/// frames must come out), with the frame maximum picked by `max`; each frame body is
/// decoded as each channel's message type, and what decodes must round-trip.
pub fn ipc_frame(data: &[u8]) {
    let [step, max, ref stream @ ..] = *data else { return };
    let max_bytes = FRAME_BYTES[usize::from(max & 3)];
    let whole = frame_stream(&[stream], max_bytes);
    let split = frame_stream(&pieces(stream, step), max_bytes);
    assert_eq!(whole, split, "the same bytes in pieces of {step} framed differently");
    if let Some(e) = &whole.1 {
        assert!(!e.to_string().is_empty());
    }
    for body in &whole.0 {
        round_trip_frame::<ToKeeper>(body);
        round_trip_frame::<FromKeeper>(body);
        round_trip_frame::<ToChild>(body);
        round_trip_frame::<ToMaster>(body);
    }
}

/// A record read back must decode to what was written.
fn round_trip_record(record: &Record) {
    let mut bytes = Vec::new();
    codec::encode(record, &mut bytes).expect("a decoded record encodes");
    let mut reader = Reader::new(&bytes);
    let body = reader.next_record().expect("a fresh record is undamaged").expect("a fresh record is there");
    assert_eq!(&serde_json::from_slice::<Record>(body).expect("a fresh record decodes"), record);
    assert_eq!(reader.next_record(), Ok(None));
}

/// The journal record codec and the record decoder. Input: `[mode, bytes…]`. Even `mode`:
/// `bytes` is a segment as found on disk, read record by record until the end or the
/// damage that stops it. Odd `mode`: `bytes` is one record body, framed here with its
/// right length and checksum and followed by preallocated zeros, so the fuzzer gets past
/// the checksum; it must read back as exactly that body, then a clean end. Every body read
/// goes through a [`SegmentReader`] as recovery reads it (a format record first, or
/// format 1), and every [`Record`] that decodes must round-trip.
pub fn journal_record(data: &[u8]) {
    let [mode, ref bytes @ ..] = *data else { return };
    let framed;
    let segment = if mode % 2 == 0 {
        bytes
    } else {
        if bytes.is_empty() {
            // No record is empty: a zero length marks the end of the written records.
            return;
        }
        let mut out = Vec::with_capacity(HEADER_BYTES + bytes.len() + 64);
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(bytes).to_be_bytes());
        out.extend_from_slice(bytes);
        out.resize(out.len() + 64, 0);
        framed = out;
        &framed[..]
    };
    let mut reader = Reader::new(segment);
    let mut records = SegmentReader::new();
    let mut bodies = 0;
    loop {
        let at = reader.offset();
        match reader.next_record() {
            Ok(Some(body)) => {
                assert!(reader.offset() == at + HEADER_BYTES + body.len(), "the reader skipped bytes");
                bodies += 1;
                if let Ok(Some(record)) = records.read(body) {
                    round_trip_record(&record);
                }
            }
            Ok(None) => break,
            Err(damage) => {
                assert_eq!(reader.offset(), at, "the reader moved past a damaged record");
                assert!(mode % 2 == 0, "a well-framed record read as {damage}");
                break;
            }
        }
    }
    if mode % 2 == 1 {
        assert_eq!(bodies, 1, "one framed record read as {bodies}");
    }
}

/// The configuration reader. Input: the TOML text, then optionally a NUL byte and
/// `NAME=VALUE` lines as the environment. The file is loaded with that environment, and
/// the environment alone over the embedded defaults; every problem must print something.
pub fn config_load(data: &[u8]) {
    let (text, env) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &[][..]),
    };
    let text = String::from_utf8_lossy(text);
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    for file in [Some(&*text), None] {
        match Config::load(file, &env) {
            Ok(config) => assert!(!format!("{config:?}").is_empty()),
            Err(problems) => {
                assert!(!problems.is_empty(), "a refusal without a problem");
                for p in &problems {
                    // Not `key()`: the TOML key `""` is a key, and its name is empty.
                    let _ = p.key();
                    assert!(!p.to_string().is_empty(), "a problem that prints as nothing");
                }
            }
        }
    }
}
