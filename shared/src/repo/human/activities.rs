//! flowBuild's user tasks: commit, submit, expire, and their conclusion
//! against `result_schema`.

use super::*;
use crate::domain::Role;

/// Submits an open task as it stands, with `is_continue = true` (its
/// timeout passed, or an admin expired it), then concludes it.
pub(super) async fn continue_task(
    db: &impl GenericClient,
    task: &HumanTask,
    why: &str,
    event_id: Uuid,
) -> Result<HumanTask, RepoError> {
    let submitted = transition(
        db,
        task,
        HumanEvent::Continue,
        Next {
            is_continue: true,
            deadline: None,
            ..Next::of(task)
        },
        Some(&format!("{why}: submitted with is_continue=true")),
        event_id,
    )
    .await?;
    conclude(db, &submitted, Uuid::new_v5(&event_id, b"outcome")).await
}

/// Why a request on a user task (flowBuild's activity manager) is refused.
#[derive(Debug, thiserror::Error)]
pub enum ActivityRefusal {
    #[error("no such activity")]
    NotFound,
    #[error("the activity is {0}: it is no longer open")]
    NotOpen(HumanStatus),
    #[error("the payload does not fit the activity's activity_schema")]
    Invalid(Vec<FieldError>),
    #[error(
        "only an admin may end a commit activity before it is submitted (users may end notify ones)"
    )]
    NotYoursToEnd,
    #[error(transparent)]
    Repo(#[from] RepoError),
}

async fn open_user_task(
    db: &impl GenericClient,
    customer: CustomerId,
    id: HumanTaskId,
) -> Result<HumanTask, ActivityRefusal> {
    match lock(db, customer, id).await? {
        Some(t) if t.kind == HumanKind::UserTask && t.status.is_open() => Ok(t),
        Some(t) if t.kind == HumanKind::UserTask => Err(ActivityRefusal::NotOpen(t.status)),
        _ => Err(ActivityRefusal::NotFound),
    }
}

fn fits_activity(task: &HumanTask, payload: &Value) -> Result<(), ActivityRefusal> {
    let Some(schema) = &task.activity_schema else {
        return Ok(());
    };
    let errors = schema_check(schema, payload, "activity_schema");
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ActivityRefusal::Invalid(errors))
    }
}

/// Saves a partial answer: checked against `activity_schema` (a payload
/// that fails it changes nothing); the first commit makes the task
/// EXECUTING.
pub async fn commit(
    db: &impl GenericClient,
    customer: CustomerId,
    id: HumanTaskId,
    payload: Value,
) -> Result<HumanTask, ActivityRefusal> {
    let task = open_user_task(db, customer, id).await?;
    fits_activity(&task, &payload)?;
    let next = Next {
        committed: Some(payload),
        ..Next::of(&task)
    };
    let event_id = Uuid::now_v7();
    let updated = transition(
        db,
        &task,
        HumanEvent::Commit,
        next,
        Some("first commit"),
        event_id,
    )
    .await?;
    append_events(
        db,
        &[note_event(
            &updated,
            Uuid::new_v5(&event_id, b"commit"),
            EventKind::StepChange,
            "committed".into(),
        )],
    )
    .await?;
    Ok(updated)
}

/// Commits (when a payload is given) and closes the activity: SUBMITTED,
/// then COMPLETE, or ERROR when the result fails `result_schema`.
pub async fn submit(
    db: &impl GenericClient,
    customer: CustomerId,
    id: HumanTaskId,
    payload: Option<Value>,
) -> Result<HumanTask, ActivityRefusal> {
    let task = open_user_task(db, customer, id).await?;
    let committed = payload
        .or_else(|| task.committed.clone())
        .unwrap_or(Value::Object(Default::default()));
    fits_activity(&task, &committed)?;
    let event_id = Uuid::now_v7();
    let submitted = transition(
        db,
        &task,
        HumanEvent::Submit,
        Next {
            committed: Some(committed),
            deadline: None,
            ..Next::of(&task)
        },
        Some("submitted"),
        event_id,
    )
    .await?;
    Ok(conclude(db, &submitted, Uuid::new_v5(&event_id, b"outcome")).await?)
}

/// Ends an open activity now, as its timeout would: an admin any, a user
/// a `notify` one (`ActivityManager::ended_by`).
pub async fn expire(
    db: &impl GenericClient,
    customer: CustomerId,
    id: HumanTaskId,
    role: Role,
) -> Result<HumanTask, ActivityRefusal> {
    let task = open_user_task(db, customer, id).await?;
    if !task.activity_manager.ended_by(role) {
        return Err(ActivityRefusal::NotYoursToEnd);
    }
    let why = if role == Role::Admin {
        "expired by an admin"
    } else {
        "ended by its process"
    };
    Ok(continue_task(db, &task, why, Uuid::now_v7()).await?)
}

/// A SUBMITTED user task's result (its committed answer, marked
/// `is_continue` when the timeout submitted it) checked against
/// `result_schema`: COMPLETE, or ERROR with the failures.
async fn conclude(
    db: &impl GenericClient,
    task: &HumanTask,
    event_id: Uuid,
) -> Result<HumanTask, RepoError> {
    let mut result = task
        .committed
        .clone()
        .unwrap_or(Value::Object(Default::default()));
    if task.is_continue {
        // The marker goes into an object answer; any other answer is
        // wrapped so it is not lost.
        result = match result {
            Value::Object(mut map) => {
                map.insert("is_continue".into(), Value::Bool(true));
                Value::Object(map)
            }
            other => serde_json::json!({ "value": other, "is_continue": true }),
        };
    }
    let (event, error) = match schema_errors(&task.result_schema, &result) {
        Some(errors) => (
            HumanEvent::ResultInvalid,
            Some(format!("result_schema: {errors}")),
        ),
        None => (HumanEvent::Accept, None),
    };
    let done = transition(
        db,
        task,
        event,
        Next {
            result: Some(result),
            error: error.clone(),
            ..Next::of(task)
        },
        error.as_deref(),
        event_id,
    )
    .await?;
    if let Some(error) = error {
        append_events(
            db,
            &[note_event(
                &done,
                Uuid::new_v5(&event_id, b"error"),
                EventKind::Error,
                error,
            )],
        )
        .await?;
    }
    Ok(done)
}
