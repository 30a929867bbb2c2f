//! Jobs (the proof of concept's tasks), their transitions and the matcher.
//!
//! Every transition is one call of `transition` inside the caller's
//! transaction: lock the row, compute the next state with the pure state
//! machine, apply it with an update guarded by the state and attempt it was
//! computed from, append the event, and move the bot's load.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use std::collections::HashMap;
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Page, RepoError, bots, execute, now, parse_col, query, query_one, query_opt};
use crate::domain::{
    BotEvent, BotId, BotStatus, CustomerId, Delivery, JobEvent, JobId, JobStatus, bot_transition,
    job_transition,
};

/// A job as the `/tasks` API shows it: the proof of concept's fields first.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Task {
    pub id: JobId,
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

const SUMMARY: &str = "id, description, system, status, created_at, bot_id, attempt, percent, \
     rows_done, rows_total, error, result, updated_at, started_at, finished_at";

fn from_row(r: &Row, with_attachment: bool) -> Result<Task, RepoError> {
    Ok(Task {
        id: JobId(r.get("id")),
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
}

/// Inserts a WAITING job and its first event.
pub async fn create(
    db: &impl GenericClient,
    customer: CustomerId,
    new: &NewTask,
) -> Result<Task, RepoError> {
    let id = JobId::new();
    let sql = format!(
        "INSERT INTO jobs (id, customer_id, description, system, attachment, rows_total, status)
         VALUES ($1, $2, $3, $4, $5, $6, 'WAITING') RETURNING {SUMMARY}, attachment"
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
        ],
    )
    .await?;
    append_event(
        db,
        &EventRecord {
            id: Uuid::now_v7(),
            job_id: id,
            customer,
            kind: EventKind::StatusChange,
            description: "job created: WAITING".into(),
            from: None,
            to: Some(JobStatus::Waiting),
            bot: None,
            attempt: Some(0),
        },
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
    let sql = format!(
        "SELECT {SUMMARY}{} FROM jobs
          WHERE customer_id = $1
            AND ($2::text IS NULL OR status = $2)
            AND ($3::text IS NULL OR system = $3)
            AND ($4::uuid IS NULL OR bot_id = $4)
            AND ($5::uuid IS NULL OR id > $5)
          ORDER BY id LIMIT $6",
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    StatusChange,
    PercentChange,
    StepChange,
    Error,
    Warning,
}

impl EventKind {
    fn as_str(self) -> &'static str {
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
    pub from: Option<JobStatus>,
    pub to: Option<JobStatus>,
    pub bot: Option<BotId>,
    pub attempt: Option<i32>,
}

/// Appends an event; false when an event with that id exists already.
pub async fn append_event(db: &impl GenericClient, e: &EventRecord) -> Result<bool, RepoError> {
    let n = execute(
        db,
        "INSERT INTO job_events (id, job_id, customer_id, type, description, from_status,
                                     to_status, bot_id, attempt)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
        &[
            &e.id,
            &e.job_id.0,
            &e.customer.0,
            &e.kind.as_str(),
            &e.description,
            &e.from.map(JobStatus::as_str),
            &e.to.map(JobStatus::as_str),
            &e.bot.map(|b| b.0),
            &e.attempt,
        ],
    )
    .await?;
    Ok(n == 1)
}

#[derive(Debug, Clone, Serialize)]
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
               FROM job_events WHERE job_id = $1 AND customer_id = $2 ORDER BY created_at, id",
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

/// Applies `event` to a job in the caller's transaction. `event_id` names the
/// event row (the message id for reports), `at` when it happened.
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
    let row = query_opt(
        db,
        "SELECT status, attempt, bot_id FROM jobs WHERE id = $1 AND customer_id = $2 FOR UPDATE",
        &[&id.0, &customer.0],
    )
    .await?
    .ok_or(RepoError::NotFound("task"))?;
    let from: JobStatus = parse_col(row.get::<_, &str>(0))?;
    let attempt: i32 = row.get(1);
    let bot = row.get::<_, Option<Uuid>>(2).map(BotId);
    if let Actor::Bot {
        bot: reporter,
        attempt: reported,
    } = actor
        && (reported != attempt || bot != Some(reporter))
    {
        return Ok(Applied::Stale {
            current_attempt: attempt,
            current_bot: bot,
        });
    }
    let to = job_transition(from, event).map_err(|e| RepoError::Conflict(e.to_string()))?;
    let released = from.is_active() && !to.is_active();
    let sql = format!(
        "UPDATE jobs SET status = $3, updated_at = now(),
                percent = CASE WHEN $3 = 'COMPLETE' THEN 100 ELSE COALESCE($4, percent) END,
                rows_done = COALESCE($5, rows_done),
                error = COALESCE($6, error),
                result = COALESCE($7, result),
                started_at = CASE WHEN $3 = 'RUNNING' THEN COALESCE(started_at, $8) ELSE started_at END,
                finished_at = CASE WHEN $9 THEN $8 ELSE finished_at END,
                bot_id = CASE WHEN $3 = 'WAITING' THEN NULL ELSE bot_id END
          WHERE id = $1 AND status = $2 AND attempt = $10
          RETURNING {SUMMARY}, attachment"
    );
    let row = query_opt(
        db,
        &sql,
        &[
            &id.0,
            &from.as_str(),
            &to.as_str(),
            &outcome.percent,
            &outcome.rows_done,
            &outcome.error,
            &outcome.result,
            &at,
            &to.is_terminal(),
            &attempt,
        ],
    )
    .await?
    .ok_or_else(|| RepoError::Conflict("task changed concurrently".into()))?;
    let task = from_row(&row, true)?;
    if from != to {
        let description = match &outcome.error {
            Some(error) if to == JobStatus::Failed => format!("{from} -> {to}: {error}"),
            _ => format!("{from} -> {to}"),
        };
        append_event(
            db,
            &EventRecord {
                id: event_id,
                job_id: id,
                customer,
                kind: EventKind::StatusChange,
                description,
                from: Some(from),
                to: Some(to),
                bot,
                attempt: Some(attempt),
            },
        )
        .await?;
    }
    if released && let Some(bot) = bot {
        bots::change_load(db, bot, -1).await?;
    }
    Ok(Applied::Done {
        from,
        task: Box::new(task),
    })
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
}

struct FreeBot {
    id: BotId,
    status: BotStatus,
    capacity: i32,
    active: i32,
    delivery: Delivery,
    ip: String,
    port: i32,
    systems: Vec<String>,
    taken: i32,
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
        "SELECT id, status, capacity, active_jobs, delivery, ip_address, port, systems
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
                status: parse_col(r.get::<_, &str>(1))?,
                capacity: r.get(2),
                active: r.get(3),
                delivery: parse_col(r.get::<_, &str>(4))?,
                ip: r.get(5),
                port: r.get(6),
                systems: r.get(7),
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
    let jobs = query(
        db,
        "SELECT id, system FROM jobs
              WHERE customer_id = $1 AND status = 'WAITING' AND system = ANY($2)
              ORDER BY created_at, id
              LIMIT $3
              FOR UPDATE SKIP LOCKED",
        &[&customer.0, &systems, &slots.min(limit)],
    )
    .await?;
    // Greedy, oldest job first, to the least loaded bot that runs its system.
    let mut picks: Vec<(Uuid, usize)> = Vec::new();
    for job in &jobs {
        let system: &str = job.get(1);
        let best = free
            .iter()
            .enumerate()
            .filter(|(_, b)| {
                b.active + b.taken < b.capacity && b.systems.iter().any(|s| s == system)
            })
            .max_by_key(|(i, b)| (b.capacity - b.active - b.taken, std::cmp::Reverse(*i)))
            .map(|(i, _)| i);
        if let Some(i) = best {
            free[i].taken += 1;
            picks.push((job.get(0), i));
        }
    }
    if picks.is_empty() {
        return Ok(Vec::new());
    }
    // The state machine stays the authority even for this fixed step.
    let to = job_transition(JobStatus::Waiting, JobEvent::Assign)
        .map_err(|e| RepoError::Corrupt(e.to_string()))?;
    let job_ids: Vec<Uuid> = picks.iter().map(|(j, _)| *j).collect();
    let bot_ids: Vec<Uuid> = picks.iter().map(|(_, i)| free[*i].id.0).collect();
    let at = now();
    let updated = query(
        db,
        "UPDATE jobs j SET status = $3, bot_id = a.bot_id, attempt = j.attempt + 1,
                    assigned_at = $4, updated_at = $4
               FROM unnest($1::uuid[], $2::uuid[]) AS a(job_id, bot_id)
              WHERE j.id = a.job_id AND j.status = 'WAITING'
              RETURNING j.id, j.attempt, a.bot_id, j.description, j.system, j.attachment,
                        j.created_at",
        &[&job_ids, &bot_ids, &to.as_str(), &at],
    )
    .await?;
    let mut claimed: HashMap<Uuid, &Row> = HashMap::new();
    for r in &updated {
        claimed.insert(r.get(0), r);
    }
    let event_ids: Vec<Uuid> = updated.iter().map(|_| Uuid::now_v7()).collect();
    let ev_jobs: Vec<Uuid> = updated.iter().map(|r| r.get(0)).collect();
    let ev_bots: Vec<Uuid> = updated.iter().map(|r| r.get(2)).collect();
    let ev_attempts: Vec<i32> = updated.iter().map(|r| r.get(1)).collect();
    let description = format!("{} -> {}", JobStatus::Waiting, to);
    execute(
        db,
        "INSERT INTO job_events (id, job_id, customer_id, type, description, from_status,
                                 to_status, bot_id, attempt, created_at)
         SELECT e.id, e.job_id, $5, 'STATUS_CHANGE', $6, 'WAITING', $7, e.bot_id, e.attempt, $8
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int[])
                AS e(id, job_id, bot_id, attempt)",
        &[
            &event_ids,
            &ev_jobs,
            &ev_bots,
            &ev_attempts,
            &customer.0,
            &description,
            &to.as_str(),
            &at,
        ],
    )
    .await?;
    let mut bot_rows: Vec<Uuid> = Vec::new();
    let mut bot_active: Vec<i32> = Vec::new();
    let mut bot_status: Vec<String> = Vec::new();
    for b in free.iter().filter(|b| b.taken > 0) {
        let active = b.active + b.taken;
        let status = bot_transition(
            b.status,
            BotEvent::LoadChanged {
                full: active >= b.capacity,
            },
        );
        bot_rows.push(b.id.0);
        bot_active.push(active);
        bot_status.push(status.as_str().to_string());
    }
    execute(
        db,
        "UPDATE bots b SET active_jobs = u.active, status = u.status, last_assigned_at = $4,
                updated_at = $4
           FROM unnest($1::uuid[], $2::int[], $3::text[]) AS u(id, active, status)
          WHERE b.id = u.id",
        &[&bot_rows, &bot_active, &bot_status, &at],
    )
    .await?;
    Ok(picks
        .iter()
        .filter_map(|(job, i)| {
            let b = &free[*i];
            claimed.get(job).map(|r| Assigned {
                job_id: JobId(*job),
                attempt: r.get(1),
                bot_id: b.id,
                delivery: b.delivery,
                bot_address: b.ip.clone(),
                bot_port: b.port,
                description: r.get(3),
                system: r.get(4),
                attachment: r.get(5),
                created_at: r.get(6),
            })
        })
        .collect())
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

/// Jobs ASSIGNED longer than `older_than` that no bot has started: their
/// delivery may have been lost, so the sweep sends them again.
pub async fn stale_assignments(
    db: &impl GenericClient,
    older_than: OffsetDateTime,
    limit: i64,
) -> Result<Vec<(CustomerId, Assigned)>, RepoError> {
    let rows = query(
        db,
        "SELECT j.customer_id, j.id, j.attempt, b.id, b.delivery, b.ip_address, b.port,
                    j.description, j.system, j.attachment, j.created_at
               FROM jobs j JOIN bots b ON b.id = j.bot_id
              WHERE j.status = 'ASSIGNED' AND j.assigned_at < $1
              ORDER BY j.assigned_at LIMIT $2",
        &[&older_than, &limit],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                CustomerId(r.get(0)),
                Assigned {
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
                },
            ))
        })
        .collect()
}
