//! Encryption at rest of secrets kept in PostgreSQL (webhook signing
//! secrets, command `env` and `stdin`, project `env`): AES-256-GCM from the
//! RustCrypto `aes-gcm` crate, with a key ring.
//!
//! `RDEV_ENCRYPTION_KEYS` is `id:base64key,id:base64key,…` (32-byte keys).
//! The first key encrypts; every key decrypts, so keys rotate without
//! downtime: put the new key first on every process, then run
//! `rdev-api keys reencrypt`, then drop the old key.
//!
//! A sealed value is the text `enc:v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>`
//! with a random 96-bit nonce; the column's name is the associated data, so
//! a value cannot be moved to another column. A stored value without the
//! prefix is plaintext (written before encryption was configured) and is
//! read as is; `reencrypt` seals it.
//!
//! The ring is process-wide ([`install`] at start, before any query), like
//! the allocator or the tracing subscriber: every repository function that
//! reads or writes a sealed column uses it, whatever connection it is given.

use std::sync::{Arc, OnceLock};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;

use crate::config::Secret;

/// Start of every sealed value.
pub const PREFIX: &str = "enc:v1:";

/// Errors of sealing and opening.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// `RDEV_ENCRYPTION_KEYS` is malformed.
    #[error("RDEV_ENCRYPTION_KEYS: {0}")]
    Config(String),
    /// A sealed value names a key the ring does not have.
    #[error("value sealed with unknown key `{0}` (add it to RDEV_ENCRYPTION_KEYS)")]
    UnknownKey(String),
    /// A sealed value is malformed or was tampered with.
    #[error("sealed value does not decrypt (corrupt, or moved from another column)")]
    Corrupt,
}

/// The keys: the first encrypts, all decrypt. Empty: values are stored as
/// plaintext (only when explicitly allowed; see `RDEV_ALLOW_UNENCRYPTED`).
pub struct KeyRing {
    keys: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("KeyRing").field("ids", &ids).finish()
    }
}

impl KeyRing {
    /// No keys: plaintext.
    pub fn empty() -> Self {
        Self { keys: Vec::new() }
    }

    /// Parses `id:base64key,…`; ids are 1-32 of `[A-Za-z0-9_-]`, keys 32 bytes.
    pub fn parse(spec: &str) -> Result<Self, CryptoError> {
        let mut keys: Vec<(String, Aes256Gcm)> = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, b64) = entry
                .split_once(':')
                .ok_or_else(|| CryptoError::Config("expected id:base64key entries".into()))?;
            let id_ok = !id.is_empty()
                && id.len() <= 32
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !id_ok {
                return Err(CryptoError::Config(format!(
                    "key id `{id}` must be 1-32 of [A-Za-z0-9_-]"
                )));
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err(CryptoError::Config(format!("key id `{id}` is repeated")));
            }
            let raw = STANDARD
                .decode(b64.trim())
                .map_err(|_| CryptoError::Config(format!("key `{id}` is not base64")))?;
            let cipher = Aes256Gcm::new_from_slice(&raw).map_err(|_| {
                CryptoError::Config(format!("key `{id}` must be 32 bytes (base64 of 32 bytes)"))
            })?;
            keys.push((id.to_owned(), cipher));
        }
        Ok(Self { keys })
    }

    /// A new random key in the `RDEV_ENCRYPTION_KEYS` form, `id:base64`.
    pub fn generate_entry(id: &str) -> String {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        format!("{id}:{}", STANDARD.encode(key))
    }

    /// Whether no key is configured (values stay plaintext).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The id of the key that encrypts.
    pub fn current_id(&self) -> Option<&str> {
        self.keys.first().map(|(id, _)| id.as_str())
    }

    /// Seals `plain` for the column `field` under the first key (plaintext
    /// when the ring is empty).
    pub fn seal(&self, plain: &[u8], field: &str) -> Vec<u8> {
        let Some((id, cipher)) = self.keys.first() else {
            return plain.to_vec();
        };
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        // Encryption of an in-memory buffer cannot fail with AES-GCM.
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: field.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut blob = Vec::with_capacity(12 + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        format!("{PREFIX}{id}:{}", STANDARD.encode(blob)).into_bytes()
    }

    /// Opens a stored value of the column `field`: a sealed one is
    /// decrypted, anything else is plaintext and returned as is.
    pub fn open(&self, stored: &[u8], field: &str) -> Result<Vec<u8>, CryptoError> {
        let Some(rest) = stored.strip_prefix(PREFIX.as_bytes()) else {
            return Ok(stored.to_vec());
        };
        let rest = std::str::from_utf8(rest).map_err(|_| CryptoError::Corrupt)?;
        let (id, b64) = rest.split_once(':').ok_or(CryptoError::Corrupt)?;
        let cipher = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, c)| c)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_owned()))?;
        let blob = STANDARD.decode(b64).map_err(|_| CryptoError::Corrupt)?;
        if blob.len() < 12 + 16 {
            return Err(CryptoError::Corrupt);
        }
        let (nonce, ct) = blob.split_at(12);
        cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: field.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Corrupt)
    }

    /// Whether a stored value is sealed under the current key (what
    /// `reencrypt` leaves alone).
    pub fn is_current(&self, stored: &[u8]) -> bool {
        match self.current_id() {
            Some(id) => stored.starts_with(format!("{PREFIX}{id}:").as_bytes()),
            None => !stored.starts_with(PREFIX.as_bytes()),
        }
    }

    /// Seals a string (text columns).
    pub fn seal_str(&self, plain: &str, field: &str) -> String {
        String::from_utf8(self.seal(plain.as_bytes(), field)).unwrap_or_default()
    }

    /// Opens a text column.
    pub fn open_str(&self, stored: &str, field: &str) -> Result<String, CryptoError> {
        String::from_utf8(self.open(stored.as_bytes(), field)?).map_err(|_| CryptoError::Corrupt)
    }

    /// Seals a value for a jsonb column: a JSON string holding the sealed
    /// JSON text (or the value itself when the ring is empty).
    pub fn seal_json(&self, value: &serde_json::Value, field: &str) -> serde_json::Value {
        if self.is_empty() {
            return value.clone();
        }
        let text = serde_json::to_vec(value).unwrap_or_default();
        serde_json::Value::String(String::from_utf8(self.seal(&text, field)).unwrap_or_default())
    }

    /// Opens a jsonb column written by [`KeyRing::seal_json`] (or plaintext).
    pub fn open_json(
        &self,
        stored: serde_json::Value,
        field: &str,
    ) -> Result<serde_json::Value, CryptoError> {
        match stored {
            serde_json::Value::String(s) if s.starts_with(PREFIX) => {
                let plain = self.open(s.as_bytes(), field)?;
                serde_json::from_slice(&plain).map_err(|_| CryptoError::Corrupt)
            }
            other => Ok(other),
        }
    }
}

static RING: OnceLock<Arc<KeyRing>> = OnceLock::new();

/// Installs the process's key ring; the first call wins (later ones are
/// ignored and say so by returning `false`).
pub fn install(ring: KeyRing) -> bool {
    RING.set(Arc::new(ring)).is_ok()
}

/// The process's key ring (empty until [`install`]).
pub fn ring() -> Arc<KeyRing> {
    RING.get_or_init(|| Arc::new(KeyRing::empty())).clone()
}

/// Encryption settings of every binary.
#[derive(clap::Args, Clone, Debug)]
pub struct CryptoConfig {
    /// Key ring for secrets at rest: `id:base64key,…` (32-byte keys; the
    /// first encrypts, all decrypt). Generate one with
    /// `rdev-api keys generate-encryption-key`.
    #[arg(
        long = "encryption-keys",
        env = "RDEV_ENCRYPTION_KEYS",
        default_value = "",
        hide_default_value = true
    )]
    pub encryption_keys: Secret,
    /// Start without `RDEV_ENCRYPTION_KEYS`, storing secrets as plaintext
    /// (development only): `1` or `0`.
    #[arg(long = "allow-unencrypted", env = "RDEV_ALLOW_UNENCRYPTED", default_value = "0", value_parser = crate::config::parse_flag)]
    pub allow_unencrypted: bool,
}

impl CryptoConfig {
    /// The ring these settings describe; an error when it is malformed, or
    /// empty without `RDEV_ALLOW_UNENCRYPTED=1` (a production process
    /// refuses to store secrets in plaintext by accident).
    pub fn ring(&self) -> Result<KeyRing, CryptoError> {
        let ring = KeyRing::parse(self.encryption_keys.expose())?;
        if ring.is_empty() && !self.allow_unencrypted {
            return Err(CryptoError::Config(
                "no encryption key configured: set RDEV_ENCRYPTION_KEYS (see docs/operations/security.md), \
                 or RDEV_ALLOW_UNENCRYPTED=1 to store secrets in plaintext (development only)"
                    .into(),
            ));
        }
        Ok(ring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "a:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const B: &str = "b:HxwdHhsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

    #[test]
    fn sealed_values_open_with_any_key_of_the_ring_and_only_in_their_column() {
        let old = KeyRing::parse(A).expect("ring");
        let sealed = old.seal(b"hunter2", "webhooks.secret");
        assert!(sealed.starts_with(b"enc:v1:a:"));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        let rotated = KeyRing::parse(&format!("{B},{A}")).expect("ring");
        assert_eq!(
            rotated.open(&sealed, "webhooks.secret").expect("open"),
            b"hunter2"
        );
        assert!(!rotated.is_current(&sealed));
        assert!(rotated.is_current(&rotated.seal(b"x", "f")));
        assert_eq!(
            rotated.open(&sealed, "projects.env"),
            Err(CryptoError::Corrupt)
        );
        let only_b = KeyRing::parse(B).expect("ring");
        assert_eq!(
            only_b.open(&sealed, "webhooks.secret"),
            Err(CryptoError::UnknownKey("a".into()))
        );
        // Plaintext written before encryption is read as is.
        assert_eq!(rotated.open(b"plain", "f").expect("plain"), b"plain");
        // Two seals of one value differ (random nonces).
        assert_ne!(old.seal(b"x", "f"), old.seal(b"x", "f"));
    }

    #[test]
    fn json_columns_round_trip() {
        let ring = KeyRing::parse(A).expect("ring");
        let v = serde_json::json!({"TOKEN": "s3cret"});
        let sealed = ring.seal_json(&v, "commands.env");
        assert!(sealed.as_str().is_some_and(|s| s.starts_with(PREFIX)));
        assert_eq!(ring.open_json(sealed, "commands.env").expect("open"), v);
        assert_eq!(ring.open_json(v.clone(), "commands.env").expect("plain"), v);
    }

    #[test]
    fn bad_rings_are_refused_and_an_empty_one_needs_consent() {
        for bad in [
            "a",
            "a:notbase64!",
            "a:AAAA",
            "bad id:AAAA",
            &format!("{A},{A}"),
        ] {
            assert!(KeyRing::parse(bad).is_err(), "{bad}");
        }
        let cfg = CryptoConfig {
            encryption_keys: Secret::new(""),
            allow_unencrypted: false,
        };
        assert!(cfg.ring().is_err());
        let cfg = CryptoConfig {
            allow_unencrypted: true,
            ..cfg
        };
        assert!(cfg.ring().is_ok_and(|r| r.is_empty()));
        let generated = KeyRing::generate_entry("k1");
        assert!(KeyRing::parse(&generated).is_ok_and(|r| r.current_id() == Some("k1")));
    }
}
