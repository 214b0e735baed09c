//! What every child process does before its loop: name itself, make sure the master still
//! lives, take the descriptors the master placed at fixed numbers, read the first frame and
//! apply the same pure configuration loader as the master.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use mio::Token;

use super::channel::Channel;
use crate::config::Config;
use crate::ipc::message::{Start, ToChild};
use crate::sys::process;
use crate::sys::signals::{self, Signal};

/// How long a child waits for its first frame.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything a child starts with.
pub struct Boot {
    /// The control channel to the master (descriptor 3).
    pub control: Channel,
    /// The fd channel from the master (descriptor 4).
    pub fds: OwnedFd,
    /// Listening sockets (descriptors 5…).
    pub listeners: Vec<OwnedFd>,
    /// The first frame.
    pub start: Start,
    /// The configuration.
    pub config: Config,
}

/// Boots a child named `name` whose master is `master_pid`. Errors are printed by the caller.
pub fn boot(name: &str, master_pid: i32, control_token: Token) -> Result<Boot, String> {
    process::set_name(name);
    // The terminal's Ctrl-C and hang-up reach the whole process group; the master decides
    // what happens to its children. SIGUSR1 would kill by default.
    for s in [Signal::SIGINT, Signal::SIGHUP, Signal::SIGUSR1] {
        signals::ignore(s);
    }
    process::check_parent(master_pid).map_err(|e| e.to_string())?;
    let control = process::take_inherited(0).map_err(|e| e.to_string())?;
    let fds = process::take_inherited(1).map_err(|e| e.to_string())?;
    let mut control = Channel::new(UnixStream::from(control), control_token).map_err(|e| e.to_string())?;
    let start = match control.recv_blocking::<ToChild>(START_TIMEOUT) {
        Ok(ToChild::Start(start)) => start,
        Ok(other) => return Err(format!("expected a start frame first, got {other:?}")),
        Err(e) => return Err(format!("no start frame from the master: {e}")),
    };
    let mut listeners = Vec::new();
    for i in 0..start.listeners as usize {
        listeners.push(process::take_inherited(2 + i).map_err(|e| e.to_string())?);
    }
    let config = Config::load(start.config_text.as_deref(), &super::environment()).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        format!("the configuration the master sent is invalid: {}", list.join("; "))
    })?;
    super::logging::init(name, &config.server.log_level);
    Ok(Boot { control, fds, listeners, start, config })
}
