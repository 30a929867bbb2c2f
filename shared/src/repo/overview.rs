//! The dashboard's overview of one customer: how much work is in each
//! state, what finished minute by minute, the backlog, the bots, what
//! failed to go out, and the longest-running jobs. Each function is one
//! read served by an index (`V19__dashboard_indexes.sql`), so the overview
//! stays fast with many jobs; the service calls them side by side on one
//! connection (pipelined). Filling gaps and ages is the service's.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{RepoError, parse_col, query, query_one};
use crate::domain::{BotId, CustomerId, JobId, JobStatus, TaskId};

/// Jobs of the customer in each status: `(status, count)`. One count per
/// status, each an index-only scan of its range of `jobs_by_status`: the
/// index is a fraction of the table (whose rows carry attachments and
/// results), and the planner, not knowing which status each count is of,
/// never trades it for a scan of the table.
pub async fn jobs_by_status(
    db: &impl GenericClient,
    customer: CustomerId,
) -> Result<Vec<(JobStatus, i64)>, RepoError> {
    let statuses: Vec<&str> = JobStatus::ALL.iter().map(|s| s.as_str()).collect();
    let rows = query(
        db,
        "SELECT s, (SELECT count(*) FROM jobs WHERE customer_id = $1 AND status = s)
           FROM unnest($2::text[]) s",
        &[&customer.0, &statuses],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((parse_col(r.get::<_, &str>(0))?, r.get(1))))
        .collect()
}

/// Jobs that ended at or after `since`, per minute (minutes since the
/// epoch, UTC) that has any: `(minute, complete, failed)`, where failed
/// counts FAILED and TIMEOUT (a canceled job failed nobody).
pub async fn finished_per_minute(
    db: &impl GenericClient,
    customer: CustomerId,
    since: OffsetDateTime,
) -> Result<Vec<(i64, i64, i64)>, RepoError> {
    let rows = query(
        db,
        "SELECT floor(extract(epoch FROM finished_at) / 60)::int8 AS minute,
                count(*) FILTER (WHERE status = 'COMPLETE'),
                count(*) FILTER (WHERE status IN ('FAILED', 'TIMEOUT'))
           FROM jobs
          WHERE customer_id = $1 AND finished_at >= $2
          GROUP BY minute",
        &[&customer.0, &since],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// The waiting jobs: how many may run now, how many wait out a trigger's
/// grace time, how many no registered bot could take (`waiting_reason`),
/// and when the oldest that may run was created.
#[derive(Debug, Clone, PartialEq)]
pub struct Backlog {
    pub ready: i64,
    pub on_hold: i64,
    pub stranded: i64,
    pub oldest: Option<OffsetDateTime>,
}

pub async fn backlog(db: &impl GenericClient, customer: CustomerId) -> Result<Backlog, RepoError> {
    let row = query_one(
        db,
        "SELECT count(*) FILTER (WHERE not_before IS NULL OR not_before <= now()),
                count(*) FILTER (WHERE not_before > now()),
                count(*) FILTER (WHERE waiting_reason IS NOT NULL),
                min(created_at) FILTER (WHERE not_before IS NULL OR not_before <= now())
           FROM jobs
          WHERE customer_id = $1 AND status = 'WAITING'",
        &[&customer.0],
    )
    .await?;
    Ok(Backlog {
        ready: row.get(0),
        on_hold: row.get(1),
        stranded: row.get(2),
        oldest: row.get(3),
    })
}

/// The customer's bots by state, and their slots.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = OverviewBots)]
pub struct BotCounts {
    pub total: i64,
    /// AVAILABLE or BUSY: heard from lately.
    pub up: i64,
    /// BUSY: every slot taken.
    pub busy: i64,
    /// UNAVAILABLE: silent, gone from RabbitMQ, or unreachable.
    pub lost: i64,
    /// Up, but taking no new work.
    pub draining: i64,
    /// Jobs in hand, over all bots.
    pub slots_used: i64,
    /// Slots of the bots that are up.
    pub slots_total: i64,
}

pub async fn bots(db: &impl GenericClient, customer: CustomerId) -> Result<BotCounts, RepoError> {
    let row = query_one(
        db,
        "SELECT count(*),
                count(*) FILTER (WHERE status <> 'UNAVAILABLE'),
                count(*) FILTER (WHERE status = 'BUSY'),
                count(*) FILTER (WHERE status = 'UNAVAILABLE'),
                count(*) FILTER (WHERE status <> 'UNAVAILABLE' AND draining),
                coalesce(sum(active_jobs), 0)::int8,
                coalesce(sum(capacity) FILTER (WHERE status <> 'UNAVAILABLE'), 0)::int8
           FROM bots WHERE customer_id = $1",
        &[&customer.0],
    )
    .await?;
    Ok(BotCounts {
        total: row.get(0),
        up: row.get(1),
        busy: row.get(2),
        lost: row.get(3),
        draining: row.get(4),
        slots_used: row.get(5),
        slots_total: row.get(6),
    })
}

/// Outbound messages that failed: given up on (DEAD), and still being
/// retried (PENDING after a failed attempt).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = OverviewFailures)]
pub struct Failures {
    pub dead: i64,
    pub retrying: i64,
}

/// Webhook deliveries that failed.
pub async fn webhook_failures(
    db: &impl GenericClient,
    customer: CustomerId,
) -> Result<Failures, RepoError> {
    failures(db, "webhook_deliveries", customer).await
}

/// Workers' notifications (e-mail, SMS, push) that failed.
pub async fn notification_failures(
    db: &impl GenericClient,
    customer: CustomerId,
) -> Result<Failures, RepoError> {
    failures(db, "notifications", customer).await
}

/// `table` is the caller's constant; its partial index `<table>_failing`
/// holds exactly these rows, so the count never visits the sent ones.
async fn failures(
    db: &impl GenericClient,
    table: &str,
    customer: CustomerId,
) -> Result<Failures, RepoError> {
    let sql = format!(
        "SELECT count(*) FILTER (WHERE status = 'DEAD'),
                count(*) FILTER (WHERE status = 'PENDING')
           FROM {table}
          WHERE customer_id = $1
            AND (status = 'DEAD' OR (status = 'PENDING' AND attempts > 0))"
    );
    let row = query_one(db, &sql, &[&customer.0]).await?;
    Ok(Failures {
        dead: row.get(0),
        retrying: row.get(1),
    })
}

/// A running job, as the overview lists the longest-running ones.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Running {
    pub id: JobId,
    /// `system` (a CSV task) or `script` (a run of a task definition).
    pub kind: String,
    /// A CSV task's description, or the name of the run's task.
    pub name: String,
    pub task_id: Option<TaskId>,
    pub bot_id: Option<BotId>,
    pub bot_name: Option<String>,
    pub percent: i16,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
}

/// The `limit` jobs that have been RUNNING longest, longest first.
pub async fn longest_running(
    db: &impl GenericClient,
    customer: CustomerId,
    limit: i64,
) -> Result<Vec<Running>, RepoError> {
    let rows = query(
        db,
        "SELECT j.id, j.kind, j.description, j.task_id, j.bot_id, b.name, j.percent,
                coalesce(j.started_at, j.updated_at)
           FROM jobs j LEFT JOIN bots b ON b.id = j.bot_id
          WHERE j.customer_id = $1 AND j.status = 'RUNNING'
          ORDER BY coalesce(j.started_at, j.updated_at), j.id
          LIMIT $2",
        &[&customer.0, &limit],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Running {
            id: JobId(r.get(0)),
            kind: r.get(1),
            name: r.get(2),
            task_id: r.get::<_, Option<Uuid>>(3).map(TaskId),
            bot_id: r.get::<_, Option<Uuid>>(4).map(BotId),
            bot_name: r.get(5),
            percent: r.get(6),
            started_at: r.get(7),
        })
        .collect())
}
