//! HMAC-SHA256 signatures as OnlyFansAPI uses them for webhooks: header `Signature` = lowercase
//! hex of HMAC-SHA256 over the raw body with a shared secret.
//!
//! [`verify`] checks an incoming webhook (constant-time, via `hmac`'s `verify_slice`); [`sign`]
//! signs the authentication-attempt callbacks this service sends, so a chat tool verifies both
//! with the same code. Secrets are borrowed bytes here and never formatted.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Signature";

/// Lowercase hex HMAC-SHA256 of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; an empty string would
    // simply never verify.
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature` (hex, either case, optionally prefixed `sha256=`) is the HMAC-SHA256 of
/// `body` under `secret`. The comparison is constant-time; a malformed signature is `false`.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let sig = signature.trim();
    let sig = sig.strip_prefix("sha256=").unwrap_or(sig);
    let mut expected = [0u8; 32];
    if hex::decode_to_slice(sig, &mut expected).is_err() {
        return false;
    }
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_known_vector() {
        // RFC 4231 test case 2.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig));
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &sig.to_uppercase()));
        assert!(verify(b"Jefe", b"what do ya want for nothing?", &format!("sha256={sig}")));
    }

    #[test]
    fn refuses_tampered_bodies_wrong_secrets_and_garbage() {
        let body = br#"{"event":"accounts.session_expired","account_id":"acct_1"}"#;
        let sig = sign(b"secret", body);
        let mut tampered = body.to_vec();
        tampered[10] ^= 1;
        assert!(!verify(b"secret", &tampered, &sig));
        assert!(!verify(b"other", body, &sig));
        assert!(!verify(b"secret", body, "zz"));
        assert!(!verify(b"secret", body, ""));
        assert!(!verify(b"secret", body, &sig[..62]));
    }
}
