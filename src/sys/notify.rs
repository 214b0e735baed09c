//! systemd's notification protocol (`sd_notify(3)`), with std only: datagrams to the socket
//! named by `NOTIFY_SOCKET` (a path, or `@name` for the abstract namespace). Without that
//! variable every call is a no-op, so the same binary runs under systemd and by hand.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Where `READY=1` and friends go.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog_usec: Option<u64>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` from the environment.
    pub fn from_env() -> io::Result<Self> {
        let target = match std::env::var_os("NOTIFY_SOCKET") {
            None => None,
            Some(path) => {
                let path = path.to_string_lossy().to_string();
                let addr = match path.strip_prefix('@') {
                    Some(name) => SocketAddr::from_abstract_name(name.as_bytes())?,
                    None => SocketAddr::from_pathname(&path)?,
                };
                Some((UnixDatagram::unbound()?, addr))
            }
        };
        let for_us = std::env::var("WATCHDOG_PID").map_or(true, |p| p.trim() == std::process::id().to_string());
        let watchdog_usec =
            std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.trim().parse::<u64>().ok()).filter(|&u| u > 0 && for_us);
        Ok(Self { target, watchdog_usec })
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self { target: None, watchdog_usec: None }
    }

    /// How often systemd wants `WATCHDOG=1`, if it does.
    pub fn watchdog_usec(&self) -> Option<u64> {
        self.watchdog_usec
    }

    /// Sends one notification (newline-separated `KEY=VALUE` lines). Failures are returned
    /// for the caller to log; they never stop the service.
    pub fn notify(&self, state: &str) -> io::Result<()> {
        match &self.target {
            None => Ok(()),
            Some((sock, addr)) => sock.send_to_addr(state.as_bytes(), addr).map(|_| ()),
        }
    }
}
