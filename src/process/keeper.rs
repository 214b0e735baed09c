//! The keeper process: the only owner of the lease table. One mio loop reads lock
//! operations from every worker channel, applies them to the pure [`LockTable`] with the
//! wall-clock time and fresh OS entropy, and answers each on the channel it came from; all
//! answers of one loop turn leave in one write per channel. Lease expiry runs on the
//! table's own next deadline.
//!
//! At start it takes an exclusive lock on its data directory (`keeper.lock`): a second
//! server pointed at the same directory fails to start with a clear error.
//!
//! Worker channels arrive from the master over the fd channel (one per worker, also after
//! a keeper restart); a channel that sends a bad frame is closed and logged, and the worker
//! asks the master for a new one.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::channel::{Channel, ChannelError};
use super::child::{self, Boot};
use crate::config::Config;
use crate::core::lock::Moment;
use crate::ipc::message::{FdRecord, FromKeeper, LockReply, ToChild, ToKeeper, ToMaster};
use crate::metrics::KeeperSnapshot;
use crate::service::{Outbox, Service};
use crate::sys::clock::wall_ms;
use crate::sys::entropy::Entropy;
use crate::sys::signals::{Signal, SignalSource};

const SIGNALS: Token = Token(0);
const CONTROL: Token = Token(1);
const FDS: Token = Token(2);
const LINK_BASE: usize = 16;
/// Longest sleep when no lease is due (the loop also wakes on every message).
const MAX_SLEEP_MS: u64 = 1_000;

/// Runs the keeper; returns the process exit code.
pub fn run(master_pid: i32) -> i32 {
    let boot = match child::boot("lh-keeper", master_pid, CONTROL) {
        Ok(boot) => boot,
        Err(e) => {
            eprintln!("lh-keeper: {e}");
            return 1;
        }
    };
    match Keeper::new(boot).and_then(|mut k| k.serve()) {
        Ok(code) => code,
        Err(e) => {
            log::error!("keeper failed: {e}");
            1
        }
    }
}

/// Name of the lock file in the data directory.
pub const LOCK_FILE: &str = "keeper.lock";

/// Creates the data directory if needed (mode 0700) and takes its exclusive lock, so two
/// keepers can never share one directory. The lock lives as long as the returned file; the
/// kernel drops it when the keeper dies, however it dies.
fn lock_data_dir(dir: &Path) -> Result<Flock<File>, String> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("cannot create the data directory {}: {e}", dir.display()))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(format!(
                "the data directory {} is in use by another keeper (pid {}); each server needs its own data_dir",
                dir.display(),
                holder.trim()
            ));
        }
        Err((_, e)) => return Err(format!("cannot lock {}: {e}", path.display())),
    };
    // Say who holds it, for the message above.
    let _ = lock.set_len(0).and_then(|()| lock.write_all(format!("{}\n", std::process::id()).as_bytes()));
    Ok(lock)
}

struct Keeper {
    generation: u64,
    /// Held for the keeper's whole life.
    _data_dir_lock: Flock<File>,
    poll: Poll,
    signals: SignalSource,
    control: Channel,
    fds: OwnedFd,
    links: Vec<Option<Channel>>,
    service: Service,
    entropy: Entropy,
    /// Messages the service produced, each for its channel.
    outbox: Outbox,
}

impl Keeper {
    fn new(boot: Boot) -> io::Result<Self> {
        let Boot { mut control, fds, start, config, .. } = boot;
        let data_dir_lock = lock_data_dir(&config.server.data_dir).map_err(io::Error::other)?;
        let poll = Poll::new()?;
        let mut signals = SignalSource::new(&[Signal::SIGTERM])?;
        poll.registry().register(signals.source(), SIGNALS, Interest::READABLE)?;
        control.register(poll.registry())?;
        poll.registry().register(&mut SourceFd(&fds.as_raw_fd()), FDS, Interest::READABLE)?;
        let mut entropy = Entropy::new();
        let service = Service::new(config.locks.table.clone(), config.locks.max_wait_ms, entropy.next_u64()?);
        Ok(Self {
            generation: start.generation,
            _data_dir_lock: data_dir_lock,
            poll,
            signals,
            control,
            fds,
            links: Vec::new(),
            service,
            entropy,
            outbox: Vec::new(),
        })
    }

    fn serve(&mut self) -> io::Result<i32> {
        self.control.send(&ToMaster::Ready).map_err(io::Error::other)?;
        self.control.flush_blocking(Duration::from_secs(1));
        log::info!("keeper generation {} ready", self.generation);
        let mut events = Events::with_capacity(1024);
        loop {
            let now = wall_ms();
            let sleep_ms =
                self.service.next_deadline().map_or(MAX_SLEEP_MS, |d| d.saturating_sub(now).min(MAX_SLEEP_MS));
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(sleep_ms))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => {
                        if self.signals.pending().contains(&Signal::SIGTERM) {
                            log::info!("SIGTERM: exiting");
                            return Ok(0);
                        }
                    }
                    CONTROL => {
                        if let Some(code) = self.on_control() {
                            return Ok(code);
                        }
                    }
                    FDS => self.on_fd_records(),
                    Token(t) => self.on_link(t - LINK_BASE),
                }
            }
            let now = wall_ms();
            if self.service.next_deadline().is_some_and(|d| d <= now) {
                let at = Moment::new(now, self.entropy.next_u64()?);
                self.service.expire(at, &mut self.outbox);
                self.deliver();
            }
            for i in 0..self.links.len() {
                if let Some(Err(e)) = self.links[i].as_mut().map(Channel::flush) {
                    self.drop_link(i, &e);
                }
            }
            if let Err(e) = self.control.flush() {
                log::debug!("control channel: {e}");
            }
        }
    }

    fn on_control(&mut self) -> Option<i32> {
        let messages = match child::read_control(&mut self.control) {
            Ok(messages) => messages,
            Err(code) => return Some(code),
        };
        for message in messages {
            match message {
                ToChild::Stop => {
                    log::info!("stopping");
                    return Some(0);
                }
                ToChild::Reconfigure { config_text } => {
                    match Config::load(config_text.as_deref(), &super::environment()) {
                        Ok(config) => {
                            super::logging::set_level(&config.server.log_level);
                            self.service.reconfigure(config.locks.table, config.locks.max_wait_ms);
                            log::info!("new limits applied");
                        }
                        Err(problems) => {
                            log::error!("ignoring an invalid reconfiguration ({} problems)", problems.len())
                        }
                    }
                }
                ToChild::Collect { id } => {
                    let snapshot = self.snapshot();
                    let _ = self.control.send(&ToMaster::KeeperMetrics { id, snapshot });
                }
                other => log::warn!("ignoring an unexpected control message: {other:?}"),
            }
        }
        None
    }

    fn on_fd_records(&mut self) {
        for (meta, fd) in child::read_records(self.fds.as_fd()) {
            let FdRecord::Worker { slot } = meta else {
                log::error!("unexpected fd record for the keeper: {meta:?}");
                continue;
            };
            let index = self.links.iter().position(Option::is_none).unwrap_or_else(|| {
                self.links.push(None);
                self.links.len() - 1
            });
            let made = Channel::new(StdUnixStream::from(fd), Token(LINK_BASE + index)).and_then(|mut c| {
                c.register(self.poll.registry())?;
                Ok(c)
            });
            match made {
                Ok(mut link) => {
                    let _ = link.send(&FromKeeper::Hello { generation: self.generation });
                    self.links[index] = Some(link);
                    log::debug!("channel from worker {slot} open");
                }
                Err(e) => log::error!("channel from worker {slot} unusable: {e}"),
            }
        }
    }

    fn drop_link(&mut self, index: usize, why: &ChannelError) {
        if let Some(mut link) = self.links[index].take() {
            link.deregister(self.poll.registry());
            match why {
                ChannelError::Closed => log::debug!("a worker channel closed"),
                other => log::warn!("closing a worker channel: {other}"),
            }
            // Its waits and streams end as if their clients had gone.
            match self.entropy.next_u64() {
                Ok(entropy) => {
                    self.service.link_closed(index, Moment::new(wall_ms(), entropy), &mut self.outbox);
                    self.deliver();
                }
                Err(e) => log::error!("no entropy: {e}"),
            }
        }
    }

    /// Queues what the service produced on each message's channel.
    fn deliver(&mut self) {
        // Keep the buffer's capacity from message to message; a dropped link may add more.
        let mut outbox = std::mem::take(&mut self.outbox);
        while !outbox.is_empty() {
            for (index, message) in outbox.drain(..) {
                let Some(link) = self.links.get_mut(index).and_then(Option::as_mut) else { continue };
                if let Err(e) = link.send(&message) {
                    self.drop_link(index, &e);
                }
            }
            outbox.append(&mut self.outbox);
        }
        self.outbox = outbox;
    }

    fn on_link(&mut self, index: usize) {
        let Some(link) = self.links.get_mut(index).and_then(Option::as_mut) else { return };
        if let Err(e) = link.fill() {
            self.drop_link(index, &e);
            return;
        }
        loop {
            let Some(link) = self.links[index].as_mut() else { return };
            match link.recv::<ToKeeper>() {
                Ok(Some(message)) => {
                    let drawn = self.entropy.next_u64().and_then(|e| Ok((e, self.entropy.bytes16()?)));
                    let (entropy, fresh) = match drawn {
                        Ok(drawn) => drawn,
                        Err(e) => {
                            log::error!("no entropy: {e}");
                            self.fail(index, &message, &format!("no entropy: {e}"));
                            continue;
                        }
                    };
                    self.service.handle(index, message, Moment::new(wall_ms(), entropy), fresh, &mut self.outbox);
                    self.deliver();
                }
                Ok(None) => return,
                Err(e) => {
                    self.drop_link(index, &e);
                    return;
                }
            }
        }
    }

    /// Answers a request the keeper cannot serve.
    fn fail(&mut self, index: usize, message: &ToKeeper, why: &str) {
        if let ToKeeper::Request { id, .. } = message {
            let reply = LockReply::Failed { message: why.to_string() };
            self.outbox.push((index, FromKeeper::Reply { id: *id, reply }));
            self.deliver();
        }
    }

    fn snapshot(&self) -> KeeperSnapshot {
        let table = self.service.table().stats();
        let service = self.service.stats();
        KeeperSnapshot {
            locks: table.locks,
            leases: table.holders,
            waiters: table.waiters,
            next_fence: table.next_fence,
            ops_total: service.ops_total,
            waiting_requests: service.waiting_requests,
            event_streams: service.event_streams,
            resources: service.resources,
        }
    }
}
