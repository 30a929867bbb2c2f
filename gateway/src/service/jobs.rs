//! Jobs: what several routes do to a job beyond one statement.

use orq_shared::broker::Topology;
use orq_shared::domain::{CustomerId, Delivery, JobEvent, JobId};
use orq_shared::messages::Control;
use orq_shared::repo::jobs::{self, Actor, Applied, Outcome, Task};
use orq_shared::repo::{RepoError, bots};
use uuid::Uuid;

use crate::error::ApiError;
use crate::state::AppState;

/// Cancels a job of any kind. One that held a bot frees its slot (the
/// dispatchers are woken) and, on an agent, is told to stop: a script job's
/// process group gets SIGTERM, then SIGKILL. The agent is told best effort:
/// one that is not connected finds its later reports refused.
pub async fn cancel(state: &AppState, customer: CustomerId, id: JobId) -> Result<Task, ApiError> {
    let mut db = state.db().await?;
    let tx = db.transaction().await?;
    let applied = jobs::transition(
        &tx,
        customer,
        id,
        Actor::Api,
        JobEvent::Cancel,
        &Outcome::default(),
        Uuid::now_v7(),
        time::OffsetDateTime::now_utc(),
    )
    .await?;
    tx.commit().await?;
    let Applied::Done { from, task } = applied else {
        return Err(RepoError::Conflict("job changed concurrently".into()).into());
    };
    if from.is_active()
        && let Some(bot) = task.bot_id
    {
        let is_agent = bots::get(&db, customer, bot)
            .await
            .is_ok_and(|b| b.delivery == Delivery::Agent);
        if is_agent {
            let message = Control::Cancel {
                id: Uuid::now_v7(),
                job_id: id,
                attempt: task.attempt,
            };
            let key = Topology::control_key(bot);
            if let Err(e) = state
                .broker
                .publish_json(&key, message.id(), &message)
                .await
            {
                tracing::warn!(error = %e, job = %id, %bot, "cancel not delivered to the agent");
            }
        }
        wake(state, customer, Some(id));
    }
    Ok(*task)
}

/// Wakes the dispatchers for `customer`. Runs in the background (tracked:
/// shutdown waits for it): the job is already committed, so a lost or slow
/// publish only costs the sweep interval.
pub fn wake(state: &AppState, customer: CustomerId, job: Option<JobId>) {
    let broker = state.broker.clone();
    state.background.spawn(async move {
        if let Err(e) = broker.wake(customer, job).await {
            tracing::warn!(error = %e, %customer, "wake-up not published; the sweep will pick the work up");
        }
    });
}
