//! Whether a finish applies to the execution it names: the owner, the
//! execution still running, or ended in time with nobody holding the task
//! since. The repository reads the task and the execution (locked), asks
//! here, and writes what follows.

use time::OffsetDateTime;

use super::{ExecutionStatus, HumanStatus, same_email};
use crate::domain::ExecutionId;

/// The task as the verdict needs it.
#[derive(Debug, Clone, Copy)]
pub struct TaskState {
    pub status: HumanStatus,
    /// The execution that holds it, if one does.
    pub execution_id: Option<ExecutionId>,
}

/// The execution the finish names.
#[derive(Debug, Clone)]
pub struct ExecutionState<'a> {
    pub id: ExecutionId,
    pub worker: &'a str,
    pub status: ExecutionStatus,
    pub deadline: OffsetDateTime,
    pub finished_at: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It applies: the execution is running, or it ended at its deadline
    /// after the finish was received and nobody took the task since (the
    /// database was down, the queue was long).
    Apply,
    /// Another worker's execution: refused, whatever else.
    NotTheOwner(String),
    /// The execution is over: the same finish applied before is a
    /// duplicate; anything else is refused with this reason.
    Over(String),
}

pub fn verdict(
    task: TaskState,
    execution: &ExecutionState<'_>,
    worker: &str,
    received_at: OffsetDateTime,
) -> Verdict {
    if !same_email(execution.worker, worker) {
        return Verdict::NotTheOwner(format!(
            "execution {} belongs to another worker",
            execution.id
        ));
    }
    let live = execution.status == ExecutionStatus::Executing
        && task.status == HumanStatus::Executing
        && task.execution_id == Some(execution.id);
    let ended = execution
        .finished_at
        .map_or(execution.deadline, |f| f.min(execution.deadline));
    let in_time = execution.status == ExecutionStatus::Expired
        && received_at <= ended
        && task.status == HumanStatus::New;
    if live || in_time {
        return Verdict::Apply;
    }
    Verdict::Over(if execution.status == ExecutionStatus::Expired {
        format!("execution {} expired at its deadline", execution.id)
    } else {
        format!("execution {} is {} already", execution.id, execution.status)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const DEADLINE: OffsetDateTime = datetime!(2026-01-01 12:00 UTC);

    fn execution(status: ExecutionStatus) -> ExecutionState<'static> {
        ExecutionState {
            id: ExecutionId(uuid::Uuid::from_u128(9)),
            worker: "Ana@Example.com",
            status,
            deadline: DEADLINE,
            finished_at: None,
        }
    }

    fn task(status: HumanStatus, holder: Option<u128>) -> TaskState {
        TaskState {
            status,
            execution_id: holder.map(|h| ExecutionId(uuid::Uuid::from_u128(h))),
        }
    }

    #[test]
    fn a_running_execution_takes_its_owners_finish_whatever_the_case_of_the_email() {
        let v = verdict(
            task(HumanStatus::Executing, Some(9)),
            &execution(ExecutionStatus::Executing),
            " ana@example.COM ",
            DEADLINE + time::Duration::hours(1),
        );
        assert_eq!(v, Verdict::Apply);
    }

    #[test]
    fn another_workers_finish_is_refused_first() {
        let v = verdict(
            task(HumanStatus::Executing, Some(9)),
            &execution(ExecutionStatus::Executing),
            "bob@example.com",
            DEADLINE,
        );
        assert!(matches!(v, Verdict::NotTheOwner(r) if r.contains("another worker")));
    }

    #[test]
    fn a_finish_received_by_the_deadline_applies_after_expiry_while_nobody_took_the_task() {
        let expired = execution(ExecutionStatus::Expired);
        let before = DEADLINE - time::Duration::seconds(1);
        let new = task(HumanStatus::New, None);
        assert_eq!(
            verdict(new, &expired, "ana@example.com", before),
            Verdict::Apply
        );
        assert_eq!(
            verdict(new, &expired, "ana@example.com", DEADLINE),
            Verdict::Apply
        );
        // Received after the deadline.
        let late = verdict(
            new,
            &expired,
            "ana@example.com",
            DEADLINE + time::Duration::seconds(1),
        );
        assert!(matches!(late, Verdict::Over(r) if r.contains("expired at its deadline")));
        // Someone reserved the task meanwhile.
        let taken = verdict(
            task(HumanStatus::Reserved, None),
            &expired,
            "ana@example.com",
            before,
        );
        assert!(matches!(taken, Verdict::Over(_)));
    }

    #[test]
    fn an_execution_that_finished_early_counts_from_when_it_finished() {
        let mut released = execution(ExecutionStatus::Expired);
        released.finished_at = Some(DEADLINE - time::Duration::minutes(10));
        let v = verdict(
            task(HumanStatus::New, None),
            &released,
            "ana@example.com",
            DEADLINE - time::Duration::minutes(5),
        );
        assert!(matches!(v, Verdict::Over(_)));
    }

    #[test]
    fn a_finished_or_superseded_execution_is_over() {
        let done = verdict(
            task(HumanStatus::Complete, Some(9)),
            &execution(ExecutionStatus::Complete),
            "ana@example.com",
            DEADLINE,
        );
        assert!(matches!(done, Verdict::Over(r) if r.contains("COMPLETE already")));
        // Running, but the task is held by a newer execution.
        let superseded = verdict(
            task(HumanStatus::Executing, Some(10)),
            &execution(ExecutionStatus::Executing),
            "ana@example.com",
            DEADLINE,
        );
        assert!(matches!(superseded, Verdict::Over(_)));
    }
}
