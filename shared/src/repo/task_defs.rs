//! Task definitions (TheEye's tasks): what a script job runs and where, who
//! may see it, and its secret key (hashed to check, sealed to show again).

use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Row;

use super::{Page, RepoError, execute, query, query_one, query_opt};
use crate::domain::{BotId, CustomerId, ScriptId, TaskId};
use crate::secret::{self, Sealer};

/// A task definition as the API shows it (never its secret).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct TaskDef {
    pub id: TaskId,
    /// TheEye's `type`: every definition here runs a script.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub description: String,
    pub host_id: Option<BotId>,
    pub script_id: ScriptId,
    /// Labels to find the task by (seed 002's "etiquetas para identificar
    /// fácilmente"); they do not decide where its runs go.
    pub tags: Vec<String>,
    /// Tags an agent must carry, every one, to run this task.
    pub required_tags: Vec<String>,
    pub task_arguments: Value,
    pub run_as: String,
    pub acls: Vec<String>,
    pub triggers: Value,
    pub grace_time: i32,
    /// Seconds; 600 unless set.
    pub timeout: i32,
    pub multitasking: bool,
    pub env: Value,
    /// Attempts a run gets when its bot is lost (`null`: the reaper's
    /// `max_attempts`).
    pub max_attempts: Option<i32>,
    /// The webhook endpoint every run of it reports to (`/webhooks`).
    pub callback_id: Option<uuid::Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

const COLUMNS: &str = "id, name, description, host_id, script_id, tags, required_tags, task_arguments, run_as, \
     acls, triggers, grace_time, timeout, multitasking, env, max_attempts, callback_id, created_at, \
     updated_at";

fn from_row(r: &Row) -> TaskDef {
    TaskDef {
        id: TaskId(r.get("id")),
        kind: "script",
        name: r.get("name"),
        description: r.get("description"),
        host_id: r.get::<_, Option<uuid::Uuid>>("host_id").map(BotId),
        script_id: ScriptId(r.get("script_id")),
        tags: r.get("tags"),
        required_tags: r.get("required_tags"),
        task_arguments: r.get("task_arguments"),
        run_as: r.get("run_as"),
        acls: r.get("acls"),
        triggers: r.get("triggers"),
        grace_time: r.get("grace_time"),
        timeout: r.get("timeout"),
        multitasking: r.get("multitasking"),
        env: r.get("env"),
        max_attempts: r.get("max_attempts"),
        callback_id: r.get("callback_id"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
    }
}

/// A definition as an admin writes it, already checked by the caller.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub name: String,
    pub description: String,
    pub host_id: Option<BotId>,
    pub script_id: ScriptId,
    pub tags: Vec<String>,
    pub required_tags: Vec<String>,
    pub task_arguments: Value,
    pub run_as: String,
    pub acls: Vec<String>,
    pub triggers: Value,
    pub grace_time: i32,
    pub timeout: i32,
    pub multitasking: bool,
    pub env: Value,
    pub max_attempts: Option<i32>,
    pub callback_id: Option<uuid::Uuid>,
}

/// Who reads: admins see every task; others only tasks whose `acls` are
/// empty or name them.
#[derive(Debug, Clone, Copy)]
pub enum Reader<'a> {
    Admin,
    Named(Option<&'a str>),
}

impl Reader<'_> {
    fn acl_name(&self) -> (bool, Option<&str>) {
        match self {
            Reader::Admin => (true, None),
            Reader::Named(name) => (false, *name),
        }
    }
}

/// Checks what the database must confirm: the script and the host belong
/// to the customer, and the host is an agent (only agents run scripts).
async fn check_refs(
    db: &impl GenericClient,
    customer: CustomerId,
    spec: &TaskSpec,
) -> Result<(), RepoError> {
    let script = query_opt(
        db,
        "SELECT 1 FROM scripts WHERE id = $1 AND customer_id = $2",
        &[&spec.script_id.0, &customer.0],
    )
    .await?;
    if script.is_none() {
        return Err(RepoError::Invalid {
            field: "script_id".into(),
            message: format!("no script {} in this customer", spec.script_id),
        });
    }
    if let Some(host) = spec.host_id {
        let bot = query_opt(
            db,
            "SELECT delivery FROM bots WHERE id = $1 AND customer_id = $2",
            &[&host.0, &customer.0],
        )
        .await?;
        match bot.map(|r| r.get::<_, String>(0)) {
            None => {
                return Err(RepoError::Invalid {
                    field: "host_id".into(),
                    message: format!("no bot {host} in this customer"),
                });
            }
            Some(d) if d != "agent" => {
                return Err(RepoError::Invalid {
                    field: "host_id".into(),
                    message: format!("bot {host} is an HTTP bot; only bot-agents run scripts"),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Creates a definition with a new secret key; returns both (the key is
/// shown to the admin who created it).
pub async fn insert(
    db: &impl GenericClient,
    customer: CustomerId,
    spec: &TaskSpec,
    sealer: &Sealer,
) -> Result<(TaskDef, String), RepoError> {
    check_refs(db, customer, spec).await?;
    let id = TaskId::new();
    let key = secret::generate();
    let sql = format!(
        "INSERT INTO task_defs (id, customer_id, name, description, host_id, script_id, tags,
                task_arguments, run_as, acls, triggers, grace_time, timeout, multitasking, env,
                secret_hash, secret_sealed, callback_id, max_attempts, required_tags)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                 $19, $20)
         RETURNING {COLUMNS}"
    );
    let row = query_one(
        db,
        &sql,
        &[
            &id.0,
            &customer.0,
            &spec.name,
            &spec.description,
            &spec.host_id.map(|b| b.0),
            &spec.script_id.0,
            &spec.tags,
            &spec.task_arguments,
            &spec.run_as,
            &spec.acls,
            &spec.triggers,
            &spec.grace_time,
            &spec.timeout,
            &spec.multitasking,
            &spec.env,
            &secret::hash(&key),
            &sealer.seal(&key, id.0.as_bytes()),
            &spec.callback_id,
            &spec.max_attempts,
            &spec.required_tags,
        ],
    )
    .await?;
    Ok((from_row(&row), key))
}

pub async fn update(
    db: &impl GenericClient,
    customer: CustomerId,
    id: TaskId,
    spec: &TaskSpec,
) -> Result<TaskDef, RepoError> {
    check_refs(db, customer, spec).await?;
    let sql = format!(
        "UPDATE task_defs SET name = $3, description = $4, host_id = $5, script_id = $6,
                tags = $7, task_arguments = $8, run_as = $9, acls = $10, triggers = $11,
                grace_time = $12, timeout = $13, multitasking = $14, env = $15, callback_id = $16,
                max_attempts = $17, required_tags = $18, updated_at = now()
          WHERE id = $1 AND customer_id = $2 RETURNING {COLUMNS}"
    );
    let row = query_opt(
        db,
        &sql,
        &[
            &id.0,
            &customer.0,
            &spec.name,
            &spec.description,
            &spec.host_id.map(|b| b.0),
            &spec.script_id.0,
            &spec.tags,
            &spec.task_arguments,
            &spec.run_as,
            &spec.acls,
            &spec.triggers,
            &spec.grace_time,
            &spec.timeout,
            &spec.multitasking,
            &spec.env,
            &spec.callback_id,
            &spec.max_attempts,
            &spec.required_tags,
        ],
    )
    .await?
    .ok_or(RepoError::NotFound("task"))?;
    Ok(from_row(&row))
}

pub async fn get(
    db: &impl GenericClient,
    customer: CustomerId,
    id: TaskId,
    reader: Reader<'_>,
) -> Result<TaskDef, RepoError> {
    let (admin, name) = reader.acl_name();
    let sql = format!(
        "SELECT {COLUMNS} FROM task_defs
          WHERE id = $1 AND customer_id = $2
            AND ($3 OR acls = '{{}}' OR $4::text = ANY(acls))"
    );
    let row = query_opt(db, &sql, &[&id.0, &customer.0, &admin, &name])
        .await?
        .ok_or(RepoError::NotFound("task"))?;
    Ok(from_row(&row))
}

/// A page of the definitions `reader` may see, carrying every one of
/// `labels` (none: all).
pub async fn list(
    db: &impl GenericClient,
    customer: CustomerId,
    reader: Reader<'_>,
    labels: &[String],
    page: Page,
) -> Result<Vec<TaskDef>, RepoError> {
    let (admin, name) = reader.acl_name();
    let (cmp, dir) = page.order_sql();
    let sql = format!(
        "SELECT {COLUMNS} FROM task_defs
          WHERE customer_id = $1 AND ($2::uuid IS NULL OR id {cmp} $2)
            AND ($3 OR acls = '{{}}' OR $4::text = ANY(acls))
            AND tags @> $6
          ORDER BY id {dir} LIMIT $5"
    );
    let rows = query(
        db,
        &sql,
        &[
            &customer.0,
            &page.after,
            &admin,
            &name,
            &page.limit,
            &labels,
        ],
    )
    .await?;
    Ok(rows.iter().map(from_row).collect())
}

/// Deletes a definition and its waiting jobs; refused while one of its jobs
/// holds a bot. Finished jobs stay, as history.
pub async fn delete(
    db: &impl GenericClient,
    customer: CustomerId,
    id: TaskId,
) -> Result<(), RepoError> {
    let row = query_opt(
        db,
        "SELECT id FROM task_defs WHERE id = $1 AND customer_id = $2 FOR UPDATE",
        &[&id.0, &customer.0],
    )
    .await?;
    if row.is_none() {
        return Err(RepoError::NotFound("task"));
    }
    // Locked, not just counted: a job the matcher is assigning right now
    // is waited for and seen as ASSIGNED, instead of skipped by the delete
    // and left running without its task.
    let active = query(
        db,
        "SELECT status FROM jobs WHERE task_id = $1 AND status IN ('WAITING', 'ASSIGNED', 'RUNNING')
            FOR UPDATE",
        &[&id.0],
    )
    .await?
    .iter()
    .filter(|r| r.get::<_, &str>(0) != "WAITING")
    .count();
    if active > 0 {
        return Err(RepoError::Conflict(format!(
            "{active} job(s) of this task are running; cancel them or wait"
        )));
    }
    execute(
        db,
        "DELETE FROM jobs WHERE task_id = $1 AND status = 'WAITING'",
        &[&id.0],
    )
    .await?;
    execute(db, "DELETE FROM task_defs WHERE id = $1", &[&id.0]).await?;
    Ok(())
}

/// The task's secret key, unsealed (admins only).
pub async fn secret(
    db: &impl GenericClient,
    customer: CustomerId,
    id: TaskId,
    sealer: &Sealer,
) -> Result<String, RepoError> {
    let row = query_opt(
        db,
        "SELECT secret_sealed FROM task_defs WHERE id = $1 AND customer_id = $2",
        &[&id.0, &customer.0],
    )
    .await?
    .ok_or(RepoError::NotFound("task"))?;
    sealer
        .open(row.get(0), id.0.as_bytes())
        .map_err(|e| RepoError::Corrupt(e.to_string()))
}

/// Replaces the task's secret key; the old one stops working at once.
pub async fn rotate_secret(
    db: &impl GenericClient,
    customer: CustomerId,
    id: TaskId,
    sealer: &Sealer,
) -> Result<String, RepoError> {
    let key = secret::generate();
    let n = execute(
        db,
        "UPDATE task_defs SET secret_hash = $3, secret_sealed = $4, updated_at = now()
          WHERE id = $1 AND customer_id = $2",
        &[
            &id.0,
            &customer.0,
            &secret::hash(&key),
            &sealer.seal(&key, id.0.as_bytes()),
        ],
    )
    .await?;
    if n == 0 {
        return Err(RepoError::NotFound("task"));
    }
    Ok(key)
}

/// The stored hash of a task's secret key, to check a presented one.
pub async fn secret_hash(
    db: &impl GenericClient,
    customer: CustomerId,
    id: TaskId,
) -> Result<Vec<u8>, RepoError> {
    let row = query_opt(
        db,
        "SELECT secret_hash FROM task_defs WHERE id = $1 AND customer_id = $2",
        &[&id.0, &customer.0],
    )
    .await?
    .ok_or(RepoError::NotFound("task"))?;
    Ok(row.get(0))
}

/// A definition with what a run of it needs of its script.
#[derive(Debug, Clone)]
pub struct Runnable {
    pub def: TaskDef,
    pub script_checksum: String,
    pub script_filename: String,
}

/// `COLUMNS` of `t`, joined with its script's checksum and file name.
fn runnable_sql(filter: &str) -> String {
    let columns: Vec<String> = COLUMNS.split(", ").map(|c| format!("t.{c}")).collect();
    format!(
        "SELECT {}, s.checksum AS script_checksum, s.filename AS script_filename
           FROM task_defs t JOIN scripts s ON s.id = t.script_id
          WHERE {filter}",
        columns.join(", ")
    )
}

fn runnable(r: &Row) -> Runnable {
    Runnable {
        def: from_row(r),
        script_checksum: r.get("script_checksum"),
        script_filename: r.get("script_filename"),
    }
}

/// A definition to run, read with its script in one statement (the job
/// creation path).
pub async fn get_runnable(
    db: &impl GenericClient,
    customer: CustomerId,
    id: TaskId,
    reader: Reader<'_>,
) -> Result<Runnable, RepoError> {
    let (admin, name) = reader.acl_name();
    let sql = runnable_sql(
        "t.id = $1 AND t.customer_id = $2 AND ($3 OR t.acls = '{}' OR $4::text = ANY(t.acls))",
    );
    let row = query_opt(db, &sql, &[&id.0, &customer.0, &admin, &name])
        .await?
        .ok_or(RepoError::NotFound("task"))?;
    Ok(runnable(&row))
}

/// The definitions a job of `task` ending triggers (with their triggers, to
/// check the outcome).
pub async fn triggered_by(
    db: &impl GenericClient,
    customer: CustomerId,
    task: TaskId,
) -> Result<Vec<Runnable>, RepoError> {
    let sql = runnable_sql(
        "t.customer_id = $1 AND t.triggers @> jsonb_build_array(jsonb_build_object('task_id', $2::text))",
    );
    let rows = query(db, &sql, &[&customer.0, &task.0.to_string()]).await?;
    Ok(rows.iter().map(runnable).collect())
}
