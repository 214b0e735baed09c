//! The cluster's leader/follower rules, pure (docs/cluster.md): which node applies inputs,
//! when the answers of a leader's turn may leave, how a follower stays an exact replica,
//! and what a new leader does before it serves. The etcd link (a shell in `process/`)
//! carries out the [`Effect`]s and reports what etcd said as [`Event`]s; the keeper applies
//! and journals turns as it does on one node. Time is an argument.
//!
//! The log in etcd is a sequence of **batches**, `{prefix}/log/{seq}` for `seq` = 1, 2, …
//! without gaps; a batch is the journal records of one or more keeper turns. Leadership is
//! the key `{prefix}/leader`, held under the node's etcd lease; its create revision is the
//! leader's **epoch**. A batch is put by one txn that requires the leader key to still have
//! the leader's epoch and `log/{seq}` to be absent: a deposed leader's put fails, and two
//! batches never share a `seq`.
//!
//! - **Leading.** Each turn the keeper applied is [`Event::Turn`]; its answers wait. One put
//!   is in flight at a time; turns that arrive meanwhile go together in the next batch
//!   (group commit across turns, up to [`Settings::max_batch_bytes`]). A committed batch's
//!   turns are [`Effect::Acknowledge`]d. A put with no known outcome (a timeout, etcd
//!   without quorum) is put again, same `seq`, same bytes: the link reports
//!   [`Event::Committed`] when the failed compare found this very batch at `seq`. A put
//!   refused for any other reason means another node leads: every waiting turn is
//!   [`Effect::Resign`]ed (never acknowledged), and the keeper rebuilds its replica from
//!   the log, since it holds changes that never happened.
//! - **Following.** Batches from the watch are applied in `seq` order; a gap is read
//!   again from etcd ([`Effect::CatchUp`]).
//! - **Taking over.** A node that wins the election first reads the log to its end
//!   (linearizably), applies it, then journals a takeover ([`Effect::TakeOver`]) before
//!   anything else: the old leader's channels close, waiters get a fresh presence window,
//!   fences go past every reservation, and every lease is extended by the time without a
//!   leader (`gap_ms`: the takeover's time minus the last batch's time).
//! - **Time never goes backwards** in the log: a leader stamps its turns with
//!   [`Cluster::time`], the later of its clock and the last committed time. An idle leader
//!   asks for an empty turn every [`Settings::heartbeat_ms`] ([`Effect::Heartbeat`]), so the
//!   last batch's time is never far behind the moment a leader was last alive, and the
//!   grace a takeover gives stays close to the real gap.
//! - **A log kept small.** Each node snapshots its replica locally when enough was applied
//!   since the last ([`Cluster::may_snapshot`]; a leader first takes no new input until
//!   its turns are committed, [`Cluster::wants_quiet`]) and publishes the snapshot's
//!   position ([`Effect::Publish`]). A leader reads the positions ([`Effect::ReadNodes`])
//!   and trims the log below the lowest of them and its own ([`Effect::Trim`]), compacting
//!   etcd's history one trim behind ([`Effect::Compact`]). A node whose next batch was
//!   trimmed applies nothing and may not lead until it has fetched the leader's snapshot
//!   ([`Effect::Fetch`]) and started again from it ([`Effect::Rebuild`]).

use std::collections::VecDeque;

/// A batch's position in the log (from 1).
pub type Seq = u64;

/// A leader's epoch: the create revision of its leader key.
pub type Epoch = u64;

/// The rules' settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Largest batch, in bytes of records (one turn may pass it alone).
    pub max_batch_bytes: usize,
    /// An idle leader journals an empty turn this often.
    pub heartbeat_ms: u64,
    /// A node snapshots its replica once this many bytes of batches were applied since its
    /// last snapshot…
    pub snapshot_bytes: u64,
    /// …or this many batches.
    pub snapshot_batches: u64,
    /// A leader reads the nodes' snapshot positions and trims the log this often; 0: never
    /// (without a peer link a node whose next batch was trimmed could not fetch a snapshot).
    pub trim_every_ms: u64,
}

/// A leader waits at most this long for its turns to commit before it snapshots (it takes
/// no new input meanwhile); then it gives up until [`SNAPSHOT_RETRY_MS`] later.
pub const MAX_QUIET_MS: u64 = 1_000;
/// A snapshot that failed, or a leader that could not get quiet, tries again this much later.
pub const SNAPSHOT_RETRY_MS: u64 = 10_000;
/// A failed fetch of the leader's snapshot is tried again this much later.
pub const FETCH_RETRY_MS: u64 = 1_000;

/// Who leads, as the leader key says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Its node name.
    pub node: String,
    /// The URL clients reach it at.
    pub url: String,
    /// Where other nodes reach it on the peer link (`host:port`), when it has one.
    pub peer: Option<String>,
    /// Its epoch.
    pub epoch: Epoch,
}

/// A turn the keeper applied as leader: its records, its time, the epoch it was applied
/// under, and a token that names its answers (held until the turn is in the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// Names the turn's answers.
    pub token: u64,
    /// Its journal records (framed).
    pub records: Vec<u8>,
    /// The time it was stamped with.
    pub at_ms: u64,
    /// The epoch the keeper led when it applied the turn's first record: a turn is only
    /// ever put under that epoch (a replica that applied it under an older one is stale).
    pub epoch: Epoch,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Replicates the log; `leader` when the leader key names one.
    Follower {
        /// The leader, when known.
        leader: Option<Leader>,
    },
    /// Won `epoch`; reads the log to its end before it takes over.
    CatchingUp {
        /// Its epoch.
        epoch: Epoch,
    },
    /// Leads `epoch`: applies inputs and puts batches.
    Leading {
        /// Its epoch.
        epoch: Epoch,
    },
}

/// What the etcd link and the keeper report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The node holds its etcd lease (it may campaign).
    LeaseHeld,
    /// The node's lease lapsed or could not be renewed: it leads no more.
    LeaseLost,
    /// The campaign won: this node holds the leader key since revision `epoch`.
    Won {
        /// The leader key's create revision.
        epoch: Epoch,
    },
    /// The leader key names `Some` leader, or is gone (`None`), as etcd said at `revision`
    /// (the watch, a campaign and a read of the key report it concurrently, so a report may
    /// come after a newer one: the older is ignored).
    LeaderIs {
        /// Who leads.
        leader: Option<Leader>,
        /// The etcd revision it was seen at.
        revision: u64,
    },
    /// A batch of the log (from the watch, or from a read).
    Logged {
        /// Its position.
        seq: Seq,
        /// Its records.
        batch: Vec<u8>,
        /// The time of its last turn.
        at_ms: u64,
    },
    /// The linearizable read `read` found the log's last batch at `seq` (0: empty), after
    /// reporting every batch up to it. `first` is the log's first batch (0: empty): batches
    /// below it were trimmed. A read from a position below `first` reports no batches.
    LogEnd {
        /// The last batch.
        seq: Seq,
        /// The first batch still in the log.
        first: Seq,
        /// The read ([`Effect::CatchUp`]).
        read: u64,
    },
    /// The catch-up read `read` failed (etcd unavailable): it is asked for again.
    ReadFailed {
        /// The read ([`Effect::CatchUp`]).
        read: u64,
    },
    /// The keeper applied a turn as leader.
    Turn(Turn),
    /// The put of batch `seq` succeeded (or its failed compare found this batch there).
    Committed {
        /// The batch.
        seq: Seq,
    },
    /// The put of batch `seq` was refused: another node leads, or `seq` holds another batch.
    Refused {
        /// The batch.
        seq: Seq,
    },
    /// The put of batch `seq` has no known outcome: it is put again.
    Unknown {
        /// The batch.
        seq: Seq,
    },
    /// Time passed.
    Tick,
    /// The node's watch began (at start, or again after it failed): batches put before it
    /// began are read from the log.
    Watching,
    /// The keeper wrote a local snapshot of the replica at batch `seq`.
    Snapshotted {
        /// The batch it stands for.
        seq: Seq,
    },
    /// [`Effect::Publish`] failed (etcd unavailable): published again later.
    PublishFailed,
    /// [`Effect::ReadNodes`]: the snapshot position every live node published.
    Nodes {
        /// `(node name, snapshot position)`, one per live node.
        snapshots: Vec<(String, Seq)>,
    },
    /// [`Effect::Trim`] deleted the log's batches below `below`, at etcd revision `revision`.
    Trimmed {
        /// The first batch kept.
        below: Seq,
        /// The revision of the delete.
        revision: u64,
    },
    /// [`Effect::Fetch`] wrote the leader's snapshot (at batch `seq`) as this node's.
    Fetched {
        /// The batch it stands for.
        seq: Seq,
    },
    /// [`Effect::Fetch`] failed: asked for again later.
    FetchFailed,
    /// The keeper could not write its local snapshot: tried again later.
    SnapshotFailed,
}

/// What the link and the keeper carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Campaign for the leader key under the node's lease.
    Campaign,
    /// Read the log from `from` to its end linearizably: [`Event::Logged`] for each batch,
    /// then [`Event::LogEnd`] with the same `read`.
    CatchUp {
        /// The first batch wanted.
        from: Seq,
        /// Names this read.
        read: u64,
    },
    /// Apply batch `seq` to the replica (replay its records).
    Apply {
        /// The batch.
        seq: Seq,
        /// Its records.
        batch: Vec<u8>,
    },
    /// Journal the takeover at `at_ms`, as the first turn of this leader: the old
    /// channels closed, presence windows reset, fences raised, leases extended by `gap_ms`.
    TakeOver {
        /// Its time.
        at_ms: u64,
        /// The time without a leader.
        gap_ms: u64,
    },
    /// Put batch `seq` under `epoch`.
    Put {
        /// The batch's position.
        seq: Seq,
        /// The leader's epoch.
        epoch: Epoch,
        /// Its records.
        batch: Vec<u8>,
    },
    /// Batch `seq`, this leader's, is in the log: keep it in the node's replica store (the
    /// local journal holds committed batches only), and its turns' answers may leave.
    Acknowledge {
        /// The batch.
        seq: Seq,
        /// Its turns.
        tokens: Vec<u64>,
    },
    /// These turns will never be in the log: their clients get 503.
    Resign {
        /// The turns.
        tokens: Vec<u64>,
    },
    /// The replica holds turns that never reached the log, or the leader's snapshot was
    /// fetched as this node's: rebuild it (the keeper starts again from its local snapshot
    /// and the log after it). Comes after every turn this node applied was acknowledged or
    /// resigned.
    Rebuild,
    /// This node stopped leading while its put of batch `seq` had no known outcome: end
    /// `epoch` for sure (revoke the node's lease, so no put of it can land later), then read
    /// `log/{seq}` and report [`Event::Committed`] if it holds this batch, else
    /// [`Event::Refused`].
    Settle {
        /// The batch's position.
        seq: Seq,
        /// The epoch it was put under.
        epoch: Epoch,
        /// Its records.
        batch: Vec<u8>,
    },
    /// Journal an empty turn (an idle leader keeps the log's time current).
    Heartbeat,
    /// The leader key names this node under an `epoch` it does not lead: a leader key left
    /// by this node's previous keeper (which died with it). Delete the key if it still has
    /// `epoch`, rather than wait for the old lease to lapse.
    Abdicate {
        /// The stale epoch.
        epoch: Epoch,
    },
    /// Put `{prefix}/nodes/{name}` under the node's lease: this node's local snapshot
    /// stands for the log up to `snapshot` (0: it has none). [`Event::PublishFailed`] if
    /// that fails.
    Publish {
        /// The snapshot's position.
        snapshot: Seq,
    },
    /// Read `{prefix}/nodes/`: [`Event::Nodes`] (nothing when the read fails).
    ReadNodes,
    /// Delete the log's batches below `below` if the leader key still has `epoch`:
    /// [`Event::Trimmed`] when done (nothing when refused or failed).
    Trim {
        /// The first batch kept.
        below: Seq,
        /// This leader's epoch.
        epoch: Epoch,
    },
    /// Compact etcd's history before `revision` (nothing reported).
    Compact {
        /// The oldest revision kept.
        revision: u64,
    },
    /// Fetch the snapshot of the leader reached at `peer` over the peer link and keep it
    /// as this node's: [`Event::Fetched`] or [`Event::FetchFailed`].
    Fetch {
        /// The leader's peer-link address.
        peer: String,
    },
}

/// A batch being put.
#[derive(Debug, Clone, PartialEq, Eq)]
struct InFlight {
    seq: Seq,
    batch: Vec<u8>,
    tokens: Vec<u64>,
    at_ms: u64,
}

/// One node's view of the cluster.
#[derive(Debug, Clone)]
pub struct Cluster {
    settings: Settings,
    /// This node's name (as the leader key names its holder).
    name: String,
    role: Role,
    lease: bool,
    /// The last batch applied to the replica (or committed by this leader).
    applied: Seq,
    /// The time of that batch.
    last_at_ms: u64,
    /// The highest batch seen in the log (for the lag).
    seen: Seq,
    /// The catch-up read in progress, if any (reads are numbered from 1).
    reading: Option<u64>,
    reads: u64,
    in_flight: Option<InFlight>,
    queued: VecDeque<Turn>,
    /// A batch put when this node stopped leading, with no known outcome: its turns wait
    /// for [`Effect::Settle`]'s answer.
    settling: Option<(Epoch, InFlight)>,
    /// Whether a turn was resigned while the replica still holds it.
    dirty: bool,
    /// When the last batch was put by this leader (or it took over).
    last_put_ms: u64,
    /// When this node last asked to campaign.
    last_campaign_ms: u64,
    /// The etcd revision of the newest news of the leader key (a win included).
    leader_revision: u64,
    /// What every batch starts with (the journal's format record).
    batch_header: Vec<u8>,
    /// The position of this node's local snapshot (0: none).
    snapshot: Seq,
    /// Bytes of batches applied (or committed) since that snapshot.
    bytes_since_snapshot: u64,
    /// No snapshot is tried before this time (one failed, or the leader could not get quiet).
    snapshot_retry_ms: u64,
    /// Since when this leader takes no new input, waiting for its turns to commit so that
    /// its replica is the log's and can be snapshotted.
    quiet_since_ms: Option<u64>,
    /// A failed publish of the snapshot's position is tried again at this time.
    publish_retry_ms: Option<u64>,
    /// When this leader last read the nodes' positions.
    last_nodes_ms: u64,
    /// Batches below this were trimmed from the log, as far as this node knows.
    trimmed_below: Seq,
    /// The etcd revision of this leader's last trim: etcd's history is compacted to it at
    /// the next one (so a watch a little behind is not cut short).
    last_trim_revision: Option<u64>,
    /// The next batch this node needs was trimmed: it fetches the leader's snapshot.
    needs_snapshot: bool,
    /// A fetch is under way.
    fetching: bool,
    /// A failed fetch is tried again at this time.
    fetch_retry_ms: u64,
}

impl Cluster {
    /// Node `name`, whose replica holds the log up to `applied` (from its local snapshot),
    /// whose last batch was at `last_at_ms` (both 0 for a new node); it follows until it
    /// knows better.
    pub fn new(settings: Settings, name: &str, applied: Seq, last_at_ms: u64) -> Self {
        Self {
            settings,
            name: name.to_string(),
            role: Role::Follower { leader: None },
            lease: false,
            applied,
            last_at_ms,
            seen: applied,
            reading: None,
            reads: 0,
            in_flight: None,
            queued: VecDeque::new(),
            settling: None,
            dirty: false,
            last_put_ms: 0,
            last_campaign_ms: 0,
            leader_revision: 0,
            batch_header: Vec::new(),
            snapshot: applied,
            bytes_since_snapshot: 0,
            snapshot_retry_ms: 0,
            quiet_since_ms: None,
            publish_retry_ms: None,
            last_nodes_ms: 0,
            trimmed_below: 0,
            last_trim_revision: None,
            needs_snapshot: false,
            fetching: false,
            fetch_retry_ms: 0,
        }
    }

    /// Starts every batch this node puts with `header` (the journal's format record, so a
    /// batch reads as a segment in small: docs/cluster.md).
    pub fn with_batch_header(mut self, header: Vec<u8>) -> Self {
        self.batch_header = header;
        self
    }

    /// What this node is.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Whether this node leads and serves changes.
    pub fn leads(&self) -> bool {
        matches!(self.role, Role::Leading { .. })
    }

    /// The epoch this node leads, if it does.
    pub fn leading_epoch(&self) -> Option<Epoch> {
        match self.role {
            Role::Leading { epoch } => Some(epoch),
            _ => None,
        }
    }

    /// The last batch applied.
    pub fn applied(&self) -> Seq {
        self.applied
    }

    /// Batches seen in the log but not applied yet.
    pub fn lag(&self) -> u64 {
        self.seen.saturating_sub(self.applied)
    }

    /// The time a leader stamps its next turn with: never before the last committed one.
    pub fn time(&self, now_ms: u64) -> u64 {
        now_ms.max(self.last_at_ms)
    }

    /// When [`Cluster::step`] wants a [`Event::Tick`] next: a leader's heartbeat and its
    /// reading of the nodes' positions, the end of its quiet, a campaign, a publish or a
    /// fetch tried again.
    pub fn next_tick_ms(&self) -> Option<u64> {
        let mut at: Option<u64> = None;
        let mut soon = |t: u64| at = Some(at.map_or(t, |a| a.min(t)));
        if self.leads() {
            soon(self.last_put_ms + self.settings.heartbeat_ms);
            if self.settings.trim_every_ms > 0 {
                soon(self.last_nodes_ms + self.settings.trim_every_ms);
            }
            if let Some(since) = self.quiet_since_ms {
                soon(since + MAX_QUIET_MS);
            }
        } else if self.may_campaign() {
            soon(self.last_campaign_ms + self.settings.heartbeat_ms);
        }
        if let Some(t) = self.publish_retry_ms {
            soon(t);
        }
        if self.needs_snapshot && !self.fetching {
            soon(self.fetch_retry_ms);
        }
        at
    }

    /// The time of the last batch applied (or committed by this leader).
    pub fn last_at_ms(&self) -> u64 {
        self.last_at_ms
    }

    /// The position of this node's local snapshot (0: none).
    pub fn snapshot(&self) -> Seq {
        self.snapshot
    }

    /// Whether the next batch this node needs was trimmed (it fetches a snapshot).
    pub fn needs_snapshot(&self) -> bool {
        self.needs_snapshot
    }

    /// Whether a snapshot is due: enough applied since the last, and none failed lately.
    fn snapshot_due(&self, now_ms: u64) -> bool {
        // A snapshot older than the log's start is no use to a node that fetches it.
        let enough = self.bytes_since_snapshot >= self.settings.snapshot_bytes
            || self.applied - self.snapshot.min(self.applied) >= self.settings.snapshot_batches
            || self.snapshot + 1 < self.trimmed_below;
        self.applied > self.snapshot && enough && now_ms >= self.snapshot_retry_ms
    }

    /// The position the keeper may snapshot its replica at now, if one is due: a follower's
    /// replica is always the log's up to `applied`; a leader's only when every turn it
    /// applied is committed (the keeper must also hold no turn it has not handed over).
    /// Never while the replica holds a resigned turn or needs a snapshot of the leader's.
    pub fn may_snapshot(&self, now_ms: u64) -> Option<Seq> {
        self.snapshot_due(now_ms).then(|| self.committed_replica()).flatten()
    }

    /// The position this node's replica stands at when it holds exactly the log up to it
    /// (see [`Cluster::may_snapshot`]) and holds more than its last snapshot: what a node
    /// that stops may snapshot, due or not.
    pub fn last_snapshot(&self) -> Option<Seq> {
        self.committed_replica().filter(|&seq| seq > self.snapshot)
    }

    fn committed_replica(&self) -> Option<Seq> {
        if self.dirty || self.settling.is_some() || self.needs_snapshot {
            return None;
        }
        let clean = match self.role {
            Role::Follower { .. } => true,
            Role::Leading { .. } => self.in_flight.is_none() && self.queued.is_empty(),
            Role::CatchingUp { .. } => false,
        };
        clean.then_some(self.applied)
    }

    /// Whether a leader whose snapshot is due should take no new input for now, so that
    /// its turns commit and its replica becomes the log's. It does so for at most
    /// [`MAX_QUIET_MS`], then tries again after [`SNAPSHOT_RETRY_MS`].
    pub fn wants_quiet(&mut self, now_ms: u64) -> bool {
        if !self.leads() || !self.snapshot_due(now_ms) {
            self.quiet_since_ms = None;
            return false;
        }
        let since = *self.quiet_since_ms.get_or_insert(now_ms);
        if now_ms >= since + MAX_QUIET_MS {
            self.quiet_since_ms = None;
            self.snapshot_retry_ms = now_ms + SNAPSHOT_RETRY_MS;
            return false;
        }
        true
    }

    /// Takes one event; returns what to carry out, in order.
    pub fn step(&mut self, event: Event, now_ms: u64) -> Vec<Effect> {
        let mut out = Vec::new();
        match event {
            Event::LeaseHeld => {
                self.lease = true;
                // The position lives under the lease: a new lease needs it put again.
                self.publish(&mut out);
                if self.may_campaign() {
                    self.campaign(now_ms, &mut out);
                }
            }
            Event::LeaseLost => {
                self.lease = false;
                self.resign(&mut out);
            }
            Event::Won { epoch } if !self.may_lead() => {
                self.leader_revision = self.leader_revision.max(epoch);
                // Won by a campaign begun before this node stopped leading: it cannot lead
                // until its replica is rebuilt.
                out.push(Effect::Abdicate { epoch });
            }
            Event::Won { epoch } => {
                self.leader_revision = self.leader_revision.max(epoch);
                if self.lease && matches!(self.role, Role::Follower { .. }) {
                    self.role = Role::CatchingUp { epoch };
                    // A read begun before the win may miss the old leader's last batches:
                    // only a read begun now may end the catching up.
                    self.reading = None;
                    self.catch_up(&mut out);
                }
            }
            Event::LeaderIs { leader, revision } => {
                // News older than what this node knows (a win included) is stale.
                if revision >= self.leader_revision {
                    self.leader_revision = revision;
                    self.leader_is(leader, now_ms, &mut out);
                }
            }
            Event::Logged { seq, batch, at_ms } => self.logged(seq, batch, at_ms, now_ms, &mut out),
            Event::LogEnd { seq, first, read } => {
                if self.reading != Some(read) {
                    return out;
                }
                self.reading = None;
                self.seen = self.seen.max(seq);
                self.trimmed_below = self.trimmed_below.max(first);
                if first > self.applied + 1 {
                    self.trimmed(first, &mut out);
                    return out;
                }
                // Batches the watch showed while the read ran, past its end, were seen but
                // not applied: read again.
                if self.applied < self.seen {
                    self.catch_up(&mut out);
                } else if let Role::CatchingUp { epoch } = self.role {
                    let at_ms = self.time(now_ms);
                    // An empty log had no leader to be without.
                    let gap_ms = if self.applied == 0 { 0 } else { at_ms - self.last_at_ms };
                    self.role = Role::Leading { epoch };
                    self.last_put_ms = now_ms;
                    self.last_nodes_ms = now_ms;
                    self.last_trim_revision = None;
                    out.push(Effect::TakeOver { at_ms, gap_ms });
                }
            }
            Event::ReadFailed { read } => {
                if self.reading == Some(read) {
                    self.reading = None;
                    self.catch_up(&mut out);
                }
            }
            Event::Turn(turn) => {
                if self.leading_epoch() == Some(turn.epoch) {
                    self.queued.push_back(turn);
                    self.put_next(now_ms, &mut out);
                } else {
                    // Not leading (any more), or leading another epoch than the turn was
                    // applied under: the turn can never be committed.
                    self.resign_tokens(vec![turn.token], &mut out);
                    if self.settling.is_none() {
                        self.rebuild_if_dirty(&mut out);
                    }
                }
            }
            Event::Committed { seq } => self.committed(seq, now_ms, &mut out),
            Event::Refused { seq } => {
                if let Some((_, f)) = self.settling.take_if(|(_, f)| f.seq == seq) {
                    self.resign_tokens(f.tokens, &mut out);
                    self.rebuild_if_dirty(&mut out);
                } else if self.in_flight.as_ref().is_some_and(|f| f.seq == seq) {
                    // Refused for sure: not in the log, and never will be.
                    let f = self.in_flight.take().expect("the batch in flight");
                    self.resign_tokens(f.tokens, &mut out);
                    self.resign(&mut out);
                }
            }
            Event::Unknown { seq } => {
                if let Some((epoch, f)) = self.settling.as_ref().filter(|(_, f)| f.seq == seq) {
                    out.push(Effect::Settle { seq, epoch: *epoch, batch: f.batch.clone() });
                } else if let (Some(f), Role::Leading { epoch }) = (&self.in_flight, &self.role) {
                    if f.seq == seq {
                        out.push(Effect::Put { seq, epoch: *epoch, batch: f.batch.clone() });
                    }
                }
            }
            Event::Watching => {
                if !self.leads() {
                    self.catch_up(&mut out);
                }
            }
            Event::Snapshotted { seq } => {
                self.quiet_since_ms = None;
                if seq > self.snapshot && seq <= self.applied {
                    self.snapshot = seq;
                    self.bytes_since_snapshot = 0;
                    self.publish(&mut out);
                }
            }
            Event::SnapshotFailed => {
                self.quiet_since_ms = None;
                self.snapshot_retry_ms = now_ms + SNAPSHOT_RETRY_MS;
            }
            Event::PublishFailed => self.publish_retry_ms = Some(now_ms + self.settings.heartbeat_ms),
            Event::Nodes { snapshots } => {
                // Every live node restarts from its snapshot and reads the log after it;
                // this leader's own snapshot counts even if its key was not read.
                let floor = snapshots.iter().map(|(_, seq)| *seq).chain([self.snapshot]).min().unwrap_or(0);
                if let Some(epoch) = self.leading_epoch() {
                    if floor > self.trimmed_below.max(1) {
                        out.push(Effect::Trim { below: floor, epoch });
                    }
                }
            }
            Event::Trimmed { below, revision } => {
                self.trimmed_below = self.trimmed_below.max(below);
                if let Some(previous) = self.last_trim_revision.replace(revision) {
                    out.push(Effect::Compact { revision: previous });
                }
            }
            Event::Fetched { .. } => {
                // The leader's snapshot is this node's now: the keeper starts again from it.
                self.fetching = false;
                out.push(Effect::Rebuild);
            }
            Event::FetchFailed => {
                self.fetching = false;
                self.fetch_retry_ms = now_ms + FETCH_RETRY_MS;
            }
            Event::Tick => {
                let idle = self.in_flight.is_none() && self.queued.is_empty();
                let beat = self.last_put_ms + self.settings.heartbeat_ms <= now_ms;
                if self.leads() && idle && beat {
                    // Counted as a put, so one heartbeat is asked for at a time.
                    self.last_put_ms = now_ms;
                    out.push(Effect::Heartbeat);
                } else if self.may_campaign() && self.last_campaign_ms + self.settings.heartbeat_ms <= now_ms {
                    // No leader, and the last campaign did not end it (its request failed,
                    // or its outcome was lost): campaign again.
                    self.campaign(now_ms, &mut out);
                }
                let trims = self.settings.trim_every_ms > 0;
                if self.leads() && trims && self.last_nodes_ms + self.settings.trim_every_ms <= now_ms {
                    self.last_nodes_ms = now_ms;
                    out.push(Effect::ReadNodes);
                }
                if self.publish_retry_ms.is_some_and(|t| t <= now_ms) {
                    self.publish(&mut out);
                }
                if self.fetch_retry_ms <= now_ms {
                    self.fetch(&mut out);
                }
            }
        }
        out
    }

    fn leader_is(&mut self, leader: Option<Leader>, now_ms: u64, out: &mut Vec<Effect>) {
        match (&self.role, leader) {
            // The key names this node's own epoch: nothing changed.
            (Role::Leading { epoch } | Role::CatchingUp { epoch }, Some(l)) if l.epoch == *epoch => {}
            // Another epoch, or no key at all: this node was deposed.
            (Role::Leading { .. } | Role::CatchingUp { .. }, leader) => {
                self.resign(out);
                self.role = Role::Follower { leader };
                if self.may_campaign() {
                    self.campaign(now_ms, out);
                }
            }
            (Role::Follower { .. }, None) => {
                self.role = Role::Follower { leader: None };
                if self.may_campaign() {
                    self.campaign(now_ms, out);
                }
            }
            (Role::Follower { .. }, Some(l)) if l.node == self.name => out.push(Effect::Abdicate { epoch: l.epoch }),
            (Role::Follower { .. }, Some(l)) => {
                self.role = Role::Follower { leader: Some(l) };
                if self.fetch_retry_ms <= now_ms {
                    self.fetch(out);
                }
            }
        }
    }

    /// Puts this node's snapshot position under its lease (when it holds one, in a cluster
    /// that trims its log: there the positions tell the leader what it may trim).
    fn publish(&mut self, out: &mut Vec<Effect>) {
        self.publish_retry_ms = None;
        if self.lease && self.settings.trim_every_ms > 0 {
            out.push(Effect::Publish { snapshot: self.snapshot });
        }
    }

    /// The batch after this node's replica was trimmed (first is the log's first): it
    /// cannot follow the log until it has the leader's snapshot. A node that won the
    /// election cannot lead from here: it gives the leader key back.
    fn trimmed(&mut self, first: Seq, out: &mut Vec<Effect>) {
        self.trimmed_below = self.trimmed_below.max(first);
        if let Role::CatchingUp { epoch } = self.role {
            self.role = Role::Follower { leader: None };
            out.push(Effect::Abdicate { epoch });
        }
        self.needs_snapshot = true;
        self.fetch(out);
    }

    /// Fetches the leader's snapshot, when this node needs one, none is under way, and a
    /// leader with a peer link is known.
    fn fetch(&mut self, out: &mut Vec<Effect>) {
        if !self.needs_snapshot || self.fetching {
            return;
        }
        if let Role::Follower { leader: Some(Leader { node, peer: Some(peer), .. }) } = &self.role {
            if *node != self.name {
                self.fetching = true;
                out.push(Effect::Fetch { peer: peer.clone() });
            }
        }
    }

    fn logged(&mut self, seq: Seq, batch: Vec<u8>, at_ms: u64, now_ms: u64, out: &mut Vec<Effect>) {
        self.seen = self.seen.max(seq);
        if seq <= self.applied || self.needs_snapshot {
            return;
        }
        // The watch may show a batch of this node's before its put's answer comes.
        let mine = |f: &InFlight| f.seq == seq && f.batch == batch;
        if self.in_flight.as_ref().is_some_and(mine) || self.settling.as_ref().is_some_and(|(_, f)| mine(f)) {
            self.committed(seq, now_ms, out);
            return;
        }
        if let Some((_, f)) = self.settling.take_if(|(_, f)| f.seq == seq) {
            // Another batch holds its place: it never will be in the log.
            self.resign_tokens(f.tokens, out);
            self.rebuild_if_dirty(out);
            return;
        }
        if self.leads() {
            // A batch this leader did not put: someone else leads. If it took the place of
            // the batch in flight, that one is refused for sure.
            if let Some(f) = self.in_flight.take_if(|f| f.seq == seq) {
                self.resign_tokens(f.tokens, out);
            }
            self.resign(out);
            return;
        }
        if seq == self.applied + 1 {
            self.applied = seq;
            self.last_at_ms = self.last_at_ms.max(at_ms);
            self.bytes_since_snapshot += batch.len() as u64;
            out.push(Effect::Apply { seq, batch });
        } else {
            self.catch_up(out);
        }
    }

    /// Whether this node may campaign: not while a batch of its last leadership is being
    /// settled, nor while its replica holds a resigned turn (until it is rebuilt), nor while
    /// it needs the leader's snapshot.
    fn may_lead(&self) -> bool {
        self.settling.is_none() && !self.dirty && !self.needs_snapshot
    }

    /// Whether this node should campaign now: it holds a lease, nobody leads, and it may.
    fn may_campaign(&self) -> bool {
        self.lease && self.role == (Role::Follower { leader: None }) && self.may_lead()
    }

    fn campaign(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        self.last_campaign_ms = now_ms;
        out.push(Effect::Campaign);
    }

    fn committed(&mut self, seq: Seq, now_ms: u64, out: &mut Vec<Effect>) {
        if let Some((_, done)) = self.settling.take_if(|(_, f)| f.seq == seq) {
            self.applied = self.applied.max(seq);
            self.last_at_ms = self.last_at_ms.max(done.at_ms);
            out.push(Effect::Acknowledge { seq, tokens: done.tokens });
            self.rebuild_if_dirty(out);
            return;
        }
        if let Some(done) = self.in_flight.take_if(|f| f.seq == seq) {
            self.applied = seq;
            self.seen = self.seen.max(seq);
            self.last_at_ms = self.last_at_ms.max(done.at_ms);
            self.bytes_since_snapshot += done.batch.len() as u64;
            out.push(Effect::Acknowledge { seq, tokens: done.tokens });
            self.put_next(now_ms, out);
        }
    }

    fn catch_up(&mut self, out: &mut Vec<Effect>) {
        if self.reading.is_none() {
            self.reads += 1;
            self.reading = Some(self.reads);
            out.push(Effect::CatchUp { from: self.applied + 1, read: self.reads });
        }
    }

    /// Puts the queued turns as the next batch, unless a put is in flight.
    fn put_next(&mut self, now_ms: u64, out: &mut Vec<Effect>) {
        let Role::Leading { epoch } = self.role else { return };
        if self.in_flight.is_some() || self.queued.is_empty() {
            return;
        }
        let mut batch = self.batch_header.clone();
        let header_len = batch.len();
        let mut tokens = Vec::new();
        let mut at_ms = self.last_at_ms;
        while let Some(turn) = self.queued.front() {
            if batch.len() > header_len && batch.len() + turn.records.len() > self.settings.max_batch_bytes {
                break;
            }
            let turn = self.queued.pop_front().expect("a queued turn");
            batch.extend_from_slice(&turn.records);
            tokens.push(turn.token);
            at_ms = at_ms.max(turn.at_ms);
        }
        let seq = self.applied + 1;
        self.last_put_ms = now_ms;
        out.push(Effect::Put { seq, epoch, batch: batch.clone() });
        self.in_flight = Some(InFlight { seq, batch, tokens, at_ms });
    }

    /// Stops leading. Turns not yet put are resigned; a batch in flight is settled first
    /// ([`Effect::Settle`]); then the replica is rebuilt if it holds a resigned turn.
    fn resign(&mut self, out: &mut Vec<Effect>) {
        let epoch = match self.role {
            Role::Leading { epoch } | Role::CatchingUp { epoch } => epoch,
            Role::Follower { .. } => return,
        };
        self.role = Role::Follower { leader: None };
        let queued: Vec<u64> = self.queued.drain(..).map(|t| t.token).collect();
        self.resign_tokens(queued, out);
        match self.in_flight.take() {
            Some(f) => {
                out.push(Effect::Settle { seq: f.seq, epoch, batch: f.batch.clone() });
                self.settling = Some((epoch, f));
            }
            None => self.rebuild_if_dirty(out),
        }
    }

    fn resign_tokens(&mut self, tokens: Vec<u64>, out: &mut Vec<Effect>) {
        if !tokens.is_empty() {
            self.dirty = true;
            out.push(Effect::Resign { tokens });
        }
    }

    fn rebuild_if_dirty(&mut self, out: &mut Vec<Effect>) {
        if std::mem::take(&mut self.dirty) {
            out.push(Effect::Rebuild);
        }
    }
}

#[cfg(test)]
mod tests;
