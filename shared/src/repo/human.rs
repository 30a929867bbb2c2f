//! Human tasks: micro-tasks reserved, started and finished by field
//! workers, flowBuild user tasks, their executions and the finish
//! submissions received. Every change locks the task's row, applies the
//! pure transition (`human::human_transition`) with a guarded update and
//! appends its event to the one event table (so webhooks and the live feed
//! see human tasks as they see jobs).

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
    ActivityManager, ExecutionStatus, FieldError, FinishBody, HumanEvent, HumanKind, HumanStatus,
    OnTimeout, Schema, human_transition,
};

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
    mut next: Next,
) -> Result<(HumanTask, Vec<EventRecord>), RepoError> {
    let mut statuses = Vec::with_capacity(steps.len());
    let mut to = task.status;
    for (event, _, _) in steps {
        to = human_transition(to, *event).map_err(|e| RepoError::Conflict(e.to_string()))?;
        statuses.push(to);
    }
    if to.is_terminal() {
        next.deadline = None;
    }
    let sql = format!(
        "UPDATE human_tasks SET status = $3, worker = $4, execution_id = $5, deadline = $6,
                committed = $7, result = $8, error = $9, is_continue = $10, updated_at = now(),
                finished_at = CASE WHEN $11 THEN now() END
          WHERE id = $1 AND status = $2
          RETURNING {COLUMNS}"
    );
    let row = query_opt(
        db,
        &sql,
        &[
            &task.id.0,
            &task.status.as_str(),
            &to.as_str(),
            &next.worker,
            &next.execution_id.map(|e| e.0),
            &next.deadline,
            &next.committed,
            &next.result,
            &next.error,
            &next.is_continue,
            &to.is_terminal(),
        ],
    )
    .await?
    .ok_or_else(|| RepoError::Conflict(format!("human task {} changed meanwhile", task.id)))?;
    let updated = task_from(&row)?;
    let mut from = task.status;
    let mut events = Vec::with_capacity(steps.len());
    for ((_, note, id), &status) in steps.iter().zip(&statuses) {
        if status != from {
            events.push(status_event(&updated, *id, Some(from), status, *note));
        }
        from = status;
    }
    Ok((updated, events))
}

/// Why a worker's request on a micro-task is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no such micro-task")]
    NotFound,
    #[error("this micro-task is held by another worker")]
    HeldByOther,
    #[error("this micro-task is {0}; reserve it before starting it")]
    NotReserved(HumanStatus),
    #[error("this micro-task is {0}")]
    Closed(HumanStatus),
    #[error("this micro-task is {0}: start it first")]
    NotExecuting(HumanStatus),
    #[error("you hold {0} micro-tasks already, the most allowed; finish or release one first")]
    TooMany(i64),
    #[error("no micro-task is available")]
    NoneAvailable,
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Reserves a micro-task for `worker`: the one named, or the oldest NEW one
/// (of `action`, when given). Reserving a task one holds already returns it.
pub async fn reserve(
    db: &impl GenericClient,
    customer: CustomerId,
    worker: &str,
    id: Option<HumanTaskId>,
    action: Option<&str>,
    hold_ms: u64,
    max_held: i64,
) -> Result<HumanTask, Refusal> {
    // One worker's reservations are counted and taken one at a time.
    execute(
        db,
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 7))",
        &[&customer.0.to_string(), &worker],
    )
    .await?;
    let task = match id {
        Some(id) => lock(db, customer, id).await?,
        None => {
            let sql = format!(
                "SELECT {COLUMNS} FROM human_tasks
                  WHERE customer_id = $1 AND status = 'NEW' AND kind = 'micro_task'
                    AND ($2::text IS NULL OR action = $2)
                  ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
            );
            query_opt(db, &sql, &[&customer.0, &action])
                .await?
                .map(|r| task_from(&r))
                .transpose()?
        }
    };
    let task = match task {
        Some(t) if t.kind == HumanKind::MicroTask => t,
        Some(_) | None if id.is_some() => return Err(Refusal::NotFound),
        _ => return Err(Refusal::NoneAvailable),
    };
    match (task.status, task.worker.as_deref()) {
        (HumanStatus::Reserved | HumanStatus::Executing, Some(w)) if w == worker => {
            return Ok(task);
        }
        (HumanStatus::Reserved | HumanStatus::Executing, _) => return Err(Refusal::HeldByOther),
        (HumanStatus::New, _) => {}
        (other, _) => return Err(Refusal::Closed(other)),
    }
    let held = query_one(
        db,
        "SELECT count(*) FROM human_tasks
          WHERE customer_id = $1 AND worker = $2 AND status IN ('RESERVED', 'EXECUTING')",
        &[&customer.0, &worker],
    )
    .await?
    .get::<_, i64>(0);
    if held >= max_held {
        return Err(Refusal::TooMany(held));
    }
    let next = Next {
        worker: Some(worker.to_string()),
        deadline: Some(super::now() + ms(hold_ms)),
        ..Next::of(&task)
    };
    let note = format!("reserved by {worker}");
    Ok(transition(
        db,
        &task,
        HumanEvent::Reserve,
        next,
        Some(&note),
        Uuid::now_v7(),
    )
    .await?)
}

fn ms(ms: u64) -> time::Duration {
    time::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// The worker gives a micro-task back: NEW again for someone else. A
/// started execution ends as EXPIRED.
pub async fn release(
    db: &impl GenericClient,
    customer: CustomerId,
    worker: &str,
    id: HumanTaskId,
) -> Result<HumanTask, Refusal> {
    let task = held_by(db, customer, worker, id).await?;
    requeue(db, &task, "released by its worker", Uuid::now_v7()).await?;
    Ok(get(db, customer, id).await?)
}

async fn held_by(
    db: &impl GenericClient,
    customer: CustomerId,
    worker: &str,
    id: HumanTaskId,
) -> Result<HumanTask, Refusal> {
    let task = match lock(db, customer, id).await? {
        Some(t) if t.kind == HumanKind::MicroTask => t,
        _ => return Err(Refusal::NotFound),
    };
    match (task.status, task.worker.as_deref()) {
        (HumanStatus::Reserved | HumanStatus::Executing, Some(w)) if w == worker => Ok(task),
        (HumanStatus::Reserved | HumanStatus::Executing, _) => Err(Refusal::HeldByOther),
        (HumanStatus::New, _) => Err(Refusal::NotReserved(HumanStatus::New)),
        (other, _) => Err(Refusal::Closed(other)),
    }
}

/// The micro-task, when `worker` is executing it (e.g. to upload a photo
/// for one of its steps).
pub async fn executing_by(
    db: &impl GenericClient,
    customer: CustomerId,
    worker: &str,
    id: HumanTaskId,
) -> Result<HumanTask, Refusal> {
    let task = held_by(db, customer, worker, id).await?;
    if task.status == HumanStatus::Executing {
        Ok(task)
    } else {
        Err(Refusal::NotExecuting(task.status))
    }
}

/// Back to NEW; the current execution, if any, EXPIRED with `why`.
async fn requeue(
    db: &impl GenericClient,
    task: &HumanTask,
    why: &str,
    event_id: Uuid,
) -> Result<HumanTask, RepoError> {
    if let Some(execution) = task.execution_id {
        execute(
            db,
            "UPDATE human_executions SET status = 'EXPIRED', finished_at = now(), reason = $2
              WHERE id = $1 AND status = 'EXECUTING'",
            &[&execution.0, &why],
        )
        .await?;
    }
    let next = Next {
        worker: None,
        execution_id: None,
        deadline: None,
        ..Next::of(task)
    };
    transition(db, task, HumanEvent::Requeue, next, Some(why), event_id).await
}

/// Starts a reserved micro-task: a new execution with its deadline. The
/// same worker starting it again gets the same execution back.
pub async fn start(
    db: &impl GenericClient,
    customer: CustomerId,
    worker: &str,
    id: HumanTaskId,
) -> Result<(HumanTask, Execution), Refusal> {
    let task = held_by(db, customer, worker, id).await?;
    if task.status == HumanStatus::Executing
        && let Some(execution) = task.execution_id
    {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM human_executions WHERE id = $1");
        let row = query_one(db, &sql, &[&execution.0]).await?;
        return Ok((task, execution_from(&row)?));
    }
    let execution = ExecutionId::new();
    let deadline = super::now() + time::Duration::milliseconds(task.execution_ms);
    let sql = format!(
        "INSERT INTO human_executions (id, task_id, customer_id, worker, status, deadline)
         VALUES ($1, $2, $3, $4, 'EXECUTING', $5) RETURNING {EXECUTION_COLUMNS}"
    );
    let row = query_one(
        db,
        &sql,
        &[&execution.0, &task.id.0, &customer.0, &worker, &deadline],
    )
    .await?;
    let next = Next {
        execution_id: Some(execution),
        deadline: Some(deadline),
        ..Next::of(&task)
    };
    let note = format!("execution {execution} started by {worker}");
    let task = transition(
        db,
        &task,
        HumanEvent::Start,
        next,
        Some(&note),
        Uuid::now_v7(),
    )
    .await?;
    Ok((task, execution_from(&row)?))
}

/// A finish submission as the gateway accepted it.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The message's id: a redelivered message is recognised by it.
    pub id: Uuid,
    pub customer: CustomerId,
    pub token_id: Uuid,
    pub worker: String,
    pub task_id: Uuid,
    pub received_at: OffsetDateTime,
    pub body: Value,
}

/// What became of a submission.
#[derive(Debug, Clone)]
pub enum Applied {
    /// Applied: the task is COMPLETE, REJECTED (its answers failed
    /// `activity_schema`) or ERROR (`result_schema`).
    Applied {
        task: Box<HumanTask>,
        execution: Box<Execution>,
    },
    /// Not applied, and why; the task (when there is one) is unchanged.
    Refused {
        reason: String,
        task: Option<Box<HumanTask>>,
    },
    /// The same finish again (or the same message): nothing to do.
    Duplicate,
}

fn body_hash(body: &Value) -> Vec<u8> {
    Sha256::digest(body.to_string().as_bytes()).to_vec()
}

/// A submission's record, written with the rest of its batch.
#[derive(Debug, Clone)]
struct SubmissionRow {
    id: Uuid,
    customer: CustomerId,
    task_id: Uuid,
    execution_id: Option<String>,
    worker: String,
    body: Value,
    body_hash: Vec<u8>,
    received_at: OffsetDateTime,
    outcome: &'static str,
    reason: Option<String>,
}

/// What a batch of submissions appends: its events and its submission
/// records, written by `flush` in two statements for the whole batch (the
/// updates of tasks and executions are made as each is applied).
#[derive(Debug, Default)]
pub struct Writes {
    events: Vec<EventRecord>,
    submissions: Vec<SubmissionRow>,
}

impl Writes {
    fn record(
        &mut self,
        sub: &Submission,
        execution_id: Option<&str>,
        outcome: &'static str,
        reason: Option<&str>,
    ) {
        self.submissions.push(SubmissionRow {
            id: sub.id,
            customer: sub.customer,
            task_id: sub.task_id,
            execution_id: execution_id.map(str::to_string),
            worker: sub.worker.clone(),
            body: sub.body.clone(),
            body_hash: body_hash(&sub.body),
            received_at: sub.received_at,
            outcome,
            reason: reason.map(str::to_string),
        });
    }

    /// Whether this batch applied (or rejected) the same body to the same
    /// execution already.
    fn has_same(&self, sub: &Submission, execution_id: &str) -> bool {
        let hash = body_hash(&sub.body);
        self.submissions.iter().any(|r| {
            r.customer == sub.customer
                && r.task_id == sub.task_id
                && r.execution_id.as_deref() == Some(execution_id)
                && r.outcome != "DUPLICATE"
                && r.body_hash == hash
        })
    }

    /// Writes the batch's events and submission records.
    pub async fn flush(self, db: &impl GenericClient) -> Result<(), RepoError> {
        append_events(db, &self.events).await?;
        if self.submissions.is_empty() {
            return Ok(());
        }
        let rows = &self.submissions;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let customers: Vec<Uuid> = rows.iter().map(|r| r.customer.0).collect();
        let tasks: Vec<Uuid> = rows.iter().map(|r| r.task_id).collect();
        let executions: Vec<Option<&str>> =
            rows.iter().map(|r| r.execution_id.as_deref()).collect();
        let workers: Vec<&str> = rows.iter().map(|r| r.worker.as_str()).collect();
        let bodies: Vec<&Value> = rows.iter().map(|r| &r.body).collect();
        let hashes: Vec<&[u8]> = rows.iter().map(|r| r.body_hash.as_slice()).collect();
        let received: Vec<OffsetDateTime> = rows.iter().map(|r| r.received_at).collect();
        let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome).collect();
        let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
        execute(
            db,
            "INSERT INTO human_submissions (id, customer_id, task_id, execution_id, worker, body,
                                            body_hash, received_at, outcome, reason)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                                  $6::jsonb[], $7::bytea[], $8::timestamptz[], $9::text[],
                                  $10::text[])
             ON CONFLICT (id) DO NOTHING",
            &[
                &ids,
                &customers,
                &tasks,
                &executions,
                &workers,
                &bodies,
                &hashes,
                &received,
                &outcomes,
                &reasons,
            ],
        )
        .await?;
        Ok(())
    }
}

/// Every way `instance` fails `schema` (a schema that does not compile
/// fails it too, named `field`).
fn schema_check(schema: &Value, instance: &Value, field: &str) -> Vec<FieldError> {
    match Schema::compile(schema) {
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

/// Applies one finish submission inside the caller's transaction: checks
/// it against the execution (the right worker, the right execution, still
/// running or finished in time, `activity_schema`), stores the answers and
/// moves the task on. Anything that cannot apply is recorded as REJECTED
/// with its reason, never dropped; the same finish twice applies once.
///
/// Its events and its record go to `writes`, which the caller flushes once
/// for the whole batch before committing.
pub async fn apply_submission(
    db: &impl GenericClient,
    sub: &Submission,
    writes: &mut Writes,
) -> Result<Applied, RepoError> {
    // Seen already (a redelivered message)? And is its token still valid?
    let row = query_one(
        db,
        "SELECT EXISTS (SELECT 1 FROM human_submissions WHERE id = $1),
                COALESCE((SELECT revoked_at IS NOT NULL FROM tokens
                           WHERE id = $2 AND customer_id = $3), true)",
        &[&sub.id, &sub.token_id, &sub.customer.0],
    )
    .await?;
    let (seen, revoked): (bool, bool) = (row.get(0), row.get(1));
    if seen || writes.submissions.iter().any(|r| r.id == sub.id) {
        return Ok(Applied::Duplicate);
    }
    let execution_text = sub.body.get("execution_id").and_then(Value::as_str);
    let refuse = |writes: &mut Writes, reason: String, task: Option<HumanTask>| {
        writes.record(sub, execution_text, "REJECTED", Some(&reason));
        if let Some(task) = &task {
            writes.events.push(note_event(
                task,
                Uuid::new_v5(&sub.id, b"refused"),
                EventKind::Warning,
                format!("finish from {} refused: {reason}", sub.worker),
            ));
        }
        Ok(Applied::Refused {
            reason,
            task: task.map(Box::new),
        })
    };
    let task = lock(db, sub.customer, HumanTaskId(sub.task_id)).await?;
    if revoked {
        return refuse(writes, "the worker's token has been revoked".into(), task);
    }
    let Some(task) = task.filter(|t| t.kind == HumanKind::MicroTask) else {
        return refuse(writes, format!("no micro-task {}", sub.task_id), None);
    };
    let body = match FinishBody::parse(&sub.body, sub.task_id, &sub.worker) {
        Ok(b) => b,
        Err(errors) => {
            let reason = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return refuse(writes, reason, Some(task));
        }
    };
    let execution = match Uuid::parse_str(&body.execution_id) {
        Ok(id) => {
            let sql = format!(
                "SELECT {EXECUTION_COLUMNS} FROM human_executions
                  WHERE id = $1 AND task_id = $2 FOR UPDATE"
            );
            query_opt(db, &sql, &[&id, &task.id.0])
                .await?
                .map(|r| execution_from(&r))
                .transpose()?
        }
        Err(_) => None,
    };
    let Some(execution) = execution else {
        let reason = format!(
            "execution {:?} is not an execution of this task",
            body.execution_id
        );
        return refuse(writes, reason, Some(task));
    };
    if !crate::human::same_email(&execution.worker, &sub.worker) {
        return refuse(
            writes,
            format!("execution {} belongs to another worker", execution.id),
            Some(task),
        );
    }
    let live = execution.status == ExecutionStatus::Executing
        && task.status == HumanStatus::Executing
        && task.execution_id == Some(execution.id);
    // Finished in time but processed after the deadline (the database was
    // down, the queue was long): it still counts while nobody else took
    // the task meanwhile.
    let ended = execution
        .finished_at
        .map_or(execution.deadline, |f| f.min(execution.deadline));
    let in_time = execution.status == ExecutionStatus::Expired
        && sub.received_at <= ended
        && task.status == HumanStatus::New;
    if !live && !in_time {
        let again = query_opt(
            db,
            "SELECT 1 FROM human_submissions
              WHERE customer_id = $1 AND task_id = $2 AND execution_id = $3
                AND outcome IN ('APPLIED', 'REJECTED') AND body_hash = $4",
            &[
                &sub.customer.0,
                &sub.task_id,
                &body.execution_id,
                &body_hash(&sub.body),
            ],
        )
        .await?;
        if again.is_some() || writes.has_same(sub, &body.execution_id) {
            writes.record(
                sub,
                execution_text,
                "DUPLICATE",
                Some("this finish was applied already"),
            );
            return Ok(Applied::Duplicate);
        }
        let reason = if execution.status == ExecutionStatus::Expired {
            format!("execution {} expired at its deadline", execution.id)
        } else {
            format!("execution {} is {} already", execution.id, execution.status)
        };
        return refuse(writes, reason, Some(task));
    }

    // Answers that do not fit `activity_schema` are refused and the task
    // stays as it was: its worker can send them again, corrected.
    if let Some(errors) = schema_errors(&task.activity_schema, &sub.body) {
        return refuse(writes, format!("activity_schema: {errors}"), Some(task));
    }
    let event_id = |tag: &[u8]| Uuid::new_v5(&sub.id, tag);
    let (event, exec_status, reason, result) =
        if let Some(errors) = schema_errors(&task.result_schema, &sub.body) {
            (
                HumanEvent::ResultInvalid,
                ExecutionStatus::Error,
                Some(format!("result_schema: {errors}")),
                Some(sub.body.clone()),
            )
        } else {
            (
                HumanEvent::Accept,
                ExecutionStatus::Complete,
                None,
                Some(sub.body.clone()),
            )
        };
    let sql = format!(
        "UPDATE human_executions SET status = $2, answers = $3, location = $4, nps = $5,
                timings = $6, submitted_at = $7, finished_at = now(), reason = $8
          WHERE id = $1 RETURNING {EXECUTION_COLUMNS}"
    );
    let row = query_one(
        db,
        &sql,
        &[
            &execution.id.0,
            &exec_status.as_str(),
            &serde_json::to_value(&body.execution).unwrap_or(Value::Null),
            &body
                .location
                .as_ref()
                .and_then(|l| serde_json::to_value(l).ok()),
            &body
                .nps_sofier
                .as_ref()
                .and_then(|n| serde_json::to_value(n).ok()),
            &body.timings(),
            &sub.received_at,
            &reason,
        ],
    )
    .await?;
    let execution = execution_from(&row)?;
    let received = format!("finish of execution {} received", execution.id);
    let (done, events) = update_path(
        db,
        &task,
        &[
            (HumanEvent::Submit, Some(&received), event_id(b"submit")),
            (event, reason.as_deref(), event_id(b"outcome")),
        ],
        Next {
            worker: Some(execution.worker.clone()),
            execution_id: Some(execution.id),
            deadline: None,
            result,
            error: reason.clone(),
            ..Next::of(&task)
        },
    )
    .await?;
    writes.events.extend(events);
    if let Some(reason) = &reason {
        writes.events.push(note_event(
            &done,
            event_id(b"error"),
            EventKind::Error,
            reason.clone(),
        ));
    }
    // An answer that fails `result_schema` was applied: the task is in
    // ERROR with it.
    writes.record(sub, execution_text, "APPLIED", reason.as_deref());
    Ok(Applied::Applied {
        task: Box::new(done),
        execution: Box::new(execution),
    })
}

/// What the reaper did to one human task.
#[derive(Debug, Clone, PartialEq)]
pub struct Expired {
    pub task: HumanTaskId,
    pub from: HumanStatus,
    pub to: HumanStatus,
    /// The deadline that passed.
    pub deadline: Option<OffsetDateTime>,
}

/// Applies the deadline rule to up to `limit` human tasks whose deadline
/// passed, in the caller's transaction; rows another reaper holds are
/// skipped. A reservation or a `requeue` execution goes back to NEW; a
/// `continue` task is submitted as it stands with `is_continue = true`.
pub async fn expire_due(db: &impl GenericClient, limit: i64) -> Result<Vec<Expired>, RepoError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM human_tasks
          WHERE deadline <= now()
          ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED"
    );
    let rows = query(db, &sql, &[&limit]).await?;
    let mut done = Vec::with_capacity(rows.len());
    for row in &rows {
        let task = task_from(row)?;
        // The event id is fixed by the deadline it expires, so a retried
        // batch cannot add a second one.
        let event_id = Uuid::new_v5(
            &task.id.0,
            format!(
                "expire:{:?}",
                task.deadline.map(|d| d.unix_timestamp_nanos())
            )
            .as_bytes(),
        );
        let after = match (task.status, task.on_timeout) {
            (HumanStatus::Reserved, _) => {
                requeue(db, &task, "reservation expired", event_id).await?
            }
            (HumanStatus::Executing, OnTimeout::Requeue) => {
                requeue(db, &task, "execution deadline passed", event_id).await?
            }
            (status, OnTimeout::Continue) if status.is_open() => {
                continue_task(db, &task, "timeout", event_id).await?
            }
            _ => {
                // A deadline left on a task no rule applies to: clear it.
                execute(
                    db,
                    "UPDATE human_tasks SET deadline = NULL WHERE id = $1",
                    &[&task.id.0],
                )
                .await?;
                continue;
            }
        };
        done.push(Expired {
            task: task.id,
            from: task.status,
            to: after.status,
            deadline: task.deadline,
        });
    }
    Ok(done)
}

/// Submits an open task as it stands, with `is_continue = true` (its
/// timeout passed, or an admin expired it), then concludes it.
async fn continue_task(
    db: &impl GenericClient,
    task: &HumanTask,
    why: &str,
    event_id: Uuid,
) -> Result<HumanTask, RepoError> {
    let submitted = transition(
        db,
        task,
        HumanEvent::Continue,
        Next {
            is_continue: true,
            deadline: None,
            ..Next::of(task)
        },
        Some(&format!("{why}: submitted with is_continue=true")),
        event_id,
    )
    .await?;
    conclude(db, &submitted, Uuid::new_v5(&event_id, b"outcome")).await
}

/// Why a request on a user task (flowBuild's activity manager) is refused.
#[derive(Debug, thiserror::Error)]
pub enum ActivityRefusal {
    #[error("no such activity")]
    NotFound,
    #[error("the activity is {0}: it is no longer open")]
    NotOpen(HumanStatus),
    #[error("the payload does not fit the activity's activity_schema")]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Repo(#[from] RepoError),
}

async fn open_user_task(
    db: &impl GenericClient,
    customer: CustomerId,
    id: HumanTaskId,
) -> Result<HumanTask, ActivityRefusal> {
    match lock(db, customer, id).await? {
        Some(t) if t.kind == HumanKind::UserTask && t.status.is_open() => Ok(t),
        Some(t) if t.kind == HumanKind::UserTask => Err(ActivityRefusal::NotOpen(t.status)),
        _ => Err(ActivityRefusal::NotFound),
    }
}

fn fits_activity(task: &HumanTask, payload: &Value) -> Result<(), ActivityRefusal> {
    let Some(schema) = &task.activity_schema else {
        return Ok(());
    };
    let errors = schema_check(schema, payload, "activity_schema");
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ActivityRefusal::Invalid(errors))
    }
}

/// Saves a partial answer: checked against `activity_schema` (a payload
/// that fails it changes nothing); the first commit makes the task
/// EXECUTING.
pub async fn commit(
    db: &impl GenericClient,
    customer: CustomerId,
    id: HumanTaskId,
    payload: Value,
) -> Result<HumanTask, ActivityRefusal> {
    let task = open_user_task(db, customer, id).await?;
    fits_activity(&task, &payload)?;
    let next = Next {
        committed: Some(payload),
        ..Next::of(&task)
    };
    let event_id = Uuid::now_v7();
    let updated = transition(
        db,
        &task,
        HumanEvent::Commit,
        next,
        Some("first commit"),
        event_id,
    )
    .await?;
    append_events(
        db,
        &[note_event(
            &updated,
            Uuid::new_v5(&event_id, b"commit"),
            EventKind::StepChange,
            "committed".into(),
        )],
    )
    .await?;
    Ok(updated)
}

/// Commits (when a payload is given) and closes the activity: SUBMITTED,
/// then COMPLETE, or ERROR when the result fails `result_schema`.
pub async fn submit(
    db: &impl GenericClient,
    customer: CustomerId,
    id: HumanTaskId,
    payload: Option<Value>,
) -> Result<HumanTask, ActivityRefusal> {
    let task = open_user_task(db, customer, id).await?;
    let committed = payload
        .or_else(|| task.committed.clone())
        .unwrap_or(Value::Object(Default::default()));
    fits_activity(&task, &committed)?;
    let event_id = Uuid::now_v7();
    let submitted = transition(
        db,
        &task,
        HumanEvent::Submit,
        Next {
            committed: Some(committed),
            deadline: None,
            ..Next::of(&task)
        },
        Some("submitted"),
        event_id,
    )
    .await?;
    Ok(conclude(db, &submitted, Uuid::new_v5(&event_id, b"outcome")).await?)
}

/// An admin ends an open activity now, as its timeout would.
pub async fn expire(
    db: &impl GenericClient,
    customer: CustomerId,
    id: HumanTaskId,
) -> Result<HumanTask, ActivityRefusal> {
    let task = open_user_task(db, customer, id).await?;
    Ok(continue_task(db, &task, "expired by an admin", Uuid::now_v7()).await?)
}

/// Fires up to `limit` due timers (an event on their task while it is
/// open), in the caller's transaction; timers another reaper holds are
/// skipped. Returns how many fired.
pub async fn fire_timers(db: &impl GenericClient, limit: i64) -> Result<usize, RepoError> {
    let rows = query(
        db,
        "SELECT t.id, t.description, h.id, h.customer_id, h.status
           FROM human_timers t JOIN human_tasks h ON h.id = t.task_id
          WHERE t.fired_at IS NULL AND t.fire_at <= now()
          ORDER BY t.fire_at LIMIT $1
            FOR UPDATE OF t SKIP LOCKED",
        &[&limit],
    )
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut events = Vec::new();
    let mut ids = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: Uuid = r.get(0);
        ids.push(id);
        let status: HumanStatus = parse_col(r.get::<_, &str>(4))?;
        if status.is_open() {
            // The timer's id is its event's: it fires once, whatever happens.
            events.push(EventRecord {
                id,
                job_id: JobId(r.get(2)),
                customer: CustomerId(r.get(3)),
                kind: EventKind::StepChange,
                description: format!("timer: {}", r.get::<_, &str>(1)),
                from: None,
                to: None,
                bot: None,
                attempt: None,
            });
        }
    }
    append_events(db, &events).await?;
    execute(
        db,
        "UPDATE human_timers SET fired_at = now() WHERE id = ANY($1)",
        &[&ids],
    )
    .await?;
    Ok(events.len())
}

/// A SUBMITTED user task's result (its committed answer, marked
/// `is_continue` when the timeout submitted it) checked against
/// `result_schema`: COMPLETE, or ERROR with the failures.
async fn conclude(
    db: &impl GenericClient,
    task: &HumanTask,
    event_id: Uuid,
) -> Result<HumanTask, RepoError> {
    let mut result = task
        .committed
        .clone()
        .unwrap_or(Value::Object(Default::default()));
    if task.is_continue {
        // The marker goes into an object answer; any other answer is
        // wrapped so it is not lost.
        result = match result {
            Value::Object(mut map) => {
                map.insert("is_continue".into(), Value::Bool(true));
                Value::Object(map)
            }
            other => serde_json::json!({ "value": other, "is_continue": true }),
        };
    }
    let (event, error) = match schema_errors(&task.result_schema, &result) {
        Some(errors) => (
            HumanEvent::ResultInvalid,
            Some(format!("result_schema: {errors}")),
        ),
        None => (HumanEvent::Accept, None),
    };
    let done = transition(
        db,
        task,
        event,
        Next {
            result: Some(result),
            error: error.clone(),
            ..Next::of(task)
        },
        error.as_deref(),
        event_id,
    )
    .await?;
    if let Some(error) = error {
        append_events(
            db,
            &[note_event(
                &done,
                Uuid::new_v5(&event_id, b"error"),
                EventKind::Error,
                error,
            )],
        )
        .await?;
    }
    Ok(done)
}
