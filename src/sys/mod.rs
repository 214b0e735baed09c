//! The system layer: the only module allowed to use `unsafe`, and the thin wrappers over the
//! kernel that the process shells need (fd passing, child processes, signals, sd_notify,
//! clocks, entropy, heap trimming, interface addresses, volatile reads of the build stamp,
//! a process's memory and CPU time from `/proc`).
//! Each unsafe block carries a `SAFETY:` comment. Nothing here knows about locks or HTTP.

pub mod clock;
pub mod entropy;
pub mod fdpass;
pub mod interfaces;
pub mod memory;
pub mod notify;
pub mod process;
pub mod procstat;
pub mod signals;
pub mod volatile;
