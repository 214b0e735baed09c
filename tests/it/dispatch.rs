//! fd-passing dispatch: the master accepts and hands connections to workers by real
//! connection counts.

use crate::support::http::Client;
use crate::support::{config, holder_of, Server};

fn open_connections(metrics: &str) -> Vec<u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("leasehold_open_connections{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect()
}

fn spread(balance: &str) {
    let s = Server::start(&config(&format!("workers = 4\ndispatch = \"fd-passing\"\nbalance = \"{balance}\""), ""));
    let mut clients: Vec<Client> = (0..40).map(|_| Client::connect(s.addr).unwrap()).collect();
    for c in clients.iter_mut() {
        assert_eq!(c.get("/healthz").unwrap().status, 200);
    }
    // A 41st connection asks; it counts for one worker.
    let metrics = String::from_utf8(Client::connect(s.addr).unwrap().get("/metrics").unwrap().body).unwrap();
    let counts = open_connections(&metrics);
    assert_eq!(counts.len(), 4, "{metrics}");
    assert_eq!(counts.iter().sum::<u64>(), 41);
    for n in &counts {
        assert!((9..=11).contains(n), "{balance}: {counts:?}");
    }
}

#[test]
fn least_connections_spreads_40_connections_evenly_over_4_workers() {
    spread("least-connections");
}

#[test]
fn round_robin_spreads_40_connections_evenly_over_4_workers() {
    spread("round-robin");
}

#[test]
fn least_connections_follows_closes_reported_by_workers() {
    let s = Server::start(&config("workers = 2\ndispatch = \"fd-passing\"", ""));
    let mut watcher = Client::connect(s.addr).unwrap();
    assert_eq!(watcher.get("/healthz").unwrap().status, 200);
    let mut clients: Vec<Client> = (0..20).map(|_| Client::connect(s.addr).unwrap()).collect();
    for c in clients.iter_mut() {
        assert_eq!(c.get("/healthz").unwrap().status, 200);
    }
    let slot_of = |c: &Client| holder_of(&s, c.local_addr()).expect("a worker holds it").1;
    let watcher_slot = slot_of(&watcher);
    // Close every connection of the worker the watcher is not on.
    let (theirs, ours): (Vec<Client>, Vec<Client>) = clients.into_iter().partition(|c| slot_of(c) != watcher_slot);
    assert!(!theirs.is_empty() && !ours.is_empty(), "both workers got connections");
    let emptied =
        format!("leasehold_open_connections{{worker=\"{}\"}} 0", slot_of(&theirs[0]).trim_start_matches("lh-worker-"));
    drop(theirs);
    // Once the emptied worker reports 0 through the master, the master has read its close
    // reports too (they travel on the same channel, before the metrics).
    let deadline = std::time::Instant::now() + crate::support::DEADLINE;
    while !String::from_utf8(watcher.get("/metrics").unwrap().body).unwrap().contains(&emptied) {
        assert!(std::time::Instant::now() < deadline, "the closes were never seen");
    }
    let mut fresh: Vec<Client> = (0..10).map(|_| Client::connect(s.addr).unwrap()).collect();
    for c in fresh.iter_mut() {
        assert_eq!(c.get("/healthz").unwrap().status, 200);
    }
    let on_emptied = fresh.iter().filter(|c| slot_of(c) != watcher_slot).count();
    assert_eq!(
        on_emptied,
        10,
        "every new connection went to the worker with none ({} stayed open on the other)",
        ours.len() + 1
    );
}
