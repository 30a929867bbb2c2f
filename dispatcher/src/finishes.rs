//! Applies micro-task finish submissions (published by the gateway, which
//! answered 202 once the broker confirmed them). Each is checked against
//! its execution and applied or recorded as REJECTED with its reason
//! (`human::apply_submissions`), a batch per transaction and a fixed
//! number of statements per batch; the messages are acked only after the
//! commit, so a database outage delays them and loses none. A redelivered
//! message is recognised by its id and changes nothing.

use orq_shared::CancellationToken;
use orq_shared::broker::Broker;
use orq_shared::config::Settings;
use orq_shared::human::outcome_message;
use orq_shared::messages::FinishSubmission;
use orq_shared::repo::RepoError;
use orq_shared::repo::human::{self, Applied, Submission};
use orq_shared::repo::notifications::{self, Channels, Notice};
use std::sync::Arc;

/// Applies a batch of submissions in one transaction, queueing what each
/// worker is told (`channels`) in it.
pub async fn apply(
    pool: &deadpool_postgres::Pool,
    batch: &[FinishSubmission],
    channels: Channels,
) -> Result<(), RepoError> {
    let mut db = pool.get().await?;
    let tx = db.transaction().await?;
    // Tasks are applied in one order by every dispatcher (and locked in
    // id order: no deadlocks).
    let mut batch: Vec<&FinishSubmission> = batch.iter().collect();
    batch.sort_by_key(|m| m.task_id);
    let subs: Vec<Submission> = batch
        .iter()
        .map(|m| Submission {
            id: m.id,
            customer: m.customer_id,
            token_id: m.token_id,
            worker: m.worker.clone(),
            task_id: m.task_id,
            received_at: m.received_at,
            body: m.body.clone(),
        })
        .collect();
    let mut writes = human::Writes::default();
    let outcomes = human::apply_submissions(&tx, &subs, &mut writes).await?;
    let notices: Vec<Notice<'_>> = batch
        .iter()
        .zip(&outcomes)
        .filter_map(|(m, outcome)| notice(m, outcome))
        .collect();
    // What is appended, sent together: notifications, events, records.
    futures::try_join!(
        notifications::queue_all(&tx, &notices, channels),
        writes.flush(&tx)
    )?;
    tx.commit().await?;
    for (m, outcome) in batch.iter().zip(outcomes) {
        let id = m.id;
        let label = match &outcome {
            Applied::Applied { .. } => "applied",
            Applied::Refused { .. } => "rejected",
            Applied::Duplicate => "duplicate",
        };
        metrics::counter!("orq_finishes_processed_total", "outcome" => label).increment(1);
        match outcome {
            Applied::Applied { task, .. } => {
                tracing::debug!(submission = %id, task = %task.id, status = %task.status, "finish applied")
            }
            Applied::Refused { reason, .. } => {
                tracing::info!(submission = %id, %reason, "finish rejected")
            }
            Applied::Duplicate => tracing::debug!(submission = %id, "finish already applied"),
        }
    }
    Ok(())
}

/// What the worker is told of an outcome: for an applied finish, and for
/// a refused one on a task (not when the worker's token was revoked: they
/// are no longer one of ours).
fn notice<'a>(m: &'a FinishSubmission, outcome: &Applied) -> Option<Notice<'a>> {
    let (task, status, reason) = match outcome {
        Applied::Applied { task, .. } => (task, Some(task.status), task.error.as_deref()),
        Applied::Refused {
            task: Some(task),
            reason,
        } if !reason.contains("revoked") => (task, None, Some(reason.as_str())),
        _ => return None,
    };
    let (subject, body) = outcome_message(&task.action, task.id.0, status, reason);
    Some(Notice {
        customer: m.customer_id,
        task: task.id,
        worker: &m.worker,
        subject,
        body,
    })
}

pub async fn consume(
    pool: deadpool_postgres::Pool,
    broker: Broker,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    let queue = broker.topology().finish_queue();
    crate::batch::consume(
        broker,
        queue,
        settings.human.finish_batch,
        shutdown,
        Finishes {
            pool,
            channels: Channels {
                email: !settings.notify.smtp_url.is_empty(),
                sms: !settings.notify.sms_url.is_empty(),
                push: !settings.notify.push_url.is_empty(),
            },
        },
    )
    .await
}

struct Finishes {
    pool: deadpool_postgres::Pool,
    channels: Channels,
}

impl crate::batch::Intake for Finishes {
    type Wire = FinishSubmission;
    type Message = FinishSubmission;
    type Out = ();

    fn unpack(wire: FinishSubmission) -> Vec<FinishSubmission> {
        vec![wire]
    }

    async fn apply(&self, batch: &[FinishSubmission]) -> Result<(), RepoError> {
        apply(&self.pool, batch, self.channels).await
    }
}
