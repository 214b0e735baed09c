//! What this binary is: the crate's version, and a build stamp that can be rewritten in a
//! copy of the binary after the build.
//!
//! The stamp is a static array of [`STAMP_BYTES`] bytes kept in the binary (`#[used]`): a
//! fixed marker, `LEASEHOLD-BUILD-STAMP:`, then the build id (`dev` as built), then NUL
//! bytes to the end. [`build`] reads it with a volatile read, so the value comes from the
//! bytes loaded from the file at run time, never from a constant the compiler folded in.
//! [`stamp`] finds the marker in a binary's bytes and writes another build id after it:
//! an operator (or a test) stamps a copy of the binary, and the two copies then report
//! different builds in `leasehold --version`, `GET /healthz` and the
//! `leasehold_build_info` metric. That is how a binary upgrade (SIGUSR2) shows which
//! binary serves.
//!
//! The marker's text is in the binary once, inside the stamp: nothing here uses it at run
//! time (the constant below is only read at compile time to build the stamp, and [`stamp`]
//! searches for the marker of the running program's own stamp), so the search finds
//! exactly one place in an unstamped or stamped binary. Error messages never spell it.
//!
//! No I/O: the one read of the stamp goes through `crate::sys::volatile`, the only unsafe
//! it needs; reading and writing binary files is the caller's.

/// The crate's version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The marker that starts the stamp. Only read at compile time, by [`initial_stamp`].
const MARKER: &[u8] = b"LEASEHOLD-BUILD-STAMP:";

/// Bytes of the whole stamp: the marker and room for a build id of [`MAX_BUILD_BYTES`] (42,
/// so that a full git commit id fits).
pub const STAMP_BYTES: usize = 64;

/// The longest build id a stamp holds.
pub const MAX_BUILD_BYTES: usize = STAMP_BYTES - MARKER.len();

/// The build id of a binary as built, before any stamping.
pub const DEFAULT_BUILD: &str = "dev";

/// Fills the stamp after the build id.
const FILLER: u8 = 0;

/// The stamp itself. Never read directly: only through [`read_stamp`].
#[used]
static BUILD_STAMP: [u8; STAMP_BYTES] = initial_stamp();

/// The stamp as built: marker, [`DEFAULT_BUILD`], filler.
const fn initial_stamp() -> [u8; STAMP_BYTES] {
    let mut stamp = [FILLER; STAMP_BYTES];
    let mut i = 0;
    while i < MARKER.len() {
        stamp[i] = MARKER[i];
        i += 1;
    }
    let build = DEFAULT_BUILD.as_bytes();
    let mut j = 0;
    while j < build.len() {
        stamp[MARKER.len() + j] = build[j];
        j += 1;
    }
    stamp
}

/// The stamp as loaded from this binary's file.
fn read_stamp() -> [u8; STAMP_BYTES] {
    crate::sys::volatile::read(&BUILD_STAMP)
}

/// The build id of a stamp: the bytes after the marker, up to the filler.
fn build_of(stamp: &[u8]) -> String {
    let id = stamp.get(MARKER.len()..).unwrap_or_default();
    let end = id.iter().position(|&b| b == FILLER).unwrap_or(id.len());
    String::from_utf8_lossy(&id[..end]).into_owned()
}

/// This binary's build id: `dev` as built, or whatever [`stamp`] wrote into its file.
pub fn build() -> String {
    build_of(&read_stamp())
}

/// Whether `build` may be stamped: 1 to [`MAX_BUILD_BYTES`] bytes of `A-Z a-z 0-9 . _ + -`
/// (a version, a git describe, a commit id), so that it needs no escaping in JSON, in a
/// metric label or on a terminal.
fn check_build(build: &str) -> Result<(), String> {
    if build.is_empty() {
        return Err("a build id cannot be empty".to_string());
    }
    if build.len() > MAX_BUILD_BYTES {
        return Err(format!("build id {build:?} is {} bytes; the stamp holds at most {MAX_BUILD_BYTES}", build.len()));
    }
    if let Some(c) = build.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))) {
        return Err(format!("build id {build:?} has {c:?}; only A-Z a-z 0-9 . _ + - are allowed"));
    }
    Ok(())
}

/// Writes `build` into the stamp found in `binary` (the bytes of a leasehold executable),
/// clearing what the old build id left. Refuses an invalid or too long build id (see
/// [`MAX_BUILD_BYTES`]), and bytes holding no stamp, more than one, or a stamp cut short;
/// `binary` is unchanged then.
pub fn stamp(binary: &mut [u8], build: &str) -> Result<(), String> {
    check_build(build)?;
    // The marker of this program's own stamp: see the module's header.
    let own = read_stamp();
    let marker = &own[..MARKER.len()];
    let mut found = binary.windows(marker.len()).enumerate().filter(|(_, w)| *w == marker).map(|(at, _)| at);
    let at = match (found.next(), found.next()) {
        (Some(at), None) => at,
        (None, _) => return Err("no build stamp found: not a leasehold binary".to_string()),
        (Some(first), Some(second)) => {
            return Err(format!("build stamps found at offsets {first} and {second}: refusing to guess which"))
        }
    };
    let Some(room) = binary.get_mut(at + MARKER.len()..at + STAMP_BYTES) else {
        return Err(format!("the build stamp at offset {at} is cut short"));
    };
    room.fill(FILLER);
    room[..build.len()].copy_from_slice(build.as_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic binary: bytes around a copy of this program's stamp; returns the stamp's
    /// offset.
    fn synthetic(stamps: usize) -> (Vec<u8>, usize) {
        let mut bytes = b"\x7fELF junk before".to_vec();
        let at = bytes.len();
        for _ in 0..stamps {
            bytes.extend_from_slice(&read_stamp());
            bytes.extend_from_slice(b" between ");
        }
        bytes.extend_from_slice(b"junk after");
        (bytes, at)
    }

    #[test]
    fn the_stamp_starts_with_the_marker_and_parses_to_the_default_build() {
        let stamp = read_stamp();
        assert_eq!(&stamp[..MARKER.len()], MARKER);
        assert_eq!(build(), DEFAULT_BUILD);
        assert_eq!(MAX_BUILD_BYTES, 42);
    }

    #[test]
    fn stamp_a_new_build_round_trips_and_clears_a_longer_old_one() {
        let (mut bytes, at) = synthetic(1);
        let before = bytes.clone();
        stamp(&mut bytes, "1.2.3-rc1+g0123abc").unwrap();
        assert_eq!(build_of(&bytes[at..at + STAMP_BYTES]), "1.2.3-rc1+g0123abc");
        stamp(&mut bytes, "new").unwrap();
        assert_eq!(build_of(&bytes[at..at + STAMP_BYTES]), "new");
        assert!(bytes[at + MARKER.len() + 3..at + STAMP_BYTES].iter().all(|&b| b == FILLER));
        // Nothing outside the stamp's room changed.
        assert_eq!(bytes.len(), before.len());
        assert_eq!(bytes[..at + MARKER.len()], before[..at + MARKER.len()]);
        assert_eq!(bytes[at + STAMP_BYTES..], before[at + STAMP_BYTES..]);
        // Stamped back to what it was built with: the same bytes.
        stamp(&mut bytes, DEFAULT_BUILD).unwrap();
        assert_eq!(bytes, before);
    }

    #[test]
    fn stamp_takes_a_build_id_that_fills_the_room_and_refuses_one_byte_more() {
        let (mut bytes, at) = synthetic(1);
        let full = "a".repeat(MAX_BUILD_BYTES);
        stamp(&mut bytes, &full).unwrap();
        assert_eq!(build_of(&bytes[at..at + STAMP_BYTES]), full);
        let before = bytes.clone();
        let err = stamp(&mut bytes, &"b".repeat(MAX_BUILD_BYTES + 1)).unwrap_err();
        assert!(err.contains("at most 42"), "{err}");
        assert_eq!(bytes, before, "a refused stamp changes nothing");
    }

    #[test]
    fn stamp_refuses_an_empty_or_unsafe_build_id() {
        let (mut bytes, _) = synthetic(1);
        let before = bytes.clone();
        for bad in ["", "two words", "quote\"d", "back\\slash", "new\nline", "nul\0", "é"] {
            assert!(stamp(&mut bytes, bad).is_err(), "{bad:?} was taken");
        }
        assert_eq!(bytes, before);
    }

    #[test]
    fn stamp_refuses_bytes_without_exactly_one_whole_stamp() {
        let mut none = b"no stamp in here at all".to_vec();
        assert!(stamp(&mut none, "new").unwrap_err().contains("no build stamp"));
        let (mut two, _) = synthetic(2);
        let before = two.clone();
        assert!(stamp(&mut two, "new").unwrap_err().contains("refusing to guess"));
        assert_eq!(two, before);
        // A stamp cut off by the end of the file.
        let (whole, at) = synthetic(1);
        let mut cut = whole[..at + STAMP_BYTES - 1].to_vec();
        assert!(stamp(&mut cut, "new").unwrap_err().contains("cut short"));
    }

    #[test]
    fn build_of_stops_at_the_filler_and_reads_odd_bytes_lossily() {
        let mut stamp = initial_stamp();
        assert_eq!(build_of(&stamp), "dev");
        stamp[MARKER.len()..].fill(FILLER);
        assert_eq!(build_of(&stamp), "");
        stamp[MARKER.len()..].fill(b'x');
        assert_eq!(build_of(&stamp), "x".repeat(MAX_BUILD_BYTES));
        stamp[MARKER.len()] = 0xff;
        assert!(build_of(&stamp).starts_with('\u{fffd}'));
    }
}
