//! The peer link over TLS, end to end (docs/cluster.md, "The peer link"): three real nodes
//! on a real 3-member etcd, each with `cluster.peer_tls_*` files made here (a CA of the
//! test's own, and node certificates for 127.0.0.1). A follower forwards over TLS; a plain
//! TCP client with the right secret, and a TLS client whose certificate another CA signed,
//! are refused without an answer; connections stuck before their handshake are held to the
//! limits of those that have not said hello; a node stopped while the log is trimmed past
//! it fetches the leader's snapshot over TLS. And `check-config` on the TLS files.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::cluster_log::{gauge, hold_with_data, local_snapshot};
use crate::support::certs::{Authority, Cert};
use crate::support::etcd::EtcdCluster;
use crate::support::http::{once, Reply};
use crate::support::load::Load;
use crate::support::nodes::{Follow, Nodes, PEER_SECRET};
use crate::support::{wait_for, DEADLINE};

fn text(reply: &Reply) -> String {
    String::from_utf8_lossy(&reply.body).into_owned()
}

/// The three files of a node whose certificate `signer` signed, trusting `ca`, written in
/// `dir`; returns the `[cluster]` keys that name them.
fn tls_keys(dir: &Path, signer: &Authority, ca: &Authority) -> String {
    let Cert { cert, key } = signer.node();
    for (name, text) in [("node.pem", &cert), ("node.key", &key), ("ca.pem", &ca.pem)] {
        std::fs::write(dir.join(name), text).unwrap();
    }
    format!(
        "peer_tls_cert = {:?}\npeer_tls_key = {:?}\npeer_tls_ca = {:?}\n",
        dir.join("node.pem"),
        dir.join("node.key"),
        dir.join("ca.pem")
    )
}

/// The hello frame a node sends on the peer link, with the cluster's secret.
fn hello_frame() -> Vec<u8> {
    let hello = serde_json::json!({"node": "stranger", "secret": PEER_SECRET}).to_string();
    let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(hello.as_bytes());
    frame
}

/// What `stream` yields until it ends, which must be nothing or a TLS alert (a record that
/// starts with 0x15), never an answer; panics if it is not closed within [`DEADLINE`].
fn read_until_closed(stream: &mut impl Read) -> Vec<u8> {
    let deadline = Instant::now() + DEADLINE;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        assert!(Instant::now() < deadline, "not closed within {DEADLINE:?}; got {got:?}");
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                assert!(got[0] == 0x15 && got.len() <= 64, "an answer, not a TLS alert: {got:?}");
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("kept waiting, not closed: {e}")
            }
            // Reset: closed all the same.
            Err(_) => return got,
        }
    }
}

/// A change through `node`: a lock of its own each try (a try whose answer was lost may
/// hold the one before), until one is granted.
fn change_through(addr: std::net::SocketAddr, what: &str) {
    let mut tries = 0;
    wait_for(&format!("a change through {addr} ({what})"), || {
        tries += 1;
        let r = once(addr, "POST", &format!("/v1/locks/{what}-{tries}/acquire"), &[], r#"{"queue":"none"}"#);
        (r.status == 200).then_some(()).ok_or_else(|| text(&r))
    });
}

#[test]
fn a_tls_peer_link_forwards_and_refuses_plain_tcp_and_certificates_of_another_ca() {
    let (certs, ca, other) =
        (tempfile::tempdir().unwrap(), Authority::new("the cluster's CA"), Authority::new("another CA"));
    let etcd = EtcdCluster::start();
    let cluster = Nodes::start_peered_with(&etcd, 3, 1, &tls_keys(certs.path(), &ca, &ca));
    let leader = cluster.leader();
    let follower = (leader + 1) % 3;
    let leader_server = cluster.nodes[leader].server.as_ref().unwrap();
    leader_server.wait_log("), over TLS");

    // A change through a follower is forwarded to the leader over TLS and answered.
    let peer = cluster.nodes[leader].peer_addr().unwrap();
    let follower_server = cluster.nodes[follower].server.as_ref().unwrap();
    follower_server.wait_log(&format!("peer link: forwarding changes to the leader at {peer}"));
    change_through(cluster.nodes[follower].addr, "through-a-follower");
    let r = once(cluster.nodes[follower].addr, "POST", "/v1/locks/forwarded/acquire", &[], r#"{"ttl_ms":30000}"#);
    assert_eq!(r.status, 200, "{}", text(&r));
    let fence = r.json()["fence"].as_u64().unwrap();
    let seen = once(cluster.nodes[leader].addr, "GET", "/v1/locks/forwarded", &[], "");
    assert_eq!(seen.json()["holders"][0]["fence"].as_u64(), Some(fence), "{}", text(&seen));

    assert_eq!(cluster.leader(), leader, "the same leader throughout");
    assert!(!follower_server.log().contains("cannot forward"), "{}", follower_server.log());

    // Plain TCP with the right secret: no answer (at most a TLS alert), closed.
    let mut plain = TcpStream::connect(peer).unwrap();
    plain.set_read_timeout(Some(DEADLINE)).unwrap();
    plain.write_all(&hello_frame()).unwrap();
    read_until_closed(&mut plain);
    leader_server.wait_log("peer link: closing a connection that did not say hello: TLS failed");

    // TLS with a certificate of another CA (this client trusts the leader's): refused.
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = CertificateDer::from_pem_slice(ca.pem.as_bytes()).unwrap();
        roots.add(ca_der).unwrap();
        Arc::new(roots)
    };
    let Cert { cert, key } = other.node();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let session = rustls::ClientConnection::new(Arc::new(config), "127.0.0.1".try_into().unwrap()).unwrap();
    let tcp = TcpStream::connect(peer).unwrap();
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut tls = rustls::StreamOwned::new(session, tcp);
    // Its side of the handshake ends before the leader checks its certificate.
    let _ = tls.write_all(&hello_frame()).and_then(|()| tls.flush());
    let mut first = [0u8; 1];
    let read = tls.read(&mut first);
    assert!(
        matches!(&read, Ok(0)) || read.as_ref().is_err_and(|e| e.kind() != std::io::ErrorKind::WouldBlock),
        "the stranger was told something, or kept waiting: {read:?}"
    );
    leader_server.wait_log("invalid peer certificate: UnknownIssuer");

    // Connections that never begin their handshake count among those that have not said
    // hello: 16 at most, and once they waited more than 5 s a new connection makes room.
    let mut stuck = Vec::new();
    wait_for("16 connections waiting to say hello, and a 17th refused", || {
        stuck.push(TcpStream::connect(peer).unwrap());
        let log = leader_server.log();
        log.contains("refused: 16 connections are waiting to say hello").then_some(()).ok_or(stuck.len())
    });
    wait_for("a new connection that makes room", || {
        let _probe = TcpStream::connect(peer).unwrap();
        let log = leader_server.log();
        log.contains("a connection did not say hello within 5000 ms: closed").then_some(()).ok_or(())
    });
    stuck[0].set_read_timeout(Some(DEADLINE)).unwrap();
    assert!(read_until_closed(&mut stuck[0]).is_empty(), "closed without a word");

    // The link goes on as before.
    change_through(cluster.nodes[follower].addr, "after-the-strangers");
}

#[test]
fn a_node_away_while_the_log_is_trimmed_fetches_the_leaders_snapshot_over_tls() {
    let (certs, ca) = (tempfile::tempdir().unwrap(), Authority::new("the cluster's CA"));
    let etcd = EtcdCluster::start();
    let extra = format!("snapshot_every_batches = 10\n{}", tls_keys(certs.path(), &ca, &ca));
    let mut cluster = Nodes::start_peered_with(&etcd, 3, 1, &extra);
    let leader = cluster.leader();
    let away = (leader + 1) % 3;
    let mut client = Follow::new(cluster.addrs(), leader);
    for i in 0..3 {
        hold_with_data(&mut client, &format!("before-{i}"), &format!("b{i}"));
    }
    cluster.wait_in_step();
    cluster.nodes[away].stop();
    let left_at = local_snapshot(cluster.nodes[away].data.path()).position.seq;

    // Load until the leader trimmed the log past what the stopped node needs next.
    let load = Load::start(cluster.nodes[leader].addr, 4, "busy");
    let first = wait_for("the log trimmed past what the stopped node needs", || {
        let first = etcd.first_log_batch();
        (first > left_at + 1).then_some(first).ok_or(first)
    });
    let tally = load.stop();
    assert_eq!(tally.failures(), Vec::<String>::new(), "the load through the leader");
    hold_with_data(&mut client, "after", "a");
    eprintln!("left at batch {left_at}; the log starts at {first}");

    // Started again, it fetches the leader's snapshot, over TLS, and follows from there.
    cluster.nodes[away].restart();
    let server = cluster.nodes[away].server.as_ref().unwrap();
    server.wait_log("fetched the snapshot of the node at");
    let leader_server = cluster.nodes[leader].server.as_ref().unwrap();
    leader_server.wait_log(&format!("peer link: snapshot sent to node \"node-{away}\""));
    assert!(leader_server.log().contains("), over TLS"), "the leader's peer link is TLS");
    cluster.wait_in_step();
    let counts = |addr| ["leasehold_locks", "leasehold_leases", "leasehold_next_fence"].map(|name| gauge(addr, name));
    assert_eq!(counts(cluster.nodes[away].addr), counts(cluster.nodes[leader].addr), "counts and next fence");
    let held = once(cluster.nodes[away].addr, "GET", "/v1/locks/after", &[], "");
    assert_eq!(held.status, 200, "{}", text(&held));
}

/// `leasehold check-config` on `config`; its exit code and what it printed.
fn check_config(config: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leasehold.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_leasehold")).arg("check-config").arg(&path).output().unwrap();
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn check_config_reads_the_tls_files_and_names_the_key_of_each_problem() {
    let (certs, ca, other) = (tempfile::tempdir().unwrap(), Authority::new("ca"), Authority::new("another ca"));
    let base = format!(
        "[cluster]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nnode_name = \"a\"\n\
         advertise_url = \"http://127.0.0.1:8080\"\npeer_listen = \"127.0.0.1:7070\"\nsecret = \"{PEER_SECRET}\"\n"
    );
    let keys = tls_keys(certs.path(), &ca, &ca);
    let (code, said) = check_config(&format!("{base}{keys}"));
    assert_eq!(code, Some(0), "{said}");

    // A key that is not the certificate's.
    let Cert { key: stranger_key, .. } = ca.node();
    std::fs::write(certs.path().join("node.key"), stranger_key).unwrap();
    let (code, said) = check_config(&format!("{base}{keys}"));
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("cluster.peer_tls_key: does not match the certificate in cluster.peer_tls_cert"), "{said}");

    // A certificate of another CA; a name that is not the advertised host.
    tls_keys(certs.path(), &other, &ca);
    let (code, said) = check_config(&format!("{base}{keys}"));
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("cluster.peer_tls_cert: would be refused by the other nodes"), "{said}");
    tls_keys(certs.path(), &ca, &ca);
    let (code, said) = check_config(&format!("{base}peer_advertise = \"node-a.internal:7070\"\n{keys}"));
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("node-a.internal:7070 (cluster.peer_advertise)"), "{said}");

    // Files that are not there, or hold no certificate.
    std::fs::remove_file(certs.path().join("ca.pem")).unwrap();
    let (code, said) = check_config(&format!("{base}{keys}"));
    assert_eq!(code, Some(2), "{said}");
    assert!(said.contains("cluster.peer_tls_ca: cannot read"), "{said}");
    std::fs::write(certs.path().join("ca.pem"), "no PEM here").unwrap();
    let (code, said) = check_config(&format!("{base}{keys}"));
    assert!(code == Some(2) && said.contains("cluster.peer_tls_ca: holds no certificate"), "{said}");
}
