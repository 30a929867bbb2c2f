//! Applies bot reports. Each report is one transaction; a redelivered report
//! changes nothing (repeated transitions are no-ops, events are keyed by the
//! report's id), and a report for an attempt the job no longer is — a bot
//! that lost its lease — is refused and recorded as a WARNING.

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use orq_shared::CancellationToken;
use orq_shared::broker::Broker;
use orq_shared::config::Settings;
use orq_shared::domain::{JobEvent, JobId};
use orq_shared::messages::{BotReport, ReportBody};
use orq_shared::repo::jobs::{self, Actor, Applied, EventKind, EventRecord, Outcome};
use orq_shared::repo::{RepoError, bots};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::matcher::Matcher;

/// What applying a report leads to.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing else to do.
    None,
    /// A bot slot may have freed up: match again.
    Rematch,
}

pub async fn apply(
    pool: &deadpool_postgres::Pool,
    report: &BotReport,
) -> Result<Effect, RepoError> {
    let mut db = pool.get().await?;
    let tx = db.transaction().await?;
    let customer = report.customer_id;
    let (job, attempt, event, outcome) = match &report.body {
        ReportBody::Heartbeat { .. } => {
            let before = bots::get(&tx, customer, report.bot_id).await;
            let bot = match before {
                Ok(b) => b,
                Err(RepoError::NotFound(_)) => return Ok(Effect::None),
                Err(e) => return Err(e),
            };
            let after = bots::heartbeat(&tx, customer, report.bot_id).await?;
            tx.commit().await?;
            let freed = bot.status != after.status && !after.is_full();
            return Ok(if freed { Effect::Rematch } else { Effect::None });
        }
        ReportBody::Running { job_id, attempt } => {
            (*job_id, *attempt, JobEvent::Start, Outcome::default())
        }
        ReportBody::Progress {
            job_id,
            attempt,
            percent,
            rows_done,
            ..
        } => (
            *job_id,
            *attempt,
            JobEvent::Progress,
            Outcome {
                percent: Some(i16::from(*percent.min(&100))),
                rows_done: Some(i32::try_from(*rows_done).unwrap_or(i32::MAX)),
                ..Outcome::default()
            },
        ),
        ReportBody::Complete {
            job_id,
            attempt,
            rows_total,
        } => (
            *job_id,
            *attempt,
            JobEvent::Complete,
            Outcome {
                rows_done: Some(i32::try_from(*rows_total).unwrap_or(i32::MAX)),
                ..Outcome::default()
            },
        ),
        ReportBody::Failed {
            job_id,
            attempt,
            error,
            failed_rows,
        } => (
            *job_id,
            *attempt,
            JobEvent::Fail,
            Outcome {
                error: Some(error.clone()),
                result: Some(serde_json::json!({ "failed_rows": failed_rows })),
                ..Outcome::default()
            },
        ),
    };
    let actor = Actor::Bot {
        bot: report.bot_id,
        attempt,
    };
    let applied = jobs::transition(
        &tx, customer, job, actor, event, &outcome, report.id, report.at,
    )
    .await;
    let effect = match applied {
        Ok(Applied::Done { from, task }) => {
            if let ReportBody::Progress {
                percent,
                rows_done,
                rows_total,
                ..
            } = &report.body
            {
                record(
                    &tx,
                    report,
                    job,
                    EventKind::PercentChange,
                    format!("{percent}% ({rows_done}/{rows_total} rows)"),
                    Some(attempt),
                )
                .await?;
            }
            if let ReportBody::Failed { error, .. } = &report.body {
                record(
                    &tx,
                    report,
                    job,
                    EventKind::Error,
                    error.clone(),
                    Some(attempt),
                )
                .await?;
            }
            if from.is_active() && !task.status.is_active() {
                Effect::Rematch
            } else {
                Effect::None
            }
        }
        Ok(Applied::Stale {
            current_attempt, ..
        }) => {
            record(&tx, report, job, EventKind::Warning,
                format!("refused a {} report from bot {} for attempt {attempt}; the job is at attempt {current_attempt}",
                    kind_name(&report.body), report.bot_id), Some(attempt)).await?;
            Effect::None
        }
        // Late reports for finished jobs, unknown jobs: nothing to apply.
        Err(RepoError::Conflict(why)) => {
            tracing::debug!(%job, %why, "report not applicable");
            Effect::None
        }
        Err(RepoError::NotFound(_)) => Effect::None,
        Err(e) => return Err(e),
    };
    tx.commit().await?;
    Ok(effect)
}

fn kind_name(body: &ReportBody) -> &'static str {
    match body {
        ReportBody::Heartbeat { .. } => "heartbeat",
        ReportBody::Running { .. } => "running",
        ReportBody::Progress { .. } => "progress",
        ReportBody::Complete { .. } => "complete",
        ReportBody::Failed { .. } => "failed",
    }
}

/// An event derived from a report; its id is derived from the report's so a
/// redelivery does not add it twice.
async fn record(
    db: &impl deadpool_postgres::GenericClient,
    report: &BotReport,
    job: JobId,
    kind: EventKind,
    description: String,
    attempt: Option<i32>,
) -> Result<(), RepoError> {
    let id = Uuid::new_v5(&report.id, format!("{kind:?}").as_bytes());
    jobs::append_event(
        db,
        &EventRecord {
            id,
            job_id: job,
            customer: report.customer_id,
            kind,
            description,
            from: None,
            to: None,
            bot: Some(report.bot_id),
            attempt,
        },
    )
    .await?;
    Ok(())
}

/// Consumes the reports queue, applying up to `report_concurrency` reports at
/// once. A report that cannot be parsed is dead-lettered; one that fails on
/// the database is retried in place (it stays unacked) until it applies.
pub async fn consume(
    pool: deadpool_postgres::Pool,
    broker: Broker,
    matcher: Matcher,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    let queue = broker.topology().reports_queue();
    let limit = settings.dispatcher.report_concurrency.max(1);
    let slots = Arc::new(Semaphore::new(limit));
    let prefetch = u16::try_from(limit * 4).unwrap_or(u16::MAX);
    let mut last = None;
    loop {
        let session = tokio::select! {
            s = broker.session_after(last) => s,
            _ = shutdown.cancelled() => break,
        };
        last = Some(session.generation());
        let mut consumer = match session.consume(&queue, prefetch).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot consume the reports queue");
                session.report_failure();
                continue;
            }
        };
        loop {
            let delivery = tokio::select! {
                d = consumer.next() => d,
                _ = shutdown.cancelled() => break,
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "reports consumer failed");
                    session.report_failure();
                    break;
                }
                None => break,
            };
            let report: BotReport = match serde_json::from_slice(&delivery.data) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "malformed report dead-lettered");
                    let _ = delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            let pool = pool.clone();
            let matcher = matcher.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut wait = Duration::from_millis(100);
                loop {
                    match apply(&pool, &report).await {
                        Ok(effect) => {
                            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                            if effect == Effect::Rematch {
                                matcher.wake(report.customer_id);
                            }
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, report = %report.id, "applying report failed; retrying");
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                _ = shutdown.cancelled() => {
                                    let _ = delivery.acker.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                                    return;
                                }
                            }
                            wait = (wait * 2).min(Duration::from_secs(5));
                        }
                    }
                }
            });
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    // Let in-flight reports finish.
    let _ = slots
        .acquire_many(u32::try_from(limit).unwrap_or(u32::MAX))
        .await;
}
