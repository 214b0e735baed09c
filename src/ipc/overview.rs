//! The keeper's answer to `overview` (the dashboard's view of the whole server, docs/api.md
//! "Dashboard"): totals, the busiest locks, the waiting rooms and the outbox by state.
//! Bounded by construction: at most [`MAX_OVERVIEW_LOCKS`] busiest locks and
//! [`MAX_OVERVIEW_ROOMS`] rooms, each with at most [`MAX_OVERVIEW_HOLDERS`] holders, so the
//! frame and the dashboard's event stay small whatever the table holds.

use serde::{Deserialize, Serialize};

use super::message::LockInfo;

/// Most busiest locks an overview lists.
pub const MAX_OVERVIEW_LOCKS: u32 = 50;
/// Most waiting rooms an overview lists.
pub const MAX_OVERVIEW_ROOMS: usize = 64;
/// Most holders listed per lock (the lock's `used` says how many permits are held).
pub const MAX_OVERVIEW_HOLDERS: usize = 10;
pub use crate::core::names::ROOM_LOCK_PREFIX;

/// The server at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Overview {
    /// The keeper's clock at this answer (wall clock, ms).
    pub at_ms: u64,
    /// Locks in the table.
    pub locks: u64,
    /// Live leases.
    pub holders: u64,
    /// Queued waiters.
    pub waiters: u64,
    /// Open event streams (all workers).
    pub event_streams: u64,
    /// The busiest locks (most waiters, then most holders), busiest first.
    pub busiest: Vec<LockInfo>,
    /// The locks named `room:…`: every declared one (idle or not), then any other in the
    /// table, by name.
    pub rooms: Vec<LockInfo>,
    /// Outbox entries by state.
    pub outbox: OutboxCounts,
}

/// Outbox entries by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct OutboxCounts {
    /// Waiting for their time.
    pub pending: u64,
    /// With the courier.
    pub in_flight: u64,
    /// In the dead-letter list.
    pub failed: u64,
}
