//! What every child process does before its loop: name itself, make sure the master still
//! lives, take the descriptors the master placed at fixed numbers, read the first frame and
//! apply the same pure configuration loader as the master.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use mio::Token;

use super::channel::{Channel, ChannelError};
use crate::config::Config;
use crate::ipc::message::{FdRecord, Start, ToChild, ToMaster};
use crate::sys::fdpass;
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
    // The terminal's Ctrl-C, quit key and hang-up reach the whole process group; the master
    // decides what happens to its children. SIGUSR1 and SIGUSR2 would kill by default.
    for s in [Signal::SIGINT, Signal::SIGQUIT, Signal::SIGHUP, Signal::SIGUSR1, Signal::SIGUSR2] {
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
    let config = super::key_files::load(start.config_text.as_deref(), &super::environment()).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        format!("the configuration the master sent is invalid: {}", list.join("; "))
    })?;
    super::logging::init(name, &config.server);
    Ok(Boot { control, fds, listeners, start, config })
}

/// Reads every message waiting on the control channel. `Err(code)` means the master is gone
/// (or the channel broke) and the child must exit with `code`; the reason is logged. A ping
/// is answered here (the answer leaves with the loop's next flush of the channel): every
/// child whose loop runs answers its master's pings.
pub fn read_control(control: &mut Channel) -> Result<Vec<ToChild>, i32> {
    let mut messages = Vec::new();
    let mut broken = control.fill().err();
    while broken.is_none() {
        match control.recv::<ToChild>() {
            Ok(Some(ToChild::Ping { n })) => broken = control.send(&ToMaster::Pong { n }).err(),
            Ok(Some(m)) => messages.push(m),
            Ok(None) => return Ok(messages),
            Err(e) => broken = Some(e),
        }
    }
    match broken {
        Some(ChannelError::Closed) => log::warn!("the master is gone; exiting"),
        Some(e) => log::error!("control channel failed: {e}; exiting"),
        None => {}
    }
    Err(1)
}

/// Reads every fd record waiting on the fd channel, with its descriptor. Malformed records
/// are logged and skipped (their descriptors closed).
pub fn read_records(fds: BorrowedFd<'_>) -> Vec<(FdRecord, OwnedFd)> {
    let mut out = Vec::new();
    loop {
        let record = match fdpass::recv(fds) {
            Ok(Some(record)) => record,
            Ok(None) => return out,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return out,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("fd channel: {e}");
                return out;
            }
        };
        match serde_json::from_slice::<FdRecord>(&record.meta) {
            Ok(meta) => match record.fds.into_iter().next() {
                Some(fd) => out.push((meta, fd)),
                None => log::error!("fd record {meta:?} came without a descriptor"),
            },
            Err(e) => log::error!("bad fd record from the master: {e}"),
        }
    }
}
