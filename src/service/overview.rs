//! The keeper's `overview` (the dashboard's view, docs/api.md "Dashboard"): totals from the
//! table, the busiest locks, the waiting rooms and the outbox by state, each list bounded
//! ([`crate::ipc::overview`]). A read: it changes nothing and is never journaled.

use super::{lock_info, Service};
use crate::core::lock::LockView;
use crate::ipc::message::LockInfo;
use crate::ipc::overview::{
    OutboxCounts, Overview, MAX_OVERVIEW_HOLDERS, MAX_OVERVIEW_LOCKS, MAX_OVERVIEW_ROOMS, ROOM_LOCK_PREFIX,
};

impl Service {
    /// The server at a glance at `now_ms`, with up to `busiest` of the busiest locks.
    pub(super) fn overview(&self, busiest: u32, now_ms: u64) -> Overview {
        let shown = |view: LockView| {
            let mut info = lock_info(view, now_ms);
            info.holders.truncate(MAX_OVERVIEW_HOLDERS);
            info
        };
        let stats = self.table.stats();
        let busiest = busiest.min(MAX_OVERVIEW_LOCKS) as usize;
        // Rooms: every declared `room:` lock, in the table or not (an idle room is not
        // there), then undeclared ones the table has, by name.
        let mut rooms: Vec<LockInfo> = Vec::new();
        for d in &self.table.limits().declared {
            let Some(name) = d.name.as_ref().filter(|n| n.as_str().starts_with(ROOM_LOCK_PREFIX)) else { continue };
            if rooms.len() >= MAX_OVERVIEW_ROOMS {
                break;
            }
            rooms.push(match self.table.lock_view(name.as_str()) {
                Some(view) => shown(view),
                None => LockInfo {
                    name: name.clone(),
                    kind: d.kind,
                    limit: d.limit,
                    queue: d.queue,
                    used: 0,
                    holders: Vec::new(),
                    queue_length: 0,
                    data_keys: 0,
                    declared: Some(d.clone()),
                },
            });
        }
        for view in self.table.list(ROOM_LOCK_PREFIX, None, MAX_OVERVIEW_ROOMS) {
            if rooms.len() >= MAX_OVERVIEW_ROOMS {
                break;
            }
            if !rooms.iter().any(|r| r.name == view.name) {
                rooms.push(shown(view));
            }
        }
        rooms.sort_by(|a, b| a.name.cmp(&b.name));
        let outbox = self.calls.stats();
        Overview {
            at_ms: now_ms,
            locks: stats.locks,
            holders: stats.holders,
            waiters: stats.waiters,
            event_streams: self.stream_count,
            busiest: self.table.busiest(busiest).into_iter().map(shown).collect(),
            rooms,
            outbox: OutboxCounts { pending: outbox.pending, in_flight: outbox.in_flight, failed: outbox.failed },
        }
    }
}
