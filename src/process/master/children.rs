//! The master's children as processes: starting one (its control channel, its descriptor
//! channel, its listeners in reuseport mode) and handing a worker or the courier a channel
//! to the keeper over `SCM_RIGHTS`. Which child to start and when is the lifecycle machine's
//! call (`core::lifecycle`); this file only carries it out.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use mio::{Registry, Token};

use super::listen::Listeners;
use crate::core::lifecycle::{Generation, Role};
use crate::ipc::message::{FdRecord, Start, ToChild};
use crate::process::channel::Channel;
use crate::sys::fdpass;
use crate::sys::process;
use crate::sys::signals::Signal;

/// Tokens of the children's control channels start here (plus the generation).
pub const CHILD_BASE: usize = 1 << 20;

/// One running child.
pub struct Proc {
    /// Its pid.
    pub pid: i32,
    /// What it does.
    pub role: Role,
    /// Its control channel (`None` once broken).
    pub control: Option<Channel>,
    /// The socket descriptors are passed over.
    pub fds: OwnedFd,
    /// fd-passing: connections handed to it and not reported closed.
    pub open_connections: u32,
}

/// Starts a child of `role` as `generation`, with its `Start` message queued.
pub fn start(
    role: Role,
    generation: Generation,
    listeners: &Listeners,
    config_text: Option<String>,
    registry: &Registry,
) -> io::Result<Proc> {
    let (control_master, control_child) = fdpass::stream_pair()?;
    let (fds_master, fds_child) = fdpass::seqpacket_pair()?;
    let mut inherit = vec![control_child.as_fd(), fds_child.as_fd()];
    let (name, args, slot) = match role {
        Role::Keeper => ("lh-keeper".to_string(), vec!["keeper".to_string()], 0),
        Role::Worker(slot) => (format!("lh-worker-{slot}"), vec!["worker".to_string(), slot.to_string()], slot),
        Role::Courier => ("lh-courier".to_string(), vec!["courier".to_string()], 0),
    };
    if let (Role::Worker(slot), Listeners::PerSlot(per_slot)) = (role, listeners) {
        inherit.extend(per_slot.get(slot as usize).into_iter().flatten().map(AsFd::as_fd));
    }
    let listener_count = (inherit.len() - 2) as u32;
    let mut argv = vec!["child".to_string()];
    argv.extend(args);
    argv.push(process::pid().to_string());
    let pid = process::spawn(&name, &argv, &inherit)?;
    drop(inherit);
    let start = Start { config_text, slot, generation, listeners: listener_count };
    let control = Channel::new(control_master, Token(CHILD_BASE + generation as usize)).and_then(|mut c| {
        c.register(registry)?;
        c.send(&ToChild::Start(start)).map_err(io::Error::other)?;
        let _ = c.flush();
        Ok(c)
    });
    let control = control.inspect_err(|_| {
        // A child we cannot talk to is of no use: do not leave it waiting.
        process::kill(pid, Signal::SIGKILL);
    })?;
    Ok(Proc { pid, role, control: Some(control), fds: fds_master, open_connections: 0 })
}

/// Gives `to` (a worker or the courier) a fresh channel to `keeper`: one end to each.
pub fn give_keeper_channel(to: &Proc, keeper: &Proc, keeper_generation: Generation) -> io::Result<()> {
    let (worker_end, keeper_end) = fdpass::stream_pair()?;
    let to_worker =
        serde_json::to_vec(&FdRecord::Keeper { generation: keeper_generation }).map_err(io::Error::other)?;
    let to_keeper = match to.role {
        Role::Worker(slot) => serde_json::to_vec(&FdRecord::Worker { slot }),
        _ => serde_json::to_vec(&FdRecord::Courier),
    }
    .map_err(io::Error::other)?;
    fdpass::send(to.fds.as_fd(), &to_worker, &[worker_end.as_fd()])?;
    fdpass::send(keeper.fds.as_fd(), &to_keeper, &[keeper_end.as_fd()])
}
