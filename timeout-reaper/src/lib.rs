//! # timeout-reaper
//!
//! Expires leases whose deadline passed. In this first slice it marks agent
//! bots that missed `missed_heartbeats` heartbeats UNAVAILABLE (so nothing new
//! is sent to them); requeueing their jobs, job timeouts, human-task leases
//! and webhook delivery come with the expiry issue.

use orq_shared::CancellationToken;
use orq_shared::broker::Broker;
use orq_shared::config::Settings;
use orq_shared::repo::{RepoError, bots};
use std::time::Duration;

pub struct App {
    settings: Settings,
    pool: deadpool_postgres::Pool,
    /// Held so the reaper's connection and topology exist (its outbox and
    /// re-queue work will publish through it).
    _broker: Broker,
    shutdown: CancellationToken,
}

impl App {
    pub async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<App> {
        orq_shared::db::migrate_until(&settings.database, &shutdown).await?;
        let pool = orq_shared::db::pool(&settings.database)?;
        let broker = Broker::start(&settings.amqp, "timeout-reaper", shutdown.clone());
        Ok(App {
            settings,
            pool,
            _broker: broker,
            shutdown,
        })
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let mut tick = tokio::time::interval(Duration::from_millis(self.settings.reaper.tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return Ok(()),
            }
            match self.reap_once().await {
                Ok(n) if n > 0 => tracing::info!(bots = n, "marked silent bots UNAVAILABLE"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "reaping failed; will retry"),
            }
        }
    }

    /// One pass; returns how many leases expired.
    pub async fn reap_once(&self) -> Result<usize, RepoError> {
        let silent_for = Duration::from_millis(
            self.settings.reaper.heartbeat_interval_ms
                * u64::from(self.settings.reaper.missed_heartbeats),
        );
        let before = time::OffsetDateTime::now_utc() - silent_for;
        let mut db = self.pool.get().await?;
        let tx = db.transaction().await?;
        let expired = bots::expire_silent(&tx, before, 500).await?;
        tx.commit().await?;
        Ok(expired.len())
    }
}
