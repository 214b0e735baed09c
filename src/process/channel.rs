//! A framed IPC channel on a non-blocking Unix stream registered with mio: reads are
//! buffered until whole frames are in, writes are queued and flushed once per loop turn
//! (so many messages share one system call), and nothing is lost on a short read or write.
//! The same channel runs over TCP for the cluster's peer link (docs/cluster.md), with a
//! frame limit of its own, and over a TLS session on that TCP stream when the link has TLS.
//!
//! TLS here is rustls, which moves no bytes itself: [`Channel::fill`] feeds it what the
//! socket has (`read_tls`, `process_new_packets`) and takes out the plaintext, and
//! [`Channel::flush`] hands it the queued frames and writes the records it makes
//! (`write_tls`). The handshake runs through the same two calls: handshake records it wants
//! to send are written as soon as a read produced them, and frames queued meanwhile wait in
//! the channel's own queue until it is done. The socket stays registered for both
//! readability and writability (edge-triggered), so no interest has to change when rustls
//! wants to write. A peer's close_notify and a plain end of the stream both end the channel
//! once the frames before them are returned; anything that is not TLS is
//! [`ChannelError::Tls`].

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;

use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::ipc::frame::{decode, encode, FrameDecoder, FrameError, DEFAULT_MAX_FRAME_BYTES};

/// Bytes read per `read` call.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Queued output beyond which the peer counts as stuck and the channel as broken.
pub const MAX_QUEUED_BYTES: usize = 256 * 1024 * 1024;

/// Why a channel stopped working.
#[derive(Debug)]
pub enum ChannelError {
    /// The peer closed it.
    Closed,
    /// A read or write failed.
    Io(io::Error),
    /// The peer sent a bad frame.
    Frame(FrameError),
    /// The peer does not read what we send.
    Stuck,
    /// The TLS session failed: a refused handshake, bytes that are not TLS, a record that
    /// does not decrypt.
    Tls(rustls::Error),
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("the peer closed the channel"),
            Self::Io(e) => write!(f, "channel I/O failed: {e}"),
            Self::Frame(e) => write!(f, "bad frame: {e}"),
            Self::Stuck => write!(f, "the peer left more than {MAX_QUEUED_BYTES} bytes unread"),
            Self::Tls(e) => write!(f, "TLS failed: {e}"),
        }
    }
}

impl ChannelError {
    /// Whether the peer simply went away (it closed the channel, or its process ended with
    /// bytes unread: a reset, a broken pipe), not a fault of the channel.
    pub fn peer_gone(&self) -> bool {
        match self {
            Self::Closed => true,
            Self::Io(e) => matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe),
            Self::Frame(_) | Self::Stuck | Self::Tls(_) => false,
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Frame(e) => Some(e),
            Self::Tls(e) => Some(e),
            Self::Closed | Self::Stuck => None,
        }
    }
}

/// What a channel runs over.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<Tls>),
}

impl Stream {
    fn source(&mut self) -> &mut dyn Source {
        match self {
            Self::Unix(s) => s,
            Self::Tcp(s) => s,
            Self::Tls(t) => &mut t.tcp,
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Self::Unix(s) => std::os::fd::AsFd::as_fd(s),
            Self::Tcp(s) => std::os::fd::AsFd::as_fd(s),
            Self::Tls(t) => std::os::fd::AsFd::as_fd(&t.tcp),
        }
    }

    /// Reads from a plain stream (a TLS one is read by [`Tls::fill`]).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
            Self::Tls(_) => unreachable!("a TLS stream is read through its session"),
        }
    }

    /// Writes to a plain stream (a TLS one is written by [`Tls::flush`]).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
            Self::Tls(_) => unreachable!("a TLS stream is written through its session"),
        }
    }
}

/// A TLS session and the TCP stream it runs over.
#[derive(Debug)]
struct Tls {
    tcp: TcpStream,
    session: rustls::Connection,
}

impl Tls {
    /// Reads what the socket has into the session and the plaintext into `decoder`, until
    /// the socket has no more. Returns whether the peer is done sending (close_notify, or
    /// the end of the stream).
    fn fill(&mut self, decoder: &mut FrameDecoder, buf: &mut [u8]) -> Result<bool, ChannelError> {
        loop {
            let read = match self.session.read_tls(&mut self.tcp) {
                Ok(n) => Some(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ChannelError::Io(e)),
            };
            if let Err(e) = self.session.process_new_packets() {
                // The alert that says why goes out if the socket takes it.
                let _ = self.write_records();
                return Err(ChannelError::Tls(e));
            }
            let mut done = false;
            loop {
                match self.session.reader().read(buf) {
                    // close_notify.
                    Ok(0) => {
                        done = true;
                        break;
                    }
                    Ok(n) => decoder.feed(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // The stream ended without close_notify: the frames before it are whole
                    // records, so as good as any; the channel just ends.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                        done = true;
                        break;
                    }
                    Err(e) => return Err(ChannelError::Io(e)),
                }
            }
            // What the handshake answers goes out now, not at the caller's next flush. A
            // write that fails here fails again at that flush, which reports it.
            let _ = self.write_records();
            match read {
                Some(0) => return Ok(true),
                Some(_) if !done => {}
                _ => return Ok(done),
            }
        }
    }

    /// Moves what is queued in `out` from `*at` on into the session and writes its records,
    /// as far as the socket takes them. Frames stay in `out` until the handshake is done (so
    /// that what is not sent yet is always there, and counted).
    fn flush(&mut self, out: &[u8], at: &mut usize) -> Result<(), ChannelError> {
        loop {
            let mut moved = 0;
            if *at < out.len() && !self.session.is_handshaking() {
                // Whenever its buffer is full, the session takes less (or nothing).
                moved = match self.session.writer().write(&out[*at..]) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                    Err(e) => return Err(ChannelError::Io(e)),
                };
                *at += moved;
            }
            if !self.write_records()? || moved == 0 || *at == out.len() {
                return Ok(());
            }
        }
    }

    /// Writes the session's records; `false` when the socket took not all of them.
    fn write_records(&mut self) -> Result<bool, ChannelError> {
        while self.session.wants_write() {
            match self.session.write_tls(&mut self.tcp) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ChannelError::Io(e)),
            }
        }
        Ok(true)
    }
}

/// A peer-link channel's connection, taken out of the loop ([`Channel::into_tcp`]).
#[derive(Debug)]
pub enum TcpConnection {
    /// Plain TCP.
    Plain(TcpStream),
    /// A TLS session over TCP, carried on where the channel left it.
    Tls {
        /// The stream.
        tcp: TcpStream,
        /// The session.
        session: Box<rustls::Connection>,
    },
}

/// One end of a framed channel.
#[derive(Debug)]
pub struct Channel {
    stream: Stream,
    token: Token,
    decoder: FrameDecoder,
    out: Vec<u8>,
    out_at: usize,
    eof: bool,
    read_buf: Box<[u8]>,
}

impl Channel {
    /// Wraps a connected stream (made non-blocking here).
    pub fn new(stream: StdUnixStream, token: Token) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        Ok(Self::over(Stream::Unix(UnixStream::from_std(stream)), token, DEFAULT_MAX_FRAME_BYTES))
    }

    /// Wraps a TCP stream (non-blocking already, as mio's are), refusing frames longer
    /// than `max_frame_bytes`.
    pub fn tcp(stream: TcpStream, token: Token, max_frame_bytes: u32) -> Self {
        let _ = stream.set_nodelay(true);
        Self::over(Stream::Tcp(stream), token, max_frame_bytes)
    }

    /// Wraps a TCP stream (non-blocking already) under a TLS session (a client's or a
    /// server's, its handshake not begun), refusing frames longer than `max_frame_bytes`.
    pub fn tls(stream: TcpStream, session: impl Into<rustls::Connection>, token: Token, max_frame_bytes: u32) -> Self {
        let _ = stream.set_nodelay(true);
        let tls = Tls { tcp: stream, session: session.into() };
        Self::over(Stream::Tls(Box::new(tls)), token, max_frame_bytes)
    }

    fn over(stream: Stream, token: Token, max_frame_bytes: u32) -> Self {
        Self {
            stream,
            token,
            decoder: FrameDecoder::new(max_frame_bytes),
            out: Vec::new(),
            out_at: 0,
            eof: false,
            read_buf: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
        }
    }

    /// Its token.
    pub fn token(&self) -> Token {
        self.token
    }

    /// Registers for readability and writability (edge-triggered).
    pub fn register(&mut self, registry: &Registry) -> io::Result<()> {
        registry.register(self.stream.source(), self.token, Interest::READABLE | Interest::WRITABLE)
    }

    /// Removes it from the poll.
    pub fn deregister(&mut self, registry: &Registry) {
        let _ = registry.deregister(self.stream.source());
    }

    /// The TCP stream under it, with its TLS session if it has one, taken out (a peer
    /// connection handed to a thread of its own, `process::fetch`): what was read past the
    /// last frame returned, and what is queued and not given to the session, are dropped
    /// with the channel. `None` for a Unix channel.
    pub fn into_tcp(self) -> Option<TcpConnection> {
        match self.stream {
            Stream::Tcp(stream) => Some(TcpConnection::Plain(stream)),
            Stream::Tls(tls) => {
                let Tls { tcp, session } = *tls;
                Some(TcpConnection::Tls { tcp, session: Box::new(session) })
            }
            Stream::Unix(_) => None,
        }
    }

    /// Reads everything available into the frame buffer.
    pub fn fill(&mut self) -> Result<(), ChannelError> {
        if let Stream::Tls(tls) = &mut self.stream {
            if tls.fill(&mut self.decoder, &mut self.read_buf)? {
                self.eof = true;
            }
            return Ok(());
        }
        loop {
            match self.stream.read(&mut self.read_buf) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.decoder.feed(&self.read_buf[..n]);
                    // A short read emptied the socket; the next arrival raises a new edge,
                    // so asking again would only return WouldBlock.
                    if n < self.read_buf.len() {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ChannelError::Io(e)),
            }
        }
    }

    /// The next whole message read, `Ok(None)` if none is complete yet, `Closed` once the
    /// peer has closed and every message before the close was returned.
    pub fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ChannelError> {
        match self.decoder.next_frame().map_err(ChannelError::Frame)? {
            Some(body) => decode(body).map(Some).map_err(ChannelError::Frame),
            None if self.eof => Err(ChannelError::Closed),
            None => Ok(None),
        }
    }

    /// Queues a message (sent by [`Channel::flush`]).
    pub fn send<T: Serialize>(&mut self, message: &T) -> Result<(), ChannelError> {
        if self.out.len() - self.out_at > MAX_QUEUED_BYTES {
            return Err(ChannelError::Stuck);
        }
        encode(message, DEFAULT_MAX_FRAME_BYTES, &mut self.out).map_err(ChannelError::Frame)
    }

    /// Writes what is queued, as far as the socket takes it.
    pub fn flush(&mut self) -> Result<(), ChannelError> {
        match &mut self.stream {
            Stream::Tls(tls) => tls.flush(&self.out, &mut self.out_at)?,
            _ => self.write_plain()?,
        }
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        } else if self.out_at > self.out.len() / 2 {
            self.out.drain(..self.out_at);
            self.out_at = 0;
        }
        Ok(())
    }

    /// Writes what is queued to a plain stream.
    fn write_plain(&mut self) -> Result<(), ChannelError> {
        while self.out_at < self.out.len() {
            match self.stream.write(&self.out[self.out_at..]) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ChannelError::Io(e)),
            }
        }
        Ok(())
    }

    /// Whether output is waiting to be written.
    pub fn has_output(&self) -> bool {
        self.out_at < self.out.len() || matches!(&self.stream, Stream::Tls(tls) if tls.session.wants_write())
    }

    /// Blocks (up to `timeout`) until everything queued is written; used just before exit.
    pub fn flush_blocking(&mut self, timeout: std::time::Duration) {
        let deadline = std::time::Instant::now() + timeout;
        while self.has_output() && std::time::Instant::now() < deadline {
            if self.flush().is_err() {
                return;
            }
            if self.has_output() {
                let fd = self.stream.fd();
                let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLOUT)];
                let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10u8));
            }
        }
    }

    /// Blocks (up to `timeout`) for the next message; used for the first frame a child reads.
    pub fn recv_blocking<T: DeserializeOwned>(&mut self, timeout: std::time::Duration) -> Result<T, ChannelError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(m) = self.recv()? {
                return Ok(m);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(ChannelError::Io(io::Error::new(io::ErrorKind::TimedOut, "no message in time")));
            }
            let fd = self.stream.fd();
            let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
            let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
            self.fill()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_in_order_with_blocking_helpers() {
        let (a, b) = StdUnixStream::pair().unwrap();
        let mut left = Channel::new(a, Token(1)).unwrap();
        let mut right = Channel::new(b, Token(2)).unwrap();
        for i in 0..1000u32 {
            left.send(&i).unwrap();
        }
        left.flush_blocking(std::time::Duration::from_secs(5));
        for i in 0..1000u32 {
            let got: u32 = right.recv_blocking(std::time::Duration::from_secs(5)).unwrap();
            assert_eq!(got, i);
        }
        drop(left);
        right.fill().unwrap();
        assert!(matches!(right.recv::<u32>(), Err(ChannelError::Closed)));
    }

    /// TLS channels over loopback, both ends driven by hand as the keeper's loop drives them.
    mod tls {
        use std::net::TcpListener;
        use std::time::{Duration, Instant};

        use super::*;
        use crate::process::tls::testing::Authority;
        use crate::process::tls::PeerTls;

        /// Long enough for any of these exchanges on a loaded machine.
        const DEADLINE: Duration = Duration::from_secs(20);
        const MAX_FRAME: u32 = 4 * 1024 * 1024;

        /// A connected pair of non-blocking loopback streams, the connecting end first.
        fn pair() -> (TcpStream, TcpStream) {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            server.set_nonblocking(true).unwrap();
            (client, TcpStream::from_std(server))
        }

        /// A client channel with `client`'s configuration and a server channel with
        /// `server`'s, over loopback, frames up to `max_frame` bytes.
        fn channels(client: &PeerTls, server: &PeerTls, max_frame: u32) -> (Channel, Channel) {
            let (c, s) = pair();
            let session = client.connect("127.0.0.1:7070").unwrap();
            (
                Channel::tls(c, session, Token(1), max_frame),
                Channel::tls(s, server.accept().unwrap(), Token(2), max_frame),
            )
        }

        /// Waits (up to 10 ms) for either end's socket to have something to read.
        fn wait(a: &Channel, b: &Channel) {
            let flags = nix::poll::PollFlags::POLLIN;
            let mut fds = [nix::poll::PollFd::new(a.stream.fd(), flags), nix::poll::PollFd::new(b.stream.fd(), flags)];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10u8));
        }

        /// Drives both ends (fill, then `step`, then flush) until `step` returns `Some`, or
        /// an end fails (which end: 0 the first, 1 the second), or the deadline passes.
        fn drive<T>(
            a: &mut Channel,
            b: &mut Channel,
            mut step: impl FnMut(&mut Channel, &mut Channel) -> Result<Option<T>, ChannelError>,
        ) -> Result<T, (usize, ChannelError)> {
            let deadline = Instant::now() + DEADLINE;
            loop {
                a.fill().map_err(|e| (0, e))?;
                b.fill().map_err(|e| (1, e))?;
                if let Some(done) = step(a, b).map_err(|e| (2, e))? {
                    return Ok(done);
                }
                a.flush().map_err(|e| (0, e))?;
                b.flush().map_err(|e| (1, e))?;
                assert!(Instant::now() < deadline, "nothing happened in {DEADLINE:?}");
                wait(a, b);
            }
        }

        #[test]
        fn frames_cross_both_ways_small_and_large() {
            let ca = Authority::new("ca");
            let (mut client, mut server) = channels(&ca.tls(), &ca.tls(), MAX_FRAME);
            // Queued before the handshake: sent once it is done.
            for i in 0..100u32 {
                client.send(&i).unwrap();
            }
            let large = "x".repeat(3 * 1024 * 1024);
            client.send(&large).unwrap();
            let mut got = Vec::new();
            let echoed: String = drive(&mut client, &mut server, |client, server| {
                while got.len() < 100 {
                    match server.recv::<u32>()? {
                        Some(n) => got.push(n),
                        None => return Ok(None),
                    }
                }
                if let Some(text) = server.recv::<String>()? {
                    server.send(&text)?;
                }
                client.recv::<String>()
            })
            .unwrap();
            assert_eq!(got, (0..100).collect::<Vec<_>>());
            assert_eq!(echoed.len(), large.len(), "a 3 MiB frame crossed both ways");
            assert!(!client.has_output() && !server.has_output());
            // A plain end of the stream (no close_notify): closed, once the frames before it
            // were returned.
            client.send(&7u32).unwrap();
            client.flush_blocking(DEADLINE);
            drop(client);
            assert_eq!(server.recv_blocking::<u32>(DEADLINE).unwrap(), 7);
            let end = server.recv_blocking::<u32>(DEADLINE);
            assert!(matches!(end, Err(ChannelError::Closed)), "{end:?}");
        }

        #[test]
        fn a_frame_above_the_limit_is_refused_over_tls_too() {
            let ca = Authority::new("ca");
            let (mut client, mut server) = channels(&ca.tls(), &ca.tls(), 1024);
            client.send(&"y".repeat(2048)).unwrap();
            let failed = drive(&mut client, &mut server, |_, server| server.recv::<String>());
            assert!(matches!(failed, Err((2, ChannelError::Frame(FrameError::TooLarge { .. })))), "{failed:?}");
        }

        #[test]
        fn close_notify_from_a_blocking_session_ends_the_channel_after_its_frames() {
            let ca = Authority::new("ca");
            let (client_tls, server_tls) = (ca.tls(), ca.tls());
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (closed, wait) = std::sync::mpsc::channel::<()>();
            let peer = std::thread::spawn(move || {
                let tcp = std::net::TcpStream::connect(addr).unwrap();
                let mut tls = rustls::StreamOwned::new(client_tls.connect("127.0.0.1:7070").unwrap(), tcp);
                let mut bytes = Vec::new();
                crate::ipc::frame::encode(&42u32, DEFAULT_MAX_FRAME_BYTES, &mut bytes).unwrap();
                tls.write_all(&bytes).unwrap();
                tls.conn.send_close_notify();
                tls.flush().unwrap();
                // The TCP stream stays open: the close is the session's alone.
                let _ = wait.recv_timeout(DEADLINE);
            });
            let (tcp, _) = listener.accept().unwrap();
            tcp.set_nonblocking(true).unwrap();
            let mut server = Channel::tls(TcpStream::from_std(tcp), server_tls.accept().unwrap(), Token(2), MAX_FRAME);
            let got: u32 = server.recv_blocking(DEADLINE).unwrap();
            assert_eq!(got, 42);
            let end = server.recv_blocking::<u32>(DEADLINE);
            assert!(matches!(end, Err(ChannelError::Closed)), "{end:?}");
            drop(closed);
            peer.join().unwrap();
        }

        #[test]
        fn a_client_certificate_from_another_ca_is_refused_by_the_server() {
            let (ca, other) = (Authority::new("ca"), Authority::new("another ca"));
            // The client trusts the server, but its own certificate is from another CA.
            let (mut client, mut server) = channels(&ca.tls_signed_by(&other), &ca.tls(), MAX_FRAME);
            client.send(&1u32).unwrap();
            let failed = drive(&mut client, &mut server, |_, server| server.recv::<u32>());
            let Err((1, ChannelError::Tls(e))) = failed else { panic!("the server refuses: {failed:?}") };
            assert!(matches!(e, rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)), "{e}");
            // The client hears of it (the server's alert, or the end of the stream).
            drop(server);
            let heard = client.recv_blocking::<u32>(DEADLINE);
            assert!(matches!(heard, Err(ChannelError::Tls(_) | ChannelError::Closed)), "{heard:?}");
        }

        #[test]
        fn a_server_certificate_from_another_ca_is_refused_by_the_client() {
            let (ca, other) = (Authority::new("ca"), Authority::new("another ca"));
            let (mut client, mut server) = channels(&ca.tls(), &ca.tls_signed_by(&other), MAX_FRAME);
            client.send(&1u32).unwrap();
            let failed = drive(&mut client, &mut server, |_, server| server.recv::<u32>());
            let Err((0, ChannelError::Tls(e))) = failed else { panic!("the client refuses: {failed:?}") };
            assert!(matches!(e, rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)), "{e}");
            // The server hears of it (the client's alert, or the end of the stream), and never
            // of the frame.
            drop(client);
            let heard = server.recv_blocking::<u32>(DEADLINE);
            assert!(matches!(heard, Err(ChannelError::Tls(_) | ChannelError::Closed)), "{heard:?}");
        }

        #[test]
        fn a_server_certificate_for_another_name_is_refused_by_the_client() {
            let ca = Authority::new("ca");
            let (c, s) = pair();
            let session = ca.tls().connect("node-b.internal:7070").unwrap();
            let mut client = Channel::tls(c, session, Token(1), MAX_FRAME);
            let mut server = Channel::tls(s, ca.tls().accept().unwrap(), Token(2), MAX_FRAME);
            let failed = drive(&mut client, &mut server, |_, server| server.recv::<u32>());
            let Err((0, ChannelError::Tls(e))) = failed else { panic!("the client refuses: {failed:?}") };
            assert!(e.to_string().contains("not valid for name \"node-b.internal\""), "{e}");
        }

        #[test]
        fn bytes_that_are_not_tls_are_an_error_not_a_panic() {
            let ca = Authority::new("ca");
            let mut plain_hello = Vec::new();
            let hello =
                crate::ipc::message::PeerHello { node: "b".into(), secret: "0123456789abcdef".into(), want: None };
            crate::ipc::frame::encode(&hello, DEFAULT_MAX_FRAME_BYTES, &mut plain_hello).unwrap();
            let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
            for bytes in
                [plain_hello, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), garbage, vec![0x16, 3, 3, 0xff, 0xff]]
            {
                let (mut raw, s) = pair();
                let mut server = Channel::tls(s, ca.tls().accept().unwrap(), Token(2), MAX_FRAME);
                raw.write_all(&bytes).unwrap();
                let deadline = Instant::now() + DEADLINE;
                let failed = loop {
                    match server.fill().and_then(|()| server.recv::<u32>()) {
                        Ok(None) => assert!(Instant::now() < deadline, "no verdict on {bytes:?}"),
                        other => break other,
                    }
                    let fd = server.stream.fd();
                    let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
                    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10u8));
                };
                assert!(matches!(failed, Err(ChannelError::Tls(_))), "{failed:?} on {bytes:?}");
            }
        }
    }

    #[test]
    fn a_bad_frame_is_an_error() {
        let (mut a, b) = StdUnixStream::pair().unwrap();
        let mut right = Channel::new(b, Token(2)).unwrap();
        a.write_all(&[0xff, 0xff, 0xff, 0xff, b'x']).unwrap();
        right.fill().unwrap();
        assert!(matches!(right.recv::<u32>(), Err(ChannelError::Frame(FrameError::TooLarge { .. }))));
    }
}
