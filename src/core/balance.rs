//! Which worker gets the next connection in fd-passing mode. Pure: the master passes the
//! candidates with their open-connection counts (as the workers report them) and gets an
//! index back.
//!
//! - `least-connections`: the fewest open connections; ties go round the candidates in
//!   turn, so equal loads stay equal.
//! - `round-robin`: each candidate in turn.

use serde::{Deserialize, Serialize};

/// The balancing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Fewest open connections.
    LeastConnections,
    /// In turn.
    RoundRobin,
}

/// A balancer with its rotation state.
#[derive(Debug, Clone)]
pub struct Balancer {
    rule: Balance,
    turn: usize,
}

impl Balancer {
    /// A balancer following `rule`.
    pub fn new(rule: Balance) -> Self {
        Self { rule, turn: 0 }
    }

    /// Changes the rule (on reload).
    pub fn set_rule(&mut self, rule: Balance) {
        self.rule = rule;
    }

    /// Picks one of `open_connections` (one entry per candidate worker), skipping those
    /// marked in `skip` (a failed hand-off). `None` if every candidate is skipped.
    pub fn pick(&mut self, open_connections: &[u32], skip: &[bool]) -> Option<usize> {
        let n = open_connections.len();
        if n == 0 {
            return None;
        }
        let start = self.turn % n;
        let order = (0..n).map(|k| (start + k) % n).filter(|&i| !skip.get(i).copied().unwrap_or(false));
        let chosen = match self.rule {
            Balance::RoundRobin => order.into_iter().next(),
            // min_by_key keeps the first of equals, i.e. the next in turn.
            Balance::LeastConnections => order.min_by_key(|&i| open_connections[i]),
        }?;
        self.turn = chosen + 1;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_is_exactly_even() {
        let mut b = Balancer::new(Balance::RoundRobin);
        let mut counts = [0u32; 4];
        for _ in 0..1_000 {
            counts[b.pick(&[0; 4], &[]).unwrap()] += 1;
        }
        assert_eq!(counts, [250; 4]);
    }

    #[test]
    fn least_connections_fills_the_emptiest_and_spreads_ties() {
        let mut b = Balancer::new(Balance::LeastConnections);
        let mut open = vec![5, 0, 3, 0];
        for _ in 0..8 {
            let i = b.pick(&open, &[]).unwrap();
            open[i] += 1;
        }
        // The busiest worker gets nothing; the other three share the eight evenly.
        assert_eq!(open[0], 5);
        let mut rest = open[1..].to_vec();
        rest.sort_unstable();
        assert_eq!(rest, vec![3, 4, 4]);
    }

    #[test]
    fn forty_connections_over_four_workers_with_closes_stay_within_one() {
        let mut b = Balancer::new(Balance::LeastConnections);
        let mut open = vec![0u32; 4];
        for i in 0..40 {
            let w = b.pick(&open, &[]).unwrap();
            open[w] += 1;
            if i % 7 == 6 {
                // A worker reports a close.
                let busiest = (0..4).max_by_key(|&k| open[k]).unwrap();
                open[busiest] -= 1;
            }
        }
        assert!(open.iter().max().unwrap() - open.iter().min().unwrap() <= 1, "{open:?}");
    }

    #[test]
    fn skipped_candidates_are_not_picked() {
        let mut b = Balancer::new(Balance::LeastConnections);
        assert_eq!(b.pick(&[0, 9], &[true, false]), Some(1));
        assert_eq!(b.pick(&[0, 9], &[true, true]), None);
        assert_eq!(b.pick(&[], &[]), None);
    }
}
