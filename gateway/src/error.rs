//! The one error type of the HTTP API: `{"error": {"code", "message",
//! "details"}}` with the right status, and extractors whose rejections use it.
//! The repositories' and the services' errors become an `ApiError` here,
//! and nowhere else.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use orq_shared::repo::RepoError;
use orq_shared::repo::human::{ActivityRefusal, Refusal};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::service;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: Value::Null,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// A field failed validation; `details.field` names it.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::bad_request("invalid_field", message);
        e.details = json!({ "field": field });
        e
    }

    /// The caller's credential may not change `field`; `details.field`
    /// names it.
    pub fn field_not_allowed(field: &str, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::FORBIDDEN, "field_not_allowed", message);
        e.details = json!({ "field": field });
        e
    }

    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid access token is required (Authorization: Bearer <token> or ?access_token=<token>)",
        )
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

/// Every error the API answers.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable machine-readable code, e.g. `invalid_field`, `not_found`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// More about it, e.g. `{"field": "limit"}`; null when there is nothing.
    #[schema(value_type = Option<Object>)]
    pub details: Value,
}

/// The answers every API operation may give besides its own, as the
/// OpenAPI document shows them (`responses(..., crate::error::Refusals)`).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Refusals {
    /// Refused; the body says why
    #[response(status = "4XX")]
    Refused(ErrorBody),
    /// PostgreSQL or RabbitMQ is unavailable; retry
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                details: self.details,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NotFound(what) => ApiError::not_found(what),
            RepoError::Conflict(message) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message)
            }
            RepoError::Invalid { field, message } => {
                ApiError::invalid_field(&field, format!("{field}: {message}"))
            }
            RepoError::Pool(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable("the database is unavailable; retry shortly")
            }
            // Class 22: the data itself was refused (e.g. a NUL byte in text).
            RepoError::Db(ref db) if db.code().is_some_and(|c| c.code().starts_with("22")) => {
                ApiError::bad_request(
                    "invalid_value",
                    "a value in the request cannot be stored (for example a NUL character)",
                )
            }
            // A race with a delete: what the request refers to went away,
            // or is still referred to.
            RepoError::Db(ref db)
                if db.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) =>
            {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    "something this request refers to was changed or removed meanwhile; retry",
                )
            }
            RepoError::Db(ref db) if db.is_closed() || db.as_db_error().is_none() => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable("the database is unavailable; retry shortly")
            }
            other => {
                tracing::error!(error = %other, "storage error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; it has been logged",
                )
            }
        }
    }
}

/// `axum::Json` whose rejections are `ApiError`s.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => {
            // "Failed to deserialize the JSON body into the target type: <path>: <why>"
            let why = std::error::Error::source(&e)
                .map(ToString::to_string)
                .unwrap_or_else(|| e.body_text());
            let mut err = ApiError::bad_request("invalid_body", why.clone());
            let field = why.split(':').next().unwrap_or_default().trim().to_string();
            if let Some(name) = why
                .split('`')
                .nth(1)
                .filter(|_| why.starts_with("missing field"))
            {
                err.code = "missing_field";
                err.details = json!({ "field": name });
            } else if !field.is_empty() && !field.contains(' ') {
                err.details = json!({ "field": field });
            }
            err
        }
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("invalid_json", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a body with Content-Type: application/json",
        ),
        JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than the configured limit",
            )
        }
        other => ApiError::bad_request("invalid_body", other.body_text()),
    }
}

/// `axum::extract::Query` whose rejections are `ApiError`s.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Query(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::bad_request(
                "invalid_query",
                std::error::Error::source(&e)
                    .map(ToString::to_string)
                    .unwrap_or_else(|| e.body_text()),
            )),
            Err(other) => Err(ApiError::bad_request("invalid_query", other.body_text())),
        }
    }
}

/// `axum::extract::Path` whose rejections are `ApiError`s: a path that
/// does not decode (`/tasks/%ff`) is `400 invalid_path`.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => Err(ApiError::bad_request(
                "invalid_path",
                format!("the path cannot be read: {}", e.body_text()),
            )),
            Err(other) => {
                // A route without parameters asked for some: ours, not the caller's.
                tracing::error!(error = %other.body_text(), "path extraction");
                Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error; it has been logged",
                ))
            }
        }
    }
}

/// The last line of defence for the error shape: an error answer that is
/// not JSON (a rejection from an extractor or layer this crate does not
/// wrap) is rewritten as `ApiError`, keeping its status and text.
pub async fn json_errors(request: Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "refused",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("refused").to_string()
    } else {
        text
    };
    let mut rewritten = ApiError::new(status, code, message).into_response();
    // Keep what the refusal said beside its body (Allow, Retry-After, ...).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            rewritten.headers_mut().append(name, value.clone());
        }
    }
    rewritten
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        RepoError::from(e).into()
    }
}

impl From<orq_shared::task_def::FieldError> for ApiError {
    fn from(e: orq_shared::task_def::FieldError) -> Self {
        ApiError::invalid_field(&e.field, e.message)
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let message = r.to_string();
        match r {
            Refusal::NotFound => ApiError::not_found("micro-task"),
            Refusal::NoneAvailable => {
                ApiError::new(StatusCode::NOT_FOUND, "none_available", message)
            }
            Refusal::HeldByOther => ApiError::new(StatusCode::FORBIDDEN, "held_by_other", message),
            Refusal::NotReserved(_) => ApiError::new(StatusCode::CONFLICT, "not_reserved", message),
            Refusal::Closed(_) => ApiError::new(StatusCode::CONFLICT, "closed", message),
            Refusal::NotExecuting(_) => {
                ApiError::new(StatusCode::CONFLICT, "not_executing", message)
            }
            Refusal::TooMany(_) => {
                ApiError::new(StatusCode::CONFLICT, "too_many_reservations", message)
            }
            Refusal::Repo(e) => e.into(),
        }
    }
}

impl From<ActivityRefusal> for ApiError {
    fn from(r: ActivityRefusal) -> Self {
        let message = r.to_string();
        match r {
            ActivityRefusal::NotFound => ApiError::not_found("activity"),
            ActivityRefusal::NotYoursToEnd => ApiError::forbidden(message),
            ActivityRefusal::NotOpen(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "not_open", message)
            }
            ActivityRefusal::Invalid(errors) => {
                let mut e = ApiError::bad_request("invalid_data", message);
                e.details = json!({ "errors": errors });
                e
            }
            ActivityRefusal::Repo(e) => e.into(),
        }
    }
}

// The services' errors, each mapped to HTTP here and nowhere else.

impl From<service::jobs::Error> for ApiError {
    fn from(e: service::jobs::Error) -> Self {
        match e {
            service::jobs::Error::Changed => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            service::jobs::Error::Repo(e) => e.into(),
        }
    }
}

impl From<service::bots::Error> for ApiError {
    fn from(e: service::bots::Error) -> Self {
        use service::bots::Error;
        let message = e.to_string();
        match e {
            Error::BrokerUnavailable => ApiError::unavailable(message),
            Error::Invalid(e) => e.into(),
            Error::NotItsToChange(field) => ApiError::field_not_allowed(field, message),
            Error::NotYourBot(_) => ApiError::new(StatusCode::FORBIDDEN, "not_your_bot", message),
            Error::Repo(e) => e.into(),
        }
    }
}

impl From<service::webhooks::Error> for ApiError {
    fn from(e: service::webhooks::Error) -> Self {
        match e {
            service::webhooks::Error::Invalid { field, message } => {
                ApiError::invalid_field(&field, message)
            }
            service::webhooks::Error::Repo(e) => e.into(),
        }
    }
}

impl From<service::human::Error> for ApiError {
    fn from(e: service::human::Error) -> Self {
        match e {
            service::human::Error::Schema { field, reason } => {
                ApiError::invalid_field(&field, format!("{field}: {reason}"))
            }
            service::human::Error::Callback(e) => e.into(),
            service::human::Error::Repo(e) => e.into(),
        }
    }
}

impl From<service::tasks::Error> for ApiError {
    fn from(e: service::tasks::Error) -> Self {
        use service::tasks::Error;
        let message = e.to_string();
        match e {
            Error::NotFound => ApiError::not_found("task"),
            Error::Invalid(e) => e.into(),
            Error::UnknownSystem(_) => {
                let mut e = ApiError::bad_request("unknown_system", message);
                e.details = json!({ "field": "system" });
                e
            }
            Error::NotItsToChange(field) => ApiError::field_not_allowed(field, message),
            Error::NotYourTask => ApiError::new(StatusCode::FORBIDDEN, "not_your_task", message),
            Error::Changed => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            Error::Callback(e) => e.into(),
            Error::Repo(e) => e.into(),
        }
    }
}

impl From<service::task_defs::Error> for ApiError {
    fn from(e: service::task_defs::Error) -> Self {
        use service::task_defs::Error;
        match e {
            Error::Invalid(e) => e.into(),
            Error::Body(message) => ApiError::bad_request("invalid_body", message),
            Error::ScriptNameTaken(_) => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            Error::Callback(e) => e.into(),
            Error::Repo(e) => e.into(),
        }
    }
}

impl From<service::overview::Error> for ApiError {
    fn from(e: service::overview::Error) -> Self {
        match e {
            service::overview::Error::Repo(e) => e.into(),
        }
    }
}
