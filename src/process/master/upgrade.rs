//! The processes' side of a binary upgrade (`SIGUSR2`, docs/lifecycle.md): the old master
//! starts the new binary from the path it was itself started from, with the same arguments
//! and environment, handing it a channel (descriptor 3) and its listening sockets (4 on), and
//! naming their layout in `LEASEHOLD_UPGRADE`; the new master finds them there. The two then
//! speak [`Upgrade`] frames over the channel; the decisions are the lifecycle machine's.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use mio::{Registry, Token};

use super::listen::Listeners;
use crate::ipc::message::Upgrade;
use crate::process::channel::Channel;
use crate::sys::{fdpass, process};

/// Names the inherited listeners' layout in a new master's environment.
pub const VARIABLE: &str = "LEASEHOLD_UPGRADE";
/// Token of the channel between the two masters.
pub const TOKEN: Token = Token(1);

/// How this master was started, so that an upgrade can start the new build the same way.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The program's path as named at start (a new build is installed by renaming a file
    /// over it).
    pub program: PathBuf,
    /// `argv`, `argv[0]` included.
    pub argv: Vec<OsString>,
}

impl Invocation {
    /// This process's own.
    pub fn current() -> Self {
        let argv: Vec<OsString> = std::env::args_os().collect();
        let program =
            std::env::current_exe().unwrap_or_else(|_| PathBuf::from(argv.first().cloned().unwrap_or_default()));
        Self { program, argv }
    }
}

/// The link between the two masters of an upgrade.
pub struct Link {
    channel: Option<Channel>,
}

impl Link {
    fn new(stream: UnixStream, registry: &Registry) -> io::Result<Self> {
        let mut channel = Channel::new(stream, TOKEN)?;
        channel.register(registry)?;
        Ok(Self { channel: Some(channel) })
    }

    /// Sends a message (a broken link shows as the other side's exit).
    pub fn send(&mut self, message: Upgrade) {
        if let Some(c) = self.channel.as_mut() {
            if c.send(&message).is_ok() {
                let _ = c.flush();
            }
        }
    }

    /// Flushes what is queued.
    pub fn flush(&mut self) {
        if let Some(c) = self.channel.as_mut() {
            let _ = c.flush();
        }
    }

    /// Reads what arrived; `Err` once the link is closed or broken (then it is dropped).
    pub fn receive(&mut self, registry: &Registry) -> Result<Vec<Upgrade>, String> {
        let Some(c) = self.channel.as_mut() else { return Err("the upgrade link is closed".to_string()) };
        let mut messages = Vec::new();
        let mut broken = c.fill().err().map(|e| e.to_string());
        while broken.is_none() {
            match c.recv::<Upgrade>() {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => break,
                Err(e) => broken = Some(e.to_string()),
            }
        }
        match broken {
            None => Ok(messages),
            Some(e) => {
                if let Some(mut c) = self.channel.take() {
                    c.deregister(registry);
                }
                if messages.is_empty() {
                    Err(format!("the upgrade link closed ({e})"))
                } else {
                    Ok(messages)
                }
            }
        }
    }
}

/// Starts the new binary as a new master; returns its pid and the link to it.
pub fn start_successor(
    invocation: &Invocation,
    listeners: &Listeners,
    layout: String,
    registry: &Registry,
) -> io::Result<(i32, Link)> {
    let (ours, theirs) = fdpass::stream_pair()?;
    let mut fds = vec![theirs.as_fd()];
    fds.extend(listeners.all());
    let arg0 = invocation.argv.first().cloned().unwrap_or_else(|| invocation.program.clone().into_os_string());
    let args = invocation.argv.get(1..).unwrap_or_default();
    let pid = process::spawn_successor(&invocation.program, &arg0, args, &[(VARIABLE, layout)], &fds)?;
    drop(fds);
    drop(theirs);
    Ok((pid, Link::new(ours, registry)?))
}

/// What an old master hands a new one: the listeners' layout, the link, the sockets.
pub type Inheritance = (String, Link, Vec<OwnedFd>);

/// In a master started by an upgrade: the layout, the link to the old master and the
/// inherited sockets. `None` in a master started any other way.
pub fn inherited(registry: &Registry) -> Option<Result<Inheritance, String>> {
    let layout = std::env::var(VARIABLE).ok()?;
    // Not for this master's children, nor for a later upgrade's new master.
    std::env::remove_var(VARIABLE);
    Some(take(layout, registry))
}

fn take(layout: String, registry: &Registry) -> Result<Inheritance, String> {
    let fail = |e: io::Error| format!("cannot take what the old master handed over: {e}");
    let parts: Vec<usize> = layout.split(',').skip(1).filter_map(|p| p.parse().ok()).collect();
    let [slots, addresses] = parts[..] else { return Err(format!("{VARIABLE}={layout:?} is not a layout")) };
    let per_address = if layout.starts_with("reuseport,") { slots } else { 1 };
    let channel = process::take_inherited(0).map_err(fail)?;
    let mut fds = Vec::new();
    for i in 0..per_address * addresses {
        fds.push(process::take_inherited(1 + i).map_err(fail)?);
    }
    let link = Link::new(UnixStream::from(channel), registry).map_err(fail)?;
    Ok((layout, link, fds))
}
