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
//! | keeper | worker → keeper | `request` | lock operation `op` with request id `id` (many in flight) |
//! | keeper | keeper → worker | `reply` | the answer to request `id` |
//!
//! Descriptors a child inherits at exec: 3 = control channel, 4 = fd channel, 5… = its
//! listening sockets (reuseport mode). Unknown messages and malformed frames close the
//! channel that carried them, with a log line; they never crash the reader.

use serde::{Deserialize, Serialize};

use crate::core::lock::{LeaseView, QueueKind, QueueMode, QueueView, Reply};
use crate::core::names::{LockName, Owner, Ticket};
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
    /// The `/metrics` page a worker asked for.
    MetricsText {
        /// The worker's request id.
        id: u64,
        /// Prometheus text.
        text: String,
    },
}

/// Child → master, on the control channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ToMaster {
    /// Started and serving.
    Ready,
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
        /// The counters.
        snapshot: KeeperSnapshot,
    },
}

/// The metadata of one fd record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FdRecord {
    /// A client connection (fd-passing mode).
    Client,
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
        /// Lease TTL.
        ttl_ms: u64,
        /// Permit count.
        limit: u32,
        /// Permits wanted.
        weight: u32,
        /// Queue discipline.
        queue: QueueMode,
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
}

/// Worker → keeper.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ToKeeper {
    /// Apply `op`; answer with `reply` carrying the same `id`.
    Request {
        /// Request id, unique per channel.
        id: u64,
        /// The operation.
        op: LockOp,
    },
}

/// The keeper's answer to a lock operation: the core's [`Reply`] on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum LockReply {
    /// Holding a lease.
    Held(LeaseView),
    /// Waiting in the queue.
    Queued(QueueView),
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
    },
    /// A waiter left.
    Left,
    /// The ticket waits; it does not hold.
    NotHolder(QueueView),
    /// The ticket is not on this lock.
    TicketUnknown,
    /// No such lock.
    LockUnknown,
    /// Refused input.
    Rejected {
        /// Why.
        message: String,
    },
    /// The keeper could not serve the request (it says why).
    Failed {
        /// Why.
        message: String,
    },
}

impl From<Reply> for LockReply {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Held(lease) => Self::Held(lease),
            Reply::Queued(q) => Self::Queued(q),
            Reply::Unavailable { used, limit, queue_length } => Self::Unavailable { used, limit, queue_length },
            Reply::LimitMismatch { limit } => Self::LimitMismatch { limit },
            Reply::QueueMismatch { queue } => Self::QueueMismatch { queue },
            Reply::QueueFull { max_waiters } => Self::QueueFull { max_waiters },
            Reply::TableFull { max_locks } => Self::TableFull { max_locks },
            Reply::Released { fence } => Self::Released { fence },
            Reply::Left => Self::Left,
            Reply::NotHolder(q) => Self::NotHolder(q),
            Reply::TicketUnknown => Self::TicketUnknown,
            Reply::LockUnknown => Self::LockUnknown,
            Reply::Rejected(e) => Self::Rejected { message: e.to_string() },
            // Admin and data replies do not travel yet; they arrive with their routes.
            Reply::LimitSet { .. }
            | Reply::LimitInUse { .. }
            | Reply::DataWritten { .. }
            | Reply::DataDeleted { .. } => {
                Self::Failed { message: "reply of an operation the worker did not send".into() }
            }
        }
    }
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
                ttl_ms: 1000,
                limit: 3,
                weight: 2,
                queue: QueueMode::Lottery,
            },
        });
        round_trip(&FromKeeper::Reply {
            id: 77,
            reply: LockReply::Held(LeaseView {
                ticket,
                fence: 12,
                owner: None,
                weight: 1,
                expires_at_ms: 5,
                claimed: true,
            }),
        });
        round_trip(&FromKeeper::Reply { id: 1, reply: LockReply::Rejected { message: "ttl_ms \"x\"\n".into() } });
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
