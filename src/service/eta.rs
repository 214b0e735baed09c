//! Wait estimates: per lock, a moving average of how long leases are held, from grant to
//! release or expiry. A waiter at position `p` of a lock with `limit` permits expects about
//! `p × mean / limit`. Only leases admitted from a queue are timed (a lock nobody queues
//! for needs no estimate, and timing every lease would cost a map entry per lease). Pure
//! and bounded: the averages of at most [`MAX_LOCKS_TRACKED`] locks are kept.

use std::collections::HashMap;

use crate::core::names::{LockName, Ticket};

/// Most locks with a remembered average.
pub const MAX_LOCKS_TRACKED: usize = 100_000;

/// Hold-time averages.
#[derive(Debug, Default)]
pub struct Estimator {
    /// When each timed lease began (tickets are unique across locks).
    started_ms: HashMap<Ticket, u64>,
    /// Exponentially weighted mean hold time per lock (weight 1/8 for each new sample).
    mean_ms: HashMap<LockName, u64>,
}

impl Estimator {
    /// A lease admitted from a queue began at `now_ms`.
    pub fn granted(&mut self, ticket: Ticket, now_ms: u64) {
        self.started_ms.entry(ticket).or_insert(now_ms);
    }

    /// A lease ended at `now_ms` (a lease that was not timed is ignored).
    pub fn ended(&mut self, lock: &LockName, ticket: Ticket, now_ms: u64) {
        if self.started_ms.is_empty() {
            return;
        }
        let Some(start) = self.started_ms.remove(&ticket) else { return };
        let held = now_ms.saturating_sub(start);
        let tracked = self.mean_ms.len();
        match self.mean_ms.get_mut(lock.as_str()) {
            Some(mean) => *mean = (*mean * 7 + held) / 8,
            None if tracked < MAX_LOCKS_TRACKED => {
                self.mean_ms.insert(lock.clone(), held);
            }
            None => {}
        }
    }

    /// The expected wait of a FIFO waiter at 1-based `position` of a lock with `limit`
    /// permits; `None` without history (or without a position: lottery).
    pub fn eta_ms(&self, lock: &LockName, position: Option<u32>, limit: u32) -> Option<u64> {
        let mean = *self.mean_ms.get(lock.as_str())?;
        Some(mean * u64::from(position?) / u64::from(limit.max(1)))
    }

    /// Live leases being timed.
    pub fn live(&self) -> usize {
        self.started_ms.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_follow_the_mean_hold_time() {
        let lock = LockName::parse("a").unwrap();
        let mut e = Estimator::default();
        assert_eq!(e.eta_ms(&lock, Some(1), 1), None, "no history, no estimate");
        for i in 0..10u8 {
            let t = Ticket::from_bytes([i; 16]);
            e.granted(t, 1_000 * u64::from(i));
            e.granted(t, 1_000 * u64::from(i) + 50); // a second notice keeps the start
            e.ended(&lock, t, 1_000 * u64::from(i) + 200);
        }
        assert_eq!(e.eta_ms(&lock, Some(3), 1), Some(600));
        assert_eq!(e.eta_ms(&lock, Some(3), 3), Some(200));
        assert_eq!(e.eta_ms(&lock, None, 1), None, "lottery waiters have no position");
        assert_eq!(e.live(), 0);
    }
}
