//! The master's lifecycle as a pure state machine: which children run, by generation and
//! role; the phase (starting, running, reloading, upgrading, stopping); the reload cursor;
//! the stop order; the restart policy; pings; and both sides of a binary upgrade.
//!
//! The master process feeds it [`Event`]s (a signal, a child ready, a pong, a child's exit, a
//! configuration loaded, a message of the other master in an upgrade, a timer tick), each with
//! the time on the master's monotonic clock, and carries out the [`Action`]s it returns
//! (spawn, send, kill, hand a keeper channel, notify systemd, start the new binary, log,
//! exit). Nothing here touches a process, socket, clock or file. docs/lifecycle.md is the
//! spec; the rules in short:
//!
//! - **Start**: the keeper first; once it is ready, the courier and one worker per slot;
//!   `READY=1` once all are ready. A child that dies or cannot start during start-up fails
//!   the start (exit 1). A master started by an upgrade first asks the old master for the
//!   data directory and starts its keeper when the old keeper has released it.
//! - **Supervision**: a dead child is replaced by the restart policy (`supervise`); a crash
//!   storm stops the service with exit 1. Keeper exits that are not crashes (rebuild, journal
//!   write failure, corrupt journal) have their own answers.
//! - **Pings**: every ready child is pinged four times per `ping_timeout_ms`; one that has not
//!   answered for the whole timeout is killed (and replaced like a crashed one).
//! - **Reload** (`SIGUSR1`/`SIGHUP`): the configuration is loaded and validated (refused: the
//!   running one stays); the keeper is told; then one slot at a time a new worker starts and
//!   the old one drains once the new one is ready; the courier is replaced last. A reload
//!   asked during a reload follows it. Draining workers are killed after `drain_timeout_ms`.
//! - **Upgrade** (`SIGUSR2`): the new binary is started as a new master with the listeners;
//!   when it asks, the old keeper stops (journal synced, data directory released); when the
//!   new master is ready, the old one names it systemd's main process and stops its own
//!   children without touching the listeners. A new master that fails, exits or does not
//!   come up within [`UPGRADE_TIMEOUT_MS`] is stopped and the old master goes on serving
//!   (its keeper started again at once if it had handed it over).
//! - **Stop** (`SIGTERM`/`SIGINT`/`SIGQUIT`, a crash storm, a failed start): listeners stop accepting;
//!   workers and courier drain (killed at `drain_timeout_ms`); then the keeper is told to
//!   stop (killed after [`KEEPER_STOP_MS`]); exit once every child is gone. A second stop
//!   signal kills the draining children at once.
//! - Every other signal the master catches is logged and ignored.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use super::supervise::{History, Restart, RestartPolicy};

/// Identifies one child for its whole life (never reused within a master).
pub type Generation = u64;

/// Time the keeper gets to flush and exit after the workers are gone.
pub const KEEPER_STOP_MS: u64 = 2_000;
/// Delay before a keeper that could not write its journal is started again.
pub const JOURNAL_RESTART_MS: u64 = 1_000;
/// Time a new master gets from its start to being ready, keeper recovery included.
pub const UPGRADE_TIMEOUT_MS: u64 = 60_000;

/// What a child does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Owns the lease table and its journal.
    Keeper,
    /// Serves HTTP on one slot.
    Worker(u32),
    /// Delivers the outbox.
    Courier,
}

impl Role {
    /// How logs name it.
    pub fn describe(self) -> String {
        match self {
            Role::Keeper => "keeper".to_string(),
            Role::Worker(slot) => format!("worker {slot}"),
            Role::Courier => "courier".to_string(),
        }
    }

    /// Whether it needs a channel to the keeper.
    pub fn talks_to_keeper(self) -> bool {
        matches!(self, Role::Worker(_) | Role::Courier)
    }

    /// The restart history it shares (all workers share one).
    fn class(self) -> usize {
        match self {
            Role::Keeper => 0,
            Role::Worker(_) => 1,
            Role::Courier => 2,
        }
    }
}

/// The signals the master catches, as the machine sees them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Stop.
    Term,
    /// Stop (Ctrl-C).
    Int,
    /// Stop (the terminal's quit key; nginx's graceful quit).
    Quit,
    /// Reload.
    Usr1,
    /// Reload.
    Hup,
    /// Upgrade the binary.
    Usr2,
    /// Logged and ignored (its default action would end the master).
    Stray(&'static str),
}

impl Signal {
    /// Every signal the master handles, and one stray, for the generated tests.
    pub const ALL: [Signal; 7] =
        [Signal::Term, Signal::Int, Signal::Quit, Signal::Usr1, Signal::Hup, Signal::Usr2, Signal::Stray("SIGALRM")];

    fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
            Signal::Quit => "SIGQUIT",
            Signal::Usr1 => "SIGUSR1",
            Signal::Hup => "SIGHUP",
            Signal::Usr2 => "SIGUSR2",
            Signal::Stray(name) => name,
        }
    }
}

/// How a child ended, as far as the lifecycle cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Exit code 0.
    Clean,
    /// Any other code, or a signal.
    Failed,
    /// A cluster keeper ends to rebuild its replica from the log: start a new one at once.
    Rebuild,
    /// The keeper refused its journal (corrupt, or a newer format): stop the service.
    JournalCorrupt,
    /// The keeper could not write its journal: a new one starts after a pause.
    JournalFailed,
}

/// Timings the configuration sets (a reload may change them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// When to replace a dead child.
    pub policy: RestartPolicy,
    /// How long a draining child may take.
    pub drain_timeout_ms: u64,
    /// How long a child may leave pings unanswered.
    pub ping_timeout_ms: u64,
}

/// What happens to the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The master begins; `upgrade` when an old master started it with its listeners.
    Start {
        /// Wait for the old master's keeper to release the data directory first.
        upgrade: bool,
    },
    /// A signal arrived.
    Signal(Signal),
    /// A [`Action::Spawn`] was carried out: the child runs as process `pid` (logs name it).
    Spawned {
        /// The child.
        generation: Generation,
        /// Its pid.
        pid: i32,
    },
    /// A [`Action::Spawn`] could not be carried out.
    SpawnFailed {
        /// The child that never ran.
        generation: Generation,
        /// Why.
        reason: String,
    },
    /// A child said it is ready.
    Ready(Generation),
    /// A child answered a ping.
    Pong(Generation),
    /// A child was reaped.
    Exited {
        /// Which.
        generation: Generation,
        /// How it ended.
        ending: Ending,
        /// The exit as logs say it ("exited with code 3", "was killed by SIGKILL").
        text: String,
    },
    /// A channel to keeper `keeper` reached child `to`.
    KeeperChannel {
        /// The worker or courier.
        to: Generation,
        /// The keeper.
        keeper: Generation,
    },
    /// A child lost its keeper channel (`lost` is the keeper it had) and asks for one.
    NeedKeeper {
        /// The worker or courier.
        generation: Generation,
        /// The keeper whose channel broke.
        lost: Generation,
    },
    /// The configuration asked for by [`Action::LoadConfig`] is valid and now in force.
    ConfigLoaded(Settings),
    /// The configuration asked for by [`Action::LoadConfig`] was refused.
    ConfigRefused(String),
    /// Old master: the new binary runs as process `pid`.
    SuccessorStarted {
        /// Its pid.
        pid: i32,
    },
    /// Old master: the new master asks for the data directory.
    SuccessorWantsKeeper,
    /// Old master: the new master is ready.
    SuccessorReady,
    /// Old master: the new master could not start, exited, or broke its channel.
    SuccessorGone(String),
    /// New master: the old keeper released the data directory.
    KeeperReleased,
    /// New master: the old master's channel closed.
    PredecessorGone,
    /// Time passed (timers are checked on every event; this one carries nothing else).
    Tick,
}

/// A message for a child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// Finish and exit (a worker's or the courier's drain).
    Drain,
    /// Flush and exit (the keeper).
    Stop,
    /// Answer with a pong.
    Ping(u64),
    /// Take the configuration now in force.
    Reconfigure,
}

/// What systemd is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// `READY=1` (first start, after a reload or a refused one).
    Ready,
    /// `RELOADING=1`.
    Reloading,
    /// `STOPPING=1`.
    Stopping,
    /// `MAINPID=`: the new master is the service's main process now.
    MainPid(i32),
}

/// Log levels of [`Action::Log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Details.
    Debug,
    /// Normal operation.
    Info,
    /// Something went wrong and was handled.
    Warn,
    /// Something failed.
    Error,
}

/// What the master does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a child (answer [`Event::SpawnFailed`] if that fails).
    Spawn {
        /// Its generation.
        generation: Generation,
        /// Its role.
        role: Role,
    },
    /// Send a child a control message.
    Send {
        /// The child.
        to: Generation,
        /// What.
        message: Message,
    },
    /// SIGKILL a child.
    Kill(Generation),
    /// Give a worker or the courier a channel to the keeper (answer [`Event::KeeperChannel`]).
    GiveKeeperChannel {
        /// The worker or courier.
        to: Generation,
        /// The keeper.
        keeper: Generation,
    },
    /// Tell systemd.
    Notify(Notice),
    /// Read and validate the configuration (answer `ConfigLoaded` or `ConfigRefused`).
    LoadConfig,
    /// Stop taking connections. `shutdown`: for every process sharing the listeners (a
    /// stop); otherwise only this master lets go of them (it handed them to a new master).
    StopAccepting {
        /// Shut the sockets down rather than only closing this master's copies.
        shutdown: bool,
    },
    /// Old master: start the new binary with the listeners (answer `SuccessorStarted` or
    /// `SuccessorGone`).
    StartSuccessor,
    /// Old master: tell the new master the data directory is free.
    ReleaseKeeper,
    /// Old master: end the new master (SIGTERM; SIGKILL with `kill`).
    StopSuccessor {
        /// No grace: it failed to come up in time.
        kill: bool,
    },
    /// New master: ask the old master for the data directory.
    AskForKeeper,
    /// New master: tell the old master this one serves.
    SayReady,
    /// Write a log line.
    Log(Level, String),
    /// End the master with this code (every child is gone).
    Exit(i32),
}

/// Where a child is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildState {
    /// Started, not ready yet.
    Starting,
    /// Serving.
    Ready,
    /// Told to drain or stop: its exit is expected.
    Leaving,
}

/// One child, as the machine knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    /// What it does.
    pub role: Role,
    /// Where it is in its life.
    pub state: ChildState,
    /// When it was started.
    pub started_ms: u64,
    /// When a reload or an upgrade told it to drain.
    pub retired_ms: Option<u64>,
    /// When it last answered a ping (or became ready).
    pub heard_ms: u64,
    /// The keeper it last got a channel to (0: none).
    pub keeper_given: Generation,
    /// Killed: its exit is on its way, nothing more is asked of it.
    pub killed: bool,
    /// Its process, once started.
    pub pid: Option<i32>,
}

impl Child {
    /// How logs name it: role and pid.
    pub fn name(&self) -> String {
        match self.pid {
            Some(pid) => format!("{} (pid {pid})", self.role.describe()),
            None => self.role.describe(),
        }
    }
}

/// The steps of an upgrade, on the old master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeStage {
    /// The new binary starts.
    Launching,
    /// The keeper was told to stop so that the new master's keeper can take the directory.
    HandingOver,
    /// The directory is the new master's; no keeper here.
    Released,
    /// The new master failed and was stopped; waiting for its exit before a keeper starts
    /// here again (two keepers never share the directory).
    Aborting,
}

/// The master's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Children are starting; `awaiting_keeper` while an upgrade's old keeper still holds the
    /// data directory.
    Starting {
        /// Waiting for [`Event::KeeperReleased`].
        awaiting_keeper: bool,
    },
    /// Serving.
    Running,
    /// Replacing workers; `cursor` is the slot being replaced (`None`: the configuration is
    /// being loaded); `again` when another reload follows.
    Reloading {
        /// Slot being replaced.
        cursor: Option<usize>,
        /// Reload again afterwards.
        again: bool,
    },
    /// Old master: a new binary takes over.
    Upgrading {
        /// When it began.
        since_ms: u64,
        /// The step.
        stage: UpgradeStage,
        /// The new master's pid, once known.
        successor: Option<i32>,
    },
    /// Stopping with `code`.
    Stopping {
        /// Exit code.
        code: i32,
        /// Workers and courier still there are killed then (`None`: done).
        deadline_ms: Option<u64>,
        /// The keeper was told to stop; killed then if still there (`None`: not told yet).
        keeper_deadline_ms: Option<u64>,
        /// The keeper was killed already.
        keeper_killed: bool,
        /// The listeners belong to a new master: they were only let go.
        handed_over: bool,
    },
    /// [`Action::Exit`] was returned.
    Exited(i32),
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Children replaced after dying, by role class (keeper, worker, courier).
    pub restarts: [u64; 3],
    /// Children killed for missing pings, by role class.
    pub hangs: [u64; 3],
    /// Reloads applied.
    pub reloads_ok: u64,
    /// Reloads refused.
    pub reloads_refused: u64,
    /// Upgrades that handed over to a new master.
    pub upgrades_ok: u64,
    /// Upgrades whose new master did not come up.
    pub upgrades_failed: u64,
}

impl Counters {
    /// Restarts of `role`'s class.
    pub fn restarts_of(&self, role: Role) -> u64 {
        self.restarts[role.class()]
    }

    /// Hangs of `role`'s class.
    pub fn hangs_of(&self, role: Role) -> u64 {
        self.hangs[role.class()]
    }
}

/// The machine.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    settings: Settings,
    slots: usize,
    phase: Phase,
    children: BTreeMap<Generation, Child>,
    next_generation: Generation,
    keeper: Option<Generation>,
    keeper_ready: bool,
    courier: Option<Generation>,
    current: Vec<Option<Generation>>,
    pending: Vec<Option<Generation>>,
    histories: [History; 3],
    /// Replacements due: (time, role).
    scheduled: Vec<(u64, Role)>,
    next_ping_ms: u64,
    pings: u64,
    /// Born of an upgrade: tell the old master once ready.
    upgrade_born: bool,
    counters: Counters,
    out: Vec<Action>,
}

impl Lifecycle {
    /// A master with `slots` worker slots.
    pub fn new(settings: Settings, slots: usize) -> Self {
        Self {
            settings,
            slots,
            phase: Phase::Starting { awaiting_keeper: false },
            children: BTreeMap::new(),
            next_generation: 1,
            keeper: None,
            keeper_ready: false,
            courier: None,
            current: vec![None; slots],
            pending: vec![None; slots],
            histories: [History::new(), History::new(), History::new()],
            scheduled: Vec::new(),
            next_ping_ms: 0,
            pings: 0,
            upgrade_born: false,
            counters: Counters::default(),
            out: Vec::new(),
        }
    }

    // ----- queries -----

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// A child by generation.
    pub fn child(&self, generation: Generation) -> Option<&Child> {
        self.children.get(&generation)
    }

    /// Every child.
    pub fn children(&self) -> impl Iterator<Item = (Generation, &Child)> {
        self.children.iter().map(|(g, c)| (*g, c))
    }

    /// The workers that take connections: each slot's current worker, when ready.
    pub fn serving_workers(&self) -> Vec<Generation> {
        self.current
            .iter()
            .flatten()
            .copied()
            .filter(|g| self.children.get(g).is_some_and(|c| c.state == ChildState::Ready))
            .collect()
    }

    /// Whether a keeper is up.
    pub fn keeper_up(&self) -> bool {
        self.keeper_ready
    }

    /// Worker slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Counters for metrics.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Whether the service is up and not starting or stopping (status lines go to systemd).
    pub fn is_serving(&self) -> bool {
        matches!(self.phase, Phase::Running | Phase::Reloading { .. } | Phase::Upgrading { .. })
    }

    /// The next time a timer is due (the master sleeps at most until then).
    pub fn next_due_ms(&self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
        for &(at, _) in &self.scheduled {
            consider(at);
        }
        match self.phase {
            Phase::Stopping { deadline_ms, keeper_deadline_ms, keeper_killed, .. } => {
                if let Some(d) = deadline_ms {
                    consider(d);
                }
                if let (Some(k), false) = (keeper_deadline_ms, keeper_killed) {
                    consider(k);
                }
            }
            Phase::Upgrading { since_ms, stage, .. } if stage != UpgradeStage::Aborting => {
                consider(since_ms.saturating_add(UPGRADE_TIMEOUT_MS));
            }
            _ => {}
        }
        for c in self.children.values() {
            if let (Some(at), false) = (c.retired_ms, c.killed) {
                consider(at.saturating_add(self.settings.drain_timeout_ms));
            }
        }
        if !matches!(self.phase, Phase::Exited(_)) {
            consider(self.next_ping_ms);
        }
        next
    }

    // ----- the one entry point -----

    /// Feeds one event at `now_ms`; returns what to do, in order.
    pub fn on_event(&mut self, event: Event, now_ms: u64) -> Vec<Action> {
        if matches!(self.phase, Phase::Exited(_)) {
            return Vec::new();
        }
        match event {
            Event::Start { upgrade } => self.on_start(upgrade, now_ms),
            Event::Signal(signal) => self.on_signal(signal, now_ms),
            Event::Spawned { generation, pid } => {
                if let Some(c) = self.children.get_mut(&generation) {
                    c.pid = Some(pid);
                }
            }
            Event::SpawnFailed { generation, reason } => self.on_spawn_failed(generation, &reason, now_ms),
            Event::Ready(generation) => self.on_ready(generation, now_ms),
            Event::Pong(generation) => {
                if let Some(c) = self.children.get_mut(&generation) {
                    c.heard_ms = now_ms;
                }
            }
            Event::Exited { generation, ending, text } => self.on_exit(generation, ending, &text, now_ms),
            Event::KeeperChannel { to, keeper } => {
                if let Some(c) = self.children.get_mut(&to) {
                    c.keeper_given = keeper;
                }
            }
            Event::NeedKeeper { generation, lost } => {
                let given = self.children.get(&generation).map_or(0, |c| c.keeper_given);
                if self.keeper_ready && (Some(lost) == self.keeper || Some(given) != self.keeper) {
                    self.give_keeper_channel(generation);
                }
            }
            Event::ConfigLoaded(settings) => self.on_config_loaded(settings, now_ms),
            Event::ConfigRefused(reason) => self.on_config_refused(&reason),
            Event::SuccessorStarted { pid } => {
                if let Phase::Upgrading { successor, .. } = &mut self.phase {
                    *successor = Some(pid);
                    self.log(Level::Info, format!("upgrade: the new binary runs as pid {pid}"));
                }
            }
            Event::SuccessorWantsKeeper => self.on_successor_wants_keeper(),
            Event::SuccessorReady => self.on_successor_ready(now_ms),
            Event::SuccessorGone(reason) => self.on_successor_gone(&reason, now_ms),
            Event::KeeperReleased => {
                if self.phase == (Phase::Starting { awaiting_keeper: true }) {
                    self.phase = Phase::Starting { awaiting_keeper: false };
                    self.spawn(Role::Keeper, now_ms);
                }
            }
            Event::PredecessorGone => {
                if self.phase == (Phase::Starting { awaiting_keeper: true }) {
                    // It died holding nothing the kernel keeps: its keeper's lock went with
                    // its keeper. If that keeper is still there, ours refuses the lock and
                    // the start fails, which is the safe outcome.
                    self.log(Level::Warn, "upgrade: the old master went away; starting the keeper".to_string());
                    self.phase = Phase::Starting { awaiting_keeper: false };
                    self.spawn(Role::Keeper, now_ms);
                }
            }
            Event::Tick => {}
        }
        self.on_timers(now_ms);
        self.check_exit();
        std::mem::take(&mut self.out)
    }

    // ----- helpers for the output -----

    fn log(&mut self, level: Level, text: String) {
        self.out.push(Action::Log(level, text));
    }

    fn send(&mut self, to: Generation, message: Message) {
        if self.children.contains_key(&to) {
            self.out.push(Action::Send { to, message });
        }
    }

    // ----- start -----

    fn on_start(&mut self, upgrade: bool, now_ms: u64) {
        if self.next_generation != 1 || !matches!(self.phase, Phase::Starting { .. }) {
            return;
        }
        if upgrade {
            self.upgrade_born = true;
            self.phase = Phase::Starting { awaiting_keeper: true };
            self.out.push(Action::AskForKeeper);
        } else {
            self.spawn(Role::Keeper, now_ms);
        }
    }

    fn spawn(&mut self, role: Role, now_ms: u64) -> Generation {
        let generation = self.next_generation;
        self.next_generation += 1;
        self.children.insert(
            generation,
            Child {
                role,
                state: ChildState::Starting,
                started_ms: now_ms,
                retired_ms: None,
                heard_ms: now_ms,
                keeper_given: 0,
                killed: false,
                pid: None,
            },
        );
        self.out.push(Action::Spawn { generation, role });
        match role {
            Role::Keeper => {
                self.keeper = Some(generation);
                self.keeper_ready = false;
            }
            Role::Worker(slot) => self.pending[slot as usize] = Some(generation),
            Role::Courier => self.courier = Some(generation),
        }
        if role.talks_to_keeper() {
            self.give_keeper_channel(generation);
        }
        generation
    }

    fn on_spawn_failed(&mut self, generation: Generation, reason: &str, now_ms: u64) {
        let Some(child) = self.children.remove(&generation) else { return };
        let role = child.role;
        self.forget(role, generation);
        self.log(Level::Error, format!("cannot start the {}: {reason}", role.describe()));
        if matches!(self.phase, Phase::Starting { .. }) {
            self.begin_stop(1, 0, now_ms);
        } else if !matches!(self.phase, Phase::Stopping { .. }) {
            self.schedule_restart(role, now_ms, now_ms);
        }
        self.check_stop_progress(now_ms);
    }

    fn on_ready(&mut self, generation: Generation, now_ms: u64) {
        let Some(child) = self.children.get_mut(&generation) else { return };
        if child.state != ChildState::Starting {
            return;
        }
        child.state = ChildState::Ready;
        child.heard_ms = now_ms;
        let role = child.role;
        match role {
            Role::Keeper => {
                if self.keeper != Some(generation) {
                    return;
                }
                self.keeper_ready = true;
                let pid = self.children[&generation].pid.map_or(String::new(), |p| format!(" (pid {p})"));
                if matches!(self.phase, Phase::Starting { .. }) && self.courier.is_none() {
                    self.log(Level::Info, format!("keeper ready{pid}"));
                    self.spawn(Role::Courier, now_ms);
                    for slot in 0..self.slots {
                        self.spawn(Role::Worker(slot as u32), now_ms);
                    }
                } else {
                    self.log(Level::Info, format!("keeper ready{pid}"));
                    self.reconcile_keeper_channels();
                }
            }
            Role::Courier => {
                self.log(Level::Debug, "courier ready".to_string());
                self.maybe_ready();
            }
            Role::Worker(slot) => {
                let slot = slot as usize;
                self.log(Level::Debug, format!("worker {slot} ready"));
                if self.pending[slot] == Some(generation) {
                    self.pending[slot] = None;
                    if let Some(old) = self.current[slot].replace(generation) {
                        self.retire(old, now_ms);
                    }
                }
                self.maybe_ready();
                if let Phase::Reloading { cursor: Some(next), .. } = self.phase {
                    if next == slot && self.current[slot] == Some(generation) {
                        self.set_cursor(next + 1);
                        self.step_reload(now_ms);
                    }
                }
            }
        }
    }

    /// The first time the keeper, every worker and the courier are up: `READY=1`.
    fn maybe_ready(&mut self) {
        let courier_ready =
            self.courier.and_then(|g| self.children.get(&g)).is_some_and(|c| c.state == ChildState::Ready);
        if matches!(self.phase, Phase::Starting { .. })
            && self.keeper_ready
            && courier_ready
            && self.current.iter().all(Option::is_some)
        {
            self.phase = Phase::Running;
            self.out.push(Action::Notify(Notice::Ready));
            if self.upgrade_born {
                self.out.push(Action::SayReady);
            }
        }
    }

    /// Tells a child to drain (worker, courier) and counts it as leaving.
    fn retire(&mut self, generation: Generation, now_ms: u64) {
        let Some(c) = self.children.get_mut(&generation) else { return };
        if c.state == ChildState::Leaving {
            return;
        }
        c.state = ChildState::Leaving;
        c.retired_ms = Some(now_ms);
        self.send(generation, Message::Drain);
    }

    // ----- keeper channels -----

    fn give_keeper_channel(&mut self, to: Generation) {
        let Some(keeper) = self.keeper.filter(|_| self.keeper_ready) else { return };
        if self.children.get(&to).is_some_and(|c| c.role.talks_to_keeper() && !c.killed) {
            self.out.push(Action::GiveKeeperChannel { to, keeper });
        }
    }

    /// Every worker and courier without a channel to the current keeper gets one.
    fn reconcile_keeper_channels(&mut self) {
        if !self.keeper_ready {
            return;
        }
        let lacking: Vec<Generation> = self
            .children
            .iter()
            .filter(|(_, c)| c.role.talks_to_keeper() && !c.killed && Some(c.keeper_given) != self.keeper)
            .map(|(g, _)| *g)
            .collect();
        for g in lacking {
            self.give_keeper_channel(g);
        }
    }

    // ----- exits and restarts -----

    fn on_exit(&mut self, generation: Generation, ending: Ending, text: &str, now_ms: u64) {
        let Some(child) = self.children.remove(&generation) else { return };
        let role = child.role;
        let name = child.name();
        self.forget(role, generation);
        let stopping = matches!(self.phase, Phase::Stopping { .. });
        let handing_over = matches!(self.phase, Phase::Upgrading { stage: UpgradeStage::HandingOver, .. });
        if role == Role::Keeper && handing_over {
            // Whatever its exit, the directory's lock died with it.
            if ending == Ending::Clean {
                self.log(Level::Info, "upgrade: the keeper released the data directory".to_string());
            } else {
                self.log(Level::Warn, format!("upgrade: the keeper {text} while handing over"));
            }
            self.set_upgrade_stage(UpgradeStage::Released);
            self.out.push(Action::ReleaseKeeper);
        } else if child.state == ChildState::Leaving || stopping {
            if ending == Ending::Clean {
                self.log(Level::Debug, format!("{name} left"));
            } else if child.state == ChildState::Leaving && !child.killed {
                self.log(Level::Warn, format!("{name} {text} while leaving"));
            } else {
                self.log(Level::Info, format!("{name} {text}"));
            }
            if role == Role::Keeper && !stopping {
                // Told to hand over for an upgrade that failed meanwhile: it is needed here.
                self.scheduled.push((now_ms, Role::Keeper));
            }
        } else if role == Role::Keeper && ending == Ending::Rebuild {
            self.log(
                Level::Info,
                "the keeper ends to rebuild its replica from the cluster's log; starting a new one".into(),
            );
            self.scheduled.push((now_ms, Role::Keeper));
        } else if matches!(self.phase, Phase::Starting { .. }) {
            self.log(Level::Error, format!("{name} {text} during start-up; stopping"));
            self.begin_stop(1, 0, now_ms);
        } else if role == Role::Keeper && ending == Ending::JournalCorrupt {
            self.log(Level::Error, "the keeper refused its journal (corrupt, or in a newer format); stopping".into());
            self.begin_stop(1, 0, now_ms);
        } else if role == Role::Keeper && ending == Ending::JournalFailed {
            self.log(
                Level::Warn,
                format!("the keeper stopped: its journal could not be written; starting a new one in {JOURNAL_RESTART_MS} ms"),
            );
            self.scheduled.push((now_ms + JOURNAL_RESTART_MS, Role::Keeper));
        } else {
            let killed_as_hung = child.killed;
            if !killed_as_hung {
                self.log(Level::Warn, format!("{name} {text}"));
            }
            let needs_replacement = match role {
                Role::Keeper | Role::Courier => true,
                // A dying current worker with a replacement on its way (starting, or
                // scheduled) needs no other.
                Role::Worker(slot) => match self.pending[slot as usize] {
                    None => !self.scheduled.iter().any(|&(_, r)| r == role),
                    Some(p) => p == generation,
                },
            };
            if needs_replacement {
                self.counters.restarts[role.class()] += 1;
                self.schedule_restart(role, child.started_ms, now_ms);
            }
        }
        self.check_stop_progress(now_ms);
    }

    /// Removes every reference to a child that is gone.
    fn forget(&mut self, role: Role, generation: Generation) {
        match role {
            Role::Keeper => {
                if self.keeper == Some(generation) {
                    self.keeper = None;
                    self.keeper_ready = false;
                }
            }
            Role::Worker(slot) => {
                let slot = slot as usize;
                if self.current[slot] == Some(generation) {
                    self.current[slot] = None;
                }
                if self.pending[slot] == Some(generation) {
                    self.pending[slot] = None;
                }
            }
            Role::Courier => {
                if self.courier == Some(generation) {
                    self.courier = None;
                }
            }
        }
    }

    fn schedule_restart(&mut self, role: Role, started_ms: u64, now_ms: u64) {
        let policy = self.settings.policy;
        match self.histories[role.class()].on_exit(&policy, started_ms, now_ms) {
            Restart::At(at) => {
                if at > now_ms {
                    self.log(Level::Info, format!("restarting the {} in {} ms", role.describe(), at - now_ms));
                }
                self.scheduled.push((at, role));
            }
            Restart::GiveUp { exits, window_ms } => {
                let class = match role {
                    Role::Keeper => "keeper",
                    Role::Worker(_) => "worker",
                    Role::Courier => "courier",
                };
                self.log(
                    Level::Error,
                    format!("{exits} {class} deaths within {} s: crash storm, stopping the service", window_ms / 1000),
                );
                let drain_ms = self.settings.drain_timeout_ms;
                self.begin_stop(1, drain_ms, now_ms);
            }
        }
    }

    /// Whether a keeper may start here now: none runs, and none of a new master holds (or
    /// may still hold) the data directory.
    fn may_start_keeper(&self) -> bool {
        self.keeper.is_none()
            && !matches!(
                self.phase,
                Phase::Upgrading {
                    stage: UpgradeStage::HandingOver | UpgradeStage::Released | UpgradeStage::Aborting,
                    ..
                } | Phase::Starting { awaiting_keeper: true }
                    | Phase::Stopping { .. }
            )
    }

    fn on_timers(&mut self, now_ms: u64) {
        if matches!(self.phase, Phase::Exited(_)) {
            return;
        }
        let mut due: Vec<Role> = Vec::new();
        let may_keeper = self.may_start_keeper();
        self.scheduled.retain(|&(at, role)| {
            if at > now_ms || (role == Role::Keeper && !may_keeper) {
                return true;
            }
            due.push(role);
            false
        });
        for role in due {
            match role {
                Role::Keeper if self.keeper.is_none() => {
                    self.spawn(Role::Keeper, now_ms);
                }
                Role::Worker(slot) if self.pending[slot as usize].is_none() => {
                    self.spawn(role, now_ms);
                }
                Role::Courier if self.courier.is_none() => {
                    self.spawn(Role::Courier, now_ms);
                }
                _ => {}
            }
        }
        self.reconcile_keeper_channels();
        self.ping_children(now_ms);
        // `drain_timeout_ms` bounds a reload's drains as it bounds a stop's.
        let drain_ms = self.settings.drain_timeout_ms;
        let overdue: Vec<Generation> = self
            .children
            .iter()
            .filter(|(_, c)| !c.killed && c.retired_ms.is_some_and(|at| now_ms >= at.saturating_add(drain_ms)))
            .map(|(g, _)| *g)
            .collect();
        for g in overdue {
            let name = self.children[&g].name();
            self.log(Level::Warn, format!("{name} did not drain within {drain_ms} ms of a reload: killing it"));
            self.kill(g);
        }
        if let Phase::Upgrading { since_ms, stage, .. } = self.phase {
            if stage != UpgradeStage::Aborting && now_ms >= since_ms.saturating_add(UPGRADE_TIMEOUT_MS) {
                self.log(
                    Level::Error,
                    format!("upgrade failed: the new binary was not ready within {UPGRADE_TIMEOUT_MS} ms; stopping it"),
                );
                self.counters.upgrades_failed += 1;
                self.out.push(Action::StopSuccessor { kill: true });
                self.set_upgrade_stage(UpgradeStage::Aborting);
            }
        }
        if let Phase::Stopping { deadline_ms, keeper_deadline_ms, keeper_killed, .. } = self.phase {
            if deadline_ms.is_some_and(|d| now_ms >= d) {
                let late: Vec<Generation> = self
                    .children
                    .iter()
                    .filter(|(_, c)| c.role != Role::Keeper && !c.killed)
                    .map(|(g, _)| *g)
                    .collect();
                for g in late {
                    let name = self.children[&g].name();
                    self.log(Level::Warn, format!("{name} did not finish in time: killing it"));
                    self.kill(g);
                }
                self.set_stop_deadline(None);
            }
            if !keeper_killed && keeper_deadline_ms.is_some_and(|k| now_ms >= k) {
                let keepers: Vec<Generation> =
                    self.children.iter().filter(|(_, c)| c.role == Role::Keeper).map(|(g, _)| *g).collect();
                for g in keepers {
                    let name = self.children[&g].name();
                    self.log(Level::Warn, format!("{name} did not stop in time: killing it"));
                    self.kill(g);
                }
                if let Phase::Stopping { keeper_killed, .. } = &mut self.phase {
                    *keeper_killed = true;
                }
            }
        }
    }

    fn kill(&mut self, generation: Generation) {
        if let Some(c) = self.children.get_mut(&generation) {
            if !c.killed {
                c.killed = true;
                self.out.push(Action::Kill(generation));
            }
        }
    }

    /// Pings every ready child, every quarter of the timeout; kills one that has not
    /// answered for the whole timeout (a deadlock, a stuck system call, SIGSTOP).
    fn ping_children(&mut self, now_ms: u64) {
        if now_ms < self.next_ping_ms {
            return;
        }
        let timeout_ms = self.settings.ping_timeout_ms;
        self.next_ping_ms = now_ms + (timeout_ms / 4).max(1);
        self.pings += 1;
        let mut hung = Vec::new();
        let mut alive = Vec::new();
        for (&g, c) in &self.children {
            if c.state != ChildState::Ready || c.killed {
                continue;
            }
            if now_ms >= c.heard_ms.saturating_add(timeout_ms) {
                hung.push(g);
            } else {
                alive.push(g);
            }
        }
        for g in hung {
            let c = &self.children[&g];
            let (role, name, silent_ms) = (c.role, c.name(), now_ms - c.heard_ms);
            self.log(
                Level::Warn,
                format!("{name} has not answered for {silent_ms} ms: hung, killing it (it is replaced)"),
            );
            self.counters.hangs[role.class()] += 1;
            self.kill(g);
        }
        let n = self.pings;
        for g in alive {
            self.send(g, Message::Ping(n));
        }
    }

    // ----- signals -----

    fn on_signal(&mut self, signal: Signal, now_ms: u64) {
        let name = signal.name();
        match signal {
            Signal::Term | Signal::Int | Signal::Quit => {
                if !matches!(self.phase, Phase::Stopping { .. }) {
                    self.log(Level::Info, format!("{name}: stopping"));
                }
                let drain_ms = self.settings.drain_timeout_ms;
                self.begin_stop(0, drain_ms, now_ms);
            }
            Signal::Usr1 | Signal::Hup => self.on_reload_signal(name),
            Signal::Usr2 => self.on_upgrade_signal(now_ms),
            Signal::Stray(_) => self.log(Level::Warn, format!("{name}: ignored (it means nothing to leasehold)")),
        }
    }

    // ----- reload -----

    fn on_reload_signal(&mut self, name: &str) {
        match self.phase {
            Phase::Starting { .. } => self.log(Level::Warn, format!("{name}: reload ignored: still starting")),
            Phase::Stopping { .. } | Phase::Exited(_) => {
                self.log(Level::Info, format!("{name}: ignored while stopping"))
            }
            Phase::Upgrading { .. } => {
                self.log(Level::Warn, format!("{name}: reload refused: a binary upgrade is in progress"));
            }
            Phase::Reloading { cursor, .. } => {
                self.log(Level::Info, format!("{name}: a reload is in progress; another one follows it"));
                self.phase = Phase::Reloading { cursor, again: true };
            }
            Phase::Running => {
                self.log(Level::Info, format!("{name}: reloading"));
                self.begin_reload();
            }
        }
    }

    fn begin_reload(&mut self) {
        self.phase = Phase::Reloading { cursor: None, again: false };
        self.out.push(Action::Notify(Notice::Reloading));
        self.out.push(Action::LoadConfig);
    }

    fn on_config_loaded(&mut self, settings: Settings, now_ms: u64) {
        let Phase::Reloading { cursor: None, again } = self.phase else { return };
        self.settings = settings;
        if let Some(k) = self.keeper {
            self.send(k, Message::Reconfigure);
        }
        self.phase = Phase::Reloading { cursor: Some(0), again };
        self.step_reload(now_ms);
    }

    fn on_config_refused(&mut self, reason: &str) {
        let Phase::Reloading { cursor: None, again } = self.phase else { return };
        self.counters.reloads_refused += 1;
        self.log(Level::Error, format!("reload refused, the running configuration stays: {reason}"));
        self.phase = Phase::Running;
        self.out.push(Action::Notify(Notice::Ready));
        if again {
            self.begin_reload();
        }
    }

    fn set_cursor(&mut self, next: usize) {
        if let Phase::Reloading { cursor, .. } = &mut self.phase {
            *cursor = Some(next);
        }
    }

    /// Replaces the slot under the cursor, or finishes the reload.
    fn step_reload(&mut self, now_ms: u64) {
        let Phase::Reloading { cursor: Some(next), again } = self.phase else { return };
        if next >= self.slots {
            self.counters.reloads_ok += 1;
            // The courier takes the new [outbox] settings by being replaced: the keeper
            // hands the new one whatever the old one still held (delivered at least once).
            if let Some(old) = self.courier {
                self.retire(old, now_ms);
                self.courier = None;
                self.spawn(Role::Courier, now_ms);
            }
            self.log(Level::Info, "reload complete".to_string());
            self.phase = Phase::Running;
            self.out.push(Action::Notify(Notice::Ready));
            if again {
                self.begin_reload();
            }
            return;
        }
        let restart_due = self.scheduled.iter().any(|&(_, r)| r == Role::Worker(next as u32));
        if self.pending[next].is_none() && !restart_due {
            self.spawn(Role::Worker(next as u32), now_ms);
        }
    }

    // ----- upgrade, old master's side -----

    fn on_upgrade_signal(&mut self, now_ms: u64) {
        match self.phase {
            Phase::Running => {
                self.log(Level::Info, "SIGUSR2: upgrading: starting the new binary".to_string());
                self.phase = Phase::Upgrading { since_ms: now_ms, stage: UpgradeStage::Launching, successor: None };
                self.out.push(Action::StartSuccessor);
            }
            Phase::Starting { .. } => self.log(Level::Warn, "SIGUSR2: upgrade ignored: still starting".to_string()),
            Phase::Reloading { .. } => {
                self.log(Level::Warn, "SIGUSR2: upgrade refused: a reload is in progress; send it again after".into());
            }
            Phase::Upgrading { .. } => self.log(Level::Info, "SIGUSR2: an upgrade is in progress already".into()),
            Phase::Stopping { .. } | Phase::Exited(_) => {
                self.log(Level::Info, "SIGUSR2: ignored while stopping".to_string());
            }
        }
    }

    fn set_upgrade_stage(&mut self, next: UpgradeStage) {
        if let Phase::Upgrading { stage, .. } = &mut self.phase {
            *stage = next;
        }
    }

    fn on_successor_wants_keeper(&mut self) {
        let Phase::Upgrading { stage: UpgradeStage::Launching, .. } = self.phase else { return };
        // A keeper restart that was due stays scheduled: it waits for the upgrade's outcome
        // (`may_start_keeper`) and keeps its backoff if the new master fails.
        match self.keeper {
            Some(k) => {
                self.log(Level::Info, "upgrade: the keeper hands the data directory over".to_string());
                if let Some(c) = self.children.get_mut(&k) {
                    c.state = ChildState::Leaving;
                }
                self.keeper_ready = false;
                self.send(k, Message::Stop);
                self.set_upgrade_stage(UpgradeStage::HandingOver);
            }
            None => {
                self.set_upgrade_stage(UpgradeStage::Released);
                self.out.push(Action::ReleaseKeeper);
            }
        }
    }

    fn on_successor_ready(&mut self, now_ms: u64) {
        let Phase::Upgrading { stage: UpgradeStage::Released, successor, .. } = self.phase else { return };
        self.counters.upgrades_ok += 1;
        self.log(Level::Info, "upgrade: the new binary serves; this master drains and exits".to_string());
        if let Some(pid) = successor {
            self.out.push(Action::Notify(Notice::MainPid(pid)));
        }
        let drain_ms = self.settings.drain_timeout_ms;
        self.begin_stop_inner(0, drain_ms, now_ms, true);
    }

    fn on_successor_gone(&mut self, reason: &str, now_ms: u64) {
        let Phase::Upgrading { stage, .. } = self.phase else { return };
        if stage != UpgradeStage::Aborting {
            self.counters.upgrades_failed += 1;
            self.log(Level::Error, format!("upgrade failed: {reason}; the running binary goes on serving"));
        } else {
            self.log(Level::Info, "upgrade: the new binary is gone; the running binary goes on serving".to_string());
        }
        self.phase = Phase::Running;
        if self.keeper.is_none() && !self.scheduled.iter().any(|&(_, r)| r == Role::Keeper) {
            self.spawn(Role::Keeper, now_ms);
        }
    }

    // ----- stop -----

    fn begin_stop(&mut self, code: i32, drain_ms: u64, now_ms: u64) {
        self.begin_stop_inner(code, drain_ms, now_ms, false);
    }

    fn set_stop_deadline(&mut self, value: Option<u64>) {
        if let Phase::Stopping { deadline_ms, .. } = &mut self.phase {
            *deadline_ms = value;
        }
    }

    fn begin_stop_inner(&mut self, code: i32, drain_ms: u64, now_ms: u64, handed_over: bool) {
        if let Phase::Stopping { code: old, deadline_ms, .. } = &mut self.phase {
            // Asked again: stop waiting for the drains.
            *old = (*old).max(code);
            if deadline_ms.is_some() {
                *deadline_ms = Some(now_ms);
                self.log(Level::Info, "stopping now: workers still draining are killed".to_string());
            }
            return;
        }
        if let Phase::Upgrading { stage, .. } = self.phase {
            if !handed_over && stage != UpgradeStage::Aborting {
                self.out.push(Action::StopSuccessor { kill: false });
            }
        }
        if !handed_over {
            self.out.push(Action::Notify(Notice::Stopping));
        }
        self.out.push(Action::StopAccepting { shutdown: !handed_over });
        self.log(Level::Info, format!("draining for up to {drain_ms} ms"));
        self.phase = Phase::Stopping {
            code,
            deadline_ms: Some(now_ms + drain_ms),
            keeper_deadline_ms: None,
            keeper_killed: false,
            handed_over,
        };
        self.scheduled.clear();
        // Workers and the courier go first; the keeper, which journals, last.
        let leaving: Vec<Generation> =
            self.children.iter().filter(|(_, c)| c.role != Role::Keeper).map(|(g, _)| *g).collect();
        for g in leaving {
            self.retire(g, now_ms);
            // A stop's deadline is the phase's, not the reload's.
            if let Some(c) = self.children.get_mut(&g) {
                c.retired_ms = None;
            }
        }
        self.check_stop_progress(now_ms);
    }

    fn check_stop_progress(&mut self, now_ms: u64) {
        let Phase::Stopping { keeper_deadline_ms: None, .. } = self.phase else { return };
        if self.children.values().any(|c| c.role != Role::Keeper) {
            return;
        }
        let keepers: Vec<Generation> =
            self.children.iter().filter(|(_, c)| c.role == Role::Keeper).map(|(g, _)| *g).collect();
        for g in keepers {
            if let Some(c) = self.children.get_mut(&g) {
                c.state = ChildState::Leaving;
            }
            self.send(g, Message::Stop);
        }
        if let Phase::Stopping { keeper_deadline_ms, .. } = &mut self.phase {
            *keeper_deadline_ms = Some(now_ms + KEEPER_STOP_MS);
        }
    }

    fn check_exit(&mut self) {
        if let Phase::Stopping { code, .. } = self.phase {
            if self.children.is_empty() {
                self.log(Level::Info, "stopped".to_string());
                self.out.push(Action::Exit(code));
                self.phase = Phase::Exited(code);
            }
        }
    }
}
