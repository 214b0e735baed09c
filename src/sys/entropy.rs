//! Entropy from the operating system's CSPRNG (`getrandom(2)`), read in blocks so a busy
//! keeper makes one system call per few hundred tickets.

use std::io;

const BLOCK_BYTES: usize = 4096;

/// A buffered reader of OS randomness. Every byte is used once.
#[derive(Debug)]
pub struct Entropy {
    block: Box<[u8; BLOCK_BYTES]>,
    used: usize,
}

impl Entropy {
    /// A reader with an empty buffer (the first draw fills it).
    pub fn new() -> Self {
        Self { block: Box::new([0; BLOCK_BYTES]), used: BLOCK_BYTES }
    }

    /// Fills `out` with fresh random bytes.
    pub fn fill(&mut self, out: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        while at < out.len() {
            if self.used == BLOCK_BYTES {
                getrandom::fill(&mut self.block[..]).map_err(|e| io::Error::other(format!("getrandom: {e}")))?;
                self.used = 0;
            }
            let n = (out.len() - at).min(BLOCK_BYTES - self.used);
            out[at..at + n].copy_from_slice(&self.block[self.used..self.used + n]);
            // Never hand the same bytes out twice.
            self.block[self.used..self.used + n].fill(0);
            self.used += n;
            at += n;
        }
        Ok(())
    }

    /// 16 random bytes (a ticket).
    pub fn bytes16(&mut self) -> io::Result<[u8; 16]> {
        let mut out = [0; 16];
        self.fill(&mut out)?;
        Ok(out)
    }

    /// 64 random bits.
    pub fn next_u64(&mut self) -> io::Result<u64> {
        let mut out = [0; 8];
        self.fill(&mut out)?;
        Ok(u64::from_le_bytes(out))
    }
}

impl Default for Entropy {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_across_block_boundaries_are_distinct() {
        let mut e = Entropy::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..(BLOCK_BYTES / 16) * 3 + 5 {
            assert!(seen.insert(e.bytes16().unwrap()), "a 128-bit draw repeated");
        }
    }
}
