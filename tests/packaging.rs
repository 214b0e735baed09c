//! Packaging: what `make deb` (packaging/deb.sh and `[package.metadata.deb]` in Cargo.toml)
//! and the `Dockerfile` ship, checked without building either where that is possible.
//!
//! - The package's assets: the binary to /usr/bin, the example configuration to
//!   /etc/leasehold/, the repository's files that exist, and the staged files that
//!   packaging/deb.sh writes (no more, no fewer).
//! - The staging: the packaged unit is the repository's with /usr/bin for /usr/local/bin and
//!   nothing else changed; the man page and completions come from the binary, or the staging
//!   fails naming the subcommand the binary lacks.
//! - The image's health check: the `HEALTHCHECK` command of the Dockerfile, run as is against
//!   a real server, passes while `/healthz` answers and fails once the server is gone.
//! - The image itself, built and run, when a Docker daemon answers (`docker info`); otherwise
//!   that test says it skipped.
//!
//! A test binary of its own, so that the image build (a whole release build) runs alone after
//! the end-to-end tests (`cargo test` runs test binaries one after another), not beside them.

// The support modules of the end-to-end tests, of which this uses a part.
#[allow(dead_code)]
#[path = "it/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use support::{config, wait_for, Server};

/// The files packaging/deb.sh stages in target/deb-staging/ (its header lists them).
const STAGED: &[&str] =
    &["systemd/leasehold.service", "leasehold.1.gz", "leasehold.bash", "_leasehold", "leasehold.fish"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_leasehold")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

/// `[package.metadata.deb]` of Cargo.toml.
fn deb_metadata() -> toml::Table {
    let manifest: toml::Table = read("Cargo.toml").parse().expect("Cargo.toml parses");
    manifest["package"]["metadata"]["deb"].as_table().expect("[package.metadata.deb]").clone()
}

/// The package's assets as (source, destination, mode).
fn deb_assets() -> Vec<(String, String, String)> {
    deb_metadata()["assets"]
        .as_array()
        .expect("assets is a list")
        .iter()
        .map(|asset| {
            let fields: Vec<String> = asset
                .as_array()
                .expect("an asset is [source, destination, mode]")
                .iter()
                .map(|f| f.as_str().expect("asset fields are strings").to_string())
                .collect();
            assert_eq!(fields.len(), 3, "asset {fields:?}");
            (fields[0].clone(), fields[1].clone(), fields[2].clone())
        })
        .collect()
}

/// Runs `bash packaging/deb.sh stage DIR BIN`.
fn stage(dir: &Path, bin: &str) -> Output {
    Command::new("bash")
        .arg(root().join("packaging/deb.sh"))
        .arg("stage")
        .arg(dir)
        .arg(bin)
        .output()
        .expect("run packaging/deb.sh")
}

/// Whether `leasehold ARGS` exits 0 with something on standard output.
fn prints(args: &[&str]) -> bool {
    let out = Command::new(binary()).args(args).output().expect("run leasehold");
    out.status.success() && !out.stdout.is_empty()
}

#[test]
fn deb_assets_are_the_binary_the_config_repository_files_and_the_staged_files() {
    let assets = deb_assets();
    let mut staged = BTreeSet::new();
    for (source, destination, mode) in &assets {
        if let Some(name) = source.strip_prefix("target/deb-staging/") {
            staged.insert(name.to_string());
        } else if source != "target/release/leasehold" {
            assert!(root().join(source).is_file(), "asset {source} is not a file of the repository");
        }
        assert!(!destination.starts_with('/'), "{destination}: cargo-deb destinations are relative");
        assert!(mode == "644" || mode == "755", "{source}: mode {mode}");
    }
    let find = |source: &str| assets.iter().find(|a| a.0 == source).unwrap_or_else(|| panic!("no asset {source}"));
    assert_eq!(find("target/release/leasehold").1, "usr/bin/");
    assert_eq!(find("target/release/leasehold").2, "755");
    // Under /etc: a conffile, which an upgrade does not overwrite.
    assert_eq!(find("config/leasehold.toml").1, "etc/leasehold/leasehold.toml");
    for license in ["LICENSE-MIT", "LICENSE-APACHE"] {
        assert_eq!(find(license).1, "usr/share/doc/leasehold/");
    }
    // The unit is no asset: cargo-deb installs it from the maintainer-scripts directory, with
    // the scripts that reload systemd and stop the service on removal.
    let metadata = deb_metadata();
    assert_eq!(metadata["maintainer-scripts"].as_str(), Some("target/deb-staging/systemd/"));
    assert!(metadata["systemd-units"].is_table(), "systemd-units");
    staged.insert("systemd/leasehold.service".to_string());
    let expected: BTreeSet<String> = STAGED.iter().map(|s| s.to_string()).collect();
    assert_eq!(staged, expected, "the staged assets of Cargo.toml are what packaging/deb.sh stages");
}

#[test]
fn deb_staging_points_the_unit_at_usr_bin_and_changes_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let out = stage(dir.path(), binary());
    let source = read("systemd/leasehold.service");
    let packaged =
        std::fs::read_to_string(dir.path().join("systemd/leasehold.service")).expect("the unit is staged first");
    assert!(!packaged.contains("/usr/local"), "{packaged}");
    assert_eq!(source.lines().count(), packaged.lines().count());
    for (was, is) in source.lines().zip(packaged.lines()) {
        assert_eq!(is, was.replace("/usr/local/bin/leasehold", "/usr/bin/leasehold"));
    }
    let exec: Vec<&str> = packaged.lines().filter(|l| l.starts_with("ExecStart")).collect();
    assert!(!exec.is_empty());
    for line in exec {
        let program = line.split_once('=').unwrap().1.split_whitespace().next().unwrap();
        assert_eq!(program, "/usr/bin/leasehold", "{line}");
    }

    // The man page and completions come from the binary; one without those subcommands fails
    // the staging, naming what is missing, rather than a package without them.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !prints(&["man"]) {
        assert!(!out.status.success(), "staging passed without `leasehold man`");
        assert!(stderr.contains("`leasehold man`"), "{stderr}");
        assert!(!dir.path().join("leasehold.1").exists() && !dir.path().join("leasehold.1.gz").exists());
        return;
    }
    if !prints(&["completions", "bash"]) {
        assert!(!out.status.success(), "staging passed without `leasehold completions`");
        assert!(stderr.contains("`leasehold completions`"), "{stderr}");
        return;
    }
    assert!(out.status.success(), "staging failed: {stderr}");
    for name in STAGED {
        let len = std::fs::metadata(dir.path().join(name)).map(|m| m.len()).unwrap_or(0);
        assert!(len > 0, "{name} staged and not empty");
    }
    let page = Command::new("gzip").arg("-dc").arg(dir.path().join("leasehold.1.gz")).output().unwrap();
    assert!(page.status.success());
    assert!(String::from_utf8_lossy(&page.stdout).contains(".TH"), "the man page is roff");
    let bash = std::fs::read_to_string(dir.path().join("leasehold.bash")).unwrap();
    assert!(bash.contains("leasehold"), "{bash}");
}

/// The `HEALTHCHECK` command of the Dockerfile (its exec form, a JSON array).
fn healthcheck_command() -> Vec<String> {
    let dockerfile = read("Dockerfile").replace("\\\n", " ");
    let line = dockerfile.lines().find(|l| l.starts_with("HEALTHCHECK ")).expect("a HEALTHCHECK");
    let json = &line[line.find(" CMD ").expect("HEALTHCHECK ... CMD") + 5..];
    serde_json::from_str(json.trim()).expect("CMD in exec form (a JSON array of strings)")
}

/// Runs the health check as Docker would, with `LEASEHOLD_LISTEN` as the image sets it.
fn health(listen: &str) -> Output {
    let command = healthcheck_command();
    Command::new(&command[0]).args(&command[1..]).env("LEASEHOLD_LISTEN", listen).output().unwrap()
}

#[test]
fn docker_healthcheck_passes_while_healthz_answers_and_fails_once_the_server_is_gone() {
    let command = healthcheck_command();
    assert_eq!(command[0], "bash", "the slim image has bash, not curl");
    let mut server = Server::start(&config("workers = 1", ""));
    // The image listens on 0.0.0.0 and the check dials loopback: a list of addresses, of which
    // the check takes the first one's port.
    let listen = format!("0.0.0.0:{},127.0.0.1:1", server.addr.port());
    let out = health(&listen);
    assert!(out.status.success(), "healthy server seen unhealthy: {}", String::from_utf8_lossy(&out.stderr));
    // Another port, where nothing answers 200: unhealthy.
    assert!(!health("0.0.0.0:1").status.success());

    server.signal(Signal::SIGTERM);
    let (status, _) = server.wait_exit(support::DEADLINE);
    assert!(status.success(), "{status}");
    assert!(!health(&listen).status.success(), "a stopped server seen healthy");
}

/// A `docker` command's output; panics naming it when it fails.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).stdin(Stdio::null()).output().expect("run docker");
    assert!(out.status.success(), "docker {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the test's container and image, whatever happened.
struct DockerCleanup {
    image: String,
    container: Option<String>,
}

impl Drop for DockerCleanup {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("docker").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
        };
        if let Some(container) = &self.container {
            quiet(&["rm", "-f", container]);
        }
        quiet(&["rmi", "-f", &self.image]);
    }
}

/// `GET /healthz` on `addr`: the status line and the body.
fn get_healthz(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

#[test]
fn docker_image_builds_turns_healthy_serves_and_stops_cleanly() {
    let daemon = Command::new("docker").arg("info").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !matches!(daemon, Ok(status) if status.success()) {
        println!("skipped: no Docker daemon answers `docker info` (README, Install, says how to build the image)");
        return;
    }
    let mut cleanup = DockerCleanup { image: format!("leasehold-test:{}", std::process::id()), container: None };
    let built = Command::new("docker")
        .args(["build", "-t", &cleanup.image, "."])
        .current_dir(root())
        .stdin(Stdio::null())
        .output()
        .expect("docker build");
    assert!(built.status.success(), "docker build: {}", String::from_utf8_lossy(&built.stderr));
    assert_ne!(docker(&["image", "inspect", "-f", "{{.Config.User}}", &cleanup.image]), "", "the image runs as a user");

    let container = docker(&[
        "run",
        "-d",
        "-p",
        "127.0.0.1::8080",
        "-e",
        "LEASEHOLD_INSECURE_ANONYMOUS=1",
        "-e",
        "LEASEHOLD_WORKERS=1",
        &cleanup.image,
    ]);
    cleanup.container = Some(container.clone());
    // The first check runs one interval (10 s) after the start, within the 30 s of wait_for.
    wait_for("the container healthy", || match docker(&["inspect", "-f", "{{.State.Health.Status}}", &container]) {
        state if state == "healthy" => Ok(()),
        state if state == "unhealthy" => panic!("unhealthy; logs:\n{}", docker(&["logs", &container])),
        state => Err(state),
    });

    let port = docker(&["port", &container, "8080/tcp"]);
    let addr: SocketAddr = port.lines().next().unwrap().parse().expect("a published address");
    let answer = wait_for("GET /healthz through the published port", || get_healthz(addr));
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("\"status\":\"ok\""), "{answer}");

    // SIGTERM drains within the image's drain timeout, below docker stop's 10 s: exit 0.
    docker(&["stop", &container]);
    assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", &container]), "false");
    assert_eq!(docker(&["inspect", "-f", "{{.State.ExitCode}}", &container]), "0");
}
