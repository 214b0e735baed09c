//! The master process: binds the listeners, starts and supervises the keeper and the
//! workers, passes connections in fd-passing mode, and runs the lifecycle.
//!
//! - Start: listeners are bound first; the keeper starts; once it is ready the workers
//!   start, each with its keeper channel queued before it runs; `READY=1` goes to systemd
//!   when every worker is ready. A child that dies during start-up fails the start (exit 1).
//! - Supervision: a dead child is replaced by the pure restart policy (at once after a
//!   stable run, then with doubling delays); too many deaths of one role in the window stop
//!   the service with exit code 1 (crash-storm breaker). A worker slot's listeners live in
//!   the master, so a replacement inherits the very same sockets and nothing queued in the
//!   kernel is lost.
//! - SIGTERM/SIGINT: `STOPPING=1`, stop accepting, workers drain (up to
//!   `drain_timeout_ms`, then SIGKILL), then the keeper stops; exit 0. A second signal kills
//!   the workers at once.
//! - SIGUSR1/SIGHUP: `RELOADING=1`, read and validate the configuration (an invalid one is
//!   refused with every problem logged, and nothing changes), then replace the workers one
//!   slot at a time, each new worker ready before the old one drains; `READY=1`.
//! - SIGUSR2 (kept for binary upgrades), SIGALRM, SIGVTALRM, SIGPROF, SIGXFSZ, SIGIO and
//!   SIGPWR would end the master (and with it the service) by default: they are logged and
//!   ignored. SIGPIPE is ignored without a word (a write to a closed socket is an error).
//! - fd-passing: the master accepts, picks a worker (least-connections fed by the workers'
//!   close reports, or round-robin) and sends the connection over SCM_RIGHTS; a failed
//!   hand-off is re-routed, and with no worker ready the connection waits (bounded) for one.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use super::channel::Channel;
use crate::config::{Config, Dispatch};
use crate::core::balance::Balancer;
use crate::core::supervise::{History, Restart, RestartPolicy};
use crate::http::status;
use crate::ipc::message::{FdRecord, Start, ToChild, ToMaster};
use crate::metrics::{self, KeeperSnapshot, MasterSnapshot, Totals, WorkerSnapshot};
use crate::sys::clock::{monotonic_usec, Monotonic};
use crate::sys::fdpass;
use crate::sys::notify::Notifier;
use crate::sys::process::{self, Exit};
use crate::sys::signals::{self, Signal, SignalSource};

const SIGNALS: Token = Token(0);
/// Signals a user may plausibly send whose default action would end the master, and that
/// mean nothing to it (yet): each is logged and ignored.
const IGNORED_SIGNALS: &[Signal] = &[
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGXFSZ,
    Signal::SIGIO,
    Signal::SIGPWR,
];
const LISTENER_BASE: usize = 16;
const CHILD_BASE: usize = 1 << 20;
/// Kernel accept queue of each listening socket (capped by `net.core.somaxconn`).
pub const LISTEN_BACKLOG: i32 = 4096;
/// Delay before a keeper that could not write its journal is started again.
const JOURNAL_RESTART_MS: u64 = 1_000;
/// Time the keeper gets to flush and exit after the workers are gone.
pub const KEEPER_STOP_MS: u64 = 2_000;
/// How long a metrics collection waits for every child.
const COLLECT_TIMEOUT_MS: u64 = 1_000;
/// fd-passing: connections held while no worker is ready, and for how long.
const MAX_WAITING_CONNECTIONS: usize = 4096;
const MAX_WAITING_MS: u64 = 10_000;
/// A deadline that has fired already (its kills are sent) and never fires again.
const NEVER: u64 = u64::MAX;
/// Longest sleep of the loop when nothing is due.
const MAX_SLEEP_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Keeper,
    Worker(u32),
    /// Delivers the outbox; talks to the keeper over a channel like a worker's.
    Courier,
}

impl Role {
    fn describe(self) -> String {
        match self {
            Role::Keeper => "keeper".to_string(),
            Role::Worker(slot) => format!("worker {slot}"),
            Role::Courier => "courier".to_string(),
        }
    }

    /// Whether it needs a channel to the keeper from the master.
    fn talks_to_keeper(self) -> bool {
        matches!(self, Role::Worker(_) | Role::Courier)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    /// Told to finish and exit (worker drain, keeper stop): its exit is expected.
    Leaving,
}

struct Child {
    pid: i32,
    role: Role,
    control: Option<Channel>,
    fds: OwnedFd,
    state: State,
    started_ms: u64,
    /// When a reload told it to drain: killed if it is still there `drain_timeout_ms` later.
    retired_ms: Option<u64>,
    /// When it last answered a ping (or became ready): hung once this is
    /// `child_ping_timeout_ms` ago.
    heard_ms: u64,
    open_connections: u32,
    /// Generation of the keeper this worker last got a channel to.
    keeper_given: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    /// Workers are killed at `deadline_ms`; the keeper, once told to stop (`Some`), at
    /// `keeper_deadline_ms`. A deadline that fired becomes `NEVER`.
    Stopping {
        deadline_ms: u64,
        keeper_deadline_ms: Option<u64>,
    },
}

struct Collection {
    requester: u64,
    request_id: u64,
    waiting: HashSet<u64>,
    workers: Vec<WorkerSnapshot>,
    keeper: Option<KeeperSnapshot>,
    deadline_ms: u64,
}

/// The master's listening sockets.
enum Listeners {
    /// `[slot][address]`, kept open for the master's whole life.
    PerSlot(Vec<Vec<std::net::TcpListener>>),
    /// One per address, accepted by the master.
    Shared(Vec<TcpListener>),
}

/// Runs the master until the service stops; returns the exit code.
pub fn run(config: Config, config_path: Option<PathBuf>, config_text: Option<String>) -> i32 {
    process::set_name("lh-master");
    super::logging::init("lh-master", &config.server.log_level);
    let mut master = match Master::new(config, config_path, config_text) {
        Ok(m) => m,
        Err(e) => {
            log::error!("{e}");
            return 1;
        }
    };
    match master.serve() {
        Ok(code) => code,
        Err(e) => {
            log::error!("master failed: {e}");
            master.kill_all();
            1
        }
    }
}

/// The restart policy a configuration asks for.
fn restart_policy(config: &Config) -> RestartPolicy {
    let s = &config.server;
    RestartPolicy {
        base_delay_ms: RestartPolicy::DEFAULT.base_delay_ms.min(s.restart_delay_max_ms),
        max_delay_ms: s.restart_delay_max_ms,
        stable_after_ms: RestartPolicy::DEFAULT.stable_after_ms,
        storm_window_ms: s.crash_storm_window_ms,
        storm_max_exits: s.crash_storm_exits as usize,
    }
}

/// Workers for a configuration: the configured count, or one per CPU.
pub fn worker_count(config: &Config) -> usize {
    match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
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
fn bind_all(config: &Config, slots: usize) -> Result<(Listeners, Vec<SocketAddr>), String> {
    let fail = |addr: &SocketAddr, e: io::Error| format!("cannot listen on {addr}: {e}");
    let mut bound = Vec::new();
    match config.server.dispatch {
        Dispatch::Reuseport => {
            let mut per_slot: Vec<Vec<std::net::TcpListener>> = (0..slots).map(|_| Vec::new()).collect();
            for addr in &config.server.listen {
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
            for addr in &config.server.listen {
                let l = bind(*addr, false).map_err(|e| fail(addr, e))?;
                bound.push(l.local_addr().map_err(|e| fail(addr, e))?);
                shared.push(TcpListener::from_std(l));
            }
            Ok((Listeners::Shared(shared), bound))
        }
    }
}

struct Master {
    poll: Poll,
    signals: SignalSource,
    notifier: Notifier,
    clock: Monotonic,
    config: Config,
    config_text: Option<String>,
    config_path: Option<PathBuf>,
    slots: usize,
    addresses: Vec<SocketAddr>,
    listeners: Listeners,
    children: BTreeMap<u64, Child>,
    pids: HashMap<i32, u64>,
    next_generation: u64,
    keeper: Option<u64>,
    keeper_ready: bool,
    courier: Option<u64>,
    slot_current: Vec<Option<u64>>,
    slot_pending: Vec<Option<u64>>,
    policy: RestartPolicy,
    worker_history: History,
    keeper_history: History,
    courier_history: History,
    scheduled: Vec<(u64, Role)>,
    phase: Phase,
    /// A reload in progress: the next slot to replace, and whether another reload is queued.
    reload: Option<(usize, bool)>,
    exit_code: i32,
    balancer: Balancer,
    waiting: VecDeque<(TcpStream, u64)>,
    collections: HashMap<u64, Collection>,
    next_collection: u64,
    retired: Totals,
    counters: MasterSnapshot,
    next_watchdog_ms: Option<u64>,
    /// When the children are pinged next, and how many pings were sent.
    next_ping_ms: u64,
    pings: u64,
    /// The metadata of every client hand-off (the same bytes each time).
    client_record: Vec<u8>,
    /// The last `STATUS=` sent.
    last_status: String,
    /// The whole answer to a connection no worker can take.
    overloaded: Vec<u8>,
}

impl Master {
    fn new(config: Config, config_path: Option<PathBuf>, config_text: Option<String>) -> Result<Self, String> {
        let slots = worker_count(&config);
        let (mut listeners, addresses) = bind_all(&config, slots)?;
        let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        signals::ignore(Signal::SIGPIPE);
        let handled = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1, Signal::SIGHUP, Signal::SIGCHLD];
        let mut signals = SignalSource::new(&[&handled[..], IGNORED_SIGNALS].concat())
            .map_err(|e| format!("cannot catch signals: {e}"))?;
        poll.registry()
            .register(signals.source(), SIGNALS, Interest::READABLE)
            .map_err(|e| format!("cannot watch signals: {e}"))?;
        if let Listeners::Shared(shared) = &mut listeners {
            for (i, l) in shared.iter_mut().enumerate() {
                poll.registry()
                    .register(l, Token(LISTENER_BASE + i), Interest::READABLE)
                    .map_err(|e| format!("cannot watch a listener: {e}"))?;
            }
        }
        let notifier = Notifier::from_env().unwrap_or_else(|e| {
            log::warn!("NOTIFY_SOCKET is unusable ({e}); not talking to systemd");
            Notifier::disabled()
        });
        let clock = Monotonic::new();
        let next_watchdog_ms = notifier.watchdog_usec().map(|_| 0);
        let balancer = Balancer::new(config.server.balance);
        let policy = restart_policy(&config);
        Ok(Self {
            poll,
            signals,
            notifier,
            clock,
            config,
            config_text,
            config_path,
            slots,
            addresses,
            listeners,
            children: BTreeMap::new(),
            pids: HashMap::new(),
            next_generation: 1,
            keeper: None,
            keeper_ready: false,
            courier: None,
            slot_current: vec![None; slots],
            slot_pending: vec![None; slots],
            policy,
            worker_history: History::new(),
            courier_history: History::new(),
            keeper_history: History::new(),
            scheduled: Vec::new(),
            phase: Phase::Starting,
            reload: None,
            exit_code: 0,
            balancer,
            waiting: VecDeque::new(),
            collections: HashMap::new(),
            next_collection: 1,
            retired: Totals::default(),
            counters: MasterSnapshot::default(),
            next_watchdog_ms,
            next_ping_ms: 0,
            pings: 0,
            client_record: serde_json::to_vec(&FdRecord::Client).unwrap_or_default(),
            last_status: String::new(),
            overloaded: status::no_worker_free(),
        })
    }

    fn notify(&self, state: &str) {
        if let Err(e) = self.notifier.notify(state) {
            log::warn!("sd_notify failed: {e}");
        }
    }

    /// Where and how the service listens.
    fn listening(&self) -> String {
        let addrs: Vec<String> = self.addresses.iter().map(ToString::to_string).collect();
        let dispatch = match self.config.server.dispatch {
            Dispatch::Reuseport => "reuseport",
            Dispatch::FdPassing => "fd-passing",
        };
        format!("{} with {} workers ({dispatch})", addrs.join(", "), self.slots)
    }

    /// The one-line state systemd shows (`systemctl status`).
    fn status_line(&self) -> String {
        let snapshot = self.master_snapshot();
        format!(
            "serving on {}; {}/{} workers ready; keeper {}",
            self.listening(),
            snapshot.workers_ready,
            snapshot.workers_configured,
            if self.keeper_ready { "up" } else { "down" }
        )
    }

    /// Sends `STATUS=` when the state line changed (not before the first `READY=1`).
    fn publish_status(&mut self) {
        if self.phase != Phase::Running {
            return;
        }
        let line = self.status_line();
        if line != self.last_status {
            self.notify(&format!("STATUS={line}"));
            self.last_status = line;
        }
    }

    fn serve(&mut self) -> io::Result<i32> {
        log::info!("starting: listening on {}", self.listening());
        self.spawn(Role::Keeper);
        let mut events = Events::with_capacity(256);
        loop {
            let now = self.clock.now_ms();
            let sleep = self.next_deadline().map_or(MAX_SLEEP_MS, |d| d.saturating_sub(now)).min(MAX_SLEEP_MS);
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(sleep))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(),
                    Token(t) if (LISTENER_BASE..CHILD_BASE).contains(&t) => self.on_accept(t - LISTENER_BASE),
                    Token(t) => self.on_child_message((t - CHILD_BASE) as u64),
                }
            }
            self.on_timers(self.clock.now_ms());
            self.publish_status();
            for (_, child) in self.children.iter_mut() {
                if let Some(c) = child.control.as_mut() {
                    let _ = c.flush();
                }
            }
            if matches!(self.phase, Phase::Stopping { .. }) && self.children.is_empty() {
                log::info!("stopped");
                return Ok(self.exit_code);
            }
        }
    }

    fn next_deadline(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
        for &(at, _) in &self.scheduled {
            consider(at);
        }
        if let Phase::Stopping { deadline_ms, keeper_deadline_ms } = self.phase {
            consider(deadline_ms);
            if let Some(k) = keeper_deadline_ms {
                consider(k);
            }
        }
        for c in self.collections.values() {
            consider(c.deadline_ms);
        }
        if let Some((_, since)) = self.waiting.front() {
            consider(since + MAX_WAITING_MS);
        }
        if let Some(w) = self.next_watchdog_ms {
            consider(w);
        }
        for c in self.children.values() {
            if let Some(at) = c.retired_ms {
                consider(at.saturating_add(self.config.server.drain_timeout_ms));
            }
        }
        consider(self.next_ping_ms);
        next
    }

    /// Pings every child that serves, every quarter of `child_ping_timeout_ms`; kills one
    /// that has not answered for the whole timeout (it is hung: a deadlock, a stuck system
    /// call, SIGSTOP), to be replaced like a crashed one.
    fn ping_children(&mut self, now: u64) {
        if now < self.next_ping_ms {
            return;
        }
        let timeout_ms = self.config.server.child_ping_timeout_ms;
        self.next_ping_ms = now + (timeout_ms / 4).max(1);
        self.pings += 1;
        let mut serving = Vec::new();
        for (&generation, c) in &mut self.children {
            if c.state != State::Ready {
                continue;
            }
            if now >= c.heard_ms.saturating_add(timeout_ms) {
                log::warn!(
                    "{} pid {} has not answered for {} ms: hung, killing it (it is replaced)",
                    c.role.describe(),
                    c.pid,
                    now - c.heard_ms
                );
                process::kill(c.pid, Signal::SIGKILL);
                // Not again: its death is on its way.
                c.heard_ms = u64::MAX / 2;
                match c.role {
                    Role::Keeper => self.counters.keeper_hangs += 1,
                    Role::Worker(_) => self.counters.worker_hangs += 1,
                    Role::Courier => self.counters.courier_hangs += 1,
                }
            } else {
                serving.push(generation);
            }
        }
        let ping = ToChild::Ping { n: self.pings };
        for generation in serving {
            self.send(generation, &ping);
        }
    }

    // ----- signals and children -----

    fn on_signals(&mut self) {
        for signal in self.signals.pending() {
            match signal {
                Signal::SIGTERM | Signal::SIGINT => {
                    log::info!("{}: stopping", signal.as_str());
                    self.begin_stop(0, self.config.server.drain_timeout_ms);
                }
                Signal::SIGUSR1 | Signal::SIGHUP => {
                    log::info!("{}: reloading", signal.as_str());
                    self.on_reload();
                }
                Signal::SIGCHLD => {
                    for (pid, exit) in process::reap() {
                        self.on_child_exit(pid, exit);
                    }
                }
                other if IGNORED_SIGNALS.contains(&other) => {
                    log::warn!("{}: ignored (it means nothing to leasehold)", other.as_str());
                }
                _ => {}
            }
        }
    }

    fn spawn(&mut self, role: Role) -> Option<u64> {
        let generation = self.next_generation;
        self.next_generation += 1;
        let now = self.clock.now_ms();
        match self.start_child(role, generation, now) {
            Ok(child) => {
                log::debug!("started {} as pid {} (generation {generation})", role.describe(), child.pid);
                self.pids.insert(child.pid, generation);
                self.children.insert(generation, child);
                match role {
                    Role::Keeper => self.keeper = Some(generation),
                    Role::Worker(slot) => {
                        self.slot_pending[slot as usize] = Some(generation);
                        self.give_keeper_channel(generation);
                    }
                    Role::Courier => {
                        self.courier = Some(generation);
                        self.give_keeper_channel(generation);
                    }
                }
                Some(generation)
            }
            Err(e) => {
                log::error!("cannot start the {}: {e}", role.describe());
                if self.phase == Phase::Starting {
                    self.begin_stop(1, 0);
                } else {
                    self.schedule_restart(role, now, now);
                }
                None
            }
        }
    }

    fn start_child(&mut self, role: Role, generation: u64, now: u64) -> io::Result<Child> {
        let (control_master, control_child) = fdpass::stream_pair()?;
        let (fds_master, fds_child) = fdpass::seqpacket_pair()?;
        let mut inherit = vec![control_child.as_fd(), fds_child.as_fd()];
        let (name, args, slot) = match role {
            Role::Keeper => ("lh-keeper".to_string(), vec!["keeper".to_string()], 0),
            Role::Worker(slot) => (format!("lh-worker-{slot}"), vec!["worker".to_string(), slot.to_string()], slot),
            Role::Courier => ("lh-courier".to_string(), vec!["courier".to_string()], 0),
        };
        if let (Role::Worker(slot), Listeners::PerSlot(per_slot)) = (role, &self.listeners) {
            inherit.extend(per_slot.get(slot as usize).into_iter().flatten().map(AsFd::as_fd));
        }
        let listeners = (inherit.len() - 2) as u32;
        let mut argv = vec!["child".to_string()];
        argv.extend(args);
        argv.push(process::pid().to_string());
        let pid = process::spawn(&name, &argv, &inherit)?;
        drop(inherit);
        let start = Start { config_text: self.config_text.clone(), slot, generation, listeners };
        let control = Channel::new(control_master, Token(CHILD_BASE + generation as usize)).and_then(|mut c| {
            c.register(self.poll.registry())?;
            c.send(&ToChild::Start(start)).map_err(io::Error::other)?;
            let _ = c.flush();
            Ok(c)
        });
        let control = control.inspect_err(|_| {
            // A child we cannot talk to is of no use: do not leave it waiting.
            process::kill(pid, Signal::SIGKILL);
        })?;
        Ok(Child {
            pid,
            role,
            control: Some(control),
            fds: fds_master,
            state: State::Starting,
            started_ms: now,
            retired_ms: None,
            heard_ms: now,
            open_connections: 0,
            keeper_given: 0,
        })
    }

    fn send(&mut self, generation: u64, message: &ToChild) {
        if let Some(c) = self.children.get_mut(&generation).and_then(|c| c.control.as_mut()) {
            if let Err(e) = c.send(message) {
                log::warn!("cannot message child generation {generation}: {e}");
            }
        }
    }

    /// Gives worker (or courier) `generation` a fresh channel to the keeper, if the keeper
    /// is ready.
    fn give_keeper_channel(&mut self, generation: u64) {
        let Some(keeper_gen) = self.keeper.filter(|_| self.keeper_ready) else { return };
        let Some(role) = self.children.get(&generation).map(|c| c.role).filter(|r| r.talks_to_keeper()) else { return };
        let (worker_end, keeper_end) = match fdpass::stream_pair() {
            Ok(pair) => pair,
            Err(e) => {
                log::error!("cannot make a keeper channel: {e}");
                return;
            }
        };
        let to_worker = serde_json::to_vec(&FdRecord::Keeper { generation: keeper_gen }).unwrap_or_default();
        let to_keeper = match role {
            Role::Worker(slot) => serde_json::to_vec(&FdRecord::Worker { slot }),
            _ => serde_json::to_vec(&FdRecord::Courier),
        }
        .unwrap_or_default();
        let worker = &self.children[&generation];
        let keeper = &self.children[&keeper_gen];
        let sent = fdpass::send(worker.fds.as_fd(), &to_worker, &[worker_end.as_fd()])
            .and_then(|()| fdpass::send(keeper.fds.as_fd(), &to_keeper, &[keeper_end.as_fd()]));
        match sent {
            Ok(()) => {
                if let Some(w) = self.children.get_mut(&generation) {
                    w.keeper_given = keeper_gen;
                }
            }
            // Tried again on the next timer turn (or when the worker asks). Seen when the
            // keeper died meanwhile, which is logged at WARN when it is reaped.
            Err(e) => log::info!("cannot hand the {} its keeper channel: {e}", role.describe()),
        }
    }

    /// Gives every worker that lacks one a channel to the current keeper (after a keeper
    /// restart, or when an earlier hand-off failed).
    fn reconcile_keeper_channels(&mut self) {
        if !self.keeper_ready {
            return;
        }
        let lacking: Vec<u64> = self
            .children
            .iter()
            .filter(|(_, c)| c.role.talks_to_keeper() && Some(c.keeper_given) != self.keeper)
            .map(|(g, _)| *g)
            .collect();
        for g in lacking {
            self.give_keeper_channel(g);
        }
    }

    fn on_child_message(&mut self, generation: u64) {
        let Some(child) = self.children.get_mut(&generation) else { return };
        let Some(control) = child.control.as_mut() else { return };
        let mut messages = Vec::new();
        let mut broken = control.fill().err();
        while broken.is_none() {
            match control.recv::<ToMaster>() {
                Ok(Some(m)) => messages.push(m),
                Ok(None) => break,
                Err(e) => broken = Some(e),
            }
        }
        if let Some(e) = broken {
            // Death itself is handled when the child is reaped.
            if !e.peer_gone() {
                log::warn!("closing the channel of {} (pid {}): {e}", child.role.describe(), child.pid);
            }
            if let Some(mut c) = child.control.take() {
                c.deregister(self.poll.registry());
            }
        }
        for m in messages {
            self.on_message(generation, m);
        }
    }

    fn on_message(&mut self, generation: u64, message: ToMaster) {
        let Some(role) = self.children.get(&generation).map(|c| c.role) else { return };
        match message {
            ToMaster::Ready => self.on_ready(generation, role),
            ToMaster::Pong { .. } => {
                let now = self.clock.now_ms();
                if let Some(c) = self.children.get_mut(&generation) {
                    c.heard_ms = now;
                }
            }
            ToMaster::Closed { connections } => {
                if let Some(c) = self.children.get_mut(&generation) {
                    c.open_connections = c.open_connections.saturating_sub(connections);
                }
            }
            ToMaster::NeedKeeper { lost_generation } => {
                let given = self.children.get(&generation).map_or(0, |c| c.keeper_given);
                if self.keeper_ready && (Some(lost_generation) == self.keeper || Some(given) != self.keeper) {
                    self.give_keeper_channel(generation);
                }
            }
            ToMaster::MetricsRequest { id } => self.start_collection(generation, id),
            ToMaster::WorkerMetrics { id: 0, snapshot } => self.retired.add(&snapshot),
            ToMaster::WorkerMetrics { id, snapshot } => {
                if let Some(c) = self.collections.get_mut(&id) {
                    if c.waiting.remove(&generation) {
                        c.workers.push(snapshot);
                    }
                }
                self.maybe_finish_collection(id, false);
            }
            ToMaster::KeeperMetrics { id, snapshot } => {
                if let Some(c) = self.collections.get_mut(&id) {
                    if c.waiting.remove(&generation) {
                        c.keeper = Some(*snapshot);
                    }
                }
                self.maybe_finish_collection(id, false);
            }
        }
    }

    fn on_ready(&mut self, generation: u64, role: Role) {
        let Some(child) = self.children.get_mut(&generation) else { return };
        if child.state != State::Starting {
            return;
        }
        child.state = State::Ready;
        child.heard_ms = self.clock.now_ms();
        match role {
            Role::Keeper => {
                self.keeper_ready = true;
                log::info!("keeper ready (pid {})", child.pid);
                if self.phase == Phase::Starting {
                    self.spawn(Role::Courier);
                    for slot in 0..self.slots {
                        self.spawn(Role::Worker(slot as u32));
                    }
                } else {
                    self.reconcile_keeper_channels();
                }
            }
            Role::Courier => {
                log::debug!("courier ready (pid {})", child.pid);
                self.maybe_ready();
            }
            Role::Worker(slot) => {
                let slot = slot as usize;
                log::debug!("worker {slot} ready (pid {})", child.pid);
                if self.slot_pending[slot] == Some(generation) {
                    self.slot_pending[slot] = None;
                    if let Some(old) = self.slot_current[slot].replace(generation) {
                        self.retire_worker(old);
                    }
                }
                self.route_waiting();
                self.maybe_ready();
                if let Some((next, _)) = self.reload {
                    if next == slot && self.slot_current[slot] == Some(generation) {
                        self.reload = self.reload.map(|(n, again)| (n + 1, again));
                        self.step_reload();
                    }
                }
            }
        }
    }

    /// The first time the keeper, every worker and the courier are up: `READY=1`.
    fn maybe_ready(&mut self) {
        let courier_ready = self.courier.and_then(|g| self.children.get(&g)).is_some_and(|c| c.state == State::Ready);
        if self.phase == Phase::Starting && courier_ready && self.slot_current.iter().all(Option::is_some) {
            self.phase = Phase::Running;
            self.last_status = self.status_line();
            log::info!("{}", self.last_status);
            self.notify(&format!("READY=1\nSTATUS={}", self.last_status));
        }
    }

    /// Tells a worker that has been replaced to drain and exit.
    fn retire_worker(&mut self, generation: u64) {
        let now = self.clock.now_ms();
        if let Some(c) = self.children.get_mut(&generation) {
            c.state = State::Leaving;
            c.retired_ms = Some(now);
            log::debug!("draining worker pid {}", c.pid);
        }
        self.send(generation, &ToChild::Drain);
    }

    fn on_child_exit(&mut self, pid: i32, exit: Exit) {
        let Some(&generation) = self.pids.get(&pid) else { return };
        // What it said last (a draining worker's final counters) may still be unread.
        self.on_child_message(generation);
        self.pids.remove(&pid);
        let Some(mut child) = self.children.remove(&generation) else { return };
        if let Some(mut c) = child.control.take() {
            c.deregister(self.poll.registry());
        }
        let now = self.clock.now_ms();
        let role = child.role;
        for c in self.collections.values_mut() {
            c.waiting.remove(&generation);
        }
        if child.state == State::Leaving {
            if exit == Exit::Code(0) {
                log::debug!("{} (pid {pid}) left", role.describe());
            } else {
                log::warn!("{} (pid {pid}) {exit} while leaving", role.describe());
            }
        } else if matches!(self.phase, Phase::Stopping { .. }) {
            log::info!("{} (pid {pid}) {exit}", role.describe());
        } else if role == Role::Keeper && exit == Exit::Code(super::keeper::EXIT_REBUILD) {
            // Not a crash, not even during start-up: a cluster node's replica held a change
            // that never reached the log, and a new keeper replays the log at once.
            log::info!("the keeper (pid {pid}) ends to rebuild its replica from the cluster's log; starting a new one");
            self.forget(role, generation);
            self.scheduled.push((now, Role::Keeper));
            self.check_stop_progress(now);
            return;
        } else if self.phase == Phase::Starting {
            log::error!("the {} (pid {pid}) {exit} during start-up; stopping", role.describe());
            self.forget(role, generation);
            self.begin_stop(1, 0);
            return;
        } else if role == Role::Keeper && exit == Exit::Code(super::keeper::EXIT_JOURNAL_CORRUPT) {
            // Its journal is corrupt, or in a format this build does not read (it said which
            // and where): a new keeper would refuse it too.
            log::error!("the keeper (pid {pid}) refused its journal (corrupt, or in a newer format); stopping");
            self.forget(role, generation);
            self.begin_stop(1, 0);
            return;
        } else if role == Role::Keeper && exit == Exit::Code(super::keeper::EXIT_JOURNAL_FAILED) {
            // Not a crash: its journal could not be written. A new keeper recovers from it
            // and serves reads until it can write again.
            log::warn!("the keeper (pid {pid}) stopped: its journal could not be written; starting a new one in {JOURNAL_RESTART_MS} ms");
            self.forget(role, generation);
            self.scheduled.push((now + JOURNAL_RESTART_MS, Role::Keeper));
            self.check_stop_progress(now);
            return;
        } else {
            log::warn!("{} (pid {pid}) {exit}", role.describe());
            let needs_replacement = match role {
                Role::Keeper | Role::Courier => true,
                // A dying current worker with a replacement on its way needs no other.
                Role::Worker(slot) => {
                    let pending = self.slot_pending[slot as usize];
                    pending == Some(generation) || pending.is_none()
                }
            };
            self.forget(role, generation);
            if needs_replacement {
                match role {
                    Role::Keeper => self.counters.keeper_restarts += 1,
                    Role::Worker(_) => self.counters.worker_restarts += 1,
                    Role::Courier => self.counters.courier_restarts += 1,
                }
                self.schedule_restart(role, child.started_ms, now);
            }
            self.check_stop_progress(now);
            return;
        }
        self.forget(role, generation);
        self.check_stop_progress(now);
    }

    /// Removes every reference to a child that is gone.
    fn forget(&mut self, role: Role, generation: u64) {
        match role {
            Role::Keeper => {
                if self.keeper == Some(generation) {
                    self.keeper = None;
                    self.keeper_ready = false;
                }
            }
            Role::Worker(slot) => {
                let slot = slot as usize;
                if self.slot_current[slot] == Some(generation) {
                    self.slot_current[slot] = None;
                }
                if self.slot_pending[slot] == Some(generation) {
                    self.slot_pending[slot] = None;
                }
            }
            Role::Courier => {
                if self.courier == Some(generation) {
                    self.courier = None;
                }
            }
        }
    }

    fn schedule_restart(&mut self, role: Role, started_ms: u64, now: u64) {
        let history = match role {
            Role::Keeper => &mut self.keeper_history,
            Role::Worker(_) => &mut self.worker_history,
            Role::Courier => &mut self.courier_history,
        };
        match history.on_exit(&self.policy, started_ms, now) {
            Restart::At(at) => {
                if at > now {
                    log::info!("restarting the {} in {} ms", role.describe(), at - now);
                }
                self.scheduled.push((at, role));
            }
            Restart::GiveUp { exits, window_ms } => {
                log::error!(
                    "{exits} {} deaths within {} s: crash storm, stopping the service",
                    match role {
                        Role::Keeper => "keeper",
                        Role::Worker(_) => "worker",
                        Role::Courier => "courier",
                    },
                    window_ms / 1000
                );
                self.begin_stop(1, self.config.server.drain_timeout_ms);
            }
        }
    }

    fn on_timers(&mut self, now: u64) {
        self.reconcile_keeper_channels();
        let due: Vec<Role> = self.scheduled.iter().filter(|(at, _)| *at <= now).map(|(_, r)| *r).collect();
        self.scheduled.retain(|(at, _)| *at > now);
        for role in due {
            match role {
                Role::Keeper if self.keeper.is_none() => {
                    self.spawn(Role::Keeper);
                }
                Role::Worker(slot) if self.slot_pending[slot as usize].is_none() => {
                    self.spawn(role);
                }
                Role::Courier if self.courier.is_none() => {
                    self.spawn(Role::Courier);
                }
                _ => {}
            }
        }
        let expired: Vec<u64> =
            self.collections.iter().filter(|(_, c)| c.deadline_ms <= now).map(|(id, _)| *id).collect();
        for id in expired {
            self.maybe_finish_collection(id, true);
        }
        while self.waiting.front().is_some_and(|(_, since)| since + MAX_WAITING_MS <= now) {
            if let Some((mut stream, _)) = self.waiting.pop_front() {
                log::warn!("no worker took a connection within {MAX_WAITING_MS} ms: answered 503");
                let _ = stream.write(&self.overloaded);
                let _ = stream.shutdown(Shutdown::Write);
            }
        }
        if self.next_watchdog_ms.is_some_and(|w| w <= now) {
            self.notify("WATCHDOG=1");
            let half_ms = self.notifier.watchdog_usec().unwrap_or(2_000_000) / 2_000;
            self.next_watchdog_ms = Some(now + half_ms.max(1));
        }
        self.ping_children(now);
        // `drain_timeout_ms` bounds a reload's drains as it bounds a stop's.
        let drain_ms = self.config.server.drain_timeout_ms;
        for c in self.children.values_mut() {
            if c.retired_ms.is_some_and(|at| now >= at.saturating_add(drain_ms)) {
                log::warn!(
                    "{} pid {} did not drain within {drain_ms} ms of a reload: killing it",
                    c.role.describe(),
                    c.pid
                );
                process::kill(c.pid, Signal::SIGKILL);
                c.retired_ms = None;
            }
        }
        if let Phase::Stopping { mut deadline_ms, mut keeper_deadline_ms } = self.phase {
            if now >= deadline_ms {
                for c in self.children.values().filter(|c| c.role != Role::Keeper) {
                    log::warn!("{} pid {} did not finish in time: killing it", c.role.describe(), c.pid);
                    process::kill(c.pid, Signal::SIGKILL);
                }
                deadline_ms = NEVER;
            }
            if keeper_deadline_ms.is_some_and(|k| now >= k) {
                for c in self.children.values().filter(|c| c.role == Role::Keeper) {
                    log::warn!("keeper pid {} did not stop in time: killing it", c.pid);
                    process::kill(c.pid, Signal::SIGKILL);
                }
                keeper_deadline_ms = Some(NEVER);
            }
            self.phase = Phase::Stopping { deadline_ms, keeper_deadline_ms };
        }
    }

    // ----- stop -----

    fn begin_stop(&mut self, code: i32, drain_ms: u64) {
        let now = self.clock.now_ms();
        if let Phase::Stopping { deadline_ms, keeper_deadline_ms } = self.phase {
            // Asked again: stop waiting for the workers.
            self.exit_code = self.exit_code.max(code);
            if deadline_ms != NEVER {
                log::info!("stopping now: workers still draining are killed");
                self.phase = Phase::Stopping { deadline_ms: now, keeper_deadline_ms };
            }
            return;
        }
        self.exit_code = code;
        self.notify("STOPPING=1");
        log::info!("draining for up to {drain_ms} ms");
        self.phase = Phase::Stopping { deadline_ms: now + drain_ms, keeper_deadline_ms: None };
        self.scheduled.clear();
        self.reload = None;
        // Stop accepting, for every process at once: shutting a listening socket down (not
        // just closing our copy) stops it in the workers too, so new connections are refused
        // at once instead of waiting in a queue nobody will serve.
        match &mut self.listeners {
            Listeners::Shared(shared) => {
                for l in shared.iter_mut() {
                    let _ = self.poll.registry().deregister(l);
                    let _ = socket2::SockRef::from(&*l).shutdown(Shutdown::Read);
                }
            }
            Listeners::PerSlot(per_slot) => {
                for l in per_slot.iter().flatten() {
                    let _ = socket2::SockRef::from(l).shutdown(Shutdown::Read);
                }
            }
        }
        self.listeners = Listeners::PerSlot(Vec::new());
        for (mut stream, _) in self.waiting.drain(..) {
            let _ = stream.write(&self.overloaded);
        }
        // Workers and the courier go first; the keeper, which journals, last.
        let workers: Vec<u64> = self.children.iter().filter(|(_, c)| c.role != Role::Keeper).map(|(g, _)| *g).collect();
        for g in workers {
            self.retire_worker(g);
        }
        self.check_stop_progress(now);
    }

    fn check_stop_progress(&mut self, now: u64) {
        let Phase::Stopping { deadline_ms, keeper_deadline_ms: None } = self.phase else { return };
        if self.children.values().any(|c| c.role != Role::Keeper) {
            return;
        }
        let keeper = self.children.iter().find(|(_, c)| c.role == Role::Keeper).map(|(g, _)| *g);
        if let Some(g) = keeper {
            if let Some(c) = self.children.get_mut(&g) {
                c.state = State::Leaving;
            }
            self.send(g, &ToChild::Stop);
        }
        self.phase = Phase::Stopping { deadline_ms, keeper_deadline_ms: Some(now + KEEPER_STOP_MS) };
    }

    /// Kills every child at once (the master itself failed).
    fn kill_all(&mut self) {
        for c in self.children.values() {
            process::kill(c.pid, Signal::SIGKILL);
        }
    }

    // ----- reload -----

    fn on_reload(&mut self) {
        match self.phase {
            Phase::Starting => {
                log::warn!("reload ignored: still starting");
                return;
            }
            Phase::Stopping { .. } => return,
            Phase::Running => {}
        }
        if let Some((next, _)) = self.reload {
            log::info!("a reload is in progress; another one follows it");
            self.reload = Some((next, true));
            return;
        }
        self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
        match self.load_new_config() {
            Err(reason) => {
                self.counters.reloads_refused += 1;
                log::error!("reload refused, the running configuration stays: {reason}");
                self.notify(&format!("READY=1\nSTATUS={}", self.status_line()));
            }
            Ok((config, text)) => {
                for warning in &config.warnings {
                    log::warn!("{warning}");
                }
                super::logging::set_level(&config.server.log_level);
                self.balancer.set_rule(config.server.balance);
                self.policy = restart_policy(&config);
                self.config = config;
                self.config_text = text;
                if let Some(k) = self.keeper {
                    self.send(k, &ToChild::Reconfigure { config_text: self.config_text.clone() });
                }
                self.reload = Some((0, false));
                self.step_reload();
            }
        }
    }

    fn load_new_config(&self) -> Result<(Config, Option<String>), String> {
        let text = match &self.config_path {
            None => None,
            Some(path) => {
                Some(std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?)
            }
        };
        let config = Config::load(text.as_deref(), &super::environment()).map_err(|problems| {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            format!("{} problem(s): {}", list.len(), list.join("; "))
        })?;
        let old = &self.config.server;
        let new = &config.server;
        let mut needs_restart = Vec::new();
        if old.listen != new.listen {
            needs_restart.push("server.listen");
        }
        if old.dispatch != new.dispatch {
            needs_restart.push("server.dispatch");
        }
        if old.data_dir != new.data_dir {
            needs_restart.push("server.data_dir");
        }
        if worker_count(&config) != self.slots {
            needs_restart.push("server.workers");
        }
        if self.config.cluster != config.cluster {
            needs_restart.push("[cluster]");
        }
        if !needs_restart.is_empty() {
            return Err(format!("{} changed; these take effect only on a restart", needs_restart.join(", ")));
        }
        Ok((config, text))
    }

    /// Replaces the next worker slot, or finishes the reload.
    fn step_reload(&mut self) {
        let Some((next, again)) = self.reload else { return };
        if next >= self.slots {
            self.reload = None;
            self.counters.reloads_ok += 1;
            // The courier takes the new [outbox] settings by being replaced: the keeper hands
            // the new one whatever the old one still held (delivered at least once).
            if let Some(old) = self.courier.take() {
                self.retire_worker(old);
                self.spawn(Role::Courier);
            }
            log::info!("reload complete");
            self.notify(&format!("READY=1\nSTATUS={}", self.status_line()));
            if again {
                self.on_reload();
            }
            return;
        }
        if self.slot_pending[next].is_none() {
            self.spawn(Role::Worker(next as u32));
        }
    }

    // ----- fd passing -----

    fn on_accept(&mut self, index: usize) {
        loop {
            let Listeners::Shared(shared) = &self.listeners else { return };
            let Some(listener) = shared.get(index) else { return };
            match listener.accept() {
                Ok((stream, _)) => self.route_connection(stream, self.clock.now_ms()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Hands a connection to a worker, re-routing on failure; with no worker able to take
    /// it, it waits (bounded) for one.
    fn route_connection(&mut self, mut stream: TcpStream, since_ms: u64) {
        let candidates: Vec<u64> = self
            .slot_current
            .iter()
            .flatten()
            .copied()
            .filter(|g| self.children.get(g).is_some_and(|c| c.state == State::Ready))
            .collect();
        let counts: Vec<u32> = candidates.iter().map(|g| self.children[g].open_connections).collect();
        let mut skip = vec![false; candidates.len()];
        while let Some(i) = self.balancer.pick(&counts, &skip) {
            let Some(child) = self.children.get_mut(&candidates[i]) else { break };
            match fdpass::send(child.fds.as_fd(), &self.client_record, &[stream.as_fd()]) {
                Ok(()) => {
                    child.open_connections += 1;
                    return;
                }
                Err(e) => {
                    self.counters.handoff_failures += 1;
                    log::warn!("hand-off to worker pid {} failed ({e}); trying another", child.pid);
                    skip[i] = true;
                }
            }
        }
        if self.waiting.len() >= MAX_WAITING_CONNECTIONS {
            let _ = stream.write(&self.overloaded);
            let _ = stream.shutdown(Shutdown::Write);
            return;
        }
        self.waiting.push_back((stream, since_ms));
    }

    fn route_waiting(&mut self) {
        for _ in 0..self.waiting.len() {
            let Some((stream, since)) = self.waiting.pop_front() else { break };
            self.route_connection(stream, since);
        }
    }

    // ----- metrics -----

    fn start_collection(&mut self, requester: u64, request_id: u64) {
        let id = self.next_collection;
        self.next_collection += 1;
        let targets: Vec<u64> = self
            .children
            .iter()
            .filter(|(_, c)| c.state != State::Starting && c.control.is_some() && c.role != Role::Courier)
            .map(|(g, _)| *g)
            .collect();
        for &g in &targets {
            self.send(g, &ToChild::Collect { id });
        }
        self.collections.insert(
            id,
            Collection {
                requester,
                request_id,
                waiting: targets.into_iter().collect(),
                workers: Vec::new(),
                keeper: None,
                deadline_ms: self.clock.now_ms() + COLLECT_TIMEOUT_MS,
            },
        );
        self.maybe_finish_collection(id, false);
    }

    fn maybe_finish_collection(&mut self, id: u64, timed_out: bool) {
        let Some(c) = self.collections.get(&id) else { return };
        if !c.waiting.is_empty() && !timed_out {
            return;
        }
        let Some(c) = self.collections.remove(&id) else { return };
        let snapshot = self.master_snapshot();
        let text = metrics::render(&snapshot, c.keeper.as_ref(), &c.workers, &self.retired);
        self.send(c.requester, &ToChild::MetricsText { id: c.request_id, text });
    }

    fn master_snapshot(&self) -> MasterSnapshot {
        let ready = self
            .slot_current
            .iter()
            .flatten()
            .filter(|g| self.children.get(g).is_some_and(|c| c.state == State::Ready))
            .count();
        MasterSnapshot {
            workers_configured: self.slots as u64,
            workers_ready: ready as u64,
            keeper_up: self.keeper_ready,
            ..self.counters.clone()
        }
    }
}
