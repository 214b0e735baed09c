//! Every message that crosses a process boundary, as serde types. Frames carry one JSON
//! object each ([`super::frame`]); fd records carry one [`FdRecord`] next to the descriptors
//! they pass ([`crate::sys::fdpass`]).
//!
//! | channel | direction | message | meaning |
//! |---|---|---|---|
//! | control | master → child | `start` | configuration text (the file as read; the child applies the same pure `Config::load`), slot, generation, inherited listener count |
//! | control | master → keeper | `reconfigure` | a reload's configuration text: new table limits |
//! | control | master → worker | `drain` | stop accepting, finish in-flight requests, exit 0 |
//! | control | master → keeper | `stop` | flush and exit 0 (sent after the workers are gone) |
//! | control | master → child | `collect` | send a metrics snapshot for collection `id` |
//! | control | master → worker | `metrics_text` | the rendered `/metrics` page the worker asked for |
//! | control | child → master | `ready` | started and serving (keeper: state loaded) |
//! | control | worker → master | `closed` | this many connections handed over by the master have closed (least-connections counts) |
//! | control | worker → master | `need_keeper` | its keeper channel (of keeper generation `lost_generation`) broke: please send a new one |
//! | control | worker → master | `metrics_request` | a client asked for `/metrics`; answer with `metrics_text` |
//! | control | child → master | `worker_metrics` / `keeper_metrics` | a snapshot for collection `id` (`id` 0: a draining worker's final counters) |
//! | fd (SEQPACKET) | master → worker | `client` + 1 fd | a client connection to serve (fd-passing mode) |
//! | fd (SEQPACKET) | master → worker | `keeper` + 1 fd | a new channel to the keeper of `generation` |
//! | fd (SEQPACKET) | master → keeper | `worker` + 1 fd | a new channel from worker `slot` |
//! | keeper | keeper → worker | `hello` | first frame on a channel: the keeper's generation |
//! | keeper | worker → keeper | `request` | lock operation `op` with request id `id` (many in flight; `LockOp` lists them) |
//! | keeper | keeper → worker | `reply` | the one answer to request `id`: at once, or, for an acquire that waits, when it is granted or its wait ends |
//! | keeper | worker → keeper | `cancel` | the client of waiting request `id` is gone: stop waiting (answered `cancelled`, unless it was answered already) |
//! | keeper | keeper → worker | `event` | something happened to a ticket an event stream on this channel watches (`position`, `acquired`, `expired`, `released`, `dropped`) |
//! | keeper | worker → keeper | `unwatch` | an event stream for a ticket closed |
//!
//! Descriptors a child inherits at exec: 3 = control channel, 4 = fd channel, 5… = its
//! listening sockets (reuseport mode). Unknown messages and malformed frames close the
//! channel that carried them, with a log line; they never crash the reader.
//!
//! **Part of a storage format.** The journal keeps each change as the [`ToKeeper`] message
//! that caused it, serialised as here (docs/journal-format.md, "Formats and evolution").
//! So [`ToKeeper`], the changing [`LockOp`]s and every type inside them (`Then`, `Call`,
//! `Outcome`, queue modes, names) are a journal format too: a field or kind added, renamed
//! or given a new meaning raises `journal::FORMAT` and gets fixtures, and fields added
//! carry `#[serde(default)]` meaning what older records meant. `tests/it/formats.rs` pins
//! how each is written and fails on a change made without that.

use serde::{Deserialize, Serialize};

use crate::core::backoff::Outcome;
use crate::core::lock::{Declaration, LeaseView, LockKind, LockMode, QueueKind, QueueMode, QueueView};
use crate::core::names::{CallbackUrl, DataKey, LockName, Owner, Ticket, UserId};
use crate::core::outbox::{Call, Delivery, Entry};
use crate::metrics::{KeeperSnapshot, WorkerSnapshot};

/// The first frame a child receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Start {
    /// The configuration file's text (`None`: the embedded defaults).
    pub config_text: Option<String>,
    /// Worker slot (0 for the keeper).
    pub slot: u32,
    /// Incarnation number, unique per master.
    pub generation: u64,
    /// Listening sockets inherited at descriptors 5… (reuseport mode).
    pub listeners: u32,
}

/// Master → child, on the control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ToChild {
    /// Begin.
    Start(Start),
    /// Apply a reloaded configuration (keeper).
    Reconfigure {
        /// The configuration text.
        config_text: Option<String>,
    },
    /// Stop accepting, finish what is in flight, exit (worker).
    Drain,
    /// Flush and exit (keeper).
    Stop,
    /// Send a metrics snapshot.
    Collect {
        /// Collection id.
        id: u64,
    },
    /// Are you there? Answered with [`ToMaster::Pong`] with the same number by every child
    /// whose loop runs (a child that stops answering is hung: killed and replaced).
    Ping {
        /// The ping's number.
        n: u64,
    },
    /// The `/metrics` page a worker asked for.
    MetricsText {
        /// The worker's request id.
        id: u64,
        /// Prometheus text.
        text: String,
    },
}

/// Between an old master and the new master it started for a binary upgrade (docs/lifecycle.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Upgrade {
    /// New → old: configuration valid, listeners taken; release the data directory.
    WantKeeper,
    /// Old → new: the old keeper has stopped; the directory is free.
    KeeperReleased,
    /// New → old: every child of the new master is ready; the old one may leave.
    Ready,
}

/// Child → master, on the control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ToMaster {
    /// Started and serving.
    Ready,
    /// The answer to [`ToChild::Ping`].
    Pong {
        /// The ping's number.
        n: u64,
    },
    /// Connections handed over by the master that have closed since the last report.
    Closed {
        /// How many.
        connections: u32,
    },
    /// The keeper channel broke.
    NeedKeeper {
        /// Generation of the keeper whose channel broke (0: never had one).
        lost_generation: u64,
    },
    /// A client asked for `/metrics`.
    MetricsRequest {
        /// The worker's request id.
        id: u64,
    },
    /// A worker's snapshot (`id` 0: final counters before exiting).
    WorkerMetrics {
        /// Collection id.
        id: u64,
        /// The counters.
        snapshot: WorkerSnapshot,
    },
    /// The keeper's snapshot.
    KeeperMetrics {
        /// Collection id.
        id: u64,
        /// The counters (boxed: far larger than the other messages).
        snapshot: Box<KeeperSnapshot>,
    },
}

/// The metadata of one fd record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FdRecord {
    /// A client connection (fd-passing mode) from a plain HTTP listener.
    Client,
    /// A client connection (fd-passing mode) from a TLS listener (`tls.listen`): the worker
    /// runs the handshake.
    TlsClient,
    /// A channel to the keeper.
    Keeper {
        /// The keeper's generation.
        generation: u64,
    },
    /// A channel from a worker.
    Worker {
        /// The worker's slot.
        slot: u32,
    },
    /// The channel from the courier (to the keeper), or to the keeper (for the courier).
    Courier,
}

/// What the keeper does once a waiting acquire is granted, before it answers (so the
/// follow-up is atomic with the grant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Then {
    /// Keep the lease; answer `held`.
    #[default]
    Hold,
    /// Keep the lease and read one data key (Small Resource Server `GET`): answer `compat_data`.
    ReadData {
        /// The data key (selector).
        key: DataKey,
    },
    /// Write one data key, then release (Small Resource Server `PUT`): answer `written`. A
    /// waiter that is not admitted in time leaves the queue: nothing is written.
    WriteAndRelease {
        /// The data key (selector).
        key: DataKey,
        /// JSON text.
        value: String,
    },
}

impl Then {
    /// Whether this is the default, [`Then::Hold`] (left out of frames).
    pub fn is_hold(&self) -> bool {
        matches!(self, Then::Hold)
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A lock operation a worker asks the keeper to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LockOp {
    /// Take a lease, queue, or re-enter.
    Acquire {
        /// The lock.
        lock: LockName,
        /// The caller's ticket, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ticket: Option<Ticket>,
        /// Label.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<Owner>,
        /// Lease TTL (absent: the lock's default; from journal format 4, before which it
        /// was always given).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
        /// Permit count (absent: as declared, else 1; always given before format 4).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
        /// Permits wanted.
        weight: u32,
        /// Queue discipline (absent: as declared, else FIFO; always given before format 4).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<QueueMode>,
        /// How long the keeper may hold the answer while the caller waits in the queue
        /// (0: answer at once). Ignored for `compat`, where the resource's timeout decides.
        #[serde(default, skip_serializing_if = "is_zero")]
        wait_ms: u64,
        /// What to do once granted.
        #[serde(default, skip_serializing_if = "Then::is_hold")]
        then: Then,
        /// A Small Resource Server request: the lock is a registered resource.
        #[serde(default, skip_serializing_if = "is_false")]
        compat: bool,
        /// Called (through the outbox) when this ticket is admitted after waiting, or when
        /// its lease expires without a release. Such a waiter counts as present until its
        /// wait ends (`wait_ms`, or the server's `max_wait_ms` when 0).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        callback: Option<CallbackUrl>,
        /// A read/write lock's lease: shared or exclusive (from journal format 4; absent:
        /// a semaphore's, as before).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<LockMode>,
        /// Who the place is for: one place per user per lock (from journal format 4).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<UserId>,
    },
    /// Extend a lease.
    Renew {
        /// The lock.
        lock: LockName,
        /// The holder's ticket.
        ticket: Ticket,
        /// New TTL, if changed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_ms: Option<u64>,
    },
    /// Give up a lease or leave the queue.
    Release {
        /// The lock.
        lock: LockName,
        /// The ticket.
        ticket: Ticket,
    },
    /// Where a ticket stands (counts as presence).
    Touch {
        /// The lock.
        lock: LockName,
        /// The ticket.
        ticket: Ticket,
    },
    /// An event stream opens for a ticket: where it stands now, and its events from now on
    /// on this channel until `unwatch` (counts as presence while open).
    Watch {
        /// The lock.
        lock: LockName,
        /// The ticket.
        ticket: Ticket,
    },
    /// A lock as readers see it.
    Status {
        /// The lock.
        lock: LockName,
    },
    /// A page of locks by name.
    List {
        /// Names start with this.
        prefix: String,
        /// Names sort after this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// Page size.
        limit: u32,
    },
    /// Read one data key.
    GetData {
        /// The lock.
        lock: LockName,
        /// The key.
        key: DataKey,
    },
    /// Write one data key (a current holder's ticket).
    PutData {
        /// The lock.
        lock: LockName,
        /// The holder's ticket.
        ticket: Ticket,
        /// The key.
        key: DataKey,
        /// JSON text.
        value: String,
    },
    /// Delete one data key (a current holder's ticket).
    DeleteData {
        /// The lock.
        lock: LockName,
        /// The holder's ticket.
        ticket: Ticket,
        /// The key.
        key: DataKey,
    },
    /// Register a Small Resource Server resource.
    CreateResource {
        /// Its name (also the name of its lock).
        name: LockName,
        /// Server-side wait in seconds (0: up to `max_wait_ms`, < 0: try once).
        timeout_s: i64,
    },
    /// Remove a resource's registration, with its lock's data; refused while the lock has
    /// holders or waiters.
    DeleteResource {
        /// Its name.
        name: LockName,
    },
    /// Read a resource's data key without locking (Small Resource Server `GET ?lock=0`).
    CompatRead {
        /// The resource.
        resource: LockName,
        /// The selector.
        key: DataKey,
    },
    /// Accept an HTTP call for delivery by the courier.
    OutboxPut {
        /// The call (its URL already checked against the target policy).
        call: Call,
        /// Attempts allowed (`None`: the configured default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_attempts: Option<u32>,
        /// Not delivered before this time (wall clock, ms).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_before_ms: Option<u64>,
        /// The name prefix of the key that made the call: the entry belongs to it.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        scope: String,
    },
    /// A page of outbox entries, in the order they were accepted.
    OutboxList {
        /// The dead-letter list, or the pending entries.
        failed: bool,
        /// Ids sort after this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        /// Page size.
        limit: u32,
        /// Only entries under this name prefix.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        scope: String,
        /// Leave out headers, bodies and queries (a reader without the write role).
        #[serde(default, skip_serializing_if = "is_false")]
        redact: bool,
    },
    /// One outbox entry.
    OutboxGet {
        /// Its id.
        id: String,
        /// Only an entry under this name prefix.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        scope: String,
        /// Leave out headers, body and query (a reader without the write role).
        #[serde(default, skip_serializing_if = "is_false")]
        redact: bool,
    },
    /// Give a failed outbox entry a fresh set of attempts.
    OutboxRetry {
        /// Its id.
        id: String,
        /// Only an entry under this name prefix.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        scope: String,
    },
    /// Remove an outbox entry that is not being delivered.
    OutboxDelete {
        /// Its id.
        id: String,
        /// Only an entry under this name prefix.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        scope: String,
    },
    /// The server at a glance, for the dashboard (a read; never journaled): totals, up to
    /// `busiest` of the busiest locks (at most `overview::MAX_OVERVIEW_LOCKS`), the rooms,
    /// the outbox by state.
    Overview {
        /// How many of the busiest locks to list.
        busiest: u32,
    },
}

impl LockOp {
    /// A plain acquire of `lock`: a mutex, FIFO, answered at once, held once granted.
    pub fn acquire(lock: LockName, ttl_ms: u64) -> LockOp {
        LockOp::Acquire {
            lock,
            ticket: None,
            owner: None,
            ttl_ms: Some(ttl_ms),
            limit: Some(1),
            weight: 1,
            queue: Some(QueueMode::Fifo),
            wait_ms: 0,
            then: Then::Hold,
            compat: false,
            callback: None,
            mode: None,
            user: None,
        }
    }
}

/// Worker → keeper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ToKeeper {
    /// Apply `op`; the keeper answers `id` exactly once (an acquire that waits is answered
    /// when it is granted or when its wait ends).
    Request {
        /// Request id, unique per channel.
        id: u64,
        /// The operation.
        op: LockOp,
    },
    /// The client of waiting request `id` is gone: stop waiting (the waiter stays queued under
    /// the presence rules). The keeper answers `cancelled` if the request was still waiting;
    /// if it had answered already, that answer is the only one.
    Cancel {
        /// The request.
        id: u64,
    },
    /// An event stream for this ticket closed on this channel.
    Unwatch {
        /// The lock.
        lock: LockName,
        /// The ticket.
        ticket: Ticket,
    },
    /// The courier on this channel takes up to `capacity` deliveries at once.
    CourierReady {
        /// Deliveries at once.
        capacity: u32,
    },
    /// How a delivery attempt went (from the courier).
    Delivered {
        /// The entry.
        id: String,
        /// How it ended.
        outcome: Outcome,
        /// The target's `Retry-After`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
        /// What went wrong.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// How long the attempt took.
        took_ms: u64,
    },
}

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// Malformed or out of range (400).
    Invalid,
    /// Over a data size limit (413).
    TooLarge,
}

/// A server-wide total that a request would go past.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// Holders and waiters across all locks (`locks.max_tickets_total`).
    Tickets,
    /// Bytes of data across all locks (`locks.max_data_bytes_total`).
    DataBytes,
    /// Registered resources (`locks.max_resources`).
    Resources,
    /// Open event streams (`locks.max_event_streams`).
    EventStreams,
}

/// A holder as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HolderInfo {
    /// Label.
    pub owner: Option<Owner>,
    /// Permits held.
    pub weight: u32,
    /// Fencing token.
    pub fence: u64,
    /// Time left on the lease.
    pub expires_in_ms: u64,
    /// Whether an admitted waiter has shown up yet.
    pub claimed: bool,
    /// A read/write lock's lease: shared or exclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LockMode>,
    /// Who the lease is for, when its acquire said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
}

/// A lock as readers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockInfo {
    /// Name.
    pub name: LockName,
    /// Semaphore or read/write lock.
    #[serde(default)]
    pub kind: LockKind,
    /// Permit count (0 for a read/write lock, which has none).
    pub limit: u32,
    /// Queue discipline.
    pub queue: QueueKind,
    /// Permits in use.
    pub used: u32,
    /// Holders, by fence.
    pub holders: Vec<HolderInfo>,
    /// Waiters.
    pub queue_length: u32,
    /// Keys in the data map.
    pub data_keys: u32,
    /// The `[[locks.declare]]` entry that shapes it, if any (by name or by prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared: Option<Declaration>,
}

/// The keeper's answer to a lock operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LockReply {
    /// Holding a lease (`at_ms`: the keeper's time of this answer).
    Held {
        /// The lease.
        lease: LeaseView,
        /// The keeper's clock at this answer.
        at_ms: u64,
        /// An acquire with a `user` got that user's existing lease back (not a new one).
        #[serde(default, skip_serializing_if = "is_false")]
        existing: bool,
    },
    /// Waiting in the queue.
    Queued {
        /// Place in line.
        place: QueueView,
        /// Estimated wait, when the lock has a history to estimate from.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        eta_ms: Option<u64>,
        /// An acquire with a `user` got that user's existing place back (not a new one).
        #[serde(default, skip_serializing_if = "is_false")]
        existing: bool,
    },
    /// Try-lock failed.
    Unavailable {
        /// Permits in use.
        used: u32,
        /// Permit count.
        limit: u32,
        /// Waiters.
        queue_length: u32,
    },
    /// The lock has another permit count.
    LimitMismatch {
        /// Its permit count.
        limit: u32,
    },
    /// The lock is of another kind (semaphore or read/write lock).
    KindMismatch {
        /// Its kind.
        kind: LockKind,
    },
    /// The lock has another queue discipline.
    QueueMismatch {
        /// Its discipline.
        queue: QueueKind,
    },
    /// The queue is full.
    QueueFull {
        /// Its maximum.
        max_waiters: u32,
    },
    /// The table is full.
    TableFull {
        /// Its maximum.
        max_locks: u32,
    },
    /// A lease ended.
    Released {
        /// Its fence.
        fence: u64,
        /// The keeper's clock at this answer.
        at_ms: u64,
    },
    /// A waiter left.
    Left,
    /// The ticket waits; it does not hold.
    NotHolder(QueueView),
    /// The ticket is not on this lock.
    TicketUnknown,
    /// No such lock.
    LockUnknown,
    /// A waiter was removed while waiting (its weight exceeds a lowered limit).
    Dropped,
    /// A lock.
    Lock(LockInfo),
    /// A page of locks; `next_after` continues the listing.
    Locks {
        /// The page.
        locks: Vec<LockInfo>,
        /// Cursor for the next page, if there may be more.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_after: Option<String>,
    },
    /// A data value (`None`: no such key).
    Data(Option<String>),
    /// A data key was written.
    DataWritten {
        /// It did not exist before.
        created: bool,
    },
    /// A data key was deleted.
    DataDeleted {
        /// It existed.
        existed: bool,
    },
    /// A resource was registered.
    ResourceCreated {
        /// Its id (26 characters).
        id: String,
        /// Its name.
        name: LockName,
        /// Its server-side wait.
        timeout_s: i64,
    },
    /// A resource of that name exists already.
    ResourceExists,
    /// A resource was deleted.
    ResourceDeleted,
    /// The resource's lock has holders or waiters; nothing was deleted.
    ResourceBusy,
    /// A server-wide total is reached; nothing changed.
    OverBudget {
        /// Which total.
        budget: Budget,
        /// Its maximum.
        limit: u64,
        /// What was refused, for the client.
        message: String,
    },
    /// No resource of that name.
    ResourceUnknown,
    /// A resource's data key (Small Resource Server `GET`), read under `lease` if locked.
    CompatData {
        /// The lease, when the read took the lock.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<LeaseView>,
        /// The resource's id.
        resource_id: String,
        /// The value, if the key has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
    },
    /// A resource's data key was written and the lock released (Small Resource Server `PUT`).
    Written {
        /// The ticket that held the lock for the write.
        ticket: Ticket,
    },
    /// Refused input; nothing changed.
    Rejected {
        /// Why.
        message: String,
        /// Which kind of refusal.
        kind: RejectKind,
    },
    /// The keeper could not serve the request (it says why).
    Failed {
        /// Why.
        message: String,
    },
    /// A waiting request was cancelled before it was answered.
    Cancelled,
    /// The change could not be journaled; nothing was changed.
    JournalFailed {
        /// Why.
        message: String,
    },
    /// Cluster mode: the request went to the leader over the peer link, which broke before
    /// its answer came: whether it took effect is unknown (docs/cluster.md, "The peer link").
    Unknown {
        /// What happened.
        message: String,
    },
    /// Cluster mode: this node does not lead, so it changed nothing (docs/cluster.md).
    NotLeader {
        /// The URL of the node that leads, when one does.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        leader: Option<String>,
    },
    /// An outbox call was accepted.
    OutboxAccepted {
        /// Its id.
        id: String,
    },
    /// One outbox entry.
    OutboxEntry {
        /// The entry.
        entry: Entry,
    },
    /// A page of outbox entries.
    OutboxPage {
        /// The page.
        entries: Vec<Entry>,
        /// Cursor for the next page, if there are more.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_after: Option<String>,
    },
    /// The outbox refused (full, too large, unknown id, wrong state).
    OutboxRefused {
        /// Why.
        message: String,
        /// Which refusal.
        kind: OutboxRefusal,
    },
    /// An outbox entry was retried or deleted.
    OutboxDone,
    /// The server at a glance (the answer to `overview`).
    Overview(Box<super::overview::Overview>),
}

/// Why the outbox refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxRefusal {
    /// At `max_entries` (503).
    Full,
    /// A body over `max_body_bytes` (413).
    TooLarge,
    /// Bad `max_attempts` (400).
    Invalid,
    /// No such entry (404).
    Unknown,
    /// The entry's state does not allow it (409).
    Conflict,
}

/// Something that happened to a ticket an event stream watches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TicketEvent {
    /// It moved up the queue.
    Position {
        /// 1-based place.
        position: u32,
        /// Waiters.
        queue_length: u32,
    },
    /// It was admitted.
    Acquired(LeaseView),
    /// Its lease ended without release (`unclaimed`: it never showed up after admission).
    Expired {
        /// Its fence.
        fence: u64,
        /// Never claimed.
        unclaimed: bool,
    },
    /// Its lease was released.
    Released {
        /// Its fence.
        fence: u64,
    },
    /// It left the queue without being admitted.
    Dropped,
}

/// Keeper → worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FromKeeper {
    /// First frame on a new channel.
    Hello {
        /// The keeper's generation.
        generation: u64,
    },
    /// The answer to request `id`.
    Reply {
        /// The request id.
        id: u64,
        /// The answer.
        reply: LockReply,
    },
    /// Request `id` waits in a queue (its answer comes later): where it stands now, the
    /// answer its client gets if the wait must end early (a drain, or its keeper or leader
    /// lost), so the client keeps its place.
    Waiting {
        /// The request id.
        id: u64,
        /// Where it stands (`queued`, with its ticket).
        reply: LockReply,
    },
    /// An event for a ticket watched on this channel.
    Event {
        /// The lock.
        lock: LockName,
        /// The ticket.
        ticket: Ticket,
        /// What happened.
        event: TicketEvent,
    },
    /// Calls for the courier to make.
    Deliver {
        /// The calls.
        deliveries: Vec<Delivery>,
    },
    /// Cluster mode: where this node stands (sent when it changes, for `GET /readyz`).
    Cluster {
        /// Where it stands.
        status: ClusterStatus,
    },
}

/// The first frame a node sends on the peer link (docs/cluster.md, "The peer link"): who it
/// is and the cluster's secret. Anything else first, or a wrong secret, closes the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerHello {
    /// The node's name.
    pub node: String,
    /// `cluster.secret`.
    pub secret: String,
    /// What the connection is for when it is not forwarding (absent: forwarding, as every
    /// hello before snapshots were fetched).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub want: Option<PeerWant>,
}

/// What a peer connection asks for instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PeerWant {
    /// The node's local snapshot file, sent once, then the connection closes
    /// (`process::fetch`).
    Snapshot,
}

/// Where a node of a cluster stands (docs/cluster.md, "Watching a cluster").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterStatus {
    /// This node's name.
    pub node: String,
    /// `leader`, `candidate` (won, reading the log before it serves) or `follower`.
    pub role: String,
    /// The epoch of the leader it knows of (its own when it leads; 0: none known).
    pub epoch: u64,
    /// The last batch of the log its replica applied.
    pub applied: u64,
    /// Batches seen in the log but not applied yet.
    pub lag: u64,
    /// The batch its local snapshot stands for (0: none).
    #[serde(default)]
    pub snapshot: u64,
    /// The URL of the node that leads, when one is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipc::frame::{decode, encode, FrameDecoder, DEFAULT_MAX_FRAME_BYTES};

    fn round_trip<T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(m: &T) {
        let mut bytes = Vec::new();
        encode(m, DEFAULT_MAX_FRAME_BYTES, &mut bytes).unwrap();
        let mut d = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        d.feed(&bytes);
        let body = d.next_frame().unwrap().unwrap();
        assert_eq!(&decode::<T>(body).unwrap(), m);
    }

    #[test]
    fn every_message_round_trips() {
        let lock = LockName::parse("jobs:nightly").unwrap();
        let ticket = Ticket::from_bytes([7; 16]);
        round_trip(&ToChild::Start(Start {
            config_text: Some("[server]\n".into()),
            slot: 2,
            generation: 9,
            listeners: 1,
        }));
        round_trip(&ToChild::Drain);
        round_trip(&ToChild::MetricsText { id: 3, text: "x 1\n".into() });
        round_trip(&ToMaster::Closed { connections: 4 });
        round_trip(&ToMaster::WorkerMetrics { id: 1, snapshot: WorkerSnapshot::default() });
        round_trip(&FdRecord::Worker { slot: 3 });
        round_trip(&ToKeeper::Request {
            id: 77,
            op: LockOp::Acquire {
                lock: lock.clone(),
                ticket: Some(ticket),
                owner: Some(Owner::parse("host-1 ünïcode <script>").unwrap()),
                ttl_ms: Some(1000),
                limit: Some(3),
                weight: 2,
                queue: Some(QueueMode::Lottery),
                wait_ms: 5_000,
                then: Then::WriteAndRelease { key: DataKey::parse("k").unwrap(), value: "{\"a\":1}".into() },
                compat: true,
                callback: None,
                mode: Some(LockMode::Exclusive),
                user: Some(UserId::parse("user-7").unwrap()),
            },
        });
        round_trip(&ToKeeper::Cancel { id: 77 });
        round_trip(&ToKeeper::Request { id: 78, op: LockOp::DeleteResource { name: lock.clone() } });
        round_trip(&FromKeeper::Reply {
            id: 78,
            reply: LockReply::OverBudget { budget: Budget::DataBytes, limit: 9, message: "full".into() },
        });
        round_trip(&ToKeeper::Unwatch { lock: lock.clone(), ticket });
        let lease = LeaseView {
            ticket,
            fence: 12,
            owner: None,
            weight: 1,
            expires_at_ms: 5,
            claimed: true,
            mode: None,
            user: None,
        };
        round_trip(&FromKeeper::Reply {
            id: 77,
            reply: LockReply::Held { lease: lease.clone(), at_ms: 3, existing: false },
        });
        round_trip(&FromKeeper::Reply {
            id: 1,
            reply: LockReply::Rejected { message: "ttl_ms \"x\"\n".into(), kind: RejectKind::Invalid },
        });
        round_trip(&FromKeeper::Event { lock: lock.clone(), ticket, event: TicketEvent::Acquired(lease) });
        round_trip(&FromKeeper::Reply {
            id: 2,
            reply: LockReply::Locks {
                locks: vec![LockInfo {
                    kind: LockKind::Rw,
                    name: lock,
                    limit: 2,
                    queue: QueueKind::Fifo,
                    used: 1,
                    holders: vec![HolderInfo {
                        owner: None,
                        weight: 1,
                        fence: 3,
                        expires_in_ms: 9,
                        claimed: true,
                        mode: Some(LockMode::Shared),
                        user: None,
                    }],
                    queue_length: 0,
                    data_keys: 1,
                    declared: Some(crate::core::lock::Declaration {
                        admit_per_minute: Some(60),
                        ..crate::core::lock::Declaration::new(None, Some("jobs:".into()))
                    }),
                }],
                next_after: Some("jobs:nightly".into()),
            },
        });
    }

    #[test]
    fn a_peer_hello_without_a_want_reads_as_before_and_is_written_as_before() {
        let old: PeerHello = decode(br#"{"node":"a","secret":"s"}"#).unwrap();
        assert_eq!(old, PeerHello { node: "a".into(), secret: "s".into(), want: None });
        assert_eq!(serde_json::to_string(&old).unwrap(), r#"{"node":"a","secret":"s"}"#);
        let asking = PeerHello { want: Some(PeerWant::Snapshot), ..old };
        assert_eq!(serde_json::to_string(&asking).unwrap(), r#"{"node":"a","secret":"s","want":"snapshot"}"#);
        round_trip(&asking);
        assert!(decode::<PeerHello>(br#"{"node":"a","secret":"s","want":"everything"}"#).is_err());
    }

    #[test]
    fn hostile_or_unknown_messages_are_errors_not_panics() {
        for body in [
            &b"{not json}"[..],
            b"42",
            b"[1,2,3]",
            b"true",
            b"\"\"",
            b"{}",
            b"{\"unknown_type\":{}}",
            b"{\"request\":{\"id\":1,\"op\":{\"acquire\":{\"lock\":\"a/b\",\"ttl_ms\":1,\"limit\":1,\"weight\":1,\"queue\":\"fifo\"}}}}",
            b"{\"request\":{\"id\":-1,\"op\":{\"release\":{\"lock\":\"a\",\"ticket\":\"short\"}}}}",
            b"{\"request\":{\"id\":1,\"op\":{\"release\":{\"lock\":\"a\",\"ticket\":\"AAAAAAAAAAAAAAAAAAAAAA\"}},\"extra\":1}}",
            b"{\"req\x00uest\":{}}",
        ] {
            assert!(decode::<ToKeeper>(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn deep_nesting_and_large_payloads_within_the_maximum_are_accepted() {
        let nested = format!("{}1{}", "[".repeat(50), "]".repeat(50));
        let value: serde_json::Value = decode(nested.as_bytes()).unwrap();
        round_trip(&value);
        round_trip(&ToChild::MetricsText { id: 1, text: "é".repeat(100_000) });
    }
}
