//! Signals as mio events: each process registers the signals it handles, and the handler
//! only writes to a self-pipe (signal-hook) that wakes the loop. Everything else happens in
//! the loop, outside signal context.

use std::io;

pub use nix::sys::signal::Signal;
use signal_hook_mio::v1_0::Signals;

/// Signals delivered through the event loop.
pub struct SignalSource {
    signals: Signals,
}

impl SignalSource {
    /// Starts catching `signals`.
    pub fn new(signals: &[Signal]) -> io::Result<Self> {
        let raw: Vec<i32> = signals.iter().map(|s| *s as i32).collect();
        Ok(Self { signals: Signals::new(raw)? })
    }

    /// The mio source to register for readability.
    pub fn source(&mut self) -> &mut Signals {
        &mut self.signals
    }

    /// Signals that arrived since the last call (each at most once per call).
    pub fn pending(&mut self) -> Vec<Signal> {
        self.signals.pending().filter_map(|s| Signal::try_from(s).ok()).collect()
    }
}

/// Ignores `signal` in this process (children ignore the terminal's SIGINT and SIGHUP: the
/// master decides what happens to them).
pub fn ignore(signal: Signal) {
    // SAFETY: installing SIG_IGN runs no code in signal context and has no preconditions.
    unsafe {
        let _ = nix::sys::signal::signal(signal, nix::sys::signal::SigHandler::SigIgn);
    }
}
