//! Human tasks: micro-tasks reserved, started and finished by field
//! workers, flowBuild user tasks, their executions and the finish
//! submissions received. Every change locks the task's row, applies the
//! pure transition (`human::human_transition`) with a guarded update and
//! appends its event to the one event table (so webhooks and the live feed
//! see human tasks as they see jobs).
//!
//! * this file      – the rows: create, read, list; the transition helpers.
//! * `reservations` – reserve, release, start (micro-tasks).
//! * `submissions`  – finishes, applied in batches.
//! * `activities`   – user tasks: commit, submit, expire, conclude.
//! * `expiry`       – deadlines and timers, for the reaper.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use super::jobs::{EventKind, EventRecord, append_events};
use super::{Page, RepoError, execute, parse_col, query, query_one, query_opt};
use crate::domain::{CustomerId, ExecutionId, HumanTaskId, JobId};
use crate::human::{
    ActivityManager, ExecutionState, ExecutionStatus, FieldError, FinishBody, HumanEvent,
    HumanKind, HumanStatus, OnTimeout, Schema, TaskState, Verdict, human_transition,
};

mod activities;
mod expiry;
mod reservations;
mod submissions;

pub use activities::*;
pub use expiry::*;
pub use reservations::*;
pub use submissions::*;

/// A human task as stored and shown.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct HumanTask {
    pub id: HumanTaskId,
    #[serde(skip)]
    pub customer: CustomerId,
    pub kind: HumanKind,
    pub action: String,
    pub version: i32,
    pub input: Value,
    pub activity_schema: Option<Value>,
    pub result_schema: Option<Value>,
    pub activity_manager: ActivityManager,
    pub on_timeout: OnTimeout,
    /// Milliseconds a started execution may take.
    pub execution_ms: i64,
    pub status: HumanStatus,
    /// The worker (e-mail) holding or executing it.
    pub worker: Option<String>,
    pub execution_id: Option<ExecutionId>,
    /// When the current reservation, execution or timeout ends.
    #[serde(with = "time::serde::rfc3339::option")]
    pub deadline: Option<OffsetDateTime>,
    /// A user task's absolute timeout.
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<OffsetDateTime>,
    pub committed: Option<Value>,
    pub result: Option<Value>,
    pub error: Option<String>,
    pub is_continue: bool,
    pub events: Value,
    #[serde(skip)]
    pub callback_id: Option<Uuid>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

const COLUMNS: &str = "id, customer_id, kind, action, version, input, activity_schema,
    result_schema, activity_manager, on_timeout, execution_ms, status, worker, execution_id,
    deadline, expires_at, committed, result, error, is_continue, events, callback_id,
    created_at, updated_at, finished_at";

fn task_from(r: &Row) -> Result<HumanTask, RepoError> {
    Ok(HumanTask {
        id: HumanTaskId(r.get(0)),
        customer: CustomerId(r.get(1)),
        kind: parse_col(r.get::<_, &str>(2))?,
        action: r.get(3),
        version: r.get(4),
        input: r.get(5),
        activity_schema: r.get(6),
        result_schema: r.get(7),
        activity_manager: parse_col(r.get::<_, &str>(8))?,
        on_timeout: parse_col(r.get::<_, &str>(9))?,
        execution_ms: r.get(10),
        status: parse_col(r.get::<_, &str>(11))?,
        worker: r.get(12),
        execution_id: r.get::<_, Option<Uuid>>(13).map(ExecutionId),
        deadline: r.get(14),
        expires_at: r.get(15),
        committed: r.get(16),
        result: r.get(17),
        error: r.get(18),
        is_continue: r.get(19),
        events: r.get(20),
        callback_id: r.get(21),
        created_at: r.get(22),
        updated_at: r.get(23),
        finished_at: r.get(24),
    })
}

/// One start of a micro-task, with what its finish brought.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct Execution {
    pub id: ExecutionId,
    pub task_id: HumanTaskId,
    pub worker: String,
    pub status: ExecutionStatus,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub deadline: OffsetDateTime,
    pub answers: Option<Value>,
    pub location: Option<Value>,
    pub nps: Option<Value>,
    /// The seed's `when`: the worker's own start and finish.
    pub timings: Option<Value>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub submitted_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
    pub reason: Option<String>,
}

const EXECUTION_COLUMNS: &str = "id, task_id, worker, status, started_at, deadline, answers,
    location, nps, timings, submitted_at, finished_at, reason";

fn execution_from(r: &Row) -> Result<Execution, RepoError> {
    Ok(Execution {
        id: ExecutionId(r.get(0)),
        task_id: HumanTaskId(r.get(1)),
        worker: r.get(2),
        status: parse_col(r.get::<_, &str>(3))?,
        started_at: r.get(4),
        deadline: r.get(5),
        answers: r.get(6),
        location: r.get(7),
        nps: r.get(8),
        timings: r.get(9),
        submitted_at: r.get(10),
        finished_at: r.get(11),
        reason: r.get(12),
    })
}

pub struct NewHumanTask {
    pub customer: CustomerId,
    pub kind: HumanKind,
    pub action: String,
    pub version: i32,
    pub input: Value,
    pub activity_schema: Option<Value>,
    pub result_schema: Option<Value>,
    pub activity_manager: ActivityManager,
    pub on_timeout: OnTimeout,
    pub execution_ms: i64,
    pub expires_at: Option<OffsetDateTime>,
    pub events: Value,
    /// The timers `events` defines (user tasks).
    pub timers: Vec<crate::human::Timer>,
    pub callback_id: Option<Uuid>,
}

fn status_event(
    task: &HumanTask,
    id: Uuid,
    from: Option<HumanStatus>,
    to: HumanStatus,
    note: Option<&str>,
) -> EventRecord {
    let description = match (from, note) {
        (Some(from), Some(note)) => format!("{from} -> {to}: {note}"),
        (Some(from), None) => format!("{from} -> {to}"),
        (None, Some(note)) => format!("{to}: {note}"),
        (None, None) => to.to_string(),
    };
    EventRecord {
        id,
        job_id: JobId::from(task.id),
        customer: task.customer,
        kind: EventKind::StatusChange,
        description,
        from: from.map(HumanStatus::as_str),
        to: Some(to.as_str()),
        bot: None,
        attempt: None,
    }
}

fn note_event(task: &HumanTask, id: Uuid, kind: EventKind, description: String) -> EventRecord {
    EventRecord {
        id,
        job_id: JobId::from(task.id),
        customer: task.customer,
        kind,
        description,
        from: None,
        to: None,
        bot: None,
        attempt: None,
    }
}

pub async fn create(db: &impl GenericClient, new: &NewHumanTask) -> Result<HumanTask, RepoError> {
    let id = HumanTaskId::new();
    let sql = format!(
        "INSERT INTO human_tasks (id, customer_id, kind, action, version, input, activity_schema,
                                  result_schema, activity_manager, on_timeout, execution_ms, status,
                                  deadline, expires_at, events, callback_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 'NEW', $12, $12, $13, $14)
         RETURNING {COLUMNS}"
    );
    let row = query_one(
        db,
        &sql,
        &[
            &id.0,
            &new.customer.0,
            &new.kind.as_str(),
            &new.action,
            &new.version,
            &new.input,
            &new.activity_schema,
            &new.result_schema,
            &new.activity_manager.as_str(),
            &new.on_timeout.as_str(),
            &new.execution_ms,
            &new.expires_at,
            &new.events,
            &new.callback_id,
        ],
    )
    .await?;
    let task = task_from(&row)?;
    if !new.timers.is_empty() {
        let ids: Vec<Uuid> = new.timers.iter().map(|_| Uuid::now_v7()).collect();
        let at: Vec<OffsetDateTime> = new.timers.iter().map(|t| t.fire_at).collect();
        let what: Vec<&str> = new.timers.iter().map(|t| t.description.as_str()).collect();
        execute(
            db,
            "INSERT INTO human_timers (id, task_id, fire_at, description)
             SELECT id, $1, fire_at, description
               FROM unnest($2::uuid[], $3::timestamptz[], $4::text[]) AS t(id, fire_at, description)",
            &[&id.0, &ids, &at, &what],
        )
        .await?;
    }
    append_events(
        db,
        &[status_event(
            &task,
            Uuid::now_v7(),
            None,
            task.status,
            Some("created"),
        )],
    )
    .await?;
    Ok(task)
}

pub async fn get(
    db: &impl GenericClient,
    customer: CustomerId,
    id: HumanTaskId,
) -> Result<HumanTask, RepoError> {
    let sql = format!("SELECT {COLUMNS} FROM human_tasks WHERE id = $1 AND customer_id = $2");
    let row = query_opt(db, &sql, &[&id.0, &customer.0])
        .await?
        .ok_or(RepoError::NotFound("human task"))?;
    task_from(&row)
}

async fn lock(
    db: &impl GenericClient,
    customer: CustomerId,
    id: HumanTaskId,
) -> Result<Option<HumanTask>, RepoError> {
    let sql =
        format!("SELECT {COLUMNS} FROM human_tasks WHERE id = $1 AND customer_id = $2 FOR UPDATE");
    query_opt(db, &sql, &[&id.0, &customer.0])
        .await?
        .map(|r| task_from(&r))
        .transpose()
}

/// `lock` for many tasks at once, each named with its customer, locked in
/// id order (the one order every dispatcher locks in: no deadlocks);
/// those found, by id.
async fn lock_all(
    db: &impl GenericClient,
    wanted: &[(CustomerId, HumanTaskId)],
) -> Result<std::collections::HashMap<Uuid, HumanTask>, RepoError> {
    if wanted.is_empty() {
        return Ok(Default::default());
    }
    let ids: Vec<Uuid> = wanted.iter().map(|(_, t)| t.0).collect();
    let customers: Vec<Uuid> = wanted.iter().map(|(c, _)| c.0).collect();
    let sql = format!(
        "SELECT {COLUMNS} FROM human_tasks
          WHERE id = ANY($1)
            AND (id, customer_id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))
          ORDER BY id FOR UPDATE"
    );
    let rows = query(db, &sql, &[&ids, &customers]).await?;
    rows.iter()
        .map(|r| task_from(r).map(|t| (t.id.0, t)))
        .collect()
}

#[derive(Debug, Default, Clone)]
pub struct HumanFilter {
    pub kind: Option<HumanKind>,
    pub status: Option<HumanStatus>,
    pub action: Option<String>,
    /// Only tasks of this worker.
    pub worker: Option<String>,
    /// Only RESERVED and EXECUTING tasks.
    pub held: bool,
}

pub async fn list(
    db: &impl GenericClient,
    customer: CustomerId,
    filter: &HumanFilter,
    page: Page,
) -> Result<Vec<HumanTask>, RepoError> {
    let (cmp, dir) = page.order_sql();
    let sql = format!(
        "SELECT {COLUMNS} FROM human_tasks
          WHERE customer_id = $1
            AND ($2::text IS NULL OR kind = $2)
            AND ($3::text IS NULL OR status = $3)
            AND ($4::text IS NULL OR action = $4)
            AND ($5::text IS NULL OR worker = $5)
            AND ($6::uuid IS NULL OR id {cmp} $6)
            AND (NOT $8 OR status IN ('RESERVED', 'EXECUTING'))
          ORDER BY id {dir} LIMIT $7"
    );
    let rows = query(
        db,
        &sql,
        &[
            &customer.0,
            &filter.kind.map(HumanKind::as_str),
            &filter.status.map(HumanStatus::as_str),
            &filter.action,
            &filter.worker,
            &page.after,
            &page.limit,
            &filter.held,
        ],
    )
    .await?;
    rows.iter().map(task_from).collect()
}

/// Micro-tasks a worker may reserve, oldest first.
pub async fn available(
    db: &impl GenericClient,
    customer: CustomerId,
    action: Option<&str>,
    limit: i64,
) -> Result<Vec<HumanTask>, RepoError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM human_tasks
          WHERE customer_id = $1 AND status = 'NEW' AND kind = 'micro_task'
            AND ($2::text IS NULL OR action = $2)
          ORDER BY created_at, id LIMIT $3"
    );
    let rows = query(db, &sql, &[&customer.0, &action, &limit]).await?;
    rows.iter().map(task_from).collect()
}

pub async fn executions(
    db: &impl GenericClient,
    task: HumanTaskId,
) -> Result<Vec<Execution>, RepoError> {
    let sql = format!(
        "SELECT {EXECUTION_COLUMNS} FROM human_executions WHERE task_id = $1 ORDER BY started_at, id"
    );
    let rows = query(db, &sql, &[&task.0]).await?;
    rows.iter().map(execution_from).collect()
}

/// A finish submission as the dispatcher recorded it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct SubmissionView {
    pub id: Uuid,
    pub execution_id: Option<String>,
    pub worker: String,
    pub outcome: String,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub processed_at: OffsetDateTime,
}

pub async fn submissions(
    db: &impl GenericClient,
    customer: CustomerId,
    task: HumanTaskId,
) -> Result<Vec<SubmissionView>, RepoError> {
    let rows = query(
        db,
        "SELECT id, execution_id, worker, outcome, reason, received_at, processed_at
           FROM human_submissions WHERE customer_id = $1 AND task_id = $2
          ORDER BY received_at, id",
        &[&customer.0, &task.0],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| SubmissionView {
            id: r.get(0),
            execution_id: r.get(1),
            worker: r.get(2),
            outcome: r.get(3),
            reason: r.get(4),
            received_at: r.get(5),
            processed_at: r.get(6),
        })
        .collect())
}

/// The columns a transition may change besides the status.
#[derive(Debug, Clone)]
struct Next {
    worker: Option<String>,
    execution_id: Option<ExecutionId>,
    deadline: Option<OffsetDateTime>,
    committed: Option<Value>,
    result: Option<Value>,
    error: Option<String>,
    is_continue: bool,
}

impl Next {
    fn of(task: &HumanTask) -> Next {
        Next {
            worker: task.worker.clone(),
            execution_id: task.execution_id,
            deadline: task.deadline,
            committed: task.committed.clone(),
            result: task.result.clone(),
            error: task.error.clone(),
            is_continue: task.is_continue,
        }
    }
}

/// Applies `event` to a task whose row this transaction has locked:
/// guarded update, then its STATUS_CHANGE event (or none when the status
/// stays, e.g. a commit to an executing task).
async fn transition(
    db: &impl GenericClient,
    task: &HumanTask,
    event: HumanEvent,
    next: Next,
    note: Option<&str>,
    event_id: Uuid,
) -> Result<HumanTask, RepoError> {
    transition_path(db, task, &[(event, note, event_id)], next).await
}

/// One step of a path: the event, a note for its history, its event's id.
type Step<'a> = (HumanEvent, Option<&'a str>, Uuid);

/// Applies events one after the other (SUBMITTED, then COMPLETE) with one
/// guarded update; each step that changes the status gets its event.
async fn transition_path(
    db: &impl GenericClient,
    task: &HumanTask,
    steps: &[Step<'_>],
    next: Next,
) -> Result<HumanTask, RepoError> {
    let (updated, events) = update_path(db, task, steps, next).await?;
    append_events(db, &events).await?;
    Ok(updated)
}

/// `transition_path` without writing the events: they are returned.
async fn update_path(
    db: &impl GenericClient,
    task: &HumanTask,
    steps: &[Step<'_>],
    next: Next,
) -> Result<(HumanTask, Vec<EventRecord>), RepoError> {
    let (path, events) = plan_path(task, steps, next)?;
    let updated = write_paths(db, std::slice::from_ref(&path)).await?;
    let updated = updated
        .into_iter()
        .next()
        .ok_or_else(|| RepoError::Conflict(format!("human task {} changed meanwhile", task.id)))?;
    Ok((updated, events))
}

/// A path planned for one task: its guarded update, written by
/// `write_paths` (with other tasks' in one statement).
#[derive(Debug, Clone)]
struct PlannedPath {
    id: HumanTaskId,
    from: HumanStatus,
    to: HumanStatus,
    next: Next,
}

impl PlannedPath {
    /// The task as the update will leave it, but for `updated_at` and
    /// `finished_at` (the database's clock): what later decisions in the
    /// same batch see.
    fn predict(&self, task: &HumanTask) -> HumanTask {
        HumanTask {
            status: self.to,
            worker: self.next.worker.clone(),
            execution_id: self.next.execution_id,
            deadline: self.next.deadline,
            committed: self.next.committed.clone(),
            result: self.next.result.clone(),
            error: self.next.error.clone(),
            is_continue: self.next.is_continue,
            ..task.clone()
        }
    }
}

/// Checks each step of a path against the state machine; returns the
/// update to make and the STATUS_CHANGE event of each step that changes
/// the status. Nothing is written.
fn plan_path(
    task: &HumanTask,
    steps: &[Step<'_>],
    mut next: Next,
) -> Result<(PlannedPath, Vec<EventRecord>), RepoError> {
    let mut events = Vec::with_capacity(steps.len());
    let mut from = task.status;
    for (event, note, id) in steps {
        let to = human_transition(from, *event).map_err(|e| RepoError::Conflict(e.to_string()))?;
        if to != from {
            events.push(status_event(task, *id, Some(from), to, *note));
        }
        from = to;
    }
    if from.is_terminal() {
        next.deadline = None;
    }
    let path = PlannedPath {
        id: task.id,
        from: task.status,
        to: from,
        next,
    };
    Ok((path, events))
}

/// Writes planned paths with one guarded update for all of them (each
/// only while its task still has the status it was planned from; a task
/// at most once); returns the tasks as updated, in the order given.
async fn write_paths(
    db: &impl GenericClient,
    paths: &[PlannedPath],
) -> Result<Vec<HumanTask>, RepoError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = paths.iter().map(|p| p.id.0).collect();
    let from: Vec<&str> = paths.iter().map(|p| p.from.as_str()).collect();
    let to: Vec<&str> = paths.iter().map(|p| p.to.as_str()).collect();
    let workers: Vec<Option<&str>> = paths.iter().map(|p| p.next.worker.as_deref()).collect();
    let executions: Vec<Option<Uuid>> = paths
        .iter()
        .map(|p| p.next.execution_id.map(|e| e.0))
        .collect();
    let deadlines: Vec<Option<OffsetDateTime>> = paths.iter().map(|p| p.next.deadline).collect();
    let committed: Vec<Option<&Value>> = paths.iter().map(|p| p.next.committed.as_ref()).collect();
    let results: Vec<Option<&Value>> = paths.iter().map(|p| p.next.result.as_ref()).collect();
    let errors: Vec<Option<&str>> = paths.iter().map(|p| p.next.error.as_deref()).collect();
    let continues: Vec<bool> = paths.iter().map(|p| p.next.is_continue).collect();
    let terminal: Vec<bool> = paths.iter().map(|p| p.to.is_terminal()).collect();
    let sql = format!(
        "UPDATE human_tasks
            SET status = u_to, worker = u_worker, execution_id = u_execution,
                deadline = u_deadline, committed = u_committed, result = u_result,
                error = u_error, is_continue = u_continue, updated_at = now(),
                finished_at = CASE WHEN u_terminal THEN now() END
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[],
                       $6::timestamptz[], $7::jsonb[], $8::jsonb[], $9::text[], $10::bool[],
                       $11::bool[])
                AS u(u_id, u_from, u_to, u_worker, u_execution, u_deadline, u_committed,
                     u_result, u_error, u_continue, u_terminal)
          WHERE id = u_id AND status = u_from
          RETURNING {COLUMNS}"
    );
    let rows = query(
        db,
        &sql,
        &[
            &ids,
            &from,
            &to,
            &workers,
            &executions,
            &deadlines,
            &committed,
            &results,
            &errors,
            &continues,
            &terminal,
        ],
    )
    .await?;
    let mut updated: std::collections::HashMap<Uuid, HumanTask> = rows
        .iter()
        .map(|r| task_from(r).map(|t| (t.id.0, t)))
        .collect::<Result<_, _>>()?;
    paths
        .iter()
        .map(|p| {
            updated.remove(&p.id.0).ok_or_else(|| {
                RepoError::Conflict(format!("human task {} changed meanwhile", p.id))
            })
        })
        .collect()
}

/// Every way `instance` fails `schema` (a schema that does not compile
/// fails it too, named `field`).
fn schema_check(schema: &Value, instance: &Value, field: &str) -> Vec<FieldError> {
    match Schema::cached(schema) {
        Ok(s) => s.errors(instance),
        Err(e) => vec![FieldError {
            field: field.into(),
            message: e,
        }],
    }
}

fn schema_errors(schema: &Option<Value>, instance: &Value) -> Option<String> {
    let errors = schema_check(schema.as_ref()?, instance, "schema");
    (!errors.is_empty()).then(|| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}
