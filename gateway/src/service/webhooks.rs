//! Callbacks (seed 004) given inside a create, and subscriptions: read,
//! checked against `webhooks.deny_networks`, created in the caller's
//! transaction.

use deadpool_postgres::GenericClient;
use orq_shared::domain::CustomerId;
use orq_shared::repo::webhooks::{self, NewEndpoint};
use serde_json::Value;
use uuid::Uuid;

use orq_shared::repo::RepoError;

use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field of an endpoint is refused; `field` names it.
    #[error("{message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Repo(#[from] RepoError),
}

fn invalid(field: &str, message: String) -> Error {
    Error::Invalid {
        field: field.to_string(),
        message,
    }
}

/// Where events are delivered (seed 004): also a task's or job's
/// `callback`. `user` and `password` are sent as headers of every delivery.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub struct SubscriptionBody {
    /// An http(s) URL.
    pub url: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// Reads `{url, user?, password?}` at `field`: the URL must be http(s),
/// carry no credentials, and not point into a denied network.
pub fn parse_endpoint(state: &AppState, field: &str, value: &Value) -> Result<NewEndpoint, Error> {
    let Value::Object(map) = value else {
        return Err(invalid(
            field,
            format!("{field} must be an object {{\"url\", \"user\", \"password\"}}"),
        ));
    };
    // `user` and `password` travel as HTTP headers: visible ASCII (and
    // spaces) only, or no attempt could ever carry them.
    let text = |name: &str| -> Result<Option<String>, Error> {
        match map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s))
                if s.len() <= 2000 && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) =>
            {
                Ok(Some(s.clone()))
            }
            Some(_) => Err(invalid(
                &format!("{field}.{name}"),
                format!(
                    "{field}.{name} must be a string of at most 2000 printable ASCII characters"
                ),
            )),
        }
    };
    for key in map.keys() {
        if !matches!(key.as_str(), "url" | "user" | "password") {
            return Err(invalid(
                &format!("{field}.{key}"),
                format!("{field} takes url, user and password; not {key:?}"),
            ));
        }
    }
    let url = text("url")?
        .ok_or_else(|| invalid(&format!("{field}.url"), format!("{field}.url is required")))?;
    let url = orq_shared::webhook::check_url(&url, &state.deny_networks)
        .map_err(|e| invalid(&format!("{field}.url"), format!("{field}.url: {e}")))?;
    Ok(NewEndpoint {
        url: url.to_string(),
        user: text("user")?,
        password: text("password")?,
    })
}

/// Reads a `callback` field: `None` for absent or `null`.
pub fn parse_callback(
    state: &AppState,
    value: Option<&Value>,
) -> Result<Option<NewEndpoint>, Error> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_endpoint(state, "callback", v).map(Some),
    }
}

/// Creates a callback endpoint in the caller's transaction.
pub async fn create_callback(
    state: &AppState,
    db: &impl GenericClient,
    customer: CustomerId,
    new: Option<&NewEndpoint>,
) -> Result<Option<Uuid>, Error> {
    match new {
        None => Ok(None),
        Some(new) => {
            let endpoint =
                webhooks::create_endpoint(db, customer, "callback", new, &state.sealer).await?;
            Ok(Some(endpoint.id))
        }
    }
}

/// Reads and creates a callback endpoint (`None` for absent or `null`).
pub async fn callback(
    state: &AppState,
    db: &impl GenericClient,
    customer: CustomerId,
    value: Option<&Value>,
) -> Result<Option<Uuid>, Error> {
    let new = parse_callback(state, value)?;
    create_callback(state, db, customer, new.as_ref()).await
}
