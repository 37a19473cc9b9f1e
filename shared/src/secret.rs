//! API key secrets: generation, hashing, constant-time comparison.
//!
//! A secret is `rdev_` followed by the base62 form of 32 random bytes. Only its
//! SHA-256 is stored; the first 8 characters are kept as a display prefix.

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Start of every API key secret.
pub const KEY_PREFIX: &str = "rdev_";
/// Characters of the secret shown in listings.
pub const DISPLAY_PREFIX_LEN: usize = 8;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly generated API key secret and what is stored of it.
#[derive(Debug)]
pub struct GeneratedKey {
    /// The secret, shown to the user once.
    pub secret: String,
    /// The first characters, stored and shown in listings.
    pub prefix: String,
    /// SHA-256 of the secret, stored.
    pub hash: [u8; 32],
}

/// Generates a new API key secret from the operating system's CSPRNG.
pub fn generate_key() -> GeneratedKey {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{KEY_PREFIX}{}", base62(&bytes));
    let prefix = secret[..DISPLAY_PREFIX_LEN].to_owned();
    let hash = hash_key(&secret);
    GeneratedKey {
        secret,
        prefix,
        hash,
    }
}

/// SHA-256 of a secret, as stored in `api_keys.secret_hash`.
pub fn hash_key(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Compares two byte strings in time that depends only on their length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a presented token looks like an rdev key at all (cheap pre-check
/// so malformed tokens never reach the database).
pub fn looks_like_key(token: &str) -> bool {
    token.len() > KEY_PREFIX.len()
        && token.len() <= 64
        && token.starts_with(KEY_PREFIX)
        && token[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// Base62 of a big-endian number (the 32 bytes), most significant digit first.
fn base62(bytes: &[u8]) -> String {
    let mut digits: Vec<u8> = Vec::with_capacity(44);
    let mut num: Vec<u8> = bytes.to_vec();
    while num.iter().any(|&b| b != 0) {
        let mut rem: u32 = 0;
        for b in num.iter_mut() {
            let acc = (rem << 8) | u32::from(*b);
            *b = (acc / 62) as u8;
            rem = acc % 62;
        }
        digits.push(BASE62[rem as usize]);
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let k = generate_key();
        assert!(k.secret.starts_with("rdev_"));
        assert!(looks_like_key(&k.secret), "{}", k.secret);
        assert!(k.secret.len() >= 45, "{}", k.secret);
        assert_eq!(k.prefix, &k.secret[..8]);
        assert_eq!(k.hash, hash_key(&k.secret));
        assert_ne!(generate_key().secret, k.secret);
    }

    #[test]
    fn base62_encodes_numbers() {
        assert_eq!(base62(&[0, 61]), "z");
        assert_eq!(base62(&[0, 62]), "10");
        assert_eq!(base62(&[1, 0]), "48");
    }

    #[test]
    fn malformed_tokens_are_rejected_early() {
        assert!(!looks_like_key("rdev_"));
        assert!(!looks_like_key("Bearer x"));
        assert!(!looks_like_key("rdev_abc-def"));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
