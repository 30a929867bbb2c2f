//! Human tasks: creating one (with its callback) in the caller's
//! transaction, and checking a schema field.

use deadpool_postgres::GenericClient;
use orq_shared::human::Schema;
use orq_shared::repo::RepoError;
use orq_shared::repo::human::{self, HumanTask, NewHumanTask};
use serde_json::Value;

use super::webhooks;
use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A JSON Schema given for a task does not compile.
    #[error("{field}: {reason}")]
    Schema { field: String, reason: String },
    #[error(transparent)]
    Callback(#[from] webhooks::Error),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// A JSON Schema given for a task (`activity_schema`, `result_schema`):
/// absent, null, or a schema that compiles.
pub fn schema_field(field: &str, schema: Option<Value>) -> Result<Option<Value>, Error> {
    match schema {
        None | Some(Value::Null) => Ok(None),
        Some(s) => {
            Schema::compile(&s).map_err(|e| Error::Schema {
                field: field.to_string(),
                reason: e.to_string(),
            })?;
            Ok(Some(s))
        }
    }
}

/// Creates a human task, and its callback when `callback` gives one, in
/// the caller's transaction.
pub async fn create(
    state: &AppState,
    tx: &impl GenericClient,
    mut new: NewHumanTask,
    callback: Option<&Value>,
) -> Result<HumanTask, Error> {
    new.callback_id = webhooks::callback(state, tx, new.customer, callback).await?;
    Ok(human::create(tx, &new).await?)
}
