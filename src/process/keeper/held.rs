//! Answers held until the journal is durable, for `fsync = "always"` with the sync thread
//! (docs/architecture.md, "Durability"): the keeper writes a turn's records and goes on
//! with the next turn while one `fdatasync` runs beside it; each turn's answers wait here
//! until a sync that began after its records were written has ended. A sync then covers
//! every turn written while the previous one ran, so under load one sync makes many turns
//! durable, and the keeper never waits on the disk itself.
//!
//! Pure bookkeeping, no I/O: the keeper says what it wrote, when a sync begins and how it
//! ended, and gets back the answers that may leave.
//!
//! - **Nothing leaves early.** A turn that wrote no records (reads only) may still show
//!   what held turns changed, so its answers queue behind the last held turn.
//! - **Order per channel** is kept: answers leave in turn order.
//! - **A failed sync** fails every held turn: their requests are answered `journal_failed`
//!   and the journal is cut back to where the first of them began.
//! - **A channel that closes** loses its held answers (its slot may be reused by the next
//!   channel before they would leave).

use std::collections::VecDeque;

/// A turn's answers while its records are not durable yet.
#[derive(Debug)]
struct Entry<M, P> {
    /// The turn's number (increasing).
    turn: u64,
    /// Where the journal stood before the turn's records (to cut back to on failure).
    before: P,
    /// The answers, each for its channel.
    answers: Vec<(usize, M)>,
    /// The turn's requests that change state: (channel, request id).
    requests: Vec<(usize, u64)>,
}

/// What a failed sync leaves to do.
#[derive(Debug, PartialEq, Eq)]
pub struct Failed<P> {
    /// Where the journal stood before the first turn that is not durable.
    pub cut_back_to: Option<P>,
    /// Requests to answer `journal_failed`: (channel, request id).
    pub requests: Vec<(usize, u64)>,
}

/// The held turns, and the one sync in flight.
#[derive(Debug)]
pub struct Held<M, P> {
    entries: VecDeque<Entry<M, P>>,
    /// The last turn that wrote records.
    last_written: u64,
    /// Every turn up to this one is durable.
    durable: u64,
    /// The sync in flight: the last turn it covers.
    in_flight: Option<u64>,
}

impl<M, P> Default for Held<M, P> {
    fn default() -> Self {
        Held { entries: VecDeque::new(), last_written: 0, durable: 0, in_flight: None }
    }
}

impl<M, P: Copy> Held<M, P> {
    /// A turn's records were written (not synced): its answers wait.
    pub fn written(&mut self, before: P, answers: Vec<(usize, M)>, requests: Vec<(usize, u64)>) {
        self.last_written += 1;
        self.entries.push_back(Entry { turn: self.last_written, before, answers, requests });
    }

    /// A turn wrote no records: its answers leave now when nothing is held, else they
    /// queue behind the last held turn. Returns what may leave now.
    pub fn unwritten(&mut self, mut answers: Vec<(usize, M)>) -> Vec<(usize, M)> {
        match self.entries.back_mut() {
            Some(last) => {
                last.answers.append(&mut answers);
                Vec::new()
            }
            None => answers,
        }
    }

    /// Whether answers are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A sync to begin now, if none runs and some written turn is not covered yet: returns
    /// the last turn it covers (to give back to [`Held::synced`]).
    pub fn begin_sync(&mut self) -> Option<u64> {
        if self.in_flight.is_some() || self.last_written <= self.durable {
            return None;
        }
        self.in_flight = Some(self.last_written);
        Some(self.last_written)
    }

    /// Whether a sync runs.
    #[cfg(test)]
    pub fn syncing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The sync covering turns up to `covers` ended well: the answers that may leave now.
    pub fn synced(&mut self, covers: u64) -> Vec<(usize, M)> {
        if self.in_flight == Some(covers) {
            self.in_flight = None;
        }
        self.durable = self.durable.max(covers);
        let mut out = Vec::new();
        while self.entries.front().is_some_and(|e| e.turn <= self.durable) {
            let entry = self.entries.pop_front().expect("a front entry");
            out.extend(entry.answers);
        }
        out
    }

    /// Everything written is durable (a sync the keeper made itself): every held answer.
    /// A sync still in flight ends later with nothing left to release.
    pub fn all_durable(&mut self) -> Vec<(usize, M)> {
        self.durable = self.last_written;
        self.entries.drain(..).flat_map(|e| e.answers).collect()
    }

    /// The sync in flight failed: every held turn fails with it.
    pub fn failed(&mut self) -> Failed<P> {
        self.in_flight = None;
        let cut_back_to = self.entries.front().map(|e| e.before);
        let requests = self.entries.drain(..).flat_map(|e| e.requests).collect();
        Failed { cut_back_to, requests }
    }

    /// Channel `link` closed: its held answers and requests go.
    pub fn forget_link(&mut self, link: usize) {
        for entry in &mut self.entries {
            entry.answers.retain(|(l, _)| *l != link);
            entry.requests.retain(|(l, _)| *l != link);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type H = Held<&'static str, u64>;

    #[test]
    fn answers_leave_only_once_a_sync_begun_after_their_write_ended() {
        let mut h = H::default();
        assert_eq!(h.unwritten(vec![(1, "read")]), vec![(1, "read")], "nothing held: at once");
        h.written(0, vec![(1, "a")], vec![(1, 10)]);
        let first = h.begin_sync().expect("a sync begins");
        assert_eq!(h.begin_sync(), None, "one sync at a time");
        h.written(100, vec![(2, "b")], vec![(2, 11)]);
        assert_eq!(h.unwritten(vec![(3, "read-after-b")]), vec![], "a read waits behind b");
        assert_eq!(h.synced(first), vec![(1, "a")], "b was written after the sync began");
        let second = h.begin_sync().expect("b is not covered yet");
        assert_eq!(h.synced(second), vec![(2, "b"), (3, "read-after-b")]);
        assert!(h.is_empty());
        assert_eq!(h.begin_sync(), None, "nothing left to sync");
    }

    #[test]
    fn a_failed_sync_fails_every_held_turn_and_cuts_back_to_the_first() {
        let mut h = H::default();
        h.written(0, vec![(1, "a")], vec![(1, 10)]);
        let first = h.begin_sync().unwrap();
        assert_eq!(h.synced(first), vec![(1, "a")]);
        h.written(40, vec![(1, "b")], vec![(1, 11)]);
        h.begin_sync().unwrap();
        h.written(90, vec![(2, "c")], vec![(2, 12), (2, 13)]);
        let failed = h.failed();
        assert_eq!(failed, Failed { cut_back_to: Some(40), requests: vec![(1, 11), (2, 12), (2, 13)] });
        assert!(h.is_empty() && !h.syncing());
    }

    #[test]
    fn a_sync_the_keeper_made_itself_releases_everything_and_a_late_result_releases_nothing() {
        let mut h = H::default();
        h.written(0, vec![(1, "a")], vec![]);
        let first = h.begin_sync().unwrap();
        h.written(5, vec![(2, "b")], vec![]);
        assert_eq!(h.all_durable(), vec![(1, "a"), (2, "b")]);
        assert_eq!(h.synced(first), vec![]);
        assert!(!h.syncing());
        assert_eq!(h.begin_sync(), None, "all durable already");
    }

    #[test]
    fn a_closed_channel_loses_its_held_answers_and_requests() {
        let mut h = H::default();
        h.written(0, vec![(1, "a"), (2, "x")], vec![(1, 10), (2, 20)]);
        h.forget_link(2);
        let covers = h.begin_sync().unwrap();
        h.written(7, vec![(2, "y")], vec![(2, 21)]);
        assert_eq!(h.synced(covers), vec![(1, "a")]);
        assert_eq!(h.failed().requests, vec![(2, 21)], "a later channel in the same slot keeps its own");
    }

    /// Model check: random writes, reads, syncs (ending well) and releases; every answer
    /// leaves exactly once, in turn order, and never before a sync that began after its
    /// turn's write has ended.
    #[test]
    fn random_histories_never_release_early_and_release_everything_in_order() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..500 {
            let mut h: Held<u64, u64> = Held::default();
            // answer number -> the turn it depends on (0: none)
            let mut depends: Vec<u64> = Vec::new();
            let mut released: Vec<u64> = Vec::new();
            let (mut turn, mut durable, mut in_flight) = (0u64, 0u64, None::<u64>);
            for _ in 0..60 {
                match next() % 4 {
                    0 => {
                        turn += 1;
                        depends.push(turn);
                        h.written(turn, vec![(0, depends.len() as u64 - 1)], vec![]);
                    }
                    1 => {
                        depends.push(turn);
                        let now = h.unwritten(vec![(0, depends.len() as u64 - 1)]);
                        released.extend(now.into_iter().map(|(_, a)| a));
                    }
                    2 => {
                        if let Some(covers) = h.begin_sync() {
                            assert!(in_flight.is_none());
                            assert_eq!(covers, turn);
                            in_flight = Some(covers);
                        }
                    }
                    _ => {
                        if let Some(covers) = in_flight.take() {
                            durable = covers;
                            released.extend(h.synced(covers).into_iter().map(|(_, a)| a));
                        }
                    }
                }
                for &a in &released {
                    assert!(
                        depends[a as usize] <= durable,
                        "answer {a} left before turn {} was durable",
                        depends[a as usize]
                    );
                }
            }
            if let Some(covers) = in_flight.take() {
                released.extend(h.synced(covers).into_iter().map(|(_, a)| a));
            }
            if let Some(covers) = h.begin_sync() {
                released.extend(h.synced(covers).into_iter().map(|(_, a)| a));
            }
            let all: Vec<u64> = (0..depends.len() as u64).collect();
            assert_eq!(released, all, "each answer once, in order");
        }
    }
}
