//! A deliberately naive reference model of the lease table: vectors and linear scans, no
//! indexes, deadlines found by scanning every lease and waiter. It implements the lease
//! table's rules (listed in `src/core/lock/mod.rs`) as plainly as possible so the real
//! table can be compared against it step by step. It shares only the vocabulary (ops,
//! replies, outputs) and the definition of a lottery draw with the real table.
//!
//! Read/write locks are modelled as what they mean (a writer needs an empty lock, a reader
//! a lock without a writer), not as the weights the real table uses inside.

use leasehold::core::lock::{
    Acquire, CallbackEvent, DropReason, LeaseState, LeaseView, LockKind, LockMode, LockState, Op, Output, QueueKind,
    QueueMode, QueueView, Reply, TableLimits, TableState, WaiterState,
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
}

impl MLock {
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
}

fn range(field: &'static str, value: u64, min: u64, max: u64) -> Reply {
    Reply::Rejected(CoreError::OutOfRange { field, value, min, max })
}

impl Model {
    pub fn new(limits: TableLimits) -> Self {
        Self { limits, locks: Vec::new(), next_fence: 1 }
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
        self.forget_empty();
        (reply, out)
    }

    fn forget_empty(&mut self) {
        self.locks.retain(|l| !l.holders.is_empty() || !l.waiters.is_empty() || !l.data.is_empty());
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
                let wttl = self.limits.waiter_ttl_ms;
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
        let wttl = self.limits.waiter_ttl_ms;
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
        let wttl = self.limits.waiter_ttl_ms;
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
        if a.limit == 0 || a.limit > lim.max_limit {
            return range("limit", a.limit.into(), 1, lim.max_limit.into());
        }
        if a.weight == 0 || a.weight > a.limit {
            return range("weight", a.weight.into(), 1, a.limit.into());
        }
        if a.ttl_ms < lim.min_ttl_ms || a.ttl_ms > lim.max_ttl_ms {
            return range("ttl_ms", a.ttl_ms, lim.min_ttl_ms, lim.max_ttl_ms);
        }
        if a.mode.is_some() && a.queue == QueueMode::Lottery {
            return Reply::Rejected(CoreError::Incompatible {
                reason: "a read/write lock (mode) queues in arrival order: queue lottery cannot be given with mode",
            });
        }
        if a.mode.is_some() && (a.limit != 1 || a.weight != 1) {
            return Reply::Rejected(CoreError::Incompatible {
                reason: "a read/write lock (mode) has no permit count: limit and weight cannot be given with mode",
            });
        }
        let existing = self.find(&a.lock);
        if let Some(li) = existing {
            for t in a.ticket.iter().chain(std::iter::once(&a.new_ticket)) {
                let l = &mut self.locks[li];
                if let Some(h) = l.holders.iter_mut().find(|h| h.ticket == *t) {
                    h.expires_at_ms = now + a.ttl_ms;
                    h.ttl_ms = a.ttl_ms;
                    h.claimed = true;
                    return Reply::Held(view(h));
                }
                if let Some(i) = l.waiters.iter().position(|w| w.ticket == *t) {
                    let w = &mut l.waiters[i];
                    if a.watch {
                        w.watchers += 1;
                    } else if w.watchers == 0 {
                        w.seen(now, lim.waiter_ttl_ms);
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
        let kind = if a.queue == QueueMode::Lottery { QueueKind::Lottery } else { QueueKind::Fifo };
        let mut mode = a.mode;
        let li = match existing {
            None => {
                if self.locks.len() >= lim.max_locks as usize {
                    return Reply::TableFull { max_locks: lim.max_locks };
                }
                self.locks.push(MLock {
                    name: a.lock.clone(),
                    rw: mode.is_some(),
                    limit: a.limit,
                    kind,
                    holders: Vec::new(),
                    waiters: Vec::new(),
                    candidate: None,
                    data: Vec::new(),
                });
                self.locks.len() - 1
            }
            Some(li) => {
                let l = &mut self.locks[li];
                if !l.holders.is_empty() || !l.waiters.is_empty() {
                    match (l.rw, mode) {
                        // A plain acquire of a read/write lock is a writer's.
                        (true, None) if a.limit == 1 && a.weight == 1 => mode = Some(LockMode::Exclusive),
                        (true, None) => return Reply::KindMismatch { kind: LockKind::Rw },
                        (false, Some(_)) => return Reply::KindMismatch { kind: LockKind::Semaphore },
                        (false, None) if l.limit != a.limit => return Reply::LimitMismatch { limit: l.limit },
                        _ => {}
                    }
                    if a.queue != QueueMode::None && l.kind != kind {
                        return Reply::QueueMismatch { queue: l.kind };
                    }
                } else {
                    l.rw = mode.is_some();
                    l.limit = a.limit;
                    l.kind = kind;
                }
                li
            }
        };
        let l = &mut self.locks[li];
        if l.waiters.is_empty() && l.fits(a.weight, mode) {
            let lease = MLease {
                ticket: a.new_ticket,
                fence: self.next_fence,
                expires_at_ms: now + a.ttl_ms,
                ttl_ms: a.ttl_ms,
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
        if a.queue == QueueMode::None {
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
            ttl_ms: a.ttl_ms,
            watchers: u32::from(a.watch),
            absent_at_ms: 0,
            owner: a.owner.clone(),
            callback: a.callback.clone(),
            user: a.user.clone(),
            wait_until_ms,
        };
        w.seen(now, lim.waiter_ttl_ms);
        l.waiters.push(w);
        let reply = Reply::Queued(l.queue_view(l.waiters.len() - 1));
        self.admit(li, now, entropy, out);
        reply
    }

    fn admit(&mut self, li: usize, now: u64, entropy: u64, out: &mut Vec<Output>) {
        let claim_ms = self.limits.claim_ms;
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
        let mut due: Vec<(u64, Ticket, LockName)> = Vec::new();
        for l in &self.locks {
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
            if let Some(i) = l.holders.iter().position(|h| h.ticket == *t) {
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
        self.forget_empty();
        (due.len(), out)
    }

    /// The model's state in the real table's export format (holders ordered by fence).
    pub fn export(&self) -> TableState {
        let mut locks: Vec<LockState> = self
            .locks
            .iter()
            .map(|l| {
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
                }
            })
            .collect();
        locks.sort_by(|a, b| a.name.cmp(&b.name));
        TableState { next_fence: self.next_fence, locks }
    }
}
