//! The command line through a TLS-terminating nginx on loopback, as an operator would put
//! one in front of leasehold: a CA and a certificate for 127.0.0.1 made here with rcgen;
//! nginx run by the test (`support::nginx`) with the TLS configuration written here,
//! proxying HTTP/1.1 to a real server over kept upstream connections. `leasehold lock
//! --server https://… --cacert CA` holds a lease for several TTLs, renewing it through nginx
//! over one kept connection, and releases it; the CA comes from `LEASEHOLD_CACERT` as well,
//! and without it the CLI says how to trust it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::client::{assert_renewed_for_3_ttls, holder, wait_file, Run};
use crate::support::certs::{Authority, Cert};
use crate::support::http::Client;
use crate::support::nginx::Nginx;
use crate::support::{config, Server};

/// A CA of the test's own (its certificate, PEM) and a server certificate for 127.0.0.1 it
/// signed, with its key (PEM).
fn certificates() -> (String, String, String) {
    let ca = Authority::new("leasehold proxy test CA");
    let Cert { cert, key } = ca.issue("127.0.0.1", &["127.0.0.1"]);
    (ca.pem, cert, key)
}

/// nginx's `http {}` block: TLS on `listen` with the certificate and key files in `dir`,
/// HTTP/1.1 with kept connections to `upstream`.
fn tls_http(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "upstream leasehold {{
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
    }}"
    )
}

/// `leasehold ARGS…` with nothing from the test's own environment.
pub(crate) fn leasehold(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    cmd.args(args)
        .env_remove("LEASEHOLD_URL")
        .env_remove("LEASEHOLD_KEY")
        .env_remove("LEASEHOLD_CACERT")
        .stdin(Stdio::null());
    cmd
}

/// `leasehold lock NAME --server SERVER --cacert CA --ttl 2s` running a command that lasts
/// until told to stop: checks through `plain` (the server's own plain port, by the server's
/// clock) that the same lease is held and renewed for 3 TTLs, stops the command, and checks
/// that it exited 0 (else fails with `context()`) and released the lock.
pub(crate) fn cli_holds_a_renewed_lease(
    server: &str,
    ca_path: &str,
    name: &str,
    plain: SocketAddr,
    work: &Path,
    context: impl Fn() -> String,
) {
    const TTL_MS: u64 = 2_000;
    let (fence_file, stop_file) = (work.join(format!("{name}.fence")), work.join(format!("{name}.stop")));
    let script = format!(
        "echo $LEASEHOLD_FENCE > {}; while [ ! -e {} ]; do sleep 0.02; done",
        fence_file.display(),
        stop_file.display()
    );
    let mut run = Run::start(&mut leasehold(&[
        "lock", name, "--server", server, "--cacert", ca_path, "--ttl", "2s", "--", "sh", "-c", &script,
    ]));
    let fence: u64 = wait_file(&fence_file).parse().unwrap();
    // The same lease (the same fence) all along for 3 TTLs, never more than one TTL
    // ahead: renewed, not granted once for long.
    let mut c = Client::connect(plain).unwrap();
    assert_renewed_for_3_ttls(&mut c, name, fence, TTL_MS);
    std::fs::write(&stop_file, "").unwrap();
    assert_eq!(run.wait(), 0, "{}", context());
    assert_eq!(holder(&mut c, name), None, "released when the command ended");
}

#[test]
fn through_a_tls_terminating_nginx_the_cli_locks_renews_over_one_connection_and_releases() {
    // Not synced: renewals every 667 ms must not wait on a busy disk (see client.rs).
    let s = Server::start(&config("workers = 1", "[journal]\nfsync = \"never\"\n"));
    let (ca, cert, key) = certificates();
    let nginx =
        Nginx::start(&[("cert.pem", &cert), ("key.pem", &key)], 1, |dir, addrs| tls_http(dir, addrs[0], s.addr));
    let work = tempfile::tempdir().unwrap();
    let ca_file = work.path().join("ca.pem");
    std::fs::write(&ca_file, &ca).unwrap();
    let (server, ca_path) = (format!("https://{}", nginx.addr()), ca_file.display().to_string());

    // Not trusting the private CA: refused before anything is sent, saying how to trust it.
    let out = leasehold(&["status", "tls-job", "--server", &server]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(stderr.contains("TLS handshake failed") && stderr.contains("--cacert"), "{stderr}");

    // A command that lasts several TTLs, holding a 2 s lease renewed every 667 ms.
    cli_holds_a_renewed_lease(&server, &ca_path, "tls-job", s.addr, work.path(), || {
        format!("nginx said:\n{}", nginx.stderr())
    });

    // Every call of the run went through nginx, over one TLS connection: the acquire, the
    // renewals, the release.
    let calls: Vec<(u64, String, String)> =
        nginx.requests().into_iter().filter(|r| r.method == "POST").map(|r| (r.connection, r.method, r.uri)).collect();
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
