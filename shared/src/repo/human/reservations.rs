//! A micro-task's reservation and start, by its worker: NEW -> RESERVED ->
//! EXECUTING, and back to NEW on release.

use super::*;

/// Why a worker's request on a micro-task is refused.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("no such micro-task")]
    NotFound,
    #[error("this micro-task is held by another worker")]
    HeldByOther,
    #[error("this micro-task is {0}; reserve it before starting it")]
    NotReserved(HumanStatus),
    #[error("this micro-task is {0}")]
    Closed(HumanStatus),
    #[error("this micro-task is {0}: start it first")]
    NotExecuting(HumanStatus),
    #[error("you hold {0} micro-tasks already, the most allowed; finish or release one first")]
    TooMany(i64),
    #[error("no micro-task is available")]
    NoneAvailable,
    #[error(transparent)]
    Repo(#[from] RepoError),
}

/// Reserves a micro-task for `worker`: the one named, or the oldest NEW one
/// (of `action`, when given). Reserving a task one holds already returns it.
pub async fn reserve(
    db: &impl GenericClient,
    customer: CustomerId,
    worker: &str,
    id: Option<HumanTaskId>,
    action: Option<&str>,
    hold_ms: u64,
    max_held: i64,
) -> Result<HumanTask, Refusal> {
    // One worker's reservations are counted and taken one at a time.
    execute(
        db,
        "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 7))",
        &[&customer.0.to_string(), &worker],
    )
    .await?;
    let task = match id {
        Some(id) => lock(db, customer, id).await?,
        None => {
            let sql = format!(
                "SELECT {COLUMNS} FROM human_tasks
                  WHERE customer_id = $1 AND status = 'NEW' AND kind = 'micro_task'
                    AND ($2::text IS NULL OR action = $2)
                  ORDER BY created_at, id LIMIT 1 FOR UPDATE SKIP LOCKED"
            );
            query_opt(db, &sql, &[&customer.0, &action])
                .await?
                .map(|r| task_from(&r))
                .transpose()?
        }
    };
    let task = match task {
        Some(t) if t.kind == HumanKind::MicroTask => t,
        Some(_) | None if id.is_some() => return Err(Refusal::NotFound),
        _ => return Err(Refusal::NoneAvailable),
    };
    match (task.status, task.worker.as_deref()) {
        (HumanStatus::Reserved | HumanStatus::Executing, Some(w)) if w == worker => {
            return Ok(task);
        }
        (HumanStatus::Reserved | HumanStatus::Executing, _) => return Err(Refusal::HeldByOther),
        (HumanStatus::New, _) => {}
        (other, _) => return Err(Refusal::Closed(other)),
    }
    let held = query_one(
        db,
        "SELECT count(*) FROM human_tasks
          WHERE customer_id = $1 AND worker = $2 AND status IN ('RESERVED', 'EXECUTING')",
        &[&customer.0, &worker],
    )
    .await?
    .get::<_, i64>(0);
    if held >= max_held {
        return Err(Refusal::TooMany(held));
    }
    let next = Next {
        worker: Some(worker.to_string()),
        deadline: Some(crate::repo::now() + ms(hold_ms)),
        ..Next::of(&task)
    };
    let note = format!("reserved by {worker}");
    Ok(transition(
        db,
        &task,
        HumanEvent::Reserve,
        next,
        Some(&note),
        Uuid::now_v7(),
    )
    .await?)
}

fn ms(ms: u64) -> time::Duration {
    time::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// The worker gives a micro-task back: NEW again for someone else. A
/// started execution ends as EXPIRED.
pub async fn release(
    db: &impl GenericClient,
    customer: CustomerId,
    worker: &str,
    id: HumanTaskId,
) -> Result<HumanTask, Refusal> {
    let task = held_by(db, customer, worker, id).await?;
    requeue(db, &task, "released by its worker", Uuid::now_v7()).await?;
    Ok(get(db, customer, id).await?)
}

async fn held_by(
    db: &impl GenericClient,
    customer: CustomerId,
    worker: &str,
    id: HumanTaskId,
) -> Result<HumanTask, Refusal> {
    let task = match lock(db, customer, id).await? {
        Some(t) if t.kind == HumanKind::MicroTask => t,
        _ => return Err(Refusal::NotFound),
    };
    match (task.status, task.worker.as_deref()) {
        (HumanStatus::Reserved | HumanStatus::Executing, Some(w)) if w == worker => Ok(task),
        (HumanStatus::Reserved | HumanStatus::Executing, _) => Err(Refusal::HeldByOther),
        (HumanStatus::New, _) => Err(Refusal::NotReserved(HumanStatus::New)),
        (other, _) => Err(Refusal::Closed(other)),
    }
}

/// The micro-task, when `worker` is executing it (e.g. to upload a photo
/// for one of its steps).
pub async fn executing_by(
    db: &impl GenericClient,
    customer: CustomerId,
    worker: &str,
    id: HumanTaskId,
) -> Result<HumanTask, Refusal> {
    let task = held_by(db, customer, worker, id).await?;
    if task.status == HumanStatus::Executing {
        Ok(task)
    } else {
        Err(Refusal::NotExecuting(task.status))
    }
}

/// Back to NEW; the current execution, if any, EXPIRED with `why`.
pub(super) async fn requeue(
    db: &impl GenericClient,
    task: &HumanTask,
    why: &str,
    event_id: Uuid,
) -> Result<HumanTask, RepoError> {
    if let Some(execution) = task.execution_id {
        execute(
            db,
            "UPDATE human_executions SET status = 'EXPIRED', finished_at = now(), reason = $2
              WHERE id = $1 AND status = 'EXECUTING'",
            &[&execution.0, &why],
        )
        .await?;
    }
    let next = Next {
        worker: None,
        execution_id: None,
        deadline: None,
        ..Next::of(task)
    };
    transition(db, task, HumanEvent::Requeue, next, Some(why), event_id).await
}

/// Starts a reserved micro-task: a new execution with its deadline. The
/// same worker starting it again gets the same execution back.
pub async fn start(
    db: &impl GenericClient,
    customer: CustomerId,
    worker: &str,
    id: HumanTaskId,
) -> Result<(HumanTask, Execution), Refusal> {
    let task = held_by(db, customer, worker, id).await?;
    if task.status == HumanStatus::Executing
        && let Some(execution) = task.execution_id
    {
        let sql = format!("SELECT {EXECUTION_COLUMNS} FROM human_executions WHERE id = $1");
        let row = query_one(db, &sql, &[&execution.0]).await?;
        return Ok((task, execution_from(&row)?));
    }
    let execution = ExecutionId::new();
    let deadline = crate::repo::now() + time::Duration::milliseconds(task.execution_ms);
    let sql = format!(
        "INSERT INTO human_executions (id, task_id, customer_id, worker, status, deadline)
         VALUES ($1, $2, $3, $4, 'EXECUTING', $5) RETURNING {EXECUTION_COLUMNS}"
    );
    let row = query_one(
        db,
        &sql,
        &[&execution.0, &task.id.0, &customer.0, &worker, &deadline],
    )
    .await?;
    let next = Next {
        execution_id: Some(execution),
        deadline: Some(deadline),
        ..Next::of(&task)
    };
    let note = format!("execution {execution} started by {worker}");
    let task = transition(
        db,
        &task,
        HumanEvent::Start,
        next,
        Some(&note),
        Uuid::now_v7(),
    )
    .await?;
    Ok((task, execution_from(&row)?))
}
