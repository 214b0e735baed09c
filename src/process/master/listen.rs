//! The master's listening sockets: bound at start (refusing a port another process serves),
//! or taken over from an old master in a binary upgrade, and let go of at a stop.
//!
//! - `reuseport`: one `SO_REUSEPORT` socket per worker slot and address, kept open for the
//!   master's whole life, so a replaced worker inherits the same socket and nothing queued
//!   in the kernel is lost.
//! - `fd-passing`: one socket per address, accepted by the master.
//!
//! In an upgrade the new master receives the old one's sockets in the old one's layout
//! (slots × addresses: `server.listen`, then `tls.listen`), which is why an upgrade keeps
//! `server.listen`, `tls.listen`, `server.dispatch` and `server.workers` (docs/lifecycle.md).

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use mio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, Dispatch};

/// Kernel accept queue of each listening socket (capped by `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 4096;

/// The master's listening sockets.
pub enum Listeners {
    /// `[slot][address]`, kept open for the master's whole life.
    PerSlot(Vec<Vec<std::net::TcpListener>>),
    /// One per address, accepted by the master.
    Shared(Vec<TcpListener>),
}

impl Listeners {
    /// The dispatch mode they serve.
    fn dispatch(&self) -> Dispatch {
        match self {
            Listeners::PerSlot(_) => Dispatch::Reuseport,
            Listeners::Shared(_) => Dispatch::FdPassing,
        }
    }

    /// Every socket, in the layout a new master expects: `[slot][address]` flattened, or
    /// `[address]`.
    pub fn all(&self) -> Vec<BorrowedFd<'_>> {
        match self {
            Listeners::PerSlot(per_slot) => per_slot.iter().flatten().map(AsFd::as_fd).collect(),
            Listeners::Shared(shared) => shared.iter().map(AsFd::as_fd).collect(),
        }
    }

    /// The layout as a new master reads it from `LEASEHOLD_UPGRADE`: `dispatch,slots,addresses`.
    pub fn layout(&self, slots: usize, addresses: usize) -> String {
        let dispatch = match self.dispatch() {
            Dispatch::Reuseport => "reuseport",
            Dispatch::FdPassing => "fd-passing",
        };
        format!("{dispatch},{slots},{addresses}")
    }

    /// Stops taking connections. With `shutdown`, for every process that shares the sockets
    /// (a stop: new connections are refused at once instead of waiting in a queue nobody
    /// will serve); without, only this process closes its copies (a new master has them).
    pub fn let_go(&mut self, registry: &mio::Registry, shutdown: bool) {
        match self {
            Listeners::Shared(shared) => {
                for l in shared.iter_mut() {
                    let _ = registry.deregister(l);
                    if shutdown {
                        let _ = socket2::SockRef::from(&*l).shutdown(Shutdown::Read);
                    }
                }
            }
            Listeners::PerSlot(per_slot) => {
                if shutdown {
                    for l in per_slot.iter().flatten() {
                        let _ = socket2::SockRef::from(l).shutdown(Shutdown::Read);
                    }
                }
            }
        }
        *self = Listeners::PerSlot(Vec::new());
    }
}

fn bind(addr: SocketAddr, reuseport: bool) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Fails if some other socket already listens on `addr`. `SO_REUSEPORT` would otherwise let
/// a second server (another leasehold with another data directory, say) join the same port
/// silently, and the kernel would split clients between two lease tables: two holders of
/// one mutex. A plain bind is refused by any listener there, whatever its options. (Two
/// servers starting in the same instant can still both pass; the window is this function.)
fn check_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    probe.bind(&addr.into()).map_err(|e| match e.kind() {
        io::ErrorKind::AddrInUse => io::Error::new(
            e.kind(),
            "the address is already in use by another process (is another server running on it?)",
        ),
        _ => e,
    })
}

/// Binds every listener; returns them with the addresses actually bound (port 0 resolved).
pub fn bind_all(config: &Config, slots: usize) -> Result<(Listeners, Vec<SocketAddr>), String> {
    let fail = |addr: &SocketAddr, e: io::Error| format!("cannot listen on {addr}: {e}");
    let mut bound = Vec::new();
    match config.server.dispatch {
        Dispatch::Reuseport => {
            let mut per_slot: Vec<Vec<std::net::TcpListener>> = (0..slots).map(|_| Vec::new()).collect();
            for addr in &config.listen_addresses() {
                check_port_free(*addr).map_err(|e| fail(addr, e))?;
                let first = bind(*addr, true).map_err(|e| fail(addr, e))?;
                let actual = first.local_addr().map_err(|e| fail(addr, e))?;
                per_slot[0].push(first);
                for listeners in per_slot.iter_mut().skip(1) {
                    listeners.push(bind(actual, true).map_err(|e| fail(&actual, e))?);
                }
                bound.push(actual);
            }
            Ok((Listeners::PerSlot(per_slot), bound))
        }
        Dispatch::FdPassing => {
            let mut shared = Vec::new();
            for addr in &config.listen_addresses() {
                let l = bind(*addr, false).map_err(|e| fail(addr, e))?;
                bound.push(l.local_addr().map_err(|e| fail(addr, e))?);
                shared.push(TcpListener::from_std(l));
            }
            Ok((Listeners::Shared(shared), bound))
        }
    }
}

/// Takes over an old master's sockets, in the layout it described (`dispatch,slots,addresses`),
/// checking that this configuration asks for the same.
pub fn inherit(
    config: &Config,
    slots: usize,
    layout: &str,
    fds: Vec<OwnedFd>,
) -> Result<(Listeners, Vec<SocketAddr>), String> {
    let parts: Vec<&str> = layout.split(',').collect();
    let [dispatch, old_slots, addresses] = parts[..] else {
        return Err(format!("the old master described its listeners as {layout:?}, which this build does not read"));
    };
    let old_slots: usize = old_slots.parse().map_err(|_| format!("bad slot count in {layout:?}"))?;
    let addresses: usize = addresses.parse().map_err(|_| format!("bad address count in {layout:?}"))?;
    let wanted = match config.server.dispatch {
        Dispatch::Reuseport => "reuseport",
        Dispatch::FdPassing => "fd-passing",
    };
    if dispatch != wanted || old_slots != slots || addresses != config.listen_addresses().len() {
        return Err(format!(
            "an upgrade keeps server.listen, tls.listen, server.dispatch and server.workers (the running service has \
             {addresses} address(es), {dispatch}, {old_slots} workers; this configuration asks for {}, {wanted}, \
             {slots}): restart the service instead",
            config.listen_addresses().len()
        ));
    }
    let per_slot_count = if dispatch == "reuseport" { slots } else { 1 };
    if fds.len() != per_slot_count * addresses {
        return Err(format!("the old master handed {} sockets, not {}", fds.len(), per_slot_count * addresses));
    }
    let mut sockets = fds.into_iter().map(|fd| {
        let l = std::net::TcpListener::from(fd);
        l.set_nonblocking(true).map(|()| l)
    });
    let mut next = || sockets.next().unwrap_or_else(|| Err(io::Error::other("missing socket")));
    let fail = |e: io::Error| format!("cannot use an inherited listener: {e}");
    if dispatch == "reuseport" {
        let mut per_slot = Vec::new();
        for _ in 0..slots {
            let mut row = Vec::new();
            for _ in 0..addresses {
                row.push(next().map_err(fail)?);
            }
            per_slot.push(row);
        }
        let bound = per_slot[0].iter().map(|l| l.local_addr()).collect::<io::Result<Vec<_>>>().map_err(fail)?;
        Ok((Listeners::PerSlot(per_slot), bound))
    } else {
        let mut shared = Vec::new();
        let mut bound = Vec::new();
        for _ in 0..addresses {
            let l = next().map_err(fail)?;
            bound.push(l.local_addr().map_err(fail)?);
            shared.push(TcpListener::from_std(l));
        }
        Ok((Listeners::Shared(shared), bound))
    }
}
