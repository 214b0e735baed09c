//! leasehold nodes of one cluster on loopback, for the end-to-end cluster tests: each is
//! the real binary with its own port, data directory and log, all on one 3-member etcd
//! ([`super::etcd::EtcdCluster`]). A node can be killed outright (SIGKILL to the master and
//! every child, as `kill -9` of its process group), stopped cleanly (SIGTERM), frozen and
//! thawed (SIGSTOP, SIGCONT), and started again on its port and data directory. [`Follow`] is a client that follows the leader as the
//! README says clients should: a `not_leader` answer names the leader, a node that does
//! not answer is passed over.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::etcd::EtcdCluster;
use super::http::{once, Client, Reply};
use super::{signal_pid, wait_for, Server, DEADLINE};

/// The secret of the peer link in the tests.
pub const PEER_SECRET: &str = "a-test-secret-of-the-peer-link";

/// The election TTL the tests run with (etcd's shortest lease).
pub const ELECTION_TTL_MS: u64 = 3_000;

/// One node: its port, data directory and configuration, and its server while it runs.
pub struct Node {
    /// Where clients reach it.
    pub addr: SocketAddr,
    /// Its data directory (kept across restarts, as a host's disk).
    pub data: tempfile::TempDir,
    config: String,
    /// The running server (`None` once killed).
    pub server: Option<Server>,
}

impl Node {
    /// Sends `signal` to the master and every child (the whole process group).
    pub fn signal_all(&self, signal: Signal) {
        let server = self.server.as_ref().expect("a running node");
        for (pid, _) in server.children() {
            signal_pid(pid, signal);
        }
        signal_pid(server.pid(), signal);
    }

    /// Kills the node outright (SIGKILL to every process of it), as a crash of its host.
    pub fn kill(&mut self) {
        self.signal_all(Signal::SIGKILL);
        self.server = None;
    }

    /// Stops the node cleanly (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        self.server.as_ref().expect("a running node").signal(Signal::SIGTERM);
        self.wait_stopped();
    }

    /// Waits for a node told to stop (SIGTERM) to exit, cleanly.
    fn wait_stopped(&mut self) {
        let mut server = self.server.take().expect("a running node");
        let (status, _) = server.wait_exit(DEADLINE);
        assert!(
            status.success(),
            "a clean stop: {status}
{}",
            server.log()
        );
    }

    /// Starts the node again on its port and data directory (it starts from its local
    /// snapshot, if it has one, and reads the log after it).
    pub fn restart(&mut self) {
        assert!(self.server.is_none(), "the node still runs");
        self.server = Some(Server::start(&self.config));
    }

    /// Where it listens for other nodes, when it has a peer link.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        let line = self.config.lines().find_map(|l| l.strip_prefix("peer_listen = "))?;
        line.trim_matches('"').parse().ok()
    }

    /// Its `/readyz` body's `cluster` part, if it answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        let mut client = Client::connect(self.addr).ok()?;
        client.set_timeout(Duration::from_secs(2));
        let reply = client.get("/readyz").ok()?;
        let body: serde_json::Value = serde_json::from_slice(&reply.body).ok()?;
        Some(body["cluster"].clone()).filter(serde_json::Value::is_object)
    }
}

/// A free loopback port below the kernel's ephemeral range (where connections take theirs).
fn free_port(salt: u64) -> u16 {
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    (0..1_000u64)
        .map(|i| 15_000 + ((seed ^ salt.wrapping_mul(7_919)).wrapping_add(i * 104_729) % 17_000) as u16)
        .find(|port| TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port")
}

/// The nodes of one cluster.
pub struct Nodes {
    /// The nodes, in start order.
    pub nodes: Vec<Node>,
}

impl Nodes {
    /// Starts `n` nodes on `etcd`, each with `workers` workers, and waits until one leads
    /// and every node knows it.
    pub fn start(etcd: &EtcdCluster, n: usize, workers: usize) -> Nodes {
        Self::start_with(etcd, n, workers, "")
    }

    /// [`Nodes::start`] with `extra` sections appended to every node's configuration.
    pub fn start_with(etcd: &EtcdCluster, n: usize, workers: usize, extra: &str) -> Nodes {
        Self::launch(etcd, n, workers, extra, false)
    }

    /// [`Nodes::start`] with the peer link: followers forward to the leader.
    pub fn start_peered(etcd: &EtcdCluster, n: usize, workers: usize) -> Nodes {
        Self::launch(etcd, n, workers, "", true)
    }

    /// [`Nodes::start_peered`] with `extra` keys of the `[cluster]` section (or sections
    /// after it) in every node's configuration.
    pub fn start_peered_with(etcd: &EtcdCluster, n: usize, workers: usize, extra: &str) -> Nodes {
        Self::launch(etcd, n, workers, extra, true)
    }

    fn launch(etcd: &EtcdCluster, n: usize, workers: usize, extra: &str, peered: bool) -> Nodes {
        let mut nodes = Vec::new();
        for i in 0..n {
            let port = free_port(i as u64 + 1);
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let peer = if peered {
                let port = free_port(i as u64 + 101);
                format!("peer_listen = \"127.0.0.1:{port}\"\nsecret = \"{PEER_SECRET}\"\n")
            } else {
                String::new()
            };
            let data = super::scratch();
            let config = format!(
                "[server]\nlisten = [\"{addr}\"]\ndata_dir = {:?}\nworkers = {workers}\nlog_level = \"debug\"\n[cluster]\n\
                 etcd_endpoints = {:?}\nnode_name = \"node-{i}\"\nadvertise_url = \"http://{addr}\"\n\
                 election_ttl_ms = {ELECTION_TTL_MS}\n{peer}{extra}\n",
                data.path(),
                etcd.endpoints
            );
            let server = Server::start(&config);
            assert_eq!(server.addr, addr);
            nodes.push(Node { addr, data, config, server: Some(server) });
        }
        let nodes = Nodes { nodes };
        nodes.leader();
        nodes
    }

    /// Stops the nodes `which` cleanly at once (SIGTERM to each, then waits for each).
    pub fn stop_together(&mut self, which: &[usize]) {
        for &i in which {
            self.nodes[i].server.as_ref().expect("a running node").signal(Signal::SIGTERM);
        }
        for &i in which {
            self.nodes[i].wait_stopped();
        }
    }

    /// Every node's address.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// The node that leads, once exactly one running node says it leads and every running
    /// node names it.
    pub fn leader(&self) -> usize {
        wait_for("one leader that every running node knows", || {
            let statuses: Vec<(usize, serde_json::Value)> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.server.is_some())
                .map(|(i, n)| (i, n.status().unwrap_or_default()))
                .collect();
            let leaders: Vec<usize> = statuses.iter().filter(|(_, s)| s["role"] == "leader").map(|(i, _)| *i).collect();
            match leaders.as_slice() {
                [one] => {
                    let url = format!("http://{}", self.nodes[*one].addr);
                    if statuses.iter().all(|(_, s)| s["leader"] == url.as_str()) {
                        return Ok(*one);
                    }
                    Err(statuses)
                }
                _ => Err(statuses),
            }
        })
    }

    /// Waits until every running node applied the log as far as the leader did (as each
    /// keeper says now, in `/metrics`); returns that batch.
    pub fn wait_in_step(&self) -> u64 {
        wait_for("every running node at the leader's batch", || {
            let applied: Vec<Option<u64>> = self
                .nodes
                .iter()
                .filter(|n| n.server.is_some())
                .map(|n| {
                    let metrics = once(n.addr, "GET", "/metrics", &[], "");
                    let text = String::from_utf8_lossy(&metrics.body).into_owned();
                    text.lines()
                        .find_map(|l| l.strip_prefix("leasehold_cluster_applied_batch "))
                        .and_then(|v| v.parse().ok())
                })
                .collect();
            match applied.first() {
                Some(Some(first)) if applied.iter().all(|a| a == &Some(*first)) => Ok(*first),
                _ => Err(applied),
            }
        })
    }
}

/// What a request through [`Follow`] came to.
#[derive(Debug)]
pub enum Outcome {
    /// An answer from a node that did not turn the request away.
    Answer(Reply),
    /// The request may have reached a node, but no answer came back (its node died).
    Unknown,
}

/// A client of the whole cluster that follows the leader.
pub struct Follow {
    addrs: Vec<SocketAddr>,
    at: usize,
}

impl Follow {
    /// A client of `addrs` that tries `first` first.
    pub fn new(addrs: Vec<SocketAddr>, first: usize) -> Follow {
        let at = first % addrs.len();
        Follow { addrs, at }
    }

    /// The node it sends to now.
    pub fn at(&self) -> SocketAddr {
        self.addrs[self.at]
    }

    /// Sends one request to the node it believes leads. `not_leader` with a known leader
    /// sends it there; a node that refuses the connection, a `not_leader` without one, or
    /// a keeper that is not there yet passes to the next node, after a short backoff (a
    /// client's, as the README describes), until the tests' deadline.
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Outcome {
        let deadline = Instant::now() + DEADLINE;
        loop {
            assert!(Instant::now() < deadline, "{method} {path}: no node took it within {DEADLINE:?}");
            let Ok(mut client) = Client::connect(self.addrs[self.at]) else {
                self.next();
                continue;
            };
            let reply = match client.request(method, path, headers, body) {
                Ok(reply) => reply,
                Err(_) => return Outcome::Unknown,
            };
            if reply.status != 503 {
                return Outcome::Answer(reply);
            }
            let error = serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap_or_default();
            let leader = reply.header("leasehold-leader").and_then(|url| url.strip_prefix("http://"));
            let message = error["message"].as_str().unwrap_or("");
            match (error["error"].as_str(), leader.and_then(|l| self.addrs.iter().position(|a| a.to_string() == l))) {
                (Some("not_leader"), Some(at)) if at != self.at => self.at = at,
                (Some("keeper_unavailable"), _) if message.contains("unknown") => return Outcome::Unknown,
                (Some("not_leader" | "keeper_unavailable"), _) => self.next(),
                _ => return Outcome::Answer(reply),
            }
        }
    }

    fn next(&mut self) {
        self.at = (self.at + 1) % self.addrs.len();
        // A client's backoff between tries, not a wait for a condition.
        std::thread::park_timeout(Duration::from_millis(25));
    }
}
