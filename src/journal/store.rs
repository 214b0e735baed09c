//! The journal's files: numbered segments of records (`journal-N.log`) and a snapshot
//! (`snapshot-N.json`) that stands for every segment up to N. Writing and recovery; the
//! framing is [`super::codec`]'s, and `leasehold journal verify`/`salvage` live in
//! [`super::inspect`]. How an operator copies and restores these files:
//! docs/operations.md, "Backup and restore of the data directory".
//!
//! - Group commit: records of one loop turn are buffered and written with one `write`; with
//!   `sync`, one `fdatasync` covers them all, before any answer they carry leaves.
//! - Segments are preallocated ([`PREALLOCATE_BYTES`] at a time), so writes land inside the
//!   file and a sync has the data to flush but no file size to commit: on ext4 that makes
//!   each sync about a third cheaper in time and CPU. Where the file system cannot
//!   preallocate, the file simply grows with each write.
//! - A failed write is cut back (the file is truncated to its last good length), so a
//!   half-written record never sits between good ones.
//! - Snapshots: framed with checksums ([`super::snapshot`]), written through a buffer to a
//!   temporary file, synced, renamed, and the directory synced; then a new segment starts
//!   and the covered segments and older snapshots are removed.
//! - Recovery: the latest snapshot (a framed one frame by frame through a small buffer),
//!   then every later segment in order, record by record (a window of the segment at a
//!   time), and only then any change to the directory. A damaged spot with nothing valid after it
//!   (no valid record later in its segment, no record in a later segment) is a torn tail:
//!   the segment is cut there, later segments are removed, and what was dropped is
//!   reported. Anything else (a damaged spot followed by valid records, a snapshot whose
//!   checksum fails, a record the caller cannot apply) is corruption: the open fails naming
//!   the file and offset, and nothing in the directory has been changed.
//!
//! Must not: decide what a record means (the caller's `on_found` does), or change a
//! directory before it is known to hold no corruption.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::codec::{self, Next, Piece, SnapshotBody, HEADER_BYTES};
use super::snapshot;
use super::FormatError;

/// How much a segment grows at a time (zeros the writes then fill).
pub const PREALLOCATE_BYTES: u64 = 4 * 1024 * 1024;

/// How much of a segment a recovery holds at a time (see [`Window`]); in unit tests a few
/// records, so the tests of torn tails and corruption cross windows.
const SEGMENT_WINDOW_BYTES: usize = if cfg!(test) { 300 } else { 8 * 1024 * 1024 };

/// The buffer a framed snapshot is read and written through (the file is never in memory
/// whole).
const SNAPSHOT_READ_BYTES: usize = 1024 * 1024;

/// Why the journal could not be opened.
#[derive(Debug)]
pub enum StoreError {
    /// A file operation failed.
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The snapshot's body cannot be loaded (the service refuses to start rather than lose
    /// it).
    Snapshot {
        /// Its path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A snapshot or segment is in a journal format this build does not read (written by a
    /// newer leasehold, or too old). Nothing was changed.
    Format {
        /// The file.
        path: PathBuf,
        /// Which format, and what this build reads.
        error: FormatError,
    },
    /// The journal is corrupt: damage that is not a torn tail. Nothing was changed.
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Where in it the damage starts.
        offset: u64,
        /// What is wrong there.
        what: String,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io { what, source } => write!(f, "{what}: {source}"),
            Self::Snapshot { path, reason } => write!(f, "the snapshot {} cannot be loaded: {reason}", path.display()),
            Self::Format { path, error } => write!(f, "{} cannot be read: {error}", path.display()),
            Self::Corrupt { path, offset, what } => {
                write!(f, "the journal is corrupt: {} at byte {offset}: {what}", path.display())
            }
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io { source, .. } => Some(source),
            Self::Format { error, .. } => Some(error),
            Self::Snapshot { .. } | Self::Corrupt { .. } => None,
        }
    }
}

pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let what = what.into();
    move |source| StoreError::Io { what, source }
}

pub use super::Found;

/// What a recovery found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Recovery {
    /// The segment number the loaded snapshot covers, if there was one.
    pub snapshot: Option<u64>,
    /// The snapshot was in the previous format (no checksum): write a new one soon.
    pub unchecked_snapshot: bool,
    /// Records replayed after it.
    pub records: u64,
    /// Bytes of those records.
    pub bytes: u64,
    /// What was cut off, if the journal ended in a torn tail.
    pub dropped: Option<String>,
}

/// The name of segment `n`.
pub fn segment_name(n: u64) -> String {
    format!("journal-{n:016}.log")
}

/// The name of the snapshot that covers segments up to `n`.
pub fn snapshot_name(n: u64) -> String {
    format!("snapshot-{n:016}.json")
}

fn segment_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(segment_name(n))
}

fn snapshot_path(dir: &Path, n: u64) -> PathBuf {
    dir.join(snapshot_name(n))
}

fn numbered(name: &str, prefix: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok()
}

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The journal's files in a directory, as found (nothing is changed).
#[derive(Debug, Default)]
pub(super) struct Listing {
    /// Segment numbers, ascending.
    pub segments: Vec<u64>,
    /// Snapshot numbers, ascending (the last is the one that counts).
    pub snapshots: Vec<u64>,
    /// Snapshots that never finished (`*.tmp`).
    pub unfinished: Vec<PathBuf>,
    /// Every other file's name.
    pub others: Vec<String>,
}

impl Listing {
    pub(super) fn read(dir: &Path) -> Result<Listing, StoreError> {
        let mut listing = Listing::default();
        for entry in fs::read_dir(dir).map_err(io_err(format!("cannot read {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("cannot read {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.ends_with(".tmp") {
                listing.unfinished.push(entry.path());
            } else if let Some(n) = numbered(&name, "journal-", ".log") {
                listing.segments.push(n);
            } else if let Some(n) = numbered(&name, "snapshot-", ".json") {
                listing.snapshots.push(n);
            } else {
                listing.others.push(name);
            }
        }
        listing.segments.sort_unstable();
        listing.snapshots.sort_unstable();
        listing.unfinished.sort();
        listing.others.sort();
        Ok(listing)
    }

    /// The segment number the latest snapshot covers (0: none).
    pub(super) fn covered(&self) -> u64 {
        self.snapshots.last().copied().unwrap_or(0)
    }

    /// The segments after the latest snapshot: the ones a recovery reads.
    pub(super) fn live_segments(&self) -> Vec<u64> {
        self.segments.iter().copied().filter(|&n| n > self.covered()).collect()
    }
}

pub(super) fn read_file(path: &Path) -> Result<Vec<u8>, StoreError> {
    // Read in one go into a buffer of the file's size: no regrowth, no copies.
    fs::read(path).map_err(io_err(format!("cannot read {}", path.display())))
}

/// A snapshot refused by the caller: unreadable, or in a format this build does not read.
fn snapshot_refused(path: &Path, error: FormatError) -> StoreError {
    match error {
        FormatError::Unreadable(reason) => StoreError::Snapshot { path: path.to_path_buf(), reason },
        error => StoreError::Format { path: path.to_path_buf(), error },
    }
}

/// The snapshot at `path` if it is framed ([`snapshot::MAGIC`]), positioned after its
/// magic; `None` if it is in an older format (read whole instead).
fn open_framed(path: &Path) -> Result<Option<snapshot::Frames<BufReader<File>>>, StoreError> {
    let file = File::open(path).map_err(io_err(format!("cannot read {}", path.display())))?;
    let mut read = BufReader::with_capacity(SNAPSHOT_READ_BYTES, file);
    let start = read.fill_buf().map_err(io_err(format!("cannot read {}", path.display())))?;
    if !start.starts_with(snapshot::MAGIC) {
        return Ok(None);
    }
    read.consume(snapshot::MAGIC.len());
    Ok(Some(snapshot::Frames::after_magic(read)))
}

/// Hands `on_found` a framed snapshot frame by frame: the head, each lock, the end. A frame
/// that is damaged (cut short, a checksum that fails, bytes after the end) is corruption;
/// one the caller refuses, an unreadable snapshot. Either way the open fails, and nothing
/// has been changed.
fn load_framed(
    mut frames: snapshot::Frames<BufReader<File>>,
    path: &Path,
    on_found: &mut impl FnMut(Found<'_>) -> Result<(), FormatError>,
) -> Result<(), StoreError> {
    let mut head = true;
    loop {
        let frame = match frames.next_frame() {
            Ok(frame) => frame,
            Err(snapshot::FrameError::Io(e)) => return Err(io_err(format!("cannot read {}", path.display()))(e)),
            Err(snapshot::FrameError::Damaged { offset, what }) => {
                return Err(StoreError::Corrupt { path: path.to_path_buf(), offset, what });
            }
        };
        let found = match (frame, head) {
            (Some(frame), true) => Found::SnapshotHead(frame),
            (Some(frame), false) => Found::SnapshotLock(frame),
            (None, true) => {
                return Err(StoreError::Corrupt {
                    path: path.to_path_buf(),
                    offset: snapshot::MAGIC.len() as u64,
                    what: "a snapshot without its head frame".into(),
                });
            }
            (None, false) => Found::SnapshotEnd,
        };
        on_found(found).map_err(|error| snapshot_refused(path, error))?;
        if matches!(found, Found::SnapshotEnd) {
            return Ok(());
        }
        head = false;
    }
}

/// Whether any of the segments `later` holds a valid record: where the first one is, said
/// for a message.
fn later_records(dir: &Path, later: &[u64]) -> Result<Option<String>, StoreError> {
    for &n in later {
        let bytes = read_file(&segment_path(dir, n))?;
        match codec::find_record(&bytes, 0) {
            Next::At(at) => return Ok(Some(format!("{} holds one at byte {at}", segment_name(n)))),
            Next::GaveUp(at) => {
                return Ok(Some(format!("{} may hold some: the search stopped at byte {at}", segment_name(n))));
            }
            Next::Nowhere => {}
        }
    }
    Ok(None)
}

/// A segment read a window at a time ([`SEGMENT_WINDOW_BYTES`]): `bytes` are the file's
/// bytes from `base` on.
struct Window {
    file: File,
    path: PathBuf,
    len: u64,
    base: u64,
    bytes: Vec<u8>,
}

impl Window {
    fn open(path: &Path) -> Result<Self, StoreError> {
        let file = File::open(path).map_err(io_err(format!("cannot read {}", path.display())))?;
        let len = file.metadata().map_err(io_err(format!("cannot read {}", path.display())))?.len();
        let mut window =
            Window { file, path: path.to_path_buf(), len, base: 0, bytes: Vec::with_capacity(SEGMENT_WINDOW_BYTES) };
        window.fill()?;
        Ok(window)
    }

    /// Reads on until the window is full or the file ends.
    fn fill(&mut self) -> Result<(), StoreError> {
        let want = SEGMENT_WINDOW_BYTES.saturating_sub(self.bytes.len());
        let start = self.base + self.bytes.len() as u64;
        let end = (start + want as u64).min(self.len);
        self.read_into(start, end)
    }

    fn read_into(&mut self, start: u64, end: u64) -> Result<(), StoreError> {
        let from = self.bytes.len();
        self.bytes.resize(from + (end - start) as usize, 0);
        self.file
            .read_exact_at(&mut self.bytes[from..], start)
            .map_err(io_err(format!("cannot read {}", self.path.display())))
    }

    fn at_end(&self) -> bool {
        self.base + self.bytes.len() as u64 >= self.len
    }

    /// Drops the first `n` bytes (handed over) and reads on.
    fn advance(&mut self, n: usize) -> Result<(), StoreError> {
        self.bytes.drain(..n);
        self.base += n as u64;
        self.fill()
    }

    /// The rest of the file, from `base` to its end.
    fn into_rest(mut self) -> Result<(u64, Vec<u8>), StoreError> {
        let start = self.base + self.bytes.len() as u64;
        self.read_into(start, self.len)?;
        Ok((self.base, self.bytes))
    }
}

/// The open journal.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    segment: u64,
    file: File,
    /// Bytes of the current segment that are written.
    written: u64,
    /// The current segment's length, preallocation included.
    allocated: u64,
    /// Bytes in every segment since the snapshot.
    journal_bytes: u64,
    pending: Vec<u8>,
    unsynced: bool,
    /// The record every segment starts with (empty: none).
    header: Vec<u8>,
    /// Tests: the next sync fails as a failing disk's would.
    #[cfg(test)]
    fail_next_sync: bool,
}

/// A torn tail found during an open: cut once everything is checked.
struct Cut {
    /// Index in the live segments.
    index: usize,
    offset: u64,
    len: u64,
    what: String,
}

impl Store {
    /// Opens the journal in `dir` (which must exist), handing `on_found` the latest snapshot
    /// and then every good record after it, in order. A torn tail is cut off and reported.
    /// Corruption (see the module header), or a record `on_found` refuses, fails the open
    /// with [`StoreError::Corrupt`]; a snapshot body it refuses, with
    /// [`StoreError::Snapshot`]. Either way nothing in `dir` has been changed.
    pub fn open(
        dir: &Path,
        mut on_found: impl FnMut(Found<'_>) -> Result<(), FormatError>,
    ) -> Result<(Store, Recovery), StoreError> {
        let listing = Listing::read(dir)?;
        let mut recovery = Recovery { snapshot: listing.snapshots.last().copied(), ..Recovery::default() };
        if let Some(&n) = listing.snapshots.last() {
            let path = snapshot_path(dir, n);
            if let Some(frames) = open_framed(&path)? {
                load_framed(frames, &path, &mut on_found)?;
            } else {
                let bytes = read_file(&path)?;
                let body = match codec::read_snapshot(&bytes) {
                    Ok(SnapshotBody::Checked(body)) => body,
                    Ok(SnapshotBody::Unchecked(body)) => {
                        recovery.unchecked_snapshot = true;
                        body
                    }
                    Err(damage) => {
                        return Err(StoreError::Corrupt { path, offset: damage.offset(), what: damage.to_string() });
                    }
                };
                on_found(Found::Snapshot(body)).map_err(|error| snapshot_refused(&path, error))?;
            }
        }
        let covered = listing.covered();
        let segments = listing.live_segments();
        let mut last_good = None;
        let mut cut = None;
        for (i, &n) in segments.iter().enumerate() {
            let path = segment_path(dir, n);
            let mut written = 0u64;
            on_found(Found::Segment(n)).map_err(|error| StoreError::Format { path: path.clone(), error })?;
            let mut take = |offset: u64, body: &[u8]| {
                on_found(Found::Record(body)).map_err(|error| match error {
                    FormatError::Unreadable(reason) => StoreError::Corrupt {
                        path: path.clone(),
                        offset,
                        what: format!("a record that cannot be applied ({reason})"),
                    },
                    error => StoreError::Format { path: path.clone(), error },
                })?;
                recovery.records += 1;
                recovery.bytes += (HEADER_BYTES + body.len()) as u64;
                written = offset + (HEADER_BYTES + body.len()) as u64;
                Ok::<(), StoreError>(())
            };
            // Whole records are handed over a window at a time, so a long segment is never in
            // memory whole beside the table it rebuilds. The rest of the segment from the first
            // thing that is not a whole record in the window (the zeros after the last record,
            // a damaged spot, a record larger than the window) is read whole and surveyed.
            let mut window = Window::open(&path)?;
            let (base, bytes) = loop {
                if window.at_end() {
                    break window.into_rest()?;
                }
                let mut reader = codec::Reader::new(&window.bytes);
                loop {
                    let at = reader.offset();
                    match reader.next_record() {
                        Ok(Some(body)) => take(window.base + at as u64, body)?,
                        Ok(None) | Err(_) => break,
                    }
                }
                let consumed = reader.offset();
                if consumed == 0 {
                    break window.into_rest()?;
                }
                window.advance(consumed)?;
            };
            let file_len = base + bytes.len() as u64;
            for piece in codec::survey(&bytes) {
                match piece {
                    Piece::Record { offset, body } => take(base + offset as u64, body)?,
                    Piece::Zeros { .. } => {}
                    Piece::Damaged { offset, end, damage, gave_up } => {
                        let offset = base + offset as u64;
                        let corrupt = |what: String| StoreError::Corrupt { path: path.clone(), offset, what };
                        if let Some(at) = gave_up {
                            return Err(corrupt(format!(
                                "{damage}, and whether valid records follow could not be told (the search stopped at byte {})",
                                base + at as u64
                            )));
                        }
                        if end < bytes.len() {
                            return Err(corrupt(format!(
                                "{damage}, with valid records after it (from byte {})",
                                base + end as u64
                            )));
                        }
                        if let Some(later) = later_records(dir, &segments[i + 1..])? {
                            return Err(corrupt(format!("{damage}, with valid records after it ({later})")));
                        }
                        cut = Some(Cut { index: i, offset, len: file_len, what: damage.to_string() });
                        break;
                    }
                }
            }
            last_good = Some((n, written));
            if cut.is_some() {
                break;
            }
        }
        // Everything is checked: from here on the directory may change.
        for path in &listing.unfinished {
            let _ = fs::remove_file(path);
        }
        if let Some((_, older)) = listing.snapshots.split_last() {
            for &old in older {
                let _ = fs::remove_file(snapshot_path(dir, old));
            }
        }
        // Segments the snapshot covers are left over from a crash after it was written.
        for &n in listing.segments.iter().filter(|&&n| n <= covered) {
            let _ = fs::remove_file(segment_path(dir, n));
        }
        if let Some(Cut { index, offset, len, what }) = cut {
            let path = segment_path(dir, segments[index]);
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(format!("cannot open {}", path.display())))?;
            file.set_len(offset)
                .and_then(|()| file.sync_all())
                .map_err(io_err(format!("cannot cut {}", path.display())))?;
            let later = &segments[index + 1..];
            let mut later_bytes = 0;
            for &m in later {
                let p = segment_path(dir, m);
                later_bytes += fs::metadata(&p).map_or(0, |m| m.len());
                let _ = fs::remove_file(p);
            }
            recovery.dropped = Some(format!(
                "{}: a torn write ({what}) at byte {offset} of {len}; dropped {} bytes from there and {} later segment(s) ({later_bytes} bytes)",
                path.display(),
                len - offset,
                later.len(),
            ));
        }
        let (segment, written) = last_good.unwrap_or((covered + 1, 0));
        let path = segment_path(dir, segment);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(format!("cannot open {}", path.display())))?;
        let allocated = file.metadata().map_err(io_err(format!("cannot stat {}", path.display())))?.len();
        sync_dir(dir).map_err(io_err(format!("cannot sync {}", dir.display())))?;
        let journal_bytes = recovery.bytes;
        let mut store = Store {
            dir: dir.to_path_buf(),
            segment,
            file,
            written,
            allocated,
            journal_bytes,
            pending: Vec::new(),
            unsynced: false,
            header: Vec::new(),
            #[cfg(test)]
            fail_next_sync: false,
        };
        store.preallocate(0);
        Ok((store, recovery))
    }

    /// Sets the record every segment starts with: written before the first record of a
    /// segment that is still empty (the journal format's record, docs/journal-format.md).
    pub fn set_segment_header(&mut self, body: Vec<u8>) {
        self.header = body;
    }

    /// Buffers a record for the next commit (after the segment header, when the segment is
    /// still empty).
    pub fn append<T: serde::Serialize>(&mut self, record: &T) -> Result<(), serde_json::Error> {
        if self.written == 0 && self.pending.is_empty() && !self.header.is_empty() {
            codec::frame(&self.header, &mut self.pending);
        }
        super::codec::encode(record, &mut self.pending)
    }

    /// Whether records wait for a commit.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether written records wait for a sync.
    pub fn has_unsynced(&self) -> bool {
        self.unsynced
    }

    /// Makes sure the segment has room for `more` bytes after what is written, and a zero
    /// header after them (so a reader finds a clean end), growing it by whole
    /// [`PREALLOCATE_BYTES`]. Best effort: where space cannot be reserved, the write that
    /// follows grows the file itself (or reports why it cannot).
    fn preallocate(&mut self, more: u64) {
        let needed = self.written + more + HEADER_BYTES as u64;
        if needed <= self.allocated {
            return;
        }
        let grow = (needed - self.allocated).div_ceil(PREALLOCATE_BYTES) * PREALLOCATE_BYTES;
        let reserved = nix::fcntl::fallocate(
            &self.file,
            nix::fcntl::FallocateFlags::empty(),
            self.allocated as nix::libc::off_t,
            grow as nix::libc::off_t,
        );
        match reserved {
            Ok(()) => self.allocated += grow,
            Err(e) => log::debug!("cannot preallocate {grow} bytes of the journal: {e}"),
        }
    }

    /// Writes the buffered records (one `write`); with `sync`, makes everything written
    /// durable and returns how long the sync took. On failure nothing of this commit stays
    /// in the file.
    pub fn commit(&mut self, sync: bool) -> io::Result<Option<Duration>> {
        let (before, before_bytes) = (self.written, self.journal_bytes);
        if !self.pending.is_empty() {
            self.preallocate(self.pending.len() as u64);
            if let Err(e) = self.file.write_all_at(&self.pending, self.written) {
                // Cut back whatever part of it reached the file (the space reserved after it
                // goes too, and is reserved again by the next write).
                let _ = self.file.set_len(self.written);
                self.allocated = self.written;
                self.pending.clear();
                return Err(e);
            }
            self.written += self.pending.len() as u64;
            self.journal_bytes += self.pending.len() as u64;
            self.pending.clear();
            self.unsynced = true;
        }
        if sync && self.unsynced {
            return match self.sync() {
                Ok(took) => Ok(Some(took)),
                Err(e) => {
                    // Its answers say nothing changed: then nothing may come back on a
                    // replay either. (Records of earlier commits stay: when they were not
                    // synced, they were answered without a sync.)
                    let _ = self.file.set_len(before);
                    (self.written, self.allocated, self.journal_bytes) = (before, before, before_bytes);
                    Err(e)
                }
            };
        }
        Ok(None)
    }

    /// Makes everything written durable.
    pub fn sync(&mut self) -> io::Result<Duration> {
        let started = Instant::now();
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_sync) {
            return Err(io::Error::from_raw_os_error(nix::libc::EIO));
        }
        self.file.sync_data()?;
        self.unsynced = false;
        Ok(started.elapsed())
    }

    /// Bytes in the journal since the last snapshot.
    pub fn journal_bytes(&self) -> u64 {
        self.journal_bytes
    }

    /// Writes a snapshot of `body` in the previous, `LHSNAP01` container (the JSON body with
    /// its checksum; tools and tests), as [`Store::snapshot_with`] does.
    pub fn snapshot(&mut self, body: &[u8]) -> io::Result<()> {
        self.snapshot_with(|out| {
            out.write_all(&codec::snapshot_header(body))?;
            out.write_all(body)
        })
    }

    /// Writes a snapshot that stands for everything journaled so far (commit first): `write`
    /// writes the file's bytes (the keeper: [`snapshot::encode`]) through a buffer. Then
    /// starts a new segment and removes what the snapshot covers.
    pub fn snapshot_with(&mut self, write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
        self.commit(true)?;
        let n = self.segment;
        let path = snapshot_path(&self.dir, n);
        let tmp = path.with_extension("json.tmp");
        let written = File::create(&tmp).and_then(|f| {
            let mut out = BufWriter::with_capacity(SNAPSHOT_READ_BYTES, f);
            write(&mut out)?;
            out.into_inner().map_err(|e| e.into_error())?.sync_all()
        });
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &path)).and_then(|()| sync_dir(&self.dir)) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let next = segment_path(&self.dir, n + 1);
        self.file = OpenOptions::new().create(true).truncate(true).write(true).open(&next)?;
        sync_dir(&self.dir)?;
        self.segment = n + 1;
        self.written = 0;
        self.allocated = 0;
        self.journal_bytes = 0;
        self.preallocate(0);
        let _ = fs::remove_file(segment_path(&self.dir, n));
        for entry in fs::read_dir(&self.dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let old_segment = numbered(&name, "journal-", ".log").is_some_and(|m| m <= n);
            let old_snapshot = numbered(&name, "snapshot-", ".json").is_some_and(|m| m < n);
            if old_segment || old_snapshot {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(dir: &Path) -> (Store, Recovery, Option<Vec<u8>>, Vec<serde_json::Value>) {
        let mut snapshot = None;
        let mut records = Vec::new();
        let (store, recovery) = Store::open(dir, |found| {
            match found {
                Found::Snapshot(s) => snapshot = Some(s.to_vec()),
                Found::Record(r) => records.push(serde_json::from_slice(r).map_err(|e| e.to_string())?),
                Found::Segment(_) | Found::SnapshotHead(_) | Found::SnapshotLock(_) | Found::SnapshotEnd => {}
            }
            Ok(())
        })
        .unwrap();
        (store, recovery, snapshot, records)
    }

    #[test]
    fn records_survive_a_reopen_and_a_snapshot_replaces_what_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, recovery, _, records) = collect(dir.path());
        assert_eq!((recovery, records.len()), (Recovery::default(), 0));
        for i in 0..5 {
            store.append(&serde_json::json!({ "n": i })).unwrap();
        }
        assert!(store.commit(true).unwrap().is_some(), "a sync happened");
        drop(store);
        let (mut store, recovery, snapshot, records) = collect(dir.path());
        assert_eq!((recovery.records, snapshot, records.len()), (5, None, 5));
        store.snapshot(b"{\"state\":5}").unwrap();
        store.append(&serde_json::json!({ "n": 5 })).unwrap();
        store.commit(true).unwrap();
        drop(store);
        let (_, recovery, snapshot, records) = collect(dir.path());
        assert_eq!(snapshot.as_deref(), Some(&b"{\"state\":5}"[..]));
        assert_eq!(records, vec![serde_json::json!({ "n": 5 })], "only what came after the snapshot");
        assert_eq!(recovery.snapshot, Some(1));
        let names: Vec<String> =
            fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
        assert_eq!(names.len(), 2, "one snapshot and one segment remain: {names:?}");
    }

    #[test]
    fn a_torn_tail_is_cut_and_reported_and_new_records_follow_the_good_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _, _, _) = collect(dir.path());
        for i in 0..3 {
            store.append(&serde_json::json!({ "n": i })).unwrap();
        }
        store.commit(true).unwrap();
        drop(store);
        // A crash in the middle of a write: half a record at the end.
        let path = segment_path(dir.path(), 1);
        let mut half = Vec::new();
        super::super::codec::encode(&serde_json::json!({ "n": 3 }), &mut half).unwrap();
        OpenOptions::new().append(true).open(&path).unwrap().write_all(&half[..half.len() / 2]).unwrap();
        let (mut store, recovery, _, records) = collect(dir.path());
        assert_eq!(records.len(), 3);
        assert!(recovery.dropped.as_deref().unwrap().contains("torn"), "{recovery:?}");
        store.append(&serde_json::json!({ "n": 4 })).unwrap();
        store.commit(true).unwrap();
        drop(store);
        let (_, recovery, _, records) = collect(dir.path());
        assert_eq!(records.last(), Some(&serde_json::json!({ "n": 4 })));
        assert_eq!(recovery.dropped, None);
    }

    /// Every file of `dir` with its bytes.
    fn contents(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.file_name().to_string_lossy().to_string(), fs::read(e.path()).unwrap())
            })
            .collect()
    }

    /// Writes `n` records `{"n": i}` into a fresh journal in `dir`, one commit each.
    fn write_records(dir: &Path, n: u64) {
        let (mut store, _, _, _) = collect(dir);
        for i in 0..n {
            store.append(&serde_json::json!({ "n": i })).unwrap();
            store.commit(false).unwrap();
        }
        store.sync().unwrap();
    }

    /// Where each record of a segment starts.
    fn record_starts(bytes: &[u8]) -> Vec<usize> {
        codec::survey(bytes)
            .filter_map(|p| if let Piece::Record { offset, .. } = p { Some(offset) } else { None })
            .collect()
    }

    /// Opens `dir` expecting corruption; returns (path, offset, message).
    fn open_corrupt(dir: &Path) -> (PathBuf, u64, String) {
        let err = Store::open(dir, |found| {
            if let Found::Record(r) = found {
                serde_json::from_slice::<serde_json::Value>(r).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
        .unwrap_err();
        let message = err.to_string();
        match err {
            StoreError::Corrupt { path, offset, .. } => (path, offset, message),
            other => panic!("expected corruption, got {other}"),
        }
    }

    #[test]
    fn r12_open_bad_byte_mid_segment_with_valid_records_after_is_corrupt_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A snapshot first, so the directory also holds what an open tidies up: a leftover
        // unfinished snapshot and a segment the snapshot covers.
        let (mut store, _, _, _) = collect(dir.path());
        store.append(&serde_json::json!({ "before": true })).unwrap();
        store.snapshot(b"{\"state\":1}").unwrap();
        for i in 0..10 {
            store.append(&serde_json::json!({ "n": i, "pad": "y".repeat(40) })).unwrap();
            store.commit(false).unwrap();
        }
        store.sync().unwrap();
        drop(store);
        fs::write(dir.path().join("snapshot-0000000000000002.json.tmp"), b"{\"unfinished").unwrap();
        fs::write(segment_path(dir.path(), 1), b"covered").unwrap();
        let path = segment_path(dir.path(), 2);
        let mut bytes = fs::read(&path).unwrap();
        let starts = record_starts(&bytes);
        assert_eq!(starts.len(), 10);
        bytes[starts[4] + HEADER_BYTES + 12] ^= 0x01;
        fs::write(&path, &bytes).unwrap();
        let before = contents(dir.path());
        let (damaged, offset, message) = open_corrupt(dir.path());
        assert_eq!((damaged, offset), (path.clone(), starts[4] as u64));
        assert!(message.contains(&segment_name(2)) && message.contains(&format!("at byte {}", starts[4])), "{message}");
        assert!(message.contains("valid records after it"), "{message}");
        assert!(contents(dir.path()) == before, "the directory changed");
    }

    /// Writes three records to segment 1 and flips a bit in the last one's body; returns the
    /// segment and that record's offset.
    fn three_records_with_the_last_damaged(dir: &Path) -> (PathBuf, usize) {
        write_records(dir, 3);
        let first = segment_path(dir, 1);
        let mut bytes = fs::read(&first).unwrap();
        let last = *record_starts(&bytes).last().unwrap();
        bytes[last + HEADER_BYTES + 2] ^= 0x01;
        fs::write(&first, &bytes).unwrap();
        (first, last)
    }

    #[test]
    fn r12_open_bad_record_ending_a_segment_with_records_in_a_later_one_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let (first, last) = three_records_with_the_last_damaged(dir.path());
        // A later segment holding records (as after a snapshot whose file is gone).
        let mut later = Vec::new();
        codec::encode(&serde_json::json!({ "n": 9 }), &mut later).unwrap();
        fs::write(segment_path(dir.path(), 2), &later).unwrap();
        let before = contents(dir.path());
        let (damaged, offset, message) = open_corrupt(dir.path());
        assert_eq!((damaged, offset), (first, last as u64));
        assert!(message.contains(&segment_name(2)), "the later records are named: {message}");
        assert!(contents(dir.path()) == before, "the directory changed");
    }

    #[test]
    fn open_damaged_end_of_a_segment_with_nothing_valid_later_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = three_records_with_the_last_damaged(dir.path());
        // A later segment with no record in it: nothing after the damage is lost.
        fs::write(segment_path(dir.path(), 2), vec![0; 64]).unwrap();
        let (_, recovery, _, records) = collect(dir.path());
        assert_eq!(records.len(), 2);
        let dropped = recovery.dropped.unwrap();
        assert!(dropped.contains("torn") && dropped.contains("1 later segment"), "{dropped}");
        assert!(!segment_path(dir.path(), 2).exists());
        assert_eq!(record_starts(&fs::read(&first).unwrap()).len(), 2);
    }

    #[test]
    fn open_record_the_caller_cannot_apply_is_corrupt_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _, _, _) = collect(dir.path());
        store.append(&serde_json::json!({ "n": 0 })).unwrap();
        store.append(&serde_json::json!("not an object")).unwrap();
        store.append(&serde_json::json!({ "n": 2 })).unwrap();
        store.commit(true).unwrap();
        drop(store);
        let offset = {
            let mut one = Vec::new();
            codec::encode(&serde_json::json!({ "n": 0 }), &mut one).unwrap();
            one.len() as u64
        };
        let before = contents(dir.path());
        let mut seen = Vec::new();
        let err = Store::open(dir.path(), |found| {
            let Found::Record(r) = found else { return Ok(()) };
            let v: serde_json::Value = serde_json::from_slice(r).unwrap();
            if !v.is_object() {
                return Err("not an object".into());
            }
            seen.push(v);
            Ok(())
        })
        .unwrap_err();
        assert_eq!(seen.len(), 1);
        let StoreError::Corrupt { offset: at, what, .. } = err else { panic!("expected corruption, got {err}") };
        assert_eq!(at, offset);
        assert!(what.contains("cannot be applied (not an object)"), "{what}");
        assert!(contents(dir.path()) == before, "the directory changed");
    }

    #[test]
    fn a_commit_whose_sync_fails_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _, _, _) = collect(dir.path());
        store.append(&serde_json::json!({ "n": 0 })).unwrap();
        store.commit(true).unwrap();
        // Written without a sync (interval mode: already answered), then a synced commit
        // whose sync fails.
        store.append(&serde_json::json!({ "n": 1 })).unwrap();
        store.commit(false).unwrap();
        store.append(&serde_json::json!({ "n": 2 })).unwrap();
        store.fail_next_sync = true;
        assert!(store.commit(true).is_err());
        // The failed commit is gone; the answered one stays; the next commit follows it.
        store.append(&serde_json::json!({ "n": 3 })).unwrap();
        store.commit(true).unwrap();
        drop(store);
        let (_, recovery, _, records) = collect(dir.path());
        let n: Vec<u64> = records.iter().map(|r| r["n"].as_u64().unwrap()).collect();
        assert_eq!((n, recovery.dropped), (vec![0, 1, 3], None));
    }

    #[test]
    fn an_unreadable_snapshot_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _, _, _) = collect(dir.path());
        store.snapshot(b"{\"garbage\":true}").unwrap();
        drop(store);
        let err = Store::open(dir.path(), |found| match found {
            Found::Snapshot(_) | Found::SnapshotHead(_) => Err("bad".into()),
            Found::Record(_) | Found::Segment(_) | Found::SnapshotLock(_) | Found::SnapshotEnd => Ok(()),
        })
        .unwrap_err();
        assert!(matches!(err, StoreError::Snapshot { .. }), "{err}");
        // Neither format at all: corruption.
        fs::write(snapshot_path(dir.path(), 1), b"garbage").unwrap();
        let (path, offset, _) = open_corrupt(dir.path());
        assert_eq!((path, offset), (snapshot_path(dir.path(), 1), 0));
    }

    #[test]
    fn r12_open_snapshot_whose_checksum_fails_is_corrupt_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        write_records(dir.path(), 2);
        let (mut store, _, _, _) = collect(dir.path());
        store.snapshot(b"{\"state\":\"after two records\"}").unwrap();
        store.append(&serde_json::json!({ "n": 2 })).unwrap();
        store.commit(true).unwrap();
        drop(store);
        let path = snapshot_path(dir.path(), 1);
        let mut bytes = fs::read(&path).unwrap();
        assert!(bytes.starts_with(codec::SNAPSHOT_MAGIC), "written in the checked format");
        let middle = bytes.len() - 5;
        bytes[middle] ^= 0x02;
        fs::write(&path, &bytes).unwrap();
        let before = contents(dir.path());
        let (damaged, offset, message) = open_corrupt(dir.path());
        assert_eq!((damaged, offset), (path, 0));
        assert!(message.contains("checksum"), "{message}");
        assert!(contents(dir.path()) == before, "the directory changed");
    }

    #[test]
    fn open_snapshot_in_the_previous_format_is_read_and_flagged() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(snapshot_path(dir.path(), 3), b"{\"old\":true}").unwrap();
        let mut one = Vec::new();
        codec::encode(&serde_json::json!({ "n": 1 }), &mut one).unwrap();
        fs::write(segment_path(dir.path(), 4), &one).unwrap();
        let (mut store, recovery, snapshot, records) = collect(dir.path());
        assert_eq!(snapshot.as_deref(), Some(&b"{\"old\":true}"[..]));
        assert_eq!((recovery.unchecked_snapshot, records.len()), (true, 1));
        // The next snapshot is written in the checked format.
        store.snapshot(b"{\"new\":true}").unwrap();
        drop(store);
        let (_, recovery, snapshot, _) = collect(dir.path());
        assert_eq!((recovery.unchecked_snapshot, snapshot.as_deref()), (false, Some(&b"{\"new\":true}"[..])));
        assert!(fs::read(snapshot_path(dir.path(), 4)).unwrap().starts_with(codec::SNAPSHOT_MAGIC));
    }

    /// A service holding `n` leases (one lock each), as a snapshot.
    fn state_with_leases(n: u64) -> super::super::Snapshot {
        use crate::core::lock::{Moment, TableLimits};
        use crate::core::names::{LockName, Ticket};
        use crate::ipc::message::{LockOp, ToKeeper};
        let mut service = crate::service::Service::new(TableLimits::DEFAULT, 60_000, 1);
        let mut out = Vec::new();
        for i in 0..n {
            let op = LockOp::acquire(LockName::parse(&format!("lock-{i}")).unwrap(), 60_000);
            let fresh = *Ticket::from_bytes([i as u8 + 1; 16]).as_bytes();
            service.handle(0, ToKeeper::Request { id: i, op }, Moment::new(1_000 + i, i), fresh, &mut out);
        }
        super::super::Snapshot::new(7, service.export())
    }

    /// Opens `dir` as the keeper does: the state and the recovery.
    fn rebuild(dir: &Path) -> Result<(super::super::Rebuild, Recovery), StoreError> {
        let limits = crate::core::lock::TableLimits::DEFAULT;
        let mut rebuild = super::super::Rebuild::new(crate::service::Service::new(limits, 60_000, 1), 1);
        let (_, recovery) = Store::open(dir, |found| rebuild.take(found))?;
        Ok((rebuild, recovery))
    }

    #[test]
    fn a_framed_snapshot_loads_lock_by_lock_into_the_same_state() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _, _, _) = collect(dir.path());
        let snapshot = state_with_leases(5);
        let expected = snapshot.service.clone();
        store.snapshot_with(|out| super::super::snapshot::encode(snapshot.clone(), out)).unwrap();
        drop(store);
        let bytes = fs::read(snapshot_path(dir.path(), 1)).unwrap();
        assert!(bytes.starts_with(super::super::snapshot::MAGIC));
        assert_eq!(super::super::snapshot::decode(&bytes).unwrap(), snapshot, "decoded whole, the same");
        let (rebuild, recovery) = rebuild(dir.path()).unwrap();
        assert_eq!((recovery.snapshot, recovery.unchecked_snapshot), (Some(1), false));
        assert_eq!((rebuild.service.export(), rebuild.fences_reserved), (expected, 7));
        assert_eq!(rebuild.formats, vec![super::super::FORMAT]);
    }

    #[test]
    fn r19_framed_snapshot_damaged_anywhere_is_corrupt_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _, _, _) = collect(dir.path());
        store.snapshot_with(|out| super::super::snapshot::encode(state_with_leases(3), out)).unwrap();
        drop(store);
        let path = snapshot_path(dir.path(), 1);
        let good = fs::read(&path).unwrap();
        let last = good.len() - HEADER_BYTES;
        // (the bytes, the offset the refusal names, what it says)
        let mut cases: Vec<(Vec<u8>, Option<u64>, &str)> = Vec::new();
        let mut flipped = good.clone();
        flipped[last - 2] ^= 0x01;
        cases.push((flipped, None, "checksum"));
        cases.push((good[..last - 1].to_vec(), None, "cut short"));
        cases.push((good[..last].to_vec(), Some(last as u64), "cut short"));
        cases.push(([&good[..], b"x"].concat(), Some(good.len() as u64), "after its end mark"));
        let mut no_head = good[..8].to_vec();
        no_head.extend_from_slice(&[0; HEADER_BYTES]);
        cases.push((no_head, Some(8), "without its head"));
        for (bytes, offset, what) in cases {
            fs::write(&path, &bytes).unwrap();
            let before = contents(dir.path());
            let err = rebuild(dir.path()).map(|_| ()).unwrap_err();
            let StoreError::Corrupt { path: at, offset: found, what: said } = &err else { panic!("{what}: {err}") };
            assert_eq!(at, &path);
            assert!(said.contains(what), "{said}");
            if let Some(offset) = offset {
                assert_eq!(*found, offset, "{said}");
            }
            assert!(contents(dir.path()) == before, "the directory changed ({what})");
        }
    }

    #[test]
    fn r19_framed_snapshot_with_a_lock_frame_that_cannot_be_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _, _, _) = collect(dir.path());
        store.snapshot_with(|out| super::super::snapshot::encode(state_with_leases(2), out)).unwrap();
        drop(store);
        // The last lock frame, rewritten with a body that is not a lock (its checksum valid).
        let path = snapshot_path(dir.path(), 1);
        let good = fs::read(&path).unwrap();
        let mut frames = super::super::snapshot::Frames::after_magic(&good[8..]);
        let mut starts = Vec::new();
        loop {
            let at = frames.offset();
            if frames.next_frame().unwrap().is_none() {
                break;
            }
            starts.push(at as usize);
        }
        let mut bad = good[..*starts.last().unwrap()].to_vec();
        codec::frame(&[0xff, 0xff, 0xff], &mut bad);
        bad.extend_from_slice(&[0; HEADER_BYTES]);
        fs::write(&path, &bad).unwrap();
        let err = rebuild(dir.path()).map(|_| ()).unwrap_err();
        assert!(matches!(err, StoreError::Snapshot { .. }), "{err}");
        assert!(err.to_string().contains("lock frame"), "{err}");
        // One lock frame fewer than the head announces.
        let mut short = good[..*starts.last().unwrap()].to_vec();
        short.extend_from_slice(&[0; HEADER_BYTES]);
        fs::write(&path, &short).unwrap();
        let err = rebuild(dir.path()).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("1 of the 2 locks"), "{err}");
    }
}
