//! A reader of one Server-Sent Events stream (`GET /v1/locks/{name}/events`, or any path
//! that streams the same way, such as a waiting room's) over a raw connection: the head
//! checked, then event by event as (id, name, data). A stream sent chunked (as nginx passes
//! one on to an HTTP/1.1 client) is read through its chunks.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::DEADLINE;

/// Reads Server-Sent Events from a raw stream.
pub struct Events {
    reader: BufReader<Body>,
    /// The socket, to set its read timeout.
    stream: TcpStream,
}

/// A response body: the bytes as they come on the socket, or decoded from chunks.
struct Body {
    reader: BufReader<TcpStream>,
    /// Whether the body is chunked; then `left` bytes of the current chunk remain.
    chunked: bool,
    left: usize,
    done: bool,
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.chunked {
            return self.reader.read(buf);
        }
        while self.left == 0 && !self.done {
            // `SIZE[;extensions]\r\n`, after the previous chunk's closing `\r\n`.
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Ok(0);
            }
            let size = line.trim().split(';').next().unwrap_or_default();
            if size.is_empty() {
                continue;
            }
            self.left = usize::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad chunk size {line:?}"))
            })?;
            self.done = self.left == 0;
        }
        if self.done {
            return Ok(0);
        }
        let most = buf.len().min(self.left);
        let n = self.reader.read(&mut buf[..most])?;
        self.left -= n;
        Ok(n)
    }
}

impl Events {
    /// Opens the event stream of `ticket` on `lock` at `addr`.
    pub fn open(addr: SocketAddr, lock: &str, ticket: &str) -> Events {
        Self::open_after(addr, lock, ticket, None)
    }

    /// Opens the stream, continuing after `last_event_id` when given.
    pub fn open_after(addr: SocketAddr, lock: &str, ticket: &str, last_event_id: Option<u64>) -> Events {
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}"));
        let headers: Vec<&str> = resume.iter().map(String::as_str).collect();
        Self::open_path(addr, &format!("/v1/locks/{lock}/events?ticket={ticket}"), &headers)
    }

    /// Opens the stream at `path` (path and query) with extra header lines (`Name: value`),
    /// as a browser's EventSource would (through nginx, say).
    pub fn open_path(addr: SocketAddr, path: &str, headers: &[&str]) -> Events {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{extra}\r\n").unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("content-type: text/event-stream"), "{head}");
        let chunked = lower.contains("transfer-encoding: chunked");
        Events { reader: BufReader::new(Body { reader, chunked, left: 0, done: false }), stream }
    }

    /// The next event as (id, name, data).
    pub fn next(&mut self) -> (u64, String, serde_json::Value) {
        let deadline = std::time::Instant::now() + DEADLINE;
        let (mut id, mut name, mut data) = (0, String::new(), serde_json::Value::Null);
        loop {
            // Within the tests' deadline, pings or not.
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "no event within {DEADLINE:?}");
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut line = String::new();
            assert!(self.reader.read_line(&mut line).unwrap() > 0, "the stream ended");
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if line.is_empty() && !name.is_empty() {
                return (id, name, data);
            }
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.parse().unwrap();
            } else if let Some(v) = line.strip_prefix("event: ") {
                name = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = serde_json::from_str(v).unwrap();
            }
        }
    }

    /// Whether the stream ends with nothing more after what was read.
    pub fn ended(mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok() && rest.is_empty()
    }
}
