//! The lease table: every named lock, its holders, its queue and its data, as one pure,
//! synchronous state machine.
//!
//! Each call takes a [`Moment`] (the time and some entropy) and returns a [`Reply`] for its
//! caller, pushing [`Output`]s for everyone else (admitted waiters, expired leases, callbacks)
//! into a buffer the shell drains. Nothing in here reads a clock, a random source, a file or
//! a socket, so any history can be replayed exactly.
//!
//! Rules (the README documents them for users, under "API tour" and "Configuration"):
//! - A lock has `limit` permits; holders' weights never sum above it.
//! - Admission runs whenever permits may have freed up. FIFO admits the head while it fits
//!   and never lets anyone pass a waiting head; lottery draws a uniformly random waiter and,
//!   if it does not fit yet, keeps it as the candidate until it does (so heavy waiters are
//!   not starved). A new caller never barges past existing waiters.
//! - A read/write lock (`mode` on acquire) has no permit count: shared leases coexist, an
//!   exclusive lease is alone. Its queue is FIFO: a waiting writer is never passed by later
//!   readers, and consecutive readers at the head go in together. Inside, it is a semaphore
//!   of `RW_LIMIT` permits where a reader weighs 1 and a writer all of them, so the FIFO
//!   rule above is the whole admission rule. Semaphores and read/write locks are different
//!   kinds; a caller of the other kind gets `KindMismatch` while the lock is in use.
//! - Every grant takes the next value of one global fence counter, which only goes up.
//! - A waiter stays while it is watched (a waiting request or event stream is open) or was
//!   seen within `waiter_ttl_ms`; otherwise it is dropped. A waiter with a callback also
//!   stays until its wait ends (`wait_ms` after its acquire): it waits for its webhook, not
//!   by polling. An admitted waiter that is not watched gets a lease of `claim_ms` that
//!   becomes its full TTL when it shows up; an unclaimed grant lapses like any expired
//!   lease and the next waiter goes in.
//! - One place per user: an acquire with a `user` while a ticket of that user holds or
//!   waits on the lock gets that ticket back, as it stands (the acquire counts as the
//!   ticket showing up, like a touch; its other fields are not used). Users are found by
//!   scanning the lock's holders and waiters, as tickets are, and are stored only on
//!   tickets, so they are bounded by the ticket budgets.
//! - Declared locks (`TableLimits::declared`, by name or longest prefix) have their shape
//!   from the declaration: an acquire may omit `limit`, `queue`, `mode` and `ttl_ms`, and
//!   one that states another shape is refused (`LimitMismatch`, `QueueMismatch`,
//!   `KindMismatch`). Their TTL bounds, waiter TTL and claim time are the declaration's. A
//!   reload that changes a declaration applies it at once: the limit of a lock in use (its
//!   holders keep their leases even above a lowered limit; nobody goes in until permits
//!   free up, and waiters heavier than the new limit are dropped), the rest of the shape
//!   once the lock is free. A lock left undeclared above its limit takes the limit of
//!   what it holds.
//! - Admission rate (`admit_per_minute`): every new grant of such a lock, at once or from
//!   the queue, takes a token of its bucket (see `declare`); without one the caller queues
//!   (try-lock: `Unavailable`). While the next one to go in fits but waits for a token, the
//!   lock's timer is set for when the token is due. Re-entry and renewal take none.
//! - A lock is forgotten when it has no holder, no waiter and no data. A bucket still
//!   refilling outlives its lock (the lock comes back with it) until it is full; such
//!   buckets count against `max_locks`.
//! - Totals: once holders and waiters together number `max_tickets_total`, an acquire that
//!   would issue a new ticket is refused (admission only turns a waiter into a holder, so it
//!   never trips it); a data write that grows the bytes of all locks together past
//!   `max_data_bytes_total` is refused (one that does not grow them always passes).
//!
//! `expire(now)` first removes everything due at or before `now` (in deadline order), then
//! admits, lock by lock, in the order of each lock's earliest due deadline (ties: ticket).

mod declare;
mod invariants;
mod op;
mod overview;
mod state;

use std::cmp::min;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hasher};

use hashbrown::HashTable;
use smallvec::SmallVec;

pub use declare::{Declaration, MAX_ADMIT_BURST, MAX_ADMIT_PER_MINUTE, MAX_DECLARATIONS};
pub use op::{
    Acquire, CallbackEvent, DropReason, LeaseView, LockKind, LockMode, Moment, Op, Output, QueueKind, QueueMode,
    QueueView, Reply,
};
pub use state::{LeaseState, LockState, TableImport, TableState, WaiterState};

use declare::{Declared, Rate};

use super::error::CoreError;
use super::names::{CallbackUrl, DataKey, LockName, Owner, Ticket, UserId};
use super::rand::{lottery_stream, SplitMix64};

/// Index of a lock's slot. Reused after the lock is forgotten.
type LockId = u32;

/// A read/write lock's permit count inside the table: more than any reader count can reach
/// (tickets are bounded far below it), and a writer takes all of it.
const RW_LIMIT: u32 = u32::MAX;

/// The weight a lease of a read/write lock takes inside the table.
fn rw_weight(mode: LockMode) -> u32 {
    match mode {
        LockMode::Shared => 1,
        LockMode::Exclusive => RW_LIMIT,
    }
}

/// The mode of a read/write lock's lease or waiter of internal `weight`.
fn rw_mode(weight: u32) -> LockMode {
    if weight == RW_LIMIT {
        LockMode::Exclusive
    } else {
        LockMode::Shared
    }
}

/// Whether `weight` more permits fit (never, while a reload's lower limit is exceeded).
#[inline]
fn fits(used: u32, weight: u32, limit: u32) -> bool {
    weight <= limit.saturating_sub(used)
}

/// The ticket of a lock's admission timer in the deadline index; never issued (tickets
/// are random, and a table refuses an acquire that brings this one).
const TIMER: Ticket = Ticket::from_bytes([0; 16]);

/// Limits on everything a client controls, plus the presence timings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableLimits {
    /// Shortest lease a client may ask for.
    pub min_ttl_ms: u64,
    /// Longest lease a client may ask for.
    pub max_ttl_ms: u64,
    /// Largest permit count of a lock.
    pub max_limit: u32,
    /// Most locks the table holds at once.
    pub max_locks: u32,
    /// Longest queue of one lock.
    pub max_waiters_per_lock: u32,
    /// How long an unwatched waiter stays queued after it was last seen.
    pub waiter_ttl_ms: u64,
    /// How long an admitted waiter that is not connected has to claim its lease.
    pub claim_ms: u64,
    /// Most data keys per lock.
    pub max_data_keys: u32,
    /// Most bytes of data (keys + values) per lock.
    pub max_data_bytes: u32,
    /// Most bytes of data (keys + values) across all locks.
    #[serde(default = "unbounded_u64")]
    pub max_data_bytes_total: u64,
    /// Most tickets (holders and waiters together) across all locks.
    #[serde(default = "unbounded_u32")]
    pub max_tickets_total: u32,
    /// Most registered Small Resource Server resources. Enforced by the service, kept here
    /// so that it is journaled and reloaded with the other limits.
    #[serde(default = "unbounded_u32")]
    pub max_resources: u32,
    /// Most open event streams. Enforced by the service, kept here for the same reason.
    #[serde(default = "unbounded_u32")]
    pub max_event_streams: u32,
    /// Whether a queued waiter with a callback counts as present until its wait ends. Not
    /// configurable: it is the rule from journal format 4 on, and false in limits journaled
    /// before, whose waiters were dropped after `waiter_ttl_ms` like any other (a replay
    /// must take the decisions the keeper took then).
    #[serde(default)]
    pub callback_presence: bool,
    /// The lease of an acquire that gives no `ttl_ms`, on an undeclared lock (absent from
    /// limits journaled before format 4, whose acquires always gave one).
    #[serde(default = "default_ttl_ms")]
    pub default_ttl_ms: u64,
    /// Declared locks (from journal format 4).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub declared: Vec<Declaration>,
}

fn default_ttl_ms() -> u64 {
    TableLimits::DEFAULT.default_ttl_ms
}

// The totals are absent from limits journaled before they existed. Those journals were
// written (and their writes acknowledged) with no total at all, so a replay applies none:
// the limits configured now take effect with the keeper's next `Configure` record.
fn unbounded_u64() -> u64 {
    u64::MAX
}

fn unbounded_u32() -> u32 {
    u32::MAX
}

impl TableLimits {
    /// The defaults the configuration documents.
    pub const DEFAULT: TableLimits = TableLimits {
        min_ttl_ms: 100,
        max_ttl_ms: 24 * 3600 * 1000,
        max_limit: 10_000,
        max_locks: 5_000_000,
        max_waiters_per_lock: 100_000,
        waiter_ttl_ms: 10_000,
        claim_ms: 5_000,
        max_data_keys: 64,
        max_data_bytes: 64 * 1024,
        max_data_bytes_total: 256 * 1024 * 1024,
        max_tickets_total: 10_000_000,
        max_resources: 100_000,
        max_event_streams: 100_000,
        callback_presence: true,
        default_ttl_ms: 30_000,
        declared: Vec::new(),
    };
}

impl Default for TableLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Owner label, callback and user of a lease or waiter. The label is kept inline (many
/// clients send one); the callback and the user, rarer, are boxed together so they cost a
/// pointer when absent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Extra {
    owner: Option<Owner>,
    rare: Option<Box<Rare>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rare {
    callback: Option<CallbackUrl>,
    user: Option<UserId>,
    /// A queued waiter with a callback counts as present until then (0: it does not).
    /// Meaningless once admitted.
    wait_until_ms: u64,
}

fn make_extra(owner: Option<Owner>, callback: Option<CallbackUrl>, user: Option<UserId>, wait_until_ms: u64) -> Extra {
    let rare = (callback.is_some() || user.is_some()).then(|| Box::new(Rare { callback, user, wait_until_ms }));
    Extra { owner, rare }
}

impl Extra {
    fn callback(&self) -> Option<&CallbackUrl> {
        self.rare.as_ref().and_then(|r| r.callback.as_ref())
    }

    fn user(&self) -> Option<&UserId> {
        self.rare.as_ref().and_then(|r| r.user.as_ref())
    }

    fn wait_until_ms(&self) -> u64 {
        self.rare.as_ref().map_or(0, |r| r.wait_until_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    ticket: Ticket,
    fence: u64,
    expires_at_ms: u64,
    ttl_ms: u64,
    weight: u32,
    claimed: bool,
    extra: Extra,
}

impl Lease {
    fn owner(&self) -> Option<&Owner> {
        self.extra.owner.as_ref()
    }

    fn callback(&self) -> Option<&CallbackUrl> {
        self.extra.callback()
    }

    /// The holder's view; `rw`: the lease is of a read/write lock.
    fn view(&self, rw: bool) -> LeaseView {
        LeaseView {
            ticket: self.ticket,
            fence: self.fence,
            owner: self.owner().cloned(),
            weight: if rw { 1 } else { self.weight },
            expires_at_ms: self.expires_at_ms,
            claimed: self.claimed,
            mode: rw.then(|| rw_mode(self.weight)),
            user: self.extra.user().cloned(),
        }
    }
}

/// A lock's holders: the first inline, more on the heap.
type Holders = SmallVec<[Lease; 1]>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct Waiter {
    ticket: Ticket,
    ttl_ms: u64,
    /// When an unwatched waiter is dropped; meaningless while `watchers > 0`.
    absent_at_ms: u64,
    weight: u32,
    watchers: u32,
    extra: Extra,
}

impl Waiter {
    /// When this waiter, unwatched and last seen at `seen_ms`, is dropped: `waiter_ttl_ms`
    /// later, or at the end of its wait if it has a callback and that is later.
    fn absent_at(&self, seen_ms: u64, waiter_ttl_ms: u64) -> u64 {
        (seen_ms + waiter_ttl_ms).max(self.extra.wait_until_ms())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Queue {
    waiters: VecDeque<Waiter>,
    /// Lottery only: the drawn waiter that goes in next, once it fits.
    candidate: Option<Ticket>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct DataMap {
    entries: BTreeMap<DataKey, Box<str>>,
    /// Sum of key and value lengths.
    bytes: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lock {
    name: LockName,
    /// `RW_LIMIT` for a read/write lock.
    limit: u32,
    used: u32,
    kind: QueueKind,
    /// A read/write lock (always FIFO).
    rw: bool,
    /// Inline for the usual single holder (a mutex): no allocation of its own.
    holders: Holders,
    queue: Option<Box<Queue>>,
    data: Option<Box<DataMap>>,
    /// Scratch for `expire`: 1 + this lock's place in its list of touched locks, else 0.
    touched: u32,
    /// The name's hash, kept so forgetting and index growth never hash the name again.
    hash: u64,
    /// Its declaration's index in the table's `declared`, or `UNDECLARED` (16 bits fill
    /// what was padding: a lock costs no more than before declarations).
    decl: u16,
}

/// A lock's admission bucket and timer (kept beside the lock, in the table's `admits`: few
/// locks have a rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Admit {
    /// When the bucket is full again (µs; see `declare`).
    tat_us: u64,
    /// When the timer in the deadline index fires (0: none is set).
    timer_ms: u64,
}

impl Lock {
    fn queue_len(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.waiters.len())
    }

    fn has_participants(&self) -> bool {
        !self.holders.is_empty() || self.queue.is_some()
    }

    fn holder_index(&self, ticket: Ticket) -> Option<usize> {
        self.holders.iter().position(|l| l.ticket == ticket)
    }

    fn waiter_index(&self, ticket: Ticket) -> Option<usize> {
        self.queue.as_ref().and_then(|q| q.waiters.iter().position(|w| w.ticket == ticket))
    }

    /// Whether the next one to go in (the FIFO head, or the lottery's drawn candidate)
    /// fits now.
    fn next_fits(&self) -> bool {
        let Some(queue) = self.queue.as_ref() else { return false };
        let next = match self.kind {
            QueueKind::Fifo => queue.waiters.front(),
            QueueKind::Lottery => queue.candidate.and_then(|t| queue.waiters.iter().find(|w| w.ticket == t)),
        };
        next.is_some_and(|w| fits(self.used, w.weight, self.limit))
    }

    /// The ticket of `user` on this lock, holding or waiting: a scan, as for a ticket.
    fn user_ticket(&self, user: &UserId) -> Option<Ticket> {
        let holder = self.holders.iter().find(|l| l.extra.user() == Some(user)).map(|l| l.ticket);
        holder.or_else(|| {
            self.queue.as_ref().and_then(|q| q.waiters.iter().find(|w| w.extra.user() == Some(user)).map(|w| w.ticket))
        })
    }

    fn queue_view(&self, index: usize) -> QueueView {
        let queue_length = self.queue_len() as u32;
        let ticket = self.queue.as_ref().map(|q| q.waiters[index].ticket).expect("waiter index in range");
        QueueView { ticket, position: (self.kind == QueueKind::Fifo).then_some(index as u32 + 1), queue_length }
    }

    fn lock_kind(&self) -> LockKind {
        if self.rw {
            LockKind::Rw
        } else {
            LockKind::Semaphore
        }
    }

    /// Permits in use and the permit count as callers see them: a read/write lock shows
    /// its holders and no count (0).
    fn shown_usage(&self) -> (u32, u32) {
        if self.rw {
            (self.holders.len() as u32, 0)
        } else {
            (self.used, self.limit)
        }
    }
}

/// Where a ticket stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketView {
    /// It holds a lease.
    Holding(LeaseView),
    /// It waits.
    Waiting(QueueView),
}

/// A holder as any reader may see it: no ticket (tickets are capabilities).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HolderView {
    /// The holder's label.
    pub owner: Option<Owner>,
    /// Permits held (1 for a read/write lock's lease).
    pub weight: u32,
    /// Fencing token.
    pub fence: u64,
    /// When the lease ends unless renewed.
    pub expires_at_ms: u64,
    /// Whether the holder has shown up since admission.
    pub claimed: bool,
    /// A read/write lock's lease: shared or exclusive.
    pub mode: Option<LockMode>,
    /// Who the lease is for, when its acquire said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
}

/// A lock as any reader may see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LockView {
    /// The name.
    pub name: LockName,
    /// Semaphore or read/write lock.
    pub kind: LockKind,
    /// Permit count (0 for a read/write lock, which has none).
    pub limit: u32,
    /// Queue discipline.
    pub queue: QueueKind,
    /// Permits in use (a read/write lock: its holders).
    pub used: u32,
    /// Current holders.
    pub holders: Vec<HolderView>,
    /// Waiters.
    pub queue_length: u32,
    /// Keys in the data map.
    pub data_keys: u32,
    /// The declaration that shapes it, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub declared: Option<Declaration>,
}

/// Totals for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TableStats {
    /// Locks in the table.
    pub locks: u64,
    /// Live leases.
    pub holders: u64,
    /// Queued waiters.
    pub waiters: u64,
    /// Bytes of data (keys + values) across all locks.
    pub data_bytes: u64,
    /// The fence the next grant will take.
    pub next_fence: u64,
}

/// The lease table. See the module docs for its rules.
///
/// A mutex handed from one holder to a waiter:
///
/// ```
/// use leasehold::core::lock::{Acquire, LockTable, Moment, Op, Output, QueueMode, Reply, TableLimits};
/// use leasehold::core::names::{LockName, Ticket};
///
/// let mut table = LockTable::new(TableLimits::DEFAULT, 0x5eed);
/// let mut out = Vec::new();
/// let lock = LockName::parse("nightly-report").unwrap();
/// let acquire = |ticket: u8, watch: bool| Op::Acquire(Acquire {
///     lock: lock.clone(), ticket: None, new_ticket: Ticket::from_bytes([ticket; 16]), owner: None,
///     ttl_ms: Some(30_000), limit: Some(1), weight: 1, queue: Some(QueueMode::Fifo), watch, callback: None,
///     mode: None, user: None, wait_ms: 0,
/// });
///
/// let Reply::Held(first) = table.apply(acquire(1, false), Moment::new(1_000, 0), &mut out) else { panic!() };
/// let Reply::Queued(second) = table.apply(acquire(2, true), Moment::new(1_001, 0), &mut out) else { panic!() };
/// assert_eq!(second.position, Some(1));
///
/// // The holder releases: the waiter is admitted with a larger fence.
/// table.apply(Op::Release { lock: lock.clone(), ticket: first.ticket }, Moment::new(1_002, 0), &mut out);
/// let granted = out.iter().find_map(|o| match o { Output::Granted { lease, .. } => Some(lease.clone()), _ => None }).unwrap();
/// assert_eq!(granted.ticket, second.ticket);
/// assert!(granted.fence > first.fence);
///
/// // Nobody renews: at its deadline the lease expires and the table is empty again.
/// out.clear();
/// table.expire(Moment::new(granted.expires_at_ms, 0), &mut out);
/// assert!(matches!(out[0], Output::Expired { .. }));
/// assert_eq!(table.stats().holders, 0);
/// ```
#[derive(Debug, Clone)]
pub struct LockTable {
    limits: TableLimits,
    /// `limits.declared`, indexed.
    declared: Declared,
    /// Secret mixed into every name hash so clients cannot aim names at one bucket.
    hash_seed: u64,
    /// Lock ids, hashed by their lock's name (the name itself lives only in the slot).
    index: HashTable<LockId>,
    slots: Vec<Option<Lock>>,
    free: Vec<LockId>,
    /// Every lease expiry and every unwatched waiter's absence deadline.
    deadlines: BTreeSet<(u64, Ticket, LockId)>,
    next_fence: u64,
    holders: u64,
    waiters: u64,
    /// Sum of every lock's data bytes.
    data_bytes: u64,
    /// The admission state of the rate-limited locks that have granted, by lock.
    admits: HashMap<LockId, Admit>,
    /// Admission timers in the deadline index.
    timers: u64,
    /// The refilling admission buckets of forgotten locks: when each is full again, µs.
    buckets: BTreeMap<LockName, u64>,
    /// The same, by time, to let go of those that are full.
    bucket_order: BTreeSet<(u64, LockName)>,
}

fn hash_name(seed: u64, name: &str) -> u64 {
    let mut h = DefaultHasher::new();
    h.write_u64(seed);
    h.write(name.as_bytes());
    h.finish()
}

fn out_of_range(field: &'static str, value: u64, min: u64, max: u64) -> Reply {
    Reply::Rejected(CoreError::OutOfRange { field, value, min, max })
}

/// No waiter has moved (yet) in this call.
const NOT_MOVED: usize = usize::MAX;

/// Debug builds check every invariant after each mutation while the table is this small;
/// beyond it they check only the cheap global counts, so large debug runs stay usable.
#[cfg(debug_assertions)]
const FULL_CHECK_MAX_LOCKS: usize = 2_000;

impl LockTable {
    /// An empty table. `hash_seed` should be random (it keys the name hash).
    pub fn new(limits: TableLimits, hash_seed: u64) -> Self {
        Self {
            declared: Declared::new(&limits.declared),
            limits,
            hash_seed,
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            deadlines: BTreeSet::new(),
            next_fence: 1,
            holders: 0,
            waiters: 0,
            data_bytes: 0,
            admits: HashMap::new(),
            timers: 0,
            buckets: BTreeMap::new(),
            bucket_order: BTreeSet::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &TableLimits {
        &self.limits
    }

    /// Replaces the limits (on reload). Existing leases and queues are kept as they are,
    /// except where a changed declaration applies to a lock (see the rules above): then, in
    /// name order, each lock takes its declaration and is settled at `at` (waiters heavier
    /// than a lowered limit are dropped, a raised limit admits).
    pub fn set_limits(&mut self, limits: TableLimits, at: Moment, out: &mut Vec<Output>) {
        let redeclared = limits.declared != self.limits.declared;
        self.limits = limits;
        if !redeclared {
            return;
        }
        self.declared = Declared::new(&self.limits.declared);
        let declared = &self.declared;
        let rated = |name: &str| declared.get(declared.find(name)).and_then(Declaration::rate).is_some();
        self.buckets.retain(|name, _| rated(name.as_str()));
        self.bucket_order.retain(|(_, name)| rated(name.as_str()));
        let mut ids: Vec<LockId> =
            (0..self.slots.len() as LockId).filter(|&id| self.slots[id as usize].is_some()).collect();
        ids.sort_unstable_by(|&a, &b| self.lock(a).name.cmp(&self.lock(b).name));
        for id in ids {
            let decl = self.declared.find(self.lock(id).name.as_str());
            let declaration = self.declared.get(decl).cloned();
            let lock = self.lock_mut(id);
            lock.decl = decl;
            if declaration.as_ref().and_then(Declaration::rate).is_none() {
                self.clear_timer(id);
                self.admits.remove(&id);
            }
            let mut moved_from = NOT_MOVED;
            let lock = self.lock_mut(id);
            if !lock.rw && lock.used > lock.limit && declaration.as_ref().is_none_or(|d| d.kind != LockKind::Semaphore)
            {
                // Left undeclared above a lowered limit: the smallest limit that holds what
                // is held, so nobody goes in until permits free up.
                lock.limit = lock.used;
            }
            if let Some(d) = declaration {
                let lock = self.lock_mut(id);
                if !lock.has_participants() {
                    lock.rw = d.kind == LockKind::Rw;
                    lock.limit = if lock.rw { RW_LIMIT } else { d.limit };
                    lock.kind = d.queue;
                } else if !lock.rw && d.kind == LockKind::Semaphore && lock.limit != d.limit {
                    lock.limit = d.limit;
                    moved_from = self.drop_heavier(id, d.limit, out);
                }
            }
            self.settle(id, at, moved_from, out);
        }
        self.debug_check();
    }

    /// Drops the waiters of lock `id` heavier than `limit`; returns the first place that
    /// moved.
    fn drop_heavier(&mut self, id: LockId, limit: u32, out: &mut Vec<Output>) -> usize {
        let mut moved_from = NOT_MOVED;
        let mut i = 0;
        while i < self.lock(id).queue_len() {
            let w = &self.lock(id).queue.as_ref().expect("queue exists while it has waiters").waiters[i];
            if w.weight > limit {
                let ticket = w.ticket;
                self.remove_waiter(id, i, true);
                moved_from = min(moved_from, i);
                let name = self.lock(id).name.clone();
                out.push(Output::Dropped { lock: name, ticket, reason: DropReason::LimitLowered });
            } else {
                i += 1;
            }
        }
        moved_from
    }

    /// The declaration of lock `id`, if any.
    #[inline]
    fn declaration(&self, id: LockId) -> Option<&Declaration> {
        if self.limits.declared.is_empty() {
            // The common case, on the hot path: no lookup at all.
            return None;
        }
        self.declared.get(self.lock(id).decl)
    }

    /// The admission rate of lock `id`, if any.
    #[inline]
    fn rate(&self, id: LockId) -> Option<Rate> {
        self.declaration(id).and_then(Declaration::rate)
    }

    /// How long an unwatched waiter of lock `id` stays after it was last seen.
    fn waiter_ttl_ms(&self, id: LockId) -> u64 {
        self.declaration(id).and_then(|d| d.waiter_ttl_ms).unwrap_or(self.limits.waiter_ttl_ms)
    }

    /// How long an admitted waiter of lock `id` has to claim its lease.
    fn claim_ms(&self, id: LockId) -> u64 {
        self.declaration(id).and_then(|d| d.claim_ms).unwrap_or(self.limits.claim_ms)
    }

    /// Whether lock `id`'s admission rate lets a grant go out at `now_ms`.
    fn rate_allows(&self, id: LockId, now_ms: u64) -> bool {
        let Some(rate) = self.rate(id) else { return true };
        rate.allows(self.admits.get(&id).map_or(0, |a| a.tat_us), now_ms)
    }

    /// Sets lock `id`'s timer for when its next token is due if the next one to go in fits
    /// but waits for it; clears it otherwise.
    fn refresh_timer(&mut self, id: LockId) {
        let Some(rate) = self.rate(id) else { return };
        let lock = self.lock(id);
        let waits_for_token = lock.next_fits();
        if waits_for_token {
            let tat_us = self.admits.get(&id).map_or(0, |a| a.tat_us);
            self.set_timer(id, rate.next_allowed_ms(tat_us));
        } else {
            self.clear_timer(id);
        }
    }

    /// Lets go of the buckets of forgotten locks that are full at `now_ms`.
    fn prune_buckets(&mut self, now_ms: u64) {
        let now_us = now_ms.saturating_mul(1000);
        while let Some(first) = self.bucket_order.first() {
            if first.0 > now_us {
                break;
            }
            let (_, name) = self.bucket_order.pop_first().expect("not empty");
            self.buckets.remove(&name);
        }
    }

    /// Sets lock `id`'s admission timer to fire at `at_ms` (replacing any other).
    fn set_timer(&mut self, id: LockId, at_ms: u64) {
        let admit = self.admits.entry(id).or_default();
        if admit.timer_ms == at_ms {
            return;
        }
        if admit.timer_ms != 0 {
            self.deadlines.remove(&(admit.timer_ms, TIMER, id));
            self.timers -= 1;
        }
        admit.timer_ms = at_ms;
        self.deadlines.insert((at_ms, TIMER, id));
        self.timers += 1;
    }

    /// Takes lock `id`'s admission timer out of the deadline index, if set.
    fn clear_timer(&mut self, id: LockId) {
        if let Some(admit) = self.admits.get_mut(&id).filter(|a| a.timer_ms != 0) {
            self.deadlines.remove(&(admit.timer_ms, TIMER, id));
            self.timers -= 1;
            admit.timer_ms = 0;
        }
    }

    /// The earliest a FIFO waiter at 1-based `position` of lock `name` can go in as far as
    /// the lock's admission rate goes, from `now_ms`; `None` for a lock without a rate.
    pub fn admission_wait_ms(&self, name: &str, position: u32, now_ms: u64) -> Option<u64> {
        let id = self.find(name)?;
        let rate = self.rate(id)?;
        let tat_us = self.admits.get(&id).map_or(0, |a| a.tat_us);
        Some(rate.nth_allowed_ms(tat_us, position, now_ms) - now_ms)
    }

    /// Totals for metrics.
    pub fn stats(&self) -> TableStats {
        TableStats {
            locks: self.index.len() as u64,
            holders: self.holders,
            waiters: self.waiters,
            data_bytes: self.data_bytes,
            next_fence: self.next_fence,
        }
    }

    /// The fence the next grant will take.
    pub fn next_fence(&self) -> u64 {
        self.next_fence
    }

    /// Raises the fence counter to at least `floor` (never lowers it), e.g. after recovery
    /// from a journal that may have lost a tail of grants.
    pub fn restore_fence_floor(&mut self, floor: u64) {
        self.next_fence = self.next_fence.max(floor);
    }

    /// The earliest time at which `expire` has work to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|&(at, _, _)| at)
    }

    fn find(&self, name: &str) -> Option<LockId> {
        self.find_hashed(name).1
    }

    /// The name's hash (to create the lock with, if absent) and the lock's id, if present.
    fn find_hashed(&self, name: &str) -> (u64, Option<LockId>) {
        let hash = hash_name(self.hash_seed, name);
        let found = self
            .index
            .find(hash, |&id| self.slots[id as usize].as_ref().is_some_and(|l| l.name.as_str() == name))
            .copied();
        (hash, found)
    }

    fn lock(&self, id: LockId) -> &Lock {
        self.slots[id as usize].as_ref().expect("indexed lock slot is occupied")
    }

    fn lock_mut(&mut self, id: LockId) -> &mut Lock {
        self.slots[id as usize].as_mut().expect("indexed lock slot is occupied")
    }

    /// Makes room for `more` locks without growing the index or the slots on the way.
    fn reserve_locks(&mut self, more: usize) {
        let slots = &self.slots;
        self.index.reserve(more, |&id| slots[id as usize].as_ref().map_or(0, |l| l.hash));
        self.slots.reserve(more);
    }

    /// Adds a lock; `hash` is `hash_name` of its name (from `find_hashed`).
    fn create(&mut self, name: LockName, hash: u64, limit: u32, kind: QueueKind, rw: bool, decl: u16) -> LockId {
        // A bucket that outlived the lock comes back with it.
        let taken = if self.buckets.is_empty() { None } else { self.buckets.remove(&name) };
        if let Some(tat_us) = taken {
            self.bucket_order.remove(&(tat_us, name.clone()));
        }
        let lock = Lock {
            name,
            limit,
            used: 0,
            kind,
            rw,
            holders: Holders::new(),
            queue: None,
            data: None,
            touched: 0,
            hash,
            decl,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(lock);
                id
            }
            None => {
                self.slots.push(Some(lock));
                (self.slots.len() - 1) as LockId
            }
        };
        let slots = &self.slots;
        self.index.insert_unique(hash, id, |&other| slots[other as usize].as_ref().map_or(0, |l| l.hash));
        if let Some(tat_us) = taken {
            self.admits.insert(id, Admit { tat_us, timer_ms: 0 });
        }
        id
    }

    /// Forgets lock `id` if nothing of it is left to remember at `now_ms`.
    fn forget_if_empty(&mut self, id: LockId, now_ms: u64) {
        let lock = self.lock(id);
        if lock.has_participants() || lock.data.is_some() {
            return;
        }
        // (Few locks have a rate: most tables have no admission state to hash into.)
        if let Some(admit) = if self.admits.is_empty() { None } else { self.admits.remove(&id) } {
            if admit.timer_ms != 0 {
                self.deadlines.remove(&(admit.timer_ms, TIMER, id));
                self.timers -= 1;
            }
            if admit.tat_us > now_ms.saturating_mul(1000) {
                // Its bucket is still refilling: it outlives the lock until it is full.
                let name = self.lock(id).name.clone();
                self.bucket_order.insert((admit.tat_us, name.clone()));
                self.buckets.insert(name, admit.tat_us);
            }
        }
        let lock = self.lock(id);
        if let Ok(entry) = self.index.find_entry(lock.hash, |&other| other == id) {
            entry.remove();
        }
        self.slots[id as usize] = None;
        self.free.push(id);
    }

    /// Carries out one operation at `at`. The reply is for the caller; events for other
    /// parties are appended to `out`.
    pub fn apply(&mut self, op: Op, at: Moment, out: &mut Vec<Output>) -> Reply {
        let reply = match op {
            Op::Acquire(a) => self.acquire(a, at, out),
            Op::Renew { lock, ticket, ttl_ms } => self.renew(&lock, ticket, ttl_ms, at),
            Op::Release { lock, ticket } => self.release(&lock, ticket, at, out),
            Op::Touch { lock, ticket } => self.touch(&lock, ticket, at, Presence::Seen),
            Op::Watch { lock, ticket } => self.touch(&lock, ticket, at, Presence::Watch),
            Op::Unwatch { lock, ticket } => self.touch(&lock, ticket, at, Presence::Unwatch),
            Op::SetLimit { lock, limit } => self.set_limit(&lock, limit, at, out),
            Op::PutData { lock, ticket, key, value } => self.put_data(&lock, ticket, key, value, at),
            Op::DeleteData { lock, ticket, key } => self.delete_data(&lock, ticket, &key, at),
            Op::ClearData { lock } => self.clear_data(&lock, at),
        };
        self.debug_check();
        reply
    }

    fn acquire(&mut self, a: Acquire, at: Moment, out: &mut Vec<Output>) -> Reply {
        if a.new_ticket == TIMER {
            // Tickets are random: this one is the timer's, and never a caller's.
            return Reply::Rejected(CoreError::InvalidTicket);
        }
        let (hash, found) = self.find_hashed(a.lock.as_str());
        let decl = match found {
            Some(id) => self.lock(id).decl,
            None => self.declared.find(a.lock.as_str()),
        };
        let declaration = self.declared.get(decl);
        let limits = &self.limits;
        // The shape asked for: as stated, else as declared, else the defaults.
        let limit = a.limit.unwrap_or_else(|| declaration.map_or(1, |d| d.limit));
        if limit == 0 || limit > limits.max_limit {
            return out_of_range("limit", limit.into(), 1, limits.max_limit.into());
        }
        if a.weight == 0 || a.weight > limit {
            return out_of_range("weight", a.weight.into(), 1, limit.into());
        }
        let (min_ttl_ms, max_ttl_ms) =
            declaration.map_or((limits.min_ttl_ms, limits.max_ttl_ms), |d| d.ttl_bounds(limits));
        let ttl_ms = a.ttl_ms.unwrap_or_else(|| declaration.map_or(limits.default_ttl_ms, |d| d.default_ttl(limits)));
        if ttl_ms < min_ttl_ms || ttl_ms > max_ttl_ms {
            return out_of_range("ttl_ms", ttl_ms, min_ttl_ms, max_ttl_ms);
        }
        let queue = a.queue.unwrap_or(match declaration {
            Some(d) if d.queue == QueueKind::Lottery => QueueMode::Lottery,
            _ => QueueMode::Fifo,
        });
        if a.mode.is_some() {
            if queue == QueueMode::Lottery {
                return Reply::Rejected(CoreError::Incompatible {
                    reason: "a read/write lock (mode) queues in arrival order: queue lottery cannot be given with mode",
                });
            }
            // (A limit stated, not a declared one: a declared semaphore is a kind mismatch.)
            if a.limit.is_some_and(|l| l != 1) || a.weight != 1 {
                return Reply::Rejected(CoreError::Incompatible {
                    reason: "a read/write lock (mode) has no permit count: limit and weight cannot be given with mode",
                });
            }
        }
        let wanted_kind = match queue {
            QueueMode::Lottery => QueueKind::Lottery,
            QueueMode::Fifo | QueueMode::None => QueueKind::Fifo,
        };
        // The caller's read/write mode: on a read/write lock (declared, or in use), a plain
        // acquire (no mode, no limit, no weight) is an exclusive one.
        let mut mode = a.mode;
        if let Some(d) = declaration {
            match d.kind {
                LockKind::Semaphore if mode.is_some() => return Reply::KindMismatch { kind: LockKind::Semaphore },
                LockKind::Semaphore if limit != d.limit => return Reply::LimitMismatch { limit: d.limit },
                LockKind::Semaphore => {}
                LockKind::Rw if mode.is_none() && (limit != 1 || a.weight != 1) => {
                    return Reply::KindMismatch { kind: LockKind::Rw }
                }
                LockKind::Rw => mode = mode.or(Some(LockMode::Exclusive)),
            }
            if queue != QueueMode::None && wanted_kind != d.queue {
                return Reply::QueueMismatch { queue: d.queue };
            }
        }
        if let Some(id) = found {
            // Re-entry: with the caller's ticket, or (vanishingly rare) a fresh ticket that
            // happens to be in use here already.
            for ticket in a.ticket.into_iter().chain(Some(a.new_ticket)) {
                if let Some(reply) = self.reenter(id, ticket, ttl_ms, a.watch, a.owner.as_ref(), at) {
                    return reply;
                }
            }
            // One place per user: the user's ticket, as it stands (only its presence counts).
            if let Some(ticket) = a.user.as_ref().and_then(|u| self.lock(id).user_ticket(u)) {
                let presence = if a.watch { Presence::Watch } else { Presence::Seen };
                return self.touch_found(id, ticket, at, presence);
            }
        }
        // Past this point the caller is new here. Any acquire of a new ticket is refused
        // at the total, whatever it would have been answered otherwise.
        if self.holders + self.waiters >= u64::from(self.limits.max_tickets_total) {
            return Reply::TicketsFull { max_tickets: self.limits.max_tickets_total };
        }
        let id = match found {
            None => {
                // Buckets that outlive their locks count as locks (their own comes back).
                let mut buckets = 0;
                if !self.buckets.is_empty() {
                    self.prune_buckets(at.now_ms);
                    buckets = self.buckets.len() - usize::from(self.buckets.contains_key(&a.lock));
                }
                if self.index.len() + buckets >= self.limits.max_locks as usize {
                    return Reply::TableFull { max_locks: self.limits.max_locks };
                }
                let limit = if mode.is_some() { RW_LIMIT } else { limit };
                self.create(a.lock, hash, limit, wanted_kind, mode.is_some(), decl)
            }
            Some(id) => {
                let lock = self.lock_mut(id);
                if lock.has_participants() {
                    if lock.rw {
                        if mode.is_none() {
                            if limit != 1 || a.weight != 1 {
                                return Reply::KindMismatch { kind: LockKind::Rw };
                            }
                            mode = Some(LockMode::Exclusive);
                        }
                    } else if mode.is_some() {
                        return Reply::KindMismatch { kind: LockKind::Semaphore };
                    } else if lock.limit != limit {
                        return Reply::LimitMismatch { limit: lock.limit };
                    }
                    if queue != QueueMode::None && lock.kind != wanted_kind {
                        return Reply::QueueMismatch { queue: lock.kind };
                    }
                } else {
                    // Nobody to disagree with: the lock takes the caller's shape.
                    lock.rw = mode.is_some();
                    lock.limit = if lock.rw { RW_LIMIT } else { limit };
                    lock.kind = wanted_kind;
                }
                id
            }
        };
        let weight = mode.map_or(a.weight, rw_weight);
        let max_waiters = self.limits.max_waiters_per_lock;
        let callback_presence = self.limits.callback_presence;
        let now = at.now_ms;
        let lock = self.lock(id);
        if lock.queue_len() == 0 && fits(lock.used, weight, lock.limit) && self.rate_allows(id, now) {
            let lease = Lease {
                ticket: a.new_ticket,
                fence: 0,
                expires_at_ms: now + ttl_ms,
                ttl_ms,
                weight,
                claimed: true,
                extra: make_extra(a.owner, a.callback, a.user, 0),
            };
            return Reply::Held(self.grant(id, lease, now));
        }
        let lock = self.slots[id as usize].as_mut().expect("lock slot is occupied");
        let queue_length = lock.queue_len();
        if queue == QueueMode::None {
            let (used, limit) = lock.shown_usage();
            // An empty lock refused only for want of a token goes (its bucket outlives it).
            self.forget_if_empty(id, now);
            return Reply::Unavailable { used, limit, queue_length: queue_length as u32 };
        }
        if queue_length >= max_waiters as usize {
            return Reply::QueueFull { max_waiters };
        }
        let wait_until_ms = if a.callback.is_some() && callback_presence { now.saturating_add(a.wait_ms) } else { 0 };
        let waiter_ttl_ms = self.waiter_ttl_ms(id);
        let lock = self.slots[id as usize].as_mut().expect("lock slot is occupied");
        let mut waiter = Waiter {
            ticket: a.new_ticket,
            ttl_ms,
            absent_at_ms: 0,
            weight,
            watchers: u32::from(a.watch),
            extra: make_extra(a.owner, a.callback, a.user, wait_until_ms),
        };
        waiter.absent_at_ms = waiter.absent_at(now, waiter_ttl_ms);
        if !a.watch {
            self.deadlines.insert((waiter.absent_at_ms, waiter.ticket, id));
        }
        lock.queue.get_or_insert_with(Default::default).waiters.push_back(waiter);
        self.waiters += 1;
        let view = lock.queue_view(queue_length);
        // Nobody can be admitted here (the newcomer did not fit and nobody else changed), but
        // a lottery lock with free permits must always have its next candidate drawn.
        let mut unmoved = NOT_MOVED;
        self.admit(id, at, &mut unmoved, out);
        Reply::Queued(view)
    }

    /// A known ticket comes back through acquire: a holder renews (and takes `owner` if it
    /// has no label yet), a waiter shows presence.
    fn reenter(
        &mut self,
        id: LockId,
        ticket: Ticket,
        ttl_ms: u64,
        watch: bool,
        owner: Option<&Owner>,
        at: Moment,
    ) -> Option<Reply> {
        let lock = self.lock(id);
        if let Some(i) = lock.holder_index(ticket) {
            if let Some(owner) = owner {
                let lease = &mut self.slots[id as usize].as_mut().expect("lock slot is occupied").holders[i];
                lease.extra.owner.get_or_insert_with(|| owner.clone());
            }
            return Some(self.extend(id, i, ttl_ms, at.now_ms));
        }
        let i = lock.waiter_index(ticket)?;
        let presence = if watch { Presence::Watch } else { Presence::Seen };
        self.waiter_presence(id, i, at.now_ms, presence);
        Some(Reply::Queued(self.lock(id).queue_view(i)))
    }

    /// Sets a holder's expiry to `now + ttl_ms` (claiming it if needed).
    fn extend(&mut self, id: LockId, index: usize, ttl_ms: u64, now: u64) -> Reply {
        let lock = self.slots[id as usize].as_mut().expect("lock slot is occupied");
        let rw = lock.rw;
        let lease = &mut lock.holders[index];
        let old = (lease.expires_at_ms, lease.ticket, id);
        lease.expires_at_ms = now + ttl_ms;
        lease.ttl_ms = ttl_ms;
        lease.claimed = true;
        let view = lease.view(rw);
        self.deadlines.remove(&old);
        self.deadlines.insert((view.expires_at_ms, view.ticket, id));
        Reply::Held(view)
    }

    /// A holder shows up: an unclaimed grant becomes a full lease; a claimed one is unchanged.
    fn claim(&mut self, id: LockId, index: usize, now: u64) -> Reply {
        let lock = self.lock(id);
        let lease = &lock.holders[index];
        if lease.claimed {
            return Reply::Held(lease.view(lock.rw));
        }
        let ttl_ms = lease.ttl_ms;
        self.extend(id, index, ttl_ms, now)
    }

    fn waiter_presence(&mut self, id: LockId, index: usize, now: u64, presence: Presence) {
        let waiter_ttl_ms = self.waiter_ttl_ms(id);
        let queue = self.slots[id as usize].as_mut().and_then(|l| l.queue.as_mut()).expect("waiter's lock has a queue");
        let w = &mut queue.waiters[index];
        let was_unwatched = w.watchers == 0;
        let old = (w.absent_at_ms, w.ticket, id);
        match presence {
            Presence::Seen => {}
            Presence::Watch => w.watchers = w.watchers.saturating_add(1),
            Presence::Unwatch => w.watchers = w.watchers.saturating_sub(1),
        }
        if was_unwatched {
            self.deadlines.remove(&old);
        }
        if w.watchers == 0 {
            w.absent_at_ms = w.absent_at(now, waiter_ttl_ms);
            self.deadlines.insert((w.absent_at_ms, w.ticket, id));
        }
    }

    fn touch(&mut self, name: &LockName, ticket: Ticket, at: Moment, presence: Presence) -> Reply {
        let Some(id) = self.find(name.as_str()) else {
            return Reply::TicketUnknown;
        };
        self.touch_found(id, ticket, at, presence)
    }

    /// A ticket of lock `id` shows up (or a watch of it opens or closes).
    fn touch_found(&mut self, id: LockId, ticket: Ticket, at: Moment, presence: Presence) -> Reply {
        let lock = self.lock(id);
        if let Some(i) = lock.holder_index(ticket) {
            return match presence {
                Presence::Unwatch => Reply::Held(lock.holders[i].view(lock.rw)),
                Presence::Seen | Presence::Watch => self.claim(id, i, at.now_ms),
            };
        }
        let Some(i) = lock.waiter_index(ticket) else {
            return Reply::TicketUnknown;
        };
        self.waiter_presence(id, i, at.now_ms, presence);
        Reply::Queued(self.lock(id).queue_view(i))
    }

    fn renew(&mut self, name: &LockName, ticket: Ticket, ttl_ms: Option<u64>, at: Moment) -> Reply {
        if let Some(ttl) = ttl_ms {
            if ttl < self.limits.min_ttl_ms || ttl > self.limits.max_ttl_ms {
                return out_of_range("ttl_ms", ttl, self.limits.min_ttl_ms, self.limits.max_ttl_ms);
            }
        }
        let Some(id) = self.find(name.as_str()) else {
            return Reply::TicketUnknown;
        };
        if let Some((min, max)) = self.declaration(id).map(|d| d.ttl_bounds(&self.limits)) {
            if let Some(ttl) = ttl_ms.filter(|&t| t < min || t > max) {
                return out_of_range("ttl_ms", ttl, min, max);
            }
        }
        let lock = self.lock(id);
        if let Some(i) = lock.holder_index(ticket) {
            let ttl = ttl_ms.unwrap_or(lock.holders[i].ttl_ms);
            return self.extend(id, i, ttl, at.now_ms);
        }
        let Some(i) = lock.waiter_index(ticket) else {
            return Reply::TicketUnknown;
        };
        self.waiter_presence(id, i, at.now_ms, Presence::Seen);
        Reply::NotHolder(self.lock(id).queue_view(i))
    }

    fn release(&mut self, name: &LockName, ticket: Ticket, at: Moment, out: &mut Vec<Output>) -> Reply {
        let Some(id) = self.find(name.as_str()) else {
            return Reply::TicketUnknown;
        };
        let lock = self.lock(id);
        let mut moved_from = NOT_MOVED;
        let reply = if let Some(i) = lock.holder_index(ticket) {
            let lease = self.remove_holder(id, i, true);
            out.push(Output::Released { lock: name.clone(), ticket, fence: lease.fence });
            Reply::Released { fence: lease.fence }
        } else if let Some(i) = lock.waiter_index(ticket) {
            self.remove_waiter(id, i, true);
            moved_from = i;
            Reply::Left
        } else {
            return Reply::TicketUnknown;
        };
        self.settle(id, at, moved_from, out);
        reply
    }

    fn set_limit(&mut self, name: &LockName, limit: u32, at: Moment, out: &mut Vec<Output>) -> Reply {
        if limit == 0 || limit > self.limits.max_limit {
            return out_of_range("limit", limit.into(), 1, self.limits.max_limit.into());
        }
        let Some(id) = self.find(name.as_str()) else {
            return Reply::LockUnknown;
        };
        if let Some(d) = self.declaration(id).filter(|d| d.kind == LockKind::Semaphore) {
            // The configuration's word: a declared limit changes on reload only.
            return Reply::LimitMismatch { limit: d.limit };
        }
        let lock = self.lock_mut(id);
        if lock.rw {
            return Reply::KindMismatch { kind: LockKind::Rw };
        }
        if limit < lock.used {
            return Reply::LimitInUse { used: lock.used };
        }
        lock.limit = limit;
        let moved_from = self.drop_heavier(id, limit, out);
        self.settle(id, at, moved_from, out);
        Reply::LimitSet { limit }
    }

    fn put_data(&mut self, name: &LockName, ticket: Ticket, key: DataKey, value: Box<str>, at: Moment) -> Reply {
        let Some(id) = self.find(name.as_str()) else {
            return Reply::TicketUnknown;
        };
        let (max_keys, max_bytes) = (self.limits.max_data_keys, self.limits.max_data_bytes);
        let lock = self.lock(id);
        let Some(i) = lock.holder_index(ticket) else {
            return self.not_holder(id, ticket, at);
        };
        let data = lock.data.as_deref();
        let old_len = data.and_then(|d| d.entries.get(&key)).map(|v| key.as_str().len() + v.len());
        let keys = data.map_or(0, |d| d.entries.len());
        if old_len.is_none() && keys >= max_keys as usize {
            return Reply::Rejected(CoreError::DataTooLarge { limit: "max_data_keys", max: max_keys.into() });
        }
        let before = data.map_or(0, |d| d.bytes as usize);
        let bytes = before - old_len.unwrap_or(0) + key.as_str().len() + value.len();
        if bytes > max_bytes as usize {
            return Reply::Rejected(CoreError::DataTooLarge { limit: "max_data_bytes", max: max_bytes.into() });
        }
        // A write that does not grow the total is always let through, so data can shrink
        // after a reload lowered the total below what is stored.
        let total = self.data_bytes - before as u64 + bytes as u64;
        if bytes > before && total > self.limits.max_data_bytes_total {
            return Reply::DataFull { key, max_bytes: self.limits.max_data_bytes_total };
        }
        self.claim(id, i, at.now_ms);
        self.data_bytes = total;
        let data = self.lock_mut(id).data.get_or_insert_with(Default::default);
        data.entries.insert(key, value);
        data.bytes = bytes as u32;
        Reply::DataWritten { created: old_len.is_none() }
    }

    fn delete_data(&mut self, name: &LockName, ticket: Ticket, key: &DataKey, at: Moment) -> Reply {
        let Some(id) = self.find(name.as_str()) else {
            return Reply::TicketUnknown;
        };
        let Some(i) = self.lock(id).holder_index(ticket) else {
            return self.not_holder(id, ticket, at);
        };
        self.claim(id, i, at.now_ms);
        let lock = self.lock_mut(id);
        let Some(data) = lock.data.as_mut() else {
            return Reply::DataDeleted { existed: false };
        };
        let Some(value) = data.entries.remove(key) else {
            return Reply::DataDeleted { existed: false };
        };
        let freed = key.as_str().len() + value.len();
        data.bytes -= freed as u32;
        if data.entries.is_empty() {
            lock.data = None;
        }
        self.data_bytes -= freed as u64;
        Reply::DataDeleted { existed: true }
    }

    /// Removes every data key of a lock nobody holds or waits for; the lock is then
    /// forgotten. A lock in use keeps its data: its holder's writes are fenced, and a
    /// removal behind its back would not be.
    fn clear_data(&mut self, name: &LockName, at: Moment) -> Reply {
        let Some(id) = self.find(name.as_str()) else {
            return Reply::LockUnknown;
        };
        let lock = self.lock_mut(id);
        if lock.has_participants() {
            return Reply::LockBusy { holders: lock.holders.len() as u32, waiters: lock.queue_len() as u32 };
        }
        let data = lock.data.take().expect("a lock with no participants has data");
        self.data_bytes -= u64::from(data.bytes);
        self.forget_if_empty(id, at.now_ms);
        Reply::DataCleared { keys: data.entries.len() as u32 }
    }

    /// The reply to a holder-only operation from a ticket that is not a holder.
    fn not_holder(&mut self, id: LockId, ticket: Ticket, at: Moment) -> Reply {
        match self.lock(id).waiter_index(ticket) {
            Some(i) => {
                self.waiter_presence(id, i, at.now_ms, Presence::Seen);
                Reply::NotHolder(self.lock(id).queue_view(i))
            }
            None => Reply::TicketUnknown,
        }
    }

    /// Removes a holder; `unindex` is false when its deadline already left the index.
    fn remove_holder(&mut self, id: LockId, index: usize, unindex: bool) -> Lease {
        let lock = self.slots[id as usize].as_mut().expect("lock slot is occupied");
        let lease = lock.holders.swap_remove(index);
        lock.used -= lease.weight;
        if lock.holders.is_empty() {
            lock.holders = Holders::new();
        }
        if unindex {
            self.deadlines.remove(&(lease.expires_at_ms, lease.ticket, id));
        }
        self.holders -= 1;
        lease
    }

    /// Removes a waiter; `unindex` is false when its deadline already left the index.
    fn remove_waiter(&mut self, id: LockId, index: usize, unindex: bool) -> Waiter {
        let lock = self.slots[id as usize].as_mut().expect("lock slot is occupied");
        let queue = lock.queue.as_mut().expect("waiter's lock has a queue");
        let w = queue.waiters.remove(index).expect("waiter index in range");
        if queue.candidate == Some(w.ticket) {
            queue.candidate = None;
        }
        if queue.waiters.is_empty() {
            lock.queue = None;
        }
        if unindex && w.watchers == 0 {
            self.deadlines.remove(&(w.absent_at_ms, w.ticket, id));
        }
        self.waiters -= 1;
        w
    }

    /// After permits may have freed up: admit who fits, tell watched waiters that moved,
    /// and forget the lock if it is empty.
    fn settle(&mut self, id: LockId, at: Moment, mut moved_from: usize, out: &mut Vec<Output>) {
        self.admit(id, at, &mut moved_from, out);
        let lock = self.lock(id);
        if moved_from != NOT_MOVED && lock.kind == QueueKind::Fifo {
            if let Some(queue) = lock.queue.as_ref() {
                let queue_length = queue.waiters.len() as u32;
                for (i, w) in queue.waiters.iter().enumerate().skip(moved_from) {
                    if w.watchers > 0 {
                        out.push(Output::Moved {
                            lock: lock.name.clone(),
                            ticket: w.ticket,
                            position: i as u32 + 1,
                            queue_length,
                        });
                    }
                }
            }
        }
        self.forget_if_empty(id, at.now_ms);
    }

    /// Admits who fits from lock `id`'s queue, then sets or clears its admission timer.
    fn admit(&mut self, id: LockId, at: Moment, moved_from: &mut usize, out: &mut Vec<Output>) {
        if self.lock(id).queue.is_none() && self.limits.declared.is_empty() {
            // Nobody waits, and no lock has a rate: nothing to admit, no timer.
            return;
        }
        self.admit_queue(id, at, moved_from, out);
        self.refresh_timer(id);
    }

    fn admit_queue(&mut self, id: LockId, at: Moment, moved_from: &mut usize, out: &mut Vec<Output>) {
        if self.lock(id).queue.is_none() {
            return;
        }
        let claim_ms = self.claim_ms(id);
        let mut draws: Option<SplitMix64> = None;
        loop {
            let lock = self.slots[id as usize].as_mut().expect("lock slot is occupied");
            let Some(queue) = lock.queue.as_mut() else {
                return;
            };
            let index = match lock.kind {
                QueueKind::Fifo => {
                    if !fits(lock.used, queue.waiters[0].weight, lock.limit) {
                        return;
                    }
                    0
                }
                QueueKind::Lottery => {
                    let index = match queue.candidate {
                        Some(t) => queue.waiters.iter().position(|w| w.ticket == t).expect("candidate is queued"),
                        None => {
                            if lock.used >= lock.limit {
                                return;
                            }
                            let rng = draws.get_or_insert_with(|| lottery_stream(at.entropy, lock.name.as_str()));
                            rng.below(queue.waiters.len())
                        }
                    };
                    if !fits(lock.used, queue.waiters[index].weight, lock.limit) {
                        queue.candidate = Some(queue.waiters[index].ticket);
                        return;
                    }
                    index
                }
            };
            if !self.rate_allows(id, at.now_ms) {
                // The next one to go in fits but waits for a token; a lottery's draw stands.
                let lock = self.lock_mut(id);
                if lock.kind == QueueKind::Lottery {
                    let queue = lock.queue.as_mut().expect("the queue is not empty");
                    queue.candidate = Some(queue.waiters[index].ticket);
                }
                return;
            }
            let w = self.remove_waiter(id, index, true);
            *moved_from = min(*moved_from, index);
            let claimed = w.watchers > 0;
            let callback = w.extra.callback().cloned();
            let lease = Lease {
                ticket: w.ticket,
                fence: 0,
                expires_at_ms: at.now_ms + if claimed { w.ttl_ms } else { min(claim_ms, w.ttl_ms) },
                ttl_ms: w.ttl_ms,
                weight: w.weight,
                claimed,
                extra: w.extra,
            };
            let view = self.grant(id, lease, at.now_ms);
            let (ticket, fence) = (view.ticket, view.fence);
            let name = &self.lock(id).name;
            out.push(Output::Granted { lock: name.clone(), lease: view });
            if let Some(url) = callback {
                out.push(Output::CallbackDue {
                    url,
                    event: CallbackEvent::Acquired,
                    lock: name.clone(),
                    ticket,
                    fence,
                    at_ms: at.now_ms,
                });
            }
        }
    }

    /// Makes `lease` a holder of lock `id`, giving it the next fence (its `fence` field is
    /// overwritten). Every grant, immediate or from the queue, goes through here.
    fn grant(&mut self, id: LockId, mut lease: Lease, now_ms: u64) -> LeaseView {
        lease.fence = self.next_fence;
        self.next_fence += 1;
        if let Some(rate) = self.rate(id) {
            let admit = self.admits.entry(id).or_default();
            admit.tat_us = rate.after_grant(admit.tat_us, now_ms);
        }
        let lock = self.slots[id as usize].as_mut().expect("lock slot is occupied");
        if lock.holders.capacity() == lock.holders.len() {
            // Most locks are mutexes: grow one lease at a time, not by doubling.
            lock.holders.reserve_exact(1);
        }
        lock.used += lease.weight;
        self.deadlines.insert((lease.expires_at_ms, lease.ticket, id));
        self.holders += 1;
        let view = lease.view(lock.rw);
        lock.holders.push(lease);
        view
    }

    /// Ends every lease and drops every absent waiter due at or before `at.now_ms`, then
    /// admits waiters into the freed permits. Returns how many deadlines fired.
    pub fn expire(&mut self, at: Moment, out: &mut Vec<Output>) -> usize {
        self.prune_buckets(at.now_ms);
        // Take every due entry out of the index in one cut, in (deadline, ticket) order.
        let later = self.deadlines.split_off(&(at.now_ms.saturating_add(1), Ticket::from_bytes([0; 16]), 0));
        let due = std::mem::replace(&mut self.deadlines, later);
        let fired = due.len();
        let mut due: Vec<(u64, Ticket, LockId)> = due.into_iter().collect();
        if due.iter().filter(|d| d.1 == TIMER).nth(1).is_some() {
            // Timers share one ticket: their ties go by lock name, not by the slot (which
            // differs between a table and its import), so a replay admits in the same order.
            due.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then_with(|| self.lock(a.2).name.cmp(&self.lock(b.2).name)));
        }
        // First every removal, in deadline order; then each touched lock is settled in the
        // order it was first touched (earliest due deadline, then ticket), so fences go out
        // in time order whatever the locks' places in memory.
        let mut touched: Vec<(LockId, usize)> = Vec::new();
        for (when_ms, ticket, id) in due {
            let lock = self.lock_mut(id);
            if lock.touched == 0 {
                touched.push((id, NOT_MOVED));
                lock.touched = touched.len() as u32;
            }
            let slot = lock.touched as usize - 1;
            if ticket == TIMER {
                // A token is due (or the bucket is full): the settling below admits or forgets.
                if let Some(admit) = self.admits.get_mut(&id).filter(|a| a.timer_ms == when_ms) {
                    admit.timer_ms = 0;
                }
                self.timers -= 1;
            } else if let Some(i) = lock.holder_index(ticket) {
                let unclaimed = !lock.holders[i].claimed;
                let name = lock.name.clone();
                let lease = self.remove_holder(id, i, false);
                if let Some(url) = lease.callback() {
                    out.push(Output::Expired { lock: name.clone(), ticket, fence: lease.fence, unclaimed });
                    out.push(Output::CallbackDue {
                        url: url.clone(),
                        event: CallbackEvent::Expired,
                        lock: name,
                        ticket,
                        fence: lease.fence,
                        at_ms: at.now_ms,
                    });
                } else {
                    out.push(Output::Expired { lock: name, ticket, fence: lease.fence, unclaimed });
                }
            } else if let Some(i) = lock.waiter_index(ticket) {
                let name = lock.name.clone();
                self.remove_waiter(id, i, false);
                touched[slot].1 = min(touched[slot].1, i);
                out.push(Output::Dropped { lock: name, ticket, reason: DropReason::Absent });
            }
        }
        for (id, moved_from) in touched {
            self.lock_mut(id).touched = 0;
            self.settle(id, at, moved_from, out);
        }
        self.debug_check();
        fired
    }

    /// Gives every waiter a fresh presence window (after a restart, nobody is connected); a
    /// waiter with a callback keeps the rest of its wait if that is longer.
    pub fn reset_presence(&mut self, now_ms: u64) {
        let global_waiter_ttl_ms = self.limits.waiter_ttl_ms;
        for (id, slot) in self.slots.iter_mut().enumerate() {
            let Some(lock) = slot.as_mut() else { continue };
            let declared = self.declared.get(lock.decl).and_then(|d| d.waiter_ttl_ms);
            let waiter_ttl_ms = declared.unwrap_or(global_waiter_ttl_ms);
            let Some(queue) = lock.queue.as_mut() else {
                continue;
            };
            for w in queue.waiters.iter_mut() {
                if w.watchers == 0 {
                    self.deadlines.remove(&(w.absent_at_ms, w.ticket, id as LockId));
                }
                w.watchers = 0;
                w.absent_at_ms = w.absent_at(now_ms, waiter_ttl_ms);
                self.deadlines.insert((w.absent_at_ms, w.ticket, id as LockId));
            }
        }
        self.debug_check();
    }

    /// Moves every holder's expiry `by_ms` later: the grace a new cluster leader gives
    /// after a time without a leader, in which no holder could renew (docs/cluster.md,
    /// "Takeover"). Unclaimed grants get the same grace to claim. Fences and TTLs stay.
    pub fn extend_leases(&mut self, by_ms: u64) {
        if by_ms == 0 {
            return;
        }
        for (id, slot) in self.slots.iter_mut().enumerate() {
            let Some(lock) = slot.as_mut() else { continue };
            for lease in lock.holders.iter_mut() {
                self.deadlines.remove(&(lease.expires_at_ms, lease.ticket, id as LockId));
                lease.expires_at_ms = lease.expires_at_ms.saturating_add(by_ms);
                self.deadlines.insert((lease.expires_at_ms, lease.ticket, id as LockId));
            }
        }
        self.debug_check();
    }

    /// Where `ticket` stands on lock `name`, without counting as presence.
    pub fn ticket_view(&self, name: &str, ticket: Ticket) -> Option<TicketView> {
        let lock = self.lock(self.find(name)?);
        if let Some(i) = lock.holder_index(ticket) {
            return Some(TicketView::Holding(lock.holders[i].view(lock.rw)));
        }
        lock.waiter_index(ticket).map(|i| TicketView::Waiting(lock.queue_view(i)))
    }

    /// A lock as readers see it.
    pub fn lock_view(&self, name: &str) -> Option<LockView> {
        let lock = self.lock(self.find(name)?);
        let mut holders: Vec<HolderView> = lock
            .holders
            .iter()
            .map(|l| HolderView {
                owner: l.owner().cloned(),
                weight: if lock.rw { 1 } else { l.weight },
                fence: l.fence,
                expires_at_ms: l.expires_at_ms,
                claimed: l.claimed,
                mode: lock.rw.then(|| rw_mode(l.weight)),
                user: l.extra.user().cloned(),
            })
            .collect();
        holders.sort_by_key(|h| h.fence);
        let (used, limit) = lock.shown_usage();
        Some(LockView {
            name: lock.name.clone(),
            kind: lock.lock_kind(),
            limit,
            queue: lock.kind,
            used,
            holders,
            queue_length: lock.queue_len() as u32,
            data_keys: lock.data.as_ref().map_or(0, |d| d.entries.len() as u32),
            declared: self.declared.get(lock.decl).cloned(),
        })
    }

    /// Up to `limit` locks whose names start with `prefix` and sort after `after`, in name
    /// order. Costs one pass over the table.
    pub fn list(&self, prefix: &str, after: Option<&str>, limit: usize) -> Vec<LockView> {
        let mut names: Vec<&str> = self
            .slots
            .iter()
            .flatten()
            .map(|l| l.name.as_str())
            .filter(|n| n.starts_with(prefix) && after.is_none_or(|a| *n > a))
            .collect();
        if names.len() > limit && limit > 0 {
            names.select_nth_unstable(limit - 1);
        }
        names.truncate(limit);
        names.sort_unstable();
        names.into_iter().filter_map(|n| self.lock_view(n)).collect()
    }

    /// The JSON text stored under `key` of lock `name`.
    pub fn data(&self, name: &str, key: &str) -> Option<&str> {
        let lock = self.lock(self.find(name)?);
        lock.data.as_ref()?.entries.get(key).map(|v| &**v)
    }

    /// Every data entry of lock `name`, in key order.
    pub fn data_entries(&self, name: &str) -> Vec<(&DataKey, &str)> {
        self.find(name)
            .and_then(|id| self.lock(id).data.as_ref())
            .map(|d| d.entries.iter().map(|(k, v)| (k, &**v)).collect())
            .unwrap_or_default()
    }

    #[inline]
    fn debug_check(&self) {
        #[cfg(debug_assertions)]
        {
            let result =
                if self.index.len() <= FULL_CHECK_MAX_LOCKS { self.check_invariants() } else { self.check_counts() };
            if let Err(broken) = result {
                panic!("lease table invariant broken: {broken}");
            }
        }
    }
}

/// How a call counts toward a ticket's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Presence {
    /// Seen now (a poll).
    Seen,
    /// A waiting request or stream opened.
    Watch,
    /// A waiting request or stream closed.
    Unwatch,
}

#[cfg(test)]
mod tests;
