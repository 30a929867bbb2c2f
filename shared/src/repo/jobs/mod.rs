//! Jobs (the proof of concept's tasks), their transitions and the matcher.
//!
//! Every transition is one call of `transition` inside the caller's
//! transaction: lock the row, compute the next state with the pure state
//! machine, apply it with an update guarded by the state and attempt it was
//! computed from, append the event, and move the bot's load.
//!
//! * this file   – a job's row: create, read, list, redefine, delete, counts.
//! * `events`     – the history: kinds, appending, reading.
//! * `transition` – the one write path of a job's status (one or a batch).
//! * `matching`   – locking free bots and waiting jobs for placement.
//! * `leases`     – expired leases and silent jobs, claimed for the reaper.
//! * `feed`       – events after a place in the order (the live stream).

use deadpool_postgres::GenericClient;
use serde::Serialize;
use std::collections::HashMap;
use time::OffsetDateTime;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Page, RepoError, bots, execute, now, parse_col, query, query_one, query_opt};
use crate::domain::{
    BotId, CustomerId, Delivery, JobEvent, JobId, JobStatus, TaskId, job_transition,
};
use crate::messages::{RowError, ScriptSpec};
use crate::placement::{self, Candidate, FreeBot, Placement};

mod events;
mod feed;
mod leases;
mod matching;
mod stranded;
mod transition;

pub use events::*;
pub use feed::*;
pub use leases::*;
pub use matching::*;
pub use stranded::*;
pub use transition::*;

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
    /// The name of the bot it is (or was last) on, beside its id: v7 ids
    /// made close together share their first characters.
    pub bot_name: Option<String>,
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
    /// While WAITING: why no registered bot can take it (its system's bots
    /// all draining, or none left). Absent when nothing stands against it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_reason: Option<String>,
}

const SUMMARY: &str = "id, kind, description, system, status, created_at, bot_id, \
     (SELECT b.name FROM bots b WHERE b.id = jobs.bot_id) AS bot_name, attempt, percent, \
     rows_done, rows_total, error, result, updated_at, started_at, finished_at, waiting_reason";

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
        bot_name: r.get("bot_name"),
        attempt: r.get("attempt"),
        percent: r.get("percent"),
        rows_done: r.get("rows_done"),
        rows_total: r.get("rows_total"),
        error: r.get("error"),
        result: r.get("result"),
        updated_at: r.get("updated_at"),
        started_at: r.get("started_at"),
        finished_at: r.get("finished_at"),
        waiting_reason: r.get("waiting_reason"),
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
