//! The snapshot transfer of cluster mode (docs/cluster.md, "The peer link"): a node whose
//! next batch was trimmed from the log fetches the leader's local snapshot
//! ([`replica`]) over the peer link and keeps it as its own. Both ends are here; neither
//! decides anything: when to fetch is the rules' (`Effect::Fetch`), who may ask is the
//! keeper's hello check (`keeper/peer.rs`), and what a fetched snapshot is for is the
//! keeper's.
//!
//! - **The exchange.** The asker connects to the peer link and sends its hello frame with
//!   the cluster's secret and `"want":"snapshot"`. The server answers with an 8-byte
//!   big-endian length, then that many bytes (the snapshot file), then closes; a node with
//!   no snapshot file answers length 0. Nothing else is ever sent on such a connection: a
//!   refused hello is closed without a byte. When the link has TLS, all of it runs in one
//!   TLS session: the asker's handshake (as in `process::tls`), its hello, and the answer,
//!   which the serving thread writes through the session the keeper's loop began (the
//!   channel hands it over with the socket) and ends with close_notify.
//! - **Serving** ([`serve`]) runs on a thread of its own, out of the keeper's loop, at most
//!   [`MAX_SENDS`] at once ([`Sends`]). The file is read through one open descriptor, so a
//!   snapshot written meanwhile (it replaces the file by rename) cannot mix two files. A
//!   peer that takes nothing for [`STALL_MS`] ends its transfer.
//! - **Fetching** ([`Fetcher`]) connects within [`CONNECT_TIMEOUT_MS`] (and reads the TLS
//!   files at each fetch, so a fetch uses them as they are now), refuses a length
//!   above [`MAX_SNAPSHOT_BYTES`] before it reads a byte of the body, gives up when nothing
//!   arrives for [`STALL_MS`], and writes the file ([`replica::write`]) only once its
//!   framing, checksum and cluster prefix are checked ([`replica::position`]): a failed
//!   fetch leaves the node's own snapshot as it was.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::{ClientConnection, ServerConnection, StreamOwned};

use crate::config::{ClusterConfig, PeerTlsFiles};
use crate::ipc::frame::{self, DEFAULT_MAX_FRAME_BYTES};
use crate::ipc::message::{PeerHello, PeerWant};
use crate::journal::replica::{self, Position};
use crate::process::channel::TcpConnection;
use crate::process::tls::PeerTls;
use crate::service::cluster::Event;

/// Snapshots a node sends at once; a further asker is closed at once (it asks again
/// later, as after any failed fetch).
pub const MAX_SENDS: usize = 2;
/// How long either end of a transfer waits for the other to make progress (take or send
/// a byte) before it gives up.
pub const STALL_MS: u64 = 30_000;
/// How long a fetch waits for its connection.
pub const CONNECT_TIMEOUT_MS: u64 = 5_000;
/// Largest snapshot a node fetches: the whole state of a replica, held in memory while it
/// is checked, so a bound on what a peer can make this node hold.
pub const MAX_SNAPSHOT_BYTES: u64 = 4 << 30;
/// The length before the bytes.
const LENGTH_BYTES: usize = 8;

/// The snapshot transfers a node is serving, counted so that at most [`MAX_SENDS`] run at
/// once.
#[derive(Debug, Clone, Default)]
pub struct Sends {
    running: Arc<AtomicUsize>,
}

/// One transfer's place among the [`Sends`], given back when dropped.
#[derive(Debug)]
pub struct SendSlot {
    running: Arc<AtomicUsize>,
}

impl Sends {
    /// A place for one more transfer; `None` while [`MAX_SENDS`] run.
    pub fn start(&self) -> Option<SendSlot> {
        self.running.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < MAX_SENDS).then_some(n + 1)).ok()?;
        Some(SendSlot { running: Arc::clone(&self.running) })
    }

    /// Transfers running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }
}

impl Drop for SendSlot {
    fn drop(&mut self) {
        self.running.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A peer-link connection on a thread of its own (blocking): plain TCP, or a TLS session
/// over it.
#[derive(Debug)]
pub enum Wire {
    /// Plain TCP.
    Plain(TcpStream),
    /// The accepting side of a TLS session.
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
    /// The connecting side of a TLS session.
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Wire {
    /// A connection the keeper's loop hands over, its TLS session (if any) carried on.
    fn taken(connection: TcpConnection) -> io::Result<Self> {
        match connection {
            TcpConnection::Plain(tcp) => Ok(Self::Plain(TcpStream::from(tcp))),
            TcpConnection::Tls { tcp, session } => match *session {
                rustls::Connection::Server(session) => {
                    Ok(Self::Server(Box::new(StreamOwned::new(session, TcpStream::from(tcp)))))
                }
                rustls::Connection::Client(_) => {
                    Err(io::Error::other("a connection this node opened cannot serve the snapshot"))
                }
            },
        }
    }

    /// The TCP stream under it.
    fn tcp(&self) -> &TcpStream {
        match self {
            Self::Plain(tcp) => tcp,
            Self::Server(tls) => tls.get_ref(),
            Self::Client(tls) => tls.get_ref(),
        }
    }

    /// Ends what this end sends: close_notify (TLS), then the TCP stream's write half.
    fn finish(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(_) => {}
            Self::Server(tls) => tls.conn.send_close_notify(),
            Self::Client(tls) => tls.conn.send_close_notify(),
        }
        self.flush()?;
        let _ = self.tcp().shutdown(Shutdown::Write);
        Ok(())
    }
}

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(tcp) => tcp.read(buf),
            Self::Server(tls) => tls.read(buf),
            Self::Client(tls) => tls.read(buf),
        }
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(tcp) => tcp.write(buf),
            Self::Server(tls) => tls.write(buf),
            Self::Client(tls) => tls.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(tcp) => tcp.flush(),
            Self::Server(tls) => tls.flush(),
            Self::Client(tls) => tls.flush(),
        }
    }
}

/// Whether `e` is a TLS failure (rustls says so through `io::Error`s that carry its own).
fn is_tls(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
}

/// Sends the snapshot in `dir` to node `to` over `connection` (a peer connection whose
/// hello asked for it, taken out of the keeper's loop) on a thread of its own, then closes
/// the connection. The thread holds `slot` until it ends.
pub fn serve(connection: TcpConnection, dir: PathBuf, to: String, slot: SendSlot) {
    let spawned = thread::Builder::new().name("lh-snapshot-send".into()).spawn(move || {
        let _slot = slot;
        let started = Instant::now();
        let sent = Wire::taken(connection).and_then(|wire| send(wire, &dir, Duration::from_millis(STALL_MS)));
        match sent {
            Ok(0) => log::info!("peer link: node {to:?} asked for the snapshot; there is none yet (told so)"),
            Ok(bytes) => log::info!(
                "peer link: snapshot sent to node {to:?} ({bytes} bytes in {} ms)",
                started.elapsed().as_millis()
            ),
            Err(e) => log::warn!("peer link: the snapshot could not be sent to node {to:?} ({e}): closed"),
        }
    });
    // A thread that did not start dropped the connection with it: the asker sees it closed.
    if let Err(e) = spawned {
        log::warn!("peer link: cannot start a thread to send the snapshot ({e}): closed");
    }
}

/// Sends the snapshot in `dir` over `stream`: its length, then its bytes, read through one
/// descriptor; a write that makes no progress for `stall` fails. Returns the bytes sent (0:
/// there is no snapshot, and the asker was told so). A file that cannot be opened sends
/// nothing: the asker sees the connection closed.
pub fn send(mut stream: Wire, dir: &Path, stall: Duration) -> io::Result<u64> {
    stream.tcp().set_nonblocking(false)?;
    stream.tcp().set_write_timeout(Some(stall))?;
    let file = match File::open(replica::path(dir)) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    // The open descriptor's length: a snapshot written since is another file.
    let len = match &file {
        Some(file) => file.metadata()?.len(),
        None => 0,
    };
    stream.write_all(&len.to_be_bytes())?;
    if let Some(file) = file {
        let sent = io::copy(&mut file.take(len), &mut stream)?;
        if sent < len {
            let why = format!("the snapshot file ended after {sent} of its {len} bytes");
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, why));
        }
    }
    stream.finish()?;
    Ok(len)
}

/// Why a fetch failed. Whatever it is, nothing was written.
#[derive(Debug)]
pub enum FetchError {
    /// The peer link at `peer` could not be reached, or the hello not sent.
    Unreachable {
        /// The peer-link address.
        peer: String,
        /// What the connection said.
        source: io::Error,
    },
    /// This node's TLS files (`cluster.peer_tls_*`) cannot be used now.
    TlsFiles {
        /// What is wrong with them.
        reason: String,
    },
    /// The TLS session failed: a certificate one side refused, an alert, bytes that are
    /// not TLS.
    Tls {
        /// The peer-link address.
        peer: String,
        /// What rustls said.
        source: io::Error,
    },
    /// It closed the connection without a byte: it refused the hello (another secret, a
    /// build that does not send snapshots), was sending [`MAX_SENDS`] already, or could not
    /// open its snapshot file.
    Refused {
        /// The peer-link address.
        peer: String,
    },
    /// It did not say how long its snapshot is (no answer in time, or a connection cut).
    Silent {
        /// The peer-link address.
        peer: String,
        /// What the connection said.
        source: io::Error,
    },
    /// It has no snapshot.
    NoSnapshot {
        /// The peer-link address.
        peer: String,
    },
    /// It announced a snapshot longer than [`MAX_SNAPSHOT_BYTES`].
    TooLarge {
        /// The peer-link address.
        peer: String,
        /// The length announced.
        len: u64,
    },
    /// The transfer broke (cut short, stalled, reset) after `got` of its `len` bytes.
    Broken {
        /// The peer-link address.
        peer: String,
        /// Bytes received.
        got: u64,
        /// Bytes announced.
        len: u64,
        /// What the connection said.
        source: io::Error,
    },
    /// The bytes are not a sound snapshot (framing or checksum).
    Damaged {
        /// The peer-link address.
        peer: String,
        /// What is wrong.
        reason: String,
    },
    /// A snapshot of another cluster's log.
    OtherCluster {
        /// The peer-link address.
        peer: String,
        /// The prefix it stands for.
        prefix: String,
        /// This cluster's.
        ours: String,
    },
    /// It could not be written here.
    NotWritten {
        /// The data directory.
        dir: PathBuf,
        /// What the file system said.
        source: io::Error,
    },
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable { peer, source } => write!(f, "cannot reach the peer link at {peer}: {source}"),
            Self::TlsFiles { reason } => write!(f, "this node's peer-link TLS files cannot be used: {reason}"),
            Self::Tls { peer, source } => write!(f, "the TLS session with the node at {peer} failed: {source}"),
            Self::Refused { peer } => write!(
                f,
                "the node at {peer} closed the connection without an answer (it refused this node's hello: another \
                 secret, or a build that does not send snapshots; or it was sending {MAX_SENDS} snapshots already; or \
                 it cannot read its own)"
            ),
            Self::Silent { peer, source } => {
                write!(f, "the node at {peer} did not say how long its snapshot is: {source}")
            }
            Self::NoSnapshot { peer } => write!(f, "the node at {peer} has no snapshot yet"),
            Self::TooLarge { peer, len } => write!(
                f,
                "the node at {peer} announced a snapshot of {len} bytes, above the limit of {MAX_SNAPSHOT_BYTES}"
            ),
            Self::Broken { peer, got, len, source } => {
                write!(f, "the transfer from {peer} broke after {got} of {len} bytes: {source}")
            }
            Self::Damaged { peer, reason } => write!(f, "the snapshot from {peer} is damaged: {reason}"),
            Self::OtherCluster { peer, prefix, ours } => {
                write!(
                    f,
                    "the snapshot from {peer} is of the cluster with prefix {prefix:?}, not of this one ({ours:?})"
                )
            }
            Self::NotWritten { dir, source } => {
                write!(f, "the fetched snapshot cannot be written in {}: {source}", dir.display())
            }
        }
    }
}

impl std::error::Error for FetchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unreachable { source, .. }
            | Self::Tls { source, .. }
            | Self::Silent { source, .. }
            | Self::Broken { source, .. }
            | Self::NotWritten { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// A snapshot fetched and kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedSnapshot {
    /// Where it stands.
    pub position: Position,
    /// Its length.
    pub bytes: u64,
}

/// What a node needs to fetch a snapshot: the hello it presents, its cluster's prefix, and
/// its TLS files when the link has TLS.
#[derive(Debug, Clone)]
pub struct Fetcher {
    hello: PeerHello,
    prefix: String,
    stall: Duration,
    /// The TLS files and this node's advertised peer address (what they are checked for).
    tls: Option<(PeerTlsFiles, String)>,
}

impl Fetcher {
    /// The fetcher of the node `config` describes; `None` without a peer link (it has no
    /// secret to present).
    pub fn new(config: &ClusterConfig) -> Option<Self> {
        let peer = config.peer.as_ref()?;
        let fetcher = Self::with(&config.node_name, &peer.secret, &config.prefix);
        Some(match &peer.tls {
            Some(files) => fetcher.over_tls(files.clone(), &peer.advertise),
            None => fetcher,
        })
    }

    /// The fetcher of node `node` presenting `secret`, of the cluster under `prefix`, over
    /// plain TCP.
    pub fn with(node: &str, secret: &str, prefix: &str) -> Self {
        let hello = PeerHello { node: node.to_string(), secret: secret.to_string(), want: Some(PeerWant::Snapshot) };
        Self { hello, prefix: prefix.to_string(), stall: Duration::from_millis(STALL_MS), tls: None }
    }

    /// The same over TLS, with `files`, of a node whose own peer address is `advertise`.
    pub fn over_tls(mut self, files: PeerTlsFiles, advertise: &str) -> Self {
        self.tls = Some((files, advertise.to_string()));
        self
    }

    /// Fetches the snapshot of the node whose peer link is at `peer` and writes it as the
    /// snapshot in `dir`, once checked. On any failure nothing is written.
    pub fn fetch(&self, peer: &str, dir: &Path) -> Result<FetchedSnapshot, FetchError> {
        let unreachable = |source| FetchError::Unreachable { peer: peer.to_string(), source };
        let tls_failed = |source| FetchError::Tls { peer: peer.to_string(), source };
        let tls = match &self.tls {
            None => None,
            Some((files, advertise)) => Some(PeerTls::load(files, advertise).map_err(|problems| {
                let reason = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                FetchError::TlsFiles { reason }
            })?),
        };
        let tcp = self.connect(peer).map_err(unreachable)?;
        let mut stream = match tls {
            None => Wire::Plain(tcp),
            Some(tls) => {
                let session = tls.connect(peer).map_err(unreachable)?;
                let mut tls = StreamOwned::new(session, tcp);
                // The handshake first, so that a certificate refused here says so.
                while tls.conn.is_handshaking() {
                    tls.conn.complete_io(&mut tls.sock).map_err(|e| match is_tls(&e) {
                        true => tls_failed(e),
                        false => unreachable(self.stalled(e)),
                    })?;
                }
                Wire::Client(Box::new(tls))
            }
        };
        let mut hello = Vec::new();
        frame::encode(&self.hello, DEFAULT_MAX_FRAME_BYTES, &mut hello)
            .map_err(|e| unreachable(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        stream.write_all(&hello).map_err(|e| match is_tls(&e) {
            true => tls_failed(e),
            false => unreachable(self.stalled(e)),
        })?;

        let mut length = [0u8; LENGTH_BYTES];
        let mut got = 0;
        while got < LENGTH_BYTES {
            match stream.read(&mut length[got..]) {
                Ok(0) if got == 0 => return Err(FetchError::Refused { peer: peer.to_string() }),
                Ok(0) => {
                    let source = io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed");
                    return Err(FetchError::Silent { peer: peer.to_string(), source });
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Over TLS, a refused hello is a stream that ends without close_notify.
                Err(e) if got == 0 && e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(FetchError::Refused { peer: peer.to_string() })
                }
                // The alert of a node that refused this node's certificate, say.
                Err(e) if is_tls(&e) => return Err(tls_failed(e)),
                Err(e) => return Err(FetchError::Silent { peer: peer.to_string(), source: self.stalled(e) }),
            }
        }
        let len = u64::from_be_bytes(length);
        if len == 0 {
            return Err(FetchError::NoSnapshot { peer: peer.to_string() });
        }
        let too_large = || FetchError::TooLarge { peer: peer.to_string(), len };
        if len > MAX_SNAPSHOT_BYTES {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        // Reserved at once (the length is bounded): growing by doubling would hold twice
        // as much at its peak.
        bytes.try_reserve_exact(usize::try_from(len).map_err(|_| too_large())?).map_err(|_| too_large())?;
        let broken = |got: usize, source| FetchError::Broken { peer: peer.to_string(), got: got as u64, len, source };
        if let Err(e) = (&mut stream).take(len).read_to_end(&mut bytes) {
            return Err(broken(bytes.len(), self.stalled(e)));
        }
        if (bytes.len() as u64) < len {
            return Err(broken(bytes.len(), io::Error::new(io::ErrorKind::UnexpectedEof, "the connection closed")));
        }
        drop(stream);

        let position =
            replica::position(&bytes).map_err(|reason| FetchError::Damaged { peer: peer.to_string(), reason })?;
        if position.prefix != self.prefix {
            let (prefix, ours) = (position.prefix, self.prefix.clone());
            return Err(FetchError::OtherCluster { peer: peer.to_string(), prefix, ours });
        }
        replica::write(dir, &bytes).map_err(|source| FetchError::NotWritten { dir: dir.to_path_buf(), source })?;
        Ok(FetchedSnapshot { position, bytes: len })
    }

    /// [`Fetcher::fetch`] as the rules hear of it: `Fetched` or `FetchFailed`, with a log line
    /// saying what happened.
    pub fn fetch_event(&self, peer: &str, dir: &Path) -> Event {
        let started = Instant::now();
        match self.fetch(peer, dir) {
            Ok(FetchedSnapshot { position, bytes }) => {
                log::info!(
                    "fetched the snapshot of the node at {peer} (batch {}, {bytes} bytes in {} ms): kept as this node's",
                    position.seq,
                    started.elapsed().as_millis()
                );
                Event::Fetched { seq: position.seq }
            }
            Err(e) => {
                log::warn!("cannot fetch the leader's snapshot: {e}");
                Event::FetchFailed
            }
        }
    }

    /// A connection to the first address of `peer` that answers, with the stall timeout on
    /// both directions.
    fn connect(&self, peer: &str) -> io::Result<TcpStream> {
        let mut failed = io::Error::new(io::ErrorKind::NotFound, "the address resolves to nothing");
        for addr in peer.to_socket_addrs()? {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(CONNECT_TIMEOUT_MS)) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(self.stall))?;
                    stream.set_write_timeout(Some(self.stall))?;
                    return Ok(stream);
                }
                Err(e) => failed = e,
            }
        }
        Err(failed)
    }

    /// A read or write error, a timeout said as one (the system says "would block").
    fn stalled(&self, e: io::Error) -> io::Error {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                io::Error::new(io::ErrorKind::TimedOut, format!("nothing moved for {} ms", self.stall.as_millis()))
            }
            _ => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{SocketAddr, TcpListener};
    use std::thread::JoinHandle;

    use super::*;
    use crate::core::lock::TableLimits;
    use crate::ipc::frame::FrameDecoder;
    use crate::journal::replica::ReplicaSnapshot;
    use crate::journal::Snapshot;
    use crate::process::channel::Channel;
    use crate::process::tls::testing::Authority;
    use crate::service::Service;

    const PREFIX: &str = "/leasehold";
    /// Long enough for any of these transfers on a loaded machine.
    const DEADLINE: Duration = Duration::from_secs(20);

    fn snapshot_bytes(seq: u64, prefix: &str) -> Vec<u8> {
        let service = Service::new(TableLimits::default(), 60_000, 7);
        let position = Position { seq, at_ms: 1_700_000_000_000 + seq, prefix: prefix.into() };
        replica::encode(&ReplicaSnapshot { position, snapshot: Snapshot::new(0, service.export()) }).unwrap()
    }

    fn fetcher() -> Fetcher {
        Fetcher::with("node-b", "the-secret", PREFIX)
    }

    /// What is in `dir`, by name.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// Reads one hello frame from `stream`, as the keeper's peer listener does.
    fn read_hello(stream: &mut TcpStream) -> PeerHello {
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        let mut buf = [0u8; 512];
        loop {
            if let Some(body) = decoder.next_frame().unwrap() {
                return frame::decode(body).unwrap();
            }
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed before its hello");
            decoder.feed(&buf[..n]);
        }
    }

    /// A peer link that takes one connection and hands it to [`serve`] once it asked for the
    /// snapshot, as the keeper does with an admitted hello.
    fn serving(dir: &Path, sends: &Sends) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (dir, slot) = (dir.to_path_buf(), sends.start().expect("a place"));
        thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let hello = read_hello(&mut stream);
            assert_eq!(hello.want, Some(PeerWant::Snapshot));
            assert_eq!(hello.secret, "the-secret");
            serve(TcpConnection::Plain(mio::net::TcpStream::from_std(stream)), dir, hello.node, slot);
        });
        addr
    }

    /// A peer link that takes one connection, reads its hello, then does `then` with it.
    fn answering(then: impl FnOnce(TcpStream) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            read_hello(&mut stream);
            then(stream);
        });
        (addr, handle)
    }

    #[test]
    fn fetch_of_a_served_snapshot_writes_the_same_bytes_in_the_other_directory() {
        let (theirs, ours) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let bytes = snapshot_bytes(42, PREFIX);
        replica::write(theirs.path(), &bytes).unwrap();
        let sends = Sends::default();
        let addr = serving(theirs.path(), &sends);
        let event = fetcher().fetch_event(&addr.to_string(), ours.path());
        assert_eq!(event, Event::Fetched { seq: 42 });
        assert_eq!(std::fs::read(replica::path(ours.path())).unwrap(), bytes);
        assert_eq!(names(ours.path()), [replica::FILE_NAME], "no temporary file is left");
        assert_eq!(replica::read(ours.path()).unwrap().unwrap().position.seq, 42);
        let deadline = Instant::now() + DEADLINE;
        while sends.running() > 0 && Instant::now() < deadline {
            thread::park_timeout(Duration::from_millis(5));
        }
        assert_eq!(sends.running(), 0, "the sending thread gave its place back");
    }

    #[test]
    fn fetch_of_a_damaged_snapshot_is_refused_and_writes_nothing() {
        let (theirs, ours) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut bytes = snapshot_bytes(7, PREFIX);
        let last = bytes.len() - 2;
        bytes[last] ^= 0x20;
        replica::write(theirs.path(), &bytes).unwrap();
        let addr = serving(theirs.path(), &Sends::default());
        let failed = fetcher().fetch(&addr.to_string(), ours.path());
        assert!(
            matches!(&failed, Err(FetchError::Damaged { reason, .. }) if reason.contains("checksum")),
            "{failed:?}"
        );
        assert!(names(ours.path()).is_empty());
    }

    #[test]
    fn fetch_from_a_node_without_a_snapshot_fails_and_writes_nothing() {
        let (theirs, ours) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let addr = serving(theirs.path(), &Sends::default());
        let failed = fetcher().fetch(&addr.to_string(), ours.path());
        assert!(matches!(failed, Err(FetchError::NoSnapshot { .. })), "{failed:?}");
        let addr = serving(theirs.path(), &Sends::default());
        assert_eq!(fetcher().fetch_event(&addr.to_string(), ours.path()), Event::FetchFailed);
        assert!(names(ours.path()).is_empty());
    }

    #[test]
    fn fetch_of_another_clusters_snapshot_is_refused_and_keeps_the_node_s_own() {
        let (theirs, ours) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        replica::write(theirs.path(), &snapshot_bytes(9, "/another")).unwrap();
        let own = snapshot_bytes(3, PREFIX);
        replica::write(ours.path(), &own).unwrap();
        let addr = serving(theirs.path(), &Sends::default());
        let failed = fetcher().fetch(&addr.to_string(), ours.path());
        assert!(matches!(&failed, Err(FetchError::OtherCluster { prefix, .. }) if prefix == "/another"), "{failed:?}");
        assert_eq!(std::fs::read(replica::path(ours.path())).unwrap(), own, "its own snapshot is kept");
    }

    #[test]
    fn fetch_from_a_node_that_closes_without_a_word_is_refused() {
        let ours = tempfile::tempdir().unwrap();
        let (addr, server) = answering(drop);
        let failed = fetcher().fetch(&addr.to_string(), ours.path());
        assert!(matches!(failed, Err(FetchError::Refused { .. })), "{failed:?}");
        server.join().unwrap();
        let nobody = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let failed = fetcher().fetch(&nobody.to_string(), ours.path());
        assert!(matches!(failed, Err(FetchError::Unreachable { .. })), "{failed:?}");
        assert!(names(ours.path()).is_empty());
    }

    #[test]
    fn fetch_refuses_a_length_above_the_limit_before_it_reads_the_body() {
        let ours = tempfile::tempdir().unwrap();
        let (done, wait) = std::sync::mpsc::channel::<()>();
        let (addr, server) = answering(move |mut stream| {
            stream.write_all(&(MAX_SNAPSHOT_BYTES + 1).to_be_bytes()).unwrap();
            // Kept open and silent: the fetch must not wait for the body.
            let _ = wait.recv_timeout(DEADLINE);
        });
        let started = Instant::now();
        let failed = fetcher().fetch(&addr.to_string(), ours.path());
        assert!(matches!(failed, Err(FetchError::TooLarge { len, .. }) if len == MAX_SNAPSHOT_BYTES + 1), "{failed:?}");
        assert!(started.elapsed() < DEADLINE);
        drop(done);
        server.join().unwrap();
        assert!(names(ours.path()).is_empty());
    }

    #[test]
    fn fetch_of_a_transfer_cut_short_fails_and_writes_nothing() {
        let ours = tempfile::tempdir().unwrap();
        let bytes = snapshot_bytes(5, PREFIX);
        let sent = bytes.clone();
        let (addr, server) = answering(move |mut stream| {
            stream.write_all(&(sent.len() as u64).to_be_bytes()).unwrap();
            stream.write_all(&sent[..sent.len() - 1]).unwrap();
        });
        let failed = fetcher().fetch(&addr.to_string(), ours.path());
        let expected = (bytes.len() - 1) as u64;
        assert!(matches!(failed, Err(FetchError::Broken { got, .. }) if got == expected), "{failed:?}");
        server.join().unwrap();
        assert!(names(ours.path()).is_empty());
    }

    /// Over TLS: a peer link that takes one connection into a TLS channel, reads its hello
    /// there and hands the connection, session and all, to [`serve`], as the keeper does.
    fn serving_tls(dir: &Path, sends: &Sends, tls: PeerTls) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (dir, slot) = (dir.to_path_buf(), sends.start().expect("a place"));
        let handle = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            stream.set_nonblocking(true).unwrap();
            let stream = mio::net::TcpStream::from_std(stream);
            let mut channel = Channel::tls(stream, tls.accept().unwrap(), mio::Token(0), 1 << 20);
            // A refused handshake ends here, the connection closed.
            let Ok(hello) = channel.recv_blocking::<PeerHello>(DEADLINE) else { return };
            assert_eq!((hello.want, hello.secret.as_str()), (Some(PeerWant::Snapshot), "the-secret"));
            serve(channel.into_tcp().unwrap(), dir, hello.node, slot);
        });
        (addr, handle)
    }

    /// A fetcher over TLS with a node certificate from `signer` and `ca` as its CA, its files
    /// in `dir`.
    fn tls_fetcher(dir: &Path, signer: &Authority, ca: &Authority) -> Fetcher {
        let files = crate::process::tls::testing::write_files(dir, &signer.node(&["127.0.0.1"]), &ca.pem);
        fetcher().over_tls(files, "127.0.0.1:7070")
    }

    #[test]
    fn fetch_over_tls_carries_on_the_session_the_loop_began() {
        let (theirs, ours, certs) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let bytes = snapshot_bytes(42, PREFIX);
        replica::write(theirs.path(), &bytes).unwrap();
        let ca = Authority::new("ca");
        let (addr, server) = serving_tls(theirs.path(), &Sends::default(), ca.tls());
        let fetched = tls_fetcher(certs.path(), &ca, &ca).fetch(&addr.to_string(), ours.path());
        assert_eq!(fetched.unwrap().position.seq, 42);
        assert_eq!(std::fs::read(replica::path(ours.path())).unwrap(), bytes);
        server.join().unwrap();
    }

    #[test]
    fn send_over_tls_sends_every_byte_and_ends_with_close_notify() {
        let dir = tempfile::tempdir().unwrap();
        let file: Vec<u8> = (0..(4u32 << 20)).map(|i| (i % 251) as u8).collect();
        replica::write(dir.path(), &file).unwrap();
        let ca = Authority::new("ca");
        let (client_tls, server_tls) = (ca.tls(), ca.tls());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let path = dir.path().to_path_buf();
        let sender = thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let wire = Wire::Server(Box::new(StreamOwned::new(server_tls.accept().unwrap(), tcp)));
            send(wire, &path, DEADLINE)
        });
        let tcp = TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut client = StreamOwned::new(client_tls.connect("127.0.0.1:7070").unwrap(), tcp);
        let mut got = Vec::new();
        // To the end: a stream cut without close_notify would be an error here.
        client.read_to_end(&mut got).unwrap();
        assert_eq!(sender.join().unwrap().unwrap(), file.len() as u64);
        assert_eq!(u64::from_be_bytes(got[..LENGTH_BYTES].try_into().unwrap()), file.len() as u64);
        assert!(got[LENGTH_BYTES..] == file[..], "{} bytes", got.len());
    }

    #[test]
    fn fetch_from_a_node_with_a_certificate_of_another_ca_fails_and_writes_nothing() {
        let (theirs, ours, certs) =
            (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        replica::write(theirs.path(), &snapshot_bytes(42, PREFIX)).unwrap();
        let (ca, other) = (Authority::new("ca"), Authority::new("another ca"));
        // This node's own files are sound, of another CA than the serving node's.
        let (addr, server) = serving_tls(theirs.path(), &Sends::default(), ca.tls());
        let failed = tls_fetcher(certs.path(), &other, &other).fetch(&addr.to_string(), ours.path());
        let Err(FetchError::Tls { source, .. }) = &failed else { panic!("{failed:?}") };
        assert!(source.to_string().contains("UnknownIssuer"), "{source}");
        assert!(names(ours.path()).is_empty());
        server.join().unwrap();
        // Files that do not hold together are said to be so, before any connection.
        let (addr, server) = serving_tls(theirs.path(), &Sends::default(), ca.tls());
        let failed = tls_fetcher(certs.path(), &other, &ca).fetch(&addr.to_string(), ours.path());
        assert!(
            matches!(&failed, Err(FetchError::TlsFiles { reason }) if reason.contains("cluster.peer_tls_cert")),
            "{failed:?}"
        );
        drop(TcpStream::connect(addr));
        server.join().unwrap();
    }

    #[test]
    fn sends_allow_two_at_once_and_another_once_one_ends() {
        let sends = Sends::default();
        let first = sends.start().unwrap();
        let _second = sends.start().unwrap();
        assert!(sends.start().is_none(), "a third waits for no one: refused");
        drop(first);
        assert_eq!(sends.running(), 1);
        assert!(sends.start().is_some());
    }

    /// A connected pair on loopback with small buffers (a few KiB in flight at most), the
    /// serving end first.
    fn small_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&listener.local_addr().unwrap().into()).unwrap();
        let (server, _) = listener.accept().unwrap();
        socket2::SockRef::from(&server).set_send_buffer_size(4096).unwrap();
        (server, socket.into())
    }

    #[test]
    fn send_to_a_peer_that_stops_reading_ends_after_the_stall() {
        let dir = tempfile::tempdir().unwrap();
        replica::write(dir.path(), &vec![b'a'; 4 << 20]).unwrap();
        let (server, _client) = small_pair();
        let (ended, end) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        thread::spawn(move || ended.send(send(Wire::Plain(server), &path, Duration::from_millis(200))));
        let sent = end.recv_timeout(DEADLINE).expect("the transfer ends though its peer reads nothing");
        assert!(sent.is_err(), "{sent:?}");
    }

    #[test]
    fn send_reads_one_file_even_when_a_new_snapshot_replaces_it_meanwhile() {
        let dir = tempfile::tempdir().unwrap();
        let old = vec![b'a'; 4 << 20];
        replica::write(dir.path(), &old).unwrap();
        let (server, mut client) = small_pair();
        let path = dir.path().to_path_buf();
        let sender = thread::spawn(move || send(Wire::Plain(server), &path, DEADLINE));
        client.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut length = [0u8; LENGTH_BYTES];
        client.read_exact(&mut length).unwrap();
        assert_eq!(u64::from_be_bytes(length), old.len() as u64);
        // Once the body has begun to arrive, the sender reads the old file; most of it is
        // still to be sent (the buffers hold a few KiB) when a new snapshot replaces it.
        assert_eq!(client.peek(&mut [0u8; 1]).unwrap(), 1);
        replica::write(dir.path(), &vec![b'b'; 5 << 20]).unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(sender.join().unwrap().unwrap(), old.len() as u64);
        assert!(
            got == old,
            "{} bytes, {} of them the new file's",
            got.len(),
            got.iter().filter(|&&b| b == b'b').count()
        );
    }
}
