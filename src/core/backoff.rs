//! When an outbox delivery is tried again, and whether it is: exponential backoff with full
//! jitter, and the verdict on each attempt's outcome. Pure: the random draw and the server's
//! `Retry-After` are arguments.
//!
//! - The ceiling before retry `n` (1 for the first retry) is `min(cap_ms, base_ms × factor^(n-1))`;
//!   the delay is a uniform draw in `[0, ceiling]` ("full jitter": clients that failed
//!   together do not come back together).
//! - A `Retry-After` from the server is honoured as a floor, up to [`MAX_RETRY_AFTER_MS`],
//!   so a hostile or broken target cannot park an entry for days.
//! - 2xx is done; 408, 429, 5xx, timeouts and connection errors are tried again while
//!   attempts remain; every other answer (other 4xx, 3xx: redirects are not followed, 1xx)
//!   fails at once.

/// The longest `Retry-After` honoured (one hour).
pub const MAX_RETRY_AFTER_MS: u64 = 3_600_000;

/// The backoff settings (`[outbox]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backoff {
    /// The first retry's ceiling.
    pub base_ms: u64,
    /// How much the ceiling grows per retry.
    pub factor: u32,
    /// The largest ceiling.
    pub cap_ms: u64,
}

impl Backoff {
    /// The ceiling of the delay before retry `retry` (1 is the first retry).
    pub fn ceiling_ms(&self, retry: u32) -> u64 {
        let mut ceiling = self.base_ms.min(self.cap_ms);
        for _ in 1..retry {
            if ceiling >= self.cap_ms {
                break;
            }
            ceiling = ceiling.saturating_mul(u64::from(self.factor)).min(self.cap_ms);
        }
        ceiling
    }

    /// The delay before retry `retry`: uniform in `[0, ceiling]` by `random` (any 64 random
    /// bits), and at least the server's `Retry-After` (capped at [`MAX_RETRY_AFTER_MS`]).
    pub fn delay_ms(&self, retry: u32, random: u64, retry_after_ms: Option<u64>) -> u64 {
        let ceiling = self.ceiling_ms(retry);
        // Multiply-shift: uniform over [0, ceiling] without modulo bias worth speaking of.
        let jitter = ((u128::from(random) * (u128::from(ceiling) + 1)) >> 64) as u64;
        jitter.max(retry_after_ms.unwrap_or(0).min(MAX_RETRY_AFTER_MS))
    }
}

/// A `Retry-After` header's delay in milliseconds: the delta-seconds form. (The HTTP-date
/// form would need the target's clock to agree with ours; it is ignored, and the backoff
/// alone decides.)
pub fn retry_after_ms(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse::<u64>().ok()?.checked_mul(1_000)
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The target answered with this status.
    Status(u16),
    /// No answer within the total timeout.
    Timeout,
    /// No connection (refused, unreachable, a failed name lookup, reset before an answer).
    ConnectionFailed,
    /// The target may not be called (its name resolves to a refused address): no retry.
    Denied,
}

/// What becomes of an entry after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Delivered.
    Done,
    /// Try again (attempts remain).
    Retry,
    /// Give up: to the dead-letter list.
    Fail,
}

/// The verdict on attempt number `attempt` (1 is the first) of at most `max_attempts`.
pub fn judge(outcome: Outcome, attempt: u32, max_attempts: u32) -> Verdict {
    let retryable = match outcome {
        Outcome::Status(status) if (200..300).contains(&status) => return Verdict::Done,
        Outcome::Status(status) => status == 408 || status == 429 || (500..600).contains(&status),
        Outcome::Timeout | Outcome::ConnectionFailed => true,
        Outcome::Denied => false,
    };
    if retryable && attempt < max_attempts {
        Verdict::Retry
    } else {
        Verdict::Fail
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rand::SplitMix64;

    const B: Backoff = Backoff { base_ms: 100, factor: 2, cap_ms: 10_000 };

    #[test]
    fn ceilings_double_from_base_up_to_the_cap() {
        let ceilings: Vec<u64> = (1..=9).map(|n| B.ceiling_ms(n)).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000]);
        assert_eq!(B.ceiling_ms(u32::MAX), 10_000, "no overflow, no long loop");
        let huge = Backoff { base_ms: u64::MAX / 2, factor: 1_000, cap_ms: u64::MAX };
        assert_eq!(huge.ceiling_ms(3), u64::MAX, "saturates");
    }

    #[test]
    fn delays_stay_under_their_ceiling_and_over_retry_after_for_any_settings() {
        let mut rng = SplitMix64::new(0xb0ff);
        for _ in 0..20_000 {
            let b = Backoff {
                base_ms: rng.below(5_000) as u64,
                factor: 1 + rng.below(10) as u32,
                cap_ms: rng.below(100_000) as u64,
            };
            let retry = 1 + rng.below(40) as u32;
            let ceiling = b.ceiling_ms(retry);
            assert!(ceiling <= b.cap_ms && ceiling >= b.ceiling_ms(retry.saturating_sub(1).max(1)), "{b:?} {retry}");
            let delay = b.delay_ms(retry, rng.next_u64(), None);
            assert!(delay <= ceiling, "{b:?} retry {retry}: {delay} > {ceiling}");
            let after = rng.below(10_000_000) as u64;
            let delay = b.delay_ms(retry, rng.next_u64(), Some(after));
            assert!(delay >= after.min(MAX_RETRY_AFTER_MS) && delay <= ceiling.max(MAX_RETRY_AFTER_MS));
        }
    }

    #[test]
    fn jitter_covers_the_whole_range_evenly() {
        let mut rng = SplitMix64::new(7);
        let mut buckets = [0u32; 10];
        for _ in 0..100_000 {
            let delay = B.delay_ms(4, rng.next_u64(), None); // ceiling 800
            buckets[(delay * 10 / 801) as usize] += 1;
        }
        for (i, &n) in buckets.iter().enumerate() {
            assert!((9_000..=11_000).contains(&n), "bucket {i} has {n} of 100000: {buckets:?}");
        }
        assert_eq!(B.delay_ms(4, 0, None), 0);
        assert_eq!(B.delay_ms(4, u64::MAX, None), 800);
    }

    #[test]
    fn verdicts_follow_the_status_and_the_attempts_left() {
        for status in [200, 201, 204, 299] {
            assert_eq!(judge(Outcome::Status(status), 5, 5), Verdict::Done);
        }
        for outcome in [
            Outcome::Status(408),
            Outcome::Status(429),
            Outcome::Status(500),
            Outcome::Status(503),
            Outcome::Timeout,
            Outcome::ConnectionFailed,
        ] {
            assert_eq!(judge(outcome, 1, 3), Verdict::Retry, "{outcome:?}");
            assert_eq!(judge(outcome, 3, 3), Verdict::Fail, "{outcome:?}: no attempts left");
        }
        for status in [100, 301, 304, 400, 401, 403, 404, 409, 410, 422, 600] {
            assert_eq!(judge(Outcome::Status(status), 1, 10), Verdict::Fail, "{status}");
        }
        assert_eq!(judge(Outcome::Denied, 1, 10), Verdict::Fail);
    }

    #[test]
    fn retry_after_takes_seconds_and_ignores_the_rest() {
        assert_eq!(retry_after_ms("120"), Some(120_000));
        assert_eq!(retry_after_ms(" 0 "), Some(0));
        for other in ["", "-5", "1.5", "Wed, 21 Oct 2026 07:28:00 GMT", "99999999999999999999"] {
            assert_eq!(retry_after_ms(other), None, "{other:?}");
        }
    }
}
