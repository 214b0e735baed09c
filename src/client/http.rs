//! A small blocking HTTP/1.1 client for the command line: one request per connection
//! (`Connection: close`), `http://` only (leasehold serves plain HTTP), a deadline on the
//! whole exchange. Nothing here knows about locks.
//!
//! The server may be a comma-separated list (the nodes of a cluster, docs/cluster.md).
//! A request goes to the server that answered last. If that one cannot be reached, the next
//! one not yet asked is tried, and so on: a request that was never sent cannot have done
//! anything. A node that is not the leader answers 503 `not_leader` with the leader's URL in
//! `leader`: the same request goes there (nothing was done on the follower), at most
//! [`MAX_LEADER_HOPS`] times a request, and later requests start there. A node that names
//! itself, or a leader that could not be reached, ends the request with that 503.
//! [`Http::ask_each`] asks every server of the list instead, each for its own answer.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::args::Target;

/// Largest answer read (a page of locks is far smaller).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Most times one request follows a `not_leader` answer to the leader it names (a leader
/// that changes while the request travels moves it on; a loop of stale answers ends).
pub const MAX_LEADER_HOPS: usize = 3;

/// Most servers a client knows: those listed, and leaders named to it.
const MAX_SERVERS: usize = 32;

/// Why a call got no answer.
#[derive(Debug)]
pub enum ClientError {
    /// The server URL cannot be used.
    BadUrl(String),
    /// No connection could be made.
    Unreachable {
        /// The server.
        server: String,
        /// Why.
        source: io::Error,
    },
    /// The connection broke or the deadline passed before a whole answer.
    Broken {
        /// The server.
        server: String,
        /// Why.
        source: io::Error,
    },
    /// The answer is not HTTP.
    Protocol {
        /// The server.
        server: String,
        /// What was wrong.
        reason: String,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadUrl(reason) => write!(f, "bad server URL: {reason}"),
            Self::Unreachable { server, source } => write!(f, "cannot reach {server}: {source}"),
            Self::Broken { server, source } => write!(f, "no answer from {server}: {source}"),
            Self::Protocol { server, reason } => write!(f, "{server} did not answer in HTTP: {reason}"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Unreachable { source, .. } | Self::Broken { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// An answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`null` if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The error code and message of an error answer, for a user to read.
    pub fn error_text(&self) -> String {
        let body = self.json();
        match (body["error"].as_str(), body["message"].as_str()) {
            (Some(code), Some(message)) => format!("{} {code}: {message}", self.status),
            _ => format!("{} {}", self.status, String::from_utf8_lossy(&self.body).trim()),
        }
    }
}

/// One server of the list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    server: String,
    host: String,
    port: u16,
    base_path: String,
}

/// The servers, and which one answers now.
#[derive(Debug, Clone)]
pub struct Http {
    endpoints: RefCell<Vec<Endpoint>>,
    current: Cell<usize>,
    key: Option<String>,
}

/// Percent-encodes one path segment (a lock name may hold `?`, `#` or `%`).
pub fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Endpoint {
    /// `http://host[:port][/base]`.
    fn parse(server: &str) -> Result<Self, ClientError> {
        let server = server.trim().trim_end_matches('/').to_string();
        let rest = match server.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(ClientError::BadUrl(format!(
                    "{server}: the scheme is {scheme}; leasehold serves plain http://"
                )))
            }
            None => return Err(ClientError::BadUrl(format!("{server}: expected http://host:port"))),
        };
        let (authority, base_path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/').to_string()),
            None => (rest, String::new()),
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
                let port = port.parse().map_err(|_| ClientError::BadUrl(format!("{server}: bad port {port:?}")))?;
                (host.trim_start_matches('[').trim_end_matches(']').to_string(), port)
            }
            _ => (authority.to_string(), 80),
        };
        if host.is_empty() {
            return Err(ClientError::BadUrl(format!("{server}: no host")));
        }
        Ok(Self { server, host, port, base_path })
    }
}

impl Http {
    /// A client for `target.server`: `http://host[:port][/base]`, or several of them
    /// separated by commas.
    pub fn new(target: &Target) -> Result<Self, ClientError> {
        let endpoints: Vec<Endpoint> =
            target.server.split(',').filter(|s| !s.trim().is_empty()).map(Endpoint::parse).collect::<Result<_, _>>()?;
        if endpoints.is_empty() {
            return Err(ClientError::BadUrl(format!("{:?}: no server", target.server)));
        }
        if endpoints.len() > MAX_SERVERS {
            return Err(ClientError::BadUrl(format!("{} servers; at most {MAX_SERVERS}", endpoints.len())));
        }
        Ok(Self { endpoints: RefCell::new(endpoints), current: Cell::new(0), key: target.key.clone() })
    }

    /// The server that answers now, for messages.
    pub fn server(&self) -> String {
        self.endpoints.borrow()[self.current.get()].server.clone()
    }

    /// Sends one request and reads the whole answer within `timeout`: to the server that
    /// answered last, then the next ones if it cannot be reached, and on to the leader a
    /// `not_leader` answer names.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let deadline = Instant::now() + timeout;
        // The servers asked during this call, and those that could not be reached.
        let (mut asked, mut unreachable) = (vec![false; MAX_SERVERS], vec![false; MAX_SERVERS]);
        let mut hops = 0;
        loop {
            let at = self.current.get();
            let endpoint = self.endpoints.borrow()[at].clone();
            asked[at] = true;
            let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            match self.call_one(&endpoint, method, path, body, left) {
                Err(e @ ClientError::Unreachable { .. }) => {
                    unreachable[at] = true;
                    // On to the next server not asked yet; when every one was, that is it.
                    let n = self.endpoints.borrow().len();
                    match (1..n).map(|k| (at + k) % n).find(|&i| !asked[i]) {
                        Some(next) => self.current.set(next),
                        None => return Err(e),
                    }
                }
                Ok(r) if hops < MAX_LEADER_HOPS && r.status == 503 && r.json()["error"] == "not_leader" => {
                    let Some(leader) = r.json()["leader"].as_str().and_then(|url| Endpoint::parse(url).ok()) else {
                        // No leader now: the 503 (with its Retry-After) is the answer.
                        return Ok(r);
                    };
                    let known = self.endpoints.borrow().iter().position(|e| *e == leader);
                    if leader == endpoint || known.is_some_and(|i| unreachable[i]) || !self.go_to(leader) {
                        // A node naming itself, or a leader already found unreachable.
                        return Ok(r);
                    }
                    hops += 1;
                }
                other => return other,
            }
        }
    }

    /// Sends one request to every server of the list at once, each within `timeout`, and
    /// returns each server's own answer in the list's order: no failover and no following of
    /// `not_leader` (for a view of every node, `leasehold status --cluster`).
    pub fn ask_each(
        &self,
        method: &str,
        path: &str,
        timeout: Duration,
    ) -> Vec<(String, Result<Response, ClientError>)> {
        let endpoints = self.endpoints.borrow().clone();
        std::thread::scope(|scope| {
            let asks: Vec<_> = endpoints
                .iter()
                .map(|endpoint| {
                    // A client of its own per thread (this one is not shared across threads).
                    let one = Http {
                        endpoints: RefCell::new(vec![endpoint.clone()]),
                        current: Cell::new(0),
                        key: self.key.clone(),
                    };
                    scope.spawn(move || one.call_one(endpoint, method, path, None, timeout))
                })
                .collect();
            endpoints
                .iter()
                .zip(asks)
                .map(|(endpoint, ask)| {
                    (endpoint.server.clone(), ask.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                })
                .collect()
        })
    }

    /// Makes `leader` the server that answers from now on; false if it cannot be added.
    fn go_to(&self, leader: Endpoint) -> bool {
        let mut endpoints = self.endpoints.borrow_mut();
        let at = match endpoints.iter().position(|e| *e == leader) {
            Some(at) => at,
            None if endpoints.len() < MAX_SERVERS => {
                endpoints.push(leader);
                endpoints.len() - 1
            }
            None => return false,
        };
        self.current.set(at);
        true
    }

    /// One request to one server.
    fn call_one(
        &self,
        endpoint: &Endpoint,
        method: &str,
        path: &str,
        body: Option<&str>,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut stream = endpoint.connect(timeout)?;
        let broken = |source: io::Error| ClientError::Broken { server: endpoint.server.clone(), source };
        let mut request = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}:{}\r\nConnection: close\r\nUser-Agent: leasehold/{}\r\n",
            endpoint.base_path,
            endpoint.host,
            endpoint.port,
            env!("CARGO_PKG_VERSION")
        );
        if let Some(key) = &self.key {
            request.push_str(&format!("x-api-key: {key}\r\n"));
        }
        let body = body.unwrap_or("");
        if !body.is_empty() || method != "GET" {
            request.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        request.push_str("\r\n");
        request.push_str(body);
        stream.set_write_timeout(Some(timeout)).map_err(broken)?;
        stream.write_all(request.as_bytes()).map_err(broken)?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(broken(io::Error::new(io::ErrorKind::TimedOut, "the answer did not come in time")));
            }
            stream.set_read_timeout(Some(left)).map_err(broken)?;
            match stream.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(broken(e)),
            }
            if answer.len() > MAX_RESPONSE_BYTES {
                return Err(endpoint.protocol("the answer is too large"));
            }
            if let Some(response) = endpoint.complete(&answer)? {
                return Ok(response);
            }
        }
        endpoint.complete(&answer)?.ok_or_else(|| broken(io::Error::new(io::ErrorKind::UnexpectedEof, "cut short")))
    }
}

impl Endpoint {
    fn protocol(&self, reason: &str) -> ClientError {
        ClientError::Protocol { server: self.server.clone(), reason: reason.to_string() }
    }

    /// The response in `bytes`, once it is whole (by its Content-Length).
    fn complete(&self, bytes: &[u8]) -> Result<Option<Response>, ClientError> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut parsed = httparse::Response::new(&mut headers);
        let head_len = match parsed.parse(bytes) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(self.protocol(&e.to_string())),
        };
        let status = parsed.code.unwrap_or(0);
        let length = parsed
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
        let body = &bytes[head_len..];
        match length {
            Some(n) if body.len() >= n => Ok(Some(Response { status, body: body[..n].to_vec() })),
            _ => Ok(None),
        }
    }

    fn connect(&self, timeout: Duration) -> Result<TcpStream, ClientError> {
        let unreachable = |source: io::Error| ClientError::Unreachable { server: self.server.clone(), source };
        let addrs = (self.host.as_str(), self.port).to_socket_addrs().map_err(unreachable)?;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name has no address");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(10))) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
                }
                Err(e) => last = e,
            }
        }
        Err(unreachable(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http(url: &str) -> Result<Endpoint, ClientError> {
        Endpoint::parse(url)
    }

    #[test]
    fn a_server_list_is_comma_separated_and_every_url_must_be_good() {
        let list = |servers: &str| Http::new(&Target { server: servers.into(), key: None });
        let h = list("http://a:1, http://b:2/,http://c:3").unwrap();
        let names: Vec<String> = h.endpoints.borrow().iter().map(|e| e.server.clone()).collect();
        assert_eq!(names, ["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(h.server(), "http://a:1");
        assert!(matches!(list("http://a:1,https://b:2"), Err(ClientError::BadUrl(_))));
        assert!(matches!(list(","), Err(ClientError::BadUrl(_))));
        let many = vec!["http://a:1"; MAX_SERVERS + 1].join(",");
        assert!(matches!(list(&many), Err(ClientError::BadUrl(_))));
    }

    #[test]
    fn urls_give_host_port_and_base_path() {
        let h = http("http://locks.internal:8080/lh").unwrap();
        assert_eq!((h.host.as_str(), h.port, h.base_path.as_str()), ("locks.internal", 8080, "/lh"));
        let h = http("http://[::1]:9").unwrap();
        assert_eq!((h.host.as_str(), h.port), ("::1", 9));
        assert_eq!(http("http://h").unwrap().port, 80);
        for bad in ["https://h", "h:80", "http://:80", "http://h:port"] {
            assert!(matches!(http(bad), Err(ClientError::BadUrl(_))), "{bad}");
        }
    }

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("job-1.a_b~"), "job-1.a_b~");
        assert_eq!(segment("a?b#c%d:e"), "a%3Fb%23c%25d%3Ae");
    }

    #[test]
    fn an_answer_is_whole_only_with_its_body() {
        let h = http("http://h:1").unwrap();
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n";
        assert!(h.complete(head).unwrap().is_none());
        let whole = [&head[..], b"{\"a\"}extra"].concat();
        let r = h.complete(&whole).unwrap().unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"{\"a\""[..]));
        assert!(matches!(h.complete(b"garbage\r\n\r\n"), Err(ClientError::Protocol { .. })));
    }
}
