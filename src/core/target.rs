//! Which URLs the outbox may call. Pure: the shells pass in what only they can know (this
//! host's interface addresses, and what a name resolves to).
//!
//! - **One parser.** [`parse_target`] parses with the same WHATWG URL parser the delivery
//!   client uses, and the outbox stores the URL as that parser serialises it. So the host
//!   that is checked is the host that is called, whatever the spelling: `0x7f000001`,
//!   `2130706433`, `0177.0.0.1`, `127.1`, `%2e` escapes, a trailing dot and `\` as a path
//!   separator all come out as the one address or name they mean.
//! - **Two checks.** At submission, the name or literal address; at connect time, with
//!   [`check_resolved`], every address a name resolves to (a name can point anywhere, and
//!   can change between the two checks). The courier connects only to addresses that pass.
//! - **Address classes.** Refused unless `allow_local`: loopback, unspecified, link-local,
//!   multicast, reserved and broadcast addresses, and every address of this host's
//!   interfaces. Refused unless `allow_private`: RFC 1918, shared address space
//!   (100.64.0.0/10), unique-local (fc00::/7) and site-local (fec0::/10) addresses. IPv6
//!   forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4) are judged by it too.
//! - **Host lists.** `allow_hosts` (when not empty: only these) and `deny_hosts` take names
//!   (`hooks.example.com`), suffix patterns (`*.example.com`), addresses and CIDR blocks
//!   (`192.0.2.0/24`). Names are compared without case and without a trailing dot; address
//!   rules apply to a literal address and to every resolved address.
//!
//! The rules are described for operators in the README, section "Security".

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

/// Longest URL accepted.
pub const MAX_URL_BYTES: usize = 2_048;

/// One entry of `allow_hosts` or `deny_hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRule {
    /// One name, lower case, without a trailing dot.
    Name(String),
    /// Names below this suffix (`*.example.com` is stored as `.example.com`).
    Suffix(String),
    /// An address block (a single address is a block of its full length).
    Net {
        /// The block's first address.
        addr: IpAddr,
        /// Leading bits that must match.
        prefix_len: u8,
    },
}

impl HostRule {
    /// Parses a configured entry.
    pub fn parse(text: &str) -> Result<HostRule, String> {
        let text = text.trim();
        if let Some((addr, len)) = text.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| format!("{text:?} is not an address block"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let prefix_len = len
                .parse::<u8>()
                .ok()
                .filter(|&n| n <= max)
                .ok_or_else(|| format!("{text:?} has a prefix length outside 0 to {max}"))?;
            return Ok(HostRule::Net { addr: canonical(addr), prefix_len });
        }
        if let Ok(addr) = text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            let addr = canonical(addr);
            return Ok(HostRule::Net { addr, prefix_len: if addr.is_ipv4() { 32 } else { 128 } });
        }
        let (suffix, name) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(format!("{text:?} is not a host name, *.suffix, address or address block"));
        }
        Ok(if suffix { HostRule::Suffix(format!(".{name}")) } else { HostRule::Name(name) })
    }

    fn matches_name(&self, name: &str) -> bool {
        match self {
            HostRule::Name(n) => n == name,
            HostRule::Suffix(s) => name.len() > s.len() && name.ends_with(s.as_str()),
            HostRule::Net { .. } => false,
        }
    }

    fn matches_addr(&self, ip: IpAddr) -> bool {
        let HostRule::Net { addr, prefix_len } = *self else { return false };
        let bits = u32::from(prefix_len);
        // An address that carries an IPv4 one matches rules of either form.
        [ip, canonical(ip)].into_iter().any(|ip| match (addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        })
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostRule::Name(n) => f.write_str(n),
            HostRule::Suffix(s) => write!(f, "*{s}"),
            HostRule::Net { addr, prefix_len } => write!(f, "{addr}/{prefix_len}"),
        }
    }
}

/// The outbox's rules for targets (`[outbox]` in the configuration, plus this host's
/// addresses, which the shell fills in).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TargetPolicy {
    /// When not empty, only hosts matching one of these.
    pub allow_hosts: Vec<HostRule>,
    /// Hosts and addresses never called.
    pub deny_hosts: Vec<HostRule>,
    /// Whether loopback, link-local, unspecified, multicast and reserved addresses, and
    /// this host's own addresses, may be called.
    pub allow_local: bool,
    /// Whether private (RFC 1918, 100.64/10, fc00::/7, fec0::/10) addresses may be called.
    pub allow_private: bool,
    /// Every address of this host's interfaces (refused like loopback).
    pub own_addresses: Vec<IpAddr>,
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (port 80 by default).
    Http,
    /// HTTP over TLS (port 443 by default).
    Https,
}

/// A URL the outbox may call, as the one parser understood it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    url: Url,
}

impl Target {
    /// The URL as the parser serialises it (what is stored and what is called).
    pub fn as_str(&self) -> &str {
        self.url.as_str()
    }

    /// The parsed URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The scheme.
    pub fn scheme(&self) -> Scheme {
        if self.url.scheme() == "https" {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }

    /// The host as called: a name (lower case, no trailing dot) or an address.
    pub fn host(&self) -> String {
        match self.url.host() {
            Some(Host::Domain(d)) => d.trim_end_matches('.').to_string(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            None => String::new(),
        }
    }

    /// The port (the scheme's default when none is written).
    pub fn port(&self) -> u16 {
        self.url.port_or_known_default().unwrap_or(0)
    }

    /// Whether the host is written as an address (no resolution needed).
    pub fn literal_address(&self) -> Option<IpAddr> {
        match self.url.host() {
            Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        }
    }

    /// The URL without its query: what a reader without the write role is shown.
    pub fn without_query(&self) -> String {
        let mut url = self.url.clone();
        url.set_query(None);
        url.to_string()
    }
}

/// Why a target is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// Longer than [`MAX_URL_BYTES`].
    TooLong,
    /// Not `http://` or `https://`.
    Scheme,
    /// Not a URL, no host, a bad port, or user information.
    Malformed(String),
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

/// An IPv6 address that carries an IPv4 one is judged as that IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The IPv4 address inside an IPv4-mapped (`::ffff:0:0/96`), IPv4-compatible (`::/96`,
/// but not `::` or `::1`), NAT64 (`64:ff9b::/96`) or 6to4 (`2002::/16`) address.
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, _, _] if u128::from(v6) > 1 => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

/// The class of an address: `Some((local, why))` for a refused class (`local`: lifted by
/// `allow_local`, else by `allow_private`), `None` for an ordinary public address.
fn refused_class(ip: IpAddr) -> Option<(bool, &'static str)> {
    const LOCAL: bool = true;
    const PRIVATE: bool = false;
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() {
                Some((LOCAL, "a loopback address"))
            } else if a == 0 {
                Some((LOCAL, "not a host address"))
            } else if v4.is_link_local() {
                Some((LOCAL, "a link-local address"))
            } else if v4.is_multicast() {
                Some((LOCAL, "a multicast address"))
            } else if a >= 240 {
                Some((LOCAL, "a reserved or broadcast address"))
            } else if a == 10 || (a == 172 && (16..32).contains(&b)) || (a == 192 && b == 168) {
                Some((PRIVATE, "a private address"))
            } else if a == 100 && (64..128).contains(&b) {
                Some((PRIVATE, "a shared (carrier-grade NAT) address"))
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some((LOCAL, "a loopback address"))
            } else if v6.is_unspecified() {
                Some((LOCAL, "not a host address"))
            } else if first & 0xffc0 == 0xfe80 {
                Some((LOCAL, "a link-local address"))
            } else if v6.is_multicast() {
                Some((LOCAL, "a multicast address"))
            } else if first & 0xfe00 == 0xfc00 {
                Some((PRIVATE, "a unique-local address"))
            } else if first & 0xffc0 == 0xfec0 {
                Some((PRIVATE, "a site-local address"))
            } else {
                None
            }
        }
    }
}

fn denied(host: impl fmt::Display, why: &'static str) -> TargetError {
    TargetError::Denied { host: host.to_string(), why }
}

/// Checks one address against the classes, this host's addresses and the address rules of
/// `deny_hosts`. At connect time this runs on every resolved address; for a literal address
/// [`parse_target`] runs it (and `allow_hosts`' address rules) itself.
pub fn check_resolved(ip: IpAddr, policy: &TargetPolicy) -> Result<(), TargetError> {
    if let Some((local, why)) = refused_class(ip) {
        let allowed = if local { policy.allow_local } else { policy.allow_private };
        if !allowed {
            return Err(denied(ip, why));
        }
    }
    if !policy.allow_local && policy.own_addresses.iter().any(|&own| canonical(own) == canonical(ip)) {
        return Err(denied(ip, "an address of this host"));
    }
    if policy.deny_hosts.iter().any(|r| r.matches_addr(ip)) {
        return Err(denied(ip, "it is in outbox.deny_hosts"));
    }
    Ok(())
}

fn check_name(name: &str, policy: &TargetPolicy) -> Result<(), TargetError> {
    if !policy.allow_local && (name == "localhost" || name.ends_with(".localhost")) {
        return Err(denied(name, "a loopback name"));
    }
    if policy.deny_hosts.iter().any(|r| r.matches_name(name)) {
        return Err(denied(name, "it is in outbox.deny_hosts"));
    }
    if !policy.allow_hosts.is_empty() && !policy.allow_hosts.iter().any(|r| r.matches_name(name)) {
        return Err(denied(name, "it is not in outbox.allow_hosts"));
    }
    Ok(())
}

/// Parses `text` with the delivery client's parser and checks it against `policy`.
pub fn parse_target(text: &str, policy: &TargetPolicy) -> Result<Target, TargetError> {
    if text.len() > MAX_URL_BYTES {
        return Err(TargetError::TooLong);
    }
    if text.bytes().any(|b| b.is_ascii_control() || b == b' ' || !b.is_ascii()) {
        return Err(TargetError::Malformed("it holds spaces, control or non-ASCII characters".into()));
    }
    let scheme = text.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
    if !matches!(scheme.as_deref(), Some("http" | "https")) {
        return Err(TargetError::Scheme);
    }
    let mut url = Url::parse(text).map_err(|e| TargetError::Malformed(e.to_string()))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(TargetError::Malformed("user information is not allowed".into()));
    }
    if url.port() == Some(0) {
        return Err(TargetError::Malformed("port 0".into()));
    }
    url.set_fragment(None);
    match url.host() {
        None => return Err(TargetError::Malformed("no host".into())),
        Some(Host::Domain(d)) => {
            let name = d.trim_end_matches('.');
            if name.is_empty() {
                return Err(TargetError::Malformed("no host".into()));
            }
            check_name(name, policy)?;
        }
        Some(Host::Ipv4(ip)) => check_literal(IpAddr::V4(ip), policy)?,
        Some(Host::Ipv6(ip)) => check_literal(IpAddr::V6(ip), policy)?,
    }
    Ok(Target { url })
}

fn check_literal(ip: IpAddr, policy: &TargetPolicy) -> Result<(), TargetError> {
    check_resolved(ip, policy)?;
    if !policy.allow_hosts.is_empty() && !policy.allow_hosts.iter().any(|r| r.matches_addr(ip)) {
        return Err(denied(canonical(ip), "it is not in outbox.allow_hosts"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
