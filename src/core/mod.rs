//! The pure core: validated names, deterministic draws and the lease table.
//!
//! Nothing under `core` touches a socket, file, clock, signal, environment variable or random
//! source; time and entropy arrive as arguments and effects leave as data. This is what the
//! model-based tests, the simulation and the fuzzers exercise.

pub mod backoff;
pub mod balance;
pub mod duration;
pub mod error;
pub mod lifecycle;
pub mod lock;
pub mod names;
pub mod outbox;
pub mod rand;
pub mod seal;
pub mod signature;
pub mod supervise;
pub mod target;

pub use error::CoreError;
