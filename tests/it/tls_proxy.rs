//! The command line through a TLS-terminating nginx on loopback, as an operator would put
//! one in front of leasehold: a CA and a certificate for 127.0.0.1 made here with rcgen;
//! nginx (Debian's package, installed by `tests/deps.sh`) run by the test in the foreground
//! with a configuration written here, on a free loopback port, proxying HTTP/1.1 to a real
//! server over kept upstream connections. `leasehold lock --server https://… --cacert CA`
//! holds a lease for several TTLs, renewing it through nginx over one kept connection, and
//! releases it; the CA comes from `LEASEHOLD_CACERT` as well, and without it the CLI says
//! how to trust it.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::client::{assert_renewed_for_3_ttls, holder, wait_file, Run};
use crate::support::http::Client;
use crate::support::{config, wait_for, Server};

/// A CA of the test's own (its certificate, PEM) and a server certificate for 127.0.0.1 it
/// signed, with its key (PEM).
fn certificates() -> (String, String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, "leasehold proxy test CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_key = KeyPair::generate().unwrap();
    let ca = params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(params, ca_key);
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    let key = KeyPair::generate().unwrap();
    (ca, server.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
}

/// The nginx binary: on the PATH, or where Debian puts it (`/usr/sbin` is not on every
/// user's PATH). Panics with the way out when there is none.
fn nginx_binary() -> PathBuf {
    for candidate in ["nginx", "/usr/sbin/nginx"] {
        if Command::new(candidate).arg("-v").output().is_ok_and(|out| out.status.success()) {
            return PathBuf::from(candidate);
        }
    }
    panic!("nginx is not installed: this test runs a real nginx in front of the server; install it with `sudo bash tests/deps.sh`")
}

/// The `log_format` of the access log: the connection's serial number first, so the test
/// can tell which requests shared a connection.
const LOG_FORMAT: &str = "$connection $connection_requests $request_method $request_uri $status";

/// A running nginx that terminates TLS on `addr` and proxies to a leasehold server; stopped
/// (its whole process group) when dropped.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Nginx {
    /// Starts nginx in front of `upstream` with `cert`/`key` and waits until it accepts
    /// connections.
    fn start(upstream: SocketAddr, cert: &str, key: &str) -> Nginx {
        let binary = nginx_binary();
        let dir = tempfile::tempdir().unwrap();
        // When the test runs as root, nginx's worker runs as nobody: it must be able to
        // reach the temporary directories nginx makes here.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
        std::fs::write(dir.path().join("key.pem"), key).unwrap();
        // A port that was free a moment ago; if another process takes it first, nginx
        // fails to start and another one is tried.
        for _ in 0..3 {
            let addr = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
            let conf = dir.path().join("nginx.conf");
            std::fs::write(&conf, nginx_conf(dir.path(), addr, upstream)).unwrap();
            let stderr = File::create(dir.path().join("stderr")).unwrap();
            let prefix = format!("{}/", dir.path().display());
            let globals = format!("daemon off; pid {}/nginx.pid; error_log stderr;", dir.path().display());
            let mut child = Command::new(&binary)
                .args(["-p", &prefix, "-c"])
                .arg(&conf)
                .args(["-e", "stderr", "-g", &globals])
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
                TcpStream::connect(addr).map(|_| Ok(())).map_err(|e| e.kind())
            });
            match up {
                Ok(()) => return Nginx { child, dir, addr },
                Err(status) => {
                    let said = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
                    assert!(said.contains("Address already in use"), "nginx exited ({status}):\n{said}");
                }
            }
        }
        panic!("nginx found no free loopback port in 3 tries");
    }

    /// What nginx wrote on its standard error.
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// The access log's lines as (connection serial, method, URI).
    fn requests(&self) -> Vec<(u64, String, String)> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        log.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                assert_eq!(fields.len(), 5, "an access log line not in the format {LOG_FORMAT:?}: {line:?}");
                (fields[0].parse().unwrap(), fields[2].to_string(), fields[3].to_string())
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // The master and its worker are one process group of their own.
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// nginx's configuration: TLS on `listen` with the files in `dir`, HTTP/1.1 with kept
/// connections to `upstream`, every path and log under `dir` (none of the system's).
fn nginx_conf(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "worker_processes 1;
events {{ worker_connections 64; }}
http {{
    log_format lease '{LOG_FORMAT}';
    access_log {d}/access.log lease;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream leasehold {{
        server {upstream};
        keepalive 4;
    }}
    server {{
        listen {listen} ssl;
        ssl_certificate {d}/cert.pem;
        ssl_certificate_key {d}/key.pem;
        location / {{
            proxy_pass http://leasehold;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
        }}
    }}
}}
"
    )
}

/// `leasehold ARGS…` with nothing from the test's own environment.
fn leasehold(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    cmd.args(args)
        .env_remove("LEASEHOLD_URL")
        .env_remove("LEASEHOLD_KEY")
        .env_remove("LEASEHOLD_CACERT")
        .stdin(Stdio::null());
    cmd
}

#[test]
fn through_a_tls_terminating_nginx_the_cli_locks_renews_over_one_connection_and_releases() {
    // Not synced: renewals every 667 ms must not wait on a busy disk (see client.rs).
    let s = Server::start(&config("workers = 1", "[journal]\nfsync = \"never\"\n"));
    let (ca, cert, key) = certificates();
    let nginx = Nginx::start(s.addr, &cert, &key);
    let work = tempfile::tempdir().unwrap();
    let ca_file = work.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let (server, ca_path) = (format!("https://{}", nginx.addr), ca_file.display().to_string());

    // Not trusting the private CA: refused before anything is sent, saying how to trust it.
    let out = leasehold(&["status", "tls-job", "--server", &server]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("TLS handshake failed") && stderr.contains("--cacert"), "{stderr}");

    // A command that lasts several TTLs, holding a 2 s lease renewed every 667 ms.
    const TTL_MS: u64 = 2_000;
    let (fence_file, stop_file) = (work.path().join("fence"), work.path().join("stop"));
    let script = format!(
        "echo $LEASEHOLD_FENCE > {}; while [ ! -e {} ]; do sleep 0.02; done",
        fence_file.display(),
        stop_file.display()
    );
    let mut run = Run::start(&mut leasehold(&[
        "lock", "tls-job", "--server", &server, "--cacert", &ca_path, "--ttl", "2s", "--", "sh", "-c", &script,
    ]));
    let fence: u64 = wait_file(&fence_file).parse().unwrap();
    // Watched on the server itself, by its clock: the same lease (the same fence) all along
    // for 3 TTLs, never more than one TTL ahead: renewed, not granted once for long.
    let mut c = Client::connect(s.addr).unwrap();
    assert_renewed_for_3_ttls(&mut c, "tls-job", fence, TTL_MS);
    std::fs::write(&stop_file, "").unwrap();
    assert_eq!(run.wait(), 0, "nginx said:\n{}", nginx.stderr());
    assert_eq!(holder(&mut c, "tls-job"), None, "released when the command ended");

    // Every call of the run went through nginx, over one TLS connection: the acquire, the
    // renewals, the release.
    let calls: Vec<(u64, String, String)> =
        nginx.requests().into_iter().filter(|(_, method, _)| method == "POST").collect();
    let renewals = calls.iter().filter(|(_, _, uri)| uri == "/v1/locks/tls-job/renew").count();
    assert!(renewals >= 3, "{renewals} renewals in 3 TTLs: {calls:?}");
    assert_eq!(calls.first().map(|c| c.2.as_str()), Some("/v1/locks/tls-job/acquire"), "{calls:?}");
    assert_eq!(calls.last().map(|c| c.2.as_str()), Some("/v1/locks/tls-job/release"), "{calls:?}");
    let connections: std::collections::BTreeSet<u64> = calls.iter().map(|c| c.0).collect();
    assert_eq!(connections.len(), 1, "one kept connection for the whole run: {calls:?}");

    // The CA from the environment instead of --cacert.
    let out = leasehold(&["status", "tls-job", "--json", "--server", &server])
        .env("LEASEHOLD_CACERT", &ca_file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json, serde_json::json!({"name": "tls-job", "free": true}));
}
