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
//!
//! Counters of workers that left in a reload are kept by the master, so totals never go
//! down across reloads (a worker killed outright loses what it had not reported).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

use crate::version;

/// Upper bounds of the latency histogram buckets, in microseconds (`+Inf` is implied).
pub const LATENCY_BUCKETS_US: &[u64] =
    &[100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 5_000_000];

/// A latency histogram: one count per bucket (not cumulative; the last is `+Inf`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    /// Counts per bucket, `LATENCY_BUCKETS_US.len() + 1` of them.
    pub buckets: Vec<u64>,
    /// Sum of observations, µs.
    pub sum_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { buckets: vec![0; LATENCY_BUCKETS_US.len() + 1], sum_us: 0 }
    }
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, us: u64) {
        let i = LATENCY_BUCKETS_US.partition_point(|&b| b < us);
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

/// Writes a histogram family with its header.
fn histogram(out: &mut String, name: &str, help: &str, labels: &str, h: &Histogram) {
    header(out, name, "histogram", help);
    histogram_samples(out, name, labels, h);
}

/// Writes a histogram's samples; `labels` is empty or ends with a comma.
fn histogram_samples(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cumulative = 0;
    for (i, count) in h.buckets.iter().enumerate() {
        cumulative += count;
        let le = LATENCY_BUCKETS_US.get(i).map_or("+Inf".to_string(), |us| format!("{}", *us as f64 / 1e6));
        let _ = writeln!(out, "leasehold_{name}_bucket{{{labels}le=\"{le}\"}} {cumulative}");
    }
    let plain = labels.trim_end_matches(',');
    let braces = if plain.is_empty() { String::new() } else { format!("{{{plain}}}") };
    let _ = writeln!(out, "leasehold_{name}_sum{braces} {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "leasehold_{name}_count{braces} {}", h.count());
}

/// Renders everything in the Prometheus text format (version 0.0.4).
pub fn render(
    master: &MasterSnapshot,
    keeper: Option<&KeeperSnapshot>,
    workers: &[WorkerSnapshot],
    retired: &Totals,
) -> String {
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
    header(&mut out, "http_request_duration_seconds", "histogram", "Time from a complete request to its response.");
    for (route, h) in &totals.latency {
        let label = format!("route=\"{}\",", escape(route));
        histogram_samples(&mut out, "http_request_duration_seconds", &label, h);
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
    header(&mut out, "keeper_up", "gauge", "1 while the keeper answers.");
    let _ = writeln!(out, "leasehold_keeper_up {}", u8::from(master.keeper_up && keeper.is_some()));
    if let Some(k) = keeper {
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
            histogram(
                &mut out,
                "cluster_commit_seconds",
                "Time one batch's put into etcd took.",
                "",
                &k.commit_latency,
            );
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
    }
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
        }
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
            Some(&keeper),
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
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let family = line.split(['{', ' ']).next().unwrap();
            let base = family.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            assert!(text.contains(&format!("# TYPE {base} ")), "undeclared {family}");
        }
    }
}
