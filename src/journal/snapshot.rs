//! Snapshots in the framed container (`LHSNAP02`, docs/journal-format.md, "Snapshots"): the
//! magic, then frames framed as journal records are (`length | crc32 | body`), then a zero
//! header.
//!
//! - The first frame, the **head**, is JSON: the snapshot's journal format, who wrote it,
//!   the fence reservation, the number of locks, and the whole service state with the
//!   table's locks left out.
//! - Each later frame is **one lock**, in postcard's binary form ([`BinLock`]).
//!
//! Why: a snapshot of a million leases is JSON of 192 MiB, and loading it took a parse
//! into a full copy of the state (itself twice the table's size) beside the file's bytes
//! and the table being built: four and a half times the table's memory at the peak, and
//! nine tenths of the time in JSON. Frames let recovery read the file through a small
//! buffer and add each lock to the table as it is read ([`Loader`], over
//! [`crate::core::lock::TableImport`]), with every frame's checksum checked first; the
//! binary form parses several times faster and is a third of the size.
//!
//! Must not: touch files (the store reads and writes them through `io::Read`/`io::Write`),
//! or trust a frame: a frame that cannot be read refuses the whole snapshot.

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use super::codec::{self, HEADER_BYTES, MAX_RECORD_BYTES};
use super::{check_format, FormatError, Snapshot};
use crate::core::lock::{
    LeaseState, LockKind, LockMode, LockState, LockTable, QueueKind, TableImport, TableState, WaiterState,
};
use crate::core::names::{CallbackUrl, DataKey, LockName, Owner, Ticket, UserId};
use crate::service::{Service, ServiceState};

/// The first bytes of a snapshot file in the framed format.
pub const MAGIC: &[u8; 8] = b"LHSNAP02";

/// The head frame: everything but the locks, and how many lock frames follow.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    written_by: Option<String>,
    fences_reserved: u64,
    /// Lock frames after this one.
    locks: u64,
    /// The service, its table's `locks` empty.
    service: ServiceState,
}

/// Just the number (and the writer), read before anything else of a head.
#[derive(Deserialize)]
struct Version {
    version: u32,
    #[serde(default)]
    written_by: Option<String>,
}

/// One lock as a lock frame holds it: [`LockState`] field for field, with nothing left
/// out (postcard has no field names, so every field is always written), tickets as their
/// 16 bytes.
#[derive(Debug, Serialize, Deserialize)]
struct BinLock {
    name: LockName,
    kind: LockKind,
    limit: u32,
    queue: QueueKind,
    holders: Vec<BinLease>,
    waiters: Vec<BinWaiter>,
    candidate: Option<[u8; 16]>,
    data: Vec<(DataKey, String)>,
    admit_tat_us: Option<u64>,
    admit_timer_ms: Option<u64>,
}

/// [`LeaseState`] in a lock frame.
#[derive(Debug, Serialize, Deserialize)]
struct BinLease {
    ticket: [u8; 16],
    fence: u64,
    expires_at_ms: u64,
    ttl_ms: u64,
    weight: u32,
    claimed: bool,
    mode: Option<LockMode>,
    owner: Option<Owner>,
    callback: Option<CallbackUrl>,
    user: Option<UserId>,
}

/// [`WaiterState`] in a lock frame.
#[derive(Debug, Serialize, Deserialize)]
struct BinWaiter {
    ticket: [u8; 16],
    weight: u32,
    mode: Option<LockMode>,
    ttl_ms: u64,
    watchers: u32,
    absent_at_ms: Option<u64>,
    owner: Option<Owner>,
    callback: Option<CallbackUrl>,
    user: Option<UserId>,
    wait_until_ms: Option<u64>,
}

impl From<LockState> for BinLock {
    fn from(l: LockState) -> Self {
        Self {
            name: l.name,
            kind: l.kind,
            limit: l.limit,
            queue: l.queue,
            holders: l
                .holders
                .into_iter()
                .map(|h| BinLease {
                    ticket: *h.ticket.as_bytes(),
                    fence: h.fence,
                    expires_at_ms: h.expires_at_ms,
                    ttl_ms: h.ttl_ms,
                    weight: h.weight,
                    claimed: h.claimed,
                    mode: h.mode,
                    owner: h.owner,
                    callback: h.callback,
                    user: h.user,
                })
                .collect(),
            waiters: l
                .waiters
                .into_iter()
                .map(|w| BinWaiter {
                    ticket: *w.ticket.as_bytes(),
                    weight: w.weight,
                    mode: w.mode,
                    ttl_ms: w.ttl_ms,
                    watchers: w.watchers,
                    absent_at_ms: w.absent_at_ms,
                    owner: w.owner,
                    callback: w.callback,
                    user: w.user,
                    wait_until_ms: w.wait_until_ms,
                })
                .collect(),
            candidate: l.candidate.map(|t| *t.as_bytes()),
            data: l.data.into_iter().collect(),
            admit_tat_us: l.admit_tat_us,
            admit_timer_ms: l.admit_timer_ms,
        }
    }
}

impl From<BinLock> for LockState {
    fn from(l: BinLock) -> Self {
        Self {
            name: l.name,
            kind: l.kind,
            limit: l.limit,
            queue: l.queue,
            holders: l
                .holders
                .into_iter()
                .map(|h| LeaseState {
                    ticket: Ticket::from_bytes(h.ticket),
                    fence: h.fence,
                    expires_at_ms: h.expires_at_ms,
                    ttl_ms: h.ttl_ms,
                    weight: h.weight,
                    claimed: h.claimed,
                    mode: h.mode,
                    owner: h.owner,
                    callback: h.callback,
                    user: h.user,
                })
                .collect(),
            waiters: l
                .waiters
                .into_iter()
                .map(|w| WaiterState {
                    ticket: Ticket::from_bytes(w.ticket),
                    weight: w.weight,
                    mode: w.mode,
                    ttl_ms: w.ttl_ms,
                    watchers: w.watchers,
                    absent_at_ms: w.absent_at_ms,
                    owner: w.owner,
                    callback: w.callback,
                    user: w.user,
                    wait_until_ms: w.wait_until_ms,
                })
                .collect(),
            candidate: l.candidate.map(Ticket::from_bytes),
            data: l.data.into_iter().collect(),
            admit_tat_us: l.admit_tat_us,
            admit_timer_ms: l.admit_timer_ms,
        }
    }
}

/// Writes `snapshot` in the framed format to `out` (buffered by the caller).
pub fn encode(snapshot: Snapshot, out: &mut (impl Write + ?Sized)) -> io::Result<()> {
    let Snapshot { version, written_by, fences_reserved, mut service } = snapshot;
    let locks = std::mem::take(&mut service.table.locks);
    let head = Head { version, written_by, fences_reserved, locks: locks.len() as u64, service };
    out.write_all(MAGIC)?;
    let mut frame = Vec::new();
    codec::encode(&head, &mut frame).map_err(io::Error::other)?;
    check_len(&frame)?;
    out.write_all(&frame)?;
    let mut body = Vec::new();
    for lock in locks {
        body.clear();
        body = postcard::to_extend(&BinLock::from(lock), body).map_err(io::Error::other)?;
        frame.clear();
        codec::frame(&body, &mut frame);
        check_len(&frame)?;
        out.write_all(&frame)?;
    }
    out.write_all(&[0; HEADER_BYTES])
}

fn check_len(frame: &[u8]) -> io::Result<()> {
    if frame.len() - HEADER_BYTES > MAX_RECORD_BYTES as usize {
        return Err(io::Error::other("a snapshot frame over the largest a record may be"));
    }
    Ok(())
}

/// Why the frames of a snapshot cannot be read.
#[derive(Debug)]
pub enum FrameError {
    /// Reading failed.
    Io(io::Error),
    /// The frames are damaged at `offset` (from the start of the file).
    Damaged {
        /// Where.
        offset: u64,
        /// What is wrong there.
        what: String,
    },
}

/// Reads the frames of a snapshot file, checking each one's checksum.
#[derive(Debug)]
pub struct Frames<R> {
    read: R,
    /// Where the next frame starts in the file.
    offset: u64,
    body: Vec<u8>,
}

impl<R: Read> Frames<R> {
    /// Frames after the magic (which the caller has read and checked).
    pub fn after_magic(read: R) -> Self {
        Self { read, offset: MAGIC.len() as u64, body: Vec::new() }
    }

    /// Where the next frame starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame's body, or `None` at the zero header that ends the frames (after
    /// which the file must end).
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        let at = self.offset;
        let damaged = |what: String| FrameError::Damaged { offset: at, what };
        let mut header = [0; HEADER_BYTES];
        read_full(&mut self.read, &mut header)?
            .then_some(())
            .ok_or_else(|| damaged("a snapshot cut short (it ends inside a frame's header)".into()))?;
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 {
            if crc != 0 {
                return Err(damaged("a snapshot whose end mark is damaged".into()));
            }
            let mut extra = [0; 1];
            if read_full(&mut self.read, &mut extra)? {
                return Err(FrameError::Damaged {
                    offset: at + HEADER_BYTES as u64,
                    what: "a snapshot with bytes after its end mark".into(),
                });
            }
            return Ok(None);
        }
        if len > MAX_RECORD_BYTES {
            return Err(damaged(format!("a snapshot frame of {len} bytes, over the maximum")));
        }
        self.body.resize(len as usize, 0);
        if !read_full(&mut self.read, &mut self.body)? {
            return Err(damaged("a snapshot cut short (it ends inside a frame)".into()));
        }
        if crc32fast::hash(&self.body) != crc {
            return Err(damaged("a snapshot frame whose checksum does not match".into()));
        }
        self.offset += (HEADER_BYTES + self.body.len()) as u64;
        Ok(Some(&self.body))
    }
}

/// Fills `buf`: `false` if the input ends first (at its very start or part-way).
fn read_full(read: &mut impl Read, buf: &mut [u8]) -> Result<bool, FrameError> {
    let mut filled = 0;
    while filled < buf.len() {
        match read.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    Ok(true)
}

/// Loads a framed snapshot frame by frame into a service: the head, then each lock as it is
/// read, then [`Loader::finish`].
#[derive(Debug)]
pub struct Loader {
    version: u32,
    fences_reserved: u64,
    locks: u64,
    added: u64,
    service: ServiceState,
    table: TableImport,
    hash_seed: u64,
}

/// What a whole snapshot loads into.
#[derive(Debug)]
pub struct Loaded {
    /// Its journal format.
    pub version: u32,
    /// The highest fence reservation.
    pub fences_reserved: u64,
    /// The service.
    pub service: Service,
}

impl Loader {
    /// Starts from the head frame (refused in a journal format this build does not read).
    pub fn start(head: &[u8], hash_seed: u64) -> Result<Self, FormatError> {
        let Version { version, written_by } = serde_json::from_slice(head)
            .map_err(|e| FormatError::Unreadable(format!("no format version can be read ({e})")))?;
        check_format(version, written_by)?;
        let head: Head = serde_json::from_slice(head)
            .map_err(|e| FormatError::Unreadable(format!("{e} (in a snapshot of journal format {version})")))?;
        let table = TableImport::new(
            head.service.limits.clone(),
            hash_seed,
            head.service.table.next_fence,
            head.locks.min(1 << 24) as usize,
        );
        if !head.service.table.locks.is_empty() {
            return Err("a snapshot head that holds locks".into());
        }
        Ok(Self {
            version,
            fences_reserved: head.fences_reserved,
            locks: head.locks,
            added: 0,
            service: head.service,
            table,
            hash_seed,
        })
    }

    /// Adds the lock of one lock frame.
    pub fn add(&mut self, frame: &[u8]) -> Result<(), FormatError> {
        if self.added == self.locks {
            return Err(format!("a snapshot with more than the {} locks its head announces", self.locks).into());
        }
        let lock = decode_lock(frame)?;
        self.table.add(&lock).map_err(|e| FormatError::Unreadable(e.to_string()))?;
        self.added += 1;
        Ok(())
    }

    /// The service, once every lock is added.
    pub fn finish(self) -> Result<Loaded, FormatError> {
        if self.added != self.locks {
            return Err(format!("a snapshot with {} of the {} locks its head announces", self.added, self.locks).into());
        }
        let table: LockTable =
            self.table.finish(&self.service.table.admit_buckets).map_err(|e| FormatError::Unreadable(e.to_string()))?;
        let service = Service::import_around(self.service, table, self.hash_seed);
        Ok(Loaded { version: self.version, fences_reserved: self.fences_reserved, service })
    }
}

fn decode_lock(frame: &[u8]) -> Result<LockState, FormatError> {
    let (lock, rest) = postcard::take_from_bytes::<BinLock>(frame)
        .map_err(|e| FormatError::Unreadable(format!("a lock frame that cannot be read ({e})")))?;
    if !rest.is_empty() {
        return Err("a lock frame with bytes after its lock".into());
    }
    Ok(lock.into())
}

/// Reads a whole framed snapshot file's bytes into a [`Snapshot`] (for `journal verify`,
/// `salvage` and tests; recovery loads it frame by frame instead). `Err` is the offset of
/// the damage and what it is.
pub fn decode(bytes: &[u8]) -> Result<Snapshot, (u64, String)> {
    let Some(rest) = bytes.strip_prefix(MAGIC) else { return Err((0, "not a framed snapshot".into())) };
    let mut frames = Frames::after_magic(rest);
    let damaged = |e: FrameError| match e {
        FrameError::Io(e) => (0, e.to_string()),
        FrameError::Damaged { offset, what } => (offset, what),
    };
    let Some(head) = frames.next_frame().map_err(damaged)? else {
        return Err((MAGIC.len() as u64, "a snapshot without its head frame".into()));
    };
    let Version { version, written_by } = serde_json::from_slice(head)
        .map_err(|e| (MAGIC.len() as u64, format!("no format version can be read ({e})")))?;
    check_format(version, written_by).map_err(|e| (MAGIC.len() as u64, e.to_string()))?;
    let head: Head = serde_json::from_slice(head).map_err(|e| (MAGIC.len() as u64, e.to_string()))?;
    let mut locks = Vec::new();
    loop {
        let at = frames.offset();
        match frames.next_frame().map_err(damaged)? {
            Some(frame) => locks.push(decode_lock(frame).map_err(|e| (at, e.to_string()))?),
            None => break,
        }
    }
    if locks.len() as u64 != head.locks {
        return Err((frames.offset(), format!("{} of the {} locks its head announces", locks.len(), head.locks)));
    }
    let mut service = head.service;
    service.table = TableState { locks, ..service.table };
    Ok(Snapshot { version: head.version, written_by: head.written_by, fences_reserved: head.fences_reserved, service })
}
