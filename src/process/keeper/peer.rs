//! The peer link of cluster mode (docs/cluster.md, "The peer link"): a follower's keeper
//! forwards the changes its workers ask for to the leader's keeper over TCP, in the same
//! length-prefixed JSON frames as every channel, and relays the answers and pushed events
//! back. Decides nothing: the leader's keeper treats a peer as one more channel.
//!
//! - **Accepting** ([`Peers`]): every node listens on `cluster.peer_listen`. A connection's
//!   first frame must be a [`PeerHello`] with the cluster's secret (compared in constant
//!   time); anything else, or a wrong secret, closes it unheard. At most
//!   [`MAX_UNHEARD_PEERS`] connections wait for their hello, one that waited longer than
//!   [`HELLO_WITHIN_MS`] makes room for a new one, and a peer's frames are at most
//!   [`MAX_PEER_FRAME_BYTES`]. A hello that asks for the snapshot (`"want":"snapshot"`)
//!   takes its connection out of the loop: a thread sends the node's local snapshot on it
//!   and closes it (`process::fetch`, at most `MAX_SENDS` at once).
//! - **TLS** (`cluster.peer_tls_*`, `process::tls`): when configured, every connection,
//!   accepted or opened, is a TLS 1.3 session with certificates checked on both sides, and
//!   the hello with the secret follows inside it. A connection still in its handshake has
//!   not said hello: it counts among the unheard, under the same limits.
//! - **Forwarding** ([`Forward`]): a follower that knows the leader's peer address keeps one
//!   connection to it. A request gets an id of the link's own (the ids of several workers
//!   would collide), a `Watch` remembers which worker's stream its events go to, and a
//!   `Cancel` follows its request. A worker channel that closes has its waiting requests
//!   cancelled and its watches ended at the leader. Streams survive a failover: a new link
//!   watches them again, and a follower that takes over watches them itself. When the link breaks, every request still waiting for
//!   its answer is answered `unknown` (503: it may or may not have taken effect), and the
//!   link is tried again after [`RECONNECT_MS`].

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::ToSocketAddrs;

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Poll, Token};

use super::Keeper;
use crate::config::PeerConfig;
use crate::core::names::{LockName, Ticket};
use crate::ipc::message::{FromKeeper, LockOp, LockReply, PeerHello, PeerWant, ToKeeper};
use crate::process::channel::{Channel, ChannelError};
use crate::process::fetch::{self, Sends};
use crate::process::tls::PeerTls;
use crate::service::LinkId;

/// The token of the peer listener.
pub(super) const PEER_LISTEN: Token = Token(4);
/// The token of the forwarding connection.
pub(super) const FORWARD: Token = Token(5);
/// Connections that have not said hello yet, at most.
pub const MAX_UNHEARD_PEERS: usize = 16;
/// How long a connection may take to say hello before a new one may take its place.
pub const HELLO_WITHIN_MS: u64 = 5_000;
/// Longest frame on the peer link (a worker's request is far smaller).
pub const MAX_PEER_FRAME_BYTES: u32 = 4 * 1024 * 1024;
/// The request id of a stream watched again by a node that took over (no worker's: they
/// count from 1).
const REWATCH_ID: u64 = u64::MAX;
/// How long a follower waits before it connects again to a leader whose link broke.
pub const RECONNECT_MS: u64 = 500;

/// Both sides of the peer link of a node whose peer link `config` describes (node `node`):
/// its TLS files are read here, once.
pub(super) fn start(config: &PeerConfig, node: &str, poll: &Poll) -> io::Result<(Peers, Forward)> {
    let tls = match &config.tls {
        None => None,
        Some(files) => Some(PeerTls::load(files, &config.advertise).map_err(|problems| {
            let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
            io::Error::new(io::ErrorKind::InvalidInput, format!("peer link TLS: {}", problems.join("; ")))
        })?),
    };
    let peers = Peers::listen(config, node, tls.clone(), poll)?;
    Ok((peers, Forward::new(node, &config.secret, tls)))
}

/// The accepting side: the listener, and which channels have not said hello yet.
pub(super) struct Peers {
    listener: TcpListener,
    secret: String,
    node: String,
    /// Sessions for the connections accepted, when the link has TLS.
    tls: Option<PeerTls>,
    /// Channels (by link index) still waiting for their hello, and since when.
    pub(super) unheard: HashMap<usize, u64>,
    /// Channels (by link index) of admitted peers: what they send is for the leader.
    pub(super) heard: HashSet<usize>,
    /// The snapshot transfers running.
    sends: Sends,
}

impl Peers {
    /// Listens on `config.listen`.
    fn listen(config: &PeerConfig, node: &str, tls: Option<PeerTls>, poll: &Poll) -> io::Result<Self> {
        let mut listener = TcpListener::bind(config.listen)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen for peers on {}: {e}", config.listen)))?;
        poll.registry().register(&mut listener, PEER_LISTEN, Interest::READABLE)?;
        let over = if tls.is_some() { "TLS" } else { "plain TCP" };
        log::info!("peer link: listening on {} (advertised as {}), over {over}", config.listen, config.advertise);
        Ok(Self {
            listener,
            secret: config.secret.clone(),
            node: node.to_string(),
            tls,
            unheard: HashMap::new(),
            heard: HashSet::new(),
            sends: Sends::default(),
        })
    }

    /// Whether `hello` carries the cluster's secret (compared in constant time).
    fn admits(&self, hello: &PeerHello) -> bool {
        let (a, b) = (hello.secret.as_bytes(), self.secret.as_bytes());
        let mut diff = u8::from(a.len() != b.len());
        for (i, x) in a.iter().enumerate() {
            diff |= x ^ b.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

/// The forwarding side: one connection to the leader, and what is in flight over it.
pub(super) struct Forward {
    hello: PeerHello,
    /// Sessions for the connections opened, when the link has TLS.
    tls: Option<PeerTls>,
    /// The leader's peer address it is connected (or connecting) to.
    to: Option<String>,
    channel: Option<Channel>,
    /// Not before this time after a link broke.
    retry_at_ms: u64,
    next_id: u64,
    /// The link's request ids: the worker channel and request id each stands for.
    pending: HashMap<u64, (LinkId, u64)>,
    by_local: HashMap<(LinkId, u64), u64>,
    /// Which worker channel each watched ticket's events go to.
    watches: HashMap<(LockName, Ticket), LinkId>,
    /// Requests of the link's own (watches made again) whose answers go to no worker.
    swallowed: std::collections::HashSet<u64>,
}

impl Forward {
    /// The forwarding side of node `node`, presenting `secret` (over TLS with `tls`).
    fn new(node: &str, secret: &str, tls: Option<PeerTls>) -> Self {
        Self {
            hello: PeerHello { node: node.to_string(), secret: secret.to_string(), want: None },
            tls,
            to: None,
            channel: None,
            retry_at_ms: 0,
            next_id: 1,
            pending: HashMap::new(),
            by_local: HashMap::new(),
            watches: HashMap::new(),
            swallowed: std::collections::HashSet::new(),
        }
    }

    /// The streams this node's workers hold, handed over (this node now leads: they are
    /// watched here).
    pub(super) fn take_watches(&mut self) -> Vec<((LockName, Ticket), LinkId)> {
        self.watches.drain().collect()
    }

    /// Whether changes can be forwarded now.
    pub(super) fn ready(&self) -> bool {
        self.channel.is_some()
    }

    /// Sends `message` from worker channel `link` to the leader.
    fn forward(&mut self, link: LinkId, message: &ToKeeper) -> Result<(), ChannelError> {
        let Some(channel) = self.channel.as_mut() else { return Ok(()) };
        match message {
            ToKeeper::Request { id, op } => {
                let peer_id = self.next_id;
                self.next_id += 1;
                if let LockOp::Watch { lock, ticket } = op {
                    self.watches.insert((lock.clone(), *ticket), link);
                }
                self.pending.insert(peer_id, (link, *id));
                self.by_local.insert((link, *id), peer_id);
                channel.send(&ToKeeper::Request { id: peer_id, op: op.clone() })
            }
            ToKeeper::Cancel { id } => match self.by_local.get(&(link, *id)) {
                Some(&peer_id) => channel.send(&ToKeeper::Cancel { id: peer_id }),
                None => Ok(()),
            },
            ToKeeper::Unwatch { lock, ticket } => {
                self.watches.remove(&(lock.clone(), *ticket));
                channel.send(message)
            }
            // The courier is this node's own: the leader's courier makes the calls.
            ToKeeper::CourierReady { .. } | ToKeeper::Delivered { .. } => Ok(()),
        }
    }

    /// Calls off what worker channel `link` (now closed) had asked over the link: its
    /// waiting requests are cancelled at the leader, and its watches end there.
    fn forget(&mut self, link: LinkId) -> Result<(), ChannelError> {
        let Some(channel) = self.channel.as_mut() else { return Ok(()) };
        let gone: Vec<(u64, u64)> =
            self.pending.iter().filter(|(_, (l, _))| *l == link).map(|(peer_id, (_, id))| (*peer_id, *id)).collect();
        for (peer_id, id) in gone {
            self.pending.remove(&peer_id);
            self.by_local.remove(&(link, id));
            channel.send(&ToKeeper::Cancel { id: peer_id })?;
        }
        let watched: Vec<(LockName, Ticket)> =
            self.watches.iter().filter(|(_, l)| **l == link).map(|(key, _)| key.clone()).collect();
        for (lock, ticket) in watched {
            self.watches.remove(&(lock.clone(), ticket));
            channel.send(&ToKeeper::Unwatch { lock, ticket })?;
        }
        Ok(())
    }

    /// Ends the link: every request still waiting is answered `unknown`.
    fn broken(&mut self, poll: &Poll, now_ms: u64, out: &mut Vec<(LinkId, FromKeeper)>) {
        if let Some(mut channel) = self.channel.take() {
            channel.deregister(poll.registry());
        }
        self.retry_at_ms = now_ms + RECONNECT_MS;
        self.by_local.clear();
        // Watches are kept: the next link watches them again (a stream survives a failover).
        self.swallowed.clear();
        let message = "the link to the leader broke while this request was in flight; its effect is unknown";
        for (_, (link, id)) in self.pending.drain() {
            out.push((link, FromKeeper::Reply { id, reply: LockReply::Unknown { message: message.into() } }));
        }
    }

    /// Connects to `to` (the leader's peer address) unless connected to it already.
    fn aim(&mut self, to: Option<String>, poll: &Poll, now_ms: u64, out: &mut Vec<(LinkId, FromKeeper)>) {
        if self.to != to {
            self.broken(poll, now_ms, out);
            self.retry_at_ms = 0;
            self.to = to;
        }
        let Some(address) = self.to.clone() else { return };
        if self.channel.is_some() || now_ms < self.retry_at_ms {
            return;
        }
        match connect(&address, poll, &self.hello, self.tls.as_ref()) {
            Ok(mut channel) => {
                log::info!("peer link: forwarding changes to the leader at {address}");
                // The streams this node's workers hold are watched again on the new link;
                // the answers to those watches are this link's, not a worker's.
                for (lock, ticket) in self.watches.keys() {
                    let peer_id = self.next_id;
                    self.next_id += 1;
                    self.swallowed.insert(peer_id);
                    let op = LockOp::Watch { lock: lock.clone(), ticket: *ticket };
                    if channel.send(&ToKeeper::Request { id: peer_id, op }).is_err() {
                        break;
                    }
                }
                self.channel = Some(channel);
            }
            Err(e) => {
                log::warn!("peer link: cannot connect to the leader at {address}: {e}");
                self.retry_at_ms = now_ms + RECONNECT_MS;
            }
        }
    }
}

/// A connection to `address`, registered, with the hello queued first (sent once the TLS
/// handshake, if any, is done).
fn connect(address: &str, poll: &Poll, hello: &PeerHello, tls: Option<&PeerTls>) -> io::Result<Channel> {
    let addr = address
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing"))?;
    let session = tls.map(|tls| tls.connect(address)).transpose()?;
    let stream = TcpStream::connect(addr)?;
    let mut channel = match session {
        Some(session) => Channel::tls(stream, session, FORWARD, MAX_PEER_FRAME_BYTES),
        None => Channel::tcp(stream, FORWARD, MAX_PEER_FRAME_BYTES),
    };
    channel.register(poll.registry())?;
    channel.send(hello).map_err(|e| io::Error::other(e.to_string()))?;
    Ok(channel)
}

impl Keeper {
    /// Accepts peer connections: each becomes a channel that must say hello first.
    pub(super) fn on_peer_listen(&mut self) {
        loop {
            let Some(peers) = self.peers.as_mut() else { return };
            let (stream, from) = match peers.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("peer link: accept failed: {e}");
                    return;
                }
            };
            let now = super::wall_ms();
            if peers.unheard.len() >= MAX_UNHEARD_PEERS {
                // Make room: connections that did not say hello in time go.
                let late: Vec<usize> = peers
                    .unheard
                    .iter()
                    .filter(|(_, since)| now.saturating_sub(**since) > HELLO_WITHIN_MS)
                    .map(|(index, _)| *index)
                    .collect();
                for index in late {
                    log::warn!("peer link: a connection did not say hello within {HELLO_WITHIN_MS} ms: closed");
                    self.close_link(index);
                }
            }
            let Some(peers) = self.peers.as_mut() else { return };
            if peers.unheard.len() >= MAX_UNHEARD_PEERS {
                log::warn!("peer link: {from} refused: {MAX_UNHEARD_PEERS} connections are waiting to say hello");
                continue;
            }
            let session = match peers.tls.as_ref().map(PeerTls::accept).transpose() {
                Ok(session) => session,
                Err(e) => {
                    log::warn!("peer link: no TLS session for the connection from {from}: {e}");
                    continue;
                }
            };
            let index = self.free_link_slot();
            let token = Token(super::LINK_BASE + index);
            let mut channel = match session {
                Some(session) => Channel::tls(stream, session, token, MAX_PEER_FRAME_BYTES),
                None => Channel::tcp(stream, token, MAX_PEER_FRAME_BYTES),
            };
            match channel.register(self.poll.registry()) {
                Ok(()) => {
                    self.links[index] = Some(channel);
                    if let Some(peers) = self.peers.as_mut() {
                        peers.unheard.insert(index, now);
                    }
                    log::debug!("peer link: connection from {from}");
                }
                Err(e) => log::warn!("peer link: cannot watch the connection from {from}: {e}"),
            }
        }
    }

    /// The first frame of an unheard peer: its hello. Returns whether the channel stays.
    pub(super) fn on_peer_hello(&mut self, index: usize) -> bool {
        let Some(link) = self.links[index].as_mut() else { return false };
        let heard = match link.recv::<PeerHello>() {
            Ok(None) => return true,
            Ok(Some(hello)) => Some(hello),
            Err(_) => None,
        };
        let Some(peers) = self.peers.as_mut() else { return false };
        peers.unheard.remove(&index);
        match heard {
            Some(hello) if peers.admits(&hello) && hello.want == Some(PeerWant::Snapshot) => {
                self.send_snapshot(index, hello.node);
                false
            }
            Some(hello) if peers.admits(&hello) => {
                peers.heard.insert(index);
                log::info!("peer link: node {} connected (to node {})", hello.node, peers.node);
                true
            }
            other => {
                let who = other.map_or_else(|| "a connection".to_string(), |h| format!("node {:?}", h.node));
                log::warn!("peer link: {who} did not present the cluster's secret: closed");
                if let Some(mut link) = self.links[index].take() {
                    link.deregister(self.poll.registry());
                }
                false
            }
        }
    }

    /// An admitted peer asked for the snapshot: its connection leaves the loop for a thread
    /// that sends the snapshot file and closes it (none while [`fetch::MAX_SENDS`] run:
    /// closed at once).
    fn send_snapshot(&mut self, index: usize, node: String) {
        let Some(mut link) = self.links[index].take() else { return };
        link.deregister(self.poll.registry());
        let Some(peers) = self.peers.as_ref() else { return };
        let Some(slot) = peers.sends.start() else {
            log::warn!(
                "peer link: node {node:?} asked for the snapshot while {} are being sent: closed",
                fetch::MAX_SENDS
            );
            return;
        };
        match link.into_tcp() {
            Some(stream) => fetch::serve(stream, self.data_dir.clone(), node, slot),
            None => log::error!("peer link: a peer connection that is not TCP: closed"),
        }
    }

    /// Forwards a change a follower's worker asked for, when the link to the leader is up.
    /// Returns whether it was forwarded.
    pub(super) fn forwarded(&mut self, link: LinkId, message: &ToKeeper) -> bool {
        let Some(forward) = self.forward.as_mut().filter(|f| f.ready()) else { return false };
        if let Err(e) = forward.forward(link, message) {
            log::warn!("peer link: cannot forward to the leader ({e})");
            let mut out = Vec::new();
            forward.broken(&self.poll, super::wall_ms(), &mut out);
            self.release_now(out);
        }
        true
    }

    /// A worker channel of this follower closed: what it asked over the link is called off.
    pub(super) fn forget_forwarded(&mut self, link: LinkId) {
        let Some(forward) = self.forward.as_mut() else { return };
        if let Err(e) = forward.forget(link) {
            log::warn!("peer link: the link to the leader broke ({e})");
            let mut out = Vec::new();
            forward.broken(&self.poll, super::wall_ms(), &mut out);
            self.release_now(out);
        }
    }

    /// What the leader sent back over the link: answers and events, each to its worker.
    pub(super) fn on_forward(&mut self) {
        let Some(forward) = self.forward.as_mut() else { return };
        let Some(channel) = forward.channel.as_mut() else { return };
        let mut failed = channel.fill().err();
        let mut out = Vec::new();
        while failed.is_none() {
            match channel.recv::<FromKeeper>() {
                Ok(Some(FromKeeper::Reply { id, reply })) => {
                    if forward.swallowed.remove(&id) {
                        continue;
                    }
                    if let Some((link, local)) = forward.pending.remove(&id) {
                        forward.by_local.remove(&(link, local));
                        out.push((link, FromKeeper::Reply { id: local, reply }));
                    }
                }
                Ok(Some(FromKeeper::Waiting { id, reply })) => {
                    // The request waits on: its worker learns where it stands.
                    if let Some(&(link, local)) = forward.pending.get(&id) {
                        out.push((link, FromKeeper::Waiting { id: local, reply }));
                    }
                }
                Ok(Some(FromKeeper::Event { lock, ticket, event })) => {
                    if let Some(&link) = forward.watches.get(&(lock.clone(), ticket)) {
                        out.push((link, FromKeeper::Event { lock, ticket, event }));
                    }
                }
                Ok(Some(FromKeeper::Hello { .. } | FromKeeper::Cluster { .. } | FromKeeper::Deliver { .. })) => {}
                Ok(None) => break,
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            log::warn!("peer link: the link to the leader broke ({e})");
            forward.broken(&self.poll, super::wall_ms(), &mut out);
        }
        self.release_now(out);
    }

    /// Keeps the forwarding link pointed at the leader the rules know of (none while this
    /// node leads or no leader is known), and flushes it. Once this node leads, the streams
    /// its workers held through the link are watched here instead.
    pub(super) fn aim_forward(&mut self, leader_peer: Option<String>) -> io::Result<()> {
        let leads = self.cluster.as_ref().is_some_and(super::cluster::Node::leads);
        let Some(forward) = self.forward.as_mut() else { return Ok(()) };
        let mut out = Vec::new();
        forward.aim(leader_peer, &self.poll, super::wall_ms(), &mut out);
        let handed = if leads { forward.take_watches() } else { Vec::new() };
        if let Some(Err(e)) = forward.channel.as_mut().map(Channel::flush) {
            log::warn!("peer link: the link to the leader broke ({e})");
            forward.broken(&self.poll, super::wall_ms(), &mut out);
        }
        self.release_now(out);
        for ((lock, ticket), link) in handed {
            // Its answer goes to a request id no worker uses: the worker ignores it.
            self.on_message(link, ToKeeper::Request { id: REWATCH_ID, op: LockOp::Watch { lock, ticket } })?;
        }
        Ok(())
    }
}
