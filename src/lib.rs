//! leasehold: fast, fair, durable locks and semaphores over HTTP.
//!
//! ```text
//!                  systemd (Type=notify)
//!                          │ SIGTERM / SIGUSR1 / SIGHUP
//!                      ┌───┴────┐
//!                      │ master │ binds listeners, forks and supervises children
//!                      └┬──┬──┬─┘
//!          ┌────────────┘  │  └─────────────┐
//!     ┌────┴─────┐   ┌─────┴────┐     ┌─────┴─────┐
//!     │ worker 1 │ … │ worker N │◄───►│  keeper   │ owns the lease table and journal
//!     └──────────┘   └──────────┘ IPC └─────┬─────┘
//!                                     ┌─────┴─────┐
//!                                     │  courier  │ delivers the outbox
//!                                     └───────────┘
//! ```
//!
//! Life of one request: a worker parses it, sends the lock operation to the keeper over a
//! Unix socket as a length-prefixed JSON frame, and answers when the keeper's reply comes
//! back. The keeper applies the operation to the [`core::lock::LockTable`] with the current
//! time and fresh entropy, journals the change, and pushes any events (an admitted waiter,
//! an expired lease) to the workers that hold a waiting request for them.
//! docs/architecture.md follows a request step by step (an acquire, a long-poll, an event
//! stream, a cluster follower) and says where each kind of logic lives.
//!
//! Cluster mode (docs/cluster.md): several nodes share one state through etcd. One
//! keeper leads and commits each loop turn to a log in etcd before its answers leave; the
//! others replay the log through the same pure service, and forward their workers' requests
//! to the leader over the peer link. The rules of who leads are pure
//! ([`service::cluster`]); the etcd client is [`journal::etcd`].
//!
//! Layering: [`core`] and [`config`] are pure (no I/O, clock, randomness or environment);
//! the process shells depend on them, never the other way round. Unsafe code is allowed
//! only in the system module, each block with a `SAFETY:` comment.

#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod config;
pub mod core;
pub mod http;
pub mod ipc;
pub mod journal;
pub mod metrics;
pub mod process;
pub mod service;
#[allow(unsafe_code)]
pub mod sys;
pub mod version;
