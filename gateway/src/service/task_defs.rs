//! TheEye's task definitions: checking one (its arguments, triggers, env,
//! bounds), creating and changing one, and its recipe — the task and its
//! script exported without this deployment's ids, and imported elsewhere.

use base64::Engine;
use deadpool_postgres::{GenericClient, Transaction};
use orq_shared::domain::{BotId, CustomerId, Role, ScriptId, TaskId};
use orq_shared::field::FieldError;
use orq_shared::repo::RepoError;
use orq_shared::repo::customers::Principal;
use orq_shared::repo::scripts::{self, Script, ScriptSpec};
use orq_shared::repo::task_defs::{self, Reader, TaskDef, TaskSpec};
use orq_shared::task_def::{RunAs, parse_argument_defs, parse_env, parse_triggers};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fields::{check_filename, text_field};
use super::webhooks::{self, callback};
use crate::state::AppState;

/// Longest timeout and grace time accepted: a week, in seconds.
const MAX_SECONDS: i64 = 7 * 24 * 3600;
pub const DEFAULT_TIMEOUT: i32 = 600;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The body, merged with what it changes, is no task definition.
    #[error("{0}")]
    Body(String),
    /// An imported script's name (and its "imported" variant) is taken by
    /// other content.
    #[error("a script named {0:?} exists with other content; rename it")]
    ScriptNameTaken(String),
    #[error(transparent)]
    Callback(#[from] webhooks::Error),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

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
    /// Labels to find the task by; they do not decide where it runs.
    #[serde(default)]
    tags: Vec<String>,
    /// Tags an agent must carry, every one, to run it.
    #[serde(default)]
    required_tags: Vec<String>,
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

fn seconds(field: &str, value: Option<i64>, default: i32, min: i64) -> Result<i32, FieldError> {
    let v = value.unwrap_or(i64::from(default));
    if !(min..=MAX_SECONDS).contains(&v) {
        return Err(FieldError::new(
            field,
            format!("{field} must be between {min} and {MAX_SECONDS} seconds"),
        ));
    }
    Ok(i32::try_from(v).unwrap_or(default))
}

fn words(field: &str, items: &[String]) -> Result<Vec<String>, FieldError> {
    items.iter().map(|t| text_field(field, t, 200)).collect()
}

/// Checks a definition. `this` is the task being updated (a task may not
/// trigger itself); each trigger must name a task of the customer.
async fn task_spec(
    db: &impl GenericClient,
    customer: CustomerId,
    body: TaskBody,
    this: Option<TaskId>,
    callback_id: Option<uuid::Uuid>,
) -> Result<TaskSpec, Error> {
    let description = body.description.trim().to_string();
    if description.chars().count() > 2000 || description.contains('\0') {
        return Err(FieldError::new(
            "description",
            "description must be at most 2000 characters, without NUL",
        )
        .into());
    }
    let task_arguments = body.task_arguments.unwrap_or_else(|| json!([]));
    parse_argument_defs(&task_arguments)?;
    let run_as = body.run_as.trim().to_string();
    RunAs::parse(&run_as)?;
    let triggers = parse_triggers(&body.triggers.unwrap_or_else(|| json!([])))?;
    for (i, t) in triggers.iter().enumerate() {
        let field = format!("triggers[{i}]");
        if Some(t.task_id) == this {
            return Err(FieldError::new(&field, "a task cannot trigger itself").into());
        }
        match task_defs::get(db, customer, t.task_id, Reader::Admin).await {
            Ok(_) => {}
            Err(RepoError::NotFound(_)) => {
                let message = format!("{field}: no task {} in this customer", t.task_id);
                return Err(FieldError::new(field, message).into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    let env = parse_env(&body.env.unwrap_or(Value::Null))?;
    let parse_uuid = |field: &str, raw: &str| {
        raw.trim()
            .parse::<uuid::Uuid>()
            .map_err(|_| FieldError::new(field, format!("{field} must be an id")))
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
        required_tags: words("required_tags", &body.required_tags)?,
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
                return Err(FieldError::new(
                    "max_attempts",
                    "max_attempts must be between 1 and 100",
                )
                .into());
            }
        },
        callback_id,
    })
}

/// A task as `who` may see it: only admins see the values of its `env`
/// (they often hold credentials); others see the names.
pub fn shown_to(who: &Principal, task: TaskDef) -> TaskDef {
    hide_env(who.role, task)
}

fn hide_env(role: Role, mut task: TaskDef) -> TaskDef {
    if role != Role::Admin
        && let Value::Object(env) = &mut task.env
    {
        for value in env.values_mut() {
            *value = json!("<hidden>");
        }
    }
    task
}

/// Creates a task from a body (its callback endpoint too) in the caller's
/// transaction.
pub async fn create(
    state: &AppState,
    tx: &Transaction<'_>,
    customer: CustomerId,
    mut body: TaskBody,
) -> Result<TaskDef, Error> {
    let callback = callback(state, tx, customer, body.callback.take().as_ref()).await?;
    let spec = task_spec(tx, customer, body, None, callback).await?;
    let (task, _secret) = task_defs::insert(tx, customer, &spec, &state.sealer).await?;
    Ok(task)
}

/// `current` with `changes` over it, as a body to check again.
fn merged(current: &TaskDef, changes: serde_json::Map<String, Value>) -> Result<TaskBody, Error> {
    let mut merged = serde_json::to_value(current).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut merged {
        m.extend(changes);
    }
    serde_json::from_value(merged).map_err(|e| Error::Body(e.to_string()))
}

/// Changes the fields given; the others keep their values. `callback`
/// given: a new endpoint, or none for null; absent: the same.
pub async fn update(
    state: &AppState,
    customer: CustomerId,
    id: TaskId,
    changes: serde_json::Map<String, Value>,
) -> Result<TaskDef, Error> {
    state
        .in_transaction(async |tx| {
            let current = task_defs::get(tx, customer, id, Reader::Admin).await?;
            let callback_id = match changes.get("callback") {
                Some(value) => callback(state, tx, customer, Some(value)).await?,
                None => current.callback_id,
            };
            let body = merged(&current, changes)?;
            let spec = task_spec(tx, customer, body, Some(id), callback_id).await?;
            Ok(task_defs::update(tx, customer, id, &spec).await?)
        })
        .await
}

/// The recipe of a task and its script (see `recipe_of`).
pub async fn recipe(state: &AppState, customer: CustomerId, id: TaskId) -> Result<Value, Error> {
    let db = state.db().await?;
    let task = task_defs::get(&db, customer, id, Reader::Admin).await?;
    let (script, content) = scripts::get_raw(&db, customer, task.script_id).await?;
    Ok(recipe_of(&task, &script, &content))
}

/// The task and its script, portable: no ids of this deployment (its bot,
/// its triggers' tasks) travel with it.
pub fn recipe_of(task: &TaskDef, script: &Script, content: &[u8]) -> Value {
    json!({
        "version": 1,
        "task": {
            "name": task.name,
            "description": task.description,
            "tags": task.tags,
            "required_tags": task.required_tags,
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
    })
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

/// A recipe read and checked: its script, ready to store, and its task.
#[derive(Debug)]
pub struct Import {
    script: ScriptSpec,
    checksum: String,
    task: serde_json::Map<String, Value>,
    host_id: Option<String>,
}

/// Reads a recipe's script: base64, not empty, the checksum it claims, a
/// name and a plain file name.
pub fn read_recipe(recipe: Recipe) -> Result<Import, FieldError> {
    let content = base64::engine::general_purpose::STANDARD
        .decode(
            recipe
                .file
                .content_base64
                .split_ascii_whitespace()
                .collect::<String>(),
        )
        .map_err(|e| FieldError::new("file.content_base64", format!("not base64: {e}")))?;
    if content.is_empty() {
        return Err(FieldError::new(
            "file.content_base64",
            "the script is empty",
        ));
    }
    let checksum = scripts::checksum(&content);
    if let Some(expected) = &recipe.file.checksum
        && !expected.eq_ignore_ascii_case(&checksum)
    {
        return Err(FieldError::new(
            "file.checksum",
            "the script's content does not match the recipe's checksum",
        ));
    }
    let script = ScriptSpec {
        name: text_field("file.name", &recipe.file.name, 200)?,
        filename: check_filename(&recipe.file.filename)?,
        description: recipe.file.description.trim().to_string(),
        content,
    };
    Ok(Import {
        script,
        checksum,
        task: recipe.task,
        host_id: recipe.host_id,
    })
}

/// Creates a task (and its script) from a recipe in the caller's
/// transaction. A script of the same name and content is reused; one of
/// the same name but other content is imported under a new name.
pub async fn import(
    state: &AppState,
    tx: &Transaction<'_>,
    customer: CustomerId,
    import: Import,
) -> Result<TaskDef, Error> {
    let Import {
        script: mut script_spec,
        checksum,
        mut task,
        host_id,
    } = import;
    let existing = scripts::find_by_name(tx, customer, &script_spec.name).await?;
    let script_id = match existing {
        Some((id, sum)) if sum == checksum => id,
        Some(_) => {
            script_spec.name = format!("{} (imported {})", script_spec.name, &checksum[..12]);
            match scripts::find_by_name(tx, customer, &script_spec.name).await? {
                Some((id, sum)) if sum == checksum => id,
                Some(_) => return Err(Error::ScriptNameTaken(script_spec.name)),
                None => scripts::insert(tx, customer, &script_spec).await?.id,
            }
        }
        None => scripts::insert(tx, customer, &script_spec).await?.id,
    };
    for field in ["script_id", "host_id", "triggers"] {
        if task.contains_key(field) {
            return Err(FieldError::new(
                format!("task.{field}"),
                format!(
                    "a recipe's task does not carry {field} (it names things of another deployment)"
                ),
            )
            .into());
        }
    }
    task.insert("script_id".into(), json!(script_id));
    task.insert("host_id".into(), json!(host_id));
    let body: TaskBody = serde_json::from_value(Value::Object(task))
        .map_err(|e| Error::Body(format!("task: {e}")))?;
    create(state, tx, customer, body).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_default_and_stay_within_a_week() {
        assert_eq!(
            seconds("timeout", None, DEFAULT_TIMEOUT, 1).expect("default"),
            600
        );
        assert_eq!(seconds("grace_time", Some(0), 0, 0).expect("zero"), 0);
        assert_eq!(
            seconds("timeout", Some(MAX_SECONDS), 600, 1).expect("a week"),
            604_800
        );
        let e = seconds("timeout", Some(0), 600, 1).expect_err("too short");
        assert_eq!(e.field, "timeout");
        assert_eq!(e.message, "timeout must be between 1 and 604800 seconds");
        assert!(seconds("grace_time", Some(MAX_SECONDS + 1), 0, 0).is_err());
    }

    fn recipe(content: &[u8], checksum: Option<String>) -> Recipe {
        serde_json::from_value(json!({
            "version": 1,
            "task": { "name": "t" },
            "file": {
                "name": " s ",
                "filename": "run.sh",
                "checksum": checksum,
                "content_base64": base64::engine::general_purpose::STANDARD.encode(content),
            },
        }))
        .expect("a recipe")
    }

    #[test]
    fn a_recipe_script_must_match_its_checksum() {
        let sum = scripts::checksum(b"echo hi");
        let read = read_recipe(recipe(b"echo hi", Some(sum.to_uppercase()))).expect("matches");
        assert_eq!(read.script.name, "s");
        assert_eq!(read.script.content, b"echo hi");
        assert_eq!(read.checksum, sum);
        assert!(read_recipe(recipe(b"echo hi", None)).is_ok());
        let e = read_recipe(recipe(b"echo ho", Some(sum))).expect_err("other content");
        assert_eq!(e.field, "file.checksum");
        let e = read_recipe(recipe(b"", None)).expect_err("empty");
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("file.content_base64", "the script is empty")
        );
    }

    #[test]
    fn only_admins_see_env_values() {
        let task: TaskDef = TaskDef {
            id: TaskId(uuid::Uuid::now_v7()),
            kind: "script",
            name: "t".into(),
            description: String::new(),
            host_id: None,
            script_id: ScriptId(uuid::Uuid::now_v7()),
            tags: Vec::new(),
            required_tags: Vec::new(),
            task_arguments: json!([]),
            run_as: "%script%".into(),
            acls: Vec::new(),
            triggers: json!([]),
            grace_time: 0,
            timeout: 600,
            multitasking: true,
            env: json!({ "TOKEN": "s3cret" }),
            max_attempts: None,
            callback_id: None,
            created_at: time::OffsetDateTime::UNIX_EPOCH,
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let viewer = hide_env(Role::Viewer, task.clone());
        assert_eq!(viewer.env, json!({ "TOKEN": "<hidden>" }));
        assert_eq!(
            hide_env(Role::Admin, task).env,
            json!({ "TOKEN": "s3cret" })
        );
    }
}
