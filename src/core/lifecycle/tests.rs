//! Tests of the lifecycle machine: a simulated set of processes (the "world") carries out
//! the machine's actions the way real children and a real new master could (slow, frozen,
//! crashing, refusing to start), and checks after every event the rules of docs/lifecycle.md:
//! never two keepers on one data directory, every slot served except for a bounded window,
//! restarts no sooner than the backoff allows, a stop that always ends, an exit only with no
//! child left. Then every signal in every phase, generated, and the interleavings named in
//! the spec (the keeper dying mid-reload and mid-upgrade).

use std::collections::{BTreeMap, VecDeque};

use super::*;
use crate::core::rand::SplitMix64;

const SLOTS: usize = 2;
const STEP_MAX_MS: u64 = 300;
const READY_MAX_MS: u64 = 200;

fn settings(drain_timeout_ms: u64, ping_timeout_ms: u64) -> Settings {
    Settings {
        policy: RestartPolicy {
            base_delay_ms: 100,
            max_delay_ms: 2_000,
            stable_after_ms: 5_000,
            storm_window_ms: 60_000,
            storm_max_exits: 10,
        },
        drain_timeout_ms,
        ping_timeout_ms,
    }
}

#[derive(Debug, Clone)]
struct Proc {
    role: Role,
    /// When it says it is ready (None: said so, or never will).
    ready_at: Option<u64>,
    frozen: bool,
    exit_at: Option<u64>,
    ending: Ending,
    /// Told to drain or stop while frozen: it leaves once thawed.
    told_to_leave: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Successor {
    None,
    /// Started; asks for the keeper at the time given.
    Started(u64),
    /// Asked; waiting for the release.
    Asked,
    /// Holds the data directory (its keeper runs); ready at the time given.
    HasKeeper(u64),
    /// Serves; the old master is to leave.
    Serving,
    /// Told to stop: gone at the time given.
    Leaving(u64),
}

/// The simulated processes around one machine.
struct World {
    m: Lifecycle,
    now: u64,
    rng: SplitMix64,
    procs: BTreeMap<Generation, Proc>,
    answers: VecDeque<Event>,
    successor: Successor,
    /// How often a spawn, a keeper channel, a config or a new master fails (per 1000).
    spawn_fail: usize,
    successor_fail: usize,
    config_refuse: usize,
    /// Children may take longer to drain or stop than they are allowed.
    late: bool,
    exited: Option<i32>,
    actions: Vec<(u64, Action)>,
    /// Reference of the restart policy: consecutive quick deaths per role class, and the
    /// earliest a replacement may start, per role.
    quick: [u32; 3],
    earliest: BTreeMap<Role, u64>,
    /// Each slot was last served then.
    served_ms: Vec<u64>,
    /// The stop began then.
    stop_began: Option<u64>,
    max_drain_ms: u64,
    max_ping_ms: u64,
    ready_sent: bool,
    handed_over: bool,
    /// Crash-type deaths still to be matched with the policy (reference bookkeeping).
    strict: bool,
}

impl World {
    fn new(seed: u64, upgrade_born: bool) -> Self {
        let s = settings(1_000, 1_000);
        let mut w = World {
            m: Lifecycle::new(s, SLOTS),
            now: 0,
            rng: SplitMix64::new(seed),
            procs: BTreeMap::new(),
            answers: VecDeque::new(),
            successor: Successor::None,
            spawn_fail: 0,
            successor_fail: 0,
            config_refuse: 0,
            late: false,
            exited: None,
            actions: Vec::new(),
            quick: [0; 3],
            earliest: BTreeMap::new(),
            served_ms: vec![0; SLOTS],
            stop_began: None,
            max_drain_ms: s.drain_timeout_ms,
            max_ping_ms: s.ping_timeout_ms,
            ready_sent: false,
            handed_over: false,
            strict: true,
        };
        w.feed(Event::Start { upgrade: upgrade_born });
        w
    }

    fn chance(&mut self, per_thousand: usize) -> bool {
        self.rng.below(1000) < per_thousand
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.rng.below((high - low + 1) as usize) as u64
    }

    /// Feeds one event and every answer it causes, checking the rules after each.
    fn feed(&mut self, event: Event) {
        self.answers.push_back(event);
        while let Some(e) = self.answers.pop_front() {
            self.before(&e);
            let actions = self.m.on_event(e, self.now);
            for a in actions {
                self.carry_out(a);
            }
            self.check();
        }
    }

    /// Reference bookkeeping for an event about to be fed.
    fn before(&mut self, e: &Event) {
        if let Event::Exited { generation, ending, .. } = e {
            let Some(child) = self.m.child(*generation).cloned() else { return };
            let crash_type = child.state != ChildState::Leaving
                && matches!(self.m.phase(), Phase::Running | Phase::Reloading { .. } | Phase::Upgrading { .. })
                && !matches!(
                    (child.role, self.m.phase()),
                    (Role::Keeper, Phase::Upgrading { stage: UpgradeStage::HandingOver, .. })
                )
                && *ending == Ending::Failed;
            let replacement_pending = match child.role {
                Role::Worker(slot) => self
                    .m
                    .children()
                    .any(|(g, c)| g != *generation && c.role == Role::Worker(slot) && c.state == ChildState::Starting),
                _ => false,
            } || self.earliest.contains_key(&child.role);
            if crash_type && !replacement_pending {
                self.death(child.role, child.started_ms);
            }
        }
        if let Event::SpawnFailed { generation, .. } = e {
            if let Some(child) = self.m.child(*generation).cloned() {
                if !matches!(self.m.phase(), Phase::Starting { .. } | Phase::Stopping { .. }) {
                    self.death(child.role, self.now);
                }
            }
        }
    }

    /// The restart policy, written from its spec: a death after a stable run is replaced at
    /// once; quick deaths in a row wait base, 2×base, … up to max.
    fn death(&mut self, role: Role, started_ms: u64) {
        let p = self.m.settings().policy;
        let class = role.class();
        let delay = if self.now - started_ms >= p.stable_after_ms {
            self.quick[class] = 0;
            0
        } else {
            self.quick[class] += 1;
            (p.base_delay_ms << (self.quick[class] - 1).min(20)).min(p.max_delay_ms)
        };
        self.earliest.insert(role, self.now + delay);
    }

    fn carry_out(&mut self, a: Action) {
        self.actions.push((self.now, a.clone()));
        match a {
            Action::Spawn { generation, role } => {
                if let (true, Some(&at)) = (self.strict, self.earliest.get(&role)) {
                    if self.now < at {
                        for (t, a) in &self.actions[self.actions.len().saturating_sub(40)..] {
                            eprintln!("{t} {a:?}");
                        }
                    }
                    assert!(self.now >= at, "{role:?} restarted at {} before its backoff allowed ({at})", self.now);
                }
                self.earliest.remove(&role);
                if role == Role::Keeper {
                    assert!(
                        !matches!(self.successor, Successor::HasKeeper(_) | Successor::Serving),
                        "a keeper started while the new master holds the data directory"
                    );
                }
                if self.chance(self.spawn_fail) {
                    self.answers.push_back(Event::SpawnFailed { generation, reason: "no memory".into() });
                } else {
                    let ready = self.now + self.between(1, READY_MAX_MS);
                    self.procs.insert(
                        generation,
                        Proc {
                            role,
                            ready_at: Some(ready),
                            frozen: false,
                            exit_at: None,
                            ending: Ending::Clean,
                            told_to_leave: false,
                        },
                    );
                }
            }
            Action::Send { to, message } => {
                let drain_ms = self.max_drain_ms;
                let Some(p) = self.procs.get(&to).cloned() else { panic!("{message:?} sent to unknown child {to}") };
                match message {
                    Message::Drain | Message::Stop => {
                        let limit = if message == Message::Stop { KEEPER_STOP_MS } else { drain_ms };
                        if p.frozen {
                            self.procs.get_mut(&to).unwrap().told_to_leave = true;
                        } else if p.exit_at.is_none() {
                            let at = self.now
                                + if self.late {
                                    self.between(0, limit + limit / 4)
                                } else {
                                    self.between(0, limit / 2)
                                };
                            let p = self.procs.get_mut(&to).unwrap();
                            p.exit_at = Some(at);
                            p.ending = Ending::Clean;
                        }
                    }
                    Message::Ping(_) => {
                        if !p.frozen {
                            self.answers.push_back(Event::Pong(to));
                        }
                    }
                    Message::Reconfigure => assert_eq!(p.role, Role::Keeper),
                }
            }
            Action::Kill(g) => {
                let p = self.procs.get_mut(&g).unwrap_or_else(|| panic!("kill of unknown child {g}"));
                p.exit_at = Some(self.now);
                p.ending = Ending::Failed;
                p.frozen = false;
            }
            Action::GiveKeeperChannel { to, keeper } => {
                if self.answers.iter().any(|e| *e == Event::SpawnFailed { generation: to, reason: "no memory".into() })
                {
                    return; // its spawn failed a moment ago; the master skips it
                }
                assert!(self.procs.contains_key(&to), "channel for unknown child {to}");
                let k = self.procs.get(&keeper).expect("channel to a keeper that does not run");
                assert_eq!(k.role, Role::Keeper);
                if !self.chance(self.spawn_fail) {
                    self.answers.push_back(Event::KeeperChannel { to, keeper });
                }
            }
            Action::Notify(Notice::Ready) => {
                if !self.ready_sent {
                    // The first READY=1: keeper, courier and every slot up.
                    let up = |w: &World, f: &dyn Fn(Role) -> bool| {
                        w.procs.values().any(|p| f(p.role) && p.ready_at.is_none() && p.exit_at.is_none())
                    };
                    assert!(up(self, &|r| r == Role::Keeper), "READY=1 without a keeper");
                    assert!(up(self, &|r| r == Role::Courier), "READY=1 without a courier");
                    for s in 0..SLOTS as u32 {
                        assert!(up(self, &|r| r == Role::Worker(s)), "READY=1 without worker {s}");
                    }
                }
                self.ready_sent = true;
            }
            Action::Notify(Notice::MainPid(_)) => {
                assert_eq!(self.successor, Successor::Serving, "MAINPID= before the new master serves");
                self.handed_over = true;
            }
            Action::Notify(_) => {}
            Action::LoadConfig => {
                if self.chance(self.config_refuse) {
                    self.answers.push_back(Event::ConfigRefused("bad key".into()));
                } else {
                    let s = settings(self.between(200, 1_500), self.between(200, 1_500));
                    self.max_drain_ms = self.max_drain_ms.max(s.drain_timeout_ms);
                    self.max_ping_ms = self.max_ping_ms.max(s.ping_timeout_ms);
                    self.answers.push_back(Event::ConfigLoaded(s));
                }
            }
            Action::StopAccepting { shutdown } => assert_eq!(shutdown, !self.handed_over),
            Action::StartSuccessor => {
                assert_eq!(self.successor, Successor::None);
                if self.chance(self.successor_fail) {
                    self.answers.push_back(Event::SuccessorGone("exec failed".into()));
                } else {
                    let at = self.now + self.between(1, 500);
                    self.successor = Successor::Started(at);
                    self.answers.push_back(Event::SuccessorStarted { pid: 4242 });
                }
            }
            Action::ReleaseKeeper => {
                assert_eq!(self.successor, Successor::Asked, "a release nobody asked for");
                assert!(
                    self.procs.values().all(|p| p.role != Role::Keeper),
                    "the data directory released while a keeper runs"
                );
                let at = self.now + self.between(1, 1_500);
                self.successor = Successor::HasKeeper(at);
            }
            Action::StopSuccessor { kill } => {
                if !matches!(self.successor, Successor::None | Successor::Leaving(_)) {
                    let at = if kill { self.now } else { self.now + self.between(0, 500) };
                    self.successor = Successor::Leaving(at);
                }
            }
            Action::AskForKeeper | Action::SayReady => {}
            Action::Log(..) => {}
            Action::Exit(code) => {
                assert!(self.exited.is_none(), "two exits");
                assert!(self.procs.is_empty(), "exit with children left: {:?}", self.procs);
                self.exited = Some(code);
            }
        }
    }

    /// The rules that hold after every event.
    fn check(&mut self) {
        let keepers = self.procs.values().filter(|p| p.role == Role::Keeper).count()
            + usize::from(matches!(self.successor, Successor::HasKeeper(_) | Successor::Serving));
        assert!(keepers <= 1, "{keepers} keepers on one data directory at {}", self.now);
        // Slots: served by a ready, responsive worker of the machine's choosing.
        let serving = self.m.serving_workers();
        let bound = 3 * self.m.settings().policy.max_delay_ms
            + READY_MAX_MS
            + self.max_ping_ms
            + self.max_ping_ms / 4
            + 2 * STEP_MAX_MS;
        for slot in 0..SLOTS {
            let served = serving.iter().any(|g| {
                self.procs
                    .get(g)
                    .is_some_and(|p| p.role == Role::Worker(slot as u32) && !p.frozen && p.exit_at.is_none())
            });
            let counted = matches!(self.m.phase(), Phase::Running | Phase::Reloading { .. } | Phase::Upgrading { .. });
            if served || !counted {
                self.served_ms[slot] = self.now;
            }
            assert!(
                self.now - self.served_ms[slot] <= bound,
                "slot {slot} unserved for {} ms (bound {bound})",
                self.now - self.served_ms[slot]
            );
        }
        if matches!(self.m.phase(), Phase::Stopping { .. }) && self.stop_began.is_none() {
            self.stop_began = Some(self.now);
        }
        if let Some(t0) = self.stop_began {
            let bound = self.max_drain_ms + KEEPER_STOP_MS + 3 * STEP_MAX_MS;
            assert!(
                self.exited.is_some() || self.now <= t0 + bound,
                "the stop begun at {t0} has not ended by {}",
                self.now
            );
        }
    }

    /// Lets time pass: children become ready and exit as planned, the new master moves on,
    /// then a tick.
    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let ready: Vec<Generation> = self
            .procs
            .iter()
            .filter(|(_, p)| !p.frozen && p.ready_at.is_some_and(|t| t <= self.now) && p.exit_at.is_none())
            .map(|(g, _)| *g)
            .collect();
        for g in ready {
            self.procs.get_mut(&g).unwrap().ready_at = None;
            self.feed(Event::Ready(g));
        }
        let due: Vec<Generation> =
            self.procs.iter().filter(|(_, p)| p.exit_at.is_some_and(|t| t <= self.now)).map(|(g, _)| *g).collect();
        for g in due {
            let p = self.procs.remove(&g).unwrap();
            self.feed(Event::Exited { generation: g, ending: p.ending, text: "ended".into() });
        }
        match self.successor {
            Successor::Started(at) if at <= self.now => {
                if self.chance(self.successor_fail) {
                    self.successor = Successor::None;
                    self.feed(Event::SuccessorGone("exited with code 1".into()));
                } else {
                    self.successor = Successor::Asked;
                    self.feed(Event::SuccessorWantsKeeper);
                }
            }
            Successor::HasKeeper(at) if at <= self.now => {
                if self.chance(self.successor_fail) {
                    self.successor = Successor::None;
                    self.feed(Event::SuccessorGone("exited with code 1".into()));
                } else {
                    self.successor = Successor::Serving;
                    self.feed(Event::SuccessorReady);
                }
            }
            Successor::Leaving(at) if at <= self.now => {
                self.successor = Successor::None;
                self.feed(Event::SuccessorGone("stopped".into()));
            }
            _ => {}
        }
        self.feed(Event::Tick);
    }

    /// Children and the new master behave; time passes until the machine is quiet (serving
    /// with every slot up, or exited).
    fn settle(&mut self) {
        for _ in 0..2_000 {
            if self.exited.is_some() {
                return;
            }
            let quiet = self.m.phase() == Phase::Running
                && self.m.serving_workers().len() == SLOTS
                && self.m.keeper_up()
                && self.live(Role::Keeper).len() == 1
                && self.live(Role::Courier).len() == 1
                && self.procs.values().all(|p| p.ready_at.is_none() && p.exit_at.is_none() && !p.frozen)
                && self.m.children().all(|(_, c)| c.state == ChildState::Ready);
            if quiet {
                return;
            }
            self.advance(50);
        }
        panic!("never settled: {:?} {:?}", self.m.phase(), self.procs);
    }

    fn count(&self, since: usize, f: impl Fn(&Action) -> bool) -> usize {
        self.actions[since..].iter().filter(|(_, a)| f(a)).count()
    }

    fn live(&self, role: Role) -> Vec<Generation> {
        self.procs.iter().filter(|(_, p)| p.role == role).map(|(g, _)| *g).collect()
    }

    fn crash(&mut self, g: Generation) {
        self.procs.remove(&g);
        self.feed(Event::Exited { generation: g, ending: Ending::Failed, text: "was killed by SIGSEGV".into() });
    }
}

/// One random history: children crash, freeze and refuse to start; signals come in any
/// phase; configurations are refused or change the timeouts; new masters fail at every step.
fn random_history(seed: u64, steps: usize) -> World {
    let mut w = World::new(seed, false);
    w.spawn_fail = 10;
    w.successor_fail = 250;
    w.config_refuse = 300;
    w.late = true;
    for _ in 0..steps {
        if w.exited.is_some() {
            break;
        }
        match w.rng.below(100) {
            0..=59 => {
                let ms = w.between(1, STEP_MAX_MS);
                w.advance(ms);
            }
            60..=69 => {
                let live: Vec<Generation> = w.procs.keys().copied().collect();
                if !live.is_empty() {
                    let g = live[w.rng.below(live.len())];
                    w.crash(g);
                }
            }
            70..=72 => {
                let live: Vec<Generation> = w.procs.keys().copied().collect();
                if !live.is_empty() {
                    let g = live[w.rng.below(live.len())];
                    w.procs.get_mut(&g).unwrap().frozen = true;
                }
            }
            73..=85 => {
                let signal =
                    [Signal::Usr1, Signal::Hup, Signal::Usr2, Signal::Usr2, Signal::Stray("SIGPWR")][w.rng.below(5)];
                w.feed(Event::Signal(signal));
            }
            86 => {
                let signal = [Signal::Term, Signal::Int, Signal::Quit][w.rng.below(3)];
                w.feed(Event::Signal(signal));
            }
            _ => {
                let ms = w.between(1, 20);
                w.advance(ms);
            }
        }
    }
    // Every history ends with a stop, which must end.
    w.spawn_fail = 0;
    w.feed(Event::Signal(Signal::Term));
    for _ in 0..1_000 {
        if w.exited.is_some() {
            break;
        }
        w.advance(STEP_MAX_MS);
    }
    assert!(w.exited.is_some(), "seed {seed}: the stop never ended: {:?}", w.m.phase());
    w
}

#[test]
fn random_histories_keep_every_rule() {
    let mut upgrades = 0;
    let mut reloads = 0;
    let mut hangs = 0;
    let mut storms = 0;
    for seed in 0..300 {
        let w = random_history(seed, 600);
        let c = w.m.counters();
        upgrades += c.upgrades_ok;
        reloads += c.reloads_ok;
        hangs += c.hangs.iter().sum::<u64>();
        storms += u64::from(w.exited == Some(1));
    }
    // The histories reach what they are meant to test.
    assert!(upgrades > 20, "only {upgrades} upgrades completed");
    assert!(reloads > 50, "only {reloads} reloads completed");
    assert!(hangs > 20, "only {hangs} hung children found");
    assert!(storms > 0, "no history ended in a crash storm");
}

/// The phases a signal can arrive in, reached by a well-behaved world.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    Starting,
    AwaitingKeeper,
    Running,
    ReloadLoading,
    ReloadMidway,
    UpgradeLaunching,
    UpgradeHandingOver,
    UpgradeReleased,
    Stopping,
}

const ALL_AT: [At; 9] = [
    At::Starting,
    At::AwaitingKeeper,
    At::Running,
    At::ReloadLoading,
    At::ReloadMidway,
    At::UpgradeLaunching,
    At::UpgradeHandingOver,
    At::UpgradeReleased,
    At::Stopping,
];

/// A world brought to `at` by hand (no randomness in what the children do).
fn world_at(at: At) -> World {
    let mut w = World::new(7, at == At::AwaitingKeeper);
    w.strict = true;
    if at == At::AwaitingKeeper {
        assert_eq!(w.m.phase(), Phase::Starting { awaiting_keeper: true });
        return w;
    }
    if at == At::Starting {
        assert!(matches!(w.m.phase(), Phase::Starting { .. }));
        return w;
    }
    w.settle();
    match at {
        At::Running => {}
        At::ReloadLoading => {
            let actions = w.m.on_event(Event::Signal(Signal::Usr1), w.now);
            assert!(actions.contains(&Action::LoadConfig));
            // The load's answer is held back: the machine waits in the loading step.
        }
        At::ReloadMidway => {
            w.feed(Event::Signal(Signal::Usr1));
            // Bring the first slot's new worker up only.
            while !matches!(w.m.phase(), Phase::Reloading { cursor: Some(1), .. }) {
                if w.m.phase() == Phase::Running {
                    // The load was refused (the world refuses some): ask again.
                    w.feed(Event::Signal(Signal::Usr1));
                }
                w.advance(10);
            }
        }
        At::UpgradeLaunching => {
            w.feed(Event::Signal(Signal::Usr2));
            assert!(matches!(w.m.phase(), Phase::Upgrading { stage: UpgradeStage::Launching, .. }));
        }
        At::UpgradeHandingOver => {
            w.feed(Event::Signal(Signal::Usr2));
            let keeper = w.live(Role::Keeper)[0];
            w.procs.get_mut(&keeper).unwrap().frozen = true; // slow to stop
            while !matches!(w.m.phase(), Phase::Upgrading { stage: UpgradeStage::HandingOver, .. }) {
                w.advance(10);
            }
        }
        At::UpgradeReleased => {
            w.feed(Event::Signal(Signal::Usr2));
            while !matches!(w.m.phase(), Phase::Upgrading { stage: UpgradeStage::Released, .. }) {
                w.advance(10);
            }
            if let Successor::HasKeeper(_) = w.successor {
                w.successor = Successor::HasKeeper(u64::MAX); // not ready before the signal
            }
        }
        At::Stopping => {
            let worker = w.live(Role::Worker(0))[0];
            w.procs.get_mut(&worker).unwrap().frozen = true; // slow to drain
            w.feed(Event::Signal(Signal::Term));
        }
        At::Starting | At::AwaitingKeeper => unreachable!(),
    }
    w
}

#[test]
fn every_signal_in_every_phase_does_what_the_spec_says() {
    for at in ALL_AT {
        for signal in Signal::ALL {
            let mut w = world_at(at);
            let mark = w.actions.len();
            let phase = w.m.phase();
            w.feed(Event::Signal(signal));
            let now_actions: Vec<Action> = w.actions[mark..].iter().map(|(_, a)| a.clone()).collect();
            let context = format!("{signal:?} in {at:?} ({phase:?})");
            match signal {
                Signal::Stray(_) => {
                    assert!(
                        now_actions.iter().all(|a| matches!(a, Action::Log(Level::Warn, _))) && now_actions.len() == 1,
                        "{context}: a stray signal is one warning, nothing else: {now_actions:?}"
                    );
                    assert_eq!(w.m.phase(), phase, "{context}");
                }
                Signal::Term | Signal::Int | Signal::Quit => {
                    assert!(matches!(w.m.phase(), Phase::Stopping { .. } | Phase::Exited(_)), "{context}");
                    if matches!(phase, Phase::Upgrading { .. }) {
                        assert!(
                            now_actions.iter().any(|a| matches!(a, Action::StopSuccessor { .. })),
                            "{context}: the new master is stopped too"
                        );
                    }
                }
                Signal::Usr1 | Signal::Hup => {
                    let loads = now_actions.iter().filter(|a| **a == Action::LoadConfig).count();
                    assert_eq!(loads, usize::from(phase == Phase::Running), "{context}");
                }
                Signal::Usr2 => {
                    let starts = now_actions.iter().filter(|a| **a == Action::StartSuccessor).count();
                    assert_eq!(starts, usize::from(phase == Phase::Running), "{context}");
                }
            }
            // The held answers come, children thaw, the new master (if any) comes up: the
            // machine ends serving every slot, or exited after a stop.
            if at == At::ReloadLoading && matches!(w.m.phase(), Phase::Reloading { cursor: None, .. }) {
                w.feed(Event::ConfigLoaded(settings(1_000, 1_000)));
            }
            let now = w.now;
            for p in w.procs.values_mut() {
                p.frozen = false;
                if p.told_to_leave && p.exit_at.is_none() {
                    p.exit_at = Some(now + 1);
                }
            }
            if w.m.phase() == (Phase::Starting { awaiting_keeper: true }) {
                w.feed(Event::KeeperReleased);
            }
            if let Successor::HasKeeper(u64::MAX) = w.successor {
                w.successor = Successor::HasKeeper(w.now + 10);
            }
            let stopped = matches!(signal, Signal::Term | Signal::Int | Signal::Quit) || at == At::Stopping;
            if stopped {
                for _ in 0..200 {
                    if w.exited.is_some() {
                        break;
                    }
                    w.advance(100);
                }
                assert_eq!(w.exited, Some(0), "{context}: the stop ends with exit 0");
            } else if w.handed_over || matches!(w.m.phase(), Phase::Upgrading { .. }) {
                for _ in 0..400 {
                    if w.exited.is_some() {
                        break;
                    }
                    w.advance(50);
                }
                assert_eq!(w.exited, Some(0), "{context}: an upgrade ends with the old master's exit 0");
                assert_eq!(w.successor, Successor::Serving, "{context}");
            } else {
                w.settle();
                if matches!(signal, Signal::Usr1 | Signal::Hup) && matches!(phase, Phase::Reloading { .. }) {
                    // Queued: a second load followed the first.
                    assert!(w.count(mark, |a| *a == Action::LoadConfig) >= 1, "{context}: the queued reload ran");
                }
            }
        }
    }
}

#[test]
fn a_reload_replaces_every_worker_one_slot_at_a_time_and_the_courier_last() {
    let mut w = World::new(1, false);
    w.settle();
    let before: Vec<Generation> = w.m.serving_workers();
    let courier = w.live(Role::Courier)[0];
    let mark = w.actions.len();
    w.feed(Event::Signal(Signal::Usr1));
    w.feed(Event::ConfigLoaded(settings(1_000, 1_000)));
    w.settle();
    let spawns: Vec<Role> = w.actions[mark..]
        .iter()
        .filter_map(|(_, a)| if let Action::Spawn { role, .. } = a { Some(*role) } else { None })
        .collect();
    assert_eq!(spawns, vec![Role::Worker(0), Role::Worker(1), Role::Courier]);
    let after = w.m.serving_workers();
    assert!(after.iter().all(|g| !before.contains(g)), "every slot has a new worker");
    assert!(!w.procs.contains_key(&courier), "the old courier left");
    assert_eq!(w.m.counters().reloads_ok, 1);
    // No slot went without a ready worker during the reload: the old one drains only once
    // its successor is ready.
    let drains: Vec<u64> = w.actions[mark..]
        .iter()
        .filter(|(_, a)| matches!(a, Action::Send { message: Message::Drain, .. }))
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(drains.len(), 3);
}

#[test]
fn the_keeper_dying_mid_reload_is_replaced_and_the_reload_completes_with_channels_to_the_new_keeper() {
    let mut w = World::new(2, false);
    w.settle();
    w.feed(Event::Signal(Signal::Usr1));
    w.feed(Event::ConfigLoaded(settings(1_000, 1_000)));
    let keeper = w.live(Role::Keeper)[0];
    w.crash(keeper);
    w.settle();
    assert_eq!(w.m.counters().reloads_ok, 1);
    assert_eq!(w.m.counters().restarts_of(Role::Keeper), 1);
    let new_keeper = w.live(Role::Keeper)[0];
    assert_ne!(new_keeper, keeper);
    for (g, c) in w.m.children() {
        if c.role.talks_to_keeper() {
            assert_eq!(c.keeper_given, new_keeper, "child {g} talks to the new keeper");
        }
    }
}

#[test]
fn the_keeper_dying_mid_upgrade_before_the_hand_over_is_replaced_then_handed_over() {
    let mut w = World::new(3, false);
    w.settle();
    w.feed(Event::Signal(Signal::Usr2));
    let keeper = w.live(Role::Keeper)[0];
    w.crash(keeper);
    for _ in 0..400 {
        if w.exited.is_some() {
            break;
        }
        w.advance(25);
    }
    assert_eq!(w.exited, Some(0), "the old master handed over and left");
    assert_eq!(w.successor, Successor::Serving);
    assert_eq!(w.m.counters().upgrades_ok, 1);
}

#[test]
fn the_keeper_dying_while_it_hands_over_counts_as_released() {
    let mut w = World::new(4, false);
    w.settle();
    w.feed(Event::Signal(Signal::Usr2));
    let keeper = w.live(Role::Keeper)[0];
    w.procs.get_mut(&keeper).unwrap().frozen = true;
    while !matches!(w.m.phase(), Phase::Upgrading { stage: UpgradeStage::HandingOver, .. }) {
        w.advance(10);
    }
    let mark = w.actions.len();
    w.crash(keeper);
    assert_eq!(w.count(mark, |a| *a == Action::ReleaseKeeper), 1);
    assert_eq!(w.count(mark, |a| matches!(a, Action::Spawn { role: Role::Keeper, .. })), 0);
}

#[test]
fn a_new_master_that_fails_after_the_hand_over_leaves_the_old_one_serving_with_a_keeper_again() {
    let mut w = World::new(5, false);
    w.settle();
    w.feed(Event::Signal(Signal::Usr2));
    while !matches!(w.m.phase(), Phase::Upgrading { stage: UpgradeStage::Released, .. }) {
        w.advance(10);
    }
    assert!(w.live(Role::Keeper).is_empty());
    w.successor = Successor::None;
    w.feed(Event::SuccessorGone("exited with code 1".into()));
    assert_eq!(w.m.phase(), Phase::Running);
    w.settle();
    assert_eq!(w.live(Role::Keeper).len(), 1);
    assert_eq!(w.m.counters().upgrades_failed, 1);
    assert_eq!(w.exited, None);
}

#[test]
fn a_new_master_that_never_comes_up_is_killed_and_its_exit_awaited_before_a_keeper_starts() {
    let mut w = World::new(6, false);
    w.settle();
    w.feed(Event::Signal(Signal::Usr2));
    while !matches!(w.m.phase(), Phase::Upgrading { stage: UpgradeStage::Released, .. }) {
        w.advance(10);
    }
    w.successor = Successor::HasKeeper(u64::MAX); // hangs
    let start = w.now;
    while !matches!(w.m.phase(), Phase::Running) {
        w.advance(100);
        assert!(w.now < start + UPGRADE_TIMEOUT_MS + 1_000, "the timeout never fired");
    }
    assert!(w.count(0, |a| *a == Action::StopSuccessor { kill: true }) == 1);
    w.settle();
    assert_eq!(w.live(Role::Keeper).len(), 1);
}

#[test]
fn a_master_started_by_an_upgrade_waits_for_the_old_keeper_and_says_when_it_is_ready() {
    let mut w = World::new(8, true);
    assert_eq!(w.count(0, |a| *a == Action::AskForKeeper), 1);
    for _ in 0..20 {
        w.advance(100);
    }
    assert!(w.procs.is_empty(), "nothing starts before the release");
    w.feed(Event::KeeperReleased);
    w.settle();
    assert_eq!(w.count(0, |a| *a == Action::SayReady), 1);
    assert_eq!(w.count(0, |a| *a == Action::Notify(Notice::Ready)), 1);
}

#[test]
fn a_frozen_child_of_each_role_is_killed_after_the_ping_timeout_and_replaced() {
    for role in [Role::Worker(1), Role::Courier, Role::Keeper] {
        let mut w = World::new(9, false);
        w.settle();
        let g = w.live(role)[0];
        w.procs.get_mut(&g).unwrap().frozen = true;
        let frozen_at = w.now;
        let timeout = w.m.settings().ping_timeout_ms;
        while w.procs.contains_key(&g) {
            w.advance(10);
            assert!(w.now <= frozen_at + timeout + timeout / 4 + 10, "{role:?} not found hung in time");
        }
        assert_eq!(w.m.counters().hangs_of(role), 1);
        w.settle();
        assert_eq!(w.live(role).len(), 1, "{role:?} replaced");
    }
}

#[test]
fn a_normal_stop_and_a_reload_log_no_warning() {
    let mut w = World::new(10, false);
    w.settle();
    let mark = w.actions.len();
    w.feed(Event::Signal(Signal::Usr1));
    w.feed(Event::ConfigLoaded(settings(1_000, 1_000)));
    w.settle();
    w.feed(Event::Signal(Signal::Term));
    while w.exited.is_none() {
        w.advance(50);
    }
    let warnings: Vec<&Action> = w.actions[mark..]
        .iter()
        .map(|(_, a)| a)
        .filter(|a| matches!(a, Action::Log(Level::Warn | Level::Error, _)))
        .collect();
    assert!(warnings.is_empty(), "{warnings:?}");
}
