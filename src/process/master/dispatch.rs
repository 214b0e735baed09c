//! fd-passing: the master accepts, picks a worker (least-connections fed by the workers'
//! close reports, or round-robin) and sends the connection over `SCM_RIGHTS`. A failed
//! hand-off is re-routed; with no worker ready the connection waits (bounded in number and
//! time) for one, and is answered 503 when none comes (a connection on a TLS listener is
//! closed instead: the master speaks no TLS, the handshake is the worker's). The record
//! sent with a connection says whether it came from a TLS listener.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::net::Shutdown;
use std::os::fd::AsFd;

use mio::net::TcpStream;

use super::children::Proc;
use crate::config::Balance;
use crate::core::balance::Balancer;
use crate::core::lifecycle::Generation;
use crate::http::status;
use crate::ipc::message::FdRecord;
use crate::sys::fdpass;

/// Connections held while no worker is ready, and for how long.
pub const MAX_WAITING_CONNECTIONS: usize = 4096;
/// How long a connection waits for a worker before it is answered 503.
pub const MAX_WAITING_MS: u64 = 10_000;

/// The master's side of fd-passing.
pub struct Dispatcher {
    balancer: Balancer,
    /// Connections waiting for a worker: the stream, whether it came from a TLS listener,
    /// since when.
    waiting: VecDeque<(TcpStream, bool, u64)>,
    /// The metadata of every client hand-off from a plain listener (the same bytes each time).
    client_record: Vec<u8>,
    /// The same from a TLS listener.
    tls_client_record: Vec<u8>,
    /// The whole answer to a connection no worker can take.
    overloaded: Vec<u8>,
    /// Hand-offs that failed and were re-routed.
    pub handoff_failures: u64,
}

impl Dispatcher {
    /// A dispatcher with the configured balancing rule.
    pub fn new(balance: Balance) -> Self {
        Self {
            balancer: Balancer::new(balance),
            waiting: VecDeque::new(),
            client_record: serde_json::to_vec(&FdRecord::Client).unwrap_or_default(),
            tls_client_record: serde_json::to_vec(&FdRecord::TlsClient).unwrap_or_default(),
            overloaded: status::no_worker_free(),
            handoff_failures: 0,
        }
    }

    /// A reload may change the rule.
    pub fn set_rule(&mut self, balance: Balance) {
        self.balancer.set_rule(balance);
    }

    /// Hands a connection (`tls`: from a TLS listener) to one of `serving`, re-routing on
    /// failure; with none able to take it, it waits (bounded) for one.
    pub fn route(
        &mut self,
        mut stream: TcpStream,
        tls: bool,
        since_ms: u64,
        serving: &[Generation],
        procs: &mut BTreeMap<Generation, Proc>,
    ) {
        let counts: Vec<u32> = serving.iter().map(|g| procs.get(g).map_or(u32::MAX, |p| p.open_connections)).collect();
        let mut skip = vec![false; serving.len()];
        while let Some(i) = self.balancer.pick(&counts, &skip) {
            let Some(child) = procs.get_mut(&serving[i]) else {
                skip[i] = true;
                continue;
            };
            let record = if tls { &self.tls_client_record } else { &self.client_record };
            match fdpass::send(child.fds.as_fd(), record, &[stream.as_fd()]) {
                Ok(()) => {
                    child.open_connections += 1;
                    return;
                }
                Err(e) => {
                    self.handoff_failures += 1;
                    log::warn!("hand-off to worker pid {} failed ({e}); trying another", child.pid);
                    skip[i] = true;
                }
            }
        }
        if self.waiting.len() >= MAX_WAITING_CONNECTIONS {
            self.refuse(&mut stream, tls);
            return;
        }
        self.waiting.push_back((stream, tls, since_ms));
    }

    /// Answers 503 to a connection no worker takes; closes one from a TLS listener.
    fn refuse(&self, stream: &mut TcpStream, tls: bool) {
        if !tls {
            let _ = stream.write(&self.overloaded);
        }
        let _ = stream.shutdown(Shutdown::Write);
    }

    /// Tries again every waiting connection (a worker became ready).
    pub fn route_waiting(&mut self, serving: &[Generation], procs: &mut BTreeMap<Generation, Proc>) {
        if serving.is_empty() {
            return;
        }
        for _ in 0..self.waiting.len() {
            let Some((stream, tls, since)) = self.waiting.pop_front() else { break };
            self.route(stream, tls, since, serving, procs);
        }
    }

    /// When the oldest waiting connection times out.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.waiting.front().map(|(_, _, since)| since + MAX_WAITING_MS)
    }

    /// Answers 503 to the connections that waited too long.
    pub fn expire(&mut self, now_ms: u64) {
        while self.waiting.front().is_some_and(|(_, _, since)| since + MAX_WAITING_MS <= now_ms) {
            if let Some((mut stream, tls, _)) = self.waiting.pop_front() {
                log::warn!("no worker took a connection within {MAX_WAITING_MS} ms: answered 503");
                self.refuse(&mut stream, tls);
            }
        }
    }

    /// Answers 503 to every waiting connection (the service stops).
    pub fn refuse_waiting(&mut self) {
        for (mut stream, tls, _) in std::mem::take(&mut self.waiting) {
            self.refuse(&mut stream, tls);
        }
    }
}
