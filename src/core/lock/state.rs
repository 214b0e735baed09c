//! Export and import of the whole table as plain serde data, for snapshots and for tests.
//!
//! `export` writes locks in name order and everything else in the table's own order, so
//! `import(export(t))` is the same table: same replies and outputs for any later history.
//! `import` trusts nothing: it checks every rule on what locks hold and refuses a state
//! that breaks one (the indexes it builds itself).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{make_extra, DataMap, Holders, Lease, Lock, LockTable, Queue, QueueKind, TableLimits, Waiter};
use crate::core::error::CoreError;
use crate::core::names::{CallbackUrl, DataKey, LockName, Owner, Ticket, UserId};

/// The whole table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableState {
    /// The fence the next grant takes.
    pub next_fence: u64,
    /// Every lock, in name order.
    pub locks: Vec<LockState>,
}

/// One lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockState {
    /// Its name.
    pub name: LockName,
    /// Permit count.
    pub limit: u32,
    /// Queue discipline.
    pub queue: QueueKind,
    /// Holders, in the table's order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<LeaseState>,
    /// Waiters, in queue order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiters: Vec<WaiterState>,
    /// Lottery: the drawn waiter that goes in next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<Ticket>,
    /// Data entries (JSON text).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<DataKey, String>,
}

/// One lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseState {
    /// The holder's ticket.
    pub ticket: Ticket,
    /// Fencing token.
    pub fence: u64,
    /// Expiry (wall clock, ms).
    pub expires_at_ms: u64,
    /// TTL used on renew and claim.
    pub ttl_ms: u64,
    /// Permits held.
    pub weight: u32,
    /// Whether the holder has shown up since admission.
    pub claimed: bool,
    /// Label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackUrl>,
    /// Who the lease is for (from journal format 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
}

/// One waiter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaiterState {
    /// Its ticket.
    pub ticket: Ticket,
    /// Permits wanted.
    pub weight: u32,
    /// Lease TTL once admitted.
    pub ttl_ms: u64,
    /// Open waiting requests and streams.
    pub watchers: u32,
    /// When it is dropped if still unwatched; absent while watched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub absent_at_ms: Option<u64>,
    /// Label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
    /// Webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<CallbackUrl>,
    /// Who the place is for (from journal format 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
    /// With a callback: present until then, seen or not (from journal format 4; absent:
    /// not at all, as in the formats before).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_until_ms: Option<u64>,
}

fn invalid(reason: String) -> CoreError {
    CoreError::InvalidState { reason }
}

impl LockTable {
    /// The whole table as plain data.
    pub fn export(&self) -> TableState {
        let mut locks: Vec<LockState> = self.slots.iter().flatten().map(export_lock).collect();
        locks.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        TableState { next_fence: self.next_fence, locks }
    }

    /// Rebuilds a table from `state`, refusing any state that breaks an invariant.
    ///
    /// Everything the table keeps is copied, so the caller can free the parsed state as a
    /// whole afterwards: its pages then go back to the allocator (and the kernel) intact,
    /// instead of each staying pinned by a few strings that moved into the table.
    pub fn import(state: &TableState, limits: TableLimits, hash_seed: u64) -> Result<Self, CoreError> {
        let mut table = LockTable::new(limits, hash_seed);
        table.next_fence = state.next_fence.max(1);
        table.reserve_locks(state.locks.len());
        // Built in one go at the end: a sorted bulk load, not a million random inserts.
        let mut deadlines = Vec::new();
        for ls in &state.locks {
            let (hash, found) = table.find_hashed(ls.name.as_str());
            if found.is_some() {
                return Err(invalid(format!("lock {:?} appears twice", ls.name.as_str())));
            }
            if ls.limit == 0 {
                return Err(invalid(format!("lock {:?} has limit 0", ls.name.as_str())));
            }
            let id = table.create(ls.name.clone(), hash, ls.limit, ls.queue);
            let mut holders = Holders::with_capacity(ls.holders.len());
            let mut used: u64 = 0;
            for h in &ls.holders {
                used += u64::from(h.weight);
                deadlines.push((h.expires_at_ms, h.ticket, id));
                holders.push(Lease {
                    ticket: h.ticket,
                    fence: h.fence,
                    expires_at_ms: h.expires_at_ms,
                    ttl_ms: h.ttl_ms,
                    weight: h.weight,
                    claimed: h.claimed,
                    extra: make_extra(h.owner.clone(), h.callback.clone(), h.user.clone(), 0),
                });
            }
            let mut waiters = VecDeque::with_capacity(ls.waiters.len());
            for w in &ls.waiters {
                if w.wait_until_ms.is_some() && w.callback.is_none() {
                    return Err(invalid("a waiter without a callback has a wait end".into()));
                }
                let absent_at_ms = match (w.watchers, w.absent_at_ms) {
                    (0, Some(at)) => {
                        deadlines.push((at, w.ticket, id));
                        at
                    }
                    (0, None) => return Err(invalid("an unwatched waiter has no absence deadline".into())),
                    (_, None) => 0,
                    (_, Some(_)) => return Err(invalid("a watched waiter has an absence deadline".into())),
                };
                waiters.push_back(Waiter {
                    ticket: w.ticket,
                    ttl_ms: w.ttl_ms,
                    absent_at_ms,
                    weight: w.weight,
                    watchers: w.watchers,
                    extra: make_extra(
                        w.owner.clone(),
                        w.callback.clone(),
                        w.user.clone(),
                        w.wait_until_ms.unwrap_or(0),
                    ),
                });
            }
            let mut data = DataMap::default();
            for (key, value) in &ls.data {
                data.bytes = data.bytes.saturating_add((key.as_str().len() + value.len()) as u32);
                data.entries.insert(key.clone(), value.as_str().into());
            }
            table.data_bytes += u64::from(data.bytes);
            table.holders += holders.len() as u64;
            table.waiters += waiters.len() as u64;
            let lock = table.lock_mut(id);
            lock.used = u32::try_from(used).map_err(|_| invalid("holders' weights overflow".into()))?;
            lock.holders = holders;
            if !waiters.is_empty() {
                lock.queue = Some(Box::new(Queue { waiters, candidate: ls.candidate }));
            } else if ls.candidate.is_some() {
                return Err(invalid("a lottery candidate without waiters".into()));
            }
            if !data.entries.is_empty() {
                lock.data = Some(Box::new(data));
            }
        }
        table.deadlines = deadlines.into_iter().collect();
        // The indexes are built from the locks; what the locks hold is the snapshot's word.
        table.check_contents().map_err(invalid)?;
        debug_assert_eq!(table.check_invariants(), Ok(()));
        Ok(table)
    }
}

fn export_lock(lock: &Lock) -> LockState {
    let split = |extra: &super::Extra| (extra.owner.clone(), extra.callback().cloned(), extra.user().cloned());
    LockState {
        name: lock.name.clone(),
        limit: lock.limit,
        queue: lock.kind,
        holders: lock
            .holders
            .iter()
            .map(|l| {
                let (owner, callback, user) = split(&l.extra);
                LeaseState {
                    ticket: l.ticket,
                    fence: l.fence,
                    expires_at_ms: l.expires_at_ms,
                    ttl_ms: l.ttl_ms,
                    weight: l.weight,
                    claimed: l.claimed,
                    owner,
                    callback,
                    user,
                }
            })
            .collect(),
        waiters: lock
            .queue
            .iter()
            .flat_map(|q| q.waiters.iter())
            .map(|w| {
                let (owner, callback, user) = split(&w.extra);
                WaiterState {
                    ticket: w.ticket,
                    weight: w.weight,
                    ttl_ms: w.ttl_ms,
                    watchers: w.watchers,
                    absent_at_ms: (w.watchers == 0).then_some(w.absent_at_ms),
                    owner,
                    callback,
                    user,
                    wait_until_ms: Some(w.extra.wait_until_ms()).filter(|&at| at > 0),
                }
            })
            .collect(),
        candidate: lock.queue.as_ref().and_then(|q| q.candidate),
        data: lock.data.iter().flat_map(|d| d.entries.iter()).map(|(k, v)| (k.clone(), v.to_string())).collect(),
    }
}
