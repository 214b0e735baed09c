//! The lease table's vocabulary: the operations it accepts, the reply each gives its caller,
//! and the outputs (events for other parties) a call produces. All plain data.

use serde::{Deserialize, Serialize};

use crate::core::error::CoreError;
use crate::core::names::{CallbackUrl, DataKey, LockName, Owner, Ticket, UserId};

/// When a call happens and the entropy it may spend (lottery draws). The shell fills both in;
/// the table never reads a clock or a random source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moment {
    /// Wall-clock time in milliseconds since the Unix epoch.
    pub now_ms: u64,
    /// Fresh random bits for this call.
    pub entropy: u64,
}

impl Moment {
    /// A moment with the given time and entropy.
    pub const fn new(now_ms: u64, entropy: u64) -> Self {
        Self { now_ms, entropy }
    }
}

/// How a lock orders its waiters. Fixed while the lock has holders or waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum QueueKind {
    /// Strict arrival order; nobody passes a waiting head.
    #[default]
    Fifo,
    /// A uniformly random waiter is drawn each time permits free up.
    Lottery,
}

/// What a lock is: a semaphore (a permit count, leases of a weight; a mutex is a semaphore
/// of one permit) or a read/write lock (shared and exclusive leases, no permit count). Set
/// by the acquire that creates the lock, like its limit; callers of the other kind are
/// refused while it has holders or waiters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// Permits and weights.
    #[default]
    Semaphore,
    /// Shared and exclusive leases.
    Rw,
}

impl LockKind {
    /// True for the default kind (serde skips it, so older formats read as semaphores).
    pub fn is_semaphore(&self) -> bool {
        *self == LockKind::Semaphore
    }
}

/// How a lease of a read/write lock holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// Coexists with other shared leases (a reader).
    Shared,
    /// Alone on the lock (a writer).
    Exclusive,
}

/// What an acquire does when the lock cannot be had at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueMode {
    /// Join (or create) a FIFO queue.
    Fifo,
    /// Join (or create) a lottery queue.
    Lottery,
    /// Try once; answer `Unavailable` instead of queueing.
    None,
}

/// An acquire request, already validated for shape by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquire {
    /// The lock.
    pub lock: LockName,
    /// The caller's ticket, to keep its place or re-enter its lease.
    pub ticket: Option<Ticket>,
    /// Fresh random ticket used if the caller is new here (or its ticket is unknown).
    pub new_ticket: Ticket,
    /// A label for the lease.
    pub owner: Option<Owner>,
    /// Lease time to live once admitted (`None`: the lock's default).
    pub ttl_ms: Option<u64>,
    /// The lock's permit count as the caller expects it (1 = mutex; `None`: as declared,
    /// else 1).
    pub limit: Option<u32>,
    /// Permits this lease takes.
    pub weight: u32,
    /// Queue discipline, or `QueueMode::None` for try-lock (`None`: as declared, else FIFO).
    pub queue: Option<QueueMode>,
    /// The caller keeps a waiting request open for this ticket (counts as presence).
    pub watch: bool,
    /// Webhook called when admitted after waiting and when the lease expires.
    pub callback: Option<CallbackUrl>,
    /// A read/write lock's lease (`limit` and `weight` must then be 1, `queue` not
    /// lottery); `None` asks for a semaphore, or, on a read/write lock, for an exclusive
    /// lease if `limit` and `weight` are 1.
    pub mode: Option<LockMode>,
    /// Who the place is for: while a ticket of this user holds or waits on the lock, an
    /// acquire for the same user gets that ticket back instead of a second place.
    pub user: Option<UserId>,
    /// How long the caller is prepared to wait, from now. A queued waiter with a `callback`
    /// counts as present that long without being seen (it waits for its webhook, not by
    /// polling); other waiters ignore it.
    pub wait_ms: u64,
}

/// One operation on the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Take a lease, queue for one, or re-enter one's own.
    Acquire(Acquire),
    /// Extend a lease (never releases it). `ttl_ms` defaults to the lease's own TTL.
    Renew {
        /// The lock.
        lock: LockName,
        /// The holder's ticket.
        ticket: Ticket,
        /// New time to live, if changed.
        ttl_ms: Option<u64>,
    },
    /// Give up a lease, or leave the queue.
    Release {
        /// The lock.
        lock: LockName,
        /// The ticket.
        ticket: Ticket,
    },
    /// Ask where a ticket stands; counts as presence and claims an admitted lease.
    Touch {
        /// The lock.
        lock: LockName,
        /// The ticket.
        ticket: Ticket,
    },
    /// A waiting request or event stream opened for this ticket.
    Watch {
        /// The lock.
        lock: LockName,
        /// The ticket.
        ticket: Ticket,
    },
    /// A waiting request or event stream for this ticket closed.
    Unwatch {
        /// The lock.
        lock: LockName,
        /// The ticket.
        ticket: Ticket,
    },
    /// Change a lock's permit count (admin).
    SetLimit {
        /// The lock.
        lock: LockName,
        /// New permit count.
        limit: u32,
    },
    /// Store a JSON value under a key of the lock's data (fenced: holders only).
    PutData {
        /// The lock.
        lock: LockName,
        /// A current holder's ticket.
        ticket: Ticket,
        /// The key.
        key: DataKey,
        /// JSON text, already validated by the caller.
        value: Box<str>,
    },
    /// Remove a key of the lock's data (fenced: holders only).
    DeleteData {
        /// The lock.
        lock: LockName,
        /// A current holder's ticket.
        ticket: Ticket,
        /// The key.
        key: DataKey,
    },
    /// Remove every data key of a lock that has no holder and no waiter (admin: a deleted
    /// resource takes its data with it). The lock is forgotten.
    ClearData {
        /// The lock.
        lock: LockName,
    },
}

impl Op {
    /// The lock this operation addresses.
    pub fn lock(&self) -> &LockName {
        match self {
            Op::Acquire(a) => &a.lock,
            Op::Renew { lock, .. }
            | Op::Release { lock, .. }
            | Op::Touch { lock, .. }
            | Op::Watch { lock, .. }
            | Op::Unwatch { lock, .. }
            | Op::SetLimit { lock, .. }
            | Op::PutData { lock, .. }
            | Op::DeleteData { lock, .. }
            | Op::ClearData { lock } => lock,
        }
    }
}

/// A lease as its holder sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseView {
    /// The holder's ticket.
    pub ticket: Ticket,
    /// Fencing token of this grant.
    pub fence: u64,
    /// The holder's label.
    pub owner: Option<Owner>,
    /// Permits held.
    pub weight: u32,
    /// When the lease ends unless renewed.
    pub expires_at_ms: u64,
    /// False while an admitted waiter has not shown up yet (its lease runs on `claim_ms`).
    pub claimed: bool,
    /// A read/write lock's lease: how it holds the lock (its `weight` is then 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<LockMode>,
    /// Who the lease is for, when its acquire said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserId>,
}

/// A waiter as it sees itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueView {
    /// The waiter's ticket.
    pub ticket: Ticket,
    /// 1-based rank in a FIFO queue; `None` in a lottery queue, where there is no rank.
    pub position: Option<u32>,
    /// Number of waiters in the queue.
    pub queue_length: u32,
}

/// The direct answer to the caller of an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The caller holds a lease (new, re-entered, renewed or looked up).
    Held(LeaseView),
    /// The caller waits in the queue.
    Queued(QueueView),
    /// Try-lock failed: the lock is taken (or others wait first).
    Unavailable {
        /// Permits in use.
        used: u32,
        /// The lock's permit count.
        limit: u32,
        /// Waiters ahead.
        queue_length: u32,
    },
    /// The caller expects another permit count than the lock has.
    LimitMismatch {
        /// The lock's permit count.
        limit: u32,
    },
    /// The caller asks for another kind of lock (semaphore or read/write) than the lock is.
    KindMismatch {
        /// The lock's kind.
        kind: LockKind,
    },
    /// The caller asks for another queue discipline than the lock has.
    QueueMismatch {
        /// The lock's discipline.
        queue: QueueKind,
    },
    /// The lock's queue is at its maximum length.
    QueueFull {
        /// The maximum.
        max_waiters: u32,
    },
    /// The table holds the maximum number of locks.
    TableFull {
        /// The maximum.
        max_locks: u32,
    },
    /// The table holds the maximum number of tickets (holders and waiters together), so a
    /// new ticket cannot be issued.
    TicketsFull {
        /// The maximum.
        max_tickets: u32,
    },
    /// The write would take the data of all locks together past its maximum; nothing was
    /// written.
    DataFull {
        /// The key that was not written.
        key: DataKey,
        /// The maximum, in bytes of keys and values.
        max_bytes: u64,
    },
    /// A lease was given up.
    Released {
        /// Fencing token of the lease that ended.
        fence: u64,
    },
    /// A waiter left the queue.
    Left,
    /// The ticket waits; it does not hold the lock.
    NotHolder(QueueView),
    /// The ticket is neither holding nor waiting on this lock (never was, expired, or dropped).
    TicketUnknown,
    /// No lock of that name exists (for operations that do not create one).
    LockUnknown,
    /// The permit count was changed.
    LimitSet {
        /// The new permit count.
        limit: u32,
    },
    /// The permit count cannot go below the permits held now.
    LimitInUse {
        /// Permits in use.
        used: u32,
    },
    /// A data key was stored.
    DataWritten {
        /// The key did not exist before.
        created: bool,
    },
    /// A data key was removed.
    DataDeleted {
        /// The key existed.
        existed: bool,
    },
    /// Every data key of a lock was removed, and the lock with them.
    DataCleared {
        /// How many keys there were.
        keys: u32,
    },
    /// The lock has holders or waiters; nothing changed.
    LockBusy {
        /// Holders.
        holders: u32,
        /// Waiters.
        waiters: u32,
    },
    /// The input is malformed or out of range; nothing changed.
    Rejected(CoreError),
}

/// Why a waiter left the queue without asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Not watched and not seen for `waiter_ttl_ms`.
    Absent,
    /// Its weight exceeds the lock's lowered permit count.
    LimitLowered,
}

/// Which lock event a callback reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackEvent {
    /// A waiter was admitted.
    Acquired,
    /// A lease ended without release.
    Expired,
}

/// Something that happened to a party other than the caller, for the shell to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A waiter was admitted. With `claim_window`, it was not connected and must show up
    /// before `expires_at_ms` (now + `claim_ms`) or the grant lapses.
    Granted {
        /// The lock.
        lock: LockName,
        /// The new lease.
        lease: LeaseView,
    },
    /// A watched FIFO waiter moved up.
    Moved {
        /// The lock.
        lock: LockName,
        /// The waiter.
        ticket: Ticket,
        /// Its new 1-based position.
        position: u32,
        /// Waiters in the queue.
        queue_length: u32,
    },
    /// A lease ended because it was not renewed (or, `unclaimed`, not claimed) in time.
    Expired {
        /// The lock.
        lock: LockName,
        /// The holder's ticket.
        ticket: Ticket,
        /// Its fencing token.
        fence: u64,
        /// The admitted waiter never showed up.
        unclaimed: bool,
    },
    /// A lease was released by its holder.
    Released {
        /// The lock.
        lock: LockName,
        /// The holder's ticket.
        ticket: Ticket,
        /// Its fencing token.
        fence: u64,
    },
    /// A waiter was removed from the queue.
    Dropped {
        /// The lock.
        lock: LockName,
        /// The waiter.
        ticket: Ticket,
        /// Why.
        reason: DropReason,
    },
    /// A webhook must be called (the outbox takes it from here).
    CallbackDue {
        /// Where to.
        url: CallbackUrl,
        /// What happened.
        event: CallbackEvent,
        /// The lock.
        lock: LockName,
        /// The ticket concerned.
        ticket: Ticket,
        /// The lease's fencing token.
        fence: u64,
        /// When it happened.
        at_ms: u64,
    },
}

impl Output {
    /// The lock this output concerns.
    pub fn lock(&self) -> &LockName {
        match self {
            Output::Granted { lock, .. }
            | Output::Moved { lock, .. }
            | Output::Expired { lock, .. }
            | Output::Released { lock, .. }
            | Output::Dropped { lock, .. }
            | Output::CallbackDue { lock, .. } => lock,
        }
    }
}
