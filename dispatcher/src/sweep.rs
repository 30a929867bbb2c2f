//! The periodic sweep: wakes every customer with waiting work (a lost
//! wake-up costs at most one interval) and deals with assignments no bot
//! started within `assign_timeout_ms` (a delivery lost between commit and
//! publish, a bot that died before starting): sent again to an agent that
//! still heartbeats, taken back from any other bot (the job waits again and
//! the bot is UNAVAILABLE until it is heard from).

use orq_shared::CancellationToken;
use orq_shared::config::Settings;
use orq_shared::domain::Delivery;
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
    matcher.wake_all();
    let db = pool.get().await?;
    let cutoff = time::OffsetDateTime::now_utc()
        - Duration::from_millis(settings.dispatcher.assign_timeout_ms);
    let stale = jobs::stale_assignments(&db, cutoff, settings.dispatcher.batch_size).await?;
    // An agent still heartbeating gets the assignment again (it drops a copy
    // of work it already has, and checks an old one with the gateway before
    // running it); a silent bot or a legacy HTTP bot has it taken back.
    let alive_since = time::OffsetDateTime::now_utc()
        - Duration::from_millis(
            settings.reaper.heartbeat_interval_ms * u64::from(settings.reaper.missed_heartbeats),
        );
    for stale in stale {
        let alive = stale.assigned.delivery == Delivery::Agent
            && stale.bot_heartbeat_at.is_some_and(|t| t > alive_since);
        let a = stale.assigned;
        if alive {
            tracing::info!(job = %a.job_id, bot = %a.bot_id, "sending an unstarted assignment again");
            jobs::touch_assignment(&db, a.job_id, a.attempt).await?;
            matcher.deliver(stale.customer, a).await;
        } else {
            tracing::info!(job = %a.job_id, bot = %a.bot_id, "taking back an assignment no bot started");
            matcher
                .hand_back(stale.customer, &a, "the bot did not start it in time", true)
                .await?;
        }
    }
    Ok(())
}
