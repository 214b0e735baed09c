//! The keeper's logic as a pure state machine: the lease table plus everything around it
//! that workers rely on. Messages from worker channels go in (with the time, fresh entropy
//! and the channel they came on); messages for worker channels come out. The keeper process
//! only moves bytes and reads clocks.
//!
//! - **Waiting requests.** An acquire with `wait_ms > 0` that queues is answered later, once:
//!   when it is granted (after its follow-up [`Then`] ran, in the same step as the grant),
//!   when its wait ends (with where it stands), or with `cancelled` when its client is gone.
//!   While it waits, the waiter is watched (presence). A second waiting request for the same
//!   ticket supersedes the first, which is answered with its place.
//! - **Event streams.** `watch` registers a channel's interest in a ticket; every grant,
//!   move, expiry, release or drop of that ticket becomes an event on that channel until
//!   `unwatch`. An open stream of a waiter counts as presence.
//! - **A channel that closes** (its worker died) stops every wait and stream it had, as if
//!   each client had gone.
//! - **Small Resource Server** resources live here too (their registry and their
//!   server-side wait), and so do wait estimates. Deleting a resource takes its lock's data
//!   with it, and is refused while the lock has holders or waiters.
//! - **Budgets.** Resources and open event streams are bounded here (`max_resources`,
//!   `max_event_streams` of the table's limits); the table bounds the rest. [`Service::budgets`]
//!   lists every budget with its use, for metrics.
//! - **The outbox** ([`crate::core::outbox`]): calls accepted through the API and lock
//!   callbacks. The courier announces itself on its channel with its capacity; due calls
//!   are handed to it in the same steps as everything else (so a replay hands out the same
//!   ones; never while handling a read, which is not journaled), its reports reschedule or
//!   retire them, and if its channel closes everything it held is due again.
//! - **Lease counters** for metrics ([`LeaseCounters`]): grants (every grant takes the next
//!   fence, so a step's grants are how far the fence counter moved), expiries and dropped
//!   waiters from the table's outputs (a waiter that leaves by a release is a reply, not an
//!   output), and each granted waiter's time in the queue, from when its ticket was queued
//!   (kept per waiter until it is granted or leaves; a waiter from a snapshot is not timed).

pub mod cluster;
mod eta;
mod overview;
pub mod resources;

use std::collections::{BTreeSet, HashMap, VecDeque};

use crate::core::error::CoreError;
use serde::{Deserialize, Serialize};

use crate::core::backoff::Verdict;
use crate::core::lock::{
    Acquire, CallbackEvent, DropReason, LeaseView, LockTable, LockView, Moment, Op, Output, QueueView, Reply,
    TableLimits, TableState,
};
use crate::core::names::{LockName, Ticket};
use crate::core::outbox::{
    Call, Entry, Listing, Origin, Outbox as CallOutbox, OutboxError, OutboxLimits, DEFAULT_ATTEMPTS,
};
use crate::ipc::message::{
    Budget, FromKeeper, HolderInfo, LockInfo, LockOp, LockReply, OutboxRefusal, RejectKind, Then, TicketEvent, ToKeeper,
};
use crate::metrics::{BudgetUse, Histogram, LeaseCounters, QUEUE_WAIT_BUCKETS_US};
pub use eta::Estimator;
use resources::Resources;

/// Identifies a worker channel inside the keeper.
pub type LinkId = usize;

/// Largest page of `list`, in items.
pub const MAX_LIST_PAGE: u32 = 1_000;

/// Largest page of a listing, in bytes of JSON: a page stops before the item that would take
/// it past this (one item always fits), and `next_after` continues. Far below the IPC frame
/// limit, so a listing can never be too large to send.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;

/// Counts the bytes of a value's JSON without keeping them.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json_bytes<T: Serialize>(value: &T) -> usize {
    let mut count = ByteCount(0);
    // Serialising these plain data types cannot fail; a failure would count as empty.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Keeps the longest head of `items` within [`MAX_PAGE_BYTES`] (at least one item); says
/// whether anything was cut.
fn cut_to_page_bytes<T: Serialize>(items: &mut Vec<T>) -> bool {
    let mut total = 0;
    let keep = items
        .iter()
        .position(|item| {
            total += json_bytes(item) + 1;
            total > MAX_PAGE_BYTES
        })
        .map_or(items.len(), |i| i.max(1));
    let cut = keep < items.len();
    items.truncate(keep);
    cut
}

/// Messages to send, each on its channel.
pub type Outbox = Vec<(LinkId, FromKeeper)>;

/// The streams open for one ticket.
#[derive(Debug, Clone)]
struct Streams {
    lock: LockName,
    /// One entry per open stream.
    links: Vec<LinkId>,
}

#[derive(Debug, Clone)]
struct Wait {
    link: LinkId,
    id: u64,
    then: Then,
    deadline_ms: u64,
}

/// A waiting request, in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitState {
    /// The lock.
    pub lock: LockName,
    /// The waiter.
    pub ticket: Ticket,
    /// Its channel.
    pub link: LinkId,
    /// Its request id.
    pub id: u64,
    /// Its follow-up.
    pub then: Then,
    /// When its wait ends.
    pub deadline_ms: u64,
}

/// The streams of a ticket, in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamState {
    /// The ticket.
    pub ticket: Ticket,
    /// Its lock.
    pub lock: LockName,
    /// One entry per open stream.
    pub links: Vec<LinkId>,
}

/// The whole service as plain data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceState {
    /// The table's limits.
    pub limits: TableLimits,
    /// The longest wait.
    pub max_wait_ms: u64,
    /// The lease table.
    pub table: TableState,
    /// Small Resource Server resources.
    pub resources: Vec<(LockName, resources::Resource)>,
    /// Waiting requests.
    pub waits: Vec<WaitState>,
    /// Event streams.
    pub streams: Vec<StreamState>,
    /// Outbox settings.
    #[serde(default)]
    pub outbox_settings: OutboxSettings,
    /// Outbox entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outbox: Vec<Entry>,
    /// The courier's channel and capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub courier: Option<(LinkId, u32)>,
}

/// What the service needs of `[outbox]` (journaled with the other limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// Bounds and retry schedule.
    pub limits: OutboxLimits,
    /// Attempts of calls that do not say, and of lock callbacks.
    pub default_attempts: u32,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self { limits: OutboxLimits::DEFAULT, default_attempts: DEFAULT_ATTEMPTS }
    }
}

/// Outbox counters for metrics.
#[derive(Debug, Clone, Default)]
pub struct OutboxCounters {
    /// Deliveries that succeeded.
    pub delivered: u64,
    /// Attempts that will be tried again.
    pub retried: u64,
    /// Entries that went to the dead-letter list.
    pub failed: u64,
    /// Lock callbacks refused by a full outbox.
    pub callbacks_refused: u64,
    /// Attempt durations (µs).
    pub latency: Histogram,
}

/// Counts for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServiceStats {
    /// Requests waiting for a grant.
    pub waiting_requests: u64,
    /// Open event streams.
    pub event_streams: u64,
    /// Registered resources.
    pub resources: u64,
    /// Operations applied.
    pub ops_total: u64,
}

/// The keeper's state.
#[derive(Debug)]
pub struct Service {
    table: LockTable,
    max_wait_ms: u64,
    resources: Resources,
    waits: HashMap<(LockName, Ticket), Wait>,
    wait_of_request: HashMap<(LinkId, u64), (LockName, Ticket)>,
    wait_deadlines: BTreeSet<(u64, LinkId, u64)>,
    /// Open streams by ticket (tickets are unique across locks; a stream is registered only
    /// after the table confirmed the ticket on that lock).
    streams: HashMap<Ticket, Streams>,
    /// Open streams in all of `streams` (the sum of their links).
    stream_count: u64,
    estimator: Estimator,
    outputs: VecDeque<Output>,
    scratch: Vec<Output>,
    /// Answers decided inside a request for other requests (a superseded wait).
    pending_replies: Outbox,
    ops_total: u64,
    calls: CallOutbox,
    default_attempts: u32,
    courier: Option<(LinkId, u32)>,
    counters: OutboxCounters,
    lease_counters: LeaseCounters,
    /// When each queued waiter joined its queue (ms), for the queue-wait histogram.
    queued_at_ms: HashMap<Ticket, u64>,
}

fn outbox_refused(e: &OutboxError) -> LockReply {
    let kind = match e {
        OutboxError::Full { .. } | OutboxError::CallbacksFull { .. } | OutboxError::BytesFull { .. } => {
            OutboxRefusal::Full
        }
        OutboxError::BodyTooLarge { .. } => OutboxRefusal::TooLarge,
        OutboxError::Attempts { .. } => OutboxRefusal::Invalid,
        OutboxError::Unknown => OutboxRefusal::Unknown,
        OutboxError::WrongState { .. } => OutboxRefusal::Conflict,
    };
    LockReply::OutboxRefused { message: e.to_string(), kind }
}

/// An entry as its reader may see it.
fn shown(entry: &Entry, redact: bool) -> Entry {
    if !redact {
        return entry.clone();
    }
    Entry { call: entry.call.redacted(), ..entry.clone() }
}

fn rejected(e: &CoreError) -> LockReply {
    let kind = if matches!(e, CoreError::DataTooLarge { .. }) { RejectKind::TooLarge } else { RejectKind::Invalid };
    LockReply::Rejected { message: e.to_string(), kind }
}

fn lock_info(view: LockView, now_ms: u64) -> LockInfo {
    LockInfo {
        name: view.name,
        kind: view.kind,
        limit: view.limit,
        queue: view.queue,
        used: view.used,
        holders: view
            .holders
            .into_iter()
            .map(|h| HolderInfo {
                owner: h.owner,
                weight: h.weight,
                fence: h.fence,
                expires_in_ms: h.expires_at_ms.saturating_sub(now_ms),
                claimed: h.claimed,
                mode: h.mode,
                user: h.user,
            })
            .collect(),
        queue_length: view.queue_length,
        data_keys: view.data_keys,
        declared: view.declared,
    }
}

impl Service {
    /// An empty service. `hash_seed` keys the table's name hash (random in production).
    pub fn new(limits: TableLimits, max_wait_ms: u64, hash_seed: u64) -> Self {
        Self {
            table: LockTable::new(limits, hash_seed),
            max_wait_ms,
            resources: Resources::default(),
            waits: HashMap::new(),
            wait_of_request: HashMap::new(),
            wait_deadlines: BTreeSet::new(),
            streams: HashMap::new(),
            stream_count: 0,
            estimator: Estimator::default(),
            outputs: VecDeque::new(),
            scratch: Vec::new(),
            pending_replies: Vec::new(),
            ops_total: 0,
            calls: CallOutbox::new(OutboxSettings::default().limits),
            default_attempts: OutboxSettings::default().default_attempts,
            courier: None,
            counters: OutboxCounters::default(),
            lease_counters: LeaseCounters::default(),
            queued_at_ms: HashMap::new(),
        }
    }

    /// Applies the outbox settings (at start and on reload; journaled with the limits).
    pub fn configure_outbox(&mut self, settings: OutboxSettings) {
        self.calls.set_limits(settings.limits);
        self.default_attempts = settings.default_attempts;
    }

    /// The outbox (read-only).
    pub fn outbox(&self) -> &CallOutbox {
        &self.calls
    }

    /// Outbox counters for metrics.
    pub fn outbox_counters(&self) -> &OutboxCounters {
        &self.counters
    }

    /// Grants, expiries, dropped waiters and queue waits, for metrics.
    pub fn lease_counters(&self) -> &LeaseCounters {
        &self.lease_counters
    }

    /// Starts the lease counters again from zero (after a recovery, whose replay counted
    /// history that happened before this process). Queued waiters keep their times.
    pub fn reset_lease_counters(&mut self) {
        self.lease_counters = LeaseCounters::default();
    }

    /// Applies a reloaded configuration at `at`: a changed declaration may admit or drop
    /// waiters of the locks it shapes, as an expiry would.
    pub fn reconfigure(&mut self, limits: TableLimits, max_wait_ms: u64, at: Moment, out: &mut Outbox) {
        self.max_wait_ms = max_wait_ms;
        let fence = self.table.next_fence();
        self.table.set_limits(limits, at, &mut self.scratch);
        self.lease_counters.grants += self.table.next_fence().saturating_sub(fence);
        self.outputs.extend(self.scratch.drain(..));
        self.settle(at, out);
    }

    /// The lease table (read-only).
    pub fn table(&self) -> &LockTable {
        &self.table
    }

    /// Raises the fence counter to at least `floor` (after a recovery that may have lost a
    /// tail of grants).
    pub fn raise_fences(&mut self, floor: u64) {
        self.table.restore_fence_floor(floor);
    }

    /// Moves every lease's end `by_ms` later (a cluster takeover's grace).
    pub fn extend_leases(&mut self, by_ms: u64) {
        self.table.extend_leases(by_ms);
    }

    /// Gives every waiter a fresh presence window (after a restart nobody is connected).
    pub fn reset_presence(&mut self, now_ms: u64) {
        self.table.reset_presence(now_ms);
    }

    /// Whether a message only reads (it needs no journal record).
    pub fn reads_only(message: &ToKeeper) -> bool {
        matches!(
            message,
            ToKeeper::Request {
                op: LockOp::Status { .. }
                    | LockOp::List { .. }
                    | LockOp::GetData { .. }
                    | LockOp::CompatRead { .. }
                    | LockOp::OutboxList { .. }
                    | LockOp::OutboxGet { .. }
                    | LockOp::Overview { .. },
                ..
            }
        )
    }

    /// Counts for metrics.
    pub fn stats(&self) -> ServiceStats {
        ServiceStats {
            waiting_requests: self.waits.len() as u64,
            event_streams: self.stream_count,
            resources: self.resources.len() as u64,
            ops_total: self.ops_total,
        }
    }

    /// Every budget with its use and its limit, for metrics. One line per budget: a new
    /// bounded quantity is added here and nowhere else.
    pub fn budgets(&self) -> Vec<BudgetUse> {
        let (table, limits) = (self.table.stats(), self.table.limits());
        let (outbox, calls) = (self.calls.used(), self.calls.limits());
        vec![
            BudgetUse::new("locks", table.locks, limits.max_locks),
            BudgetUse::new("tickets", table.holders + table.waiters, limits.max_tickets_total),
            BudgetUse::new("data_bytes", table.data_bytes, limits.max_data_bytes_total),
            BudgetUse::new("resources", self.resources.len() as u64, limits.max_resources),
            BudgetUse::new("event_streams", self.stream_count, limits.max_event_streams),
            BudgetUse::new("outbox_calls", outbox.calls, calls.max_entries),
            BudgetUse::new("outbox_callbacks", outbox.callbacks, calls.max_callbacks),
            BudgetUse::new("outbox_bytes", outbox.bytes, calls.max_total_bytes),
        ]
    }

    /// When [`Service::expire`] has work to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let waits = self.wait_deadlines.first().map(|&(at, _, _)| at);
        // A due call matters only while the courier has room for it.
        let calls = self
            .courier
            .filter(|&(_, capacity)| self.calls.in_flight() < capacity as usize)
            .and_then(|_| self.calls.next_due_ms());
        [self.table.next_deadline(), waits, calls].into_iter().flatten().min()
    }

    fn apply(&mut self, op: Op, at: Moment) -> Reply {
        self.ops_total += 1;
        let releasing = match &op {
            Op::Release { ticket, .. } => Some(*ticket),
            _ => None,
        };
        let fence = self.table.next_fence();
        let reply = self.table.apply(op, at, &mut self.scratch);
        self.lease_counters.grants += self.table.next_fence().saturating_sub(fence);
        if let Reply::Held(lease) = &reply {
            if lease.fence >= fence {
                self.lease_counters.granted(lease.mode);
            }
        }
        if let (Reply::Left, Some(ticket)) = (&reply, releasing) {
            self.lease_counters.dropped_left += 1;
            self.queued_at_ms.remove(&ticket);
        }
        self.outputs.extend(self.scratch.drain(..));
        reply
    }

    /// Handles one message from channel `link`. `fresh` is 16 random bytes for a new
    /// ticket or id (drawn per message whether used or not).
    pub fn handle(&mut self, link: LinkId, message: ToKeeper, at: Moment, fresh: [u8; 16], out: &mut Outbox) {
        // A read is not journaled, so it must change nothing a replay rebuilds: it hands the
        // courier no call that fell due meanwhile (the next expiry run does, journaled).
        let journaled = !Self::reads_only(&message);
        match message {
            ToKeeper::Request { id, op } => {
                if let Some(reply) = self.request(link, id, op, at, fresh) {
                    out.push((link, FromKeeper::Reply { id, reply }));
                }
            }
            ToKeeper::Cancel { id } => {
                if let Some(key) = self.wait_of_request.remove(&(link, id)) {
                    if let Some(wait) = self.waits.remove(&key) {
                        self.wait_deadlines.remove(&(wait.deadline_ms, link, id));
                        self.stop_waiting(&key, &wait.then, at);
                        out.push((link, FromKeeper::Reply { id, reply: LockReply::Cancelled }));
                    }
                }
            }
            ToKeeper::CourierReady { capacity } => {
                if self.courier.is_some_and(|(old, _)| old != link) {
                    // A new courier while the old one's channel is still open: what the
                    // old one held is due again.
                    self.calls.requeue_in_flight(at.now_ms);
                }
                self.courier = Some((link, capacity.max(1)));
            }
            ToKeeper::Delivered { id, outcome, retry_after_ms, error, took_ms } => {
                self.counters.latency.observe(took_ms.saturating_mul(1_000));
                match self.calls.report(&id, outcome, retry_after_ms, error, at.now_ms, at.entropy) {
                    Some(Verdict::Done) => self.counters.delivered += 1,
                    Some(Verdict::Retry) => self.counters.retried += 1,
                    Some(Verdict::Fail) => self.counters.failed += 1,
                    None => {}
                }
            }
            ToKeeper::Unwatch { lock, ticket } => {
                if let Some(streams) = self.streams.get_mut(&ticket).filter(|s| s.lock == lock) {
                    if let Some(i) = streams.links.iter().position(|&l| l == link) {
                        streams.links.swap_remove(i);
                        self.stream_count -= 1;
                        if streams.links.is_empty() {
                            self.streams.remove(&ticket);
                        }
                        self.apply(Op::Unwatch { lock, ticket }, at);
                    }
                }
            }
        }
        if journaled {
            self.settle(at, out);
        } else {
            self.deliver_outputs(at, out);
        }
    }

    /// Ends every lease, absent waiter and wait due at `at`.
    pub fn expire(&mut self, at: Moment, out: &mut Outbox) {
        let fence = self.table.next_fence();
        self.table.expire(at, &mut self.scratch);
        self.lease_counters.grants += self.table.next_fence().saturating_sub(fence);
        self.outputs.extend(self.scratch.drain(..));
        while let Some(&(deadline, link, id)) = self.wait_deadlines.first() {
            if deadline > at.now_ms {
                break;
            }
            self.wait_deadlines.pop_first();
            let Some(key) = self.wait_of_request.remove(&(link, id)) else { continue };
            let Some(wait) = self.waits.remove(&key) else { continue };
            let reply = self.stop_waiting(&key, &wait.then, at);
            out.push((link, FromKeeper::Reply { id, reply }));
        }
        self.settle(at, out);
    }

    /// Channel `link` closed: its waits and streams end as if their clients had gone; if it
    /// was the courier's, every call it held is due again.
    pub fn link_closed(&mut self, link: LinkId, at: Moment, out: &mut Outbox) {
        if self.courier.is_some_and(|(courier, _)| courier == link) {
            self.courier = None;
            self.calls.requeue_in_flight(at.now_ms);
        }
        // In request order, and streams by ticket: a replay must do exactly the same.
        let mut mine: Vec<(u64, (LockName, Ticket))> =
            self.wait_of_request.iter().filter(|((l, _), _)| *l == link).map(|((_, id), k)| (*id, k.clone())).collect();
        mine.sort_unstable_by_key(|(id, _)| *id);
        for (id, key) in mine {
            self.wait_of_request.remove(&(link, id));
            if let Some(wait) = self.waits.remove(&key) {
                self.wait_deadlines.remove(&(wait.deadline_ms, link, id));
                self.stop_waiting(&key, &wait.then, at);
            }
        }
        let mut unwatch = Vec::new();
        self.streams.retain(|&ticket, streams| {
            let before = streams.links.len();
            streams.links.retain(|&l| l != link);
            unwatch.extend(std::iter::repeat_n((streams.lock.clone(), ticket), before - streams.links.len()));
            !streams.links.is_empty()
        });
        self.stream_count -= unwatch.len() as u64;
        unwatch.sort_unstable_by_key(|(_, ticket)| *ticket);
        for (lock, ticket) in unwatch {
            self.apply(Op::Unwatch { lock, ticket }, at);
        }
        self.settle(at, out);
    }

    /// Every channel any wait or stream belongs to, in order.
    pub fn links(&self) -> Vec<LinkId> {
        let mut links: Vec<LinkId> = self.waits.values().map(|w| w.link).collect();
        links.extend(self.streams.values().flat_map(|s| s.links.iter().copied()));
        links.extend(self.courier.map(|(link, _)| link));
        links.sort_unstable();
        links.dedup();
        links
    }

    /// The whole state as plain data, for a snapshot.
    pub fn export(&self) -> ServiceState {
        let mut waits: Vec<WaitState> = self
            .waits
            .iter()
            .map(|((lock, ticket), w)| WaitState {
                lock: lock.clone(),
                ticket: *ticket,
                link: w.link,
                id: w.id,
                then: w.then.clone(),
                deadline_ms: w.deadline_ms,
            })
            .collect();
        waits.sort_unstable_by_key(|w| (w.link, w.id));
        let mut streams: Vec<StreamState> = self
            .streams
            .iter()
            .map(|(ticket, s)| StreamState { ticket: *ticket, lock: s.lock.clone(), links: s.links.clone() })
            .collect();
        streams.sort_unstable_by_key(|s| s.ticket);
        ServiceState {
            limits: self.table.limits().clone(),
            max_wait_ms: self.max_wait_ms,
            table: self.table.export(),
            resources: self.resources.export(),
            waits,
            streams,
            outbox_settings: OutboxSettings { limits: self.calls.limits(), default_attempts: self.default_attempts },
            outbox: self.calls.export(),
            courier: self.courier,
        }
    }

    /// Rebuilds a service from `export`'s data (refused if the table's state is invalid).
    pub fn import(state: ServiceState, hash_seed: u64) -> Result<Self, CoreError> {
        let table = LockTable::import(&state.table, state.limits.clone(), hash_seed)?;
        Ok(Self::import_around(state, table, hash_seed))
    }

    /// [`Service::import`] around a table already rebuilt (a snapshot loaded lock by lock,
    /// [`crate::core::lock::TableImport`]); `state.table` is not read.
    pub fn import_around(state: ServiceState, table: LockTable, hash_seed: u64) -> Self {
        let mut service = Service::new(state.limits.clone(), state.max_wait_ms, hash_seed);
        service.table = table;
        service.resources = Resources::import(state.resources);
        for w in state.waits {
            let key = (w.lock, w.ticket);
            service.wait_of_request.insert((w.link, w.id), key.clone());
            service.wait_deadlines.insert((w.deadline_ms, w.link, w.id));
            service.waits.insert(key, Wait { link: w.link, id: w.id, then: w.then, deadline_ms: w.deadline_ms });
        }
        for s in state.streams {
            service.stream_count += s.links.len() as u64;
            service.streams.insert(s.ticket, Streams { lock: s.lock, links: s.links });
        }
        service.calls = CallOutbox::import(state.outbox_settings.limits, state.outbox);
        service.default_attempts = state.outbox_settings.default_attempts;
        service.courier = state.courier;
        service
    }

    /// Ends a wait without a grant: the waiter stays queued (unwatched), or leaves for a
    /// write that must not happen late. Returns the answer for the waiting request.
    fn stop_waiting(&mut self, (lock, ticket): &(LockName, Ticket), then: &Then, at: Moment) -> LockReply {
        let (lock, ticket) = (lock.clone(), *ticket);
        if matches!(then, Then::WriteAndRelease { .. }) {
            let place = self.place_of(&lock, ticket);
            self.apply(Op::Release { lock, ticket }, at);
            return place.map_or(LockReply::TicketUnknown, |place| LockReply::Queued {
                place,
                eta_ms: None,
                existing: false,
            });
        }
        match self.apply(Op::Unwatch { lock: lock.clone(), ticket }, at) {
            Reply::Queued(place) => self.queued(&lock, place, at.now_ms),
            other => self.wire(other, at),
        }
    }

    fn place_of(&self, lock: &LockName, ticket: Ticket) -> Option<QueueView> {
        match self.table.ticket_view(lock.as_str(), ticket)? {
            crate::core::lock::TicketView::Waiting(place) => Some(place),
            crate::core::lock::TicketView::Holding(_) => None,
        }
    }

    /// The answer for a waiter at `place`, with its estimated wait at `now_ms`: the larger
    /// of what the lock's hold times and its admission rate each say, when either says.
    fn queued(&self, lock: &LockName, place: QueueView, now_ms: u64) -> LockReply {
        let limit = self.table.lock_view(lock.as_str()).map_or(1, |v| v.limit);
        let held = self.estimator.eta_ms(lock, place.position, limit);
        let admitted = place.position.and_then(|p| self.table.admission_wait_ms(lock.as_str(), p, now_ms));
        let eta_ms = held.max(admitted);
        LockReply::Queued { place, eta_ms, existing: false }
    }

    /// The wire form of a core reply.
    fn wire(&self, reply: Reply, at: Moment) -> LockReply {
        match reply {
            Reply::Held(lease) => LockReply::Held { lease, at_ms: at.now_ms, existing: false },
            Reply::Queued(place) => LockReply::Queued { place, eta_ms: None, existing: false },
            Reply::Unavailable { used, limit, queue_length } => LockReply::Unavailable { used, limit, queue_length },
            Reply::LimitMismatch { limit } => LockReply::LimitMismatch { limit },
            Reply::QueueMismatch { queue } => LockReply::QueueMismatch { queue },
            Reply::KindMismatch { kind } => LockReply::KindMismatch { kind },
            Reply::QueueFull { max_waiters } => LockReply::QueueFull { max_waiters },
            Reply::TableFull { max_locks } => LockReply::TableFull { max_locks },
            Reply::TicketsFull { max_tickets } => LockReply::OverBudget {
                budget: Budget::Tickets,
                limit: max_tickets.into(),
                message: format!(
                    "the server holds its maximum of {max_tickets} leases and waiters (locks.max_tickets_total)"
                ),
            },
            Reply::DataFull { key, max_bytes } => LockReply::OverBudget {
                budget: Budget::DataBytes,
                limit: max_bytes,
                message: format!(
                    "data key {:?} was not written: the data of all locks would pass the server's maximum of \
                     {max_bytes} bytes (locks.max_data_bytes_total)",
                    key.as_str()
                ),
            },
            Reply::Released { fence } => LockReply::Released { fence, at_ms: at.now_ms },
            Reply::Left => LockReply::Left,
            Reply::NotHolder(q) => LockReply::NotHolder(q),
            Reply::TicketUnknown => LockReply::TicketUnknown,
            Reply::LockUnknown => LockReply::LockUnknown,
            Reply::DataWritten { created } => LockReply::DataWritten { created },
            Reply::DataDeleted { existed } => LockReply::DataDeleted { existed },
            Reply::Rejected(e) => rejected(&e),
            Reply::LimitSet { .. } | Reply::LimitInUse { .. } | Reply::DataCleared { .. } | Reply::LockBusy { .. } => {
                LockReply::Failed { message: "reply of an operation no route sends".into() }
            }
        }
    }

    /// Runs an acquire's follow-up for a lease just granted (or re-entered).
    fn finish(&mut self, lock: &LockName, lease: LeaseView, then: Then, at: Moment) -> LockReply {
        match then {
            Then::Hold => LockReply::Held { lease, at_ms: at.now_ms, existing: false },
            Then::ReadData { key } => LockReply::CompatData {
                resource_id: self.resources.get(lock).map(|r| r.id.clone()).unwrap_or_default(),
                data: self.table.data(lock.as_str(), key.as_str()).map(str::to_string),
                lease: Some(lease),
            },
            Then::WriteAndRelease { key, value } => {
                let ticket = lease.ticket;
                let written =
                    self.apply(Op::PutData { lock: lock.clone(), ticket, key, value: value.into_boxed_str() }, at);
                self.apply(Op::Release { lock: lock.clone(), ticket }, at);
                match written {
                    Reply::DataWritten { .. } => LockReply::Written { ticket },
                    other => self.wire(other, at),
                }
            }
        }
    }

    /// Handles one request; `None` when the answer comes later (a wait).
    fn request(&mut self, link: LinkId, id: u64, op: LockOp, at: Moment, fresh: [u8; 16]) -> Option<LockReply> {
        let reply = match op {
            LockOp::Acquire {
                lock,
                ticket,
                owner,
                ttl_ms,
                limit,
                weight,
                queue,
                wait_ms,
                then,
                compat,
                callback,
                mode,
                user,
            } => {
                let wait_ms = if compat {
                    match self.resources.get(&lock) {
                        Some(r) => r.wait_ms(self.max_wait_ms),
                        None => return Some(LockReply::ResourceUnknown),
                    }
                } else {
                    wait_ms.min(self.max_wait_ms)
                };
                let watch = wait_ms > 0;
                let new_ticket = Ticket::from_bytes(fresh);
                // The user's existing place comes back under its own ticket: neither the one
                // given nor the fresh one.
                let by_user = |t: Ticket| user.is_some() && t != new_ticket && Some(t) != ticket;
                let acquire = Acquire {
                    lock: lock.clone(),
                    ticket,
                    new_ticket,
                    owner,
                    ttl_ms,
                    limit,
                    weight,
                    queue,
                    watch,
                    callback,
                    mode,
                    user: user.clone(),
                    // A waiter with a callback is present until its wait ends: the one it
                    // asked for, or the longest the server allows when it holds no request.
                    wait_ms: if wait_ms > 0 { wait_ms } else { self.max_wait_ms },
                };
                let reply = self.apply(Op::Acquire(acquire), at);
                if let Reply::Queued(place) = &reply {
                    if place.ticket == new_ticket {
                        self.queued_at_ms.insert(new_ticket, at.now_ms);
                    }
                }
                match reply {
                    Reply::Held(lease) => {
                        let found = by_user(lease.ticket);
                        let mut reply = self.finish(&lock, lease, then, at);
                        if let LockReply::Held { existing, .. } = &mut reply {
                            *existing = found;
                        }
                        reply
                    }
                    Reply::Queued(place) if watch => {
                        let key = (lock, place.ticket);
                        if let Some(old) = self.waits.remove(&key) {
                            // Superseded by this request: the old one learns its place, and
                            // its watch ends (this request holds one of its own).
                            self.wait_of_request.remove(&(old.link, old.id));
                            self.wait_deadlines.remove(&(old.deadline_ms, old.link, old.id));
                            let (lock, ticket) = key.clone();
                            if let Reply::Queued(place) = self.apply(Op::Unwatch { lock, ticket }, at) {
                                let reply = self.queued(&key.0, place, at.now_ms);
                                self.pending_replies.push((old.link, FromKeeper::Reply { id: old.id, reply }));
                            }
                        }
                        let deadline_ms = at.now_ms.saturating_add(wait_ms);
                        // Where it stands, for an answer its worker may have to give early.
                        let found = by_user(place.ticket);
                        let mut reply = self.queued(&key.0, place, at.now_ms);
                        if let LockReply::Queued { existing, .. } = &mut reply {
                            *existing = found;
                        }
                        self.pending_replies.push((link, FromKeeper::Waiting { id, reply }));
                        self.wait_of_request.insert((link, id), key.clone());
                        self.wait_deadlines.insert((deadline_ms, link, id));
                        self.waits.insert(key, Wait { link, id, then, deadline_ms });
                        return None;
                    }
                    Reply::Queued(place) => {
                        let found = by_user(place.ticket);
                        if matches!(then, Then::WriteAndRelease { .. }) && !found {
                            // A write that cannot happen now does not stay in line.
                            self.apply(Op::Release { lock: lock.clone(), ticket: place.ticket }, at);
                        }
                        let mut reply = self.queued(&lock, place, at.now_ms);
                        if let LockReply::Queued { existing, .. } = &mut reply {
                            *existing = found;
                        }
                        reply
                    }
                    other => self.wire(other, at),
                }
            }
            LockOp::Renew { lock, ticket, ttl_ms } => {
                let reply = self.apply(Op::Renew { lock, ticket, ttl_ms }, at);
                self.wire(reply, at)
            }
            LockOp::Release { lock, ticket } => {
                let reply = self.apply(Op::Release { lock, ticket }, at);
                self.wire(reply, at)
            }
            LockOp::Touch { lock, ticket } => match self.apply(Op::Touch { lock: lock.clone(), ticket }, at) {
                Reply::Queued(place) => self.queued(&lock, place, at.now_ms),
                other => self.wire(other, at),
            },
            LockOp::Watch { lock, ticket } => {
                let max = self.table.limits().max_event_streams;
                if self.stream_count >= u64::from(max) {
                    // Refused before the table counts it as presence.
                    return Some(LockReply::OverBudget {
                        budget: Budget::EventStreams,
                        limit: max.into(),
                        message: format!(
                            "the server has its maximum of {max} event streams open (locks.max_event_streams)"
                        ),
                    });
                }
                let reply = self.apply(Op::Watch { lock: lock.clone(), ticket }, at);
                if matches!(reply, Reply::Held(_) | Reply::Queued(_)) {
                    self.streams
                        .entry(ticket)
                        .or_insert_with(|| Streams { lock: lock.clone(), links: Vec::new() })
                        .links
                        .push(link);
                    self.stream_count += 1;
                }
                match reply {
                    Reply::Queued(place) => self.queued(&lock, place, at.now_ms),
                    other => self.wire(other, at),
                }
            }
            LockOp::Status { lock } => match self.table.lock_view(lock.as_str()) {
                Some(view) => LockReply::Lock(lock_info(view, at.now_ms)),
                None => LockReply::LockUnknown,
            },
            LockOp::List { prefix, after, limit } => {
                let limit = limit.clamp(1, MAX_LIST_PAGE) as usize;
                let views = self.table.list(&prefix, after.as_deref(), limit);
                let full = views.len() == limit;
                let mut locks: Vec<LockInfo> = views.into_iter().map(|v| lock_info(v, at.now_ms)).collect();
                let cut = cut_to_page_bytes(&mut locks);
                let next_after = (full || cut).then(|| locks.last().map(|l| l.name.to_string())).flatten();
                LockReply::Locks { locks, next_after }
            }
            LockOp::GetData { lock, key } => {
                LockReply::Data(self.table.data(lock.as_str(), key.as_str()).map(str::to_string))
            }
            LockOp::PutData { lock, ticket, key, value } => {
                let reply = self.apply(Op::PutData { lock, ticket, key, value: value.into_boxed_str() }, at);
                self.wire(reply, at)
            }
            LockOp::DeleteData { lock, ticket, key } => {
                let reply = self.apply(Op::DeleteData { lock, ticket, key }, at);
                self.wire(reply, at)
            }
            LockOp::CreateResource { name, timeout_s } => {
                let max = self.table.limits().max_resources;
                if self.resources.get(&name).is_some() {
                    LockReply::ResourceExists
                } else if self.resources.len() >= max as usize {
                    LockReply::OverBudget {
                        budget: Budget::Resources,
                        limit: max.into(),
                        message: format!("the server holds its maximum of {max} resources (locks.max_resources)"),
                    }
                } else {
                    match self.resources.create(name.clone(), timeout_s, at.now_ms, fresh) {
                        Some(r) => LockReply::ResourceCreated { id: r.id.clone(), name, timeout_s },
                        None => LockReply::ResourceExists,
                    }
                }
            }
            LockOp::DeleteResource { name } => {
                if self.resources.get(&name).is_none() {
                    return Some(LockReply::ResourceUnknown);
                }
                match self.apply(Op::ClearData { lock: name.clone() }, at) {
                    // Cleared, or no lock at all (nothing was stored under it).
                    Reply::DataCleared { .. } | Reply::LockUnknown => {
                        self.resources.remove(&name);
                        LockReply::ResourceDeleted
                    }
                    Reply::LockBusy { .. } => LockReply::ResourceBusy,
                    other => self.wire(other, at),
                }
            }
            LockOp::CompatRead { resource, key } => match self.resources.get(&resource) {
                Some(r) => LockReply::CompatData {
                    lease: None,
                    resource_id: r.id.clone(),
                    data: self.table.data(resource.as_str(), key.as_str()).map(str::to_string),
                },
                None => LockReply::ResourceUnknown,
            },
            LockOp::OutboxPut { call, max_attempts, not_before_ms, scope } => {
                let attempts = max_attempts.unwrap_or(self.default_attempts);
                let origin = Origin { scope, callback: false };
                match self.calls.enqueue(call, attempts, not_before_ms, origin, at.now_ms, fresh) {
                    Ok(id) => LockReply::OutboxAccepted { id },
                    Err(e) => outbox_refused(&e),
                }
            }
            LockOp::OutboxList { failed, after, limit, scope, redact } => {
                let listing = if failed { Listing::Failed } else { Listing::Pending };
                let limit = limit.clamp(1, MAX_LIST_PAGE) as usize;
                let (page, mut next_after) = self.calls.page(listing, &scope, after.as_deref(), limit);
                let mut entries: Vec<Entry> = page.into_iter().map(|e| shown(e, redact)).collect();
                if cut_to_page_bytes(&mut entries) {
                    next_after = entries.last().map(|e| e.id.clone());
                }
                LockReply::OutboxPage { entries, next_after }
            }
            LockOp::OutboxGet { id, scope, redact } => match self.calls.get(&id, &scope) {
                Some(entry) => LockReply::OutboxEntry { entry: shown(entry, redact) },
                None => outbox_refused(&OutboxError::Unknown),
            },
            LockOp::OutboxRetry { id, scope } => match self.calls.retry(&id, &scope, at.now_ms) {
                Ok(()) => LockReply::OutboxDone,
                Err(e) => outbox_refused(&e),
            },
            LockOp::OutboxDelete { id, scope } => match self.calls.delete(&id, &scope) {
                Ok(_) => LockReply::OutboxDone,
                Err(e) => outbox_refused(&e),
            },
            LockOp::Overview { busiest } => LockReply::Overview(Box::new(self.overview(busiest, at.now_ms))),
        };
        Some(reply)
    }

    /// Delivers what the table's outputs mean to waiting requests and event streams, then
    /// hands due calls to the courier.
    fn settle(&mut self, at: Moment, out: &mut Outbox) {
        self.deliver_outputs(at, out);
        self.dispatch(at, out);
    }

    /// Delivers what the table's outputs mean to waiting requests and event streams.
    fn deliver_outputs(&mut self, at: Moment, out: &mut Outbox) {
        out.append(&mut self.pending_replies);
        while let Some(output) = self.outputs.pop_front() {
            match output {
                Output::Granted { lock, lease } => {
                    self.lease_counters.granted(lease.mode);
                    let ticket = lease.ticket;
                    if let Some(queued_at_ms) = self.queued_at_ms.remove(&ticket) {
                        let waited_us = at.now_ms.saturating_sub(queued_at_ms).saturating_mul(1_000);
                        self.lease_counters.queue_wait.observe_on(QUEUE_WAIT_BUCKETS_US, waited_us);
                    }
                    self.estimator.granted(ticket, at.now_ms);
                    self.notify(&lock, ticket, &TicketEvent::Acquired(lease.clone()), out);
                    let key = (lock, ticket);
                    if let Some(wait) = self.waits.remove(&key) {
                        self.wait_of_request.remove(&(wait.link, wait.id));
                        self.wait_deadlines.remove(&(wait.deadline_ms, wait.link, wait.id));
                        let reply = self.finish(&key.0, lease, wait.then, at);
                        out.push((wait.link, FromKeeper::Reply { id: wait.id, reply }));
                    }
                }
                Output::Moved { lock, ticket, position, queue_length } => {
                    self.notify(&lock, ticket, &TicketEvent::Position { position, queue_length }, out);
                }
                Output::Expired { lock, ticket, fence, unclaimed } => {
                    if unclaimed {
                        self.lease_counters.expired_unclaimed += 1;
                    } else {
                        self.lease_counters.expired += 1;
                    }
                    self.estimator.ended(&lock, ticket, at.now_ms);
                    self.notify(&lock, ticket, &TicketEvent::Expired { fence, unclaimed }, out);
                }
                Output::Released { lock, ticket, fence } => {
                    self.estimator.ended(&lock, ticket, at.now_ms);
                    self.notify(&lock, ticket, &TicketEvent::Released { fence }, out);
                }
                Output::Dropped { lock, ticket, reason } => {
                    match reason {
                        DropReason::Absent => self.lease_counters.dropped_waiter_ttl += 1,
                        DropReason::LimitLowered => self.lease_counters.dropped_limit_lowered += 1,
                    }
                    self.queued_at_ms.remove(&ticket);
                    self.notify(&lock, ticket, &TicketEvent::Dropped, out);
                    let key = (lock, ticket);
                    if let Some(wait) = self.waits.remove(&key) {
                        self.wait_of_request.remove(&(wait.link, wait.id));
                        self.wait_deadlines.remove(&(wait.deadline_ms, wait.link, wait.id));
                        out.push((wait.link, FromKeeper::Reply { id: wait.id, reply: LockReply::Dropped }));
                    }
                }
                Output::CallbackDue { url, event, lock, ticket, fence, at_ms } => {
                    let body = serde_json::json!({
                        "event": match event { CallbackEvent::Acquired => "acquired", CallbackEvent::Expired => "expired" },
                        "lock": lock.as_str(),
                        "ticket": ticket.to_string(),
                        "fence": fence,
                        "at_ms": at_ms,
                    });
                    let call = Call {
                        method: "POST".into(),
                        url: url.as_str().to_string(),
                        headers: vec![("Content-Type".into(), "application/json".into())],
                        body: body.to_string(),
                    };
                    // Unique per callback and the same in a replay: the ticket's bytes, mixed
                    // with the step's entropy and the event.
                    let mut random = *ticket.as_bytes();
                    random[..8].iter_mut().zip(at.entropy.to_le_bytes()).for_each(|(b, e)| *b ^= e);
                    random[15] ^= event as u8;
                    // A callback belongs to its lock's tenant.
                    let origin = Origin { scope: lock.as_str().to_string(), callback: true };
                    if self.calls.enqueue(call, self.default_attempts, None, origin, at.now_ms, random).is_err() {
                        self.counters.callbacks_refused += 1;
                    }
                }
            }
        }
    }

    /// Hands due calls to the courier while it has room.
    fn dispatch(&mut self, at: Moment, out: &mut Outbox) {
        let Some((link, capacity)) = self.courier else { return };
        let room = (capacity as usize).saturating_sub(self.calls.in_flight());
        if room == 0 {
            return;
        }
        let deliveries = self.calls.take_due(at.now_ms, room);
        if !deliveries.is_empty() {
            out.push((link, FromKeeper::Deliver { deliveries }));
        }
    }

    fn notify(&self, lock: &LockName, ticket: Ticket, event: &TicketEvent, out: &mut Outbox) {
        if self.streams.is_empty() {
            return;
        }
        let Some(streams) = self.streams.get(&ticket).filter(|s| &s.lock == lock) else { return };
        let mut sent: Vec<LinkId> = Vec::with_capacity(streams.links.len());
        for &link in &streams.links {
            // One event per channel; the worker fans it out to its streams.
            if !sent.contains(&link) {
                sent.push(link);
                out.push((link, FromKeeper::Event { lock: lock.clone(), ticket, event: event.clone() }));
            }
        }
    }
}

#[cfg(test)]
mod tests;
