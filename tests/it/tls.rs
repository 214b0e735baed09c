//! TLS on leasehold's own port (`[tls]`, docs/operations.md "TLS"), end to end with the real
//! binary: a CA of the test's own (rcgen), a server certificate for 127.0.0.1, client
//! certificates; rustls as the client (the support client over TLS), `openssl s_client`
//! for protocol and cipher checks, and the CLI with `--cacert`.
//!
//! What the documentation promises and these check: acquire, renew, release, a long-poll
//! and keep-alive over TLS in both dispatch modes, the plain port unchanged beside it; TLS
//! 1.0 and 1.1 and weak ciphers refused, 1.2 and 1.3 accepted; garbage closes the
//! connection, plain HTTP gets a clear 400; a client certificate from the configured CA
//! maps to its role and prefix, an unmapped one grants nothing, one from another CA fails
//! the handshake; a reload swaps the certificate under 8 keep-alive clients with no failed
//! request, and a bad new certificate refuses the reload; the CLI locks and renews over TLS.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::support::certs::{Authority as Ca, Cert};
use crate::support::http::{Client, Reply};
use crate::tls_proxy::{cli_holds_a_renewed_lease, leasehold};
use leasehold::sys::process::wait_for_exit;

use crate::support::{config, wait_for, Server, DEADLINE};

/// The server's TLS files, written in a directory the test keeps.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(server: &Cert, client_ca: Option<&Ca>) -> Files {
        let files = Files { dir: tempfile::tempdir().unwrap() };
        files.write(server);
        if let Some(ca) = client_ca {
            std::fs::write(files.path("clients-ca.pem"), &ca.pem).unwrap();
        }
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// (Re)writes the certificate and key files.
    fn write(&self, server: &Cert) {
        std::fs::write(self.path("cert.pem"), &server.cert).unwrap();
        std::fs::write(self.path("key.pem"), &server.key).unwrap();
    }

    /// The `[tls]` section: a TLS listener on a free loopback port with these files, and
    /// `extra` keys.
    fn section(&self, extra: &str) -> String {
        format!(
            "[tls]\nlisten = [\"127.0.0.1:0\"]\ncert_file = {:?}\nkey_file = {:?}\n{extra}\n",
            self.path("cert.pem"),
            self.path("key.pem")
        )
    }
}

/// The TLS listener's address, from the "serving on" status line (marked `(tls)`).
fn tls_addr(s: &mut Server) -> SocketAddr {
    let note = s.notes.iter().rev().find(|n| n.contains(" (tls)")).cloned().unwrap_or_default();
    let list = note.split("serving on ").nth(1).and_then(|rest| rest.split(" with ").next()).unwrap_or_default();
    list.split(", ")
        .find_map(|a| a.strip_suffix(" (tls)"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no TLS address in {note:?}"))
}

/// A client configuration trusting `ca` (TLS 1.2 and 1.3), with a client certificate.
fn client_config(ca: &str, identity: Option<&Cert>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(id.cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(id.key.as_bytes()).unwrap()).unwrap()
        }
    })
}

/// A TLS connection to `addr` as 127.0.0.1.
fn connect(addr: SocketAddr, config: &Arc<rustls::ClientConfig>) -> std::io::Result<Client> {
    Client::connect_tls(addr, Arc::clone(config), "127.0.0.1")
}

fn text(reply: &Reply) -> String {
    format!("{} {}", reply.status, String::from_utf8_lossy(&reply.body))
}

/// Acquire, renew and release over one kept TLS connection, a long-poll granted by a
/// release from another TLS connection, and the plain port still plain.
fn lock_over_tls(dispatch: &str) {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca.issue("127.0.0.1", &["127.0.0.1"]), None);
    let mut s = Server::start(&config(&format!("workers = 2\ndispatch = {dispatch:?}"), &files.section("")));
    let addr = tls_addr(&mut s);
    let tls = client_config(&ca.pem, None);
    let mut c = connect(addr, &tls).unwrap();
    let r = c.post("/v1/locks/tls-a/acquire", r#"{"ttl_ms":30000}"#).unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    let ticket = r.json()["ticket"].as_str().unwrap().to_string();
    let fence = r.json()["fence"].as_u64().unwrap();
    let r = c.post("/v1/locks/tls-a/renew", &format!(r#"{{"ticket":"{ticket}","ttl_ms":30000}}"#)).unwrap();
    assert_eq!((r.status, r.json()["fence"].as_u64()), (200, Some(fence)), "{}", text(&r));
    // A waiter on another TLS connection, granted when the holder releases.
    let waiter = std::thread::spawn({
        let tls = Arc::clone(&tls);
        move || {
            let mut w = connect(addr, &tls).unwrap();
            w.post("/v1/locks/tls-a/acquire", r#"{"ttl_ms":30000,"wait_ms":20000}"#).unwrap()
        }
    });
    s.wait_waiting_requests(1, None);
    let r = c.post("/v1/locks/tls-a/release", &format!(r#"{{"ticket":"{ticket}"}}"#)).unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    let granted = waiter.join().unwrap();
    assert_eq!(granted.status, 200, "{}", text(&granted));
    assert_eq!(granted.json()["fence"].as_u64(), Some(fence + 1));
    // Still one connection: keep-alive over TLS.
    let r = c.get("/v1/locks/tls-a").unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    // The plain port speaks plain HTTP as ever.
    let mut plain = Client::connect(s.addr).unwrap();
    assert_eq!(plain.get("/healthz").unwrap().status, 200);
}

#[test]
fn acquire_renew_release_and_a_long_poll_over_tls_with_reuseport() {
    lock_over_tls("reuseport");
}

#[test]
fn acquire_renew_release_and_a_long_poll_over_tls_with_fd_passing() {
    lock_over_tls("fd-passing");
}

#[test]
fn an_event_stream_runs_over_tls() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca.issue("127.0.0.1", &["127.0.0.1"]), None);
    let mut s = Server::start(&config("workers = 1", &files.section("")));
    let addr = tls_addr(&mut s);
    let tls = client_config(&ca.pem, None);
    let mut c = connect(addr, &tls).unwrap();
    let r = c.post("/v1/locks/sse/acquire", r#"{"ttl_ms":30000}"#).unwrap();
    let holder_ticket = r.json()["ticket"].as_str().unwrap().to_string();
    let r = c.post("/v1/locks/sse/acquire", r#"{"ttl_ms":30000,"wait_ms":0}"#).unwrap();
    assert_eq!(r.status, 202, "{}", text(&r));
    let ticket = r.json()["ticket"].as_str().unwrap().to_string();
    let mut events = connect(addr, &tls).unwrap();
    events
        .send_raw(format!("GET /v1/locks/sse/events?ticket={ticket} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut seen = events.read_until("event: position").unwrap();
    let r = c.post("/v1/locks/sse/release", &format!(r#"{{"ticket":"{holder_ticket}"}}"#)).unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    seen.push_str(&events.read_until("event: acquired").unwrap());
    assert!(seen.contains("text/event-stream"), "{seen}");
}

/// `openssl s_client ARGS` against `addr`: whether a handshake completed, and the output.
fn s_client(addr: SocketAddr, args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl s_client (the openssl command line is needed)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // s_client prints "Cipher is (NONE)" or no "Protocol" line when no handshake completed.
    let done = text.lines().any(|l| l.starts_with("New, TLSv1.") && !l.contains("(NONE)"));
    (done, text)
}

#[test]
fn only_tls_1_2_and_1_3_with_strong_ciphers_and_hostile_bytes_close_cleanly() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca.issue("127.0.0.1", &["127.0.0.1"]), None);
    let mut s = Server::start(&config("workers = 1", &files.section("")));
    let addr = tls_addr(&mut s);
    for (version, accepted) in [("-tls1", false), ("-tls1_1", false), ("-tls1_2", true), ("-tls1_3", true)] {
        let (done, out) = s_client(addr, &[version]);
        assert_eq!(done, accepted, "{version}:\n{out}");
    }
    // Weak suites: RC4 and 3DES (when this openssl still knows them), CBC and static RSA.
    let weak = "RC4-SHA:DES-CBC3-SHA:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:AES128-SHA:AES256-SHA256";
    let (done, out) = s_client(addr, &["-tls1_2", "-cipher", weak]);
    assert!(!done, "a weak suite was agreed:\n{out}");
    let (done, out) = s_client(addr, &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"]);
    assert!(done, "{out}");

    // Garbage, a TLS record header followed by garbage, and a plain HTTP request.
    for bytes in [&[0xffu8; 300][..], &[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10][..]] {
        let mut raw = TcpStream::connect(addr).unwrap();
        raw.set_read_timeout(Some(DEADLINE)).unwrap();
        raw.write_all(bytes).unwrap();
        let mut got = Vec::new();
        // Closed by the server (an alert, then the end), never left hanging.
        let _ = raw.read_to_end(&mut got);
        assert!(got.is_empty() || got[0] == 0x15, "not an alert: {got:?}");
    }
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(DEADLINE)).unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = String::new();
    let _ = raw.read_to_string(&mut got);
    assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
    assert!(got.contains("\"error\":\"bad_request\"") && got.contains("speaks TLS"), "{got}");
    // The worker is still there and serves TLS.
    let mut c = connect(addr, &client_config(&ca.pem, None)).unwrap();
    assert_eq!(c.get("/healthz").unwrap().status, 200);
    assert!(!s.log().contains("panicked"), "{}", s.log());
}

#[test]
fn client_certificates_map_to_their_role_and_prefix_and_another_ca_is_refused() {
    let (ca, clients_ca, stranger_ca) = (Ca::new("server CA"), Ca::new("clients CA"), Ca::new("another CA"));
    let files = Files::new(&ca.issue("127.0.0.1", &["127.0.0.1"]), Some(&clients_ca));
    let extra = format!(
        "client_ca_file = {:?}\n[[tls.clients]]\nsubject_cn = \"billing\"\nrole = \"lock\"\nprefix = \"billing-\"\n",
        files.path("clients-ca.pem")
    );
    let keys = "[auth]\n[[auth.keys]]\nkey = \"writer-key-0123456789\"\nrole = \"write\"\n";
    let mut s = Server::start(&config("workers = 1", &format!("{keys}\n{}", files.section(&extra))));
    let addr = tls_addr(&mut s);

    // The mapped certificate: its role (lock) on its prefix, nothing beyond.
    let billing = client_config(&ca.pem, Some(&clients_ca.issue("billing", &["billing.example"])));
    let mut c = connect(addr, &billing).unwrap();
    let r = c.post("/v1/locks/billing-run/acquire", r#"{"ttl_ms":30000}"#).unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = c.post("/v1/locks/reports/acquire", r#"{"ttl_ms":30000}"#).unwrap();
    assert_eq!(r.status, 403, "outside its prefix: {}", text(&r));
    let r = c.request("PUT", "/v1/locks/billing-run/data/k", &[], "\"v\"").unwrap();
    assert_eq!(r.status, 403, "a lock role writes no data: {}", text(&r));
    // An API key on a connection with that certificate is judged by itself.
    let mut c = connect(addr, &billing).unwrap();
    let key = [("x-api-key", "writer-key-0123456789")];
    let r = c.request("POST", "/v1/locks/reports/acquire", &key, r#"{"ttl_ms":30000}"#).unwrap();
    assert_eq!(r.status, 200, "outside the certificate's prefix, inside the key's: {}", text(&r));

    // A certificate from the right CA that no entry maps grants nothing: a key is needed.
    let unmapped = client_config(&ca.pem, Some(&clients_ca.issue("nobody", &["nobody.example"])));
    let mut c = connect(addr, &unmapped).unwrap();
    let r = c.post("/v1/locks/billing-x/acquire", r#"{"ttl_ms":30000}"#).unwrap();
    assert_eq!(r.status, 401, "{}", text(&r));

    // Another CA's certificate, and none at all (required by default): no session.
    for (what, config) in [
        ("another CA", client_config(&ca.pem, Some(&stranger_ca.issue("billing", &["billing.example"])))),
        ("no certificate", client_config(&ca.pem, None)),
    ] {
        let refused = connect(addr, &config).and_then(|mut c| c.get("/healthz"));
        assert!(refused.is_err(), "{what}: {:?}", refused.map(|r| text(&r)));
    }
}

#[test]
fn a_reload_swaps_the_certificate_under_8_keep_alive_clients_without_a_failed_request() {
    let ca = Ca::new("test CA");
    let (old, new) = (ca.issue("old", &["127.0.0.1"]), ca.issue("new", &["127.0.0.1"]));
    let files = Files::new(&old, None);
    let mut s = Server::start(&config("workers = 2", &files.section("")));
    let addr = tls_addr(&mut s);
    let tls = client_config(&ca.pem, None);
    let cn_of = |c: &Client| leasehold::http::auth::subject_cn(&c.server_certificate().unwrap());
    assert_eq!(cn_of(&connect(addr, &tls).unwrap()).as_deref(), Some("old"));

    let stop = Arc::new(AtomicBool::new(false));
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(std::sync::Mutex::new(Vec::new())));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (tls, stop, done, failed) =
                (Arc::clone(&tls), Arc::clone(&stop), Arc::clone(&done), Arc::clone(&failed));
            std::thread::spawn(move || {
                let mut c = connect(addr, &tls).unwrap();
                let lock = format!("/v1/locks/reload-{i}");
                // One request; a draining worker's last answer closes: the next goes on a
                // new connection. A failure is recorded, and the run goes on.
                let call = |c: &mut Client, path: String, body: String| -> Option<Reply> {
                    match c.post(&path, &body) {
                        Ok(r) => {
                            if r.closes() {
                                *c = connect(addr, &tls).unwrap();
                            }
                            if r.status == 200 {
                                done.fetch_add(1, Ordering::Relaxed);
                                return Some(r);
                            }
                            failed.lock().unwrap().push(format!("{path}: {}", text(&r)));
                        }
                        Err(e) => {
                            failed.lock().unwrap().push(format!("{path}: {e}"));
                            *c = connect(addr, &tls).unwrap();
                        }
                    }
                    None
                };
                while !stop.load(Ordering::Relaxed) {
                    let Some(r) = call(&mut c, format!("{lock}/acquire"), r#"{"ttl_ms":30000}"#.into()) else {
                        break;
                    };
                    let ticket = r.json()["ticket"].as_str().unwrap().to_string();
                    if call(&mut c, format!("{lock}/release"), format!(r#"{{"ticket":"{ticket}"}}"#)).is_none() {
                        break;
                    }
                }
            })
        })
        .collect();
    wait_for("requests before the reload", || if done.load(Ordering::Relaxed) > 200 { Ok(()) } else { Err(()) });

    // The new certificate in the same files, then SIGUSR1.
    files.write(&new);
    let old_workers = s.worker_pids();
    s.signal(nix::sys::signal::Signal::SIGUSR1);
    s.wait_note("RELOADING=1");
    s.wait_note("READY=1");
    s.wait_all_ready(2);
    for pid in old_workers {
        assert!(wait_for_exit(pid, DEADLINE).unwrap(), "the old worker {pid} did not drain");
    }
    let before = done.load(Ordering::Relaxed);
    wait_for(
        "requests after the reload",
        || {
            if done.load(Ordering::Relaxed) > before + 200 {
                Ok(())
            } else {
                Err(())
            }
        },
    );
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(*failed.lock().unwrap(), Vec::<String>::new(), "failed requests across the reload");
    assert_eq!(cn_of(&connect(addr, &tls).unwrap()).as_deref(), Some("new"), "a new handshake");

    // A certificate that is not one: the reload is refused, the service keeps "new".
    std::fs::write(files.path("cert.pem"), "not a certificate").unwrap();
    s.signal(nix::sys::signal::Signal::SIGUSR1);
    s.wait_log("reload refused");
    assert!(s.log().contains("tls.cert_file: holds no certificate"), "{}", s.log());
    let mut c = connect(addr, &tls).unwrap();
    assert_eq!(cn_of(&c).as_deref(), Some("new"));
    assert_eq!(c.get("/healthz").unwrap().status, 200);
}

/// `leasehold ARGS…` with nothing from the test's own environment.

#[test]
fn the_cli_locks_and_renews_over_the_server_s_own_tls_port() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca.issue("127.0.0.1", &["127.0.0.1"]), None);
    // Not synced: renewals every 667 ms must not wait on a busy disk (see client.rs).
    let mut s = Server::start(&config("workers = 1", &format!("[journal]\nfsync = \"never\"\n{}", files.section(""))));
    let addr = tls_addr(&mut s);
    let work = tempfile::tempdir().unwrap();
    let ca_file = work.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let (server, ca_path) = (format!("https://{addr}"), ca_file.display().to_string());

    cli_holds_a_renewed_lease(&server, &ca_path, "tls-cli", s.addr, work.path(), || s.log());
    let out = leasehold(&["status", "tls-cli", "--json", "--server", &server, "--cacert", &ca_path]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_config_reads_the_tls_files() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca.issue("127.0.0.1", &["127.0.0.1"]), None);
    let path = files.path("leasehold.toml");
    std::fs::write(&path, format!("[server]\nlisten = [\"127.0.0.1:0\"]\n{}", files.section(""))).unwrap();
    let out = leasehold(&["check-config", &path.display().to_string()]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::write(files.path("key.pem"), ca.issue("other", &["127.0.0.1"]).key).unwrap();
    let out = leasehold(&["check-config", &path.display().to_string()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("tls.key_file: does not match the certificate in tls.cert_file"), "{stderr}");
}

#[test]
fn large_and_pipelined_answers_cross_tls_whole_and_in_order() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca.issue("127.0.0.1", &["127.0.0.1"]), None);
    let rest = format!("[locks]\nmax_data_bytes = 12582912\n[http]\nmax_body_bytes = 12582912\n{}", files.section(""));
    let mut s = Server::start(&config("workers = 1", &rest));
    let addr = tls_addr(&mut s);
    let tls = client_config(&ca.pem, None);
    // A small receive window: the server's writes meet a full socket again and again.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut c = Client::tls_over(socket.into(), Arc::clone(&tls), "127.0.0.1").unwrap();
    let r = c.post("/v1/locks/big/acquire", r#"{"ttl_ms":60000}"#).unwrap();
    let ticket = r.json()["ticket"].as_str().unwrap().to_string();
    // 10 MiB of JSON: many records, more than TLS may hold unsent (64 KiB) and than the
    // kernel buffers.
    let value = format!("\"{}\"", "x".repeat(10 << 20));
    let r = c.request("PUT", "/v1/locks/big/data/v", &[("x-ticket", &ticket)], &value).unwrap();
    assert_eq!(r.status, 201, "{}", text(&r));
    // Three requests in one write, answered in order, the big one last (so its last
    // records leave with nothing written after them).
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n");
    let pipeline = [get("/healthz"), get("/v1/locks/big"), get("/v1/locks/big/data/v")].concat();
    c.send_raw(pipeline.as_bytes()).unwrap();
    let first = c.read_reply().unwrap();
    assert_eq!((first.status, first.json()["status"].as_str()), (200, Some("ok")), "{}", text(&first));
    let second = c.read_reply().unwrap();
    assert_eq!((second.status, second.json()["name"].as_str()), (200, Some("big")), "{}", text(&second));
    let big = c.read_reply().unwrap();
    assert_eq!(big.status, 200);
    assert!(big.body == value.as_bytes(), "the value came back changed ({} bytes)", big.body.len());
}

#[test]
fn a_handshake_that_stalls_is_closed_after_the_header_timeout() {
    let ca = Ca::new("test CA");
    let files = Files::new(&ca.issue("127.0.0.1", &["127.0.0.1"]), None);
    let rest = format!("[http]\nheader_timeout_ms = 500\n{}", files.section(""));
    let mut s = Server::start(&config("workers = 1", &rest));
    let addr = tls_addr(&mut s);
    // The start of a ClientHello record, and nothing more.
    let mut raw = TcpStream::connect(addr).unwrap();
    raw.set_read_timeout(Some(DEADLINE)).unwrap();
    raw.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).unwrap();
    let started = std::time::Instant::now();
    let mut got = Vec::new();
    let end = raw.read_to_end(&mut got);
    assert!(end.is_ok() || started.elapsed() < DEADLINE, "not closed: {end:?}");
    assert!(started.elapsed() < DEADLINE / 2, "closed only after {:?}", started.elapsed());
    assert!(!got.starts_with(b"HTTP/"), "a clear answer on a TLS port: {:?}", String::from_utf8_lossy(&got));
}
