//! Read/write locks end to end, through the real server: 20 readers and 4 writers cycle on
//! one read/write lock, each working on a shared file that has no locking of its own.
//! Writers never overlap anyone, readers are seen to overlap each other, and nobody passes
//! a waiter the server had already queued (so a waiting writer is not passed by readers).
//! And the command line: two `leasehold lock --shared` runs hold the lock together while
//! an `--exclusive` one waits for both to end.
//!
//! Each holder leaves a marker file in a shared directory while it holds the lease: a
//! writer checks that its marker is the only one, a reader that no writer's marker is
//! there. Order is judged by the server's own answers: a `queued` answer carries the
//! waiter's ticket, and every grant its fence, which follows grant order.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client::{leasehold, wait_file, Run};
use crate::support::http::Client;
use crate::support::{config, wait_until, Server};

const READERS: usize = 20;
const WRITERS: usize = 4;
const READER_CYCLES: usize = 8;
const WRITER_CYCLES: usize = 6;
const LOCK: &str = "/v1/locks/shared-file";

/// One acquire, as the client saw it.
#[derive(Debug, Clone)]
struct Grant {
    who: String,
    writer: bool,
    /// When the first acquire request was sent.
    sent: Instant,
    /// When the server answered `queued` to it (the ticket was then in the queue).
    queued: Option<Instant>,
    fence: u64,
}

/// Who is inside now, across the threads (the marker files are the cross-check).
#[derive(Default)]
struct Inside {
    readers: AtomicUsize,
    writers: AtomicUsize,
    most_readers: AtomicUsize,
}

fn markers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// Takes the lease: asks once without waiting (a `queued` answer says the ticket is in the
/// queue), then waits with the ticket until it is granted.
fn take(c: &mut Client, who: &str, writer: bool) -> (Grant, String) {
    let mode = if writer { "exclusive" } else { "shared" };
    let sent = Instant::now();
    let first = c.post(&format!("{LOCK}/acquire"), &format!(r#"{{"mode":"{mode}","owner":"{who}","ttl_ms":30000}}"#));
    let mut reply = first.unwrap();
    let mut queued = None;
    while reply.status == 202 {
        queued.get_or_insert_with(Instant::now);
        let ticket = reply.json()["ticket"].as_str().unwrap().to_string();
        let body = format!(r#"{{"mode":"{mode}","ticket":"{ticket}","ttl_ms":30000,"wait_ms":20000}}"#);
        reply = c.post(&format!("{LOCK}/acquire"), &body).unwrap();
    }
    assert_eq!(reply.status, 200, "{who}: {}", String::from_utf8_lossy(&reply.body));
    let held = reply.json();
    assert_eq!(held["mode"], mode, "{who}: {held}");
    let grant = Grant { who: who.to_string(), writer, sent, queued, fence: held["fence"].as_u64().unwrap() };
    (grant, held["ticket"].as_str().unwrap().to_string())
}

fn give_back(c: &mut Client, ticket: &str) {
    let r = c.post(&format!("{LOCK}/release"), &format!(r#"{{"ticket":"{ticket}"}}"#)).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn writer(addr: std::net::SocketAddr, n: usize, dir: &Path, inside: &Inside) -> Vec<Grant> {
    let mut c = Client::connect(addr).unwrap();
    c.set_timeout(Duration::from_secs(60));
    let file = dir.join("shared.txt");
    let marks = dir.join("inside");
    let mut grants = Vec::new();
    for cycle in 0..WRITER_CYCLES {
        let who = format!("w{n}");
        let (grant, ticket) = take(&mut c, &who, true);
        let marker = marks.join(format!("w{n}-{cycle}"));
        std::fs::write(&marker, b"").unwrap();
        assert_eq!(inside.writers.fetch_add(1, Ordering::SeqCst), 0, "{who}: another writer is inside");
        assert_eq!(inside.readers.load(Ordering::SeqCst), 0, "{who}: a reader is inside");
        assert_eq!(markers(&marks), [format!("w{n}-{cycle}")], "{who}: not alone");
        // The racy part: read the last fence, append this one.
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let last = text.lines().last().and_then(|l| l.split(' ').nth(1)).map_or(0, |f| f.parse::<u64>().unwrap());
        assert!(grant.fence > last, "{who}: fence {} after a write with fence {last}", grant.fence);
        std::fs::write(&file, format!("{text}{who} {}\n", grant.fence)).unwrap();
        assert_eq!(markers(&marks), [format!("w{n}-{cycle}")], "{who}: someone came in while writing");
        inside.writers.fetch_sub(1, Ordering::SeqCst);
        std::fs::remove_file(&marker).unwrap();
        give_back(&mut c, &ticket);
        grants.push(grant);
    }
    grants
}

fn reader(addr: std::net::SocketAddr, n: usize, dir: &Path, inside: &Inside) -> Vec<Grant> {
    let mut c = Client::connect(addr).unwrap();
    c.set_timeout(Duration::from_secs(60));
    let file = dir.join("shared.txt");
    let marks = dir.join("inside");
    let mut grants = Vec::new();
    for cycle in 0..READER_CYCLES {
        let who = format!("r{n}");
        let (grant, ticket) = take(&mut c, &who, false);
        let marker = marks.join(format!("r{n}-{cycle}"));
        std::fs::write(&marker, b"").unwrap();
        let now_inside = inside.readers.fetch_add(1, Ordering::SeqCst) + 1;
        inside.most_readers.fetch_max(now_inside, Ordering::SeqCst);
        // Read while holding: until another reader is seen inside, or briefly (a reader
        // alone must not hold the others up for long).
        let until = Instant::now() + Duration::from_millis(20);
        let mut looks = 0;
        loop {
            assert_eq!(inside.writers.load(Ordering::SeqCst), 0, "{who}: a writer is inside");
            let names = markers(&marks);
            assert!(names.iter().all(|m| m.starts_with('r')), "{who}: a writer's marker beside a reader: {names:?}");
            let _ = std::fs::read_to_string(&file).unwrap_or_default();
            inside.most_readers.fetch_max(inside.readers.load(Ordering::SeqCst), Ordering::SeqCst);
            looks += 1;
            if looks >= 10 && (names.len() >= 2 || Instant::now() >= until) {
                break;
            }
        }
        inside.readers.fetch_sub(1, Ordering::SeqCst);
        std::fs::remove_file(&marker).unwrap();
        give_back(&mut c, &ticket);
        grants.push(grant);
    }
    grants
}

#[test]
fn rw_readers_share_writers_are_alone_and_nobody_passes_a_queued_waiter() {
    let s = Server::start(&config("workers = 2", ""));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("inside")).unwrap();
    let inside = Arc::new(Inside::default());
    let threads: Vec<_> = (0..READERS + WRITERS)
        .map(|i| {
            let (addr, dir, inside) = (s.addr, dir.path().to_path_buf(), inside.clone());
            std::thread::spawn(move || {
                if i < WRITERS {
                    writer(addr, i, &dir, &inside)
                } else {
                    reader(addr, i - WRITERS, &dir, &inside)
                }
            })
        })
        .collect();
    let grants: Vec<Grant> = threads.into_iter().flat_map(|t| t.join().expect("a client thread failed")).collect();
    assert_eq!(grants.len(), READERS * READER_CYCLES + WRITERS * WRITER_CYCLES);

    // Every write is in the file, in fence order.
    let text = std::fs::read_to_string(dir.path().join("shared.txt")).unwrap();
    let fences: Vec<u64> = text.lines().map(|l| l.split(' ').nth(1).unwrap().parse().unwrap()).collect();
    assert_eq!(fences.len(), WRITERS * WRITER_CYCLES, "{text}");
    assert!(fences.windows(2).all(|w| w[0] < w[1]), "{text}");

    // Readers were seen together.
    let most = inside.most_readers.load(Ordering::SeqCst);
    assert!(most >= 2, "readers never overlapped (at most {most} inside at once)");

    // FIFO: a waiter the server had answered `queued` before another acquire was even sent
    // is granted first. For writers, that is their queue order kept; for a reader sent after
    // a writer was queued, that is no writer starvation.
    let waiters: Vec<&Grant> = grants.iter().filter(|g| g.queued.is_some()).collect();
    let queued_writers = waiters.iter().filter(|g| g.writer).count();
    assert!(queued_writers > 0, "no writer ever waited: the test did not test the queue");
    let mut ordered_pairs = 0;
    let mut writer_pairs = 0;
    for w in &waiters {
        for later in grants.iter().filter(|g| g.sent > w.queued.unwrap()) {
            assert!(
                w.fence < later.fence,
                "{} (queued, fence {}) was passed by {} (sent after, fence {})",
                w.who,
                w.fence,
                later.who,
                later.fence
            );
            ordered_pairs += 1;
            writer_pairs += usize::from(w.writer && later.writer);
        }
    }
    assert!(writer_pairs > 0, "no two writers were ordered by the server's answers");
    println!(
        "rw: {} grants, {} waited ({queued_writers} of them writers); most readers inside at once: {most}; \
         {ordered_pairs} ordered pairs checked, {writer_pairs} writer after writer",
        grants.len(),
        waiters.len()
    );
}

#[test]
fn two_shared_command_line_runs_overlap_while_an_exclusive_one_waits_for_both() {
    let s = Server::start(&config("workers = 1", ""));
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    // A reader says it is in, stays until told to stop, and says it is out before it ends
    // (so before its lease is released).
    let reader = |n: &str| {
        format!(
            "echo $LEASEHOLD_FENCE > {}; while [ ! -e {} ]; do sleep 0.01; done; echo out > {}",
            path(&format!("{n}-in")),
            path("stop"),
            path(&format!("{n}-out"))
        )
    };
    let shared = |script: &str| {
        Run::start(&mut leasehold(&s, &["lock", "settings", "--shared", "--wait", "1m", "--", "sh", "-c", script]))
    };
    let mut readers = [shared(&reader("r1")), shared(&reader("r2"))];
    // Both are in at once: neither can leave before `stop` exists.
    let fences = [wait_file(dir.path().join("r1-in").as_path()), wait_file(dir.path().join("r2-in").as_path())];
    assert_ne!(fences[0], fences[1], "each reader has a fence of its own");
    // The writer finds both readers out when it runs, or says it overlapped them.
    let writer = format!(
        "if [ -e {} ] && [ -e {} ]; then echo alone > {w}; else echo overlapped > {w}; fi",
        path("r1-out"),
        path("r2-out"),
        w = path("writer")
    );
    let mut writer =
        Run::start(&mut leasehold(&s, &["lock", "settings", "--exclusive", "--wait", "1m", "--", "sh", "-c", &writer]));
    let mut c = Client::connect(s.addr).unwrap();
    wait_until("the writer to wait in the queue", || c.get("/v1/locks/settings").unwrap().json()["queue_length"] == 1);
    let status = c.get("/v1/locks/settings").unwrap().json();
    assert_eq!((status["kind"].as_str(), status["used"].as_u64()), (Some("rw"), Some(2)), "{status}");
    assert!(status["holders"].as_array().unwrap().iter().all(|h| h["mode"] == "shared"), "{status}");
    assert!(!dir.path().join("writer").exists(), "the writer ran beside the readers");
    std::fs::write(dir.path().join("stop"), b"").unwrap();
    for reader in &mut readers {
        assert_eq!(reader.wait(), 0);
    }
    assert_eq!(wait_file(dir.path().join("writer").as_path()), "alone");
    assert_eq!(writer.wait(), 0);
}
