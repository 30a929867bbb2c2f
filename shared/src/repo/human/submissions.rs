//! Finish submissions, applied in batches by the dispatcher: the verdict
//! is `human::verdict` (pure); this reads, records and writes.

use super::*;

/// A finish submission as the gateway accepted it.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The message's id: a redelivered message is recognised by it.
    pub id: Uuid,
    pub customer: CustomerId,
    pub token_id: Uuid,
    pub worker: String,
    pub task_id: Uuid,
    pub received_at: OffsetDateTime,
    pub body: Value,
}

/// What became of a submission.
#[derive(Debug, Clone)]
pub enum Applied {
    /// Applied: the task is COMPLETE, REJECTED (its answers failed
    /// `activity_schema`) or ERROR (`result_schema`).
    Applied {
        task: Box<HumanTask>,
        execution: Box<Execution>,
    },
    /// Not applied, and why; the task (when there is one) is unchanged.
    Refused {
        reason: String,
        task: Option<Box<HumanTask>>,
    },
    /// The same finish again (or the same message): nothing to do.
    Duplicate,
}

fn body_hash(body: &Value) -> Vec<u8> {
    Sha256::digest(body.to_string().as_bytes()).to_vec()
}

/// A submission's record, written with the rest of its batch.
#[derive(Debug, Clone)]
struct SubmissionRow {
    id: Uuid,
    customer: CustomerId,
    task_id: Uuid,
    execution_id: Option<String>,
    worker: String,
    body: Value,
    body_hash: Vec<u8>,
    received_at: OffsetDateTime,
    outcome: &'static str,
    reason: Option<String>,
}

/// What a batch of submissions appends: its events and its submission
/// records, written by `flush` in two statements for the whole batch (the
/// updates of tasks and executions are made as each is applied).
#[derive(Debug, Default)]
pub struct Writes {
    events: Vec<EventRecord>,
    submissions: Vec<SubmissionRow>,
}

impl Writes {
    fn record(
        &mut self,
        sub: &Submission,
        execution_id: Option<&str>,
        outcome: &'static str,
        reason: Option<&str>,
    ) {
        self.submissions.push(SubmissionRow {
            id: sub.id,
            customer: sub.customer,
            task_id: sub.task_id,
            execution_id: execution_id.map(str::to_string),
            worker: sub.worker.clone(),
            body: sub.body.clone(),
            body_hash: body_hash(&sub.body),
            received_at: sub.received_at,
            outcome,
            reason: reason.map(str::to_string),
        });
    }

    /// Whether this batch applied (or rejected) the same body to the same
    /// execution already.
    fn has_same(&self, sub: &Submission, execution_id: &str) -> bool {
        let hash = body_hash(&sub.body);
        self.submissions.iter().any(|r| {
            r.customer == sub.customer
                && r.task_id == sub.task_id
                && r.execution_id.as_deref() == Some(execution_id)
                && r.outcome != "DUPLICATE"
                && r.body_hash == hash
        })
    }

    /// Writes the batch's events and submission records.
    pub async fn flush(self, db: &impl GenericClient) -> Result<(), RepoError> {
        append_events(db, &self.events).await?;
        if self.submissions.is_empty() {
            return Ok(());
        }
        let rows = &self.submissions;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
        let customers: Vec<Uuid> = rows.iter().map(|r| r.customer.0).collect();
        let tasks: Vec<Uuid> = rows.iter().map(|r| r.task_id).collect();
        let executions: Vec<Option<&str>> =
            rows.iter().map(|r| r.execution_id.as_deref()).collect();
        let workers: Vec<&str> = rows.iter().map(|r| r.worker.as_str()).collect();
        let bodies: Vec<&Value> = rows.iter().map(|r| &r.body).collect();
        let hashes: Vec<&[u8]> = rows.iter().map(|r| r.body_hash.as_slice()).collect();
        let received: Vec<OffsetDateTime> = rows.iter().map(|r| r.received_at).collect();
        let outcomes: Vec<&str> = rows.iter().map(|r| r.outcome).collect();
        let reasons: Vec<Option<&str>> = rows.iter().map(|r| r.reason.as_deref()).collect();
        execute(
            db,
            "INSERT INTO human_submissions (id, customer_id, task_id, execution_id, worker, body,
                                            body_hash, received_at, outcome, reason)
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                                  $6::jsonb[], $7::bytea[], $8::timestamptz[], $9::text[],
                                  $10::text[])
             ON CONFLICT (id) DO NOTHING",
            &[
                &ids,
                &customers,
                &tasks,
                &executions,
                &workers,
                &bodies,
                &hashes,
                &received,
                &outcomes,
                &reasons,
            ],
        )
        .await?;
        Ok(())
    }
}

/// Applies one finish submission inside the caller's transaction: checks
/// it against the execution (the right worker, the right execution, still
/// running or finished in time, `activity_schema`), stores the answers and
/// moves the task on. Anything that cannot apply is recorded as REJECTED
/// with its reason, never dropped; the same finish twice applies once.
///
/// Its events and its record go to `writes`, which the caller flushes once
/// for the whole batch before committing.
pub async fn apply_submission(
    db: &impl GenericClient,
    sub: &Submission,
    writes: &mut Writes,
) -> Result<Applied, RepoError> {
    // Seen already (a redelivered message)? And is its token still valid?
    let row = query_one(
        db,
        "SELECT EXISTS (SELECT 1 FROM human_submissions WHERE id = $1),
                COALESCE((SELECT revoked_at IS NOT NULL FROM tokens
                           WHERE id = $2 AND customer_id = $3), true)",
        &[&sub.id, &sub.token_id, &sub.customer.0],
    )
    .await?;
    let (seen, revoked): (bool, bool) = (row.get(0), row.get(1));
    if seen || writes.submissions.iter().any(|r| r.id == sub.id) {
        return Ok(Applied::Duplicate);
    }
    let execution_text = sub.body.get("execution_id").and_then(Value::as_str);
    let refuse = |writes: &mut Writes, reason: String, task: Option<HumanTask>| {
        writes.record(sub, execution_text, "REJECTED", Some(&reason));
        if let Some(task) = &task {
            writes.events.push(note_event(
                task,
                Uuid::new_v5(&sub.id, b"refused"),
                EventKind::Warning,
                format!("finish from {} refused: {reason}", sub.worker),
            ));
        }
        Ok(Applied::Refused {
            reason,
            task: task.map(Box::new),
        })
    };
    let task = lock(db, sub.customer, HumanTaskId(sub.task_id)).await?;
    if revoked {
        return refuse(writes, "the worker's token has been revoked".into(), task);
    }
    let Some(task) = task.filter(|t| t.kind == HumanKind::MicroTask) else {
        return refuse(writes, format!("no micro-task {}", sub.task_id), None);
    };
    let body = match FinishBody::parse(&sub.body, sub.task_id, &sub.worker) {
        Ok(b) => b,
        Err(errors) => {
            let reason = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            return refuse(writes, reason, Some(task));
        }
    };
    let execution = match Uuid::parse_str(&body.execution_id) {
        Ok(id) => {
            let sql = format!(
                "SELECT {EXECUTION_COLUMNS} FROM human_executions
                  WHERE id = $1 AND task_id = $2 FOR UPDATE"
            );
            query_opt(db, &sql, &[&id, &task.id.0])
                .await?
                .map(|r| execution_from(&r))
                .transpose()?
        }
        Err(_) => None,
    };
    let Some(execution) = execution else {
        let reason = format!(
            "execution {:?} is not an execution of this task",
            body.execution_id
        );
        return refuse(writes, reason, Some(task));
    };
    let judged = crate::human::verdict(
        TaskState {
            status: task.status,
            execution_id: task.execution_id,
        },
        &ExecutionState {
            id: execution.id,
            worker: &execution.worker,
            status: execution.status,
            deadline: execution.deadline,
            finished_at: execution.finished_at,
        },
        &sub.worker,
        sub.received_at,
    );
    match judged {
        Verdict::Apply => {}
        Verdict::NotTheOwner(reason) => return refuse(writes, reason, Some(task)),
        Verdict::Over(reason) => {
            let again = query_opt(
                db,
                "SELECT 1 FROM human_submissions
                  WHERE customer_id = $1 AND task_id = $2 AND execution_id = $3
                    AND outcome IN ('APPLIED', 'REJECTED') AND body_hash = $4",
                &[
                    &sub.customer.0,
                    &sub.task_id,
                    &body.execution_id,
                    &body_hash(&sub.body),
                ],
            )
            .await?;
            if again.is_some() || writes.has_same(sub, &body.execution_id) {
                writes.record(
                    sub,
                    execution_text,
                    "DUPLICATE",
                    Some("this finish was applied already"),
                );
                return Ok(Applied::Duplicate);
            }
            return refuse(writes, reason, Some(task));
        }
    }

    // Answers that do not fit `activity_schema` are refused and the task
    // stays as it was: its worker can send them again, corrected.
    if let Some(errors) = schema_errors(&task.activity_schema, &sub.body) {
        return refuse(writes, format!("activity_schema: {errors}"), Some(task));
    }
    let event_id = |tag: &[u8]| Uuid::new_v5(&sub.id, tag);
    let (event, exec_status, reason, result) =
        if let Some(errors) = schema_errors(&task.result_schema, &sub.body) {
            (
                HumanEvent::ResultInvalid,
                ExecutionStatus::Error,
                Some(format!("result_schema: {errors}")),
                Some(sub.body.clone()),
            )
        } else {
            (
                HumanEvent::Accept,
                ExecutionStatus::Complete,
                None,
                Some(sub.body.clone()),
            )
        };
    let sql = format!(
        "UPDATE human_executions SET status = $2, answers = $3, location = $4, nps = $5,
                timings = $6, submitted_at = $7, finished_at = now(), reason = $8
          WHERE id = $1 RETURNING {EXECUTION_COLUMNS}"
    );
    let row = query_one(
        db,
        &sql,
        &[
            &execution.id.0,
            &exec_status.as_str(),
            &serde_json::to_value(&body.execution).unwrap_or(Value::Null),
            &body
                .location
                .as_ref()
                .and_then(|l| serde_json::to_value(l).ok()),
            &body
                .nps_sofier
                .as_ref()
                .and_then(|n| serde_json::to_value(n).ok()),
            &body.timings(),
            &sub.received_at,
            &reason,
        ],
    )
    .await?;
    let execution = execution_from(&row)?;
    let received = format!("finish of execution {} received", execution.id);
    let (done, events) = update_path(
        db,
        &task,
        &[
            (HumanEvent::Submit, Some(&received), event_id(b"submit")),
            (event, reason.as_deref(), event_id(b"outcome")),
        ],
        Next {
            worker: Some(execution.worker.clone()),
            execution_id: Some(execution.id),
            deadline: None,
            result,
            error: reason.clone(),
            ..Next::of(&task)
        },
    )
    .await?;
    writes.events.extend(events);
    if let Some(reason) = &reason {
        writes.events.push(note_event(
            &done,
            event_id(b"error"),
            EventKind::Error,
            reason.clone(),
        ));
    }
    // An answer that fails `result_schema` was applied: the task is in
    // ERROR with it.
    writes.record(sub, execution_text, "APPLIED", reason.as_deref());
    Ok(Applied::Applied {
        task: Box::new(done),
        execution: Box::new(execution),
    })
}
