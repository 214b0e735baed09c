//! The journal: every change to the keeper's state, as the inputs that caused it, so a
//! replay through the same pure [`Service`] rebuilds exactly the same state.
//!
//! - [`codec`] frames records (`length | crc32 | JSON`) and snapshots, and tells a torn
//!   tail (cut at recovery) from corruption (refused). Pure.
//! - [`Record`] lists what is journaled, [`decode_record`] and [`decode_snapshot`] read
//!   them, and [`replay`] applies one record ([`replay_answering`] also keeps what the
//!   service sends meanwhile, for tests). Pure.
//! - [`store`] owns the files: segments, snapshots, group commit, recovery.
//! - [`inspect`] reads a journal directory without changing it (`leasehold journal verify`)
//!   and copies its valid records into a new one (`leasehold journal salvage`).
//!
//! `store` and `inspect` are the only parts that touch files.
//!
//! What is journaled: every message from a worker that may change state (reads are not),
//! every expiry run, every channel closing, the limits in force, presence resets after a
//! restart, and fence reservations. Each input carries the time and entropy it was handled
//! with, so a replay takes the same decisions (lottery draws included) whatever the clock
//! says now.

pub mod codec;
pub mod inspect;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::core::lock::{Moment, TableLimits};
use crate::core::names::Ticket;
use crate::ipc::message::ToKeeper;
use crate::service::{LinkId, Outbox, OutboxSettings, Service, ServiceState};

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
    /// Format version.
    pub version: u32,
    /// The highest fence reservation so far.
    pub fences_reserved: u64,
    /// The service.
    pub service: ServiceState,
}

/// The snapshot format this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Reads one record's body.
pub fn decode_record(body: &[u8]) -> Result<Record, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

/// Reads a snapshot's body (of this build's version).
pub fn decode_snapshot(body: &[u8]) -> Result<Snapshot, String> {
    let snapshot: Snapshot = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if snapshot.version != SNAPSHOT_VERSION {
        return Err(format!("format version {} is not {SNAPSHOT_VERSION}", snapshot.version));
    }
    Ok(snapshot)
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
        Record::Configure { limits, max_wait_ms, outbox } => {
            service.reconfigure(limits, max_wait_ms);
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
    }
}

#[cfg(test)]
mod tests;
