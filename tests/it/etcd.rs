//! The etcd link's client against a real 3-member etcd on loopback (issue 13; docs/cluster.md,
//! "Keys in etcd" and "The rules"): the election on the leader key, its end when a lease
//! lapses, epoch-guarded puts of batches, paged log reads, the watch, and what the client
//! does when one etcd member, then two, are killed. Each test runs its own cluster.

use std::time::Duration;

use leasehold::journal::etcd::wire::LOG_PAGE_KEYS;
use leasehold::journal::etcd::{
    leader_key, log_key, log_prefix, Campaign, Etcd, EtcdError, Holder, LeaseId, Put, Watch, WatchEvent,
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
        let mut link = leasehold::process::link::Link::new(&config).unwrap();
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
    let config = leasehold::config::ClusterConfig {
        etcd_endpoints: etcd.endpoints.clone(),
        prefix: PREFIX.into(),
        node_name: "node-a".into(),
        advertise_url: "http://node-a.test:8080".into(),
        election_ttl_ms: 3_000,
        etcd_timeout_ms: 1_000,
        peer: None,
        snapshot_every_batches: 10_000,
    };
    let mut link = leasehold::process::link::Link::new(&config).unwrap();
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
