//! Jobs (the proof of concept's tasks), their transitions and the matcher.
//!
//! Every transition is one call of `transition` inside the caller's
//! transaction: lock the row, compute the next state with the pure state
//! machine, apply it with an update guarded by the state and attempt it was
//! computed from, append the event, and move the bot's load.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use std::collections::{HashMap, HashSet};
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Page, RepoError, bots, execute, now, parse_col, query, query_one, query_opt};
use crate::domain::{
    BotId, CustomerId, Delivery, JobEvent, JobId, JobStatus, TaskId, job_transition,
};
use crate::messages::{RowError, ScriptSpec};

/// A job as the `/tasks` API shows it: the proof of concept's fields first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, PartialEq)]
pub struct Task {
    pub id: JobId,
    /// `system` (a CSV task) or `script` (a run of a task definition).
    pub kind: String,
    pub description: String,
    pub system: String,
    pub status: JobStatus,
    /// Omitted from list responses unless asked for (it can be megabytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachment: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    pub bot_id: Option<BotId>,
    pub attempt: i32,
    pub percent: i16,
    pub rows_done: i32,
    pub rows_total: i32,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub finished_at: Option<OffsetDateTime>,
}

const SUMMARY: &str = "id, kind, description, system, status, created_at, bot_id, attempt, percent, \
     rows_done, rows_total, error, result, updated_at, started_at, finished_at";

fn from_row(r: &Row, with_attachment: bool) -> Result<Task, RepoError> {
    Ok(Task {
        id: JobId(r.get("id")),
        kind: r.get("kind"),
        description: r.get("description"),
        system: r.get("system"),
        status: parse_col(r.get::<_, &str>("status"))?,
        attachment: with_attachment.then(|| r.get("attachment")),
        created_at: r.get("created_at"),
        bot_id: r.get::<_, Option<Uuid>>("bot_id").map(BotId),
        attempt: r.get("attempt"),
        percent: r.get("percent"),
        rows_done: r.get("rows_done"),
        rows_total: r.get("rows_total"),
        error: r.get("error"),
        result: r.get("result"),
        updated_at: r.get("updated_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
    })
}

#[derive(Debug, Clone)]
pub struct NewTask {
    pub description: String,
    pub system: String,
    pub attachment: String,
    pub rows_total: i32,
    /// Where its events are delivered.
    pub callback_id: Option<Uuid>,
}

/// Inserts a WAITING job and its first event.
/// Inserts a WAITING job and its first event in one statement (atomic on its
/// own: no transaction round trips on the hot path).
pub async fn create(
    db: &impl GenericClient,
    customer: CustomerId,
    new: &NewTask,
) -> Result<Task, RepoError> {
    let id = JobId::new();
    let sql = format!(
        "WITH j AS (
             INSERT INTO jobs (id, customer_id, description, system, attachment, rows_total, status,
                               callback_id)
             VALUES ($1, $2, $3, $4, $5, $6, 'WAITING', $8) RETURNING {SUMMARY}, attachment),
         e AS (
             INSERT INTO job_events (id, job_id, customer_id, type, description, to_status, attempt)
             SELECT $7, j.id, $2, 'STATUS_CHANGE', 'job created: WAITING', 'WAITING', 0 FROM j)
         SELECT * FROM j"
    );
    let row = query_one(
        db,
        &sql,
        &[
            &id.0,
            &customer.0,
            &new.description,
            &new.system,
            &new.attachment,
            &new.rows_total,
            &Uuid::now_v7(),
            &new.callback_id,
        ],
    )
    .await?;
    from_row(&row, true)
}

pub async fn get(
    db: &impl GenericClient,
    customer: CustomerId,
    id: JobId,
) -> Result<Task, RepoError> {
    let sql = format!("SELECT {SUMMARY}, attachment FROM jobs WHERE id = $1 AND customer_id = $2");
    let row = query_opt(db, &sql, &[&id.0, &customer.0])
        .await?
        .ok_or(RepoError::NotFound("task"))?;
    from_row(&row, true)
}

#[derive(Debug, Default, Clone)]
pub struct TaskFilter {
    pub status: Option<JobStatus>,
    pub system: Option<String>,
    pub bot_id: Option<BotId>,
    pub with_attachment: bool,
}

pub async fn list(
    db: &impl GenericClient,
    customer: CustomerId,
    filter: &TaskFilter,
    page: Page,
) -> Result<Vec<Task>, RepoError> {
    let (cmp, dir) = page.order_sql();
    let sql = format!(
        "SELECT {SUMMARY}{} FROM jobs
          WHERE customer_id = $1 AND kind = 'system'
            AND ($2::text IS NULL OR status = $2)
            AND ($3::text IS NULL OR system = $3)
            AND ($4::uuid IS NULL OR bot_id = $4)
            AND ($5::uuid IS NULL OR id {cmp} $5)
          ORDER BY id {dir} LIMIT $6",
        if filter.with_attachment {
            ", attachment"
        } else {
            ""
        }
    );
    let rows = query(
        db,
        &sql,
        &[
            &customer.0,
            &filter.status.map(JobStatus::as_str),
            &filter.system,
            &filter.bot_id.map(|b| b.0),
            &page.after,
            &page.limit,
        ],
    )
    .await?;
    rows.iter()
        .map(|r| from_row(r, filter.with_attachment))
        .collect()
}

/// Changes what a job will do; only while nobody has it yet.
pub async fn update_definition(
    db: &impl GenericClient,
    customer: CustomerId,
    id: JobId,
    new: &NewTask,
) -> Result<Task, RepoError> {
    let sql = format!(
        "UPDATE jobs SET description = $3, system = $4, attachment = $5, rows_total = $6,
                updated_at = now()
          WHERE id = $1 AND customer_id = $2 AND status = 'WAITING'
          RETURNING {SUMMARY}, attachment"
    );
    let row = query_opt(
        db,
        &sql,
        &[
            &id.0,
            &customer.0,
            &new.description,
            &new.system,
            &new.attachment,
            &new.rows_total,
        ],
    )
    .await?;
    match row {
        Some(row) => from_row(&row, true),
        None => {
            let current = get(db, customer, id).await?;
            Err(RepoError::Conflict(format!(
                "task is {}; only a WAITING task can be changed",
                current.status
            )))
        }
    }
}

/// Deletes a job that holds no bot (waiting or finished).
pub async fn delete(
    db: &impl GenericClient,
    customer: CustomerId,
    id: JobId,
) -> Result<(), RepoError> {
    let n = execute(
        db,
        "DELETE FROM jobs WHERE id = $1 AND customer_id = $2
               AND status NOT IN ('ASSIGNED', 'RUNNING')",
        &[&id.0, &customer.0],
    )
    .await?;
    if n == 0 {
        let current = get(db, customer, id).await?;
        return Err(RepoError::Conflict(format!(
            "task is {}; cancel it before deleting it",
            current.status
        )));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    StatusChange,
    PercentChange,
    StepChange,
    Error,
    Warning,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::StatusChange => "STATUS_CHANGE",
            EventKind::PercentChange => "PERCENT_CHANGE",
            EventKind::StepChange => "STEP_CHANGE",
            EventKind::Error => "ERROR",
            EventKind::Warning => "WARNING",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EventRecord {
    /// The causing message's id where there is one: a redelivery is a no-op.
    pub id: Uuid,
    pub job_id: JobId,
    pub customer: CustomerId,
    pub kind: EventKind,
    pub description: String,
    /// The status names of a STATUS_CHANGE (a job's or a human task's).
    pub from: Option<&'static str>,
    pub to: Option<&'static str>,
    pub bot: Option<BotId>,
    pub attempt: Option<i32>,
}

/// Appends events; an event whose id exists already is skipped (a
/// redelivered report adds nothing).
pub async fn append_events(
    db: &impl GenericClient,
    events: &[EventRecord],
) -> Result<(), RepoError> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let jobs: Vec<Uuid> = events.iter().map(|e| e.job_id.0).collect();
    let customers: Vec<Uuid> = events.iter().map(|e| e.customer.0).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let descriptions: Vec<&str> = events.iter().map(|e| e.description.as_str()).collect();
    let from: Vec<Option<&str>> = events.iter().map(|e| e.from).collect();
    let to: Vec<Option<&str>> = events.iter().map(|e| e.to).collect();
    let bots: Vec<Option<Uuid>> = events.iter().map(|e| e.bot.map(|b| b.0)).collect();
    let attempts: Vec<Option<i32>> = events.iter().map(|e| e.attempt).collect();
    execute(
        db,
        "INSERT INTO job_events (id, job_id, customer_id, type, description, from_status,
                                 to_status, bot_id, attempt)
         SELECT id, job_id, customer_id, type, description, from_status, to_status, bot_id, attempt
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                       $6::text[], $7::text[], $8::uuid[], $9::int4[])
                WITH ORDINALITY AS e(id, job_id, customer_id, type, description, from_status,
                                     to_status, bot_id, attempt, n)
          ORDER BY n
         ON CONFLICT (id) DO NOTHING",
        &[
            &ids,
            &jobs,
            &customers,
            &kinds,
            &descriptions,
            &from,
            &to,
            &bots,
            &attempts,
        ],
    )
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Event {
    pub id: Uuid,
    pub job_id: JobId,
    #[serde(rename = "type")]
    pub kind: String,
    pub description: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub bot_id: Option<BotId>,
    pub attempt: Option<i32>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

pub async fn events(
    db: &impl GenericClient,
    customer: CustomerId,
    job: JobId,
) -> Result<Vec<Event>, RepoError> {
    let rows = query(
        db,
        "SELECT id, job_id, type, description, from_status, to_status, bot_id, attempt, created_at
               FROM job_events WHERE job_id = $1 AND customer_id = $2 ORDER BY seq",
        &[&job.0, &customer.0],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Event {
            id: r.get(0),
            job_id: JobId(r.get(1)),
            kind: r.get(2),
            description: r.get(3),
            from_status: r.get(4),
            to_status: r.get(5),
            bot_id: r.get::<_, Option<Uuid>>(6).map(BotId),
            attempt: r.get(7),
            created_at: r.get(8),
        })
        .collect())
}

/// Who is asking for a transition, for fencing.
#[derive(Debug, Clone, Copy)]
pub enum Actor {
    /// A bot reporting on a specific attempt: refused unless the job is still
    /// that attempt on that bot.
    Bot { bot: BotId, attempt: i32 },
    /// An API client (admin, or a legacy bot using `PUT /tasks/{id}`).
    Api,
    /// The system itself (dispatcher, reaper).
    System,
}

/// Extra fields a transition writes.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub percent: Option<i16>,
    pub rows_done: Option<i32>,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
    /// A script's exit code, its `output`, its current step.
    pub exit_code: Option<i32>,
    pub output: Option<serde_json::Value>,
    pub step: Option<String>,
    /// Rows that failed, merged into `result.failed_rows` by row number
    /// (a progress report's; `result` itself replaces the whole value).
    pub failed_rows: Vec<RowError>,
    /// The bot an `Assign` hands the job to (its next attempt).
    pub assign_to: Option<BotId>,
}

#[derive(Debug)]
pub enum Applied {
    /// The job moved (or, for a repeat, stayed) and is now this.
    Done { from: JobStatus, task: Box<Task> },
    /// The report belongs to an attempt the job no longer is.
    Stale {
        current_attempt: i32,
        current_bot: Option<BotId>,
    },
}

/// Applies `event` to a job in the caller's transaction and returns the job
/// as it now is. `event_id` names the event row (the message id for
/// reports), `at` when it happened.
#[allow(clippy::too_many_arguments)]
pub async fn transition(
    db: &impl GenericClient,
    customer: CustomerId,
    id: JobId,
    actor: Actor,
    event: JobEvent,
    outcome: &Outcome,
    event_id: Uuid,
    at: OffsetDateTime,
) -> Result<Applied, RepoError> {
    let change = Change {
        customer,
        job: id,
        actor,
        event,
        outcome: outcome.clone(),
        event_id,
        at,
        notes: Vec::new(),
    };
    let result = apply_changes(db, std::slice::from_ref(&change))
        .await?
        .pop()
        .ok_or_else(|| RepoError::Corrupt("no result for a change".into()))?;
    match result {
        ChangeResult::Done { from, .. } => Ok(Applied::Done {
            from,
            task: Box::new(get(db, customer, id).await?),
        }),
        ChangeResult::Stale {
            current_attempt,
            current_bot,
        } => Ok(Applied::Stale {
            current_attempt,
            current_bot,
        }),
        ChangeResult::NotFound => Err(RepoError::NotFound("task")),
        ChangeResult::Invalid(why) => Err(RepoError::Conflict(why)),
        // Only a bot's progress report can be late; to a single caller it
        // is as stale as any report of a lost attempt.
        ChangeResult::LateProgress => Ok(Applied::Stale {
            current_attempt: 0,
            current_bot: None,
        }),
    }
}

/// One requested transition, for `apply_changes`.
#[derive(Debug, Clone)]
pub struct Change {
    pub customer: CustomerId,
    pub job: JobId,
    pub actor: Actor,
    pub event: JobEvent,
    pub outcome: Outcome,
    /// Id of the STATUS_CHANGE event (the causing message's id for reports,
    /// so a redelivery adds nothing).
    pub event_id: Uuid,
    pub at: OffsetDateTime,
    /// Further events recorded when the change applies (PERCENT_CHANGE,
    /// ERROR); their ids derive from `event_id`.
    pub notes: Vec<(EventKind, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChangeResult {
    Done {
        from: JobStatus,
        to: JobStatus,
        /// Runs this change triggered that wait out a grace time: when the
        /// first of them may be matched.
        wake_at: Option<OffsetDateTime>,
    },
    /// A bot's report for an attempt the job no longer is.
    Stale {
        current_attempt: i32,
        current_bot: Option<BotId>,
    },
    /// A progress report of a lost attempt, arriving while the job waits
    /// for its next bot: the rows it reports done are kept (the next
    /// assignment resumes after them); nothing else changes.
    LateProgress,
    NotFound,
    /// The state machine refuses the event in the job's state.
    Invalid(String),
}

/// How long past a run's timeout its bot has to report the outcome before
/// the reaper ends the job as TIMEOUT: the agent's SIGTERM -> SIGKILL grace
/// and the report's way through RabbitMQ fit well within it.
pub const LEASE_SLACK: time::Duration = time::Duration::seconds(30);

/// A script job that ended in this batch: its task's triggers fire.
struct Ended {
    customer: CustomerId,
    job: JobId,
    task: TaskId,
    success: bool,
    output: Option<serde_json::Value>,
    /// Its index in the results.
    result: usize,
}

/// The in-memory copy of a locked job while changes are applied to it.
struct Locked {
    task: Option<TaskId>,
    customer: CustomerId,
    from: JobStatus,
    from_attempt: i32,
    status: JobStatus,
    /// The attempt now: one more once assigned.
    attempt: i32,
    assigned_at: Option<OffsetDateTime>,
    bot: Option<BotId>,
    percent: i16,
    rows_done: i32,
    error: Option<String>,
    result: Option<serde_json::Value>,
    started_at: Option<OffsetDateTime>,
    finished_at: Option<OffsetDateTime>,
    exit_code: Option<i32>,
    output: Option<serde_json::Value>,
    step: Option<String>,
    /// The run's timeout (script jobs) and the lease it gives.
    timeout_secs: Option<i64>,
    lease: Option<OffsetDateTime>,
    changed: bool,
}

/// Applies many transitions in the caller's transaction with a fixed number
/// of statements: lock every job involved (in id order, so concurrent
/// batches cannot deadlock), run each change through the state machine in
/// order, then write all jobs, all events and all bot loads at once. Each
/// job's update is still guarded by the state and attempt it was read in.
pub async fn apply_changes(
    db: &impl GenericClient,
    changes: &[Change],
) -> Result<Vec<ChangeResult>, RepoError> {
    let mut ids: Vec<Uuid> = changes.iter().map(|c| c.job.0).collect();
    ids.sort();
    ids.dedup();
    let rows = query(
        db,
        "SELECT id, customer_id, status, attempt, bot_id, percent, rows_done, error, result,
                started_at, finished_at, exit_code, output, step, task_id,
                (spec->>'timeout_secs')::int8, lease_expires_at, assigned_at
           FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&ids],
    )
    .await?;
    let mut jobs: HashMap<Uuid, Locked> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let status: JobStatus = parse_col(r.get::<_, &str>(2))?;
        jobs.insert(
            r.get(0),
            Locked {
                customer: CustomerId(r.get(1)),
                from: status,
                from_attempt: r.get(3),
                status,
                attempt: r.get(3),
                assigned_at: r.get(17),
                bot: r.get::<_, Option<Uuid>>(4).map(BotId),
                percent: r.get(5),
                rows_done: r.get(6),
                error: r.get(7),
                result: r.get(8),
                started_at: r.get(9),
                finished_at: r.get(10),
                exit_code: r.get(11),
                output: r.get(12),
                step: r.get(13),
                task: r.get::<_, Option<Uuid>>(14).map(TaskId),
                timeout_secs: r.get(15),
                lease: r.get(16),
                changed: false,
            },
        );
    }
    let mut results = Vec::with_capacity(changes.len());
    let mut events = Vec::new();
    let mut loads: HashMap<BotId, (i32, bool)> = HashMap::new();
    let mut ended: Vec<Ended> = Vec::new();
    for c in changes {
        let Some(job) = jobs.get_mut(&c.job.0).filter(|j| j.customer == c.customer) else {
            results.push(ChangeResult::NotFound);
            continue;
        };
        if let Actor::Bot { bot, attempt } = c.actor
            && (attempt != job.from_attempt || job.bot != Some(bot))
        {
            let rows_done = c.outcome.rows_done.unwrap_or(0);
            if c.event == JobEvent::Progress
                && attempt == job.from_attempt
                && job.status == JobStatus::Waiting
                && rows_done > job.rows_done
            {
                job.changed = true;
                job.rows_done = rows_done;
                job.result =
                    crate::rows::merge_failed_rows(job.result.as_ref(), &c.outcome.failed_rows);
                results.push(ChangeResult::LateProgress);
                continue;
            }
            results.push(ChangeResult::Stale {
                current_attempt: job.from_attempt,
                current_bot: job.bot,
            });
            continue;
        }
        let from = job.status;
        let to = match job_transition(from, c.event) {
            Ok(to) => to,
            Err(e) => {
                results.push(ChangeResult::Invalid(e.to_string()));
                continue;
            }
        };
        if to == JobStatus::Assigned && from != JobStatus::Assigned {
            let Some(bot) = c.outcome.assign_to else {
                results.push(ChangeResult::Invalid("an assignment names no bot".into()));
                continue;
            };
            job.bot = Some(bot);
            job.attempt += 1;
            job.assigned_at = Some(c.at);
            let load = loads.entry(bot).or_insert((0, false));
            load.0 += 1;
            load.1 = true;
        }
        let bot = job.bot;
        let percent_before = job.percent;
        job.changed = true;
        job.status = to;
        if to == JobStatus::Complete {
            job.percent = 100;
        } else if let Some(p) = c.outcome.percent {
            job.percent = p;
        }
        // Rows done only grow: a report overtaken by a later one (or a
        // redelivery) cannot move the resume position back.
        if let Some(n) = c.outcome.rows_done {
            job.rows_done = job.rows_done.max(n);
        }
        if !c.outcome.failed_rows.is_empty() {
            job.result =
                crate::rows::merge_failed_rows(job.result.as_ref(), &c.outcome.failed_rows);
        }
        if c.outcome.error.is_some() {
            job.error.clone_from(&c.outcome.error);
        }
        if c.outcome.result.is_some() {
            job.result.clone_from(&c.outcome.result);
        }
        if c.outcome.exit_code.is_some() {
            job.exit_code = c.outcome.exit_code;
        }
        if c.outcome.output.is_some() {
            job.output.clone_from(&c.outcome.output);
        }
        if c.outcome.step.is_some() {
            job.step.clone_from(&c.outcome.step);
        }
        if to == JobStatus::Running && job.started_at.is_none() {
            job.started_at = Some(c.at);
        }
        // A run with a timeout holds a lease from its start: its bot must
        // report an outcome by then (the timeout, plus the bot's own
        // SIGTERM/SIGKILL and reporting), or the reaper ends it.
        if from == JobStatus::Assigned && to == JobStatus::Running {
            job.lease = job
                .timeout_secs
                .map(|t| c.at + time::Duration::seconds(t) + LEASE_SLACK);
        }
        if !to.is_active() {
            job.lease = None;
        }
        if to.is_terminal() {
            job.finished_at = Some(c.at);
        }
        if to == JobStatus::Waiting {
            job.bot = None;
        }
        let record =
            |id: Uuid, kind: EventKind, description: String, status_change: bool| EventRecord {
                id,
                job_id: c.job,
                customer: c.customer,
                kind,
                description,
                from: status_change.then_some(from.as_str()),
                to: status_change.then_some(to.as_str()),
                bot,
                attempt: Some(job.attempt),
            };
        if from != to {
            let description = match &c.outcome.error {
                Some(error) if to == JobStatus::Failed => format!("{from} -> {to}: {error}"),
                _ => format!("{from} -> {to}"),
            };
            events.push(record(
                c.event_id,
                EventKind::StatusChange,
                description,
                true,
            ));
        }
        for (kind, description) in &c.notes {
            // Progress comes per row; a PERCENT_CHANGE only when the
            // percent did change.
            if *kind == EventKind::PercentChange && job.percent == percent_before {
                continue;
            }
            let id = Uuid::new_v5(&c.event_id, kind.as_str().as_bytes());
            events.push(record(id, *kind, description.clone(), false));
        }
        if from.is_active()
            && !to.is_active()
            && let Some(bot) = bot
        {
            loads.entry(bot).or_insert((0, false)).0 -= 1;
        }
        if to.is_terminal()
            && to != JobStatus::Canceled
            && let Some(task) = job.task
        {
            ended.push(Ended {
                customer: c.customer,
                job: c.job,
                task,
                success: to == JobStatus::Complete,
                output: job.output.clone(),
                result: results.len(),
            });
        }
        results.push(ChangeResult::Done {
            from,
            to,
            wake_at: None,
        });
    }
    write_jobs(db, &jobs).await?;
    append_events(db, &events).await?;
    let load_changes: Vec<bots::BotChange> = loads
        .iter()
        .map(|(bot, (delta, assigned))| {
            bots::BotChange::new(
                *bot,
                bots::BotCause::Load {
                    delta: *delta,
                    assigned: *assigned,
                },
            )
        })
        .collect();
    bots::apply(db, &load_changes).await?;
    for e in &ended {
        let wake_at = super::script_jobs::fire_triggers(
            db,
            e.customer,
            e.job,
            e.task,
            e.success,
            e.output.as_ref(),
        )
        .await?;
        if let Some(ChangeResult::Done { wake_at: w, .. }) = results.get_mut(e.result) {
            *w = wake_at;
        }
    }
    Ok(results)
}

async fn write_jobs(
    db: &impl GenericClient,
    jobs: &HashMap<Uuid, Locked>,
) -> Result<(), RepoError> {
    let changed: Vec<(&Uuid, &Locked)> = jobs.iter().filter(|(_, j)| j.changed).collect();
    if changed.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = changed.iter().map(|(id, _)| **id).collect();
    let status: Vec<&str> = changed.iter().map(|(_, j)| j.status.as_str()).collect();
    let percent: Vec<i16> = changed.iter().map(|(_, j)| j.percent).collect();
    let rows_done: Vec<i32> = changed.iter().map(|(_, j)| j.rows_done).collect();
    let error: Vec<Option<&str>> = changed.iter().map(|(_, j)| j.error.as_deref()).collect();
    let result: Vec<Option<&serde_json::Value>> =
        changed.iter().map(|(_, j)| j.result.as_ref()).collect();
    let started: Vec<Option<OffsetDateTime>> = changed.iter().map(|(_, j)| j.started_at).collect();
    let finished: Vec<Option<OffsetDateTime>> =
        changed.iter().map(|(_, j)| j.finished_at).collect();
    let bot: Vec<Option<Uuid>> = changed.iter().map(|(_, j)| j.bot.map(|b| b.0)).collect();
    let from: Vec<&str> = changed.iter().map(|(_, j)| j.from.as_str()).collect();
    let attempt: Vec<i32> = changed.iter().map(|(_, j)| j.from_attempt).collect();
    let exit_code: Vec<Option<i32>> = changed.iter().map(|(_, j)| j.exit_code).collect();
    let output: Vec<Option<&serde_json::Value>> =
        changed.iter().map(|(_, j)| j.output.as_ref()).collect();
    let step: Vec<Option<&str>> = changed.iter().map(|(_, j)| j.step.as_deref()).collect();
    let lease: Vec<Option<OffsetDateTime>> = changed.iter().map(|(_, j)| j.lease).collect();
    let new_attempt: Vec<i32> = changed.iter().map(|(_, j)| j.attempt).collect();
    let assigned_at: Vec<Option<OffsetDateTime>> =
        changed.iter().map(|(_, j)| j.assigned_at).collect();
    let n = execute(
        db,
        "UPDATE jobs j SET status = u.status, percent = u.percent, rows_done = u.rows_done,
                error = u.error, result = u.result, started_at = u.started_at,
                finished_at = u.finished_at, bot_id = u.bot_id, exit_code = u.exit_code,
                output = u.output, step = u.step, lease_expires_at = u.lease,
                attempt = u.new_attempt, assigned_at = u.assigned_at, updated_at = now()
           FROM unnest($1::uuid[], $2::text[], $3::int2[], $4::int4[], $5::text[], $6::jsonb[],
                       $7::timestamptz[], $8::timestamptz[], $9::uuid[], $10::text[], $11::int4[],
                       $12::int4[], $13::jsonb[], $14::text[], $15::timestamptz[], $16::int4[],
                       $17::timestamptz[])
                AS u(id, status, percent, rows_done, error, result, started_at, finished_at,
                     bot_id, from_status, attempt, exit_code, output, step, lease, new_attempt,
                     assigned_at)
          WHERE j.id = u.id AND j.status = u.from_status AND j.attempt = u.attempt",
        &[
            &ids,
            &status,
            &percent,
            &rows_done,
            &error,
            &result,
            &started,
            &finished,
            &bot,
            &from,
            &attempt,
            &exit_code,
            &output,
            &step,
            &lease,
            &new_attempt,
            &assigned_at,
        ],
    )
    .await?;
    if n != ids.len() as u64 {
        // Impossible while the rows are locked; refuse rather than half-apply.
        return Err(RepoError::Conflict("a task changed concurrently".into()));
    }
    Ok(())
}

/// A job handed to a bot by the matcher, with what delivery needs.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub job_id: JobId,
    pub attempt: i32,
    pub bot_id: BotId,
    pub delivery: Delivery,
    pub bot_address: String,
    pub bot_port: i32,
    pub description: String,
    pub system: String,
    pub attachment: String,
    pub created_at: OffsetDateTime,
    /// When the job was assigned (an agent re-checks an old assignment
    /// before running it).
    pub assigned_at: OffsetDateTime,
    /// What a script job runs.
    pub spec: Option<ScriptSpec>,
    /// Rows reported done by earlier attempts, and which of them failed:
    /// the agent resumes after them.
    pub rows_done: i32,
    pub failed_rows: Vec<RowError>,
}

fn spec_col(value: Option<serde_json::Value>) -> Result<Option<ScriptSpec>, RepoError> {
    value
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| RepoError::Corrupt(format!("job spec: {e}")))
}

struct FreeBot {
    id: BotId,
    capacity: i32,
    active: i32,
    delivery: Delivery,
    ip: String,
    port: i32,
    systems: Vec<String>,
    tags: Vec<String>,
    taken: i32,
}

/// A waiting job as the matcher sees it.
struct Candidate {
    id: Uuid,
    system: Option<String>,
    /// Script jobs: the bot it must run on, the tags its bot must carry,
    /// and its task when at most one run of it may be on a bot.
    host: Option<BotId>,
    tags: Vec<String>,
    single_task: Option<Uuid>,
}

impl Candidate {
    fn fits(&self, bot: &FreeBot, busy: &HashSet<(BotId, Uuid)>) -> bool {
        if bot.active + bot.taken >= bot.capacity {
            return false;
        }
        match &self.system {
            Some(system) => bot.systems.iter().any(|s| s == system),
            None => {
                bot.delivery == Delivery::Agent
                    && self.host.is_none_or(|h| h == bot.id)
                    && self.tags.iter().all(|t| bot.tags.contains(t))
                    && self
                        .single_task
                        .is_none_or(|t| !busy.contains(&(bot.id, t)))
            }
        }
    }
}

/// Matches the customer's oldest waiting jobs to its bots with free capacity,
/// in the caller's transaction. Bots and jobs are claimed with `SKIP LOCKED`,
/// so concurrent matchers split the work and never assign a job twice.
pub async fn match_waiting(
    db: &impl GenericClient,
    customer: CustomerId,
    limit: i64,
) -> Result<Vec<Assigned>, RepoError> {
    let rows = query(
        db,
        "SELECT id, status, capacity, active_jobs, delivery, ip_address, port, systems, tags
               FROM bots
              WHERE customer_id = $1 AND status = 'AVAILABLE' AND NOT draining
                AND active_jobs < capacity
              ORDER BY last_assigned_at NULLS FIRST, id
              FOR UPDATE SKIP LOCKED",
        &[&customer.0],
    )
    .await?;
    let mut free: Vec<FreeBot> = rows
        .iter()
        .map(|r| {
            Ok(FreeBot {
                id: BotId(r.get(0)),
                capacity: r.get(2),
                active: r.get(3),
                delivery: parse_col(r.get::<_, &str>(4))?,
                ip: r.get(5),
                port: r.get(6),
                systems: r.get(7),
                tags: r.get(8),
                taken: 0,
            })
        })
        .collect::<Result<_, RepoError>>()?;
    let slots: i64 = free.iter().map(|b| i64::from(b.capacity - b.active)).sum();
    if slots == 0 {
        return Ok(Vec::new());
    }
    let systems: Vec<String> = {
        let mut all: Vec<String> = free.iter().flat_map(|b| b.systems.clone()).collect();
        all.sort();
        all.dedup();
        all
    };
    let agent_ids: Vec<Uuid> = free
        .iter()
        .filter(|b| b.delivery == Delivery::Agent)
        .map(|b| b.id.0)
        .collect();
    let agent_tags: Vec<String> = {
        let mut all: Vec<String> = free
            .iter()
            .filter(|b| b.delivery == Delivery::Agent)
            .flat_map(|b| b.tags.clone())
            .collect();
        all.sort();
        all.dedup();
        all
    };
    // Bots already running a one-run-per-bot task. The bots are locked by
    // this transaction, so nobody else assigns to them meanwhile.
    let mut busy: HashSet<(BotId, Uuid)> = HashSet::new();
    if !agent_ids.is_empty() {
        for r in query(
            db,
            "SELECT bot_id, task_id FROM jobs
                  WHERE bot_id = ANY($1) AND status IN ('ASSIGNED', 'RUNNING')
                    AND NOT multitasking AND task_id IS NOT NULL",
            &[&agent_ids],
        )
        .await?
        {
            busy.insert((BotId(r.get(0)), r.get(1)));
        }
    }
    // Oldest first, a page at a time. The query leaves out what no free bot
    // could take (another system, a host or tags no free agent has); what
    // is left may still not fit (a one-run-per-bot task already on every
    // free bot), so further pages are read until the slots are filled: a
    // backlog that cannot run must not hide the jobs behind it.
    let page_size = (slots * 8 + 32).min(limit.max(slots));
    let max_scan = page_size * 16;
    let mut scanned = 0;
    let mut after: Option<(OffsetDateTime, Uuid)> = None;
    let mut picks: Vec<(Uuid, usize)> = Vec::new();
    while (picks.len() as i64) < slots && scanned < max_scan {
        let rows = query(
            db,
            "SELECT id, kind, system, host_id, tags, multitasking, task_id, created_at FROM jobs
                  WHERE customer_id = $1 AND status = 'WAITING'
                    AND (not_before IS NULL OR not_before <= now())
                    AND ((kind = 'system' AND system = ANY($2))
                         OR (kind = 'script' AND cardinality($3::uuid[]) > 0
                             AND (host_id IS NULL OR host_id = ANY($3))
                             AND tags <@ $4))
                    AND ($6::timestamptz IS NULL OR (created_at, id) > ($6, $7))
                  ORDER BY created_at, id
                  LIMIT $5
                  FOR UPDATE SKIP LOCKED",
            &[
                &customer.0,
                &systems,
                &agent_ids,
                &agent_tags,
                &page_size,
                &after.map(|a| a.0),
                &after.map(|a| a.1),
            ],
        )
        .await?;
        scanned += rows.len() as i64;
        // Greedy, oldest job first, to the least loaded bot that can take it.
        for r in &rows {
            let script = r.get::<_, &str>(1) == "script";
            let job = Candidate {
                id: r.get(0),
                system: (!script).then(|| r.get(2)),
                host: r.get::<_, Option<Uuid>>(3).map(BotId),
                tags: r.get(4),
                single_task: if script && !r.get::<_, bool>(5) {
                    r.get(6)
                } else {
                    None
                },
            };
            let best = free
                .iter()
                .enumerate()
                .filter(|(_, b)| job.fits(b, &busy))
                .max_by_key(|(i, b)| (b.capacity - b.active - b.taken, std::cmp::Reverse(*i)))
                .map(|(i, _)| i);
            if let Some(i) = best {
                free[i].taken += 1;
                if let Some(task) = job.single_task {
                    busy.insert((free[i].id, task));
                }
                picks.push((job.id, i));
            }
        }
        match rows.last() {
            Some(last) if rows.len() as i64 == page_size => {
                after = Some((last.get(7), last.get(0)));
            }
            _ => break,
        }
    }
    if picks.is_empty() {
        return Ok(Vec::new());
    }
    // Through the jobs' one transition path: guarded, history kept, the
    // bots' loads moved.
    let at = now();
    let changes: Vec<Change> = picks
        .iter()
        .map(|(job, i)| Change {
            customer,
            job: JobId(*job),
            actor: Actor::System,
            event: JobEvent::Assign,
            outcome: Outcome {
                assign_to: Some(free[*i].id),
                ..Outcome::default()
            },
            event_id: Uuid::now_v7(),
            at,
            notes: Vec::new(),
        })
        .collect();
    let results = apply_changes(db, &changes).await?;
    let assigned: Vec<Uuid> = picks
        .iter()
        .zip(&results)
        .filter(|(_, r)| matches!(r, ChangeResult::Done { .. }))
        .map(|((job, _), _)| *job)
        .collect();
    let rows = query(
        db,
        "SELECT id, attempt, description, system, attachment, created_at, spec, rows_done, result
           FROM jobs WHERE id = ANY($1)",
        &[&assigned],
    )
    .await?;
    let by_id: HashMap<Uuid, &Row> = rows.iter().map(|r| (r.get(0), r)).collect();
    picks
        .iter()
        .filter_map(|(job, i)| {
            let b = &free[*i];
            by_id.get(job).map(|r| {
                Ok(Assigned {
                    job_id: JobId(*job),
                    attempt: r.get(1),
                    bot_id: b.id,
                    delivery: b.delivery,
                    bot_address: b.ip.clone(),
                    bot_port: b.port,
                    description: r.get(2),
                    system: r.get(3),
                    attachment: r.get(4),
                    created_at: r.get(5),
                    assigned_at: at,
                    spec: spec_col(r.get(6))?,
                    rows_done: r.get(7),
                    failed_rows: crate::rows::failed_rows_of(
                        r.get::<_, Option<serde_json::Value>>(8).as_ref(),
                    ),
                })
            })
        })
        .collect()
}

/// Customers that have waiting work, for the periodic sweep.
pub async fn customers_with_waiting(db: &impl GenericClient) -> Result<Vec<CustomerId>, RepoError> {
    let rows = query(
        db,
        "SELECT DISTINCT customer_id FROM jobs WHERE status = 'WAITING'",
        &[],
    )
    .await?;
    Ok(rows.iter().map(|r| CustomerId(r.get(0))).collect())
}

/// An assignment no bot has started in time, with its bot's last heartbeat.
pub struct StaleAssignment {
    pub customer: CustomerId,
    pub assigned: Assigned,
    pub bot_heartbeat_at: Option<OffsetDateTime>,
}

/// Jobs ASSIGNED before `older_than` that no bot has started: their delivery
/// may have been lost, or their bot may be gone.
pub async fn stale_assignments(
    db: &impl GenericClient,
    older_than: OffsetDateTime,
    limit: i64,
) -> Result<Vec<StaleAssignment>, RepoError> {
    let rows = query(
        db,
        "SELECT j.customer_id, j.id, j.attempt, b.id, b.delivery, b.ip_address, b.port,
                j.description, j.system, j.attachment, j.created_at, j.assigned_at,
                b.last_heartbeat_at, j.spec, j.rows_done, j.result
           FROM jobs j JOIN bots b ON b.id = j.bot_id
          WHERE j.status = 'ASSIGNED' AND j.assigned_at < $1
          ORDER BY j.assigned_at LIMIT $2",
        &[&older_than, &limit],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StaleAssignment {
                customer: CustomerId(r.get(0)),
                assigned: Assigned {
                    job_id: JobId(r.get(1)),
                    attempt: r.get(2),
                    bot_id: BotId(r.get(3)),
                    delivery: parse_col(r.get::<_, &str>(4))?,
                    bot_address: r.get(5),
                    bot_port: r.get(6),
                    description: r.get(7),
                    system: r.get(8),
                    attachment: r.get(9),
                    created_at: r.get(10),
                    assigned_at: r.get(11),
                    spec: spec_col(r.get(13))?,
                    rows_done: r.get(14),
                    failed_rows: crate::rows::failed_rows_of(
                        r.get::<_, Option<serde_json::Value>>(15).as_ref(),
                    ),
                },
                bot_heartbeat_at: r.get(12),
            })
        })
        .collect()
}

/// Restarts an assignment's clock after it was sent again.
pub async fn touch_assignment(
    db: &impl GenericClient,
    job: JobId,
    attempt: i32,
) -> Result<(), RepoError> {
    execute(
        db,
        "UPDATE jobs SET assigned_at = now() WHERE id = $1 AND attempt = $2 AND status = 'ASSIGNED'",
        &[&job.0, &attempt],
    )
    .await?;
    Ok(())
}

/// A job whose lease a reaper claimed.
#[derive(Debug, Clone)]
pub struct Expired {
    pub customer: CustomerId,
    pub job: JobId,
    pub attempt: i32,
    pub bot: Option<BotId>,
    /// Its task's retry limit, when it has one.
    pub max_attempts: Option<i32>,
    /// When its lease ended; for a job of a silent agent (`held_by`), the
    /// agent's last heartbeat, and for a silent HTTP bot's job
    /// (`claim_silent_http_jobs`), its last report: their leases end a
    /// silence window later.
    pub due: Option<OffsetDateTime>,
}

/// Rows of `customer_id, id, attempt, bot_id, max_attempts, <due>`: every
/// query feeding this selects those six, in that order.
fn expired_rows(rows: &[Row]) -> Vec<Expired> {
    rows.iter()
        .map(|r| Expired {
            customer: CustomerId(r.get(0)),
            job: JobId(r.get(1)),
            attempt: r.get(2),
            bot: r.get::<_, Option<Uuid>>(3).map(BotId),
            max_attempts: r.get(4),
            due: r.get(5),
        })
        .collect()
}

/// Running jobs whose lease passed `now`, oldest deadline first, claimed
/// with `SKIP LOCKED`: concurrent reapers take disjoint batches, and a job
/// one of them expires is no longer running for the other.
pub async fn claim_expired_leases(
    db: &impl GenericClient,
    now: OffsetDateTime,
    limit: i64,
) -> Result<Vec<Expired>, RepoError> {
    let rows = query(
        db,
        "SELECT customer_id, id, attempt, bot_id, max_attempts, lease_expires_at FROM jobs
          WHERE status IN ('ASSIGNED', 'RUNNING') AND lease_expires_at IS NOT NULL
            AND lease_expires_at < $1
          ORDER BY lease_expires_at LIMIT $2
          FOR UPDATE SKIP LOCKED",
        &[&now, &limit],
    )
    .await?;
    Ok(expired_rows(&rows))
}

/// Running jobs on legacy HTTP bots with no report since `before` (such a
/// bot does not heartbeat: silence on the job is all there is), claimed
/// with `SKIP LOCKED`.
pub async fn claim_silent_http_jobs(
    db: &impl GenericClient,
    before: OffsetDateTime,
    limit: i64,
) -> Result<Vec<Expired>, RepoError> {
    let rows = query(
        db,
        "SELECT j.customer_id, j.id, j.attempt, j.bot_id, j.max_attempts, j.updated_at
           FROM jobs j JOIN bots b ON b.id = j.bot_id
          WHERE b.delivery = 'http' AND j.status = 'RUNNING' AND j.updated_at < $1
          ORDER BY j.updated_at LIMIT $2
          FOR UPDATE OF j SKIP LOCKED",
        &[&before, &limit],
    )
    .await?;
    Ok(expired_rows(&rows))
}

/// The jobs the given bots hold (ASSIGNED or RUNNING), locked.
pub async fn held_by(db: &impl GenericClient, bots: &[BotId]) -> Result<Vec<Expired>, RepoError> {
    let ids: Vec<Uuid> = bots.iter().map(|b| b.0).collect();
    let rows = query(
        db,
        "SELECT j.customer_id, j.id, j.attempt, j.bot_id, j.max_attempts, b.last_heartbeat_at
           FROM jobs j JOIN bots b ON b.id = j.bot_id
          WHERE j.bot_id = ANY($1) AND j.status IN ('ASSIGNED', 'RUNNING')
          ORDER BY j.id FOR UPDATE OF j",
        &[&ids],
    )
    .await?;
    Ok(expired_rows(&rows))
}

/// An event of the live feed, with its place in the order of events.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FeedEvent {
    #[serde(skip)]
    pub seq: i64,
    #[serde(flatten)]
    pub event: Event,
    #[serde(skip)]
    pub recent: bool,
}

/// The customer's events after `after` (by `seq`), oldest first, of jobs
/// the reader may see (their acls), optionally of one job. `recent` marks
/// events younger than `settle` (a transaction still open may yet commit
/// events with a lower `seq` than those).
pub async fn events_after(
    db: &impl GenericClient,
    customer: CustomerId,
    after: i64,
    job: Option<JobId>,
    reader: super::task_defs::Reader<'_>,
    settle: std::time::Duration,
    limit: i64,
) -> Result<Vec<FeedEvent>, RepoError> {
    let (admin, name) = match reader {
        super::task_defs::Reader::Admin => (true, None),
        super::task_defs::Reader::Named(name) => (false, name),
    };
    let settle_ms = settle.as_millis() as f64;
    let rows = query(
        db,
        "SELECT e.seq, e.id, e.job_id, e.type, e.description, e.from_status, e.to_status,
                e.bot_id, e.attempt, e.created_at,
                e.created_at > now() - $7 * interval '1 millisecond' AS recent
           FROM job_events e LEFT JOIN jobs j ON j.id = e.job_id
          WHERE e.customer_id = $1 AND e.seq > $2
            AND ($3::uuid IS NULL OR e.job_id = $3)
            AND ($4 OR j.acls IS NULL OR j.acls = '{}' OR $5::text = ANY(j.acls))
          ORDER BY e.seq LIMIT $6",
        &[
            &customer.0,
            &after,
            &job.map(|j| j.0),
            &admin,
            &name,
            &limit,
            &settle_ms,
        ],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| FeedEvent {
            seq: r.get(0),
            event: Event {
                id: r.get(1),
                job_id: JobId(r.get(2)),
                kind: r.get(3),
                description: r.get(4),
                from_status: r.get(5),
                to_status: r.get(6),
                bot_id: r.get::<_, Option<Uuid>>(7).map(BotId),
                attempt: r.get(8),
                created_at: r.get(9),
            },
            recent: r.get(10),
        })
        .collect())
}

/// How much work is in each state: `(kind, status, count)` for jobs (by
/// kind) and human tasks.
pub async fn count_by_status(
    db: &impl GenericClient,
) -> Result<Vec<(String, String, i64)>, RepoError> {
    let rows = query(
        db,
        "SELECT kind, status, count(*) FROM jobs GROUP BY kind, status
         UNION ALL
         SELECT kind, status, count(*) FROM human_tasks GROUP BY kind, status",
        &[],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The newest event's `seq` of a customer (a live feed starts after it).
pub async fn last_event_seq(
    db: &impl GenericClient,
    customer: CustomerId,
) -> Result<i64, RepoError> {
    let row = query_one(
        db,
        "SELECT COALESCE(max(seq), 0) FROM job_events WHERE customer_id = $1",
        &[&customer.0],
    )
    .await?;
    Ok(row.get(0))
}
