//! Every route that creates something takes an `Idempotency-Key`, through
//! `create_once`: the key's row and the create commit in one transaction,
//! so a gateway killed between its commit and its answer loses nothing —
//! the client's retry finds the answer. A repeat with the same key and the
//! same request (operation, path parameters, body; see
//! `orq_shared::idempotency`) gets the first answer again, with its status
//! and `idempotent-replayed: true`; concurrent repeats wait for the first
//! to commit and get its answer; the same key with another request is a
//! `422 idempotency_key_reused`. A refused request (any error) stores
//! nothing, so the key stays free for a corrected one.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use orq_shared::domain::{CustomerId, TaskId};
use orq_shared::idempotency::{self, IdempotencyKey};
use orq_shared::repo::customers::Principal;
use orq_shared::repo::idempotency::{self as repo, Claim, KeyRef};
use serde::Serialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

pub const HEADER: &str = "idempotency-key";
pub const REPLAYED: &str = "idempotent-replayed";

/// The request's `Idempotency-Key`, when it has one; a malformed one is a
/// `400 invalid_field`.
#[derive(Debug, Clone, Default)]
pub struct IdemKey(pub Option<IdempotencyKey>);

impl<S: Send + Sync> FromRequestParts<S> for IdemKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        match parts.headers.get(HEADER) {
            None => Ok(IdemKey(None)),
            Some(raw) => IdempotencyKey::parse(raw.as_bytes())
                .map(|k| IdemKey(Some(k)))
                .map_err(|e| ApiError::invalid_field("Idempotency-Key", e.to_string())),
        }
    }
}

/// Who sends a create: its customer, and the credential that scopes its
/// keys (one caller's key never replays another caller's answer, which may
/// hold what only that caller may see).
pub struct Caller {
    pub customer: CustomerId,
    scope: String,
}

impl Caller {
    /// A token's holder.
    pub fn token(who: &Principal) -> Caller {
        Caller {
            customer: who.customer_id,
            scope: format!("token:{}", who.token_id),
        }
    }

    /// Whoever holds a task's secret key.
    pub fn secret(customer: CustomerId, task: TaskId) -> Caller {
        Caller {
            customer,
            scope: format!("secret:{task}"),
        }
    }
}

/// What a create request is, for comparing repeats: the operation (one
/// name per kind of resource, shared by the routes that create it the same
/// way), its path parameters and its body as parsed.
pub struct CreateRequest<'a> {
    pub operation: &'static str,
    pub params: &'a [&'a str],
    pub body: Value,
}

impl<'a> CreateRequest<'a> {
    /// A request whose body is `body` as the handler parsed it.
    pub fn of(operation: &'static str, params: &'a [&'a str], body: &impl Serialize) -> Self {
        CreateRequest {
            operation,
            params,
            // Bodies are plain data: serialising them back cannot fail.
            body: serde_json::to_value(body).unwrap_or(Value::Null),
        }
    }

    fn hash(&self) -> Vec<u8> {
        idempotency::request_hash(self.operation, self.params, &self.body)
    }
}

/// The outcome of `create_once`.
pub enum Created<T> {
    /// Created now (and committed); the caller answers it and runs what
    /// follows a create (a wake-up).
    New(T),
    /// An earlier request with this key created it: its answer, as it was.
    Replayed(Response),
}

impl<T: Serialize> Created<T> {
    /// The newly created value, if it is new.
    pub fn fresh(&self) -> Option<&T> {
        match self {
            Created::New(v) => Some(v),
            Created::Replayed(_) => None,
        }
    }

    /// `201` with the value, or the replayed answer.
    pub fn respond(self) -> Response {
        match self {
            Created::New(v) => (StatusCode::CREATED, axum::Json(v)).into_response(),
            Created::Replayed(r) => r,
        }
    }
}

/// Runs `create` in one transaction with the key's row: claim the key
/// (waiting for a concurrent holder), create, store the answer, commit.
/// Without a key it is just the transaction.
pub async fn create_once<T: Serialize>(
    state: &AppState,
    caller: &Caller,
    key: &IdemKey,
    request: CreateRequest<'_>,
    create: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, ApiError>,
) -> Result<Created<T>, ApiError> {
    let at = key.0.as_ref().map(|key| KeyRef {
        customer: caller.customer,
        scope: &caller.scope,
        operation: request.operation,
        key,
    });
    state
        .in_transaction(async |tx| {
            if let Some(at) = at {
                match repo::claim(tx, at, &request.hash(), &state.sealer).await? {
                    Claim::New => {}
                    // The claim wrote nothing: committing changes nothing.
                    Claim::Replay { status, body } => {
                        return Ok(Created::Replayed(replay(status, body)));
                    }
                    Claim::Mismatch => return Err(reused(request.operation)),
                    Claim::Unreadable => return Err(unreadable(request.operation)),
                }
            }
            let value = create(tx).await?;
            if let Some(at) = at {
                let body = serde_json::to_value(&value).map_err(|e| {
                    tracing::error!(error = %e, "answer not serialisable");
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "internal error; it has been logged",
                    )
                })?;
                repo::record(tx, at, StatusCode::CREATED.as_u16(), &body, &state.sealer).await?;
            }
            Ok(Created::New(value))
        })
        .await
}

fn unreadable(operation: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_unreadable",
        "this Idempotency-Key's first answer can no longer be read (the server's secret key changed); the request was done once already: check before retrying with a new key",
    );
    e.details = json!({ "field": "Idempotency-Key", "operation": operation });
    e
}

fn replay(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    response
}

fn reused(operation: &str) -> ApiError {
    let mut e = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
        "this Idempotency-Key was used for a different request; use a new key for a new request",
    );
    e.details = json!({ "field": "Idempotency-Key", "operation": operation });
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request as HttpRequest;

    async fn key_of(value: Option<&[u8]>) -> Result<IdemKey, ApiError> {
        let mut builder = HttpRequest::builder().uri("/");
        if let Some(v) = value {
            builder = builder.header(
                HEADER,
                axum::http::HeaderValue::from_bytes(v).expect("header"),
            );
        }
        let (mut parts, ()) = builder.body(()).expect("request").into_parts();
        IdemKey::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn the_header_is_optional_and_checked_when_present() {
        assert!(key_of(None).await.expect("none").0.is_none());
        let k = key_of(Some(b"order-42")).await.expect("some");
        assert_eq!(k.0.expect("key").as_str(), "order-42");
        let e = key_of(Some(b"")).await.expect_err("empty");
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "invalid_field")
        );
        assert_eq!(e.details["field"], "Idempotency-Key");
        assert!(key_of(Some(&[b'x'; 256])).await.is_err());
    }

    #[test]
    fn a_replay_keeps_the_status_and_says_it_is_one() {
        let r = replay(201, json!({"id": "x"}));
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()[REPLAYED], "true");
        let e = reused("tasks.create");
        assert_eq!(e.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(e.details["operation"], "tasks.create");
    }
}
