//! Locks declared in the configuration (`[[locks.declare]]`; docs/api.md, "Declared locks"):
//! a shape fixed server-side for one lock name or every name under a prefix, and the
//! admission rate of those locks.
//!
//! The admission rate is a token bucket of `admit_burst` tokens refilled at
//! `admit_per_minute`, kept as one timestamp per lock (the generic cell rate algorithm):
//! `tat_us`, the time at which the bucket would be full again. A grant at `now` is allowed
//! while `tat_us <= now + (burst - 1) × interval`, and moves `tat_us` to
//! `max(tat_us, now) + interval`. So in any span of `t` µs at most `burst + t / interval`
//! grants go out. Times are kept in microseconds, and the interval is rounded up to one,
//! so a rate that does not divide a minute is never exceeded.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::{LockKind, QueueKind, TableLimits};
use crate::core::names::LockName;

/// Most declarations a configuration may hold (each acquire of a lock not yet in the table
/// looks its name up once; a reload walks them once per lock).
pub const MAX_DECLARATIONS: usize = 10_000;

const _: () = assert!(MAX_DECLARATIONS < UNDECLARED as usize, "a declaration index fits in 16 bits");

/// Highest `admit_per_minute` (a million per minute; a waiting room needs far less).
pub const MAX_ADMIT_PER_MINUTE: u32 = 1_000_000;

/// Highest `admit_burst`.
pub const MAX_ADMIT_BURST: u32 = 100_000;

const MINUTE_US: u64 = 60_000_000;

/// One `[[locks.declare]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Declaration {
    /// The lock it declares, by its whole name (exactly one of `name` and `prefix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<LockName>,
    /// Every lock whose name starts with this. A name declaration wins over any prefix,
    /// and the longest prefix over shorter ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Semaphore or read/write lock.
    #[serde(default, skip_serializing_if = "LockKind::is_semaphore")]
    pub kind: LockKind,
    /// A semaphore's permit count (a read/write lock has none: 1 here).
    #[serde(default = "one")]
    pub limit: u32,
    /// Queue discipline (a read/write lock's is FIFO).
    #[serde(default = "fifo")]
    pub queue: QueueKind,
    /// Shortest lease a client may ask for on these locks (default: `locks.min_ttl_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ttl_ms: Option<u64>,
    /// Longest lease (default: `locks.max_ttl_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl_ms: Option<u64>,
    /// The lease of an acquire that gives no `ttl_ms` (default: `locks.default_ttl_ms`,
    /// brought within the bounds above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_ttl_ms: Option<u64>,
    /// Most grants per minute, immediate or from the queue (none: no cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admit_per_minute: Option<u32>,
    /// Grants that may go out at once after a quiet spell (the bucket's size).
    #[serde(default = "one")]
    pub admit_burst: u32,
    /// How long an unwatched waiter stays queued after it was last seen (default:
    /// `locks.waiter_ttl_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiter_ttl_ms: Option<u64>,
    /// How long an admitted waiter that is not connected has to claim its lease (default:
    /// `locks.claim_ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_ms: Option<u64>,
}

fn one() -> u32 {
    1
}

fn fifo() -> QueueKind {
    QueueKind::Fifo
}

impl Declaration {
    /// A declaration of lock `name` (or, with `prefix`, of every name under it) with the
    /// defaults: a mutex, FIFO, no rate, the global timings.
    pub fn new(name: Option<LockName>, prefix: Option<String>) -> Self {
        Declaration {
            name,
            prefix,
            kind: LockKind::Semaphore,
            limit: 1,
            queue: QueueKind::Fifo,
            min_ttl_ms: None,
            max_ttl_ms: None,
            default_ttl_ms: None,
            admit_per_minute: None,
            admit_burst: 1,
            waiter_ttl_ms: None,
            claim_ms: None,
        }
    }

    /// What it declares, as the configuration names it (`name "x"`, `prefix "x"`).
    pub fn target(&self) -> String {
        match (&self.name, &self.prefix) {
            (Some(name), _) => format!("name {:?}", name.as_str()),
            (None, Some(prefix)) => format!("prefix {prefix:?}"),
            (None, None) => "nothing".into(),
        }
    }

    /// Checks the declaration against the global `limits`; the first problem, as one
    /// sentence naming the key.
    pub fn check(&self, limits: &TableLimits) -> Result<(), String> {
        match (&self.name, &self.prefix) {
            (Some(_), None) => {}
            (None, Some(prefix)) => {
                LockName::parse(prefix)
                    .map_err(|e| format!("prefix {prefix:?} is not the start of a lock name: {e}"))?;
            }
            _ => return Err("give exactly one of name and prefix".into()),
        }
        if self.limit == 0 || self.limit > limits.max_limit {
            return Err(format!(
                "limit is {}; it must be between 1 and locks.max_limit ({})",
                self.limit, limits.max_limit
            ));
        }
        if self.kind == LockKind::Rw && (self.limit != 1 || self.queue != QueueKind::Fifo) {
            return Err("a read/write lock (kind = \"rw\") has no limit and queues in arrival order".into());
        }
        let (min, max) = self.ttl_bounds(limits);
        if min < limits.min_ttl_ms || max > limits.max_ttl_ms || min > max {
            return Err(format!(
                "min_ttl_ms {min} and max_ttl_ms {max} must lie within locks.min_ttl_ms ({}) and locks.max_ttl_ms ({}), in order",
                limits.min_ttl_ms, limits.max_ttl_ms
            ));
        }
        if let Some(ttl) = self.default_ttl_ms {
            if ttl < min || ttl > max {
                return Err(format!("default_ttl_ms {ttl} must lie between the TTL bounds ({min} to {max})"));
            }
        }
        if let Some(rate) = self.admit_per_minute {
            if rate == 0 || rate > MAX_ADMIT_PER_MINUTE {
                return Err(format!("admit_per_minute is {rate}; it must be between 1 and {MAX_ADMIT_PER_MINUTE}"));
            }
        }
        if self.admit_burst == 0 || self.admit_burst > MAX_ADMIT_BURST {
            return Err(format!("admit_burst is {}; it must be between 1 and {MAX_ADMIT_BURST}", self.admit_burst));
        }
        if self.waiter_ttl_ms == Some(0) || self.claim_ms == Some(0) {
            return Err("waiter_ttl_ms and claim_ms must be above 0".into());
        }
        Ok(())
    }

    /// The lease TTL bounds on these locks.
    pub fn ttl_bounds(&self, limits: &TableLimits) -> (u64, u64) {
        (self.min_ttl_ms.unwrap_or(limits.min_ttl_ms), self.max_ttl_ms.unwrap_or(limits.max_ttl_ms))
    }

    /// The TTL of an acquire that gives none.
    pub fn default_ttl(&self, limits: &TableLimits) -> u64 {
        let (min, max) = self.ttl_bounds(limits);
        self.default_ttl_ms.unwrap_or(limits.default_ttl_ms).clamp(min, max)
    }

    /// The admission rate, if any.
    pub(super) fn rate(&self) -> Option<Rate> {
        self.admit_per_minute.map(|per_minute| Rate::new(per_minute, self.admit_burst))
    }
}

/// An admission rate, ready for arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rate {
    /// Time one token takes to come back.
    interval_us: u64,
    /// How far ahead of now the bucket's timestamp may run: `(burst - 1) × interval`.
    tolerance_us: u64,
}

impl Rate {
    fn new(per_minute: u32, burst: u32) -> Self {
        let interval_us = MINUTE_US.div_ceil(u64::from(per_minute.max(1)));
        Rate { interval_us, tolerance_us: interval_us * u64::from(burst.max(1) - 1) }
    }

    /// Whether a grant may go out at `now_ms` given the bucket's timestamp.
    pub(super) fn allows(&self, tat_us: u64, now_ms: u64) -> bool {
        tat_us <= now_ms.saturating_mul(1000).saturating_add(self.tolerance_us)
    }

    /// The bucket's timestamp after a grant at `now_ms`.
    pub(super) fn after_grant(&self, tat_us: u64, now_ms: u64) -> u64 {
        tat_us.max(now_ms.saturating_mul(1000)).saturating_add(self.interval_us)
    }

    /// The first millisecond at which a grant is allowed.
    pub(super) fn next_allowed_ms(&self, tat_us: u64) -> u64 {
        tat_us.saturating_sub(self.tolerance_us).div_ceil(1000)
    }

    /// The first millisecond at which the `nth` grant from now (1-based) may go out.
    pub(super) fn nth_allowed_ms(&self, tat_us: u64, nth: u32, now_ms: u64) -> u64 {
        let steps = self.interval_us.saturating_mul(u64::from(nth.max(1) - 1));
        self.next_allowed_ms(tat_us.saturating_add(steps)).max(now_ms)
    }
}

/// The declarations in force, indexed by name and by prefix.
#[derive(Debug, Clone, Default)]
pub(super) struct Declared {
    list: Vec<Declaration>,
    names: HashMap<Box<str>, u16>,
    prefixes: HashMap<Box<str>, u16>,
    /// The distinct prefix lengths, longest first.
    prefix_lens: Vec<usize>,
}

/// No declaration.
pub(super) const UNDECLARED: u16 = u16::MAX;

impl Declared {
    /// The index of `list` (the first of two declarations of one target wins; the
    /// configuration refuses such a pair).
    pub(super) fn new(list: &[Declaration]) -> Self {
        let mut declared = Declared { list: list.to_vec(), ..Default::default() };
        for (i, d) in list.iter().enumerate().take(UNDECLARED as usize) {
            match (&d.name, &d.prefix) {
                (Some(name), _) => {
                    declared.names.entry(name.as_str().into()).or_insert(i as u16);
                }
                (None, Some(prefix)) => {
                    declared.prefixes.entry(prefix.as_str().into()).or_insert(i as u16);
                }
                (None, None) => {}
            }
        }
        declared.prefix_lens = declared.prefixes.keys().map(|p| p.len()).collect();
        declared.prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
        declared.prefix_lens.dedup();
        declared
    }

    /// The declaration of lock `name`: its own, else the longest prefix's.
    pub(super) fn find(&self, name: &str) -> u16 {
        if self.list.is_empty() {
            return UNDECLARED;
        }
        if let Some(&i) = self.names.get(name) {
            return i;
        }
        for &len in &self.prefix_lens {
            if let Some(&i) = name.get(..len).and_then(|p| self.prefixes.get(p)) {
                return i;
            }
        }
        UNDECLARED
    }

    pub(super) fn get(&self, index: u16) -> Option<&Declaration> {
        self.list.get(index as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str) -> Declaration {
        Declaration::new(Some(LockName::parse(name).unwrap()), None)
    }

    fn prefixed(prefix: &str) -> Declaration {
        Declaration::new(None, Some(prefix.into()))
    }

    #[test]
    fn a_name_wins_over_prefixes_and_the_longest_prefix_over_shorter_ones() {
        let d = Declared::new(&[prefixed("room-"), named("room-vip"), prefixed("room-v"), prefixed("x")]);
        assert_eq!(d.find("room-vip"), 1);
        assert_eq!(d.find("room-vip2"), 2);
        assert_eq!(d.find("room-a"), 0);
        assert_eq!(d.find("room"), UNDECLARED);
        assert_eq!(d.find("x"), 3);
        assert_eq!(d.find("y"), UNDECLARED);
        assert_eq!(Declared::new(&[]).find("room-a"), UNDECLARED);
    }

    #[test]
    fn check_names_the_key_of_each_problem() {
        let limits = TableLimits::DEFAULT;
        assert_eq!(named("a").check(&limits), Ok(()));
        let cases: [(Declaration, &str); 8] = [
            (Declaration::new(None, None), "exactly one of name and prefix"),
            (Declaration { limit: 0, ..named("a") }, "limit is 0"),
            (Declaration { kind: LockKind::Rw, limit: 3, ..named("a") }, "read/write"),
            (Declaration { min_ttl_ms: Some(10), ..named("a") }, "min_ttl_ms 10"),
            (Declaration { min_ttl_ms: Some(5_000), max_ttl_ms: Some(1_000), ..named("a") }, "in order"),
            (Declaration { default_ttl_ms: Some(50), ..named("a") }, "default_ttl_ms 50"),
            (Declaration { admit_per_minute: Some(0), ..named("a") }, "admit_per_minute is 0"),
            (Declaration { admit_burst: 0, ..named("a") }, "admit_burst is 0"),
        ];
        for (d, wanted) in cases {
            let problem = d.check(&limits).unwrap_err();
            assert!(problem.contains(wanted), "{problem:?} should say {wanted:?}");
        }
        assert!(prefixed("bad name!").check(&limits).is_err());
    }

    #[test]
    fn the_rate_allows_burst_plus_elapsed_over_interval_and_never_more() {
        // 60 a minute, a burst of 3: three at once, then one a second.
        let rate = Rate::new(60, 3);
        let (mut tat, mut granted) = (0u64, Vec::new());
        for now_ms in (0..10_000).step_by(100) {
            while rate.allows(tat, now_ms) {
                tat = rate.after_grant(tat, now_ms);
                granted.push(now_ms);
            }
        }
        assert_eq!(&granted[..4], &[0, 0, 0, 1_000]);
        assert_eq!(granted.len(), 3 + 9, "{granted:?}");
        // A rate that does not divide a minute rounds its interval up: 7 a minute never
        // gives an eighth grant within the minute.
        let rate = Rate::new(7, 1);
        let (mut tat, mut count) = (0u64, 0);
        for now_ms in 0..60_000 {
            if rate.allows(tat, now_ms) {
                tat = rate.after_grant(tat, now_ms);
                count += 1;
            }
        }
        assert_eq!(count, 7);
        assert_eq!(rate.nth_allowed_ms(tat, 1, 60_000), rate.next_allowed_ms(tat).max(60_000));
    }
}
