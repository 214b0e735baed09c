//! The command line's HTTP/1.1 client, on ureq: `http://` and `https://` servers, keep-alive,
//! a deadline on every call. Nothing here knows about locks.
//!
//! - **TLS** (rustls): a server's certificate is checked against the Mozilla roots ureq
//!   ships, and against the CA certificates of `--cacert FILE` (or `LEASEHOLD_CACERT`) too,
//!   for a server behind a TLS-terminating proxy whose certificate a private CA signed.
//! - **Keep-alive.** One [`Http`] (and its clones) shares one `ureq::Agent`, whose pool keeps
//!   a connection open between calls once an answer has been read whole: `leasehold lock`
//!   acquires, renews and releases over one connection, not one per renewal. A pooled
//!   connection the server has closed meanwhile is noticed before it is used, and a new one
//!   is made.
//! - **Deadlines.** Every call has a deadline for the whole exchange (connecting, the TLS
//!   handshake, sending, reading the answer); connecting alone has its own, shorter, limit,
//!   so a server that drops packets gives way to the next one of the list.
//! - Redirects are not followed, and no proxy is taken from the environment: what answers
//!   is the server named (or the leader it names, below).
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
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::args::Target;

/// Largest answer read (a page of locks is far smaller).
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// Most times one request follows a `not_leader` answer to the leader it names (a leader
/// that changes while the request travels moves it on; a loop of stale answers ends).
pub const MAX_LEADER_HOPS: usize = 3;

/// Most servers a client knows: those listed, and leaders named to it.
const MAX_SERVERS: usize = 32;

/// Longest time allowed to make a connection (TCP, not the TLS handshake), unless the
/// client is made with a shorter one ([`Http::new`]).
pub const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call got no answer.
#[derive(Debug)]
pub enum ClientError {
    /// The server URL cannot be used.
    BadUrl(String),
    /// The file of CA certificates to trust cannot be used.
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No connection could be made (or its TLS handshake failed): the request was not sent.
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
            Self::CaFile { path, reason } => write!(f, "cannot use the CA file {}: {reason}", path.display()),
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
    /// `http` or `https`.
    scheme: &'static str,
    host: String,
    port: u16,
    base_path: String,
}

/// The servers, which one answers now, and the connections kept to them.
#[derive(Debug, Clone)]
pub struct Http {
    endpoints: RefCell<Vec<Endpoint>>,
    current: Cell<usize>,
    key: Option<String>,
    /// The TLS configuration with `--cacert`'s CAs added (`None`: ureq's own).
    tls: Option<Arc<ClientConfig>>,
    /// Shared by the clones: one pool of kept connections.
    agent: ureq::Agent,
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
    /// `http[s]://host[:port][/base]`.
    fn parse(server: &str) -> Result<Self, ClientError> {
        let server = server.trim().trim_end_matches('/').to_string();
        let (scheme, default_port, rest) = match server.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => ("http", 80, rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => ("https", 443, rest),
            Some((scheme, _)) => {
                return Err(ClientError::BadUrl(format!(
                    "{server}: the scheme is {scheme}; expected http:// or https://"
                )))
            }
            None => return Err(ClientError::BadUrl(format!("{server}: expected http://host:port or https://host"))),
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
            _ => (authority.to_string(), default_port),
        };
        if host.is_empty() {
            return Err(ClientError::BadUrl(format!("{server}: no host")));
        }
        Ok(Self { server, scheme, host, port, base_path })
    }

    /// The URL of `path` (path and query, its segments encoded by [`segment`]) on this
    /// server.
    fn url(&self, path: &str) -> Result<String, ClientError> {
        // The URL parser removes `.` and `..` segments, so a lock named so cannot be named in
        // a URL: refused rather than sent to another path.
        let path_part = path.split('?').next().unwrap_or("");
        if path_part.split('/').any(|s| s == "." || s == "..") {
            return Err(ClientError::BadUrl(format!("{path_part}: a path segment . or .. cannot be sent in a URL")));
        }
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        Ok(format!("{}://{host}:{}{}{path}", self.scheme, self.port, self.base_path))
    }

    fn protocol(&self, reason: &str) -> ClientError {
        ClientError::Protocol { server: self.server.clone(), reason: reason.to_string() }
    }

    /// What a failed exchange with this server comes to.
    fn failed(&self, transport: &ureq::Transport) -> ClientError {
        use ureq::ErrorKind as Kind;
        let server = self.server.clone();
        match transport.kind() {
            // Nothing was sent: no connection, or its TLS handshake failed.
            Kind::Dns | Kind::ConnectionFailed => ClientError::Unreachable { server, source: cause(transport) },
            Kind::InvalidUrl | Kind::UnknownScheme => ClientError::BadUrl(format!("{server}: {transport}")),
            Kind::BadStatus | Kind::BadHeader | Kind::TooManyRedirects => {
                self.protocol(transport.message().unwrap_or("a malformed answer"))
            }
            _ => ClientError::Broken { server, source: cause(transport) },
        }
    }
}

/// The I/O error under a failed exchange, in words a user can act on: an OS error as the OS
/// says it (`Connection refused`); a TLS handshake that failed says so, and a certificate
/// that is not trusted points to `--cacert`.
fn cause(transport: &ureq::Transport) -> io::Error {
    let source = std::error::Error::source(transport).and_then(|s| s.downcast_ref::<io::Error>());
    let Some(source) = source else { return io::Error::other(transport.to_string()) };
    if let Some(code) = source.raw_os_error() {
        return io::Error::from_raw_os_error(code);
    }
    let tls = transport.message().is_some_and(|m| m.starts_with("tls"));
    if !tls {
        return io::Error::new(source.kind(), source.to_string());
    }
    let hint = if source.to_string().contains("UnknownIssuer") {
        " (to trust a private CA: --cacert FILE or LEASEHOLD_CACERT)"
    } else {
        ""
    };
    io::Error::new(source.kind(), format!("TLS handshake failed: {source}{hint}"))
}

/// The TLS configuration that trusts ureq's roots and the CA certificates in the PEM file
/// at `path`.
fn trusting(path: &Path) -> Result<Arc<ClientConfig>, ClientError> {
    let refused = |reason: String| ClientError::CaFile { path: path.to_path_buf(), reason };
    let pem = std::fs::read(path).map_err(|e| refused(e.to_string()))?;
    let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let mut added = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| refused(format!("not PEM: {e}")))?;
        roots.add(cert).map_err(|e| refused(format!("holds a certificate that cannot be a CA: {e}")))?;
        added += 1;
    }
    if added == 0 {
        return Err(refused("holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)".to_string()));
    }
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// An agent (a pool of kept connections) that connects within `connect_timeout`.
fn agent(connect_timeout: Duration, tls: Option<&Arc<ClientConfig>>) -> ureq::Agent {
    let mut builder = ureq::AgentBuilder::new()
        .timeout_connect(connect_timeout)
        .redirects(0)
        .try_proxy_from_env(false)
        .user_agent(concat!("leasehold/", env!("CARGO_PKG_VERSION")));
    if let Some(tls) = tls {
        builder = builder.tls_config(Arc::clone(tls));
    }
    builder.build()
}

impl Http {
    /// A client for `target.server`: `http[s]://host[:port][/base]`, or several of them
    /// separated by commas, trusting the CAs of `target.cacert` besides the usual roots.
    /// Connecting takes at most `connect_timeout` (and at most [`MAX_CONNECT_TIMEOUT`]).
    pub fn new(target: &Target, connect_timeout: Duration) -> Result<Self, ClientError> {
        let endpoints: Vec<Endpoint> =
            target.server.split(',').filter(|s| !s.trim().is_empty()).map(Endpoint::parse).collect::<Result<_, _>>()?;
        if endpoints.is_empty() {
            return Err(ClientError::BadUrl(format!("{:?}: no server", target.server)));
        }
        if endpoints.len() > MAX_SERVERS {
            return Err(ClientError::BadUrl(format!("{} servers; at most {MAX_SERVERS}", endpoints.len())));
        }
        let tls = target.cacert.as_deref().map(trusting).transpose()?;
        let agent = agent(connect_timeout.min(MAX_CONNECT_TIMEOUT), tls.as_ref());
        Ok(Self { endpoints: RefCell::new(endpoints), current: Cell::new(0), key: target.key.clone(), tls, agent })
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
            match call_one(&self.agent, self.key.as_deref(), &endpoint, method, path, body, left) {
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

    /// Sends one request to every server of the list at once, each within `timeout`
    /// (connecting included), and returns each server's own answer in the list's order: no
    /// failover and no following of `not_leader` (for a view of every node, `leasehold
    /// status --cluster`).
    pub fn ask_each(
        &self,
        method: &str,
        path: &str,
        timeout: Duration,
    ) -> Vec<(String, Result<Response, ClientError>)> {
        let endpoints = self.endpoints.borrow().clone();
        // An agent of their own, which connects within `timeout` (ureq's connect limit is the
        // agent's, whatever the call's deadline).
        let agent = agent(timeout.min(MAX_CONNECT_TIMEOUT), self.tls.as_ref());
        std::thread::scope(|scope| {
            let asks: Vec<_> = endpoints
                .iter()
                .map(|endpoint| {
                    let (agent, key) = (&agent, self.key.as_deref());
                    scope.spawn(move || call_one(agent, key, endpoint, method, path, None, timeout))
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
}

/// One request to one server, through `agent` (over a kept connection when it has one),
/// the whole exchange within `timeout`.
fn call_one(
    agent: &ureq::Agent,
    key: Option<&str>,
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, ClientError> {
    let mut request = agent.request(method, &endpoint.url(path)?).timeout(timeout);
    if let Some(key) = key {
        request = request.set("x-api-key", key);
    }
    let sent = match body {
        Some(body) => request.set("Content-Type", "application/json").send_string(body),
        None => request.call(),
    };
    let answer = match sent {
        Ok(answer) | Err(ureq::Error::Status(_, answer)) => answer,
        Err(ureq::Error::Transport(transport)) => return Err(endpoint.failed(&transport)),
    };
    let status = answer.status();
    // Read to its end, which puts the connection back in the pool for the next call.
    let mut body = Vec::new();
    answer
        .into_reader()
        .take(MAX_RESPONSE_BYTES as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|source| ClientError::Broken { server: endpoint.server.clone(), source })?;
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(endpoint.protocol("the answer is too large"));
    }
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn http(url: &str) -> Result<Endpoint, ClientError> {
        Endpoint::parse(url)
    }

    fn target(server: &str, cacert: Option<&Path>) -> Target {
        Target { server: server.into(), key: None, cacert: cacert.map(Path::to_path_buf) }
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_server_list_is_comma_separated_and_every_url_must_be_good() {
        let list = |servers: &str| Http::new(&target(servers, None), SECOND);
        let h = list("http://a:1, https://b:2/,http://c:3").unwrap();
        let names: Vec<String> = h.endpoints.borrow().iter().map(|e| e.server.clone()).collect();
        assert_eq!(names, ["http://a:1", "https://b:2", "http://c:3"]);
        assert_eq!(h.server(), "http://a:1");
        assert!(matches!(list("http://a:1,ftp://b:2"), Err(ClientError::BadUrl(_))));
        assert!(matches!(list(","), Err(ClientError::BadUrl(_))));
        let many = vec!["http://a:1"; MAX_SERVERS + 1].join(",");
        assert!(matches!(list(&many), Err(ClientError::BadUrl(_))));
    }

    #[test]
    fn urls_give_scheme_host_port_and_base_path() {
        let h = http("http://locks.internal:8080/lh").unwrap();
        assert_eq!((h.scheme, h.host.as_str(), h.port, h.base_path.as_str()), ("http", "locks.internal", 8080, "/lh"));
        let h = http("http://[::1]:9").unwrap();
        assert_eq!((h.host.as_str(), h.port), ("::1", 9));
        assert_eq!(h.url("/v1/locks?after=a").unwrap(), "http://[::1]:9/v1/locks?after=a");
        assert_eq!(http("http://h").unwrap().port, 80);
        let h = http("HTTPS://h/base/").unwrap();
        assert_eq!((h.scheme, h.port, h.base_path.as_str()), ("https", 443, "/base"));
        assert_eq!(h.url("/healthz").unwrap(), "https://h:443/base/healthz");
        for bad in ["ftp://h", "h:80", "http://:80", "https://h:port"] {
            assert!(matches!(http(bad), Err(ClientError::BadUrl(_))), "{bad}");
        }
    }

    #[test]
    fn segments_are_percent_encoded_and_dot_segments_are_refused() {
        assert_eq!(segment("job-1.a_b~"), "job-1.a_b~");
        assert_eq!(segment("a?b#c%d:e"), "a%3Fb%23c%25d%3Ae");
        let h = http("http://h:1").unwrap();
        for name in [".", ".."] {
            let path = format!("/v1/locks/{}/acquire", segment(name));
            assert!(matches!(h.url(&path), Err(ClientError::BadUrl(_))), "{name}");
        }
        assert!(h.url(&format!("/v1/locks/{}?after=..", segment("..."))).is_ok());
    }

    /// A server on loopback that answers every request `200 {"n":N}` (N counting requests)
    /// and keeps its connections open; it counts the connections it accepted.
    fn keep_alive_server() -> (SocketAddr, Arc<AtomicUsize>) {
        counting_server(|stream| answer_each(stream, |n| n))
    }

    /// A server on loopback that counts the TCP connections it accepts and hands each to
    /// `serve` on a thread of its own.
    fn counting_server(serve: impl Fn(TcpStream) + Clone + Send + 'static) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                count.fetch_add(1, Ordering::SeqCst);
                let serve = serve.clone();
                std::thread::spawn(move || serve(stream));
            }
        });
        (addr, accepted)
    }

    /// Reads requests from `stream` (head, then a body of its Content-Length) and answers
    /// each with its number, as `reply` says, until the client closes.
    fn answer_each<S: Read + Write>(mut stream: S, reply: impl Fn(usize) -> usize) {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        for n in 1.. {
            let head_end = loop {
                if let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => seen.extend_from_slice(&buf[..k]),
                }
            };
            let head = String::from_utf8_lossy(&seen[..head_end]).to_ascii_lowercase();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            while seen.len() < head_end + length {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(k) => seen.extend_from_slice(&buf[..k]),
                }
            }
            seen.drain(..head_end + length);
            let body = format!("{{\"n\":{}}}", reply(n));
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            if stream.write_all(answer.as_bytes()).and_then(|()| stream.flush()).is_err() {
                return;
            }
        }
    }

    #[test]
    fn calls_go_over_one_kept_connection_shared_by_clones() {
        let (addr, accepted) = keep_alive_server();
        let h = Http::new(&target(&format!("http://{addr}"), None), SECOND).unwrap();
        let renewer = h.clone();
        for i in 1..=3 {
            let r = h.call("POST", "/renew", Some("{}"), SECOND).unwrap();
            assert_eq!((r.status, r.json()["n"].as_u64()), (200, Some(i)));
        }
        // A clone (the renewer thread's) takes the same kept connection, from another thread.
        let r = std::thread::spawn(move || renewer.call("GET", "/x", None, SECOND).unwrap()).join().unwrap();
        assert_eq!(r.json()["n"], 4);
        assert_eq!(h.call("DELETE", "/t", None, SECOND).unwrap().json()["n"], 5);
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "five calls, one connection");
    }

    #[test]
    fn a_server_that_accepts_and_never_answers_fails_the_call_by_its_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let h = Http::new(&target(&format!("http://{}", listener.local_addr().unwrap()), None), SECOND).unwrap();
        let started = Instant::now();
        let e = h.call("POST", "/renew", Some("{}"), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(&e, ClientError::Broken { source, .. } if source.kind() == io::ErrorKind::TimedOut), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        drop(listener);
    }

    /// A CA of the test's own and a server certificate for 127.0.0.1 it signed (PEM).
    fn authority() -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "leasehold test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(params, ca_key);
        let server = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        (ca_pem, server.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
    }

    /// A TLS server on loopback with `cert`/`key` that answers as [`answer_each`] does and
    /// counts its TCP connections.
    fn tls_server(cert: &str, key: &str) -> (SocketAddr, Arc<AtomicUsize>) {
        use rustls_pki_types::PrivateKeyDer;
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let config = Arc::new(config);
        counting_server(move |stream| {
            if let Ok(session) = rustls::ServerConnection::new(Arc::clone(&config)) {
                answer_each(rustls::StreamOwned::new(session, stream), |n| n);
            }
        })
    }

    #[test]
    fn https_needs_the_ca_trusted_and_then_keeps_its_connection() {
        let (ca, cert, key) = authority();
        let (addr, accepted) = tls_server(&cert, &key);
        let server = format!("https://{addr}");
        // Not trusted: the request is not sent, and the message says how to trust the CA.
        let h = Http::new(&target(&server, None), SECOND).unwrap();
        let e = h.call("GET", "/healthz", None, SECOND).unwrap_err();
        assert!(matches!(e, ClientError::Unreachable { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("TLS handshake failed") && text.contains("--cacert"), "{text}");
        // Trusted through --cacert: three calls over one TLS connection.
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &ca).unwrap();
        let before = accepted.load(Ordering::SeqCst);
        let h = Http::new(&target(&server, Some(&ca_file)), SECOND).unwrap();
        for i in 1..=3 {
            let r = h.call("POST", "/renew", Some("{}"), SECOND).unwrap();
            assert_eq!((r.status, r.json()["n"].as_u64()), (200, Some(i)));
        }
        assert_eq!(accepted.load(Ordering::SeqCst) - before, 1, "one TLS connection for the three calls");
    }

    #[test]
    fn a_ca_file_that_cannot_be_used_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let (missing, empty, key_only) = (dir.path().join("missing"), dir.path().join("empty"), dir.path().join("k"));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        std::fs::write(&key_only, authority().2).unwrap();
        for (file, says) in [(&missing, "No such file"), (&empty, "holds no certificate"), (&key_only, "holds no")] {
            let e = Http::new(&target("https://h", Some(file)), SECOND).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, ClientError::CaFile { .. }), "{text}");
            assert!(text.contains(&file.display().to_string()) && text.contains(says), "{text}");
        }
    }
}
