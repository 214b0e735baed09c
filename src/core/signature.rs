//! The signature an outbox delivery carries when a secret is configured, so its receiver can
//! tell it came from this server and was not changed or replayed later: HMAC-SHA256 over
//! `<timestamp>.<body>`, sent as `X-Leasehold-Signature: sha256=<hex>` beside
//! `X-Leasehold-Timestamp: <unix seconds>`. Pure.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header with the signature.
pub const SIGNATURE_HEADER: &str = "X-Leasehold-Signature";
/// The header with the time the signature was made (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "X-Leasehold-Timestamp";

/// `sha256=` and the hex HMAC-SHA256 of `<timestamp_s>.<body>` under `secret`.
pub fn sign(secret: &[u8], timestamp_s: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        // Split as timestamp-less data cannot be expressed here, so check the construction
        // against the same HMAC computed directly.
        let direct = {
            let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
            mac.update(b"1700000000.what do ya want for nothing?");
            mac.finalize().into_bytes()
        };
        let expected: String = direct.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(sign(b"Jefe", 1_700_000_000, b"what do ya want for nothing?"), format!("sha256={expected}"));
        // The RFC's own vector, to pin the HMAC itself.
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        let rfc: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(rfc, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn a_changed_body_time_or_secret_changes_the_signature() {
        let base = sign(b"secret", 10, b"{}");
        assert_ne!(base, sign(b"secret", 11, b"{}"));
        assert_ne!(base, sign(b"secret", 10, b"{ }"));
        assert_ne!(base, sign(b"secreT", 10, b"{}"));
        assert_eq!(base.len(), 7 + 64);
    }
}
