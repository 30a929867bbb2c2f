//! TheEye's task definitions: `/{customer}/task...` — list and read
//! (viewer), write, delete, export as a recipe, import one, and read or
//! rotate the secret key (admin).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine;
use orq_shared::domain::{BotId, Role, ScriptId, TaskId};
use orq_shared::repo::task_defs::{self, Reader, TaskDef, TaskSpec};
use orq_shared::repo::{RepoError, scripts};
use orq_shared::task_def::{RunAs, parse_argument_defs, parse_env, parse_triggers};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{PageQuery, check_filename, paged, reader, text_field};
use crate::auth::{Admins, Scoped, Viewers};
use crate::error::{ApiError, Json, Query};
use crate::idempotency::{Caller, CreateRequest, IdemKey, create_once};
use crate::ids::Id;
use crate::service::webhooks::callback;
use crate::state::AppState;
use orq_shared::repo::customers::Principal;

/// Longest timeout and grace time accepted: a week, in seconds.
const MAX_SECONDS: i64 = 7 * 24 * 3600;
pub const DEFAULT_TIMEOUT: i32 = 600;

/// A task definition as written by a client. The read-only fields a GET
/// returns are accepted and ignored, so a read can be edited and sent back.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaskBody {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    host_id: Option<String>,
    script_id: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    task_arguments: Option<Value>,
    #[serde(default)]
    run_as: String,
    #[serde(default)]
    acls: Vec<String>,
    #[serde(default)]
    triggers: Option<Value>,
    #[serde(default)]
    grace_time: Option<i64>,
    /// Seconds; `null` or absent: 600.
    #[serde(default)]
    timeout: Option<i64>,
    #[serde(default)]
    multitasking: Option<bool>,
    #[serde(default)]
    env: Option<Value>,
    /// Attempts a run gets when its bot is lost (1-100; `null`: the
    /// reaper's default).
    #[serde(default)]
    max_attempts: Option<i64>,
    /// `{url, user?, password?}`: where every run's events are delivered;
    /// `null` removes it.
    #[serde(default)]
    callback: Option<Value>,
    #[serde(default, rename = "callback_id")]
    _callback_id: Option<Value>,
    #[serde(default, rename = "id")]
    _id: Option<Value>,
    #[serde(default, rename = "type")]
    _type: Option<Value>,
    #[serde(default, rename = "created_at")]
    _created_at: Option<Value>,
    #[serde(default, rename = "updated_at")]
    _updated_at: Option<Value>,
}

fn seconds(field: &str, value: Option<i64>, default: i32, min: i64) -> Result<i32, ApiError> {
    let v = value.unwrap_or(i64::from(default));
    if !(min..=MAX_SECONDS).contains(&v) {
        return Err(ApiError::invalid_field(
            field,
            format!("{field} must be between {min} and {MAX_SECONDS} seconds"),
        ));
    }
    Ok(i32::try_from(v).unwrap_or(default))
}

fn words(field: &str, items: &[String]) -> Result<Vec<String>, ApiError> {
    items.iter().map(|t| text_field(field, t, 200)).collect()
}

/// Checks a definition. `this` is the task being updated (a task may not
/// trigger itself).
async fn task_spec(
    db: &impl deadpool_postgres::GenericClient,
    who: &orq_shared::repo::customers::Principal,
    body: TaskBody,
    this: Option<TaskId>,
    callback_id: Option<uuid::Uuid>,
) -> Result<TaskSpec, ApiError> {
    let description = body.description.trim().to_string();
    if description.chars().count() > 2000 || description.contains('\0') {
        return Err(ApiError::invalid_field(
            "description",
            "description must be at most 2000 characters, without NUL",
        ));
    }
    let task_arguments = body.task_arguments.unwrap_or_else(|| json!([]));
    parse_argument_defs(&task_arguments)?;
    let run_as = body.run_as.trim().to_string();
    RunAs::parse(&run_as)?;
    let triggers = parse_triggers(&body.triggers.unwrap_or_else(|| json!([])))?;
    for (i, t) in triggers.iter().enumerate() {
        let field = format!("triggers[{i}]");
        if Some(t.task_id) == this {
            return Err(ApiError::invalid_field(
                &field,
                "a task cannot trigger itself",
            ));
        }
        match task_defs::get(db, who.customer_id, t.task_id, Reader::Admin).await {
            Ok(_) => {}
            Err(RepoError::NotFound(_)) => {
                return Err(ApiError::invalid_field(
                    &field,
                    format!("{field}: no task {} in this customer", t.task_id),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let env = parse_env(&body.env.unwrap_or(Value::Null))?;
    let parse_uuid = |field: &str, raw: &str| {
        raw.trim()
            .parse::<uuid::Uuid>()
            .map_err(|_| ApiError::invalid_field(field, format!("{field} must be an id")))
    };
    Ok(TaskSpec {
        name: text_field("name", &body.name, 200)?,
        description,
        host_id: match body.host_id.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(raw) => Some(BotId(parse_uuid("host_id", raw)?)),
        },
        script_id: ScriptId(parse_uuid("script_id", &body.script_id)?),
        tags: words("tags", &body.tags)?,
        task_arguments,
        run_as: if run_as.is_empty() {
            "%script%".into()
        } else {
            run_as
        },
        acls: words("acls", &body.acls)?,
        // Stored as parsed: ids in their canonical form, which is what the
        // triggers lookup (`@>`) compares.
        triggers: serde_json::to_value(&triggers).unwrap_or_else(|_| json!([])),
        grace_time: seconds("grace_time", body.grace_time, 0, 0)?,
        timeout: seconds("timeout", body.timeout, DEFAULT_TIMEOUT, 1)?,
        multitasking: body.multitasking.unwrap_or(true),
        env: serde_json::to_value(env).unwrap_or_else(|_| json!({})),
        max_attempts: match body.max_attempts {
            None => None,
            Some(n @ 1..=100) => Some(n as i32),
            Some(_) => {
                return Err(ApiError::invalid_field(
                    "max_attempts",
                    "max_attempts must be between 1 and 100",
                ));
            }
        },
        callback_id,
    })
}

/// A task as `who` may see it: only admins see the values of its `env`
/// (they often hold credentials); others see the names.
fn shown_to(who: &Principal, mut task: TaskDef) -> TaskDef {
    if who.role != Role::Admin
        && let Value::Object(env) = &mut task.env
    {
        for value in env.values_mut() {
            *value = json!("<hidden>");
        }
    }
    task
}

#[utoipa::path(get, path = "/{customer}/task", operation_id = "task_defs_list", tag = "theeye", params(super::CustomerPath, super::PageQuery), responses((status = 200, description = "A page of tasks", body = [orq_shared::repo::task_defs::TaskDef], headers(("x-next-cursor" = String, description = "Present when there may be more: pass it back as `?after=`"))), crate::error::Refusals))]
pub async fn list(
    State(state): State<AppState>,
    who: Scoped<Viewers>,
    Query(paging): Query<PageQuery>,
) -> Result<Response, ApiError> {
    let page = paging.page()?;
    let db = state.db().await?;
    let items: Vec<TaskDef> = task_defs::list(&db, who.customer_id, reader(&who), page)
        .await?
        .into_iter()
        .map(|t| shown_to(&who, t))
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
    Ok(axum::Json(shown_to(&who, task)))
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
        insert_task(&state, tx, &who, body).await
    })
    .await?;
    Ok(created.respond())
}

/// Creates a task from a checked body (its callback endpoint too) in `tx`.
async fn insert_task(
    state: &AppState,
    tx: &deadpool_postgres::Transaction<'_>,
    who: &Principal,
    mut body: TaskBody,
) -> Result<TaskDef, ApiError> {
    let callback = callback(state, tx, who.customer_id, body.callback.take().as_ref()).await?;
    let spec = task_spec(tx, who, body, None, callback).await?;
    let (task, _secret) = task_defs::insert(tx, who.customer_id, &spec, &state.sealer).await?;
    Ok(task)
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
    let task = state
        .in_transaction(async |tx| {
            let current = task_defs::get(tx, who.customer_id, id, Reader::Admin).await?;
            // `callback` given: a new endpoint, or none for null; absent: the same.
            let callback_id = match changes.get("callback") {
                Some(value) => callback(&state, tx, who.customer_id, Some(value)).await?,
                None => current.callback_id,
            };
            let mut merged = serde_json::to_value(&current).unwrap_or_else(|_| json!({}));
            if let Value::Object(m) = &mut merged {
                m.extend(changes);
            }
            let body: TaskBody = serde_json::from_value(merged)
                .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
            let spec = task_spec(tx, &who, body, Some(id), callback_id).await?;
            Ok::<_, ApiError>(task_defs::update(tx, who.customer_id, id, &spec).await?)
        })
        .await?;
    Ok(axum::Json(task))
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
    let db = state.db().await?;
    let task = task_defs::get(&db, who.customer_id, id, Reader::Admin).await?;
    let (script, content) = scripts::get_raw(&db, who.customer_id, task.script_id).await?;
    Ok(axum::Json(json!({
        "version": 1,
        "task": {
            "name": task.name,
            "description": task.description,
            "tags": task.tags,
            "task_arguments": task.task_arguments,
            "run_as": task.run_as,
            "acls": task.acls,
            "grace_time": task.grace_time,
            "timeout": task.timeout,
            "multitasking": task.multitasking,
            "env": task.env,
        },
        "file": {
            "name": script.name,
            "filename": script.filename,
            "description": script.description,
            "checksum": script.checksum,
            "content_base64": base64::engine::general_purpose::STANDARD.encode(content),
        },
    })))
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct Recipe {
    #[serde(default)]
    #[allow(dead_code)]
    version: Option<u32>,
    /// A task definition without `script_id`, `host_id` and `triggers`
    /// (they name things of the exporting deployment).
    task: serde_json::Map<String, Value>,
    file: RecipeFile,
    /// Pin the imported task to this bot of the importing customer.
    #[serde(default)]
    host_id: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    name: String,
    filename: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    checksum: Option<String>,
    content_base64: String,
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
    let content = base64::engine::general_purpose::STANDARD
        .decode(
            recipe
                .file
                .content_base64
                .split_ascii_whitespace()
                .collect::<String>(),
        )
        .map_err(|e| ApiError::invalid_field("file.content_base64", format!("not base64: {e}")))?;
    if content.is_empty() {
        return Err(ApiError::invalid_field(
            "file.content_base64",
            "the script is empty",
        ));
    }
    let checksum = scripts::checksum(&content);
    if let Some(expected) = &recipe.file.checksum
        && !expected.eq_ignore_ascii_case(&checksum)
    {
        return Err(ApiError::invalid_field(
            "file.checksum",
            "the script's content does not match the recipe's checksum",
        ));
    }
    let mut script_spec = scripts::ScriptSpec {
        name: text_field("file.name", &recipe.file.name, 200)?,
        filename: check_filename(&recipe.file.filename)?,
        description: recipe.file.description.trim().to_string(),
        content,
    };
    let created = create_once(&state, &Caller::token(&who), &key, request, async |tx| {
        let existing = scripts::find_by_name(tx, who.customer_id, &script_spec.name).await?;
        let script_id = match existing {
            Some((id, sum)) if sum == checksum => id,
            Some(_) => {
                script_spec.name = format!("{} (imported {})", script_spec.name, &checksum[..12]);
                match scripts::find_by_name(tx, who.customer_id, &script_spec.name).await? {
                    Some((id, sum)) if sum == checksum => id,
                    Some(_) => {
                        return Err(RepoError::Conflict(format!(
                            "a script named {:?} exists with other content; rename it",
                            script_spec.name
                        ))
                        .into());
                    }
                    None => {
                        scripts::insert(tx, who.customer_id, &script_spec)
                            .await?
                            .id
                    }
                }
            }
            None => {
                scripts::insert(tx, who.customer_id, &script_spec)
                    .await?
                    .id
            }
        };
        let mut task = recipe.task;
        for field in ["script_id", "host_id", "triggers"] {
            if task.contains_key(field) {
                return Err(ApiError::invalid_field(
                    &format!("task.{field}"),
                    format!(
                        "a recipe's task does not carry {field} (it names things of another deployment)"
                    ),
                ));
            }
        }
        task.insert("script_id".into(), json!(script_id));
        task.insert("host_id".into(), json!(recipe.host_id));
        let body: TaskBody = serde_json::from_value(Value::Object(task))
            .map_err(|e| ApiError::bad_request("invalid_body", format!("task: {e}")))?;
        insert_task(&state, tx, &who, body).await
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
