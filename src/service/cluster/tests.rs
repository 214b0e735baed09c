//! The cluster's rules against a model of etcd: nodes that step [`Cluster`]s, a link that
//! carries out their effects on an in-memory etcd (a leader key under leases, a log put by
//! compare-and-put, linearizable reads, a watch whose events arrive late), and faults drawn
//! at random: puts whose outcome is lost (applied or not), campaigns and reads that fail,
//! leases that lapse, nodes that crash and come back, events delivered late. After every step the safety rules are
//! checked against the model; at the end the faults stop and the cluster must settle.

use std::collections::{BTreeSet, VecDeque};

use super::*;
use crate::core::rand::SplitMix64;

const NODES: usize = 3;
const SETTINGS: Settings = Settings {
    max_batch_bytes: 64,
    heartbeat_ms: 500,
    snapshot_bytes: u64::MAX,
    snapshot_batches: u64::MAX,
    trim_every_ms: 0,
};
/// A cluster that snapshots every few batches and trims its log.
const TRIMMING: Settings = Settings { snapshot_batches: 2, snapshot_bytes: 20, trim_every_ms: 100, ..SETTINGS };

/// The etcd of the model.
#[derive(Debug, Default)]
struct Etcd {
    revision: u64,
    /// The leader key: its holder and create revision (the epoch).
    leader: Option<(usize, Epoch)>,
    /// The log: batch and time, at `seq - 1`.
    log: Vec<(Vec<u8>, u64)>,
    /// Which nodes' leases are alive.
    leases: [bool; NODES],
    /// Batches below this were trimmed (reads cannot see them).
    trimmed_below: Seq,
    /// The snapshot position each node published under its lease.
    positions: [Option<Seq>; NODES],
}

/// A node: its rules, its replica (the batches it applied or committed), the turns it
/// applied as leader and not yet committed, and its link's queue of events to deliver.
struct Node {
    cluster: Cluster,
    up: bool,
    replica: Vec<Vec<u8>>,
    /// Effects waiting for the link.
    effects: VecDeque<Effect>,
    /// Events waiting to be delivered (the watch, the answers of puts).
    events: VecDeque<Event>,
}

impl Node {
    fn new(settings: Settings, i: usize, applied: Vec<Vec<u8>>, last_at_ms: u64) -> Self {
        Self {
            cluster: Cluster::new(settings, &format!("n{i}"), applied.len() as Seq, last_at_ms),
            up: true,
            replica: applied,
            effects: VecDeque::new(),
            events: VecDeque::new(),
        }
    }
}

struct World {
    settings: Settings,
    /// Each node's local snapshot (position and time): it survives crashes.
    files: [(Seq, u64); NODES],
    rng: SplitMix64,
    now_ms: u64,
    etcd: Etcd,
    nodes: Vec<Node>,
    next_token: u64,
    acknowledged: BTreeSet<u64>,
    resigned: BTreeSet<u64>,
    epochs_won: Vec<Epoch>,
    /// Faults may happen (false: the cluster settles).
    faults: bool,
    /// Snapshots fetched from a leader.
    fetches: u64,
}

fn tokens_in(batch: &[u8]) -> Vec<u64> {
    String::from_utf8_lossy(batch).split(';').filter_map(|t| t.strip_prefix('t').and_then(|n| n.parse().ok())).collect()
}

impl World {
    fn new(seed: u64, settings: Settings) -> Self {
        let mut world = World {
            settings,
            files: [(0, 0); NODES],
            rng: SplitMix64::new(seed),
            now_ms: 1_000_000,
            etcd: Etcd::default(),
            nodes: (0..NODES).map(|i| Node::new(settings, i, Vec::new(), 0)).collect(),
            next_token: 1,
            acknowledged: BTreeSet::new(),
            resigned: BTreeSet::new(),
            epochs_won: Vec::new(),
            faults: true,
            fetches: 0,
        };
        for i in 0..NODES {
            world.etcd.leases[i] = true;
            world.step(i, Event::LeaseHeld);
        }
        world
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.rng.below(100) < percent
    }

    /// Steps node `i`'s rules and queues their effects for its link.
    fn step(&mut self, i: usize, event: Event) {
        let effects = self.nodes[i].cluster.step(event, self.now_ms);
        self.nodes[i].effects.extend(effects);
    }

    fn leader_key(&self) -> Option<Leader> {
        self.etcd.leader.map(|(node, epoch)| Leader {
            node: format!("n{node}"),
            url: format!("http://n{node}"),
            peer: (self.settings.trim_every_ms > 0).then(|| format!("n{node}")),
            epoch,
        })
    }

    /// Every up node's watch on the leader key hears of a change (later).
    fn announce_leader(&mut self) {
        let leader = self.leader_key();
        for node in self.nodes.iter_mut().filter(|n| n.up) {
            node.events.push_back(Event::LeaderIs { leader: leader.clone(), revision: self.etcd.revision });
        }
    }

    /// The keeper of node `i`, leading, applies a turn.
    fn turn(&mut self, i: usize, records: String) {
        let token = self.next_token;
        self.next_token += 1;
        let at_ms = self.nodes[i].cluster.time(self.now_ms);
        let records = format!("t{token};{records}").into_bytes();
        // A keeper effect carried out late, when the node no longer leads, is a turn of no
        // epoch: the rules must refuse it.
        let epoch = self.nodes[i].cluster.leading_epoch().unwrap_or(0);
        self.step(i, Event::Turn(Turn { token, records, at_ms, epoch }));
    }

    /// The link of node `i` carries out its next effect.
    fn carry_out(&mut self, i: usize) {
        let Some(effect) = self.nodes[i].effects.pop_front() else { return };
        match effect {
            // The request fails on the way (no answer at all): a later tick campaigns again.
            Effect::Campaign if self.faults && self.chance(5) => {}
            Effect::Campaign => {
                if self.etcd.leader.is_none() && self.etcd.leases[i] {
                    self.etcd.revision += 1;
                    let epoch = self.etcd.revision;
                    assert!(self.epochs_won.iter().all(|&e| e < epoch), "epochs only grow");
                    self.epochs_won.push(epoch);
                    self.etcd.leader = Some((i, epoch));
                    self.step(i, Event::Won { epoch });
                    self.announce_leader();
                } else {
                    let leader = self.leader_key();
                    self.step(i, Event::LeaderIs { leader, revision: self.etcd.revision });
                }
            }
            Effect::CatchUp { read, .. } if self.faults && self.chance(5) => {
                self.nodes[i].events.push_back(Event::ReadFailed { read });
            }
            Effect::CatchUp { from, read } => {
                let end = self.etcd.log.len() as Seq;
                let first = if end == 0 { 0 } else { self.etcd.trimmed_below.max(1) };
                // From a trimmed position, a read reports where the log begins, no batches.
                if from >= first {
                    for seq in from..=end {
                        let (batch, at_ms) = self.etcd.log[seq as usize - 1].clone();
                        self.step(i, Event::Logged { seq, batch, at_ms });
                    }
                }
                self.step(i, Event::LogEnd { seq: end, first, read });
            }
            Effect::Apply { seq, batch } => {
                let node = &mut self.nodes[i];
                assert_eq!(seq, node.replica.len() as Seq + 1, "node {i} applies batch {seq} in order");
                node.replica.push(batch);
            }
            Effect::TakeOver { at_ms, gap_ms } => {
                // (Checked while it still leads: a takeover carried out late is refused.)
                let leads =
                    self.etcd.leader.is_some_and(|(h, e)| h == i && self.nodes[i].cluster.leading_epoch() == Some(e));
                assert!(
                    !leads || at_ms >= self.etcd.log.last().map_or(0, |l| l.1),
                    "a takeover never goes back in time: node {i} at {at_ms}, log {:?}, applied {}",
                    self.etcd.log.iter().map(|l| l.1).collect::<Vec<_>>(),
                    self.nodes[i].cluster.applied()
                );
                self.turn(i, format!("takeover+{gap_ms}@{at_ms};"));
            }
            Effect::Heartbeat => self.turn(i, String::new()),
            Effect::Abdicate { epoch } => {
                if self.etcd.leader.is_some_and(|(_, e)| e == epoch) {
                    self.etcd.revision += 1;
                    self.etcd.leader = None;
                    self.announce_leader();
                }
            }
            Effect::Put { seq, epoch, batch } => self.put(i, seq, epoch, batch),
            Effect::Publish { snapshot } => {
                // (A position may be outdated by a snapshot written since it was asked for.)
                assert!(snapshot <= self.files[i].0, "node {i} publishes a snapshot it does not have");
                if self.etcd.leases[i] && !(self.faults && self.chance(5)) {
                    self.etcd.positions[i] = Some(snapshot);
                } else {
                    self.nodes[i].events.push_back(Event::PublishFailed);
                }
            }
            Effect::ReadNodes => {
                let snapshots =
                    (0..NODES).filter_map(|j| self.etcd.positions[j].map(|seq| (format!("n{j}"), seq))).collect();
                self.nodes[i].events.push_back(Event::Nodes { snapshots });
            }
            Effect::Trim { below, epoch } => {
                if self.etcd.leader.is_some_and(|(_, e)| e == epoch) {
                    // A node that published a lower position since the leader read them
                    // fetches a snapshot; the leader's own covers what it trims.
                    assert!(self.files[i].0 + 1 >= below, "node {i} trims below {below}, past its own snapshot");
                    assert!(below <= self.etcd.log.len() as Seq, "the log's last batch is never trimmed");
                    self.etcd.trimmed_below = self.etcd.trimmed_below.max(below);
                    self.etcd.revision += 1;
                    let revision = self.etcd.revision;
                    self.nodes[i].events.push_back(Event::Trimmed { below, revision });
                }
            }
            Effect::Compact { revision } => assert!(revision <= self.etcd.revision, "compacted the future"),
            Effect::Fetch { peer } => {
                let from: usize = peer[1..].parse().expect("a node's peer address");
                let (seq, at_ms) = self.files[from];
                if seq == 0 || !self.nodes[from].up || (self.faults && self.chance(10)) {
                    self.nodes[i].events.push_back(Event::FetchFailed);
                } else {
                    self.files[i] = self.files[i].max((seq, at_ms));
                    self.fetches += 1;
                    self.nodes[i].events.push_back(Event::Fetched { seq });
                }
            }
            Effect::Acknowledge { seq, tokens } => {
                let node = &mut self.nodes[i];
                assert_eq!(seq, node.replica.len() as Seq + 1, "node {i} keeps its batch {seq} in order");
                node.replica.push(self.etcd.log[seq as usize - 1].0.clone());
                for token in tokens {
                    assert!(!self.resigned.contains(&token), "turn {token} resigned, then acknowledged");
                    assert!(self.acknowledged.insert(token), "turn {token} acknowledged twice");
                }
            }
            Effect::Resign { tokens } => {
                for &token in &tokens {
                    assert!(!self.acknowledged.contains(&token), "turn {token} acknowledged, then resigned");
                }
                self.resigned.extend(tokens);
            }
            // The keeper rebuilds its replica from the log: it restarts with what was
            // committed, and learns the lease and the leader again.
            Effect::Rebuild => self.restart(i),
            Effect::Settle { seq, epoch, batch } => {
                // The link revokes the node's lease if the key still has the epoch, then
                // reads the batch's place.
                if self.etcd.leader == Some((i, epoch)) {
                    self.etcd.leases[i] = false;
                    self.etcd.revision += 1;
                    self.etcd.leader = None;
                    self.announce_leader();
                    self.nodes[i].events.push_back(Event::LeaseLost);
                }
                let there = self.etcd.log.get(seq as usize - 1).is_some_and(|(b, _)| *b == batch);
                let answer = if there { Event::Committed { seq } } else { Event::Refused { seq } };
                self.nodes[i].events.push_back(answer);
            }
        }
    }

    /// A put through the link: its compare against the model, and an outcome that may be
    /// lost on the way back.
    fn put(&mut self, i: usize, seq: Seq, epoch: Epoch, batch: Vec<u8>) {
        let lost_before = self.faults && self.chance(5);
        if lost_before {
            self.nodes[i].events.push_back(Event::Unknown { seq });
            return;
        }
        let mine = self.etcd.leader == Some((i, epoch));
        let at_ms = self.nodes[i].cluster.time(0).max(self.etcd.log.last().map_or(0, |l| l.1));
        let outcome = if mine && self.etcd.log.len() as Seq + 1 == seq {
            self.etcd.revision += 1;
            self.etcd.log.push((batch.clone(), at_ms));
            for node in self.nodes.iter_mut().filter(|n| n.up) {
                node.events.push_back(Event::Logged { seq, batch: batch.clone(), at_ms });
            }
            Event::Committed { seq }
        } else if self.etcd.log.get(seq as usize - 1).is_some_and(|(b, _)| *b == batch) {
            // The failed compare found this very batch: an earlier try went through.
            Event::Committed { seq }
        } else {
            Event::Refused { seq }
        };
        let lost_after = self.faults && self.chance(5);
        self.nodes[i].events.push_back(if lost_after { Event::Unknown { seq } } else { outcome });
    }

    /// Node `i`'s keeper starts again: its rules from its local snapshot (with no
    /// snapshots, from nothing: it reads the whole log).
    fn restart(&mut self, i: usize) {
        let (seq, last_at) = self.files[i];
        let replica = self.etcd.log[..seq as usize].iter().map(|(batch, _)| batch.clone()).collect();
        self.nodes[i] = Node::new(self.settings, i, replica, last_at);
        if self.etcd.leases[i] {
            self.step(i, Event::LeaseHeld);
        }
        let leader = self.leader_key();
        self.step(i, Event::LeaderIs { leader, revision: self.etcd.revision });
        self.step(i, Event::Tick);
        // It catches up with what it missed while it was away.
        let end = self.etcd.log.len() as Seq;
        if end > self.nodes[i].cluster.applied() {
            let batch = self.etcd.log[end as usize - 1].clone();
            self.nodes[i].events.push_back(Event::Logged { seq: end, batch: batch.0, at_ms: batch.1 });
        }
    }

    /// Node `i`'s keeper writes a snapshot if its rules say it may (or fails to).
    fn snapshot(&mut self, i: usize) {
        // The keeper carries out what its rules said before it may snapshot.
        let pending = |e: &Effect| matches!(e, Effect::Apply { .. } | Effect::Acknowledge { .. } | Effect::Rebuild);
        if self.nodes[i].effects.iter().any(pending) {
            return;
        }
        let Some(seq) = self.nodes[i].cluster.may_snapshot(self.now_ms) else { return };
        assert_eq!(seq, self.nodes[i].replica.len() as Seq, "node {i} snapshots what its replica holds");
        if self.faults && self.chance(10) {
            self.step(i, Event::SnapshotFailed);
        } else {
            self.files[i] = (seq, self.etcd.log[seq as usize - 1].1);
            self.step(i, Event::Snapshotted { seq });
        }
    }

    /// Node `i`'s lease lapses: etcd deletes the leader key if it held it, and the
    /// position it published.
    fn lapse(&mut self, i: usize) {
        self.etcd.leases[i] = false;
        self.etcd.positions[i] = None;
        if self.etcd.leader.is_some_and(|(holder, _)| holder == i) {
            self.etcd.revision += 1;
            self.etcd.leader = None;
            self.announce_leader();
        }
        if self.nodes[i].up {
            self.nodes[i].events.push_back(Event::LeaseLost);
        }
    }

    fn one_random_step(&mut self) {
        let i = self.rng.below(NODES);
        match self.rng.below(100) {
            0..=29 => {
                // (A keeper journals its takeover before any other turn.)
                let taking_over = self.nodes[i].effects.iter().any(|e| matches!(e, Effect::TakeOver { .. }));
                if self.nodes[i].up && self.nodes[i].cluster.leads() && !taking_over {
                    self.turn(i, String::new());
                }
            }
            30..=59 => {
                if self.nodes[i].up {
                    self.carry_out(i);
                }
            }
            60..=84 => {
                if self.nodes[i].up {
                    if let Some(event) = self.nodes[i].events.pop_front() {
                        self.step(i, event);
                    }
                }
            }
            85..=86 => {
                if self.nodes[i].up {
                    self.snapshot(i);
                }
            }
            87..=89 => {
                self.now_ms += self.rng.below(300) as u64;
                for j in 0..NODES {
                    if self.nodes[j].up {
                        self.step(j, Event::Tick);
                    }
                }
            }
            90..=93 if self.faults => {
                if self.etcd.leases[i] {
                    self.lapse(i);
                } else if self.nodes[i].up {
                    // A new lease.
                    self.etcd.leases[i] = true;
                    self.nodes[i].events.push_back(Event::LeaseHeld);
                }
            }
            94..=96 if self.faults => {
                if self.nodes[i].up {
                    // A crash: effects and events in flight are gone; its lease lives on
                    // until it lapses.
                    self.nodes[i].up = false;
                    self.nodes[i].effects.clear();
                    self.nodes[i].events.clear();
                } else {
                    self.nodes[i].up = true;
                    self.restart(i);
                }
            }
            _ => {
                // A crashed node's lease lapses in time.
                if !self.nodes[i].up && self.etcd.leases[i] {
                    self.lapse(i);
                }
            }
        }
        self.check();
    }

    /// The safety rules.
    fn check(&self) {
        let log = &self.etcd.log;
        for pair in log.windows(2) {
            assert!(pair[0].1 <= pair[1].1, "time in the log went back: {} then {}", pair[0].1, pair[1].1);
        }
        let mut in_log = BTreeSet::new();
        for (batch, _) in log {
            for token in tokens_in(batch) {
                assert!(in_log.insert(token), "turn {token} is in the log twice");
                assert!(!self.resigned.contains(&token), "resigned turn {token} is in the log");
            }
        }
        for token in &self.acknowledged {
            assert!(in_log.contains(token), "acknowledged turn {token} is not in the log");
        }
        for (i, node) in self.nodes.iter().enumerate() {
            assert!(node.replica.len() <= log.len(), "node {i} applied more than the log holds");
            for (seq, batch) in node.replica.iter().enumerate() {
                assert_eq!(batch, &log[seq].0, "node {i}'s replica differs from the log at batch {}", seq + 1);
            }
            if let Role::Leading { epoch } = node.cluster.role() {
                let holder = self.etcd.leader.filter(|&(_, e)| e == *epoch).map(|(h, _)| h);
                assert!(holder.is_none() || holder == Some(i), "two nodes lead epoch {epoch}");
            }
        }
    }

    /// Without faults, runs until every node is up, one leads, every follower has applied
    /// the whole log, and a new turn is acknowledged.
    fn settle(&mut self) {
        self.faults = false;
        for i in 0..NODES {
            if !self.nodes[i].up {
                self.nodes[i].up = true;
                self.restart(i);
            }
            if !self.etcd.leases[i] {
                self.etcd.leases[i] = true;
                self.nodes[i].events.push_back(Event::LeaseHeld);
            }
        }
        let mut probe: Option<u64> = None;
        for round in 0..20_000 {
            // Everything in flight is carried out and delivered, in turn.
            for i in 0..NODES {
                self.carry_out(i);
                if let Some(event) = self.nodes[i].events.pop_front() {
                    self.step(i, event);
                }
                self.snapshot(i);
            }
            self.check();
            if round % 50 == 0 {
                self.now_ms += 100;
                for i in 0..NODES {
                    self.step(i, Event::Tick);
                }
            }
            let leaders: Vec<usize> = (0..NODES).filter(|&i| self.nodes[i].cluster.leads()).collect();
            if let [leader] = leaders[..] {
                // A turn that must come through (again, if a change of leader resigned it).
                if probe.is_none_or(|p| self.resigned.contains(&p)) {
                    probe = Some(self.next_token);
                    self.turn(leader, "probe;".into());
                }
            }
            let quiet = self.nodes.iter().all(|n| n.effects.is_empty() && n.events.is_empty());
            let replicated = self.nodes.iter().all(|n| n.replica.len() == self.etcd.log.len());
            if quiet && replicated && probe.is_some_and(|p| self.acknowledged.contains(&p)) {
                return;
            }
        }
        panic!(
            "the cluster did not settle: roles {:?}, applied {:?}, log {}",
            self.nodes.iter().map(|n| n.cluster.role().clone()).collect::<Vec<_>>(),
            self.nodes.iter().map(|n| n.replica.len()).collect::<Vec<_>>(),
            self.etcd.log.len()
        );
    }
}

fn run(seed: u64, steps: usize, settings: Settings) -> World {
    let mut world = World::new(seed, settings);
    for _ in 0..steps {
        world.one_random_step();
    }
    world.settle();
    assert!(!world.etcd.log.is_empty(), "seed {seed}: nothing was committed");
    world
}

#[test]
fn cluster_rules_keep_the_log_safe_under_faults_and_settle_after_them() {
    for seed in 0..200 {
        run(seed, 3_000, SETTINGS);
    }
}

#[test]
fn a_cluster_that_snapshots_and_trims_its_log_stays_safe_and_every_node_catches_up() {
    let (mut trimmed, mut fetched) = (0, 0);
    for seed in 0..200 {
        let world = run(seed, 3_000, TRIMMING);
        trimmed += u64::from(world.etcd.trimmed_below > 1);
        fetched += u64::from(world.fetches > 0);
    }
    // The runs must have exercised what they check.
    assert!(trimmed > 80, "the log was trimmed in only {trimmed} of 200 runs");
    assert!(fetched > 40, "a node fetched a snapshot in only {fetched} of 200 runs");
}

#[test]
fn a_leader_acknowledges_only_what_the_log_holds_and_batches_turns_behind_a_put() {
    let mut c = Cluster::new(SETTINGS, "n0", 0, 0);
    assert_eq!(c.step(Event::LeaseHeld, 10), [Effect::Campaign]);
    assert_eq!(c.step(Event::Won { epoch: 7 }, 10), [Effect::CatchUp { from: 1, read: 1 }]);
    assert_eq!(
        c.step(Event::LogEnd { seq: 0, first: 0, read: 1 }, 20),
        [Effect::TakeOver { at_ms: 20, gap_ms: 0 }],
        "an empty log had no leader to be without"
    );
    let turn = |token: u64, bytes: &[u8]| Event::Turn(Turn { token, records: bytes.to_vec(), at_ms: 30, epoch: 7 });
    assert_eq!(c.step(turn(1, b"a"), 30), [Effect::Put { seq: 1, epoch: 7, batch: b"a".to_vec() }]);
    // Turns behind the put wait, then go together.
    assert!(c.step(turn(2, b"b"), 31).is_empty());
    assert!(c.step(turn(3, b"c"), 32).is_empty());
    assert_eq!(
        c.step(Event::Committed { seq: 1 }, 33),
        [Effect::Acknowledge { seq: 1, tokens: vec![1] }, Effect::Put { seq: 2, epoch: 7, batch: b"bc".to_vec() }]
    );
    // No known outcome: the same batch again.
    assert_eq!(c.step(Event::Unknown { seq: 2 }, 34), [Effect::Put { seq: 2, epoch: 7, batch: b"bc".to_vec() }]);
    // Refused: nothing of it is acknowledged, ever, and the replica that holds it is
    // rebuilt from the log.
    assert_eq!(c.step(Event::Refused { seq: 2 }, 35), [Effect::Resign { tokens: vec![2, 3] }, Effect::Rebuild]);
    assert!(!c.leads());
    assert_eq!(c.step(turn(4, b"d"), 36), [Effect::Resign { tokens: vec![4] }, Effect::Rebuild]);
}

#[test]
fn a_new_leader_takes_over_only_after_a_read_begun_after_its_win() {
    let mut c = Cluster::new(SETTINGS, "n0", 2, 500);
    c.step(Event::LeaseHeld, 0);
    // A follower's read in progress when it wins does not end its catching up.
    c.step(Event::Logged { seq: 4, batch: b"x".to_vec(), at_ms: 700 }, 0);
    assert_eq!(c.step(Event::Won { epoch: 9 }, 1_000), [Effect::CatchUp { from: 3, read: 2 }]);
    assert!(c.step(Event::LogEnd { seq: 2, first: 1, read: 1 }, 1_000).is_empty(), "an older read ends nothing");
    let apply = c.step(Event::Logged { seq: 3, batch: b"y".to_vec(), at_ms: 800 }, 1_000);
    assert_eq!(apply, [Effect::Apply { seq: 3, batch: b"y".to_vec() }]);
    let apply = c.step(Event::Logged { seq: 4, batch: b"x".to_vec(), at_ms: 700 }, 1_000);
    assert_eq!(apply, [Effect::Apply { seq: 4, batch: b"x".to_vec() }]);
    // The log's time is ahead of this node's clock: time does not go back, and the grace
    // is what passed since the last batch.
    assert_eq!(c.step(Event::LogEnd { seq: 4, first: 1, read: 2 }, 600), [Effect::TakeOver { at_ms: 800, gap_ms: 0 }]);
    assert!(c.leads());
    assert_eq!(c.time(600), 800);
}

#[test]
fn a_follower_reads_the_log_when_its_watch_begins_and_again_for_batches_seen_past_a_read() {
    let mut c = Cluster::new(SETTINGS, "n0", 0, 0);
    assert_eq!(c.step(Event::Watching, 0), [Effect::CatchUp { from: 1, read: 1 }]);
    assert_eq!(
        c.step(Event::Logged { seq: 1, batch: b"a".to_vec(), at_ms: 5 }, 0),
        [Effect::Apply { seq: 1, batch: b"a".to_vec() }]
    );
    // The watch shows batch 3 while the read runs; the read ends at 2.
    assert!(c.step(Event::Logged { seq: 3, batch: b"c".to_vec(), at_ms: 7 }, 0).is_empty());
    c.step(Event::Logged { seq: 2, batch: b"b".to_vec(), at_ms: 6 }, 0);
    assert_eq!(c.step(Event::LogEnd { seq: 2, first: 1, read: 1 }, 0), [Effect::CatchUp { from: 3, read: 2 }]);
    assert_eq!(c.lag(), 1);
    c.step(Event::Logged { seq: 3, batch: b"c".to_vec(), at_ms: 7 }, 0);
    assert!(c.step(Event::LogEnd { seq: 3, first: 1, read: 2 }, 0).is_empty());
    assert_eq!((c.applied(), c.lag()), (3, 0));
}

#[test]
fn a_leader_that_sees_another_epoch_or_a_foreign_batch_resigns() {
    let leading = || {
        let mut c = Cluster::new(SETTINGS, "n0", 0, 0);
        c.step(Event::LeaseHeld, 0);
        c.step(Event::Won { epoch: 3 }, 0);
        c.step(Event::LogEnd { seq: 0, first: 0, read: 1 }, 0);
        c.step(Event::Turn(Turn { token: 1, records: b"a".to_vec(), at_ms: 0, epoch: 3 }), 0);
        c
    };
    let settle = Effect::Settle { seq: 1, epoch: 3, batch: b"a".to_vec() };
    let mut c = leading();
    let other = Leader { node: "n2".into(), url: "http://n2".into(), peer: None, epoch: 5 };
    // Its batch in flight may have landed: settled before anything is said of it.
    assert_eq!(
        c.step(Event::LeaderIs { leader: Some(other.clone()), revision: other.epoch }, 1),
        std::slice::from_ref(&settle)
    );
    assert_eq!(c.role(), &Role::Follower { leader: Some(other) });
    assert_eq!(c.step(Event::Refused { seq: 1 }, 2), [Effect::Resign { tokens: vec![1] }, Effect::Rebuild]);
    let mut c = leading();
    c.step(Event::LeaseLost, 1);
    assert_eq!(c.step(Event::Committed { seq: 1 }, 2), [Effect::Acknowledge { seq: 1, tokens: vec![1] }]);
    assert_eq!(c.applied(), 1);
    // Its own batch through the watch before the put's answer: committed.
    let mut c = leading();
    let seen = c.step(Event::Logged { seq: 1, batch: b"a".to_vec(), at_ms: 0 }, 1);
    assert_eq!(seen, [Effect::Acknowledge { seq: 1, tokens: vec![1] }]);
    // Another batch at its seq: someone else leads.
    let mut c = leading();
    let foreign = c.step(Event::Logged { seq: 1, batch: b"z".to_vec(), at_ms: 0 }, 1);
    assert_eq!(foreign, [Effect::Resign { tokens: vec![1] }, Effect::Rebuild]);
    // A lapsed lease, with a turn queued behind the put: the queued one is resigned at
    // once, the one in flight settled.
    let mut c = leading();
    c.step(Event::Turn(Turn { token: 2, records: b"b".to_vec(), at_ms: 0, epoch: 3 }), 0);
    assert_eq!(c.step(Event::LeaseLost, 1), [Effect::Resign { tokens: vec![2] }, settle]);
    assert_eq!(c.step(Event::Refused { seq: 1 }, 2), [Effect::Resign { tokens: vec![1] }, Effect::Rebuild]);
}

#[test]
fn an_idle_leader_asks_for_a_heartbeat_once_per_interval() {
    let mut c = Cluster::new(SETTINGS, "n0", 0, 0);
    c.step(Event::LeaseHeld, 0);
    c.step(Event::Won { epoch: 1 }, 0);
    c.step(Event::LogEnd { seq: 0, first: 0, read: 1 }, 100);
    assert_eq!(c.next_tick_ms(), Some(600));
    assert!(c.step(Event::Tick, 599).is_empty());
    assert_eq!(c.step(Event::Tick, 600), [Effect::Heartbeat]);
    assert!(c.step(Event::Tick, 601).is_empty(), "one heartbeat at a time");
}

#[test]
fn a_failed_campaign_or_catch_up_read_is_made_again() {
    let mut c = Cluster::new(SETTINGS, "n0", 0, 0);
    assert_eq!(c.step(Event::LeaseHeld, 1_000), [Effect::Campaign]);
    // No answer came: while nobody leads, a tick a heartbeat later campaigns again.
    assert_eq!(c.next_tick_ms(), Some(1_500));
    assert!(c.step(Event::Tick, 1_499).is_empty());
    assert_eq!(c.step(Event::Tick, 1_500), [Effect::Campaign]);
    // Someone leads: no more campaigns.
    let other = Leader { node: "n1".into(), url: "http://n1".into(), peer: None, epoch: 4 };
    c.step(Event::LeaderIs { revision: other.epoch, leader: Some(other) }, 1_600);
    assert_eq!(c.next_tick_ms(), None);
    assert!(c.step(Event::Tick, 9_000).is_empty());
    // A catch-up read that failed is asked for again, under a new number.
    c.step(Event::Logged { seq: 3, batch: b"c".to_vec(), at_ms: 0 }, 9_000);
    assert_eq!(c.step(Event::ReadFailed { read: 1 }, 9_001), [Effect::CatchUp { from: 1, read: 2 }]);
    assert!(c.step(Event::ReadFailed { read: 1 }, 9_002).is_empty(), "an old read's failure changes nothing");
}

#[test]
fn news_of_the_leader_key_older_than_what_a_node_knows_is_ignored() {
    let mut c = Cluster::new(SETTINGS, "n0", 0, 0);
    c.step(Event::LeaseHeld, 0);
    assert_eq!(c.step(Event::Won { epoch: 9 }, 0), [Effect::CatchUp { from: 1, read: 1 }]);
    // The old leader's key went at revision 8, before this node's win: no news.
    assert!(c.step(Event::LeaderIs { leader: None, revision: 8 }, 0).is_empty());
    assert_eq!(c.role(), &Role::CatchingUp { epoch: 9 });
    // Its own key gone at 12 is news: deposed.
    assert_eq!(c.step(Event::LeaderIs { leader: None, revision: 12 }, 0), [Effect::Campaign]);
    // A follower told at 20 that n1 leads keeps it when an older read says nobody does.
    let n1 = Leader { node: "n1".into(), url: "http://n1".into(), peer: None, epoch: 20 };
    c.step(Event::LeaderIs { leader: Some(n1.clone()), revision: 20 }, 0);
    assert!(c.step(Event::LeaderIs { leader: None, revision: 15 }, 0).is_empty());
    assert_eq!(c.role(), &Role::Follower { leader: Some(n1) });
}

#[test]
fn a_turn_applied_under_an_older_epoch_is_never_put_under_a_newer_one() {
    let mut c = Cluster::new(SETTINGS, "n0", 0, 0);
    c.step(Event::LeaseHeld, 0);
    c.step(Event::Won { epoch: 3 }, 0);
    c.step(Event::LogEnd { seq: 0, first: 0, read: 1 }, 0);
    // Deposed, then leading again under epoch 9 before the keeper hands over a turn it
    // applied under epoch 3 (its replica is stale): resigned, and the replica rebuilt.
    c.step(Event::LeaderIs { leader: None, revision: 5 }, 0);
    c.step(Event::Won { epoch: 9 }, 0);
    c.step(Event::LogEnd { seq: 0, first: 0, read: 2 }, 0);
    assert_eq!(c.leading_epoch(), Some(9));
    let stale = Turn { token: 4, records: b"s".to_vec(), at_ms: 0, epoch: 3 };
    assert_eq!(c.step(Event::Turn(stale), 1), [Effect::Resign { tokens: vec![4] }, Effect::Rebuild]);
}

/// A leader of `epoch` in a trimming cluster, with batches 1 to `applied` in its replica.
fn trimming_leader(applied: Seq, epoch: Epoch) -> Cluster {
    let mut c = Cluster::new(TRIMMING, "n0", applied, 100);
    c.step(Event::LeaseHeld, 0);
    c.step(Event::Won { epoch }, 0);
    c.step(Event::LogEnd { seq: applied, first: 1, read: 1 }, 0);
    assert!(c.leads());
    c
}

#[test]
fn a_leader_trims_below_the_lowest_snapshot_of_the_live_nodes_and_its_own_and_compacts_one_trim_behind() {
    // Its own snapshot is at 8 (it started from it).
    let mut c = trimming_leader(8, 4);
    assert_eq!(c.step(Event::Tick, 50), []);
    assert_eq!(c.step(Event::Tick, 100), [Effect::ReadNodes], "every trim_every_ms");
    let nodes = |a: Seq, b: Seq| Event::Nodes { snapshots: vec![("n1".into(), a), ("n2".into(), b)] };
    assert_eq!(c.step(nodes(5, 12), 100), [Effect::Trim { below: 5, epoch: 4 }]);
    assert_eq!(c.step(Event::Trimmed { below: 5, revision: 70 }, 101), [], "nothing to compact before a second trim");
    assert_eq!(c.step(nodes(5, 12), 200), [], "nothing new to trim");
    // Its own snapshot holds the trim back even when the others are ahead.
    assert_eq!(c.step(nodes(20, 30), 300), [Effect::Trim { below: 8, epoch: 4 }]);
    assert_eq!(c.step(Event::Trimmed { below: 8, revision: 90 }, 301), [Effect::Compact { revision: 70 }]);
    // A follower never trims.
    let mut f = Cluster::new(TRIMMING, "n1", 8, 100);
    assert_eq!(f.step(nodes(20, 30), 0), []);
}

#[test]
fn a_node_whose_next_batch_was_trimmed_fetches_the_leaders_snapshot_and_starts_again_from_it() {
    let mut c = Cluster::new(TRIMMING, "n1", 3, 100);
    assert_eq!(c.step(Event::LeaseHeld, 0), [Effect::Publish { snapshot: 3 }, Effect::Campaign]);
    let leader = Leader { node: "n0".into(), url: "http://n0".into(), peer: Some("n0:7070".into()), epoch: 9 };
    c.step(Event::LeaderIs { leader: Some(leader), revision: 9 }, 0);
    assert_eq!(c.step(Event::Watching, 0), [Effect::CatchUp { from: 4, read: 1 }]);
    // The log now begins at 10: batches 4 to 9 are gone.
    assert_eq!(c.step(Event::LogEnd { seq: 40, first: 10, read: 1 }, 0), [Effect::Fetch { peer: "n0:7070".into() }]);
    assert!(c.needs_snapshot());
    assert_eq!(
        c.step(Event::Logged { seq: 41, batch: b"x".to_vec(), at_ms: 5 }, 0),
        [],
        "nothing is applied meanwhile"
    );
    assert_eq!(c.step(Event::FetchFailed, 10), []);
    assert_eq!(c.next_tick_ms(), Some(10 + FETCH_RETRY_MS));
    assert_eq!(c.step(Event::Tick, 10 + FETCH_RETRY_MS), [Effect::Fetch { peer: "n0:7070".into() }]);
    assert_eq!(c.step(Event::Fetched { seq: 35 }, 1_500), [Effect::Rebuild]);
    assert_eq!(c.may_snapshot(1_500), None, "its replica is not the snapshot's");
}

#[test]
fn a_node_that_wins_but_finds_its_next_batch_trimmed_gives_the_leader_key_back() {
    let mut c = Cluster::new(TRIMMING, "n1", 3, 100);
    c.step(Event::LeaseHeld, 0);
    assert_eq!(c.step(Event::Won { epoch: 12 }, 0), [Effect::CatchUp { from: 4, read: 1 }]);
    assert_eq!(c.step(Event::LogEnd { seq: 40, first: 10, read: 1 }, 0), [Effect::Abdicate { epoch: 12 }]);
    assert!(!c.leads());
    // It may not lead again until it has a snapshot: no campaign while nobody leads.
    assert_eq!(c.step(Event::LeaderIs { leader: None, revision: 13 }, 0), []);
    assert_eq!(c.step(Event::Tick, 10_000), []);
}

#[test]
fn a_leader_whose_snapshot_is_due_goes_quiet_until_its_turns_are_committed_and_at_most_a_while() {
    let mut c = trimming_leader(0, 2);
    let turn =
        |token: u64| Event::Turn(Turn { token, records: b"abcdefghijklmnopqrstuvwxyz".to_vec(), at_ms: 0, epoch: 2 });
    assert!(!c.wants_quiet(0), "nothing to snapshot yet");
    c.step(turn(1), 1);
    c.step(Event::Committed { seq: 1 }, 2);
    c.step(turn(2), 3);
    assert!(c.wants_quiet(3), "a batch's worth of bytes since its last snapshot");
    assert_eq!(c.may_snapshot(3), None, "not while a batch is in flight");
    c.step(Event::Committed { seq: 2 }, 4);
    assert_eq!(c.may_snapshot(4), Some(2));
    assert_eq!(c.step(Event::Snapshotted { seq: 2 }, 5), [Effect::Publish { snapshot: 2 }]);
    assert!(!c.wants_quiet(5));
    // A put that never ends: quiet for at most MAX_QUIET_MS, then not again for a while.
    c.step(turn(3), 6);
    c.step(Event::Committed { seq: 3 }, 7);
    c.step(turn(4), 8);
    assert!(c.wants_quiet(8));
    assert!(c.wants_quiet(8 + MAX_QUIET_MS - 1));
    assert!(!c.wants_quiet(8 + MAX_QUIET_MS));
    assert!(!c.wants_quiet(8 + MAX_QUIET_MS + SNAPSHOT_RETRY_MS - 1));
}
