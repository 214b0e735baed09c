//! Lifecycle of the real server: kill -9 of each process, drain on SIGTERM, reloads under
//! load, the crash-storm breaker. Every wait is on an event (a notification, a pidfd, a
//! response) with a deadline.

use std::time::Duration;

use leasehold::process::master::KEEPER_STOP_MS;
use leasehold::sys::process::wait_for_exit;
use nix::sys::signal::Signal;

use crate::support::http::{acquire, once, Client};
use crate::support::load::Load;
use crate::support::{config, signal_pid, Server, DEADLINE};

#[test]
fn a_killed_worker_is_replaced_while_the_others_keep_serving() {
    let mut s = Server::start(&config("workers = 2", ""));
    let load = Load::start(s.addr, 8, "kill-worker");
    load.wait_progress(200);
    let before = s.worker_pids();
    let victim = before[0];
    signal_pid(victim, Signal::SIGKILL);
    assert!(wait_for_exit(victim, DEADLINE).unwrap());
    s.wait_note("1/2 workers ready");
    s.wait_all_ready(2);
    load.wait_progress(200);
    let tally = load.stop();
    let after = s.worker_pids();
    assert_eq!(after.len(), 2);
    assert!(after.contains(&before[1]), "the other worker was not touched");
    assert!(!after.contains(&victim));
    // Only connections that the dead worker held can have failed.
    assert_eq!(tally.connect_failures.load(std::sync::atomic::Ordering::Relaxed), 0, "no connection was refused");
    s.wait_log("was killed by SIGKILL");
    let metrics = String::from_utf8(once(s.addr, "GET", "/metrics", &[], "").body).unwrap();
    assert!(metrics.contains("leasehold_restarts_total{role=\"worker\"} 1"), "{metrics}");
}

#[test]
fn reuseport_connections_queued_in_the_kernel_survive_a_worker_kill() {
    let mut s = Server::start(&config("workers = 1", ""));
    let worker = s.worker_pids()[0];
    // Freeze the only worker: new connections can only wait in the listener's queue.
    signal_pid(worker, Signal::SIGSTOP);
    let mut queued: Vec<Client> = (0..20)
        .map(|i| {
            let mut c = Client::connect(s.addr).expect("the kernel completes the handshake");
            c.send_raw(
                format!("POST /v1/locks/q{i}/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}").as_bytes(),
            )
            .unwrap();
            c
        })
        .collect();
    signal_pid(worker, Signal::SIGKILL);
    assert!(wait_for_exit(worker, DEADLINE).unwrap());
    s.wait_note("0/1 workers ready");
    s.wait_all_ready(1);
    for (i, c) in queued.iter_mut().enumerate() {
        let r = c.read_reply().unwrap_or_else(|e| panic!("queued connection {i} lost: {e}"));
        assert_eq!(r.status, 200, "queued connection {i}");
    }
}

#[test]
fn a_killed_keeper_means_503_with_retry_after_then_recovery_without_worker_restarts() {
    let mut s = Server::start(&config("workers = 2", ""));
    let workers = s.worker_pids();
    let keeper = s.keeper_pid();
    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(acquire(&mut c, "before").unwrap().status, 200);
    // Hold the master so the keeper stays down while we look.
    s.signal(Signal::SIGSTOP);
    signal_pid(keeper, Signal::SIGKILL);
    assert!(wait_for_exit(keeper, DEADLINE).unwrap());
    let down = acquire(&mut c, "during").unwrap();
    assert_eq!(down.status, 503, "{}", String::from_utf8_lossy(&down.body));
    assert_eq!(down.header("Retry-After"), Some("1"));
    assert_eq!(down.json()["error"], "keeper_unavailable");
    assert_eq!(c.get("/readyz").unwrap().status, 503);
    assert_eq!(c.get("/healthz").unwrap().status, 200, "the worker itself is alive");
    s.signal(Signal::SIGCONT);
    s.wait_note("keeper down");
    s.wait_all_ready(2);
    // Every worker gets its new channel by itself; a few requests may still see 503.
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut served = 0;
    while served < 20 {
        let mut fresh = Client::connect(s.addr).unwrap();
        match acquire(&mut fresh, &format!("after-{served}")).unwrap().status {
            200 => served += 1,
            503 => assert!(std::time::Instant::now() < deadline, "the keeper never came back"),
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(s.worker_pids(), workers, "no worker was restarted");
    assert_ne!(s.keeper_pid(), keeper);
    // The new keeper recovered from the journal: the lease taken before the kill holds.
    let mut fresh = Client::connect(s.addr).unwrap();
    assert_eq!(acquire(&mut fresh, "before").unwrap().status, 409, "the lease survived the keeper");
}

#[test]
fn a_killed_master_takes_every_child_down_within_a_second() {
    let s = Server::start(&config("workers = 2", ""));
    let children = s.children();
    assert_eq!(children.len(), 4, "{children:?}");
    s.signal(Signal::SIGKILL);
    for (pid, name) in children {
        assert!(wait_for_exit(pid, Duration::from_secs(1)).unwrap(), "{name} (pid {pid}) outlived its master by 1 s");
    }
}

#[test]
fn sigterm_finishes_requests_in_flight_and_exits_0() {
    let mut s = Server::start(&config("workers = 2\ndrain_timeout_ms = 10000", ""));
    let keeper = s.keeper_pid();
    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(c.get("/healthz").unwrap().status, 200);
    // A request in flight: the keeper is frozen, so its answer cannot come yet.
    signal_pid(keeper, Signal::SIGSTOP);
    c.send_raw(b"POST /v1/locks/inflight/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}").unwrap();
    s.signal(Signal::SIGTERM);
    s.wait_note("STOPPING=1");
    s.wait_log("draining: 1 connections open, 1 requests in flight");
    signal_pid(keeper, Signal::SIGCONT);
    let r = c.read_reply().expect("the request in flight is answered");
    assert_eq!(r.status, 200);
    assert!(r.closes(), "the last answer closes the connection");
    let (status, took) = s.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
}

fn sigterm_under_load(dispatch: &str) {
    let mut s = Server::start(&config(&format!("workers = 2\ndispatch = \"{dispatch}\"\ndrain_timeout_ms = 5000"), ""));
    let load = Load::start(s.addr, 8, &format!("term-{dispatch}"));
    load.wait_progress(300);
    s.signal(Signal::SIGTERM);
    let (status, took) = s.wait_exit(Duration::from_secs(10));
    let tally = load.stop();
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(took < Duration::from_secs(5), "exit took {took:?}");
    // Every request on a connection a worker had taken was answered; new connections are
    // refused from the moment the drain starts.
    let broken = tally.broken_requests.lock().unwrap().clone();
    assert!(broken.is_empty(), "{dispatch}: requests in flight broke: {broken:?}");
    assert!(tally.bad_statuses.lock().unwrap().is_empty(), "{:?}", tally.bad_statuses);
}

#[test]
fn sigterm_under_load_breaks_no_request_reuseport() {
    sigterm_under_load("reuseport");
}

#[test]
fn sigterm_under_load_breaks_no_request_fd_passing() {
    sigterm_under_load("fd-passing");
}

#[test]
fn sigterm_kills_a_worker_that_does_not_drain() {
    let mut s = Server::start(&config("workers = 2\ndrain_timeout_ms = 1500", ""));
    let load = Load::start(s.addr, 6, "stuck");
    load.wait_progress(200);
    let stuck = s.worker_pids()[1];
    signal_pid(stuck, Signal::SIGSTOP);
    s.signal(Signal::SIGTERM);
    let (status, took) = s.wait_exit(Duration::from_secs(10));
    let tally = load.stop();
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(took >= Duration::from_millis(1500), "the drain timeout was not waited for: {took:?}");
    assert!(took < Duration::from_millis(1500 + KEEPER_STOP_MS + 1000), "exit took {took:?}");
    assert!(wait_for_exit(stuck, Duration::from_secs(1)).unwrap(), "the stuck worker was killed");
    s.wait_log("did not finish in time: killing it");
    assert_eq!(s.log().matches("did not finish in time").count(), 1, "killed once, not in a loop");
    // Only requests the frozen worker had taken can break: at most one per client.
    let broken = tally.broken_requests.lock().unwrap().clone();
    assert!(broken.len() <= 6, "{broken:?}");
    assert!(tally.bad_statuses.lock().unwrap().is_empty(), "{:?}", tally.bad_statuses);
}

fn reload_under_load(dispatch: &str) {
    let mut s = Server::start(&config(&format!("workers = 2\ndispatch = \"{dispatch}\""), ""));
    let load = Load::start(s.addr, 8, &format!("reload-{dispatch}"));
    load.wait_progress(300);
    for (i, signal) in [Signal::SIGUSR1, Signal::SIGHUP, Signal::SIGUSR1].into_iter().enumerate() {
        let before = s.worker_pids();
        s.signal(signal);
        let reloading = s.wait_note("RELOADING=1");
        assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
        s.wait_note("READY=1");
        load.wait_progress(300);
        let after = s.worker_pids();
        assert_eq!(after.len(), 2, "reload {i}");
        assert!(after.iter().all(|p| !before.contains(p)), "reload {i} replaced every worker: {before:?} -> {after:?}");
    }
    let tally = load.stop();
    assert!(tally.failures().is_empty(), "{dispatch}: failed requests during reloads: {:?}", tally.failures());
    // Counters of the replaced workers are kept: no acquire answered is missing.
    let metrics = String::from_utf8(once(s.addr, "GET", "/metrics", &[], "").body).unwrap();
    let acquired: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("leasehold_http_requests_total{route=\"acquire\",status=\"200\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let cycles = tally.ok.load(std::sync::atomic::Ordering::Relaxed);
    assert!(acquired >= cycles, "metrics count {acquired} acquires, the clients completed {cycles} cycles");
    s.wait_log_count("reload complete", 3);
    assert_eq!(s.log().matches("reload complete").count(), 3);
}

#[test]
fn three_reloads_under_keep_alive_load_fail_no_request_reuseport() {
    reload_under_load("reuseport");
}

#[test]
fn three_reloads_under_keep_alive_load_fail_no_request_fd_passing() {
    reload_under_load("fd-passing");
}

#[test]
fn an_invalid_reload_changes_nothing_and_logs_why() {
    let mut s = Server::start(&config("workers = 2", ""));
    let workers = s.worker_pids();
    let good = std::fs::read_to_string(&s.config_path).unwrap();
    std::fs::write(&s.config_path, good.replace("workers = 2", "workers = 2\ndispatch = \"udp\"")).unwrap();
    s.signal(Signal::SIGHUP);
    s.wait_note("RELOADING=1");
    s.wait_note("READY=1");
    s.wait_log("reload refused");
    s.wait_log("server.dispatch: is \"udp\"");
    // A change that needs a restart is refused too.
    std::fs::write(&s.config_path, good.replace("workers = 2", "workers = 3")).unwrap();
    s.signal(Signal::SIGUSR1);
    s.wait_note("RELOADING=1");
    s.wait_note("READY=1");
    s.wait_log("server.workers changed");
    assert_eq!(s.worker_pids(), workers, "nothing was restarted");
    assert_eq!(once(s.addr, "GET", "/healthz", &[], "").status, 200);
    let metrics = String::from_utf8(once(s.addr, "GET", "/metrics", &[], "").body).unwrap();
    assert!(metrics.contains("leasehold_reloads_total{result=\"refused\"} 2"), "{metrics}");
}

#[test]
fn a_crash_storm_stops_the_service_with_exit_1() {
    let mut s = Server::start(&config("workers = 1\ncrash_storm_exits = 3\nrestart_delay_max_ms = 200", ""));
    for round in 0..4 {
        s.wait_all_ready(1);
        let victim = s.worker_pids()[0];
        signal_pid(victim, Signal::SIGKILL);
        assert!(wait_for_exit(victim, DEADLINE).unwrap(), "round {round}");
        if round < 3 {
            s.wait_note("0/1 workers ready");
        }
    }
    let (status, _) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "{}", s.log());
    s.wait_log("crash storm");
}

#[test]
fn the_watchdog_is_fed_when_systemd_asks() {
    let mut s = Server::start_with_env(&config("workers = 1", ""), &[("WATCHDOG_USEC", "200000")]);
    s.wait_note("WATCHDOG=1");
    s.wait_note("WATCHDOG=1");
}

#[test]
fn without_notify_socket_the_server_runs_the_same() {
    let s = Server::start_without_systemd(&config("workers = 1", ""));
    assert_eq!(once(s.addr, "GET", "/healthz", &[], "").status, 200);
    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(acquire(&mut c, "no-systemd").unwrap().status, 200);
}

#[test]
fn a_child_that_cannot_start_fails_the_start_with_exit_1() {
    let first = Server::start(&config("workers = 1", ""));
    assert!(first.data_dir().join("keeper.lock").exists());
    // A second server on the same data directory: its keeper cannot lock it.
    let shared = format!("data_dir = {:?}\nworkers = 1", first.data_dir());
    let mut second = Server::spawn_only(&config(&shared, ""));
    let (status, _) = second.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(1), "{}", second.log());
    second.wait_log("is in use by another keeper");
    second.wait_log("during start-up; stopping");
    assert!(!second.notes.iter().any(|n| n.contains("READY=1")), "a failed start never says READY");
    // The first one is unharmed.
    assert_eq!(once(first.addr, "GET", "/readyz", &[], "").status, 200);
}

#[test]
fn a_second_sigterm_stops_waiting_for_the_drain() {
    let mut s = Server::start(&config("workers = 1\ndrain_timeout_ms = 60000", ""));
    let worker = s.worker_pids()[0];
    signal_pid(worker, Signal::SIGSTOP);
    s.signal(Signal::SIGTERM);
    s.wait_note("STOPPING=1");
    s.signal(Signal::SIGINT);
    let (status, took) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(took < Duration::from_secs(30), "the second signal did not cut the 60 s drain short: {took:?}");
    assert!(wait_for_exit(worker, Duration::from_secs(1)).unwrap());
}

#[test]
fn a_second_server_on_a_port_in_use_refuses_to_start_in_either_dispatch_mode() {
    let first = Server::start(&config("workers = 2", ""));
    for dispatch in ["reuseport", "fd-passing"] {
        // Its own data directory: only the port is shared. With SO_REUSEPORT the kernel
        // would otherwise split clients between two lease tables.
        let text = format!(
            "[server]\nlisten = [\"{}\"]\nworkers = 1\ndispatch = \"{dispatch}\"\nlog_level = \"debug\"\n",
            first.addr
        );
        let mut second = Server::spawn_only(&text);
        let (status, _) = second.wait_exit(DEADLINE);
        assert_eq!(status.code(), Some(1), "{dispatch}: {}", second.log());
        second.wait_log(&format!("cannot listen on {}", first.addr));
        if dispatch == "reuseport" {
            second.wait_log("already in use by another process");
        }
    }
    // Every request still reaches the first server's one table.
    let mut c = Client::connect(first.addr).unwrap();
    assert_eq!(acquire(&mut c, "only-one-table").unwrap().status, 200);
    for _ in 0..20 {
        let mut other = Client::connect(first.addr).unwrap();
        assert_eq!(acquire(&mut other, "only-one-table").unwrap().status, 409);
    }
}

#[test]
fn r12_sigusr2_and_other_stray_signals_are_logged_and_ignored() {
    let mut s = Server::start(&config("workers = 1", ""));
    let children = s.children();
    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(acquire(&mut c, "before-usr2").unwrap().status, 200);
    s.signal(Signal::SIGUSR2);
    s.wait_log("SIGUSR2: ignored");
    // Each logged line proves the master handled the signal before the next is sent.
    for signal in [Signal::SIGALRM, Signal::SIGVTALRM, Signal::SIGPROF, Signal::SIGXFSZ, Signal::SIGIO, Signal::SIGPWR]
    {
        s.signal(signal);
        s.wait_log(&format!("{}: ignored", signal.as_str()));
    }
    // SIGPIPE is ignored silently; a request after it shows the master (and its children) live on.
    s.signal(Signal::SIGPIPE);
    assert_eq!(once(s.addr, "GET", "/healthz", &[], "").status, 200);
    assert_eq!(acquire(&mut c, "after-usr2").unwrap().status, 200, "the same keep-alive connection still works");
    assert_eq!(once(s.addr, "GET", "/readyz", &[], "").status, 200);
    assert!(!s.notes.iter().any(|n| n.contains("STOPPING=1")), "{:?}", s.notes);
    assert_eq!(s.children(), children, "no child was replaced");
    // It still stops cleanly afterwards.
    s.signal(Signal::SIGTERM);
    let (status, _) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", s.log());
}
