//! A real nginx (Debian's package, installed by `tests/deps.sh`) run by a test: in the
//! foreground, on free loopback ports, with an `http {}` block the test writes and every path
//! and log in a temporary directory of its own (none of the system's). Waits until nginx
//! accepts, stops its process group when dropped, and shows its error log when the test
//! failed. Also the site a waiting room guards ([`Nginx::waiting_room`]): the operator's
//! `contrib/nginx/waiting-room.conf` included unmodified, in front of a leasehold server and a
//! tiny origin. This module starts nothing else: the leasehold server is the test's.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::wait_for;

/// The nginx binary: on the PATH, or where Debian puts it (`/usr/sbin` is not on every
/// user's PATH). Panics with the way out when there is none.
pub fn binary() -> PathBuf {
    for candidate in ["nginx", "/usr/sbin/nginx"] {
        if Command::new(candidate).arg("-v").output().is_ok_and(|out| out.status.success()) {
            return PathBuf::from(candidate);
        }
    }
    panic!("nginx is not installed: this test runs a real nginx; install it with `sudo bash tests/deps.sh`")
}

/// The waiting room's locations, as an operator includes them (`contrib/nginx/`).
pub fn waiting_room_conf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/nginx/waiting-room.conf")
}

/// The access log's format: the port the request came in on (which server block), the
/// connection's serial number and its request count (which requests shared a connection),
/// then the request, its status, and the `X-Leasehold-Ticket` it carried (`-` when none).
pub const LOG_FORMAT: &str =
    "$server_port $connection $connection_requests $request_method $request_uri $status $http_x_leasehold_ticket";

/// One line of the access log (see [`LOG_FORMAT`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// The port of the server block that answered.
    pub port: u16,
    /// nginx's serial number of the client connection.
    pub connection: u64,
    /// The request's method.
    pub method: String,
    /// The request's URI as the client sent it (path and query).
    pub uri: String,
    /// The status nginx answered with.
    pub status: u16,
    /// The request's `X-Leasehold-Ticket` header; at the origin, the ticket the gate admitted.
    pub ticket: Option<String>,
}

/// A running nginx; stopped (its whole process group) when dropped.
pub struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    /// The loopback addresses it listens on, as many as asked for, in the order given to
    /// the configuration.
    pub addrs: Vec<SocketAddr>,
}

impl Nginx {
    /// Starts nginx with `files` (name, contents) written in its directory first and the
    /// `http {}` block `http(dir, addrs)` returns, given that directory and `listeners` free
    /// loopback addresses to listen on; waits until it accepts connections on each. The
    /// block is wrapped in the process settings and an `http {}` that already sets the access
    /// log ([`LOG_FORMAT`]) and the temporary paths.
    pub fn start(files: &[(&str, &str)], listeners: usize, http: impl Fn(&Path, &[SocketAddr]) -> String) -> Nginx {
        let binary = binary();
        let dir = tempfile::tempdir().unwrap();
        // When the test runs as root, nginx's worker runs as nobody: it must be able to
        // reach the temporary directories nginx makes here.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        for (name, contents) in files {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        // Ports that were free a moment ago; if another process takes one first, nginx fails
        // to start and other ones are tried.
        for _ in 0..3 {
            let addrs: Vec<SocketAddr> = (0..listeners)
                .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
                .collect::<Vec<_>>()
                .iter()
                .map(|l| l.local_addr().unwrap())
                .collect();
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, main_conf(dir.path(), &http(dir.path(), &addrs))).unwrap();
            let stderr = File::create(dir.path().join("stderr")).unwrap();
            let mut child = command(&binary, dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .process_group(0)
                .spawn()
                .expect("start nginx");
            let up = wait_for("nginx to accept connections or exit", || {
                if let Some(status) = child.try_wait().unwrap() {
                    return Ok(Err(status));
                }
                for addr in &addrs {
                    if let Err(e) = TcpStream::connect(addr) {
                        return Err((*addr, e.kind()));
                    }
                }
                Ok(Ok(()))
            });
            match up {
                Ok(()) => return Nginx { child, dir, addrs },
                Err(status) => {
                    let said = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
                    assert!(said.contains("Address already in use"), "nginx exited ({status}):\n{said}");
                }
            }
        }
        panic!("nginx found no free loopback ports in 3 tries");
    }

    /// The site a waiting room guards, as an operator would set it up: a front server on
    /// `addrs[0]` that sets `$leasehold_room` to `room` and includes
    /// `contrib/nginx/waiting-room.conf` unmodified, the upstream `leasehold` (the server at
    /// `leasehold`, kept connections) and the upstream `origin`: a second server block here on
    /// `addrs[1]` that answers every path with a small HTML page (`<h1 id="origin">`, the path
    /// in `id="path"`, the ticket it was sent in `id="ticket"`). Every request the origin
    /// answered is in [`Nginx::origin_requests`].
    pub fn waiting_room(room: &str, leasehold: SocketAddr) -> Nginx {
        let include = waiting_room_conf();
        Nginx::start(&[], 2, |_, addrs| waiting_room_http(room, leasehold, addrs[0], addrs[1], &include))
    }

    /// The first address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// What nginx wrote on its standard error (its error log).
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Every request in the access log, in the order nginx finished them.
    pub fn requests(&self) -> Vec<Logged> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines().map(parse_logged).collect()
    }

    /// The requests answered on `addrs[1]`: under [`Nginx::waiting_room`], those that reached
    /// the origin.
    pub fn origin_requests(&self) -> Vec<Logged> {
        let port = self.addrs[1].port();
        self.requests().into_iter().filter(|r| r.port == port).collect()
    }

    /// nginx's directory (its configuration is `nginx.conf` there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master and its worker are one process group of their own.
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("nginx's error log:\n{}", self.stderr());
        }
    }
}

/// `nginx -t` on the configuration [`Nginx::start`] would run with the same arguments (the
/// addresses are free ports, not listened on): Ok with what nginx said when it passes, Err
/// with it when not.
pub fn check(
    files: &[(&str, &str)],
    listeners: usize,
    http: impl Fn(&Path, &[SocketAddr]) -> String,
) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).unwrap();
    }
    let addrs: Vec<SocketAddr> =
        (0..listeners).map(|_| TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()).collect();
    std::fs::write(dir.path().join("nginx.conf"), main_conf(dir.path(), &http(dir.path(), &addrs))).unwrap();
    let out = command(&binary(), dir.path()).arg("-t").stdin(Stdio::null()).output().expect("run nginx -t");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(said)
    } else {
        Err(said)
    }
}

/// The `http {}` block of [`Nginx::waiting_room`] (also for [`check`]): front on `listen`,
/// the origin on `origin`, `include` as the waiting room's locations.
pub fn waiting_room_http(
    room: &str,
    leasehold: SocketAddr,
    listen: SocketAddr,
    origin: SocketAddr,
    include: &Path,
) -> String {
    let include = include.display();
    format!(
        "upstream leasehold {{
        server {leasehold};
        keepalive 16;
    }}
    upstream origin {{
        server {origin};
        keepalive 16;
    }}
    server {{
        listen {listen};
        set $leasehold_room {room};
        include {include};
    }}
    server {{
        listen {origin};
        location / {{
            default_type text/html;
            return 200 '<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>The origin</title></head><body><main><h1 id=\"origin\">The origin</h1><p>Path: <code id=\"path\">$uri</code></p><p>Ticket: <code id=\"ticket\">$http_x_leasehold_ticket</code></p></main></body></html>';
        }}
    }}"
    )
}

/// nginx run in the foreground on `dir`'s `nginx.conf`, logging to its standard error.
fn command(binary: &Path, dir: &Path) -> Command {
    let prefix = format!("{}/", dir.display());
    let globals = format!("daemon off; pid {}/nginx.pid; error_log stderr;", dir.display());
    let mut cmd = Command::new(binary);
    cmd.args(["-p", &prefix, "-c"]).arg(dir.join("nginx.conf")).args(["-e", "stderr", "-g", &globals]);
    cmd
}

/// The whole configuration: one worker, the access log and every temporary path under `dir`,
/// and `http` inside the `http {}` block.
fn main_conf(dir: &Path, http: &str) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    log_format lease '{LOG_FORMAT}';
    access_log {d}/access.log lease;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    {http}
}}
"
    )
}

fn parse_logged(line: &str) -> Logged {
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields.len(), 7, "an access log line not in the format {LOG_FORMAT:?}: {line:?}");
    Logged {
        port: fields[0].parse().unwrap(),
        connection: fields[1].parse().unwrap(),
        method: fields[3].to_string(),
        uri: fields[4].to_string(),
        status: fields[5].parse().unwrap(),
        ticket: (fields[6] != "-").then(|| fields[6].to_string()),
    }
}
