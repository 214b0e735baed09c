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
