//! Ids named in a route's path. `Id<T>` reads `{id}` and parses it; one
//! that does not parse is a 404 like an unknown one, since no such thing
//! can exist. `T` says what the id names, for the 404's message: the same
//! type may have two names (a job is a "task" under `/tasks`).
//!
//! Take it after the caller's extractor (`Authorized`, `Scoped`, `Worker`):
//! a caller without a valid token gets its 401 before any 404.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use orq_shared::domain::{BotId, HumanTaskId, JobId, ScriptId, TaskId};
use serde::Deserialize;
use std::str::FromStr;
use uuid::Uuid;

use crate::error::{ApiError, Path};

/// What an `{id}` names: the type it parses into, and the word its 404
/// uses (`"<WHAT> not found"`).
pub trait PathId {
    type Id: FromStr + Send;
    const WHAT: &'static str;
}

/// The path's `{id}`, parsed. A path that does not decode is still
/// `400 invalid_path` (`error::Path`).
pub struct Id<T: PathId>(pub T::Id);

#[derive(Deserialize)]
struct IdParam {
    id: String,
}

impl<S: Send + Sync, T: PathId> FromRequestParts<S> for Id<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(IdParam { id }) = Path::from_request_parts(parts, state).await?;
        id.parse().map(Id).map_err(|_| ApiError::not_found(T::WHAT))
    }
}

macro_rules! path_id {
    ($($ty:ty => $id:ty, $what:literal;)*) => {
        $(impl PathId for $ty {
            type Id = $id;
            const WHAT: &'static str = $what;
        })*
    };
}

/// A job under `/tasks/{id}`, where the proof of concept calls it a task.
pub enum CsvTask {}

/// A human task under `/activity_manager/{id}`: flowBuild's user task.
pub enum UserTask {}

/// A webhook delivery.
pub enum DeliveryId {}

/// A webhook subscription.
pub enum SubscriptionId {}

path_id! {
    BotId => BotId, "bot";
    ScriptId => ScriptId, "script";
    TaskId => TaskId, "task";
    JobId => JobId, "job";
    HumanTaskId => HumanTaskId, "micro-task";
    CsvTask => JobId, "task";
    UserTask => HumanTaskId, "activity";
    DeliveryId => Uuid, "delivery";
    SubscriptionId => Uuid, "subscription";
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;
    use axum::routing::get;
    use tower::ServiceExt;

    async fn status_of(uri: &str) -> (StatusCode, String) {
        let app = axum::Router::new().route(
            "/{customer}/job/{id}",
            get(|Id(id): Id<JobId>| async move { id.to_string() }),
        );
        let request = axum::http::Request::get(uri)
            .body(axum::body::Body::empty())
            .expect("request");
        let response = app.oneshot(request).await.expect("answer");
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn an_id_that_does_not_parse_is_not_found_by_its_name() {
        let id = JobId::new();
        assert_eq!(
            status_of(&format!("/acme/job/{id}")).await,
            (StatusCode::OK, id.to_string())
        );
        let (status, body) = status_of("/acme/job/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("job not found"), "{body}");
        let (status, body) = status_of("/acme/job/%ff").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(body.contains("invalid_path"), "{body}");
    }
}
