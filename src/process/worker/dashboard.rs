//! The worker's dashboard streams (`GET /v1/ui/events`, docs/api.md "Dashboard"): the shell
//! part. A timer in the worker loop asks, once a second while a stream is open, the keeper
//! for its `overview` and the master for the metrics page (the one place that knows every
//! process: the same collection `/metrics` makes); each overview that comes back goes out
//! to every stream as one `snapshot` event, with the processes last learnt. One request of
//! each kind is in flight at most, however many streams are open, and the streams are
//! bounded (`browser.max_dashboards` per worker). Shaping is pure ([`browser`]).

use super::{Purpose, Worker};
use crate::http::api;
use crate::http::browser::{self, ProcessRow, WorkerView, DASHBOARD_BUSIEST, DASHBOARD_EVERY_MS};
use crate::http::conn::Seq;
use crate::ipc::message::{LockOp, LockReply, ToMaster};
use crate::ipc::overview::Overview;

/// A metrics request for the dashboards unanswered this long is given up (the master may
/// have dropped it), so the next tick asks again.
const METRICS_GIVE_UP_MS: u64 = 10_000;

/// The dashboard streams of one worker and what their next snapshot waits for.
#[derive(Default)]
pub(super) struct Dashboards {
    /// Open streams, as (slot, connection id).
    open: Vec<(usize, u64)>,
    /// When the next snapshot is due.
    next_ms: u64,
    /// An overview request is with the keeper.
    overview_in_flight: bool,
    /// The metrics request with the master, and when it was sent.
    metrics: Option<(u64, u64)>,
    /// The processes, as the master's last metrics page showed them.
    processes: Vec<ProcessRow>,
    /// The keeper's last overview (bounded: see `ipc::overview`).
    overview: Option<Box<Overview>>,
}

impl Dashboards {
    /// Whether a snapshot is due at `now`.
    pub(super) fn due(&self, now: u64) -> bool {
        !self.open.is_empty() && now >= self.next_ms
    }

    /// Whether `id` is the metrics request the dashboards made.
    pub(super) fn is_metrics(&self, id: u64) -> bool {
        self.metrics.is_some_and(|(m, _)| m == id)
    }

    /// The stream of connection `client_id` in `slot` closed.
    pub(super) fn close(&mut self, slot: usize, client_id: u64) {
        self.open.retain(|&(s, id)| !(s == slot && id == client_id));
        if self.open.is_empty() {
            self.overview = None;
        }
    }

    /// The overview request was lost with its keeper.
    pub(super) fn overview_failed(&mut self) {
        self.overview_in_flight = false;
    }
}

impl Worker {
    /// Opens a dashboard stream as the answer to request `seq`, or refuses it when this
    /// worker carries its maximum; the first snapshot goes out as soon as the keeper answers.
    pub(super) fn open_dashboard(
        &mut self,
        slot: usize,
        client_id: u64,
        seq: Seq,
        label: &'static str,
        started_us: u64,
    ) {
        if let Some(refusal) = browser::dashboard_refusal(self.dashboards.open.len(), self.settings.max_dashboards) {
            self.finish(slot, client_id, seq, label, started_us, &refusal);
            return;
        }
        let head = self.cors_head(client_id, seq, api::stream_head());
        self.record(label, head.status, started_us);
        self.log_access(client_id, seq, head.status, 0, started_us);
        let now = self.turn_ms();
        let Some(c) = self.client(slot, client_id) else { return };
        c.conn.respond_stream(seq, &head, now);
        c.dashboard = Some(1);
        self.dashboards.open.push((slot, client_id));
        self.dirty.push(slot);
        self.ask_snapshot(now);
    }

    /// Asks for what the next snapshot shows: the keeper's overview (without a keeper, a
    /// snapshot goes out at once without it) and, unless one is on its way, the master's
    /// metrics page.
    pub(super) fn ask_snapshot(&mut self, now: u64) {
        self.dashboards.next_ms = now + DASHBOARD_EVERY_MS;
        if self.dashboards.metrics.is_none_or(|(_, sent)| now >= sent + METRICS_GIVE_UP_MS) {
            let id = self.next_request_id;
            self.next_request_id += 1;
            if self.control.send(&ToMaster::MetricsRequest { id }).is_ok() {
                self.dashboards.metrics = Some((id, now));
            }
        }
        if self.keeper.is_none() {
            self.dashboards.overview = None;
            self.push_snapshots(None);
            return;
        }
        if self.dashboards.overview_in_flight {
            return;
        }
        let Some(k) = self.keeper.as_mut() else { return };
        let id = self.next_request_id;
        self.next_request_id += 1;
        let op = LockOp::Overview { busiest: DASHBOARD_BUSIEST };
        if k.send(&crate::ipc::message::ToKeeper::Request { id, op }).is_ok() {
            self.dashboards.overview_in_flight = true;
            let pending = super::Pending {
                slot: usize::MAX,
                client_id: 0,
                seq: 0,
                label: "",
                started_us: 0,
                purpose: Purpose::Overview,
                queued: None,
            };
            self.pending.insert(id, pending);
        }
    }

    /// The master's metrics page for the dashboards came: its processes are kept for the
    /// next snapshots. The first page after none goes out at once with the last overview
    /// (a new dashboard shows its processes without waiting a second).
    pub(super) fn on_processes(&mut self, text: &str) {
        self.dashboards.metrics = None;
        let first = self.dashboards.processes.is_empty();
        self.dashboards.processes = browser::processes_from_metrics(text);
        if first && !self.dashboards.processes.is_empty() {
            let overview = self.dashboards.overview.take();
            self.push_snapshots(overview.as_deref());
            self.dashboards.overview = overview;
        }
    }

    /// The keeper answered the overview request.
    pub(super) fn on_overview(&mut self, reply: &LockReply) {
        self.dashboards.overview_in_flight = false;
        match reply {
            LockReply::Overview(overview) => {
                self.push_snapshots(Some(overview));
                self.dashboards.overview = Some(overview.clone());
            }
            other => {
                log::debug!("the keeper answered an overview with {other:?}");
                self.dashboards.overview = None;
                self.push_snapshots(None);
            }
        }
    }

    /// Sends every dashboard stream one snapshot.
    fn push_snapshots(&mut self, overview: Option<&Overview>) {
        let worker = WorkerView {
            slot: self.slot,
            pid: std::process::id(),
            open_connections: self.open as u64,
            dashboards: self.dashboards.open.len() as u64,
            keeper_connected: self.keeper.is_some(),
        };
        let data = browser::snapshot_data(overview, &self.dashboards.processes, &worker);
        let now = self.turn_ms();
        let cfg = self.settings.conn;
        for &(slot, client_id) in &self.dashboards.open {
            let Some(c) = self.clients.get_mut(slot).and_then(Option::as_mut).filter(|c| c.id == client_id) else {
                continue;
            };
            let Some(next_id) = c.dashboard.as_mut() else { continue };
            let event = browser::snapshot_event(*next_id, &data);
            *next_id += 1;
            c.conn.stream_push(&event, now, &cfg);
            self.dirty.push(slot);
        }
    }
}
