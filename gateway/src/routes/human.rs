//! Human tasks. The back office publishes micro-tasks and reads them
//! (`/{customer}/micro_task...`) and issues worker tokens
//! (`/{customer}/workers`); field workers reserve, start and finish them at
//! seed 000's paths (`/micro_task/...`).
//!
//! The finish path touches no database: the worker's signed token is
//! checked offline, the body's structure is checked, and the submission is
//! published to RabbitMQ and confirmed before the 202. Everything else is
//! checked against the execution by the dispatcher.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use orq_shared::broker::{BrokerError, KEY_FINISH};
use orq_shared::domain::HumanTaskId;
use orq_shared::human::{ActivityManager, Email, FinishBody, HumanKind, OnTimeout};
use orq_shared::messages::FinishSubmission;
use orq_shared::repo::customers;
use orq_shared::repo::human::{self, HumanFilter, HumanTask, NewHumanTask};
use orq_shared::repo::{jobs, notifications};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{PageQuery, optional_enum, paged, text_field};
use crate::auth::{Admins, Scoped, SignedWorker, Users, Viewers, Worker};
use crate::error::{ApiError, Json, Path, Query};
use crate::idempotency::{Caller, CreateRequest, IdemKey, create_once};
use crate::ids::Id;
use crate::service;
use crate::state::AppState;

/// A list of field errors as one 400.
fn field_errors(errors: Vec<orq_shared::human::FieldError>) -> ApiError {
    let mut e = ApiError::bad_request(
        "invalid_body",
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    );
    e.details = json!({ "errors": errors });
    e
}

/// `?sofier=`: the seed's worker e-mail. When given it must be the e-mail
/// the token is bound to (`auth::Worker` checks it).
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SofierQuery {
    pub sofier: Option<String>,
    /// Only tasks of this name (`task_info.name`).
    pub name: Option<String>,
}

/// The seed's response to `start`.
fn started(task: &HumanTask, execution: &human::Execution) -> Value {
    json!({
        "task_id": task.id,
        "execution_id": execution.id.to_string(),
        "task_flow": task.input.get("task_flow").cloned().unwrap_or_else(|| json!([])),
        "variables": task.input.get("variables").cloned().unwrap_or_else(|| json!({})),
        "task_info": { "name": task.action, "version": task.version },
    })
}

/// `POST /micro_task/execution/{task_id}/start?sofier=`: RESERVED ->
/// EXECUTING for the worker holding the reservation; a second start
/// returns the same execution.
#[utoipa::path(post, path = "/micro_task/execution/{id}/start", operation_id = "human_start", tag = "micro_task", params(("id" = uuid::Uuid, Path, description = "The micro-task's id"), super::SofierParam), responses((status = 200, description = "The execution: the seed's five fields", body = Object), crate::error::Refusals))]
pub async fn start(
    State(state): State<AppState>,
    Worker { who, email }: Worker,
    Id(id): Id<HumanTaskId>,
) -> Result<axum::Json<Value>, ApiError> {
    let (task, execution) = state
        .in_transaction(async |tx| human::start(tx, who.customer_id, &email, id).await)
        .await?;
    Ok(axum::Json(started(&task, &execution)))
}

/// Largest finish body: answers and photo URLs fit easily, and a batch of
/// them stays far below what one database statement may carry.
pub const MAX_FINISH_BYTES: usize = 1 << 20;

/// `POST /micro_task/execution/{task_id}/finish?sofier=`: 202 once the
/// broker confirmed the submission; no database on this path.
#[utoipa::path(post, path = "/micro_task/execution/{id}/finish", operation_id = "human_finish", tag = "micro_task", params(("id" = uuid::Uuid, Path, description = "The micro-task's id"), super::SofierParam), request_body = Object, responses((status = 202, description = "Accepted; processed asynchronously", body = Object), crate::error::Refusals))]
pub async fn finish(
    State(state): State<AppState>,
    SignedWorker(claims): SignedWorker,
    Id(HumanTaskId(task_id)): Id<HumanTaskId>,
    Json(body): Json<Value>,
) -> Result<Response, ApiError> {
    FinishBody::parse(&body, task_id, &claims.email).map_err(field_errors)?;
    let submission = FinishSubmission {
        id: Uuid::now_v7(),
        customer_id: claims.customer,
        token_id: claims.token_id,
        worker: claims.email,
        task_id,
        received_at: time::OffsetDateTime::now_utc(),
        body,
    };
    match state
        .broker
        .publish_json(KEY_FINISH, submission.id, &submission)
        .await
    {
        Ok(()) => {
            metrics::counter!("orq_finishes_accepted_total").increment(1);
            Ok((
                StatusCode::ACCEPTED,
                axum::Json(json!({ "status": "ACCEPTED", "submission_id": submission.id })),
            )
                .into_response())
        }
        Err(e) => {
            tracing::warn!(error = %e, "finish not accepted");
            Err(ApiError::unavailable(match e {
                BrokerError::NotConnected => "the message broker is unavailable; retry shortly",
                _ => "the message broker did not take the submission; retry shortly",
            }))
        }
    }
}

/// `GET /micro_task/available?name=`: NEW micro-tasks, oldest first.
#[utoipa::path(get, path = "/micro_task/available", operation_id = "human_available", tag = "micro_task", params(SofierQuery, ("limit" = Option<i64>, Query, description = "At most this many (1-1000, default 100)")), responses((status = 200, description = "NEW tasks, oldest first", body = [orq_shared::repo::human::HumanTask]), crate::error::Refusals))]
pub async fn available(
    State(state): State<AppState>,
    Worker { who, .. }: Worker,
    Query(q): Query<SofierQuery>,
    Query(paging): Query<PageQuery>,
) -> Result<axum::Json<Vec<HumanTask>>, ApiError> {
    let page = paging.page()?;
    let db = state.db().await?;
    Ok(axum::Json(
        human::available(&db, who.customer_id, q.name.as_deref(), page.limit).await?,
    ))
}

/// `GET /micro_task/mine`: what the worker holds (RESERVED or EXECUTING),
/// with deadlines.
#[utoipa::path(get, path = "/micro_task/mine", operation_id = "human_mine", tag = "micro_task", params(super::SofierParam), responses((status = 200, description = "The tasks this worker holds", body = [orq_shared::repo::human::HumanTask]), crate::error::Refusals))]
pub async fn mine(
    State(state): State<AppState>,
    Worker { who, email }: Worker,
) -> Result<axum::Json<Vec<HumanTask>>, ApiError> {
    let db = state.db().await?;
    let filter = HumanFilter {
        worker: Some(email),
        kind: Some(HumanKind::MicroTask),
        held: true,
        ..HumanFilter::default()
    };
    let page = orq_shared::repo::Page {
        limit: super::MAX_LIMIT,
        after: None,
        newest_first: false,
    };
    Ok(axum::Json(
        human::list(&db, who.customer_id, &filter, page).await?,
    ))
}

async fn do_reserve(
    state: &AppState,
    worker: &Worker,
    id: Option<HumanTaskId>,
    name: Option<&str>,
) -> Result<axum::Json<HumanTask>, ApiError> {
    let limits = &state.settings.human;
    let task = state
        .in_transaction(async |tx| {
            human::reserve(
                tx,
                worker.who.customer_id,
                &worker.email,
                id,
                name,
                limits.reservation_ms,
                limits.max_reservations,
            )
            .await
        })
        .await?;
    Ok(axum::Json(task))
}

/// `POST /micro_task/reserve?name=`: reserves the oldest NEW micro-task.
#[utoipa::path(post, path = "/micro_task/reserve", operation_id = "human_reserve_next", tag = "micro_task", params(SofierQuery), responses((status = 200, description = "Reserved", body = orq_shared::repo::human::HumanTask), crate::error::Refusals))]
pub async fn reserve_next(
    State(state): State<AppState>,
    worker: Worker,
    Query(q): Query<SofierQuery>,
) -> Result<axum::Json<HumanTask>, ApiError> {
    do_reserve(&state, &worker, None, q.name.as_deref()).await
}

/// `POST /micro_task/{task_id}/reserve`.
#[utoipa::path(post, path = "/micro_task/{id}/reserve", operation_id = "human_reserve", tag = "micro_task", params(("id" = uuid::Uuid, Path, description = "The micro-task's id"), super::SofierParam), responses((status = 200, description = "Reserved", body = orq_shared::repo::human::HumanTask), crate::error::Refusals))]
pub async fn reserve(
    State(state): State<AppState>,
    worker: Worker,
    Id(id): Id<HumanTaskId>,
) -> Result<axum::Json<HumanTask>, ApiError> {
    do_reserve(&state, &worker, Some(id), None).await
}

/// `POST /micro_task/{task_id}/release`: gives it back (NEW).
#[utoipa::path(post, path = "/micro_task/{id}/release", operation_id = "human_release", tag = "micro_task", params(("id" = uuid::Uuid, Path, description = "The micro-task's id"), super::SofierParam), responses((status = 200, description = "NEW again", body = orq_shared::repo::human::HumanTask), crate::error::Refusals))]
pub async fn release(
    State(state): State<AppState>,
    Worker { who, email }: Worker,
    Id(id): Id<HumanTaskId>,
) -> Result<axum::Json<HumanTask>, ApiError> {
    let task = state
        .in_transaction(async |tx| human::release(tx, who.customer_id, &email, id).await)
        .await?;
    Ok(axum::Json(task))
}

/// A micro-task as the back office publishes it.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MicroTaskBody {
    /// `task_info.name`.
    name: String,
    #[serde(default)]
    version: Option<i32>,
    /// The steps the app walks the worker through.
    task_flow: Vec<Value>,
    #[serde(default)]
    variables: Option<serde_json::Map<String, Value>>,
    /// A JSON Schema the finish body must fit, or it is REJECTED.
    #[serde(default)]
    activity_schema: Option<Value>,
    /// A JSON Schema the accepted result must fit, or the task is in ERROR.
    #[serde(default)]
    result_schema: Option<Value>,
    /// Seconds a started execution may take (default: `human.execution_ms`).
    #[serde(default)]
    execution_timeout: Option<i64>,
    /// `{url, user?, password?}`: where the task's events are delivered.
    #[serde(default)]
    callback: Option<Value>,
}

/// `POST /{customer}/micro_task`: publishes a micro-task (NEW).
#[utoipa::path(post, path = "/{customer}/micro_task", operation_id = "human_create", tag = "micro_task", params(super::CustomerPath, super::IdempotencyHeader), request_body = MicroTaskBody, responses((status = 201, description = "Published (NEW)", body = orq_shared::repo::human::HumanTask), crate::error::Refusals))]
pub async fn create(
    State(state): State<AppState>,
    who: Scoped<Users>,
    key: IdemKey,
    Json(body): Json<MicroTaskBody>,
) -> Result<Response, ApiError> {
    let request = CreateRequest::of("micro_tasks.create", &[], &body);
    let name = text_field("name", &body.name, 200)?;
    let version = body.version.unwrap_or(1);
    if version < 1 {
        return Err(ApiError::invalid_field(
            "version",
            "version must be 1 or more",
        ));
    }
    let execution_ms = match body.execution_timeout {
        None => i64::try_from(state.settings.human.execution_ms).unwrap_or(i64::MAX),
        Some(s) if (1..=7 * 24 * 3600).contains(&s) => s * 1000,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "execution_timeout",
                "execution_timeout must be between 1 second and a week",
            ));
        }
    };
    let new = NewHumanTask {
        customer: who.customer_id,
        kind: HumanKind::MicroTask,
        action: name,
        version,
        input: json!({
            "task_flow": body.task_flow,
            "variables": body.variables.unwrap_or_default(),
        }),
        activity_schema: service::human::schema_field("activity_schema", body.activity_schema)?,
        result_schema: service::human::schema_field("result_schema", body.result_schema)?,
        activity_manager: ActivityManager::Commit,
        on_timeout: OnTimeout::Requeue,
        execution_ms,
        expires_at: None,
        events: json!([]),
        timers: Vec::new(),
        callback_id: None,
    };
    let created = create_once(&state, &Caller::token(&who), &key, request, async |tx| {
        Ok(service::human::create(&state, tx, new, body.callback.as_ref()).await?)
    })
    .await?;
    Ok(created.respond())
}

/// `?status=` of the human-task lists.
#[derive(Debug, Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    status: Option<String>,
    name: Option<String>,
    worker: Option<String>,
}

/// `GET /{customer}/micro_task?status=&name=&worker=`.
#[utoipa::path(get, path = "/{customer}/micro_task", operation_id = "human_list", tag = "micro_task", params(super::CustomerPath, ListQuery, super::PageQuery), responses((status = 200, description = "A page of micro-tasks", body = [orq_shared::repo::human::HumanTask], headers(("x-next-cursor" = String, description = "Present when there may be more: pass it back as `?after=`"))), crate::error::Refusals))]
pub async fn list(
    State(state): State<AppState>,
    who: Scoped<Viewers>,
    Query(q): Query<ListQuery>,
    Query(paging): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = paging.page()?;
    let filter = HumanFilter {
        kind: Some(HumanKind::MicroTask),
        status: optional_enum("status", q.status.as_deref())?,
        action: q.name,
        worker: q.worker.map(|w| w.trim().to_ascii_lowercase()),
        held: false,
    };
    let db = state.db().await?;
    let tasks = human::list(&db, who.customer_id, &filter, page).await?;
    let last = tasks.last().map(|t| t.id.to_string());
    Ok(paged(tasks, page, last))
}

/// `GET /{customer}/micro_task/{id}`: the task with its executions, the
/// submissions received for it (applied, rejected and why, duplicates) and
/// the notifications sent about them.
#[utoipa::path(get, path = "/{customer}/micro_task/{id}", operation_id = "human_get", tag = "micro_task", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The micro-task's id")), responses((status = 200, description = "The task with its executions, submissions and notifications", body = Object), crate::error::Refusals))]
pub async fn get(
    State(state): State<AppState>,
    who: Scoped<Viewers>,
    Id(id): Id<HumanTaskId>,
) -> Result<axum::Json<Value>, ApiError> {
    let db = state.db().await?;
    let task = human::get(&db, who.customer_id, id).await?;
    let executions = human::executions(&db, id).await?;
    let submissions = human::submissions(&db, who.customer_id, id).await?;
    let notified = notifications::for_task(&db, who.customer_id, id).await?;
    let mut view = serde_json::to_value(&task).unwrap_or_default();
    view["executions"] = json!(executions);
    view["submissions"] = json!(submissions);
    view["notifications"] = json!(notified);
    Ok(axum::Json(view))
}

/// `GET /{customer}/micro_task/{id}/events`.
#[utoipa::path(get, path = "/{customer}/micro_task/{id}/events", operation_id = "human_events", tag = "micro_task", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The micro-task's id")), responses((status = 200, description = "OK", body = [orq_shared::repo::jobs::Event]), crate::error::Refusals))]
pub async fn events(
    State(state): State<AppState>,
    who: Scoped<Viewers>,
    Id(id): Id<HumanTaskId>,
) -> Result<axum::Json<Vec<jobs::Event>>, ApiError> {
    let db = state.db().await?;
    human::get(&db, who.customer_id, id).await?;
    Ok(axum::Json(
        jobs::events(&db, who.customer_id, id.into()).await?,
    ))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkerBody {
    email: String,
    /// For SMS notifications.
    #[serde(default)]
    phone: Option<String>,
    /// The app's device token, for push notifications.
    #[serde(default)]
    push_token: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactsBody {
    #[serde(default)]
    phone: Option<String>,
    #[serde(default)]
    push_token: Option<String>,
}

/// A phone number or device token, checked to be plausible.
fn contact(field: &str, value: Option<&str>) -> Result<Option<String>, ApiError> {
    value.map(|v| text_field(field, v, 500)).transpose()
}

/// `PUT /micro_task/me`: the worker's own phone and device token, for
/// notifications.
#[utoipa::path(put, path = "/micro_task/me", operation_id = "human_set_contacts", tag = "micro_task", params(super::SofierParam), request_body = ContactsBody, responses((status = 200, description = "The stored contacts", body = Object), crate::error::Refusals))]
pub async fn set_contacts(
    State(state): State<AppState>,
    Worker { who, email }: Worker,
    Json(body): Json<ContactsBody>,
) -> Result<axum::Json<Value>, ApiError> {
    let phone = contact("phone", body.phone.as_deref())?;
    let push = contact("push_token", body.push_token.as_deref())?;
    let db = state.db().await?;
    notifications::set_contacts(
        &db,
        who.customer_id,
        &email,
        phone.as_deref(),
        push.as_deref(),
    )
    .await?;
    Ok(axum::Json(
        json!({ "email": email, "phone": phone.is_some(), "push_token": push.is_some() }),
    ))
}

/// `POST /{customer}/workers` (admin): a token for a field worker, bound
/// to their e-mail, shown this once.
#[utoipa::path(post, path = "/{customer}/workers", operation_id = "human_create_worker", tag = "micro_task", params(super::CustomerPath, super::IdempotencyHeader), request_body = WorkerBody, responses((status = 201, description = "The worker's token, shown once", body = Object), crate::error::Refusals))]
pub async fn create_worker(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    key: IdemKey,
    Json(body): Json<WorkerBody>,
) -> Result<Response, ApiError> {
    let request = CreateRequest::of("workers.create", &[], &body);
    let email = Email::parse(&body.email).map_err(|e| ApiError::invalid_field("email", e))?;
    let phone = contact("phone", body.phone.as_deref())?;
    let push = contact("push_token", body.push_token.as_deref())?;
    // The answer holds the token: the key's copy of it is stored sealed
    // (see `repo::idempotency`), and only this caller's token replays it.
    let created = create_once(&state, &Caller::token(&who), &key, request, async |tx| {
        let (id, token) =
            customers::issue_worker_token(tx, who.customer_id, &email, &state.worker_tokens)
                .await?;
        notifications::set_contacts(
            tx,
            who.customer_id,
            &email,
            phone.as_deref(),
            push.as_deref(),
        )
        .await?;
        Ok(json!({ "id": id, "email": email, "role": "worker", "access_token": token }))
    })
    .await?;
    Ok(created.respond())
}

/// The `{email}` of a worker's path.
#[derive(Deserialize)]
pub struct WorkerPath {
    email: String,
}

/// `DELETE /{customer}/workers/{email}` (admin): revokes the worker's
/// tokens. Their finishes still in the queue are then rejected.
#[utoipa::path(delete, path = "/{customer}/workers/{email}", operation_id = "human_revoke_worker", tag = "micro_task", params(super::CustomerPath, ("email" = String, Path, description = "The worker's e-mail")), responses((status = 200, description = "Revoked", body = Object), crate::error::Refusals))]
pub async fn revoke_worker(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    Path(WorkerPath { email }): Path<WorkerPath>,
) -> Result<axum::Json<Value>, ApiError> {
    let email = Email::parse(&email).map_err(|e| ApiError::invalid_field("email", e))?;
    let db = state.db().await?;
    let revoked = customers::revoke_worker(&db, who.customer_id, &email).await?;
    if revoked == 0 {
        return Err(ApiError::not_found("worker"));
    }
    state.principals.invalidate_all();
    Ok(axum::Json(json!({ "email": email, "revoked": revoked })))
}
