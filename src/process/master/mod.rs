//! The master process: a thin shell around the lifecycle machine (`core::lifecycle`, spec in
//! docs/lifecycle.md). It owns the sockets, the children as processes and the link to
//! systemd; it turns signals, child messages, deaths and time into the machine's events and
//! carries out the actions it returns. Every decision (what to start, replace, drain, kill,
//! when to say `READY=1`, how an upgrade proceeds) is the machine's.
//!
//! - `listen.rs`: binding, inheriting and letting go of the listening sockets.
//! - `children.rs`: starting a child; handing workers their keeper channel.
//! - `dispatch.rs`: fd-passing (accept, balance, hand off, hold while no worker is ready).
//! - `collect.rs`: `/metrics` gathered from every child.
//! - `upgrade.rs`: starting the new binary and the link between the two masters.
//!
//! Signals: SIGTERM/SIGINT/SIGQUIT stop, SIGUSR1/SIGHUP reload, SIGUSR2 upgrades the binary; SIGALRM,
//! SIGVTALRM, SIGPROF, SIGXFSZ, SIGIO and SIGPWR, whose default action would end the master,
//! are logged and ignored; SIGPIPE is ignored without a word (a write to a closed socket is
//! an error, not a death).

mod children;
mod collect;
mod dispatch;
mod listen;
mod upgrade;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};

pub use listen::LISTEN_BACKLOG;

use self::children::{Proc, CHILD_BASE};
use self::collect::Collections;
use self::dispatch::Dispatcher;
use self::listen::Listeners;
use self::upgrade::{Invocation, Link};
use crate::config::{Config, Dispatch};
use crate::core::lifecycle::{
    self, Action, Ending, Event, Generation, Level, Lifecycle, Message, Notice, Role, Settings,
};
use crate::core::supervise::RestartPolicy;
use crate::ipc::message::{ToChild, ToMaster, Upgrade};
use crate::metrics::{MasterSnapshot, ProcessSample};
use crate::process::figures;
use crate::sys::clock::{monotonic_usec, Monotonic};
use crate::sys::notify::Notifier;
use crate::sys::process::{self, Exit};
use crate::sys::procstat;
use crate::sys::signals::{self, Signal, SignalSource};

pub use crate::core::lifecycle::KEEPER_STOP_MS;

const SIGNALS: Token = Token(0);
/// Signals a user may plausibly send whose default action would end the master, and that
/// mean nothing to it: each is logged and ignored.
const STRAY_SIGNALS: &[Signal] =
    &[Signal::SIGALRM, Signal::SIGVTALRM, Signal::SIGPROF, Signal::SIGXFSZ, Signal::SIGIO, Signal::SIGPWR];
const LISTENER_BASE: usize = 16;
/// Longest sleep of the loop when nothing is due.
const MAX_SLEEP_MS: u64 = 1_000;

/// Runs the master until the service stops; returns the exit code.
pub fn run(config: Config, config_path: Option<PathBuf>, config_text: Option<String>) -> i32 {
    process::set_name("lh-master");
    super::logging::init("lh-master", &config.server);
    for warning in &config.warnings {
        log::warn!("{warning}");
    }
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

/// The lifecycle settings a configuration asks for.
fn settings(config: &Config) -> Settings {
    let s = &config.server;
    Settings {
        policy: RestartPolicy {
            base_delay_ms: RestartPolicy::DEFAULT.base_delay_ms.min(s.restart_delay_max_ms),
            max_delay_ms: s.restart_delay_max_ms,
            stable_after_ms: RestartPolicy::DEFAULT.stable_after_ms,
            storm_window_ms: s.crash_storm_window_ms,
            storm_max_exits: s.crash_storm_exits as usize,
        },
        drain_timeout_ms: s.drain_timeout_ms,
        ping_timeout_ms: s.child_ping_timeout_ms,
    }
}

/// Workers for a configuration: the configured count, or one per CPU.
pub fn worker_count(config: &Config) -> usize {
    match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    }
}

/// How a child's exit reads to the lifecycle.
fn ending(exit: Exit) -> Ending {
    match exit {
        Exit::Code(0) => Ending::Clean,
        Exit::Code(c) if c == super::keeper::EXIT_REBUILD => Ending::Rebuild,
        Exit::Code(c) if c == super::keeper::EXIT_JOURNAL_CORRUPT => Ending::JournalCorrupt,
        Exit::Code(c) if c == super::keeper::EXIT_JOURNAL_FAILED => Ending::JournalFailed,
        _ => Ending::Failed,
    }
}

/// The other master of an upgrade.
enum Partner {
    None,
    /// Old master: the new binary's process and the link to it.
    Successor {
        pid: Option<i32>,
        link: Option<Link>,
    },
    /// New master: the link to the old master.
    Predecessor(Link),
}

struct Master {
    poll: Poll,
    signals: SignalSource,
    notifier: Notifier,
    clock: Monotonic,
    config: Config,
    config_text: Option<String>,
    config_path: Option<PathBuf>,
    invocation: Invocation,
    machine: Lifecycle,
    events: VecDeque<Event>,
    addresses: Vec<SocketAddr>,
    listeners: Listeners,
    procs: BTreeMap<Generation, Proc>,
    pids: HashMap<i32, Generation>,
    dispatcher: Dispatcher,
    collections: Collections,
    partner: Partner,
    next_watchdog_ms: Option<u64>,
    /// The last `STATUS=` sent.
    last_status: String,
    exit: Option<i32>,
}

impl Master {
    fn new(config: Config, config_path: Option<PathBuf>, config_text: Option<String>) -> Result<Self, String> {
        let invocation = Invocation::current();
        let slots = worker_count(&config);
        let poll = Poll::new().map_err(|e| format!("cannot create the event loop: {e}"))?;
        let (mut listeners, addresses, partner) = match upgrade::inherited(poll.registry()) {
            None => {
                let (l, a) = listen::bind_all(&config, slots)?;
                (l, a, Partner::None)
            }
            Some(taken) => {
                let (layout, link, fds) = taken?;
                let (l, a) = listen::inherit(&config, slots, &layout, fds)?;
                log::info!("upgrade: took over the listeners of the running master");
                (l, a, Partner::Predecessor(link))
            }
        };
        signals::ignore(Signal::SIGPIPE);
        let handled = [
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGUSR1,
            Signal::SIGHUP,
            Signal::SIGUSR2,
            Signal::SIGCHLD,
        ];
        let mut signals = SignalSource::new(&[&handled[..], STRAY_SIGNALS].concat())
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
        let next_watchdog_ms = notifier.watchdog_usec().map(|_| 0);
        Ok(Self {
            poll,
            signals,
            notifier,
            clock: Monotonic::new(),
            machine: Lifecycle::new(settings(&config), slots),
            dispatcher: Dispatcher::new(config.server.balance),
            config,
            config_text,
            config_path,
            invocation,
            events: VecDeque::new(),
            addresses,
            listeners,
            procs: BTreeMap::new(),
            pids: HashMap::new(),
            collections: Collections::default(),
            partner,
            next_watchdog_ms,
            last_status: String::new(),
            exit: None,
        })
    }

    fn notify(&self, state: &str) {
        if let Err(e) = self.notifier.notify(state) {
            log::warn!("sd_notify failed: {e}");
        }
    }

    /// Where and how the service listens.
    fn listening(&self) -> String {
        let addrs: Vec<String> = (self.addresses.iter().enumerate())
            .map(|(i, a)| if self.config.is_tls_listener(i) { format!("{a} (tls)") } else { a.to_string() })
            .collect();
        let dispatch = match self.config.server.dispatch {
            Dispatch::Reuseport => "reuseport",
            Dispatch::FdPassing => "fd-passing",
        };
        format!("{} with {} workers ({dispatch})", addrs.join(", "), self.machine.slots())
    }

    /// The one-line state systemd shows (`systemctl status`).
    fn status_line(&self) -> String {
        let snapshot = self.master_snapshot();
        format!(
            "serving on {}; {}/{} workers ready; keeper {}",
            self.listening(),
            snapshot.workers_ready,
            snapshot.workers_configured,
            if snapshot.keeper_up { "up" } else { "down" }
        )
    }

    /// Sends `STATUS=` when the state line changed (only while serving).
    fn publish_status(&mut self) {
        if !self.machine.is_serving() {
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
        let upgrade = matches!(self.partner, Partner::Predecessor(_));
        self.events.push_back(Event::Start { upgrade });
        self.drive();
        let mut events = Events::with_capacity(256);
        loop {
            if let Some(code) = self.exit {
                return Ok(code);
            }
            let now = self.clock.now_ms();
            let due = [
                self.machine.next_due_ms(),
                self.dispatcher.next_due_ms(),
                self.collections.next_due_ms(),
                self.next_watchdog_ms,
            ]
            .into_iter()
            .flatten()
            .min();
            let sleep = due.map_or(MAX_SLEEP_MS, |d| d.saturating_sub(now)).min(MAX_SLEEP_MS);
            if let Err(e) = self.poll.poll(&mut events, Some(Duration::from_millis(sleep))) {
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(),
                    upgrade::TOKEN => self.on_partner_message(),
                    Token(t) if (LISTENER_BASE..CHILD_BASE).contains(&t) => self.on_accept(t - LISTENER_BASE),
                    Token(t) => self.on_child_message((t - CHILD_BASE) as u64),
                }
            }
            self.events.push_back(Event::Tick);
            self.drive();
            self.on_timers(self.clock.now_ms());
            self.publish_status();
            for p in self.procs.values_mut() {
                if let Some(c) = p.control.as_mut() {
                    let _ = c.flush();
                }
            }
            match &mut self.partner {
                Partner::Successor { link: Some(link), .. } | Partner::Predecessor(link) => link.flush(),
                _ => {}
            }
        }
    }

    /// Feeds the queued events to the machine and carries out its actions (which may queue
    /// more events: a failed spawn, a loaded configuration).
    fn drive(&mut self) {
        while let Some(event) = self.events.pop_front() {
            let now = self.clock.now_ms();
            for action in self.machine.on_event(event, now) {
                self.carry_out(action);
            }
        }
        let serving = self.machine.serving_workers();
        self.dispatcher.route_waiting(&serving, &mut self.procs);
    }

    fn carry_out(&mut self, action: Action) {
        match action {
            Action::Spawn { generation, role } => self.spawn(generation, role),
            Action::Send { to, message } => {
                let message = match message {
                    Message::Drain => ToChild::Drain,
                    Message::Stop => ToChild::Stop,
                    Message::Ping(n) => ToChild::Ping { n },
                    Message::Reconfigure => ToChild::Reconfigure { config_text: self.config_text.clone() },
                };
                self.send(to, &message);
            }
            Action::Kill(generation) => {
                if let Some(p) = self.procs.get(&generation) {
                    process::kill(p.pid, Signal::SIGKILL);
                }
            }
            Action::GiveKeeperChannel { to, keeper } => {
                let (Some(worker), Some(k)) = (self.procs.get(&to), self.procs.get(&keeper)) else { return };
                match children::give_keeper_channel(worker, k, keeper) {
                    Ok(()) => self.events.push_back(Event::KeeperChannel { to, keeper }),
                    // Tried again on the next turn (or when the worker asks). Seen when the
                    // keeper died meanwhile, which is logged when it is reaped.
                    Err(e) => log::info!("cannot hand the {} its keeper channel: {e}", worker.role.describe()),
                }
            }
            Action::Notify(notice) => self.on_notice(notice),
            Action::LoadConfig => match self.load_new_config() {
                Ok((config, text)) => {
                    for warning in &config.warnings {
                        log::warn!("{warning}");
                    }
                    super::logging::reconfigure(&config.server);
                    self.dispatcher.set_rule(config.server.balance);
                    self.events.push_back(Event::ConfigLoaded(settings(&config)));
                    self.config = config;
                    self.config_text = text;
                }
                Err(reason) => self.events.push_back(Event::ConfigRefused(reason)),
            },
            Action::StopAccepting { shutdown } => {
                self.listeners.let_go(self.poll.registry(), shutdown);
                self.dispatcher.refuse_waiting();
            }
            Action::StartSuccessor => {
                let layout = self.listeners.layout(self.machine.slots(), self.addresses.len());
                match upgrade::start_successor(&self.invocation, &self.listeners, layout, self.poll.registry()) {
                    Ok((pid, link)) => {
                        self.partner = Partner::Successor { pid: Some(pid), link: Some(link) };
                        self.events.push_back(Event::SuccessorStarted { pid });
                    }
                    Err(e) => {
                        let program = self.invocation.program.display();
                        self.events.push_back(Event::SuccessorGone(format!("cannot start {program}: {e}")));
                    }
                }
            }
            Action::ReleaseKeeper => self.tell_partner(Upgrade::KeeperReleased),
            Action::StopSuccessor { kill } => {
                if let Partner::Successor { pid: Some(pid), .. } = self.partner {
                    process::kill(pid, if kill { Signal::SIGKILL } else { Signal::SIGTERM });
                }
            }
            Action::AskForKeeper => self.tell_partner(Upgrade::WantKeeper),
            Action::SayReady => self.tell_partner(Upgrade::Ready),
            Action::Log(level, text) => match level {
                Level::Debug => log::debug!("{text}"),
                Level::Info => log::info!("{text}"),
                Level::Warn => log::warn!("{text}"),
                Level::Error => log::error!("{text}"),
            },
            Action::Exit(code) => self.exit = Some(code),
        }
    }

    fn on_notice(&mut self, notice: Notice) {
        match notice {
            Notice::Ready => {
                self.last_status = self.status_line();
                log::info!("{}", self.last_status);
                self.notify(&format!("READY=1\nSTATUS={}", self.last_status));
            }
            Notice::Reloading => self.notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec())),
            Notice::Stopping => self.notify("STOPPING=1"),
            Notice::MainPid(pid) => self.notify(&format!("MAINPID={pid}")),
        }
    }

    fn tell_partner(&mut self, message: Upgrade) {
        match &mut self.partner {
            Partner::Successor { link: Some(link), .. } | Partner::Predecessor(link) => link.send(message),
            _ => {}
        }
    }

    fn spawn(&mut self, generation: Generation, role: Role) {
        match children::start(role, generation, &self.listeners, self.config_text.clone(), self.poll.registry()) {
            Ok(p) => {
                log::debug!("started {} as pid {} (generation {generation})", role.describe(), p.pid);
                self.pids.insert(p.pid, generation);
                self.events.push_back(Event::Spawned { generation, pid: p.pid });
                self.procs.insert(generation, p);
            }
            Err(e) => self.events.push_back(Event::SpawnFailed { generation, reason: e.to_string() }),
        }
    }

    fn send(&mut self, generation: Generation, message: &ToChild) {
        if let Some(c) = self.procs.get_mut(&generation).and_then(|p| p.control.as_mut()) {
            if let Err(e) = c.send(message) {
                log::warn!("cannot message child generation {generation}: {e}");
            }
        }
    }

    // ----- signals, children, the other master -----

    fn on_signals(&mut self) {
        for signal in self.signals.pending() {
            let event = match signal {
                Signal::SIGTERM => lifecycle::Signal::Term,
                Signal::SIGINT => lifecycle::Signal::Int,
                Signal::SIGQUIT => lifecycle::Signal::Quit,
                Signal::SIGUSR1 => lifecycle::Signal::Usr1,
                Signal::SIGHUP => lifecycle::Signal::Hup,
                Signal::SIGUSR2 => lifecycle::Signal::Usr2,
                Signal::SIGCHLD => {
                    for (pid, exit) in process::reap() {
                        self.on_exit(pid, exit);
                    }
                    continue;
                }
                other => lifecycle::Signal::Stray(other.as_str()),
            };
            self.events.push_back(Event::Signal(event));
        }
        self.drive();
    }

    fn on_exit(&mut self, pid: i32, exit: Exit) {
        if let Partner::Successor { pid: successor @ Some(_), link } = &mut self.partner {
            if *successor == Some(pid) {
                *successor = None;
                if let Some(mut l) = link.take() {
                    let _ = l.receive(self.poll.registry());
                }
                self.events.push_back(Event::SuccessorGone(format!("the new binary {exit}")));
                return;
            }
        }
        let Some(&generation) = self.pids.get(&pid) else { return };
        // What it said last (a draining worker's final counters) may still be unread.
        self.on_child_message(generation);
        self.pids.remove(&pid);
        if let Some(mut p) = self.procs.remove(&generation) {
            if let Some(mut c) = p.control.take() {
                c.deregister(self.poll.registry());
            }
        }
        self.collections.forget(generation);
        self.events.push_back(Event::Exited { generation, ending: ending(exit), text: exit.to_string() });
    }

    fn on_partner_message(&mut self) {
        let registry = self.poll.registry();
        let received = match &mut self.partner {
            Partner::Successor { link: Some(link), .. } | Partner::Predecessor(link) => link.receive(registry),
            _ => return,
        };
        let messages = match received {
            Ok(messages) => messages,
            Err(reason) => {
                match &mut self.partner {
                    Partner::Predecessor(_) => {
                        self.partner = Partner::None;
                        self.events.push_back(Event::PredecessorGone);
                    }
                    // Its exit, reaped, says how it ended; a closed link alone means the same.
                    Partner::Successor { link, .. } => {
                        *link = None;
                        self.events.push_back(Event::SuccessorGone(reason));
                    }
                    Partner::None => {}
                }
                self.drive();
                return;
            }
        };
        for m in messages {
            self.events.push_back(match m {
                Upgrade::WantKeeper => Event::SuccessorWantsKeeper,
                Upgrade::KeeperReleased => Event::KeeperReleased,
                Upgrade::Ready => Event::SuccessorReady,
            });
        }
        self.drive();
    }

    fn on_child_message(&mut self, generation: Generation) {
        let Some(p) = self.procs.get_mut(&generation) else { return };
        let Some(control) = p.control.as_mut() else { return };
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
                log::warn!("closing the channel of {} (pid {}): {e}", p.role.describe(), p.pid);
            }
            if let Some(mut c) = p.control.take() {
                c.deregister(self.poll.registry());
            }
        }
        for m in messages {
            self.on_message(generation, m);
        }
        self.drive();
    }

    fn on_message(&mut self, generation: Generation, message: ToMaster) {
        match message {
            ToMaster::Ready => self.events.push_back(Event::Ready(generation)),
            ToMaster::Pong { .. } => self.events.push_back(Event::Pong(generation)),
            ToMaster::Closed { connections } => {
                if let Some(p) = self.procs.get_mut(&generation) {
                    p.open_connections = p.open_connections.saturating_sub(connections);
                }
            }
            ToMaster::NeedKeeper { lost_generation } => {
                self.events.push_back(Event::NeedKeeper { generation, lost: lost_generation });
            }
            ToMaster::MetricsRequest { id } => {
                let targets: Vec<Generation> = self
                    .machine
                    .children()
                    .filter(|(g, c)| {
                        c.state != lifecycle::ChildState::Starting
                            && c.role != Role::Courier
                            && self.procs.get(g).is_some_and(|p| p.control.is_some())
                    })
                    .map(|(g, _)| g)
                    .collect();
                let collection = self.collections.start(generation, id, &targets, self.clock.now_ms());
                for g in targets {
                    self.send(g, &ToChild::Collect { id: collection });
                }
                self.finish_collections();
            }
            ToMaster::WorkerMetrics { id: 0, snapshot } => self.collections.retired.add(&snapshot),
            ToMaster::WorkerMetrics { id, snapshot } => {
                self.collections.worker(id, generation, snapshot);
                self.finish_collections();
            }
            ToMaster::KeeperMetrics { id, snapshot } => {
                self.collections.keeper(id, generation, *snapshot);
                self.finish_collections();
            }
        }
    }

    fn on_timers(&mut self, now: u64) {
        self.finish_collections();
        self.dispatcher.expire(now);
        if self.next_watchdog_ms.is_some_and(|w| w <= now) {
            self.notify("WATCHDOG=1");
            let half_ms = self.notifier.watchdog_usec().unwrap_or(2_000_000) / 2_000;
            self.next_watchdog_ms = Some(now + half_ms.max(1));
        }
    }

    /// Kills every child at once (the master itself failed).
    fn kill_all(&mut self) {
        for p in self.procs.values() {
            process::kill(p.pid, Signal::SIGKILL);
        }
    }

    fn load_new_config(&self) -> Result<(Config, Option<String>), String> {
        let text = match &self.config_path {
            None => None,
            Some(path) => {
                Some(std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?)
            }
        };
        let config = super::key_files::load(text.as_deref(), &super::environment()).map_err(|problems| {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            format!("{} problem(s): {}", list.len(), list.join("; "))
        })?;
        // New certificates are checked here: a bad one refuses the reload and the workers
        // keep the ones they have.
        if let Some(files) = &config.tls.files {
            super::tls::ListenerTls::load(files, config.tls.client_auth).map_err(|problems| {
                let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
                format!("{} problem(s): {}", list.len(), list.join("; "))
            })?;
        }
        let old = &self.config.server;
        let new = &config.server;
        let mut needs_restart = Vec::new();
        if old.listen != new.listen {
            needs_restart.push("server.listen");
        }
        if self.config.tls.listen != config.tls.listen {
            needs_restart.push("tls.listen");
        }
        if old.dispatch != new.dispatch {
            needs_restart.push("server.dispatch");
        }
        if old.data_dir != new.data_dir {
            needs_restart.push("server.data_dir");
        }
        if worker_count(&config) != self.machine.slots() {
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

    // ----- fd passing -----

    fn on_accept(&mut self, index: usize) {
        loop {
            let Listeners::Shared(shared) = &self.listeners else { return };
            let Some(listener) = shared.get(index) else { return };
            match listener.accept() {
                Ok((stream, _)) => {
                    let serving = self.machine.serving_workers();
                    let tls = self.config.is_tls_listener(index);
                    self.dispatcher.route(stream, tls, self.clock.now_ms(), &serving, &mut self.procs);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    // ----- metrics -----

    fn finish_collections(&mut self) {
        let now = self.clock.now_ms();
        // Taken out for the call, so the snapshot can be made from the rest of `self`.
        let mut collections = std::mem::take(&mut self.collections);
        let pages = collections.finished(now, || self.master_snapshot());
        self.collections = collections;
        for page in pages {
            self.send(page.requester, &ToChild::MetricsText { id: page.request_id, text: page.text });
        }
    }

    fn master_snapshot(&self) -> MasterSnapshot {
        let c = self.machine.counters();
        MasterSnapshot {
            workers_configured: self.machine.slots() as u64,
            workers_ready: self.machine.serving_workers().len() as u64,
            keeper_up: self.machine.keeper_up(),
            cluster_node: self.config.cluster.as_ref().map(|c| c.node_name.clone()),
            worker_restarts: c.restarts_of(Role::Worker(0)),
            keeper_restarts: c.restarts_of(Role::Keeper),
            courier_restarts: c.restarts_of(Role::Courier),
            worker_hangs: c.hangs_of(Role::Worker(0)),
            keeper_hangs: c.hangs_of(Role::Keeper),
            courier_hangs: c.hangs_of(Role::Courier),
            reloads_ok: c.reloads_ok,
            reloads_refused: c.reloads_refused,
            handoff_failures: self.dispatcher.handoff_failures,
            processes: self.process_samples(),
        }
    }

    /// The master's own figures, and the courier's (the newest, during a reload), which
    /// takes no part in collections: read from `/proc` by pid.
    fn process_samples(&self) -> Vec<ProcessSample> {
        let sample = |role: &str, usage| ProcessSample { role: role.to_string(), slot: None, stats: figures(usage) };
        let courier = self.procs.values().rev().find(|p| p.role == Role::Courier).and_then(|p| procstat::of(p.pid));
        let own = procstat::own();
        own.map(|u| sample("master", u)).into_iter().chain(courier.map(|u| sample("courier", u))).collect()
    }
}
