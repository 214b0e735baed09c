//! The real binary's command line: `check-config`, `serve` and `journal` exit codes and
//! messages.

use std::process::Command;

use crate::support::http::once;
use crate::support::{self, wait_for, Server};

fn leasehold() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    // The tests decide the environment: no stray LEASEHOLD_* or RESOURCE_* from the caller.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().to_string();
        if name.starts_with("LEASEHOLD_") || name.starts_with("RESOURCE_") {
            cmd.env_remove(name);
        }
    }
    cmd
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().expect("temp file");
    std::io::Write::write_all(&mut file, text.as_bytes()).expect("write config");
    file
}

#[test]
fn check_config_with_three_mistakes_lists_all_and_exits_2() {
    let file = write_config("[server]\nworkers = -1\ndispatch = \"udp\"\n[journal]\nfsync_every = 3\n");
    let out = leasehold().arg("check-config").arg(file.path()).output().expect("run leasehold");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("3 problems"), "{stderr}");
    for key in ["server.workers", "server.dispatch", "journal.fsync_every"] {
        assert!(stderr.contains(key), "{key} missing from: {stderr}");
    }
}

#[test]
fn check_config_on_the_shipped_example_exits_0() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/leasehold.toml");
    let out = leasehold().arg("check-config").arg(path).output().expect("run leasehold");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
}

#[test]
fn check_config_on_a_missing_file_exits_2_with_the_reason() {
    let out = leasehold().args(["check-config", "/nonexistent/leasehold.toml"]).output().expect("run leasehold");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn bad_environment_override_fails_check_config() {
    let file = write_config("");
    let out = leasehold()
        .arg("check-config")
        .arg(file.path())
        .env("LEASEHOLD_FSYNC", "sometimes")
        .output()
        .expect("run leasehold");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("LEASEHOLD_FSYNC"));
}

#[test]
fn unknown_arguments_exit_2_with_a_short_usage() {
    let out = leasehold().arg("frobnicate").output().expect("run leasehold");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unrecognized subcommand 'frobnicate'"), "{stderr}");
    assert!(stderr.contains("Usage: leasehold <COMMAND>"), "{stderr}");
    assert!(stderr.lines().count() <= 3, "{stderr}");
}

#[test]
fn shipped_example_documents_every_key_with_its_default_and_variable() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/leasehold.toml")).unwrap();
    for key in leasehold::config::Config::known_keys() {
        // `section.key`, or a top-level array of tables (`[[rooms]]`).
        let name = key.path.split_once('.').map_or(key.path.as_str(), |(_, name)| name);
        assert!(
            text.lines().any(|l| l.trim_start_matches(['#', ' ']).starts_with(&format!("{name} ="))
                || l.contains(&format!("[[{}]]", key.path))),
            "config/leasehold.toml does not document {}",
            key.path
        );
        if !key.env.is_empty() {
            assert!(text.contains(key.env), "config/leasehold.toml does not name {}", key.env);
        }
    }
    // The example's values are the defaults (commented-out keys are not read).
    let parsed = leasehold::config::Config::load(Some(&text), &[]).unwrap();
    assert_eq!(parsed, leasehold::config::Config::defaults());
}

#[test]
fn systemd_unit_has_the_required_directives() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/leasehold.service")).unwrap();
    let directives: Vec<&str> =
        unit.lines().map(str::trim).filter(|l| !l.starts_with('#') && l.contains('=')).collect();
    for required in [
        "Type=notify",
        "NotifyAccess=main",
        "KillMode=mixed",
        "ExecReload=/bin/kill -USR1 $MAINPID",
        "RestartPreventExitStatus=2",
        "StateDirectory=leasehold",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
    ] {
        assert!(directives.contains(&required), "systemd unit lacks {required}");
    }
    assert!(directives.iter().any(|d| d.starts_with("ExecStartPre=") && d.contains("check-config")));
    let stop_s: u64 = directives
        .iter()
        .find_map(|d| d.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop_s * 1000 > leasehold::config::DEFAULT_DRAIN_TIMEOUT_MS,
        "TimeoutStopSec must exceed the drain timeout"
    );
}

#[test]
fn journal_commands_with_bad_arguments_exit_2_and_create_nothing() {
    let scratch = tempfile::tempdir().unwrap();
    let missing = scratch.path().join("missing");
    let new_dir = scratch.path().join("new");
    let cases: [Vec<&std::ffi::OsStr>; 4] = [
        vec!["journal".as_ref()],
        vec!["journal".as_ref(), "verify".as_ref()],
        vec!["journal".as_ref(), "verify".as_ref(), missing.as_os_str()],
        vec!["journal".as_ref(), "salvage".as_ref(), missing.as_os_str(), new_dir.as_os_str()],
    ];
    for args in cases {
        let out = leasehold().args(&args).output().expect("run leasehold");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert!(!new_dir.exists(), "a refused salvage created its target");
}

#[test]
fn journal_verify_of_an_empty_directory_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let out = leasehold().args(["journal", "verify"]).arg(dir.path()).output().expect("run leasehold");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok: 0 valid records, no damage"));
}

/// A valid `[cluster]` section (README, "Configuration").
const CLUSTER: &str = "
[cluster]
etcd_endpoints = [\"http://127.0.0.1:2379\", \"http://127.0.0.1:22379\"]
node_name = \"node-a\"
advertise_url = \"http://127.0.0.1:8080\"
";

#[test]
fn check_config_accepts_a_valid_cluster_section() {
    let file = write_config(CLUSTER);
    let out = leasehold().arg("check-config").arg(file.path()).output().expect("run leasehold");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn check_config_lists_cluster_problems_with_their_keys() {
    let file = write_config("[cluster]\nnode_name = \"node a\"\nelection_ttl_ms = 2500\n");
    let out = leasehold()
        .arg("check-config")
        .arg(file.path())
        .env("LEASEHOLD_ETCD_ENDPOINTS", "http://127.0.0.1:2379/v3")
        .output()
        .expect("run leasehold");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("4 problems"), "{stderr}");
    for key in [
        "cluster.etcd_endpoints (from LEASEHOLD_ETCD_ENDPOINTS)",
        "cluster.node_name",
        "cluster.advertise_url",
        "cluster.election_ttl_ms",
    ] {
        assert!(stderr.contains(key), "{key} missing from: {stderr}");
    }
}

#[test]
fn r13_a_cluster_node_without_etcd_serves_reads_and_answers_changes_503_not_leader() {
    // Nothing listens on the discard port: no etcd, so no leader ever.
    let s = Server::start(&support::config(
        "",
        "[cluster]\netcd_endpoints = [\"http://127.0.0.1:9\"]\nnode_name = \"node-a\"\nadvertise_url = \"http://127.0.0.1:8080\"\netcd_timeout_ms = 200",
    ));
    let cluster = wait_for("/readyz to tell where the node stands", || {
        let ready = once(s.addr, "GET", "/readyz", &[], "");
        let body = ready.json();
        (ready.status == 200 && body["cluster"].is_object()).then(|| body["cluster"].clone()).ok_or(body)
    });
    assert_eq!((cluster["node"].as_str(), cluster["role"].as_str()), (Some("node-a"), Some("follower")), "{cluster}");
    assert_eq!(cluster["applied"], 0);
    let read = once(s.addr, "GET", "/v1/locks/nightly", &[], "");
    assert_eq!(read.status, 404, "reads are served from the replica: {}", String::from_utf8_lossy(&read.body));
    let change = once(s.addr, "POST", "/v1/locks/nightly/acquire", &[], "{}");
    assert_eq!(change.status, 503, "{}", String::from_utf8_lossy(&change.body));
    assert_eq!(change.json()["error"], "not_leader");
    assert!(change.header("retry-after").is_some(), "{:?}", change.headers);
    assert!(!s.log().contains("panicked"), "{}", s.log());
}
