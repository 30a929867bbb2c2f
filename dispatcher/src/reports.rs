//! Applies bot reports, in batches: the consumer takes every report that is
//! ready (up to a bound) and applies them in one transaction with a fixed
//! number of statements (`jobs::apply_changes`). A redelivered report changes
//! nothing (repeated transitions are no-ops, events are keyed by the report's
//! id), and a report for an attempt the job no longer is — a bot that lost
//! its lease — is refused and recorded as a WARNING.

use orq_shared::CancellationToken;
use orq_shared::broker::Broker;
use orq_shared::config::Settings;
use orq_shared::domain::{BotId, CustomerId, JobEvent, JobId, JobStatus};
use orq_shared::messages::{BotReport, ReportBody, Reported, RowError};
use orq_shared::repo::jobs::{self, Actor, Change, ChangeResult, EventKind, EventRecord, Outcome};
use orq_shared::repo::{RepoError, bots};
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

use crate::matcher::Matcher;

/// Text from a bot, made storable: PostgreSQL refuses NUL in text and jsonb,
/// and one refused report must not hold back the ones behind it.
fn clean(text: &str) -> String {
    text.replace('\0', "\u{fffd}")
}

fn clean_row(row: &RowError) -> RowError {
    RowError {
        row: row.row,
        error: clean(&row.error),
    }
}

/// `clean` for every string in a JSON value (jsonb refuses `\u0000`).
fn clean_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(clean(s)),
        Value::Array(items) => Value::Array(items.iter().map(clean_json).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (clean(k), clean_json(v))).collect())
        }
        other => other.clone(),
    }
}

/// The change a job report asks for; `None` for heartbeats.
fn change_for(report: &BotReport) -> Option<Change> {
    let (job, attempt, event, outcome, notes) = match &report.body {
        ReportBody::Heartbeat { .. } | ReportBody::Canary { .. } => return None,
        ReportBody::Running { job_id, attempt } => (
            *job_id,
            *attempt,
            JobEvent::Start,
            Outcome::default(),
            Vec::new(),
        ),
        ReportBody::Progress {
            job_id,
            attempt,
            percent,
            rows_done,
            rows_total,
            failed_rows,
        } => (
            *job_id,
            *attempt,
            JobEvent::Progress,
            Outcome {
                percent: Some(i16::from((*percent).min(100))),
                rows_done: Some(i32::try_from(*rows_done).unwrap_or(i32::MAX)),
                failed_rows: failed_rows.iter().map(clean_row).collect(),
                ..Outcome::default()
            },
            vec![(
                EventKind::PercentChange,
                format!("{percent}% ({rows_done}/{rows_total} rows)"),
            )],
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
            Vec::new(),
        ),
        ReportBody::Failed {
            job_id,
            attempt,
            error,
            failed_rows,
            rows_done,
        } => (
            *job_id,
            *attempt,
            JobEvent::Fail,
            Outcome {
                error: Some(clean(error)),
                rows_done: rows_done.map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
                result: Some(serde_json::json!({
                    "failed_rows": failed_rows.iter().map(clean_row).collect::<Vec<_>>()
                })),
                ..Outcome::default()
            },
            vec![(
                EventKind::Error,
                clean(&orq_shared::rows::failure_note(error, failed_rows)),
            )],
        ),
        ReportBody::Percent {
            job_id,
            attempt,
            percent,
        } => (
            *job_id,
            *attempt,
            JobEvent::Progress,
            Outcome {
                percent: Some(i16::from((*percent).min(100))),
                ..Outcome::default()
            },
            vec![(
                EventKind::PercentChange,
                format!("{}%", (*percent).min(100)),
            )],
        ),
        ReportBody::Step {
            job_id,
            attempt,
            step,
        } => (
            *job_id,
            *attempt,
            JobEvent::Progress,
            Outcome {
                step: Some(clean(step)),
                ..Outcome::default()
            },
            vec![(EventKind::StepChange, clean(step))],
        ),
        ReportBody::Released {
            job_id,
            attempt,
            reason,
            ..
        } => (
            *job_id,
            *attempt,
            JobEvent::DeliveryFailed,
            Outcome::default(),
            vec![(
                EventKind::Warning,
                clean(&format!("its agent gave it back unstarted: {reason}")),
            )],
        ),
        ReportBody::Finished {
            job_id,
            attempt,
            status,
            exit_code,
            output,
            error,
            stdout,
            stderr,
        } => {
            let event = match status {
                JobStatus::Complete => JobEvent::Complete,
                JobStatus::Timeout => JobEvent::TimedOut,
                _ => JobEvent::Fail,
            };
            let notes = error.iter().map(|e| (EventKind::Error, clean(e))).collect();
            (
                *job_id,
                *attempt,
                event,
                Outcome {
                    error: error.as_deref().map(clean),
                    result: Some(serde_json::json!({
                        "stdout": clean(stdout),
                        "stderr": clean(stderr),
                    })),
                    exit_code: *exit_code,
                    output: output.as_ref().map(clean_json),
                    ..Outcome::default()
                },
                notes,
            )
        }
    };
    Some(Change {
        customer: report.customer_id,
        job,
        actor: Actor::Bot {
            bot: report.bot_id,
            attempt,
        },
        event,
        outcome,
        event_id: report.id,
        at: report.at,
        notes,
    })
}

fn kind_name(body: &ReportBody) -> &'static str {
    match body {
        ReportBody::Heartbeat { .. } => "heartbeat",
        ReportBody::Running { .. } => "running",
        ReportBody::Progress { .. } => "progress",
        ReportBody::Complete { .. } => "complete",
        ReportBody::Failed { .. } => "failed",
        ReportBody::Percent { .. } => "percent",
        ReportBody::Step { .. } => "step",
        ReportBody::Finished { .. } => "finished",
        ReportBody::Released { .. } => "released",
        ReportBody::Canary { .. } => "canary",
    }
}

/// What applying reports calls for: customers to match again now (a bot may
/// have a free slot, a triggered run may wait), and later (a triggered run's
/// grace time ends).
#[derive(Debug, Default)]
pub struct Wakes {
    pub now: HashSet<CustomerId>,
    pub later: Vec<(CustomerId, time::OffsetDateTime)>,
    /// Agents still running an attempt the job no longer is (their report
    /// was refused): told to stop it, so a job taken from an agent that
    /// was in fact alive runs on one agent only (but for the row in flight).
    pub stop: HashSet<(BotId, JobId, i32)>,
}

impl crate::batch::Merge for Wakes {
    fn merge(&mut self, other: Wakes) {
        self.now.extend(other.now);
        self.later.extend(other.later);
        self.stop.extend(other.stop);
    }
}

impl Wakes {
    fn send(self, matcher: &Matcher) {
        for customer in self.now {
            matcher.wake(customer);
        }
        for (customer, at) in self.later {
            matcher.wake_at(customer, at);
        }
        for (bot, job, attempt) in self.stop {
            matcher.stop_stale(bot, job, attempt);
        }
    }
}

/// Applies a batch of reports.
pub async fn apply(
    pool: &deadpool_postgres::Pool,
    reports: &[BotReport],
) -> Result<Wakes, RepoError> {
    let mut rematch = HashSet::new();
    let mut later = Vec::new();
    let mut stop = HashSet::new();
    let mut db = pool.get().await?;
    let (with_jobs, changes): (Vec<&BotReport>, Vec<Change>) = reports
        .iter()
        .filter_map(|r| change_for(r).map(|c| (r, c)))
        .unzip();
    if !changes.is_empty() {
        let tx = db.transaction().await?;
        // A stopping agent's bot is UNAVAILABLE before what it gives back
        // waits again, so the rematch does not hand it straight back.
        let mut stopping: Vec<BotId> = reports
            .iter()
            .filter(|r| matches!(r.body, ReportBody::Released { stopping: true, .. }))
            .map(|r| r.bot_id)
            .collect();
        stopping.sort_by_key(|b| b.0);
        stopping.dedup();
        for bot in stopping {
            bots::lose(&tx, bot, "its agent is stopping").await?;
        }
        let results = jobs::apply_changes(&tx, &changes).await?;
        let mut warnings = Vec::new();
        for ((report, change), result) in with_jobs.iter().zip(&changes).zip(results) {
            match result {
                ChangeResult::Done { from, to, wake_at } => {
                    if from.is_active() && !to.is_active() {
                        rematch.insert(report.customer_id);
                    }
                    if let Some(at) = wake_at {
                        later.push((report.customer_id, at));
                    }
                }
                ChangeResult::Stale {
                    current_attempt, ..
                } => warnings.push({
                    if let Actor::Bot { attempt, .. } = change.actor {
                        stop.insert((report.bot_id, change.job, attempt));
                    }
                    EventRecord {
                    id: Uuid::new_v5(&report.id, b"stale"),
                    job_id: change.job,
                    customer: report.customer_id,
                    kind: EventKind::Warning,
                    description: format!(
                        "refused a {} report from bot {} for attempt {}; the job is at attempt {current_attempt}",
                        kind_name(&report.body),
                        report.bot_id,
                        match change.actor {
                            Actor::Bot { attempt, .. } => attempt,
                            _ => 0,
                        }
                    ),
                    from: None,
                    to: None,
                    bot: Some(report.bot_id),
                    attempt: None,
                    }
                }),
                // Late reports for finished jobs, unknown jobs: nothing to apply.
                ChangeResult::Invalid(why) => {
                    tracing::debug!(job = %change.job, %why, "report not applicable")
                }
                // Its rows are kept; the job waits for its next agent, and
                // this one stops.
                ChangeResult::LateProgress => {
                    if let Actor::Bot { attempt, .. } = change.actor {
                        stop.insert((report.bot_id, change.job, attempt));
                    }
                }
                ChangeResult::NotFound => {}
            }
        }
        jobs::append_events(&tx, &warnings).await?;
        tx.commit().await?;
    }
    // Heartbeats touch one bot each, in their own short transactions.
    for report in reports
        .iter()
        .filter(|r| matches!(r.body, ReportBody::Heartbeat { .. }))
    {
        let tx = db.transaction().await?;
        let before = match bots::get(&tx, report.customer_id, report.bot_id).await {
            Ok(b) => b,
            Err(RepoError::NotFound(_)) => continue,
            Err(e) => return Err(e),
        };
        let after = bots::heartbeat(&tx, report.customer_id, report.bot_id).await?;
        tx.commit().await?;
        if before.status != after.status && !after.is_full() {
            rematch.insert(report.customer_id);
        }
    }
    // Canaries last: a reaper reading one back knows the heartbeats sent
    // before it were applied.
    let canaries: Vec<(Uuid, time::OffsetDateTime)> = reports
        .iter()
        .filter_map(|r| match r.body {
            ReportBody::Canary { reaper_id, sent_at } => Some((reaper_id, sent_at)),
            _ => None,
        })
        .collect();
    orq_shared::repo::canaries::record(&db, &canaries).await?;
    Ok(Wakes {
        now: rematch,
        later,
        stop,
    })
}

/// Consumes the reports queue: reports are applied in arrival order, a
/// batch at a time (see `batch`).
pub async fn consume(
    pool: deadpool_postgres::Pool,
    broker: Broker,
    matcher: Matcher,
    settings: Arc<Settings>,
    shutdown: CancellationToken,
) {
    let queue = broker.topology().reports_queue();
    let intake = Reports { pool, matcher };
    crate::batch::consume(
        broker,
        queue,
        settings.dispatcher.report_batch,
        shutdown,
        intake,
    )
    .await
}

struct Reports {
    pool: deadpool_postgres::Pool,
    matcher: Matcher,
}

impl crate::batch::Intake for Reports {
    type Wire = Reported;
    type Message = BotReport;
    type Out = Wakes;

    fn unpack(wire: Reported) -> Vec<BotReport> {
        wire.into_reports()
    }

    async fn apply(&self, batch: &[BotReport]) -> Result<Wakes, RepoError> {
        apply(&self.pool, batch).await
    }

    fn done(&self, wakes: Wakes) {
        wakes.send(&self.matcher)
    }
}
