//! A deliberately naive reference model of the lease table: vectors and linear scans, no
//! indexes, deadlines found by scanning every lease and waiter. It implements the lease
//! table's rules (listed in `src/core/lock/mod.rs`) as plainly as possible so the real
//! table can be compared against it step by step. It shares only the vocabulary (ops,
//! replies, outputs) and the definition of a lottery draw with the real table.
//!
//! Read/write locks are modelled as what they mean (a writer needs an empty lock, a reader
//! a lock without a writer), not as the weights the real table uses inside. Declarations
//! are found by scanning the list each time; the admission rate is a bucket of credit
//! (µs of refill, `burst × interval` when full, a grant spends one interval), which the
//! real table keeps as a single timestamp instead.

use std::collections::BTreeMap;

use leasehold::core::lock::{
    Acquire, CallbackEvent, Declaration, DropReason, LeaseState, LeaseView, LockKind, LockMode, LockState, Op, Output,
    QueueKind, QueueMode, QueueView, Reply, TableLimits, TableState, WaiterState,
};
use leasehold::core::names::{CallbackUrl, LockName, Owner, Ticket, UserId};
use leasehold::core::rand::lottery_stream;
use leasehold::core::CoreError;

#[derive(Debug, Clone)]
struct MLease {
    ticket: Ticket,
    fence: u64,
    expires_at_ms: u64,
    ttl_ms: u64,
    weight: u32,
    claimed: bool,
    owner: Option<Owner>,
    callback: Option<CallbackUrl>,
    /// A read/write lock's lease (weight 1).
    mode: Option<LockMode>,
    user: Option<UserId>,
}

#[derive(Debug, Clone)]
struct MWaiter {
    ticket: Ticket,
    weight: u32,
    mode: Option<LockMode>,
    ttl_ms: u64,
    watchers: u32,
    absent_at_ms: u64,
    owner: Option<Owner>,
    callback: Option<CallbackUrl>,
    user: Option<UserId>,
    /// With a callback: present until then, seen or not (0: no such wait).
    wait_until_ms: u64,
}

impl MWaiter {
    /// Seen (or unwatched) at `now`: absent `wttl` later, or at the end of its wait.
    fn seen(&mut self, now: u64, wttl: u64) {
        self.absent_at_ms = (now + wttl).max(self.wait_until_ms);
    }
}

/// The ticket the real table's admission timers carry in its deadline order.
const TIMER: Ticket = Ticket::from_bytes([0; 16]);

/// The declaration of lock `name`: a declaration of that name, else the one of the longest
/// prefix of it (the first, of equal ones).
fn declaration<'a>(declared: &'a [Declaration], name: &str) -> Option<&'a Declaration> {
    if let Some(d) = declared.iter().find(|d| d.name.as_ref().is_some_and(|n| n.as_str() == name)) {
        return Some(d);
    }
    let mut best: Option<&Declaration> = None;
    for d in declared {
        let Some(prefix) = &d.prefix else { continue };
        let longer = best.is_none_or(|b| b.prefix.as_ref().map_or(0, String::len) < prefix.len());
        if name.starts_with(prefix.as_str()) && longer {
            best = Some(d);
        }
    }
    best
}

/// An admission rate as a bucket of credit.
#[derive(Debug, Clone, Copy)]
struct MRate {
    /// µs of credit one grant spends (a minute over the rate, rounded up).
    interval_us: u64,
    burst: u64,
}

impl MRate {
    fn of(d: &Declaration) -> Option<MRate> {
        d.admit_per_minute.map(|per_minute| MRate {
            interval_us: 60_000_000u64.div_ceil(per_minute.into()),
            burst: d.admit_burst.into(),
        })
    }

    /// The credit at `now_ms` of a bucket that is full again at `tat_us`.
    fn credit(&self, tat_us: u64, now_ms: u64) -> u64 {
        let full = self.burst * self.interval_us;
        (now_ms * 1000 + full).saturating_sub(tat_us).min(full)
    }

    fn allows(&self, tat_us: u64, now_ms: u64) -> bool {
        self.credit(tat_us, now_ms) >= self.interval_us
    }

    /// The bucket's "full again" time after one grant at `now_ms`.
    fn spend(&self, tat_us: u64, now_ms: u64) -> u64 {
        let left = self.credit(tat_us, now_ms) - self.interval_us;
        now_ms * 1000 + self.burst * self.interval_us - left
    }

    /// The first millisecond with credit for a grant.
    fn next_allowed_ms(&self, tat_us: u64) -> u64 {
        tat_us.saturating_sub((self.burst - 1) * self.interval_us).div_ceil(1000)
    }
}

#[derive(Debug, Clone)]
struct MLock {
    name: LockName,
    /// A read/write lock: no permit count, `limit` unused.
    rw: bool,
    limit: u32,
    kind: QueueKind,
    holders: Vec<MLease>,
    waiters: Vec<MWaiter>,
    candidate: Option<Ticket>,
    data: Vec<(String, String)>,
    /// With an admission rate, once it has granted: when its bucket is full again, µs.
    tat_us: Option<u64>,
}

impl MLock {
    /// Whether the next one to go in (the FIFO head, or the lottery's candidate) fits.
    fn next_fits(&self) -> bool {
        let next = match self.kind {
            QueueKind::Fifo => self.waiters.first(),
            QueueKind::Lottery => self.candidate.and_then(|c| self.waiters.iter().find(|w| w.ticket == c)),
        };
        next.is_some_and(|w| self.fits(w.weight, w.mode))
    }

    fn used(&self) -> u32 {
        self.holders.iter().map(|h| h.weight).sum()
    }

    /// Whether a lease of `weight` (semaphore) or `mode` (read/write lock) may join the
    /// holders now.
    fn fits(&self, weight: u32, mode: Option<LockMode>) -> bool {
        match mode {
            Some(LockMode::Exclusive) => self.holders.is_empty(),
            Some(LockMode::Shared) => self.holders.iter().all(|h| h.mode == Some(LockMode::Shared)),
            None => self.used() + weight <= self.limit,
        }
    }

    /// Permits in use and the count, as a read/write lock shows them: holders, and 0.
    fn shown_usage(&self) -> (u32, u32) {
        if self.rw {
            (self.holders.len() as u32, 0)
        } else {
            (self.used(), self.limit)
        }
    }

    fn queue_view(&self, i: usize) -> QueueView {
        QueueView {
            ticket: self.waiters[i].ticket,
            position: if self.kind == QueueKind::Fifo { Some(i as u32 + 1) } else { None },
            queue_length: self.waiters.len() as u32,
        }
    }

    /// A `Moved` output for every watched FIFO waiter whose position is lower than in `before`.
    fn push_moves(&self, before: &[(Ticket, usize)], out: &mut Vec<Output>) {
        for (ticket, pos) in self.fifo_watched_positions() {
            if before.iter().any(|&(t, old)| t == ticket && pos < old) {
                out.push(Output::Moved {
                    lock: self.name.clone(),
                    ticket,
                    position: pos as u32 + 1,
                    queue_length: self.waiters.len() as u32,
                });
            }
        }
    }

    fn fifo_watched_positions(&self) -> Vec<(Ticket, usize)> {
        if self.kind != QueueKind::Fifo {
            return Vec::new();
        }
        self.waiters.iter().enumerate().filter(|(_, w)| w.watchers > 0).map(|(i, w)| (w.ticket, i)).collect()
    }
}

fn view(l: &MLease) -> LeaseView {
    LeaseView {
        ticket: l.ticket,
        fence: l.fence,
        owner: l.owner.clone(),
        weight: l.weight,
        expires_at_ms: l.expires_at_ms,
        claimed: l.claimed,
        mode: l.mode,
        user: l.user.clone(),
    }
}

/// The reference model.
#[derive(Debug, Clone)]
pub struct Model {
    limits: TableLimits,
    locks: Vec<MLock>,
    next_fence: u64,
    /// Buckets still refilling when their lock was forgotten.
    buckets: BTreeMap<LockName, u64>,
}

fn range(field: &'static str, value: u64, min: u64, max: u64) -> Reply {
    Reply::Rejected(CoreError::OutOfRange { field, value, min, max })
}

impl Model {
    pub fn new(limits: TableLimits) -> Self {
        Self { limits, locks: Vec::new(), next_fence: 1, buckets: BTreeMap::new() }
    }

    fn decl(&self, name: &LockName) -> Option<Declaration> {
        declaration(&self.limits.declared, name.as_str()).cloned()
    }

    fn rate(&self, name: &LockName) -> Option<MRate> {
        self.decl(name).as_ref().and_then(MRate::of)
    }

    fn wttl(&self, name: &LockName) -> u64 {
        self.decl(name).and_then(|d| d.waiter_ttl_ms).unwrap_or(self.limits.waiter_ttl_ms)
    }

    /// When lock `li`'s admission timer fires, if set: while its next one fits but waits.
    fn timer_ms(&self, li: usize) -> Option<u64> {
        let l = &self.locks[li];
        let rate = self.rate(&l.name)?;
        let tat_us = l.tat_us?;
        l.next_fits().then(|| rate.next_allowed_ms(tat_us))
    }

    fn prune_buckets(&mut self, now: u64) {
        self.buckets.retain(|_, tat| *tat > now * 1000);
    }

    /// A reload: new limits; where the declarations changed, every lock takes its own, in
    /// name order, and is settled. Returns the outputs.
    pub fn set_limits(&mut self, limits: TableLimits, now: u64, entropy: u64) -> Vec<Output> {
        let mut out = Vec::new();
        let redeclared = limits.declared != self.limits.declared;
        self.limits = limits;
        if !redeclared {
            return out;
        }
        let declared = self.limits.declared.clone();
        self.buckets.retain(|name, _| declaration(&declared, name.as_str()).and_then(MRate::of).is_some());
        let mut names: Vec<LockName> = self.locks.iter().map(|l| l.name.clone()).collect();
        names.sort();
        for name in names {
            let li = self.find(&name).expect("lock");
            let d = self.decl(&name);
            let before = self.locks[li].fifo_watched_positions();
            let l = &mut self.locks[li];
            if d.as_ref().and_then(MRate::of).is_none() {
                l.tat_us = None;
            }
            if !l.rw && l.used() > l.limit && d.as_ref().is_none_or(|d| d.kind != LockKind::Semaphore) {
                l.limit = l.used();
            }
            if let Some(d) = d {
                if l.holders.is_empty() && l.waiters.is_empty() {
                    l.rw = d.kind == LockKind::Rw;
                    l.limit = d.limit;
                    l.kind = d.queue;
                } else if !l.rw && d.kind == LockKind::Semaphore && l.limit != d.limit {
                    l.limit = d.limit;
                    let heavy: Vec<Ticket> =
                        l.waiters.iter().filter(|w| w.weight > d.limit).map(|w| w.ticket).collect();
                    for t in heavy {
                        l.waiters.retain(|w| w.ticket != t);
                        if l.candidate == Some(t) {
                            l.candidate = None;
                        }
                        out.push(Output::Dropped { lock: name.clone(), ticket: t, reason: DropReason::LimitLowered });
                    }
                }
            }
            self.admit(li, now, entropy, &mut out);
            self.locks[li].push_moves(&before, &mut out);
        }
        self.forget_empty(now);
        out
    }

    fn find(&self, name: &LockName) -> Option<usize> {
        self.locks.iter().position(|l| l.name == *name)
    }

    /// Applies one operation; returns the reply and the outputs.
    pub fn apply(&mut self, op: &Op, now: u64, entropy: u64) -> (Reply, Vec<Output>) {
        let mut out = Vec::new();
        let lock_name = op.lock().clone();
        let before = self.find(&lock_name).map(|i| self.locks[i].fifo_watched_positions()).unwrap_or_default();
        let reply = self.step(op, now, entropy, &mut out);
        if let Some(i) = self.find(&lock_name) {
            self.locks[i].push_moves(&before, &mut out);
        }
        self.forget_empty(now);
        (reply, out)
    }

    /// Forgets every lock without holders, waiters and data; a bucket still refilling
    /// outlives its lock.
    fn forget_empty(&mut self, now: u64) {
        let (gone, kept): (Vec<MLock>, Vec<MLock>) = std::mem::take(&mut self.locks)
            .into_iter()
            .partition(|l| l.holders.is_empty() && l.waiters.is_empty() && l.data.is_empty());
        self.locks = kept;
        for l in gone {
            if let Some(tat) = l.tat_us.filter(|&t| t > now * 1000) {
                self.buckets.insert(l.name, tat);
            }
        }
    }

    fn step(&mut self, op: &Op, now: u64, entropy: u64, out: &mut Vec<Output>) -> Reply {
        match op {
            Op::Acquire(a) => self.acquire(a, now, entropy, out),
            Op::Renew { lock, ticket, ttl_ms } => {
                if let Some(ttl) = ttl_ms {
                    if *ttl < self.limits.min_ttl_ms || *ttl > self.limits.max_ttl_ms {
                        return range("ttl_ms", *ttl, self.limits.min_ttl_ms, self.limits.max_ttl_ms);
                    }
                }
                let Some(li) = self.find(lock) else { return Reply::TicketUnknown };
                if let Some(d) = self.decl(lock) {
                    let min = d.min_ttl_ms.unwrap_or(self.limits.min_ttl_ms);
                    let max = d.max_ttl_ms.unwrap_or(self.limits.max_ttl_ms);
                    if let Some(ttl) = ttl_ms.filter(|&t| t < min || t > max) {
                        return range("ttl_ms", ttl, min, max);
                    }
                }
                let wttl = self.wttl(lock);
                let l = &mut self.locks[li];
                if let Some(h) = l.holders.iter_mut().find(|h| h.ticket == *ticket) {
                    let ttl = ttl_ms.unwrap_or(h.ttl_ms);
                    h.ttl_ms = ttl;
                    h.expires_at_ms = now + ttl;
                    h.claimed = true;
                    return Reply::Held(view(h));
                }
                match l.waiters.iter().position(|w| w.ticket == *ticket) {
                    Some(i) => {
                        if l.waiters[i].watchers == 0 {
                            l.waiters[i].seen(now, wttl);
                        }
                        Reply::NotHolder(l.queue_view(i))
                    }
                    None => Reply::TicketUnknown,
                }
            }
            Op::Release { lock, ticket } => {
                let Some(li) = self.find(lock) else { return Reply::TicketUnknown };
                let l = &mut self.locks[li];
                let reply = if let Some(i) = l.holders.iter().position(|h| h.ticket == *ticket) {
                    let h = l.holders.remove(i);
                    out.push(Output::Released { lock: lock.clone(), ticket: *ticket, fence: h.fence });
                    Reply::Released { fence: h.fence }
                } else if let Some(i) = l.waiters.iter().position(|w| w.ticket == *ticket) {
                    l.waiters.remove(i);
                    if l.candidate == Some(*ticket) {
                        l.candidate = None;
                    }
                    Reply::Left
                } else {
                    return Reply::TicketUnknown;
                };
                self.admit(li, now, entropy, out);
                reply
            }
            Op::Touch { lock, ticket } => self.presence(lock, *ticket, now, 0),
            Op::Watch { lock, ticket } => self.presence(lock, *ticket, now, 1),
            Op::Unwatch { lock, ticket } => self.presence(lock, *ticket, now, -1),
            Op::SetLimit { lock, limit } => {
                if *limit == 0 || *limit > self.limits.max_limit {
                    return range("limit", (*limit).into(), 1, self.limits.max_limit.into());
                }
                let Some(li) = self.find(lock) else { return Reply::LockUnknown };
                if let Some(d) = self.decl(lock).filter(|d| d.kind == LockKind::Semaphore) {
                    return Reply::LimitMismatch { limit: d.limit };
                }
                let l = &mut self.locks[li];
                if l.rw {
                    return Reply::KindMismatch { kind: LockKind::Rw };
                }
                if *limit < l.used() {
                    return Reply::LimitInUse { used: l.used() };
                }
                l.limit = *limit;
                let heavy: Vec<Ticket> = l.waiters.iter().filter(|w| w.weight > *limit).map(|w| w.ticket).collect();
                for t in heavy {
                    l.waiters.retain(|w| w.ticket != t);
                    if l.candidate == Some(t) {
                        l.candidate = None;
                    }
                    out.push(Output::Dropped { lock: lock.clone(), ticket: t, reason: DropReason::LimitLowered });
                }
                self.admit(li, now, entropy, out);
                Reply::LimitSet { limit: *limit }
            }
            Op::PutData { lock, ticket, key, value } => {
                let Some(li) = self.find(lock) else { return Reply::TicketUnknown };
                let (max_keys, max_bytes) = (self.limits.max_data_keys, self.limits.max_data_bytes);
                if !self.locks[li].holders.iter().any(|h| h.ticket == *ticket) {
                    return self.not_holder(li, *ticket, now);
                }
                let l = &mut self.locks[li];
                let exists = l.data.iter().any(|(k, _)| k == key.as_str());
                if !exists && l.data.len() >= max_keys as usize {
                    return Reply::Rejected(CoreError::DataTooLarge { limit: "max_data_keys", max: max_keys.into() });
                }
                let bytes: usize =
                    l.data.iter().filter(|(k, _)| k != key.as_str()).map(|(k, v)| k.len() + v.len()).sum::<usize>()
                        + key.as_str().len()
                        + value.len();
                if bytes > max_bytes as usize {
                    return Reply::Rejected(CoreError::DataTooLarge { limit: "max_data_bytes", max: max_bytes.into() });
                }
                // The total: refused only if the write grows it past the maximum.
                let before: usize = l.data.iter().map(|(k, v)| k.len() + v.len()).sum();
                let others: usize = self
                    .locks
                    .iter()
                    .filter(|o| o.name != *lock)
                    .flat_map(|o| o.data.iter())
                    .map(|(k, v)| k.len() + v.len())
                    .sum();
                let max_total = self.limits.max_data_bytes_total;
                if bytes > before && (others + bytes) as u64 > max_total {
                    return Reply::DataFull { key: key.clone(), max_bytes: max_total };
                }
                let l = &mut self.locks[li];
                Self::claim(l, *ticket, now);
                l.data.retain(|(k, _)| k != key.as_str());
                l.data.push((key.as_str().to_string(), value.to_string()));
                l.data.sort();
                Reply::DataWritten { created: !exists }
            }
            Op::DeleteData { lock, ticket, key } => {
                let Some(li) = self.find(lock) else { return Reply::TicketUnknown };
                if !self.locks[li].holders.iter().any(|h| h.ticket == *ticket) {
                    return self.not_holder(li, *ticket, now);
                }
                let l = &mut self.locks[li];
                Self::claim(l, *ticket, now);
                let existed = l.data.iter().any(|(k, _)| k == key.as_str());
                l.data.retain(|(k, _)| k != key.as_str());
                Reply::DataDeleted { existed }
            }
            Op::ClearData { lock } => {
                let Some(li) = self.find(lock) else { return Reply::LockUnknown };
                let l = &mut self.locks[li];
                if !l.holders.is_empty() || !l.waiters.is_empty() {
                    return Reply::LockBusy { holders: l.holders.len() as u32, waiters: l.waiters.len() as u32 };
                }
                let keys = l.data.len() as u32;
                l.data.clear();
                Reply::DataCleared { keys }
            }
        }
    }

    fn claim(l: &mut MLock, ticket: Ticket, now: u64) -> Reply {
        let h = l.holders.iter_mut().find(|h| h.ticket == ticket).expect("holder");
        if !h.claimed {
            h.claimed = true;
            h.expires_at_ms = now + h.ttl_ms;
        }
        Reply::Held(view(h))
    }

    fn not_holder(&mut self, li: usize, ticket: Ticket, now: u64) -> Reply {
        let wttl = self.wttl(&self.locks[li].name);
        let l = &mut self.locks[li];
        match l.waiters.iter().position(|w| w.ticket == ticket) {
            Some(i) => {
                if l.waiters[i].watchers == 0 {
                    l.waiters[i].seen(now, wttl);
                }
                Reply::NotHolder(l.queue_view(i))
            }
            None => Reply::TicketUnknown,
        }
    }

    /// `delta`: 0 a poll, 1 a watch opened, -1 a watch closed.
    fn presence(&mut self, lock: &LockName, ticket: Ticket, now: u64, delta: i32) -> Reply {
        let Some(li) = self.find(lock) else { return Reply::TicketUnknown };
        let wttl = self.wttl(lock);
        let l = &mut self.locks[li];
        if l.holders.iter().any(|h| h.ticket == ticket) {
            if delta < 0 {
                return Reply::Held(view(l.holders.iter().find(|h| h.ticket == ticket).expect("holder")));
            }
            return Self::claim(l, ticket, now);
        }
        let Some(i) = l.waiters.iter().position(|w| w.ticket == ticket) else { return Reply::TicketUnknown };
        let w = &mut l.waiters[i];
        if delta > 0 {
            w.watchers += 1;
        } else if delta < 0 && w.watchers > 0 {
            w.watchers -= 1;
            if w.watchers == 0 {
                w.seen(now, wttl);
            }
        } else if w.watchers == 0 {
            w.seen(now, wttl);
        }
        Reply::Queued(l.queue_view(i))
    }

    fn acquire(&mut self, a: &Acquire, now: u64, entropy: u64, out: &mut Vec<Output>) -> Reply {
        let lim = self.limits.clone();
        if a.new_ticket == TIMER {
            return Reply::Rejected(CoreError::InvalidTicket);
        }
        let d = self.decl(&a.lock);
        let limit = a.limit.unwrap_or(d.as_ref().map_or(1, |d| d.limit));
        if limit == 0 || limit > lim.max_limit {
            return range("limit", limit.into(), 1, lim.max_limit.into());
        }
        if a.weight == 0 || a.weight > limit {
            return range("weight", a.weight.into(), 1, limit.into());
        }
        let min_ttl = d.as_ref().and_then(|d| d.min_ttl_ms).unwrap_or(lim.min_ttl_ms);
        let max_ttl = d.as_ref().and_then(|d| d.max_ttl_ms).unwrap_or(lim.max_ttl_ms);
        let ttl_ms = match (a.ttl_ms, &d) {
            (Some(ttl), _) => ttl,
            (None, None) => lim.default_ttl_ms,
            (None, Some(d)) => d.default_ttl_ms.unwrap_or(lim.default_ttl_ms).clamp(min_ttl, max_ttl),
        };
        if ttl_ms < min_ttl || ttl_ms > max_ttl {
            return range("ttl_ms", ttl_ms, min_ttl, max_ttl);
        }
        let declared_lottery = d.as_ref().is_some_and(|d| d.queue == QueueKind::Lottery);
        let queue = a.queue.unwrap_or(if declared_lottery { QueueMode::Lottery } else { QueueMode::Fifo });
        if a.mode.is_some() && queue == QueueMode::Lottery {
            return Reply::Rejected(CoreError::Incompatible {
                reason: "a read/write lock (mode) queues in arrival order: queue lottery cannot be given with mode",
            });
        }
        if a.mode.is_some() && (a.limit.is_some_and(|l| l != 1) || a.weight != 1) {
            return Reply::Rejected(CoreError::Incompatible {
                reason: "a read/write lock (mode) has no permit count: limit and weight cannot be given with mode",
            });
        }
        let kind = if queue == QueueMode::Lottery { QueueKind::Lottery } else { QueueKind::Fifo };
        let mut mode = a.mode;
        if let Some(d) = &d {
            match d.kind {
                LockKind::Semaphore if mode.is_some() => return Reply::KindMismatch { kind: LockKind::Semaphore },
                LockKind::Semaphore if limit != d.limit => return Reply::LimitMismatch { limit: d.limit },
                LockKind::Semaphore => {}
                LockKind::Rw if mode.is_none() && (limit != 1 || a.weight != 1) => {
                    return Reply::KindMismatch { kind: LockKind::Rw }
                }
                LockKind::Rw => mode = mode.or(Some(LockMode::Exclusive)),
            }
            if queue != QueueMode::None && kind != d.queue {
                return Reply::QueueMismatch { queue: d.queue };
            }
        }
        let wttl = self.wttl(&a.lock);
        let existing = self.find(&a.lock);
        if let Some(li) = existing {
            for t in a.ticket.iter().chain(std::iter::once(&a.new_ticket)) {
                let l = &mut self.locks[li];
                if let Some(h) = l.holders.iter_mut().find(|h| h.ticket == *t) {
                    h.expires_at_ms = now + ttl_ms;
                    h.ttl_ms = ttl_ms;
                    h.claimed = true;
                    // A holder without a label takes the acquire's (docs/api.md, `ticket`).
                    if h.owner.is_none() {
                        h.owner.clone_from(&a.owner);
                    }
                    return Reply::Held(view(h));
                }
                if let Some(i) = l.waiters.iter().position(|w| w.ticket == *t) {
                    let w = &mut l.waiters[i];
                    if a.watch {
                        w.watchers += 1;
                    } else if w.watchers == 0 {
                        w.seen(now, wttl);
                    }
                    return Reply::Queued(l.queue_view(i));
                }
            }
            // One place per user: the user's ticket as it stands, shown up (a touch).
            if let Some(user) = &a.user {
                let l = &self.locks[li];
                let holder = l.holders.iter().find(|h| h.user.as_ref() == Some(user)).map(|h| h.ticket);
                let waiter = l.waiters.iter().find(|w| w.user.as_ref() == Some(user)).map(|w| w.ticket);
                if let Some(t) = holder.or(waiter) {
                    let lock = a.lock.clone();
                    return self.presence(&lock, t, now, i32::from(a.watch));
                }
            }
        }
        let tickets: usize = self.locks.iter().map(|l| l.holders.len() + l.waiters.len()).sum();
        if tickets as u64 >= u64::from(lim.max_tickets_total) {
            return Reply::TicketsFull { max_tickets: lim.max_tickets_total };
        }
        let li = match existing {
            None => {
                self.prune_buckets(now);
                let buckets = self.buckets.len() - usize::from(self.buckets.contains_key(&a.lock));
                if self.locks.len() + buckets >= lim.max_locks as usize {
                    return Reply::TableFull { max_locks: lim.max_locks };
                }
                let tat_us = self.buckets.remove(&a.lock);
                self.locks.push(MLock {
                    name: a.lock.clone(),
                    rw: mode.is_some(),
                    limit,
                    kind,
                    holders: Vec::new(),
                    waiters: Vec::new(),
                    candidate: None,
                    data: Vec::new(),
                    tat_us,
                });
                self.locks.len() - 1
            }
            Some(li) => {
                let l = &mut self.locks[li];
                if !l.holders.is_empty() || !l.waiters.is_empty() {
                    match (l.rw, mode) {
                        // A plain acquire of a read/write lock is a writer's.
                        (true, None) if limit == 1 && a.weight == 1 => mode = Some(LockMode::Exclusive),
                        (true, None) => return Reply::KindMismatch { kind: LockKind::Rw },
                        (false, Some(_)) => return Reply::KindMismatch { kind: LockKind::Semaphore },
                        (false, None) if l.limit != limit => return Reply::LimitMismatch { limit: l.limit },
                        _ => {}
                    }
                    if queue != QueueMode::None && l.kind != kind {
                        return Reply::QueueMismatch { queue: l.kind };
                    }
                } else {
                    l.rw = mode.is_some();
                    l.limit = limit;
                    l.kind = kind;
                }
                li
            }
        };
        let rate = self.rate(&a.lock);
        let l = &mut self.locks[li];
        let token = rate.is_none_or(|r| r.allows(l.tat_us.unwrap_or(0), now));
        if l.waiters.is_empty() && l.fits(a.weight, mode) && token {
            if let Some(r) = rate {
                l.tat_us = Some(r.spend(l.tat_us.unwrap_or(0), now));
            }
            let lease = MLease {
                ticket: a.new_ticket,
                fence: self.next_fence,
                expires_at_ms: now + ttl_ms,
                ttl_ms,
                weight: a.weight,
                claimed: true,
                owner: a.owner.clone(),
                callback: a.callback.clone(),
                mode,
                user: a.user.clone(),
            };
            self.next_fence += 1;
            let v = view(&lease);
            l.holders.push(lease);
            return Reply::Held(v);
        }
        if queue == QueueMode::None {
            let (used, limit) = l.shown_usage();
            return Reply::Unavailable { used, limit, queue_length: l.waiters.len() as u32 };
        }
        if l.waiters.len() >= lim.max_waiters_per_lock as usize {
            return Reply::QueueFull { max_waiters: lim.max_waiters_per_lock };
        }
        let wait_until_ms = if a.callback.is_some() && lim.callback_presence { now + a.wait_ms } else { 0 };
        let mut w = MWaiter {
            ticket: a.new_ticket,
            weight: a.weight,
            mode,
            ttl_ms,
            watchers: u32::from(a.watch),
            absent_at_ms: 0,
            owner: a.owner.clone(),
            callback: a.callback.clone(),
            user: a.user.clone(),
            wait_until_ms,
        };
        w.seen(now, wttl);
        l.waiters.push(w);
        let reply = Reply::Queued(l.queue_view(l.waiters.len() - 1));
        self.admit(li, now, entropy, out);
        reply
    }

    fn admit(&mut self, li: usize, now: u64, entropy: u64, out: &mut Vec<Output>) {
        let name = self.locks[li].name.clone();
        let claim_ms = self.decl(&name).and_then(|d| d.claim_ms).unwrap_or(self.limits.claim_ms);
        let rate = self.rate(&name);
        let mut rng = None;
        loop {
            let l = &mut self.locks[li];
            if l.waiters.is_empty() {
                return;
            }
            let used = l.used();
            let idx = if l.kind == QueueKind::Fifo {
                0
            } else if let Some(c) = l.candidate {
                l.waiters.iter().position(|w| w.ticket == c).expect("candidate waits")
            } else {
                if used >= l.limit {
                    return;
                }
                rng.get_or_insert_with(|| lottery_stream(entropy, l.name.as_str())).below(l.waiters.len())
            };
            if !l.fits(l.waiters[idx].weight, l.waiters[idx].mode) {
                if l.kind == QueueKind::Lottery {
                    l.candidate = Some(l.waiters[idx].ticket);
                }
                return;
            }
            if let Some(r) = rate {
                let tat = l.tat_us.unwrap_or(0);
                if !r.allows(tat, now) {
                    // It fits, but waits for a token (a lottery's draw stands).
                    if l.kind == QueueKind::Lottery {
                        l.candidate = Some(l.waiters[idx].ticket);
                    }
                    return;
                }
                l.tat_us = Some(r.spend(tat, now));
            }
            let w = l.waiters.remove(idx);
            l.candidate = None;
            let claimed = w.watchers > 0;
            let lease = MLease {
                ticket: w.ticket,
                fence: self.next_fence,
                expires_at_ms: now + if claimed { w.ttl_ms } else { claim_ms.min(w.ttl_ms) },
                ttl_ms: w.ttl_ms,
                weight: w.weight,
                claimed,
                owner: w.owner,
                callback: w.callback,
                mode: w.mode,
                user: w.user,
            };
            self.next_fence += 1;
            out.push(Output::Granted { lock: l.name.clone(), lease: view(&lease) });
            if let Some(url) = &lease.callback {
                out.push(Output::CallbackDue {
                    url: url.clone(),
                    event: CallbackEvent::Acquired,
                    lock: l.name.clone(),
                    ticket: lease.ticket,
                    fence: lease.fence,
                    at_ms: now,
                });
            }
            l.holders.push(lease);
        }
    }

    /// Ends everything due at or before `now` in (deadline, ticket) order, then admits, lock
    /// by lock, in the order of each lock's first due entry.
    pub fn expire(&mut self, now: u64, entropy: u64) -> (usize, Vec<Output>) {
        let mut out = Vec::new();
        self.prune_buckets(now);
        let mut due: Vec<(u64, Ticket, LockName)> = Vec::new();
        for (li, l) in self.locks.iter().enumerate() {
            if let Some(at) = self.timer_ms(li).filter(|&at| at <= now) {
                due.push((at, TIMER, l.name.clone()));
            }
            for h in l.holders.iter().filter(|h| h.expires_at_ms <= now) {
                due.push((h.expires_at_ms, h.ticket, l.name.clone()));
            }
            for w in l.waiters.iter().filter(|w| w.watchers == 0 && w.absent_at_ms <= now) {
                due.push((w.absent_at_ms, w.ticket, l.name.clone()));
            }
        }
        due.sort();
        let mut touched: Vec<(LockName, Vec<(Ticket, usize)>)> = Vec::new();
        for (_, t, name) in &due {
            let li = self.find(name).expect("due lock exists");
            if !touched.iter().any(|(n, _)| n == name) {
                touched.push((name.clone(), self.locks[li].fifo_watched_positions()));
            }
            let l = &mut self.locks[li];
            if *t == TIMER {
                // A token is due: the admission below lets the next one in.
            } else if let Some(i) = l.holders.iter().position(|h| h.ticket == *t) {
                let h = l.holders.remove(i);
                out.push(Output::Expired { lock: name.clone(), ticket: *t, fence: h.fence, unclaimed: !h.claimed });
                if let Some(url) = h.callback {
                    out.push(Output::CallbackDue {
                        url,
                        event: CallbackEvent::Expired,
                        lock: name.clone(),
                        ticket: *t,
                        fence: h.fence,
                        at_ms: now,
                    });
                }
            } else {
                l.waiters.retain(|w| w.ticket != *t);
                if l.candidate == Some(*t) {
                    l.candidate = None;
                }
                out.push(Output::Dropped { lock: name.clone(), ticket: *t, reason: DropReason::Absent });
            }
        }
        for (name, before) in touched {
            let li = self.find(&name).expect("touched lock exists");
            self.admit(li, now, entropy, &mut out);
            self.locks[li].push_moves(&before, &mut out);
        }
        self.forget_empty(now);
        (due.len(), out)
    }

    /// The model's state in the real table's export format (holders ordered by fence).
    pub fn export(&self) -> TableState {
        let mut locks: Vec<LockState> = self
            .locks
            .iter()
            .enumerate()
            .map(|(li, l)| {
                let mut holders: Vec<LeaseState> = l
                    .holders
                    .iter()
                    .map(|h| LeaseState {
                        ticket: h.ticket,
                        fence: h.fence,
                        expires_at_ms: h.expires_at_ms,
                        ttl_ms: h.ttl_ms,
                        weight: h.weight,
                        claimed: h.claimed,
                        owner: h.owner.clone(),
                        callback: h.callback.clone(),
                        mode: h.mode,
                        user: h.user.clone(),
                    })
                    .collect();
                holders.sort_by_key(|h| h.fence);
                LockState {
                    name: l.name.clone(),
                    kind: if l.rw { LockKind::Rw } else { LockKind::Semaphore },
                    limit: if l.rw { 0 } else { l.limit },
                    queue: l.kind,
                    holders,
                    waiters: l
                        .waiters
                        .iter()
                        .map(|w| WaiterState {
                            ticket: w.ticket,
                            weight: w.weight,
                            mode: w.mode,
                            ttl_ms: w.ttl_ms,
                            watchers: w.watchers,
                            absent_at_ms: (w.watchers == 0).then_some(w.absent_at_ms),
                            owner: w.owner.clone(),
                            callback: w.callback.clone(),
                            user: w.user.clone(),
                            wait_until_ms: (w.wait_until_ms > 0).then_some(w.wait_until_ms),
                        })
                        .collect(),
                    candidate: l.candidate,
                    data: l
                        .data
                        .iter()
                        .map(|(k, v)| (leasehold::core::names::DataKey::parse(k).expect("valid key"), v.clone()))
                        .collect(),
                    admit_tat_us: l.tat_us,
                    admit_timer_ms: self.timer_ms(li),
                }
            })
            .collect();
        locks.sort_by(|a, b| a.name.cmp(&b.name));
        TableState { next_fence: self.next_fence, locks, admit_buckets: self.buckets.clone() }
    }
}
