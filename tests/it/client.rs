//! The command-line client against the real server: `leasehold lock NAME -- CMD` keeps
//! racing commands apart and semaphores within their limit, stops a command whose lease is
//! lost, passes signals on, and exits 75 or 69 when it cannot run the command;
//! `leasehold status` and `leasehold release`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::http::Client;
use crate::support::{config, Server, DEADLINE};

/// `leasehold ARGS…` pointed at `server`, with quiet output.
fn leasehold(server: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    cmd.args(args).env("LEASEHOLD_URL", format!("http://{}", server.addr)).stdin(Stdio::null());
    cmd
}

fn wait_child(child: &mut Child) -> i32 {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().expect("leasehold exits, it is not killed");
        }
        assert!(Instant::now() < deadline, "leasehold lock did not end");
        std::thread::yield_now();
    }
}

fn wait_file(path: &Path) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text.trim().to_string();
            }
        }
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::yield_now();
    }
}

#[test]
fn two_runs_of_a_racy_increment_started_together_fifty_times_end_exact() {
    let s = Server::start(&config("workers = 2", ""));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("count");
    std::fs::write(&file, "0\n").unwrap();
    // Read, give the other run time to read the same value, write: without the lock, two
    // runs started together lose an increment.
    let script = format!("n=$(cat {0}); sleep 0.02; echo $((n + 1)) > {0}", file.display());
    for _ in 0..50 {
        let mut runs: Vec<Child> = (0..2)
            .map(|_| leasehold(&s, &["lock", "counter", "--wait", "1m", "--", "sh", "-c", &script]).spawn().unwrap())
            .collect();
        for run in &mut runs {
            assert_eq!(wait_child(run), 0);
        }
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), "100");
}

#[test]
fn with_limit_two_at_most_two_commands_run_at_once() {
    let s = Server::start(&config("workers = 2", ""));
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = format!("echo start >> {0}; sleep 0.1; echo end >> {0}", log.display());
    let mut runs: Vec<Child> = (0..6)
        .map(|_| {
            leasehold(&s, &["lock", "pool", "--limit", "2", "--wait", "1m", "--", "sh", "-c", &script]).spawn().unwrap()
        })
        .collect();
    for run in &mut runs {
        assert_eq!(wait_child(run), 0);
    }
    let (mut running, mut most) = (0, 0);
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        running += if line == "start" { 1 } else { -1 };
        most = most.max(running);
    }
    assert_eq!((running, most), (0, 2), "two at a time, never three");
}

#[test]
fn a_lost_lease_stops_the_command_within_a_renew_interval() {
    let s = Server::start(&config("workers = 1", ""));
    let dir = tempfile::tempdir().unwrap();
    let (ticket_file, term_file) = (dir.path().join("ticket"), dir.path().join("term"));
    let script = format!(
        "trap 'echo got > {}; exit 7' TERM; echo $LEASEHOLD_TICKET > {}; while true; do sleep 0.01; done",
        term_file.display(),
        ticket_file.display()
    );
    // TTL 1.5 s: a renewal every 500 ms.
    let mut run = leasehold(&s, &["lock", "doomed", "--ttl", "1500ms", "--", "sh", "-c", &script]).spawn().unwrap();
    let ticket = wait_file(&ticket_file);
    // Someone else ends the lease (an operator's release).
    let released = Instant::now();
    let out = leasehold(&s, &["release", "doomed", &ticket]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_file(&term_file);
    let took = released.elapsed();
    eprintln!("SIGTERM reached the command {took:?} after the release (renew interval 500 ms)");
    assert!(took < Duration::from_millis(500 + 1_000), "SIGTERM came {took:?} after the release");
    assert_eq!(wait_child(&mut run), 7, "leasehold exits with the command's own status");
}

#[test]
fn signals_reach_the_command_and_the_lease_is_released_when_it_ends() {
    let s = Server::start(&config("workers = 1", ""));
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let script =
        format!("trap 'exit 9' USR1; echo $LEASEHOLD_FENCE > {}; while true; do sleep 0.05; done", ready.display());
    let mut run = leasehold(&s, &["lock", "signalled", "--", "sh", "-c", &script]).spawn().unwrap();
    let fence: u64 = wait_file(&ready).parse().unwrap();
    assert!(fence > 0);
    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(c.get("/v1/locks/signalled").unwrap().status, 200, "held while the command runs");
    kill(Pid::from_raw(run.id() as i32), Signal::SIGUSR1).unwrap();
    assert_eq!(wait_child(&mut run), 9);
    assert_eq!(c.get("/v1/locks/signalled").unwrap().status, 404, "released: nobody holds it");
}

#[test]
fn exit_75_when_the_lock_is_held_past_the_wait_and_69_when_nothing_listens() {
    let s = Server::start(&config("workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(c.post("/v1/locks/busy/acquire", r#"{"ttl_ms":60000}"#).unwrap().status, 200);
    let ran = tempfile::tempdir().unwrap();
    let marker = ran.path().join("ran");
    let touch = format!("touch {}", marker.display());
    for wait in ["0s", "300ms"] {
        let out = leasehold(&s, &["lock", "busy", "--wait", wait, "--", "sh", "-c", &touch]).output().unwrap();
        assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("could not be had"));
    }
    assert!(!marker.exists(), "the command never ran");
    // The waiter left the queue when it gave up.
    assert_eq!(c.get("/v1/locks/busy").unwrap().json()["queue_length"], 0);
    let out = leasehold(&s, &["lock", "busy", "--server", "http://127.0.0.1:1", "--", "true"]).output().unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[test]
fn status_shows_holders_as_a_table_or_json() {
    let s = Server::start(&config("workers = 1", ""));
    let mut c = Client::connect(s.addr).unwrap();
    let body = r#"{"ttl_ms":60000,"owner":"host-a","limit":2}"#;
    assert_eq!(c.post("/v1/locks/report/acquire", body).unwrap().status, 200);
    let out = leasehold(&s, &["status"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("LOCK"), "{text}");
    let row = text.lines().find(|l| l.starts_with("report")).expect("a row for the lock");
    assert!(row.contains("1/2") && row.contains("host-a (fence 1,"), "{row}");
    let out = leasehold(&s, &["status", "report", "--json"]).output().unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((json["used"].as_u64(), json["holders"][0]["owner"].as_str()), (Some(1), Some("host-a")));
    let out = leasehold(&s, &["status", "nothing-here"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("free"));
}

#[test]
fn a_bad_command_line_exits_2_and_says_why() {
    for (args, says) in [
        (&["lock"][..], "missing the lock name"),
        (&["lock", "n", "--ttl", "soon", "--", "true"][..], "--ttl \"soon\": expected a duration"),
        (&["lock", "n", "--server", "https://h", "--", "true"][..], "leasehold serves plain http://"),
        (&["release", "n"][..], "missing the lock name and the ticket"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_leasehold")).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
