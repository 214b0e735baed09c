//! Deterministic draws from entropy the caller passes in.
//!
//! The lease table never reads a random source: each call carries 64 bits of entropy, and
//! every lottery draw for a lock comes from a SplitMix64 stream seeded with that entropy
//! mixed with the lock's name. Mixing in the name makes each lock's draws independent of
//! the order in which one call visits several locks, so a replay needs only the inputs.

/// SplitMix64: a tiny, well-distributed generator; enough for fair draws, never for secrets.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A stream starting from `seed`.
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next 64 bits of the stream.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform index below `n` (`n` > 0), by rejection so no index is favoured.
    pub fn below(&mut self, n: usize) -> usize {
        debug_assert!(n > 0);
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let r = self.next_u64();
            if r < zone {
                return (r % n) as usize;
            }
        }
    }
}

/// FNV-1a over `bytes`: a fixed, portable hash used only to separate draw streams.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3))
}

/// The draw stream for one lock within one call.
pub fn lottery_stream(entropy: u64, lock_name: &str) -> SplitMix64 {
    SplitMix64::new(entropy ^ fnv1a(lock_name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn below_is_roughly_uniform_over_small_ranges() {
        let mut rng = SplitMix64::new(7);
        let mut counts = [0u32; 5];
        for _ in 0..50_000 {
            counts[rng.below(5)] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "counts {counts:?}");
        }
    }

    #[test]
    fn streams_differ_by_lock_name() {
        let a = lottery_stream(1, "a").next_u64();
        let b = lottery_stream(1, "b").next_u64();
        assert_ne!(a, b);
        assert_eq!(a, lottery_stream(1, "a").next_u64());
    }
}
