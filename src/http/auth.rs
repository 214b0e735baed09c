//! Who may call what: API keys (header `x-api-key`, or `Authorization: Bearer KEY`) with
//! roles and optional lock-name prefixes. Keys are compared in constant time, every
//! configured key every time, so the answer's timing says nothing about how much of a key
//! was right.
//!
//! With no key configured, only loopback clients are served, unless
//! `auth.insecure_anonymous = true`.

use crate::config::{ApiKey, Role};

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
}

impl Access {
    /// Rules from the configured keys.
    pub fn new(keys: Vec<ApiKey>, insecure_anonymous: bool) -> Self {
        Self { keys, insecure_anonymous }
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
        const EVERYTHING: Grant<'static> = Grant { prefix: "", role: Role::Write };
        let Some(needed) = needed else { return Ok(EVERYTHING) };
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
        if key.role < needed {
            return Err(Denied::Role { needed });
        }
        if let Some(name) = lock {
            if !name.starts_with(&key.prefix) {
                return Err(Denied::Prefix);
            }
        }
        Ok(Grant { prefix: &key.prefix, role: key.role })
    }
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
}
