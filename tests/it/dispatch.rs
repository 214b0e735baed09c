//! fd-passing dispatch: the master accepts and hands connections to workers by real
//! connection counts, and a hand-off that fails goes to another worker.

use nix::sys::signal::Signal;

use crate::support::http::Client;
use crate::support::wait_until;
use crate::support::{config, holder_of, signal_pid, Server};

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
    wait_until("the closes seen", || {
        String::from_utf8(watcher.get("/metrics").unwrap().body).unwrap().contains(&emptied)
    });
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

/// The value of the metric line that starts with `series`.
fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("{series} missing from:\n{metrics}"))
}

#[test]
fn r22_a_hand_off_to_a_worker_that_cannot_take_it_goes_to_another_worker() {
    let s = Server::start(&config("workers = 2\ndispatch = \"fd-passing\"\nbalance = \"round-robin\"", ""));
    let frozen = s.children().into_iter().find(|(_, n)| n == "lh-worker-0").expect("worker 0").0;
    // A stopped worker reads nothing from its hand-off socket: once the socket's buffer is
    // full, every hand-off to it fails at once (the master never blocks). The buffer takes
    // a few hundred records (each over 512 bytes of the sender's net.core.wmem_default);
    // round-robin sends every other connection there, so this many fill it with room over.
    let wmem: usize = std::fs::read_to_string("/proc/sys/net/core/wmem_default")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(212_992);
    let n = 2 * (wmem / 512) + 40;
    signal_pid(frozen, Signal::SIGSTOP);
    let mut clients: Vec<Client> = (0..n)
        .map(|_| {
            let mut c = Client::connect(s.addr).unwrap();
            c.send_raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
            c
        })
        .collect();
    // The master accepts in order: once it has handed this last connection to a worker, it
    // has handed all the others. It is answered by the worker that runs (the frozen one
    // does not answer the collection, which the master gives up waiting for).
    let mut first_look = Client::connect(s.addr).unwrap();
    let metrics = String::from_utf8(first_look.get("/metrics").unwrap().body).unwrap();
    let failed = metric(&metrics, "leasehold_handoff_failures_total ");
    assert!(failed > 0, "no hand-off failed: the frozen worker's buffer never filled ({n} connections)");
    signal_pid(frozen, Signal::SIGCONT);
    // Every connection is answered: the failed hand-offs went to the other worker, none is
    // lost or left waiting.
    for (i, c) in clients.iter_mut().enumerate() {
        let r = c.read_reply().unwrap_or_else(|e| panic!("connection {i} of {n}: {e}"));
        assert_eq!(r.status, 200, "connection {i} of {n}");
    }
    // Round-robin alone would give each worker half; the other worker has those of the
    // frozen one's half that could not be handed to it (and the two that looked).
    let metrics = String::from_utf8(Client::connect(s.addr).unwrap().get("/metrics").unwrap().body).unwrap();
    let on_frozen = metric(&metrics, "leasehold_open_connections{worker=\"0\"} ");
    let on_other = metric(&metrics, "leasehold_open_connections{worker=\"1\"} ");
    assert_eq!(on_frozen + on_other, n as u64 + 2, "{n} clients and the two that looked: {metrics}");
    assert!(on_other > n as u64 / 2 + 2, "{on_other} of {n} on the worker that ran: {metrics}");
    assert!(on_frozen < n as u64 / 2, "{on_frozen} of {n} on the frozen worker: {metrics}");
}
