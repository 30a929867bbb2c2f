//! The state machine of a task done by a person, and its kinds.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::domain::{UnknownValue, text_enum};

text_enum!(
    /// A human task's state (DESIGN.md: NEW -> RESERVED -> EXECUTING ->
    /// SUBMITTED -> COMPLETE | REJECTED, plus ERROR).
    HumanStatus {
        New => "NEW",
        Reserved => "RESERVED",
        Executing => "EXECUTING",
        Submitted => "SUBMITTED",
        Complete => "COMPLETE",
        Rejected => "REJECTED",
        Error => "ERROR",
    }
);

impl HumanStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            HumanStatus::Complete | HumanStatus::Rejected | HumanStatus::Error
        )
    }

    /// Still waiting for a person: a user task in this state takes commits.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            HumanStatus::New | HumanStatus::Reserved | HumanStatus::Executing
        )
    }
}

text_enum!(
    /// The two kinds of human task: done by a field worker through the
    /// micro-task API, or by anyone through flowBuild's activity manager.
    HumanKind { MicroTask => "micro_task", UserTask => "user_task" }
);

text_enum!(
    /// One start of a micro-task by a worker.
    ExecutionStatus {
        Executing => "EXECUTING",
        Complete => "COMPLETE",
        Rejected => "REJECTED",
        Error => "ERROR",
        Expired => "EXPIRED",
    }
);

text_enum!(
    /// What a passed deadline does to a human task.
    OnTimeout { Requeue => "requeue", Continue => "continue" }
);

text_enum!(
    /// flowBuild's `activity_manager`: whether the process waits.
    ActivityManager { Commit => "commit", Notify => "notify" }
);

impl ActivityManager {
    /// Whether `role` may end an open user task of this kind before it is
    /// submitted. An admin ends any. A `notify` task is also ended by the
    /// role that opens one (`user`): its process goes on without waiting
    /// and ends it when the process itself ends (seed 001: it stays open
    /// "até que a atividade expire, o canal submeta a atividade ou o
    /// processo finalize"). A `commit` task ends by its submission, its
    /// timeout, or an admin.
    pub fn ended_by(self, role: crate::domain::Role) -> bool {
        use crate::domain::Role;
        match role {
            Role::Admin => true,
            Role::User => self == ActivityManager::Notify,
            _ => false,
        }
    }
}

/// Things that happen to a human task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HumanEvent {
    /// A worker reserved it.
    Reserve,
    /// Its worker gave it back, or the reservation or execution expired
    /// under the `requeue` rule.
    Requeue,
    /// Its worker started it (again: the same execution).
    Start,
    /// A partial answer was committed (user task).
    Commit,
    /// A finish or submit arrived.
    Submit,
    /// Its deadline passed under the `continue` rule: submitted as it is.
    Continue,
    /// The submission was applied (and the result fits `result_schema`).
    Accept,
    /// The submission was invalid.
    Reject,
    /// The result failed `result_schema`.
    ResultInvalid,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from} human task cannot take {event:?}")]
pub struct InvalidHumanTransition {
    pub from: HumanStatus,
    pub event: HumanEvent,
}

/// The next status of a human task, or why the event does not apply.
pub fn human_transition(
    from: HumanStatus,
    event: HumanEvent,
) -> Result<HumanStatus, InvalidHumanTransition> {
    use HumanEvent as E;
    use HumanStatus as S;
    let to = match (from, event) {
        (S::New, E::Reserve) => S::Reserved,
        (S::Reserved | S::Executing, E::Requeue) => S::New,
        (S::Reserved | S::Executing, E::Start) => S::Executing,
        (S::New | S::Executing, E::Commit) => S::Executing,
        (S::New | S::Executing, E::Submit) => S::Submitted,
        (S::New | S::Reserved | S::Executing, E::Continue) => S::Submitted,
        (S::Submitted, E::Accept) => S::Complete,
        (S::Submitted, E::Reject) => S::Rejected,
        (S::Submitted, E::ResultInvalid) => S::Error,
        (from, event) => return Err(InvalidHumanTransition { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notify_task_is_ended_by_users_and_a_commit_task_only_by_admins() {
        use crate::domain::Role;
        assert!(ActivityManager::Notify.ended_by(Role::User));
        assert!(ActivityManager::Notify.ended_by(Role::Admin));
        assert!(!ActivityManager::Commit.ended_by(Role::User));
        assert!(ActivityManager::Commit.ended_by(Role::Admin));
        for role in [Role::Viewer, Role::Bot, Role::Worker] {
            assert!(!ActivityManager::Notify.ended_by(role), "{role:?}");
        }
    }

    const EVENTS: &[HumanEvent] = &[
        HumanEvent::Reserve,
        HumanEvent::Requeue,
        HumanEvent::Start,
        HumanEvent::Commit,
        HumanEvent::Submit,
        HumanEvent::Continue,
        HumanEvent::Accept,
        HumanEvent::Reject,
        HumanEvent::ResultInvalid,
    ];

    #[test]
    fn human_every_pair() {
        use HumanEvent as E;
        use HumanStatus::*;
        for &from in HumanStatus::ALL {
            for &event in EVENTS {
                let expected = match (from, event) {
                    (New, E::Reserve) => Some(Reserved),
                    (Reserved | Executing, E::Requeue | E::Start) => {
                        Some(if event == E::Start { Executing } else { New })
                    }
                    (New | Executing, E::Commit) => Some(Executing),
                    (New | Executing, E::Submit) => Some(Submitted),
                    (New | Reserved | Executing, E::Continue) => Some(Submitted),
                    (Submitted, E::Accept) => Some(Complete),
                    (Submitted, E::Reject) => Some(Rejected),
                    (Submitted, E::ResultInvalid) => Some(Error),
                    _ => None,
                };
                assert_eq!(
                    human_transition(from, event).ok(),
                    expected,
                    "{from} + {event:?}"
                );
            }
        }
    }

    #[test]
    fn terminal_states_take_nothing() {
        for &from in HumanStatus::ALL.iter().filter(|s| s.is_terminal()) {
            for &event in EVENTS {
                assert!(human_transition(from, event).is_err(), "{from} + {event:?}");
            }
        }
    }
}
