//! The proof of concept's `/tasks` CRUD: a view on jobs of kind `system`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use orq_shared::attachment;
use orq_shared::domain::{CustomerId, JobEvent, JobStatus, Role};
use orq_shared::repo::jobs::{self, Actor, Applied, NewTask, Outcome, Task, TaskFilter};
use orq_shared::repo::{RepoError, bots};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{PageQuery, optional_enum, paged, text_field};
use crate::auth::{Admins, Authorized, Users, UsersOrBots, ViewersOrBots};
use crate::error::{ApiError, Json, Query};
use crate::idempotency::{self, Caller, IdemKey, create_once};
use crate::ids::{CsvTask, Id};
use crate::service;
use crate::state::AppState;
use orq_shared::repo::customers::Principal;

/// These routes are the proof of concept's, over CSV jobs. A run of a task
/// definition is reached through `/{customer}/job/{id}`, where its task's
/// acls apply; here only a bot may read one (an agent re-checks its
/// assignments through `GET /tasks/{id}`), and nobody may change one.
fn csv_only(task: Task, who: &Principal, reading: bool) -> Result<Task, ApiError> {
    if task.kind == "system" || (reading && who.role == Role::Bot) {
        Ok(task)
    } else {
        Err(ApiError::not_found("task"))
    }
}

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
    Ok(axum::Json(csv_only(task, &who, true)?))
}

#[utoipa::path(get, path = "/tasks/{id}/events", operation_id = "tasks_events", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The task's id")), responses((status = 200, description = "Its events, oldest first", body = [orq_shared::repo::jobs::Event]), crate::error::Refusals))]
pub async fn events(
    State(state): State<AppState>,
    who: Authorized<ViewersOrBots>,
    Id(id): Id<CsvTask>,
) -> Result<axum::Json<Vec<jobs::Event>>, ApiError> {
    let db = state.db().await?;
    csv_only(jobs::get(&db, who.customer_id, id).await?, &who, true)?;
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

/// Checks a task definition; returns it with its row count.
async fn validate(
    state: &AppState,
    db: &impl deadpool_postgres::GenericClient,
    customer: CustomerId,
    description: &str,
    system: &str,
    attachment_b64: &str,
) -> Result<NewTask, ApiError> {
    let description = description.trim().to_string();
    if description.chars().count() > 2000 {
        return Err(ApiError::invalid_field(
            "description",
            "description must be at most 2000 characters",
        ));
    }
    let system = text_field("system", system, 200)?;
    let rows = attachment::parse(attachment_b64)
        .map_err(|e| ApiError::invalid_field("attachment", e.to_string()))?;
    let key = (customer, system.clone());
    let known = state.known_systems.contains_key(&key) || {
        let known = bots::system_known(db, customer, &system).await?;
        if known {
            state.known_systems.insert(key, ());
        }
        known
    };
    if !known {
        let mut e = ApiError::bad_request(
            "unknown_system",
            format!("no bot of this customer runs system {system:?}"),
        );
        e.details = serde_json::json!({ "field": "system" });
        return Err(e);
    }
    Ok(NewTask {
        description,
        system,
        attachment: attachment_b64.split_ascii_whitespace().collect(),
        rows_total: i32::try_from(rows.len()).unwrap_or(i32::MAX),
        callback_id: None,
    })
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
        let mut new = validate(
            &state,
            tx,
            who.customer_id,
            &body.description,
            &body.system,
            &body.attachment,
        )
        .await?;
        new.callback_id =
            service::webhooks::create_callback(&state, tx, who.customer_id, callback.as_ref())
                .await?;
        Ok(jobs::create(tx, who.customer_id, &new).await?)
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

/// The event that takes a job from `from` to the requested status.
fn event_for(from: JobStatus, to: JobStatus) -> Result<JobEvent, ApiError> {
    Ok(match to {
        JobStatus::Running => JobEvent::Start,
        JobStatus::Complete => JobEvent::Complete,
        JobStatus::Failed => JobEvent::Fail,
        JobStatus::Canceled => JobEvent::Cancel,
        JobStatus::Timeout => JobEvent::TimedOut,
        // Handing a job back: it waits for another bot.
        JobStatus::Waiting if from == JobStatus::Assigned => JobEvent::DeliveryFailed,
        JobStatus::Waiting => JobEvent::BotLost { retry: true },
        JobStatus::Assigned => {
            return Err(ApiError::invalid_field(
                "status",
                "ASSIGNED is set by the dispatcher only",
            ));
        }
    })
}

/// A `bot` token reports on the tasks of the bots it holds, by status:
/// it neither redefines a task nor touches another bot's.
async fn bot_may_update(
    db: &impl deadpool_postgres::GenericClient,
    who: &orq_shared::repo::customers::Principal,
    task: &Task,
    body: &UpdateBody,
) -> Result<(), ApiError> {
    let redefined = [
        ("description", body.description.is_some()),
        ("system", body.system.is_some()),
        ("attachment", body.attachment.is_some()),
    ];
    if let Some((field, _)) = redefined.iter().find(|(_, sent)| *sent) {
        return Err(ApiError::field_not_allowed(
            field,
            format!("a bot token may change only a task's status, not {field}"),
        ));
    }
    let holder = match task.bot_id {
        Some(bot) => bots::holder(db, who.customer_id, bot).await?,
        None => None,
    };
    if holder != Some(who.token_id) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_your_task",
            "this bot token holds no bot that this task is on",
        ));
    }
    Ok(())
}

#[utoipa::path(put, path = "/tasks/{id}", operation_id = "tasks_update", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The task's id")), request_body = UpdateBody, responses((status = 200, description = "OK", body = orq_shared::repo::jobs::Task), crate::error::Refusals))]
pub async fn update(
    State(state): State<AppState>,
    who: Authorized<UsersOrBots>,
    Id(id): Id<CsvTask>,
    Json(body): Json<UpdateBody>,
) -> Result<axum::Json<Task>, ApiError> {
    let status = body
        .status
        .as_deref()
        .map(str::parse::<JobStatus>)
        .transpose()
        .map_err(|e| ApiError::invalid_field("status", e.to_string()))?;
    let (task, released) = state
        .in_transaction(async |tx| {
            let current = csv_only(jobs::get(tx, who.customer_id, id).await?, &who, false)?;
            if who.role == Role::Bot {
                bot_may_update(tx, &who, &current, &body).await?;
            }
            let redefine =
                body.description.is_some() || body.system.is_some() || body.attachment.is_some();
            let new = if redefine {
                let attachment = body
                    .attachment
                    .as_deref()
                    .or(current.attachment.as_deref())
                    .unwrap_or_default();
                Some(
                    validate(
                        &state,
                        tx,
                        who.customer_id,
                        body.description.as_deref().unwrap_or(&current.description),
                        body.system.as_deref().unwrap_or(&current.system),
                        attachment,
                    )
                    .await?,
                )
            } else {
                None
            };
            let mut task = current;
            if let Some(new) = &new
                && (new.description != task.description
                    || new.system != task.system
                    || Some(&new.attachment) != task.attachment.as_ref())
            {
                task = jobs::update_definition(tx, who.customer_id, id, new).await?;
            }
            let mut released = false;
            if let Some(to) = status
                && to != task.status
            {
                let event = event_for(task.status, to)?;
                match jobs::transition(
                    tx,
                    who.customer_id,
                    id,
                    Actor::Api,
                    event,
                    &Outcome::default(),
                    Uuid::now_v7(),
                    time::OffsetDateTime::now_utc(),
                )
                .await?
                {
                    Applied::Done { from, task: t } => {
                        released = from.is_active() && !t.status.is_active();
                        task = *t;
                    }
                    Applied::Stale { .. } => {
                        return Err(RepoError::Conflict("task changed concurrently".into()).into());
                    }
                }
            }
            Ok::<_, ApiError>((task, released))
        })
        .await?;
    if released || task.status == JobStatus::Waiting {
        service::jobs::wake(&state, who.customer_id, Some(id));
    }
    Ok(axum::Json(task))
}

#[utoipa::path(post, path = "/tasks/{id}/cancel", operation_id = "tasks_cancel", tag = "tasks", params(("id" = uuid::Uuid, Path, description = "The task's id")), responses((status = 200, description = "Cancelled (or already finished)", body = orq_shared::repo::jobs::Task), crate::error::Refusals))]
pub async fn cancel(
    State(state): State<AppState>,
    who: Authorized<Users>,
    Id(id): Id<CsvTask>,
) -> Result<axum::Json<Task>, ApiError> {
    csv_only(
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
    csv_only(jobs::get(&db, who.customer_id, id).await?, &who, false)?;
    jobs::delete(&db, who.customer_id, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
