//! Binary upgrade on SIGUSR2, end to end, with copies of the binary told apart by their
//! build stamps (`leasehold::version`). The master starts the program at the path it was
//! itself started from (where an operator renamed a new file), with its arguments, its
//! environment and its listening sockets; the new master waits for the old keeper to release
//! the data directory, starts its own keeper and workers, and once they are all ready the old
//! master sends `MAINPID=<new pid>`, drains its workers and exits 0. Under keep-alive load
//! no connection is refused or reset, every answer that is not 2xx is a 503 with
//! `Retry-After` and a JSON error, and every lease acknowledged before or during the upgrade
//! is still held with its fence. A new binary that fails to start leaves the old one serving.
//!
//! The new master is not the test's child (the old master started it): [`Upgraded`] stops it
//! with SIGTERM and waits until it is gone, also when a test fails. Every wait is on an event
//! or a condition with a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use leasehold::sys::process::wait_for_exit;
use leasehold::version::VERSION;
use nix::sys::signal::Signal;

use crate::support::http::{acquire, once, Client, Reply};
use crate::support::load::Load;
use crate::support::{children_of, config, signal_pid, stamped_binary, wait_for, Server, DEADLINE};

/// An acquire that holds for ten minutes (longer than any test) and never queues.
const LONG_ACQUIRE: &str = r#"{"ttl_ms":600000,"queue":"none"}"#;

/// A master started by an upgrade. Not the test's child: [`Upgraded::stop`] (or the drop
/// of a test that failed before) sends it SIGTERM and waits until it is gone.
struct Upgraded {
    pid: i32,
    stopped: bool,
}

impl Upgraded {
    /// Takes the new master's pid from the old master's `MAINPID=PID` line.
    fn from_note(line: &str) -> Upgraded {
        let pid = line
            .strip_prefix("MAINPID=")
            .and_then(|p| p.trim().parse::<i32>().ok())
            .unwrap_or_else(|| panic!("no pid in {line:?}"));
        Upgraded { pid, stopped: false }
    }

    /// SIGTERM, then waits until the master is gone; fails the test if it is not within
    /// [`DEADLINE`].
    fn stop(mut self) {
        self.stopped = true;
        signal_pid(self.pid, Signal::SIGTERM);
        let gone = wait_for_exit(self.pid, DEADLINE).expect("pidfd");
        if !gone {
            kill_with_children(self.pid);
        }
        assert!(gone, "the new master (pid {}) did not stop within {DEADLINE:?} of SIGTERM", self.pid);
    }
}

impl Drop for Upgraded {
    /// A test that failed before [`Upgraded::stop`] leaves no process behind.
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        signal_pid(self.pid, Signal::SIGTERM);
        if !wait_for_exit(self.pid, DEADLINE).unwrap_or(false) {
            kill_with_children(self.pid);
        }
    }
}

/// SIGKILL to `pid` and to its children (which its death would end anyway).
fn kill_with_children(pid: i32) {
    let children = children_of(pid);
    signal_pid(pid, Signal::SIGKILL);
    for (child, _) in children {
        signal_pid(child, Signal::SIGKILL);
    }
    let _ = wait_for_exit(pid, DEADLINE);
}

/// Where the servers of these tests are started from: `dir/bin/leasehold`.
fn binary_path(dir: &Path) -> PathBuf {
    dir.join("bin").join("leasehold")
}

/// Installs a copy of the binary stamped `build` at `dir/bin/leasehold` the way an operator
/// does, by renaming a new file over the path (a running binary's file is never written);
/// returns the path.
fn install(dir: &Path, build: &str) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin directory");
    let path = binary_path(dir);
    std::fs::rename(stamped_binary(&bin, build), &path).expect("rename the new binary into place");
    path
}

/// The build the server at `addr` reports on `/healthz` (checked for its other fields).
fn build_of(addr: SocketAddr) -> String {
    let health = once(addr, "GET", "/healthz", &[], "");
    assert_eq!(health.status, 200);
    let j = health.json();
    assert_eq!((j["status"].as_str(), j["version"].as_str()), (Some("ok"), Some(VERSION)), "{j}");
    j["build"].as_str().unwrap_or_else(|| panic!("no build in {j}")).to_string()
}

/// Acquires `n` locks `{prefix}-{i}` for ten minutes; returns each name with its fence.
fn hold(addr: SocketAddr, prefix: &str, n: usize) -> Vec<(String, u64)> {
    let mut c = Client::connect(addr).unwrap();
    (0..n)
        .map(|i| {
            let name = format!("{prefix}-{i}");
            let r = c.post(&format!("/v1/locks/{name}/acquire"), LONG_ACQUIRE).unwrap();
            assert_eq!(r.status, 200, "{name}: {}", String::from_utf8_lossy(&r.body));
            (name, r.json()["fence"].as_u64().expect("a fence"))
        })
        .collect()
}

/// Fails the test naming every lock of `held` that is no longer held by exactly one holder
/// with its fence (read with `GET /v1/locks/{name}`).
fn assert_still_held(addr: SocketAddr, held: &[(String, u64)], when: &str) {
    let mut c = Client::connect(addr).unwrap();
    let mut lost = Vec::new();
    for (name, fence) in held {
        let r = c.get(&format!("/v1/locks/{name}")).unwrap();
        if r.closes() {
            c = Client::connect(addr).unwrap();
        }
        let view = if r.status == 200 { r.json() } else { serde_json::Value::Null };
        let fences: Vec<Option<u64>> = view["holders"]
            .as_array()
            .map(|holders| holders.iter().map(|h| h["fence"].as_u64()).collect())
            .unwrap_or_default();
        if fences != [Some(*fence)] {
            lost.push(format!("{name} (fence {fence}): {} {}", r.status, String::from_utf8_lossy(&r.body)));
        }
    }
    assert!(lost.is_empty(), "{when}: {} of {} acknowledged leases lost: {lost:?}", lost.len(), held.len());
}

/// Why `reply` is not the one answer other than 2xx allowed while an upgrade runs: 503 with
/// `Retry-After` and a JSON error body (`{"error": code, "message": text}`).
fn unlike_a_retry_later(reply: &Reply) -> Option<String> {
    let body: Option<serde_json::Value> = serde_json::from_slice(&reply.body).ok();
    let code = body.as_ref().and_then(|b| b["error"].as_str());
    let retry_after = reply.header("Retry-After").is_some_and(|v| !v.is_empty());
    if reply.status == 503 && retry_after && code.is_some() {
        return None;
    }
    Some(format!(
        "{} (Retry-After {:?}): {}",
        reply.status,
        reply.header("Retry-After"),
        String::from_utf8_lossy(&reply.body)
    ))
}

/// What [`Acquirer`] saw.
#[derive(Debug, Default)]
struct Acquired {
    /// Locks answered 200, with their fences.
    held: Vec<(String, u64)>,
    /// Answers other than 200, whole.
    not_ok: Vec<Reply>,
    /// Connections refused, and requests with no whole answer (reset or closed).
    failures: Vec<String>,
}

/// A client that opens a new connection for every request, all along: each acquires a lock
/// of its own for ten minutes (`Connection: close`). It finds a connection refused while
/// the listeners change hands, and records every lease acknowledged meanwhile.
struct Acquirer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Acquired>>,
    thread: Option<JoinHandle<()>>,
}

impl Acquirer {
    fn start(addr: SocketAddr, prefix: &str) -> Acquirer {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Acquired::default()));
        let (stopping, sink, prefix) = (Arc::clone(&stop), Arc::clone(&seen), prefix.to_string());
        let thread = std::thread::spawn(move || {
            // After a refused connection, the next attempt waits a little (the listeners are
            // changing hands, or the test failed and the server is gone): no busy loop.
            let mut pause = Duration::from_millis(1);
            let mut i = 0u64;
            while !stopping.load(Ordering::Relaxed) {
                let name = format!("{prefix}-{i}");
                i += 1;
                let mut c = match Client::connect(addr) {
                    Ok(c) => c,
                    Err(e) => {
                        sink.lock().unwrap().failures.push(format!("connect for {name}: {e}"));
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(20));
                        continue;
                    }
                };
                pause = Duration::from_millis(1);
                let headers = [("Content-Type", "application/json"), ("Connection", "close")];
                match c.request("POST", &format!("/v1/locks/{name}/acquire"), &headers, LONG_ACQUIRE) {
                    Ok(r) if r.status == 200 => {
                        let fence = r.json()["fence"].as_u64().expect("a fence");
                        sink.lock().unwrap().held.push((name, fence));
                    }
                    Ok(r) => sink.lock().unwrap().not_ok.push(r),
                    Err(e) => sink.lock().unwrap().failures.push(format!("acquire {name}: {e}")),
                }
            }
        });
        Acquirer { stop, seen, thread: Some(thread) }
    }

    /// Leases acknowledged so far.
    fn held(&self) -> usize {
        self.seen.lock().unwrap().held.len()
    }

    /// Waits until `more` further leases are acknowledged (proof new connections are served).
    fn wait_held(&self, more: usize) {
        let target = self.held() + more;
        wait_for("leases acquired on new connections", || {
            let seen = self.seen.lock().unwrap();
            if seen.held.len() >= target {
                Ok(())
            } else {
                Err(format!("{} held; failures {:?}", seen.held.len(), seen.failures))
            }
        });
    }

    /// Stops the client; returns what it saw.
    fn stop(mut self) -> Acquired {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the acquiring client panicked");
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

impl Drop for Acquirer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `binary --version`, retried while the file is busy (another test thread forked while
/// the file was being written).
fn version_of(binary: &Path) -> String {
    let busy = nix::errno::Errno::ETXTBSY as i32;
    let out =
        wait_for(&format!("{} --version", binary.display()), || match Command::new(binary).arg("--version").output() {
            Err(e) if e.raw_os_error() == Some(busy) => Err(e),
            done => Ok(done.expect("run --version")),
        });
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_stamped_copy_of_the_binary_reports_its_build_in_version_healthz_and_metrics() {
    assert_eq!(version_of(Path::new(env!("CARGO_BIN_EXE_leasehold"))), format!("leasehold {VERSION} (build dev)\n"));
    let dir = tempfile::tempdir().unwrap();
    let path = install(dir.path(), "r15-g0123abc");
    assert_eq!(version_of(&path), format!("leasehold {VERSION} (build r15-g0123abc)\n"));
    let s = Server::start_from(&path, &config("workers = 1", ""));
    assert_eq!(build_of(s.addr), "r15-g0123abc");
    let metrics = String::from_utf8(once(s.addr, "GET", "/metrics", &[], "").body).unwrap();
    let info = format!("leasehold_build_info{{version=\"{VERSION}\",build=\"r15-g0123abc\"}} 1\n");
    assert!(metrics.contains(&info), "{metrics}");
    assert!(metrics.contains("# TYPE leasehold_build_info gauge\n"), "{metrics}");
}

fn upgrade_under_load(dispatch: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = install(dir.path(), "old");
    let mut s = Server::start_from(&path, &config(&format!("workers = 2\ndispatch = \"{dispatch}\""), ""));
    assert_eq!(build_of(s.addr), "old");
    let before = hold(s.addr, &format!("kept-{dispatch}"), 50);
    // The operator installs the new build; the running master is not told yet.
    install(dir.path(), "new");
    let load = Load::start(s.addr, 8, &format!("upgrade-{dispatch}"));
    let acquirer = Acquirer::start(s.addr, &format!("during-{dispatch}"));
    load.wait_progress(200);
    acquirer.wait_held(20);
    let old = s.pid();
    s.signal(Signal::SIGUSR2);
    let new = Upgraded::from_note(&s.wait_note_line("MAINPID="));
    assert_ne!(new.pid, old, "MAINPID names a new master");
    // Told only once the new master's keeper and workers are all ready.
    let children = children_of(new.pid);
    let named = |prefix: &str| children.iter().filter(|(_, n)| n.starts_with(prefix)).count();
    assert_eq!((named("lh-keeper"), named("lh-worker-")), (1, 2), "the new master's children: {children:?}");
    let (status, _) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "the old master's exit\nlog:\n{}", s.log());
    assert_eq!(build_of(s.addr), "new", "the new binary serves");
    let metrics = String::from_utf8(once(s.addr, "GET", "/metrics", &[], "").body).unwrap();
    assert!(metrics.contains(&format!("leasehold_build_info{{version=\"{VERSION}\",build=\"new\"}} 1\n")), "{metrics}");
    // The service goes on, on keep-alive and on new connections.
    load.wait_progress(200);
    acquirer.wait_held(20);
    let tally = load.stop();
    let during = acquirer.stop();
    // No connection refused or reset, none left without an answer.
    assert_eq!(tally.connect_failures.load(Ordering::Relaxed), 0, "{dispatch}: connections refused to the load");
    let broken = tally.broken_requests.lock().unwrap().clone();
    assert!(broken.is_empty(), "{dispatch}: keep-alive requests without an answer: {broken:?}");
    let unserved = tally.unserved_connections.lock().unwrap().clone();
    assert!(unserved.is_empty(), "{dispatch}: new connections without an answer: {unserved:?}");
    assert!(during.failures.is_empty(), "{dispatch}: new connections refused or reset: {:?}", during.failures);
    // Answers other than 2xx: only "retry later".
    let not_ok: Vec<String> =
        tally.not_ok.lock().unwrap().iter().chain(&during.not_ok).filter_map(unlike_a_retry_later).collect();
    assert!(not_ok.is_empty(), "{dispatch}: answers other than 2xx or 503 with Retry-After: {not_ok:?}");
    // Nothing acknowledged is lost.
    println!(
        "{dispatch}: {} cycles, {} leases acquired on new connections, {} answers 503 during the upgrade",
        tally.ok.load(Ordering::Relaxed),
        during.held.len(),
        tally.not_ok.lock().unwrap().len() + during.not_ok.len()
    );
    assert_still_held(s.addr, &before, "acquired before the upgrade");
    assert_still_held(s.addr, &during.held, "acquired while it ran");
    new.stop();
}

#[test]
fn r15_sigusr2_under_keep_alive_load_moves_to_the_new_binary_refusing_no_connection_and_losing_nothing_acknowledged_reuseport(
) {
    upgrade_under_load("reuseport");
}

#[test]
fn r15_sigusr2_under_keep_alive_load_moves_to_the_new_binary_refusing_no_connection_and_losing_nothing_acknowledged_fd_passing(
) {
    upgrade_under_load("fd-passing");
}

#[test]
fn r15_a_new_binary_that_fails_to_start_leaves_the_old_one_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = install(dir.path(), "old");
    let mut s = Server::start_from(&path, &config("workers = 2", ""));
    let kept = hold(s.addr, "kept", 5);
    // What is installed now cannot become a master: it exits 3 at once.
    let broken = dir.path().join("bin").join("leasehold-broken");
    std::fs::write(&broken, "#!/bin/sh\nexit 3\n").unwrap();
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::rename(&broken, &path).unwrap();
    s.signal(Signal::SIGUSR2);
    s.wait_log("upgrade failed");
    assert!(!s.notes.iter().any(|n| n.contains("MAINPID=")), "no new main pid: {:?}", s.notes);
    // The old binary serves on: its build, its leases, new acquires.
    assert_eq!(build_of(s.addr), "old");
    let mut c = Client::connect(s.addr).unwrap();
    let r = acquire(&mut c, "after-the-failed-upgrade").unwrap();
    assert_eq!(r.status, 200, "{}\nlog:\n{}", String::from_utf8_lossy(&r.body), s.log());
    assert_still_held(s.addr, &kept, "acquired before the failed upgrade");
    s.signal(Signal::SIGTERM);
    let (status, _) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", s.log());
}
