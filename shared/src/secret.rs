//! Task secret keys: 32 random bytes shown as 64 hex characters (TheEye's
//! format). Stored twice: a SHA-256 to check a presented key (compared in
//! constant time), and the key sealed with AES-256-GCM under the deployment's
//! `security.secret_key`, so the admins' credentials route can show it again.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key};
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "security.secret_key (ORQ_SECURITY__SECRET_KEY) must be 32 bytes as 64 hex characters or base64; generate one with `openssl rand -hex 32`"
    )]
    BadKey,
    #[error("a sealed secret could not be opened (wrong security.secret_key?)")]
    Open,
}

/// A new secret key, as shown to admins.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Whether `presented` looks like a secret key at all (64 hex characters).
pub fn well_formed(presented: &str) -> bool {
    presented.len() == 64 && presented.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.to_ascii_lowercase().as_bytes()).to_vec()
}

/// Whether `presented` is the secret whose hash is `stored`, in constant
/// time (the comparison does not stop at the first differing byte).
pub fn matches(presented: &str, stored: &[u8]) -> bool {
    hash(presented).ct_eq(stored).into()
}

/// The deployment's key from its configured form: 64 hex characters or
/// base64 of 32 bytes.
pub fn key_bytes(key: &str) -> Result<[u8; 32], SecretError> {
    let key = key.trim();
    let bytes = if key.len() == 64 {
        hex::decode(key).map_err(|_| SecretError::BadKey)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(key)
            .map_err(|_| SecretError::BadKey)?
    };
    bytes.try_into().map_err(|_| SecretError::BadKey)
}

/// A key for one purpose derived from the deployment's key (HMAC-SHA256
/// keyed by it over the purpose's label), so no two uses share a key.
pub fn derive_key(config_key: &str, label: &str) -> Result<[u8; 32], SecretError> {
    use hmac::{KeyInit as _, Mac};
    let root = key_bytes(config_key)?;
    let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&root).map_err(|_| SecretError::BadKey)?;
    mac.update(label.as_bytes());
    Ok(mac.finalize().into_bytes().into())
}

/// Seals and opens secrets with the deployment's key.
#[derive(Clone)]
pub struct Sealer {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// From the configured key: 64 hex characters or base64 of 32 bytes.
    pub fn from_config(key: &str) -> Result<Sealer, SecretError> {
        let bytes = key_bytes(key)?;
        let key = Key::<Aes256Gcm>::from(bytes);
        Ok(Sealer {
            cipher: Aes256Gcm::new(&key),
        })
    }

    /// `nonce || ciphertext`; `context` (the owning row's id) is
    /// authenticated too, so a sealed value cannot be moved to another row.
    pub fn seal(&self, secret: &str, context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self.cipher.encrypt(
            (&nonce).into(),
            Payload {
                msg: secret.as_bytes(),
                aad: context,
            },
        );
        // Encryption of a short message with a valid key cannot fail.
        let mut out = nonce.to_vec();
        out.extend(sealed.unwrap_or_default());
        out
    }

    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<String, SecretError> {
        if sealed.len() <= NONCE_LEN {
            return Err(SecretError::Open);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SecretError::Open)?;
        let plain = self
            .cipher
            .decrypt(
                (&nonce).into(),
                Payload {
                    msg: body,
                    aad: context,
                },
            )
            .map_err(|_| SecretError::Open)?;
        String::from_utf8(plain).map_err(|_| SecretError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn secrets_are_64_hex_and_match_only_themselves() {
        let s = generate();
        assert!(well_formed(&s));
        assert!(matches(&s, &hash(&s)));
        assert!(matches(&s.to_uppercase(), &hash(&s)));
        assert!(!matches(&generate(), &hash(&s)));
        assert!(!well_formed("abc"));
        assert!(!well_formed(&"g".repeat(64)));
    }

    #[test]
    fn sealing_round_trips_and_is_bound_to_its_row() {
        let sealer = Sealer::from_config(KEY).expect("key");
        let s = generate();
        let sealed = sealer.seal(&s, b"row-1");
        assert!(
            !sealed
                .windows(8)
                .any(|w| s.as_bytes().windows(8).any(|x| x == w))
        );
        assert_eq!(sealer.open(&sealed, b"row-1").expect("opens"), s);
        assert!(sealer.open(&sealed, b"row-2").is_err());
        let other = Sealer::from_config(&"ff".repeat(32)).expect("key");
        assert!(other.open(&sealed, b"row-1").is_err());
        assert_ne!(sealer.seal(&s, b"row-1"), sealed, "a fresh nonce each time");
    }

    #[test]
    fn keys_must_be_32_bytes() {
        assert!(Sealer::from_config("").is_err());
        assert!(Sealer::from_config("abcd").is_err());
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert!(Sealer::from_config(&b64).is_ok());
    }
}
