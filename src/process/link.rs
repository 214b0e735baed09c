//! The etcd link of cluster mode (docs/cluster.md): carries out the cluster rules' effects
//! ([`Effect`]) with the etcd client ([`Etcd`]) and reports what etcd said as the rules'
//! events ([`Event`]). Decides nothing: every choice is the rules'. Blocking, one call at a
//! time; the keeper runs it on a thread of its own.
//!
//! - The node's lease: [`Link::keep_lease`] grants one when the node has none and renews it
//!   otherwise (every third of its TTL, by the caller), reporting `LeaseHeld` once granted
//!   and `LeaseLost` when a renewal finds it gone.
//! - The leader key's value names the node, the URL clients reach it at, and where other
//!   nodes reach its peer link when it has one: `{"node":NAME,"url":URL,"peer":"HOST:PORT"}`.
//! - The node's position (`{prefix}/nodes/{name}`, under the node's lease) says how far its
//!   local snapshot stands for the log: `{"node":NAME,"snapshot":SEQ,"url":URL,
//!   "peer":"HOST:PORT"}`, the peer omitted as in the leader key.
//! - Errors whose outcome is unknown become the events the rules expect for them (`Unknown`
//!   for a put or a settling, `ReadFailed` for a read, `PublishFailed` for a position); a
//!   campaign, a read of the nodes, a trim or a compaction that failed reports nothing
//!   (the rules ask again when they need to).
//! - [`Threads`] runs it in the keeper: a thread that carries out effects in order and
//!   renews the lease every third of its TTL between them, and a thread that reads the
//!   watch (first the leader key, then every change after the revision it was read at).
//!   Both report into one queue and wake the keeper's mio loop. A fetch of the leader's
//!   snapshot ([`Threads::fetch`], `process::fetch`) runs on a thread of its own and reports
//!   into the same queue.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use mio::Waker;
use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;
use crate::journal::batch_time;
use crate::journal::etcd::{
    leader_key, log_key, node_key, nodes_prefix, seq_of, Campaign, Etcd, EtcdError, Holder, LeaseId, Put, Trim, Watch,
    WatchEvent,
};
use crate::process::fetch::Fetcher;
use crate::service::cluster::{Effect, Epoch, Event, Leader, Seq};

/// What the leader key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LeaderValue {
    node: String,
    url: String,
    /// Its peer link's address, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
}

/// What a node's key under `{prefix}/nodes/` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct NodeValue {
    node: String,
    /// The batch its local snapshot stands for (0: none).
    snapshot: Seq,
    url: String,
    /// Its peer link's address, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
}

/// The link of one node.
pub struct Link {
    etcd: Etcd,
    prefix: String,
    leader_key: String,
    /// This node's leader-key value.
    value: Vec<u8>,
    /// This node's key under `{prefix}/nodes/`, and its value but for the snapshot.
    node_key: String,
    node: NodeValue,
    ttl_s: u64,
    lease: Option<LeaseId>,
    /// When the lease was last granted or renewed.
    renewed_at: Instant,
    /// A lease given up for lost because it could not be renewed for its whole TTL (etcd
    /// unreachable, or without quorum): etcd may still hold it, so a settling revokes it.
    presumed_lost: Option<LeaseId>,
}

impl Link {
    /// The link of the node `config` describes (no request is made yet).
    pub fn new(config: &ClusterConfig) -> Result<Self, EtcdError> {
        let etcd = Etcd::from_config(config)?;
        let value = LeaderValue {
            node: config.node_name.clone(),
            url: config.advertise_url.clone(),
            peer: config.peer.as_ref().map(|p| p.advertise.clone()),
        };
        let node =
            NodeValue { node: value.node.clone(), snapshot: 0, url: value.url.clone(), peer: value.peer.clone() };
        Ok(Self {
            etcd,
            prefix: config.prefix.clone(),
            leader_key: leader_key(&config.prefix),
            value: serde_json::to_vec(&value).unwrap_or_default(),
            node_key: node_key(&config.prefix, &config.node_name),
            node,
            ttl_s: config.election_ttl_ms.div_ceil(1_000),
            lease: None,
            renewed_at: Instant::now(),
            presumed_lost: None,
        })
    }

    /// The node's lease, if it holds one.
    pub fn lease(&self) -> Option<LeaseId> {
        self.lease
    }

    /// Holds the node's lease: grants one when it has none, renews it otherwise. Reports
    /// `LeaseHeld` when one was granted, and `LeaseLost` when the renewal found it gone or
    /// could not be made for the lease's whole TTL (then etcd may have let it lapse: a
    /// leader that cannot tell must stop acting as one). A renewal that merely failed
    /// reports nothing: the caller renews again soon.
    pub fn keep_lease(&mut self) -> Vec<Event> {
        match self.lease {
            None => match self.etcd.lease_grant(self.ttl_s) {
                Ok(id) => {
                    self.lease = Some(id);
                    self.renewed_at = Instant::now();
                    vec![Event::LeaseHeld]
                }
                Err(e) => {
                    log::warn!("cannot get an etcd lease: {e}");
                    Vec::new()
                }
            },
            Some(id) => match self.etcd.lease_keepalive(id) {
                Ok(Some(_)) => {
                    self.renewed_at = Instant::now();
                    Vec::new()
                }
                Ok(None) => {
                    self.lease = None;
                    vec![Event::LeaseLost]
                }
                Err(e) if self.renewed_at.elapsed() >= Duration::from_secs(self.ttl_s) => {
                    log::warn!("the etcd lease could not be renewed for its whole TTL ({e}): taken as lost");
                    self.lease = None;
                    self.presumed_lost = Some(id);
                    vec![Event::LeaseLost]
                }
                Err(e) => {
                    log::warn!("cannot renew the etcd lease: {e}");
                    Vec::new()
                }
            },
        }
    }

    /// Who leads, as the leader key says.
    pub fn leader(&mut self) -> Result<Option<Leader>, EtcdError> {
        Ok(self.etcd.leader(&self.leader_key)?.and_then(|h| as_leader(&h.value, h.epoch)))
    }

    /// Who leads, as the rules' event, with the revision it was read at.
    fn leader_news(&mut self) -> Result<(Event, u64), EtcdError> {
        let (holder, revision) = self.etcd.leader_at(&self.leader_key)?;
        let leader = holder.and_then(|h| as_leader(&h.value, h.epoch));
        Ok((Event::LeaderIs { leader, revision }, revision))
    }

    /// Gives the node's lease back (a clean stop: another node need not wait for it to
    /// lapse).
    fn revoke(&mut self) {
        if let Some(lease) = self.lease.take() {
            if let Err(e) = self.etcd.lease_revoke(lease) {
                log::warn!("cannot give the etcd lease back: {e}");
            }
        }
    }

    /// Carries out one effect of the rules; returns what etcd said, as events. Effects that
    /// are the keeper's own (`Apply`, `Acknowledge`, `Resign`, `Rebuild`, `TakeOver`,
    /// `Heartbeat`) are nothing to the link.
    pub fn carry_out(&mut self, effect: &Effect) -> Vec<Event> {
        match effect {
            Effect::Campaign => self.campaign(),
            Effect::CatchUp { from, read } => self.catch_up(*from, *read),
            Effect::Put { seq, epoch, batch } => {
                let event = match self.etcd.put_batch(&log_key(&self.prefix, *seq), &self.leader_key, *epoch, batch) {
                    Ok(Put::Committed) => Event::Committed { seq: *seq },
                    Ok(Put::Refused { .. }) => {
                        log::info!("batch {seq} was refused: epoch {epoch} no longer leads, or the place is taken");
                        Event::Refused { seq: *seq }
                    }
                    // etcd refused the request itself (a batch past its request limit): it
                    // took no effect, and never will.
                    Err(e @ EtcdError::Http { .. }) => {
                        log::error!("etcd refused batch {seq} ({} bytes): {e}", batch.len());
                        Event::Refused { seq: *seq }
                    }
                    Err(e) => {
                        log::warn!("the put of batch {seq} has no known outcome: {e}");
                        Event::Unknown { seq: *seq }
                    }
                };
                vec![event]
            }
            Effect::Settle { seq, epoch, batch } => self.settle(*seq, *epoch, batch),
            Effect::Abdicate { epoch } => {
                if let Err(e) = self.etcd.delete_if_epoch(&self.leader_key, *epoch) {
                    log::warn!("cannot delete the stale leader key of epoch {epoch}: {e}");
                }
                Vec::new()
            }
            Effect::Apply { .. }
            | Effect::Acknowledge { .. }
            | Effect::Resign { .. }
            | Effect::Rebuild
            | Effect::TakeOver { .. }
            | Effect::Heartbeat
            | Effect::Fetch { .. } => Vec::new(),
            Effect::Publish { snapshot } => self.publish(*snapshot),
            Effect::ReadNodes => self.read_nodes(),
            Effect::Trim { below, epoch } => self.trim(*below, *epoch),
            Effect::Compact { revision } => {
                match self.etcd.compact(*revision) {
                    Ok(()) => log::debug!("etcd's history is compacted before revision {revision}"),
                    Err(e) => log::warn!("cannot compact etcd's history before revision {revision}: {e}"),
                }
                Vec::new()
            }
        }
    }

    /// Watches the log and the leader key from `from_revision` (0: from now); turn what it
    /// reports into events with [`Link::watched`].
    pub fn watch(&mut self, from_revision: u64) -> Result<Watch, EtcdError> {
        // The leader key and the log share the prefix; nothing else of this cluster's is
        // under it.
        self.etcd.watch(&format!("{}/", self.prefix), from_revision)
    }

    /// The rules' event for what a watch reported: a batch of the log, or a change of the
    /// leader key. `None` for anything else: a node's position, a batch deleted by a trim,
    /// and a compaction (the caller's to handle: read the log again, then watch again).
    pub fn watched(&self, event: WatchEvent) -> Option<Event> {
        match event {
            WatchEvent::Put { key, value, mod_revision } if key == self.leader_key.as_bytes() => {
                // The leader key is only ever created (a campaign puts it only where it is
                // absent), so the revision of its put is its create revision: the epoch.
                Some(Event::LeaderIs { leader: as_leader(&value, mod_revision), revision: mod_revision })
            }
            WatchEvent::Delete { key, mod_revision } if key == self.leader_key.as_bytes() => {
                Some(Event::LeaderIs { leader: None, revision: mod_revision })
            }
            WatchEvent::Put { key, value, .. } => {
                let seq = seq_of(&self.prefix, &key)?;
                let at_ms = batch_time(&value).ok()?;
                Some(Event::Logged { seq, batch: value, at_ms })
            }
            _ => None,
        }
    }

    fn campaign(&mut self) -> Vec<Event> {
        let Some(lease) = self.lease else { return Vec::new() };
        match self.etcd.campaign(&self.leader_key, &self.value, lease) {
            Ok(Campaign::Won { epoch }) => vec![Event::Won { epoch }],
            // Seen at the campaign's revision, at least the holder's epoch.
            Ok(Campaign::Held { value, epoch }) => {
                vec![Event::LeaderIs { leader: as_leader(&value, epoch), revision: epoch }]
            }
            Err(e) => {
                log::warn!("campaign failed: {e}");
                Vec::new()
            }
        }
    }

    /// Reads the log from `from` to its end: every batch, then where it ends.
    fn catch_up(&mut self, from: u64, read: u64) -> Vec<Event> {
        let mut events = Vec::new();
        let mut next = from;
        loop {
            let page = match self.etcd.read_log(&self.prefix, next) {
                Ok(page) => page,
                Err(e) => {
                    log::warn!("cannot read the log from batch {next}: {e}");
                    events.push(Event::ReadFailed { read });
                    return events;
                }
            };
            if page.trimmed(next) {
                // The batches wanted are gone: say where the log stands, at the same
                // revision; the rules fetch a snapshot.
                match self.etcd.last_batch(&self.prefix, page.revision) {
                    Ok(last) => {
                        log::info!("the log starts at batch {}: batch {next} was trimmed", page.first);
                        events.push(Event::LogEnd { seq: last, first: page.first, read });
                    }
                    Err(e) => {
                        log::warn!("cannot find the log's last batch: {e}");
                        events.push(Event::ReadFailed { read });
                    }
                }
                return events;
            }
            for (seq, batch) in page.batches {
                let at_ms = match batch_time(&batch) {
                    Ok(at_ms) => at_ms,
                    Err(e) => {
                        // A batch this build cannot read: the replica cannot follow.
                        log::error!("batch {seq} of the log cannot be read: {e}");
                        events.push(Event::ReadFailed { read });
                        return events;
                    }
                };
                next = seq + 1;
                events.push(Event::Logged { seq, batch, at_ms });
            }
            if !page.more {
                events.push(Event::LogEnd { seq: next - 1, first: page.first, read });
                return events;
            }
        }
    }

    /// Ends `epoch` for sure, then says whether batch `seq` made it into the log.
    fn settle(&mut self, seq: u64, epoch: u64, batch: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        // Revoking the lease deletes the leader key if it still has this epoch: no put
        // under it can land after this.
        if let Some(lease) = self.lease.or(self.presumed_lost) {
            let holder: Option<Holder> = match self.etcd.leader(&self.leader_key) {
                Ok(holder) => holder,
                Err(_) => return vec![Event::Unknown { seq }],
            };
            if holder.is_some_and(|h| h.epoch == epoch) {
                if self.etcd.lease_revoke(lease).is_err() {
                    return vec![Event::Unknown { seq }];
                }
                if self.lease.take().is_some() {
                    events.push(Event::LeaseLost);
                }
                self.presumed_lost = None;
            }
        }
        match self.etcd.read_log(&self.prefix, seq) {
            Ok(read) if read.trimmed(seq) => {
                // Some batch was committed at `seq`, but whether it was ours went with
                // it. Reported as a read that does not find it always was: refused.
                // (`Unknown` would be settled again at once, and forever.)
                log::error!("batch {seq} was trimmed before it was settled: whether it was ours is unknown");
                events.push(Event::Refused { seq });
            }
            Ok(read) => {
                let there = read.batches.first().is_some_and(|(s, b)| *s == seq && b.as_slice() == batch);
                events.push(if there { Event::Committed { seq } } else { Event::Refused { seq } });
            }
            Err(_) => events.push(Event::Unknown { seq }),
        }
        events
    }

    /// Puts this node's position: its local snapshot stands for the log up to `snapshot`.
    fn publish(&mut self, snapshot: Seq) -> Vec<Event> {
        let Some(lease) = self.lease else {
            log::debug!("no etcd lease yet: the node's position waits");
            return vec![Event::PublishFailed];
        };
        let value = NodeValue { snapshot, ..self.node.clone() };
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        match self.etcd.put_node(&self.node_key, &bytes, lease) {
            Ok(()) => Vec::new(),
            Err(e) => {
                log::warn!("cannot publish the node's position (snapshot at batch {snapshot}): {e}");
                vec![Event::PublishFailed]
            }
        }
    }

    /// Reads every node's position.
    fn read_nodes(&mut self) -> Vec<Event> {
        let prefix = nodes_prefix(&self.prefix);
        match self.etcd.read_prefix(&prefix) {
            Ok(kvs) => {
                let snapshots = kvs.iter().filter_map(|(key, value)| node_position(&prefix, key, value)).collect();
                vec![Event::Nodes { snapshots }]
            }
            Err(e) => {
                log::warn!("cannot read the nodes' positions: {e}");
                Vec::new()
            }
        }
    }

    /// Deletes the log's batches below `below` under `epoch`.
    fn trim(&mut self, below: Seq, epoch: Epoch) -> Vec<Event> {
        if below == 0 {
            log::warn!("a trim below batch 0 deletes nothing: ignored");
            return Vec::new();
        }
        match self.etcd.trim_log(&self.prefix, &self.leader_key, epoch, below) {
            Ok(Trim::Done { revision, deleted }) => {
                log::debug!("the log is trimmed below batch {below} ({deleted} batches deleted, revision {revision})");
                vec![Event::Trimmed { below, revision }]
            }
            Ok(Trim::Refused) => {
                log::info!("the trim below batch {below} was refused: epoch {epoch} no longer leads");
                Vec::new()
            }
            Err(e) => {
                log::warn!("cannot trim the log below batch {below}: {e}");
                Vec::new()
            }
        }
    }
}

/// A node's name and position from its key and value under `prefix` (`{prefix}/nodes/`),
/// or `None` (logged) if the value is not one this build reads or names another node.
fn node_position(prefix: &str, key: &[u8], value: &[u8]) -> Option<(String, Seq)> {
    let name = key.strip_prefix(prefix.as_bytes());
    match serde_json::from_slice::<NodeValue>(value) {
        Ok(v) if name == Some(v.node.as_bytes()) => Some((v.node, v.snapshot)),
        Ok(v) => {
            log::warn!("{} names node {:?}: ignored", String::from_utf8_lossy(key), v.node);
            None
        }
        Err(e) => {
            log::warn!("{} holds no node position: {e}", String::from_utf8_lossy(key));
            None
        }
    }
}

/// The leader a leader-key value names (a value this build cannot read names no one).
fn as_leader(value: &[u8], epoch: u64) -> Option<Leader> {
    let LeaderValue { node, url, peer } = serde_json::from_slice(value).ok()?;
    Some(Leader { node, url, peer, epoch })
}

/// The link as the keeper runs it: one thread carries out effects in order and keeps the
/// node's lease, another reads the watch. Both report events into one queue and wake the
/// keeper's loop. Dropping it stops both; the lease is given back.
pub struct Threads {
    effects: Option<mpsc::Sender<Effect>>,
    events: mpsc::Receiver<Event>,
    stop: Arc<AtomicBool>,
    carrier: Option<JoinHandle<()>>,
    /// Where a fetch reports.
    reporter: Reporter,
    /// `None` without a peer link.
    fetcher: Option<Fetcher>,
    /// Whether a fetch runs.
    fetching: Arc<AtomicBool>,
}

/// Where the threads report: the queue, then a wake-up of the keeper's loop.
#[derive(Clone)]
struct Reporter {
    events: mpsc::Sender<Event>,
    waker: Arc<Waker>,
}

impl Reporter {
    /// Reports `events`; false once the keeper is gone.
    fn report(&self, events: Vec<Event>) -> bool {
        if events.is_empty() {
            return true;
        }
        for event in events {
            if self.events.send(event).is_err() {
                return false;
            }
        }
        let _ = self.waker.wake();
        true
    }
}

/// How often a thread whose etcd call failed tries again.
const RETRY_MS: u64 = 500;

impl Threads {
    /// Starts both threads for the node `config` describes; `waker` wakes the keeper's loop.
    pub fn start(config: &ClusterConfig, waker: Arc<Waker>) -> Result<Self, EtcdError> {
        let link = Link::new(config)?;
        let watcher = Link::new(config)?;
        let (effects, effects_rx) = mpsc::channel();
        let (events_tx, events) = mpsc::channel();
        let reporter = Reporter { events: events_tx, waker };
        let stop = Arc::new(AtomicBool::new(false));
        // Renewed every third of the TTL: two renewals may fail before it lapses.
        let renew = Duration::from_millis(config.election_ttl_ms / 3);
        let carrier = {
            let reporter = reporter.clone();
            thread::Builder::new()
                .name("lh-etcd-link".into())
                .spawn(move || carry(link, &effects_rx, &reporter, renew))
                .map_err(|e| EtcdError::unavailable(format!("cannot start the link's thread: {e}")))?
        };
        {
            let stop = Arc::clone(&stop);
            let reporter = reporter.clone();
            thread::Builder::new()
                .name("lh-etcd-watch".into())
                .spawn(move || watch(watcher, &reporter, &stop))
                .map_err(|e| EtcdError::unavailable(format!("cannot start the watch's thread: {e}")))?;
        }
        Ok(Self {
            effects: Some(effects),
            events,
            stop,
            carrier: Some(carrier),
            reporter,
            fetcher: Fetcher::new(config),
            fetching: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Fetches the snapshot of the leader whose peer link is at `peer` and keeps it as the
    /// snapshot in `dir` (`process::fetch`), on a thread of its own (not the carrier's: a
    /// long transfer must not hold up the lease's renewals). Reports `Fetched` or
    /// `FetchFailed`. One at a time: asked again while one runs, it does nothing.
    pub fn fetch(&self, peer: String, dir: PathBuf) {
        let Some(fetcher) = self.fetcher.clone() else {
            log::warn!("cannot fetch the leader's snapshot: this node has no peer link (cluster.peer_listen, secret)");
            self.reporter.report(vec![Event::FetchFailed]);
            return;
        };
        if self.fetching.swap(true, Ordering::AcqRel) {
            log::debug!("a fetch of the leader's snapshot runs already: the new one is not started");
            return;
        }
        let (reporter, fetching) = (self.reporter.clone(), Arc::clone(&self.fetching));
        let spawned = thread::Builder::new().name("lh-snapshot-fetch".into()).spawn(move || {
            let event = fetcher.fetch_event(&peer, &dir);
            // Free before the report: the rules may ask again as soon as they hear of it.
            fetching.store(false, Ordering::Release);
            reporter.report(vec![event]);
        });
        if let Err(e) = spawned {
            self.fetching.store(false, Ordering::Release);
            log::warn!("cannot start a thread to fetch the leader's snapshot: {e}");
            self.reporter.report(vec![Event::FetchFailed]);
        }
    }

    /// Hands an effect to the link (carried out in order, after those before it).
    pub fn carry_out(&self, effect: Effect) {
        if let Some(effects) = &self.effects {
            let _ = effects.send(effect);
        }
    }

    /// The events reported so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.try_iter().collect()
    }

    /// Stops both threads; waits up to `within` for the link to give the lease back.
    pub fn stop(&mut self, within: Duration) {
        self.stop.store(true, Ordering::Relaxed);
        self.effects = None;
        if let Some(carrier) = self.carrier.take() {
            let deadline = Instant::now() + within;
            while !carrier.is_finished() && Instant::now() < deadline {
                thread::park_timeout(Duration::from_millis(10));
            }
        }
    }
}

impl Drop for Threads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.effects = None;
    }
}

/// The link's thread: effects in order, and the lease renewed between them.
fn carry(mut link: Link, effects: &mpsc::Receiver<Effect>, reporter: &Reporter, renew: Duration) {
    let mut renew_at = Instant::now();
    loop {
        if Instant::now() >= renew_at {
            let events = link.keep_lease();
            let every = if link.lease().is_some() { renew } else { Duration::from_millis(RETRY_MS) };
            renew_at = Instant::now() + every;
            if !reporter.report(events) {
                break;
            }
        }
        match effects.recv_timeout(renew_at.saturating_duration_since(Instant::now())) {
            Ok(effect) => {
                if !reporter.report(link.carry_out(&effect)) {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    link.revoke();
}

/// The watch's thread: the leader key as it stands, then every change of the cluster's
/// keys after it; watched again from the key when the watch ends.
fn watch(mut link: Link, reporter: &Reporter, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let began = link.leader_news().and_then(|(news, revision)| Ok((news, link.watch(revision + 1)?)));
        let (news, mut watch) = match began {
            Ok(began) => began,
            Err(e) => {
                log::warn!("cannot watch the cluster's keys: {e}");
                thread::park_timeout(Duration::from_millis(RETRY_MS));
                continue;
            }
        };
        if !reporter.report(vec![news, Event::Watching]) {
            return;
        }
        while !stop.load(Ordering::Relaxed) {
            match watch.next_within(Duration::from_millis(RETRY_MS)) {
                Ok(Some(seen)) => {
                    if !reporter.report(link.watched(seen).into_iter().collect()) {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    log::warn!("the watch of the cluster's keys ended ({e}); watching again");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{codec, segment_header, Record};

    const PREFIX: &str = "/lh";

    /// A link to an etcd it never reaches (a link makes no request until asked).
    fn link(peer: bool) -> Link {
        let config = ClusterConfig {
            etcd_endpoints: vec!["http://127.0.0.1:9".into()],
            prefix: PREFIX.into(),
            node_name: "node-a".into(),
            advertise_url: "http://node-a.test:8080".into(),
            election_ttl_ms: 3_000,
            etcd_timeout_ms: 1_000,
            peer: peer.then(|| crate::config::PeerConfig {
                listen: "127.0.0.1:7001".parse().unwrap(),
                advertise: "node-a.test:7001".into(),
                secret: "s".into(),
                tls: None,
            }),
            snapshot_every_batches: 10_000,
        };
        Link::new(&config).unwrap()
    }

    /// A batch of one expiry record at `at_ms`.
    fn batch(at_ms: u64) -> Vec<u8> {
        let mut out = Vec::new();
        codec::frame(&segment_header(), &mut out);
        codec::encode(&Record::Expire { at_ms, entropy: 0 }, &mut out).unwrap();
        out
    }

    #[test]
    fn watched_reports_batches_and_the_leader_key_only() {
        let link = link(false);
        let put = |key: String, value: Vec<u8>| WatchEvent::Put { key: key.into_bytes(), value, mod_revision: 9 };
        let delete = |key: String| WatchEvent::Delete { key: key.into_bytes(), mod_revision: 9 };
        assert_eq!(
            link.watched(put(log_key(PREFIX, 4), batch(1_000))),
            Some(Event::Logged { seq: 4, batch: batch(1_000), at_ms: 1_000 })
        );
        assert_eq!(link.watched(delete(leader_key(PREFIX))), Some(Event::LeaderIs { leader: None, revision: 9 }));
        // A node's position, put or gone with its lease, and a batch deleted by a trim.
        let position = br#"{"node":"node-b","snapshot":3,"url":"http://node-b.test:8080"}"#.to_vec();
        assert_eq!(link.watched(put(node_key(PREFIX, "node-b"), position)), None);
        assert_eq!(link.watched(delete(node_key(PREFIX, "node-b"))), None);
        assert_eq!(link.watched(delete(log_key(PREFIX, 4))), None);
        assert_eq!(link.watched(WatchEvent::Compacted { revision: 9 }), None);
    }

    #[test]
    fn a_node_position_names_the_node_its_snapshot_its_url_and_its_peer() {
        let mut with_peer = link(true).node;
        with_peer.snapshot = 42;
        assert_eq!(
            serde_json::to_string(&with_peer).unwrap(),
            r#"{"node":"node-a","snapshot":42,"url":"http://node-a.test:8080","peer":"node-a.test:7001"}"#
        );
        let without = link(false).node;
        assert_eq!(
            serde_json::to_string(&without).unwrap(),
            r#"{"node":"node-a","snapshot":0,"url":"http://node-a.test:8080"}"#
        );
        assert_eq!(link(false).node_key, "/lh/nodes/node-a");
    }

    #[test]
    fn node_positions_that_are_malformed_or_name_another_node_are_ignored() {
        let prefix = nodes_prefix(PREFIX);
        let key = |name: &str| node_key(PREFIX, name).into_bytes();
        let value = br#"{"node":"node-b","snapshot":7,"url":"http://node-b.test:8080","peer":"node-b.test:7001"}"#;
        assert_eq!(node_position(&prefix, &key("node-b"), value), Some(("node-b".into(), 7)));
        assert_eq!(node_position(&prefix, &key("node-c"), value), None);
        assert_eq!(node_position(&prefix, &key("node-b"), b"not json"), None);
        assert_eq!(node_position(&prefix, &key("node-b"), br#"{"node":"node-b","snapshot":-1,"url":"u"}"#), None);
        assert_eq!(node_position(&prefix, &key("node-b"), br#"{"node":"node-b","url":"u"}"#), None);
        // Fields this build does not know are no harm.
        let newer = br#"{"node":"node-b","snapshot":7,"url":"u","zone":"z"}"#;
        assert_eq!(node_position(&prefix, &key("node-b"), newer), Some(("node-b".into(), 7)));
    }

    #[test]
    fn a_position_without_a_lease_fails_and_a_trim_below_0_does_nothing() {
        let mut link = link(false);
        // No request is made: the endpoint does not answer.
        assert_eq!(link.carry_out(&Effect::Publish { snapshot: 3 }), [Event::PublishFailed]);
        assert_eq!(link.carry_out(&Effect::Trim { below: 0, epoch: 5 }), []);
    }
}
