//! The pure domain: ids, roles, and the bot and job state machines.
//!
//! Transitions are plain functions of (state, event); storage applies the
//! result with a guarded `UPDATE ... WHERE status = <from>`, so a transition
//! computed here is only ever applied to the state it was computed from.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

id_type!(
    /// A tenant.
    CustomerId
);
id_type!(
    /// A machine that runs work.
    BotId
);
id_type!(
    /// One run of work (the proof of concept's "task").
    JobId
);
id_type!(
    /// A task definition (TheEye's "task"): what a job runs.
    TaskId
);
id_type!(
    /// A script a task definition runs.
    ScriptId
);
id_type!(
    /// A task for a person: a micro-task or a flowBuild user task.
    HumanTaskId
);
id_type!(
    /// One start of a micro-task by a worker.
    ExecutionId
);

impl From<HumanTaskId> for JobId {
    /// Events of human tasks live in the one event table, whose `job_id`
    /// names any piece of work.
    fn from(id: HumanTaskId) -> JobId {
        JobId(id.0)
    }
}

/// Declares an enum stored as its upper-case name in a text column.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        // By hand: the derive does not see `serde(rename)` through the macro.
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}

        impl FromStr for $name {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(UnknownValue {
                        kind: stringify!($name),
                        value: other.to_string(),
                        expected: &[$($text),+],
                    }),
                }
            }
        }
    };
}

pub(crate) use text_enum;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}; expected one of {expected:?}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static [&'static str],
}

text_enum!(
    /// What a token may do. `viewer < user < admin`, as in TheEye; `bot` is a
    /// machine credential that may register bots and report on their work.
    Role { Viewer => "viewer", User => "user", Admin => "admin", Bot => "bot", Worker => "worker" }
);

impl Role {
    /// Whether a token of this role passes a check that requires `needed`.
    pub fn allows(self, needed: Role) -> bool {
        match (self, needed) {
            (Role::Bot, Role::Bot) | (Role::Worker, Role::Worker) => true,
            (Role::Bot | Role::Worker, _) | (_, Role::Bot | Role::Worker) => false,
            (have, need) => have.rank() >= need.rank(),
        }
    }

    fn rank(self) -> u8 {
        match self {
            Role::Viewer => 0,
            Role::User => 1,
            Role::Admin => 2,
            Role::Bot | Role::Worker => 0,
        }
    }
}

text_enum!(
    /// How a job reaches a bot.
    Delivery { Agent => "agent", Http => "http" }
);

text_enum!(
    BotStatus { Available => "AVAILABLE", Busy => "BUSY", Unavailable => "UNAVAILABLE" }
);

/// Things that happen to a bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BotEvent {
    /// The bot said it is alive; `full` when its running work fills its capacity.
    Heartbeat { full: bool },
    /// Work was assigned to it or finished on it.
    LoadChanged { full: bool },
    /// It missed too many heartbeats.
    Silent,
    /// Its status was set over the API (the proof of concept's bots set their
    /// own status with `PUT /bots/{id}`).
    Declared(BotStatus),
}

/// The next status of a bot. Total: every (status, event) pair has an answer.
pub fn bot_transition(from: BotStatus, event: BotEvent) -> BotStatus {
    let by_load = |full: bool| {
        if full {
            BotStatus::Busy
        } else {
            BotStatus::Available
        }
    };
    match (from, event) {
        (_, BotEvent::Heartbeat { full }) => by_load(full),
        // A silent bot stays unavailable until it speaks again, whatever its load.
        (BotStatus::Unavailable, BotEvent::LoadChanged { .. }) => BotStatus::Unavailable,
        (_, BotEvent::LoadChanged { full }) => by_load(full),
        (_, BotEvent::Silent) => BotStatus::Unavailable,
        (_, BotEvent::Declared(status)) => status,
    }
}

text_enum!(
    JobStatus {
        Waiting => "WAITING",
        Assigned => "ASSIGNED",
        Running => "RUNNING",
        Complete => "COMPLETE",
        Failed => "FAILED",
        Timeout => "TIMEOUT",
        Canceled => "CANCELED",
    }
);

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Complete | JobStatus::Failed | JobStatus::Timeout | JobStatus::Canceled
        )
    }

    /// Holds a slot of its bot's capacity.
    pub fn is_active(self) -> bool {
        matches!(self, JobStatus::Assigned | JobStatus::Running)
    }

    /// TheEye's `lifecycle` for this status; `on_hold` for a waiting run
    /// still in its trigger grace time.
    pub fn lifecycle(self, on_hold: bool) -> &'static str {
        match self {
            JobStatus::Waiting if on_hold => "onhold",
            JobStatus::Waiting => "ready",
            JobStatus::Assigned | JobStatus::Running => "assigned",
            JobStatus::Complete | JobStatus::Failed => "finished",
            JobStatus::Timeout => "expired",
            JobStatus::Canceled => "canceled",
        }
    }

    /// The statuses of a TheEye `lifecycle` name (for `?lifecycle[]=`).
    pub fn from_lifecycle(name: &str) -> Option<&'static [JobStatus]> {
        Some(match name {
            "ready" | "onhold" => &[JobStatus::Waiting],
            "assigned" => &[JobStatus::Assigned, JobStatus::Running],
            "finished" | "completed" | "terminated" => &[JobStatus::Complete, JobStatus::Failed],
            "expired" => &[JobStatus::Timeout],
            "canceled" => &[JobStatus::Canceled],
            _ => return None,
        })
    }

    /// TheEye's `state` of a finished job.
    pub fn state(self) -> Option<&'static str> {
        match self {
            JobStatus::Complete => Some("success"),
            JobStatus::Failed => Some("failure"),
            JobStatus::Timeout => Some("timeout"),
            JobStatus::Canceled => Some("canceled"),
            _ => None,
        }
    }
}

/// Things that happen to a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    /// The dispatcher handed it to a bot.
    Assign,
    /// Handing it over failed (no queue, HTTP bot refused), or its bot gave
    /// it back unstarted (a legacy bot's WAITING, an agent's `Released`):
    /// it waits again.
    DeliveryFailed,
    /// The bot started it.
    Start,
    /// The bot reported progress.
    Progress,
    Complete,
    Fail,
    /// Its deadline passed with no outcome.
    TimedOut,
    Cancel,
    /// Its bot vanished; `retry` when attempts remain.
    BotLost {
        retry: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from} job cannot take {event:?}")]
pub struct InvalidTransition {
    pub from: JobStatus,
    pub event: JobEvent,
}

/// The next status of a job, or why the event does not apply. A repeated
/// `Start` or `Progress` on a running job is accepted and changes nothing, so
/// redelivered reports are harmless.
pub fn job_transition(from: JobStatus, event: JobEvent) -> Result<JobStatus, InvalidTransition> {
    use JobEvent as E;
    use JobStatus as S;
    let to = match (from, event) {
        (S::Waiting, E::Assign) => S::Assigned,
        (S::Waiting | S::Assigned | S::Running, E::Cancel) => S::Canceled,
        (S::Assigned, E::DeliveryFailed) => S::Waiting,
        (S::Assigned | S::Running, E::Start | E::Progress) => S::Running,
        // A legacy bot may report the outcome without reporting RUNNING first.
        (S::Assigned | S::Running, E::Complete) => S::Complete,
        (S::Assigned | S::Running, E::Fail) => S::Failed,
        (S::Assigned | S::Running, E::TimedOut) => S::Timeout,
        (S::Assigned | S::Running, E::BotLost { retry: true }) => S::Waiting,
        (S::Assigned | S::Running, E::BotLost { retry: false }) => S::Failed,
        (from, event) => return Err(InvalidTransition { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOT_EVENTS: &[BotEvent] = &[
        BotEvent::Heartbeat { full: false },
        BotEvent::Heartbeat { full: true },
        BotEvent::LoadChanged { full: false },
        BotEvent::LoadChanged { full: true },
        BotEvent::Silent,
        BotEvent::Declared(BotStatus::Available),
        BotEvent::Declared(BotStatus::Busy),
        BotEvent::Declared(BotStatus::Unavailable),
    ];

    #[test]
    fn bot_every_pair() {
        use BotStatus::*;
        for &from in BotStatus::ALL {
            for &event in BOT_EVENTS {
                let expected = match event {
                    BotEvent::Heartbeat { full: false } => Available,
                    BotEvent::Heartbeat { full: true } => Busy,
                    BotEvent::LoadChanged { .. } if from == Unavailable => Unavailable,
                    BotEvent::LoadChanged { full: false } => Available,
                    BotEvent::LoadChanged { full: true } => Busy,
                    BotEvent::Silent => Unavailable,
                    BotEvent::Declared(s) => s,
                };
                assert_eq!(bot_transition(from, event), expected, "{from} + {event:?}");
            }
        }
    }

    const JOB_EVENTS: &[JobEvent] = &[
        JobEvent::Assign,
        JobEvent::DeliveryFailed,
        JobEvent::Start,
        JobEvent::Progress,
        JobEvent::Complete,
        JobEvent::Fail,
        JobEvent::TimedOut,
        JobEvent::Cancel,
        JobEvent::BotLost { retry: true },
        JobEvent::BotLost { retry: false },
    ];

    /// The whole table, written out: a change to the machine must change it.
    fn expected(from: JobStatus, event: JobEvent) -> Option<JobStatus> {
        use JobEvent as E;
        use JobStatus as S;
        let row: [Option<S>; 10] = match from {
            S::Waiting => [
                Some(S::Assigned),
                None,
                None,
                None,
                None,
                None,
                None,
                Some(S::Canceled),
                None,
                None,
            ],
            S::Assigned | S::Running => [
                None,
                (from == S::Assigned).then_some(S::Waiting),
                Some(S::Running),
                Some(S::Running),
                Some(S::Complete),
                Some(S::Failed),
                Some(S::Timeout),
                Some(S::Canceled),
                Some(S::Waiting),
                Some(S::Failed),
            ],
            S::Complete | S::Failed | S::Timeout | S::Canceled => [None; 10],
        };
        let index = JOB_EVENTS.iter().position(|e| *e == event)?;
        let _ = E::Assign;
        row[index]
    }

    #[test]
    fn job_every_pair() {
        for &from in JobStatus::ALL {
            for &event in JOB_EVENTS {
                let got = job_transition(from, event).ok();
                assert_eq!(got, expected(from, event), "{from} + {event:?}");
            }
        }
    }

    #[test]
    fn terminal_states_refuse_everything() {
        for &from in JobStatus::ALL.iter().filter(|s| s.is_terminal()) {
            for &event in JOB_EVENTS {
                assert!(job_transition(from, event).is_err());
            }
        }
    }

    #[test]
    fn roles_are_ordered_and_bots_apart() {
        assert!(Role::Admin.allows(Role::User));
        assert!(Role::User.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::User));
        assert!(!Role::User.allows(Role::Admin));
        assert!(Role::Bot.allows(Role::Bot));
        assert!(!Role::Bot.allows(Role::Viewer));
        assert!(!Role::Admin.allows(Role::Bot));
    }

    #[test]
    fn text_enums_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(*s));
        }
        assert!("waiting".parse::<JobStatus>().is_err());
        assert_eq!("BUSY".parse::<BotStatus>(), Ok(BotStatus::Busy));
    }
}
