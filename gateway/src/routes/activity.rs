//! flowBuild's user tasks (seed 001) behind an activity-manager API: a
//! process (any API client, a job's script) opens one with `action` and
//! `input`; a person commits partial answers and submits it; the process
//! learns of commits, the submission and expiry through the activity's
//! events (`GET …/events`, the live stream, webhooks).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orq_shared::human::{ActivityManager, HumanKind, OnTimeout, deadline_from, parse_timers};
use orq_shared::repo::human::{self, HumanFilter, HumanTask, NewHumanTask};
use orq_shared::repo::jobs;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{PageQuery, optional_enum, paged, text_field};
use crate::auth::{Authorized, Users, Viewers};
use crate::error::{ApiError, Json, Query};
use crate::idempotency::{Caller, CreateRequest, IdemKey, create_once};
use crate::ids::{Id, UserTask};
use crate::service;
use crate::state::AppState;

/// A user task as a process opens it (flowBuild's userTask parameters).
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserTaskBody {
    action: String,
    input: Value,
    /// Seconds from now, or a date-time: an absolute deadline either way.
    #[serde(default)]
    timeout: Option<Value>,
    /// `commit` (default: the process waits for the submission) or
    /// `notify` (it goes on; the activity stays open).
    #[serde(default)]
    activity_manager: Option<String>,
    #[serde(default)]
    activity_schema: Option<Value>,
    #[serde(default)]
    result_schema: Option<Value>,
    /// Timers: `[{"type": "timer", "in" | "at" | "before_expiry", "description"?}]`.
    #[serde(default)]
    events: Option<Value>,
    /// `{url, user?, password?}`: where the activity's events are delivered.
    #[serde(default)]
    callback: Option<Value>,
}

/// `POST /activity_manager` (user): opens a user task.
#[utoipa::path(post, path = "/activity_manager", operation_id = "activity_create", tag = "activity_manager", params(super::IdempotencyHeader), request_body = UserTaskBody, responses((status = 201, description = "Created", body = orq_shared::repo::human::HumanTask), crate::error::Refusals))]
pub async fn create(
    State(state): State<AppState>,
    who: Authorized<Users>,
    key: IdemKey,
    Json(body): Json<UserTaskBody>,
) -> Result<Response, ApiError> {
    let request = CreateRequest::of("user_tasks.create", &[], &body);
    let action = text_field("action", &body.action, 200)?;
    if body.input.is_null() {
        return Err(ApiError::invalid_field("input", "input is required"));
    }
    let now = time::OffsetDateTime::now_utc();
    let expires_at = body
        .timeout
        .as_ref()
        .filter(|t| !t.is_null())
        .map(|t| deadline_from(t, now))
        .transpose()
        .map_err(|e| ApiError::invalid_field("timeout", format!("timeout: {e}")))?
        .or_else(|| {
            let ms = state.settings.human.user_task_timeout_ms;
            (ms > 0)
                .then(|| now + time::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX)))
        });
    let activity_manager = optional_enum("activity_manager", body.activity_manager.as_deref())?
        .unwrap_or(ActivityManager::Commit);
    let events = body.events.unwrap_or(Value::Null);
    let timers = parse_timers(&events, now, expires_at)
        .map_err(|e| ApiError::invalid_field(&e.field, e.to_string()))?;
    let new = NewHumanTask {
        customer: who.customer_id,
        kind: HumanKind::UserTask,
        action,
        version: 1,
        input: body.input,
        activity_schema: service::human::schema_field("activity_schema", body.activity_schema)?,
        result_schema: service::human::schema_field("result_schema", body.result_schema)?,
        activity_manager,
        on_timeout: OnTimeout::Continue,
        execution_ms: i64::try_from(state.settings.human.execution_ms).unwrap_or(i64::MAX),
        expires_at,
        events: if events.is_null() { json!([]) } else { events },
        timers,
        callback_id: None,
    };
    let created = create_once(&state, &Caller::token(&who), &key, request, async |tx| {
        Ok(service::human::create(&state, tx, new, body.callback.as_ref()).await?)
    })
    .await?;
    Ok(created.respond())
}

#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    status: Option<String>,
    action: Option<String>,
}

/// `GET /activity_manager?status=&action=` (viewer).
#[utoipa::path(get, path = "/activity_manager", operation_id = "activity_list", tag = "activity_manager", params(ListQuery, super::PageQuery), responses((status = 200, description = "A page of user tasks", body = [orq_shared::repo::human::HumanTask], headers(("x-next-cursor" = String, description = "Present when there may be more: pass it back as `?after=`"))), crate::error::Refusals))]
pub async fn list(
    State(state): State<AppState>,
    who: Authorized<Viewers>,
    Query(q): Query<ListQuery>,
    Query(paging): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = paging.page()?;
    let filter = HumanFilter {
        kind: Some(HumanKind::UserTask),
        status: optional_enum("status", q.status.as_deref())?,
        action: q.action,
        worker: None,
        held: false,
    };
    let db = state.db().await?;
    let tasks = human::list(&db, who.customer_id, &filter, page).await?;
    let last = tasks.last().map(|t| t.id.to_string());
    Ok(paged(tasks, page, last))
}

async fn user_task(
    state: &AppState,
    who: &Authorized<Viewers>,
    id: orq_shared::domain::HumanTaskId,
) -> Result<HumanTask, ApiError> {
    let db = state.db().await?;
    match human::get(&db, who.customer_id, id).await? {
        t if t.kind == HumanKind::UserTask => Ok(t),
        _ => Err(ApiError::not_found("activity")),
    }
}

/// `GET /activity_manager/{id}`: the activity with `expires_at`.
#[utoipa::path(get, path = "/activity_manager/{id}", operation_id = "activity_get", tag = "activity_manager", params(("id" = uuid::Uuid, Path, description = "The user task's id")), responses((status = 200, description = "OK", body = orq_shared::repo::human::HumanTask), crate::error::Refusals))]
pub async fn get(
    State(state): State<AppState>,
    who: Authorized<Viewers>,
    Id(id): Id<UserTask>,
) -> Result<axum::Json<HumanTask>, ApiError> {
    Ok(axum::Json(user_task(&state, &who, id).await?))
}

/// `GET /activity_manager/{id}/events`.
#[utoipa::path(get, path = "/activity_manager/{id}/events", operation_id = "activity_events", tag = "activity_manager", params(("id" = uuid::Uuid, Path, description = "The user task's id")), responses((status = 200, description = "OK", body = [orq_shared::repo::jobs::Event]), crate::error::Refusals))]
pub async fn events(
    State(state): State<AppState>,
    who: Authorized<Viewers>,
    Id(id): Id<UserTask>,
) -> Result<axum::Json<Vec<jobs::Event>>, ApiError> {
    let task = user_task(&state, &who, id).await?;
    let db = state.db().await?;
    Ok(axum::Json(
        jobs::events(&db, task.customer, task.id.into()).await?,
    ))
}

/// `POST /activity_manager/{id}/commit` (user): saves a partial answer;
/// one that fails `activity_schema` is a 400 with the validation errors and
/// changes nothing.
#[utoipa::path(post, path = "/activity_manager/{id}/commit", operation_id = "activity_commit", tag = "activity_manager", params(("id" = uuid::Uuid, Path, description = "The user task's id")), request_body = Object, responses((status = 200, description = "Saved", body = orq_shared::repo::human::HumanTask), crate::error::Refusals))]
pub async fn commit(
    State(state): State<AppState>,
    who: Authorized<Users>,
    Id(id): Id<UserTask>,
    Json(payload): Json<Value>,
) -> Result<axum::Json<HumanTask>, ApiError> {
    let task = state
        .in_transaction(async |tx| human::commit(tx, who.customer_id, id, payload).await)
        .await?;
    Ok(axum::Json(task))
}

/// `POST /activity_manager/{id}/submit` (user): commits the body, when
/// there is one, and closes the activity: `202`; `422` when it is no
/// longer open.
#[utoipa::path(post, path = "/activity_manager/{id}/submit", operation_id = "activity_submit", tag = "activity_manager", params(("id" = uuid::Uuid, Path, description = "The user task's id")), request_body = Object, responses((status = 202, description = "Submitted", body = orq_shared::repo::human::HumanTask), crate::error::Refusals))]
pub async fn submit(
    State(state): State<AppState>,
    who: Authorized<Users>,
    Id(id): Id<UserTask>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let payload = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        Some(
            serde_json::from_slice::<Value>(&body)
                .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?,
        )
    };
    let task = state
        .in_transaction(async |tx| human::submit(tx, who.customer_id, id, payload).await)
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(task)).into_response())
}

/// `POST /activity_manager/{id}/expire`: ends it now, as its timeout would
/// (submitted with `is_continue = true`). An admin ends any open activity;
/// a user (the role that opens them: the process) a `notify` one, which its
/// process ends when it ends; a user's `commit` one is 403.
#[utoipa::path(post, path = "/activity_manager/{id}/expire", operation_id = "activity_expire", tag = "activity_manager", params(("id" = uuid::Uuid, Path, description = "The user task's id")), responses((status = 200, description = "Expired", body = orq_shared::repo::human::HumanTask), crate::error::Refusals))]
pub async fn expire(
    State(state): State<AppState>,
    who: Authorized<Users>,
    Id(id): Id<UserTask>,
) -> Result<axum::Json<HumanTask>, ApiError> {
    let task = state
        .in_transaction(async |tx| human::expire(tx, who.customer_id, id, who.role).await)
        .await?;
    Ok(axum::Json(task))
}
