//! # dispatcher
//!
//! Consumes wake-ups and bot reports, matches waiting jobs to bots and
//! delivers them. Safe to run in several copies: matching claims rows with
//! `SKIP LOCKED`, reports are applied with guarded, fenced updates.
//!
//! * `matcher` – the matching loop, woken per customer; delivery to agents
//!   (their queue) and legacy HTTP bots (`POST /tasks`).
//! * `batch`    – the batched, ack-after-commit intake consumer.
//! * `reports` – applies bot reports.
//! * `finishes` – applies micro-task finish submissions.
//! * `sweep`   – the periodic pass that catches lost wake-ups and deliveries.

pub mod batch;
pub mod finishes;
pub mod matcher;
pub mod reports;
pub mod sweep;

use orq_shared::CancellationToken;
use orq_shared::broker::Broker;
use orq_shared::config::Settings;
use std::sync::Arc;

use crate::matcher::Matcher;

pub struct App {
    settings: Arc<Settings>,
    matcher: Matcher,
    broker: Broker,
    pool: deadpool_postgres::Pool,
    shutdown: CancellationToken,
}

impl App {
    pub async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<App> {
        orq_shared::db::migrate_until(&settings.database, &shutdown).await?;
        let pool = orq_shared::db::pool(&settings.database)?;
        let broker = Broker::start(&settings.amqp, "dispatcher", shutdown.clone());
        let settings = Arc::new(settings);
        let matcher = Matcher::new(pool.clone(), broker.clone(), settings.clone())?;
        Ok(App {
            settings,
            matcher,
            broker,
            pool,
            shutdown,
        })
    }

    /// Runs every loop until shutdown; in-flight reports finish first.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let ops = tokio::spawn(orq_shared::ops::serve(
            self.settings.ops.listen.clone(),
            orq_shared::ops::Checks {
                pool: Some(self.pool.clone()),
                broker: Some(self.broker.clone()),
            },
            self.shutdown.clone(),
        ));
        let matching = tokio::spawn(self.matcher.clone().run(self.shutdown.clone()));
        let intake = tokio::spawn(matcher::consume_wakeups(
            self.matcher.clone(),
            self.broker.clone(),
            self.shutdown.clone(),
        ));
        let reports = tokio::spawn(reports::consume(
            self.pool.clone(),
            self.broker.clone(),
            self.matcher.clone(),
            self.settings.clone(),
            self.shutdown.clone(),
        ));
        let finishes = tokio::spawn(finishes::consume(
            self.pool.clone(),
            self.broker.clone(),
            self.settings.clone(),
            self.shutdown.clone(),
        ));
        let sweep = tokio::spawn(sweep::run(
            self.pool.clone(),
            self.matcher.clone(),
            self.settings.clone(),
            self.shutdown.clone(),
        ));
        self.shutdown.cancelled().await;
        for task in [ops, matching, intake, reports, finishes, sweep] {
            let _ = task.await;
        }
        Ok(())
    }
}
