//! Worker tokens: they prove an e-mail without the database.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::fmt;
use uuid::Uuid;

use crate::domain::CustomerId;

/// What a worker token proves, without asking the database: which token,
/// of which customer, bound to which e-mail. Revocation is checked where
/// the database is at hand (the dispatcher refuses a revoked token's
/// submissions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerClaims {
    pub token_id: Uuid,
    pub customer: CustomerId,
    pub email: String,
}

const WORKER_PREFIX: &str = "orqw_";

/// Signs and checks worker tokens with a key derived from the deployment's
/// `security.secret_key`.
#[derive(Clone)]
pub struct WorkerTokens {
    key: [u8; 32],
}

impl fmt::Debug for WorkerTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkerTokens(<redacted>)")
    }
}

impl WorkerTokens {
    pub fn from_config(secret_key: &str) -> Result<Self, crate::secret::SecretError> {
        Ok(WorkerTokens {
            key: crate::secret::derive_key(secret_key, "orquestra worker token v1")?,
        })
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(payload);
        mac
    }

    /// `orqw_<payload>.<mac>`: the payload is the token's id, the customer's
    /// id and the e-mail; the MAC makes it unforgeable.
    pub fn mint(&self, claims: &WorkerClaims) -> String {
        let mut payload = Vec::with_capacity(32 + claims.email.len());
        payload.extend_from_slice(claims.token_id.as_bytes());
        payload.extend_from_slice(claims.customer.0.as_bytes());
        payload.extend_from_slice(claims.email.as_bytes());
        let tag = self.mac(&payload).finalize().into_bytes();
        format!(
            "{WORKER_PREFIX}{}.{}",
            B64.encode(&payload),
            B64.encode(tag)
        )
    }

    /// The claims of a token this deployment minted; `None` for anything
    /// else. The MAC is compared in constant time.
    pub fn verify(&self, token: &str) -> Option<WorkerClaims> {
        let (payload, tag) = token.strip_prefix(WORKER_PREFIX)?.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let tag = B64.decode(tag).ok()?;
        self.mac(&payload).verify_slice(&tag).ok()?;
        if payload.len() < 32 {
            return None;
        }
        let (ids, email) = payload.split_at(32);
        Some(WorkerClaims {
            token_id: Uuid::from_slice(&ids[..16]).ok()?,
            customer: CustomerId(Uuid::from_slice(&ids[16..]).ok()?),
            email: String::from_utf8(email.to_vec()).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_tokens_bind_an_email_and_cannot_be_forged() {
        let key = "00".repeat(32);
        let tokens = WorkerTokens::from_config(&key).expect("key");
        let claims = WorkerClaims {
            token_id: Uuid::now_v7(),
            customer: CustomerId::new(),
            email: "sofier@mysofie.com".into(),
        };
        let token = tokens.mint(&claims);
        assert_eq!(tokens.verify(&token), Some(claims.clone()));
        // Another deployment's key, a changed e-mail, a cut token: refused.
        let other = WorkerTokens::from_config(&"11".repeat(32)).expect("key");
        assert_eq!(other.verify(&token), None);
        let (payload, tag) = token.split_once('.').expect("dot");
        let mut forged = B64
            .decode(payload.trim_start_matches(WORKER_PREFIX))
            .expect("b64");
        forged.extend_from_slice(b"x");
        assert_eq!(
            tokens.verify(&format!("{WORKER_PREFIX}{}.{tag}", B64.encode(forged))),
            None
        );
        assert_eq!(tokens.verify(&token[..token.len() - 2]), None);
        assert_eq!(tokens.verify("orqw_."), None);
        assert_eq!(tokens.verify("not a token"), None);
    }
}
