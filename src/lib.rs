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
//!
//! Layering: [`core`] and [`config`] are pure (no I/O, clock, randomness or environment);
//! the process shells depend on them, never the other way round. Unsafe code is allowed
//! only in the system module, each block with a `SAFETY:` comment.

#![deny(unsafe_code)]
#![warn(missing_docs)]

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
