//! Recovery and memory with many live leases. Writes a journal of 1,000,000 acquires of
//! distinct locks (one-hour TTLs) with the journal's own store and record types, then runs
//! the release binary on it three times and reads, from `/metrics` and `/proc`:
//!
//! 1. recovery by replaying the whole journal (snapshots off), and the keeper's RSS;
//! 2. a start with `snapshot_bytes` at its 1 MiB minimum, which writes a snapshot of that
//!    state at once;
//! 3. recovery from that snapshot, and the keeper's RSS.
//!
//! `make bench-recovery` (part of `make bench`); `LEASEHOLD_BENCH_LEASES` changes
//! the number of leases, and `LEASEHOLD_BENCH_KEEP=1` keeps the data directory (the
//! journal and the snapshot) for a profiler.

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{metric, proc_status_kib, Server};
use leasehold::core::names::{LockName, Owner, Ticket};
use leasehold::ipc::message::{LockOp, ToKeeper};
use leasehold::journal::store::Store;
use leasehold::journal::{self, Record};

fn config(data_dir: &std::path::Path, snapshot_bytes: u64) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\nlog_level = \"info\"\ndata_dir = {data_dir:?}\n\
         [journal]\nsnapshot_bytes = {snapshot_bytes}\n"
    )
}

/// Recovery seconds and the keeper's RSS and peak RSS (MiB) of a running server.
fn measure(server: &Server) -> (f64, f64, f64) {
    let metrics = server.metrics();
    assert_eq!(metric(&metrics, "leasehold_leases") as usize, leases(), "every lease recovered");
    let keeper = server.keeper_pid();
    let mib = |field| proc_status_kib(keeper, field) as f64 / 1024.0;
    (metric(&metrics, "leasehold_recovery_seconds"), mib("VmRSS"), mib("VmHWM"))
}

fn leases() -> usize {
    std::env::var("LEASEHOLD_BENCH_LEASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000)
}

/// The machine line: cores, CPU model, kernel, and the load average at the start (the
/// figures of a busy machine are slower, its RSS figures the same).
fn machine() -> String {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("", |m| m.trim_start_matches([' ', '\t', ':']));
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = read("/proc/sys/kernel/osrelease");
    let loadavg = read("/proc/loadavg");
    let load = loadavg.split(' ').take(3).collect::<Vec<_>>().join(" ");
    format!("# {cores} cores, {model}, Linux {}, load average {load}", kernel.trim())
}

fn main() {
    let leases = leases();
    println!("{}", machine());
    let dir = tempfile::tempdir().expect("temp dir");
    if std::env::var_os("LEASEHOLD_BENCH_KEEP").is_some() {
        // For a profiler: the journal and the snapshot stay for a later look.
        println!("data kept in {}", dir.path().display());
    }
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
    let written = Instant::now();
    let (mut store, _) = Store::open(&data, |_| Ok(())).unwrap();
    // In this build's journal format, as the keeper writes it: a journal in an older format
    // is replaced by a snapshot right after recovery, which the first run would then measure.
    store.set_segment_header(journal::segment_header());
    for i in 0..leases {
        let mut fresh = [0u8; 16];
        fresh[..8].copy_from_slice(&(i as u64).to_be_bytes());
        fresh[8..].copy_from_slice(&now_ms.to_be_bytes());
        let mut op = LockOp::acquire(LockName::parse(&format!("job-{i:07}")).unwrap(), 3_600_000);
        if let LockOp::Acquire { owner, .. } = &mut op {
            *owner = Some(Owner::parse(&format!("host-{}", i % 64)).unwrap());
        }
        let message = ToKeeper::Request { id: i as u64, op };
        let record = Record::Input {
            link: i % 4,
            at_ms: now_ms + (i / 10_000) as u64,
            entropy: i as u64,
            fresh: Ticket::from_bytes(fresh),
            message,
        };
        store.append(&record).unwrap();
        if i % 4096 == 4095 {
            store.commit(false).unwrap();
        }
    }
    store.commit(true).unwrap();
    let journal_mib = store.journal_bytes() as f64 / (1024.0 * 1024.0);
    drop(store);
    println!(
        "journal of {leases} acquires (distinct locks, 1 h TTL): {journal_mib:.0} MiB, written in {:.1} s",
        written.elapsed().as_secs_f64()
    );

    let ready_within = Duration::from_secs(120);
    let server = Server::start(dir.path(), &config(&data, 1 << 40), ready_within);
    let (recovery_s, rss, peak) = measure(&server);
    println!(
        "recovery by replaying the whole journal: {recovery_s:.2} s; keeper RSS {rss:.0} MiB (peak {peak:.0} MiB)"
    );
    server.stop();

    let server = Server::start(dir.path(), &config(&data, 1 << 20), ready_within);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !std::fs::read_to_string(&server.log).unwrap().contains("snapshot written") {
        if Instant::now() >= deadline {
            let log = std::fs::read_to_string(&server.log).unwrap_or_default();
            panic!("no snapshot within 120 s; the server's log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50)); // between looks at the log
    }
    let snapshot_s = metric(&server.metrics(), "leasehold_snapshot_seconds");
    server.stop();
    let snapshot_mib = std::fs::read_dir(&data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot-"))
        .map(|e| e.metadata().unwrap().len())
        .sum::<u64>() as f64
        / (1024.0 * 1024.0);

    let server = Server::start(dir.path(), &config(&data, 64 << 20), ready_within);
    let (recovery_s, rss, peak) = measure(&server);
    println!(
        "snapshot of {leases} leases: {snapshot_mib:.0} MiB, written in {snapshot_s:.2} s; recovery from it: {recovery_s:.2} s; \
         keeper RSS {rss:.0} MiB (peak {peak:.0} MiB)"
    );
    server.stop();
    if std::env::var_os("LEASEHOLD_BENCH_KEEP").is_some() {
        let _ = dir.keep();
    }
}
