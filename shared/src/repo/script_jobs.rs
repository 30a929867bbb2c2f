//! Jobs as TheEye's API shows them: runs of task definitions (kind
//! `script`), created (at most once per triggering job), read, listed by task
//! and status, and emptied from a task's queue. Their transitions are the
//! jobs' own (`jobs::transition`, `jobs::apply_changes`).

use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use super::jobs::{EventKind, EventRecord, append_events};
use super::task_defs::{self, Reader, Runnable};
use super::{Page, RepoError, execute, query, query_opt};
use crate::domain::{BotId, CustomerId, JobId, JobStatus, TaskId};
use crate::messages::ScriptSpec;
use crate::task_def::{
    FieldError, parse_argument_defs, parse_env, parse_triggers, resolve_arguments,
};

/// A job in TheEye's terms plus ours.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct JobView {
    pub id: JobId,
    /// `script` (a task definition's run) or `system` (a CSV job).
    pub kind: String,
    pub task_id: Option<TaskId>,
    /// The task's name when the job was created.
    pub name: String,
    pub status: JobStatus,
    /// TheEye's names: `ready`, `onhold`, `assigned`, `finished`, `expired`, `canceled`.
    pub lifecycle: &'static str,
    /// `success`, `failure`, `timeout` or `canceled` once finished.
    pub state: Option<&'static str>,
    pub task_arguments: Vec<String>,
    pub host_id: Option<BotId>,
    pub bot_id: Option<BotId>,
    /// The name of the bot it is (or was last) on.
    pub bot_name: Option<String>,
    pub attempt: i32,
    pub percent: i16,
    pub step: Option<String>,
    /// `output` of the script's last stdout line when it was JSON.
    pub output: Option<Value>,
    pub exit_code: Option<i32>,
    /// `{stdout, stderr}`: the tails the bot kept.
    pub result: Option<Value>,
    pub error: Option<String>,
    /// Seconds the run may take.
    pub timeout: Option<u32>,
    pub triggered_by: Option<JobId>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_before: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub assigned_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    /// While WAITING: why no registered bot can take it (its host gone or
    /// draining, no agent carrying its required tags). Absent when nothing
    /// stands against it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,
    /// Its task's acls when it was created: who besides admins may see it.
    #[serde(skip)]
    pub acls: Vec<String>,
}

const COLUMNS: &str = "id, kind, task_id, description, status, host_id, bot_id, \
     (SELECT b.name FROM bots b WHERE b.id = jobs.bot_id) AS bot_name, attempt, percent, step, \
     output, exit_code, result, error, spec, triggered_by, not_before, created_at, updated_at, \
     assigned_at, started_at, finished_at, acls, waiting_reason";

fn from_row(r: &Row) -> Result<JobView, RepoError> {
    let status: JobStatus = super::parse_col(r.get::<_, &str>("status"))?;
    let spec: Option<ScriptSpec> = r
        .get::<_, Option<Value>>("spec")
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| RepoError::Corrupt(format!("job spec: {e}")))?;
    let not_before: Option<OffsetDateTime> = r.get("not_before");
    let on_hold = not_before.is_some_and(|t| t > OffsetDateTime::now_utc());
    Ok(JobView {
        id: JobId(r.get("id")),
        kind: r.get("kind"),
        task_id: r.get::<_, Option<Uuid>>("task_id").map(TaskId),
        name: r.get("description"),
        status,
        lifecycle: status.lifecycle(on_hold),
        state: status.state(),
        task_arguments: spec.as_ref().map(|s| s.args.clone()).unwrap_or_default(),
        host_id: r.get::<_, Option<Uuid>>("host_id").map(BotId),
        bot_id: r.get::<_, Option<Uuid>>("bot_id").map(BotId),
        bot_name: r.get("bot_name"),
        attempt: r.get("attempt"),
        percent: r.get("percent"),
        step: r.get("step"),
        output: r.get("output"),
        exit_code: r.get("exit_code"),
        result: r.get("result"),
        error: r.get("error"),
        timeout: spec.as_ref().map(|s| s.timeout_secs),
        triggered_by: r.get::<_, Option<Uuid>>("triggered_by").map(JobId),
        not_before,
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        assigned_at: r.get("assigned_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
        acls: r.get("acls"),
        waiting_reason: r.get("waiting_reason"),
    })
}

/// A run of a task definition, resolved and ready to insert.
#[derive(Debug, Clone)]
pub struct NewScriptJob {
    pub task_id: TaskId,
    pub name: String,
    pub host_id: Option<BotId>,
    /// Tags its agent must carry (its task's `required_tags`).
    pub required_tags: Vec<String>,
    pub multitasking: bool,
    pub acls: Vec<String>,
    /// Where its events are delivered (its own callback, or its task's).
    pub callback_id: Option<Uuid>,
    pub max_attempts: Option<i32>,
    pub spec: ScriptSpec,
    pub not_before: Option<OffsetDateTime>,
    pub triggered_by: Option<JobId>,
}

/// Inserts a WAITING script job and its first event in one statement.
/// Returns the job and whether it is new: a trigger that already created
/// its run (a redelivered report) gets that run back. (Clients' retries are
/// made safe by their `Idempotency-Key`, see `repo::idempotency`; the
/// `idempotency_key` columns of `jobs` are no longer written.)
pub async fn create(
    db: &impl GenericClient,
    customer: CustomerId,
    new: &NewScriptJob,
) -> Result<(JobView, bool), RepoError> {
    let spec = serde_json::to_value(&new.spec).map_err(|e| RepoError::Corrupt(e.to_string()))?;
    let sql = format!(
        "WITH j AS (
             INSERT INTO jobs (id, customer_id, kind, description, system, attachment, status,
                               task_id, host_id, required_tags, multitasking, spec, not_before,
                               triggered_by, acls, callback_id, max_attempts)
             VALUES ($1, $2, 'script', $3, '', '', 'WAITING', $4, $5, $6, $7, $8, $9, $10,
                     $13, $14, $15)
             ON CONFLICT DO NOTHING
             RETURNING {COLUMNS}),
         e AS (
             INSERT INTO job_events (id, job_id, customer_id, type, description, to_status, attempt)
             SELECT $11, j.id, $2, 'STATUS_CHANGE', $12, 'WAITING', 0 FROM j)
         SELECT * FROM j"
    );
    let created = if new.triggered_by.is_some() {
        "job created by a trigger: WAITING"
    } else {
        "job created: WAITING"
    };
    let row = query_opt(
        db,
        &sql,
        &[
            &JobId::new().0,
            &customer.0,
            &new.name,
            &new.task_id.0,
            &new.host_id.map(|b| b.0),
            &new.required_tags,
            &new.multitasking,
            &spec,
            &new.not_before,
            &new.triggered_by.map(|j| j.0),
            &Uuid::now_v7(),
            &created,
            &new.acls,
            &new.callback_id,
            &new.max_attempts,
        ],
    )
    .await?;
    if let Some(row) = row {
        return Ok((from_row(&row)?, true));
    }
    // Nothing inserted: the trigger created its run already.
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs
          WHERE customer_id = $1 AND $2::uuid IS NOT NULL AND triggered_by = $2 AND task_id = $3"
    );
    let row = query_opt(
        db,
        &sql,
        &[&customer.0, &new.triggered_by.map(|j| j.0), &new.task_id.0],
    )
    .await?
    .ok_or_else(|| RepoError::Conflict("the job was removed meanwhile; retry".into()))?;
    Ok((from_row(&row)?, false))
}

pub async fn get(
    db: &impl GenericClient,
    customer: CustomerId,
    id: JobId,
) -> Result<JobView, RepoError> {
    let sql = format!("SELECT {COLUMNS} FROM jobs WHERE id = $1 AND customer_id = $2");
    let row = query_opt(db, &sql, &[&id.0, &customer.0])
        .await?
        .ok_or(RepoError::NotFound("job"))?;
    from_row(&row)
}

#[derive(Debug, Default, Clone)]
pub struct JobFilter {
    pub task: Option<TaskId>,
    /// Jobs on this bot (now, or last).
    pub bot: Option<BotId>,
    /// Any of these statuses; empty: all.
    pub statuses: Vec<JobStatus>,
    /// Runs of tasks carrying every one of these labels; empty: all.
    pub labels: Vec<String>,
}

fn status_names(statuses: &[JobStatus]) -> Vec<&'static str> {
    statuses.iter().map(|s| s.as_str()).collect()
}

/// Whether `reader` may see a job with these acls.
pub fn visible_to(acls: &[String], reader: Reader<'_>) -> bool {
    match reader {
        Reader::Admin => true,
        Reader::Named(name) => acls.is_empty() || name.is_some_and(|n| acls.iter().any(|a| a == n)),
    }
}

pub async fn list(
    db: &impl GenericClient,
    customer: CustomerId,
    filter: &JobFilter,
    reader: Reader<'_>,
    page: Page,
) -> Result<Vec<JobView>, RepoError> {
    let (admin, name) = match reader {
        Reader::Admin => (true, None),
        Reader::Named(name) => (false, name),
    };
    let (cmp, dir) = page.order_sql();
    let sql = format!(
        "SELECT {COLUMNS} FROM jobs
          WHERE customer_id = $1 AND kind = 'script'
            AND ($2::uuid IS NULL OR task_id = $2)
            AND (cardinality($3::text[]) = 0 OR status = ANY($3))
            AND ($4::uuid IS NULL OR id {cmp} $4)
            AND ($6 OR acls = '{{}}' OR $7::text = ANY(acls))
            AND (cardinality($8::text[]) = 0
                 OR task_id IN (SELECT id FROM task_defs WHERE customer_id = $1 AND tags @> $8))
            AND ($9::uuid IS NULL OR bot_id = $9)
          ORDER BY id {dir} LIMIT $5"
    );
    let rows = query(
        db,
        &sql,
        &[
            &customer.0,
            &filter.task.map(|t| t.0),
            &status_names(&filter.statuses),
            &page.after,
            &page.limit,
            &admin,
            &name,
            &filter.labels,
            &filter.bot.map(|b| b.0),
        ],
    )
    .await?;
    rows.iter().map(from_row).collect()
}

/// Removes a task's jobs in the given statuses (never one holding a bot);
/// returns how many. A job being matched right now is left alone: the
/// guarded delete re-checks the status once it gets the row.
pub async fn empty_queue(
    db: &impl GenericClient,
    customer: CustomerId,
    task: TaskId,
    statuses: &[JobStatus],
) -> Result<u64, RepoError> {
    let statuses: Vec<&str> = status_names(
        &statuses
            .iter()
            .copied()
            .filter(|s| !s.is_active())
            .collect::<Vec<_>>(),
    );
    execute(
        db,
        "DELETE FROM jobs WHERE customer_id = $1 AND task_id = $2 AND status = ANY($3)",
        &[&customer.0, &task.0, &statuses],
    )
    .await
}

/// A run of a task with the values a caller supplied for its arguments,
/// with the script's current checksum: what `create` inserts.
pub fn new_run(task: &Runnable, supplied: &[Value]) -> Result<NewScriptJob, FieldError> {
    let def = &task.def;
    let args = resolve_arguments(&parse_argument_defs(&def.task_arguments)?, supplied)?;
    Ok(NewScriptJob {
        task_id: def.id,
        name: def.name.clone(),
        host_id: def.host_id,
        required_tags: def.required_tags.clone(),
        multitasking: def.multitasking,
        acls: def.acls.clone(),
        callback_id: def.callback_id,
        max_attempts: def.max_attempts,
        spec: ScriptSpec {
            script_id: def.script_id,
            checksum: task.script_checksum.clone(),
            filename: task.script_filename.clone(),
            run_as: def.run_as.clone(),
            args,
            env: parse_env(&def.env)?,
            timeout_secs: u32::try_from(def.timeout).unwrap_or(600),
        },
        not_before: None,
        triggered_by: None,
    })
}

/// Creates the runs that `job` (of `task`) ending triggers, at most one per
/// triggered task (a redelivered report changes nothing). A triggered task
/// whose arguments are open takes them from the job's `output` when it is
/// an array. Returns when the first run that waits out a grace time may
/// start.
pub async fn fire_triggers(
    db: &impl GenericClient,
    customer: CustomerId,
    job: JobId,
    task: TaskId,
    success: bool,
    output: Option<&Value>,
) -> Result<Option<OffsetDateTime>, RepoError> {
    let mut wake: Option<OffsetDateTime> = None;
    for runnable in task_defs::triggered_by(db, customer, task).await? {
        let def = &runnable.def;
        let fires = parse_triggers(&def.triggers)
            .unwrap_or_default()
            .iter()
            .any(|t| t.task_id == task && t.on.fires(success));
        if !fires {
            continue;
        }
        let open = parse_argument_defs(&def.task_arguments)
            .map(|d| {
                d.iter()
                    .any(|a| !matches!(a, crate::task_def::ArgumentDef::Fixed { .. }))
            })
            .unwrap_or(false);
        let supplied = match output {
            Some(Value::Array(values)) if open => values.clone(),
            _ => Vec::new(),
        };
        let mut run = match new_run(&runnable, &supplied) {
            Ok(run) => run,
            Err(FieldError { field, message }) => {
                append_events(
                    db,
                    &[EventRecord {
                        id: Uuid::new_v5(&job.0, def.id.0.as_bytes()),
                        job_id: job,
                        customer,
                        kind: EventKind::Warning,
                        description: format!(
                            "trigger of task {} ({}) not run: {field}: {message}",
                            def.name, def.id
                        ),
                        from: None,
                        to: None,
                        bot: None,
                        attempt: None,
                    }],
                )
                .await?;
                continue;
            }
        };
        if def.grace_time > 0 {
            let at = OffsetDateTime::now_utc() + time::Duration::seconds(i64::from(def.grace_time));
            run.not_before = Some(at);
            wake = Some(wake.map_or(at, |w| w.min(at)));
        }
        run.triggered_by = Some(job);
        create(db, customer, &run).await?;
    }
    Ok(wake)
}
