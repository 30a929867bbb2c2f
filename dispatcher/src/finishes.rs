//! Applies micro-task finish submissions (published by the gateway, which
//! answered 202 once the broker confirmed them). Each is checked against
//! its execution and applied or recorded as REJECTED with its reason
//! (`human::apply_submission`), a batch per transaction; the messages are
//! acked only after the commit, so a database outage delays them and loses
//! none. A redelivered message is recognised by its id and changes nothing.

use orq_shared::CancellationToken;
use orq_shared::broker::Broker;
use orq_shared::config::Settings;
use orq_shared::messages::FinishSubmission;
use orq_shared::repo::RepoError;
use orq_shared::repo::human::{self, Applied, Submission};
use std::sync::Arc;

/// Applies a batch of submissions in one transaction.
pub async fn apply(
    pool: &deadpool_postgres::Pool,
    batch: &[FinishSubmission],
) -> Result<(), RepoError> {
    let mut db = pool.get().await?;
    let tx = db.transaction().await?;
    let mut outcomes = Vec::with_capacity(batch.len());
    for m in batch {
        let sub = Submission {
            id: m.id,
            customer: m.customer_id,
            token_id: m.token_id,
            worker: m.worker.clone(),
            task_id: m.task_id,
            received_at: m.received_at,
            body: m.body.clone(),
        };
        outcomes.push((m.id, human::apply_submission(&tx, &sub).await?));
    }
    tx.commit().await?;
    for (id, outcome) in outcomes {
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
        Finishes { pool },
    )
    .await
}

struct Finishes {
    pool: deadpool_postgres::Pool,
}

impl crate::batch::Intake for Finishes {
    type Message = FinishSubmission;
    type Out = ();

    async fn apply(&self, batch: &[FinishSubmission]) -> Result<(), RepoError> {
        apply(&self.pool, batch).await
    }
}
