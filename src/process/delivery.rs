//! One outbox delivery over HTTP or HTTPS: the courier's only network code. Blocking, with a
//! connect timeout and a total timeout; redirects are not followed; each attempt opens its
//! own connection and carries `Idempotency-Key: <entry id>` and, with a secret, a signature
//! over its timestamp and body.
//!
//! The URL is parsed again here by [`parse_target`] (the same parser, the same rules, as
//! at submission: a reload may have changed them), handed to the client already parsed, and
//! every address its host resolves to is checked with [`check_resolved`] before connecting:
//! the client connects only to addresses that pass, so no name can lead to this machine or
//! a refused network.
//!
//! What a target answers is not echoed: the error kept for the dead-letter list is the
//! status code and a short, sanitised reason phrase, never the body.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::core::backoff::{retry_after_ms, Outcome};
use crate::core::outbox::Delivery;
use crate::core::signature::{sign, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::core::target::{check_resolved, parse_target, TargetPolicy};

/// Longest reason phrase kept in an error.
const MAX_REASON_BYTES: usize = 40;

/// How an attempt went, for the keeper.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The outcome.
    pub outcome: Outcome,
    /// The target's `Retry-After`, in ms.
    pub retry_after_ms: Option<u64>,
    /// What went wrong, for the dead-letter list.
    pub error: Option<String>,
    /// How long the attempt took.
    pub took: Duration,
}

/// Makes deliveries; one per courier, shared by its threads.
pub struct Deliverer {
    agent: ureq::Agent,
    policy: TargetPolicy,
    secret: Option<Vec<u8>>,
}

impl Deliverer {
    /// A deliverer for `policy`, with the given timeouts and optional signing secret.
    pub fn new(policy: TargetPolicy, connect_timeout: Duration, timeout: Duration, secret: Option<&str>) -> Self {
        let resolver_policy = policy.clone();
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(connect_timeout)
            .timeout(timeout)
            .redirects(0)
            // A fresh connection per attempt: a pooled one the target closed meanwhile would
            // fail a POST that was never sent (and cost an attempt).
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .user_agent(concat!("leasehold/", env!("CARGO_PKG_VERSION")))
            .resolver(move |netloc: &str| resolve(netloc, &resolver_policy))
            .build();
        Self { agent, policy, secret: secret.map(|s| s.as_bytes().to_vec()) }
    }

    /// Makes one attempt at `delivery`; `now_s` is the signature's timestamp.
    pub fn deliver(&self, delivery: &Delivery, now_s: u64) -> Attempt {
        let started = Instant::now();
        let call = &delivery.call;
        let target = match parse_target(&call.url, &self.policy) {
            Ok(target) => target,
            Err(e) => {
                let error = Some(e.to_string());
                return Attempt { outcome: Outcome::Denied, retry_after_ms: None, error, took: started.elapsed() };
            }
        };
        let mut request = self.agent.request_url(&call.method, target.url());
        for (name, value) in &call.headers {
            request = request.set(name, value);
        }
        request = request.set("Idempotency-Key", &delivery.id);
        if let Some(secret) = &self.secret {
            request = request
                .set(TIMESTAMP_HEADER, &now_s.to_string())
                .set(SIGNATURE_HEADER, &sign(secret, now_s, call.body.as_bytes()));
        }
        let result = if call.body.is_empty() { request.call() } else { request.send_string(&call.body) };
        let (outcome, retry_after_ms, error) = match result {
            // Redirects are not followed, so a 3xx comes back as a response.
            Ok(response) => {
                let status = response.status();
                let error = (!(200..300).contains(&status)).then(|| status_error(status, response.status_text()));
                (Outcome::Status(status), None, error)
            }
            Err(ureq::Error::Status(status, response)) => {
                let retry_after = response.header("Retry-After").and_then(retry_after_ms);
                (Outcome::Status(status), retry_after, Some(status_error(status, response.status_text())))
            }
            Err(ureq::Error::Transport(transport)) => {
                let cause = std::error::Error::source(&transport).and_then(|s| s.downcast_ref::<io::Error>());
                let denied = cause.is_some_and(|e| e.kind() == io::ErrorKind::PermissionDenied);
                let timed_out =
                    cause.is_some_and(|e| matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock));
                if denied {
                    // Our own resolver's words: which rule refused, never what lies behind it.
                    let why = cause.map_or_else(String::new, ToString::to_string);
                    (Outcome::Denied, None, Some(why))
                } else if timed_out {
                    (Outcome::Timeout, None, Some("timed out".to_string()))
                } else {
                    // The kind alone ("Network Error", "Dns Failed", …): a fixed text.
                    (Outcome::ConnectionFailed, None, Some(format!("connection failed: {}", transport.kind())))
                }
            }
        };
        Attempt { outcome, retry_after_ms, error, took: started.elapsed() }
    }
}

/// `policy` with this host's interface addresses filled in (they are refused as targets
/// like loopback); without them if they cannot be read, with a warning, since the loopback
/// and private ranges are refused by class all the same.
pub fn with_own_addresses(mut policy: TargetPolicy) -> TargetPolicy {
    match crate::sys::interfaces::own_addresses() {
        Ok(addresses) => policy.own_addresses = addresses,
        Err(e) => log::warn!("cannot read this host's interface addresses for the outbox target rules: {e}"),
    }
    policy
}

/// `HTTP <status> <reason>`, with the reason cut short and reduced to printable ASCII.
fn status_error(status: u16, reason: &str) -> String {
    let mut clean: String =
        reason.chars().map(|c| if c.is_ascii_graphic() { c } else { ' ' }).take(MAX_REASON_BYTES).collect();
    clean = clean.split_whitespace().collect::<Vec<_>>().join(" ");
    if clean.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status} {clean}")
    }
}

/// Resolves `host:port`, keeping only addresses the policy allows.
fn resolve(netloc: &str, policy: &TargetPolicy) -> io::Result<Vec<SocketAddr>> {
    let all: Vec<SocketAddr> = netloc.to_socket_addrs()?.collect();
    let allowed: Vec<SocketAddr> = all.iter().copied().filter(|a| check_resolved(a.ip(), policy).is_ok()).collect();
    if allowed.is_empty() && !all.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the host resolves only to addresses the outbox may not call",
        ));
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;
    use crate::core::outbox::Call;
    use crate::core::target::HostRule;

    /// A one-connection-per-answer HTTP sink on loopback: answers each request with the next
    /// scripted reply and reports what it received.
    fn sink(replies: Vec<&'static str>) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for reply in replies {
                let (mut conn, _) = listener.accept().unwrap();
                let mut got = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the head, then the body by its length.
                loop {
                    let n = conn.read(&mut chunk).unwrap();
                    got.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&got).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.parse().unwrap())
                            })
                            .unwrap_or(0);
                        if got.len() >= end + 4 + len || n == 0 {
                            break;
                        }
                    }
                }
                tx.send(String::from_utf8_lossy(&got).to_string()).unwrap();
                if !reply.is_empty() {
                    conn.write_all(reply.as_bytes()).unwrap();
                }
                // An empty reply: hold the connection open until the client gives up.
                if reply.is_empty() {
                    let _ = conn.read(&mut chunk);
                }
            }
        });
        (format!("http://{addr}"), rx)
    }

    fn local() -> TargetPolicy {
        TargetPolicy { allow_local: true, ..TargetPolicy::default() }
    }

    fn delivery(url: &str) -> Delivery {
        Delivery {
            id: "01JD0000000000000000000000".into(),
            call: Call {
                method: "POST".into(),
                url: url.into(),
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: r#"{"event":"x"}"#.into(),
            },
            attempt: 1,
        }
    }

    #[test]
    fn a_delivery_carries_its_idempotency_key_and_signature() {
        let (url, got) = sink(vec!["HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"]);
        let d = Deliverer::new(local(), Duration::from_secs(2), Duration::from_secs(5), Some("s3cret"));
        let attempt = d.deliver(&delivery(&format!("{url}/hook?x=1")), 1_700_000_000);
        assert_eq!((attempt.outcome, attempt.error), (Outcome::Status(204), None));
        let request = got.recv().unwrap();
        let lower = request.to_ascii_lowercase();
        assert!(request.starts_with("POST /hook?x=1 HTTP/1.1\r\n"), "{request}");
        assert!(lower.contains("idempotency-key: 01jd0000000000000000000000\r\n"), "{request}");
        assert!(lower.contains("x-leasehold-timestamp: 1700000000\r\n"), "{request}");
        let expected = sign(b"s3cret", 1_700_000_000, br#"{"event":"x"}"#);
        assert!(lower.contains(&format!("x-leasehold-signature: {expected}\r\n")), "{request}");
        assert!(request.ends_with(r#"{"event":"x"}"#), "{request}");
    }

    #[test]
    fn failures_become_outcomes_with_their_retry_after_and_text() {
        let (url, _got) = sink(vec![
            "HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 9\r\n\r\ntoo  busy",
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            "HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n",
            "",
        ]);
        let d = Deliverer::new(local(), Duration::from_secs(2), Duration::from_millis(500), None);
        let a = d.deliver(&delivery(&url), 0);
        assert_eq!(
            (a.outcome, a.retry_after_ms, a.error.as_deref()),
            (Outcome::Status(503), Some(7_000), Some("HTTP 503 Busy")),
            "the status and its reason, never the body"
        );
        assert_eq!(d.deliver(&delivery(&url), 0).outcome, Outcome::Status(404));
        assert_eq!(d.deliver(&delivery(&url), 0).outcome, Outcome::Status(302), "redirects are not followed");
        let a = d.deliver(&delivery(&url), 0);
        assert_eq!(a.outcome, Outcome::Timeout, "{a:?}");
        // Nothing listens there any more.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert_eq!(d.deliver(&delivery(&format!("http://{closed}/")), 0).outcome, Outcome::ConnectionFailed);
    }

    #[test]
    fn a_name_that_resolves_to_this_machine_is_denied_without_connecting() {
        let (url, got) = sink(vec!["HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]);
        let port = url.rsplit(':').next().unwrap();
        let d = Deliverer::new(TargetPolicy::default(), Duration::from_secs(2), Duration::from_secs(2), None);
        let a = d.deliver(&delivery(&format!("http://localhost:{port}/")), 0);
        assert_eq!(a.outcome, Outcome::Denied, "{a:?}");
        assert!(a.error.unwrap().contains("a loopback name"));
        assert!(got.try_recv().is_err(), "the sink was never called");
    }

    #[test]
    fn r12_deny_hosts_holds_for_resolved_addresses_and_every_spelling() {
        let (url, got) = sink(vec!["HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"]);
        let port = url.rsplit(':').next().unwrap();
        let policy = TargetPolicy {
            allow_local: true,
            deny_hosts: vec![HostRule::parse("127.0.0.1").unwrap()],
            ..TargetPolicy::default()
        };
        let d = Deliverer::new(policy, Duration::from_secs(2), Duration::from_secs(2), None);
        for spelling in ["localhost", "0x7f000001", "2130706433", "127.1", "127.0.0.1."] {
            let a = d.deliver(&delivery(&format!("http://{spelling}:{port}/")), 0);
            assert_eq!(a.outcome, Outcome::Denied, "{spelling}: {a:?}");
        }
        // The name passed (allow_local); the address it resolves to was refused.
        let a = d.deliver(&delivery(&format!("http://localhost:{port}/")), 0);
        assert!(a.error.as_deref().is_some_and(|e| e.contains("may not call")), "{a:?}");
        assert!(got.try_recv().is_err(), "the sink was never called");
    }

    #[test]
    fn r12_a_target_body_is_not_echoed_and_reasons_are_sanitised() {
        let (url, _got) = sink(vec![
            "HTTP/1.1 500 \x1b[31mSecret\x01internal reason that goes on and on and on and on\r\nContent-Length: 14\r\n\r\ndb password=42",
        ]);
        let d = Deliverer::new(local(), Duration::from_secs(2), Duration::from_secs(5), None);
        let a = d.deliver(&delivery(&url), 0);
        let error = a.error.unwrap();
        assert!(!error.contains("password"), "{error}");
        assert!(error.starts_with("HTTP 500 "), "{error}");
        assert!(error.len() <= "HTTP 500 ".len() + MAX_REASON_BYTES, "{error}");
        assert!(error.bytes().all(|b| b.is_ascii_graphic() || b == b' '), "{error:?}");
    }
}
