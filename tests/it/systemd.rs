//! The systemd unit and what it relies on: `systemd-analyze verify` passes on it, its
//! reload commands (run in order, as systemd runs them) fail on an invalid configuration
//! without signalling the master, and API keys come from files, also through
//! `$CREDENTIALS_DIRECTORY` (`LoadCredential=`), read again on reload; `check-config` names
//! a key file it cannot read, with priorities when its stderr is the journal.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sys::signal::Signal;

use crate::support::http::once;
use crate::support::{config, Server};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/leasehold.service");
/// Where the unit expects the binary and the configuration.
const INSTALLED_BINARY: &str = "/usr/local/bin/leasehold";
const INSTALLED_CONFIG: &str = "/etc/leasehold/leasehold.toml";

/// The binary under test with a clean environment (no stray settings of the caller's).
fn leasehold() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_leasehold"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().to_string();
        if name.starts_with("LEASEHOLD_") || name.starts_with("RESOURCE_") || name == "CREDENTIALS_DIRECTORY" {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("JOURNAL_STREAM");
    cmd
}

/// The unit's directives (`Name=value`, comments left out), in order.
fn directives(unit: &str) -> Vec<&str> {
    unit.lines().map(str::trim).filter(|l| !l.starts_with('#') && l.contains('=')).collect()
}

#[test]
fn the_unit_passes_systemd_analyze_verify_without_a_word() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    // verify wants every Exec binary to exist: the unit as installed, with the build's.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("leasehold.service");
    std::fs::write(&copy, unit.replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_leasehold"))).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze: {e}; install it with tests/deps.sh"));
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "systemd-analyze verify failed:\n{said}");
    // An unknown directive or value is only a warning (exit 0): none may name the unit.
    assert!(!said.contains("leasehold.service"), "systemd-analyze verify warns:\n{said}");
}

#[test]
fn the_unit_checks_the_configuration_before_it_signals_a_reload_and_reads_secrets_from_outside() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let d = directives(&unit);
    let reload: Vec<&str> = d.iter().filter_map(|l| l.strip_prefix("ExecReload=")).collect();
    assert_eq!(reload, [&format!("{INSTALLED_BINARY} check-config {INSTALLED_CONFIG}"), "/bin/kill -USR1 $MAINPID"]);
    assert!(d.contains(&"EnvironmentFile=-/etc/leasehold/env"), "{d:?}");
    assert!(unit.lines().any(|l| l.starts_with("#LoadCredential=leasehold-key:")), "the LoadCredential example");
}

/// Runs the unit's `ExecReload=` commands as systemd does (in order, stopping at the first
/// that fails) for the server `s`; returns whether all succeeded.
fn systemctl_reload(unit: &str, s: &Server) -> bool {
    for line in directives(unit).iter().filter_map(|l| l.strip_prefix("ExecReload=")) {
        let line = line
            .replace(INSTALLED_BINARY, env!("CARGO_BIN_EXE_leasehold"))
            .replace(INSTALLED_CONFIG, s.config_path.to_str().unwrap())
            .replace("$MAINPID", &s.pid().to_string());
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut cmd = if words[0].ends_with("/leasehold") { leasehold() } else { Command::new(words[0]) };
        let out = cmd.args(&words[1..]).output().unwrap_or_else(|e| panic!("{line}: {e}"));
        if !out.status.success() {
            return false;
        }
    }
    true
}

#[test]
fn the_units_reload_fails_on_an_invalid_configuration_and_signals_nothing() {
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let mut s = Server::start(&config("workers = 1", ""));
    let good = std::fs::read_to_string(&s.config_path).unwrap();
    std::fs::write(&s.config_path, good.replacen("[server]\n", "[server]\nworkers = \"many\"\n", 1)).unwrap();
    assert!(!systemctl_reload(&unit, &s), "a reload of an invalid configuration succeeded");
    // Signals reach the master in order: once it has logged this one, it has read the
    // configuration for any reload signal sent before.
    s.signal(Signal::SIGPWR);
    s.wait_log("SIGPWR: ignored");
    // Fixed, the same commands reload.
    std::fs::write(&s.config_path, good).unwrap();
    assert!(systemctl_reload(&unit, &s));
    s.wait_note("RELOADING=1");
    s.wait_note("READY=1");
    // The master writes its lines in order: once this one is read, a refusal of the invalid
    // configuration (had the first attempt signalled it) would have been read too.
    s.signal(Signal::SIGPWR);
    s.wait_log_count("SIGPWR: ignored", 2);
    assert!(!s.log().contains("reload refused"), "the master was signalled:\n{}", s.log());
}

/// A configuration with two keys from files: `write-key` by absolute path (write role) and
/// `read-key` relative, from `$CREDENTIALS_DIRECTORY` (read role).
fn keyed_config(write_key: &Path) -> String {
    config(
        "workers = 1",
        &format!(
            "[[auth.keys]]\nkey_file = {:?}\nrole = \"write\"\n[[auth.keys]]\nkey_file = \"read-key\"\nrole = \"read\"\n",
            write_key.to_str().unwrap()
        ),
    )
}

#[test]
fn api_keys_come_from_files_and_the_credentials_directory_and_a_reload_rereads_them() {
    let secrets = tempfile::tempdir().unwrap();
    let credentials = tempfile::tempdir().unwrap();
    let write_key = secrets.path().join("write-key");
    std::fs::write(&write_key, "file-key-1111\n").unwrap();
    std::fs::write(credentials.path().join("read-key"), "credential-key-2222").unwrap();
    let mut s = Server::start_with_env(
        &keyed_config(&write_key),
        &[("CREDENTIALS_DIRECTORY", credentials.path().to_str().unwrap())],
    );
    let status = |key: Option<&str>, method: &str, path: &str| {
        let headers: Vec<(&str, &str)> = key.map(|k| vec![("x-api-key", k)]).unwrap_or_default();
        once(s.addr, method, path, &headers, "{}").status
    };
    assert_eq!(status(None, "GET", "/v1/locks"), 401, "keys are configured: no key, no answer");
    assert_eq!(status(Some("file-key-1111"), "POST", "/v1/locks/job/acquire"), 200);
    assert_eq!(status(Some("credential-key-2222"), "GET", "/v1/locks"), 200);
    assert_eq!(status(Some("credential-key-2222"), "POST", "/v1/locks/job/acquire"), 403, "read role");
    // A rotated key file: the reload reads it, the old key stops working.
    std::fs::write(&write_key, "file-key-3333\n").unwrap();
    s.reload_and_wait_old_workers_gone(1);
    let status = |key: &str| once(s.addr, "GET", "/v1/locks", &[("x-api-key", key)], "").status;
    assert_eq!(status("file-key-3333"), 200, "{}", s.log());
    assert_eq!(status("file-key-1111"), 401);
    assert_eq!(status("credential-key-2222"), 200);
}

fn check_config(text: &str, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("leasehold.toml");
    std::fs::write(&file, text).unwrap();
    let out = leasehold().arg("check-config").arg(&file).envs(env.iter().copied()).output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stderr).to_string())
}

#[test]
fn check_config_names_a_key_file_it_cannot_read_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-key");
    let (code, stderr) = check_config(&keyed_config(&missing), &[("CREDENTIALS_DIRECTORY", "/nonexistent/creds")]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("2 problems"), "{stderr}");
    assert!(stderr.contains(&format!("auth.keys[0].key_file: cannot read {}:", missing.display())), "{stderr}");
    assert!(stderr.contains("auth.keys[1].key_file: cannot read /nonexistent/creds/read-key:"), "{stderr}");
    // Both there: valid.
    std::fs::write(&missing, "some-key-4444").unwrap();
    std::fs::write(dir.path().join("read-key"), "other-key-5555").unwrap();
    let (code, stderr) =
        check_config(&keyed_config(&missing), &[("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]);
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn check_config_under_journald_gives_each_line_its_priority() {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("leasehold.toml");
    std::fs::write(&file, "[server]\nworkers = -1\ndispatch = \"udp\"\n").unwrap();
    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let stat = nix::sys::stat::fstat(&write_end).unwrap();
    let mut cmd = leasehold();
    cmd.arg("check-config").arg(&file).env("JOURNAL_STREAM", format!("{}:{}", stat.st_dev, stat.st_ino));
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::from(write_end)).spawn().unwrap();
    drop(cmd);
    let mut stderr = String::new();
    std::fs::File::from(read_end).read_to_string(&mut stderr).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(2));
    assert_eq!(stderr.lines().count(), 3, "{stderr}");
    assert!(stderr.lines().all(|l| l.starts_with("<3>")), "{stderr}");
}
