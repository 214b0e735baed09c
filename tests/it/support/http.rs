//! A small HTTP/1.1 client that shows exactly what the server sent: status, headers as
//! written (the value trimmed), body. Keep-alive by default; `Connection: close` is honoured.
//! A chunked body (nginx sends some) is read whole and given decoded. Over plain TCP or TLS
//! (rustls, [`Client::connect_tls`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::DEADLINE;

/// One response.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header lines as (name, value), names as sent.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header's value (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the server will close the connection.
    pub fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// A connection's stream: the socket, or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &t.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
        }
    }
}

/// One connection.
pub struct Client {
    stream: Stream,
    buf: Vec<u8>,
}

impl Client {
    /// Connects, with a read timeout of [`DEADLINE`]: a reply waits as long as any other
    /// condition a test waits for (a loaded machine's disk can hold a synced answer for
    /// seconds).
    pub fn connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        stream.set_nodelay(true)?;
        Ok(Client { stream: Stream::Plain(stream), buf: Vec::new() })
    }

    /// Connects over TLS with `config`, for the server name `name`, and completes the
    /// handshake (its failure is this call's error).
    pub fn connect_tls(
        addr: SocketAddr,
        config: std::sync::Arc<rustls::ClientConfig>,
        name: &str,
    ) -> io::Result<Client> {
        Self::tls_over(TcpStream::connect(addr)?, config, name)
    }

    /// [`Client::connect_tls`] over a socket already connected.
    pub fn tls_over(
        mut sock: TcpStream,
        config: std::sync::Arc<rustls::ClientConfig>,
        name: &str,
    ) -> io::Result<Client> {
        sock.set_read_timeout(Some(DEADLINE))?;
        sock.set_nodelay(true)?;
        let name = rustls_pki_types::ServerName::try_from(name.to_string()).map_err(io::Error::other)?;
        let mut session = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        while session.is_handshaking() {
            session.complete_io(&mut sock)?;
        }
        // A refused client certificate (TLS 1.3) shows only at the first read: the server's
        // alert follows its half of the handshake.
        Ok(Client { stream: Stream::Tls(Box::new(rustls::StreamOwned::new(session, sock))), buf: Vec::new() })
    }

    /// The leaf certificate the server presented (DER), on a TLS connection.
    pub fn server_certificate(&self) -> Option<Vec<u8>> {
        match &self.stream {
            Stream::Plain(_) => None,
            Stream::Tls(t) => t.conn.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()),
        }
    }

    /// How long a read may wait (the tests' deadline unless set).
    pub fn set_timeout(&mut self, timeout: std::time::Duration) {
        let _ = self.stream.socket().set_read_timeout(Some(timeout));
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Sends a request with a JSON (or empty) body and reads the response.
    pub fn request(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> io::Result<Reply> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n", body.len());
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        self.send_raw(req.as_bytes())?;
        self.read_reply()
    }

    /// `POST` with a JSON body.
    pub fn post(&mut self, path: &str, body: &str) -> io::Result<Reply> {
        self.request("POST", path, &[("Content-Type", "application/json")], body)
    }

    /// `GET`.
    pub fn get(&mut self, path: &str) -> io::Result<Reply> {
        self.request("GET", path, &[], "")
    }

    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        // A read with a timeout fails with EINTR when the process was stopped and continued
        // meanwhile (signal(7)), as on a machine under load: that is no answer, so read again.
        let n = loop {
            match self.stream.read(&mut chunk) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before a whole response"));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads one response (skipping `100 Continue`).
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        loop {
            let end = loop {
                if let Some(p) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                self.fill()?;
            };
            let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
            let mut lines = head.split("\r\n");
            let status_line = lines.next().unwrap_or_default();
            let status: u16 = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad status line {status_line:?}"))
            })?;
            let headers: Vec<(String, String)> = lines
                .filter(|l| !l.is_empty())
                // The space after the colon is optional (chromedriver writes none).
                .filter_map(|l| {
                    l.split_once(':').map(|(n, v)| (n.to_string(), v.trim_matches([' ', '\t']).to_string()))
                })
                .collect();
            self.buf.drain(..end);
            if status == 100 {
                continue;
            }
            let chunked = headers.iter().any(|(n, v)| {
                n.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
            });
            if chunked {
                let body = self.read_chunks()?;
                return Ok(Reply { status, headers, body });
            }
            let length: usize = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            while self.buf.len() < length {
                self.fill()?;
            }
            let body = self.buf.drain(..length).collect();
            return Ok(Reply { status, headers, body });
        }
    }

    /// A chunked body, decoded: chunks up to the last (empty) one and its trailer.
    fn read_chunks(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                    break p;
                }
                self.fill()?;
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).to_string();
            let size = usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {line:?}")))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailer lines, if any, up to an empty line.
                loop {
                    let end = loop {
                        if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                            break p;
                        }
                        self.fill()?;
                    };
                    self.buf.drain(..end + 2);
                    if end == 0 {
                        return Ok(body);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill()?;
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    /// Reads raw bytes (after those already buffered) until `needle` shows; returns them
    /// all (for an event stream, whose body never ends).
    pub fn read_until(&mut self, needle: &str) -> io::Result<String> {
        while !String::from_utf8_lossy(&self.buf).contains(needle) {
            self.fill()?;
        }
        Ok(String::from_utf8_lossy(&std::mem::take(&mut self.buf)).to_string())
    }

    /// Another handle on the same socket (to write on it while this client reads).
    pub fn stream_clone(&self) -> TcpStream {
        self.stream.socket().try_clone().expect("clone the socket")
    }

    /// The client's local address.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream.socket().local_addr().expect("local address")
    }
}

/// One request on a fresh connection.
pub fn once(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    Client::connect(addr)
        .and_then(|mut c| c.request(method, path, headers, body))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// Acquires `lock` with a try-lock; returns the response.
pub fn acquire(client: &mut Client, lock: &str) -> io::Result<Reply> {
    client.post(&format!("/v1/locks/{lock}/acquire"), r#"{"ttl_ms":30000,"queue":"none"}"#)
}

/// Acquires then releases `lock`; returns the two statuses.
pub fn cycle(client: &mut Client, lock: &str) -> io::Result<(Reply, Option<Reply>)> {
    let first = acquire(client, lock)?;
    if first.status != 200 || first.closes() {
        return Ok((first, None));
    }
    let ticket = first.json()["ticket"].as_str().unwrap_or_default().to_string();
    let second = client.post(&format!("/v1/locks/{lock}/release"), &format!(r#"{{"ticket":"{ticket}"}}"#))?;
    Ok((first, Some(second)))
}
