//! The log store on etcd, beside the file store ([`super::store`]): a small blocking client
//! of etcd's gRPC-JSON gateway over HTTP/1.1, for the etcd link of cluster mode
//! (docs/cluster.md, "The etcd link"). No async runtime and no gRPC stack: one
//! `std::net::TcpStream`, kept alive between requests, on the caller's thread.
//!
//! - [`wire`] is the pure part: keys, request bodies, the decoding of answers (chunked
//!   bodies and trailers included) and their parsing into typed results. This file only
//!   moves bytes: it connects, writes, reads with deadlines, and hands what came to `wire`.
//! - Endpoints: requests go to one of `cluster.etcd_endpoints` on a kept-alive connection;
//!   a connection that fails is dropped, and the next connection starts at the next
//!   endpoint, so an endpoint that is down, or alive without a quorum, is left behind.
//! - Bounded time: every request carries `Grpc-Timeout` of `cluster.etcd_timeout_ms` (else
//!   etcd without a quorum holds a request about 8 s), and the socket waits at most
//!   [`TIMEOUT_SLACK_MS`] more, connecting included. Bounded memory: answers are read up
//!   to [`wire::MAX_RESPONSE_BYTES`], watch lines up to [`wire::MAX_WATCH_LINE_BYTES`].
//! - Outcomes: a refusal by a failed compare is an answer ([`Campaign::Held`],
//!   [`Put::Refused`], [`Trim::Refused`]), never an error. An error that leaves the
//!   outcome unknown is [`EtcdError::Unavailable`] (or a cut or unreadable answer); every
//!   operation here may be sent again: campaigns and puts recognise their own earlier
//!   success, reads and renewals change nothing, a trim deletes what is left, a compaction
//!   at a revision compacted already succeeds, and a revoke of a lease already gone
//!   succeeds.
//! - A watch ([`Etcd::watch`]) has a connection of its own, open as long as the [`Watch`],
//!   probed by TCP keepalive so that a peer gone without a word ends it with an error.
//!
//! Must not: decide anything about leadership or the log (the rules in
//! `service/cluster.rs` do; this carries out their effects), or retry on its own beyond
//! sending once more on a fresh connection when a kept-alive one turns out closed.

pub mod wire;

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::config::ClusterConfig;
use crate::service::cluster::{Epoch, Seq};

pub use wire::{
    leader_key, log_key, log_prefix, node_key, nodes_prefix, seq_of, Campaign, EtcdError, Holder, LeaseId, LogRead,
    Put, Trim, WatchEvent,
};
use wire::{path, Edge, Endpoint, Reader, Reply, WatchStream};

/// How much longer than `cluster.etcd_timeout_ms` the socket waits for an answer: etcd
/// answers a request it could not serve in time by itself (504) within the timeout, so the
/// socket's own deadline only ends a request when the connection or the member is stuck.
pub const TIMEOUT_SLACK_MS: u64 = 500;
/// Bytes read from a socket at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// A watch's connection, quiet this long, is probed (TCP keepalive)…
const WATCH_KEEPALIVE_IDLE: Duration = Duration::from_secs(2);
/// …this often…
const WATCH_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// …and given up after this many probes unanswered, which ends the watch with an error.
const WATCH_KEEPALIVE_PROBES: u32 = 3;

/// A connection to one endpoint.
struct Conn {
    stream: TcpStream,
    /// Its endpoint's index.
    at: usize,
}

/// How an exchange on a connection failed.
struct Failure {
    error: EtcdError,
    /// Nothing came back and the connection was found closed: a kept-alive connection the
    /// peer had closed, worth one more try on a fresh one.
    stale: bool,
}

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A client of one etcd cluster.
pub struct Etcd {
    endpoints: Vec<Endpoint>,
    /// The endpoint the next connection tries first.
    next: usize,
    conn: Option<Conn>,
    timeout_ms: u64,
    chunk: Vec<u8>,
}

impl Etcd {
    /// A client of the endpoints and timeout of `[cluster]`.
    pub fn from_config(config: &ClusterConfig) -> Result<Self, EtcdError> {
        Self::new(&config.etcd_endpoints, config.etcd_timeout_ms)
    }

    /// A client of `endpoints` (`http://host:port`), whose requests take at most
    /// `etcd_timeout_ms` (plus [`TIMEOUT_SLACK_MS`]). Connects lazily.
    pub fn new(endpoints: &[String], etcd_timeout_ms: u64) -> Result<Self, EtcdError> {
        let endpoints = endpoints.iter().map(|url| wire::parse_endpoint(url)).collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(EtcdError::BadEndpoint { endpoint: String::new(), reason: "no etcd endpoint given".into() });
        }
        Ok(Self { endpoints, next: 0, conn: None, timeout_ms: etcd_timeout_ms, chunk: vec![0; READ_CHUNK_BYTES] })
    }

    /// The endpoint in use, or the one tried next.
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.conn.as_ref().map_or(self.next, |c| c.at)].url
    }

    /// Grants a lease of `ttl_s` seconds (etcd raises it to its minimum, 3 s).
    pub fn lease_grant(&mut self, ttl_s: u64) -> Result<LeaseId, EtcdError> {
        self.request(path::LEASE_GRANT, &wire::grant_body(ttl_s), wire::parse_grant)
    }

    /// Renews lease `id`: its TTL in seconds, or `None` if the lease is gone.
    pub fn lease_keepalive(&mut self, id: LeaseId) -> Result<Option<u64>, EtcdError> {
        self.request(path::LEASE_KEEPALIVE, &wire::lease_body(id), wire::parse_keepalive)
    }

    /// Revokes lease `id`, deleting every key under it. A lease already gone is no error.
    pub fn lease_revoke(&mut self, id: LeaseId) -> Result<(), EtcdError> {
        match self.request(path::LEASE_REVOKE, &wire::lease_body(id), |_| Ok(())) {
            Err(EtcdError::Http { status: 404, .. } | EtcdError::Http { code: Some(5), .. }) => Ok(()),
            other => other,
        }
    }

    /// Creates `leader_key` with `value` under `lease` unless it exists: [`Campaign::Won`]
    /// with the key's create revision as the epoch, or [`Campaign::Held`] by whoever holds
    /// it (a key found under `lease` itself is this campaign's, won by an earlier send).
    pub fn campaign(&mut self, leader_key: &str, value: &[u8], lease: LeaseId) -> Result<Campaign, EtcdError> {
        self.request(path::TXN, &wire::campaign_body(leader_key, value, lease), |body| {
            wire::parse_campaign(body, lease)
        })
    }

    /// Puts `batch` at `log_key` if `leader_key` still has `epoch` and `log_key` is absent
    /// (docs/cluster.md, "Committing"). [`Put::Committed`] also when `log_key` already holds
    /// exactly `batch`: an earlier try went through.
    ///
    /// # Panics
    /// If `epoch` is 0 (no epoch is).
    pub fn put_batch(&mut self, log_key: &str, leader_key: &str, epoch: Epoch, batch: &[u8]) -> Result<Put, EtcdError> {
        let body = wire::put_batch_body(log_key, leader_key, epoch, batch);
        self.request(path::TXN, &body, |reply| wire::parse_put_batch(reply, batch))
    }

    /// Reads the log under `prefix` from batch `from` to its end, linearizably: a first
    /// read finds the log's first batch (a linearizable read), and every page after it is
    /// read at that read's revision, so the pages make one consistent picture. When the
    /// batches from `from` were trimmed ([`LogRead::trimmed`]), none is read. Pages hold
    /// up to [`wire::LOG_PAGE_KEYS`] batches (fewer when they would pass
    /// [`wire::MAX_RESPONSE_BYTES`]); the read stops with `more` once it holds
    /// [`wire::MAX_LOG_READ_BYTES`].
    pub fn read_log(&mut self, prefix: &str, from: Seq) -> Result<LogRead, EtcdError> {
        let start = log_prefix(prefix);
        let end = wire::prefix_end(start.as_bytes());
        let first_body = wire::edge_body(start.as_bytes(), &end, Edge::First, 0);
        let (first, revision) = self.request(path::RANGE, &first_body, |body| {
            let range = wire::parse_range(body)?;
            Ok((wire::edge_seq(prefix, &range)?, range.revision))
        })?;
        let mut read = LogRead { batches: Vec::new(), revision, more: false, first };
        if read.trimmed(from) {
            return Ok(read);
        }
        let mut key = log_key(prefix, from).into_bytes();
        let mut limit = wire::LOG_PAGE_KEYS;
        let mut bytes = 0usize;
        loop {
            let body = wire::range_body(&key, Some(&end), limit, read.revision);
            let page = match self.request(path::RANGE, &body, wire::parse_range) {
                Err(EtcdError::TooLarge { .. }) if limit > 1 => {
                    limit = (limit / 8).max(1);
                    continue;
                }
                page => page?,
            };
            let next = read.batches.last().map_or(from, |(seq, _)| seq + 1);
            let last_key = page.kvs.last().map(|kv| kv.key.clone());
            let batches = wire::log_page(prefix, page.kvs, next).map_err(|e| e.at(self.endpoint()))?;
            bytes += batches.iter().map(|(_, b)| b.len()).sum::<usize>();
            read.batches.extend(batches);
            match last_key {
                Some(last) if page.more => {
                    if bytes >= wire::MAX_LOG_READ_BYTES {
                        read.more = true;
                        return Ok(read);
                    }
                    key = last;
                    key.push(0);
                }
                _ => return Ok(read),
            }
        }
    }

    /// The log's last batch under `prefix` (0: the log is empty), at `revision` (0: now,
    /// linearizably), without reading any batch.
    pub fn last_batch(&mut self, prefix: &str, revision: u64) -> Result<Seq, EtcdError> {
        let start = log_prefix(prefix);
        let end = wire::prefix_end(start.as_bytes());
        self.request(path::RANGE, &wire::edge_body(start.as_bytes(), &end, Edge::Last, revision), |body| {
            wire::edge_seq(prefix, &wire::parse_range(body)?)
        })
    }

    /// Deletes the batches of the log under `prefix` below `below` if `leader_key` still
    /// has `epoch`: [`Trim::Done`] with the txn's revision, or [`Trim::Refused`] (nothing
    /// deleted). Sent again, it deletes what is left (nothing, if the first went through).
    ///
    /// # Panics
    /// If `epoch` or `below` is 0 ([`wire::trim_log_body`]).
    pub fn trim_log(&mut self, prefix: &str, leader_key: &str, epoch: Epoch, below: Seq) -> Result<Trim, EtcdError> {
        self.request(path::TXN, &wire::trim_log_body(prefix, leader_key, epoch, below), wire::parse_trim)
    }

    /// Puts `value` at `key` under `lease` (a node's position: whatever was there is
    /// replaced, and the key goes with the lease).
    pub fn put_node(&mut self, key: &str, value: &[u8], lease: LeaseId) -> Result<(), EtcdError> {
        self.request(path::PUT, &wire::put_body(key, value, lease), wire::parse_put).map(|_| ())
    }

    /// Every key under `prefix` with its value, in key order (a linearizable read, meant
    /// for a handful of keys: the answer is bounded by [`wire::MAX_RESPONSE_BYTES`]).
    pub fn read_prefix(&mut self, prefix: &str) -> Result<Vec<KeyValue>, EtcdError> {
        let end = wire::prefix_end(prefix.as_bytes());
        let range =
            self.request(path::RANGE, &wire::range_body(prefix.as_bytes(), Some(&end), 0, 0), wire::parse_range)?;
        Ok(range.kvs.into_iter().map(|kv| (kv.key, kv.value)).collect())
    }

    /// Compacts etcd's history before `revision`. A revision compacted already is no
    /// error (sent again, the compaction is done); a revision etcd has not reached is.
    pub fn compact(&mut self, revision: u64) -> Result<(), EtcdError> {
        match self.request(path::COMPACTION, &wire::compaction_body(revision), wire::parse_compaction) {
            Err(e) if wire::already_compacted(&e) => Ok(()),
            other => other,
        }
    }

    /// Who holds `leader_key` (a linearizable read): its value and epoch, if anyone.
    pub fn leader(&mut self, leader_key: &str) -> Result<Option<Holder>, EtcdError> {
        self.request(path::RANGE, &wire::range_body(leader_key.as_bytes(), None, 0, 0), wire::parse_leader)
    }

    /// [`Etcd::leader`], with the revision it was read at (a watch from the next revision
    /// misses no change after it).
    pub fn leader_at(&mut self, leader_key: &str) -> Result<(Option<Holder>, u64), EtcdError> {
        self.request(path::RANGE, &wire::range_body(leader_key.as_bytes(), None, 0, 0), wire::parse_leader_at)
    }

    /// Deletes `leader_key` if it still has `epoch`; whether it did.
    ///
    /// # Panics
    /// If `epoch` is 0 (no epoch is).
    pub fn delete_if_epoch(&mut self, leader_key: &str, epoch: Epoch) -> Result<bool, EtcdError> {
        self.request(path::TXN, &wire::delete_if_epoch_body(leader_key, epoch), wire::parse_delete_if_epoch)
    }

    /// Watches every key under `prefix` (such as [`log_prefix`]) from `from_revision` (0:
    /// from now), on a connection of its own; returns once etcd has set the watch up.
    pub fn watch(&mut self, prefix: &str, from_revision: u64) -> Result<Watch, EtcdError> {
        let deadline = self.deadline();
        let (stream, at) = self.open(deadline)?;
        // A watch may stay quiet for long: TCP keepalive finds a peer that vanished.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(WATCH_KEEPALIVE_IDLE)
            .with_interval(WATCH_KEEPALIVE_INTERVAL)
            .with_retries(WATCH_KEEPALIVE_PROBES);
        socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&keepalive)
            .map_err(|e| io_error("setting up a watch", e).at(&self.endpoints[at].url))?;
        let endpoint = self.endpoints[at].clone();
        let body = wire::watch_body(prefix, from_revision);
        // No Grpc-Timeout: it would end the stream. With `hasleader`, etcd ends a watch
        // (or refuses a new one) when its member has no leader, instead of going silent.
        let head =
            wire::request_head(path::WATCH, &endpoint.authority, body.len(), &[("Grpc-Metadata-hasleader", "true")]);
        let mut watch = Watch {
            stream,
            endpoint: endpoint.url.clone(),
            decoder: WatchStream::new(),
            queue: VecDeque::new(),
            failed: None,
            done: false,
            chunk: vec![0; READ_CHUNK_BYTES],
        };
        let started = send(&mut watch.stream, &[head.as_bytes(), body.as_bytes()].concat(), deadline)
            .and_then(|()| watch.wait_created(deadline));
        if let Err(e) = started {
            self.next = (at + 1) % self.endpoints.len();
            return Err(e.at(&endpoint.url));
        }
        Ok(watch)
    }

    fn deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.timeout_ms + TIMEOUT_SLACK_MS)
    }

    /// Sends one request and parses its 200 answer with `parse`; any other status is the
    /// error it stands for ([`wire::refusal`]).
    fn request<T>(
        &mut self,
        path: &str,
        body: &str,
        parse: impl FnOnce(&[u8]) -> Result<T, EtcdError>,
    ) -> Result<T, EtcdError> {
        let deadline = self.deadline();
        let timeout = wire::grpc_timeout(self.timeout_ms);
        let mut resent = false;
        loop {
            let reused = self.conn.is_some();
            let at = self.connect(deadline)?;
            let endpoint = &self.endpoints[at];
            let head = wire::request_head(path, &endpoint.authority, body.len(), &[("Grpc-Timeout", &timeout)]);
            let request = [head.as_bytes(), body.as_bytes()].concat();
            let conn = self.conn.as_mut().expect("connected just now");
            match exchange(&mut conn.stream, &request, deadline, &mut self.chunk) {
                Ok(reply) => {
                    if !reply.keep_alive {
                        self.conn = None;
                    }
                    let url = self.endpoints[at].url.clone();
                    let result = reply.ok().and_then(|body| parse(&body));
                    if matches!(result, Err(EtcdError::Unavailable { .. })) {
                        // This member cannot serve now: start the next connection elsewhere.
                        self.conn = None;
                        self.next = (at + 1) % self.endpoints.len();
                    }
                    return result.map_err(|e| e.at(&url));
                }
                Err(Failure { stale: true, .. }) if reused && !resent => {
                    self.conn = None;
                    resent = true;
                }
                Err(Failure { error, .. }) => {
                    self.conn = None;
                    self.next = (at + 1) % self.endpoints.len();
                    return Err(error.at(&self.endpoints[at].url));
                }
            }
        }
    }

    /// The kept-alive connection, or a new one; its endpoint's index.
    fn connect(&mut self, deadline: Instant) -> Result<usize, EtcdError> {
        if let Some(conn) = &self.conn {
            return Ok(conn.at);
        }
        let (stream, at) = self.open(deadline)?;
        self.next = at;
        self.conn = Some(Conn { stream, at });
        Ok(at)
    }

    /// A new connection: to the endpoints in turn from `next`, until one answers. Each
    /// endpoint gets an even share of the time left, so one that swallows connection
    /// attempts does not leave the others untried; after a failure, the next connection
    /// starts past the endpoints that failed.
    fn open(&mut self, deadline: Instant) -> Result<(TcpStream, usize), EtcdError> {
        let count = self.endpoints.len();
        let mut failures = Vec::new();
        let mut last = None;
        for i in 0..count {
            let at = (self.next + i) % count;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                failures.push(format!("{}: no time left", self.endpoints[at].url));
                break;
            }
            let share = left / u32::try_from(count - i).unwrap_or(1);
            match dial(&self.endpoints[at], share) {
                Ok(stream) => return Ok((stream, at)),
                Err(e) => {
                    failures.push(format!("{}: {e}", self.endpoints[at].url));
                    last = Some(e);
                    self.next = (at + 1) % count;
                }
            }
        }
        Err(EtcdError::Unavailable {
            endpoint: String::new(),
            reason: format!("no endpoint could be reached ({})", failures.join("; ")),
            source: last,
        })
    }
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoint", &self.endpoint())
            .field("connected", &self.conn.is_some())
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

/// Connects to `endpoint` within `timeout`.
fn dial(endpoint: &Endpoint, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
    for addr in (endpoint.host.as_str(), endpoint.port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The time left before `deadline`, or the error that it passed.
fn left(deadline: Instant, what: &str) -> Result<Duration, EtcdError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(EtcdError::Unavailable {
            endpoint: String::new(),
            reason: format!("{what}: the deadline passed"),
            source: Some(io::ErrorKind::TimedOut.into()),
        });
    }
    Ok(left)
}

fn io_error(what: &str, e: io::Error) -> EtcdError {
    let what = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("{what}: no answer in time"),
        _ => format!("{what}: {e}"),
    };
    EtcdError::Unavailable { endpoint: String::new(), reason: what, source: Some(e) }
}

/// Whether an I/O error means the peer had closed the connection.
fn closed(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe)
}

/// Writes `bytes` before `deadline`.
fn send(stream: &mut TcpStream, bytes: &[u8], deadline: Instant) -> Result<(), EtcdError> {
    stream.set_write_timeout(Some(left(deadline, "sending a request")?)).map_err(|e| io_error("sending", e))?;
    stream.write_all(bytes).map_err(|e| io_error("sending a request", e))
}

/// One request and its whole answer on `stream`, before `deadline`.
fn exchange(stream: &mut TcpStream, request: &[u8], deadline: Instant, chunk: &mut [u8]) -> Result<Reply, Failure> {
    if let Err(error) = send(stream, request, deadline) {
        // Nothing was answered; a closed connection took no request.
        let stale = matches!(&error, EtcdError::Unavailable { source: Some(e), .. } if closed(e));
        return Err(Failure { error, stale });
    }
    let mut reader = Reader::unary();
    let mut body = Vec::new();
    let fail = |error| Failure { error, stale: false };
    loop {
        let left = left(deadline, "waiting for an answer").map_err(fail)?;
        stream.set_read_timeout(Some(left)).map_err(|e| fail(io_error("waiting", e)))?;
        match stream.read(chunk) {
            Ok(0) => {
                let started = reader.started();
                reader.eof().map_err(|error| Failure { error, stale: !started })?;
            }
            Ok(n) => reader.push(&chunk[..n], &mut body).map_err(fail)?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let stale = !reader.started() && closed(&e);
                return Err(Failure { error: io_error("waiting for an answer", e), stale });
            }
        }
        if reader.is_done() {
            return Reply::of(&reader, body).ok_or_else(|| fail(EtcdError::malformed("an unfinished answer")));
        }
    }
}

/// A watch: the events of a range of keys, in revision order, on a connection of its own.
/// Read it with [`Watch::next_within`] or as a blocking iterator. It ends with an error
/// (the stream ended or failed: watch again from the revision after the last event) or
/// with [`WatchEvent::Compacted`]. Dropping it closes the connection, which cancels it.
pub struct Watch {
    stream: TcpStream,
    endpoint: String,
    decoder: WatchStream,
    queue: VecDeque<WatchEvent>,
    /// The error that ends the watch, once the events before it are out.
    failed: Option<EtcdError>,
    /// The watch's last item (an error or a compaction) was handed out.
    done: bool,
    chunk: Vec<u8>,
}

impl Watch {
    /// The endpoint it watches through.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The next event, waiting at most `timeout`: `Ok(None)` if none came meanwhile. After
    /// the last item (an error, or a compaction), every call is an error.
    pub fn next_within(&mut self, timeout: Duration) -> Result<Option<WatchEvent>, EtcdError> {
        self.next_event(Some(Instant::now() + timeout))
    }

    fn next_event(&mut self, deadline: Option<Instant>) -> Result<Option<WatchEvent>, EtcdError> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                self.done |= matches!(event, WatchEvent::Compacted { .. });
                return Ok(Some(event));
            }
            if let Some(e) = self.failed.take() {
                self.done = true;
                return Err(e);
            }
            if self.done || self.decoder.is_over() {
                self.done = true;
                return Err(EtcdError::unavailable("the watch is over").at(&self.endpoint));
            }
            let timeout = match deadline {
                Some(deadline) => match deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
                    Some(left) => Some(left),
                    None => return Ok(None),
                },
                None => None,
            };
            if let Err(e) = self.stream.set_read_timeout(timeout) {
                self.failed = Some(io_error("watching", e).at(&self.endpoint));
                continue;
            }
            match self.stream.read(&mut self.chunk) {
                Ok(0) => {
                    let e = self.decoder.eof(&mut self.queue);
                    self.failed = Some(e.at(&self.endpoint));
                }
                Ok(n) => {
                    if let Err(e) = self.decoder.push(&self.chunk[..n], &mut self.queue) {
                        self.failed = Some(e.at(&self.endpoint));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if deadline.is_some() {
                        return Ok(None);
                    }
                }
                Err(e) => self.failed = Some(io_error("watching", e).at(&self.endpoint)),
            }
        }
    }

    /// Reads until etcd says the watch is set up (events after it stay queued).
    fn wait_created(&mut self, deadline: Instant) -> Result<(), EtcdError> {
        while !self.decoder.created() {
            if let Some(e) = self.failed.take() {
                return Err(e);
            }
            let left = left(deadline, "setting up a watch")?;
            self.stream.set_read_timeout(Some(left)).map_err(|e| io_error("watching", e))?;
            match self.stream.read(&mut self.chunk) {
                Ok(0) => return Err(self.decoder.eof(&mut self.queue)),
                Ok(n) => self.decoder.push(&self.chunk[..n], &mut self.queue)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_error("setting up a watch", e)),
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("endpoint", &self.endpoint)
            .field("queued", &self.queue.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Iterator for Watch {
    type Item = Result<WatchEvent, EtcdError>;

    /// Blocks until the next event; `None` after the last item.
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        loop {
            match self.next_event(None) {
                Ok(Some(event)) => return Some(Ok(event)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
