//! The journal's record framing, pure: `length (u32 BE) | crc32 (u32 BE) | JSON`.
//!
//! [`Reader`] walks a segment's bytes and stops at the first record that is torn (its
//! header or body runs past the end), too large to be real, or corrupt (its checksum does
//! not match): everything before it is good, nothing after it can be trusted.
//!
//! Segments are preallocated, so the written records are followed by zeros. No record is
//! empty (a body is JSON), so a zero length marks the end of what was written; the zeros
//! must then run to the end, or a write was torn.

use std::fmt;

use serde::Serialize;

/// Bytes before each record's body.
pub const HEADER_BYTES: usize = 8;
/// Largest record body (a data write is at most `max_data_bytes`, itself capped at 64 MiB).
pub const MAX_RECORD_BYTES: u32 = 128 * 1024 * 1024;

/// Why reading stopped before the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    /// The last record is incomplete (a crash in the middle of a write), or bytes follow
    /// the end of the written records.
    Torn,
    /// A record's checksum does not match its body.
    Corrupt,
    /// A length no writer could have produced.
    TooLarge(u32),
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Torn => f.write_str("an incomplete record (torn write)"),
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
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let crc = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
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
}
