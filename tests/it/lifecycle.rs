//! Lifecycle of the real server: kill -9 of each process, drain on SIGTERM, reloads under
//! load and reloads that change the configuration (lock and outbox limits, target rules,
//! API keys, a new courier), requests waiting while the keeper dies and leases ending while
//! none runs, the crash-storm breaker. Every wait is on an event (a notification, a pidfd, a
//! log line, a response) with a deadline; no bound here measures how fast the machine is.

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use leasehold::sys::clock::wall_ms;
use leasehold::sys::process::wait_for_exit;
use nix::sys::signal::Signal;

use crate::support::http::{acquire, once, Client, Reply};
use crate::support::load::Load;
use crate::support::{config, signal_pid, wait_until, Server, DEADLINE};

/// The whole log of a server whose master has exited: its children's lines are read from
/// the pipe they share asynchronously, so this waits for the master's last line, which it
/// writes once every child is gone (and so after every line of theirs).
pub(crate) fn whole_log(s: &Server) -> String {
    s.wait_log(&format!("lh-master[{}]: stopped", s.pid()));
    s.log()
}

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
        assert_eq!(r.status, 200, "queued connection {i}: {}\nlog:\n{}", String::from_utf8_lossy(&r.body), s.log());
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
    let mut served = 0;
    wait_until("the keeper coming back for 20 acquires", || {
        let mut fresh = Client::connect(s.addr).unwrap();
        match acquire(&mut fresh, &format!("after-{served}")).unwrap().status {
            200 => served += 1,
            503 => {}
            other => panic!("unexpected {other}"),
        }
        served == 20
    });
    assert_eq!(s.worker_pids(), workers, "no worker was restarted");
    assert_ne!(s.keeper_pid(), keeper);
    // The new keeper recovered from the journal: the lease taken before the kill holds.
    let mut fresh = Client::connect(s.addr).unwrap();
    assert_eq!(acquire(&mut fresh, "before").unwrap().status, 409, "the lease survived the keeper");
}

#[test]
fn a_killed_master_takes_every_child_down() {
    // Each child learns of it from the kernel (parent-death signal, the end of its control
    // channel) and exits: the deadline only tells "never" from "now".
    let s = Server::start(&config("workers = 2", ""));
    let children = s.children();
    assert_eq!(children.len(), 4, "{children:?}");
    s.signal(Signal::SIGKILL);
    for (pid, name) in children {
        assert!(wait_for_exit(pid, DEADLINE).unwrap(), "{name} (pid {pid}) outlived its master");
    }
}

#[test]
fn sigterm_finishes_requests_in_flight_and_exits_0() {
    // The drain timeout is far above the deadline of `wait_exit`: an exit within it was not
    // a drain that ran out.
    let mut s = Server::start(&config("workers = 2\ndrain_timeout_ms = 600000", ""));
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
    let (status, _) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", s.log());
    let log = whole_log(&s);
    assert!(!log.contains("did not finish in time"), "{log}");
}

fn sigterm_under_load(dispatch: &str) {
    // The drain timeout is far above the deadline of `wait_exit`: the workers finished
    // their requests and left by themselves, none was killed.
    let mut s =
        Server::start(&config(&format!("workers = 2\ndispatch = \"{dispatch}\"\ndrain_timeout_ms = 600000"), ""));
    let load = Load::start(s.addr, 8, &format!("term-{dispatch}"));
    load.wait_progress(300);
    s.signal(Signal::SIGTERM);
    let (status, _) = s.wait_exit(DEADLINE);
    let tally = load.stop();
    assert_eq!(status.code(), Some(0), "{}", s.log());
    let log = whole_log(&s);
    assert!(!log.contains("did not finish in time"), "{log}");
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
    // Timed from before the signal, so that the drain cannot have started earlier: a lower
    // bound only, which a slow machine makes longer, never shorter.
    let signalled = Instant::now();
    s.signal(Signal::SIGTERM);
    let (status, _) = s.wait_exit(DEADLINE);
    let took = signalled.elapsed();
    let tally = load.stop();
    assert_eq!(status.code(), Some(0), "{}", s.log());
    assert!(took >= Duration::from_millis(1500), "the drain timeout was not waited for: {took:?}");
    assert!(wait_for_exit(stuck, DEADLINE).unwrap(), "the stuck worker was killed");
    let log = whole_log(&s);
    assert_eq!(log.matches("did not finish in time: killing it").count(), 1, "killed once, not in a loop: {log}");
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
        // The workers of before drain and leave (a slow machine may still see them).
        for pid in &before {
            assert!(wait_for_exit(*pid, DEADLINE).unwrap(), "reload {i}: worker {pid} never left");
        }
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
    // So is a [cluster] section (README, "Signals"): cluster mode starts only with a start.
    let cluster = "[cluster]\netcd_endpoints = \"http://127.0.0.1:2379\"\nnode_name = \"a\"\nadvertise_url = \"http://127.0.0.1:8080\"\n";
    std::fs::write(&s.config_path, format!("{good}\n{cluster}")).unwrap();
    s.signal(Signal::SIGUSR1);
    s.wait_note("RELOADING=1");
    s.wait_note("READY=1");
    s.wait_log("[cluster] changed");
    assert_eq!(s.worker_pids(), workers, "nothing was restarted");
    assert_eq!(once(s.addr, "GET", "/healthz", &[], "").status, 200);
    let metrics = String::from_utf8(once(s.addr, "GET", "/metrics", &[], "").body).unwrap();
    assert!(metrics.contains("leasehold_reloads_total{result=\"refused\"} 3"), "{metrics}");
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
    // A drain of ten minutes: an exit within the deadline of `wait_exit` (30 s) means the
    // second signal cut it short.
    let mut s = Server::start(&config("workers = 1\ndrain_timeout_ms = 600000", ""));
    let worker = s.worker_pids()[0];
    signal_pid(worker, Signal::SIGSTOP);
    s.signal(Signal::SIGTERM);
    s.wait_note("STOPPING=1");
    s.signal(Signal::SIGINT);
    let (status, _) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", s.log());
    s.wait_log("stopping now: workers still draining are killed");
    assert!(wait_for_exit(worker, DEADLINE).unwrap());
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
fn r15_sigquit_stops_like_sigterm_and_children_ignore_the_terminals_quit_key() {
    let mut s = Server::start(&config("workers = 2", ""));
    let children = s.children();
    // The terminal's quit key reaches the whole process group: a child must not die of it.
    let worker = s.worker_pids()[0];
    signal_pid(worker, Signal::SIGQUIT);
    signal_pid(s.keeper_pid(), Signal::SIGQUIT);
    assert_eq!(once(s.addr, "GET", "/healthz", &[], "").status, 200);
    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(acquire(&mut c, "after-quit").unwrap().status, 200);
    assert_eq!(s.children(), children, "no child died of SIGQUIT");
    // The master stops on it, as nginx's graceful quit.
    s.signal(Signal::SIGQUIT);
    s.wait_note("STOPPING=1");
    let (status, _) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0), "{}", s.log());
}

#[test]
fn r12_stray_signals_are_logged_and_ignored() {
    let mut s = Server::start(&config("workers = 1", ""));
    let children = s.children();
    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(acquire(&mut c, "before-usr2").unwrap().status, 200);
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

// ----- reloads that change the configuration -----

/// Log line of the keeper once it has applied a reloaded configuration.
const KEEPER_APPLIED: &str = "new limits applied";
/// First log line of every courier.
const COURIER_READY: &str = "deliveries at once)";

/// Rewrites the server's configuration file, replacing each `(old, new)` (each `old` must be
/// there), and reloads it with `signal`. Returns once the reload is done in every process:
/// `READY=1` from the master (every worker replaced), every worker and the courier of before
/// gone, the keeper's line saying it applied the new limits, and the new courier's first line.
fn reload(s: &mut Server, signal: Signal, changes: &[(&str, &str)]) {
    let mut text = std::fs::read_to_string(&s.config_path).unwrap();
    for (old, new) in changes {
        assert!(text.contains(old), "{old:?} is not in the configuration:\n{text}");
        text = text.replace(old, new);
    }
    let (workers, courier) = (s.worker_pids(), s.courier_pid().expect("a courier"));
    let log = s.log();
    let (applied, couriers) = (log.matches(KEEPER_APPLIED).count(), log.matches(COURIER_READY).count());
    std::fs::write(&s.config_path, text).unwrap();
    s.signal(signal);
    s.wait_note("RELOADING=1");
    s.wait_note("READY=1");
    s.wait_log_count(KEEPER_APPLIED, applied + 1);
    s.wait_log_count(COURIER_READY, couriers + 1);
    for pid in workers.into_iter().chain([courier]) {
        assert!(wait_for_exit(pid, DEADLINE).unwrap(), "pid {pid} of before the reload is still there");
    }
    assert!(!s.log().contains("reload refused"), "{}", s.log());
}

/// Sends a request on a fresh connection until it is not answered 503 `keeper_unavailable`
/// (a keeper is restarting and the workers get their channels to it).
fn once_served(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> Reply {
    let mut reply = None;
    wait_until(&format!("{method} {path} answered by a keeper"), || {
        let r = once(addr, method, path, &[], body);
        let unavailable = r.status == 503 && r.json()["error"] == "keeper_unavailable";
        reply = Some(r);
        !unavailable
    });
    reply.unwrap()
}

fn error_of(r: &Reply) -> (u16, String) {
    (r.status, r.json()["error"].as_str().unwrap_or_default().to_string())
}

#[test]
fn r22_a_reload_applies_new_lock_limits_at_once_and_a_restarted_keeper_keeps_them() {
    let mut s = Server::start(&config(
        "workers = 2",
        "[locks]\nmax_limit = 4\nmax_ttl_ms = 120000\nmax_waiters_per_lock = 1\n",
    ));
    let mut c = Client::connect(s.addr).unwrap();
    // Before: 8 permits are over max_limit, a 90 s lease is within max_ttl_ms, a second
    // waiter is over max_waiters_per_lock.
    let wide = r#"{"limit":8,"queue":"none"}"#;
    let long = r#"{"ttl_ms":90000,"queue":"none"}"#;
    let refused = c.post("/v1/locks/wide-0/acquire", wide).unwrap();
    assert_eq!(error_of(&refused), (400, "bad_request".into()));
    assert!(refused.json()["message"].as_str().unwrap().contains("limit"), "{}", refused.json());
    let kept = c.post("/v1/locks/long-0/acquire", long).unwrap();
    assert_eq!(kept.status, 200);
    let kept_ticket = kept.json()["ticket"].as_str().unwrap().to_string();
    assert_eq!(c.post("/v1/locks/line/acquire", r#"{"ttl_ms":100000}"#).unwrap().status, 200);
    assert_eq!(c.post("/v1/locks/line/acquire", "{}").unwrap().status, 202);
    assert_eq!(error_of(&c.post("/v1/locks/line/acquire", "{}").unwrap()), (429, "queue_full".into()));

    reload(
        &mut s,
        Signal::SIGHUP,
        &[
            ("max_limit = 4", "max_limit = 8"),
            ("max_ttl_ms = 120000", "max_ttl_ms = 60000"),
            ("max_waiters_per_lock = 1", "max_waiters_per_lock = 2"),
        ],
    );
    // After: each answer is the other way round.
    let addr = s.addr;
    let check = |round: &str| {
        let wide_lock = format!("/v1/locks/wide-{round}/acquire");
        assert_eq!(once_served(addr, "POST", &wide_lock, wide).status, 200, "{round}: max_limit 8");
        let long_lock = format!("/v1/locks/long-{round}/acquire");
        let r = once_served(addr, "POST", &long_lock, long);
        assert_eq!(error_of(&r), (400, "bad_request".into()), "{round}: max_ttl_ms 60000");
        assert!(r.json()["message"].as_str().unwrap().contains("ttl_ms"), "{}", r.json());
    };
    check("reloaded");
    // (The connection of before was on a worker the reload retired.)
    let mut c = Client::connect(s.addr).unwrap();
    let second = c.post("/v1/locks/line/acquire", "{}").unwrap();
    assert_eq!((second.status, second.json()["position"].as_u64()), (202, Some(2)), "max_waiters_per_lock 2");
    assert_eq!(error_of(&c.post("/v1/locks/line/acquire", "{}").unwrap()), (429, "queue_full".into()));
    // Lowering max_ttl_ms keeps the lease taken under the old one.
    let r = c.get(&format!("/v1/locks/long-0/tickets/{kept_ticket}")).unwrap();
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("acquired")));

    // A keeper started after the reload (here, after a crash) runs on the new limits too.
    let keeper = s.keeper_pid();
    signal_pid(keeper, Signal::SIGKILL);
    assert!(wait_for_exit(keeper, DEADLINE).unwrap());
    s.wait_note("keeper down");
    s.wait_note("keeper up");
    check("restarted");
}

/// A TCP endpoint that takes every connection and never answers; counts the connections.
fn silent_target() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&connections);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            seen.fetch_add(1, Ordering::SeqCst);
            // Read until the client goes; answer nothing.
            std::thread::spawn(move || while conn.read(&mut [0u8; 4096]).is_ok_and(|n| n > 0) {});
        }
    });
    (addr, connections)
}

#[test]
fn r22_a_reload_applies_new_outbox_limits_and_its_new_courier_enforces_the_new_target_rules() {
    let (target, connections) = silent_target();
    // Attempts that would never end by themselves: only a new courier ends this one.
    let mut s = Server::start(&config(
        "workers = 1",
        "[outbox]\nallow_local = true\ntimeout_ms = 600000\nmax_entries = 2\nmax_body_bytes = 4096\ndeny_hosts = []\n",
    ));
    let mut c = Client::connect(s.addr).unwrap();
    let url = format!("http://{target}/hook");
    let first = serde_json::json!({"url": url, "body": "first", "max_attempts": 25}).to_string();
    let first = c.post("/v1/outbox", &first).unwrap();
    assert_eq!(first.status, 202, "{}", first.json());
    let id = first.json()["id"].as_str().unwrap().to_string();
    // The courier of before has the call in flight: the target holds it unanswered.
    wait_until("the first attempt reaching the target", || connections.load(Ordering::SeqCst) == 1);
    // Other calls are due in an hour: the courier never makes them during the test.
    let later = |host: &str, body: &str| {
        let due = wall_ms() + 3_600_000;
        serde_json::json!({"url": format!("http://{host}/later"), "body": body, "not_before_ms": due}).to_string()
    };
    let big = "x".repeat(2_000);
    let r = c.post("/v1/outbox", &later(&target.to_string(), &big)).unwrap();
    assert_eq!(r.status, 202, "2,000 bytes are within max_body_bytes 4096: {}", r.json());
    let r = c.post("/v1/outbox", &later(&target.to_string(), "third")).unwrap();
    assert_eq!(error_of(&r), (503, "outbox_full".into()), "max_entries 2");
    let courier = s.courier_pid().unwrap();

    reload(
        &mut s,
        Signal::SIGUSR1,
        &[
            ("max_entries = 2", "max_entries = 4"),
            ("max_body_bytes = 4096", "max_body_bytes = 1024"),
            ("deny_hosts = []", "deny_hosts = [\"127.0.0.1\"]"),
        ],
    );
    let mut c = Client::connect(s.addr).unwrap();
    let new_courier = s.courier_pid().expect("a courier after the reload");
    assert_ne!(new_courier, courier, "the courier was replaced");
    // The keeper's new bounds: room for a third call, and 2,000 bytes are too many now.
    // (192.0.2.1 is a documentation address, outside every refused class.)
    let r = c.post("/v1/outbox", &later("192.0.2.1:9", "third")).unwrap();
    assert_eq!(r.status, 202, "max_entries 4: {}", r.json());
    let r = c.post("/v1/outbox", &later("192.0.2.1:9", &big)).unwrap();
    assert_eq!(error_of(&r), (413, "payload_too_large".into()), "max_body_bytes 1024");
    // The new workers refuse the denied host at submission.
    let r = c.post("/v1/outbox", &later(&target.to_string(), "denied")).unwrap();
    assert_eq!(error_of(&r), (400, "bad_request".into()), "deny_hosts at submission");
    // The call that was in flight goes to the new courier, which refuses its target under
    // the new rules without connecting: a dead letter at once, long before 25 attempts.
    let mut entry = serde_json::Value::Null;
    wait_until("the call refused by the new courier", || {
        entry = c.get(&format!("/v1/outbox/{id}")).unwrap().json();
        entry["state"] == "failed"
    });
    assert!(entry["last_error"].as_str().unwrap().contains("not allowed"), "{entry}");
    assert_eq!(connections.load(Ordering::SeqCst), 1, "the new courier connected to a denied host");
}

#[test]
fn r22_a_reload_adds_removes_and_changes_api_keys() {
    let keys = "[auth]\n\
        [[auth.keys]]\nkey = \"alpha-secret\"\nrole = \"write\"\n\
        [[auth.keys]]\nkey = \"beta-secret\"\nrole = \"write\"\n";
    let mut s = Server::start(&config("workers = 2", keys));
    let take = |key: &str, lock: &str| {
        once(s.addr, "POST", &format!("/v1/locks/{lock}/acquire"), &[("x-api-key", key)], "{}").status
    };
    assert_eq!(take("alpha-secret", "a1"), 200);
    assert_eq!(take("beta-secret", "b1"), 200);
    assert_eq!(take("gamma-secret", "g1"), 401, "not a key yet");
    reload(
        &mut s,
        Signal::SIGHUP,
        &[
            ("key = \"alpha-secret\"\nrole = \"write\"", "key = \"gamma-secret\"\nrole = \"lock\""),
            ("key = \"beta-secret\"\nrole = \"write\"", "key = \"beta-secret\"\nrole = \"read\""),
        ],
    );
    let take = |key: &str, lock: &str| {
        once(s.addr, "POST", &format!("/v1/locks/{lock}/acquire"), &[("x-api-key", key)], "{}").status
    };
    assert_eq!(take("alpha-secret", "a2"), 401, "a removed key");
    assert_eq!(take("gamma-secret", "g2"), 200, "an added key");
    assert_eq!(take("beta-secret", "b2"), 403, "a key now read-only");
    assert_eq!(once(s.addr, "GET", "/v1/locks/b1", &[("x-api-key", "beta-secret")], "").status, 200);
}

// ----- the keeper dies -----

#[test]
fn r22_a_request_waiting_when_the_keeper_dies_is_answered_with_its_ticket_which_keeps_its_place() {
    // Waiters that do not show up for 3 s are dropped. The keeper stays down for longer than
    // that; a recovery gives every waiter a fresh 3 s, in which the test looks (it takes
    // milliseconds).
    let mut s = Server::start(&config("workers = 1", "[locks]\nwaiter_ttl_ms = 3000\n"));
    let mut c = Client::connect(s.addr).unwrap();
    let holder = c.post("/v1/locks/line/acquire", r#"{"ttl_ms":600000}"#).unwrap().json();
    let holder = holder["ticket"].as_str().unwrap().to_string();
    let queued: Vec<String> = (1..=2)
        .map(|position| {
            let r = c.post("/v1/locks/line/acquire", "{}").unwrap();
            assert_eq!((r.status, r.json()["position"].as_u64()), (202, Some(position)));
            r.json()["ticket"].as_str().unwrap().to_string()
        })
        .collect();
    // The first in line waits for its grant.
    let mut waiting = Client::connect(s.addr).unwrap();
    let wait = format!(r#"{{"ticket":"{}","wait_ms":60000}}"#, queued[0]);
    let request =
        format!("POST /v1/locks/line/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{wait}", wait.len());
    waiting.send_raw(request.as_bytes()).unwrap();
    s.wait_waiting_requests(1, None);
    // The keeper dies, and stays down: the master, which would restart it, is stopped.
    s.signal(Signal::SIGSTOP);
    let keeper = s.keeper_pid();
    signal_pid(keeper, Signal::SIGKILL);
    // The waiting request gets the documented answer: where it stands, its ticket, and to
    // ask again in a second.
    let r = waiting.read_reply().unwrap();
    let j = r.json();
    assert_eq!(
        (r.status, j["ticket"].as_str(), j["position"].as_u64()),
        (202, Some(queued[0].as_str()), Some(1)),
        "{j}"
    );
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert!(wait_for_exit(keeper, DEADLINE).unwrap());
    let last_seen_ms = wall_ms();
    wait_until("the waiters' presence running out", || wall_ms() > last_seen_ms + 3_000);
    s.signal(Signal::SIGCONT);
    s.wait_note("keeper down");
    s.wait_note("keeper up");
    // The queue came back in its order, the lease with it.
    for (i, ticket) in queued.iter().enumerate() {
        let r = once_served(s.addr, "GET", &format!("/v1/locks/line/tickets/{ticket}"), "");
        let j = r.json();
        let place = (r.status, j["status"].as_str(), j["position"].as_u64());
        assert_eq!(place, (200, Some("queued"), Some(i as u64 + 1)), "{j}");
    }
    let r = once_served(s.addr, "GET", &format!("/v1/locks/line/tickets/{holder}"), "");
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some("acquired")));
    // The holder releases: the first in line, asking again, gets the lock.
    let released = once_served(s.addr, "POST", "/v1/locks/line/release", &format!(r#"{{"ticket":"{holder}"}}"#));
    assert_eq!(released.status, 200);
    let granted = waiting.post("/v1/locks/line/acquire", &wait).unwrap();
    assert_eq!((granted.status, granted.json()["status"].as_str()), (200, Some("acquired")));
    let r = once(s.addr, "GET", &format!("/v1/locks/line/tickets/{}", queued[1]), &[], "");
    assert_eq!(r.json()["position"].as_u64(), Some(1), "{}", r.json());
}

#[test]
fn r22_a_lease_whose_ttl_ends_while_no_keeper_runs_expires_at_recovery_and_its_queue_moves_on() {
    // A waiter admitted while not connected holds its grant for claim_ms: long enough here
    // for the test to come and look, however slow the machine.
    let mut s = Server::start(&config("workers = 1", "[locks]\nclaim_ms = 600000\n"));
    let mut c = Client::connect(s.addr).unwrap();
    let held = c.post("/v1/locks/lapse/acquire", r#"{"ttl_ms":1500}"#).unwrap().json();
    let (holder, fence, expires_at_ms) = (
        held["ticket"].as_str().unwrap().to_string(),
        held["fence"].as_u64().unwrap(),
        held["expires_at_ms"].as_u64().unwrap(),
    );
    let next = c.post("/v1/locks/lapse/acquire", "{}").unwrap().json();
    let next = next["ticket"].as_str().unwrap().to_string();
    // No keeper runs: it is killed while the master, which would restart it, is stopped.
    s.signal(Signal::SIGSTOP);
    let keeper = s.keeper_pid();
    signal_pid(keeper, Signal::SIGKILL);
    assert!(wait_for_exit(keeper, DEADLINE).unwrap());
    // The lease's end passes on the clock the server uses (the same wall clock).
    wait_until("the lease's TTL running out", || wall_ms() > expires_at_ms);
    let renew = format!(r#"{{"ticket":"{holder}"}}"#);
    assert_eq!(error_of(&c.post("/v1/locks/lapse/renew", &renew).unwrap()), (503, "keeper_unavailable".into()));
    s.signal(Signal::SIGCONT);
    s.wait_note("keeper down");
    s.wait_note("keeper up");
    // At recovery the lease expires at once and the next in line has the lock.
    let r = once_served(s.addr, "GET", &format!("/v1/locks/lapse/tickets/{next}"), "");
    let j = r.json();
    assert_eq!((r.status, j["status"].as_str()), (200, Some("acquired")), "{j}");
    assert!(j["fence"].as_u64().unwrap() > fence, "{j}");
    assert_eq!(error_of(&once_served(s.addr, "POST", "/v1/locks/lapse/renew", &renew)), (410, "lease_lost".into()));
}

#[test]
fn r15_sigterm_with_1000_long_polls_answers_each_at_once_with_its_ticket_and_a_restart_keeps_their_order() {
    const WAITERS: usize = 1_000;
    // The drain timeout is far above the deadline of `wait_exit`: an exit within it did not
    // wait for the long-polls (each asks to wait a minute).
    let text =
        config("workers = 2\ndrain_timeout_ms = 600000", "[locks]\nwaiter_ttl_ms = 60000\nmax_wait_ms = 60000\n");
    let mut s = Server::start(&text);
    let data_dir = s.data_dir();
    let holder = once(s.addr, "POST", "/v1/locks/line/acquire", &[], r#"{"ttl_ms":600000}"#).json();
    let holder = holder["ticket"].as_str().unwrap().to_string();
    let request = r#"{"ttl_ms":600000,"wait_ms":60000}"#;
    let head = format!("POST /v1/locks/line/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", request.len());
    let mut waiting: Vec<Client> = (0..WAITERS)
        .map(|_| {
            let mut c = Client::connect(s.addr).unwrap();
            c.send_raw(format!("{head}{request}").as_bytes()).unwrap();
            c
        })
        .collect();
    s.wait_waiting_requests(WAITERS, None);
    let signalled = Instant::now();
    s.signal(Signal::SIGTERM);
    let mut told = Vec::new();
    for c in &mut waiting {
        let r = c.read_reply().expect("every waiter is answered");
        let j = r.json();
        assert_eq!((r.status, j["status"].as_str()), (202, Some("queued")), "{j}");
        assert_eq!(r.header("Retry-After"), Some("1"));
        assert!(r.closes(), "a draining worker closes the connection");
        told.push((j["ticket"].as_str().unwrap().to_string(), j["position"].as_u64().unwrap()));
    }
    let (status, _) = s.wait_exit(DEADLINE);
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0), "{}", s.log());
    println!("SIGTERM with {WAITERS} long-polls: every one answered and the server gone in {took:?}");
    let mut positions: Vec<u64> = told.iter().map(|(_, p)| *p).collect();
    positions.sort_unstable();
    assert_eq!(positions, (1..=WAITERS as u64).collect::<Vec<_>>(), "each told its own place");
    // Started again on its data: the holder still holds, and each ticket waits where it was
    // told it stands.
    let restarted =
        Server::start(&format!("{text}\n").replacen("[server]\n", &format!("[server]\ndata_dir = {data_dir:?}\n"), 1));
    let r = once(restarted.addr, "GET", &format!("/v1/locks/line/tickets/{holder}"), &[], "");
    assert_eq!(r.json()["status"].as_str(), Some("acquired"));
    for (ticket, position) in &told {
        let r = once(restarted.addr, "GET", &format!("/v1/locks/line/tickets/{ticket}"), &[], "");
        let j = r.json();
        assert_eq!((j["status"].as_str(), j["position"].as_u64()), (Some("queued"), Some(*position)), "{j}");
    }
}

#[test]
fn r15_a_reload_answers_long_polls_with_their_tickets_and_kills_a_worker_that_does_not_drain_in_time() {
    // Long-polls asking to wait a minute: the old workers leave at once all the same.
    let mut s = Server::start(&config("workers = 2\ndrain_timeout_ms = 1500", "[locks]\nmax_wait_ms = 60000\n"));
    let holder = once(s.addr, "POST", "/v1/locks/line/acquire", &[], r#"{"ttl_ms":600000}"#);
    assert_eq!(holder.status, 200);
    let body = r#"{"wait_ms":60000}"#;
    let request =
        format!("POST /v1/locks/line/acquire HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let mut waiting: Vec<Client> = (0..20)
        .map(|_| {
            let mut c = Client::connect(s.addr).unwrap();
            c.send_raw(request.as_bytes()).unwrap();
            c
        })
        .collect();
    s.wait_waiting_requests(20, None);
    let before = s.worker_pids();
    s.signal(Signal::SIGUSR1);
    s.wait_note("READY=1");
    for c in &mut waiting {
        let r = c.read_reply().expect("every long-poll is answered by the reload");
        assert_eq!((r.status, r.json()["status"].as_str()), (202, Some("queued")), "{}", r.json());
        assert_eq!(r.header("Retry-After"), Some("1"));
    }
    for pid in &before {
        assert!(wait_for_exit(*pid, DEADLINE).unwrap(), "worker {pid} of before the reload is still there");
    }
    assert!(!s.log().contains("did not drain"), "{}", s.log());
    // A worker that cannot drain (frozen) is killed once the drain timeout has passed.
    let stuck = s.worker_pids()[0];
    signal_pid(stuck, Signal::SIGSTOP);
    s.signal(Signal::SIGUSR1);
    s.wait_note("READY=1");
    assert!(wait_for_exit(stuck, DEADLINE).unwrap(), "the frozen worker was killed");
    s.wait_log(&format!("(pid {stuck}) did not drain within 1500 ms of a reload: killing it"));
    assert_eq!(once(s.addr, "GET", "/v1/locks/line", &[], "").status, 200, "the service goes on");
}

/// The value of `leasehold_hangs_total` for `role`.
fn hangs(addr: std::net::SocketAddr, role: &str) -> Option<u64> {
    let metrics = String::from_utf8(once(addr, "GET", "/metrics", &[], "").body).unwrap();
    let series = format!("leasehold_hangs_total{{role=\"{role}\"}} ");
    metrics.lines().find_map(|l| l.strip_prefix(&series)?.parse().ok())
}

#[test]
fn r15_a_frozen_worker_courier_or_keeper_is_found_by_its_missed_pings_killed_and_replaced() {
    let mut s = Server::start(&config("workers = 2\nchild_ping_timeout_ms = 1000", ""));
    assert_eq!(hangs(s.addr, "worker"), Some(0));
    // Each frozen in turn (SIGSTOP: alive to the kernel, deaf to the master).
    let frozen =
        [("worker", s.worker_pids()[1]), ("courier", s.courier_pid().expect("a courier")), ("keeper", s.keeper_pid())];
    for (role, pid) in frozen {
        signal_pid(pid, Signal::SIGSTOP);
        assert!(wait_for_exit(pid, DEADLINE).unwrap(), "the frozen {role} was killed");
        s.wait_log(&format!("(pid {pid}) has not answered for"));
        s.wait_all_ready(2);
        crate::support::wait_for(&format!("the {role}'s hang counted"), || {
            let n = hangs(s.addr, role);
            (n == Some(1)).then_some(()).ok_or(n)
        });
        // Replaced: the service works again end to end.
        let acquired = once_served(s.addr, "POST", &format!("/v1/locks/after-{role}/acquire"), "{}");
        assert_eq!(acquired.status, 200, "after the {role} was replaced");
    }
    assert_ne!(s.courier_pid(), Some(frozen[1].1), "a new courier");
}

#[test]
fn r15_a_keeper_crash_logs_one_warning_and_a_reload_and_a_stop_log_none() {
    let mut s = Server::start(&config("workers = 2", ""));
    let warnings = |log: &str| log.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).count();
    let keeper = s.keeper_pid();
    signal_pid(keeper, Signal::SIGKILL);
    s.wait_log_count("keeper ready", 2);
    let acquired = once_served(s.addr, "POST", "/v1/locks/after/acquire", "{}");
    assert_eq!(acquired.status, 200);
    let log = s.log();
    assert_eq!(warnings(&log), 1, "one warning for a keeper's death:\n{log}");
    assert!(log.contains(&format!("keeper (pid {keeper}) was killed by SIGKILL")), "{log}");
    s.signal(Signal::SIGUSR1);
    s.wait_log_count("reload complete", 1);
    s.signal(Signal::SIGTERM);
    let (status, _) = s.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(0));
    let log = whole_log(&s);
    assert_eq!(warnings(&log), 1, "a reload and a stop add no warning:\n{log}");
}
