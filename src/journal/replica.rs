//! A cluster node's local snapshot (docs/cluster.md, "Snapshots and a log kept small"): the
//! whole state of its replica at one position of the cluster's log, in one file of the
//! node's data directory, [`FILE_NAME`].
//!
//! The file is framed as a single node's snapshot is (`magic | length | crc32 | body`,
//! [`codec::snapshot_header`]); its body is one line of JSON saying where in which log it
//! stands ([`Position`]), a newline, then the snapshot's body exactly as a single node writes
//! it ([`Snapshot`], read through [`decode_snapshot`], so the journal format's rules hold
//! for it too). The same bytes travel over the peer link when a node fetches the leader's
//! snapshot, and are checked the same way on arrival.
//!
//! Encoding and decoding are pure; [`write`] and [`read`] are the thin part that touches
//! the file (written to a temporary name, synced, renamed, the directory synced: a crash
//! leaves the old snapshot or the new one, never half of one).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::codec::{self, SnapshotBody};
use super::store::StoreError;
use super::{decode_snapshot, FormatError, Snapshot};

/// The snapshot's file in a cluster node's data directory.
pub const FILE_NAME: &str = "cluster-snapshot.json";

/// Where in which log a snapshot stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// The last batch of the log it holds.
    pub seq: u64,
    /// That batch's time (the time of its last turn).
    pub at_ms: u64,
    /// The cluster's `prefix` in etcd: a snapshot of another cluster's log is not this one's.
    pub prefix: String,
}

/// A snapshot of a replica at a position of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSnapshot {
    /// Where it stands.
    pub position: Position,
    /// The state.
    pub snapshot: Snapshot,
}

/// The file's bytes for `snapshot` (header included).
pub fn encode(snapshot: &ReplicaSnapshot) -> Result<Vec<u8>, serde_json::Error> {
    let mut body = serde_json::to_vec(&snapshot.position)?;
    body.push(b'\n');
    serde_json::to_writer(&mut body, &snapshot.snapshot)?;
    let mut bytes = Vec::with_capacity(codec::SNAPSHOT_HEADER_BYTES + body.len());
    bytes.extend_from_slice(&codec::snapshot_header(&body));
    bytes.extend_from_slice(&body);
    Ok(bytes)
}

/// Just the position of a snapshot file's bytes (framing and checksum checked; the state is
/// not read).
pub fn position(bytes: &[u8]) -> Result<Position, String> {
    let (position, _) = split(bytes)?;
    Ok(position)
}

/// Reads a snapshot file's bytes: framing, checksum, position and state.
pub fn decode(bytes: &[u8]) -> Result<ReplicaSnapshot, FormatError> {
    let (position, state) = split(bytes).map_err(FormatError::Unreadable)?;
    let snapshot = decode_snapshot(state)?;
    Ok(ReplicaSnapshot { position, snapshot })
}

/// The position and the state's bytes.
fn split(bytes: &[u8]) -> Result<(Position, &[u8]), String> {
    let body = match codec::read_snapshot(bytes) {
        Ok(SnapshotBody::Checked(body)) => body,
        Ok(SnapshotBody::Unchecked(_)) => return Err("a cluster snapshot without its header".into()),
        Err(damage) => return Err(format!("{damage} (at byte {})", damage.offset())),
    };
    let line = body.iter().position(|&b| b == b'\n').ok_or("no position line")?;
    let position = serde_json::from_slice(&body[..line]).map_err(|e| format!("its position cannot be read ({e})"))?;
    Ok((position, &body[line + 1..]))
}

/// The snapshot's path in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Writes `bytes` (a whole snapshot file, as [`encode`] makes or a peer sent) as the
/// snapshot in `dir`, replacing the one there at once and for good.
pub fn write(dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let path = path(dir);
    let tmp = path.with_extension("json.tmp");
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, &path)).and_then(|()| File::open(dir)?.sync_all()) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// The snapshot in `dir`, if there is one. A damaged one, or one in a format this build
/// does not read, is an error: the node refuses to start rather than forget the state it
/// stands for.
pub fn read(dir: &Path) -> Result<Option<ReplicaSnapshot>, StoreError> {
    let path = path(dir);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StoreError::Io { what: format!("cannot read {}", path.display()), source }),
    };
    match decode(&bytes) {
        Ok(snapshot) => Ok(Some(snapshot)),
        Err(FormatError::Unreadable(reason)) => Err(StoreError::Snapshot { path, reason }),
        Err(error) => Err(StoreError::Format { path, error }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::lock::TableLimits;
    use crate::service::Service;

    fn sample(seq: u64) -> ReplicaSnapshot {
        let service = Service::new(TableLimits::default(), 60_000, 7);
        ReplicaSnapshot {
            position: Position { seq, at_ms: 1_700_000_000_000 + seq, prefix: "/leasehold".into() },
            snapshot: Snapshot::new(0, service.export()),
        }
    }

    #[test]
    fn a_snapshot_reads_back_as_written_and_its_position_alone_too() {
        let bytes = encode(&sample(42)).unwrap();
        assert_eq!(decode(&bytes).unwrap(), sample(42));
        assert_eq!(position(&bytes).unwrap(), sample(42).position);
    }

    #[test]
    fn a_damaged_or_cut_snapshot_is_refused() {
        let bytes = encode(&sample(9)).unwrap();
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x20;
        assert!(matches!(decode(&flipped), Err(FormatError::Unreadable(why)) if why.contains("checksum")));
        assert!(decode(&bytes[..bytes.len() - 1]).is_err(), "cut short");
        assert!(position(b"{\"seq\":1}").is_err(), "no header");
    }

    #[test]
    fn write_replaces_the_snapshot_and_read_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        write(dir.path(), &encode(&sample(1)).unwrap()).unwrap();
        write(dir.path(), &encode(&sample(2)).unwrap()).unwrap();
        assert_eq!(read(dir.path()).unwrap().map(|s| s.position.seq), Some(2));
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [FILE_NAME], "no temporary file is left");
        fs::write(path(dir.path()), b"garbage").unwrap();
        assert!(matches!(read(dir.path()), Err(StoreError::Snapshot { .. })));
    }
}
