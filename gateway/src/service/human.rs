//! Human tasks: creating one (with its callback, under an idempotency
//! key), listing them, checking a schema field.

use axum::response::Response;
use orq_shared::human::Schema;
use orq_shared::repo::human::{self, HumanFilter, NewHumanTask};
use serde_json::Value;

use crate::error::ApiError;
use crate::idempotency::{Caller, CreateRequest, IdemKey, create_once};
use crate::routes::paged;
use crate::state::AppState;

/// A JSON Schema given for a task (`activity_schema`, `result_schema`):
/// absent, null, or a schema that compiles.
pub fn schema_field(field: &str, schema: Option<Value>) -> Result<Option<Value>, ApiError> {
    match schema {
        None | Some(Value::Null) => Ok(None),
        Some(s) => {
            Schema::compile(&s)
                .map_err(|e| ApiError::invalid_field(field, format!("{field}: {e}")))?;
            Ok(Some(s))
        }
    }
}

/// Creates a human task (and its callback, when given): `201` with it, or
/// the answer an earlier request with this key got.
pub async fn create(
    state: &AppState,
    caller: Caller,
    key: &IdemKey,
    request: CreateRequest<'_>,
    mut new: NewHumanTask,
    callback_body: Option<&Value>,
) -> Result<Response, ApiError> {
    let created = create_once(state, &caller, key, request, async |tx| {
        new.callback_id = super::webhooks::callback(state, tx, new.customer, callback_body).await?;
        Ok(human::create(tx, &new).await?)
    })
    .await?;
    Ok(created.respond())
}

/// A page of a customer's human tasks.
pub async fn list_page(
    state: &AppState,
    customer: orq_shared::domain::CustomerId,
    filter: &HumanFilter,
    page: orq_shared::repo::Page,
) -> Result<Response, ApiError> {
    let db = state.db().await?;
    let tasks = human::list(&db, customer, filter, page).await?;
    let last = tasks.last().map(|t| t.id.to_string());
    Ok(paged(tasks, page, last))
}
