//! One client connection as a pure state machine: bytes in, requests out; responses in (in
//! any order), bytes out in request order; timers as deadlines the shell asks for.
//!
//! - Keep-alive and pipelining: up to [`MAX_PIPELINE`] requests may wait for their
//!   responses; past that the connection stops reading (back-pressure) until some are sent.
//! - Unsent output is bounded: once the responses queued for the client (written or
//!   waiting for an earlier one) reach `max_unsent_bytes`, no further request is parsed and
//!   the socket is not read until the client has drained them below it. With the pipeline
//!   limit this bounds a connection's memory to about `max_unsent_bytes` plus
//!   [`MAX_PIPELINE`] responses, however many requests a client that never reads sends.
//!   An event stream whose client falls that far behind is closed.
//! - `HEAD` is answered as `GET` would be, without the body (its `Content-Length` is the
//!   body's; an event-stream head has none, as for `GET`), and the connection stays open.
//! - End of input (the client shut down its sending side): no request follows, those
//!   received are still answered, then the connection closes. The shell may probe a
//!   client that waits for a long answer with an interim `100 Continue` ([`Conn::probe`]):
//!   a client that closed its socket altogether answers it with a reset.
//! - Timeouts: a request (head and body) must arrive within `header_timeout_ms` of its first
//!   byte (for the first request: of the accept), else 408; an idle keep-alive connection
//!   closes after `keepalive_timeout_ms`; a client that stops reading its responses for
//!   `keepalive_timeout_ms` is dropped.
//! - Errors (and 408) are answered with `Connection: close`, then the connection lingers:
//!   the server stops writing and discards what the client still sends for up to
//!   [`LINGER_MS`], so the client reads the error instead of a reset.
//! - Event streams: a request may be answered with a stream head (no length); from then on
//!   the connection carries only that stream, until the server ends it or the client goes.
//! - Drain (shutdown or reload): requests already received are answered, the last with
//!   `Connection: close`; an idle connection gets [`DRAIN_IDLE_GRACE_MS`] since it went idle
//!   for a request that may already be on its way, then closes. This is what makes reloads
//!   lose no request of a busy keep-alive client.

use std::collections::VecDeque;

use super::parse::{Limits, Method, Parser, Progress, Request};
use super::response::{Response, CONTINUE};
use super::status::{error, http_error, ErrorCode};

/// Most requests of one connection waiting for their responses.
pub const MAX_PIPELINE: usize = 32;
/// After a drain starts, how long an idle connection is kept for a request in flight.
pub const DRAIN_IDLE_GRACE_MS: u64 = 1_000;
/// How long a connection closed after an error keeps discarding input.
pub const LINGER_MS: u64 = 2_000;
/// Most bytes discarded while lingering.
pub const MAX_LINGER_BYTES: usize = 1 << 20;
/// Output buffer capacity kept once everything is sent (a larger buffer, grown for a big
/// response, is given back).
pub const KEEP_OUTPUT_CAPACITY_BYTES: usize = 64 * 1024;
/// Written bytes at the front of the output buffer above which they are dropped before
/// the rest is sent (so a client that always lags a little does not grow the buffer).
const COMPACT_OUTPUT_BYTES: usize = 64 * 1024;

/// Timeouts and limits of connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnConfig {
    /// Request size limits.
    pub limits: Limits,
    /// Time for a whole request to arrive.
    pub header_timeout_ms: u64,
    /// Idle (and stalled-reader) timeout.
    pub keepalive_timeout_ms: u64,
    /// Unsent response bytes above which the connection is not read.
    pub max_unsent_bytes: usize,
}

/// Identifies one request of one connection.
pub type Seq = u64;

/// What the shell should do with the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Keep it.
    Open,
    /// Shut down writing and keep reading (and discarding) until the linger deadline.
    Linger,
    /// Close it now.
    Done,
}

#[derive(Debug)]
enum Slot {
    Waiting {
        close: bool,
        /// A `HEAD` request: the response goes without its body.
        head_only: bool,
        /// HTTP/1.1: the client accepts interim (1xx) responses.
        interim: bool,
    },
    Ready {
        bytes: Vec<u8>,
        close: bool,
    },
    /// An event stream's head: once it is sent, the connection carries only the stream.
    Stream {
        head: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading requests.
    Open,
    /// No more requests: answer those pending, then close (lingering if `linger`).
    Closing { linger: bool },
    /// Discarding input until `until_ms`.
    Lingering { until_ms: u64, discarded: usize },
    /// Carrying an event stream: output is pushed as events happen; input is discarded.
    Streaming,
    /// Finished.
    Done,
}

/// One connection.
#[derive(Debug)]
pub struct Conn {
    input: Vec<u8>,
    input_start: usize,
    /// Input is buffered that was not parsed for want of room (see [`Conn::resume`]).
    input_parked: bool,
    parser: Parser,
    /// When the request being read started (accept time for the first request).
    request_started_ms: Option<u64>,
    /// Whether any byte of the request being read has arrived.
    request_bytes: bool,
    idle_since_ms: u64,
    /// Last time bytes left for the client (or output became pending).
    write_progress_ms: u64,
    slots: VecDeque<Slot>,
    first_seq: Seq,
    output: Vec<u8>,
    written: usize,
    /// Bytes of responses encoded but waiting for an earlier one (`Slot::Ready`).
    ready_bytes: usize,
    phase: Phase,
    draining: bool,
}

impl Conn {
    /// A connection accepted at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            input: Vec::new(),
            input_start: 0,
            input_parked: false,
            parser: Parser::new(),
            request_started_ms: Some(now_ms),
            request_bytes: false,
            idle_since_ms: now_ms,
            write_progress_ms: now_ms,
            slots: VecDeque::new(),
            first_seq: 0,
            output: Vec::new(),
            written: 0,
            ready_bytes: 0,
            phase: Phase::Open,
            draining: false,
        }
    }

    /// What the shell should do with the socket now.
    pub fn status(&self) -> Status {
        match self.phase {
            Phase::Open | Phase::Closing { .. } | Phase::Streaming => Status::Open,
            Phase::Lingering { .. } => Status::Linger,
            Phase::Done => Status::Done,
        }
    }

    /// Whether the shell should read from the socket: not while the pipeline or the unsent
    /// output is full, nor while input read earlier waits for [`Conn::resume`].
    pub fn wants_read(&self, cfg: &ConnConfig) -> bool {
        match self.phase {
            Phase::Open => self.has_room(cfg) && !self.input_parked,
            // Read (and discard) to notice when the client goes.
            Phase::Lingering { .. } | Phase::Streaming => true,
            Phase::Closing { .. } | Phase::Done => false,
        }
    }

    /// Requests waiting for their responses.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Bytes to write to the socket.
    pub fn output(&self) -> &[u8] {
        &self.output[self.written..]
    }

    /// Response bytes queued for the client and not sent yet (including responses that
    /// wait for an earlier one).
    pub fn unsent_bytes(&self) -> usize {
        self.output.len() - self.written + self.ready_bytes
    }

    /// Whether another request may be taken: the pipeline and the unsent output both have
    /// room.
    fn has_room(&self, cfg: &ConnConfig) -> bool {
        self.slots.len() < MAX_PIPELINE && self.unsent_bytes() < cfg.max_unsent_bytes
    }

    fn idle(&self) -> bool {
        self.slots.is_empty() && self.output.is_empty() && self.request_started_ms.is_none()
    }

    /// Bytes read from the socket. Complete requests are appended to `requests`.
    pub fn feed(&mut self, bytes: &[u8], now_ms: u64, cfg: &ConnConfig, requests: &mut Vec<(Seq, Box<Request>)>) {
        if let Phase::Lingering { until_ms, discarded } = self.phase {
            let discarded = discarded + bytes.len();
            self.phase =
                if discarded > MAX_LINGER_BYTES { Phase::Done } else { Phase::Lingering { until_ms, discarded } };
            return;
        }
        if self.phase != Phase::Open || bytes.is_empty() {
            // A streaming client has nothing to say; what it sends is dropped.
            return;
        }
        if self.input_start == self.input.len() {
            self.input.clear();
            self.input_start = 0;
        }
        self.input.extend_from_slice(bytes);
        self.parse(now_ms, cfg, requests);
    }

    /// Parses requests still buffered after the pipeline or the unsent output had been full
    /// (call after responses were sent, before reading more).
    pub fn resume(&mut self, now_ms: u64, cfg: &ConnConfig, requests: &mut Vec<(Seq, Box<Request>)>) {
        self.parse(now_ms, cfg, requests);
    }

    fn parse(&mut self, now_ms: u64, cfg: &ConnConfig, requests: &mut Vec<(Seq, Box<Request>)>) {
        let mut need_more = false;
        while self.phase == Phase::Open && self.has_room(cfg) && self.input_start < self.input.len() {
            if self.request_started_ms.is_none() {
                self.request_started_ms = Some(now_ms);
            }
            self.request_bytes = true;
            match self.parser.parse(&self.input[self.input_start..], &cfg.limits) {
                Ok(Progress::NeedMore { consumed, send_continue }) => {
                    self.input_start += consumed;
                    if send_continue && self.slots.is_empty() && self.output.is_empty() {
                        self.output.extend_from_slice(CONTINUE);
                        self.write_progress_ms = now_ms;
                    }
                    need_more = true;
                    break;
                }
                Ok(Progress::Done { request, consumed }) => {
                    self.input_start += consumed;
                    self.request_started_ms = None;
                    self.request_bytes = false;
                    let close = !request.keep_alive || self.draining;
                    let seq = self.first_seq + self.slots.len() as Seq;
                    let head_only = request.method == Method::Head;
                    self.slots.push_back(Slot::Waiting { close, head_only, interim: request.minor_version >= 1 });
                    if close {
                        self.phase = Phase::Closing { linger: false };
                    }
                    requests.push((seq, request));
                }
                Err(e) => {
                    self.fail(&http_error(&e), now_ms);
                }
            }
        }
        // Whole requests left in the buffer for want of room: reading more before they are
        // parsed would only pile input up.
        self.input_parked = !need_more && self.input_start < self.input.len();
        if self.input_start > 0 && self.input_start * 2 > self.input.len() {
            self.input.drain(..self.input_start);
            self.input_start = 0;
        }
    }

    /// Queues an error answer after the pending ones and stops reading requests.
    fn fail(&mut self, response: &Response, now_ms: u64) {
        let mut bytes = Vec::new();
        response.encode(true, &mut bytes);
        self.ready_bytes += bytes.len();
        self.slots.push_back(Slot::Ready { bytes, close: true });
        self.phase = Phase::Closing { linger: true };
        self.request_started_ms = None;
        self.flush_ready(now_ms);
    }

    /// Starts an event stream as the answer to request `seq`: `head` goes out (without a
    /// length: the stream ends when the connection closes), then whatever
    /// [`Conn::stream_push`] adds. Requests after it on this connection are not answered.
    pub fn respond_stream(&mut self, seq: Seq, head: &Response, now_ms: u64) {
        let Some(index) = seq.checked_sub(self.first_seq).map(|i| i as usize) else { return };
        let Some(slot) = self.slots.get_mut(index) else { return };
        if !matches!(slot, Slot::Waiting { .. }) {
            return;
        }
        let mut bytes = Vec::new();
        head.encode_stream_head(&mut bytes);
        self.ready_bytes += bytes.len();
        *slot = Slot::Stream { head: bytes };
        self.flush_ready(now_ms);
    }

    /// Whether the connection carries an event stream now.
    pub fn is_streaming(&self) -> bool {
        self.phase == Phase::Streaming
    }

    /// Adds bytes to the stream (ignored if the connection is not streaming). A client
    /// that has fallen `max_unsent_bytes` behind is dropped (it reconnects with
    /// `Last-Event-ID`) rather than buffered for without end.
    pub fn stream_push(&mut self, bytes: &[u8], now_ms: u64, cfg: &ConnConfig) {
        if self.phase == Phase::Streaming {
            if self.unsent_bytes() + bytes.len() > cfg.max_unsent_bytes {
                self.phase = Phase::Done;
                return;
            }
            if self.output.is_empty() {
                self.write_progress_ms = now_ms;
            }
            self.output.extend_from_slice(bytes);
        }
    }

    /// Ends the stream: what was pushed is sent, then the connection closes.
    pub fn stream_end(&mut self, now_ms: u64) {
        if self.phase == Phase::Streaming {
            self.phase = Phase::Closing { linger: false };
            self.maybe_finish(now_ms);
        }
    }

    /// The response to request `seq` (ignored if that request is not pending).
    pub fn respond(&mut self, seq: Seq, response: &Response, now_ms: u64) {
        let Some(index) = seq.checked_sub(self.first_seq).map(|i| i as usize) else { return };
        let Some(slot) = self.slots.get_mut(index) else { return };
        let Slot::Waiting { close, head_only, .. } = *slot else { return };
        let encode = |out: &mut Vec<u8>| {
            if head_only {
                response.encode_head_only(close, out);
            } else {
                response.encode(close, out);
            }
        };
        if index == 0 {
            encode(&mut self.output);
            self.slots.pop_front();
            self.first_seq += 1;
            if close {
                self.close_after_output();
            }
            self.write_progress_ms = now_ms;
            self.flush_ready(now_ms);
        } else {
            let mut bytes = Vec::new();
            encode(&mut bytes);
            self.ready_bytes += bytes.len();
            *slot = Slot::Ready { bytes, close };
        }
    }

    /// Sends an interim `100 Continue` if the client may take one now (the next response
    /// due is for an HTTP/1.1 request and nothing else is being written). Returns whether
    /// it was queued. A client that closed its socket altogether answers the bytes with a
    /// reset, which the shell sees as an error on the socket; one that only shut down its
    /// sending side skips the interim response, as HTTP/1.1 clients must.
    pub fn probe(&mut self, now_ms: u64) -> bool {
        let due = matches!(self.slots.front(), Some(Slot::Waiting { interim: true, .. }));
        if !due || !self.output.is_empty() || matches!(self.phase, Phase::Lingering { .. } | Phase::Done) {
            return false;
        }
        self.output.extend_from_slice(CONTINUE);
        self.write_progress_ms = now_ms;
        true
    }

    /// Moves responses that are ready, in order, to the output.
    fn flush_ready(&mut self, now_ms: u64) {
        while let Some(Slot::Ready { .. } | Slot::Stream { .. }) = self.slots.front() {
            let Some(slot) = self.slots.pop_front() else { break };
            self.first_seq += 1;
            if self.output.is_empty() {
                self.write_progress_ms = now_ms;
            }
            match slot {
                Slot::Ready { bytes, close } => {
                    self.ready_bytes -= bytes.len();
                    self.output.extend_from_slice(&bytes);
                    if close {
                        self.close_after_output();
                    }
                }
                Slot::Stream { head } => {
                    self.ready_bytes -= head.len();
                    self.output.extend_from_slice(&head);
                    // Nothing after a stream is answered: the stream is the connection's last.
                    self.clear_slots();
                    self.request_started_ms = None;
                    self.phase = if self.draining { Phase::Closing { linger: false } } else { Phase::Streaming };
                    break;
                }
                Slot::Waiting { .. } => {}
            }
        }
        self.maybe_finish(now_ms);
    }

    fn close_after_output(&mut self) {
        let linger = matches!(self.phase, Phase::Closing { linger: true });
        self.phase = Phase::Closing { linger };
        // Nothing after a closing response is answered.
        self.clear_slots();
    }

    fn clear_slots(&mut self) {
        self.slots.clear();
        self.ready_bytes = 0;
    }

    /// `n` bytes of the output were written.
    pub fn advance(&mut self, n: usize, now_ms: u64) {
        self.written = (self.written + n).min(self.output.len());
        if n > 0 {
            self.write_progress_ms = now_ms;
        }
        if self.written == self.output.len() {
            self.output.clear();
            if self.output.capacity() > KEEP_OUTPUT_CAPACITY_BYTES {
                self.output = Vec::new();
            }
            self.written = 0;
            if self.phase == Phase::Open && self.slots.is_empty() && self.request_started_ms.is_none() {
                self.idle_since_ms = now_ms;
            }
        } else if self.written >= COMPACT_OUTPUT_BYTES && self.written * 2 >= self.output.len() {
            self.output.drain(..self.written);
            self.written = 0;
        }
        self.maybe_finish(now_ms);
    }

    fn maybe_finish(&mut self, now_ms: u64) {
        if let Phase::Closing { linger } = self.phase {
            if self.slots.is_empty() && self.output.is_empty() {
                self.phase =
                    if linger { Phase::Lingering { until_ms: now_ms + LINGER_MS, discarded: 0 } } else { Phase::Done };
            }
        }
    }

    /// The peer closed its side: answer what is pending (the last answer says
    /// `Connection: close`), then close.
    pub fn on_peer_eof(&mut self, now_ms: u64) {
        match self.phase {
            Phase::Lingering { .. } | Phase::Streaming => self.phase = Phase::Done,
            Phase::Open | Phase::Closing { .. } => {
                if self.slots.is_empty() && self.output.is_empty() {
                    self.phase = Phase::Done;
                } else {
                    if let Some(Slot::Waiting { close, .. }) = self.slots.back_mut() {
                        *close = true;
                    }
                    self.phase = Phase::Closing { linger: false };
                    self.maybe_finish(now_ms);
                }
            }
            Phase::Done => {}
        }
    }

    /// Closes at once, answering nothing more (the client is gone and what it waits for may
    /// take long).
    pub fn abort(&mut self) {
        self.phase = Phase::Done;
    }

    /// Starts draining: finish what was received, then close.
    pub fn drain(&mut self, now_ms: u64) {
        self.draining = true;
        // A stream ends now (its client reconnects elsewhere with Last-Event-ID).
        self.stream_end(now_ms);
        if self.phase != Phase::Open {
            return;
        }
        if let Some(Slot::Waiting { close, .. } | Slot::Ready { close, .. }) = self.slots.back_mut() {
            *close = true;
            self.phase = Phase::Closing { linger: false };
            return;
        }
        if !self.request_bytes && self.output.is_empty() {
            // Not a byte of a request yet (a fresh connection): it is as good as idle.
            self.request_started_ms = None;
        }
        if self.idle() && now_ms >= self.idle_since_ms + DRAIN_IDLE_GRACE_MS {
            self.phase = Phase::Done;
        }
    }

    /// When [`Conn::on_timer`] has something to do, if ever.
    pub fn deadline(&self, cfg: &ConnConfig) -> Option<u64> {
        match self.phase {
            Phase::Lingering { until_ms, .. } => return Some(until_ms),
            Phase::Done => return None,
            // A stream has no idle timeout (its pings keep it busy); a stalled reader does.
            Phase::Streaming => {
                return (!self.output.is_empty()).then_some(self.write_progress_ms + cfg.keepalive_timeout_ms)
            }
            Phase::Open | Phase::Closing { .. } => {}
        }
        if !self.output.is_empty() {
            return Some(self.write_progress_ms + cfg.keepalive_timeout_ms);
        }
        if !self.slots.is_empty() {
            // Waiting for our own answer: no client timeout applies.
            return None;
        }
        if let Some(started) = self.request_started_ms {
            return Some(started + cfg.header_timeout_ms);
        }
        if self.draining {
            return Some(self.idle_since_ms + DRAIN_IDLE_GRACE_MS);
        }
        Some(self.idle_since_ms + cfg.keepalive_timeout_ms)
    }

    /// Applies whatever timeout is due at `now_ms`.
    pub fn on_timer(&mut self, now_ms: u64, cfg: &ConnConfig) {
        let Some(due) = self.deadline(cfg) else { return };
        if now_ms < due {
            return;
        }
        if matches!(self.phase, Phase::Lingering { .. }) || !self.output.is_empty() {
            self.phase = Phase::Done;
        } else if self.request_started_ms.is_some() && self.request_bytes {
            self.fail(&error(ErrorCode::RequestTimeout, "the request did not arrive in time"), now_ms);
        } else {
            // Idle keep-alive, or a connection that never sent a byte: close quietly.
            self.phase = Phase::Done;
        }
    }
}

#[cfg(test)]
mod tests;
