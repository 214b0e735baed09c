//! The command-line client against the real server: `leasehold lock NAME -- CMD` keeps
//! racing commands apart and semaphores within their limit, renews a lease for as long as
//! CMD runs, stops a command whose lease is lost (SIGTERM, then SIGKILL after `--grace`),
//! passes signals on, sends `--key`/`LEASEHOLD_KEY`, and exits 75 or 69 when it cannot run
//! the command; `leasehold status` and `leasehold release`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::support::http::Client;
use crate::support::{config, signal_pid, wait_for, Server};

/// `leasehold ARGS…` pointed at `server`, with quiet output and no key from the test's
/// own environment.
pub(crate) fn leasehold(server: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    cmd.args(args)
        .env("LEASEHOLD_URL", format!("http://{}", server.addr))
        .env_remove("LEASEHOLD_KEY")
        .stdin(Stdio::null());
    cmd
}

/// A running `leasehold lock` in a process group of its own: if the test fails before it
/// ends, the group (it and its command) is killed, so no command outlives its test.
pub(crate) struct Run {
    child: Child,
    ended: bool,
}

impl Run {
    /// Starts `cmd` (a `leasehold lock`).
    pub(crate) fn start(cmd: &mut Command) -> Run {
        Run { child: cmd.process_group(0).spawn().expect("start leasehold lock"), ended: false }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    /// Waits for it to end; returns its exit code.
    pub(crate) fn wait(&mut self) -> i32 {
        let child = &mut self.child;
        let status = wait_for("leasehold lock to end", || child.try_wait().unwrap().ok_or("still running"));
        self.ended = true;
        status.code().expect("leasehold exits, it is not killed")
    }

    /// Waits for it to end; returns its exit code and what it wrote on stderr (it must
    /// have been started with `stderr(Stdio::piped())`).
    fn wait_stderr(&mut self) -> (i32, String) {
        let code = self.wait();
        let mut stderr = String::new();
        self.child.stderr.take().expect("stderr is piped").read_to_string(&mut stderr).unwrap();
        (code, stderr)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if !self.ended {
            let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A server for tests whose leases live on renewals: its journal is not synced, since a
/// sync on a busy disk can hold an answer for a second or more (a renewal took up to 0.5 s
/// synced and 0.15 s unsynced beside a CPU and disk load), and durability is not what these
/// tests are about.
fn renewing_server(extra: &str) -> Server {
    Server::start(&config("workers = 1", &format!("{extra}\n[journal]\nfsync = \"never\"\n")))
}

/// Waits until the command has written a whole line to `path`; returns it.
pub(crate) fn wait_file(path: &Path) -> String {
    wait_for(&format!("{} to be written", path.display()), || match std::fs::read_to_string(path) {
        Ok(text) if text.ends_with('\n') => Ok(text.trim().to_string()),
        other => Err(other.map_err(|e| e.kind())),
    })
}

/// The current lease on `lock` as the server shows it to readers: (fence, expires_in_ms), or
/// `None` when nobody holds it.
pub(crate) fn holder(c: &mut Client, lock: &str) -> Option<(u64, u64)> {
    let r = c.get(&format!("/v1/locks/{lock}")).unwrap();
    if r.status == 404 {
        return None;
    }
    let h = &r.json()["holders"][0];
    Some((h["fence"].as_u64()?, h["expires_in_ms"].as_u64()?))
}

/// Watches `lock`, by the server's clock, from now until 3 TTLs later: held all along by
/// the same lease (`fence`; granted before now, so unrenewed it would end within one TTL),
/// and at the end never more than one TTL ahead: renewed, not granted once for long.
pub(crate) fn assert_renewed_for_3_ttls(c: &mut Client, lock: &str, fence: u64, ttl_ms: u64) {
    let started_ms = server_now_ms(c);
    wait_for("the server's clock to pass 3 TTLs", || {
        let seen = holder(c, lock);
        assert_eq!(seen.map(|(f, _)| f), Some(fence), "the lease ended while the command ran");
        let now_ms = server_now_ms(c);
        if now_ms >= started_ms + 3 * ttl_ms {
            Ok(())
        } else {
            Err(now_ms - started_ms)
        }
    });
    let (still, left_ms) = holder(c, lock).expect("held");
    assert_eq!(still, fence);
    assert!(left_ms <= ttl_ms, "{left_ms} ms left on a {ttl_ms} ms lease");
}

/// The server's clock (ms since the epoch), read from the `at_ms` of a try-lock of a lock
/// no test holds, released at once.
pub(crate) fn server_now_ms(c: &mut Client) -> u64 {
    let r = c.post("/v1/locks/clock-probe/acquire", r#"{"queue":"none"}"#).unwrap();
    let body = r.json();
    let release = format!(r#"{{"ticket":"{}"}}"#, body["ticket"].as_str().unwrap());
    assert_eq!(c.post("/v1/locks/clock-probe/release", &release).unwrap().status, 200);
    body["at_ms"].as_u64().unwrap()
}

/// A command that writes its ticket to `ticket`, writes `got` to `term` when SIGTERM comes
/// and exits 7, and otherwise runs until stopped.
fn stoppable(ticket: &Path, term: &Path) -> String {
    format!(
        "trap 'echo got > {}; exit 7' TERM; echo $LEASEHOLD_TICKET > {}; while true; do sleep 0.01; done",
        term.display(),
        ticket.display()
    )
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
        let mut runs: Vec<Run> = (0..2)
            .map(|_| Run::start(&mut leasehold(&s, &["lock", "counter", "--wait", "1m", "--", "sh", "-c", &script])))
            .collect();
        for run in &mut runs {
            assert_eq!(run.wait(), 0);
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
    let mut runs: Vec<Run> = (0..6)
        .map(|_| {
            Run::start(&mut leasehold(&s, &["lock", "pool", "--limit", "2", "--wait", "1m", "--", "sh", "-c", &script]))
        })
        .collect();
    for run in &mut runs {
        assert_eq!(run.wait(), 0);
    }
    let (mut running, mut most) = (0, 0);
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        running += if line == "start" { 1 } else { -1 };
        most = most.max(running);
    }
    assert_eq!((running, most), (0, 2), "two at a time, never three");
}

/// Runs `leasehold lock LOCK ARGS… -- CMD` where CMD holds on until told to stop, and checks
/// that the lease stays held and renewed for 3 TTLs of `ttl_ms`, then is released.
fn assert_a_run_renews_for_3_ttls(s: &Server, lock: &str, args: &[&str], ttl_ms: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (ticket_file, stop_file) = (dir.path().join("ticket"), dir.path().join("stop"));
    let script = format!(
        "echo $LEASEHOLD_TICKET > {}; while [ ! -e {} ]; do sleep 0.01; done",
        ticket_file.display(),
        stop_file.display()
    );
    let mut line = vec!["lock", lock];
    line.extend_from_slice(args);
    line.extend_from_slice(&["--", "sh", "-c", &script]);
    let mut run = Run::start(&mut leasehold(s, &line));
    wait_file(&ticket_file);
    let mut c = Client::connect(s.addr).unwrap();
    let (fence, left_ms) = holder(&mut c, lock).expect("held while the command runs");
    assert!(left_ms <= ttl_ms, "{left_ms} ms left on a {ttl_ms} ms lease");
    assert_renewed_for_3_ttls(&mut c, lock, fence, ttl_ms);
    std::fs::write(&stop_file, "").unwrap();
    assert_eq!(run.wait(), 0);
    assert_eq!(holder(&mut c, lock), None, "released when the command ended");
}

#[test]
fn r22_renewal_keeps_a_command_running_past_several_ttls() {
    // TTL 4 s: renewed every 1.33 s, so each renewal has 2.67 s to get through: a few ms when
    // idle, and room for the stalls of a second or more a loaded two-core machine shows.
    assert_a_run_renews_for_3_ttls(&renewing_server(""), "long-job", &["--ttl", "4s"], 4_000);
}

#[test]
fn without_ttl_a_declared_lock_gives_its_default_ttl_and_the_renewals_keep_to_it() {
    // Declared with a TTL of at most 5 s: the command line's usual 30 s would be refused, so
    // without `--ttl` the lease takes the declared default, 4 s, and is renewed with it.
    let s = renewing_server("[[locks.declare]]\nname = \"declared-job\"\nmax_ttl_ms = 5000\ndefault_ttl_ms = 4000\n");
    assert_a_run_renews_for_3_ttls(&s, "declared-job", &[], 4_000);
}

#[test]
fn a_lease_released_by_someone_else_stops_the_command_with_sigterm() {
    let s = renewing_server("");
    let dir = tempfile::tempdir().unwrap();
    let (ticket_file, term_file) = (dir.path().join("ticket"), dir.path().join("term"));
    let script = stoppable(&ticket_file, &term_file);
    let mut run =
        Run::start(leasehold(&s, &["lock", "doomed", "--ttl", "4s", "--", "sh", "-c", &script]).stderr(Stdio::piped()));
    let ticket = wait_file(&ticket_file);
    // Someone else ends the lease (an operator's release); the next renewal learns it.
    let out = leasehold(&s, &["release", "doomed", &ticket]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(wait_file(&term_file), "got", "the command got SIGTERM");
    let (code, stderr) = run.wait_stderr();
    assert_eq!(code, 7, "leasehold exits with the command's own status");
    // Told by the server, not found out by the lease running out on the client's clock.
    assert!(stderr.contains("the lease on doomed is lost (the server says 410"), "{stderr}");
}

#[test]
fn r22_a_lease_that_expired_on_the_server_stops_the_command() {
    let s = renewing_server("");
    let dir = tempfile::tempdir().unwrap();
    let (ticket_file, term_file) = (dir.path().join("ticket"), dir.path().join("term"));
    let script = stoppable(&ticket_file, &term_file);
    let mut run = Run::start(
        leasehold(&s, &["lock", "lapsed", "--ttl", "300ms", "--", "sh", "-c", &script]).stderr(Stdio::piped()),
    );
    wait_file(&ticket_file);
    // The client is stopped (the command runs on): nothing renews the lease, and the
    // server expires it.
    let client = run.pid();
    kill(client, Signal::SIGSTOP).unwrap();
    let mut c = Client::connect(s.addr).unwrap();
    wait_for("the server to expire the lease", || holder(&mut c, "lapsed").map_or(Ok(()), Err));
    kill(client, Signal::SIGCONT).unwrap();
    assert_eq!(wait_file(&term_file), "got", "the command got SIGTERM");
    let (code, stderr) = run.wait_stderr();
    assert_eq!(code, 7, "{stderr}");
    assert!(stderr.contains("the lease on lapsed is lost"), "{stderr}");
}

#[test]
fn r22_a_lease_that_cannot_be_renewed_before_it_runs_out_stops_the_command() {
    let s = renewing_server("");
    let dir = tempfile::tempdir().unwrap();
    let (ticket_file, term_file) = (dir.path().join("ticket"), dir.path().join("term"));
    let script = stoppable(&ticket_file, &term_file);
    let mut run = Run::start(
        leasehold(&s, &["lock", "unreachable", "--ttl", "4s", "--", "sh", "-c", &script]).stderr(Stdio::piped()),
    );
    wait_file(&ticket_file);
    // Every server process stops: connections are accepted by the kernel and never
    // answered, so every renewal times out.
    let mut stopped = vec![s.pid()];
    stopped.extend(s.children().into_iter().map(|(pid, _)| pid));
    for &pid in &stopped {
        signal_pid(pid, Signal::SIGSTOP);
    }
    let term = std::panic::catch_unwind(|| wait_file(&term_file));
    for &pid in &stopped {
        signal_pid(pid, Signal::SIGCONT);
    }
    assert_eq!(term.expect("the command got no SIGTERM"), "got");
    let (code, stderr) = run.wait_stderr();
    assert_eq!(code, 7, "{stderr}");
    assert!(stderr.contains("the lease on unreachable is lost (not renewed in time"), "{stderr}");
}

#[test]
fn r22_a_command_that_ignores_sigterm_is_killed_after_grace() {
    let s = renewing_server("");
    let dir = tempfile::tempdir().unwrap();
    let (ticket_file, term_file, alive_file) =
        (dir.path().join("ticket"), dir.path().join("term"), dir.path().join("alive"));
    // SIGTERM only writes down when it came (ns since the epoch); the command runs on.
    let script = format!(
        "trap 'date +%s%N > {term}' TERM; echo $LEASEHOLD_TICKET > {ticket}; \
         while true; do [ -e {term} ] && echo yes > {alive}; sleep 0.01; done",
        term = term_file.display(),
        ticket = ticket_file.display(),
        alive = alive_file.display()
    );
    let mut run = Run::start(&mut leasehold(
        &s,
        &["lock", "stubborn", "--ttl", "4s", "--grace", "1s", "--", "sh", "-c", &script],
    ));
    let ticket = wait_file(&ticket_file);
    let out = leasehold(&s, &["release", "stubborn", &ticket]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let term_ns: u128 = wait_file(&term_file).parse().unwrap();
    // SIGTERM did not end it, and SIGKILL did not come with it (the command writes this
    // within ms of SIGTERM; the grace is 1 s).
    wait_file(&alive_file);
    assert_eq!(run.wait(), 128 + 9, "the command was killed by SIGKILL");
    // SIGKILL came after --grace (1 s), not after the default 10 s: measured from the
    // command's own record of SIGTERM to now, which is after the kill. The bound, 9 s, leaves
    // 8 s for the client to act and this test to see it end (a few ms when idle; stalls of
    // seconds have been seen under load here), and is still short of the default.
    let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let took_ms = (now_ns - term_ns) / 1_000_000;
    assert!(took_ms < 9_000, "SIGKILL came {took_ms} ms after SIGTERM; --grace was 1 s");
}

#[test]
fn r22_key_and_leasehold_key_are_sent_and_a_missing_key_is_refused() {
    let keys = "[[auth.keys]]\nkey = \"lock-key-0001\"\nrole = \"lock\"\n";
    let s = renewing_server(keys);
    let dir = tempfile::tempdir().unwrap();
    let ran = dir.path().join("ran");
    let touch = format!("echo $LEASEHOLD_FENCE >> {}", ran.display());
    // --key, then LEASEHOLD_KEY: the lease is taken, the command runs, the lease is released
    // (the second run gets the lock, so the first let it go).
    let out = leasehold(&s, &["lock", "keyed", "--key", "lock-key-0001", "--", "sh", "-c", &touch]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = leasehold(&s, &["lock", "keyed", "--", "sh", "-c", &touch])
        .env("LEASEHOLD_KEY", "lock-key-0001")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = leasehold(&s, &["status", "keyed", "--json"]).env("LEASEHOLD_KEY", "lock-key-0001").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json, serde_json::json!({"name": "keyed", "free": true}), "released after each run");
    // Without a key, or with a wrong one: refused (exit 1, the server's 401), and the
    // command never runs.
    for key in [None, Some("wrong-key-0000")] {
        let mut cmd = leasehold(&s, &["lock", "keyed", "--", "sh", "-c", &touch]);
        if let Some(key) = key {
            cmd.env("LEASEHOLD_KEY", key);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key:?}: {stderr}");
        assert!(stderr.contains("refused the lock: 401 unauthorized"), "{key:?}: {stderr}");
        let out = leasehold(&s, &["status", "keyed"])
            .args(key.map(|k| vec!["--key", k]).unwrap_or_default())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "status {key:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("401 unauthorized"));
    }
    let fences = std::fs::read_to_string(&ran).unwrap();
    assert_eq!(fences.lines().count(), 2, "only the two runs with the key ran: {fences}");
}

#[test]
fn signals_reach_the_command_and_the_lease_is_released_when_it_ends() {
    let s = Server::start(&config("workers = 1", ""));
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let script =
        format!("trap 'exit 9' USR1; echo $LEASEHOLD_FENCE > {}; while true; do sleep 0.05; done", ready.display());
    let mut run = Run::start(&mut leasehold(&s, &["lock", "signalled", "--", "sh", "-c", &script]));
    let fence: u64 = wait_file(&ready).parse().unwrap();
    assert!(fence > 0);
    let mut c = Client::connect(s.addr).unwrap();
    assert_eq!(c.get("/v1/locks/signalled").unwrap().status, 200, "held while the command runs");
    kill(run.pid(), Signal::SIGUSR1).unwrap();
    assert_eq!(run.wait(), 9);
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
        (&["lock"][..], "the following required arguments were not provided: <NAME> <CMD>..."),
        (
            &["lock", "n", "--ttl", "soon", "--", "true"][..],
            "invalid value 'soon' for '--ttl <DURATION>': not a duration",
        ),
        (&["lock", "n", "--server", "ftp://h", "--", "true"][..], "expected http:// or https://"),
        (&["status", "--server", "https://h", "--cacert", "/nonexistent/ca.pem"][..], "cannot use the CA file"),
        (&["release", "n"][..], "the following required arguments were not provided: <TICKET>"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_leasehold")).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

/// Whom a [`Follower`] names as the leader.
enum Names {
    /// No one: there is no leader now.
    Nobody,
    /// This URL.
    Url(String),
    /// Itself (a stale node).
    Itself,
}

/// A node that is not the leader, as the command line sees one: it answers every request
/// 503 `not_leader`, naming a leader or no one, and counts what it was asked.
struct Follower {
    addr: std::net::SocketAddr,
    asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Follower {
    fn start(names: Names) -> Follower {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = std::sync::Arc::clone(&asked);
        let mut body = serde_json::json!({"error": "not_leader", "message": "this node does not lead"});
        match names {
            Names::Nobody => {}
            Names::Url(url) => body["leader"] = url.into(),
            Names::Itself => body["leader"] = format!("http://{addr}").into(),
        }
        let body = body.to_string();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().map_while(Result::ok) {
                // The whole request, head and body (closing with a body unread would reset
                // the connection under the answer).
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                let whole = |seen: &[u8]| {
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else { return false };
                    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                    let length = head.lines().find_map(|l| l.strip_prefix("content-length:")?.trim().parse().ok());
                    seen.len() >= end + 4 + length.unwrap_or(0)
                };
                while !whole(&seen) {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = write!(
                    conn,
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Follower { addr, asked }
    }

    fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A loopback address where nothing listens.
fn nobody() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[test]
fn r13_the_client_skips_a_server_it_cannot_reach_and_follows_not_leader_to_the_leader() {
    let s = Server::start(&config("workers = 1", ""));
    let follower = Follower::start(Names::Url(format!("http://{}", s.addr)));
    // A server list (docs/cluster.md): a node that is down, then a follower.
    let servers = format!("http://{},http://{}", nobody(), follower.addr);
    let out = leasehold(&s, &["status", "anything", "--json"]).env("LEASEHOLD_URL", &servers).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["free"], true, "the leader answered: {json}");
    assert_eq!(follower.asked(), 1);
    // A whole `lock` run: its first request finds the leader through the follower; every
    // later one (renewals, the release) goes straight to the leader.
    let out = leasehold(&s, &["lock", "followed", "--ttl", "2s", "--", "true"])
        .env("LEASEHOLD_URL", &servers)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(follower.asked(), 2, "only the first request of the run went to the follower");
    let mut c = Client::connect(s.addr).unwrap();
    let view = c.get("/v1/locks/followed").unwrap();
    assert!(view.status == 404 || view.json()["used"] == 0, "the lock was released on the leader");
}

#[test]
fn r13_with_no_leader_or_a_follower_naming_itself_the_client_reports_the_503() {
    let s = Server::start(&config("workers = 1", ""));
    let leaderless = Follower::start(Names::Nobody);
    let out = leasehold(&s, &["status", "x"]).env("LEASEHOLD_URL", format!("http://{}", leaderless.addr)).output();
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("503 not_leader"), "{stderr}");
    assert_eq!(leaderless.asked(), 1);
    // A stale node that names itself: asked once, not in a loop.
    let stale = Follower::start(Names::Itself);
    let out = leasehold(&s, &["status", "x"]).env("LEASEHOLD_URL", format!("http://{}", stale.addr)).output();
    assert_eq!(out.unwrap().status.code(), Some(1));
    assert_eq!(stale.asked(), 1);
    // A leader named that cannot be reached: the next server not asked yet is tried (it
    // knows no leader), and its 503 is the answer. Each server was asked once.
    let gone = format!("http://{}", nobody());
    let (a, b) = (Follower::start(Names::Url(gone)), Follower::start(Names::Nobody));
    let out = leasehold(&s, &["status", "x"])
        .env("LEASEHOLD_URL", format!("http://{},http://{}", a.addr, b.addr))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((a.asked(), b.asked()), (1, 1));
    // Every server down: 69, "cannot be reached" (README).
    let out = leasehold(&s, &["status", "x"])
        .env("LEASEHOLD_URL", format!("http://{},http://{}", nobody(), nobody()))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stderr));
}
