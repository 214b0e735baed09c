//! The lease table's invariants, checked after every mutation in debug builds and after
//! every step of the model-based tests. A broken invariant is a bug in the table, never a
//! client's fault.

use std::collections::BTreeSet;

use super::{LockId, LockTable, QueueKind, RW_LIMIT, TIMER};

impl LockTable {
    /// Checks every invariant; returns the first broken one.
    ///
    /// - the name index and the slots agree, and every lock is reachable by its name;
    /// - the deadline index holds exactly the leases' expiries, the unwatched waiters'
    ///   absence deadlines and the locks' admission timers, which it counts;
    /// - and everything [`check_contents`](Self::check_contents) checks.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_counts()?;
        let mut expected_deadlines = Vec::with_capacity(self.deadlines.len());
        for (id, slot) in self.slots.iter().enumerate() {
            let Some(lock) = slot else { continue };
            let id = id as LockId;
            let name = lock.name.as_str();
            if lock.hash != super::hash_name(self.hash_seed, name) {
                return Err(format!("lock {name:?}: stored hash is stale"));
            }
            if self.find(name) != Some(id) {
                return Err(format!("lock {name:?} is not found by its name"));
            }
            if lock.touched != 0 {
                return Err(format!("lock {name:?}: expire scratch left set"));
            }
            expected_deadlines.extend(lock.holders.iter().map(|l| (l.expires_at_ms, l.ticket, id)));
            if let Some(queue) = &lock.queue {
                let unwatched = queue.waiters.iter().filter(|w| w.watchers == 0);
                expected_deadlines.extend(unwatched.map(|w| (w.absent_at_ms, w.ticket, id)));
            }
            if let Some(admit) = self.admits.get(&id).filter(|a| a.timer_ms != 0) {
                expected_deadlines.push((admit.timer_ms, TIMER, id));
            }
        }
        let timers = self.admits.values().filter(|a| a.timer_ms != 0).count();
        if let Some(id) = self.admits.keys().find(|&&id| self.slots.get(id as usize).is_none_or(Option::is_none)) {
            return Err(format!("an admission state for lock slot {id}, which is free"));
        }
        if timers as u64 != self.timers {
            return Err(format!("{} admission timers counted, {timers} set", self.timers));
        }
        expected_deadlines.sort_unstable();
        if !expected_deadlines.iter().eq(self.deadlines.iter()) {
            let expected: BTreeSet<_> = expected_deadlines.into_iter().collect();
            let missing = expected.difference(&self.deadlines).next();
            let extra = self.deadlines.difference(&expected).next();
            return Err(format!("deadline index out of step: missing {missing:?}, extra {extra:?}"));
        }
        self.check_contents()
    }

    /// Checks what the locks hold (all a snapshot decides; the indexes are built from it):
    ///
    /// - holders' weights sum to `used`, and `used` ≤ `limit` unless the lock is a declared
    ///   semaphore (a reload may lower a declared limit below what is held);
    /// - only a lock with an admission rate has a bucket;
    /// - a read/write lock is FIFO, has the read/write permit count, and only readers'
    ///   and writers' weights (so a writer is alone); a semaphore has not that count;
    /// - no ticket is both holding and waiting, or twice in one lock;
    /// - no user has two tickets in one lock (holding or waiting);
    /// - every fence is below the next fence and unique;
    /// - FIFO: a non-empty queue's head does not fit; lottery: a non-empty queue has a
    ///   candidate that does not fit, or no permit is free; either way, unless the next
    ///   one waits for a token: a lock's admission timer is set exactly then;
    /// - no lock is empty (no holder, no waiter, no data); data byte counts are exact;
    /// - the buckets that outlive their locks belong to no live lock, have a rate, and
    ///   their two indexes agree;
    /// - no lease or waiter has the timer's ticket;
    /// - the global holder, waiter and data byte counts match.
    pub(super) fn check_contents(&self) -> Result<(), String> {
        let mut fences = Vec::with_capacity(self.holders as usize);
        let mut tickets = Vec::new();
        let mut users = Vec::new();
        let (mut holders, mut waiters, mut data_bytes) = (0u64, 0u64, 0u64);
        for (id, lock) in self.slots.iter().enumerate().filter_map(|(id, l)| Some((id as LockId, l.as_ref()?))) {
            let name = lock.name.as_str();
            let declaration = self.declared.get(lock.decl);
            let admit = self.admits.get(&id);
            let timer_set = admit.is_some_and(|a| a.timer_ms != 0);
            if !lock.has_participants() && lock.data.is_none() {
                return Err(format!("lock {name:?} is empty but not forgotten"));
            }
            if timer_set != (lock.next_fits() && admit.is_some()) {
                return Err(format!(
                    "lock {name:?}: admission timer set {timer_set}, but the next one fits: {}",
                    lock.next_fits()
                ));
            }
            if self.buckets.contains_key(&lock.name) {
                return Err(format!("lock {name:?} is live and has a bucket that outlived it"));
            }
            if admit.is_some() && declaration.and_then(|d| d.rate()).is_none() {
                return Err(format!("lock {name:?} has an admission bucket but no rate"));
            }
            let used: u64 = lock.holders.iter().map(|l| u64::from(l.weight)).sum();
            if used != u64::from(lock.used) {
                return Err(format!("lock {name:?}: used {} but holders weigh {used}", lock.used));
            }
            // A declared semaphore may hold more than its limit after a reload lowered it
            // (its holders keep their leases; the model-based tests check that no grant
            // ever goes over).
            if lock.used > lock.limit && declaration.is_none_or(|d| d.kind != super::LockKind::Semaphore || lock.rw) {
                return Err(format!("lock {name:?}: {} permits held over limit {}", lock.used, lock.limit));
            }
            if lock.rw {
                // A writer weighs the whole count, so the sum above keeps it alone.
                if lock.limit != RW_LIMIT || lock.kind != QueueKind::Fifo {
                    return Err(format!("read/write lock {name:?}: limit {} or queue {:?}", lock.limit, lock.kind));
                }
                let weights = lock
                    .holders
                    .iter()
                    .map(|l| l.weight)
                    .chain(lock.queue.iter().flat_map(|q| q.waiters.iter().map(|w| w.weight)));
                if let Some(w) = weights.into_iter().find(|&w| w != 1 && w != RW_LIMIT) {
                    return Err(format!("read/write lock {name:?}: a lease or waiter of weight {w}"));
                }
            } else if lock.limit == RW_LIMIT {
                return Err(format!("semaphore {name:?} has the read/write permit count"));
            }
            tickets.clear();
            users.clear();
            users.extend(lock.holders.iter().filter_map(|l| l.extra.user()));
            users.extend(lock.queue.iter().flat_map(|q| q.waiters.iter()).filter_map(|w| w.extra.user()));
            if users.len() > 1 {
                users.sort_unstable();
                if let Some(twice) = users.windows(2).find(|w| w[0] == w[1]) {
                    return Err(format!("lock {name:?}: user {:?} has two places", twice[0].as_str()));
                }
            }
            for lease in &lock.holders {
                if lease.fence >= self.next_fence {
                    return Err(format!("lock {name:?}: fence {} is from the future", lease.fence));
                }
                if lease.weight == 0 {
                    return Err(format!("lock {name:?}: a lease of weight 0"));
                }
                fences.push(lease.fence);
                tickets.push(lease.ticket);
            }
            holders += lock.holders.len() as u64;
            if let Some(queue) = &lock.queue {
                if queue.waiters.is_empty() {
                    return Err(format!("lock {name:?}: an empty queue is kept"));
                }
                for w in &queue.waiters {
                    if w.weight == 0 || w.weight > lock.limit {
                        return Err(format!("lock {name:?}: a waiter of weight {} can never fit", w.weight));
                    }
                    tickets.push(w.ticket);
                }
                waiters += queue.waiters.len() as u64;
                let fits = |weight: u32| super::fits(lock.used, weight, lock.limit);
                match lock.kind {
                    QueueKind::Fifo => {
                        if queue.candidate.is_some() {
                            return Err(format!("lock {name:?}: a FIFO queue has a lottery candidate"));
                        }
                        if fits(queue.waiters[0].weight) && !timer_set {
                            return Err(format!("lock {name:?}: the FIFO head fits but waits"));
                        }
                    }
                    QueueKind::Lottery => match queue.candidate {
                        Some(t) => match queue.waiters.iter().find(|w| w.ticket == t) {
                            None => return Err(format!("lock {name:?}: the lottery candidate is not queued")),
                            Some(w) if fits(w.weight) && !timer_set => {
                                return Err(format!("lock {name:?}: the lottery candidate fits but waits"))
                            }
                            Some(_) => {}
                        },
                        None if lock.used < lock.limit => {
                            return Err(format!("lock {name:?}: permits are free but no lottery candidate is drawn"))
                        }
                        None => {}
                    },
                }
            }
            if tickets.contains(&TIMER) {
                return Err(format!("lock {name:?}: a ticket is the admission timer's"));
            }
            if tickets.len() > 1 {
                tickets.sort_unstable();
                if let Some(twice) = tickets.windows(2).find(|w| w[0] == w[1]) {
                    return Err(format!(
                        "lock {name:?}: ticket {} held twice, both holding and waiting, or queued twice",
                        twice[0]
                    ));
                }
            }
            if let Some(data) = &lock.data {
                if data.entries.is_empty() {
                    return Err(format!("lock {name:?}: an empty data map is kept"));
                }
                let bytes: usize = data.entries.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
                if bytes != data.bytes as usize {
                    return Err(format!("lock {name:?}: data bytes {} but entries hold {bytes}", data.bytes));
                }
                data_bytes += u64::from(data.bytes);
            }
        }
        if data_bytes != self.data_bytes {
            return Err(format!("the data byte count says {}; locks hold {data_bytes}", self.data_bytes));
        }
        if holders != self.holders || waiters != self.waiters {
            return Err(format!(
                "counts say {} holders and {} waiters; locks hold {holders} and {waiters}",
                self.holders, self.waiters
            ));
        }
        if self.buckets.len() != self.bucket_order.len()
            || self.bucket_order.iter().any(|(tat, name)| self.buckets.get(name) != Some(tat))
        {
            return Err("the buckets that outlive their locks are indexed out of step".into());
        }
        let declared = &self.declared;
        if let Some(name) =
            self.buckets.keys().find(|n| declared.get(declared.find(n.as_str())).and_then(|d| d.rate()).is_none())
        {
            return Err(format!("a bucket outlives lock {:?}, which has no rate", name.as_str()));
        }
        fences.sort_unstable();
        if let Some(twice) = fences.windows(2).find(|w| w[0] == w[1]) {
            return Err(format!("fence {} is held twice", twice[0]));
        }
        Ok(())
    }

    /// The cheap part, O(1): sizes that must agree.
    pub(super) fn check_counts(&self) -> Result<(), String> {
        if self.index.len() + self.free.len() != self.slots.len() {
            return Err(format!("{} slots, {} free, {} indexed", self.slots.len(), self.free.len(), self.index.len()));
        }
        let live = self.holders + self.waiters + self.timers;
        if (self.deadlines.len() as u64) > live {
            return Err(format!("{} deadlines for {live} holders, waiters and timers", self.deadlines.len()));
        }
        Ok(())
    }
}
