//! Runs of task definitions (TheEye's jobs): created four ways — with a
//! token (`POST /{customer}/task/{id}/job`, `POST /job?customer=&task=`) or a
//! task's secret key (`POST /{customer}/task/{id}/secret/{key}/job`, `POST
//! /job/secret/{key}` with `customer` and `task` in a JSON or form body) —
//! then read, listed, canceled, and emptied from a task's queue.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::Response;
use orq_shared::domain::{BotId, CustomerId, JobId, JobStatus, TaskId};
use orq_shared::repo::customers::{self, Principal};
use orq_shared::repo::jobs;
use orq_shared::repo::script_jobs::{self, JobFilter, JobView};
use orq_shared::repo::task_defs::{self, Reader};
use orq_shared::secret;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{LabelQuery, PageQuery, paged, reader};
use crate::auth::{Admins, Auth, Scoped, Users, Viewers};
use crate::error::{ApiError, Path, Query};
use crate::idempotency::{Caller, CreateRequest, IdemKey, create_once};
use crate::ids::Id;
use crate::service;
use crate::state::AppState;

/// What a run request carries, from a JSON object or a form
/// (`task_arguments[]=a&task_arguments[]=b`, as TheEye's HTML form example).
#[derive(Debug, Default)]
pub struct JobInput {
    customer: Option<String>,
    task: Option<String>,
    task_arguments: Vec<Value>,
    /// `{url, user?, password?}` (JSON bodies only): where this job's
    /// events are delivered, instead of its task's callback.
    callback: Option<Value>,
}

/// The body of a run request, as the OpenAPI document shows it: a JSON
/// object, or the same fields as a form.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct JobRequestDoc {
    /// The customer's name (on `POST /job`, when not in the query).
    customer: Option<String>,
    /// The task's id (on `POST /job`, when not in the query).
    task: Option<String>,
    /// The script's arguments, in order.
    #[schema(value_type = Vec<Object>)]
    task_arguments: Vec<Value>,
    /// Where this job's events go, instead of its task's callback.
    callback: Option<service::webhooks::SubscriptionBody>,
}

impl<S: Send + Sync> FromRequest<S> for JobInput {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        let body = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    "the request body is larger than the configured limit",
                )
            } else {
                ApiError::bad_request("invalid_body", e.body_text())
            }
        })?;
        parse_job_input(&content_type, &body)
    }
}

/// A body that is not JSON but reads like a form: TheEye's curl example
/// posts `--data-urlencode` fields under a JSON content type.
fn looks_like_form(text: &str) -> bool {
    let t = text.trim_start();
    !t.starts_with('{') && !t.starts_with('[') && t.contains('=')
}

pub fn parse_job_input(content_type: &str, body: &[u8]) -> Result<JobInput, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("invalid_body", "the body is not UTF-8"))?;
    if text.trim().is_empty() {
        return Ok(JobInput::default());
    }
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => return from_json(map),
            Ok(_) => {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    "expected a JSON object such as {\"task_arguments\": []}",
                ));
            }
            Err(_) if looks_like_form(text) => {}
            Err(e) => return Err(ApiError::bad_request("invalid_json", e.to_string())),
        }
    }
    from_form(text)
}

fn from_json(map: serde_json::Map<String, Value>) -> Result<JobInput, ApiError> {
    let text = |field: &str| -> Result<Option<String>, ApiError> {
        match map.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
            Some(_) => Err(ApiError::invalid_field(
                field,
                format!("{field} must be a string"),
            )),
        }
    };
    let task_arguments = match map.get("task_arguments") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "task_arguments",
                "task_arguments must be an array of values, in order",
            ));
        }
    };
    Ok(JobInput {
        customer: text("customer")?,
        task: text("task")?,
        task_arguments,
        callback: map.get("callback").filter(|c| !c.is_null()).cloned(),
    })
}

fn from_form(text: &str) -> Result<JobInput, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(text)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("not a form: {e}")))?;
    let mut input = JobInput::default();
    for (key, value) in pairs {
        match key.trim() {
            "customer" => input.customer = Some(value.trim().to_string()),
            "task" => input.task = Some(value.trim().to_string()),
            "task_arguments" | "task_arguments[]" => {
                input.task_arguments.push(Value::String(value))
            }
            _ => {}
        }
    }
    Ok(input)
}

/// Creates a run of `task`; the caller has been authorized for it. With an
/// idempotency key used before by this caller for the same run (task,
/// arguments, callback), the first answer comes back instead, whichever of
/// the four run routes either request came through.
async fn run(
    state: &AppState,
    caller: Caller,
    reader: Reader<'_>,
    task: TaskId,
    input: &JobInput,
    key: &IdemKey,
) -> Result<Response, ApiError> {
    let customer = caller.customer;
    let callback = service::webhooks::parse_callback(state, input.callback.as_ref())?;
    let task_param = task.to_string();
    let params = [task_param.as_str()];
    let request = CreateRequest {
        operation: "jobs.create",
        params: &params,
        body: json!({ "task_arguments": input.task_arguments, "callback": input.callback }),
    };
    let created = create_once(state, &caller, key, request, async |tx| {
        let def = task_defs::get_runnable(tx, customer, task, reader).await?;
        let mut new = script_jobs::new_run(&def, &input.task_arguments)?;
        if callback.is_some() {
            // Its own callback instead of its task's.
            new.callback_id =
                service::webhooks::create_callback(state, tx, customer, callback.as_ref()).await?;
        }
        Ok(script_jobs::create(tx, customer, &new).await?.0)
    })
    .await?;
    if let Some(job) = created.fresh() {
        service::jobs::wake(state, customer, Some(job.id));
    }
    Ok(created.respond())
}

/// A task id given in the query or the body: one that does not parse is
/// a 404, as in a path.
fn task_id(raw: &str) -> Result<TaskId, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found("task"))
}

/// `POST /{customer}/task/{id}/job` (role user).
#[utoipa::path(post, path = "/{customer}/task/{id}/job", operation_id = "jobs_create", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The task's id"), super::IdempotencyHeader), request_body(content((JobRequestDoc = "application/json"), (JobRequestDoc = "application/x-www-form-urlencoded")), description = "A JSON object, or the same fields as a form (`task_arguments[]` repeated)"), responses((status = 201, description = "Created (also the answer to a repeat with the same Idempotency-Key, with `idempotent-replayed: true`)", body = orq_shared::repo::script_jobs::JobView), crate::error::Refusals))]
pub async fn create(
    State(state): State<AppState>,
    who: Scoped<Users>,
    key: IdemKey,
    Id(task): Id<TaskId>,
    input: JobInput,
) -> Result<Response, ApiError> {
    run(
        &state,
        Caller::token(&who),
        reader(&who),
        task,
        &input,
        &key,
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TargetQuery {
    customer: Option<String>,
    task: Option<String>,
}

/// `POST /job?access_token=…&customer=…&task=…` (role user); `customer`
/// and `task` may come in the body instead.
#[utoipa::path(post, path = "/job", operation_id = "jobs_create_by_query", tag = "theeye", params(TargetQuery, super::IdempotencyHeader), request_body(content((JobRequestDoc = "application/json"), (JobRequestDoc = "application/x-www-form-urlencoded")), description = "A JSON object, or the same fields as a form (`task_arguments[]` repeated)"), responses((status = 201, description = "Created (also the answer to a repeat with the same Idempotency-Key, with `idempotent-replayed: true`)", body = orq_shared::repo::script_jobs::JobView), crate::error::Refusals))]
pub async fn create_by_query(
    State(state): State<AppState>,
    auth: Auth,
    Query(q): Query<TargetQuery>,
    key: IdemKey,
    input: JobInput,
) -> Result<Response, ApiError> {
    let customer = required("customer", q.customer.or(input.customer.clone()))?;
    let who = Scoped::<Users>::check(auth, &customer)?;
    let task = task_id(&required("task", q.task.or(input.task.clone()))?)?;
    run(
        &state,
        Caller::token(&who),
        reader(&who),
        task,
        &input,
        &key,
    )
    .await
}

fn required(field: &str, value: Option<String>) -> Result<String, ApiError> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
        _ => {
            let mut e = ApiError::bad_request(
                "missing_field",
                format!("{field} is required (in the query string or the body)"),
            );
            e.details = json!({ "field": field });
            Err(e)
        }
    }
}

/// Checks a presented secret key against the task's, in constant time.
async fn authorize_secret(
    state: &AppState,
    customer: &str,
    task: TaskId,
    key: &str,
) -> Result<CustomerId, ApiError> {
    let db = state.db().await?;
    let customer = customers::id_by_name(&db, customer).await?;
    let stored = task_defs::secret_hash(&db, customer, task).await?;
    if !secret::well_formed(key) || !secret::matches(key, &stored) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_secret",
            "the secret key does not open this task",
        ));
    }
    Ok(customer)
}

/// `{customer}` and `{key}` of a run by secret key.
#[derive(Deserialize)]
pub struct SecretPath {
    customer: String,
    key: String,
}

/// `POST /{customer}/task/{id}/secret/{key}/job` (no token: the key is the
/// credential, and runs this task only).
#[utoipa::path(post, path = "/{customer}/task/{id}/secret/{key}/job", operation_id = "jobs_create_with_secret", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The task's id"), ("key" = String, Path, description = "The task's secret key"), super::IdempotencyHeader), request_body(content((JobRequestDoc = "application/json"), (JobRequestDoc = "application/x-www-form-urlencoded")), description = "A JSON object, or the same fields as a form (`task_arguments[]` repeated)"), security(()), responses((status = 201, description = "Created (also the answer to a repeat with the same Idempotency-Key, with `idempotent-replayed: true`)", body = orq_shared::repo::script_jobs::JobView), crate::error::Refusals))]
pub async fn create_with_secret(
    State(state): State<AppState>,
    Path(SecretPath {
        customer,
        key: secret,
    }): Path<SecretPath>,
    Id(task): Id<TaskId>,
    key: IdemKey,
    input: JobInput,
) -> Result<Response, ApiError> {
    let customer = authorize_secret(&state, &customer, task, &secret).await?;
    let caller = Caller::secret(customer, task);
    run(&state, caller, Reader::Admin, task, &input, &key).await
}

/// `POST /job/secret/{key}` with `customer` and `task` in the body (JSON or
/// a form, as TheEye's examples 4 and 5 send them).
#[utoipa::path(post, path = "/job/secret/{key}", operation_id = "jobs_create_with_secret_body", tag = "theeye", params(("key" = String, Path, description = "The task's secret key"), TargetQuery, super::IdempotencyHeader), request_body(content((JobRequestDoc = "application/json"), (JobRequestDoc = "application/x-www-form-urlencoded")), description = "A JSON object, or the same fields as a form (`task_arguments[]` repeated)"), security(()), responses((status = 201, description = "Created (also the answer to a repeat with the same Idempotency-Key, with `idempotent-replayed: true`)", body = orq_shared::repo::script_jobs::JobView), crate::error::Refusals))]
pub async fn create_with_secret_body(
    State(state): State<AppState>,
    Path(secret): Path<String>,
    Query(q): Query<TargetQuery>,
    key: IdemKey,
    input: JobInput,
) -> Result<Response, ApiError> {
    let customer = required("customer", input.customer.clone().or(q.customer))?;
    let task = task_id(&required("task", input.task.clone().or(q.task))?)?;
    let customer = authorize_secret(&state, &customer, task, &secret).await?;
    let caller = Caller::secret(customer, task);
    run(&state, caller, Reader::Admin, task, &input, &key).await
}

/// The status filters `statuses` reads, as the OpenAPI document shows them.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct StatusFilter {
    /// Job states, comma-separated: `WAITING,RUNNING`.
    status: Option<String>,
    /// TheEye's lifecycles (ready, onhold, assigned, finished, expired,
    /// canceled); repeat it for several. `lifecycle` works too.
    #[param(rename = "lifecycle[]")]
    lifecycle: Option<Vec<String>>,
}

/// `?status=WAITING,RUNNING` and/or TheEye's `?lifecycle[]=ready`.
fn statuses(raw_query: Option<&str>) -> Result<Vec<JobStatus>, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw_query.unwrap_or_default())
        .map_err(|e| ApiError::bad_request("invalid_query", e.to_string()))?;
    let mut out: Vec<JobStatus> = Vec::new();
    for (key, value) in pairs {
        match key.as_str() {
            "status" => {
                for s in value.split(',').filter(|s| !s.is_empty()) {
                    out.push(
                        s.trim()
                            .parse()
                            .map_err(|e: orq_shared::domain::UnknownValue| {
                                ApiError::invalid_field("status", e.to_string())
                            })?,
                    );
                }
            }
            "lifecycle" | "lifecycle[]" => {
                let found = JobStatus::from_lifecycle(value.trim()).ok_or_else(|| {
                    ApiError::invalid_field(
                        "lifecycle",
                        format!(
                            "unknown lifecycle {value:?}; one of ready, onhold, assigned, finished, expired, canceled"
                        ),
                    )
                })?;
                out.extend_from_slice(found);
            }
            _ => {}
        }
    }
    out.sort_by_key(|s| s.as_str());
    out.dedup();
    Ok(out)
}

/// Hides a job whose task's acls (as they were when the job was created)
/// leave the caller out.
fn visible(who: &Principal, job: JobView) -> Result<JobView, ApiError> {
    if script_jobs::visible_to(&job.acls, reader(who)) {
        Ok(job)
    } else {
        Err(ApiError::not_found("job"))
    }
}

/// `GET /{customer}/task/{id}/job?status=&lifecycle[]=`: the task's jobs.
#[utoipa::path(get, path = "/{customer}/task/{id}/job", operation_id = "jobs_list_for_task", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The task's id"), StatusFilter, super::PageQuery), responses((status = 200, description = "A page of its jobs", body = [orq_shared::repo::script_jobs::JobView], headers(("x-next-cursor" = String, description = "Present when there may be more: pass it back as `?after=`"))), crate::error::Refusals))]
pub async fn list_for_task(
    State(state): State<AppState>,
    who: Scoped<Viewers>,
    Query(paging): Query<PageQuery>,
    uri: axum::http::Uri,
    Id(task): Id<TaskId>,
) -> Result<Response, ApiError> {
    list_jobs(&state, &who, Some(task), Vec::new(), None, &paging, &uri).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct JobListQuery {
    /// Runs of this task definition.
    task: Option<String>,
    /// Jobs on this bot (now, or last).
    bot_id: Option<String>,
}

/// `GET /{customer}/job?task=&bot_id=&tags=&status=&lifecycle[]=`.
#[utoipa::path(get, path = "/{customer}/job", operation_id = "jobs_list", tag = "theeye", params(super::CustomerPath, JobListQuery, super::LabelQuery, StatusFilter, super::PageQuery), responses((status = 200, description = "A page of jobs", body = [orq_shared::repo::script_jobs::JobView], headers(("x-next-cursor" = String, description = "Present when there may be more: pass it back as `?after=`"))), crate::error::Refusals))]
pub async fn list(
    State(state): State<AppState>,
    who: Scoped<Viewers>,
    Query(q): Query<JobListQuery>,
    Query(labels): Query<LabelQuery>,
    Query(paging): Query<PageQuery>,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    let labels = labels.labels()?;
    let task = q
        .task
        .map(|t| {
            t.parse::<TaskId>()
                .map_err(|_| ApiError::invalid_field("task", "task must be a task id"))
        })
        .transpose()?;
    let bot = q
        .bot_id
        .map(|b| {
            b.parse::<BotId>()
                .map_err(|_| ApiError::invalid_field("bot_id", "bot_id must be a bot id"))
        })
        .transpose()?;
    list_jobs(&state, &who, task, labels, bot, &paging, &uri).await
}

/// A page of the jobs `who` may see, of one task (which `who` must see) or
/// all, filtered by `?status=`/`?lifecycle[]=`, their task's labels and the
/// bot they are on.
async fn list_jobs(
    state: &AppState,
    who: &Principal,
    task: Option<TaskId>,
    labels: Vec<String>,
    bot: Option<BotId>,
    paging: &PageQuery,
    uri: &axum::http::Uri,
) -> Result<Response, ApiError> {
    let page = paging.page()?;
    let filter = JobFilter {
        task,
        bot,
        statuses: statuses(uri.query())?,
        labels,
    };
    let db = state.db().await?;
    if let Some(task) = task {
        task_defs::get(&db, who.customer_id, task, reader(who)).await?;
    }
    let items = script_jobs::list(&db, who.customer_id, &filter, reader(who), page).await?;
    let last = items.last().map(|j| j.id.to_string());
    Ok(paged(items, page, last))
}

#[utoipa::path(get, path = "/{customer}/job/{id}", operation_id = "jobs_get", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The job's id")), responses((status = 200, description = "OK", body = orq_shared::repo::script_jobs::JobView), crate::error::Refusals))]
pub async fn get(
    State(state): State<AppState>,
    who: Scoped<Viewers>,
    Id(id): Id<JobId>,
) -> Result<axum::Json<JobView>, ApiError> {
    let db = state.db().await?;
    let job = script_jobs::get(&db, who.customer_id, id).await?;
    Ok(axum::Json(visible(&who, job)?))
}

/// The job's history: every status change, percent, step, error, warning.
#[utoipa::path(get, path = "/{customer}/job/{id}/events", operation_id = "jobs_events", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The job's id")), responses((status = 200, description = "OK", body = [orq_shared::repo::jobs::Event]), crate::error::Refusals))]
pub async fn events(
    State(state): State<AppState>,
    who: Scoped<Viewers>,
    Id(id): Id<JobId>,
) -> Result<axum::Json<Vec<jobs::Event>>, ApiError> {
    let db = state.db().await?;
    visible(&who, script_jobs::get(&db, who.customer_id, id).await?)?;
    Ok(axum::Json(jobs::events(&db, who.customer_id, id).await?))
}

/// Cancels a job; a running one is stopped on its bot (SIGTERM, then
/// SIGKILL, to its whole process group).
#[utoipa::path(post, path = "/{customer}/job/{id}/cancel", operation_id = "jobs_cancel", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The job's id")), responses((status = 200, description = "Cancelled (or already finished)", body = orq_shared::repo::script_jobs::JobView), crate::error::Refusals))]
pub async fn cancel(
    State(state): State<AppState>,
    who: Scoped<Users>,
    Id(id): Id<JobId>,
) -> Result<axum::Json<JobView>, ApiError> {
    let db = state.db().await?;
    visible(&who, script_jobs::get(&db, who.customer_id, id).await?)?;
    service::jobs::cancel(&state, who.customer_id, id).await?;
    Ok(axum::Json(
        script_jobs::get(&db, who.customer_id, id).await?,
    ))
}

/// The same as `POST …/cancel`: TheEye's clients use `PUT`.
#[utoipa::path(put, path = "/{customer}/job/{id}/cancel", operation_id = "jobs_cancel_put", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The job's id")), responses((status = 200, description = "Cancelled (or already finished)", body = orq_shared::repo::script_jobs::JobView), crate::error::Refusals))]
pub async fn cancel_put(
    state: State<AppState>,
    who: Scoped<Users>,
    id: Id<JobId>,
) -> Result<axum::Json<JobView>, ApiError> {
    cancel(state, who, id).await
}

/// `DELETE /{customer}/task/{id}/job`: empties the task's queue. By default
/// the finished history (COMPLETE, FAILED, TIMEOUT, CANCELED) goes; waiting
/// jobs only when asked (`?lifecycle[]=ready` or `?status=WAITING`). Jobs
/// holding a bot are never removed: cancel them.
#[utoipa::path(delete, path = "/{customer}/task/{id}/job", operation_id = "jobs_empty_queue", tag = "theeye", params(super::CustomerPath, ("id" = uuid::Uuid, Path, description = "The task's id"), StatusFilter), responses((status = 200, description = "`{deleted, status}`: how many jobs were removed, of which states (by default the finished ones; waiting ones only when asked)", body = Object), crate::error::Refusals))]
pub async fn empty_queue(
    State(state): State<AppState>,
    who: Scoped<Admins>,
    uri: axum::http::Uri,
    Id(task): Id<TaskId>,
) -> Result<axum::Json<Value>, ApiError> {
    let mut wanted = statuses(uri.query())?;
    if wanted.iter().any(|s| s.is_active()) {
        return Err(ApiError::invalid_field(
            "lifecycle",
            "jobs that hold a bot (ASSIGNED, RUNNING) are not removed; cancel them",
        ));
    }
    if wanted.is_empty() {
        wanted = vec![
            JobStatus::Complete,
            JobStatus::Failed,
            JobStatus::Timeout,
            JobStatus::Canceled,
        ];
    }
    let db = state.db().await?;
    task_defs::get(&db, who.customer_id, task, Reader::Admin).await?;
    let deleted = script_jobs::empty_queue(&db, who.customer_id, task, &wanted).await?;
    Ok(axum::Json(json!({
        "deleted": deleted,
        "status": wanted.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seeds_bodies_parse() {
        // Example 6: JSON.
        let i = parse_job_input("application/json", br#"{"task_arguments":[]}"#).expect("json");
        assert!(i.task_arguments.is_empty());
        // Example 5: an HTML form.
        let i = parse_job_input(
            "application/x-www-form-urlencoded",
            b"customer=acme&task=t1&task_arguments%5B%5D=arg1&task_arguments%5B%5D=arg2",
        )
        .expect("form");
        assert_eq!(i.customer.as_deref(), Some("acme"));
        assert_eq!(i.task_arguments, vec![json!("arg1"), json!("arg2")]);
        // Example 4: curl --data-urlencode "customer = x" under a JSON type.
        let i =
            parse_job_input("application/json", b"customer =%20acme&task =%20t1").expect("curl");
        assert_eq!(i.customer.as_deref(), Some("acme"));
        assert_eq!(i.task.as_deref(), Some("t1"));
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert!(parse_job_input("application/json", b"{\"task_arguments\": 3}").is_err());
        assert!(parse_job_input("application/json", b"[1]").is_err());
        assert!(parse_job_input("application/json", b"{nope").is_err());
        assert!(parse_job_input("application/json", &[0xff, 0xfe]).is_err());
        assert!(parse_job_input("", b"").is_ok());
    }

    #[test]
    fn lifecycle_and_status_filters() {
        assert_eq!(
            statuses(Some("lifecycle%5B%5D=ready")).expect("ok"),
            vec![JobStatus::Waiting]
        );
        let s = statuses(Some("status=COMPLETE,FAILED&lifecycle[]=canceled")).expect("ok");
        assert_eq!(s.len(), 3);
        assert!(statuses(Some("lifecycle[]=nope")).is_err());
        assert!(statuses(Some("status=done")).is_err());
        assert!(statuses(None).expect("none").is_empty());
    }
}
