//! Idempotency keys: the answer each create gave, per (customer,
//! credential, operation, key). Used inside the creating transaction: `claim` first
//! (a concurrent duplicate blocks on the primary key until the first
//! transaction ends), the create, then `record`, then commit — so the
//! resource and its key become durable together.
//!
//! Answers are stored sealed (`secret::Sealer`, bound to the key's row):
//! some carry a secret shown once (a worker's token), and no answer is
//! kept readable in the database.

use deadpool_postgres::GenericClient;
use serde_json::Value;
use time::OffsetDateTime;

use super::{RepoError, execute, query_opt};
use crate::domain::CustomerId;
use crate::idempotency::IdempotencyKey;
use crate::secret::Sealer;

/// What a key's row says about a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key is new: this transaction now holds it; create, then `record`.
    New,
    /// The same request was answered before: give this answer again.
    Replay { status: u16, body: Value },
    /// The key was used for another request.
    Mismatch,
    /// The same request was answered, but its stored answer cannot be
    /// opened (the secret key changed since): the client must use a new key.
    Unreadable,
}

/// One key's row: whose (customer and credential), for what operation.
#[derive(Debug, Clone, Copy)]
pub struct KeyRef<'a> {
    pub customer: CustomerId,
    /// The credential that sent the request (`token:<id>`, `secret:<task>`).
    pub scope: &'a str,
    /// The kind of create (`tasks.create`, `jobs.create`, ...).
    pub operation: &'a str,
    pub key: &'a IdempotencyKey,
}

impl KeyRef<'_> {
    /// Binds a sealed answer to its row, so it cannot be moved to another.
    fn context(&self) -> Vec<u8> {
        let mut c = self.customer.0.as_bytes().to_vec();
        for part in [self.scope, self.operation, self.key.as_str()] {
            c.extend_from_slice(&(part.len() as u64).to_be_bytes());
            c.extend_from_slice(part.as_bytes());
        }
        c
    }
}

/// Takes `key` for this request, or finds what it was used for. Waits for
/// a transaction that holds the same key to end.
pub async fn claim(
    db: &impl GenericClient,
    at: KeyRef<'_>,
    request_hash: &[u8],
    sealer: &Sealer,
) -> Result<Claim, RepoError> {
    // A row pruned between the insert and the read: insert again.
    for _ in 0..3 {
        let inserted = query_opt(
            db,
            "INSERT INTO idempotency_keys (customer_id, scope, operation, key, request_hash)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING
             RETURNING 1",
            &[
                &at.customer.0,
                &at.scope,
                &at.operation,
                &at.key.as_str(),
                &request_hash,
            ],
        )
        .await?;
        if inserted.is_some() {
            return Ok(Claim::New);
        }
        let Some(row) = query_opt(
            db,
            "SELECT request_hash, status_code, response FROM idempotency_keys
              WHERE customer_id = $1 AND scope = $2 AND operation = $3 AND key = $4",
            &[&at.customer.0, &at.scope, &at.operation, &at.key.as_str()],
        )
        .await?
        else {
            continue;
        };
        if row.get::<_, &[u8]>("request_hash") != request_hash {
            return Ok(Claim::Mismatch);
        }
        let (Some(status), Some(sealed)) = (
            row.get::<_, Option<i16>>("status_code"),
            row.get::<_, Option<Vec<u8>>>("response"),
        ) else {
            return Err(RepoError::Corrupt(
                "an idempotency key was committed without its answer".into(),
            ));
        };
        let body = sealer
            .open(&sealed, &at.context())
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok());
        let Some(body) = body else {
            tracing::warn!(
                "a stored idempotent answer cannot be opened (was the secret key changed?)"
            );
            return Ok(Claim::Unreadable);
        };
        return Ok(Claim::Replay {
            status: u16::try_from(status).unwrap_or(200),
            body,
        });
    }
    Err(RepoError::Conflict(
        "this Idempotency-Key is being removed; retry".into(),
    ))
}

/// Stores the answer of a claimed key, in the creating transaction.
pub async fn record(
    db: &impl GenericClient,
    at: KeyRef<'_>,
    status: u16,
    body: &Value,
    sealer: &Sealer,
) -> Result<(), RepoError> {
    let sealed = sealer.seal(&body.to_string(), &at.context());
    let status = i16::try_from(status).map_err(|_| RepoError::Corrupt("status code".into()))?;
    let n = execute(
        db,
        "UPDATE idempotency_keys SET status_code = $5, response = $6
          WHERE customer_id = $1 AND scope = $2 AND operation = $3 AND key = $4",
        &[
            &at.customer.0,
            &at.scope,
            &at.operation,
            &at.key.as_str(),
            &status,
            &sealed,
        ],
    )
    .await?;
    if n != 1 {
        return Err(RepoError::Corrupt(
            "recording an answer for an unclaimed idempotency key".into(),
        ));
    }
    Ok(())
}

/// Removes up to `limit` keys created before `before`; returns how many.
/// After that a key may be used again for anything.
pub async fn prune(
    db: &impl GenericClient,
    before: OffsetDateTime,
    limit: i64,
) -> Result<u64, RepoError> {
    super::prune_before(
        db,
        "idempotency_keys",
        "ctid",
        "created_at",
        "true",
        before,
        limit,
    )
    .await
}
