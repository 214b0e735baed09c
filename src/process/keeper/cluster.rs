//! The keeper in cluster mode (docs/cluster.md, "Inside the keeper"): it carries out what
//! the pure rules ([`Cluster`]) decide, with the etcd link's threads ([`Threads`]) doing
//! the talking to etcd. Decides nothing itself.
//!
//! - **Leader.** A loop turn's records go into one [`Turn`] instead of the local journal;
//!   its answers are held under the turn's token until the rules acknowledge the batch
//!   that holds it (etcd has then made it durable on a quorum). Answers that come after a
//!   turn not yet acknowledged (reads included) wait with it, so nobody sees a change that
//!   may never happen. A resigned turn's requests are answered 503 `not_leader`.
//! - **Follower.** Each batch the rules apply is replayed through the same pure service,
//!   whatever it sends meanwhile dropped (its channels are the leader's). With a peer link
//!   to the leader every request is forwarded there ([`super::peer`]); without one, reads
//!   are served from this replica and changes are answered 503 `not_leader` with the
//!   leader's URL at once, even while a batch of its last leadership is being settled
//!   (reads wait for it).
//! - **Takeover.** One turn: the limits of this node, every channel in the state closed,
//!   fresh presence windows, every lease extended by the time without a leader, due
//!   expiries, and this node's courier made the outbox's again.
//! - **Rebuild.** A replica holding a turn that never reached the log ends the keeper with
//!   [`EXIT_REBUILD`]; the master starts a new one at once, which replays the log.
//! - **Snapshots.** The replica is written to the data directory when the rules say it may
//!   be ([`replica`]), at a clean stop too; a leader takes no input meanwhile
//!   (`cluster_quiet`). A node needing the leader's snapshot fetches it over the peer link.
//!
//! The local journal is not written in cluster mode: a keeper starts from its local
//! snapshot, if any, and reads the log in etcd after it (docs/cluster.md, "Snapshots and a
//! log kept small").

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Poll, Token, Waker};

use super::{CorruptJournal, Keeper};
use crate::config::ClusterConfig;
use crate::ipc::message::{ClusterStatus, FromKeeper, LockReply, ToKeeper};
use crate::journal::replica::{self, Position, ReplicaSnapshot};
use crate::journal::{self, codec, Record, SegmentReader, Snapshot};
use crate::metrics::Histogram;
use crate::process::link::Threads;
use crate::service::cluster::{Cluster, Effect, Event, Role, Settings, Turn};
use crate::service::{LinkId, Outbox};
use crate::sys::clock::wall_ms;

/// The token of the link's wake-ups.
pub(super) const CLUSTER: Token = Token(3);

/// The exit code of a keeper whose replica holds a turn that never reached the log: the
/// master starts a new one at once (not a crash), which replays the log.
pub const EXIT_REBUILD: i32 = 76;

/// Largest batch of records put in one txn, and the size at which a leader's turn is
/// handed over before its loop turn ends. etcd refuses requests over 1.5 MiB by default,
/// and a batch travels base64-encoded (4/3 of its size); one record stays far below
/// (request bodies are at most `server.max_body_bytes`, data values `max_data_bytes`).
const MAX_BATCH_BYTES: usize = 512 * 1024;

/// Workers hear of a new applied position at most this often (a new role at once).
const STATUS_EVERY_MS: u64 = 250;

/// A leader with a peer link reads the nodes' snapshot positions and trims the log this
/// often (docs/cluster.md, "Snapshots and a log kept small").
const TRIM_EVERY_MS: u64 = 5_000;

/// Messages of peers kept while this node, elected, catches up (or has not heard yet who
/// won), at most (past it, a request is answered 503 `not_leader`).
const MAX_DEFERRED: usize = 65_536;

/// A peer's message kept while no node is known to lead is answered 503 `not_leader` once
/// it waited this long (a peer that heard of this node's win before this node did is a
/// matter of milliseconds; a cluster without a leader for longer says so).
const MAX_DEFERRED_MS: u64 = 2_000;

/// Where a node stands, as the workers were told it: the leader's URL follows from the role
/// and the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Standing {
    role: &'static str,
    epoch: u64,
    applied: u64,
    lag: u64,
    snapshot: u64,
}

/// The keeper's cluster part.
pub(super) struct Node {
    rules: Cluster,
    threads: Threads,
    advertise_url: String,
    /// `cluster.prefix` (a local snapshot names the log it is of).
    prefix: String,
    etcd_timeout_ms: u64,
    /// A leader's records of this loop turn, framed.
    turn: Vec<u8>,
    /// The latest time a record of this turn was stamped with.
    turn_at_ms: u64,
    /// The epoch this node led when the turn's first record was applied.
    turn_epoch: u64,
    /// Answers of turns not yet acknowledged, oldest first, by token.
    held: VecDeque<(u64, Outbox)>,
    /// Answers that may leave now (acknowledged, or resigned as 503).
    released: Outbox,
    next_token: u64,
    /// The local courier's channel and capacity, made the outbox's again at a takeover.
    courier: Option<(LinkId, u32)>,
    /// What the workers were last told, and when.
    told: Option<Standing>,
    told_at_ms: u64,
    /// The batch being put, and since its first try.
    putting: Option<(u64, Instant)>,
    /// What peers sent while this node, elected, caught up: handled once it leads (before,
    /// it would be this replica's, and the takeover would close it), or answered 503
    /// `not_leader` if it does not.
    deferred: VecDeque<(u64, LinkId, ToKeeper)>,
    commit_latency: Histogram,
}

impl Node {
    /// The rules and the link of the node `config` describes, whose replica starts at
    /// `position` (from its local snapshot: the batch and its time; zeros for none); the
    /// link wakes `poll`.
    pub(super) fn start(
        config: &ClusterConfig,
        snapshot_bytes: u64,
        position: (u64, u64),
        poll: &Poll,
    ) -> io::Result<Self> {
        let waker = Arc::new(Waker::new(poll.registry(), CLUSTER)?);
        let threads = Threads::start(config, waker).map_err(io::Error::other)?;
        let mut header = Vec::new();
        codec::frame(&journal::segment_header(), &mut header);
        // A heartbeat every half TTL keeps the log's time within that of the last moment a
        // leader was alive, so a takeover's grace stays close to the real gap.
        let settings = Settings {
            max_batch_bytes: MAX_BATCH_BYTES,
            heartbeat_ms: config.election_ttl_ms / 2,
            snapshot_bytes,
            snapshot_batches: config.snapshot_every_batches,
            // Trimming needs the peer link: a node whose next batch was trimmed fetches the
            // leader's snapshot over it.
            trim_every_ms: if config.peer.is_some() { TRIM_EVERY_MS } else { 0 },
        };
        let (applied, last_at_ms) = position;
        let rules = Cluster::new(settings, &config.node_name, applied, last_at_ms).with_batch_header(header);
        log::info!(
            "cluster node {} on etcd {}: reading the log, then campaigning",
            config.node_name,
            config.etcd_endpoints.join(",")
        );
        Ok(Self {
            rules,
            threads,
            advertise_url: config.advertise_url.clone(),
            prefix: config.prefix.clone(),
            etcd_timeout_ms: config.etcd_timeout_ms,
            turn: Vec::new(),
            turn_at_ms: 0,
            turn_epoch: 0,
            held: VecDeque::new(),
            released: Vec::new(),
            next_token: 1,
            courier: None,
            told: None,
            told_at_ms: 0,
            putting: None,
            deferred: VecDeque::new(),
            commit_latency: Histogram::default(),
        })
    }

    /// Whether this node leads.
    pub(super) fn leads(&self) -> bool {
        self.rules.leads()
    }

    /// The time a leader stamps its inputs with: never before the log's last.
    pub(super) fn time(&self, now_ms: u64) -> u64 {
        self.rules.time(now_ms)
    }

    /// When the keeper must look at the cluster again: the rules' next tick, or the time
    /// workers may hear of a position they were not told yet.
    pub(super) fn next_tick_ms(&self) -> Option<u64> {
        let tell = self.told.filter(|told| *told != self.standing()).map(|_| self.told_at_ms + STATUS_EVERY_MS);
        match (self.rules.next_tick_ms(), tell) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Adds a record to this turn's batch.
    pub(super) fn journal<T: serde::Serialize>(&mut self, record: &T, at_ms: u64) {
        if self.turn.is_empty() {
            self.turn_epoch = self.rules.leading_epoch().unwrap_or(0);
        }
        match codec::encode(record, &mut self.turn) {
            Ok(()) => self.turn_at_ms = self.turn_at_ms.max(at_ms),
            Err(e) => log::error!("a journal record cannot be encoded: {e}"),
        }
    }

    /// Notes the local courier's hello (it is journaled again at a takeover).
    pub(super) fn courier_ready(&mut self, link: LinkId, message: &ToKeeper) {
        if let ToKeeper::CourierReady { capacity } = message {
            self.courier = Some((link, *capacity));
        }
    }

    /// The URL of the node that leads, when one is known.
    pub(super) fn leader_url(&self) -> Option<String> {
        match self.rules.role() {
            Role::Leading { .. } => Some(self.advertise_url.clone()),
            Role::Follower { leader } => leader.as_ref().map(|l| l.url.clone()),
            Role::CatchingUp { .. } => None,
        }
    }

    /// Where this node stands, as numbers (cheap to compare every loop turn).
    fn standing(&self) -> Standing {
        let (role, epoch) = match self.rules.role() {
            Role::Leading { epoch } => ("leader", *epoch),
            Role::CatchingUp { epoch } => ("candidate", *epoch),
            Role::Follower { leader } => ("follower", leader.as_ref().map_or(0, |l| l.epoch)),
        };
        Standing { role, epoch, applied: self.rules.applied(), lag: self.rules.lag(), snapshot: self.rules.snapshot() }
    }

    /// Where this node stands.
    pub(super) fn status(&self, node: &str) -> ClusterStatus {
        let Standing { role, epoch, applied, lag, snapshot } = self.standing();
        let leader = self.leader_url();
        ClusterStatus { node: node.to_string(), role: role.into(), epoch, applied, lag, snapshot, leader }
    }

    /// Time each batch's put took.
    pub(super) fn commit_latency(&self) -> &Histogram {
        &self.commit_latency
    }

    /// Stops the link, giving the lease back.
    pub(super) fn stop(&mut self) {
        self.threads.stop(Duration::from_millis(self.etcd_timeout_ms));
    }

    /// The answer to a change this node cannot make.
    fn not_leader(&self) -> LockReply {
        LockReply::NotLeader { leader: self.leader_url() }
    }
}

impl Keeper {
    /// The time inputs are handled at: a cluster leader's never goes back past the log's.
    pub(super) fn clock(&self) -> u64 {
        let now = wall_ms();
        self.cluster.as_ref().map_or(now, |node| node.time(now))
    }

    /// Whether this keeper may change the state now: one node always, a cluster node while
    /// it leads.
    pub(super) fn changes_state(&self) -> bool {
        self.cluster.as_ref().is_none_or(Node::leads)
    }

    /// Answers that leave at the end of this loop turn, whatever waits for a batch (the
    /// leader's answers relayed over the peer link, refusals).
    pub(super) fn release_now(&mut self, answers: Outbox) {
        if let Some(node) = self.cluster.as_mut() {
            node.released.extend(answers);
        }
    }

    /// The leader's peer-link address, while this node follows one that has a peer link.
    pub(super) fn leader_peer(&self) -> Option<String> {
        match self.cluster.as_ref()?.rules.role() {
            Role::Follower { leader: Some(leader) } => leader.peer.clone(),
            _ => None,
        }
    }

    /// A message on a cluster node that does not lead: reads are served from the replica;
    /// a change is answered 503 `not_leader`; anything else is dropped. Returns whether the
    /// message was dealt with here.
    pub(super) fn cluster_refuses(&mut self, link: LinkId, message: &ToKeeper, reads: bool) -> bool {
        let Some(node) = self.cluster.as_mut() else { return false };
        node.courier_ready(link, message);
        if node.leads() {
            return false;
        }
        if self.peers.as_ref().is_some_and(|p| p.heard.contains(&link)) {
            // A peer sends what is for the leader: never served from this replica nor sent
            // on. Kept while this node, elected, catches up (it leads next), or while it
            // knows of no leader (the peer may have heard of this node's win first).
            let may_lead = matches!(node.rules.role(), Role::CatchingUp { .. } | Role::Follower { leader: None });
            if may_lead && node.deferred.len() < MAX_DEFERRED {
                node.deferred.push_back((wall_ms(), link, message.clone()));
            } else if let ToKeeper::Request { id, .. } = message {
                let reply = node.not_leader();
                node.released.push((link, FromKeeper::Reply { id: *id, reply }));
            }
            return true;
        }
        // With a link to the leader everything goes there, reads included, so a client
        // sees through any node what it would see through the leader.
        if self.forwarded(link, message) {
            return true;
        }
        if reads {
            return false;
        }
        let Some(node) = self.cluster.as_mut() else { return false };
        if let ToKeeper::Request { id, .. } = message {
            // It says nothing of the state, so it need not wait behind a turn whose batch
            // is still being settled: it leaves at the end of this loop turn.
            let reply = node.not_leader();
            node.released.push((link, FromKeeper::Reply { id: *id, reply }));
        }
        true
    }

    /// What the link reported: each event through the rules, and what they decide carried
    /// out. Returns an exit code when the keeper must end.
    pub(super) fn on_cluster(&mut self) -> io::Result<Option<i32>> {
        let events = self.cluster.as_ref().map(|node| node.threads.events()).unwrap_or_default();
        for event in events {
            if let Some(code) = self.cluster_step(event)? {
                return Ok(Some(code));
            }
        }
        Ok(None)
    }

    /// A tick, when the rules want one.
    pub(super) fn cluster_tick(&mut self, now_ms: u64) -> io::Result<Option<i32>> {
        match self.cluster.as_ref().and_then(|node| node.rules.next_tick_ms()) {
            Some(at) if at <= now_ms => self.cluster_step(Event::Tick),
            _ => Ok(None),
        }
    }

    /// Steps the rules with `event` and carries out what follows.
    fn cluster_step(&mut self, event: Event) -> io::Result<Option<i32>> {
        let Some(node) = self.cluster.as_mut() else { return Ok(None) };
        let seen = Seen::of(&event);
        let effects = node.rules.step(event, wall_ms());
        if effects.iter().any(|e| matches!(e, Effect::Resign { .. })) {
            log::warn!("turns of this node cannot be committed (after {seen}): answered 503");
        }
        for effect in effects {
            match effect {
                Effect::Apply { seq, batch } => self.apply_batch(seq, &batch)?,
                Effect::TakeOver { at_ms, gap_ms } => {
                    self.take_over(at_ms, gap_ms)?;
                    // What peers sent meanwhile, in order, now that this node leads.
                    for (_, link, message) in std::mem::take(&mut self.node().deferred) {
                        self.on_message(link, message)?;
                    }
                }
                Effect::Heartbeat => {
                    let now = self.clock();
                    self.expire(now)?;
                }
                Effect::Acknowledge { seq, tokens } => {
                    // Committed, whether the put's answer or the watch said so first.
                    let node = self.node();
                    if let Some((_, since)) = node.putting.take_if(|(putting, _)| *putting == seq) {
                        node.commit_latency.observe(since.elapsed().as_micros() as u64);
                    }
                    node.release(&tokens, Some);
                }
                Effect::Resign { tokens } => {
                    let reply = self.node().not_leader();
                    self.node().release(&tokens, |message| resigned(message, &reply));
                }
                Effect::Rebuild => return Ok(Some(self.rebuild())),
                // On a thread of its own, not the link's carrier (process::fetch).
                Effect::Fetch { peer } => {
                    let dir = self.data_dir.clone();
                    self.node().threads.fetch(peer, dir);
                }
                effect => {
                    let node = self.node();
                    // Timed from its first try.
                    if let Effect::Put { seq, .. } = &effect {
                        if node.putting.is_none_or(|(putting, _)| putting != *seq) {
                            node.putting = Some((*seq, Instant::now()));
                        }
                    }
                    node.threads.carry_out(effect);
                }
            }
        }
        self.node().answer_deferred(wall_ms());
        Ok(None)
    }

    /// Drops what channel `link` sent while this node caught up (the channel closed).
    pub(super) fn forget_deferred(&mut self, link: LinkId) {
        if let Some(node) = self.cluster.as_mut() {
            node.deferred.retain(|(_, l, _)| *l != link);
        }
    }

    fn node(&mut self) -> &mut Node {
        self.cluster.as_mut().expect("cluster mode")
    }

    /// The end of a loop turn in cluster mode: a leader's records become a turn whose
    /// answers wait for its batch; answers after a turn still waiting wait with it; answers
    /// acknowledged or resigned meanwhile go out.
    pub(super) fn cluster_end_turn(&mut self) -> io::Result<Option<i32>> {
        self.node().answer_deferred(wall_ms());
        if !self.node().turn.is_empty() {
            if let Some(code) = self.submit_turn()? {
                return Ok(Some(code));
            }
        } else if !self.outbox.is_empty() {
            let mut answers = std::mem::take(&mut self.outbox);
            match self.node().held.back_mut() {
                Some((_, waiting)) => waiting.append(&mut answers),
                None => self.outbox = answers,
            }
        }
        let released = std::mem::take(&mut self.node().released);
        self.outbox.extend(released);
        Ok(None)
    }

    /// Hands this turn's records to the rules as one turn, its answers held under its token.
    fn submit_turn(&mut self) -> io::Result<Option<i32>> {
        let node = self.node();
        let token = node.next_token;
        node.next_token += 1;
        let records = std::mem::take(&mut node.turn);
        let at_ms = std::mem::take(&mut node.turn_at_ms);
        let epoch = node.turn_epoch;
        let answers = std::mem::take(&mut self.outbox);
        self.node().held.push_back((token, answers));
        self.cluster_step(Event::Turn(Turn { token, records, at_ms, epoch }))
    }

    /// A leader's turn that grew to a batch's size is handed over at once, before the loop
    /// turn ends: a batch must stay within what etcd takes in one request.
    pub(super) fn submit_full_turn(&mut self) -> io::Result<Option<i32>> {
        match self.cluster.as_ref() {
            Some(node) if node.turn.len() >= MAX_BATCH_BYTES => self.submit_turn(),
            _ => Ok(None),
        }
    }

    /// Tells the workers where this node stands when that changed (a new applied position
    /// at most every [`STATUS_EVERY_MS`]).
    pub(super) fn tell_status(&mut self, now_ms: u64) {
        let Some(node) = self.cluster.as_ref() else { return };
        let standing = node.standing();
        let changed = match node.told {
            None => true,
            // A new role or leader at once (the leader's URL follows from role and epoch).
            Some(told) if told.role != standing.role || told.epoch != standing.epoch => true,
            Some(told) => told != standing && now_ms >= node.told_at_ms + STATUS_EVERY_MS,
        };
        if !changed {
            // Throttled: told at the next tick (`next_tick_ms`) instead.
            return;
        }
        let status = node.status(&self.node_name);
        let courier = node.courier.map(|(link, _)| link);
        let unheard = self.peers.as_ref().map(|p| &p.unheard);
        for (index, link) in self.links.iter_mut().enumerate() {
            // Nothing goes to a peer connection before its hello is heard: it may be a
            // stranger, or a node asking for the snapshot, whose answer must come first.
            let told = Some(index) != courier && unheard.is_none_or(|u| !u.contains_key(&index));
            let Some(link) = link.as_mut().filter(|_| told) else { continue };
            if link.send(&FromKeeper::Cluster { status: status.clone() }).is_err() && !self.broken.contains(&index) {
                self.broken.push(index);
            }
        }
        let node = self.node();
        node.told = Some(standing);
        node.told_at_ms = now_ms;
    }

    /// Whether to take no input from the channels for now: a leader whose snapshot is due
    /// waits for its turns to commit, so that its replica is the log's (at most
    /// `MAX_QUIET_MS`; what arrives meanwhile waits in the channels).
    pub(super) fn cluster_quiet(&mut self, now_ms: u64) -> bool {
        self.cluster.as_mut().is_some_and(|node| node.rules.wants_quiet(now_ms))
    }

    /// Writes the local snapshot when the rules say the replica may be snapshotted (after
    /// the loop turn's records were handed over: none may be left out of the log).
    pub(super) fn cluster_snapshot(&mut self) -> io::Result<Option<i32>> {
        let Some(node) = self.cluster.as_ref().filter(|node| node.turn.is_empty()) else { return Ok(None) };
        let Some(seq) = node.rules.may_snapshot(wall_ms()) else { return Ok(None) };
        let event = self.write_replica_snapshot(seq);
        self.cluster_step(event)
    }

    /// A clean stop: the replica is snapshotted if it holds more of the log than the last
    /// snapshot and nothing else, so the node starts again from there.
    pub(super) fn cluster_last_snapshot(&mut self) {
        let Some(node) = self.cluster.as_ref().filter(|node| node.turn.is_empty()) else { return };
        if let Some(seq) = node.rules.last_snapshot() {
            self.write_replica_snapshot(seq);
        }
    }

    /// Writes the local snapshot of the replica, which holds the log up to `seq`: the event
    /// for the rules.
    fn write_replica_snapshot(&mut self, seq: u64) -> Event {
        let node = self.node();
        let position = Position { seq, at_ms: node.rules.last_at_ms(), prefix: node.prefix.clone() };
        let started = Instant::now();
        let snapshot =
            ReplicaSnapshot { position, snapshot: Snapshot::new(self.fences_reserved, self.service.export()) };
        let written = replica::encode(&snapshot)
            .map_err(io::Error::other)
            .and_then(|bytes| replica::write(&self.data_dir, &bytes).map(|()| bytes.len()));
        drop(snapshot);
        crate::sys::memory::release_free_heap();
        match written {
            Ok(bytes) => {
                self.last_snapshot_ms = started.elapsed().as_millis() as u64;
                log::info!(
                    "snapshot of the replica at batch {seq} written ({bytes} bytes, {} ms)",
                    self.last_snapshot_ms
                );
                Event::Snapshotted { seq }
            }
            Err(e) => {
                log::warn!("cannot write the snapshot of the replica at batch {seq} ({e}); tried again later");
                Event::SnapshotFailed
            }
        }
    }

    /// Where this node stands, for metrics.
    pub(super) fn cluster_status(&self) -> Option<ClusterStatus> {
        self.cluster.as_ref().map(|node| node.status(&self.node_name))
    }

    /// Replays a batch of the log into the replica (what the service sends meanwhile is
    /// for the leader's channels, not this node's: dropped). A batch this build cannot read
    /// stops the keeper: its replica cannot follow the log.
    fn apply_batch(&mut self, seq: u64, batch: &[u8]) -> io::Result<()> {
        let mut frames = codec::Reader::new(batch);
        let mut reader = SegmentReader::new();
        let mut dropped: Outbox = Vec::new();
        let refuse = |why: String| {
            io::Error::other(CorruptJournal(format!(
                "batch {seq} of the cluster's log cannot be read ({why}); this node cannot follow the log"
            )))
        };
        while let Some(body) = frames.next_record().map_err(|e| refuse(e.to_string()))? {
            if let Some(record) = reader.read(body).map_err(|e| refuse(e.to_string()))? {
                journal::replay_answering(&mut self.service, record, &mut self.fences_reserved, &mut dropped);
            }
        }
        Ok(())
    }

    /// Journals and applies the takeover (docs/cluster.md, "Taking over") as the first
    /// records of this leader.
    fn take_over(&mut self, at_ms: u64, gap_ms: u64) -> io::Result<()> {
        let entropy = self.entropy.next_u64()?;
        let mut records = vec![self.configure_record(at_ms, entropy)];
        records.extend(self.service.links().into_iter().map(|link| Record::LinkClosed { link, at_ms, entropy }));
        records.push(Record::ResetPresence { at_ms });
        records.push(Record::ExtendLeases { by_ms: gap_ms });
        records.push(Record::Expire { at_ms, entropy });
        // What the takeover sends is for the old leader's channels: dropped.
        let mut dropped: Outbox = Vec::new();
        for record in records {
            self.node().journal(&record, at_ms);
            journal::replay_answering(&mut self.service, record, &mut self.fences_reserved, &mut dropped);
        }
        if let Some((link, capacity)) = self.node().courier {
            self.on_message(link, ToKeeper::CourierReady { capacity })?;
        }
        let stats = self.service.table().stats();
        log::info!(
            "leading the cluster from batch {}: {} locks, {} leases (extended by {gap_ms} ms, the time without a \
             leader), {} waiters",
            self.node().rules.applied(),
            stats.locks,
            stats.holders,
            stats.waiters
        );
        Ok(())
    }

    /// Ends the keeper so a new one replays the log: answers what it resigned first. The
    /// answers of this loop turn so far belong to a turn not handed over yet, which will
    /// never be in the log either: answered 503 like a resigned turn, never sent as they are.
    fn rebuild(&mut self) -> i32 {
        if self.node().rules.needs_snapshot() {
            log::info!("the keeper starts again from the leader's snapshot, now this node's");
        } else {
            log::warn!(
                "this node's replica holds changes that never reached the log: the keeper starts again from the log"
            );
        }
        let reply = self.node().not_leader();
        let unsent = std::mem::take(&mut self.outbox);
        let released = std::mem::take(&mut self.node().released);
        self.outbox = released;
        self.outbox.extend(unsent.into_iter().filter_map(|message| resigned(message, &reply)));
        self.deliver();
        for link in self.links.iter_mut().flatten() {
            link.flush_blocking(Duration::from_millis(200));
        }
        self.node().stop();
        EXIT_REBUILD
    }
}

/// What a client of a turn that will never be in the log gets: its request answered with
/// `reply` (503 `not_leader`); anything else the turn would have sent (grants to waiters,
/// stream events) is dropped.
fn resigned((link, message): (LinkId, FromKeeper), reply: &LockReply) -> Option<(LinkId, FromKeeper)> {
    match message {
        FromKeeper::Reply { id, .. } => Some((link, FromKeeper::Reply { id, reply: reply.clone() })),
        _ => None,
    }
}

/// An event in a few words, for the log: its kind and its numbers (no batch bytes, no
/// names), cheap enough to take of every event in case the rules resign.
#[derive(Debug, Clone, Copy)]
struct Seen {
    what: &'static str,
    numbers: [u64; 2],
}

impl Seen {
    fn of(event: &Event) -> Self {
        let (what, numbers) = match event {
            Event::LeaseHeld => ("the lease held", [0, 0]),
            Event::LeaseLost => ("the lease lost", [0, 0]),
            Event::Won { epoch } => ("a win (epoch)", [*epoch, 0]),
            Event::LeaderIs { leader, revision } => {
                ("news of the leader key (epoch, revision)", [leader.as_ref().map_or(0, |l| l.epoch), *revision])
            }
            Event::Logged { seq, .. } => ("a batch in the log (seq)", [*seq, 0]),
            Event::LogEnd { seq, read, .. } => ("the end of a read (seq, read)", [*seq, *read]),
            Event::ReadFailed { read } => ("a failed read (read)", [*read, 0]),
            Event::Turn(turn) => ("a turn (token, epoch)", [turn.token, turn.epoch]),
            Event::Committed { seq } => ("a committed batch (seq)", [*seq, 0]),
            Event::Refused { seq } => ("a refused batch (seq)", [*seq, 0]),
            Event::Unknown { seq } => ("a batch with no known outcome (seq)", [*seq, 0]),
            Event::Tick => ("a tick", [0, 0]),
            Event::Watching => ("a new watch", [0, 0]),
            Event::Snapshotted { seq } => ("a local snapshot (seq)", [*seq, 0]),
            Event::PublishFailed => ("a failed publish", [0, 0]),
            Event::Nodes { snapshots } => ("the nodes' positions (nodes)", [snapshots.len() as u64, 0]),
            Event::Trimmed { below, revision } => ("a trim (below, revision)", [*below, *revision]),
            Event::Fetched { seq } => ("a fetched snapshot (seq)", [*seq, 0]),
            Event::FetchFailed => ("a failed fetch", [0, 0]),
            Event::SnapshotFailed => ("a failed snapshot", [0, 0]),
        };
        Self { what, numbers }
    }
}

impl std::fmt::Display for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.what, self.numbers[0], self.numbers[1])
    }
}

impl Node {
    /// Answers 503 `not_leader` what peers sent for a leader that this node will not be:
    /// another node leads, or none has for [`MAX_DEFERRED_MS`].
    fn answer_deferred(&mut self, now_ms: u64) {
        let Some(&(oldest_ms, _, _)) = self.deferred.front() else { return };
        let give_up = match self.rules.role() {
            Role::CatchingUp { .. } | Role::Leading { .. } => false,
            Role::Follower { leader: Some(_) } => true,
            Role::Follower { leader: None } => now_ms >= oldest_ms + MAX_DEFERRED_MS,
        };
        if !give_up {
            return;
        }
        let reply = self.not_leader();
        for (_, link, message) in std::mem::take(&mut self.deferred) {
            if let ToKeeper::Request { id, .. } = message {
                self.released.push((link, FromKeeper::Reply { id, reply: reply.clone() }));
            }
        }
    }

    /// Moves the answers of `tokens` to those that may leave, each through `map` (which may
    /// drop it).
    fn release(&mut self, tokens: &[u64], mut map: impl FnMut((LinkId, FromKeeper)) -> Option<(LinkId, FromKeeper)>) {
        let mut kept = VecDeque::with_capacity(self.held.len());
        for (token, answers) in self.held.drain(..) {
            if tokens.contains(&token) {
                self.released.extend(answers.into_iter().filter_map(&mut map));
            } else {
                kept.push_back((token, answers));
            }
        }
        self.held = kept;
    }
}
