//! Photos of micro-task steps: the worker asks where to upload one
//! (`POST /micro_task/execution/{task_id}/photo`), uploads it there, and
//! answers the step with its URL. With local storage the gateway takes
//! the upload (`PUT /photos/{key}`, signed and expiring) and serves it
//! (`GET /photos/{key}`, to tokens of its customer).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use orq_shared::domain::{HumanTaskId, Role};
use orq_shared::repo::human;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

use crate::auth::{Auth, Worker};
use crate::error::{ApiError, Json, Path, Query};
use crate::ids::Id;
use crate::photos::{self, Storage, Ticket};
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PhotoRequest {
    /// The step's `index` in the task's flow.
    step: i64,
    content_type: String,
    /// Bytes the photo has.
    size: u64,
}

/// `POST /micro_task/execution/{task_id}/photo`: an upload ticket for one
/// step's photo, for the worker executing the task.
#[utoipa::path(post, path = "/micro_task/execution/{id}/photo", operation_id = "photos_ticket", tag = "micro_task", params(("id" = uuid::Uuid, Path, description = "The micro-task's id"), super::SofierParam), request_body = PhotoRequest, responses((status = 201, description = "Where and how to upload the photo: `{method, upload_url, headers, url, expires_at}`", body = Object), crate::error::Refusals))]
pub async fn ticket(
    State(state): State<AppState>,
    Worker { who, email }: Worker,
    Id(id): Id<HumanTaskId>,
    Json(body): Json<PhotoRequest>,
) -> Result<Response, ApiError> {
    let limits = &state.settings.storage;
    if !limits
        .photo_content_types
        .iter()
        .any(|t| t.eq_ignore_ascii_case(body.content_type.trim()))
    {
        return Err(ApiError::invalid_field(
            "content_type",
            format!(
                "content_type must be one of {}",
                limits.photo_content_types.join(", ")
            ),
        ));
    }
    if body.size == 0 || body.size > limits.photo_max_bytes {
        return Err(ApiError::invalid_field(
            "size",
            format!("size must be from 1 to {} bytes", limits.photo_max_bytes),
        ));
    }
    if body.step < 0 {
        return Err(ApiError::invalid_field("step", "step must not be negative"));
    }
    let db = state.db().await?;
    let task = human::executing_by(&db, who.customer_id, &email, id).await?;
    let execution = task
        .execution_id
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "not_executing", "no execution"))?;
    let content_type = body.content_type.trim().to_ascii_lowercase();
    let key = format!(
        "photos/{}/{}/{}/{}-{}.{}",
        who.customer_id,
        task.id,
        execution,
        body.step,
        Uuid::now_v7().simple(),
        photos::extension(&content_type)
    );
    let ticket: Ticket = state
        .storage
        .ticket(&key, &content_type, body.size)
        .await
        .map_err(|e| {
            tracing::warn!(error = %e, "no upload URL");
            ApiError::unavailable("the photo storage is unavailable; retry shortly")
        })?;
    Ok((StatusCode::CREATED, axum::Json(ticket)).into_response())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    expires: i64,
    sig: String,
}

fn local(state: &AppState) -> Result<(&std::path::Path, &[u8; 32]), ApiError> {
    match &state.storage {
        Storage::Local { dir, key, .. } => Ok((dir.as_path(), key)),
        Storage::S3 { .. } => Err(ApiError::not_found("photo")),
    }
}

/// A photo's bytes, as the OpenAPI document shows them.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct PhotoBytes(pub Vec<u8>);

/// `PUT /photos/{key}?expires=&sig=`: a local upload, as its ticket allowed.
#[utoipa::path(put, path = "/photos/{key}", operation_id = "photos_upload", tag = "micro_task", security(()), params(("key" = String, Path, description = "The photo's key, from its upload ticket"), UploadQuery), request_body(content = PhotoBytes, content_type = "image/*", description = "The photo"), responses((status = 201, description = "Stored: `{key, size}`", body = Object), crate::error::Refusals))]
pub async fn upload(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (dir, secret) = local(&state)?;
    if !photos::valid_key(&key) || !key.starts_with("photos/") {
        return Err(ApiError::not_found("photo"));
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let size = body.len() as u64;
    photos::verify(
        secret,
        &key,
        q.expires,
        &content_type,
        size,
        &q.sig,
        time::OffsetDateTime::now_utc(),
    )
    .map_err(|why| ApiError::new(StatusCode::FORBIDDEN, "bad_upload", why))?;
    let path = dir.join(&key);
    let write = async {
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let tmp = path.with_extension(format!("part-{}", Uuid::now_v7().simple()));
        tokio::fs::write(&tmp, &body).await?;
        tokio::fs::rename(&tmp, &path).await
    };
    write.await.map_err(|e| {
        tracing::error!(error = %e, %key, "photo not written");
        ApiError::unavailable("the photo could not be stored; retry")
    })?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "key": key, "size": size })),
    )
        .into_response())
}

/// `GET /photos/{key}`: the photo, to tokens of its customer — served
/// from local storage, or a redirect to a presigned GET from S3.
#[utoipa::path(get, path = "/photos/{key}", operation_id = "photos_download", tag = "micro_task", params(("key" = String, Path, description = "The photo's key")), responses((status = 200, description = "The photo", content_type = "image/*", body = PhotoBytes), (status = 307, description = "Redirect to a presigned URL of the bucket"), crate::error::Refusals))]
pub async fn download(
    State(state): State<AppState>,
    auth: Auth,
    Path(key): Path<String>,
) -> Result<Response, ApiError> {
    // Readers of the customer's data, and its workers; not its bots.
    auth.require(&[Role::Viewer])
        .or_else(|_| auth.require(&[Role::Worker]))?;
    let customer = key.split('/').nth(1).unwrap_or_default();
    if !photos::valid_key(&key)
        || !key.starts_with("photos/")
        || customer != auth.0.customer_id.to_string()
    {
        return Err(ApiError::not_found("photo"));
    }
    let presigned = state.storage.s3_download(&key).await.map_err(|e| {
        tracing::warn!(error = %e, "no download URL");
        ApiError::unavailable("the photo storage is unavailable; retry shortly")
    })?;
    if let Some(url) = presigned {
        return Ok(axum::response::Redirect::temporary(&url).into_response());
    }
    let (dir, _) = local(&state)?;
    let bytes = tokio::fs::read(dir.join(&key))
        .await
        .map_err(|_| ApiError::not_found("photo"))?;
    let content_type = match key.rsplit('.').next() {
        Some("jpg") => "image/jpeg",
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("heic") => "image/heic",
        Some("gif") => "image/gif",
        _ => "application/octet-stream",
    };
    Ok(([(CONTENT_TYPE, content_type)], bytes).into_response())
}
