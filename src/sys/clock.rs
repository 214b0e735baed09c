//! Clocks. Wall-clock milliseconds for lease expiry (leases keep their wall-clock deadline
//! across restarts) and a monotonic clock for timeouts and latency, which must not jump.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Microseconds of `CLOCK_MONOTONIC`, as systemd wants in `MONOTONIC_USEC`.
pub fn monotonic_usec() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1_000,
        Err(_) => 0,
    }
}

/// A monotonic clock that reads as milliseconds (and microseconds) since it was made.
#[derive(Debug, Clone, Copy)]
pub struct Monotonic {
    origin: Instant,
}

impl Monotonic {
    /// A clock starting now.
    pub fn new() -> Self {
        Self { origin: Instant::now() }
    }

    /// Milliseconds since the clock was made.
    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    /// Microseconds since the clock was made.
    pub fn now_us(&self) -> u64 {
        self.origin.elapsed().as_micros() as u64
    }
}

impl Default for Monotonic {
    fn default() -> Self {
        Self::new()
    }
}
