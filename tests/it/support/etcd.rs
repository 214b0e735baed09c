//! A 3-member etcd cluster on loopback for the cluster tests: `tests/cluster/etcd.sh` run
//! in a scratch directory (in memory when it can be, so etcd's syncs are cheap), stopped
//! when the [`EtcdCluster`] is dropped. Members can be killed and restarted by number.

use std::path::Path;
use std::process::Command;

/// The rig's script.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/etcd.sh");

/// A running 3-member etcd cluster.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    /// The members' client URLs, in member order (member 1 first).
    pub endpoints: Vec<String>,
}

/// Runs the rig's script with `args`; panics with its output when it fails.
fn script(dir: &Path, action: &str, members: &[usize]) {
    if let Err(failed) = try_script(dir, action, members) {
        panic!("{failed}");
    }
}

/// Runs the rig's script with `args`; its output when it fails.
fn try_script(dir: &Path, action: &str, members: &[usize]) -> Result<(), String> {
    let mut cmd = Command::new("bash");
    cmd.arg(SCRIPT).arg(action).arg(dir);
    cmd.args(members.iter().map(ToString::to_string));
    let out = cmd.output().expect("run tests/cluster/etcd.sh");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "tests/cluster/etcd.sh {action} {members:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// Panics with the way out when etcd or etcdctl is missing.
fn require_etcd() {
    for (tool, arg) in [("etcd", "--version"), ("etcdctl", "version")] {
        if Command::new(tool).arg(arg).output().is_err() {
            panic!(
                "{tool} is not installed: the cluster tests run a real etcd; install it with `sudo bash tests/deps.sh`"
            );
        }
    }
}

impl EtcdCluster {
    /// Starts 3 fresh members and waits until all are healthy.
    pub fn start() -> Self {
        require_etcd();
        // A member that dies while it starts (seen about once in a hundred starts on a loaded
        // machine, its log cut after its first line) fails the start: a fresh one is tried.
        let mut tries = 0;
        let dir = loop {
            let dir = super::scratch();
            match try_script(dir.path(), "start", &[]) {
                Ok(()) => break dir,
                Err(failed) if tries < 2 => {
                    eprintln!("starting etcd again: {failed}");
                    let _ = Command::new("bash").arg(SCRIPT).arg("stop").arg(dir.path()).output();
                    tries += 1;
                }
                Err(failed) => panic!("{failed}"),
            }
        };
        let text = std::fs::read_to_string(dir.path().join("endpoints")).expect("read the endpoints file");
        let endpoints: Vec<String> = text.trim().split(',').map(str::to_string).collect();
        assert_eq!(endpoints.len(), 3, "endpoints: {text:?}");
        EtcdCluster { dir, endpoints }
    }

    /// SIGKILLs members `members` (1 to 3) and waits until they are gone.
    pub fn kill(&self, members: &[usize]) {
        script(self.dir.path(), "kill", members);
    }

    /// Starts members `members` again on their ports and data; waits until healthy.
    pub fn restart(&self, members: &[usize]) {
        script(self.dir.path(), "restart", members);
    }

    /// Runs `etcdctl` against every member; its standard output.
    pub fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints.join(",")))
            .args(args)
            .output()
            .expect("run etcdctl");
        assert!(out.status.success(), "etcdctl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// How many keys start with `prefix` (a range's answer counts every key in it, however
    /// few it returns).
    pub fn keys_under(&self, prefix: &str) -> u64 {
        let count = self.etcdctl(&["get", "--prefix", prefix, "--keys-only", "--limit", "1", "-w", "json"]);
        let count: serde_json::Value = serde_json::from_str(&count).expect("etcdctl's JSON");
        count["count"].as_u64().unwrap_or(0)
    }

    /// The first batch still in the log of the cluster under `/leasehold` (0: the log is
    /// empty).
    pub fn first_log_batch(&self) -> u64 {
        let keys = self.etcdctl(&["get", "--prefix", "/leasehold/log/", "--keys-only", "--limit", "1"]);
        keys.lines().find_map(|l| l.trim().strip_prefix("/leasehold/log/")?.parse().ok()).unwrap_or(0)
    }

    /// The member (1 to 3) that is etcd's raft leader now.
    pub fn leader_member(&self) -> usize {
        let text = self.etcdctl(&["endpoint", "status", "--write-out=json"]);
        let status: serde_json::Value = serde_json::from_str(&text).expect("etcdctl's JSON");
        let members = status.as_array().expect("one status per endpoint");
        let found = members.iter().position(|m| {
            let s = &m["Status"];
            s["leader"].as_u64().is_some_and(|leader| Some(leader) == s["header"]["member_id"].as_u64())
        });
        let at = found.unwrap_or_else(|| panic!("no member leads: {text}"));
        let endpoint = members[at]["Endpoint"].as_str().expect("an endpoint");
        1 + self.endpoints.iter().position(|e| e == endpoint).expect("a known endpoint")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(SCRIPT).arg("stop").arg(self.dir.path()).output();
    }
}
