//! TheEye's task definitions: `/{customer}/task...` — list and read
//! (viewer), write, delete, export as a recipe, import one, and read or
//! rotate the secret key (admin). What a definition may be, and the
//! recipes, are `crate::service::task_defs`'.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use orq_shared::domain::TaskId;
use orq_shared::repo::task_defs::{self, Reader, TaskDef};
use serde_json::{Value, json};

use super::{LabelQuery, PageQuery, paged, reader};
use crate::auth::{Admins, Scoped, Viewers};
use crate::error::{ApiError, Json, Query};
use crate::idempotency::{Caller, CreateRequest, IdemKey, create_once};
use crate::ids::Id;
use crate::service::task_defs::{self as service, Recipe, TaskBody};
use crate::state::AppState;

#[utoipa::path(get, path = "/{customer}/task", operation_id = "task_defs_list", tag = "theeye", params(super::CustomerPath, super::LabelQuery, super::PageQuery), responses((status = 200, description = "A page of tasks", body = [orq_shared::repo::task_defs::TaskDef], headers(("x-next-cursor" = String, description = "Present when there may be more: pass it back as `?after=`"))), crate::error::Refusals))]
pub async fn list(
    State(state): State<AppState>,
    who: Scoped<Viewers>,
    Query(labels): Query<LabelQuery>,
    Query(paging): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = paging.page()?;
    let labels = labels.labels()?;
    let db = state.db().await?;
    let items: Vec<TaskDef> = task_defs::list(&db, who.customer_id, reader(&who), &labels, page)
        .await?
        .into_iter()
        .map(|t| service::shown_to(&who, t))
        .collect();
    let last = items.last().map(|t| t.id.to_string());
    Ok(paged(items, page, last))
}

#[utoipa::path(get, path = "/{customer}/task/{id}", operation_id = "task_defs_get", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The task's id")), responses((status = 200, description = "OK", body = orq_shared::repo::task_defs::TaskDef), crate::error::Refusals))]
pub async fn get(
    State(state): State<AppState>,
    who: Scoped<Viewers>,
    Id(id): Id<TaskId>,
) -> Result<axum::Json<TaskDef>, ApiError> {
    let db = state.db().await?;
    let task = task_defs::get(&db, who.customer_id, id, reader(&who)).await?;
    Ok(axum::Json(service::shown_to(&who, task)))
}

#[utoipa::path(post, path = "/{customer}/task", operation_id = "task_defs_create", tag = "theeye", params(super::CustomerPath, super::IdempotencyHeader), request_body = TaskBody, responses((status = 201, description = "Created", body = orq_shared::repo::task_defs::TaskDef), crate::error::Refusals))]
pub async fn create(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    key: IdemKey,
    Json(body): Json<TaskBody>,
) -> Result<Response, ApiError> {
    let request = CreateRequest::of("task_defs.create", &[], &body);
    let created = create_once(&state, &Caller::token(&who), &key, request, async |tx| {
        Ok(service::create(&state, tx, who.customer_id, body).await?)
    })
    .await?;
    Ok(created.respond())
}

/// Changes the fields given; the others keep their values.
#[utoipa::path(put, path = "/{customer}/task/{id}", operation_id = "task_defs_update", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The task's id")), request_body(content = Object, description = "Any subset of the fields of `TaskBody`; the others keep their values"), responses((status = 200, description = "OK", body = orq_shared::repo::task_defs::TaskDef), crate::error::Refusals))]
pub async fn update(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    Id(id): Id<TaskId>,
    Json(body): Json<Value>,
) -> Result<axum::Json<TaskDef>, ApiError> {
    let Value::Object(changes) = body else {
        return Err(ApiError::bad_request(
            "invalid_body",
            "expected a JSON object with the fields to change",
        ));
    };
    Ok(axum::Json(
        service::update(&state, who.customer_id, id, changes).await?,
    ))
}

#[utoipa::path(delete, path = "/{customer}/task/{id}", operation_id = "task_defs_delete", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The task's id")), responses((status = 204, description = "Deleted"), crate::error::Refusals))]
pub async fn delete(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    Id(id): Id<TaskId>,
) -> Result<StatusCode, ApiError> {
    state
        .in_transaction(async |tx| task_defs::delete(tx, who.customer_id, id).await)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The task and its script, portable: no ids of this deployment (its bot,
/// its triggers' tasks) travel with it.
#[utoipa::path(get, path = "/{customer}/task/{id}/recipe", operation_id = "task_defs_recipe", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The task's id")), responses((status = 200, description = "The task and its script, for import elsewhere", body = Object), crate::error::Refusals))]
pub async fn recipe(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    Id(id): Id<TaskId>,
) -> Result<axum::Json<Value>, ApiError> {
    Ok(axum::Json(
        service::recipe(&state, who.customer_id, id).await?,
    ))
}

/// Creates a task (and its script) from a recipe. A script of the same
/// name and content is reused; one of the same name but other content is
/// imported under a new name.
#[utoipa::path(post, path = "/{customer}/task/import", operation_id = "task_defs_import", tag = "theeye", params(super::CustomerPath, super::IdempotencyHeader), request_body = Recipe, responses((status = 201, description = "Imported", body = orq_shared::repo::task_defs::TaskDef), crate::error::Refusals))]
pub async fn import(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    key: IdemKey,
    Json(recipe): Json<Recipe>,
) -> Result<Response, ApiError> {
    let request = CreateRequest::of("task_defs.import", &[], &recipe);
    let import = service::read_recipe(recipe)?;
    let created = create_once(&state, &Caller::token(&who), &key, request, async |tx| {
        Ok(service::import(&state, tx, who.customer_id, import).await?)
    })
    .await?;
    Ok(created.respond())
}

/// The task's secret key, for admins only: it runs the task without any
/// other credential.
#[utoipa::path(get, path = "/{customer}/task/{id}/credentials", operation_id = "task_defs_credentials", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The task's id")), responses((status = 200, description = "The secret key (admins only)", body = Object), crate::error::Refusals))]
pub async fn credentials(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    Id(id): Id<TaskId>,
) -> Result<axum::Json<Value>, ApiError> {
    let db = state.db().await?;
    let task = task_defs::get(&db, who.customer_id, id, Reader::Admin).await?;
    let secret = task_defs::secret(&db, who.customer_id, id, &state.sealer).await?;
    Ok(axum::Json(
        json!({ "id": task.id, "name": task.name, "secret": secret }),
    ))
}

/// A new secret key; the old one stops working at once.
#[utoipa::path(post, path = "/{customer}/task/{id}/credentials/rotate", operation_id = "task_defs_rotate", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The task's id")), responses((status = 200, description = "The new secret key", body = Object), crate::error::Refusals))]
pub async fn rotate(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    Id(id): Id<TaskId>,
) -> Result<axum::Json<Value>, ApiError> {
    let db = state.db().await?;
    let secret = task_defs::rotate_secret(&db, who.customer_id, id, &state.sealer).await?;
    Ok(axum::Json(json!({ "id": id, "secret": secret })))
}
