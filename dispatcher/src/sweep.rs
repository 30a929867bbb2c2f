//! The periodic sweep: wakes every customer with waiting work (a lost
//! wake-up costs at most one interval) and takes back assignments no bot
//! started within `assign_timeout_ms` (a delivery lost between commit and
//! publish, a bot that died before starting): the job waits again and the bot
//! is UNAVAILABLE until it is heard from. It is not re-sent to the same bot,
//! since a second copy could run twice.

use orq_shared::CancellationToken;
use orq_shared::config::Settings;
use orq_shared::repo::{RepoError, jobs};
use std::sync::Arc;
use std::time::Duration;

use crate::matcher::Matcher;

pub async fn run(
    pool: deadpool_postgres::Pool,
    matcher: Matcher,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    let mut tick =
        tokio::time::interval(Duration::from_millis(settings.dispatcher.sweep_interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        if let Err(e) = sweep_once(&pool, &matcher, &settings).await {
            tracing::warn!(error = %e, "sweep failed");
        }
    }
}

pub async fn sweep_once(
    pool: &deadpool_postgres::Pool,
    matcher: &Matcher,
    settings: &Settings,
) -> Result<(), RepoError> {
    let db = pool.get().await?;
    for customer in jobs::customers_with_waiting(&db).await? {
        matcher.wake(customer);
    }
    let cutoff = time::OffsetDateTime::now_utc()
        - Duration::from_millis(settings.dispatcher.assign_timeout_ms);
    let stale = jobs::stale_assignments(&db, cutoff, settings.dispatcher.batch_size).await?;
    for (customer, assigned) in stale {
        tracing::info!(job = %assigned.job_id, bot = %assigned.bot_id, "taking back an assignment no bot started");
        matcher
            .hand_back(
                customer,
                &assigned,
                "the bot did not start it in time",
                true,
            )
            .await?;
    }
    Ok(())
}
