//! Metrics as plain data: what each process counts, how snapshots from many processes add
//! up, and the Prometheus text rendering. Pure: processes fill the counters; the master
//! gathers snapshots over IPC and renders them here.
//!
//! Exposed series (all prefixed `leasehold_`):
//!
//! | series | type | labels | from |
//! |---|---|---|---|
//! | `build_info` (always 1) | gauge | `version`, `build` (`crate::version`) | master |
//! | `http_requests_total` | counter | `route`, `status` | workers |
//! | `http_request_duration_seconds` | histogram | `route` | workers |
//! | `open_connections` | gauge | `worker` | workers |
//! | `unsent_bytes` | gauge | `worker` | workers |
//! | `max_unsent_bytes` | gauge | | workers |
//! | `connections_total` | counter | | workers |
//! | `workers` | gauge | `state` (`configured`, `ready`) | master |
//! | `restarts_total` | counter | `role` (`worker`, `keeper`, `courier`) | master |
//! | `hangs_total` | counter | `role` (`worker`, `keeper`, `courier`) | master |
//! | `reloads_total` | counter | `result` (`ok`, `refused`) | master |
//! | `handoff_failures_total` | counter | | master |
//! | `keeper_up` | gauge | | master |
//! | `locks`, `leases`, `waiters` | gauge | | keeper |
//! | `next_fence` | gauge | | keeper |
//! | `keeper_ops_total` | counter | | keeper |
//! | `waiting_requests`, `event_streams`, `resources` | gauge | | keeper |
//! | `journal_bytes`, `journal_writable`, `recovery_seconds`, `snapshot_seconds` | gauge | | keeper |
//! | `journal_fsync_seconds` | histogram | | keeper |
//! | `cluster_role` | gauge | `role` (`leader`, `candidate`, `follower`) | keeper, cluster mode |
//! | `cluster_epoch`, `cluster_applied_batch`, `cluster_lag_batches`, `cluster_snapshot_batch` | gauge | | keeper, cluster mode |
//! | `cluster_commit_seconds` | histogram | | keeper, cluster mode |
//! | `budget_used`, `budget_limit` | gauge | `budget` (`locks`, `tickets`, `data_bytes`, `resources`, `event_streams`) | keeper |
//! | `lease_grants_total` | counter | | keeper |
//! | `rw_grants_total` | counter | `mode` (`shared`, `exclusive`): grants of read/write locks | keeper |
//! | `lease_expiries_total` | counter | `reason` (`ttl`, `unclaimed`) | keeper |
//! | `waiters_dropped_total` | counter | `reason` (`waiter_ttl`, `left`, `limit_lowered`) | keeper |
//! | `queue_wait_seconds` | histogram | | keeper |
//! | `process_resident_memory_bytes` | gauge | `role` (`master`, `worker`, `keeper`, `courier`), `slot` (workers) | each process |
//! | `process_cpu_seconds_total` | counter | `role`, `slot` (workers) | each process |
//! | `process_start_time_seconds` | gauge | `role`, `slot` (workers) | each process |
//!
//! Counters of workers that left in a reload are kept by the master, so totals never go
//! down across reloads (a worker killed outright loses what it had not reported).
//!
//! - **Waits are not latency.** A request that waited in a queue (the keeper said it
//!   waits) counts in `http_requests_total` but not in `http_request_duration_seconds`,
//!   which would otherwise measure clients' `wait_ms`; the time in the queue is
//!   `queue_wait_seconds`, observed per grant by the keeper.
//! - **The keeper down.** While the keeper is down or does not answer a collection, its
//!   families show the figures of its last snapshot (zeros if it never answered, with the
//!   cluster's families on a cluster node and no `cluster_role` at 1) and `keeper_up` is 0;
//!   its process series are left out (there is no process to measure).
//! - **Processes.** Workers and the keeper measure themselves (`/proc/self`) when they make
//!   their snapshot; the master measures itself and the courier, which takes no part in
//!   collections, by its pid. Uptime is `time() - process_start_time_seconds`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::version;

/// Upper bounds of the latency histogram buckets, in microseconds (`+Inf` is implied).
pub const LATENCY_BUCKETS_US: &[u64] =
    &[100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000];

/// Upper bounds of the queue-wait histogram buckets, in microseconds (`+Inf` is implied):
/// from a millisecond (a hand-off to a waiter already connected) to an hour.
pub const QUEUE_WAIT_BUCKETS_US: &[u64] = &[
    1_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    300_000_000,
    900_000_000,
    3_600_000_000,
];

/// A histogram: one count per bucket (not cumulative; the last is `+Inf`). Its bucket
/// bounds are not carried: [`LATENCY_BUCKETS_US`] unless its family says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Counts per bucket, one more than the bounds.
    pub buckets: Vec<u64>,
    /// Sum of observations, µs.
    pub sum_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::for_bounds(LATENCY_BUCKETS_US)
    }
}

impl Histogram {
    /// An empty histogram for buckets with upper bounds `bounds` (µs).
    pub fn for_bounds(bounds: &[u64]) -> Self {
        Self { buckets: vec![0; bounds.len() + 1], sum_us: 0 }
    }

    /// Records one observation on the latency buckets.
    pub fn observe(&mut self, us: u64) {
        self.observe_on(LATENCY_BUCKETS_US, us);
    }

    /// Records one observation on the buckets with upper bounds `bounds` (those it was made
    /// for).
    pub fn observe_on(&mut self, bounds: &[u64], us: u64) {
        let i = bounds.partition_point(|&b| b < us);
        if let Some(slot) = self.buckets.get_mut(i) {
            *slot += 1;
        }
        self.sum_us = self.sum_us.saturating_add(us);
    }

    /// Adds another histogram's counts (a malformed one is ignored bucket by bucket).
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine = mine.saturating_add(*theirs);
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
    }

    /// Total observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

/// Requests of one route with one status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCount {
    /// Route label.
    pub route: String,
    /// Status code.
    pub status: u16,
    /// Requests.
    pub count: u64,
}

/// Latency of one route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteLatency {
    /// Route label.
    pub route: String,
    /// Its histogram.
    pub histogram: Histogram,
}

/// What the kernel says of one process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStats {
    /// Resident memory, bytes.
    pub resident_bytes: u64,
    /// User and system CPU time, ms.
    pub cpu_ms: u64,
    /// When it started, ms since the Unix epoch.
    pub start_time_ms: u64,
}

/// One process's figures with its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSample {
    /// `master`, `worker`, `keeper` or `courier`.
    pub role: String,
    /// A worker's slot.
    pub slot: Option<u32>,
    /// Its figures.
    pub stats: ProcessStats,
}

/// What happened to leases and waiters since the keeper started (a keeper's recovery
/// replays history without counting it again). Plain data, counted by the service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LeaseCounters {
    /// Leases granted, at once or from a queue (each takes a fence).
    pub grants: u64,
    /// Of those, shared leases of read/write locks.
    pub shared_grants: u64,
    /// Of those, exclusive leases of read/write locks.
    pub exclusive_grants: u64,
    /// Leases that ended because their holder did not renew in time.
    pub expired: u64,
    /// Grants to waiters that never showed up to claim them (`claim_ms`).
    pub expired_unclaimed: u64,
    /// Waiters dropped for not being seen for `waiter_ttl_ms`.
    pub dropped_waiter_ttl: u64,
    /// Waiters that left the queue themselves (a release or delete of their ticket).
    pub dropped_left: u64,
    /// Waiters dropped because the lock's limit went below their weight.
    pub dropped_limit_lowered: u64,
    /// Time from a waiter's enqueue to its grant, µs, on [`QUEUE_WAIT_BUCKETS_US`].
    pub queue_wait: Histogram,
}

impl LeaseCounters {
    /// Counts a new grant of a read/write lock by its mode (a semaphore's has none).
    pub fn granted(&mut self, mode: Option<crate::core::lock::LockMode>) {
        match mode {
            Some(crate::core::lock::LockMode::Shared) => self.shared_grants += 1,
            Some(crate::core::lock::LockMode::Exclusive) => self.exclusive_grants += 1,
            None => {}
        }
    }
}

impl Default for LeaseCounters {
    fn default() -> Self {
        Self {
            grants: 0,
            shared_grants: 0,
            exclusive_grants: 0,
            expired: 0,
            expired_unclaimed: 0,
            dropped_waiter_ttl: 0,
            dropped_left: 0,
            dropped_limit_lowered: 0,
            queue_wait: Histogram::for_bounds(QUEUE_WAIT_BUCKETS_US),
        }
    }
}

/// What one worker reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    /// Worker slot.
    pub slot: u32,
    /// Open connections now.
    pub open_connections: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Requests by route and status.
    pub requests: Vec<RequestCount>,
    /// Latency by route.
    pub latency: Vec<RouteLatency>,
    /// Response bytes queued for clients and not sent yet, over all connections.
    #[serde(default)]
    pub unsent_bytes: u64,
    /// The per-connection limit of unsent bytes (`http.max_unsent_bytes`).
    #[serde(default)]
    pub max_unsent_bytes: u64,
    /// The worker process's own figures.
    #[serde(default)]
    pub process: Option<ProcessStats>,
}

/// One bounded quantity: how much is in use and its limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetUse {
    /// The `budget` label.
    pub name: String,
    /// In use now.
    pub used: u64,
    /// The most allowed.
    pub limit: u64,
}

impl BudgetUse {
    /// A budget named `name`.
    pub fn new(name: &str, used: u64, limit: impl Into<u64>) -> Self {
        Self { name: name.to_string(), used, limit: limit.into() }
    }
}

/// What the keeper reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeeperSnapshot {
    /// Locks in the table.
    pub locks: u64,
    /// Live leases.
    pub leases: u64,
    /// Queued waiters.
    pub waiters: u64,
    /// The fence the next grant takes.
    pub next_fence: u64,
    /// Lock operations applied since start.
    pub ops_total: u64,
    /// Requests waiting for a grant (long-polls).
    #[serde(default)]
    pub waiting_requests: u64,
    /// Open event streams.
    #[serde(default)]
    pub event_streams: u64,
    /// Registered Small Resource Server resources.
    #[serde(default)]
    pub resources: u64,
    /// Bytes in the journal since the last snapshot.
    #[serde(default)]
    pub journal_bytes: u64,
    /// Whether the journal can be written (else only reads are served).
    #[serde(default)]
    pub journal_writable: bool,
    /// Time each journal sync took, µs.
    #[serde(default)]
    pub fsync_latency: Histogram,
    /// Cluster mode: where this node stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::ipc::message::ClusterStatus>,
    /// Cluster mode: time each batch's put took, µs.
    #[serde(default)]
    pub commit_latency: Histogram,
    /// How long the last recovery took, ms.
    #[serde(default)]
    pub recovery_ms: u64,
    /// How long the last snapshot took, ms.
    #[serde(default)]
    pub last_snapshot_ms: u64,
    /// Outbox calls waiting for their time.
    #[serde(default)]
    pub outbox_pending: u64,
    /// Outbox calls with the courier.
    #[serde(default)]
    pub outbox_in_flight: u64,
    /// Outbox calls in the dead-letter list.
    #[serde(default)]
    pub outbox_failed: u64,
    /// Deliveries that succeeded.
    #[serde(default)]
    pub deliveries_ok: u64,
    /// Attempts to be tried again.
    #[serde(default)]
    pub deliveries_retried: u64,
    /// Calls that went to the dead-letter list.
    #[serde(default)]
    pub deliveries_failed: u64,
    /// Lock callbacks refused by a full outbox.
    #[serde(default)]
    pub callbacks_refused: u64,
    /// Time each delivery attempt took, µs.
    #[serde(default)]
    pub delivery_latency: Histogram,
    /// Every budget, with its use and limit.
    #[serde(default)]
    pub budgets: Vec<BudgetUse>,
    /// Grants, expiries, dropped waiters and queue waits.
    #[serde(default)]
    pub leases_counted: LeaseCounters,
    /// The keeper process's own figures.
    #[serde(default)]
    pub process: Option<ProcessStats>,
}

/// What the master knows itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterSnapshot {
    /// Worker slots configured.
    pub workers_configured: u64,
    /// Workers serving.
    pub workers_ready: u64,
    /// Workers restarted after dying.
    pub worker_restarts: u64,
    /// Keepers restarted after dying.
    pub keeper_restarts: u64,
    /// Couriers restarted after dying.
    #[serde(default)]
    pub courier_restarts: u64,
    /// Workers killed for not answering pings.
    #[serde(default)]
    pub worker_hangs: u64,
    /// Keepers killed for not answering pings.
    #[serde(default)]
    pub keeper_hangs: u64,
    /// Couriers killed for not answering pings.
    #[serde(default)]
    pub courier_hangs: u64,
    /// Reloads applied.
    pub reloads_ok: u64,
    /// Reloads refused (invalid configuration).
    pub reloads_refused: u64,
    /// fd-passing hand-offs that failed and were re-routed.
    pub handoff_failures: u64,
    /// Whether the keeper is up.
    pub keeper_up: bool,
    /// This node's name when it runs in a cluster (so a page the keeper never answered
    /// for still has the cluster's families).
    #[serde(default)]
    pub cluster_node: Option<String>,
    /// The master's own figures and the courier's.
    #[serde(default)]
    pub processes: Vec<ProcessSample>,
}

/// The keeper's part of a page.
#[derive(Debug, Clone, Copy)]
pub enum KeeperView<'a> {
    /// It answered this collection.
    Answered(&'a KeeperSnapshot),
    /// It did not (down, or too slow): its last snapshot, rendered with `keeper_up 0`.
    Last(&'a KeeperSnapshot),
    /// It never answered since this master started: its families at zero.
    Never,
}

/// Counters summed over workers (live and retired).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    requests: BTreeMap<(String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
    connections_total: u64,
}

impl Totals {
    /// Adds a worker's counters.
    pub fn add(&mut self, w: &WorkerSnapshot) {
        for r in &w.requests {
            *self.requests.entry((r.route.clone(), r.status)).or_default() += r.count;
        }
        for l in &w.latency {
            self.latency.entry(l.route.clone()).or_default().merge(&l.histogram);
        }
        self.connections_total += w.connections_total;
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP leasehold_{name} {help}\n# TYPE leasehold_{name} {kind}");
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes a histogram family with its header, on the latency buckets.
fn histogram(out: &mut String, name: &str, help: &str, labels: &str, h: &Histogram) {
    header(out, name, "histogram", help);
    histogram_samples(out, name, labels, LATENCY_BUCKETS_US, h);
}

/// Writes a histogram's samples on buckets with upper bounds `bounds` (µs); `labels` is
/// empty or ends with a comma. Counts past the bounds' buckets (a histogram made for other
/// bounds) are left out, so `_count` always equals the `+Inf` bucket.
fn histogram_samples(out: &mut String, name: &str, labels: &str, bounds: &[u64], h: &Histogram) {
    let mut cumulative = 0u64;
    for i in 0..=bounds.len() {
        cumulative = cumulative.saturating_add(h.buckets.get(i).copied().unwrap_or(0));
        let le = bounds.get(i).map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
        let _ = writeln!(out, "leasehold_{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
    }
    let plain = labels.trim_end_matches(',');
    let braces = if plain.is_empty() { String::new() } else { format!("{{{plain}}}") };
    let _ = writeln!(out, "leasehold_{name}_sum{braces} {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "leasehold_{name}_count{braces} {cumulative}");
}

/// Writes the three process families for `samples`. Two processes of one role and slot
/// (a worker and its replacement during a reload) would make duplicate series: the one
/// started last is shown.
fn processes(out: &mut String, samples: &[ProcessSample]) {
    let mut newest: BTreeMap<(&str, Option<u32>), ProcessStats> = BTreeMap::new();
    for p in samples {
        newest
            .entry((p.role.as_str(), p.slot))
            .and_modify(|s| {
                if p.stats.start_time_ms >= s.start_time_ms {
                    *s = p.stats;
                }
            })
            .or_insert(p.stats);
    }
    let samples: Vec<ProcessSample> =
        newest.into_iter().map(|((role, slot), stats)| ProcessSample { role: role.to_string(), slot, stats }).collect();
    let labels = |p: &ProcessSample| match p.slot {
        Some(slot) => format!("role=\"{}\",slot=\"{slot}\"", escape(&p.role)),
        None => format!("role=\"{}\"", escape(&p.role)),
    };
    header(
        out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of each process, by role (and worker slot).",
    );
    for p in &samples {
        let _ = writeln!(out, "leasehold_process_resident_memory_bytes{{{}}} {}", labels(p), p.stats.resident_bytes);
    }
    header(out, "process_cpu_seconds_total", "counter", "User and system CPU time of each process, by role.");
    for p in &samples {
        let _ = writeln!(out, "leasehold_process_cpu_seconds_total{{{}}} {}", labels(p), p.stats.cpu_ms as f64 / 1e3);
    }
    header(out, "process_start_time_seconds", "gauge", "Start time of each process since the Unix epoch, by role.");
    for p in &samples {
        let _ = writeln!(
            out,
            "leasehold_process_start_time_seconds{{{}}} {}",
            labels(p),
            p.stats.start_time_ms as f64 / 1e3
        );
    }
}

/// Renders everything in the Prometheus text format (version 0.0.4).
pub fn render(master: &MasterSnapshot, keeper: KeeperView<'_>, workers: &[WorkerSnapshot], retired: &Totals) -> String {
    // A cluster node's keeper that never answered: its cluster families at zero too, with
    // no role set.
    let never = KeeperSnapshot {
        cluster: master.cluster_node.as_ref().map(|node| crate::ipc::message::ClusterStatus {
            node: node.clone(),
            role: String::new(),
            epoch: 0,
            applied: 0,
            lag: 0,
            snapshot: 0,
            leader: None,
        }),
        ..KeeperSnapshot::default()
    };
    let (k, keeper_up) = match keeper {
        KeeperView::Answered(k) => (k, master.keeper_up),
        KeeperView::Last(k) => (k, false),
        KeeperView::Never => (&never, false),
    };
    let mut totals = retired.clone();
    for w in workers {
        totals.add(w);
    }
    let mut out = String::with_capacity(4096);
    header(&mut out, "build_info", "gauge", "The version and build of the binary rendering these metrics (always 1).");
    let _ = writeln!(
        out,
        "leasehold_build_info{{version=\"{}\",build=\"{}\"}} 1",
        escape(version::VERSION),
        escape(&version::build())
    );
    header(&mut out, "http_requests_total", "counter", "HTTP requests answered, by route and status.");
    for ((route, status), count) in &totals.requests {
        let _ =
            writeln!(out, "leasehold_http_requests_total{{route=\"{}\",status=\"{status}\"}} {count}", escape(route));
    }
    header(
        &mut out,
        "http_request_duration_seconds",
        "histogram",
        "Time from a complete request to its response (requests that waited in a queue are left out).",
    );
    for (route, h) in &totals.latency {
        let label = format!("route=\"{}\",", escape(route));
        histogram_samples(&mut out, "http_request_duration_seconds", &label, LATENCY_BUCKETS_US, h);
    }
    header(&mut out, "open_connections", "gauge", "Open client connections, by worker slot.");
    let mut by_slot: Vec<&WorkerSnapshot> = workers.iter().collect();
    by_slot.sort_by_key(|w| w.slot);
    for w in &by_slot {
        let _ = writeln!(out, "leasehold_open_connections{{worker=\"{}\"}} {}", w.slot, w.open_connections);
    }
    header(&mut out, "unsent_bytes", "gauge", "Response bytes queued for clients and not sent yet, by worker slot.");
    for w in &by_slot {
        let _ = writeln!(out, "leasehold_unsent_bytes{{worker=\"{}\"}} {}", w.slot, w.unsent_bytes);
    }
    header(
        &mut out,
        "max_unsent_bytes",
        "gauge",
        "Unsent response bytes of one connection above which it is not read (http.max_unsent_bytes).",
    );
    if let Some(limit) = workers.iter().map(|w| w.max_unsent_bytes).max() {
        let _ = writeln!(out, "leasehold_max_unsent_bytes {limit}");
    }
    header(&mut out, "connections_total", "counter", "Client connections accepted.");
    let _ = writeln!(out, "leasehold_connections_total {}", totals.connections_total);
    header(&mut out, "workers", "gauge", "Worker processes, configured and ready.");
    let _ = writeln!(out, "leasehold_workers{{state=\"configured\"}} {}", master.workers_configured);
    let _ = writeln!(out, "leasehold_workers{{state=\"ready\"}} {}", master.workers_ready);
    header(&mut out, "restarts_total", "counter", "Child processes restarted after dying, by role.");
    let _ = writeln!(out, "leasehold_restarts_total{{role=\"worker\"}} {}", master.worker_restarts);
    let _ = writeln!(out, "leasehold_restarts_total{{role=\"keeper\"}} {}", master.keeper_restarts);
    let _ = writeln!(out, "leasehold_restarts_total{{role=\"courier\"}} {}", master.courier_restarts);
    header(&mut out, "hangs_total", "counter", "Child processes killed for not answering the master's pings, by role.");
    for (role, n) in
        [("worker", master.worker_hangs), ("keeper", master.keeper_hangs), ("courier", master.courier_hangs)]
    {
        let _ = writeln!(out, "leasehold_hangs_total{{role=\"{role}\"}} {n}");
    }
    header(&mut out, "reloads_total", "counter", "Configuration reloads, by result.");
    let _ = writeln!(out, "leasehold_reloads_total{{result=\"ok\"}} {}", master.reloads_ok);
    let _ = writeln!(out, "leasehold_reloads_total{{result=\"refused\"}} {}", master.reloads_refused);
    header(
        &mut out,
        "handoff_failures_total",
        "counter",
        "Connection hand-offs to a worker that failed and were re-routed.",
    );
    let _ = writeln!(out, "leasehold_handoff_failures_total {}", master.handoff_failures);
    header(&mut out, "keeper_up", "gauge", "1 while the keeper answers (0: its families show its last figures).");
    let _ = writeln!(out, "leasehold_keeper_up {}", u8::from(keeper_up));
    for (name, kind, help, value) in [
        ("locks", "gauge", "Locks in the table.", k.locks),
        ("leases", "gauge", "Leases held.", k.leases),
        ("waiters", "gauge", "Waiters queued.", k.waiters),
        ("next_fence", "gauge", "The fencing token the next grant takes.", k.next_fence),
        ("keeper_ops_total", "counter", "Lock operations applied by the keeper.", k.ops_total),
        ("waiting_requests", "gauge", "Requests waiting in a queue for a grant.", k.waiting_requests),
        ("event_streams", "gauge", "Open event streams.", k.event_streams),
        ("resources", "gauge", "Registered Small Resource Server resources.", k.resources),
        ("journal_bytes", "gauge", "Bytes in the journal since the last snapshot.", k.journal_bytes),
        ("journal_writable", "gauge", "1 while the journal can be written.", u64::from(k.journal_writable)),
    ] {
        header(&mut out, name, kind, help);
        let _ = writeln!(out, "leasehold_{name} {value}");
    }
    histogram(&mut out, "journal_fsync_seconds", "Time one journal sync took.", "", &k.fsync_latency);
    if let Some(c) = &k.cluster {
        header(&mut out, "cluster_role", "gauge", "1 for this node's role in the cluster.");
        for role in ["leader", "candidate", "follower"] {
            let _ = writeln!(out, "leasehold_cluster_role{{role=\"{role}\"}} {}", u8::from(c.role == role));
        }
        for (name, help, value) in [
            ("cluster_epoch", "The epoch of the leader this node knows of (0: none).", c.epoch),
            ("cluster_applied_batch", "The last batch of the log this node's replica applied.", c.applied),
            ("cluster_lag_batches", "Batches seen in the log but not applied yet.", c.lag),
            ("cluster_snapshot_batch", "The batch this node's local snapshot stands for (0: none).", c.snapshot),
        ] {
            header(&mut out, name, "gauge", help);
            let _ = writeln!(out, "leasehold_{name} {value}");
        }
        histogram(&mut out, "cluster_commit_seconds", "Time one batch's put into etcd took.", "", &k.commit_latency);
    }
    header(&mut out, "outbox_calls", "gauge", "Outbox calls, by state.");
    let _ = writeln!(out, "leasehold_outbox_calls{{state=\"pending\"}} {}", k.outbox_pending);
    let _ = writeln!(out, "leasehold_outbox_calls{{state=\"in_flight\"}} {}", k.outbox_in_flight);
    let _ = writeln!(out, "leasehold_outbox_calls{{state=\"failed\"}} {}", k.outbox_failed);
    header(&mut out, "deliveries_total", "counter", "Outbox delivery attempts, by result.");
    let _ = writeln!(out, "leasehold_deliveries_total{{result=\"delivered\"}} {}", k.deliveries_ok);
    let _ = writeln!(out, "leasehold_deliveries_total{{result=\"retried\"}} {}", k.deliveries_retried);
    let _ = writeln!(out, "leasehold_deliveries_total{{result=\"failed\"}} {}", k.deliveries_failed);
    header(&mut out, "callbacks_refused_total", "counter", "Lock callbacks refused because the outbox was full.");
    let _ = writeln!(out, "leasehold_callbacks_refused_total {}", k.callbacks_refused);
    histogram(&mut out, "delivery_seconds", "Time one delivery attempt took.", "", &k.delivery_latency);
    header(&mut out, "recovery_seconds", "gauge", "How long the keeper's last recovery took.");
    let _ = writeln!(out, "leasehold_recovery_seconds {}", k.recovery_ms as f64 / 1e3);
    header(&mut out, "snapshot_seconds", "gauge", "How long the last snapshot took.");
    let _ = writeln!(out, "leasehold_snapshot_seconds {}", k.last_snapshot_ms as f64 / 1e3);
    header(&mut out, "budget_used", "gauge", "Use of each bounded quantity, by budget.");
    for b in &k.budgets {
        let _ = writeln!(out, "leasehold_budget_used{{budget=\"{}\"}} {}", escape(&b.name), b.used);
    }
    header(&mut out, "budget_limit", "gauge", "Limit of each bounded quantity, by budget.");
    for b in &k.budgets {
        let _ = writeln!(out, "leasehold_budget_limit{{budget=\"{}\"}} {}", escape(&b.name), b.limit);
    }
    let c = &k.leases_counted;
    header(&mut out, "lease_grants_total", "counter", "Leases granted, at once or from a queue.");
    let _ = writeln!(out, "leasehold_lease_grants_total {}", c.grants);
    header(&mut out, "rw_grants_total", "counter", "Leases of read/write locks granted, by mode.");
    let _ = writeln!(out, "leasehold_rw_grants_total{{mode=\"shared\"}} {}", c.shared_grants);
    let _ = writeln!(out, "leasehold_rw_grants_total{{mode=\"exclusive\"}} {}", c.exclusive_grants);
    header(
        &mut out,
        "lease_expiries_total",
        "counter",
        "Leases that ended unreleased, by reason: ttl (not renewed: a holder that died or stalled), \
         unclaimed (granted to a waiter that never showed up).",
    );
    let _ = writeln!(out, "leasehold_lease_expiries_total{{reason=\"ttl\"}} {}", c.expired);
    let _ = writeln!(out, "leasehold_lease_expiries_total{{reason=\"unclaimed\"}} {}", c.expired_unclaimed);
    header(
        &mut out,
        "waiters_dropped_total",
        "counter",
        "Waiters removed from a queue without a grant, by reason: waiter_ttl (not seen for \
         locks.waiter_ttl_ms), left (released their place), limit_lowered.",
    );
    for (reason, n) in
        [("waiter_ttl", c.dropped_waiter_ttl), ("left", c.dropped_left), ("limit_lowered", c.dropped_limit_lowered)]
    {
        let _ = writeln!(out, "leasehold_waiters_dropped_total{{reason=\"{reason}\"}} {n}");
    }
    header(&mut out, "queue_wait_seconds", "histogram", "Time from a waiter's enqueue to its grant.");
    histogram_samples(&mut out, "queue_wait_seconds", "", QUEUE_WAIT_BUCKETS_US, &c.queue_wait);
    let mut samples = master.processes.clone();
    for w in &by_slot {
        if let Some(stats) = w.process {
            samples.push(ProcessSample { role: "worker".into(), slot: Some(w.slot), stats });
        }
    }
    if let (KeeperView::Answered(_), Some(stats)) = (keeper, k.process) {
        samples.push(ProcessSample { role: "keeper".into(), slot: None, stats });
    }
    processes(&mut out, &samples);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(slot: u32, acquires: u64, open: u64) -> WorkerSnapshot {
        let mut h = Histogram::default();
        for us in [50, 300, 7_000_000] {
            h.observe(us);
        }
        WorkerSnapshot {
            slot,
            open_connections: open,
            connections_total: open,
            requests: vec![RequestCount { route: "acquire".into(), status: 200, count: acquires }],
            latency: vec![RouteLatency { route: "acquire".into(), histogram: h }],
            unsent_bytes: u64::from(slot) * 1000,
            max_unsent_bytes: 1 << 20,
            process: Some(ProcessStats {
                resident_bytes: 1_000 + u64::from(slot),
                cpu_ms: 1_500,
                start_time_ms: 1_700_000_000_250,
            }),
        }
    }

    /// The value of the one sample line that starts with `series ` in `text`.
    fn sample(text: &str, series: &str) -> Option<String> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).map(str::to_string)
    }

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut h = Histogram::default();
        h.observe(100);
        h.observe(101);
        h.observe(u64::MAX);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[1], 1);
        assert_eq!(*h.buckets.last().unwrap(), 1);
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn render_sums_workers_and_retired_totals() {
        let mut retired = Totals::default();
        retired.add(&worker(9, 5, 0));
        let keeper = KeeperSnapshot {
            locks: 3,
            leases: 2,
            waiters: 1,
            next_fence: 10,
            ops_total: 40,
            budgets: vec![BudgetUse::new("locks", 3, 5_000_000u32), BudgetUse::new("data_bytes", 17, 1u64 << 28)],
            ..Default::default()
        };
        let text = render(
            &MasterSnapshot { workers_configured: 2, workers_ready: 2, keeper_up: true, ..Default::default() },
            KeeperView::Answered(&keeper),
            &[worker(1, 10, 4), worker(0, 20, 6)],
            &retired,
        );
        assert!(text.contains("leasehold_http_requests_total{route=\"acquire\",status=\"200\"} 35\n"), "{text}");
        assert!(
            text.contains("leasehold_open_connections{worker=\"0\"} 6\nleasehold_open_connections{worker=\"1\"} 4\n")
        );
        assert!(text.contains("leasehold_http_request_duration_seconds_bucket{route=\"acquire\",le=\"+Inf\"} 9\n"));
        assert!(text.contains("leasehold_http_request_duration_seconds_bucket{route=\"acquire\",le=\"0.0001\"} 3\n"));
        assert!(text.contains("leasehold_leases 2\n"));
        assert!(text.contains("leasehold_unsent_bytes{worker=\"1\"} 1000\n"), "{text}");
        assert!(text.contains("leasehold_max_unsent_bytes 1048576\n"), "{text}");
        assert!(text.contains("leasehold_keeper_up 1\n"));
        let build_info = format!("leasehold_build_info{{version=\"{}\",build=\"dev\"}} 1\n", version::VERSION);
        assert!(text.contains(&build_info), "{text}");
        assert!(text.contains("# TYPE leasehold_build_info gauge\n"), "{text}");
        assert!(text.contains("leasehold_budget_used{budget=\"locks\"} 3\n"), "{text}");
        assert!(text.contains("leasehold_budget_limit{budget=\"locks\"} 5000000\n"));
        assert!(text.contains("leasehold_budget_used{budget=\"data_bytes\"} 17\n"));
        assert!(text.contains("leasehold_budget_limit{budget=\"data_bytes\"} 268435456\n"));
        assert_every_sample_is_declared(&text);
    }

    fn assert_every_sample_is_declared(text: &str) {
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let family = line.split(['{', ' ']).next().unwrap();
            let base = family.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {base} ")), "undeclared {family}");
        }
    }

    fn counted_keeper() -> KeeperSnapshot {
        let mut counted = LeaseCounters { grants: 7, expired: 3, expired_unclaimed: 1, ..Default::default() };
        counted.dropped_waiter_ttl = 2;
        counted.dropped_left = 4;
        counted.queue_wait.observe_on(QUEUE_WAIT_BUCKETS_US, 2_000_000);
        counted.queue_wait.observe_on(QUEUE_WAIT_BUCKETS_US, 7_200_000_000);
        KeeperSnapshot {
            leases: 2,
            leases_counted: counted,
            process: Some(ProcessStats { resident_bytes: 4096, cpu_ms: 20, start_time_ms: 5_000 }),
            ..Default::default()
        }
    }

    #[test]
    fn render_lease_counters_queue_wait_and_processes() {
        let master = MasterSnapshot {
            keeper_up: true,
            processes: vec![ProcessSample {
                role: "master".into(),
                slot: None,
                stats: ProcessStats { resident_bytes: 2048, cpu_ms: 10, start_time_ms: 1_000 },
            }],
            ..Default::default()
        };
        let keeper = counted_keeper();
        let text = render(&master, KeeperView::Answered(&keeper), &[worker(0, 1, 1)], &Totals::default());
        assert_eq!(sample(&text, "leasehold_lease_grants_total").as_deref(), Some("7"), "{text}");
        assert_eq!(sample(&text, "leasehold_lease_expiries_total{reason=\"ttl\"}").as_deref(), Some("3"));
        assert_eq!(sample(&text, "leasehold_lease_expiries_total{reason=\"unclaimed\"}").as_deref(), Some("1"));
        assert_eq!(sample(&text, "leasehold_waiters_dropped_total{reason=\"waiter_ttl\"}").as_deref(), Some("2"));
        assert_eq!(sample(&text, "leasehold_waiters_dropped_total{reason=\"left\"}").as_deref(), Some("4"));
        assert_eq!(sample(&text, "leasehold_waiters_dropped_total{reason=\"limit_lowered\"}").as_deref(), Some("0"));
        // Two seconds fall in the 5 s bucket; two hours only in +Inf.
        assert_eq!(sample(&text, "leasehold_queue_wait_seconds_bucket{le=\"1\"}").as_deref(), Some("0"), "{text}");
        assert_eq!(sample(&text, "leasehold_queue_wait_seconds_bucket{le=\"5\"}").as_deref(), Some("1"));
        assert_eq!(sample(&text, "leasehold_queue_wait_seconds_bucket{le=\"3600\"}").as_deref(), Some("1"));
        assert_eq!(sample(&text, "leasehold_queue_wait_seconds_bucket{le=\"+Inf\"}").as_deref(), Some("2"));
        assert_eq!(sample(&text, "leasehold_queue_wait_seconds_count").as_deref(), Some("2"));
        assert_eq!(sample(&text, "leasehold_queue_wait_seconds_sum").as_deref(), Some("7202"));
        let rss = "leasehold_process_resident_memory_bytes";
        assert_eq!(sample(&text, &format!("{rss}{{role=\"master\"}}")).as_deref(), Some("2048"));
        assert_eq!(sample(&text, &format!("{rss}{{role=\"worker\",slot=\"0\"}}")).as_deref(), Some("1000"));
        assert_eq!(sample(&text, &format!("{rss}{{role=\"keeper\"}}")).as_deref(), Some("4096"));
        let cpu = "leasehold_process_cpu_seconds_total{role=\"worker\",slot=\"0\"}";
        assert_eq!(sample(&text, cpu).as_deref(), Some("1.5"));
        let start = "leasehold_process_start_time_seconds{role=\"worker\",slot=\"0\"}";
        assert_eq!(sample(&text, start).as_deref(), Some("1700000000.25"));
        assert!(text.contains("# TYPE leasehold_process_cpu_seconds_total counter\n"));
        assert_every_sample_is_declared(&text);
    }

    #[test]
    fn a_slot_with_two_workers_shows_the_newer_process_once() {
        let mut old = worker(0, 1, 1);
        let mut new = worker(0, 1, 1);
        old.process = Some(ProcessStats { resident_bytes: 111, cpu_ms: 1, start_time_ms: 1_000 });
        new.process = Some(ProcessStats { resident_bytes: 222, cpu_ms: 1, start_time_ms: 2_000 });
        let text = render(&MasterSnapshot::default(), KeeperView::Never, &[new, old], &Totals::default());
        let rss: Vec<&str> =
            text.lines().filter(|l| l.starts_with("leasehold_process_resident_memory_bytes{")).collect();
        assert_eq!(rss, ["leasehold_process_resident_memory_bytes{role=\"worker\",slot=\"0\"} 222"]);
    }

    #[test]
    fn a_keeper_that_does_not_answer_keeps_its_families_with_keeper_up_zero() {
        let master = MasterSnapshot { keeper_up: true, ..Default::default() };
        let keeper = counted_keeper();
        let live = render(&master, KeeperView::Answered(&keeper), &[], &Totals::default());
        let last = render(&master, KeeperView::Last(&keeper), &[], &Totals::default());
        let never = render(&master, KeeperView::Never, &[], &Totals::default());
        assert_eq!(sample(&live, "leasehold_keeper_up").as_deref(), Some("1"));
        for page in [&last, &never] {
            assert_eq!(sample(page, "leasehold_keeper_up").as_deref(), Some("0"), "{page}");
        }
        assert_eq!(sample(&last, "leasehold_leases").as_deref(), Some("2"), "the last figures");
        assert_eq!(sample(&last, "leasehold_lease_expiries_total{reason=\"ttl\"}").as_deref(), Some("3"));
        assert_eq!(sample(&never, "leasehold_lease_expiries_total{reason=\"ttl\"}").as_deref(), Some("0"));
        // The same families, whatever the keeper's state; only a live keeper's process shows.
        let families = |page: &str| -> Vec<String> {
            page.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(str::to_string).collect()
        };
        assert_eq!(families(&live), families(&last));
        assert_eq!(families(&live), families(&never));
        let keeper_rss = "leasehold_process_resident_memory_bytes{role=\"keeper\"}";
        assert!(live.contains(keeper_rss));
        assert!(!last.contains(keeper_rss), "no figures of a process that is gone");
    }

    #[test]
    fn a_cluster_nodes_keeper_that_never_answered_still_has_the_cluster_families() {
        let master = MasterSnapshot { keeper_up: false, cluster_node: Some("n1".into()), ..Default::default() };
        let mut keeper = counted_keeper();
        keeper.cluster = Some(crate::ipc::message::ClusterStatus {
            node: "n1".into(),
            role: "leader".into(),
            epoch: 4,
            applied: 9,
            lag: 0,
            snapshot: 0,
            leader: Some("http://n1".into()),
        });
        let live = render(&master, KeeperView::Answered(&keeper), &[], &Totals::default());
        let never = render(&master, KeeperView::Never, &[], &Totals::default());
        let families = |page: &str| -> Vec<String> {
            page.lines().filter_map(|l| l.strip_prefix("# TYPE ")).map(str::to_string).collect()
        };
        assert_eq!(families(&live), families(&never));
        assert_eq!(sample(&live, "leasehold_cluster_role{role=\"leader\"}").as_deref(), Some("1"));
        for role in ["leader", "candidate", "follower"] {
            let series = format!("leasehold_cluster_role{{role=\"{role}\"}}");
            assert_eq!(sample(&never, &series).as_deref(), Some("0"), "no role is claimed: {never}");
        }
        assert_eq!(sample(&never, "leasehold_cluster_epoch").as_deref(), Some("0"));
        // A single node's page has none of them.
        let single = render(&MasterSnapshot::default(), KeeperView::Never, &[], &Totals::default());
        assert!(!single.contains("leasehold_cluster_"), "{single}");
    }

    #[test]
    fn a_histogram_of_other_bounds_renders_without_panic_and_counts_agree() {
        let odd =
            LeaseCounters { queue_wait: Histogram { buckets: vec![5; 40], sum_us: u64::MAX }, ..Default::default() };
        let keeper = KeeperSnapshot { leases_counted: odd, ..Default::default() };
        let text = render(&MasterSnapshot::default(), KeeperView::Answered(&keeper), &[], &Totals::default());
        let inf = sample(&text, "leasehold_queue_wait_seconds_bucket{le=\"+Inf\"}");
        assert_eq!(inf, sample(&text, "leasehold_queue_wait_seconds_count"));
        let short = KeeperSnapshot {
            leases_counted: LeaseCounters {
                queue_wait: Histogram { buckets: vec![1], sum_us: 1 },
                ..Default::default()
            },
            ..Default::default()
        };
        let text = render(&MasterSnapshot::default(), KeeperView::Answered(&short), &[], &Totals::default());
        assert_eq!(sample(&text, "leasehold_queue_wait_seconds_count").as_deref(), Some("1"));
    }
}
