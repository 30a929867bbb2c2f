//! Scripts, per customer: `/{customer}/script...` (admins write and read
//! content; viewers list), and `/agent/scripts/{id}` where an agent fetches
//! the script a job runs.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use orq_shared::domain::ScriptId;
use orq_shared::repo::scripts::{self, Script, ScriptSpec};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{PageQuery, check_filename, paged, text_field};
use crate::auth::{Admins, Authorized, Bots, Scoped, Viewers};
use crate::error::{ApiError, Json, Query};
use crate::idempotency::{Caller, CreateRequest, IdemKey, create_once};
use crate::ids::Id;
use crate::state::AppState;

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScriptBody {
    name: String,
    filename: String,
    #[serde(default)]
    description: String,
    /// The script as text...
    content: Option<String>,
    /// ...or as base64, for binary content.
    content_base64: Option<String>,
}

pub fn script_spec(body: ScriptBody) -> Result<ScriptSpec, ApiError> {
    let content = match (body.content, body.content_base64) {
        (Some(text), None) => text.into_bytes(),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.split_ascii_whitespace().collect::<String>())
            .map_err(|e| {
                ApiError::invalid_field("content_base64", format!("not valid base64: {e}"))
            })?,
        _ => {
            return Err(ApiError::invalid_field(
                "content",
                "give the script as exactly one of content (text) or content_base64",
            ));
        }
    };
    if content.is_empty() {
        return Err(ApiError::invalid_field("content", "the script is empty"));
    }
    let description = body.description.trim().to_string();
    if description.chars().count() > 2000 || description.contains('\0') {
        return Err(ApiError::invalid_field(
            "description",
            "description must be at most 2000 characters, without NUL",
        ));
    }
    Ok(ScriptSpec {
        name: text_field("name", &body.name, 200)?,
        filename: check_filename(&body.filename)?,
        description,
        content,
    })
}

#[utoipa::path(get, path = "/{customer}/script", operation_id = "scripts_list", tag = "theeye", params(super::CustomerPath, super::PageQuery), responses((status = 200, description = "A page of scripts", body = [orq_shared::repo::scripts::Script], headers(("x-next-cursor" = String, description = "Present when there may be more: pass it back as `?after=`"))), crate::error::Refusals))]
pub async fn list(
    State(state): State<AppState>,
    who: Scoped<Viewers>,
    Query(paging): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = paging.page()?;
    let db = state.db().await?;
    let items = scripts::list(&db, who.customer_id, page).await?;
    let last = items.last().map(|s| s.id.to_string());
    Ok(paged(items, page, last))
}

#[utoipa::path(get, path = "/{customer}/script/{id}", operation_id = "scripts_get", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The script's id")), responses((status = 200, description = "OK", body = orq_shared::repo::scripts::Script), crate::error::Refusals))]
pub async fn get(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    Id(id): Id<ScriptId>,
) -> Result<axum::Json<Script>, ApiError> {
    let db = state.db().await?;
    Ok(axum::Json(scripts::get(&db, who.customer_id, id).await?))
}

#[utoipa::path(post, path = "/{customer}/script", operation_id = "scripts_create", tag = "theeye", params(super::CustomerPath, super::IdempotencyHeader), request_body = ScriptBody, responses((status = 201, description = "Created", body = orq_shared::repo::scripts::Script), crate::error::Refusals))]
pub async fn create(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    key: IdemKey,
    Json(body): Json<ScriptBody>,
) -> Result<Response, ApiError> {
    let request = CreateRequest::of("scripts.create", &[], &body);
    let spec = script_spec(body)?;
    let created = create_once(&state, &Caller::token(&who), &key, request, async |tx| {
        Ok(scripts::insert(tx, who.customer_id, &spec).await?)
    })
    .await?;
    Ok(created.respond())
}

#[utoipa::path(put, path = "/{customer}/script/{id}", operation_id = "scripts_update", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The script's id")), request_body = ScriptBody, responses((status = 200, description = "OK", body = orq_shared::repo::scripts::Script), crate::error::Refusals))]
pub async fn update(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    Id(id): Id<ScriptId>,
    Json(body): Json<ScriptBody>,
) -> Result<axum::Json<Script>, ApiError> {
    let spec = script_spec(body)?;
    let db = state.db().await?;
    Ok(axum::Json(
        scripts::update(&db, who.customer_id, id, &spec).await?,
    ))
}

#[utoipa::path(delete, path = "/{customer}/script/{id}", operation_id = "scripts_delete", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The script's id")), responses((status = 204, description = "Deleted"), crate::error::Refusals))]
pub async fn delete(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    Id(id): Id<ScriptId>,
) -> Result<StatusCode, ApiError> {
    let db = state.db().await?;
    scripts::delete(&db, who.customer_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// What an agent downloads: the content in base64 with its checksum.
#[utoipa::path(get, path = "/agent/scripts/{id}", operation_id = "scripts_agent_fetch", tag = "agent", params(("id" = uuid::Uuid, Path, description = "The script's id")), responses((status = 200, description = "The script and its content", body = Object), crate::error::Refusals))]
pub async fn agent_fetch(
    State(state): State<AppState>,
    who: Authorized<Bots>,
    Id(id): Id<ScriptId>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let db = state.db().await?;
    let (script, content) = scripts::get_raw(&db, who.customer_id, id).await?;
    Ok(axum::Json(json!({
        "id": script.id,
        "filename": script.filename,
        "checksum": script.checksum,
        "content_base64": base64::engine::general_purpose::STANDARD.encode(content),
    })))
}
