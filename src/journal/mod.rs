//! The journal: every change to the keeper's state, as the inputs that caused it, so a
//! replay through the same pure [`Service`] rebuilds exactly the same state.
//!
//! - [`codec`] frames records (`length | crc32 | JSON`) and snapshots, and tells a torn
//!   tail (cut at recovery) from corruption (refused). Pure.
//! - [`Record`] lists what is journaled, [`SegmentReader`] and [`decode_snapshot`] read
//!   them in the format they were written in, [`Rebuild`] turns what a recovery finds into
//!   a service, and [`replay`] applies one record ([`replay_answering`] also keeps what the
//!   service sends meanwhile, for tests). Pure.
//! - [`snapshot`] frames a snapshot (a JSON head, then one binary frame per lock) and
//!   loads it into a service frame by frame, so a recovery never holds the whole file or a
//!   parsed copy of the state. Pure.
//! - [`store`] owns the files: segments, snapshots, group commit, recovery.
//! - [`etcd`] is the log store of cluster mode (docs/cluster.md): a blocking client of
//!   etcd's JSON gateway, with its keys, request bodies and answer parsing pure in
//!   [`etcd::wire`].
//! - [`inspect`] reads a journal directory without changing it (`leasehold journal verify`)
//!   and copies its valid records into a new one (`leasehold journal salvage`).
//!
//! `store` and `inspect` are the only parts that touch files, `etcd` the only one that
//! touches the network.
//!
//! What is journaled: every message from a worker that may change state (reads are not),
//! every expiry run, every channel closing, the limits in force, presence resets after a
//! restart, and fence reservations. Each input carries the time and entropy it was handled
//! with, so a replay takes the same decisions (lottery draws included) whatever the clock
//! says now.
//!
//! **A format that lasts** (docs/journal-format.md, "Formats and evolution"). Records and
//! snapshots are a storage format with a number, [`FORMAT`]: every segment starts with a
//! format record naming it (format 1, the first, had none), and every snapshot carries it.
//! A record holds the IPC message that caused it ([`ToKeeper`]) as that message serialises,
//! so a change to a journaled message, operation or any type inside them is a change of
//! the journal format. The rules:
//! - a build reads every format from [`OLDEST_FORMAT`] to [`FORMAT`]; fields added since
//!   carry `#[serde(default)]` meaning what older records meant; nothing is renamed,
//!   removed or given a new meaning without a conversion for the older formats here;
//! - any change to what a record or snapshot holds raises [`FORMAT`] by one, so a build
//!   that does not know it refuses the journal ("written by a newer leasehold", naming the
//!   format) instead of misreading it, and changes nothing on disk;
//! - each format has fixtures under `tests/fixtures/journal/format-N` (`make fixtures`),
//!   replayed by every later build, and `tests/it/formats.rs` pins how every kind of
//!   record of the current format is written, so a change cannot slip in unnumbered.

pub mod codec;
pub mod etcd;
pub mod inspect;
pub mod replica;
pub mod snapshot;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::core::lock::{Moment, TableLimits};
use crate::core::names::Ticket;
use crate::ipc::message::ToKeeper;
use crate::service::{LinkId, Outbox, OutboxSettings, Service, ServiceState};

/// The journal format this build writes (docs/journal-format.md, "Formats and evolution").
/// - 1: records without a format record; snapshots `{"version":1,…}`.
/// - 2: each segment starts with a format record; snapshots say who wrote them. Records
///   are as in format 1.
/// - 3: [`Record::ExtendLeases`], the lease grace of a cluster takeover (docs/cluster.md).
///   Records of formats 1 and 2 read as they did.
/// - 4: Locks II. `mode` (shared or exclusive) and `user` on acquire, in `LockOp::Acquire`
///   and in the exported leases and waiters, with each lock's `kind`; waiters with a
///   callback count as present until their wait ends (`wait_until_ms` in exported waiters,
///   `callback_presence` in the limits). Declared locks: `declared` and `default_ttl_ms` in
///   the limits, a time and entropy on `Configure` (a changed declaration admits and drops
///   as it is applied), `ttl_ms`, `limit` and `queue` optional on acquire (absent: as
///   declared), and the admission buckets (`admit_tat_us`, `admit_timer_ms` on exported
///   locks, `admit_buckets` beside them). Older records and snapshots read as semaphores,
///   with no user, no wait, no such presence and no declaration, which is what they meant.
pub const FORMAT: u32 = 4;

/// The oldest journal format this build reads.
pub const OLDEST_FORMAT: u32 = 1;

/// Who wrote a segment or snapshot: this build.
pub const WRITTEN_BY: &str = concat!("leasehold ", env!("CARGO_PKG_VERSION"));

/// Why a record or snapshot cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormatError {
    /// It is in a format newer than this build reads.
    Newer {
        /// Its format.
        format: u32,
        /// The build that wrote it, when it says.
        written_by: Option<String>,
    },
    /// It is in a format older than this build reads.
    Older {
        /// Its format.
        format: u32,
    },
    /// It is not a valid record (or snapshot) of its format.
    Unreadable(String),
}

impl std::fmt::Display for FormatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Newer { format, written_by } => {
                write!(f, "it is in journal format {format}")?;
                if let Some(by) = written_by {
                    write!(f, ", written by {by}")?;
                }
                write!(
                    f,
                    "; this build ({WRITTEN_BY}) reads formats {OLDEST_FORMAT} to {FORMAT}: it was written by a \
                     newer leasehold, so run a build that reads format {format}"
                )
            }
            Self::Older { format } => write!(
                f,
                "it is in journal format {format}, older than this build ({WRITTEN_BY}) reads (formats \
                 {OLDEST_FORMAT} to {FORMAT}): start an older build on it once, which rewrites it"
            ),
            Self::Unreadable(reason) => f.write_str(reason),
        }
    }
}

impl std::error::Error for FormatError {}

impl From<String> for FormatError {
    fn from(reason: String) -> Self {
        Self::Unreadable(reason)
    }
}

impl From<&str> for FormatError {
    fn from(reason: &str) -> Self {
        Self::Unreadable(reason.to_string())
    }
}

/// Whether this build reads `format`.
fn check_format(format: u32, written_by: Option<String>) -> Result<(), FormatError> {
    if format > FORMAT {
        Err(FormatError::Newer { format, written_by })
    } else if format < OLDEST_FORMAT {
        Err(FormatError::Older { format })
    } else {
        Ok(())
    }
}

/// The first record of every segment from format 2 on, `{"format":{"format":N,
/// "written_by":"leasehold X"}}`. Its shape never changes, and fields added to it are
/// ignored by older builds, so any build can read the number before anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatRecord {
    /// The format.
    pub format: FormatHeader,
}

/// What a [`FormatRecord`] says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatHeader {
    /// The format of the records after it.
    pub format: u32,
    /// The build that wrote the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by: Option<String>,
}

/// The body of the format record this build starts every segment with.
pub fn segment_header() -> Vec<u8> {
    let record = FormatRecord { format: FormatHeader { format: FORMAT, written_by: Some(WRITTEN_BY.to_string()) } };
    serde_json::to_vec(&record).unwrap_or_default()
}

/// Reads one segment's records, in order, in the format its first record names (a segment
/// that does not start with a format record is in format 1).
#[derive(Debug, Clone, Default)]
pub struct SegmentReader {
    format: Option<u32>,
    /// Why the segment's format record was refused: then so is every record after it.
    refused: Option<FormatError>,
}

impl SegmentReader {
    /// A reader for a segment's first record.
    pub fn new() -> Self {
        Self::default()
    }

    /// The segment's format, once its first record was read.
    pub fn format(&self) -> Option<u32> {
        self.format
    }

    /// Reads the next record: `None` for the format record itself, which applies nothing.
    pub fn read(&mut self, body: &[u8]) -> Result<Option<Record>, FormatError> {
        if let Some(refused) = &self.refused {
            return Err(refused.clone());
        }
        if body.starts_with(b"{\"format\":") {
            if self.format.is_some() {
                return Err(FormatError::Unreadable("a format record after the start of its segment".into()));
            }
            let checked = serde_json::from_slice::<FormatRecord>(body)
                .map_err(|e| FormatError::Unreadable(format!("a format record that cannot be read ({e})")))
                .and_then(|FormatRecord { format: header }| {
                    check_format(header.format, header.written_by).map(|()| header.format)
                });
            return match checked {
                Ok(format) => {
                    self.format = Some(format);
                    Ok(None)
                }
                Err(error) => {
                    self.refused = Some(error.clone());
                    Err(error)
                }
            };
        }
        let format = *self.format.get_or_insert(1);
        // Formats 1 to 4 write the records they share alike (fields added since read as their
        // defaults, which mean what older records meant); a later format converts older ones here.
        serde_json::from_slice(body)
            .map(Some)
            .map_err(|e| FormatError::Unreadable(format!("{e} (in a record of journal format {format})")))
    }
}

/// The time of a batch of the cluster's log (docs/cluster.md): the latest time any of its
/// records was handled at (0 for a batch without one). A batch is a segment in small: a
/// format record, then records.
pub fn batch_time(batch: &[u8]) -> Result<u64, FormatError> {
    let mut frames = codec::Reader::new(batch);
    let mut reader = SegmentReader::new();
    let mut latest = 0;
    while let Some(body) = frames.next_record().map_err(|e| FormatError::Unreadable(e.to_string()))? {
        let at_ms = match reader.read(body)? {
            Some(
                Record::Input { at_ms, .. }
                | Record::Expire { at_ms, .. }
                | Record::LinkClosed { at_ms, .. }
                | Record::ResetPresence { at_ms }
                | Record::Configure { at_ms, .. },
            ) => at_ms,
            Some(Record::ReserveFences { .. } | Record::RaiseFences { .. } | Record::ExtendLeases { .. }) | None => 0,
        };
        latest = latest.max(at_ms);
    }
    Ok(latest)
}

/// What a recovery hands over, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found<'a> {
    /// The latest snapshot's body, in a format before the framed one (its checksum checked
    /// when it has one).
    Snapshot(&'a [u8]),
    /// The latest snapshot is framed ([`snapshot`]): its head frame, its checksum checked.
    SnapshotHead(&'a [u8]),
    /// One lock frame of it, its checksum checked.
    SnapshotLock(&'a [u8]),
    /// Its frames ended where they should: the snapshot is whole.
    SnapshotEnd,
    /// A segment starts: its records follow.
    Segment(u64),
    /// One record's body.
    Record(&'a [u8]),
}

/// Rebuilds the service from what a recovery finds, as the keeper does at its start.
#[derive(Debug)]
pub struct Rebuild {
    /// The service so far.
    pub service: Service,
    /// The highest fence reservation so far.
    pub fences_reserved: u64,
    hash_seed: u64,
    segment: SegmentReader,
    /// A framed snapshot being loaded.
    loading: Option<snapshot::Loader>,
    /// The formats of the snapshot and segments read, oldest first (a segment with no
    /// record yet has none).
    pub formats: Vec<u32>,
}

impl Rebuild {
    /// Starts from `service` (empty, with the configured limits).
    pub fn new(service: Service, hash_seed: u64) -> Self {
        Self {
            service,
            fences_reserved: 0,
            hash_seed,
            segment: SegmentReader::new(),
            loading: None,
            formats: Vec::new(),
        }
    }

    /// Takes the next thing found.
    pub fn take(&mut self, found: Found<'_>) -> Result<(), FormatError> {
        match found {
            Found::Snapshot(body) => {
                let snapshot = decode_snapshot(body)?;
                self.service = Service::import(snapshot.service, self.hash_seed)
                    .map_err(|e| FormatError::Unreadable(e.to_string()))?;
                self.fences_reserved = snapshot.fences_reserved;
                self.formats.push(snapshot.version);
            }
            Found::SnapshotHead(head) => self.loading = Some(snapshot::Loader::start(head, self.hash_seed)?),
            Found::SnapshotLock(frame) => match &mut self.loading {
                Some(loading) => loading.add(frame)?,
                None => return Err("a lock frame before the snapshot's head".into()),
            },
            Found::SnapshotEnd => {
                let loaded = self.loading.take().ok_or("a snapshot's end before its head")?.finish()?;
                self.service = loaded.service;
                self.fences_reserved = loaded.fences_reserved;
                self.formats.push(loaded.version);
            }
            Found::Segment(_) => self.segment = SegmentReader::new(),
            Found::Record(body) => {
                let first = self.segment.format().is_none();
                let record = self.segment.read(body)?;
                if first {
                    self.formats.extend(self.segment.format());
                }
                if let Some(record) = record {
                    replay(&mut self.service, record, &mut self.fences_reserved);
                }
            }
        }
        Ok(())
    }

    /// Whether anything read was written in a format older than this build writes (then
    /// the keeper writes a snapshot at once, so it appends only to a segment of its own).
    pub fn found_older(&self) -> bool {
        self.formats.iter().any(|&f| f < FORMAT)
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One journal record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Record {
    /// The limits in force from here on (at start and on each reload).
    Configure {
        /// Table limits.
        limits: TableLimits,
        /// Longest wait.
        max_wait_ms: u64,
        /// Outbox bounds and retry schedule.
        #[serde(default)]
        outbox: OutboxSettings,
        /// When it was applied, with the entropy of any draw it makes: a changed lock
        /// declaration may admit waiters (from journal format 4; 0 before, when nothing it
        /// applied needed a time).
        #[serde(default, skip_serializing_if = "is_zero")]
        at_ms: u64,
        /// The entropy of that time.
        #[serde(default, skip_serializing_if = "is_zero")]
        entropy: u64,
    },
    /// A message from a worker channel, with the time and entropy it was handled with.
    Input {
        /// The channel.
        link: LinkId,
        /// Wall-clock time.
        at_ms: u64,
        /// Entropy for lottery draws.
        entropy: u64,
        /// Random bytes for a new ticket or id.
        fresh: Ticket,
        /// The message.
        message: ToKeeper,
    },
    /// An expiry run.
    Expire {
        /// Wall-clock time.
        at_ms: u64,
        /// Entropy for lottery draws.
        entropy: u64,
    },
    /// A worker channel closed.
    LinkClosed {
        /// The channel.
        link: LinkId,
        /// Wall-clock time.
        at_ms: u64,
        /// Entropy for lottery draws.
        entropy: u64,
    },
    /// Every waiter got a fresh presence window (after a restart).
    ResetPresence {
        /// Wall-clock time.
        at_ms: u64,
    },
    /// Fences below `up_to` may have been handed out: a recovery must not reuse them.
    ReserveFences {
        /// The first fence not yet reserved.
        up_to: u64,
    },
    /// The fence counter jumped to at least `floor` (after a recovery).
    RaiseFences {
        /// The new floor.
        floor: u64,
    },
    /// Every lease ends `by_ms` later: the grace of a cluster takeover, for the time no
    /// leader could take a renewal (docs/cluster.md, "Taking over"). From format 3.
    ExtendLeases {
        /// The grace.
        by_ms: u64,
    },
}

/// [`Record::Input`] by reference, for writing without copying the message (it encodes
/// exactly as the owned record does).
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputRef<'a> {
    /// See [`Record::Input`].
    Input {
        /// The channel.
        link: LinkId,
        /// Wall-clock time.
        at_ms: u64,
        /// Entropy for lottery draws.
        entropy: u64,
        /// Random bytes for a new ticket or id.
        fresh: Ticket,
        /// The message.
        message: &'a ToKeeper,
    },
}

/// A snapshot: the whole state after the journal segments it covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Its journal format ([`FORMAT`] when written by this build).
    pub version: u32,
    /// The build that wrote it (from format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by: Option<String>,
    /// The highest fence reservation so far.
    pub fences_reserved: u64,
    /// The service.
    pub service: ServiceState,
}

impl Snapshot {
    /// A snapshot of `service` in this build's format.
    pub fn new(fences_reserved: u64, service: ServiceState) -> Self {
        Self { version: FORMAT, written_by: Some(WRITTEN_BY.to_string()), fences_reserved, service }
    }
}

/// Reads one record's body as a record of the current format (tests and tools; recovery
/// reads through a [`SegmentReader`]).
pub fn decode_record(body: &[u8]) -> Result<Record, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Reads a snapshot's body, in any format this build reads.
pub fn decode_snapshot(body: &[u8]) -> Result<Snapshot, FormatError> {
    /// Just the number (and the writer), whatever else a newer format holds.
    #[derive(Deserialize)]
    struct Version {
        version: u32,
        #[serde(default)]
        written_by: Option<String>,
    }
    let Version { version, written_by } = serde_json::from_slice(body)
        .map_err(|e| FormatError::Unreadable(format!("no format version can be read ({e})")))?;
    check_format(version, written_by)?;
    // Formats 1 to 4 hold the same state (fields added since read as their defaults); a later
    // format converts older ones here.
    serde_json::from_slice(body)
        .map_err(|e| FormatError::Unreadable(format!("{e} (in a snapshot of journal format {version})")))
}

/// Applies one record to `service` during a replay. `fences_reserved` tracks the highest
/// reservation seen.
pub fn replay(service: &mut Service, record: Record, fences_reserved: &mut u64) {
    let mut discard: Outbox = Vec::new();
    replay_answering(service, record, fences_reserved, &mut discard);
}

/// [`replay`], keeping the messages the service sends while it applies the record. A
/// recovery has nobody to send them to; a test compares them with the live run's.
pub fn replay_answering(service: &mut Service, record: Record, fences_reserved: &mut u64, out: &mut Outbox) {
    match record {
        Record::Configure { limits, max_wait_ms, outbox, at_ms, entropy } => {
            service.reconfigure(limits, max_wait_ms, Moment::new(at_ms, entropy), out);
            service.configure_outbox(outbox);
        }
        Record::Input { link, at_ms, entropy, fresh, message } => {
            service.handle(link, message, Moment::new(at_ms, entropy), *fresh.as_bytes(), out);
        }
        Record::Expire { at_ms, entropy } => service.expire(Moment::new(at_ms, entropy), out),
        Record::LinkClosed { link, at_ms, entropy } => {
            service.link_closed(link, Moment::new(at_ms, entropy), out);
        }
        Record::ResetPresence { at_ms } => service.reset_presence(at_ms),
        Record::ReserveFences { up_to } => *fences_reserved = (*fences_reserved).max(up_to),
        Record::RaiseFences { floor } => service.raise_fences(floor),
        Record::ExtendLeases { by_ms } => service.extend_leases(by_ms),
    }
}

#[cfg(test)]
mod tests;
