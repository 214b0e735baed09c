//! A cluster's log kept small, end to end (docs/cluster.md, "Snapshots and a log kept
//! small"): three real nodes with the peer link on a real 3-member etcd. Every node
//! snapshots its replica at log positions and publishes them; the leader trims the log below
//! the lowest; a node whose next batch was trimmed fetches the leader's snapshot over the
//! peer link and goes on from there, holding exactly the state of the others.

use std::path::Path;

use nix::sys::signal::Signal;

use crate::support::etcd::EtcdCluster;
use crate::support::http::{once, Reply};
use crate::support::load::Load;
use crate::support::nodes::{Follow, Nodes, Outcome};
use crate::support::wait_for;
use leasehold::journal::replica::{self, ReplicaSnapshot};

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// One unlabelled series of a node's `/metrics`.
pub(crate) fn gauge(addr: std::net::SocketAddr, name: &str) -> Option<u64> {
    let metrics = text(&once(addr, "GET", "/metrics", &[], ""));
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The local snapshot in a node's data directory.
pub(crate) fn local_snapshot(dir: &Path) -> ReplicaSnapshot {
    replica::read(dir).expect("a readable snapshot").expect("a snapshot")
}

/// Takes `lock` for a minute and stores `value` under it.
pub(crate) fn hold_with_data(client: &mut Follow, lock: &str, value: &str) {
    let ticket = loop {
        if let Outcome::Answer(r) =
            client.send("POST", &format!("/v1/locks/{lock}/acquire"), &[], r#"{"ttl_ms":60000}"#)
        {
            assert_eq!(r.status, 200, "{}", text(&r));
            break r.json()["ticket"].as_str().unwrap().to_string();
        }
    };
    let put = client.send("PUT", &format!("/v1/locks/{lock}/data/k"), &[("x-ticket", &ticket)], &format!("{value:?}"));
    assert!(matches!(&put, Outcome::Answer(r) if r.status == 201), "{put:?}");
}

#[test]
fn r14_a_node_stopped_while_200k_operations_pass_catches_up_by_the_leaders_snapshot_with_the_same_state() {
    let etcd = EtcdCluster::start();
    let mut cluster = Nodes::start_peered_with(&etcd, 3, 1, "snapshot_every_batches = 100");
    let leader = cluster.leader();
    let (away, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let mut client = Follow::new(cluster.addrs(), leader);
    for i in 0..5 {
        hold_with_data(&mut client, &format!("before-{i}"), &format!("b{i}"));
    }
    cluster.wait_in_step();
    // Stopped cleanly, the node snapshots its replica: it would start again from there.
    cluster.nodes[away].stop();
    let left_at = local_snapshot(cluster.nodes[away].data.path()).position.seq;
    assert!(left_at > 0, "a clean stop snapshots the replica");

    // 200,000 operations (acquire and release, 100,000 cycles) while it is away.
    let load = Load::start(cluster.nodes[leader].addr, 16, "busy");
    while load.ok() < 100_000 {
        load.wait_progress(5_000);
    }
    let tally = load.stop();
    assert_eq!(tally.failures(), Vec::<String>::new(), "the load through the leader");
    for i in 0..5 {
        hold_with_data(&mut client, &format!("after-{i}"), &format!("a{i}"));
    }
    // The live nodes snapshot every 100 batches, and the leader trims below the lowest:
    // the batches the stopped node needs next are gone.
    let first = wait_for("the log trimmed past what the stopped node needs", || {
        let first = etcd.first_log_batch();
        (first > left_at + 1).then_some(first).ok_or(first)
    });
    let kept = etcd.keys_under("/leasehold/log/");
    let applied = gauge(cluster.nodes[leader].addr, "leasehold_cluster_applied_batch").unwrap_or(0);
    assert!(kept < applied / 2, "the log keeps {kept} of {applied} batches (from {first})");
    eprintln!("left at batch {left_at}; the log keeps {kept} of {applied} batches, from {first}");

    // Started again, it fetches the leader's snapshot and follows the log from there.
    cluster.nodes[away].restart();
    let server = cluster.nodes[away].server.as_ref().unwrap();
    server.wait_log("fetched the snapshot of the node at");
    assert_eq!(cluster.leader(), leader);
    cluster.wait_in_step();
    let counts = |addr| ["leasehold_locks", "leasehold_leases", "leasehold_next_fence"].map(|name| gauge(addr, name));
    assert_eq!(counts(cluster.nodes[away].addr), counts(cluster.nodes[leader].addr), "counts and next fence");

    // The whole state: both followers stopped at the same batch (the leader frozen, so no
    // batch comes between) snapshot their replicas; the one that caught up by snapshot
    // holds exactly what the one that replayed every batch holds.
    cluster.wait_in_step();
    cluster.nodes[leader].signal_all(Signal::SIGSTOP);
    cluster.stop_together(&[away, other]);
    cluster.nodes[leader].signal_all(Signal::SIGCONT);
    let (mine, theirs) =
        (local_snapshot(cluster.nodes[away].data.path()), local_snapshot(cluster.nodes[other].data.path()));
    assert_eq!(mine.position, theirs.position, "both stopped at the same batch");
    assert!(mine.position.seq >= applied, "{:?} holds every batch up to {applied}", mine.position);
    assert!(mine.snapshot.service == theirs.snapshot.service, "the node that fetched a snapshot holds the same state");
    let state = serde_json::to_string(&mine.snapshot.service).unwrap();
    assert!(state.contains("before-4") && state.contains("after-4"), "the locks held before and after are in it");
}
