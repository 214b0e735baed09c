//! The process shells: thin loops that own sockets, clocks, signals and children, feed
//! what happens into the pure modules, and carry out what those return
//! (docs/architecture.md, "The pure core and the process shells").
//!
//! - [`master`]: binds listeners, starts and supervises the keeper and the workers, passes
//!   connections in fd-passing mode, runs drain and reload, talks to systemd.
//! - [`worker`]: serves HTTP on its connections and forwards lock operations to the keeper.
//! - [`keeper`]: the only owner of the lease table.
//! - [`child`]: what every child does first (descriptors, first frame, configuration).
//! - [`tls`]: the peer link's TLS files, read and checked, and its rustls configurations.
//! - [`key_files`]: the configuration as every process loads it, API key files included.
//! - [`logging`]: the log line format (text or JSON; journald priorities).

pub mod channel;
pub mod child;
pub mod courier;
pub mod delivery;
pub mod fetch;
pub mod keeper;
pub mod key_files;
pub mod link;
pub mod logging;
pub mod master;
pub mod tls;
pub mod worker;

/// The process environment as name/value pairs (variables that are not UTF-8 are skipped;
/// none of ours can be).
pub fn environment() -> Vec<(String, String)> {
    std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))).collect()
}

/// A process's figures for `/metrics`, from what the kernel says of it.
pub fn figures(usage: crate::sys::procstat::Usage) -> crate::metrics::ProcessStats {
    crate::metrics::ProcessStats {
        resident_bytes: usage.resident_bytes,
        cpu_ms: usage.cpu_ms,
        start_time_ms: usage.start_time_ms,
    }
}

/// This process's figures, read when it makes its metrics snapshot (`None` without `/proc`).
pub fn own_figures() -> Option<crate::metrics::ProcessStats> {
    crate::sys::procstat::own().map(figures)
}
