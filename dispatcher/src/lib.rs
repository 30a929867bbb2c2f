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
//! * `stranded` – flags waiting jobs no registered bot could ever take.

pub mod batch;
pub mod finishes;
pub mod matcher;
pub mod reports;
pub mod stranded;
pub mod sweep;

use orq_shared::CancellationToken;
use orq_shared::config::Settings;
use orq_shared::service::Service;
use std::sync::Arc;

use crate::matcher::Matcher;

pub struct App {
    settings: Arc<Settings>,
    matcher: Matcher,
    service: Service,
}

impl App {
    pub async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<App> {
        let service = Service::start(&settings, "dispatcher", shutdown).await?;
        let settings = Arc::new(settings);
        let matcher = Matcher::new(
            service.pool().clone(),
            service.broker().clone(),
            settings.clone(),
        )?;
        Ok(App {
            settings,
            matcher,
            service,
        })
    }

    /// Runs every loop until shutdown; in-flight reports finish first.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let s = &self.service;
        let (pool, broker, shutdown) = (s.pool(), s.broker(), s.shutdown());
        s.serve_ops(&self.settings.ops.listen);
        s.spawn(self.matcher.clone().run(shutdown.clone()));
        s.spawn(matcher::listen_wakeups(
            self.matcher.clone(),
            self.settings.database.clone(),
            shutdown.clone(),
        ));
        s.spawn(matcher::consume_wakeups(
            self.matcher.clone(),
            broker.clone(),
            shutdown.clone(),
        ));
        s.spawn(reports::consume(
            pool.clone(),
            broker.clone(),
            self.matcher.clone(),
            self.settings.clone(),
            shutdown.clone(),
        ));
        s.spawn(finishes::consume(
            pool.clone(),
            broker.clone(),
            self.settings.clone(),
            shutdown.clone(),
        ));
        s.spawn(stranded::run(
            pool.clone(),
            self.settings.dispatcher.stranded_interval_ms,
            shutdown.clone(),
        ));
        s.spawn(sweep::run(
            pool.clone(),
            self.matcher.clone(),
            self.settings.clone(),
            shutdown.clone(),
        ));
        s.stopped().await;
        Ok(())
    }
}
