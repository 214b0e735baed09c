//! The keeper process: the only owner of the state. One mio loop reads messages from every
//! worker channel, journals each one that may change state, applies it to the pure
//! [`Service`] with the wall-clock time and fresh OS entropy, and answers on the channel it
//! came from. Lease expiry runs on the service's own next deadline.
//!
//! - **Write-ahead, group commit.** The records of one loop turn are written with one
//!   `write` and (with `fsync = "always"`) made durable with one sync before any answer of
//!   that turn leaves. `interval` syncs every `fsync_interval_ms`; `never` leaves it to the
//!   kernel. Fence reservations are always synced before a fence past them is handed out, so
//!   fences only go up across any crash.
//! - **A journal that cannot be written** (disk full, I/O error): the turn's requests are
//!   answered `journal_failed` (503), nothing of the turn is acknowledged, and the keeper
//!   exits with [`EXIT_JOURNAL_FAILED`]; the master starts a new one after a second. A new
//!   keeper that cannot write serves reads from the recovered state, answers every change
//!   with 503, and tries again every second.
//! - **Recovery** at start: the snapshot, then the journal replayed through the same pure
//!   service. A torn tail (a write cut short, nothing valid after it) is cut off; corruption
//!   (a damaged record followed by valid ones, a snapshot whose checksum fails, a record
//!   that cannot be read) stops the keeper before it changes anything on disk, with an
//!   error naming the file and offset and the `leasehold journal` commands that help. Then
//!   channels of the previous keeper are closed, waiters get a fresh presence window,
//!   fences jump past every reservation, and due expiries run, all journaled first. A
//!   snapshot in the previous format (no checksum) is read once more and replaced at once.
//! - **Snapshots** once the journal passes `snapshot_bytes`.
//! - **Dead letters.** A courier's report that moves a call to the dead-letter list is
//!   logged at WARN (the service is pure and replayed, so the shell that feeds it the live
//!   report says it, once; a replay says nothing).
//!
//! At start it takes an exclusive lock on its data directory (`keeper.lock`): a second
//! server pointed at the same directory fails to start with a clear error.
//!
//! In cluster mode (`keeper/cluster.rs`, `keeper/peer.rs`) the log in etcd takes the local
//! journal's place: a turn's answers leave once its batch is in the log, a follower replays
//! the log (and forwards its workers' requests to the leader), and a keeper starts from it.

mod cluster;
mod peer;

pub use cluster::EXIT_REBUILD;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::channel::{Channel, ChannelError};
use super::child::{self, Boot};
use crate::config::{Config, Fsync, JournalConfig};
use crate::core::lock::{Moment, TableLimits};
use crate::core::names::Ticket;
use crate::core::outbox::EntryState;
use crate::ipc::frame::FrameError;
use crate::ipc::message::{FdRecord, FromKeeper, LockReply, ToChild, ToKeeper, ToMaster};
use crate::journal::store::{Store, StoreError};
use crate::journal::{self, replica, InputRef, Rebuild, Record, Snapshot};
use crate::metrics::{Histogram, KeeperSnapshot};
use crate::service::{LinkId, Outbox, OutboxSettings, Service};
use crate::sys::clock::wall_ms;
use crate::sys::entropy::Entropy;
use crate::sys::signals::{self, Signal, SignalSource};

const SIGNALS: Token = Token(0);
const CONTROL: Token = Token(1);
const FDS: Token = Token(2);
const LINK_BASE: usize = 16;
/// Longest sleep when no lease is due (the loop also wakes on every message).
const MAX_SLEEP_MS: u64 = 1_000;
/// The exit code of a keeper whose journal could not be written (the master restarts it
/// after a second, without counting it as a crash).
pub const EXIT_JOURNAL_FAILED: i32 = 75;
/// The exit code of a keeper that refuses its journal (corrupt, or in a format this build
/// does not read): restarting it cannot help, so the master stops the service at once.
pub const EXIT_JOURNAL_CORRUPT: i32 = 65;
/// Fences reserved at a time (one synced record per this many grants).
pub const FENCE_BLOCK: u64 = 1 << 16;
/// How often a keeper that cannot write its journal tries again.
const JOURNAL_RETRY_MS: u64 = 1_000;

/// Runs the keeper; returns the process exit code.
pub fn run(master_pid: i32) -> i32 {
    let boot = match child::boot("lh-keeper", master_pid, CONTROL) {
        Ok(boot) => boot,
        Err(e) => {
            eprintln!("{}lh-keeper: {e}", super::logging::stderr_prefix(log::Level::Error));
            return 1;
        }
    };
    match Keeper::new(boot).and_then(|mut k| k.serve()) {
        Ok(code) => code,
        Err(e) => {
            log::error!("keeper failed: {e}");
            let corrupt = e.get_ref().is_some_and(|inner| inner.is::<CorruptJournal>());
            if corrupt {
                EXIT_JOURNAL_CORRUPT
            } else {
                1
            }
        }
    }
}

/// A journal the keeper refuses to start on, corrupt or in a format it does not read (its
/// text says what to do).
#[derive(Debug)]
struct CorruptJournal(String);

impl std::fmt::Display for CorruptJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CorruptJournal {}

/// The outbox settings the service journals, from the configuration.
fn outbox_settings(config: &Config) -> OutboxSettings {
    OutboxSettings { limits: config.outbox.limits, default_attempts: config.outbox.default_attempts }
}

/// Name of the lock file in the data directory.
pub const LOCK_FILE: &str = "keeper.lock";

/// Creates the data directory if needed (mode 0700) and takes its exclusive lock, so two
/// keepers can never share one directory. The lock lives as long as the returned file; the
/// kernel drops it when the keeper dies, however it dies. Who holds it is written into it by
/// [`note_holder`], once the journal is known to be sound (a keeper that refuses a corrupt
/// journal changes nothing in the directory).
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
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            Err(format!(
                "the data directory {} is in use by another keeper (pid {}); each server needs its own data_dir",
                dir.display(),
                holder.trim()
            ))
        }
        Err((_, e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

/// Writes this process's id into the lock file, for the message of a keeper that finds the
/// directory in use.
fn note_holder(lock: &mut Flock<File>) {
    let _ = lock.set_len(0).and_then(|()| lock.write_all(format!("{}\n", std::process::id()).as_bytes()));
}

/// The keeper's words for a journal it cannot open: for corruption, what the operator can
/// do about it.
fn open_failed(e: StoreError, dir: &Path) -> io::Error {
    match e {
        StoreError::Format { .. } => io::Error::other(CorruptJournal(format!(
            "{e}; the keeper does not start on it and has changed nothing in {dir}",
            dir = dir.display()
        ))),
        StoreError::Corrupt { .. } => io::Error::other(CorruptJournal(format!(
            "{e}; this is not a torn write, so the keeper does not start on it and has changed nothing in {dir}; \
             `leasehold journal verify {dir}` lists every damaged spot, and `leasehold journal salvage {dir} \
             NEW_DIR` copies every valid record into NEW_DIR, from which a keeper starts (point server.data_dir \
             at it)",
            dir = dir.display()
        ))),
        other => io::Error::other(other.to_string()),
    }
}

struct Keeper {
    generation: u64,
    /// Cluster mode: the rules and the link ([`cluster`]).
    cluster: Option<cluster::Node>,
    /// This node's name in a cluster.
    node_name: String,
    /// Cluster mode with a peer link: the accepting side (every node listens).
    peers: Option<peer::Peers>,
    /// Cluster mode with a peer link: the forwarding side (used while following).
    forward: Option<peer::Forward>,
    /// Held for the keeper's whole life.
    _data_dir_lock: Flock<File>,
    /// `server.data_dir` (a cluster node's local snapshot is there).
    data_dir: PathBuf,
    poll: Poll,
    signals: SignalSource,
    control: Channel,
    fds: OwnedFd,
    links: Vec<Option<Channel>>,
    service: Service,
    entropy: Entropy,
    /// Messages the service produced this turn, each for its channel (sent after the
    /// turn's records are written).
    outbox: Outbox,
    store: Store,
    journal: JournalConfig,
    limits: TableLimits,
    max_wait_ms: u64,
    outbox_settings: OutboxSettings,
    /// The highest fence reservation journaled.
    fences_reserved: u64,
    /// `None` once the start-up records are written; otherwise why they could not be, and
    /// when to try again (until then the keeper serves reads only).
    not_writable: Option<(String, u64)>,
    /// Channels that closed while nothing could be journaled.
    closed_links: Vec<LinkId>,
    /// Requests of this turn that change state (answered `journal_failed` if the turn's
    /// records cannot be written).
    turn_requests: Vec<(LinkId, u64)>,
    /// Channels whose send failed this turn.
    broken: Vec<LinkId>,
    /// Channels that spoke while a cluster leader took no input (read once it does again).
    unread: Vec<usize>,
    /// `interval` mode: when the next sync is due.
    next_sync_ms: Option<u64>,
    /// A failed snapshot is tried again once the journal has grown by this much more.
    snapshot_retry_at: u64,
    fsync_latency: Histogram,
    recovery_ms: u64,
    last_snapshot_ms: u64,
}

impl Keeper {
    fn new(boot: Boot) -> io::Result<Self> {
        let Boot { mut control, fds, start, config, .. } = boot;
        // A write past a file-size limit must fail with EFBIG, not kill the keeper.
        signals::ignore(Signal::SIGXFSZ);
        let mut data_dir_lock = lock_data_dir(&config.server.data_dir).map_err(io::Error::other)?;
        let poll = Poll::new()?;
        let mut signals = SignalSource::new(&[Signal::SIGTERM])?;
        poll.registry().register(signals.source(), SIGNALS, Interest::READABLE)?;
        control.register(poll.registry())?;
        poll.registry().register(&mut SourceFd(&fds.as_raw_fd()), FDS, Interest::READABLE)?;
        let mut entropy = Entropy::new();
        let hash_seed = entropy.next_u64()?;
        let limits = config.locks.table.clone();
        let max_wait_ms = config.locks.max_wait_ms;
        let started = Instant::now();
        let mut rebuild = Rebuild::new(Service::new(limits.clone(), max_wait_ms, hash_seed), hash_seed);
        let (mut store, recovery) = Store::open(&config.server.data_dir, |found| rebuild.take(found))
            .map_err(|e| open_failed(e, &config.server.data_dir))?;
        store.set_segment_header(journal::segment_header());
        let older_format = rebuild.found_older().then(|| rebuild.formats.clone());
        let Rebuild { mut service, mut fences_reserved, .. } = rebuild;
        // What the replay counted happened before this keeper: its metrics start from here.
        service.reset_lease_counters();
        let local = replica::read(&config.server.data_dir).map_err(|e| open_failed(e, &config.server.data_dir))?;
        note_holder(&mut data_dir_lock);
        crate::sys::memory::release_free_heap();
        let recovery_ms = started.elapsed().as_millis() as u64;
        let stats = service.table().stats();
        log::info!(
            "recovered {} locks, {} leases, {} waiters from {} in {recovery_ms} ms ({} journal records, {} bytes{})",
            stats.locks,
            stats.holders,
            stats.waiters,
            config.server.data_dir.display(),
            recovery.records,
            recovery.bytes,
            recovery.snapshot.map_or(String::new(), |n| format!(", after snapshot {n}")),
        );
        if config.cluster.is_some() && (recovery.records > 0 || recovery.snapshot.is_some()) {
            return Err(io::Error::other(format!(
                "the data directory {} holds a journal of a single-node server ({} locks): a cluster node starts \
                 from the cluster's log, so it would not see them; point server.data_dir at an empty directory",
                config.server.data_dir.display(),
                stats.locks
            )));
        }
        // A cluster node starts from its local snapshot, then reads the log after it.
        let mut position = (0, 0);
        match (&config.cluster, local) {
            (None, Some(local)) => {
                return Err(io::Error::other(format!(
                    "the data directory {} holds the snapshot of a cluster node (of the log under {:?}, at batch {}): \
                     a single-node server would not see its locks; configure [cluster] again, or point \
                     server.data_dir at another directory",
                    config.server.data_dir.display(),
                    local.position.prefix,
                    local.position.seq
                )));
            }
            (Some(cluster), Some(local)) if local.position.prefix != cluster.prefix => {
                return Err(io::Error::other(format!(
                    "the data directory {} holds the snapshot of another cluster's node (its prefix is {:?}, this \
                     node's {:?}): remove {} to join this cluster from its log",
                    config.server.data_dir.display(),
                    local.position.prefix,
                    cluster.prefix,
                    replica::path(&config.server.data_dir).display()
                )));
            }
            (Some(_), Some(local)) => {
                service = Service::import(local.snapshot.service, hash_seed)
                    .map_err(|e| io::Error::other(format!("the cluster snapshot cannot be loaded: {e}")))?;
                fences_reserved = local.snapshot.fences_reserved;
                position = (local.position.seq, local.position.at_ms);
                let stats = service.table().stats();
                log::info!(
                    "starting from the local snapshot at batch {} of the cluster's log: {} locks, {} leases, {} \
                     waiters ({} ms)",
                    local.position.seq,
                    stats.locks,
                    stats.holders,
                    stats.waiters,
                    started.elapsed().as_millis()
                );
                crate::sys::memory::release_free_heap();
            }
            (_, None) => {}
        }
        if let Some(dropped) = &recovery.dropped {
            log::warn!("the journal ended in a torn write and is cut back to its last good record: {dropped}");
        }
        if recovery.unchecked_snapshot {
            log::warn!(
                "snapshot {} is in the previous format, which has no checksum: it was read as it is, and a snapshot \
                 in the current format replaces it now",
                recovery.snapshot.unwrap_or(0)
            );
        }
        let snapshot_bytes = config.journal.snapshot_bytes;
        let cluster =
            config.cluster.as_ref().map(|c| cluster::Node::start(c, snapshot_bytes, position, &poll)).transpose()?;
        let peer_config = config.cluster.as_ref().and_then(|c| c.peer.as_ref().map(|p| (p, c.node_name.as_str())));
        let (peers, forward) = peer_config.map(|(p, node)| peer::start(p, node, &poll)).transpose()?.unzip();
        let mut keeper = Self {
            generation: start.generation,
            node_name: config.cluster.as_ref().map(|c| c.node_name.clone()).unwrap_or_default(),
            peers,
            forward,
            _data_dir_lock: data_dir_lock,
            data_dir: config.server.data_dir.clone(),
            poll,
            signals,
            control,
            fds,
            links: Vec::new(),
            service,
            entropy,
            outbox: Vec::new(),
            store,
            journal: config.journal.clone(),
            limits,
            max_wait_ms,
            outbox_settings: outbox_settings(&config),
            fences_reserved,
            cluster: None,
            not_writable: Some((String::new(), 0)),
            closed_links: Vec::new(),
            turn_requests: Vec::new(),
            broken: Vec::new(),
            unread: Vec::new(),
            next_sync_ms: None,
            snapshot_retry_at: 0,
            fsync_latency: Histogram::default(),
            recovery_ms,
            last_snapshot_ms: 0,
        };
        keeper.cluster = cluster;
        if keeper.cluster.is_some() {
            // The log holds everything; the local journal is not written.
            keeper.not_writable = None;
            return Ok(keeper);
        }
        keeper.write_start_records()?;
        if let Some(formats) = &older_format {
            log::info!(
                "the journal is in format {} (this build writes format {}): a snapshot in format {} replaces it now",
                formats.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
                journal::FORMAT,
                journal::FORMAT
            );
        }
        if (recovery.unchecked_snapshot || older_format.is_some()) && keeper.not_writable.is_none() {
            keeper.write_snapshot();
        }
        Ok(keeper)
    }

    /// Journals what a (re)start means, then applies it: the limits in force, the end of
    /// every channel of the previous keeper, fresh presence windows, fences past every
    /// reservation, and due expiries. If that cannot be written, the keeper serves reads
    /// only and tries again later.
    fn write_start_records(&mut self) -> io::Result<()> {
        let now = wall_ms();
        let entropy = self.entropy.next_u64()?;
        let mut links = self.service.links();
        links.extend(self.closed_links.iter().copied());
        links.sort_unstable();
        links.dedup();
        let next_fence = self.service.table().next_fence();
        let floor = next_fence.max(self.fences_reserved);
        let mut records = vec![self.configure_record(now, entropy)];
        records.extend(links.into_iter().map(|link| Record::LinkClosed { link, at_ms: now, entropy }));
        records.push(Record::ResetPresence { at_ms: now });
        if floor > next_fence {
            records.push(Record::RaiseFences { floor });
        }
        records.push(Record::Expire { at_ms: now, entropy });
        records.push(Record::ReserveFences { up_to: floor + FENCE_BLOCK });
        for record in &records {
            self.store.append(record).map_err(io::Error::other)?;
        }
        match self.store.commit(true) {
            Ok(_) => {
                for record in records {
                    journal::replay(&mut self.service, record, &mut self.fences_reserved);
                }
                if self.not_writable.as_ref().is_some_and(|(why, _)| !why.is_empty()) {
                    log::info!("the journal can be written again; serving every request");
                }
                self.not_writable = None;
                self.closed_links.clear();
                Ok(())
            }
            Err(e) => {
                let why = format!("the journal cannot be written ({e}); nothing can change until it can");
                if self.not_writable.as_ref().is_none_or(|(old, _)| old != &why) {
                    log::error!("{why}; serving reads only and trying again every {JOURNAL_RETRY_MS} ms");
                }
                self.not_writable = Some((why, now + JOURNAL_RETRY_MS));
                Ok(())
            }
        }
    }

    fn serve(&mut self) -> io::Result<i32> {
        self.control.send(&ToMaster::Ready).map_err(io::Error::other)?;
        self.control.flush_blocking(Duration::from_secs(1));
        log::info!("keeper generation {} ready", self.generation);
        let mut events = Events::with_capacity(1024);
        loop {
            let now = wall_ms();
            // A cluster leader about to snapshot takes no input (and runs no expiry) until
            // its turns are in the log; channels that spoke meanwhile are read once it is done.
            let quiet = self.cluster_quiet(now);
            let read_late = !quiet && !self.unread.is_empty();
            if !quiet {
                for index in std::mem::take(&mut self.unread) {
                    if let Some(code) = self.on_link(index)? {
                        return Ok(code);
                    }
                }
            }
            let mut wake =
                self.service.next_deadline().filter(|_| self.not_writable.is_none() && self.changes_state() && !quiet);
            let tick = self.cluster.as_ref().and_then(cluster::Node::next_tick_ms);
            for t in [self.next_sync_ms, self.not_writable.as_ref().map(|(_, at)| *at), tick].into_iter().flatten() {
                wake = Some(wake.map_or(t, |w| w.min(t)));
            }
            let sleep_ms = wake.map_or(MAX_SLEEP_MS, |d| d.saturating_sub(now).min(MAX_SLEEP_MS));
            // What was read late is answered in this loop turn, without waiting for more.
            let sleep_ms = if read_late { 0 } else { sleep_ms };
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
                            return Ok(self.stop());
                        }
                    }
                    CONTROL => {
                        if let Some(code) = self.on_control() {
                            return Ok(code);
                        }
                    }
                    FDS => self.on_fd_records(),
                    peer::PEER_LISTEN => self.on_peer_listen(),
                    peer::FORWARD => self.on_forward(),
                    cluster::CLUSTER => {
                        if let Some(code) = self.on_cluster()? {
                            return Ok(code);
                        }
                    }
                    Token(t) if quiet => {
                        if !self.unread.contains(&(t - LINK_BASE)) {
                            self.unread.push(t - LINK_BASE);
                        }
                    }
                    Token(t) => {
                        if let Some(code) = self.on_link(t - LINK_BASE)? {
                            return Ok(code);
                        }
                    }
                }
            }
            if let Some(code) = self.cluster_tick(wall_ms())? {
                return Ok(code);
            }
            let now = self.clock();
            if let Some((_, retry_at)) = &self.not_writable {
                if now >= *retry_at {
                    self.write_start_records()?;
                }
            } else if self.changes_state() && !quiet && self.service.next_deadline().is_some_and(|d| d <= now) {
                self.expire(now)?;
            }
            if let Some(code) = self.end_turn(now)? {
                return Ok(code);
            }
            if let Some(code) = self.cluster_snapshot()? {
                return Ok(code);
            }
            let leader_peer = self.leader_peer();
            self.aim_forward(leader_peer)?;
            self.tell_status(wall_ms());
            if let Err(e) = self.control.flush() {
                log::debug!("control channel: {e}");
            }
        }
    }

    /// The limits in force, as the record that sets them at `at_ms`.
    fn configure_record(&self, at_ms: u64, entropy: u64) -> Record {
        Record::Configure {
            limits: self.limits.clone(),
            max_wait_ms: self.max_wait_ms,
            outbox: self.outbox_settings,
            at_ms,
            entropy,
        }
    }

    /// Journals and runs an expiry at `now`.
    fn expire(&mut self, now: u64) -> io::Result<()> {
        let entropy = self.entropy.next_u64()?;
        self.journaled_at(&Record::Expire { at_ms: now, entropy }, now);
        self.service.expire(Moment::new(now, entropy), &mut self.outbox);
        Ok(())
    }

    /// Buffers a record for this turn's commit.
    fn journaled<T: serde::Serialize>(&mut self, record: &T) {
        self.journaled_at(record, 0);
    }

    /// Buffers a record handled at `at_ms` for this turn's commit (in cluster mode, for the
    /// turn's batch).
    fn journaled_at<T: serde::Serialize>(&mut self, record: &T, at_ms: u64) {
        if let Some(node) = self.cluster.as_mut() {
            node.journal(record, at_ms);
        } else if let Err(e) = self.store.append(record) {
            log::error!("a journal record cannot be encoded: {e}");
        }
    }

    /// Writes the turn's records, then sends its answers; handles channels that broke.
    fn end_turn(&mut self, now: u64) -> io::Result<Option<i32>> {
        if self.cluster.is_some() {
            loop {
                if let Some(code) = self.cluster_end_turn()? {
                    return Ok(Some(code));
                }
                self.deliver();
                if self.broken.is_empty() {
                    return Ok(None);
                }
                for index in std::mem::take(&mut self.broken) {
                    self.close_link(index);
                }
            }
        }
        loop {
            let mut sync = self.journal.fsync == Fsync::Always;
            if self.not_writable.is_none() && self.service.table().next_fence() >= self.fences_reserved {
                // Fences past the reservation are about to leave: reserve more, durably.
                let up_to = self.service.table().next_fence() + FENCE_BLOCK;
                self.journaled(&Record::ReserveFences { up_to });
                self.fences_reserved = up_to;
                sync = true;
            }
            if self.store.has_pending() {
                match self.store.commit(sync) {
                    Ok(Some(took)) => self.fsync_latency.observe(took.as_micros() as u64),
                    Ok(None) => {
                        if self.journal.fsync == Fsync::Interval && self.next_sync_ms.is_none() {
                            self.next_sync_ms = Some(now + self.journal.fsync_interval_ms);
                        }
                    }
                    Err(e) => return Ok(Some(self.journal_failed(&e))),
                }
            }
            self.turn_requests.clear();
            self.deliver();
            if self.broken.is_empty() {
                break;
            }
            for index in std::mem::take(&mut self.broken) {
                self.close_link(index);
            }
        }
        if self.next_sync_ms.is_some_and(|at| now >= at) {
            self.next_sync_ms = None;
            match self.store.sync() {
                Ok(took) => self.fsync_latency.observe(took.as_micros() as u64),
                Err(e) => return Ok(Some(self.journal_failed(&e))),
            }
        }
        self.maybe_snapshot();
        Ok(None)
    }

    /// The turn's records could not be written: answer its requests 503, acknowledge
    /// nothing, and end (the master starts a new keeper, which recovers from the journal).
    fn journal_failed(&mut self, e: &io::Error) -> i32 {
        let message = format!("the journal cannot be written ({e}); nothing was changed");
        log::error!("{message}: the keeper restarts");
        self.outbox.clear();
        for (link, id) in std::mem::take(&mut self.turn_requests) {
            let reply = LockReply::JournalFailed { message: message.clone() };
            self.outbox.push((link, FromKeeper::Reply { id, reply }));
        }
        self.deliver();
        for link in self.links.iter_mut().flatten() {
            link.flush_blocking(Duration::from_millis(200));
        }
        EXIT_JOURNAL_FAILED
    }

    /// Writes a snapshot once the journal is long enough.
    fn maybe_snapshot(&mut self) {
        let bytes = self.store.journal_bytes();
        if self.not_writable.is_some() || bytes < self.journal.snapshot_bytes || bytes < self.snapshot_retry_at {
            return;
        }
        self.write_snapshot();
    }

    /// Writes a snapshot of the whole state (a failed one is tried again once the journal
    /// has grown by a quarter of `snapshot_bytes`).
    fn write_snapshot(&mut self) {
        let bytes = self.store.journal_bytes();
        let started = Instant::now();
        let snapshot = Snapshot::new(self.fences_reserved, self.service.export());
        let written = self.store.snapshot_with(|out| journal::snapshot::encode(snapshot, out));
        match written {
            Ok(()) => {
                self.last_snapshot_ms = started.elapsed().as_millis() as u64;
                self.snapshot_retry_at = 0;
                log::info!("snapshot written in {} ms; the journal before it is gone", self.last_snapshot_ms);
            }
            Err(e) => {
                self.snapshot_retry_at = bytes + self.journal.snapshot_bytes / 4;
                log::warn!("cannot write a snapshot ({e}); the journal keeps growing and it is tried again later");
            }
        }
    }

    /// Commits and syncs everything, then returns the exit code of a clean stop. A cluster
    /// node gives its etcd lease back, so another takes over without waiting for it.
    fn stop(&mut self) -> i32 {
        if self.cluster.is_some() {
            self.cluster_last_snapshot();
            if let Some(node) = self.cluster.as_mut() {
                node.stop();
            }
            return 0;
        }
        if let Err(e) = self.store.commit(true) {
            log::error!("cannot write the journal's last records ({e})");
            return EXIT_JOURNAL_FAILED;
        }
        0
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
                    return Some(self.stop());
                }
                ToChild::Reconfigure { config_text } => {
                    match Config::load(config_text.as_deref(), &super::environment()) {
                        Ok(config) => {
                            super::logging::reconfigure(&config.server);
                            self.outbox_settings = outbox_settings(&config);
                            self.limits = config.locks.table;
                            self.max_wait_ms = config.locks.max_wait_ms;
                            self.journal = config.journal;
                            // A cluster's limits are its leader's: a follower applies its
                            // own at its takeover.
                            if self.not_writable.is_none() && self.changes_state() {
                                // Applied as a replay applies it, so the two cannot differ.
                                let now = wall_ms();
                                let entropy = match self.entropy.next_u64() {
                                    Ok(entropy) => entropy,
                                    Err(e) => {
                                        log::error!("cannot read entropy for the reload ({e})");
                                        return Some(EXIT_JOURNAL_FAILED);
                                    }
                                };
                                let record = self.configure_record(now, entropy);
                                self.journaled_at(&record, now);
                                journal::replay_answering(
                                    &mut self.service,
                                    record,
                                    &mut self.fences_reserved,
                                    &mut self.outbox,
                                );
                            }
                            log::info!("new limits applied");
                        }
                        Err(problems) => {
                            log::error!("ignoring an invalid reconfiguration ({} problems)", problems.len())
                        }
                    }
                }
                ToChild::Collect { id } => {
                    let snapshot = self.snapshot();
                    let _ = self.control.send(&ToMaster::KeeperMetrics { id, snapshot: Box::new(snapshot) });
                }
                other => log::warn!("ignoring an unexpected control message: {other:?}"),
            }
        }
        None
    }

    fn on_fd_records(&mut self) {
        for (meta, fd) in child::read_records(self.fds.as_fd()) {
            let from = match meta {
                FdRecord::Worker { slot } => format!("worker {slot}"),
                FdRecord::Courier => "the courier".to_string(),
                other => {
                    log::error!("unexpected fd record for the keeper: {other:?}");
                    continue;
                }
            };
            let index = self.free_link_slot();
            let made = Channel::new(StdUnixStream::from(fd), Token(LINK_BASE + index)).and_then(|mut c| {
                c.register(self.poll.registry())?;
                Ok(c)
            });
            match made {
                Ok(mut link) => {
                    let _ = link.send(&FromKeeper::Hello { generation: self.generation });
                    if let Some(status) = self.cluster_status() {
                        let _ = link.send(&FromKeeper::Cluster { status });
                    }
                    self.links[index] = Some(link);
                    log::debug!("channel from {from} open");
                }
                Err(e) => log::error!("channel from {from} unusable: {e}"),
            }
        }
    }

    /// A free place in `links` (a new one at the end if none).
    fn free_link_slot(&mut self) -> usize {
        self.links.iter().position(Option::is_none).unwrap_or_else(|| {
            self.links.push(None);
            self.links.len() - 1
        })
    }

    /// A channel is gone: its waits and streams end as if their clients had gone.
    fn close_link(&mut self, index: usize) {
        let Some(mut link) = self.links.get_mut(index).and_then(Option::take) else { return };
        link.deregister(self.poll.registry());
        if let Some(peers) = self.peers.as_mut() {
            peers.heard.remove(&index);
        }
        // What it sent while this node was catching up is nobody's now.
        self.forget_deferred(index);
        if self.peers.as_mut().is_some_and(|p| p.unheard.remove(&index).is_some()) {
            // A peer that never said hello was never in the state.
            return;
        }
        if !self.changes_state() {
            // A follower's channels are not in the state (only the leader's are); what they
            // were waiting for over the peer link is called off there.
            self.forget_forwarded(index);
            return;
        }
        if self.not_writable.is_some() {
            self.closed_links.push(index);
            return;
        }
        match self.entropy.next_u64() {
            Ok(entropy) => {
                let now = self.clock();
                self.journaled_at(&Record::LinkClosed { link: index, at_ms: now, entropy }, now);
                self.service.link_closed(index, Moment::new(now, entropy), &mut self.outbox);
            }
            Err(e) => log::error!("no entropy: {e}"),
        }
    }

    fn drop_link(&mut self, index: usize, why: &ChannelError) {
        let unheard = self.peers.as_ref().is_some_and(|p| p.unheard.contains_key(&index));
        if unheard && !matches!(why, ChannelError::Closed) {
            // A TLS handshake refused, bytes that are not TLS, a stranger.
            log::warn!("peer link: closing a connection that did not say hello: {why}");
        } else if why.peer_gone() {
            // Its process left (a drained worker; one that died, which the master tells of).
            log::debug!("a worker channel closed ({why})");
        } else {
            log::warn!("closing a worker channel: {why}");
        }
        self.close_link(index);
    }

    /// Queues this turn's answers on their channels (a channel whose send fails is closed
    /// at the end of the turn).
    fn deliver(&mut self) {
        let mut outbox = std::mem::take(&mut self.outbox);
        for (index, message) in outbox.drain(..) {
            let Some(link) = self.links.get_mut(index).and_then(Option::as_mut) else { continue };
            let sent = match link.send(&message) {
                // A reply too large for one frame fails its own request, never the channel
                // (which every other request on that worker shares).
                Err(ChannelError::Frame(FrameError::TooLarge { len, .. })) => match message {
                    FromKeeper::Reply { id, .. } => {
                        log::warn!("answer to request {id} is {len} bytes, too large for one frame: failed");
                        let message = "the answer is too large to pass between the server's processes".into();
                        link.send(&FromKeeper::Reply { id, reply: LockReply::Failed { message } })
                    }
                    _ => {
                        log::warn!("a message of {len} bytes is too large for one frame: dropped");
                        Ok(())
                    }
                },
                other => other,
            };
            if sent.is_err() && !self.broken.contains(&index) {
                self.broken.push(index);
            }
        }
        self.outbox = outbox;
        for i in 0..self.links.len() {
            if let Some(Err(_)) = self.links[i].as_mut().map(Channel::flush) {
                if !self.broken.contains(&i) {
                    self.broken.push(i);
                }
            }
        }
    }

    fn on_link(&mut self, index: usize) -> io::Result<Option<i32>> {
        let Some(link) = self.links.get_mut(index).and_then(Option::as_mut) else { return Ok(None) };
        if let Err(e) = link.fill() {
            self.drop_link(index, &e);
            return Ok(None);
        }
        if self.peers.as_ref().is_some_and(|p| p.unheard.contains_key(&index))
            && (!self.on_peer_hello(index) || self.peers.as_ref().is_some_and(|p| p.unheard.contains_key(&index)))
        {
            // Refused, or its hello is not all in yet.
            return Ok(None);
        }
        loop {
            let Some(link) = self.links[index].as_mut() else { return Ok(None) };
            match link.recv::<ToKeeper>() {
                Ok(Some(message)) => {
                    self.on_message(index, message)?;
                    if let Some(code) = self.submit_full_turn()? {
                        return Ok(Some(code));
                    }
                }
                Ok(None) => return Ok(None),
                Err(e) => {
                    self.drop_link(index, &e);
                    return Ok(None);
                }
            }
        }
    }

    fn on_message(&mut self, link: LinkId, message: ToKeeper) -> io::Result<()> {
        let reads = Service::reads_only(&message);
        if self.cluster_refuses(link, &message, reads) {
            return Ok(());
        }
        if let Some((why, _)) = self.not_writable.as_ref().filter(|_| !reads) {
            if let ToKeeper::Request { id, .. } = message {
                let reply = LockReply::JournalFailed { message: why.clone() };
                self.outbox.push((link, FromKeeper::Reply { id, reply }));
            }
            return Ok(());
        }
        let entropy = self.entropy.next_u64()?;
        let fresh = self.entropy.bytes16()?;
        let now = self.clock();
        if !reads {
            let record =
                InputRef::Input { link, at_ms: now, entropy, fresh: Ticket::from_bytes(fresh), message: &message };
            self.journaled_at(&record, now);
            // (In cluster mode a turn that cannot be committed is resigned by the rules.)
            if let (ToKeeper::Request { id, .. }, None) = (&message, &self.cluster) {
                self.turn_requests.push((link, *id));
            }
        }
        // A delivery report may move its call to the dead-letter list: the one change of
        // the outbox an operator must hear of, since nothing will try that call again.
        let reported = match &message {
            ToKeeper::Delivered { id, .. } if self.in_flight(id) => Some(id.clone()),
            _ => None,
        };
        self.service.handle(link, message, Moment::new(now, entropy), fresh, &mut self.outbox);
        if let Some(id) = reported {
            self.warn_if_dead_lettered(&id);
        }
        Ok(())
    }

    /// Whether the outbox call `id` is with the courier.
    fn in_flight(&self, id: &str) -> bool {
        self.service.outbox().get(id, "").is_some_and(|e| matches!(e.state, EntryState::InFlight { .. }))
    }

    /// Logs one WARN line if the call `id` is now in the dead-letter list: its id, method
    /// and URL without credentials or query (they may carry secrets), attempts and last
    /// error.
    fn warn_if_dead_lettered(&self, id: &str) {
        let Some(entry) = self.service.outbox().get(id, "") else { return };
        if !matches!(entry.state, EntryState::Failed { .. }) {
            return;
        }
        let url = match url::Url::parse(&entry.call.url) {
            Ok(mut url) => {
                let _ = url.set_username("");
                let _ = url.set_password(None);
                url.set_query(None);
                url.set_fragment(None);
                url.to_string()
            }
            Err(_) => entry.call.redacted().url,
        };
        log::warn!(
            "outbox call {id} ({} {url}) moved to the dead-letter list after {} attempt{}: {}",
            entry.call.method,
            entry.attempts,
            if entry.attempts == 1 { "" } else { "s" },
            entry.last_error.as_deref().unwrap_or("no error recorded")
        );
    }

    fn snapshot(&self) -> KeeperSnapshot {
        let table = self.service.table().stats();
        let service = self.service.stats();
        let calls = self.service.outbox().stats();
        let counters = self.service.outbox_counters();
        KeeperSnapshot {
            locks: table.locks,
            leases: table.holders,
            waiters: table.waiters,
            next_fence: table.next_fence,
            ops_total: service.ops_total,
            waiting_requests: service.waiting_requests,
            event_streams: service.event_streams,
            resources: service.resources,
            journal_bytes: self.store.journal_bytes(),
            journal_writable: self.not_writable.is_none(),
            fsync_latency: self.fsync_latency.clone(),
            cluster: self.cluster_status(),
            commit_latency: self.cluster.as_ref().map(|n| n.commit_latency().clone()).unwrap_or_default(),
            recovery_ms: self.recovery_ms,
            last_snapshot_ms: self.last_snapshot_ms,
            outbox_pending: calls.pending,
            outbox_in_flight: calls.in_flight,
            outbox_failed: calls.failed,
            deliveries_ok: counters.delivered,
            deliveries_retried: counters.retried,
            deliveries_failed: counters.failed,
            callbacks_refused: counters.callbacks_refused,
            delivery_latency: counters.latency.clone(),
            budgets: self.service.budgets(),
            leases_counted: self.service.lease_counters().clone(),
            process: super::own_figures(),
        }
    }
}
