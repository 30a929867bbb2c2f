//! Notifications to field workers: queued in the transaction that
//! processed what they report, claimed by a sender (`SKIP LOCKED`, held for
//! the length of an attempt), recorded attempt by attempt.

use deadpool_postgres::GenericClient;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{RepoError, execute, query};
use crate::domain::{CustomerId, HumanTaskId};

/// Which senders are configured.
#[derive(Debug, Clone, Copy, Default)]
pub struct Channels {
    pub email: bool,
    pub sms: bool,
    pub push: bool,
}

/// What one worker is told.
#[derive(Debug, Clone)]
pub struct Notice<'a> {
    pub customer: CustomerId,
    pub task: HumanTaskId,
    pub worker: &'a str,
    pub subject: String,
    pub body: String,
}

/// Queues one notification per configured channel the worker can be
/// reached on (e-mail always; SMS and push when their contacts are known).
pub async fn queue(
    db: &impl GenericClient,
    customer: CustomerId,
    task: HumanTaskId,
    worker: &str,
    subject: &str,
    body: &str,
    channels: Channels,
) -> Result<u64, RepoError> {
    let notice = Notice {
        customer,
        task,
        worker,
        subject: subject.to_string(),
        body: body.to_string(),
    };
    queue_all(db, &[notice], channels).await
}

/// `queue` for many notices in one statement, queued in the order given
/// (each one's channels as `queue` orders them).
pub async fn queue_all(
    db: &impl GenericClient,
    notices: &[Notice<'_>],
    channels: Channels,
) -> Result<u64, RepoError> {
    if !(channels.email || channels.sms || channels.push) || notices.is_empty() {
        return Ok(0);
    }
    let customers: Vec<Uuid> = notices.iter().map(|n| n.customer.0).collect();
    let tasks: Vec<Uuid> = notices.iter().map(|n| n.task.0).collect();
    let workers: Vec<&str> = notices.iter().map(|n| n.worker).collect();
    let subjects: Vec<&str> = notices.iter().map(|n| n.subject.as_str()).collect();
    let bodies: Vec<&str> = notices.iter().map(|n| n.body.as_str()).collect();
    execute(
        db,
        "INSERT INTO notifications (id, customer_id, task_id, channel, recipient, subject, body)
         SELECT gen_random_uuid(), n.customer, n.task, c.channel, c.recipient, n.subject, n.body
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[])
                WITH ORDINALITY AS n(customer, task, worker, subject, body, i)
          CROSS JOIN LATERAL (
                 SELECT 1 AS k, 'email' AS channel, n.worker AS recipient WHERE $6
                 UNION ALL
                 SELECT 2, 'sms', phone FROM workers w
                  WHERE $7 AND w.customer_id = n.customer AND w.email = n.worker
                    AND phone IS NOT NULL
                 UNION ALL
                 SELECT 3, 'push', push_token FROM workers w
                  WHERE $8 AND w.customer_id = n.customer AND w.email = n.worker
                    AND push_token IS NOT NULL) c
          ORDER BY n.i, c.k",
        &[
            &customers,
            &tasks,
            &workers,
            &subjects,
            &bodies,
            &channels.email,
            &channels.sms,
            &channels.push,
        ],
    )
    .await
}

/// A worker's contacts (an admin sets them with the worker's token).
pub async fn set_contacts(
    db: &impl GenericClient,
    customer: CustomerId,
    email: &str,
    phone: Option<&str>,
    push_token: Option<&str>,
) -> Result<(), RepoError> {
    execute(
        db,
        "INSERT INTO workers (customer_id, email, phone, push_token) VALUES ($1, $2, $3, $4)
         ON CONFLICT (customer_id, email) DO UPDATE
            SET phone = COALESCE(EXCLUDED.phone, workers.phone),
                push_token = COALESCE(EXCLUDED.push_token, workers.push_token),
                updated_at = now()",
        &[&customer.0, &email, &phone, &push_token],
    )
    .await?;
    Ok(())
}

/// A notification to send now.
#[derive(Debug, Clone)]
pub struct Due {
    pub id: Uuid,
    pub channel: String,
    pub recipient: String,
    pub subject: String,
    pub body: String,
    pub task_id: Option<Uuid>,
    /// Attempts made before this one.
    pub attempts: i32,
}

/// Claims up to `limit` due notifications for `hold` (no other sender
/// takes them meanwhile).
pub async fn claim_due(
    db: &impl GenericClient,
    limit: i64,
    hold: std::time::Duration,
) -> Result<Vec<Due>, RepoError> {
    let hold_ms = hold.as_millis() as f64;
    let rows = query(
        db,
        "UPDATE notifications n SET claimed_until = now() + $2 * interval '1 millisecond'
           FROM (SELECT id FROM notifications
                  WHERE status = 'PENDING' AND next_attempt_at <= now()
                    AND (claimed_until IS NULL OR claimed_until < now())
                  ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due
          WHERE n.id = due.id
         RETURNING n.id, n.channel, n.recipient, n.subject, n.body, n.task_id, n.attempts",
        &[&limit, &hold_ms],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Due {
            id: r.get(0),
            channel: r.get(1),
            recipient: r.get(2),
            subject: r.get(3),
            body: r.get(4),
            task_id: r.get(5),
            attempts: r.get(6),
        })
        .collect())
}

/// Records an attempt: sent, or failed with `error` and retried at
/// `retry_at` (DEAD when there is none).
pub async fn record(
    db: &impl GenericClient,
    id: Uuid,
    outcome: Result<(), (String, Option<OffsetDateTime>)>,
) -> Result<(), RepoError> {
    match outcome {
        Ok(()) => {
            execute(
                db,
                "UPDATE notifications SET status = 'SENT', attempts = attempts + 1,
                        sent_at = now(), finished_at = now(), claimed_until = NULL,
                        last_error = NULL
                  WHERE id = $1 AND status = 'PENDING'",
                &[&id],
            )
            .await?
        }
        Err((error, retry_at)) => {
            execute(
                db,
                "UPDATE notifications SET attempts = attempts + 1, last_error = $2,
                        claimed_until = NULL,
                        status = CASE WHEN $3::timestamptz IS NULL THEN 'DEAD' ELSE 'PENDING' END,
                        finished_at = CASE WHEN $3::timestamptz IS NULL THEN now() END,
                        next_attempt_at = COALESCE($3, next_attempt_at)
                  WHERE id = $1 AND status = 'PENDING'",
                &[&id, &error, &retry_at],
            )
            .await?
        }
    };
    Ok(())
}

/// Removes up to `limit` notifications sent, or given up on, before
/// `before`; returns how many. Several reapers split the work (`SKIP LOCKED`).
pub async fn prune(
    db: &impl GenericClient,
    before: OffsetDateTime,
    limit: i64,
) -> Result<u64, RepoError> {
    let finished = "status <> 'PENDING'";
    super::prune_before(
        db,
        "notifications",
        "id",
        "finished_at",
        finished,
        before,
        limit,
    )
    .await
}

/// A notification as the back office sees it (a phone or device token
/// shows only its last four characters).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NotificationView {
    pub id: Uuid,
    pub channel: String,
    pub recipient: String,
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub sent_at: Option<OffsetDateTime>,
}

pub async fn for_task(
    db: &impl GenericClient,
    customer: CustomerId,
    task: HumanTaskId,
) -> Result<Vec<NotificationView>, RepoError> {
    let rows = query(
        db,
        "SELECT id, channel,
                CASE channel WHEN 'email' THEN recipient ELSE '...' || right(recipient, 4) END,
                status, attempts, last_error, sent_at
           FROM notifications WHERE customer_id = $1 AND task_id = $2
          ORDER BY created_at, channel",
        &[&customer.0, &task.0],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| NotificationView {
            id: r.get(0),
            channel: r.get(1),
            recipient: r.get(2),
            status: r.get(3),
            attempts: r.get(4),
            last_error: r.get(5),
            sent_at: r.get(6),
        })
        .collect())
}
