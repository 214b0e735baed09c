//! Test support: start the real binary (as built, or a copy of it with another build
//! stamp, [`stamped_binary`]) with a test-owned `NOTIFY_SOCKET`, wait for its notifications
//! (never by sleeping), find its children, and talk HTTP to it. Every wait for a condition
//! goes through [`wait_for`]/[`wait_until`]: a deadline of [`DEADLINE`] and a short backoff
//! between looks, never a busy loop and never a fixed sleep.

pub mod browser;
pub mod certs;
pub mod etcd;
pub mod http;
pub mod load;
pub mod nginx;
pub mod nodes;
pub mod sse;
pub mod visitor;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use leasehold::sys::process::wait_for_exit;
use nix::sys::signal::Signal;

/// Generous deadline for anything a healthy server does (CI machines can be slow).
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A temporary directory for a server's data: in memory (`/dev/shm`) when that is a tmpfs
/// with a gigabyte free, else the system's temporary directory. A keeper syncs its journal
/// before it answers; on a disk shared with builds, one sync can wait tens of seconds for
/// other files' writeback (ext4 commits them together), past every deadline here, and
/// every server of the run stalls at once. What these tests check of durability (nothing
/// acknowledged is lost when a process dies) rests on the page cache, not on the disk.
pub fn scratch() -> tempfile::TempDir {
    const ROOM_BYTES: u64 = 1 << 30;
    let shm = Path::new("/dev/shm");
    let roomy = nix::sys::statvfs::statvfs(shm)
        .is_ok_and(|s| s.blocks_available().saturating_mul(s.fragment_size()) >= ROOM_BYTES);
    if roomy {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("temp dir")
}

/// Every file of `dir` with its bytes.
pub fn contents(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().to_string_lossy().to_string(), std::fs::read(e.path()).unwrap())
        })
        .collect()
}

/// The journal segments (`journal-N.log`) of the data directory `dir`, oldest first.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("journal-"))
        .collect();
    segments.sort();
    segments
}

/// `pid name state wchan` of `pids`, one per line: what each process was doing when a wait
/// ran out (`T` stopped, `D` in the kernel, `wchan` where).
pub fn processes(pids: &[i32]) -> String {
    let mut out = String::new();
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let (name, state) = stat
            .split_once(" (")
            .and_then(|(_, rest)| rest.rsplit_once(") "))
            .map_or(("?", "gone"), |(name, after)| (name, after.split(' ').next().unwrap_or("?")));
        let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
        out.push_str(&format!("{pid} {name} {state} {wchan}\n"));
    }
    out
}

/// A copy of the binary under test in `dir` (as `leasehold-BUILD`, mode 0755) whose build
/// stamp says `build` (see `leasehold::version`); returns its path. Rename it to where a
/// server looks for its binary.
pub fn stamped_binary(dir: &Path, build: &str) -> PathBuf {
    let mut bytes = std::fs::read(env!("CARGO_BIN_EXE_leasehold")).expect("read the binary under test");
    leasehold::version::stamp(&mut bytes, build).unwrap_or_else(|e| panic!("stamp {build:?}: {e}"));
    let path = dir.join(format!("leasehold-{build}"));
    std::fs::write(&path, bytes).expect("write the stamped binary");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod 0755");
    path
}

/// First pause between two looks at a condition that does not hold yet.
const FIRST_PAUSE: Duration = Duration::from_millis(1);
/// Longest pause between two looks: short against every wait a test makes, long enough
/// that a waiting test leaves the two cores to the server it waits for.
const MAX_PAUSE: Duration = Duration::from_millis(50);

/// Looks at `probe` until it returns `Ok`, with a pause doubling from 1 ms to 50 ms between
/// looks; returns the value. After [`DEADLINE`], panics naming `what` and the last `Err`
/// (what was seen instead).
pub fn wait_for<T, E: std::fmt::Debug>(what: &str, probe: impl FnMut() -> Result<T, E>) -> T {
    wait_for_deadline(what, DEADLINE, probe)
}

/// [`wait_for`] a condition that takes `within` by design (a run paced at one grant a
/// second, a silence of 30 s): the deadline is that time plus [`DEADLINE`].
pub fn wait_for_within<T, E: std::fmt::Debug>(what: &str, within: Duration, probe: impl FnMut() -> Result<T, E>) -> T {
    wait_for_deadline(what, within + DEADLINE, probe)
}

fn wait_for_deadline<T, E: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + within;
    let mut pause = FIRST_PAUSE;
    loop {
        let seen = match probe() {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "{what}: not within {within:?}; last seen: {seen:?}");
        std::thread::sleep(pause.min(left));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

/// Waits until `condition` holds, as [`wait_for`] does; panics naming `what` after
/// [`DEADLINE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(what, || if condition() { Ok(()) } else { Err("the condition was false") })
}

/// Given as the value of `JOURNAL_STREAM` to [`Server::start_with_env`], stands for the
/// `DEVICE:INODE` of the pipe the server's stderr is: the server then believes systemd
/// connected its stderr to the journal, and writes as it would there. (The pipe is made
/// here, so its `fstat` here is the stderr the server inherits.)
pub const STDERR_STREAM: &str = "<the dev:ino of the server's stderr>";

/// A running `leasehold serve`.
pub struct Server {
    child: Child,
    /// The first listening address.
    pub addr: SocketAddr,
    notify: UnixDatagram,
    /// Every notification received, in order.
    pub notes: Vec<String>,
    log: Arc<(Mutex<String>, Condvar)>,
    /// The configuration file (rewrite it, then SIGHUP, to reload).
    pub config_path: PathBuf,
    dir: tempfile::TempDir,
}

/// A configuration with `extra` TOML appended to a `[server]` section that listens on a
/// free loopback port; `extra` may continue the `[server]` section.
pub fn config(server_extra: &str, rest: &str) -> String {
    format!("[server]\nlisten = [\"127.0.0.1:0\"]\nlog_level = \"debug\"\n{server_extra}\n{rest}\n")
}

impl Server {
    /// Starts the server on `config_text` and waits for `READY=1`.
    pub fn start(config_text: &str) -> Server {
        Self::start_with_env(config_text, &[])
    }

    /// Starts the server with extra environment variables and waits for `READY=1`.
    pub fn start_with_env(config_text: &str, env: &[(&str, &str)]) -> Server {
        Self::launch(config_text, env, true)
    }

    /// Starts the program at `binary` (for example a [`stamped_binary`], renamed) as the
    /// master, named by that path as given, and waits for `READY=1`.
    pub fn start_from(binary: &Path, config_text: &str) -> Server {
        let mut server = Self::spawn_from(binary, config_text, &[], true);
        server.wait_serving(true);
        server
    }

    /// Starts the server with no `NOTIFY_SOCKET` at all (as `make run` does) and waits for
    /// its "serving on" log line.
    pub fn start_without_systemd(config_text: &str) -> Server {
        Self::launch(config_text, &[], false)
    }

    /// Starts the server and returns at once (for a start that is meant to fail).
    pub fn spawn_only(config_text: &str) -> Server {
        Self::spawn(config_text, &[], true)
    }

    fn launch(config_text: &str, env: &[(&str, &str)], systemd: bool) -> Server {
        let mut server = Self::spawn(config_text, env, systemd);
        server.wait_serving(systemd);
        server
    }

    fn spawn(config_text: &str, env: &[(&str, &str)], systemd: bool) -> Server {
        Self::spawn_from(Path::new(env!("CARGO_BIN_EXE_leasehold")), config_text, env, systemd)
    }

    fn spawn_from(binary: &Path, config_text: &str, env: &[(&str, &str)], systemd: bool) -> Server {
        let dir = scratch();
        let config_path = dir.path().join("leasehold.toml");
        let text = format!("{config_text}\n");
        let text = if text.contains("data_dir") {
            text
        } else {
            text.replacen("[server]\n", &format!("[server]\ndata_dir = {:?}\n", dir.path().join("data")), 1)
        };
        std::fs::write(&config_path, text).expect("write config");
        let notify_path = dir.path().join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind notify socket");
        let mut cmd = Command::new(binary);
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy().to_string();
            if name.starts_with("LEASEHOLD_") || name.starts_with("RESOURCE_") || name.starts_with("WATCHDOG_") {
                cmd.env_remove(name);
            }
        }
        // The runner's own journal stream, if any, is not the server's stderr.
        cmd.env_remove("JOURNAL_STREAM");
        cmd.arg("serve").arg("--config").arg(&config_path);
        if systemd {
            cmd.env("NOTIFY_SOCKET", &notify_path);
        } else {
            cmd.env_remove("NOTIFY_SOCKET");
        }
        // The pipe is made here rather than by `Stdio::piped`, so its device and inode are
        // known before the server starts (for `STDERR_STREAM`).
        let (stderr, stderr_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("stderr pipe");
        let stat = nix::sys::stat::fstat(&stderr_end).expect("fstat of the stderr pipe");
        let stream = format!("{}:{}", stat.st_dev, stat.st_ino);
        cmd.envs(env.iter().map(|&(k, v)| (k, if v == STDERR_STREAM { stream.as_str() } else { v })));
        cmd.stdout(Stdio::null()).stderr(Stdio::from(stderr_end));
        // A binary the test just wrote can be busy for a moment: another test thread that
        // forked meanwhile holds a copy of the descriptor it was written through until its
        // child's exec closes it.
        let busy = nix::errno::Errno::ETXTBSY as i32;
        let child = wait_for(&format!("start {}", binary.display()), || match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(busy) => Err(e),
            started => Ok(started.unwrap_or_else(|e| panic!("start {}: {e}", binary.display()))),
        });
        // Our copy of the writing end goes, so the reader sees the end once the server's do.
        drop(cmd);
        let log = Arc::new((Mutex::new(String::new()), Condvar::new()));
        let stderr = std::fs::File::from(stderr);
        let sink = Arc::clone(&log);
        std::thread::spawn(move || {
            // Read to the end whatever comes: a line that is not UTF-8 (lines of several
            // processes can interleave inside one pipe) is kept lossily, never a reason to
            // stop reading, which would leave the server blocked on a full pipe.
            let mut reader = BufReader::new(stderr);
            let mut bytes = Vec::new();
            loop {
                bytes.clear();
                match reader.read_until(b'\n', &mut bytes) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                let line = String::from_utf8_lossy(&bytes);
                let line = line.trim_end_matches('\n');
                if std::env::var_os("LEASEHOLD_TEST_LOG").is_some() {
                    eprintln!("{line}");
                }
                let (text, grew) = &*sink;
                // A test that panicked while it looked at the log does not stop the reading.
                let mut text = text.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                text.push_str(line);
                text.push('\n');
                grew.notify_all();
            }
        });
        Server { child, addr: "0.0.0.0:0".parse().unwrap(), notify, notes: Vec::new(), log, config_path, dir }
    }

    /// Waits for `READY=1` (or, without systemd, the log line) and learns the address from
    /// the "serving on ADDRESS" it carries.
    fn wait_serving(&mut self, systemd: bool) {
        let text = if systemd {
            self.wait_note("READY=1")
        } else {
            self.wait_log("serving on ");
            self.log()
        };
        self.addr = text
            .split("serving on ")
            .nth(1)
            .and_then(|rest| rest.split([' ', ';', ',']).next())
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no address in {text:?}"));
    }

    /// Waits until exactly `n` requests wait in queues for a grant (by `/metrics`, read with
    /// `key` when keys are configured).
    pub fn wait_waiting_requests(&self, n: usize, key: Option<&str>) {
        let headers: Vec<(&str, &str)> = key.map(|k| vec![("x-api-key", k)]).unwrap_or_default();
        let needle = format!("leasehold_waiting_requests {n}\n");
        wait_for(&format!("{n} waiting requests"), || {
            let metrics =
                String::from_utf8_lossy(&http::once(self.addr, "GET", "/metrics", &headers, "").body).to_string();
            if metrics.contains(&needle) {
                return Ok(());
            }
            Err(metrics.lines().find(|l| l.starts_with("leasehold_waiting_requests ")).map(str::to_string))
        });
    }

    /// The data directory the harness chose (inside the test's temporary directory).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Waits for a notification containing `want` (after those already seen); returns it.
    pub fn wait_note(&mut self, want: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        let mut buf = vec![0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "no notification {want:?} within {DEADLINE:?}; got {:?}\nprocesses:\n{}log:\n{}",
                self.notes,
                self.processes(),
                self.log()
            );
            self.notify.set_read_timeout(Some(left)).unwrap();
            if let Ok(n) = self.notify.recv(&mut buf) {
                let note = String::from_utf8_lossy(&buf[..n]).to_string();
                self.notes.push(note.clone());
                if note.contains(want) {
                    return note;
                }
            }
        }
    }

    /// Waits for a notification with a line that starts with `prefix` (after those already
    /// seen), for example `MAINPID=`; returns that line.
    pub fn wait_note_line(&mut self, prefix: &str) -> String {
        loop {
            let note = self.wait_note(prefix);
            if let Some(line) = note.lines().find(|l| l.starts_with(prefix)) {
                return line.to_string();
            }
        }
    }

    /// Waits until the status line says every worker is ready and the keeper is up.
    pub fn wait_all_ready(&mut self, workers: usize) {
        let want = format!("{workers}/{workers} workers ready; keeper up");
        if self.notes.iter().rev().find(|n| n.contains("STATUS=")).is_some_and(|n| n.contains(&want)) {
            return;
        }
        self.wait_note(&want);
    }

    /// Reloads with SIGHUP (the configuration file already rewritten) and returns once the
    /// reload is done (`RELOADING=1`, then `READY=1` with `workers` ready) and every worker
    /// of before has exited: until an old worker has drained it may still take a connection
    /// and answer it with the old configuration.
    pub fn reload_and_wait_old_workers_gone(&mut self, workers: usize) {
        let old = self.worker_pids();
        self.signal(Signal::SIGHUP);
        self.wait_note("RELOADING=1");
        self.wait_note("READY=1");
        self.wait_all_ready(workers);
        for pid in old {
            assert!(wait_for_exit(pid, DEADLINE).unwrap(), "the old worker {pid} did not drain");
        }
    }

    /// [`processes`] of the master and its children.
    pub fn processes(&self) -> String {
        let mut pids = vec![self.pid()];
        pids.extend(self.children().into_iter().map(|(pid, _)| pid));
        processes(&pids)
    }

    /// The master's pid.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to the master.
    pub fn signal(&self, signal: Signal) {
        signal_pid(self.pid(), signal);
    }

    /// The master's children as (pid, name).
    pub fn children(&self) -> Vec<(i32, String)> {
        children_of(self.pid())
    }

    /// Pids of the workers.
    pub fn worker_pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> =
            self.children().into_iter().filter(|(_, n)| n.starts_with("lh-worker-")).map(|(p, _)| p).collect();
        pids.sort_unstable();
        pids
    }

    /// The keeper's pid.
    pub fn keeper_pid(&self) -> i32 {
        self.children().into_iter().find(|(_, n)| n == "lh-keeper").map(|(p, _)| p).expect("a keeper")
    }

    /// The courier's pid, once it runs.
    pub fn courier_pid(&self) -> Option<i32> {
        self.children().into_iter().find(|(_, n)| n == "lh-courier").map(|(p, _)| p)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.0.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str) {
        self.wait_log_count(needle, 1);
    }

    /// Waits until the log contains `needle` at least `times` times.
    pub fn wait_log_count(&self, needle: &str, times: usize) {
        let (text, grew) = &*self.log;
        let deadline = Instant::now() + DEADLINE;
        let mut text = text.lock().unwrap();
        while text.matches(needle).count() < times {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{needle:?} never logged; processes:\n{}log:\n{text}", self.processes());
            text = grew.wait_timeout(text, left).unwrap().0;
        }
    }

    /// Waits for the master to exit; returns its status and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        assert!(
            wait_for_exit(self.pid(), timeout).expect("pidfd"),
            "the master did not exit within {timeout:?}\nlog:\n{}",
            self.log()
        );
        let status = self.child.wait().expect("wait");
        (status, start.elapsed())
    }
}

/// Lines of a server's log a failing test shows (its last ones).
const LOG_LINES_ON_FAILURE: usize = 80;

impl Drop for Server {
    fn drop(&mut self) {
        // A test that failed shows what its servers said last (the test harness prints a
        // failing test's output only), so a failure seen once in CI can be read afterwards.
        if std::thread::panicking() && std::env::var_os("LEASEHOLD_TEST_LOG").is_none() {
            let log = self.log.0.lock().map(|t| t.clone()).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_LINES_ON_FAILURE)..];
            eprintln!(
                "--- the last {} lines of the log of the server at {} ---\n{}",
                tail.len(),
                self.addr,
                tail.join("\n")
            );
        }
        let children = self.children();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for (pid, _) in children {
            signal_pid(pid, Signal::SIGKILL);
        }
    }
}

/// Sends a signal to any process.
pub fn signal_pid(pid: i32, signal: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

/// The children of `parent` as (pid, name), from `/proc`.
pub fn children_of(parent: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return out };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the parenthesised name: state, ppid, …
        let Some(after) = stat.rsplit_once(") ").map(|(_, a)| a) else { continue };
        let mut fields = after.split(' ');
        let state = fields.next().unwrap_or("");
        let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(parent) && state != "Z" {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string();
            out.push((pid, name));
        }
    }
    out
}

/// The child of `server` that holds the server side of the loopback connection whose
/// client end is bound to `client`, as (pid, name): found through `/proc/net/tcp` inodes.
pub fn holder_of(server: &Server, client: SocketAddr) -> Option<(i32, String)> {
    let hex_port = |field: &str| field.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() > 9 && hex_port(f[1]) == Some(server.addr.port()) && hex_port(f[2]) == Some(client.port()))
            .then(|| f[9].to_string())
    })?;
    let wanted = format!("socket:[{inode}]");
    server.children().into_iter().find(|(pid, _)| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy() == wanted))
    })
}
