//! The proof of concept's `/tasks` CRUD: a view on jobs of kind `system`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use orq_shared::domain::JobStatus;
use orq_shared::repo::jobs::{self, Task, TaskFilter};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PageQuery, optional_enum, paged};
use crate::auth::{Admins, Authorized, Users, UsersOrBots, ViewersOrBots};
use crate::error::{ApiError, Json, Query};
use crate::idempotency::{self, Caller, IdemKey, create_once};
use crate::ids::{CsvTask, Id};
use crate::service;
use crate::state::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    status: Option<String>,
    system: Option<String>,
    bot_id: Option<Uuid>,
    /// `include=attachment` adds the (possibly large) attachment to each item.
    include: Option<String>,
}

#[utoipa::path(get, path = "/tasks", operation_id = "tasks_list", tag = "tasks", params(ListQuery, super::PageQuery), responses((status = 200, description = "A page of tasks", body = [orq_shared::repo::jobs::Task], headers(("x-next-cursor" = String, description = "Present when there may be more: pass it back as `?after=`"))), crate::error::Refusals))]
pub async fn list(
    State(state): State<AppState>,
    who: Authorized<ViewersOrBots>,
    Query(q): Query<ListQuery>,
    Query(paging): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = paging.page()?;
    let filter = TaskFilter {
        status: optional_enum("status", q.status.as_deref())?,
        system: q.system,
        bot_id: q.bot_id.map(orq_shared::domain::BotId),
        with_attachment: match q.include.as_deref() {
            None => false,
            Some("attachment") => true,
            Some(other) => {
                return Err(ApiError::invalid_field(
                    "include",
                    format!("unknown include {other:?}; the only one is \"attachment\""),
                ));
            }
        },
    };
    let db = state.db().await?;
    let items = jobs::list(&db, who.customer_id, &filter, page).await?;
    let last = items.last().map(|t| t.id.to_string());
    Ok(paged(items, page, last))
}

#[utoipa::path(get, path = "/tasks/{id}", operation_id = "tasks_get", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The task's id")), responses((status = 200, description = "OK", body = orq_shared::repo::jobs::Task), crate::error::Refusals))]
pub async fn get(
    State(state): State<AppState>,
    who: Authorized<ViewersOrBots>,
    Id(id): Id<CsvTask>,
) -> Result<axum::Json<Task>, ApiError> {
    let db = state.db().await?;
    let task = jobs::get(&db, who.customer_id, id).await?;
    Ok(axum::Json(service::tasks::csv_only(task, &who, true)?))
}

#[utoipa::path(get, path = "/tasks/{id}/events", operation_id = "tasks_events", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The task's id")), responses((status = 200, description = "Its events, oldest first", body = [orq_shared::repo::jobs::Event]), crate::error::Refusals))]
pub async fn events(
    State(state): State<AppState>,
    who: Authorized<ViewersOrBots>,
    Id(id): Id<CsvTask>,
) -> Result<axum::Json<Vec<jobs::Event>>, ApiError> {
    let db = state.db().await?;
    service::tasks::csv_only(jobs::get(&db, who.customer_id, id).await?, &who, true)?;
    Ok(axum::Json(jobs::events(&db, who.customer_id, id).await?))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct CreateBody {
    description: String,
    system: String,
    /// The CSV file, base64 encoded, with a header row.
    attachment: String,
    /// `{url, user?, password?}`: where its events are delivered (seed 004).
    #[serde(default)]
    callback: Option<serde_json::Value>,
}

#[utoipa::path(post, path = "/tasks", operation_id = "tasks_create", tag = "tasks", params(super::IdempotencyHeader), request_body = CreateBody, responses((status = 201, description = "Created (WAITING)", body = orq_shared::repo::jobs::Task), crate::error::Refusals))]
pub async fn create(
    State(state): State<AppState>,
    who: Authorized<Users>,
    key: IdemKey,
    Json(body): Json<CreateBody>,
) -> Result<Response, ApiError> {
    let callback = service::webhooks::parse_callback(&state, body.callback.as_ref())?;
    let request = idempotency::CreateRequest::of("tasks.create", &[], &body);
    let created = create_once(&state, &Caller::token(&who), &key, request, async |tx| {
        let def = service::tasks::Definition {
            description: &body.description,
            system: &body.system,
            attachment: &body.attachment,
        };
        Ok(service::tasks::create(&state, tx, who.customer_id, def, callback.as_ref()).await?)
    })
    .await?;
    if let Some(task) = created.fresh() {
        service::jobs::wake(&state, who.customer_id, Some(task.id));
    }
    Ok(created.respond())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UpdateBody {
    status: Option<String>,
    description: Option<String>,
    system: Option<String>,
    attachment: Option<String>,
}

#[utoipa::path(put, path = "/tasks/{id}", operation_id = "tasks_update", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The task's id")), request_body = UpdateBody, responses((status = 200, description = "OK", body = orq_shared::repo::jobs::Task), crate::error::Refusals))]
pub async fn update(
    State(state): State<AppState>,
    who: Authorized<UsersOrBots>,
    Id(id): Id<CsvTask>,
    Json(body): Json<UpdateBody>,
) -> Result<axum::Json<Task>, ApiError> {
    let status: Option<JobStatus> = optional_enum("status", body.status.as_deref())?;
    let change = service::tasks::Redefinition {
        description: body.description,
        system: body.system,
        attachment: body.attachment,
    };
    Ok(axum::Json(
        service::tasks::update(&state, &who, id, status, change).await?,
    ))
}

#[utoipa::path(post, path = "/tasks/{id}/cancel", operation_id = "tasks_cancel", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The task's id")), responses((status = 200, description = "Cancelled (or already finished)", body = orq_shared::repo::jobs::Task), crate::error::Refusals))]
pub async fn cancel(
    State(state): State<AppState>,
    who: Authorized<Users>,
    Id(id): Id<CsvTask>,
) -> Result<axum::Json<Task>, ApiError> {
    service::tasks::csv_only(
        jobs::get(&state.db().await?, who.customer_id, id).await?,
        &who,
        false,
    )?;
    Ok(axum::Json(
        service::jobs::cancel(&state, who.customer_id, id).await?,
    ))
}

#[utoipa::path(delete, path = "/tasks/{id}", operation_id = "tasks_delete", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The task's id")), responses((status = 204, description = "Deleted"), crate::error::Refusals))]
pub async fn delete(
    State(state): State<AppState>,
    who: Authorized<Admins>,
    Id(id): Id<CsvTask>,
) -> Result<StatusCode, ApiError> {
    let db = state.db().await?;
    service::tasks::csv_only(jobs::get(&db, who.customer_id, id).await?, &who, false)?;
    jobs::delete(&db, who.customer_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
