//! Export and import of the whole table as plain serde data, for snapshots and for tests.
//!
//! `export` writes locks in name order and everything else in the table's own order, so
//! `import(export(t))` is the same table: same replies and outputs for any later history.
//! `import` trusts nothing: it checks every rule on what locks hold and refuses a state
//! that breaks one (the indexes it builds itself).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::{
    make_extra, rw_mode, rw_weight, Admit, DataMap, Holders, Lease, Lock, LockKind, LockMode, LockTable, Queue,
    QueueKind, TableLimits, Waiter, RW_LIMIT, TIMER,
};
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
    /// The admission buckets that outlive their locks: when each is full again, µs (from
    /// journal format 4).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub admit_buckets: BTreeMap<LockName, u64>,
}

/// One lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockState {
    /// Its name.
    pub name: LockName,
    /// Semaphore or read/write lock (absent: a semaphore, as in every format before 4).
    #[serde(default, skip_serializing_if = "LockKind::is_semaphore")]
    pub kind: LockKind,
    /// Permit count; 0 for a read/write lock, which has none.
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
    /// A lock with an admission rate: when its bucket is full again, µs (from journal
    /// format 4).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admit_tat_us: Option<u64>,
    /// When its admission timer fires (a token is due, or the bucket is full), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admit_timer_ms: Option<u64>,
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
    /// Permits held (1 in a read/write lock).
    pub weight: u32,
    /// Whether the holder has shown up since admission.
    pub claimed: bool,
    /// A read/write lock's lease: shared or exclusive (absent in a semaphore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LockMode>,
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
    /// Permits wanted (1 in a read/write lock).
    pub weight: u32,
    /// A read/write lock's waiter: shared or exclusive (absent in a semaphore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LockMode>,
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

/// The table's weight for an exported lease or waiter: a read/write lock's needs a mode and
/// weight 1; a semaphore's has no mode.
fn weight_of(lock: &LockState, weight: u32, mode: Option<LockMode>) -> Result<u32, CoreError> {
    let name = lock.name.as_str();
    match (lock.kind, mode) {
        (LockKind::Semaphore, None) => Ok(weight),
        (LockKind::Rw, Some(mode)) if weight == 1 => Ok(rw_weight(mode)),
        (LockKind::Semaphore, Some(_)) => Err(invalid(format!("lock {name:?} is a semaphore but a lease has a mode"))),
        (LockKind::Rw, _) => {
            Err(invalid(format!("lock {name:?} is a read/write lock: every lease needs a mode and weight 1")))
        }
    }
}

impl LockTable {
    /// The whole table as plain data.
    pub fn export(&self) -> TableState {
        let mut locks: Vec<LockState> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(id, l)| Some(export_lock(l.as_ref()?, self.admits.get(&(id as super::LockId)))))
            .collect();
        locks.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        TableState { next_fence: self.next_fence, locks, admit_buckets: self.buckets.clone() }
    }

    /// Rebuilds a table from `state`, refusing any state that breaks an invariant.
    ///
    /// Everything the table keeps is copied, so the caller can free the parsed state as a
    /// whole afterwards: its pages then go back to the allocator (and the kernel) intact,
    /// instead of each staying pinned by a few strings that moved into the table.
    pub fn import(state: &TableState, limits: TableLimits, hash_seed: u64) -> Result<Self, CoreError> {
        let mut import = TableImport::new(limits, hash_seed, state.next_fence, state.locks.len());
        for lock in &state.locks {
            import.add(lock)?;
        }
        import.finish(&state.admit_buckets)
    }
}

/// [`LockTable::import`] one lock at a time, so a snapshot can be loaded as it is read,
/// without the whole parsed state beside the table. The same checks, in the same order.
#[derive(Debug)]
pub struct TableImport {
    table: LockTable,
    /// Built in one go at the end: a sorted bulk load, not a million random inserts.
    deadlines: Vec<(u64, Ticket, super::LockId)>,
}

impl TableImport {
    /// An empty table with these limits, room for `locks` locks, and `next_fence`.
    pub fn new(limits: TableLimits, hash_seed: u64, next_fence: u64, locks: usize) -> Self {
        let mut table = LockTable::new(limits, hash_seed);
        table.next_fence = next_fence.max(1);
        table.reserve_locks(locks);
        Self { table, deadlines: Vec::new() }
    }

    /// Adds one lock (refused if it breaks a rule on what a lock holds, or is there already).
    pub fn add(&mut self, ls: &LockState) -> Result<(), CoreError> {
        let (hash, found) = self.table.find_hashed(ls.name.as_str());
        if found.is_some() {
            return Err(invalid(format!("lock {:?} appears twice", ls.name.as_str())));
        }
        let rw = ls.kind == LockKind::Rw;
        if rw && (ls.limit != 0 || ls.queue != QueueKind::Fifo) {
            return Err(invalid(format!("read/write lock {:?} has a limit or a lottery queue", ls.name.as_str())));
        }
        if !rw && ls.limit == 0 {
            return Err(invalid(format!("lock {:?} has limit 0", ls.name.as_str())));
        }
        let limit = if rw { RW_LIMIT } else { ls.limit };
        let decl = self.table.declared.find(ls.name.as_str());
        let id = self.table.create(ls.name.clone(), hash, limit, ls.queue, rw, decl);
        // The bucket of a lock whose declaration (in these limits) has no rate is moot.
        if let (Some(tat_us), true) = (ls.admit_tat_us, self.table.rate(id).is_some()) {
            let timer_ms = ls.admit_timer_ms.unwrap_or(0);
            if timer_ms != 0 {
                self.deadlines.push((timer_ms, TIMER, id));
                self.table.timers += 1;
            }
            self.table.admits.insert(id, Admit { tat_us, timer_ms });
        }
        let mut holders = Holders::with_capacity(ls.holders.len());
        let mut used: u64 = 0;
        for h in &ls.holders {
            let weight = weight_of(ls, h.weight, h.mode)?;
            used += u64::from(weight);
            self.deadlines.push((h.expires_at_ms, h.ticket, id));
            holders.push(Lease {
                ticket: h.ticket,
                fence: h.fence,
                expires_at_ms: h.expires_at_ms,
                ttl_ms: h.ttl_ms,
                weight,
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
                    self.deadlines.push((at, w.ticket, id));
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
                weight: weight_of(ls, w.weight, w.mode)?,
                watchers: w.watchers,
                extra: make_extra(w.owner.clone(), w.callback.clone(), w.user.clone(), w.wait_until_ms.unwrap_or(0)),
            });
        }
        let mut data = DataMap::default();
        for (key, value) in &ls.data {
            data.bytes = data.bytes.saturating_add((key.as_str().len() + value.len()) as u32);
            data.entries.insert(key.clone(), value.as_str().into());
        }
        self.table.data_bytes += u64::from(data.bytes);
        self.table.holders += holders.len() as u64;
        self.table.waiters += waiters.len() as u64;
        let lock = self.table.lock_mut(id);
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
        Ok(())
    }

    /// The table, with the admission buckets that outlive their locks, once every lock is
    /// added (refused if its indexes and contents disagree).
    pub fn finish(self, admit_buckets: &BTreeMap<LockName, u64>) -> Result<LockTable, CoreError> {
        let mut table = self.table;
        for (name, &tat_us) in admit_buckets {
            // A bucket of a name without a rate (in these limits) is moot.
            if table.declared.get(table.declared.find(name.as_str())).and_then(|d| d.rate()).is_some() {
                table.buckets.insert(name.clone(), tat_us);
                table.bucket_order.insert((tat_us, name.clone()));
            }
        }
        table.deadlines = self.deadlines.into_iter().collect();
        // The indexes are built from the locks; what the locks hold is the snapshot's word.
        table.check_contents().map_err(invalid)?;
        debug_assert_eq!(table.check_invariants(), Ok(()));
        Ok(table)
    }
}

fn export_lock(lock: &Lock, admit: Option<&Admit>) -> LockState {
    let split = |extra: &super::Extra| (extra.owner.clone(), extra.callback().cloned(), extra.user().cloned());
    let rw = lock.rw;
    let weight = |w: u32| if rw { 1 } else { w };
    let mode = |w: u32| rw.then(|| rw_mode(w));
    LockState {
        name: lock.name.clone(),
        kind: lock.lock_kind(),
        limit: if rw { 0 } else { lock.limit },
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
                    weight: weight(l.weight),
                    claimed: l.claimed,
                    mode: mode(l.weight),
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
                    weight: weight(w.weight),
                    mode: mode(w.weight),
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
        admit_tat_us: admit.map(|a| a.tat_us),
        admit_timer_ms: admit.map(|a| a.timer_ms).filter(|&t| t != 0),
    }
}
