//! A framed IPC channel on a non-blocking Unix stream registered with mio: reads are
//! buffered until whole frames are in, writes are queued and flushed once per loop turn
//! (so many messages share one system call), and nothing is lost on a short read or write.
//! The same channel runs over TCP for the cluster's peer link (docs/cluster.md), with a
//! frame limit of its own.

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
}

impl std::fmt::Display for ChannelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Closed => f.write_str("the peer closed the channel"),
            Self::Io(e) => write!(f, "channel I/O failed: {e}"),
            Self::Frame(e) => write!(f, "bad frame: {e}"),
            Self::Stuck => write!(f, "the peer left more than {MAX_QUEUED_BYTES} bytes unread"),
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
            Self::Frame(_) | Self::Stuck => false,
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(e) => Some(e),
            Self::Frame(e) => Some(e),
            Self::Closed | Self::Stuck => None,
        }
    }
}

/// What a channel runs over.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn source(&mut self) -> &mut dyn Source {
        match self {
            Self::Unix(s) => s,
            Self::Tcp(s) => s,
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Self::Unix(s) => std::os::fd::AsFd::as_fd(s),
            Self::Tcp(s) => std::os::fd::AsFd::as_fd(s),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.read(buf),
            Self::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Unix(s) => s.write(buf),
            Self::Tcp(s) => s.write(buf),
        }
    }
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

    /// The TCP stream under it, taken out (a peer connection handed to a thread of its
    /// own, `process::fetch`): what was read past the last frame returned, and what is
    /// queued and not written, are dropped with the channel. `None` for a Unix channel.
    pub fn into_tcp(self) -> Option<TcpStream> {
        match self.stream {
            Stream::Tcp(stream) => Some(stream),
            Stream::Unix(_) => None,
        }
    }

    /// Reads everything available into the frame buffer.
    pub fn fill(&mut self) -> Result<(), ChannelError> {
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
        while self.out_at < self.out.len() {
            match self.stream.write(&self.out[self.out_at..]) {
                Ok(0) => return Err(ChannelError::Closed),
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ChannelError::Io(e)),
            }
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

    /// Whether output is waiting to be written.
    pub fn has_output(&self) -> bool {
        self.out_at < self.out.len()
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

    #[test]
    fn a_bad_frame_is_an_error() {
        let (mut a, b) = StdUnixStream::pair().unwrap();
        let mut right = Channel::new(b, Token(2)).unwrap();
        a.write_all(&[0xff, 0xff, 0xff, 0xff, b'x']).unwrap();
        right.fill().unwrap();
        assert!(matches!(right.recv::<u32>(), Err(ChannelError::Frame(FrameError::TooLarge { .. }))));
    }
}
