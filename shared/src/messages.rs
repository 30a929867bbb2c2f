//! The messages that cross RabbitMQ, as JSON bodies. Every message carries an
//! id (also set as the AMQP `message_id`) so consumers can drop redeliveries.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{BotId, CustomerId, JobId, JobStatus, ScriptId};
use std::collections::BTreeMap;

/// Gateway -> dispatcher: "this customer has waiting work". Carries no job
/// data: the job is already in PostgreSQL, and a lost wake-up only costs the
/// sweep interval.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Wake {
    pub id: Uuid,
    pub customer_id: CustomerId,
    /// The job that caused the wake-up, for tracing.
    pub job_id: Option<JobId>,
}

/// Dispatcher -> one bot's queue: run this job. The fields of the proof of
/// concept's task travel with it so the agent needs no database.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Assignment {
    pub id: Uuid,
    pub job_id: JobId,
    /// Fences reports: a report for an older attempt is refused.
    pub attempt: i32,
    pub customer_id: CustomerId,
    pub bot_id: BotId,
    pub description: String,
    pub system: String,
    pub attachment: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When the dispatcher sent it; an old or redelivered assignment is
    /// checked against the job before it runs.
    #[serde(with = "time::serde::rfc3339")]
    pub assigned_at: OffsetDateTime,
    /// Set for a script job (a run of a TheEye task): what to run. Absent
    /// for the proof of concept's CSV jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<ScriptSpec>,
    /// Rows of a CSV job reported done by earlier attempts (PostgreSQL's
    /// `rows_done`): whichever agent receives the assignment starts after
    /// them, so a job moved to another agent does not run them again.
    #[serde(default)]
    pub rows_done: u32,
    /// Rows among those that failed in earlier attempts: they keep their
    /// errors in the job's outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_rows: Vec<RowError>,
}

/// What a bot runs for a script job: copied from the task when the job was
/// created, so a later change of the task does not change a queued run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ScriptSpec {
    pub script_id: ScriptId,
    /// SHA-256 (hex) of the script's content: the agent's cache key, and
    /// what the fetched content must hash to.
    pub checksum: String,
    pub filename: String,
    /// The `run_as` template (`%script%` stands for the script and its
    /// arguments).
    pub run_as: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub timeout_secs: u32,
}

/// Gateway -> one agent's control queue: act on a job it holds, or on the
/// agent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// The job was canceled: stop its process group (SIGTERM, then SIGKILL).
    Cancel {
        id: Uuid,
        job_id: JobId,
        attempt: i32,
    },
    /// The bot was drained (or resumed): a drained agent gives back the
    /// assignments it holds unstarted (`ReportBody::Released`) and finishes
    /// those it runs.
    Drain { id: Uuid, draining: bool },
}

impl Control {
    /// The message's id (also its AMQP `message_id`).
    pub fn id(&self) -> Uuid {
        match self {
            Control::Cancel { id, .. } | Control::Drain { id, .. } => *id,
        }
    }
}

/// Bot-agent -> dispatcher.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BotReport {
    pub id: Uuid,
    pub bot_id: BotId,
    pub customer_id: CustomerId,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub body: ReportBody,
}

impl BotReport {
    /// A new report of `bot`, made now.
    pub fn new(bot_id: BotId, customer_id: CustomerId, body: ReportBody) -> BotReport {
        BotReport {
            id: Uuid::now_v7(),
            bot_id,
            customer_id,
            at: OffsetDateTime::now_utc(),
            body,
        }
    }
}

/// Bot-agent -> dispatcher: reports sent together (`agent.report_linger_ms`),
/// applied in one transaction, in order. Each keeps its own id (what makes
/// applying it again a no-op) and timestamp.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReportBatch {
    pub id: Uuid,
    pub reports: Vec<BotReport>,
}

/// What the reports queue carries: one report (as agents before batching
/// sent them, and as an agent sends a lone one) or a batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Reported {
    Batch(ReportBatch),
    One(BotReport),
}

impl Reported {
    /// The reports, in the order they were sent.
    pub fn into_reports(self) -> Vec<BotReport> {
        match self {
            Reported::Batch(b) => b.reports,
            Reported::One(r) => vec![r],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReportBody {
    Heartbeat {
        running: u32,
        capacity: u32,
    },
    Running {
        job_id: JobId,
        attempt: i32,
    },
    Progress {
        job_id: JobId,
        attempt: i32,
        percent: u8,
        rows_done: u32,
        rows_total: u32,
        /// Rows that failed since the previous progress report: a job
        /// resumed elsewhere keeps their errors.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        failed_rows: Vec<RowError>,
    },
    Complete {
        job_id: JobId,
        attempt: i32,
        rows_total: u32,
    },
    Failed {
        job_id: JobId,
        attempt: i32,
        error: String,
        failed_rows: Vec<RowError>,
        /// Rows finished (done or failed) by then, when rows ran at all.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rows_done: Option<u32>,
    },
    /// A script's progress marker (`::percent::N`).
    Percent {
        job_id: JobId,
        attempt: i32,
        percent: u8,
    },
    /// A script's step marker (`::step::text`).
    Step {
        job_id: JobId,
        attempt: i32,
        step: String,
    },
    /// A script's outcome: COMPLETE, FAILED or TIMEOUT.
    Finished {
        job_id: JobId,
        attempt: i32,
        status: JobStatus,
        exit_code: Option<i32>,
        /// `output` of the script's last stdout line when it is JSON.
        output: Option<serde_json::Value>,
        /// Why it failed, in a sentence.
        error: Option<String>,
        /// The last bytes of stdout and stderr.
        stdout: String,
        stderr: String,
    },
    /// An assignment the agent held unstarted (one of its prefetched
    /// ones) and gives back, because it is stopping or draining: the job
    /// waits for another bot at once. Never sent for a job it started.
    Released {
        job_id: JobId,
        attempt: i32,
        reason: String,
        /// The agent is stopping: its bot takes no more work until it is
        /// heard from again (else the job could be assigned straight back).
        #[serde(default)]
        stopping: bool,
    },
    /// A reaper's canary (its `bot_id` and `customer_id` are nil): the
    /// dispatcher records it after the heartbeats before it.
    Canary {
        reaper_id: Uuid,
        #[serde(with = "time::serde::rfc3339")]
        sent_at: OffsetDateTime,
    },
}

/// Gateway -> dispatcher: a micro-task finish, as the worker posted it.
/// The gateway checked its structure and the worker's token; everything
/// else is checked against the execution when it is applied.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FinishSubmission {
    pub id: Uuid,
    pub customer_id: CustomerId,
    /// The worker token that sent it (refused later if revoked by then).
    pub token_id: Uuid,
    /// The worker's e-mail (the seed's `sofier`).
    pub worker: String,
    pub task_id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    pub received_at: OffsetDateTime,
    pub body: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RowError {
    /// 1-based data row number (the header is row 0).
    pub row: u32,
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(body: ReportBody) -> BotReport {
        BotReport::new(BotId::new(), CustomerId::new(), body)
    }

    #[test]
    fn reports_round_trip_with_a_type_tag() {
        let report = report(ReportBody::Progress {
            job_id: JobId::new(),
            attempt: 1,
            percent: 50,
            rows_done: 1,
            rows_total: 2,
            failed_rows: vec![RowError {
                row: 1,
                error: "exit code 3".into(),
            }],
        });
        let json = serde_json::to_value(&report).expect("serializes");
        assert_eq!(json["body"]["type"], "progress");
        let back: BotReport = serde_json::from_value(json).expect("parses");
        assert_eq!(back, report);
    }

    #[test]
    fn the_reports_queue_takes_a_lone_report_or_a_batch_in_order() {
        let job_id = JobId::new();
        let lone = report(ReportBody::Running { job_id, attempt: 1 });
        let wire = serde_json::to_vec(&lone).expect("serializes");
        let got: Reported = serde_json::from_slice(&wire).expect("parses");
        assert_eq!(got.into_reports(), std::slice::from_ref(&lone));

        let done = report(ReportBody::Complete {
            job_id,
            attempt: 1,
            rows_total: 1,
        });
        let batch = ReportBatch {
            id: Uuid::now_v7(),
            reports: vec![lone.clone(), done.clone()],
        };
        let wire = serde_json::to_vec(&batch).expect("serializes");
        let got: Reported = serde_json::from_slice(&wire).expect("parses");
        assert_eq!(got.into_reports(), [lone, done]);

        // Neither: refused, not read as an empty batch.
        let junk = serde_json::from_slice::<Reported>(br#"{"id": "x", "reports": 3}"#);
        assert!(junk.is_err());
    }
}
