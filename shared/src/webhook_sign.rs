//! Webhook signatures as the Standard Webhooks specification defines them
//! (<https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>):
//! secrets `whsec_<base64 key>`, headers `webhook-id`, `webhook-timestamp`
//! (Unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256>` of
//! `"{id}.{timestamp}.{body}"`. Receivers verify with any Standard Webhooks
//! (or Svix) library.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::secret::constant_time_eq;

/// Prefix of every webhook secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Header carrying the event id (stable across retries).
pub const H_ID: &str = "webhook-id";
/// Header carrying the signing time, Unix seconds.
pub const H_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated `v1,<base64>` signatures.
pub const H_SIGNATURE: &str = "webhook-signature";
/// Shortest key accepted in a given secret, in bytes (the spec asks for 24–64).
pub const MIN_KEY_BYTES: usize = 24;
/// Longest key accepted in a given secret, in bytes.
pub const MAX_KEY_BYTES: usize = 64;

/// Why a webhook could not be verified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The secret is not `whsec_<base64>`.
    #[error("malformed secret")]
    BadSecret,
    /// The timestamp is not an integer or is outside the tolerance.
    #[error("timestamp outside the tolerance")]
    Timestamp,
    /// No `v1` signature matched.
    #[error("no matching signature")]
    NoMatch,
}

/// Generates a secret of 32 random bytes: `whsec_<base64>`.
pub fn generate_secret() -> String {
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// Decodes the key of a `whsec_` secret.
pub fn decode_secret(secret: &str) -> Result<Vec<u8>, VerifyError> {
    let b64 = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or(VerifyError::BadSecret)?;
    STANDARD
        .decode(b64.as_bytes())
        .map_err(|_| VerifyError::BadSecret)
}

/// Checks a secret a user supplies: `whsec_` and 24–64 bytes of base64.
pub fn validate_secret(secret: &str) -> Result<(), String> {
    match decode_secret(secret) {
        Ok(k) if (MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&k.len()) => Ok(()),
        Ok(_) => Err(format!(
            "the key must be {MIN_KEY_BYTES}-{MAX_KEY_BYTES} bytes"
        )),
        Err(_) => Err("must be `whsec_` followed by base64".into()),
    }
}

fn mac(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let Ok(mut m) = Hmac::<Sha256>::new_from_slice(key) else {
        return Vec::new();
    };
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    m.finalize().into_bytes().to_vec()
}

/// The `webhook-signature` value for a message: `v1,<base64>`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String, VerifyError> {
    let key = decode_secret(secret)?;
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac(&key, id, timestamp, body))
    ))
}

/// Verifies a received message as a Standard Webhooks receiver does: the
/// timestamp within `tolerance_s` of `now`, and one `v1` signature of the
/// space-separated list matching, compared in constant time.
pub fn verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signatures: &str,
    body: &[u8],
    now: i64,
    tolerance_s: i64,
) -> Result<(), VerifyError> {
    let key = decode_secret(secret)?;
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::Timestamp)?;
    if (now - ts).abs() > tolerance_s {
        return Err(VerifyError::Timestamp);
    }
    let expected = mac(&key, id, ts, body);
    let matched = signatures
        .split(' ')
        .filter_map(|s| s.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|sig| constant_time_eq(&sig, &expected));
    if matched {
        Ok(())
    } else {
        Err(VerifyError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector published with the Standard Webhooks reference libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signing_reproduces_the_spec_test_vector() {
        assert_eq!(sign(SECRET, ID, TS, BODY).as_deref(), Ok(SIG));
    }

    #[test]
    fn verify_accepts_the_vector_among_other_signatures() {
        let sigs = format!("v1,bm9wZQ== {SIG}");
        assert_eq!(
            verify(SECRET, ID, &TS.to_string(), &sigs, BODY, TS + 10, 300),
            Ok(())
        );
    }

    #[test]
    fn verify_rejects_tampering_and_stale_timestamps() {
        let ts = TS.to_string();
        assert_eq!(
            verify(SECRET, ID, &ts, SIG, br#"{"test": 1}"#, TS, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(SECRET, "msg_other", &ts, SIG, BODY, TS, 300),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(SECRET, ID, &ts, SIG, BODY, TS + 301, 300),
            Err(VerifyError::Timestamp)
        );
        assert_eq!(
            verify("nope", ID, &ts, SIG, BODY, TS, 300),
            Err(VerifyError::BadSecret)
        );
    }

    #[test]
    fn generated_secrets_are_valid_and_distinct() {
        let a = generate_secret();
        assert!(validate_secret(&a).is_ok(), "{a}");
        assert_ne!(a, generate_secret());
        assert!(validate_secret("whsec_c2hvcnQ=").is_err());
        assert!(validate_secret("secret").is_err());
    }
}
