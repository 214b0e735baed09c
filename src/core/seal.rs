//! Sealed tokens: small JSON payloads signed with HMAC-SHA256 so that a browser can carry
//! them and hand them back, and the server can tell they are its own, unchanged. Waiting
//! rooms' admission and place cookies and the ticket tokens of browser access are sealed
//! tokens (docs/api.md "Waiting rooms" and "Browser access"). Pure: the secret and the
//! payload come in, a string goes out; nothing here reads a clock.
//!
//! A token is `<payload>.<tag>`: the payload's compact JSON in unpadded base64url, then the
//! first [`TAG_BYTES`] bytes of `HMAC-SHA256(secret, "leasehold-seal-v1" 0 purpose 0
//! payload)` in unpadded base64url. The purpose (`room-session`, `room-place`,
//! `ticket`) is signed but not carried: a token made for one purpose never opens as
//! another, even under the same secret. Tags are compared in constant time. Sealing does
//! not hide the payload (anyone can decode it); it only vouches for it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::Sha256;

use super::CoreError;

/// Bytes of the HMAC kept in a token: 128 bits, as many as a ticket has.
pub const TAG_BYTES: usize = 16;
/// Longest token [`open`] reads; longer input is refused before it is decoded.
pub const MAX_SEALED_BYTES: usize = 1024;
/// Fewest bytes a sealing secret may have (checked where secrets are configured).
pub const MIN_SECRET_BYTES: usize = 32;

/// Domain separation: every MAC this module makes starts with it.
const DOMAIN: &[u8] = b"leasehold-seal-v1";

fn tag(secret: &[u8], purpose: &str, payload_b64: &str) -> [u8; TAG_BYTES] {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(DOMAIN);
    mac.update(&[0]);
    mac.update(purpose.as_bytes());
    mac.update(&[0]);
    mac.update(payload_b64.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_BYTES];
    out.copy_from_slice(&full[..TAG_BYTES]);
    out
}

/// Seals `payload` for `purpose` under `secret`.
pub fn seal<T: Serialize>(secret: &[u8], purpose: &str, payload: &T) -> String {
    // Serialising our own plain structs cannot fail; an empty object is the fallback.
    let json = serde_json::to_vec(payload).unwrap_or_else(|_| b"{}".to_vec());
    let body = URL_SAFE_NO_PAD.encode(json);
    let tag = URL_SAFE_NO_PAD.encode(tag(secret, purpose, &body));
    let mut out = String::with_capacity(body.len() + 1 + tag.len());
    out.push_str(&body);
    out.push('.');
    out.push_str(&tag);
    out
}

/// Opens a token sealed for `purpose` under `secret`: its payload, or why not
/// ([`CoreError::Unsealed`]: too long, malformed, a tag that does not match, or a payload
/// that is not the expected shape).
pub fn open<T: DeserializeOwned>(secret: &[u8], purpose: &str, token: &str) -> Result<T, CoreError> {
    if token.len() > MAX_SEALED_BYTES {
        return Err(CoreError::Unsealed { reason: "is too long" });
    }
    let (body, given) = token.split_once('.').ok_or(CoreError::Unsealed { reason: "is malformed" })?;
    let given = URL_SAFE_NO_PAD.decode(given).map_err(|_| CoreError::Unsealed { reason: "is malformed" })?;
    let expected = tag(secret, purpose, body);
    if !constant_time_eq(&given, &expected) {
        return Err(CoreError::Unsealed { reason: "has a signature that does not match" });
    }
    let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| CoreError::Unsealed { reason: "is malformed" })?;
    serde_json::from_slice(&json).map_err(|_| CoreError::Unsealed { reason: "has a payload of the wrong shape" })
}

/// Compares two byte strings in time that depends only on the longer one's length.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Place {
        room: String,
        ticket: String,
        fence: u64,
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn place() -> Place {
        Place { room: "shop".into(), ticket: "OxQBMBBSJEW-l0JQYvsRQw".into(), fence: 7 }
    }

    #[test]
    fn a_sealed_payload_opens_as_itself_under_the_same_secret_and_purpose() {
        let token = seal(SECRET, "room-session", &place());
        assert!(token.len() <= MAX_SEALED_BYTES);
        // A cookie value and a URL query value as it stands: base64url and one dot.
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'));
        assert_eq!(open::<Place>(SECRET, "room-session", &token).unwrap(), place());
    }

    #[test]
    fn another_secret_or_purpose_does_not_open_it() {
        let token = seal(SECRET, "room-session", &place());
        let other_secret = b"0123456789abcdef0123456789abcdeF";
        assert!(matches!(open::<Place>(other_secret, "room-session", &token), Err(CoreError::Unsealed { .. })));
        assert!(matches!(open::<Place>(SECRET, "room-place", &token), Err(CoreError::Unsealed { .. })));
    }

    #[test]
    fn a_changed_payload_or_tag_does_not_open() {
        let token = seal(SECRET, "ticket", &place());
        let (body, tag) = token.split_once('.').unwrap();
        // Another payload under the old tag: a forged fence.
        let forged = URL_SAFE_NO_PAD.encode(br#"{"room":"shop","ticket":"OxQBMBBSJEW-l0JQYvsRQw","fence":8}"#);
        assert!(open::<Place>(SECRET, "ticket", &format!("{forged}.{tag}")).is_err());
        // One tag character changed, a shortened tag, no tag.
        let mut bad = tag.to_string().into_bytes();
        bad[0] = if bad[0] == b'A' { b'B' } else { b'A' };
        let bad = String::from_utf8(bad).unwrap();
        assert!(open::<Place>(SECRET, "ticket", &format!("{body}.{bad}")).is_err());
        assert!(open::<Place>(SECRET, "ticket", &format!("{body}.{}", &tag[..tag.len() - 2])).is_err());
        assert!(open::<Place>(SECRET, "ticket", body).is_err());
        assert!(open::<Place>(SECRET, "ticket", "").is_err());
        assert!(open::<Place>(SECRET, "ticket", "..").is_err());
    }

    #[test]
    fn a_payload_of_another_shape_is_refused_even_when_signed() {
        let token = seal(SECRET, "ticket", &serde_json::json!({"room": "shop"}));
        let err = open::<Place>(SECRET, "ticket", &token).unwrap_err();
        assert_eq!(err.to_string(), "the token has a payload of the wrong shape");
    }

    #[test]
    fn an_overlong_token_is_refused_before_decoding() {
        let long = "A".repeat(MAX_SEALED_BYTES + 1);
        assert_eq!(open::<Place>(SECRET, "ticket", &long).unwrap_err().to_string(), "the token is too long");
    }
}
