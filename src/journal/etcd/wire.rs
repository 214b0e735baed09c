//! The etcd link's wire, pure: the keys leasehold writes in etcd, the JSON bodies of the
//! requests to etcd's gRPC-JSON gateway, the decoding of its HTTP/1.1 answers (a
//! `Content-Length` or chunked body, trailers included), and the parsing of every answer
//! into typed results (docs/cluster.md, "Keys in etcd" and "The etcd link").
//!
//! Must not: touch a socket, a clock or anything else outside its arguments; the thin I/O
//! part is [`super`]. Whatever bytes come in, the functions here return a value or an
//! [`EtcdError`]: no panic, and no allocation beyond [`MAX_RESPONSE_BYTES`] for an answer
//! (or [`MAX_WATCH_LINE_BYTES`] for one line of a watch), whatever lengths the peer claims.
//!
//! What the gateway does (docs/cluster.md): keys and values are standard base64 with
//! padding; 64-bit integers are JSON strings (numbers are accepted too); fields with a zero
//! value are left out, so every field here has a default; a txn whose compare fails is an
//! answer (`succeeded` absent), not an error; the watch is newline-delimited JSON over a
//! chunked body, framed by newline and never by chunk.

use std::collections::VecDeque;
use std::fmt;
use std::io;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::service::cluster::{Epoch, Seq};

/// Largest answer read from etcd (a unary body, or an error body of a stream). A longer
/// one, by its declared length or as it comes, is refused before it is buffered.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Longest line of a watch stream (one line holds every event of a revision, or of a
/// catch-up).
pub const MAX_WATCH_LINE_BYTES: usize = MAX_RESPONSE_BYTES;
/// Longest status line and header section of an answer (and trailer section).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in an answer.
pub const MAX_HEADERS: usize = 64;
/// Longest chunk-size line (size plus extensions).
pub const MAX_CHUNK_LINE_BYTES: usize = 1024;
/// Keys asked for per page of a log read. A page of batches too large for
/// [`MAX_RESPONSE_BYTES`] is asked for again in smaller pages, down to one key.
pub const LOG_PAGE_KEYS: u64 = 256;
/// Batch bytes one log read collects before it stops and says there is more, so a long log
/// is read in parts of bounded size.
pub const MAX_LOG_READ_BYTES: usize = 32 * 1024 * 1024;
/// Longest piece of a body quoted in an error.
const MAX_QUOTED_BYTES: usize = 200;

/// Paths of the gateway's endpoints.
pub mod path {
    /// `POST` a txn.
    pub const TXN: &str = "/v3/kv/txn";
    /// `POST` a range read.
    pub const RANGE: &str = "/v3/kv/range";
    /// `POST` a plain put.
    pub const PUT: &str = "/v3/kv/put";
    /// `POST` a compaction of the history.
    pub const COMPACTION: &str = "/v3/kv/compaction";
    /// `POST` a lease grant.
    pub const LEASE_GRANT: &str = "/v3/lease/grant";
    /// `POST` one lease renewal (a stream endpoint: one line answers it).
    pub const LEASE_KEEPALIVE: &str = "/v3/lease/keepalive";
    /// `POST` a lease revocation.
    pub const LEASE_REVOKE: &str = "/v3/lease/revoke";
    /// `POST` a watch (a stream that stays open).
    pub const WATCH: &str = "/v3/watch";
}

// ---------------------------------------------------------------------------------------
// Errors

/// Why an etcd request has no result. The endpoint is empty where the pure part made the
/// error; the I/O part names it ([`EtcdError::at`]).
#[derive(Debug)]
pub enum EtcdError {
    /// No answer, or etcd said it cannot serve now (no leader, no quorum, its timeout or
    /// ours, the connection broke, no endpoint reachable): whether a change took effect is
    /// unknown.
    Unavailable {
        /// The endpoint (`http://host:port`), when one was involved.
        endpoint: String,
        /// What happened.
        reason: String,
        /// The I/O error behind it, if any.
        source: Option<io::Error>,
    },
    /// etcd refused the request (a 4xx answer): it took no effect.
    Http {
        /// The endpoint.
        endpoint: String,
        /// The HTTP status.
        status: u16,
        /// etcd's gRPC code, when the body names one.
        code: Option<i64>,
        /// etcd's message.
        message: String,
    },
    /// The answer is not what etcd's gateway sends.
    Malformed {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
    /// The answer (or a watch line) is larger than this client reads.
    TooLarge {
        /// The endpoint.
        endpoint: String,
        /// The limit it passed.
        max_bytes: usize,
    },
    /// An endpoint this client cannot use.
    BadEndpoint {
        /// The endpoint as configured.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

impl EtcdError {
    /// The same error, naming `endpoint` if it named none.
    pub fn at(mut self, at: &str) -> Self {
        match &mut self {
            Self::Unavailable { endpoint, .. }
            | Self::Http { endpoint, .. }
            | Self::Malformed { endpoint, .. }
            | Self::TooLarge { endpoint, .. }
            | Self::BadEndpoint { endpoint, .. } => {
                if endpoint.is_empty() {
                    *endpoint = at.to_string();
                }
            }
        }
        self
    }

    /// Whether a change sent may or may not have taken effect: every error but a refusal
    /// (an answer that was cut short or unreadable may have followed a change).
    pub fn outcome_unknown(&self) -> bool {
        !matches!(self, Self::Http { .. } | Self::BadEndpoint { .. })
    }

    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable { endpoint: String::new(), reason: reason.into(), source: None }
    }

    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        Self::Malformed { endpoint: String::new(), reason: reason.into() }
    }

    fn too_large(max_bytes: usize) -> Self {
        Self::TooLarge { endpoint: String::new(), max_bytes }
    }
}

/// `etcd at ENDPOINT` or `etcd`.
fn who(endpoint: &str) -> String {
    if endpoint.is_empty() {
        "etcd".to_string()
    } else {
        format!("etcd at {endpoint}")
    }
}

impl fmt::Display for EtcdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable { endpoint, reason, .. } => write!(f, "{} is unavailable: {reason}", who(endpoint)),
            Self::Http { endpoint, status, code: Some(code), message } => {
                write!(f, "{} refused the request: {status} {message} (code {code})", who(endpoint))
            }
            Self::Http { endpoint, status, code: None, message } => {
                write!(f, "{} refused the request: {status} {message}", who(endpoint))
            }
            Self::Malformed { endpoint, reason } => write!(f, "{} sent a malformed answer: {reason}", who(endpoint)),
            Self::TooLarge { endpoint, max_bytes } => {
                write!(f, "{} sent an answer larger than {max_bytes} bytes", who(endpoint))
            }
            Self::BadEndpoint { endpoint, reason } => write!(f, "etcd endpoint {endpoint:?} cannot be used: {reason}"),
        }
    }
}

impl std::error::Error for EtcdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unavailable { source: Some(source), .. } => Some(source),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Keys

/// `{prefix}/leader`: who leads (docs/cluster.md, "Keys in etcd").
pub fn leader_key(prefix: &str) -> String {
    format!("{prefix}/leader")
}

/// `{prefix}/log/`: every batch's key starts with it.
pub fn log_prefix(prefix: &str) -> String {
    format!("{prefix}/log/")
}

/// `{prefix}/log/{seq}`, `seq` as 20 zero-padded digits so keys sort in `seq` order.
pub fn log_key(prefix: &str, seq: Seq) -> String {
    format!("{prefix}/log/{seq:020}")
}

/// `{prefix}/nodes/`: every node's key starts with it.
pub fn nodes_prefix(prefix: &str) -> String {
    format!("{prefix}/nodes/")
}

/// `{prefix}/nodes/{name}`: where node `name` publishes its position (docs/cluster.md,
/// "Keys in etcd").
pub fn node_key(prefix: &str, name: &str) -> String {
    format!("{prefix}/nodes/{name}")
}

/// The `seq` of a batch's key under `prefix`, or `None` if `key` is not one.
pub fn seq_of(prefix: &str, key: &[u8]) -> Option<Seq> {
    let digits = key.strip_prefix(log_prefix(prefix).as_bytes())?;
    if digits.len() != 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The end of the range of every key that starts with `prefix`: the prefix with its last
/// byte below 0xff raised by one (etcd's `range_end`); `[0]` (every key from the start)
/// if there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Standard base64 with padding, as the gateway reads and writes keys and values.
pub fn b64(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

fn unb64(text: &str, what: &str) -> Result<Vec<u8>, EtcdError> {
    BASE64.decode(text).map_err(|e| EtcdError::malformed(format!("{what} is not base64: {e}")))
}

// ---------------------------------------------------------------------------------------
// Requests

/// An etcd lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseId(pub i64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

// Every value spliced into a body below is base64 or decimal digits: nothing to escape.

/// `lease/grant`: a lease of `ttl_s` seconds.
pub fn grant_body(ttl_s: u64) -> String {
    format!(r#"{{"TTL":"{ttl_s}"}}"#)
}

/// `lease/keepalive` and `lease/revoke`: lease `id`.
pub fn lease_body(id: LeaseId) -> String {
    format!(r#"{{"ID":"{id}"}}"#)
}

/// `kv/txn`: create the leader key with `value` under `lease` if it is absent; else read it.
pub fn campaign_body(leader_key: &str, value: &[u8], lease: LeaseId) -> String {
    let key = b64(leader_key.as_bytes());
    let value = b64(value);
    format!(
        concat!(
            r#"{{"compare":[{{"key":"{key}","target":"CREATE","result":"EQUAL","create_revision":"0"}}],"#,
            r#""success":[{{"request_put":{{"key":"{key}","value":"{value}","lease":"{lease}"}}}}],"#,
            r#""failure":[{{"request_range":{{"key":"{key}"}}}}]}}"#
        ),
        key = key,
        value = value,
        lease = lease
    )
}

/// `kv/txn`: put `batch` at `log_key` if the leader key still has `epoch` and `log_key` is
/// absent; else read both (docs/cluster.md, "Committing").
///
/// # Panics
/// If `epoch` is 0: an epoch is a create revision, never 0, and a compare on 0 would mean
/// "no leader" instead.
pub fn put_batch_body(log_key: &str, leader_key: &str, epoch: Epoch, batch: &[u8]) -> String {
    assert!(epoch > 0, "an epoch is a create revision, never 0");
    let leader = b64(leader_key.as_bytes());
    let key = b64(log_key.as_bytes());
    let value = b64(batch);
    format!(
        concat!(
            r#"{{"compare":[{{"key":"{leader}","target":"CREATE","result":"EQUAL","create_revision":"{epoch}"}},"#,
            r#"{{"key":"{key}","target":"CREATE","result":"EQUAL","create_revision":"0"}}],"#,
            r#""success":[{{"request_put":{{"key":"{key}","value":"{value}"}}}}],"#,
            r#""failure":[{{"request_range":{{"key":"{leader}"}}}},{{"request_range":{{"key":"{key}"}}}}]}}"#
        ),
        leader = leader,
        key = key,
        value = value,
        epoch = epoch
    )
}

/// `kv/txn`: delete the leader key if it still has `epoch`.
///
/// # Panics
/// If `epoch` is 0, as [`put_batch_body`].
pub fn delete_if_epoch_body(leader_key: &str, epoch: Epoch) -> String {
    assert!(epoch > 0, "an epoch is a create revision, never 0");
    let key = b64(leader_key.as_bytes());
    format!(
        concat!(
            r#"{{"compare":[{{"key":"{key}","target":"CREATE","result":"EQUAL","create_revision":"{epoch}"}}],"#,
            r#""success":[{{"request_delete_range":{{"key":"{key}"}}}}]}}"#
        ),
        key = key,
        epoch = epoch
    )
}

/// `kv/put`: `value` at `key` under `lease`, whatever was there.
pub fn put_body(key: &str, value: &[u8], lease: LeaseId) -> String {
    format!(r#"{{"key":"{}","value":"{}","lease":"{lease}"}}"#, b64(key.as_bytes()), b64(value))
}

/// `kv/txn`: delete every batch of the log under `prefix` below `below` (the keys from the
/// log's prefix up to, not including, `log_key(prefix, below)`) if the leader key still has
/// `epoch`. Nothing is read on failure: a refused trim has nothing to settle.
///
/// # Panics
/// If `epoch` is 0, as [`put_batch_body`], or `below` is 0 (no batch is below batch 0:
/// the range would end before it starts).
pub fn trim_log_body(prefix: &str, leader_key: &str, epoch: Epoch, below: Seq) -> String {
    assert!(epoch > 0, "an epoch is a create revision, never 0");
    assert!(below > 0, "a trim keeps batches from 1 at least");
    let leader = b64(leader_key.as_bytes());
    let start = b64(log_prefix(prefix).as_bytes());
    let end = b64(log_key(prefix, below).as_bytes());
    format!(
        concat!(
            r#"{{"compare":[{{"key":"{leader}","target":"CREATE","result":"EQUAL","create_revision":"{epoch}"}}],"#,
            r#""success":[{{"request_delete_range":{{"key":"{start}","range_end":"{end}"}}}}]}}"#
        ),
        leader = leader,
        epoch = epoch,
        start = start,
        end = end
    )
}

/// `kv/compaction`: drop the history before `revision`.
pub fn compaction_body(revision: u64) -> String {
    format!(r#"{{"revision":"{revision}"}}"#)
}

/// Which end of a range [`edge_body`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// The lowest key.
    First,
    /// The highest key.
    Last,
}

/// `kv/range`: the lowest or highest key of `[key, range_end)`, without its value, at
/// `revision` (0: the latest, linearizably). For [`Edge::Last`] etcd sorts the range's keys
/// before it cuts them to one: cheap for a log kept short by trims.
pub fn edge_body(key: &[u8], range_end: &[u8], edge: Edge, revision: u64) -> String {
    let mut body = format!(r#"{{"key":"{}","range_end":"{}","limit":"1","keys_only":true"#, b64(key), b64(range_end));
    if edge == Edge::Last {
        body.push_str(r#","sort_order":"DESCEND","sort_target":"KEY""#);
    }
    if revision > 0 {
        body.push_str(&format!(r#","revision":"{revision}""#));
    }
    body.push('}');
    body
}

/// `kv/range`: `key`, or `[key, range_end)`, at most `limit` keys (0: no limit), at
/// `revision` (0: the latest); linearizable (etcd's default).
pub fn range_body(key: &[u8], range_end: Option<&[u8]>, limit: u64, revision: u64) -> String {
    let mut body = format!(r#"{{"key":"{}""#, b64(key));
    if let Some(end) = range_end {
        body.push_str(&format!(r#","range_end":"{}""#, b64(end)));
    }
    if limit > 0 {
        body.push_str(&format!(r#","limit":"{limit}""#));
    }
    if revision > 0 {
        body.push_str(&format!(r#","revision":"{revision}""#));
    }
    body.push('}');
    body
}

/// `watch`: every key under `prefix`, from `from_revision` (0: from now).
pub fn watch_body(prefix: &str, from_revision: u64) -> String {
    let key = b64(prefix.as_bytes());
    let end = b64(&prefix_end(prefix.as_bytes()));
    if from_revision > 0 {
        format!(r#"{{"create_request":{{"key":"{key}","range_end":"{end}","start_revision":"{from_revision}"}}}}"#)
    } else {
        format!(r#"{{"create_request":{{"key":"{key}","range_end":"{end}"}}}}"#)
    }
}

/// The `Grpc-Timeout` header's value for `timeout_ms` (the gateway makes it the request's
/// deadline): milliseconds, or whole seconds rounded up past the header's 8 digits.
pub fn grpc_timeout(timeout_ms: u64) -> String {
    if timeout_ms < 100_000_000 {
        format!("{timeout_ms}m")
    } else {
        format!("{}S", timeout_ms.div_ceil(1000).min(99_999_999))
    }
}

/// The head of one request to `authority` (`host:port`) with a JSON body of `body_len`
/// bytes; `extra` header lines are each `Name: value`.
pub fn request_head(path: &str, authority: &str, body_len: usize, extra: &[(&str, &str)]) -> String {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: leasehold/{}\r\n\
         Content-Type: application/json\r\nContent-Length: {body_len}\r\n",
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// An endpoint from `cluster.etcd_endpoints` (normalised `http://host:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// As configured, for messages.
    pub url: String,
    /// The host to resolve (an IPv6 address without brackets).
    pub host: String,
    /// The port.
    pub port: u16,
    /// `host:port` as the `Host` header carries it.
    pub authority: String,
}

/// Reads an endpoint: `http://host:port` (this client speaks plain HTTP only).
pub fn parse_endpoint(url: &str) -> Result<Endpoint, EtcdError> {
    let bad = |reason: &str| EtcdError::BadEndpoint { endpoint: url.to_string(), reason: reason.to_string() };
    let authority = match url.split_once("://") {
        Some(("http", rest)) => rest.trim_end_matches('/'),
        Some(("https", _)) => return Err(bad("the etcd link speaks plain http:// only")),
        _ => return Err(bad("expected http://host:port")),
    };
    let (host, port) = authority.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if bare.is_empty() || authority.contains(['/', '@', '?', '#']) || host.contains(':') != host.starts_with('[') {
        return Err(bad("expected http://host:port"));
    }
    Ok(Endpoint { url: url.to_string(), host: bare.to_string(), port, authority: authority.to_string() })
}

// ---------------------------------------------------------------------------------------
// Results

/// The leader key's holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its value (`{"node":…,"url":…}`, written by the winner).
    pub value: Vec<u8>,
    /// Its create revision: the holder's epoch.
    pub epoch: Epoch,
    /// The lease it is under, if any.
    pub lease: Option<LeaseId>,
}

/// How a campaign went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    /// This node holds the leader key since revision `epoch`.
    Won {
        /// The leader key's create revision.
        epoch: Epoch,
    },
    /// Someone holds it: `value` since `epoch`.
    Held {
        /// The holder's value.
        value: Vec<u8>,
        /// The holder's epoch.
        epoch: Epoch,
    },
}

/// How a put of a batch went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Put {
    /// The batch is in the log (put now, or by an earlier try of the same put).
    Committed,
    /// The compare failed and the batch is not in the log.
    Refused {
        /// What `log/{seq}` holds (another batch), if anything.
        at_seq: Option<Vec<u8>>,
        /// Who holds the leader key, if anyone.
        leader: Option<Holder>,
    },
}

/// What a failed put's compare found, decided: [`Put::Committed`] if `log/{seq}` holds
/// exactly `ours` (an earlier try whose answer was lost went through), else
/// [`Put::Refused`].
pub fn settle_put(ours: &[u8], at_seq: Option<Vec<u8>>, leader: Option<Holder>) -> Put {
    if at_seq.as_deref() == Some(ours) {
        Put::Committed
    } else {
        Put::Refused { at_seq, leader }
    }
}

/// One key and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// The revision that created it.
    pub create_revision: u64,
    /// The revision that last changed it.
    pub mod_revision: u64,
    /// The lease it is under, if any.
    pub lease: Option<LeaseId>,
}

/// One page of a range read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// The store's revision the read saw.
    pub revision: u64,
    /// The keys found, in key order.
    pub kvs: Vec<Kv>,
    /// Whether the limit cut the page short.
    pub more: bool,
}

/// What a log read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRead {
    /// The batches from the first one asked for, in order, as `(seq, batch)`; none when
    /// the ones asked for were trimmed ([`LogRead::trimmed`]).
    pub batches: Vec<(Seq, Vec<u8>)>,
    /// The revision the read saw (every page is read at it).
    pub revision: u64,
    /// The read stopped at [`MAX_LOG_READ_BYTES`]: read again from the batch after the last.
    pub more: bool,
    /// The log's first batch at that revision (0: the log is empty). Batches below it
    /// were trimmed.
    pub first: Seq,
}

impl LogRead {
    /// Whether batch `from` (1 when 0), the first one asked for, was trimmed: the log
    /// starts past it, so no batch was read.
    pub fn trimmed(&self, from: Seq) -> bool {
        self.first > from.max(1)
    }
}

/// How a trim of the log went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trim {
    /// The batches below the bound are gone (some may have been already).
    Done {
        /// The txn's revision.
        revision: u64,
        /// How many keys it deleted.
        deleted: u64,
    },
    /// The leader key no longer has the epoch: nothing was deleted.
    Refused,
}

/// One event of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// `key` was written.
    Put {
        /// The key.
        key: Vec<u8>,
        /// Its new value.
        value: Vec<u8>,
        /// The revision of the write.
        mod_revision: u64,
    },
    /// `key` was deleted (by a delete, or its lease's end).
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The revision of the delete.
        mod_revision: u64,
    },
    /// etcd compacted the history past the revision asked for: the watch is over. Read the
    /// state at or after `revision`, then watch again.
    Compacted {
        /// The oldest revision etcd still has.
        revision: u64,
    },
}

// ---------------------------------------------------------------------------------------
// Parsing of answers

/// A 64-bit integer the gateway sends as a JSON string (or, leniently, a number).
fn int<'de, D: Deserializer<'de>, T: TryFrom<i128>>(d: D) -> Result<T, D::Error> {
    struct Int;
    impl Visitor<'_> for Int {
        type Value = i128;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an integer, or a string of one")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<i128, E> {
            Ok(v.into())
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<i128, E> {
            Ok(v.into())
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<i128, E> {
            let digits = v.strip_prefix('-').unwrap_or(v);
            if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(E::custom(format!("{v:?} is not an integer")));
            }
            v.parse().map_err(E::custom)
        }
    }
    let wide = d.deserialize_any(Int)?;
    T::try_from(wide).map_err(|_| de::Error::custom(format!("{wide} is out of range")))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawHeader {
    #[serde(deserialize_with = "int")]
    revision: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawKv {
    key: String,
    value: String,
    #[serde(deserialize_with = "int")]
    create_revision: u64,
    #[serde(deserialize_with = "int")]
    mod_revision: u64,
    #[serde(deserialize_with = "int")]
    lease: i64,
}

impl RawKv {
    fn decode(self) -> Result<Kv, EtcdError> {
        Ok(Kv {
            key: unb64(&self.key, "a key")?,
            value: unb64(&self.value, "a value")?,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
            lease: (self.lease != 0).then_some(LeaseId(self.lease)),
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRange {
    header: RawHeader,
    kvs: Vec<RawKv>,
    more: bool,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawDeleteRange {
    #[serde(deserialize_with = "int")]
    deleted: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawOp {
    response_range: Option<RawRange>,
    response_delete_range: Option<RawDeleteRange>,
}

/// An answer that is only a header (a put's, a compaction's).
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawHeaderOnly {
    header: RawHeader,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawTxn {
    header: RawHeader,
    succeeded: bool,
    responses: Vec<RawOp>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawLease {
    #[serde(rename = "ID", deserialize_with = "int")]
    id: i64,
    #[serde(rename = "TTL", deserialize_with = "int")]
    ttl: i64,
    error: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawStreamError {
    #[serde(deserialize_with = "int")]
    grpc_code: i64,
    #[serde(deserialize_with = "int")]
    http_code: u16,
    message: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawKeepaliveLine {
    result: Option<RawLease>,
    error: Option<RawStreamError>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    kv: RawKv,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawWatchResult {
    created: bool,
    canceled: bool,
    #[serde(deserialize_with = "int")]
    compact_revision: u64,
    cancel_reason: String,
    events: Vec<RawEvent>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawWatchLine {
    result: Option<RawWatchResult>,
    error: Option<RawStreamError>,
}

fn json<'a, T: Deserialize<'a>>(body: &'a [u8], what: &str) -> Result<T, EtcdError> {
    serde_json::from_slice(body)
        .map_err(|e| EtcdError::malformed(format!("{what}: {e}; the body starts {}", quote(body))))
}

/// A short, printable quote of `bytes` for an error message.
fn quote(bytes: &[u8]) -> String {
    let cut = &bytes[..bytes.len().min(MAX_QUOTED_BYTES)];
    let text = String::from_utf8_lossy(cut);
    let more = if bytes.len() > cut.len() { "…" } else { "" };
    format!("{:?}{more}", text.trim())
}

/// The error an answer other than 200 stands for. A 5xx, a 408, or gRPC code 1
/// (cancelled), 4 (deadline exceeded) or 14 (unavailable) means etcd could not serve:
/// [`EtcdError::Unavailable`]. Anything else is a refusal, [`EtcdError::Http`], with
/// etcd's message. Both bodies the gateway sends are read: `{"error":"…","message":"…",
/// "code":N}` (unary) and `{"error":{"grpc_code":N,"message":"…",…}}` (streams).
pub fn refusal(status: u16, body: &[u8]) -> EtcdError {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let (code, message) = match &value["error"] {
        serde_json::Value::Object(e) => (e.get("grpc_code").and_then(serde_json::Value::as_i64), e.get("message")),
        _ => (value["code"].as_i64(), value.get("message").or(value.get("error"))),
    };
    let message = match message.and_then(serde_json::Value::as_str) {
        Some(text) => text.chars().take(MAX_QUOTED_BYTES).collect(),
        None if body.is_empty() => "(no body)".to_string(),
        None => quote(body),
    };
    refusal_of(status, code, message)
}

fn refusal_of(status: u16, code: Option<i64>, message: String) -> EtcdError {
    if status >= 500 || status == 408 || matches!(code, Some(1 | 4 | 14)) {
        let code = code.map(|c| format!(" (code {c})")).unwrap_or_default();
        EtcdError::unavailable(format!("{status} {message}{code}"))
    } else {
        EtcdError::Http { endpoint: String::new(), status, code, message }
    }
}

fn stream_error(e: RawStreamError) -> EtcdError {
    let status = if e.http_code == 0 { 500 } else { e.http_code };
    refusal_of(status, Some(e.grpc_code), e.message.chars().take(MAX_QUOTED_BYTES).collect())
}

/// A lease grant's answer: the new lease.
pub fn parse_grant(body: &[u8]) -> Result<LeaseId, EtcdError> {
    let raw: RawLease = json(body, "a lease grant")?;
    if !raw.error.is_empty() {
        return Err(EtcdError::Http { endpoint: String::new(), status: 200, code: None, message: raw.error });
    }
    if raw.id == 0 {
        return Err(EtcdError::malformed("a lease grant without a lease ID"));
    }
    Ok(LeaseId(raw.id))
}

/// A lease renewal's answer (its first line): the lease's TTL in seconds, or `None` when
/// the lease is gone (etcd then leaves `TTL` out, or sends it ≤ 0).
pub fn parse_keepalive(body: &[u8]) -> Result<Option<u64>, EtcdError> {
    let line = body.split(|&b| b == b'\n').find(|l| !l.trim_ascii().is_empty()).unwrap_or(b"");
    let raw: RawKeepaliveLine = json(line, "a lease renewal")?;
    if let Some(e) = raw.error {
        return Err(stream_error(e));
    }
    let Some(lease) = raw.result else { return Err(EtcdError::malformed("a lease renewal without a result")) };
    Ok(u64::try_from(lease.ttl).ok().filter(|&ttl| ttl > 0))
}

fn txn(body: &[u8], what: &str) -> Result<RawTxn, EtcdError> {
    json(body, what)
}

/// The range answer of the failure branch's op `i`.
fn failure_range(txn: &mut RawTxn, i: usize, what: &str) -> Result<RawRange, EtcdError> {
    txn.responses
        .get_mut(i)
        .and_then(|op| op.response_range.take())
        .ok_or_else(|| EtcdError::malformed(format!("{what}: a failed compare without range answer {}", i + 1)))
}

fn holder(range: RawRange) -> Result<Option<Holder>, EtcdError> {
    let Some(raw) = range.kvs.into_iter().next() else { return Ok(None) };
    let kv = raw.decode()?;
    if kv.create_revision == 0 {
        return Err(EtcdError::malformed("the leader key without a create revision"));
    }
    Ok(Some(Holder { value: kv.value, epoch: kv.create_revision, lease: kv.lease }))
}

/// A campaign's answer ([`campaign_body`]). A failed compare that finds the leader key
/// under `lease` itself counts as won: an earlier send of this campaign, whose answer was
/// lost, created it (only this node holds `lease`).
pub fn parse_campaign(body: &[u8], lease: LeaseId) -> Result<Campaign, EtcdError> {
    const WHAT: &str = "a campaign";
    let mut raw = txn(body, WHAT)?;
    if raw.succeeded {
        if raw.header.revision == 0 {
            return Err(EtcdError::malformed("a won campaign without a revision"));
        }
        return Ok(Campaign::Won { epoch: raw.header.revision });
    }
    let range = failure_range(&mut raw, 0, WHAT)?;
    match holder(range)? {
        Some(h) if h.lease == Some(lease) => Ok(Campaign::Won { epoch: h.epoch }),
        Some(h) => Ok(Campaign::Held { value: h.value, epoch: h.epoch }),
        // A txn is atomic: a compare on absence fails only if the key is there.
        None => Err(EtcdError::malformed("a lost campaign, yet no leader key")),
    }
}

/// A batch put's answer ([`put_batch_body`]) for our batch `ours`.
pub fn parse_put_batch(body: &[u8], ours: &[u8]) -> Result<Put, EtcdError> {
    const WHAT: &str = "a batch put";
    let mut raw = txn(body, WHAT)?;
    if raw.succeeded {
        return Ok(Put::Committed);
    }
    let leader = holder(failure_range(&mut raw, 0, WHAT)?)?;
    let at_seq = match failure_range(&mut raw, 1, WHAT)?.kvs.into_iter().next() {
        Some(raw) => Some(raw.decode()?.value),
        None => None,
    };
    Ok(settle_put(ours, at_seq, leader))
}

/// A conditional delete's answer ([`delete_if_epoch_body`]): whether it deleted.
pub fn parse_delete_if_epoch(body: &[u8]) -> Result<bool, EtcdError> {
    Ok(txn(body, "a conditional delete")?.succeeded)
}

/// A trim's answer ([`trim_log_body`]).
pub fn parse_trim(body: &[u8]) -> Result<Trim, EtcdError> {
    const WHAT: &str = "a trim of the log";
    let raw = txn(body, WHAT)?;
    if raw.header.revision == 0 {
        return Err(EtcdError::malformed(format!("{WHAT} without a revision")));
    }
    if !raw.succeeded {
        return Ok(Trim::Refused);
    }
    let deleted = raw.responses.first().and_then(|op| op.response_delete_range.as_ref()).map_or(0, |d| d.deleted);
    Ok(Trim::Done { revision: raw.header.revision, deleted })
}

/// A put's answer ([`put_body`]): the revision of the put.
pub fn parse_put(body: &[u8]) -> Result<u64, EtcdError> {
    let raw: RawHeaderOnly = json(body, "a put")?;
    if raw.header.revision == 0 {
        return Err(EtcdError::malformed("a put without a revision"));
    }
    Ok(raw.header.revision)
}

/// A compaction's answer ([`compaction_body`]).
pub fn parse_compaction(body: &[u8]) -> Result<(), EtcdError> {
    json::<RawHeaderOnly>(body, "a compaction").map(|_| ())
}

/// Whether `e` is etcd's refusal of a compaction at a revision already compacted (the
/// compaction asked for is done). A revision not yet reached is another refusal.
pub fn already_compacted(e: &EtcdError) -> bool {
    matches!(e, EtcdError::Http { message, .. } if message.contains("required revision has been compacted"))
}

/// The batch an [`edge_body`] read of the log under `prefix` found: 0 when the log is empty.
pub fn edge_seq(prefix: &str, range: &Range) -> Result<Seq, EtcdError> {
    let Some(kv) = range.kvs.first() else { return Ok(0) };
    seq_of(prefix, &kv.key)
        .ok_or_else(|| EtcdError::malformed(format!("{} in the log is not a batch's key", quote(&kv.key))))
}

/// A range read's answer.
pub fn parse_range(body: &[u8]) -> Result<Range, EtcdError> {
    let raw: RawRange = json(body, "a range read")?;
    if raw.header.revision == 0 {
        return Err(EtcdError::malformed("a range read without a revision"));
    }
    let kvs = raw.kvs.into_iter().map(RawKv::decode).collect::<Result<_, _>>()?;
    Ok(Range { revision: raw.header.revision, kvs, more: raw.more })
}

/// The leader key's read ([`range_body`] of it): its holder, if any.
pub fn parse_leader(body: &[u8]) -> Result<Option<Holder>, EtcdError> {
    parse_leader_at(body).map(|(holder, _)| holder)
}

/// The leader key's read: its holder, if any, and the revision it was read at.
pub fn parse_leader_at(body: &[u8]) -> Result<(Option<Holder>, u64), EtcdError> {
    let raw: RawRange = json(body, "a read of the leader key")?;
    let revision = raw.header.revision;
    if revision == 0 {
        return Err(EtcdError::malformed("a read of the leader key without a revision"));
    }
    Ok((holder(raw)?, revision))
}

/// The batches of one page of a log read under `prefix`, from `from`: each key must be a
/// batch's, in increasing order, none before `from`. A page may start past `from` (the
/// log starts later, or ends before it): only order is checked, not gaps.
pub fn log_page(prefix: &str, kvs: Vec<Kv>, from: Seq) -> Result<Vec<(Seq, Vec<u8>)>, EtcdError> {
    let mut out = Vec::with_capacity(kvs.len());
    let mut next = from;
    for kv in kvs {
        let Some(seq) = seq_of(prefix, &kv.key) else {
            return Err(EtcdError::malformed(format!("{} in the log is not a batch's key", quote(&kv.key))));
        };
        if seq < next {
            return Err(EtcdError::malformed(format!("batch {seq} out of order in a log read (from {next})")));
        }
        next = seq.saturating_add(1);
        out.push((seq, kv.value));
    }
    Ok(out)
}

/// One line of a watch, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchLine {
    /// The watch is set up.
    Created,
    /// Events (possibly none: a progress note).
    Events(Vec<WatchEvent>),
    /// The watch was cancelled because etcd compacted past its start.
    Compacted {
        /// The oldest revision etcd still has.
        revision: u64,
    },
}

/// Reads one line of a watch stream. An error line (`{"error":{…}}`) and a cancel for
/// another reason than compaction are errors.
pub fn parse_watch_line(line: &[u8]) -> Result<WatchLine, EtcdError> {
    let raw: RawWatchLine = json(line, "a watch line")?;
    if let Some(e) = raw.error {
        return Err(stream_error(e));
    }
    let Some(result) = raw.result else { return Err(EtcdError::malformed("a watch line without a result")) };
    if result.canceled {
        if result.compact_revision > 0 {
            return Ok(WatchLine::Compacted { revision: result.compact_revision });
        }
        let reason = if result.cancel_reason.is_empty() { "no reason given" } else { &result.cancel_reason };
        return Err(EtcdError::unavailable(format!("etcd cancelled the watch: {reason}")));
    }
    if result.created {
        return Ok(WatchLine::Created);
    }
    let mut events = Vec::with_capacity(result.events.len());
    for event in result.events {
        let kv = event.kv.decode()?;
        events.push(match event.kind.as_str() {
            "" | "PUT" => WatchEvent::Put { key: kv.key, value: kv.value, mod_revision: kv.mod_revision },
            "DELETE" => WatchEvent::Delete { key: kv.key, mod_revision: kv.mod_revision },
            other => {
                return Err(EtcdError::malformed(format!("a watch event of unknown type {}", quote(other.as_bytes()))))
            }
        });
    }
    Ok(WatchLine::Events(events))
}

// ---------------------------------------------------------------------------------------
// HTTP/1.1 answers

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// After this many bytes.
    Length(usize),
    /// With a zero-size chunk (and trailers).
    Chunked,
    /// When the connection closes.
    Close,
}

/// An answer's status line and headers, as far as this client needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The status code.
    pub status: u16,
    /// Whether the connection may carry another request after this answer.
    pub keep_alive: bool,
    framing: Framing,
}

/// Parses the head at the start of `buf`: `Ok(None)` until it is whole, else the head and
/// its length.
fn parse_head(buf: &[u8], max_body: Option<usize>) -> Result<Option<(Head, usize)>, EtcdError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD_BYTES => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD_BYTES => return Ok(None),
        Ok(_) => return Err(EtcdError::malformed(format!("a header section over {MAX_HEAD_BYTES} bytes"))),
        Err(e) => return Err(EtcdError::malformed(format!("not an HTTP answer: {e}"))),
    };
    let status = parsed.code.unwrap_or(0);
    if !(200..=599).contains(&status) {
        return Err(EtcdError::malformed(format!("unexpected status {status}")));
    }
    let mut keep_alive = parsed.version == Some(1);
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for h in parsed.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = (!value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()))
                .then(|| value.parse::<u64>().ok())
                .flatten()
                .ok_or_else(|| EtcdError::malformed(format!("a bad Content-Length {}", quote(h.value))))?;
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if length.is_some_and(|m| m != n) {
                return Err(EtcdError::malformed("two different Content-Lengths"));
            }
            length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") || chunked {
                return Err(EtcdError::malformed(format!("a transfer coding other than chunked: {}", quote(h.value))));
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") && parsed.version == Some(0) {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = match (chunked, length) {
        (true, Some(_)) => return Err(EtcdError::malformed("both Content-Length and chunked")),
        (true, None) => Framing::Chunked,
        (false, Some(n)) => Framing::Length(n),
        (false, None) if status == 204 || status == 304 => Framing::Length(0),
        (false, None) => {
            keep_alive = false;
            Framing::Close
        }
    };
    if let (Framing::Length(n), Some(max)) = (framing, max_body) {
        if n > max {
            return Err(EtcdError::too_large(max));
        }
    }
    Ok(Some((Head { status, keep_alive, framing }, len)))
}

/// Where a chunked body's decoding is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size line (so far).
    Size(Vec<u8>),
    /// In a chunk's data, this many bytes left.
    Data(usize),
    /// After a chunk's data: its line end (`true` once the CR is in).
    DataEnd(bool),
    /// In the trailer section: bytes of the current line, bytes in all.
    Trailer { line: usize, total: usize },
}

/// Where an answer's decoding is.
#[derive(Debug)]
enum Stage {
    Head(Vec<u8>),
    Body { head: Head, chunk: Chunk, left: usize },
    Done(Head),
}

/// An answer's decoder, fed whatever the connection delivers, in any pieces: the same
/// bytes give the same result whatever the split. Body bytes are appended to the caller's
/// buffer as they are decoded (de-chunked).
#[derive(Debug)]
pub struct Reader {
    stage: Stage,
    /// Longest body; `None` for a stream (whose lines the caller bounds).
    max_body: Option<usize>,
    body_bytes: usize,
    leftover: bool,
}

impl Reader {
    /// A decoder of one unary answer (body up to [`MAX_RESPONSE_BYTES`]).
    pub fn unary() -> Self {
        Self::new(Some(MAX_RESPONSE_BYTES))
    }

    /// A decoder of a stream's answer (a watch): no bound on the whole body.
    pub fn stream() -> Self {
        Self::new(None)
    }

    fn new(max_body: Option<usize>) -> Self {
        Self { stage: Stage::Head(Vec::new()), max_body, body_bytes: 0, leftover: false }
    }

    /// The head, once it is in.
    pub fn head(&self) -> Option<Head> {
        match &self.stage {
            Stage::Head(_) => None,
            Stage::Body { head, .. } | Stage::Done(head) => Some(*head),
        }
    }

    /// Whether the whole answer is in.
    pub fn is_done(&self) -> bool {
        matches!(self.stage, Stage::Done(_))
    }

    /// Whether any byte of the answer came.
    pub fn started(&self) -> bool {
        !matches!(&self.stage, Stage::Head(buf) if buf.is_empty())
    }

    /// Whether bytes came after the answer (the connection cannot be trusted for another).
    pub fn leftover(&self) -> bool {
        self.leftover
    }

    /// Decodes `input`, appending body bytes to `body`.
    pub fn push(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<(), EtcdError> {
        if let Stage::Head(buf) = &mut self.stage {
            buf.extend_from_slice(input);
            let Some((head, len)) = parse_head(buf, self.max_body)? else { return Ok(()) };
            let after = std::mem::take(buf).split_off(len);
            self.stage = match head.framing {
                Framing::Length(0) => Stage::Done(head),
                Framing::Length(n) => Stage::Body { head, chunk: Chunk::Data(0), left: n },
                Framing::Chunked => Stage::Body { head, chunk: Chunk::Size(Vec::new()), left: 0 },
                Framing::Close => Stage::Body { head, chunk: Chunk::Data(0), left: usize::MAX },
            };
            return self.body(&after, body);
        }
        self.body(input, body)
    }

    /// The connection ended: fine for a body that ends with it, else the answer was cut
    /// short ([`EtcdError::Unavailable`]: the peer went away).
    pub fn eof(&mut self) -> Result<(), EtcdError> {
        match &self.stage {
            Stage::Done(_) => Ok(()),
            Stage::Body { head, .. } if head.framing == Framing::Close => {
                self.stage = Stage::Done(*head);
                Ok(())
            }
            Stage::Head(buf) if buf.is_empty() => Err(EtcdError::unavailable("the connection closed before an answer")),
            _ => Err(EtcdError::unavailable("the connection closed in the middle of an answer")),
        }
    }

    fn take(&mut self, bytes: &[u8], body: &mut Vec<u8>) -> Result<(), EtcdError> {
        self.body_bytes = self.body_bytes.saturating_add(bytes.len());
        if let Some(max) = self.max_body {
            if self.body_bytes > max {
                return Err(EtcdError::too_large(max));
            }
        }
        body.extend_from_slice(bytes);
        Ok(())
    }

    fn body(&mut self, input: &[u8], body: &mut Vec<u8>) -> Result<(), EtcdError> {
        let mut at = 0;
        while at < input.len() {
            let Stage::Body { head, chunk, left } = &mut self.stage else {
                self.leftover = true;
                return Ok(());
            };
            let head = *head;
            let rest = &input[at..];
            match head.framing {
                Framing::Length(_) | Framing::Close => {
                    // `left` is never 0 here (an empty body is done at once); usize::MAX for
                    // a body that ends with the connection.
                    let take = rest.len().min(*left);
                    if head.framing != Framing::Close {
                        *left -= take;
                    }
                    let done = *left == 0;
                    self.take(&rest[..take], body)?;
                    at += take;
                    if done {
                        self.stage = Stage::Done(head);
                    }
                }
                Framing::Chunked => {
                    let (used, next) = chunk_step(chunk, rest)?;
                    at += used;
                    match next {
                        Step::Data(n) => {
                            let data = &input[at - n..at];
                            self.take(data, body)?;
                        }
                        Step::Done => self.stage = Stage::Done(head),
                        Step::More => {}
                    }
                }
            }
        }
        Ok(())
    }
}

/// What one step of chunked decoding produced.
enum Step {
    /// Nothing to hand out.
    More,
    /// The last `n` bytes used are body data.
    Data(usize),
    /// The body ended (the trailer section is read).
    Done,
}

/// One step of chunked decoding over `input` (not empty): how many bytes it used.
fn chunk_step(chunk: &mut Chunk, input: &[u8]) -> Result<(usize, Step), EtcdError> {
    match chunk {
        Chunk::Size(line) => {
            let Some(nl) = input.iter().position(|&b| b == b'\n') else {
                if line.len() + input.len() > MAX_CHUNK_LINE_BYTES {
                    return Err(EtcdError::malformed("a chunk-size line too long"));
                }
                line.extend_from_slice(input);
                return Ok((input.len(), Step::More));
            };
            if line.len() + nl > MAX_CHUNK_LINE_BYTES {
                return Err(EtcdError::malformed("a chunk-size line too long"));
            }
            line.extend_from_slice(&input[..nl]);
            let size = chunk_size(line)?;
            *chunk = if size == 0 { Chunk::Trailer { line: 0, total: 0 } } else { Chunk::Data(size) };
            Ok((nl + 1, Step::More))
        }
        Chunk::Data(left) => {
            let take = input.len().min(*left);
            *left -= take;
            if *left == 0 {
                *chunk = Chunk::DataEnd(false);
            }
            Ok((take, Step::Data(take)))
        }
        Chunk::DataEnd(cr) => match input[0] {
            b'\r' if !*cr => {
                *cr = true;
                Ok((1, Step::More))
            }
            b'\n' => {
                *chunk = Chunk::Size(Vec::new());
                Ok((1, Step::More))
            }
            _ => Err(EtcdError::malformed("chunk data longer than its size")),
        },
        Chunk::Trailer { line, total } => {
            let mut used = 0;
            for &b in input {
                used += 1;
                *total += 1;
                if *total > MAX_HEAD_BYTES {
                    return Err(EtcdError::malformed(format!("a trailer section over {MAX_HEAD_BYTES} bytes")));
                }
                if b == b'\n' {
                    if *line == 0 {
                        return Ok((used, Step::Done));
                    }
                    *line = 0;
                } else if b != b'\r' || *line > 0 {
                    *line += 1;
                }
            }
            Ok((used, Step::More))
        }
    }
}

/// A chunk-size line's size (hex, then optional `;extensions`).
fn chunk_size(line: &[u8]) -> Result<usize, EtcdError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.split(|&b| b == b';').next().unwrap_or(b"").trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(EtcdError::malformed(format!("a bad chunk size {}", quote(line))));
    }
    let mut size: usize = 0;
    for &d in digits {
        let v = (d as char).to_digit(16).unwrap_or(0) as usize;
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(v))
            .filter(|&s| s <= MAX_RESPONSE_BYTES)
            .ok_or(EtcdError::TooLarge { endpoint: String::new(), max_bytes: MAX_RESPONSE_BYTES })?;
    }
    Ok(size)
}

/// A whole unary answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The status code.
    pub status: u16,
    /// The (de-chunked) body.
    pub body: Vec<u8>,
    /// Whether the connection may carry another request.
    pub keep_alive: bool,
}

impl Reply {
    /// A reply from a finished [`Reader`] and its body.
    pub fn of(reader: &Reader, body: Vec<u8>) -> Option<Self> {
        let head = reader.head().filter(|_| reader.is_done())?;
        Some(Self { status: head.status, body, keep_alive: head.keep_alive && !reader.leftover() })
    }

    /// The body if the status is 200, else the error it stands for.
    pub fn ok(self) -> Result<Vec<u8>, EtcdError> {
        if self.status == 200 {
            Ok(self.body)
        } else {
            Err(refusal(self.status, &self.body))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Watch streams

/// Splits a byte stream into lines (without their `\n`), each at most `max` bytes.
#[derive(Debug)]
pub struct Lines {
    partial: Vec<u8>,
    max: usize,
}

impl Lines {
    /// A splitter of lines up to `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { partial: Vec::new(), max }
    }

    /// Takes `bytes`; returns the lines they complete (blank lines dropped).
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, EtcdError> {
        let mut lines = Vec::new();
        while let Some(nl) = bytes.iter().position(|&b| b == b'\n') {
            self.grow(&bytes[..nl])?;
            let line = std::mem::take(&mut self.partial);
            if !line.trim_ascii().is_empty() {
                lines.push(line);
            }
            bytes = &bytes[nl + 1..];
        }
        self.grow(bytes)?;
        Ok(lines)
    }

    /// The stream ended: the last line, if it had no `\n` (the gateway ends a stream's
    /// error line so).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        let line = std::mem::take(&mut self.partial);
        (!line.trim_ascii().is_empty()).then_some(line)
    }

    fn grow(&mut self, bytes: &[u8]) -> Result<(), EtcdError> {
        if self.partial.len() + bytes.len() > self.max {
            return Err(EtcdError::too_large(self.max));
        }
        self.partial.extend_from_slice(bytes);
        Ok(())
    }
}

/// A watch stream's decoder: raw bytes from the connection in, [`WatchEvent`]s out.
#[derive(Debug)]
pub struct WatchStream {
    reader: Reader,
    lines: Lines,
    /// The body of an answer other than 200 (an error), bounded.
    error_body: Vec<u8>,
    created: bool,
    over: bool,
}

impl Default for WatchStream {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchStream {
    /// A decoder for a new watch.
    pub fn new() -> Self {
        Self {
            reader: Reader::stream(),
            lines: Lines::new(MAX_WATCH_LINE_BYTES),
            error_body: Vec::new(),
            created: false,
            over: false,
        }
    }

    /// Whether etcd said the watch is set up.
    pub fn created(&self) -> bool {
        self.created
    }

    /// Whether the watch is over (compacted, failed, or ended): nothing more will come.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Decodes `input`; events go to `out`, in order. An error (after the events before it
    /// are out) ends the watch.
    pub fn push(&mut self, input: &[u8], out: &mut VecDeque<WatchEvent>) -> Result<(), EtcdError> {
        if self.over {
            return Ok(());
        }
        let result = self.decode(input, out);
        if result.is_err() {
            self.over = true;
        }
        result
    }

    /// The connection ended: the watch is over. Returns the error that says why.
    pub fn eof(&mut self, out: &mut VecDeque<WatchEvent>) -> EtcdError {
        if self.over {
            return EtcdError::unavailable("the watch ended");
        }
        self.over = true;
        let cut = self.reader.eof().err();
        if let Some(head) = self.reader.head().filter(|h| h.status != 200) {
            return cut.unwrap_or_else(|| refusal(head.status, &self.error_body));
        }
        if let Some(cut) = cut {
            // A line cut short is not read: the peer went away mid-stream.
            return cut;
        }
        if let Some(line) = self.lines.finish() {
            if let Err(e) = self.line(&line, out) {
                return e;
            }
        }
        EtcdError::unavailable("etcd ended the watch stream")
    }

    fn decode(&mut self, input: &[u8], out: &mut VecDeque<WatchEvent>) -> Result<(), EtcdError> {
        let mut body = Vec::new();
        self.reader.push(input, &mut body)?;
        let Some(head) = self.reader.head() else { return Ok(()) };
        if head.status != 200 {
            if self.error_body.len() + body.len() > MAX_RESPONSE_BYTES {
                return Err(EtcdError::too_large(MAX_RESPONSE_BYTES));
            }
            self.error_body.extend_from_slice(&body);
            if self.reader.is_done() {
                return Err(refusal(head.status, &self.error_body));
            }
            return Ok(());
        }
        for line in self.lines.push(&body)? {
            self.line(&line, out)?;
            if self.over {
                return Ok(());
            }
        }
        if self.reader.is_done() {
            if let Some(line) = self.lines.finish() {
                self.line(&line, out)?;
            }
            if !self.over {
                return Err(EtcdError::unavailable("etcd ended the watch stream"));
            }
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8], out: &mut VecDeque<WatchEvent>) -> Result<(), EtcdError> {
        match parse_watch_line(line)? {
            WatchLine::Created => self.created = true,
            WatchLine::Events(events) => out.extend(events),
            WatchLine::Compacted { revision } => {
                out.push_back(WatchEvent::Compacted { revision });
                self.over = true;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
