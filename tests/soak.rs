//! The cluster soak (docs/cluster.md, "Snapshots and a log kept small"): three real nodes
//! with the peer link on a real 3-member etcd, under a steady mix of operations through
//! every node for `LEASEHOLD_SOAK_SECS` seconds (600 unless set). Every 30 s it reports the
//! keys under the cluster's prefix in etcd, etcd's database size (in use and on disk) and
//! each node's resident memory; at the end the keyspace must not have grown since the
//! first third of the run, nor the nodes' memory.
//!
//! A test binary of its own, so it runs alone after the others (`cargo test` runs test
//! binaries one after another) and its load does not slow them.

// The support modules of the end-to-end tests, of which this uses a part.
#[allow(dead_code)]
#[path = "it/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::etcd::EtcdCluster;
use support::http::{Client, Reply};
use support::nodes::Nodes;

/// How often the soak reports.
const SAMPLE_EVERY: Duration = Duration::from_secs(30);

/// One sample of the soak.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: u64,
    ops: u64,
    keys: u64,
    log_first: u64,
    db_in_use: u64,
    db_size: u64,
    rss_kib: [u64; 3],
}

/// Resident memory of a process and its children, in KiB.
fn rss_kib(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix(" kB")?.parse::<u64>().ok())
        })
        .sum()
}

/// The keys under the prefix, the first batch of the log, and etcd's database sizes (the
/// largest member's).
fn keyspace(etcd: &EtcdCluster) -> (u64, u64, u64, u64) {
    let (keys, first) = (etcd.keys_under("/leasehold/"), etcd.first_log_batch());
    let status = etcd.etcdctl(&["endpoint", "status", "-w", "json"]);
    let status: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
    let members = status.as_array().cloned().unwrap_or_default();
    let size = |key: &str| members.iter().filter_map(|m| m["Status"][key].as_u64()).max().unwrap_or(0);
    (keys, first, size("dbSizeInUse"), size("dbSize"))
}

/// One client's mix, over and over on its own names: a lock taken, renewed, data written
/// and read under it, its status read, released; a semaphore's permit taken and given back;
/// now and then a wait in a queue behind another client.
fn mix(addr: SocketAddr, id: usize, stop: &AtomicBool, ops: &AtomicU64, failures: &AtomicU64) {
    let mut client: Option<Client> = None;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match Client::connect(addr) {
                Ok(mut c) => {
                    c.set_timeout(Duration::from_secs(10));
                    client.insert(c)
                }
                Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            },
        };
        round += 1;
        let lock = format!("/v1/locks/soak-{id}-{}", round % 50);
        // A wait in the shared queue may end queued (202) instead of granted.
        let mut step = |method: &str, path: &str, headers: &[(&str, &str)], body: &str| -> Option<Reply> {
            match c.request(method, path, headers, body) {
                Ok(r) => {
                    ops.fetch_add(1, Ordering::Relaxed);
                    let waited = path.contains("soak-shared") && r.status == 202;
                    if !(200..300).contains(&r.status) || (r.status == 202 && !waited) {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(r)
                }
                Err(_) => {
                    failures.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        };
        let Some(taken) = step("POST", &format!("{lock}/acquire"), &[], r#"{"ttl_ms":10000}"#) else {
            client = None;
            continue;
        };
        let ticket = taken.json()["ticket"].as_str().unwrap_or_default().to_string();
        let with_ticket = format!(r#"{{"ticket":"{ticket}"}}"#);
        step("POST", &format!("{lock}/renew"), &[], &with_ticket);
        step("PUT", &format!("{lock}/data/k"), &[("x-ticket", &ticket)], &format!(r#"{{"round":{round}}}"#));
        step("GET", &format!("{lock}/data/k"), &[], "");
        step("GET", &lock, &[], "");
        step("POST", &format!("{lock}/release"), &[], &with_ticket);
        if let Some(permit) = step("POST", "/v1/locks/soak-permits/acquire", &[], r#"{"limit":64,"ttl_ms":10000}"#) {
            let ticket = permit.json()["ticket"].as_str().unwrap_or_default().to_string();
            step("POST", "/v1/locks/soak-permits/release", &[], &format!(r#"{{"ticket":"{ticket}"}}"#));
        }
        if round % 20 == 0 {
            // A short wait in a queue that others join too (granted, or given up after it).
            let shared = format!("/v1/locks/soak-shared-{}", id % 2);
            if let Some(r) = step("POST", &format!("{shared}/acquire"), &[], r#"{"ttl_ms":200,"wait_ms":300}"#) {
                // A wait that ended queued leaves its ticket to be dropped for not polling.
                if r.status == 200 {
                    let ticket = r.json()["ticket"].as_str().unwrap_or_default().to_string();
                    step("POST", &format!("{shared}/release"), &[], &format!(r#"{{"ticket":"{ticket}"}}"#));
                }
            }
        }
    }
}

#[test]
fn r14_soak_the_keyspace_in_etcd_and_the_nodes_memory_stay_flat() {
    let secs: u64 = std::env::var("LEASEHOLD_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(600);
    let etcd = EtcdCluster::start();
    let cluster = Nodes::start_peered_with(&etcd, 3, 1, "snapshot_every_batches = 1000");
    let stop = Arc::new(AtomicBool::new(false));
    let (ops, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Two clients per node: the followers forward theirs to the leader.
    let clients: Vec<_> = (0..6)
        .map(|id| {
            let addr = cluster.nodes[id % 3].addr;
            let (stop, ops, failures) = (Arc::clone(&stop), Arc::clone(&ops), Arc::clone(&failures));
            std::thread::spawn(move || mix(addr, id, &stop, &ops, &failures))
        })
        .collect();
    let started = Instant::now();
    let mut samples: Vec<Sample> = Vec::new();
    println!("   s        ops   keys  log from  etcd db in use / size  node RSS (MiB)");
    while started.elapsed() < Duration::from_secs(secs) {
        let next = SAMPLE_EVERY * (samples.len() as u32 + 1);
        // The clock is the subject here: the soak samples every 30 s.
        std::thread::sleep(
            next.saturating_sub(started.elapsed()).min(Duration::from_secs(secs).saturating_sub(started.elapsed())),
        );
        let (keys, log_first, db_in_use, db_size) = keyspace(&etcd);
        let rss = |i: usize| {
            let server = cluster.nodes[i].server.as_ref().expect("a running node");
            let mut pids: Vec<i32> = server.children().into_iter().map(|(pid, _)| pid).collect();
            pids.push(server.pid());
            rss_kib(&pids)
        };
        let sample = Sample {
            at_s: started.elapsed().as_secs(),
            ops: ops.load(Ordering::Relaxed),
            keys,
            log_first,
            db_in_use,
            db_size,
            rss_kib: [rss(0), rss(1), rss(2)],
        };
        println!(
            "{:>4} {:>10} {:>6} {:>9}  {:>9.1} / {:>6.1} MiB  {:?}",
            sample.at_s,
            sample.ops,
            sample.keys,
            sample.log_first,
            sample.db_in_use as f64 / 1_048_576.0,
            sample.db_size as f64 / 1_048_576.0,
            sample.rss_kib.map(|k| k / 1024)
        );
        samples.push(sample);
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a soak client");
    }
    let total = ops.load(Ordering::Relaxed);
    let failed = failures.load(Ordering::Relaxed);
    println!("{total} operations, {failed} unexpected answers, in {} s", started.elapsed().as_secs());
    assert!(samples.len() >= 3, "too short a soak to tell ({secs} s)");
    assert!(failed * 1000 <= total, "{failed} of {total} operations failed");
    // Flat: nothing in the last two thirds of the run above what the first third reached,
    // with a margin for where in its cycle of snapshots and trims each sample fell.
    let third = samples.len() / 3;
    let (early, late) = (&samples[..third.max(1)], &samples[third.max(1)..]);
    let peak = |of: &[Sample], f: &dyn Fn(&Sample) -> u64| of.iter().map(f).max().unwrap_or(0);
    let keys_early = peak(early, &|s| s.keys);
    let keys_late = peak(late, &|s| s.keys);
    assert!(keys_late <= keys_early * 2 + 2_000, "the keys in etcd grew: {keys_early} early, {keys_late} later");
    let used_early = peak(early, &|s| s.db_in_use);
    let used_late = peak(late, &|s| s.db_in_use);
    assert!(used_late <= used_early * 2 + (16 << 20), "etcd's data grew: {used_early} early, {used_late} later");
    assert!(samples.last().unwrap().log_first > samples[0].log_first, "the log was trimmed along the run");
    for node in 0..3 {
        let rss_early = peak(early, &|s| s.rss_kib[node]);
        let rss_late = peak(late, &|s| s.rss_kib[node]);
        // (A leader keeping 16 bytes per request grew by about 12 MiB in 10 minutes.)
        assert!(
            rss_late <= rss_early + rss_early / 10 + 4 * 1024,
            "node {node}'s memory grew: {rss_early} KiB, then {rss_late} KiB"
        );
    }
}
