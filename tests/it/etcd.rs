//! The etcd link's client against a real 3-member etcd on loopback (issue 13; docs/cluster.md,
//! "Keys in etcd" and "The rules"): the election on the leader key, its end when a lease
//! lapses, epoch-guarded puts of batches, paged log reads, the watch, and what the client
//! does when one etcd member, then two, are killed; then a log kept short (epoch-guarded
//! trims, reads of a trimmed log, compactions) and the nodes' positions under their
//! leases, through the client and through the link. Each test runs its own cluster.

use std::time::Duration;

use leasehold::journal::etcd::wire::LOG_PAGE_KEYS;
use leasehold::journal::etcd::{
    leader_key, log_key, log_prefix, node_key, nodes_prefix, Campaign, Etcd, EtcdError, Holder, LeaseId, Put, Trim,
    Watch, WatchEvent,
};

use crate::support::etcd::EtcdCluster;
use crate::support::{wait_for, DEADLINE};

const PREFIX: &str = "/leasehold-test";
/// A lease that outlives every test (so only the tests that mean to see a lapse see one).
const LONG_TTL_S: u64 = 60;

fn client(etcd: &EtcdCluster) -> Etcd {
    Etcd::new(&etcd.endpoints, 1_000).expect("a client")
}

/// `call`'s result, sent again while etcd answers "unavailable" (outcome unknown; every
/// operation of the client may be sent again, docs/cluster.md). On a loaded machine etcd
/// may time a request out or hold an election of its own: not what these tests are about.
fn sure<T>(mut call: impl FnMut() -> Result<T, EtcdError>) -> T {
    wait_for("etcd to answer", || match call() {
        Ok(value) => Ok(value),
        Err(e) if e.outcome_unknown() => Err(e),
        Err(e) => panic!("etcd refused: {e:?}"),
    })
}

/// A client that holds the leader key: its lease and epoch.
fn leading(etcd: &mut Etcd, name: &str) -> (LeaseId, u64) {
    let lease = sure(|| etcd.lease_grant(LONG_TTL_S));
    match sure(|| etcd.campaign(&leader_key(PREFIX), name.as_bytes(), lease)) {
        Campaign::Won { epoch } => (lease, epoch),
        held => panic!("{name} did not win: {held:?}"),
    }
}

/// The next event of `watch`, within the tests' deadline.
fn next_event(watch: &mut Watch) -> WatchEvent {
    match watch.next_within(DEADLINE) {
        Ok(Some(event)) => event,
        other => panic!("no watch event: {other:?}"),
    }
}

#[test]
fn r13_a_campaign_is_won_once_and_held_against_others() {
    let etcd = EtcdCluster::start();
    let (mut a, mut b) = (client(&etcd), client(&etcd));
    let key = leader_key(PREFIX);
    assert_eq!(sure(|| a.leader(&key)), None);
    let (lease_a, epoch) = leading(&mut a, "node-a");
    assert!(epoch > 0);
    let lease_b = sure(|| b.lease_grant(LONG_TTL_S));
    assert_eq!(sure(|| b.campaign(&key, b"node-b", lease_b)), Campaign::Held { value: b"node-a".to_vec(), epoch });
    // The same campaign sent again (its answer lost) is still won, at the same epoch.
    assert_eq!(sure(|| a.campaign(&key, b"node-a", lease_a)), Campaign::Won { epoch });
    assert_eq!(sure(|| b.leader(&key)), Some(Holder { value: b"node-a".to_vec(), epoch, lease: Some(lease_a) }));

    // A stale leader key goes only with its own epoch.
    assert!(!sure(|| b.delete_if_epoch(&key, epoch + 1)));
    assert!(sure(|| a.delete_if_epoch(&key, epoch)));
    assert_eq!(sure(|| b.leader(&key)), None);
    let Campaign::Won { epoch: epoch_b } = sure(|| b.campaign(&key, b"node-b", lease_b)) else {
        panic!("node-b should win a free leader key")
    };
    assert!(epoch_b > epoch);

    // Revoking the holder's lease frees the key at once; revoking it again is no error.
    sure(|| b.lease_revoke(lease_b));
    assert_eq!(sure(|| a.leader(&key)), None);
    sure(|| b.lease_revoke(lease_b));
    assert_eq!(sure(|| b.lease_keepalive(lease_b)), None);
}

#[test]
fn r13_a_lapsed_lease_frees_the_leader_key() {
    let etcd = EtcdCluster::start();
    let (mut a, mut b) = (client(&etcd), client(&etcd));
    let key = leader_key(PREFIX);
    // etcd's shortest lease (docs/cluster.md): 3 s.
    let lease = sure(|| a.lease_grant(3));
    let Campaign::Won { epoch } = sure(|| a.campaign(&key, b"node-a", lease)) else { panic!("a free key") };
    let ttl_s = sure(|| a.lease_keepalive(lease)).expect("a live lease");
    assert!((1..=3).contains(&ttl_s), "ttl {ttl_s}");
    let mut watch = sure(|| b.watch(&key, 0));

    // No more renewals: the key goes with the lease.
    wait_for("the leader key to go with its lease", || match b.leader(&key) {
        Ok(None) => Ok(()),
        other => Err(format!("{other:?}")),
    });
    match next_event(&mut watch) {
        WatchEvent::Delete { key: deleted, mod_revision } => {
            assert_eq!(deleted, key.as_bytes());
            assert!(mod_revision > epoch);
        }
        other => panic!("expected the leader key's delete, got {other:?}"),
    }
    assert_eq!(sure(|| a.lease_keepalive(lease)), None);
    let lease_b = sure(|| b.lease_grant(LONG_TTL_S));
    assert!(matches!(sure(|| b.campaign(&key, b"node-b", lease_b)), Campaign::Won { epoch: e } if e > epoch));
}

#[test]
fn r13_a_put_commits_is_refused_under_a_stale_epoch_and_knows_its_own_batch() {
    let etcd = EtcdCluster::start();
    let (mut a, mut b) = (client(&etcd), client(&etcd));
    let key = leader_key(PREFIX);
    let (lease_a, epoch_a) = leading(&mut a, "node-a");
    assert_eq!(sure(|| a.put_batch(&log_key(PREFIX, 1), &key, epoch_a, b"batch-1")), Put::Committed);
    // The same put again (a retry after a lost answer): that batch is there, so committed.
    assert_eq!(sure(|| a.put_batch(&log_key(PREFIX, 1), &key, epoch_a, b"batch-1")), Put::Committed);
    // Another batch at a taken seq: refused, with what holds the place.
    let holder_a = Holder { value: b"node-a".to_vec(), epoch: epoch_a, lease: Some(lease_a) };
    assert_eq!(
        sure(|| a.put_batch(&log_key(PREFIX, 1), &key, epoch_a, b"batch-1b")),
        Put::Refused { at_seq: Some(b"batch-1".to_vec()), leader: Some(holder_a) }
    );

    // node-a is deposed (its lease revoked); node-b leads a new epoch.
    sure(|| a.lease_revoke(lease_a));
    let (lease_b, epoch_b) = leading(&mut b, "node-b");
    let holder_b = Holder { value: b"node-b".to_vec(), epoch: epoch_b, lease: Some(lease_b) };
    assert_eq!(
        sure(|| a.put_batch(&log_key(PREFIX, 2), &key, epoch_a, b"batch-2a")),
        Put::Refused { at_seq: None, leader: Some(holder_b) }
    );
    assert_eq!(sure(|| b.put_batch(&log_key(PREFIX, 2), &key, epoch_b, b"batch-2b")), Put::Committed);
    let read = sure(|| a.read_log(PREFIX, 1));
    assert_eq!(read.batches, vec![(1, b"batch-1".to_vec()), (2, b"batch-2b".to_vec())]);
    assert!(!read.more);
}

#[test]
fn r13_a_log_read_pages_through_600_batches_at_one_revision() {
    let etcd = EtcdCluster::start();
    let mut a = client(&etcd);
    let key = leader_key(PREFIX);
    let (_, epoch) = leading(&mut a, "node-a");
    let batch = |seq: u64| format!("batch {seq} {}", "x".repeat(seq as usize % 97)).into_bytes();
    const { assert!(LOG_PAGE_KEYS < 600, "the test must span several pages") };
    for seq in 1..=600 {
        assert_eq!(sure(|| a.put_batch(&log_key(PREFIX, seq), &key, epoch, &batch(seq))), Put::Committed);
    }
    // A key beside the log, which a read of the log must not return.
    let lease = sure(|| a.lease_grant(LONG_TTL_S));
    sure(|| a.campaign(&format!("{PREFIX}/logx"), b"not a batch", lease));
    let read = sure(|| a.read_log(PREFIX, 1));
    assert!(!read.more);
    assert_eq!(read.batches.len(), 600);
    for (i, (seq, bytes)) in read.batches.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
        assert_eq!(*bytes, batch(*seq), "batch {seq}");
    }
    let tail = sure(|| a.read_log(PREFIX, 590));
    assert_eq!(tail.batches.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (590..=600).collect::<Vec<_>>());
    assert!(tail.revision >= read.revision);
    assert!(sure(|| a.read_log(PREFIX, 601)).batches.is_empty());
}

#[test]
fn r13_a_watch_sees_puts_in_order_from_a_revision_and_reports_a_compaction() {
    let etcd = EtcdCluster::start();
    let mut a = client(&etcd);
    let key = leader_key(PREFIX);
    let (_, epoch) = leading(&mut a, "node-a");
    let put = |a: &mut Etcd, seq: u64| {
        let bytes = format!("batch-{seq}").into_bytes();
        assert_eq!(sure(|| a.put_batch(&log_key(PREFIX, seq), &key, epoch, &bytes)), Put::Committed);
    };
    for seq in 1..=3 {
        put(&mut a, seq);
    }
    let after = sure(|| a.read_log(PREFIX, 1)).revision;
    for seq in 4..=6 {
        put(&mut a, seq);
    }
    // From a revision in the past: the puts since, then the ones to come, in order.
    let mut watch = sure(|| a.watch(&log_prefix(PREFIX), after + 1));
    for seq in 7..=9 {
        put(&mut a, seq);
    }
    let mut last_revision = after;
    for seq in 4..=9 {
        match next_event(&mut watch) {
            WatchEvent::Put { key: got, value, mod_revision } => {
                assert_eq!(got, log_key(PREFIX, seq).into_bytes());
                assert_eq!(value, format!("batch-{seq}").into_bytes());
                assert!(mod_revision > last_revision, "revisions increase");
                last_revision = mod_revision;
            }
            other => panic!("expected batch {seq}, got {other:?}"),
        }
    }
    assert!(matches!(watch.next_within(Duration::from_millis(50)), Ok(None)));

    // History compacted past the start of a new watch: it is told where history starts.
    etcd.etcdctl(&["compact", &last_revision.to_string()]);
    let mut late = sure(|| a.watch(&log_prefix(PREFIX), after + 1));
    assert_eq!(next_event(&mut late), WatchEvent::Compacted { revision: last_revision });
    assert!(late.next_within(Duration::from_millis(10)).is_err());
    assert!(late.next().is_none());
    // The first watch goes on.
    put(&mut a, 10);
    assert!(matches!(next_event(&mut watch), WatchEvent::Put { mod_revision, .. } if mod_revision > last_revision));
}

#[test]
fn r13_one_etcd_member_down_is_survived_and_two_make_puts_unavailable_until_they_return() {
    let etcd = EtcdCluster::start();
    // Talk to a follower first, so killing it leaves a leader and tests only the client.
    let raft_leader = etcd.leader_member();
    let follower = (1..=3).find(|&m| m != raft_leader).unwrap();
    let other = (1..=3).find(|&m| m != raft_leader && m != follower).unwrap();
    let order = [follower, other, raft_leader];
    let endpoints: Vec<String> = order.iter().map(|&m| etcd.endpoints[m - 1].clone()).collect();
    let timeout_ms = 500;
    let mut a = Etcd::new(&endpoints, timeout_ms).unwrap();
    let key = leader_key(PREFIX);
    let (lease, epoch) = leading(&mut a, "node-a");
    assert_eq!(a.endpoint(), etcd.endpoints[follower - 1]);
    assert_eq!(sure(|| a.put_batch(&log_key(PREFIX, 1), &key, epoch, b"batch-1")), Put::Committed);

    // The member this client is connected to dies: the next request goes elsewhere.
    etcd.kill(&[follower]);
    assert_eq!(sure(|| a.put_batch(&log_key(PREFIX, 2), &key, epoch, b"batch-2")), Put::Committed);
    assert_ne!(a.endpoint(), etcd.endpoints[follower - 1]);
    assert!(sure(|| a.lease_keepalive(lease)).is_some());
    assert_eq!(sure(|| a.read_log(PREFIX, 1)).batches.len(), 2);

    // A second member dies: no quorum. A put fails as unavailable (outcome unknown), in
    // bounded time, whichever member it reaches.
    etcd.kill(&[raft_leader]);
    let error = a.put_batch(&log_key(PREFIX, 3), &key, epoch, b"batch-3").unwrap_err();
    assert!(matches!(error, EtcdError::Unavailable { .. }), "{error:?}");
    assert!(error.outcome_unknown());

    // Back to three: the same client works again, and the put sent again commits once.
    etcd.restart(&[follower, raft_leader]);
    let put =
        wait_for("a put once etcd has a quorum again", || a.put_batch(&log_key(PREFIX, 3), &key, epoch, b"batch-3"));
    assert_eq!(put, Put::Committed);
    let read = sure(|| a.read_log(PREFIX, 1));
    assert_eq!(read.batches.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(read.batches[2].1, b"batch-3");
}

/// One node of the cluster in this test process: the rules, their link to the real etcd, a
/// watch of the cluster's keys, and what the keeper would keep (the batches applied, the
/// turns acknowledged or answered 503). The keeper's part is played here: a turn is one
/// expiry record, the takeover one too.
struct Node {
    rules: leasehold::service::cluster::Cluster,
    link: leasehold::process::link::Link,
    watch: Watch,
    applied: Vec<u64>,
    acknowledged: Vec<u64>,
    resigned: Vec<u64>,
    took_over: Option<u64>,
    last_lease_ms: u64,
    alive: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

impl Node {
    fn new(etcd: &EtcdCluster, name: &str) -> Node {
        use leasehold::service::cluster::{Cluster, Settings};
        let mut link = link(etcd, name);
        let watch = sure(|| link.watch(0));
        let mut header = Vec::new();
        leasehold::journal::codec::frame(&leasehold::journal::segment_header(), &mut header);
        let settings = Settings {
            max_batch_bytes: 64 * 1024,
            heartbeat_ms: 500,
            snapshot_bytes: u64::MAX,
            snapshot_batches: u64::MAX,
            trim_every_ms: 0,
        };
        let rules = Cluster::new(settings, name, 0, 0).with_batch_header(header);
        Node {
            rules,
            link,
            watch,
            applied: Vec::new(),
            acknowledged: Vec::new(),
            resigned: Vec::new(),
            took_over: None,
            last_lease_ms: 0,
            alive: true,
        }
    }

    /// Steps the rules with `event` and carries out everything that follows.
    fn step(&mut self, event: leasehold::service::cluster::Event) {
        use leasehold::service::cluster::{Effect, Event, Turn};
        let mut events = std::collections::VecDeque::from([event]);
        while let Some(event) = events.pop_front() {
            for effect in self.rules.step(event, now_ms()) {
                match effect {
                    Effect::Apply { seq, .. } => self.applied.push(seq),
                    Effect::Acknowledge { seq, tokens } => {
                        self.applied.push(seq);
                        self.acknowledged.extend(tokens);
                    }
                    Effect::Resign { tokens } => self.resigned.extend(tokens),
                    Effect::TakeOver { at_ms, gap_ms } => {
                        self.took_over = Some(gap_ms);
                        let epoch = self.rules.leading_epoch().unwrap();
                        events.push_back(Event::Turn(Turn { token: 0, records: expiry(at_ms, 0), at_ms, epoch }));
                    }
                    Effect::Heartbeat => {
                        let at_ms = self.rules.time(now_ms());
                        let epoch = self.rules.leading_epoch().unwrap();
                        events.push_back(Event::Turn(Turn { token: 1, records: expiry(at_ms, 1), at_ms, epoch }));
                    }
                    Effect::Rebuild => panic!("no node should rebuild in this test"),
                    other => events.extend(self.link.carry_out(&other)),
                }
            }
        }
    }

    /// One turn of the node's loop: its lease every second, what the watch says, a tick.
    fn pump(&mut self) {
        use leasehold::service::cluster::Event;
        if !self.alive {
            return;
        }
        if now_ms() >= self.last_lease_ms + 1_000 {
            self.last_lease_ms = now_ms();
            for event in self.link.keep_lease() {
                self.step(event);
            }
        }
        while let Ok(Some(seen)) = self.watch.next_within(Duration::from_millis(5)) {
            if let Some(event) = self.link.watched(seen) {
                self.step(event);
            }
        }
        self.step(Event::Tick);
    }

    /// The keeper applies a turn as leader.
    fn turn(&mut self, token: u64) {
        let at_ms = self.rules.time(now_ms());
        self.step(leasehold::service::cluster::Event::Turn(leasehold::service::cluster::Turn {
            token,
            records: expiry(at_ms, token),
            at_ms,
            epoch: self.rules.leading_epoch().expect("a leader's turn"),
        }));
    }
}

/// One framed expiry record at `at_ms` (its entropy marks the turn).
fn expiry(at_ms: u64, entropy: u64) -> Vec<u8> {
    let mut out = Vec::new();
    leasehold::journal::codec::encode(&leasehold::journal::Record::Expire { at_ms, entropy }, &mut out).unwrap();
    out
}

fn pump_until(nodes: &mut [Node], what: &str, mut done: impl FnMut(&[Node]) -> bool) {
    wait_for(what, || {
        for node in nodes.iter_mut() {
            node.pump();
        }
        if done(nodes) {
            Ok(())
        } else {
            Err(nodes.iter().map(|n| (n.alive, n.rules.role().clone(), n.rules.applied())).collect::<Vec<_>>())
        }
    });
}

#[test]
fn r13_three_nodes_of_rules_and_links_elect_one_leader_commit_and_fail_over() {
    let etcd = EtcdCluster::start();
    let mut nodes: Vec<Node> = ["node-a", "node-b", "node-c"].iter().map(|n| Node::new(&etcd, n)).collect();
    let leaders = |nodes: &[Node]| nodes.iter().filter(|n| n.alive && n.rules.leads()).count();
    pump_until(&mut nodes, "one leader, its takeover committed", |n| {
        leaders(n) == 1 && n.iter().any(|x| x.rules.leads() && x.acknowledged.contains(&0))
    });
    let first = nodes.iter().position(|n| n.rules.leads()).unwrap();
    for token in 100..120 {
        nodes[first].turn(token);
    }
    pump_until(&mut nodes, "20 turns acknowledged and replicated", |n| {
        let end = n[first].rules.applied();
        (100..120).all(|t| n[first].acknowledged.contains(&t)) && n.iter().all(|x| x.rules.applied() == end)
    });
    // The leader's node dies: its lease is left to lapse. Another node takes over, with
    // the time without a leader as the leases' grace.
    nodes[first].alive = false;
    pump_until(&mut nodes, "a new leader, its takeover committed", |n| {
        n.iter().enumerate().any(|(i, x)| i != first && x.rules.leads() && x.acknowledged.contains(&0))
    });
    let second = nodes.iter().enumerate().position(|(i, n)| i != first && n.rules.leads()).unwrap();
    let gap_ms = nodes[second].took_over.unwrap();
    assert!(gap_ms > 0, "the takeover gives a grace");
    for token in 200..210 {
        nodes[second].turn(token);
    }
    pump_until(&mut nodes, "10 more turns acknowledged and replicated", |n| {
        let end = n[second].rules.applied();
        (200..210).all(|t| n[second].acknowledged.contains(&t))
            && n.iter().enumerate().all(|(i, x)| i == first || x.rules.applied() == end)
    });
    // The log in etcd holds every acknowledged turn once, in order, and every live node
    // applied all of it; no turn was answered 503.
    let mut reader = Etcd::new(&etcd.endpoints, 1_000).unwrap();
    let log = sure(|| reader.read_log(PREFIX, 1));
    let seqs: Vec<u64> = log.batches.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "the log has no gaps");
    let mut turns = Vec::new();
    for (_, batch) in &log.batches {
        let mut frames = leasehold::journal::codec::Reader::new(batch);
        let mut segment = leasehold::journal::SegmentReader::new();
        while let Some(body) = frames.next_record().unwrap() {
            if let Some(leasehold::journal::Record::Expire { entropy, .. }) = segment.read(body).unwrap() {
                turns.push(entropy);
            }
        }
    }
    let acknowledged: Vec<u64> =
        nodes.iter().flat_map(|n| n.acknowledged.iter().copied()).filter(|t| *t >= 100).collect();
    let logged: Vec<u64> = turns.iter().copied().filter(|t| *t >= 100).collect();
    assert_eq!(logged, acknowledged, "every acknowledged turn is in the log, once, in order");
    assert!(nodes.iter().all(|n| n.resigned.is_empty()), "no turn was answered 503");
    for (i, node) in nodes.iter().enumerate().filter(|(i, _)| *i != first) {
        assert_eq!(node.applied, seqs, "node {i} applied the whole log in order");
    }
}

#[test]
fn r13_a_batch_past_etcds_request_limit_is_refused_for_sure_not_put_again_forever() {
    use leasehold::service::cluster::{Effect, Event};
    let etcd = EtcdCluster::start();
    let mut link = link(&etcd, "node-a");
    wait_for("a lease", || {
        let events = link.keep_lease();
        events.contains(&Event::LeaseHeld).then_some(()).ok_or(events)
    });
    let epoch = wait_for("the campaign won", || match link.carry_out(&Effect::Campaign).as_slice() {
        [Event::Won { epoch }] => Ok(*epoch),
        other => Err(other.to_vec()),
    });
    // etcd takes requests up to 1.5 MiB: a 2 MiB batch is refused by etcd itself.
    let huge = Effect::Put { seq: 1, epoch, batch: vec![b'x'; 2 << 20] };
    assert_eq!(link.carry_out(&huge), [Event::Refused { seq: 1 }]);
    let small = Effect::Put { seq: 1, epoch, batch: b"a batch".to_vec() };
    assert_eq!(link.carry_out(&small), [Event::Committed { seq: 1 }]);
}

/// The link of node `name` (no request is made yet).
fn link(etcd: &EtcdCluster, name: &str) -> leasehold::process::link::Link {
    let config = leasehold::config::ClusterConfig {
        etcd_endpoints: etcd.endpoints.clone(),
        prefix: PREFIX.into(),
        node_name: name.into(),
        advertise_url: format!("http://{name}.test:8080"),
        election_ttl_ms: 3_000,
        etcd_timeout_ms: 1_000,
        peer: None,
        snapshot_every_batches: 10_000,
    };
    leasehold::process::link::Link::new(&config).unwrap()
}

/// A link that holds its lease.
fn link_with_lease(etcd: &EtcdCluster, name: &str) -> leasehold::process::link::Link {
    use leasehold::service::cluster::Event;
    let mut link = link(etcd, name);
    wait_for("a lease", || {
        let events = link.keep_lease();
        events.contains(&Event::LeaseHeld).then_some(()).ok_or(events)
    });
    link
}

/// Batch `seq` as a leader writes it: the format record, then one expiry at `seq` s.
fn logged_batch(seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    leasehold::journal::codec::frame(&leasehold::journal::segment_header(), &mut out);
    out.extend(expiry(seq * 1_000, seq));
    out
}

/// The seqs of the batches in the log, from its first, as the keys say.
fn log_seqs(etcd: &mut Etcd) -> Vec<u64> {
    let keys = sure(|| etcd.read_prefix(&log_prefix(PREFIX)));
    keys.iter().map(|(key, _)| leasehold::journal::etcd::seq_of(PREFIX, key).expect("a batch's key")).collect()
}

#[test]
fn a_trim_deletes_the_batches_below_its_bound_only_under_its_epoch_and_reads_say_where_the_log_starts() {
    use leasehold::service::cluster::{Effect, Event};
    let etcd = EtcdCluster::start();
    let mut a = client(&etcd);
    let key = leader_key(PREFIX);
    let (lease_a, epoch_a) = leading(&mut a, "node-a");
    for seq in 1..=10 {
        assert_eq!(sure(|| a.put_batch(&log_key(PREFIX, seq), &key, epoch_a, &logged_batch(seq))), Put::Committed);
    }
    // A key beside the log, which no trim may touch.
    let other = sure(|| a.lease_grant(LONG_TTL_S));
    sure(|| a.put_node(&format!("{PREFIX}/logx"), b"not a batch", other));
    let whole = sure(|| a.read_log(PREFIX, 1));
    assert_eq!((whole.first, whole.batches.len(), whole.trimmed(1)), (1, 10, false));
    assert_eq!(sure(|| a.last_batch(PREFIX, 0)), 10);

    // Below 4: batches 1 to 3 go, and nothing else.
    let Trim::Done { revision, deleted } = sure(|| a.trim_log(PREFIX, &key, epoch_a, 4)) else {
        panic!("the leader's trim was refused")
    };
    assert_eq!(deleted, 3);
    assert!(revision > whole.revision);
    assert_eq!(log_seqs(&mut a), (4..=10).collect::<Vec<_>>());
    assert_eq!(sure(|| a.read_prefix(&format!("{PREFIX}/logx"))).len(), 1);
    // Sent again (its answer lost), it deletes what is left: nothing.
    assert!(matches!(sure(|| a.trim_log(PREFIX, &key, epoch_a, 4)), Trim::Done { deleted: 0, .. }));

    // A read from a trimmed batch reads none and says where the log starts; from a kept
    // batch it reads on as before.
    for from in [1, 3] {
        let read = sure(|| a.read_log(PREFIX, from));
        assert_eq!((read.first, read.batches.len(), read.more), (4, 0, false), "from {from}");
        assert!(read.trimmed(from) && read.revision >= revision);
        assert_eq!(sure(|| a.last_batch(PREFIX, read.revision)), 10);
    }
    for from in [4, 7, 11] {
        let read = sure(|| a.read_log(PREFIX, from));
        assert!(!read.trimmed(from));
        assert_eq!(read.first, 4);
        assert_eq!(read.batches.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (from..=10).collect::<Vec<_>>());
        assert_eq!(read.batches.first().map(|(_, b)| b.clone()), (from <= 10).then(|| logged_batch(from)));
    }

    // Through the link: a catch-up from a trimmed batch reports only where the log stands.
    let mut b = link_with_lease(&etcd, "node-b");
    assert_eq!(b.carry_out(&Effect::CatchUp { from: 2, read: 1 }), [Event::LogEnd { seq: 10, first: 4, read: 1 }]);
    let events = b.carry_out(&Effect::CatchUp { from: 9, read: 2 });
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(matches!(&events[0], Event::Logged { seq: 9, at_ms: 9_000, .. }));
    assert!(matches!(&events[1], Event::Logged { seq: 10, at_ms: 10_000, .. }));
    assert_eq!(events[2], Event::LogEnd { seq: 10, first: 4, read: 2 });

    // node-a is deposed; node-b leads. A trim under node-a's stale epoch is refused and
    // deletes nothing, through the client and through the link.
    sure(|| a.lease_revoke(lease_a));
    let epoch_b = wait_for("node-b's win", || match b.carry_out(&Effect::Campaign).as_slice() {
        [Event::Won { epoch }] => Ok(*epoch),
        other => Err(other.to_vec()),
    });
    assert_eq!(sure(|| a.trim_log(PREFIX, &key, epoch_a, 8)), Trim::Refused);
    assert_eq!(b.carry_out(&Effect::Trim { below: 8, epoch: epoch_a }), []);
    assert_eq!(log_seqs(&mut a), (4..=10).collect::<Vec<_>>());
    let trimmed = b.carry_out(&Effect::Trim { below: 6, epoch: epoch_b });
    let [Event::Trimmed { below: 6, revision: trimmed_at }] = trimmed.as_slice() else {
        panic!("node-b's trim: {trimmed:?}")
    };
    assert_eq!(log_seqs(&mut a), (6..=10).collect::<Vec<_>>());

    // Compacting the history at the trim's revision, then again at it, succeeds; the
    // history before it is gone; a revision etcd has not reached is refused.
    sure(|| a.compact(*trimmed_at));
    sure(|| a.compact(*trimmed_at));
    assert_eq!(b.carry_out(&Effect::Compact { revision: *trimmed_at }), []);
    let gone = a.last_batch(PREFIX, trimmed_at - 1).unwrap_err();
    assert!(matches!(gone, EtcdError::Http { status: 400, .. }), "{gone:?}");
    let future = a.compact(trimmed_at + 1_000_000).unwrap_err();
    assert!(matches!(&future, EtcdError::Http { message, .. } if message.contains("future")), "{future:?}");
    assert_eq!(sure(|| a.last_batch(PREFIX, *trimmed_at)), 10);
    assert_eq!(sure(|| a.read_log(PREFIX, 6)).batches.len(), 5);
}

#[test]
fn a_node_position_is_put_under_its_lease_read_with_the_others_and_gone_with_the_lease() {
    use leasehold::service::cluster::{Effect, Event};
    let etcd = EtcdCluster::start();
    let mut a = client(&etcd);
    let (lease_a, lease_b) = (sure(|| a.lease_grant(LONG_TTL_S)), sure(|| a.lease_grant(LONG_TTL_S)));
    let value = |name: &str, snapshot: u64| {
        format!(r#"{{"node":"{name}","snapshot":{snapshot},"url":"http://{name}.test:8080"}}"#).into_bytes()
    };
    sure(|| a.put_node(&node_key(PREFIX, "node-a"), &value("node-a", 1), lease_a));
    sure(|| a.put_node(&node_key(PREFIX, "node-b"), &value("node-b", 2), lease_b));
    // Put again, the position is replaced.
    sure(|| a.put_node(&node_key(PREFIX, "node-a"), &value("node-a", 3), lease_a));
    let key = |name: &str| node_key(PREFIX, name).into_bytes();
    assert_eq!(
        sure(|| a.read_prefix(&nodes_prefix(PREFIX))),
        vec![(key("node-a"), value("node-a", 3)), (key("node-b"), value("node-b", 2))]
    );
    // The lease revoked, its node's key is gone; a put under it is refused.
    sure(|| a.lease_revoke(lease_a));
    assert_eq!(sure(|| a.read_prefix(&nodes_prefix(PREFIX))), vec![(key("node-b"), value("node-b", 2))]);
    let refused = a.put_node(&node_key(PREFIX, "node-a"), &value("node-a", 4), lease_a).unwrap_err();
    assert!(matches!(refused, EtcdError::Http { status: 404, .. }), "{refused:?}");

    // Through the link: no position before the node holds a lease; then its own, read
    // with the others' (a malformed one left out).
    let mut c = link(&etcd, "node-c");
    assert_eq!(c.carry_out(&Effect::Publish { snapshot: 5 }), [Event::PublishFailed]);
    let mut c = link_with_lease(&etcd, "node-c");
    assert_eq!(c.carry_out(&Effect::Publish { snapshot: 5 }), []);
    sure(|| a.put_node(&node_key(PREFIX, "node-x"), b"not a position", lease_b));
    assert_eq!(
        c.carry_out(&Effect::ReadNodes),
        [Event::Nodes { snapshots: vec![("node-b".into(), 2), ("node-c".into(), 5)] }]
    );
    let (_, stored) = sure(|| a.read_prefix(&node_key(PREFIX, "node-c"))).pop().expect("node-c's position");
    let stored: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(stored, serde_json::json!({"node": "node-c", "snapshot": 5, "url": "http://node-c.test:8080"}));
    // node-c's lease revoked (a clean stop would), its position goes with it.
    sure(|| a.lease_revoke(c.lease().expect("node-c's lease")));
    assert_eq!(c.carry_out(&Effect::ReadNodes), [Event::Nodes { snapshots: vec![("node-b".into(), 2)] }]);
}
