//! Validated names: lock names, data keys, owner labels, user ids and tickets.
//!
//! Every string that reaches the lease table from a client passes through one of these
//! constructors first, so the table itself never has to ask whether a name is well formed.
//! Names and labels up to 24 bytes are stored inline (no allocation of their own): the
//! table holds one of each per lease, and most are short.
//! Pure: no I/O and no randomness (a ticket is made from random bytes the caller passes in).

use std::fmt;

use compact_str::CompactString;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::CoreError;

/// Longest lock name or data key, in bytes.
pub const MAX_NAME_BYTES: usize = 200;
/// The name prefix of the locks that back waiting rooms (`room:<name>`, docs/api.md
/// "Waiting rooms").
pub const ROOM_LOCK_PREFIX: &str = "room:";
/// Longest owner label, in bytes.
pub const MAX_OWNER_BYTES: usize = 200;
/// Longest callback URL, in bytes.
pub const MAX_CALLBACK_BYTES: usize = 2048;
/// Raw size of a ticket: 128 random bits.
pub const TICKET_BYTES: usize = 16;
/// Length of a ticket's text form (URL-safe base64 without padding).
pub const TICKET_CHARS: usize = 22;

/// Deserialises a string and validates it with `parse`, without copying the text first
/// (the hot path of every IPC message).
fn parse_str<'de, D: Deserializer<'de>, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, CoreError>,
) -> Result<T, D::Error> {
    struct Text<T> {
        expecting: &'static str,
        parse: fn(&str) -> Result<T, CoreError>,
    }
    impl<T> serde::de::Visitor<'_> for Text<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
            (self.parse)(v).map_err(E::custom)
        }
    }
    d.deserialize_str(Text { expecting, parse })
}

/// Checks the shared rule for lock names and data keys: 1–200 bytes of printable ASCII, no `/`.
fn check_name(field: &'static str, text: &str) -> Result<(), CoreError> {
    if text.is_empty() || text.len() > MAX_NAME_BYTES {
        return Err(CoreError::InvalidName { field, reason: "must be 1 to 200 bytes long" });
    }
    if !text.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err(CoreError::InvalidName { field, reason: "must be printable ASCII without spaces or '/'" });
    }
    Ok(())
}

macro_rules! text_newtype {
    ($(#[$meta:meta])* $name:ident, $field:literal) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(CompactString);

        impl $name {
            /// Validates `text` and wraps it.
            pub fn parse(text: &str) -> Result<Self, CoreError> {
                check_name($field, text)?;
                Ok(Self(CompactString::new(text)))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                parse_str(d, concat!("a ", $field), Self::parse)
            }
        }
    };
}

text_newtype!(
    /// A lock name: 1–200 bytes of printable ASCII, no `/` (it is one path segment).
    LockName,
    "lock name"
);
text_newtype!(
    /// A key in a lock's data map; same rules as a lock name.
    DataKey,
    "data key"
);
text_newtype!(
    /// Who an acquire is for (`user` on acquire): one place per user per lock. Same rules
    /// as a lock name, so its size is bounded like every other label a ticket carries.
    UserId,
    "user"
);

/// A free-form label a client gives its lease (host, job id…): 0–200 bytes, no control characters.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Owner(CompactString);

impl Owner {
    /// Validates `text` and wraps it.
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        if text.len() > MAX_OWNER_BYTES {
            return Err(CoreError::InvalidName { field: "owner", reason: "must be at most 200 bytes long" });
        }
        if text.chars().any(char::is_control) {
            return Err(CoreError::InvalidName { field: "owner", reason: "must not contain control characters" });
        }
        Ok(Self(CompactString::new(text)))
    }

    /// The label as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl Serialize for Owner {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Owner {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "an owner label", Self::parse)
    }
}

/// A webhook URL given with an acquire. Only its shape is checked here (scheme and length);
/// which hosts may be called is the outbox's decision.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
pub struct CallbackUrl(Box<str>);

impl CallbackUrl {
    /// Validates `text` and wraps it.
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        let scheme_ok = text.starts_with("http://") || text.starts_with("https://");
        if !scheme_ok || text.len() > MAX_CALLBACK_BYTES || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(CoreError::InvalidName {
                field: "callback",
                reason: "must be an http:// or https:// URL of at most 2048 printable bytes",
            });
        }
        Ok(Self(text.into()))
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CallbackUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl<'de> Deserialize<'de> for CallbackUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a callback URL", Self::parse)
    }
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64url_value(c: u8) -> Option<u32> {
    match c {
        b'A'..=b'Z' => Some(u32::from(c - b'A')),
        b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
        b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// An unguessable id for one caller's place in one lock: 128 random bits, shown as 22
/// URL-safe characters. It names the waiter while queued and the lease once admitted.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ticket([u8; TICKET_BYTES]);

impl Ticket {
    /// A ticket from random bytes supplied by the caller (the shell reads them from the OS).
    pub const fn from_bytes(bytes: [u8; TICKET_BYTES]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; TICKET_BYTES] {
        &self.0
    }

    /// Parses the 22-character text form; anything else (other lengths, other alphabets,
    /// non-canonical trailing bits) is refused, so each ticket has exactly one spelling.
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        let bad = CoreError::InvalidTicket;
        let chars = text.as_bytes();
        if chars.len() != TICKET_CHARS {
            return Err(bad);
        }
        let mut out = [0u8; TICKET_BYTES];
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut at = 0usize;
        for &c in chars {
            acc = (acc << 6) | b64url_value(c).ok_or(CoreError::InvalidTicket)?;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                if at < TICKET_BYTES {
                    out[at] = (acc >> bits) as u8;
                    at += 1;
                }
                acc &= (1 << bits) - 1;
            }
        }
        // 22 chars carry 132 bits: the 4 bits left over must be zero.
        if acc != 0 {
            return Err(CoreError::InvalidTicket);
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; TICKET_CHARS];
        let mut acc: u32 = 0;
        let mut bits = 0u32;
        let mut at = 0usize;
        for &b in &self.0 {
            acc = (acc << 8) | u32::from(b);
            bits += 8;
            while bits >= 6 {
                bits -= 6;
                text[at] = B64URL[((acc >> bits) & 63) as usize];
                at += 1;
            }
            acc &= (1 << bits) - 1;
        }
        if bits > 0 {
            text[at] = B64URL[((acc << (6 - bits)) & 63) as usize];
        }
        // The alphabet is ASCII, so this cannot fail.
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ticket({self})")
    }
}

impl Serialize for Ticket {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ticket {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parse_str(d, "a ticket", Self::parse)
    }
}

/// Crockford base32: digits and letters without I, L, O and U.
pub const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// 128 bits as 26 Crockford base32 characters (the top two of 130 bits are zero).
pub fn base32_128(mut value: u128) -> String {
    let mut out = [b'0'; 26];
    for slot in out.iter_mut().rev() {
        *slot = CROCKFORD[(value & 31) as usize];
        value >>= 5;
    }
    out.iter().map(|&b| b as char).collect()
}

/// An id that sorts by creation time: a 48-bit millisecond time and 80 random bits, as 26
/// Crockford base32 characters (the Small Resource Server's resource ids, outbox ids).
pub fn time_ordered_id(now_ms: u64, random: [u8; 16]) -> String {
    let mut bits = [0u8; 16];
    bits[..6].copy_from_slice(&now_ms.to_be_bytes()[2..]);
    bits[6..].copy_from_slice(&random[..10]);
    base32_128(u128::from_be_bytes(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_name_with_slash_or_space_is_refused() {
        assert!(LockName::parse("a/b").is_err());
        assert!(LockName::parse("a b").is_err());
        assert!(LockName::parse("").is_err());
        assert!(LockName::parse(&"x".repeat(201)).is_err());
        assert!(LockName::parse(&"x".repeat(200)).is_ok());
        assert!(LockName::parse("printer:1.queue-A_b").is_ok());
    }

    #[test]
    fn lock_name_with_non_ascii_is_refused() {
        assert!(LockName::parse("café").is_err());
        assert!(LockName::parse("tab\there").is_err());
    }

    #[test]
    fn owner_allows_spaces_and_unicode_but_not_control_characters() {
        assert!(Owner::parse("cron on host-1 — nightly").is_ok());
        assert!(Owner::parse("").is_ok());
        assert!(Owner::parse("a\nb").is_err());
        assert!(Owner::parse(&"é".repeat(101)).is_err());
    }

    #[test]
    fn callback_needs_http_scheme() {
        assert!(CallbackUrl::parse("https://example.test/hook").is_ok());
        assert!(CallbackUrl::parse("ftp://example.test/").is_err());
        assert!(CallbackUrl::parse("http://exa mple").is_err());
    }

    #[test]
    fn ticket_text_round_trips_for_many_byte_patterns() {
        for seed in 0u8..=255 {
            let mut bytes = [0u8; TICKET_BYTES];
            for (i, b) in bytes.iter_mut().enumerate() {
                *b = seed.wrapping_mul(31).wrapping_add(i as u8 * 17);
            }
            let ticket = Ticket::from_bytes(bytes);
            let text = ticket.to_string();
            assert_eq!(text.len(), TICKET_CHARS);
            assert!(text.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
            assert_eq!(Ticket::parse(&text).unwrap(), ticket);
        }
    }

    #[test]
    fn ticket_with_wrong_length_alphabet_or_trailing_bits_is_refused() {
        let text = Ticket::from_bytes([0xAB; 16]).to_string();
        assert!(Ticket::parse(&text[..21]).is_err());
        assert!(Ticket::parse(&format!("{text}A")).is_err());
        assert!(Ticket::parse(&text.replace(|c: char| c.is_ascii_alphabetic(), "+")).is_err());
        // The last character carries 2 data bits; any of its 4 low bits set is non-canonical.
        let mut chars: Vec<u8> = "A".repeat(22).into_bytes();
        chars[21] = b'B';
        assert!(Ticket::parse(std::str::from_utf8(&chars).unwrap()).is_err());
        chars[21] = b'Q';
        assert!(Ticket::parse(std::str::from_utf8(&chars).unwrap()).is_ok());
    }
}
