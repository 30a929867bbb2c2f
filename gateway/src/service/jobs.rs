//! Jobs: what several routes do to a job beyond one statement.

use orq_shared::domain::{CustomerId, Delivery, JobEvent, JobId};
use orq_shared::messages::Control;
use orq_shared::repo::jobs::{self, Actor, Applied, Outcome, Task};
use orq_shared::repo::{RepoError, bots};
use uuid::Uuid;

use crate::state::AppState;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another request changed the job between its read and its update.
    #[error("job changed concurrently")]
    Changed,
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Cancels a job of any kind. One that held a bot frees its slot (the
/// dispatchers are woken) and, on an agent, is told to stop: a script job's
/// process group gets SIGTERM, then SIGKILL. The agent is told best effort:
/// one that is not connected finds its later reports refused.
pub async fn cancel(state: &AppState, customer: CustomerId, id: JobId) -> Result<Task, Error> {
    let applied = state
        .in_transaction(async |tx| {
            jobs::transition(
                tx,
                customer,
                id,
                Actor::Api,
                JobEvent::Cancel,
                &Outcome::default(),
                Uuid::now_v7(),
                time::OffsetDateTime::now_utc(),
            )
            .await
        })
        .await?;
    let Applied::Done { from, task } = applied else {
        return Err(Error::Changed);
    };
    if from.is_active()
        && let Some(bot) = task.bot_id
    {
        let delivery = async {
            let db = state.db().await?;
            Ok::<_, RepoError>(bots::get(&db, customer, bot).await?.delivery)
        };
        let is_agent = delivery.await.is_ok_and(|d| d == Delivery::Agent);
        if is_agent {
            let message = Control::Cancel {
                id: Uuid::now_v7(),
                job_id: id,
                attempt: task.attempt,
            };
            super::bots::tell_agent(state, bot, &message).await;
        }
        wake(state, customer, Some(id));
    }
    Ok(*task)
}

/// Wakes the dispatchers for `customer` (`jobs::wake`, a NOTIFY). Runs in
/// the background (tracked: shutdown waits for it): the job is already
/// committed, so a lost or slow wake-up only costs the sweep interval.
///
/// Coalesced: while a wake-up for the customer is queued and not yet sent,
/// another adds nothing. The queued one is sent after this caller's commit,
/// so the dispatchers it wakes see this caller's work too (a burst of posts
/// sends a few notifications, not one each).
pub fn wake(state: &AppState, customer: CustomerId, job: Option<JobId>) {
    if !state.wakes.queue(customer) {
        return;
    }
    let woken = state.clone();
    state.background.spawn(async move {
        woken.wakes.sending(customer);
        let notified = async {
            let db = woken.db().await?;
            jobs::wake(&db, &[customer]).await
        };
        if let Err(e) = notified.await {
            tracing::warn!(error = %e, %customer, job = ?job, "wake-up not sent; the sweep will pick the work up");
        }
    });
}

/// The customers with a wake-up queued and not yet sent.
#[derive(Default)]
pub struct Wakes(std::sync::Mutex<std::collections::HashSet<CustomerId>>);

impl Wakes {
    /// True when a wake-up is to be queued (none is waiting to be sent).
    fn queue(&self, customer: CustomerId) -> bool {
        self.0
            .lock()
            .map(|mut q| q.insert(customer))
            .unwrap_or(true)
    }

    /// The wake-up is about to be sent: a later caller queues its own.
    fn sending(&self, customer: CustomerId) {
        if let Ok(mut q) = self.0.lock() {
            q.remove(&customer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wake_up_waiting_to_be_sent_covers_later_ones_until_it_goes() {
        let wakes = Wakes::default();
        let (a, b) = (CustomerId::new(), CustomerId::new());
        assert!(wakes.queue(a), "the first is queued");
        assert!(!wakes.queue(a), "a second, while the first waits, is not");
        assert!(wakes.queue(b), "another customer's is its own");
        wakes.sending(a);
        assert!(
            wakes.queue(a),
            "once the first is being sent, a new one is queued"
        );
    }
}
