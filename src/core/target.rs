//! Which URLs the outbox may call. Pure: [`parse_target`] checks a URL's text (scheme, host,
//! port, the host lists, a literal IP address); the courier checks again, with
//! [`check_address`], every address a host name resolves to when it connects, since a name
//! can point anywhere (even at this machine) and can change between the two checks.
//!
//! By default loopback, link-local, unspecified and multicast addresses are refused, so the
//! server cannot be used to reach services bound to this machine or cloud metadata
//! endpoints. `allow_hosts` (when not empty) names the only hosts allowed; `deny_hosts` names
//! hosts refused; both take exact names or `*.suffix` patterns.

use std::fmt;
use std::net::IpAddr;

/// Longest URL accepted.
pub const MAX_URL_BYTES: usize = 2_048;

/// The outbox's rules for targets (`[outbox]` in the configuration).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetPolicy {
    /// When not empty, only these hosts (exact, or `*.suffix`).
    pub allow_hosts: Vec<String>,
    /// Hosts never called (exact, or `*.suffix`).
    pub deny_hosts: Vec<String>,
    /// Whether loopback, link-local, unspecified and multicast addresses may be called.
    pub allow_local: bool,
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (port 80 by default).
    Http,
    /// HTTP over TLS (port 443 by default).
    Https,
}

/// A URL the outbox may call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUrl {
    /// Scheme.
    pub scheme: Scheme,
    /// Host name or IP address (without brackets), lower case.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query (at least `/`).
    pub path: String,
}

/// Why a target is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Longer than [`MAX_URL_BYTES`].
    TooLong,
    /// Not `http://` or `https://`.
    Scheme,
    /// No host, a bad port, user info, spaces or control characters.
    Malformed(&'static str),
    /// The host or its address is refused.
    Denied {
        /// The host.
        host: String,
        /// Why.
        why: &'static str,
    },
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong => write!(f, "the URL is longer than {MAX_URL_BYTES} bytes"),
            Self::Scheme => f.write_str("only http:// and https:// URLs can be called"),
            Self::Malformed(why) => write!(f, "the URL is malformed: {why}"),
            Self::Denied { host, why } => write!(f, "calls to {host} are not allowed: {why}"),
        }
    }
}

impl std::error::Error for TargetError {}

fn matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1 && host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Refuses addresses on this machine or its link unless the policy allows them.
pub fn check_address(ip: IpAddr, policy: &TargetPolicy) -> Result<(), TargetError> {
    if policy.allow_local {
        return Ok(());
    }
    let why = match ip {
        IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
        IpAddr::V4(v4) if v4.is_link_local() => Some("a link-local address"),
        IpAddr::V4(v4) if v4.is_unspecified() || v4.is_broadcast() => Some("not a host address"),
        IpAddr::V4(v4) if v4.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
        IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => Some("a link-local address"),
        IpAddr::V6(v6) if v6.is_unspecified() => Some("not a host address"),
        IpAddr::V6(v6) if v6.is_multicast() => Some("a multicast address"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => return check_address(IpAddr::V4(v4), policy),
            None => None,
        },
        IpAddr::V4(_) => None,
    };
    match why {
        Some(why) => Err(TargetError::Denied { host: ip.to_string(), why }),
        None => Ok(()),
    }
}

/// Parses `url` and checks it against `policy`.
pub fn parse_target(url: &str, policy: &TargetPolicy) -> Result<TargetUrl, TargetError> {
    if url.len() > MAX_URL_BYTES {
        return Err(TargetError::TooLong);
    }
    if url.bytes().any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii()) {
        return Err(TargetError::Malformed("it holds spaces, control or non-ASCII characters"));
    }
    let (scheme, rest) = match url.split_once("://") {
        Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Scheme::Http, rest),
        Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Scheme::Https, rest),
        _ => return Err(TargetError::Scheme),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let path = path.split('#').next().unwrap_or("");
    if authority.contains('@') {
        return Err(TargetError::Malformed("user information is not allowed"));
    }
    let default_port = if scheme == Scheme::Http { 80 } else { 443 };
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']').ok_or(TargetError::Malformed("an unclosed '['"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| TargetError::Malformed("a bad port"))?,
            None if after.is_empty() => default_port,
            None => return Err(TargetError::Malformed("text after the address")),
        };
        (host, port)
    } else {
        match authority.split_once(':') {
            Some((host, p)) => (host, p.parse().map_err(|_| TargetError::Malformed("a bad port"))?),
            None => (authority, default_port),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(TargetError::Malformed("no host, or port 0"));
    }
    let host = host.to_ascii_lowercase();
    if let Ok(ip) = host.parse::<IpAddr>() {
        check_address(ip, policy)?;
    } else if !policy.allow_local && (host == "localhost" || host.ends_with(".localhost")) {
        return Err(TargetError::Denied { host, why: "a loopback name" });
    }
    if policy.deny_hosts.iter().any(|p| matches(p, &host)) {
        return Err(TargetError::Denied { host, why: "it is in outbox.deny_hosts" });
    }
    if !policy.allow_hosts.is_empty() && !policy.allow_hosts.iter().any(|p| matches(p, &host)) {
        return Err(TargetError::Denied { host, why: "it is not in outbox.allow_hosts" });
    }
    let path = if path.is_empty() {
        "/".to_string()
    } else if path.starts_with('?') {
        format!("/{path}")
    } else {
        path.to_string()
    };
    Ok(TargetUrl { scheme, host, port, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> TargetPolicy {
        TargetPolicy::default()
    }

    #[test]
    fn good_urls_give_scheme_host_port_and_path() {
        let t = parse_target("https://Hooks.Example.com/a/b?x=1#frag", &open()).unwrap();
        assert_eq!(
            t,
            TargetUrl { scheme: Scheme::Https, host: "hooks.example.com".into(), port: 443, path: "/a/b?x=1".into() }
        );
        let t = parse_target("http://10.0.0.7:8080", &open()).unwrap();
        assert_eq!((t.port, t.path.as_str()), (8080, "/"));
        let t = parse_target("http://[2001:db8::1]:81?q", &open()).unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("2001:db8::1", 81, "/?q"));
    }

    #[test]
    fn other_schemes_and_malformed_urls_are_refused() {
        for (url, err) in [
            ("ftp://h/x", TargetError::Scheme),
            ("file:///etc/passwd", TargetError::Scheme),
            ("h/x", TargetError::Scheme),
        ] {
            assert_eq!(parse_target(url, &open()), Err(err), "{url}");
        }
        for url in [
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://u:p@h/",
            "http://h /",
            "http://[::1/",
            "http://h/\u{e9}",
        ] {
            assert!(matches!(parse_target(url, &open()), Err(TargetError::Malformed(_))), "{url}");
        }
        assert_eq!(
            parse_target(&format!("http://h/{}", "a".repeat(MAX_URL_BYTES)), &open()),
            Err(TargetError::TooLong)
        );
    }

    #[test]
    fn this_machine_and_its_link_are_refused_unless_allowed() {
        for url in [
            "http://127.0.0.1/",
            "http://127.8.9.10:8080/",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://[fe80::1]/",
            "http://0.0.0.0/",
            "http://[::ffff:127.0.0.1]/",
            "http://localhost:8080/",
            "http://api.localhost/",
            "http://224.0.0.1/",
        ] {
            assert!(matches!(parse_target(url, &open()), Err(TargetError::Denied { .. })), "{url}");
            let local = TargetPolicy { allow_local: true, ..open() };
            assert!(parse_target(url, &local).is_ok(), "{url} with allow_local");
        }
        assert!(check_address("192.168.1.5".parse().unwrap(), &open()).is_ok());
        assert!(check_address("2001:db8::5".parse().unwrap(), &open()).is_ok());
    }

    #[test]
    fn host_lists_take_exact_names_and_suffix_patterns() {
        let policy = TargetPolicy {
            allow_hosts: vec!["*.example.com".into(), "hooks.partner.net".into()],
            deny_hosts: vec!["admin.example.com".into()],
            allow_local: false,
        };
        assert!(parse_target("https://a.example.com/", &policy).is_ok());
        assert!(parse_target("https://x.y.example.com/", &policy).is_ok());
        assert!(parse_target("https://HOOKS.partner.net/", &policy).is_ok());
        for url in
            ["https://example.com/", "https://badexample.com/", "https://partner.net/", "https://admin.example.com/"]
        {
            assert!(matches!(parse_target(url, &policy), Err(TargetError::Denied { .. })), "{url}");
        }
    }
}
