//! The dashboard's landing view in one answer: jobs by status now,
//! completed and failed per minute over the last hour, the backlog and its
//! oldest age, the bots, webhook and notification failures, and the
//! longest-running jobs. The reads run side by side on one connection
//! (pipelined); the gaps of the series and the ages are filled here, by
//! pure functions.

use orq_shared::domain::{CustomerId, JobStatus};
use orq_shared::repo::RepoError;
use orq_shared::repo::overview::{self, BotCounts, Failures, Running};
use serde::Serialize;
use time::OffsetDateTime;

use crate::state::AppState;

/// Minutes the completed/failed series covers, the current one last.
pub const MINUTES: i64 = 60;
/// Running jobs listed, longest first.
pub const LONGEST: i64 = 10;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Repo(#[from] RepoError),
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// When it was read (the gateway's clock): ages are counted to it.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Jobs (CSV tasks and runs of task definitions) in each status, every
    /// status listed, in the order of the life cycle.
    pub jobs: Vec<StatusCount>,
    /// Jobs that ended in each of the last 60 minutes, oldest first; the
    /// last is the current minute, so far.
    pub per_minute: Vec<Minute>,
    pub backlog: Backlog,
    pub bots: BotCounts,
    pub webhooks: Failures,
    pub notifications: Failures,
    /// The jobs RUNNING longest, longest first (at most 10).
    pub longest_running: Vec<RunningJob>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StatusCount {
    pub status: JobStatus,
    pub count: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Minute {
    /// The minute's start.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Jobs that ended COMPLETE in it.
    pub complete: i64,
    /// Jobs that ended FAILED or TIMEOUT in it.
    pub failed: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = OverviewBacklog)]
pub struct Backlog {
    /// WAITING jobs that may run now.
    pub waiting: i64,
    /// WAITING runs still in their trigger's grace time.
    pub on_hold: i64,
    /// WAITING jobs no registered bot could take (each has its
    /// `waiting_reason`): none of its system's bots left or all draining,
    /// its host gone, no agent with its required tags.
    pub stranded: i64,
    /// When the oldest waiting job that may run was created.
    #[serde(with = "time::serde::rfc3339::option")]
    pub oldest_created_at: Option<OffsetDateTime>,
    /// Its age in seconds, at `at`.
    pub oldest_age_secs: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RunningJob {
    #[serde(flatten)]
    pub job: Running,
    /// Seconds it has been running, at `at`.
    pub running_secs: f64,
}

/// The customer's overview, as of `now`.
pub async fn read(state: &AppState, customer: CustomerId) -> Result<Overview, Error> {
    let now = OffsetDateTime::now_utc();
    let db = state.db().await?;
    let db = &db;
    let (jobs, minutes, backlog, bots, webhooks, notifications, running) = tokio::try_join!(
        overview::jobs_by_status(db, customer),
        overview::finished_per_minute(db, customer, window_start(now, MINUTES)),
        overview::backlog(db, customer),
        overview::bots(db, customer),
        overview::webhook_failures(db, customer),
        overview::notification_failures(db, customer),
        overview::longest_running(db, customer, LONGEST),
    )?;
    Ok(Overview {
        at: now,
        jobs: every_status(&jobs),
        per_minute: per_minute(now, MINUTES, &minutes),
        backlog: Backlog {
            waiting: backlog.ready,
            on_hold: backlog.on_hold,
            stranded: backlog.stranded,
            oldest_created_at: backlog.oldest,
            oldest_age_secs: backlog.oldest.map(|t| age_secs(now, t)),
        },
        bots,
        webhooks,
        notifications,
        longest_running: running.into_iter().map(|r| running_job(now, r)).collect(),
    })
}

/// Every job status in the order of the life cycle, with its count (0
/// where none).
pub fn every_status(counts: &[(JobStatus, i64)]) -> Vec<StatusCount> {
    JobStatus::ALL
        .iter()
        .map(|&status| StatusCount {
            status,
            count: counts
                .iter()
                .filter(|(s, _)| *s == status)
                .map(|(_, n)| n)
                .sum(),
        })
        .collect()
}

/// The minute (since the epoch) `t` falls in.
fn epoch_minute(t: OffsetDateTime) -> i64 {
    t.unix_timestamp().div_euclid(60)
}

/// The start of the first of the `minutes` minutes that end with the one
/// `now` is in.
pub fn window_start(now: OffsetDateTime, minutes: i64) -> OffsetDateTime {
    minute_start(epoch_minute(now) - (minutes - 1))
}

fn minute_start(minute: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(minute * 60).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// The `minutes` minutes up to the one `now` is in, oldest first, each
/// with the counts `rows` (`(epoch minute, complete, failed)`) give it;
/// rows outside the window (a clock ahead of ours) are left out.
pub fn per_minute(now: OffsetDateTime, minutes: i64, rows: &[(i64, i64, i64)]) -> Vec<Minute> {
    let last = epoch_minute(now);
    let first = last - (minutes - 1);
    (first..=last)
        .map(|minute| {
            let (complete, failed) = rows
                .iter()
                .filter(|(m, _, _)| *m == minute)
                .fold((0, 0), |(c, f), (_, rc, rf)| (c + rc, f + rf));
            Minute {
                at: minute_start(minute),
                complete,
                failed,
            }
        })
        .collect()
}

/// Seconds from `since` to `now`, never negative (another clock may be a
/// little ahead), to the millisecond.
pub fn age_secs(now: OffsetDateTime, since: OffsetDateTime) -> f64 {
    let ms = (now - since).whole_milliseconds().max(0);
    ms as f64 / 1000.0
}

fn running_job(now: OffsetDateTime, job: Running) -> RunningJob {
    RunningJob {
        running_secs: age_secs(now, job.started_at),
        job,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn every_status_is_listed_in_life_cycle_order_with_zeros() {
        let listed = every_status(&[(JobStatus::Failed, 2), (JobStatus::Waiting, 5)]);
        let pairs: Vec<(&str, i64)> = listed
            .iter()
            .map(|s| (s.status.as_str(), s.count))
            .collect();
        assert_eq!(
            pairs,
            [
                ("WAITING", 5),
                ("ASSIGNED", 0),
                ("RUNNING", 0),
                ("COMPLETE", 0),
                ("FAILED", 2),
                ("TIMEOUT", 0),
                ("CANCELED", 0),
            ]
        );
    }

    #[test]
    fn the_window_starts_on_a_minute_and_ends_with_the_current_one() {
        let now = datetime!(2026-03-01 10:30:45.5 UTC);
        assert_eq!(window_start(now, 60), datetime!(2026-03-01 09:31:00 UTC));
        assert_eq!(window_start(now, 1), datetime!(2026-03-01 10:30:00 UTC));
        // On a minute's first instant, that minute is the last.
        let on = datetime!(2026-03-01 10:31:00 UTC);
        assert_eq!(window_start(on, 60), datetime!(2026-03-01 09:32:00 UTC));
    }

    #[test]
    fn minutes_without_rows_are_zero_and_rows_land_in_their_minute() {
        let now = datetime!(2026-03-01 10:30:45 UTC);
        let current = epoch_minute(now);
        let rows = [(current, 3, 1), (current - 59, 0, 2), (current - 10, 7, 0)];
        let series = per_minute(now, 60, &rows);
        assert_eq!(series.len(), 60);
        assert_eq!(series[0].at, datetime!(2026-03-01 09:31:00 UTC));
        assert_eq!((series[0].complete, series[0].failed), (0, 2));
        assert_eq!(series[49].at, datetime!(2026-03-01 10:20:00 UTC));
        assert_eq!((series[49].complete, series[49].failed), (7, 0));
        assert_eq!(series[59].at, datetime!(2026-03-01 10:30:00 UTC));
        assert_eq!((series[59].complete, series[59].failed), (3, 1));
        let total: i64 = series.iter().map(|m| m.complete + m.failed).sum();
        assert_eq!(total, 13);
    }

    #[test]
    fn rows_outside_the_window_are_left_out() {
        let now = datetime!(2026-03-01 10:30:45 UTC);
        let current = epoch_minute(now);
        let series = per_minute(now, 60, &[(current + 1, 5, 5), (current - 60, 4, 4)]);
        assert!(series.iter().all(|m| m.complete == 0 && m.failed == 0));
    }

    #[test]
    fn ages_are_seconds_and_never_negative() {
        let now = datetime!(2026-03-01 10:30:45.250 UTC);
        assert_eq!(age_secs(now, datetime!(2026-03-01 10:29:45 UTC)), 60.25);
        assert_eq!(age_secs(now, datetime!(2026-03-01 10:30:46 UTC)), 0.0);
    }
}
