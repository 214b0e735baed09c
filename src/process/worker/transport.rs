//! A client connection's byte stream: the TCP socket itself, or TLS over it (a connection
//! on a `tls.listen` listener). The worker reads and writes plaintext through
//! [`Transport`] as it would through the socket, so the connection state machine
//! (`http::conn`) never knows which it is; TLS costs nothing on a plain connection but one
//! `match`.
//!
//! TLS is a `rustls::ServerConnection` driven sans-io in the worker's mio loop: ciphertext
//! read from the socket goes in with `read_tls` and `process_new_packets`, plaintext comes
//! out of its reader; plaintext written goes in through its writer and ciphertext leaves
//! with `write_tls`. The handshake runs inside the same calls (its replies are flushed after
//! each read), so it takes no state of its own in the worker: until it completes, reads say
//! `WouldBlock`, and the connection's `http.header_timeout_ms` (the first request must
//! arrive that long after the accept) bounds a handshake that stalls.
//!
//! What a client can make the server hold is bounded by rustls: one record being read
//! (16 KiB and its overhead), decrypted plaintext (16 KiB, taken out before more is read),
//! and ciphertext not yet sent ([`MAX_UNSENT_TLS_BYTES`], on top of the connection's
//! `http.max_unsent_bytes`).
//!
//! Must not: decide anything about HTTP. A plain HTTP request sent to a TLS listener is the
//! one thing it recognises (a first byte that is a letter, where a TLS record starts with
//! 0x16): it writes the canned 400 answer it is given, in clear, and ends the connection.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::rc::Rc;

use mio::net::TcpStream;
use rustls::ServerConnection;

/// Ciphertext a TLS connection may have waiting for the socket; past it, writes say
/// `WouldBlock` until the client reads.
pub const MAX_UNSENT_TLS_BYTES: usize = 64 * 1024;

/// Most bytes of a plain HTTP request on a TLS listener read (and discarded) before its
/// answer.
const MAX_PLAIN_HTTP_DRAIN_BYTES: usize = 64 * 1024;

/// A client connection's stream.
pub enum Transport {
    /// Plain HTTP.
    Plain(TcpStream),
    /// TLS over the socket.
    Tls(Box<TlsStream>),
}

/// A TLS session over a socket.
pub struct TlsStream {
    sock: TcpStream,
    tls: ServerConnection,
    /// Nothing has been read yet (a plain HTTP request would show in the first byte).
    fresh: bool,
    /// The close_notify alert is queued.
    closing: bool,
    /// The answer to plain HTTP on this listener.
    plain_http_answer: Rc<[u8]>,
}

impl Transport {
    /// A TLS transport over `sock` with a new session; `plain_http_answer` is what a client
    /// that speaks plain HTTP to it is told.
    pub fn tls(sock: TcpStream, mut tls: ServerConnection, plain_http_answer: Rc<[u8]>) -> Self {
        tls.set_buffer_limit(Some(MAX_UNSENT_TLS_BYTES));
        Self::Tls(Box::new(TlsStream { sock, tls, fresh: true, closing: false, plain_http_answer }))
    }

    /// The socket (to register it, set options, read its pending error).
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Self::Plain(sock) => sock,
            Self::Tls(t) => &mut t.sock,
        }
    }

    /// Whether a read that returned less than asked proves the socket empty: true of a
    /// socket; not of TLS, which returns at most one record's plaintext per read.
    pub fn short_read_drains(&self) -> bool {
        matches!(self, Self::Plain(_))
    }

    /// Reads plaintext. `Ok(0)` is the end of the client's input; `WouldBlock`, nothing more
    /// for now (for TLS: the handshake is not done, or a record is incomplete).
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(sock) => sock.read(buf),
            Self::Tls(t) => t.read(buf),
        }
    }

    /// Writes plaintext; returns how much was taken (for TLS: encrypted, and sent as far as
    /// the socket takes it; [`Transport::flush`] sends the rest).
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(sock) => sock.write(buf),
            Self::Tls(t) => t.write(buf),
        }
    }

    /// Sends what TLS still holds; `Ok(true)` once nothing is left (always, for a socket).
    pub fn flush(&mut self) -> io::Result<bool> {
        match self {
            Self::Plain(_) => Ok(true),
            Self::Tls(t) => t.flush(),
        }
    }

    /// Ends the server's side: TLS first queues its close_notify alert (send it with
    /// [`Transport::flush`] before [`Transport::shutdown_write`]).
    pub fn close_notify(&mut self) {
        if let Self::Tls(t) = self {
            if !t.closing {
                t.closing = true;
                t.tls.send_close_notify();
            }
        }
    }

    /// Shuts down the socket's sending side.
    pub fn shutdown_write(&mut self) {
        let _ = self.socket().shutdown(Shutdown::Write);
    }

    /// The leaf certificate the client presented and the CA verified (DER), if any.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        match self {
            Self::Plain(_) => None,
            Self::Tls(t) => t.tls.peer_certificates().and_then(<[_]>::first).map(|c| c.as_ref()),
        }
    }
}

impl TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.fresh {
            let mut first = [0u8; 1];
            let n = self.sock.peek(&mut first)?;
            self.fresh = false;
            if n == 1 && first[0].is_ascii_alphabetic() {
                // "GET …" where a TLS record (0x16) belongs: say so in clear, and end. What
                // the client sent is read first (a close with unread input would reset the
                // connection, and the client might lose the answer).
                let mut scratch = [0u8; 4096];
                let mut drained = 0;
                while drained < MAX_PLAIN_HTTP_DRAIN_BYTES {
                    match self.sock.read(&mut scratch) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => drained += n,
                    }
                }
                let _ = self.sock.write(&self.plain_http_answer);
                let _ = self.sock.shutdown(Shutdown::Write);
                return Err(io::Error::new(io::ErrorKind::InvalidData, "plain HTTP on a TLS listener"));
            }
        }
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The client closed its socket without close_notify: the end of its input
                // (HTTP's own framing tells a truncated request).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match self.tls.read_tls(&mut self.sock) {
                // The end of input: the reader says so on the next turn of the loop.
                Ok(0) => {}
                Ok(_) => {
                    if let Err(e) = self.tls.process_new_packets() {
                        // Send the alert that says why (best effort), then give up.
                        let _ = self.flush();
                        return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                    }
                    // Handshake messages to send: as far as the socket takes them (a
                    // writable event sends the rest).
                    self.flush()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if !self.flush()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = self.tls.writer().write(buf)?;
        if n == 0 && !buf.is_empty() {
            // Full (before the handshake completes, plaintext waits for it).
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.flush()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<bool> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}
