//! Leases, pure: when a holder's claim on a job ends, and what a job taken
//! back becomes. The reaper's SQL only finds the rows these rules name.
//!
//! A job is held three ways:
//! * a run with a timeout, from its start: the timeout plus [`SLACK`] for
//!   the bot's own SIGTERM/SIGKILL and its report;
//! * a job on an agent, while the agent heartbeats: a silence window after
//!   its last heartbeat;
//! * a job on a legacy HTTP bot (no heartbeat): the HTTP silence after its
//!   last report.

use time::{Duration, OffsetDateTime};

/// What a run's lease adds to its timeout.
pub const SLACK: Duration = Duration::seconds(30);

/// The lease a run takes when it starts: its timeout plus [`SLACK`]; none
/// without a timeout (its holder's heartbeat is its lease).
pub fn of_run(started: OffsetDateTime, timeout_secs: Option<i64>) -> Option<OffsetDateTime> {
    timeout_secs.map(|t| {
        started
            .saturating_add(Duration::seconds(t))
            .saturating_add(SLACK)
    })
}

/// When an agent's lease on its jobs ends: a silence window after its last
/// heartbeat.
pub fn of_agent(last_heartbeat: OffsetDateTime, window: Duration) -> OffsetDateTime {
    last_heartbeat.saturating_add(window)
}

/// When a legacy HTTP bot's lease on a running job ends: `silence` after
/// its last report on it.
pub fn of_http_bot(last_report: OffsetDateTime, silence: Duration) -> OffsetDateTime {
    last_report.saturating_add(silence)
}

/// What a job whose holder was lost becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TakenBack {
    /// WAITING again, for another bot: it has had `attempt` of `of`.
    Retry { attempt: i32, of: i32 },
    /// FAILED: it has had all its `attempts`.
    Fail { attempts: i32 },
}

impl TakenBack {
    pub fn retries(self) -> bool {
        matches!(self, TakenBack::Retry { .. })
    }
}

/// The rule for a job taken back after `attempt` attempts: its task's
/// `max_attempts` when it has one, else the deployment's default.
pub fn taken_back(attempt: i32, task_max: Option<i32>, default_max: i32) -> TakenBack {
    let of = task_max.unwrap_or(default_max);
    if attempt < of {
        TakenBack::Retry { attempt, of }
    } else {
        TakenBack::Fail { attempts: attempt }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const T: OffsetDateTime = datetime!(2026-11-30 12:00 UTC);

    #[test]
    fn a_run_with_a_timeout_holds_it_plus_the_slack() {
        assert_eq!(
            of_run(T, Some(60)),
            Some(T + Duration::seconds(90)),
            "60 s timeout + 30 s slack"
        );
        assert_eq!(of_run(T, Some(0)), Some(T + SLACK));
    }

    #[test]
    fn a_run_without_a_timeout_has_no_lease() {
        assert_eq!(of_run(T, None), None);
    }

    #[test]
    fn an_absurd_timeout_saturates_instead_of_overflowing() {
        let end = of_run(T, Some(i64::MAX)).expect("a lease");
        assert!(end > T + Duration::days(365 * 1000));
    }

    #[test]
    fn an_agent_holds_its_jobs_a_window_past_its_last_heartbeat() {
        assert_eq!(
            of_agent(T, Duration::seconds(12)),
            T + Duration::seconds(12)
        );
    }

    #[test]
    fn an_http_bot_holds_a_job_the_silence_past_its_last_report() {
        assert_eq!(
            of_http_bot(T, Duration::minutes(10)),
            T + Duration::minutes(10)
        );
    }

    #[test]
    fn a_job_taken_back_retries_until_its_task_limit() {
        assert_eq!(
            taken_back(1, Some(3), 5),
            TakenBack::Retry { attempt: 1, of: 3 }
        );
        assert_eq!(
            taken_back(2, Some(3), 5),
            TakenBack::Retry { attempt: 2, of: 3 }
        );
        assert_eq!(taken_back(3, Some(3), 5), TakenBack::Fail { attempts: 3 });
    }

    #[test]
    fn a_job_without_a_task_limit_uses_the_default() {
        assert!(taken_back(4, None, 5).retries());
        assert_eq!(taken_back(5, None, 5), TakenBack::Fail { attempts: 5 });
    }

    #[test]
    fn a_job_past_its_limit_fails_rather_than_retrying_forever() {
        // A limit lowered after the job ran more attempts.
        assert_eq!(taken_back(7, Some(2), 5), TakenBack::Fail { attempts: 7 });
    }
}
