//! The restart policy of the master, as a pure state machine: when a child died, when to
//! start its replacement, and when to give up because children die too often.
//!
//! - A child that ran for at least `stable_after_ms` is replaced at once, and its backoff
//!   starts over.
//! - A child that died sooner is replaced after a delay that doubles from `base_delay_ms`
//!   up to `max_delay_ms` for each quick death in a row.
//! - Crash-storm breaker: when more than `storm_max_exits` children of one role died within
//!   `storm_window_ms`, the master stops the service (exit code 1) so that systemd's own
//!   restart policy takes over instead of a silent respawn loop.

use std::collections::VecDeque;

/// Timings and limits of the restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First delay after a quick death.
    pub base_delay_ms: u64,
    /// Largest delay.
    pub max_delay_ms: u64,
    /// A child that lived this long died "late": it is replaced at once.
    pub stable_after_ms: u64,
    /// Window of the crash-storm breaker.
    pub storm_window_ms: u64,
    /// Deaths of one role tolerated within the window.
    pub storm_max_exits: usize,
}

impl RestartPolicy {
    /// The defaults (the configuration documents them).
    pub const DEFAULT: RestartPolicy = RestartPolicy {
        base_delay_ms: 100,
        max_delay_ms: 10_000,
        stable_after_ms: 10_000,
        storm_window_ms: 60_000,
        storm_max_exits: 10,
    };
}

/// What to do about a death.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Start a replacement at this time (ms on the caller's clock; may be now).
    At(u64),
    /// Too many deaths: stop the service.
    GiveUp {
        /// Deaths counted in the window.
        exits: usize,
        /// The window.
        window_ms: u64,
    },
}

/// The death history of one role (all workers share one; the keeper has its own).
#[derive(Debug, Clone, Default)]
pub struct History {
    exits_ms: VecDeque<u64>,
    delay_ms: u64,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// A child of this role that started at `started_ms` died at `now_ms`.
    pub fn on_exit(&mut self, policy: &RestartPolicy, started_ms: u64, now_ms: u64) -> Restart {
        self.exits_ms.push_back(now_ms);
        while self.exits_ms.front().is_some_and(|&t| now_ms.saturating_sub(t) > policy.storm_window_ms) {
            self.exits_ms.pop_front();
        }
        if self.exits_ms.len() > policy.storm_max_exits {
            return Restart::GiveUp { exits: self.exits_ms.len(), window_ms: policy.storm_window_ms };
        }
        if now_ms.saturating_sub(started_ms) >= policy.stable_after_ms {
            self.delay_ms = 0;
        } else if self.delay_ms == 0 {
            self.delay_ms = policy.base_delay_ms;
        } else {
            self.delay_ms = (self.delay_ms * 2).min(policy.max_delay_ms);
        }
        Restart::At(now_ms + self.delay_ms)
    }

    /// The delay the last quick death earned (0 after a stable run).
    pub fn delay_ms(&self) -> u64 {
        self.delay_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RestartPolicy = RestartPolicy::DEFAULT;

    #[test]
    fn a_stable_child_is_replaced_at_once() {
        let mut h = History::new();
        assert_eq!(h.on_exit(&P, 0, 60_000), Restart::At(60_000));
    }

    #[test]
    fn quick_deaths_back_off_exponentially_up_to_the_cap() {
        let mut h = History::new();
        let mut now = 1_000;
        let mut delays = Vec::new();
        for _ in 0..10 {
            let Restart::At(at) = h.on_exit(&RestartPolicy { storm_max_exits: 100, ..P }, now - 10, now) else {
                panic!("gave up too early")
            };
            delays.push(at - now);
            now = at + 10;
        }
        assert_eq!(delays, vec![100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000, 10_000]);
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut h = History::new();
        h.on_exit(&P, 0, 10);
        h.on_exit(&P, 20, 30);
        assert_eq!(h.delay_ms(), 200);
        assert_eq!(h.on_exit(&P, 100, 100 + P.stable_after_ms), Restart::At(100 + P.stable_after_ms));
        assert_eq!(h.delay_ms(), 0);
    }

    #[test]
    fn the_breaker_trips_after_too_many_deaths_in_the_window() {
        let mut h = History::new();
        for i in 0..P.storm_max_exits as u64 {
            assert!(matches!(h.on_exit(&P, 0, P.stable_after_ms + i), Restart::At(_)));
        }
        assert_eq!(
            h.on_exit(&P, 0, P.stable_after_ms + 100),
            Restart::GiveUp { exits: P.storm_max_exits + 1, window_ms: P.storm_window_ms }
        );
    }

    #[test]
    fn deaths_older_than_the_window_are_forgotten() {
        let mut h = History::new();
        let mut now = P.stable_after_ms;
        for _ in 0..P.storm_max_exits * 3 {
            assert!(matches!(h.on_exit(&P, now - P.stable_after_ms, now), Restart::At(_)));
            now += P.storm_window_ms / P.storm_max_exits as u64 + 1;
        }
    }
}
