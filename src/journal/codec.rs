//! The journal's framing, pure: records are `length (u32 BE) | crc32 (u32 BE) | JSON`, a
//! snapshot is `magic | length (u64 BE) | crc32 (u32 BE) | JSON`.
//!
//! [`Reader`] walks a segment's bytes and stops at the first record that is torn (its
//! header or body runs past the end), too large to be real, or corrupt (its checksum does
//! not match): everything before it is good. Whether what follows that spot can be
//! trusted is [`survey`]'s question: a damaged spot followed by nothing valid is a torn
//! tail (a write cut short; cut off at recovery), a damaged spot followed by a valid record
//! is corruption (nothing may be cut or replayed past it without an operator).
//!
//! Segments are preallocated, so the written records are followed by zeros. No record is
//! empty (a body is a JSON object), so a zero length marks the end of what was written; the
//! zeros must then run to the end, or a write was torn.
//!
//! Must not: touch files, or decide what a record means (bodies are bytes here).

use std::fmt;

use serde::Serialize;

/// Bytes before each record's body.
pub const HEADER_BYTES: usize = 8;
/// Largest record body (a data write is at most `max_data_bytes`, itself capped at 64 MiB).
pub const MAX_RECORD_BYTES: u32 = 128 * 1024 * 1024;
/// The smallest record body: `{}`.
const MIN_RECORD_BYTES: u32 = 2;
/// The search for the next valid record after a damaged spot computes checksums only for
/// candidates that pass every cheaper test; candidates that then fail may cost at most this
/// many checksum bytes per byte searched, so the search stays linear in the segment's size
/// whatever the damaged bytes hold.
pub const MAX_SCAN_CHECKSUM_BYTES_PER_BYTE: u64 = 4;

/// The first bytes of a snapshot file in the current format.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"LHSNAP01";
/// Bytes before a snapshot's body: magic, length (u64 BE), crc32 (u32 BE).
pub const SNAPSHOT_HEADER_BYTES: usize = 20;

/// Why reading stopped before the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// A record that runs past the end of the bytes (a crash in the middle of a write), or
    /// non-zero bytes after a zero length (where the written records should end).
    Torn,
    /// A record's checksum does not match its body.
    Corrupt,
    /// A length no writer could have produced.
    TooLarge(u32),
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Torn => f.write_str("an incomplete record"),
            Self::Corrupt => f.write_str("a record whose checksum does not match"),
            Self::TooLarge(len) => write!(f, "a record length of {len} bytes, over the maximum"),
        }
    }
}

/// Appends one record holding `value` as JSON to `out`.
pub fn encode<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_BYTES]);
    if let Err(e) = serde_json::to_writer(&mut *out, value) {
        out.truncate(start);
        return Err(e);
    }
    let body = &out[start + HEADER_BYTES..];
    let len = body.len() as u32;
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// Appends one record whose body is `body` (JSON already encoded, at most
/// [`MAX_RECORD_BYTES`]) to `out`.
pub fn frame(body: &[u8], out: &mut Vec<u8>) {
    debug_assert!(body.len() <= MAX_RECORD_BYTES as usize);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_be_bytes());
    out.extend_from_slice(body);
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads records from a segment's bytes.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    /// Where the next record starts (after the last good one).
    pub fn offset(&self) -> usize {
        self.at
    }

    /// The next record's body, `Ok(None)` at a clean end, or the damage that stops reading
    /// (the reader stays at the damaged record's offset).
    pub fn next_record(&mut self) -> Result<Option<&'a [u8]>, Damage> {
        let rest = &self.bytes[self.at..];
        if rest.is_empty() {
            return Ok(None);
        }
        let Some(header) = rest.get(..HEADER_BYTES) else { return Err(Damage::Torn) };
        let len = be_u32(header);
        let crc = be_u32(&header[4..]);
        if len == 0 {
            // The end of the written records: zeros (preallocated space) to the end.
            return if rest.iter().all(|&b| b == 0) { Ok(None) } else { Err(Damage::Torn) };
        }
        if len > MAX_RECORD_BYTES {
            return Err(Damage::TooLarge(len));
        }
        let Some(body) = rest.get(HEADER_BYTES..HEADER_BYTES + len as usize) else { return Err(Damage::Torn) };
        if crc32fast::hash(body) != crc {
            return Err(Damage::Corrupt);
        }
        self.at += HEADER_BYTES + len as usize;
        Ok(Some(body))
    }
}

/// Where a search for a valid record ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A valid record starts at this offset.
    At(usize),
    /// No valid record starts anywhere in the bytes searched.
    Nowhere,
    /// The search spent its checksum budget on candidates that failed, and stopped at this
    /// offset without an answer (only bytes crafted to look like records get here).
    GaveUp(usize),
}

/// The body of the valid record at `at`, if one starts there. The cheap tests come first
/// (a length from [`MIN_RECORD_BYTES`] to [`MAX_RECORD_BYTES`] that fits, a body that opens
/// with `{` and closes with `}` as every record's JSON object does); the checksum last.
/// `Err(len)` is a candidate that passed the cheap tests and failed its checksum.
fn record_at(bytes: &[u8], at: usize) -> Result<&[u8], Option<usize>> {
    let Some(header) = bytes.get(at..at + HEADER_BYTES) else { return Err(None) };
    let len = be_u32(header);
    if !(MIN_RECORD_BYTES..=MAX_RECORD_BYTES).contains(&len) {
        return Err(None);
    }
    let Some(body) = bytes.get(at + HEADER_BYTES..at + HEADER_BYTES + len as usize) else { return Err(None) };
    if body[0] != b'{' || body[body.len() - 1] != b'}' {
        return Err(None);
    }
    if crc32fast::hash(body) != be_u32(&header[4..]) {
        return Err(Some(body.len()));
    }
    Ok(body)
}

/// The first offset at or after `from` where a valid record starts. Its work is bounded:
/// runs of zeros are skipped whole, and checksums of failed candidates may cost at most
/// [`MAX_SCAN_CHECKSUM_BYTES_PER_BYTE`] per byte searched (see [`Next::GaveUp`]).
pub fn find_record(bytes: &[u8], from: usize) -> Next {
    let mut budget = (bytes.len().saturating_sub(from) as u64).saturating_mul(MAX_SCAN_CHECKSUM_BYTES_PER_BYTE);
    let mut at = from;
    while at + HEADER_BYTES < bytes.len() {
        // A length is never zero, so one of its four bytes is not: skip zeros up to three
        // bytes before the next non-zero byte.
        match bytes[at..].iter().position(|&b| b != 0) {
            None => return Next::Nowhere,
            Some(zeros) if zeros > 3 => {
                at += zeros - 3;
                continue;
            }
            Some(_) => {}
        }
        match record_at(bytes, at) {
            Ok(_) => return Next::At(at),
            Err(Some(cost)) => {
                if cost as u64 > budget {
                    return Next::GaveUp(at);
                }
                budget -= cost as u64;
            }
            Err(None) => {}
        }
        at += 1;
    }
    Next::Nowhere
}

/// One stretch of a segment, in order (see [`survey`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A valid record: its header starts at `offset`.
    Record {
        /// Where its header starts.
        offset: usize,
        /// Its body.
        body: &'a [u8],
    },
    /// Bytes from `offset` to `end` that hold no valid record. `end` is where the next valid
    /// record starts, or the end of the segment when none follows (or the search gave up).
    Damaged {
        /// Where reading stopped.
        offset: usize,
        /// Where the next valid record starts, or the segment's length.
        end: usize,
        /// What is wrong at `offset`.
        damage: Damage,
        /// The search for a valid record after it gave up at this offset (see
        /// [`Next::GaveUp`]): whether one follows is unknown.
        gave_up: Option<usize>,
    },
    /// Zeros from `offset` to the end: the unwritten (preallocated) rest.
    Zeros {
        /// Where they start.
        offset: usize,
    },
}

impl Piece<'_> {
    /// Whether this damage is followed by a valid record in the same segment (or may be:
    /// the search gave up). Such damage is corruption wherever it lies.
    pub fn has_records_after(&self, segment_len: usize) -> bool {
        matches!(self, Piece::Damaged { end, gave_up, .. } if *end < segment_len || gave_up.is_some())
    }
}

/// Every valid record of a segment, every damaged spot between them, and the zeros after
/// them, in order.
pub fn survey(bytes: &[u8]) -> Survey<'_> {
    Survey { bytes, at: 0, done: false }
}

/// The iterator [`survey`] returns.
#[derive(Debug)]
pub struct Survey<'a> {
    bytes: &'a [u8],
    at: usize,
    done: bool,
}

impl<'a> Iterator for Survey<'a> {
    type Item = Piece<'a>;

    fn next(&mut self) -> Option<Piece<'a>> {
        if self.done || self.at >= self.bytes.len() {
            return None;
        }
        let offset = self.at;
        let mut reader = Reader { bytes: self.bytes, at: offset };
        match reader.next_record() {
            Ok(Some(body)) => {
                self.at = reader.at;
                Some(Piece::Record { offset, body })
            }
            Ok(None) => {
                self.done = true;
                Some(Piece::Zeros { offset })
            }
            Err(damage) => {
                let (end, gave_up) = match find_record(self.bytes, offset + 1) {
                    Next::At(next) => (next, None),
                    Next::Nowhere => (self.bytes.len(), None),
                    Next::GaveUp(at) => (self.bytes.len(), Some(at)),
                };
                self.at = end;
                self.done = end >= self.bytes.len();
                Some(Piece::Damaged { offset, end, damage, gave_up })
            }
        }
    }
}

/// Frames a snapshot's body: the bytes to write before it.
pub fn snapshot_header(body: &[u8]) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut header = [0; SNAPSHOT_HEADER_BYTES];
    header[..8].copy_from_slice(SNAPSHOT_MAGIC);
    header[8..16].copy_from_slice(&(body.len() as u64).to_be_bytes());
    header[16..].copy_from_slice(&crc32fast::hash(body).to_be_bytes());
    header
}

/// A snapshot file's body, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotBody<'a> {
    /// The current format; its checksum matches.
    Checked(&'a [u8]),
    /// The previous format: the file is the JSON body alone, with no checksum (its first
    /// byte is `{`).
    Unchecked(&'a [u8]),
}

/// Why a snapshot file cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotDamage {
    /// It starts with neither the magic nor `{`.
    UnknownFormat,
    /// It starts with the magic but is shorter than a header.
    ShortHeader {
        /// Its length.
        len: u64,
    },
    /// It is shorter than its header says.
    Short {
        /// Bytes of body in the file.
        have: u64,
        /// Bytes of body the header announces.
        want: u64,
    },
    /// Bytes follow the body the header announces.
    TrailingBytes {
        /// Bytes of body the header announces.
        want: u64,
        /// How many bytes follow it.
        extra: u64,
    },
    /// Its checksum does not match its body.
    Checksum,
}

impl SnapshotDamage {
    /// The offset in the file where the damage shows.
    pub fn offset(&self) -> u64 {
        match self {
            Self::UnknownFormat | Self::Checksum => 0,
            Self::ShortHeader { len } => *len,
            Self::Short { have, .. } => SNAPSHOT_HEADER_BYTES as u64 + have,
            Self::TrailingBytes { want, .. } => SNAPSHOT_HEADER_BYTES as u64 + want,
        }
    }
}

impl fmt::Display for SnapshotDamage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnknownFormat => f.write_str("a snapshot in no known format (neither its magic nor JSON)"),
            Self::ShortHeader { len } => {
                write!(f, "a snapshot of {len} bytes, shorter than its {SNAPSHOT_HEADER_BYTES}-byte header")
            }
            Self::Short { have, want } => {
                write!(f, "a snapshot cut short ({have} of the {want} bytes its header announces)")
            }
            Self::TrailingBytes { extra, .. } => {
                write!(f, "a snapshot with {extra} bytes after the body its header announces")
            }
            Self::Checksum => f.write_str("a snapshot whose checksum does not match"),
        }
    }
}

/// Reads a snapshot file's bytes: the body, checked when the format carries a checksum.
pub fn read_snapshot(bytes: &[u8]) -> Result<SnapshotBody<'_>, SnapshotDamage> {
    if bytes.first() == Some(&b'{') {
        return Ok(SnapshotBody::Unchecked(bytes));
    }
    if !bytes.starts_with(SNAPSHOT_MAGIC) {
        return Err(SnapshotDamage::UnknownFormat);
    }
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(SnapshotDamage::ShortHeader { len: bytes.len() as u64 });
    }
    let want = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let crc = be_u32(&bytes[16..20]);
    let have = (bytes.len() - SNAPSHOT_HEADER_BYTES) as u64;
    if have < want {
        return Err(SnapshotDamage::Short { have, want });
    }
    if have > want {
        return Err(SnapshotDamage::TrailingBytes { want, extra: have - want });
    }
    let body = &bytes[SNAPSHOT_HEADER_BYTES..];
    if crc32fast::hash(body) != crc {
        return Err(SnapshotDamage::Checksum);
    }
    Ok(SnapshotBody::Checked(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(n: usize) -> (Vec<u8>, Vec<usize>) {
        let mut out = Vec::new();
        let mut ends = Vec::new();
        for i in 0..n {
            encode(&serde_json::json!({"record": i, "pad": "x".repeat(i * 3)}), &mut out).unwrap();
            ends.push(out.len());
        }
        (out, ends)
    }

    fn good_records(bytes: &[u8]) -> (usize, Option<Damage>) {
        let mut r = Reader::new(bytes);
        let mut n = 0;
        loop {
            match r.next_record() {
                Ok(Some(body)) => {
                    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
                    assert_eq!(v["record"], n);
                    n += 1;
                }
                Ok(None) => return (n, None),
                Err(d) => return (n, Some(d)),
            }
        }
    }

    #[test]
    fn a_clean_journal_reads_whole() {
        let (bytes, _) = journal(20);
        assert_eq!(good_records(&bytes), (20, None));
    }

    #[test]
    fn a_journal_cut_at_every_byte_of_its_last_record_keeps_every_record_before_it() {
        let (bytes, ends) = journal(10);
        let last_start = ends[8];
        for cut in last_start + 1..bytes.len() {
            let (n, damage) = good_records(&bytes[..cut]);
            assert_eq!((n, damage), (9, Some(Damage::Torn)), "cut at {cut}");
        }
        assert_eq!(good_records(&bytes[..last_start]), (9, None), "cut exactly between records");
    }

    #[test]
    fn a_flipped_bit_anywhere_stops_at_that_record() {
        let (bytes, ends) = journal(6);
        for byte in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut damaged = bytes.clone();
                damaged[byte] ^= 1 << bit;
                let record = ends.iter().position(|&end| byte < end).unwrap();
                let (n, damage) = good_records(&damaged);
                assert_eq!(n, record, "flip at byte {byte} bit {bit}");
                assert!(damage.is_some(), "flip at byte {byte} bit {bit} went unnoticed");
            }
        }
    }

    #[test]
    fn zeros_after_the_records_are_a_clean_end_but_anything_past_them_is_torn() {
        let (mut bytes, ends) = journal(4);
        bytes.resize(bytes.len() + 4096, 0);
        assert_eq!(good_records(&bytes), (4, None));
        let mut r = Reader::new(&bytes);
        while let Ok(Some(_)) = r.next_record() {}
        assert_eq!(r.offset(), ends[3], "the offset stops where the zeros start");
        // A write whose header never reached the disk but whose later bytes did.
        let last = bytes.len() - 1;
        bytes[last] = b'}';
        assert_eq!(good_records(&bytes), (4, Some(Damage::Torn)));
        // Fewer bytes than a header are torn, zeros or not (the writer always leaves room for
        // a whole zero header after its records).
        let (mut short, _) = journal(2);
        short.extend_from_slice(&[0; 3]);
        assert_eq!(good_records(&short), (2, Some(Damage::Torn)));
    }

    #[test]
    fn an_absurd_length_is_refused_before_reading_on() {
        let mut bytes = vec![0xff; HEADER_BYTES];
        bytes.extend_from_slice(b"{}");
        assert_eq!(Reader::new(&bytes).next_record(), Err(Damage::TooLarge(u32::MAX)));
    }

    /// The pieces of `bytes` as (kind, offset, end) for short assertions.
    fn pieces(bytes: &[u8]) -> Vec<(&'static str, usize, usize)> {
        survey(bytes)
            .map(|p| match p {
                Piece::Record { offset, body } => ("record", offset, offset + HEADER_BYTES + body.len()),
                Piece::Damaged { offset, end, .. } => ("damaged", offset, end),
                Piece::Zeros { offset } => ("zeros", offset, bytes.len()),
            })
            .collect()
    }

    #[test]
    fn survey_clean_segment_lists_every_record_then_the_zeros() {
        let (mut bytes, ends) = journal(5);
        bytes.resize(bytes.len() + 100, 0);
        let mut want: Vec<_> = (0..5).map(|i| ("record", if i == 0 { 0 } else { ends[i - 1] }, ends[i])).collect();
        want.push(("zeros", ends[4], bytes.len()));
        assert_eq!(pieces(&bytes), want);
    }

    #[test]
    fn r12_survey_flipped_byte_before_the_last_record_finds_every_later_record() {
        let (mut clean, ends) = journal(6);
        clean.resize(clean.len() + 4096, 0);
        let starts: Vec<usize> = std::iter::once(0).chain(ends.iter().copied()).take(6).collect();
        for byte in 0..ends[5] {
            let mut damaged = clean.clone();
            damaged[byte] ^= 0x40;
            let hit = ends.iter().position(|&end| byte < end).unwrap();
            let got = pieces(&damaged);
            let damaged_at = got.iter().position(|p| p.0 == "damaged").expect("the flip is noticed");
            assert_eq!(got[damaged_at].1, starts[hit], "flip at {byte}: the damage starts at its record");
            let records_after: Vec<usize> =
                got[damaged_at + 1..].iter().filter(|p| p.0 == "record").map(|p| p.1).collect();
            assert_eq!(records_after, starts[hit + 1..].to_vec(), "flip at {byte}: every later record is found");
            let piece = survey(&damaged).nth(damaged_at).unwrap();
            assert_eq!(piece.has_records_after(damaged.len()), hit < 5, "flip at {byte}");
        }
    }

    #[test]
    fn r12_survey_partial_record_then_zeros_is_a_tail_with_nothing_after() {
        let (bytes, ends) = journal(4);
        for cut in ends[2] + 1..ends[3] {
            let mut torn = bytes[..cut].to_vec();
            torn.resize(cut + 4096, 0);
            let got = pieces(&torn);
            // (Written bytes that happen to be zeros read as the clean end.)
            let end = got.last().unwrap();
            assert!(end.1 == ends[2] && end.2 == torn.len() && end.0 != "record", "cut at {cut}: {got:?}");
            assert_eq!(got.iter().filter(|p| p.0 == "record").count(), 3, "cut at {cut}");
            let last = survey(&torn).last().unwrap();
            assert!(!last.has_records_after(torn.len()), "cut at {cut}");
        }
    }

    #[test]
    fn find_record_after_zeros_finds_its_exact_offset() {
        let (record, _) = journal(1);
        for zeros in [1, 2, 3, 4, 5, 1000] {
            let mut bytes = vec![0; zeros];
            bytes.extend_from_slice(&record);
            bytes.resize(bytes.len() + 64, 0);
            assert_eq!(find_record(&bytes, 0), Next::At(zeros), "{zeros} zeros first");
            assert_eq!(find_record(&bytes, zeros + 1), Next::Nowhere);
        }
    }

    #[test]
    fn r12_find_record_on_bytes_crafted_as_candidates_gives_up_within_its_budget() {
        // Every 16th byte starts a header whose length reaches the end, whose body opens
        // with `{` and closes with `}`, and whose checksum is wrong: each costs a checksum
        // of most of the buffer, quadratic without a budget.
        let len = 256 * 1024;
        let mut bytes = vec![b'{'; len];
        bytes[len - 1] = b'}';
        for at in (0..len - 64).step_by(16) {
            bytes[at..at + 4].copy_from_slice(&((len - at - HEADER_BYTES) as u32).to_be_bytes());
            bytes[at + 4..at + 8].copy_from_slice(&[0; 4]);
        }
        match find_record(&bytes, 0) {
            Next::GaveUp(at) => assert!(at < len / 2, "gave up late, at {at}"),
            other => panic!("expected to give up, got {other:?}"),
        }
    }

    #[test]
    fn snapshot_framed_body_reads_back_checked() {
        let body = br#"{"version":2,"state":[1,2,3]}"#;
        let mut file = snapshot_header(body).to_vec();
        file.extend_from_slice(body);
        assert_eq!(read_snapshot(&file), Ok(SnapshotBody::Checked(&body[..])));
        assert_eq!(read_snapshot(body), Ok(SnapshotBody::Unchecked(&body[..])), "the previous format");
    }

    #[test]
    fn r12_snapshot_any_flipped_bit_or_cut_is_refused() {
        let body = br#"{"version":2,"state":"0123456789"}"#;
        let mut file = snapshot_header(body).to_vec();
        file.extend_from_slice(body);
        for byte in 0..file.len() {
            for bit in 0..8 {
                let mut damaged = file.clone();
                damaged[byte] ^= 1 << bit;
                assert!(read_snapshot(&damaged).is_err(), "flip of bit {bit} in byte {byte} went unnoticed");
            }
        }
        for cut in 0..file.len() {
            assert!(read_snapshot(&file[..cut]).is_err(), "cut at {cut} went unnoticed");
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(read_snapshot(&longer), Err(SnapshotDamage::TrailingBytes { want: body.len() as u64, extra: 1 }));
        let mut checksum = file.clone();
        *checksum.last_mut().unwrap() ^= 1;
        assert_eq!(read_snapshot(&checksum), Err(SnapshotDamage::Checksum));
    }
}
