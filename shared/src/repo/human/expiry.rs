//! Deadlines: reservations and executions that ran out, user tasks past
//! their timeout, and user-task timers, for the reaper.

use super::*;
use super::{activities::continue_task, reservations::requeue};

/// What the reaper did to one human task.
#[derive(Debug, Clone, PartialEq)]
pub struct Expired {
    pub task: HumanTaskId,
    pub from: HumanStatus,
    pub to: HumanStatus,
    /// The deadline that passed.
    pub deadline: Option<OffsetDateTime>,
}

/// Applies the deadline rule to up to `limit` human tasks whose deadline
/// passed by `now`, in the caller's transaction; rows another reaper holds are
/// skipped. A reservation or a `requeue` execution goes back to NEW; a
/// `continue` task is submitted as it stands with `is_continue = true`.
pub async fn expire_due(
    db: &impl GenericClient,
    now: OffsetDateTime,
    limit: i64,
) -> Result<Vec<Expired>, RepoError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM human_tasks
          WHERE deadline <= $2
          ORDER BY deadline LIMIT $1 FOR UPDATE SKIP LOCKED"
    );
    let rows = query(db, &sql, &[&limit, &now]).await?;
    let mut done = Vec::with_capacity(rows.len());
    for row in &rows {
        let task = task_from(row)?;
        // The event id is fixed by the deadline it expires, so a retried
        // batch cannot add a second one.
        let event_id = Uuid::new_v5(
            &task.id.0,
            format!(
                "expire:{:?}",
                task.deadline.map(|d| d.unix_timestamp_nanos())
            )
            .as_bytes(),
        );
        let after = match (task.status, task.on_timeout) {
            (HumanStatus::Reserved, _) => {
                requeue(db, &task, "reservation expired", event_id).await?
            }
            (HumanStatus::Executing, OnTimeout::Requeue) => {
                requeue(db, &task, "execution deadline passed", event_id).await?
            }
            (status, OnTimeout::Continue) if status.is_open() => {
                continue_task(db, &task, "timeout", event_id).await?
            }
            _ => {
                // A deadline left on a task no rule applies to: clear it.
                execute(
                    db,
                    "UPDATE human_tasks SET deadline = NULL WHERE id = $1",
                    &[&task.id.0],
                )
                .await?;
                continue;
            }
        };
        done.push(Expired {
            task: task.id,
            from: task.status,
            to: after.status,
            deadline: task.deadline,
        });
    }
    Ok(done)
}

/// Fires up to `limit` due timers (an event on their task while it is
/// open), in the caller's transaction; timers another reaper holds are
/// skipped. Returns how many fired.
pub async fn fire_timers(
    db: &impl GenericClient,
    now: OffsetDateTime,
    limit: i64,
) -> Result<usize, RepoError> {
    let rows = query(
        db,
        "SELECT t.id, t.description, h.id, h.customer_id, h.status
           FROM human_timers t JOIN human_tasks h ON h.id = t.task_id
          WHERE t.fired_at IS NULL AND t.fire_at <= $2
          ORDER BY t.fire_at LIMIT $1
            FOR UPDATE OF t SKIP LOCKED",
        &[&limit, &now],
    )
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut events = Vec::new();
    let mut ids = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: Uuid = r.get(0);
        ids.push(id);
        let status: HumanStatus = parse_col(r.get::<_, &str>(4))?;
        if status.is_open() {
            // The timer's id is its event's: it fires once, whatever happens.
            events.push(EventRecord {
                id,
                job_id: JobId(r.get(2)),
                customer: CustomerId(r.get(3)),
                kind: EventKind::StepChange,
                description: format!("timer: {}", r.get::<_, &str>(1)),
                from: None,
                to: None,
                bot: None,
                attempt: None,
            });
        }
    }
    append_events(db, &events).await?;
    execute(
        db,
        "UPDATE human_timers SET fired_at = now() WHERE id = ANY($1)",
        &[&ids],
    )
    .await?;
    Ok(events.len())
}
