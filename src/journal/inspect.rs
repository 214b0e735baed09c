//! `leasehold journal verify DIR` and `leasehold journal salvage DIR NEW_DIR`: what an
//! operator runs when the keeper refuses a corrupt journal.
//!
//! - [`verify`] reads every file of a journal directory and reports each one: its records,
//!   the zeros after them, and every damaged spot with its offset, judged by the keeper's
//!   rule: a spot with nothing valid after it (in its segment or in a later one) is a torn
//!   tail, which the keeper cuts at start; any other is corruption, on which it refuses to
//!   start.
//! - [`salvage`] copies every valid record (and the snapshot, if valid) into a new, empty
//!   directory, as a snapshot and one segment the keeper starts from. When anything was
//!   skipped it ends the copy with a fence reservation far past every fence the kept records
//!   know, since a skipped record may have handed out fences.
//!
//! Must not: change anything in the directory it reads (it opens files for reading only),
//! or write anywhere but the new directory.

use std::borrow::Cow;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::codec::{self, Piece, SnapshotBody, HEADER_BYTES};
use super::store::{io_err, read_file, segment_name, snapshot_name, sync_dir, Listing, StoreError};
use super::{decode_snapshot, segment_header, snapshot, Record, SegmentReader};

/// How far past the highest fence reservation it knows a salvage reserves fences when it
/// skipped anything: 65,536 reservations of the keeper's size, so a fence handed out by a
/// skipped record is never handed out again.
pub const SALVAGE_FENCE_JUMP: u64 = 1 << 32;

/// Why a verify or salvage could not run.
#[derive(Debug)]
pub enum InspectError {
    /// The arguments cannot be used (a missing directory, a target that is not empty).
    Usage(String),
    /// A file could not be read or written.
    Store(StoreError),
}

impl fmt::Display for InspectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(why) => f.write_str(why),
            Self::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for InspectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Usage(_) => None,
            Self::Store(e) => Some(e),
        }
    }
}

impl From<StoreError> for InspectError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// What a damaged spot means to the keeper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A torn tail: the keeper cuts it off at start.
    Torn,
    /// Corruption: the keeper refuses to start.
    Corrupt,
}

/// One stretch of a file, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// `count` valid records from byte `from` to byte `to`.
    Records {
        /// Where the first starts.
        from: u64,
        /// Where the last ends.
        to: u64,
        /// How many.
        count: u64,
    },
    /// Zeros from `from` to the end of the file (preallocated space).
    Zeros {
        /// Where they start.
        from: u64,
    },
    /// A valid snapshot.
    Snapshot {
        /// Whether it carries a checksum (the current format) or not (the previous one).
        checked: bool,
    },
    /// A damaged spot: nothing valid from `offset` to `end`.
    Spot {
        /// Where it starts.
        offset: u64,
        /// Where the next valid record starts, or the end of the file.
        end: u64,
        /// What is wrong.
        what: String,
        /// What it means to the keeper.
        verdict: Verdict,
    },
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The latest snapshot: recovery starts from it.
    Snapshot,
    /// A segment after the latest snapshot: recovery replays it.
    Segment,
    /// A file the keeper removes at start without reading: an older snapshot, a segment the
    /// snapshot covers, or a snapshot that never finished.
    Leftover,
    /// Not part of the journal (the keeper's lock file, for example).
    Other,
}

/// One file's report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileReport {
    /// Its name in the directory.
    pub name: String,
    /// Its length.
    pub len: u64,
    /// What it is.
    pub role: Role,
    /// What it holds, in order (only the snapshot and the segments are read).
    pub parts: Vec<Part>,
    /// Records whose framing and checksum are valid, readable or not.
    valid_frames: u64,
    /// The journal format it is in, once known (docs/journal-format.md).
    pub format: Option<u32>,
}

impl FileReport {
    fn spots(&self) -> impl Iterator<Item = (u64, Verdict)> + '_ {
        self.parts.iter().filter_map(|p| match p {
            Part::Spot { offset, verdict, .. } => Some((*offset, *verdict)),
            _ => None,
        })
    }
}

/// A journal directory as `verify` found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The directory.
    pub dir: PathBuf,
    /// Its files, snapshot first, then segments in order, then the rest.
    pub files: Vec<FileReport>,
}

impl Report {
    /// Every damaged spot as (file, offset, verdict), in order.
    pub fn spots(&self) -> Vec<(&str, u64, Verdict)> {
        self.files.iter().flat_map(|f| f.spots().map(move |(offset, v)| (f.name.as_str(), offset, v))).collect()
    }

    /// Whether the keeper would refuse to start on this directory.
    pub fn is_corrupt(&self) -> bool {
        self.spots().iter().any(|s| s.2 == Verdict::Corrupt)
    }

    /// Valid records in the segments recovery reads.
    pub fn records(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.role == Role::Segment)
            .flat_map(|f| &f.parts)
            .map(|p| if let Part::Records { count, .. } = p { *count } else { 0 })
            .sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:", self.dir.display())?;
        for file in &self.files {
            let role = match file.role {
                Role::Snapshot => "the snapshot recovery starts from",
                Role::Segment => "a journal segment",
                Role::Leftover => "left over; the keeper removes it at start without reading it",
                Role::Other => "not part of the journal",
            };
            let format = file.format.map_or(String::new(), |n| format!(" (journal format {n})"));
            writeln!(f, "  {}: {} bytes, {role}{format}", file.name, file.len)?;
            for part in &file.parts {
                match part {
                    Part::Records { from, to, count } => {
                        writeln!(f, "    bytes {from}..{to}: {count} valid record{}", plural(*count))?
                    }
                    Part::Zeros { from } => writeln!(f, "    bytes {from}..{}: zeros (not yet written)", file.len)?,
                    Part::Snapshot { checked: true } => writeln!(f, "    a valid snapshot; its checksum matches")?,
                    Part::Snapshot { checked: false } => writeln!(
                        f,
                        "    a valid snapshot in the previous format (no checksum; the keeper reads it and writes a new one)"
                    )?,
                    Part::Spot { offset, end, what, verdict } => {
                        let (label, then) = match verdict {
                            Verdict::Torn => ("TORN", "a torn tail: the keeper cuts it off at start"),
                            Verdict::Corrupt => ("CORRUPT", "corruption: the keeper refuses to start"),
                        };
                        writeln!(
                            f,
                            "    byte {offset}: {label}: {what}; nothing valid up to byte {end} ({} bytes); {then}",
                            end - offset
                        )?;
                    }
                }
            }
        }
        let spots = self.spots();
        let corrupt = spots.iter().filter(|s| s.2 == Verdict::Corrupt).count();
        if corrupt > 0 {
            writeln!(
                f,
                "corrupt: {corrupt} corrupt spot{} (first: {} at byte {}); the keeper refuses to start on this \
                 directory; `leasehold journal salvage DIR NEW_DIR` copies every valid record into NEW_DIR",
                plural(corrupt as u64),
                spots.iter().find(|s| s.2 == Verdict::Corrupt).map_or("", |s| s.0),
                spots.iter().find(|s| s.2 == Verdict::Corrupt).map_or(0, |s| s.1),
            )
        } else if let Some((name, offset, _)) = spots.first() {
            writeln!(
                f,
                "ok: {} valid records and a torn tail ({name} at byte {offset}), which the keeper cuts at start",
                self.records()
            )
        } else {
            writeln!(f, "ok: {} valid records, no damage", self.records())
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// Examines a segment's bytes, handing `keep` every record that is valid and readable (in
/// the segment's format; its format record is valid but not handed over).
fn examine_segment(name: &str, bytes: &[u8], keep: &mut dyn FnMut(Record)) -> FileReport {
    let mut reader = SegmentReader::new();
    let mut report = FileReport {
        name: name.to_string(),
        len: bytes.len() as u64,
        role: Role::Segment,
        parts: Vec::new(),
        valid_frames: 0,
        format: None,
    };
    for piece in codec::survey(bytes) {
        match piece {
            Piece::Record { offset, body } => {
                report.valid_frames += 1;
                let (from, to) = (offset as u64, (offset + HEADER_BYTES + body.len()) as u64);
                let read = reader.read(body);
                report.format = report.format.or(reader.format());
                match read {
                    Ok(record) => {
                        record.into_iter().for_each(&mut *keep);
                        match report.parts.last_mut() {
                            Some(Part::Records { to: last, count, .. }) if *last == from => {
                                *last = to;
                                *count += 1;
                            }
                            _ => report.parts.push(Part::Records { from, to, count: 1 }),
                        }
                    }
                    Err(reason) => report.parts.push(Part::Spot {
                        offset: from,
                        end: to,
                        what: format!("a record that cannot be applied ({reason})"),
                        verdict: Verdict::Corrupt,
                    }),
                }
            }
            Piece::Zeros { offset } => report.parts.push(Part::Zeros { from: offset as u64 }),
            Piece::Damaged { offset, end, ref damage, gave_up } => {
                let what = match gave_up {
                    Some(at) => format!("{damage}; the search for valid records after it stopped at byte {at}"),
                    None => damage.to_string(),
                };
                let verdict = if piece.has_records_after(bytes.len()) { Verdict::Corrupt } else { Verdict::Torn };
                report.parts.push(Part::Spot { offset: offset as u64, end: end as u64, what, verdict });
            }
        }
    }
    report
}

/// A valid snapshot as examined: the state, and its JSON body (borrowed from the file when
/// the file holds it as JSON).
type ValidSnapshot<'a> = (super::Snapshot, Cow<'a, [u8]>);

/// Examines the latest snapshot's bytes: its report, and the snapshot if it is valid.
fn examine_snapshot<'a>(name: &str, bytes: &'a [u8]) -> (FileReport, Option<ValidSnapshot<'a>>) {
    let mut report = FileReport {
        name: name.to_string(),
        len: bytes.len() as u64,
        role: Role::Snapshot,
        parts: Vec::new(),
        valid_frames: 0,
        format: None,
    };
    let spot =
        |offset: u64, what: String| Part::Spot { offset, end: bytes.len() as u64, what, verdict: Verdict::Corrupt };
    if bytes.starts_with(snapshot::MAGIC) {
        // Framed: every frame's checksum and every lock are checked; a salvage writes the
        // same state as the JSON of the previous container.
        return match snapshot::decode(bytes) {
            Ok(decoded) => {
                report.format = Some(decoded.version);
                report.parts.push(Part::Snapshot { checked: true });
                let body = serde_json::to_vec(&decoded).unwrap_or_default();
                (report, Some((decoded, Cow::Owned(body))))
            }
            Err((offset, what)) => {
                report.parts.push(spot(offset, what));
                (report, None)
            }
        };
    }
    let (body, checked) = match codec::read_snapshot(bytes) {
        Ok(SnapshotBody::Checked(body)) => (body, true),
        Ok(SnapshotBody::Unchecked(body)) => (body, false),
        Err(damage) => {
            report.parts.push(spot(damage.offset(), damage.to_string()));
            return (report, None);
        }
    };
    match decode_snapshot(body) {
        Ok(snapshot) => {
            report.format = Some(snapshot.version);
            report.parts.push(Part::Snapshot { checked });
            (report, Some((snapshot, Cow::Borrowed(body))))
        }
        Err(reason) => {
            report.parts.push(spot(0, format!("a snapshot that cannot be loaded ({reason})")));
            (report, None)
        }
    }
}

/// A torn spot that ends a segment is corruption after all when a later segment holds a
/// valid record.
fn judge_tails(segments: &mut [FileReport]) {
    for i in 0..segments.len() {
        if segments[i + 1..].iter().any(|later| later.valid_frames > 0) {
            for part in &mut segments[i].parts {
                if let Part::Spot { verdict, .. } = part {
                    *verdict = Verdict::Corrupt;
                }
            }
        }
    }
}

fn require_dir(dir: &Path) -> Result<(), InspectError> {
    if dir.is_dir() {
        Ok(())
    } else {
        Err(InspectError::Usage(format!("{} is not a directory", dir.display())))
    }
}

fn plain_report(name: String, len: u64, role: Role) -> FileReport {
    FileReport { name, len, role, parts: Vec::new(), valid_frames: 0, format: None }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map_or(0, |m| m.len())
}

/// Reads the journal in `dir` without changing anything, and says what it holds.
pub fn verify(dir: &Path) -> Result<Report, InspectError> {
    walk(dir, &mut |_| Ok(()), &mut |_| Ok(())).map(|(report, _)| report)
}

/// What one walk of a directory found that a salvage needs.
#[derive(Debug, Default)]
struct Walked {
    /// The highest fence reservation the snapshot and the kept records know.
    fences_reserved: u64,
}

/// Where a walk hands the bytes a salvage copies.
type Sink<'a> = &'a mut dyn FnMut(&[u8]) -> Result<(), InspectError>;
type RecordSink<'a> = &'a mut dyn FnMut(&Record) -> Result<(), InspectError>;

/// Walks `dir`: the latest snapshot (`snapshot` gets its body when it is valid),
/// then every live segment (`record` gets each valid, readable record's body), then the
/// rest. Reads only.
fn walk(dir: &Path, snapshot: Sink<'_>, record: RecordSink<'_>) -> Result<(Report, Walked), InspectError> {
    require_dir(dir)?;
    let listing = Listing::read(dir)?;
    let mut walked = Walked::default();
    let mut files = Vec::new();
    if let Some(&n) = listing.snapshots.last() {
        let name = snapshot_name(n);
        let bytes = read_file(&dir.join(&name))?;
        let (report, valid) = examine_snapshot(&name, &bytes);
        if let Some((decoded, body)) = valid {
            walked.fences_reserved = decoded.fences_reserved;
            snapshot(&body)?;
        }
        files.push(report);
    }
    let mut segments = Vec::new();
    for n in listing.live_segments() {
        let name = segment_name(n);
        let bytes = read_file(&dir.join(&name))?;
        let mut failed = None;
        let report = examine_segment(&name, &bytes, &mut |decoded| {
            if let Record::ReserveFences { up_to: fence } | Record::RaiseFences { floor: fence } = decoded {
                walked.fences_reserved = walked.fences_reserved.max(fence);
            }
            if failed.is_none() {
                failed = record(&decoded).err();
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        segments.push(report);
    }
    judge_tails(&mut segments);
    files.extend(segments);
    let live = listing.live_segments();
    for (i, &n) in listing.snapshots.iter().enumerate() {
        if i + 1 < listing.snapshots.len() {
            let name = snapshot_name(n);
            files.push(plain_report(name.clone(), file_len(&dir.join(name)), Role::Leftover));
        }
    }
    for &n in listing.segments.iter().filter(|n| !live.contains(n)) {
        let name = segment_name(n);
        files.push(plain_report(name.clone(), file_len(&dir.join(name)), Role::Leftover));
    }
    for path in &listing.unfinished {
        let name = path.file_name().map_or_else(String::new, |n| n.to_string_lossy().to_string());
        files.push(plain_report(name, file_len(path), Role::Leftover));
    }
    for name in &listing.others {
        files.push(plain_report(name.clone(), file_len(&dir.join(name)), Role::Other));
    }
    Ok((Report { dir: dir.to_path_buf(), files }, walked))
}

/// What a salvage did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Salvaged {
    /// The source directory as `verify` sees it (every skipped spot is listed there).
    pub report: Report,
    /// The new directory.
    pub new_dir: PathBuf,
    /// The snapshot copied, if there was a valid one.
    pub snapshot: Option<String>,
    /// The segment written.
    pub segment: String,
    /// Records copied.
    pub records: u64,
    /// Whether anything was skipped: a damaged spot, an unreadable record or snapshot.
    pub skipped: bool,
    /// The fence reservation added at the end, when anything was skipped.
    pub fences_from: Option<u64>,
}

impl fmt::Display for Salvaged {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.report)?;
        writeln!(f, "salvaged into {}:", self.new_dir.display())?;
        match &self.snapshot {
            Some(name) => writeln!(f, "  kept: {name} (the snapshot, with a checksum)")?,
            None if self.report.files.iter().any(|r| r.role == Role::Snapshot) => {
                writeln!(f, "  skipped: the snapshot (damaged; see above)")?
            }
            None => {}
        }
        writeln!(f, "  kept: {} valid record{} in {}", self.records, plural(self.records), self.segment)?;
        for (name, offset, verdict) in self.report.spots() {
            let what = if verdict == Verdict::Torn { "a torn tail" } else { "a corrupt spot" };
            writeln!(f, "  skipped: {what} in {name} at byte {offset}")?;
        }
        if let Some(up_to) = self.fences_from {
            writeln!(
                f,
                "  added: a fence reservation up to {up_to}, so no fence a skipped record handed out is reused"
            )?;
        }
        Ok(())
    }
}

/// Makes `new_dir` (which must not exist, or be empty) and checks it is not `dir`.
fn prepare_new_dir(dir: &Path, new_dir: &Path) -> Result<(), InspectError> {
    if new_dir.exists() {
        let mut entries = fs::read_dir(new_dir)
            .map_err(|e| InspectError::Usage(format!("{} cannot be used: {e}", new_dir.display())))?;
        if entries.next().is_some() {
            return Err(InspectError::Usage(format!("{} is not empty", new_dir.display())));
        }
        let same = fs::canonicalize(dir).ok().zip(fs::canonicalize(new_dir).ok()).is_some_and(|(a, b)| a == b);
        if same {
            return Err(InspectError::Usage("the new directory must not be the journal's own".to_string()));
        }
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(new_dir)
        .map_err(io_err(format!("cannot create {}", new_dir.display())))
        .map_err(InspectError::Store)
}

fn create_file(path: &Path) -> Result<File, InspectError> {
    Ok(OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("cannot create {}", path.display())))?)
}

/// Copies every valid record of the journal in `dir` (and its snapshot, if valid) into
/// `new_dir`, which must not exist or be empty, leaving `dir` untouched.
pub fn salvage(dir: &Path, new_dir: &Path) -> Result<Salvaged, InspectError> {
    require_dir(dir)?;
    prepare_new_dir(dir, new_dir)?;
    // The segment number follows the snapshot's, kept or not, as the keeper expects.
    let covered = Listing::read(dir)?.covered();
    let segment = segment_name(covered + 1);
    let segment_path = new_dir.join(&segment);
    let mut out = create_file(&segment_path)?;
    let mut snapshot = None;
    let mut records = 0;
    // The new segment is in this build's format: its format record, then every record
    // read (in whichever format it was written) as this build writes it.
    let mut buffer = Vec::new();
    codec::frame(&segment_header(), &mut buffer);
    let (report, walked) = walk(
        dir,
        &mut |body| {
            let name = snapshot_name(covered);
            let path = new_dir.join(&name);
            let mut file = create_file(&path)?;
            file.write_all(&codec::snapshot_header(body))
                .and_then(|()| file.write_all(body))
                .and_then(|()| file.sync_all())
                .map_err(io_err(format!("cannot write {}", path.display())))?;
            snapshot = Some(name);
            Ok(())
        },
        &mut |record| {
            codec::encode(record, &mut buffer).map_err(|e| {
                InspectError::Store(StoreError::Io { what: "cannot encode a record".to_string(), source: e.into() })
            })?;
            records += 1;
            if buffer.len() >= 1 << 20 {
                out.write_all(&buffer).map_err(io_err(format!("cannot write {}", segment_path.display())))?;
                buffer.clear();
            }
            Ok(())
        },
    )?;
    let snapshot_skipped = report.files.iter().any(|f| f.role == Role::Snapshot) && snapshot.is_none();
    let skipped = snapshot_skipped || !report.spots().is_empty();
    let mut fences_from = None;
    if skipped {
        let up_to = walked.fences_reserved.saturating_add(SALVAGE_FENCE_JUMP);
        codec::encode(&Record::ReserveFences { up_to }, &mut buffer).expect("a fence record encodes");
        fences_from = Some(up_to);
    }
    out.write_all(&buffer)
        .and_then(|()| out.sync_all())
        .map_err(io_err(format!("cannot write {}", segment_path.display())))?;
    sync_dir(new_dir).map_err(io_err(format!("cannot sync {}", new_dir.display())))?;
    Ok(Salvaged { report, new_dir: new_dir.to_path_buf(), snapshot, segment, records, skipped, fences_from })
}
