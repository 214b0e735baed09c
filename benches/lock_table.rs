//! Lease-table micro-benchmark (`make bench`): the pure core alone, on one core, no I/O.
//!
//! - uncontended acquire + release (a fresh lock name each time, so the lock is created and
//!   forgotten every cycle, as with the HTTP benchmark's random names);
//! - uncontended acquire + release of a read/write lock, shared and exclusive (the same loop
//!   with `mode` set);
//! - contended hand-off: one mutex, 1,000 watched waiters; each release admits the next,
//!   which re-queues at the back (p50/p99 per hand-off, including the position events);
//! - read/write hand-off: 100 readers and a writer take turns on one lock: the writer's
//!   release admits all 100 readers in one call, the last reader's admits the writer;
//! - expiry of 1M leases in one `expire` call;
//! - memory per live lease, counted by a wrapping global allocator (bytes requested from the
//!   allocator; the allocator's own per-block overhead comes on top).
//!
//! `LEASEHOLD_BENCH_SCALE` (default 1.0) scales the iteration counts.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use leasehold::core::lock::{Acquire, LockMode, LockTable, Moment, Op, Output, QueueMode, Reply, TableLimits};
use leasehold::core::names::{LockName, Ticket};
use leasehold::core::rand::SplitMix64;

/// Counts live heap bytes.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a side
// effect only.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: `ptr` came from `alloc` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn limits() -> TableLimits {
    TableLimits { max_locks: 10_000_000, max_waiters_per_lock: 1_000_000, ..TableLimits::DEFAULT }
}

struct Tickets(SplitMix64);

impl Tickets {
    fn next(&mut self) -> Ticket {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.0.next_u64().to_le_bytes());
        b[8..].copy_from_slice(&self.0.next_u64().to_le_bytes());
        Ticket::from_bytes(b)
    }
}

fn acquire(lock: LockName, ticket: Ticket, watch: bool) -> Op {
    acquire_in(lock, ticket, watch, None)
}

fn acquire_in(lock: LockName, ticket: Ticket, watch: bool, mode: Option<LockMode>) -> Op {
    Op::Acquire(Acquire {
        lock,
        ticket: None,
        new_ticket: ticket,
        owner: None,
        ttl_ms: Some(30_000),
        limit: Some(1),
        weight: 1,
        queue: Some(QueueMode::Fifo),
        watch,
        callback: None,
        mode,
        user: None,
        wait_ms: 0,
    })
}

fn names(n: usize) -> Vec<LockName> {
    (0..n).map(|i| LockName::parse(&format!("bench-{i}")).expect("valid name")).collect()
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn uncontended(iterations: usize, mode: Option<LockMode>) {
    let mut table = LockTable::new(limits(), 1);
    let mut tickets = Tickets(SplitMix64::new(7));
    let pool = names(1024);
    let mut out = Vec::new();
    let start = Instant::now();
    for i in 0..iterations {
        let name = &pool[i & 1023];
        let ticket = tickets.next();
        let at = Moment::new(1_000 + i as u64 / 1000, i as u64);
        let Reply::Held(_) = table.apply(acquire_in(name.clone(), ticket, false, mode), at, &mut out) else {
            panic!("uncontended acquire must succeed")
        };
        black_box(table.apply(Op::Release { lock: name.clone(), ticket }, at, &mut out));
        out.clear();
    }
    let secs = start.elapsed().as_secs_f64();
    let row = match mode {
        None => "uncontended acquire+release   ",
        Some(LockMode::Shared) => "  rw shared acquire+release   ",
        Some(LockMode::Exclusive) => "  rw exclusive acquire+release",
    };
    println!(
        "{row} {:>12.0} cycles/s   ({iterations} cycles, {:.0} ns/cycle)",
        iterations as f64 / secs,
        secs * 1e9 / iterations as f64
    );
}

fn contended(waiters: usize, handoffs: usize) {
    let mut table = LockTable::new(limits(), 2);
    let mut tickets = Tickets(SplitMix64::new(8));
    let name = LockName::parse("contended").expect("valid name");
    let mut out = Vec::new();
    let at = Moment::new(1_000, 0);
    let mut holder = tickets.next();
    table.apply(acquire(name.clone(), holder, true), at, &mut out);
    for _ in 0..waiters {
        table.apply(acquire(name.clone(), tickets.next(), true), at, &mut out);
    }
    let mut nanos = Vec::with_capacity(handoffs);
    let mut moved = 0usize;
    let start = Instant::now();
    for i in 0..handoffs {
        let at = Moment::new(1_000 + i as u64, i as u64);
        out.clear();
        let t0 = Instant::now();
        table.apply(Op::Release { lock: name.clone(), ticket: holder }, at, &mut out);
        nanos.push(t0.elapsed().as_nanos() as u64);
        moved += out.iter().filter(|o| matches!(o, Output::Moved { .. })).count();
        let next = out.iter().find_map(|o| match o {
            Output::Granted { lease, .. } => Some(lease.ticket),
            _ => None,
        });
        holder = next.expect("release hands the lock to the next waiter");
        // A newcomer queues at the back, so the queue stays at `waiters`.
        table.apply(acquire(name.clone(), tickets.next(), true), at, &mut out);
    }
    let secs = start.elapsed().as_secs_f64();
    nanos.sort_unstable();
    println!(
        "contended hand-off ({waiters} waiting) {:>9.0} hand-offs/s  p50 {:.1} us  p99 {:.1} us  ({} position events each)",
        handoffs as f64 / secs,
        percentile(&nanos, 0.50) as f64 / 1e3,
        percentile(&nanos, 0.99) as f64 / 1e3,
        moved / handoffs
    );
}

fn rw_handoff(readers: usize, rounds: usize) {
    let mut table = LockTable::new(limits(), 3);
    let mut tickets = Tickets(SplitMix64::new(9));
    let name = LockName::parse("rw").expect("valid name");
    let mut out = Vec::new();
    let at = Moment::new(1_000, 0);
    let mut writer = tickets.next();
    table.apply(acquire_in(name.clone(), writer, true, Some(LockMode::Exclusive)), at, &mut out);
    let mut nanos = Vec::with_capacity(rounds);
    let start = Instant::now();
    for i in 0..rounds {
        let at = Moment::new(1_000 + i as u64, i as u64);
        let reader_tickets: Vec<Ticket> = (0..readers).map(|_| tickets.next()).collect();
        for &t in &reader_tickets {
            table.apply(acquire_in(name.clone(), t, true, Some(LockMode::Shared)), at, &mut out);
        }
        let next_writer = tickets.next();
        table.apply(acquire_in(name.clone(), next_writer, true, Some(LockMode::Exclusive)), at, &mut out);
        out.clear();
        let t0 = Instant::now();
        table.apply(Op::Release { lock: name.clone(), ticket: writer }, at, &mut out);
        nanos.push(t0.elapsed().as_nanos() as u64);
        let granted = out.iter().filter(|o| matches!(o, Output::Granted { .. })).count();
        assert_eq!(granted, readers, "the writer's release admits every reader at once");
        for &t in &reader_tickets {
            table.apply(Op::Release { lock: name.clone(), ticket: t }, at, &mut out);
        }
        writer = next_writer;
    }
    let secs = start.elapsed().as_secs_f64();
    nanos.sort_unstable();
    println!(
        "rw hand-off ({readers} readers, 1 writer) {:>7.0} rounds/s  p50 {:.1} us  p99 {:.1} us per writer release  ({:.0} grants/s in all)",
        rounds as f64 / secs,
        percentile(&nanos, 0.50) as f64 / 1e3,
        percentile(&nanos, 0.99) as f64 / 1e3,
        (rounds * (readers + 1)) as f64 / secs
    );
}

fn fill(table: &mut LockTable, pool: &[LockName], tickets: &mut Tickets) {
    let mut out = Vec::new();
    for (i, name) in pool.iter().enumerate() {
        let at = Moment::new(1_000 + (i as u64 % 1000), i as u64);
        let Reply::Held(_) = table.apply(acquire(name.clone(), tickets.next(), false), at, &mut out) else {
            panic!("fill must succeed")
        };
    }
}

fn expiry_and_memory(leases: usize) {
    let pool = names(leases);
    let mut tickets = Tickets(SplitMix64::new(9));
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let mut table = LockTable::new(limits(), 3);
    fill(&mut table, &pool, &mut tickets);
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    let name_bytes: usize = pool.iter().map(|n| n.as_str().len()).sum();
    println!(
        "memory per live lease          {:>12.0} bytes  ({} leases on {} mutexes; names average {:.1} bytes)",
        (after - before) as f64 / leases as f64,
        leases,
        leases,
        name_bytes as f64 / leases as f64
    );
    let mut out = Vec::with_capacity(leases);
    let start = Instant::now();
    let fired = table.expire(Moment::new(u64::MAX / 2, 0), &mut out);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(fired, leases);
    assert_eq!(table.stats().holders, 0);
    println!("expire {leases} leases in one call {:>8.0} ms   ({:.0} expiries/s)", secs * 1e3, leases as f64 / secs);
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let scale: f64 = std::env::var("LEASEHOLD_BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    let n = |base: f64| ((base * scale) as usize).max(1);
    println!("lease table benchmark (pure core, one thread, release build)");
    uncontended(n(5_000_000.0), None);
    uncontended(n(5_000_000.0), Some(LockMode::Shared));
    uncontended(n(5_000_000.0), Some(LockMode::Exclusive));
    contended(1_000, n(20_000.0));
    rw_handoff(100, n(20_000.0));
    expiry_and_memory(n(1_000_000.0));
}
