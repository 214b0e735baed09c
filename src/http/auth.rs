//! Who may call what: API keys (header `x-api-key`, or `Authorization: Bearer KEY`) with
//! roles and optional lock-name prefixes. Keys are compared in constant time, every
//! configured key every time, so the answer's timing says nothing about how much of a key
//! was right.
//!
//! With no key configured, only loopback clients are served, unless
//! `auth.insecure_anonymous = true`.
//!
//! A connection on a TLS listener may also carry a client certificate its CA verified
//! (`tls.client_ca_file`); `[[tls.clients]]` maps the certificate's subject common name to a
//! role and a prefix. Precedence: a request that presents an API key (while keys are
//! configured) is judged by its key alone; one without a key is granted its certificate's
//! role and prefix; a certificate no entry maps grants nothing (the request is judged as if
//! it had none).

use crate::config::{ApiKey, Role, TlsClient};

/// Why a request is refused. Its status is [`super::admit`]'s to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No key (`x-api-key` or `Authorization: Bearer`) while keys are configured (401).
    MissingKey,
    /// The key matches no configured key (401).
    UnknownKey,
    /// The key's role is below the route's (403; 401 on the Small Resource Server routes).
    Role {
        /// The role needed.
        needed: Role,
    },
    /// The lock name is outside the key's prefix (403).
    Prefix,
    /// No keys are configured and the client is not on loopback (403).
    NotLoopback,
}

impl Denied {
    /// A message for the client.
    pub fn message(&self) -> String {
        match self {
            Self::MissingKey => "this server needs an API key: x-api-key: KEY or Authorization: Bearer KEY".into(),
            Self::UnknownKey => "the API key is not valid".into(),
            Self::Role { needed } => format!("this API key lacks the {} role", role_name(*needed)),
            Self::Prefix => "this API key may not use this lock name".into(),
            Self::NotLoopback => "no API key is configured, so only loopback clients are served".into(),
        }
    }
}

/// A role's name as configured.
pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Read => "read",
        Role::Lock => "lock",
        Role::Write => "write",
    }
}

/// Compares two byte strings in time that depends only on their lengths' maximum.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The access rules in force.
#[derive(Debug, Clone)]
pub struct Access {
    keys: Vec<ApiKey>,
    insecure_anonymous: bool,
    /// Client certificates' subjects and their grants (`[[tls.clients]]`).
    clients: Vec<TlsClient>,
}

/// What a request presents to be let in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Credentials<'a> {
    /// Its API key, if any.
    pub api_key: Option<&'a str>,
    /// The subject common name of its connection's verified client certificate, if any.
    pub certificate_cn: Option<&'a str>,
    /// Whether its client is on a loopback address.
    pub peer_loopback: bool,
}

impl Access {
    /// Rules from the configured keys.
    pub fn new(keys: Vec<ApiKey>, insecure_anonymous: bool) -> Self {
        Self { keys, insecure_anonymous, clients: Vec::new() }
    }

    /// The same rules, and grants for client certificates.
    pub fn with_clients(mut self, clients: Vec<TlsClient>) -> Self {
        self.clients = clients;
        self
    }

    /// Decides whether a client may call a route needing `needed` (`None`: open) on lock
    /// `lock` (if the route names one). On success, returns what the caller may do: the
    /// name prefix it is limited to ("" for any name) and its role (a client served without
    /// a key has every role).
    pub fn check(
        &self,
        presented: Option<&str>,
        peer_loopback: bool,
        needed: Option<Role>,
        lock: Option<&str>,
    ) -> Result<Grant<'_>, Denied> {
        self.check_as(Credentials { api_key: presented, certificate_cn: None, peer_loopback }, needed, lock)
    }

    /// [`Access::check`] for a request that may also carry a client certificate (see the
    /// module's header for the precedence).
    pub fn check_as(
        &self,
        credentials: Credentials<'_>,
        needed: Option<Role>,
        lock: Option<&str>,
    ) -> Result<Grant<'_>, Denied> {
        const EVERYTHING: Grant<'static> = Grant { prefix: "", role: Role::Write };
        let Credentials { api_key: presented, certificate_cn, peer_loopback } = credentials;
        let Some(needed) = needed else { return Ok(EVERYTHING) };
        let key_decides = presented.is_some() && !self.keys.is_empty();
        if let Some(client) =
            certificate_cn.filter(|_| !key_decides).and_then(|cn| self.clients.iter().find(|c| c.subject_cn == cn))
        {
            return granted(client.role, &client.prefix, needed, lock);
        }
        if self.keys.is_empty() {
            return if peer_loopback || self.insecure_anonymous { Ok(EVERYTHING) } else { Err(Denied::NotLoopback) };
        }
        let presented = presented.ok_or(Denied::MissingKey)?;
        let mut found: Option<&ApiKey> = None;
        for key in &self.keys {
            // No early exit: every key is compared.
            if constant_time_eq(key.key.as_bytes(), presented.as_bytes()) {
                found = Some(key);
            }
        }
        let key = found.ok_or(Denied::UnknownKey)?;
        granted(key.role, &key.prefix, needed, lock)
    }
}

/// What a caller with `role` and `prefix` may do on a route needing `needed`, on `lock`.
fn granted<'a>(role: Role, prefix: &'a str, needed: Role, lock: Option<&str>) -> Result<Grant<'a>, Denied> {
    if role < needed {
        return Err(Denied::Role { needed });
    }
    if lock.is_some_and(|name| !name.starts_with(prefix)) {
        return Err(Denied::Prefix);
    }
    Ok(Grant { prefix, role })
}

/// The subject common name of a DER certificate (the last CN attribute of its subject, as
/// UTF-8, printable or IA5 text), `None` if it has none or cannot be read. The certificate
/// has been verified already; this only reads it, never panics on any bytes.
pub fn subject_cn(der: &[u8]) -> Option<String> {
    /// One DER element at the start of `input`: (tag, contents, rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
    let (SEQUENCE, cert, _) = element(der)? else { return None };
    let (SEQUENCE, tbs, _) = element(cert)? else { return None };
    let mut fields = tbs;
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    let (tag, _, rest) = element(fields)?;
    if tag == 0xa0 {
        fields = rest;
    }
    for _ in 0..4 {
        fields = element(fields)?.2;
    }
    let (SEQUENCE, mut subject, _) = element(fields)? else { return None };
    let mut cn = None;
    while !subject.is_empty() {
        let (SET, mut set, rest) = element(subject)? else { return None };
        subject = rest;
        while !set.is_empty() {
            let (SEQUENCE, attribute, rest) = element(set)? else { return None };
            set = rest;
            let (0x06, oid, value) = element(attribute)? else { return None };
            if oid == OID_CN {
                // UTF8String, PrintableString, IA5String.
                if let Some((0x0c | 0x13 | 0x16, text, _)) = element(value) {
                    cn = std::str::from_utf8(text).ok().map(str::to_string);
                }
            }
        }
    }
    cn
}

/// What an authorised caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant<'a> {
    /// The name prefix it is limited to ("" for any name).
    pub prefix: &'a str,
    /// Its role.
    pub role: Role,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str, role: Role, prefix: &str) -> ApiKey {
        ApiKey { key: k.into(), role, prefix: prefix.into() }
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
        // Lengths that differ by a multiple of 256 are still different.
        assert!(!constant_time_eq(&[0u8; 256], b""));
    }

    #[test]
    fn keys_roles_and_prefixes() {
        let access = Access::new(
            vec![
                key("reader-key", Role::Read, ""),
                key("locker-key", Role::Lock, "jobs:"),
                key("admin-key", Role::Write, ""),
            ],
            false,
        );
        let lock = Some(Role::Lock);
        assert_eq!(access.check(None, true, lock, Some("jobs:a")), Err(Denied::MissingKey));
        assert_eq!(access.check(Some("nope"), true, lock, Some("jobs:a")), Err(Denied::UnknownKey));
        assert_eq!(
            access.check(Some("reader-key"), true, lock, Some("jobs:a")),
            Err(Denied::Role { needed: Role::Lock })
        );
        assert_eq!(access.check(Some("locker-key"), true, lock, Some("other")), Err(Denied::Prefix));
        assert_eq!(
            access.check(Some("locker-key"), false, lock, Some("jobs:a")),
            Ok(Grant { prefix: "jobs:", role: Role::Lock })
        );
        assert_eq!(
            access.check(Some("admin-key"), false, lock, Some("other")),
            Ok(Grant { prefix: "", role: Role::Write })
        );
        assert_eq!(access.check(None, false, None, None).map(|g| g.prefix), Ok(""), "open routes need no key");
    }

    #[test]
    fn without_keys_only_loopback_unless_insecure() {
        let closed = Access::new(vec![], false);
        assert_eq!(closed.check(None, true, Some(Role::Write), None), Ok(Grant { prefix: "", role: Role::Write }));
        assert_eq!(closed.check(None, false, Some(Role::Read), None), Err(Denied::NotLoopback));
        let open = Access::new(vec![], true);
        assert_eq!(open.check(None, false, Some(Role::Write), None), Ok(Grant { prefix: "", role: Role::Write }));
    }

    fn client(cn: &str, role: Role, prefix: &str) -> TlsClient {
        TlsClient { subject_cn: cn.into(), role, prefix: prefix.into() }
    }

    fn with_cert<'a>(api_key: Option<&'a str>, cn: Option<&'a str>) -> Credentials<'a> {
        Credentials { api_key, certificate_cn: cn, peer_loopback: false }
    }

    #[test]
    fn a_mapped_certificate_grants_its_role_and_prefix_and_a_key_takes_precedence() {
        let access = Access::new(vec![key("writer-key", Role::Write, "")], false).with_clients(vec![client(
            "billing",
            Role::Lock,
            "billing/",
        )]);
        let lock = Some(Role::Lock);
        let grant = access.check_as(with_cert(None, Some("billing")), lock, Some("billing/a")).unwrap();
        assert_eq!(grant, Grant { prefix: "billing/", role: Role::Lock });
        assert_eq!(access.check_as(with_cert(None, Some("billing")), lock, Some("other")), Err(Denied::Prefix));
        assert_eq!(
            access.check_as(with_cert(None, Some("billing")), Some(Role::Write), None),
            Err(Denied::Role { needed: Role::Write })
        );
        // A key decides alone, either way.
        let grant = access.check_as(with_cert(Some("writer-key"), Some("billing")), lock, Some("other")).unwrap();
        assert_eq!(grant.role, Role::Write);
        assert_eq!(access.check_as(with_cert(Some("nope"), Some("billing")), lock, None), Err(Denied::UnknownKey));
        // An unmapped certificate grants nothing: judged as without one.
        assert_eq!(access.check_as(with_cert(None, Some("stranger")), lock, None), Err(Denied::MissingKey));
        let keyless = Access::new(Vec::new(), false).with_clients(vec![client("billing", Role::Read, "")]);
        assert_eq!(keyless.check_as(with_cert(None, Some("stranger")), lock, None), Err(Denied::NotLoopback));
        assert_eq!(
            keyless.check_as(with_cert(None, Some("billing")), lock, None),
            Err(Denied::Role { needed: Role::Lock })
        );
    }

    #[test]
    fn subject_cn_reads_a_real_certificate_and_never_panics_on_bytes() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["client.example".to_string()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Example");
        params.distinguished_name.push(rcgen::DnType::CommonName, "billing");
        let cert = params.self_signed(&key).unwrap();
        let der = cert.der().to_vec();
        assert_eq!(subject_cn(&der).as_deref(), Some("billing"));
        let mut params = rcgen::CertificateParams::new(vec!["x".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "no cn");
        assert_eq!(subject_cn(params.self_signed(&key).unwrap().der()), None);
        // Every truncation and a flipped byte at every place: an answer, never a panic.
        for n in 0..der.len() {
            let _ = subject_cn(&der[..n]);
            let mut bent = der.clone();
            bent[n] ^= 0xff;
            let _ = subject_cn(&bent);
        }
        assert_eq!(subject_cn(&[]), None);
        assert_eq!(subject_cn(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
    }
}
