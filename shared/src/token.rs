//! Access tokens: 32 random bytes shown once as `orq_<hex>`; only their
//! SHA-256 is stored. Looking a token up by its hash compares no secret byte by
//! byte, and the hash of a 256-bit random value reveals nothing usable.

use rand::RngCore;
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "orq_";

/// A new random token, as shown to its owner.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{PREFIX}{}", hex::encode(bytes))
}

/// What is stored and looked up.
pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_hash_stably() {
        let a = generate();
        let b = generate();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX));
        assert_eq!(a.len(), PREFIX.len() + 64);
        assert_eq!(hash(&a), hash(&a));
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a).len(), 32);
    }
}
