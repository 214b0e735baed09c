//! A reader of one Server-Sent Events stream (`GET /v1/locks/{name}/events`) over a raw
//! connection: the head checked, then event by event as (id, name, data).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use super::DEADLINE;

/// Reads Server-Sent Events from a raw stream.
pub struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    /// Opens the event stream of `ticket` on `lock` at `addr`.
    pub fn open(addr: SocketAddr, lock: &str, ticket: &str) -> Events {
        Self::open_after(addr, lock, ticket, None)
    }

    /// Opens the stream, continuing after `last_event_id` when given.
    pub fn open_after(addr: SocketAddr, lock: &str, ticket: &str, last_event_id: Option<u64>) -> Events {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        let resume = last_event_id.map(|id| format!("Last-Event-ID: {id}\r\n")).unwrap_or_default();
        write!(stream, "GET /v1/locks/{lock}/events?ticket={ticket} HTTP/1.1\r\nHost: x\r\n{resume}\r\n").unwrap();
        let mut reader = BufReader::new(stream);
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
        assert!(head.contains("Content-Type: text/event-stream"), "{head}");
        Events { reader }
    }

    /// The next event as (id, name, data).
    pub fn next(&mut self) -> (u64, String, serde_json::Value) {
        let deadline = std::time::Instant::now() + DEADLINE;
        let (mut id, mut name, mut data) = (0, String::new(), serde_json::Value::Null);
        loop {
            // Within the tests' deadline, pings or not.
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            assert!(!left.is_zero(), "no event within {DEADLINE:?}");
            self.reader.get_ref().set_read_timeout(Some(left)).unwrap();
            let mut line = String::new();
            assert!(self.reader.read_line(&mut line).unwrap() > 0, "the stream ended");
            let line = line.trim_end_matches('\n');
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
