//! `/metrics` across processes: a worker asks the master, the master asks every child that
//! serves for its snapshot, and answers with the whole page when all have answered or after
//! [`COLLECT_TIMEOUT_MS`], whichever comes first. The keeper's last snapshot is kept: a
//! page the keeper did not answer for (it is down, or hangs) shows it with `keeper_up 0`,
//! so its families never vanish from a scrape.

use std::collections::{HashMap, HashSet};

use crate::core::lifecycle::Generation;
use crate::metrics::{self, KeeperSnapshot, KeeperView, MasterSnapshot, Totals, WorkerSnapshot};

/// How long a metrics collection waits for every child.
pub const COLLECT_TIMEOUT_MS: u64 = 1_000;

struct Collection {
    requester: Generation,
    request_id: u64,
    waiting: HashSet<Generation>,
    workers: Vec<WorkerSnapshot>,
    keeper: Option<KeeperSnapshot>,
    deadline_ms: u64,
}

/// Collections in progress, and the counters of workers that have left.
#[derive(Default)]
pub struct Collections {
    open: HashMap<u64, Collection>,
    next_id: u64,
    /// Final counters of workers that have left (so totals never go down).
    pub retired: Totals,
    /// The keeper's latest snapshot, for pages it does not answer for.
    last_keeper: Option<KeeperSnapshot>,
}

/// A finished page: send `text` to `requester` as the answer to its request `request_id`.
pub struct Page {
    /// The worker that asked.
    pub requester: Generation,
    /// Its request id.
    pub request_id: u64,
    /// Prometheus text.
    pub text: String,
}

impl Collections {
    /// Starts a collection for `requester`'s request; returns its id (to send to `targets`).
    pub fn start(&mut self, requester: Generation, request_id: u64, targets: &[Generation], now_ms: u64) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        self.open.insert(
            id,
            Collection {
                requester,
                request_id,
                waiting: targets.iter().copied().collect(),
                workers: Vec::new(),
                keeper: None,
                deadline_ms: now_ms + COLLECT_TIMEOUT_MS,
            },
        );
        id
    }

    /// A worker's snapshot for collection `id`.
    pub fn worker(&mut self, id: u64, from: Generation, snapshot: WorkerSnapshot) {
        if let Some(c) = self.open.get_mut(&id) {
            if c.waiting.remove(&from) {
                c.workers.push(snapshot);
            }
        }
    }

    /// The keeper's snapshot for collection `id`.
    pub fn keeper(&mut self, id: u64, from: Generation, snapshot: KeeperSnapshot) {
        if let Some(c) = self.open.get_mut(&id) {
            if c.waiting.remove(&from) {
                self.last_keeper = Some(snapshot.clone());
                c.keeper = Some(snapshot);
            }
        }
    }

    /// A child is gone: no collection waits for it.
    pub fn forget(&mut self, generation: Generation) {
        for c in self.open.values_mut() {
            c.waiting.remove(&generation);
        }
    }

    /// When the next collection times out.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.open.values().map(|c| c.deadline_ms).min()
    }

    /// The pages that are complete or timed out, rendered with the master's counters, which
    /// `master` makes only if a page is (it reads `/proc`, and this runs every loop turn).
    pub fn finished(&mut self, now_ms: u64, master: impl FnOnce() -> MasterSnapshot) -> Vec<Page> {
        let done: Vec<u64> = self
            .open
            .iter()
            .filter(|(_, c)| c.waiting.is_empty() || c.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        let mut pages = Vec::new();
        if done.is_empty() {
            return pages;
        }
        let master = master();
        for id in done {
            if let Some(c) = self.open.remove(&id) {
                let keeper = match (&c.keeper, &self.last_keeper) {
                    (Some(k), _) => KeeperView::Answered(k),
                    (None, Some(k)) => KeeperView::Last(k),
                    (None, None) => KeeperView::Never,
                };
                let text = metrics::render(&master, keeper, &c.workers, &self.retired);
                pages.push(Page { requester: c.requester, request_id: c.request_id, text });
            }
        }
        pages
    }
}
