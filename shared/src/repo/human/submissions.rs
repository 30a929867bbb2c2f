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
/// updates of tasks and executions are made by each `apply_submissions`).
#[derive(Debug, Default)]
pub struct Writes {
    events: Vec<EventRecord>,
    submissions: Vec<SubmissionRow>,
}

impl Writes {
    fn record(
        &mut self,
        sub: &Submission,
        hash: &[u8],
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
            body_hash: hash.to_vec(),
            received_at: sub.received_at,
            outcome,
            reason: reason.map(str::to_string),
        });
    }

    /// Whether this batch recorded this message already.
    fn has_id(&self, id: Uuid) -> bool {
        self.submissions.iter().any(|r| r.id == id)
    }

    /// Whether this batch applied (or rejected) the same body to the same
    /// execution already.
    fn has_same(&self, sub: &Submission, execution_id: &str, hash: &[u8]) -> bool {
        self.submissions.iter().any(|r| {
            r.customer == sub.customer
                && r.task_id == sub.task_id
                && r.execution_id.as_deref() == Some(execution_id)
                && r.outcome != "DUPLICATE"
                && r.body_hash == hash
        })
    }

    /// Writes the batch's events and submission records (two statements,
    /// sent together).
    pub async fn flush(self, db: &impl GenericClient) -> Result<(), RepoError> {
        futures::try_join!(
            append_events(db, &self.events),
            insert_submissions(db, &self.submissions)
        )?;
        Ok(())
    }
}

async fn insert_submissions(
    db: &impl GenericClient,
    rows: &[SubmissionRow],
) -> Result<(), RepoError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let customers: Vec<Uuid> = rows.iter().map(|r| r.customer.0).collect();
    let tasks: Vec<Uuid> = rows.iter().map(|r| r.task_id).collect();
    let executions: Vec<Option<&str>> = rows.iter().map(|r| r.execution_id.as_deref()).collect();
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

/// Applies one finish submission inside the caller's transaction:
/// `apply_submissions` with one.
pub async fn apply_submission(
    db: &impl GenericClient,
    sub: &Submission,
    writes: &mut Writes,
) -> Result<Applied, RepoError> {
    let mut applied = apply_submissions(db, std::slice::from_ref(sub), writes).await?;
    applied
        .pop()
        .ok_or_else(|| RepoError::Conflict("no outcome for a submission".into()))
}

/// What the database says of one submission, read once for the batch.
#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    /// This message was recorded already (a redelivery).
    recorded: bool,
    /// Its worker's token is revoked (or unknown).
    revoked: bool,
    /// The same body was applied to (or rejected for) the same execution
    /// already.
    again: bool,
}

/// An execution's update by an applied finish, written with the batch's
/// others in one statement.
#[derive(Debug)]
struct ExecutionWrite {
    id: ExecutionId,
    status: ExecutionStatus,
    answers: Value,
    location: Option<Value>,
    nps: Option<Value>,
    timings: Option<Value>,
    submitted_at: OffsetDateTime,
    reason: Option<String>,
}

/// Applies finish submissions inside the caller's transaction, in the
/// order given, each as if alone after the ones before it: checked
/// against its execution (the right worker, the right execution, still
/// running or finished in time, `activity_schema`), its answers stored and
/// its task moved on. Anything that cannot apply is recorded as REJECTED
/// with its reason, never dropped; the same finish twice applies once.
///
/// Set-based: a fixed number of statements whatever the batch's size —
/// the tasks locked (in id order); their executions locked and what the
/// database knows of each submission (pipelined: one round trip); then
/// one update of the executions and one of the tasks (one round trip).
/// Each verdict is made in memory in between, on the rows as the
/// submissions before it left them. Events and records go to
/// `writes`, which the caller flushes once for the whole batch before
/// committing.
pub async fn apply_submissions(
    db: &impl GenericClient,
    subs: &[Submission],
    writes: &mut Writes,
) -> Result<Vec<Applied>, RepoError> {
    if subs.is_empty() {
        return Ok(Vec::new());
    }
    let hashes: Vec<Vec<u8>> = subs.iter().map(|s| body_hash(&s.body)).collect();
    let bodies: Vec<Result<FinishBody, Vec<FieldError>>> = subs
        .iter()
        .map(|s| FinishBody::parse(&s.body, s.task_id, &s.worker))
        .collect();
    let wanted: Vec<(CustomerId, HumanTaskId)> = subs
        .iter()
        .map(|s| (s.customer, HumanTaskId(s.task_id)))
        .collect();
    // Statements over arrays get a custom plan for each run (its cost
    // follows the arrays' lengths, below the generic plan's for small
    // batches), and planning them cost more than running them. Their
    // generic plans are index probes per element: kept for the rest of
    // this transaction (with `flush`). No effect outside a transaction.
    let (_, tasks) = futures::try_join!(
        execute(db, "SET LOCAL plan_cache_mode = force_generic_plan", &[]),
        lock_all(db, &wanted)
    )?;
    let named: Vec<(Uuid, Uuid)> = subs
        .iter()
        .zip(&bodies)
        .filter_map(|(s, body)| {
            let task = tasks.get(&s.task_id)?;
            let execution = Uuid::parse_str(&body.as_ref().ok()?.execution_id).ok()?;
            (task.customer == s.customer && task.kind == HumanKind::MicroTask)
                .then_some((execution, task.id.0))
        })
        .collect();
    // Sent together (one round trip): both only after the tasks' locks.
    let (executions, seen) = futures::try_join!(
        lock_executions(db, &named),
        seen(db, subs, &bodies, &hashes)
    )?;
    let mut rows = Rows {
        tasks,
        executions,
        paths: Vec::new(),
        execution_writes: Vec::new(),
    };

    let mut outcomes = Vec::with_capacity(subs.len());
    // Per outcome: whether it holds a task this call updates (the row as
    // written replaces the prediction at the end).
    let mut after_write = Vec::with_capacity(subs.len());
    for (((sub, hash), body), seen) in subs.iter().zip(&hashes).zip(&bodies).zip(&seen) {
        let written = rows.paths.iter().any(|p| p.id.0 == sub.task_id);
        let outcome = rows.decide(sub, hash, body, *seen, writes)?;
        after_write.push(written || matches!(outcome, Applied::Applied { .. }));
        outcomes.push(outcome);
    }

    let (done_executions, done_tasks) = futures::try_join!(
        write_executions(db, &rows.execution_writes),
        write_paths(db, &rows.paths)
    )?;
    let mut done_executions: std::collections::HashMap<Uuid, Execution> =
        done_executions.into_iter().map(|e| (e.id.0, e)).collect();
    let done_tasks: std::collections::HashMap<Uuid, HumanTask> =
        done_tasks.into_iter().map(|t| (t.id.0, t)).collect();
    for (outcome, after) in outcomes.iter_mut().zip(after_write) {
        match outcome {
            Applied::Applied { task, execution } => {
                if let Some(e) = done_executions.remove(&execution.id.0) {
                    **execution = e;
                }
                if let Some(t) = done_tasks.get(&task.id.0) {
                    **task = t.clone();
                }
            }
            Applied::Refused {
                task: Some(task), ..
            } if after => {
                if let Some(t) = done_tasks.get(&task.id.0) {
                    **task = t.clone();
                }
            }
            _ => {}
        }
    }
    Ok(outcomes)
}

/// The rows a batch works on (locked), as the submissions decided so far
/// left them, and the updates those queued.
struct Rows {
    tasks: std::collections::HashMap<Uuid, HumanTask>,
    executions: std::collections::HashMap<Uuid, Execution>,
    paths: Vec<PlannedPath>,
    execution_writes: Vec<ExecutionWrite>,
}

impl Rows {
    /// The verdict on one submission, on the rows as the submissions before
    /// it in the batch left them; an applied one updates them (in memory) and
    /// queues its writes.
    fn decide(
        &mut self,
        sub: &Submission,
        hash: &[u8],
        body: &Result<FinishBody, Vec<FieldError>>,
        seen: Seen,
        writes: &mut Writes,
    ) -> Result<Applied, RepoError> {
        // Seen already (a redelivered message)?
        if seen.recorded || writes.has_id(sub.id) {
            return Ok(Applied::Duplicate);
        }
        let execution_text = sub.body.get("execution_id").and_then(Value::as_str);
        let refuse = |writes: &mut Writes, reason: String, task: Option<HumanTask>| {
            writes.record(sub, hash, execution_text, "REJECTED", Some(&reason));
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
        let task = self
            .tasks
            .get(&sub.task_id)
            .filter(|t| t.customer == sub.customer)
            .cloned();
        if seen.revoked {
            return refuse(writes, "the worker's token has been revoked".into(), task);
        }
        let Some(task) = task.filter(|t| t.kind == HumanKind::MicroTask) else {
            return refuse(writes, format!("no micro-task {}", sub.task_id), None);
        };
        let body = match body {
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
        let execution = Uuid::parse_str(&body.execution_id)
            .ok()
            .and_then(|id| self.executions.get(&id))
            .filter(|e| e.task_id == task.id)
            .cloned();
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
                if seen.again || writes.has_same(sub, &body.execution_id, hash) {
                    writes.record(
                        sub,
                        hash,
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
        self.execution_writes.push(ExecutionWrite {
            id: execution.id,
            status: exec_status,
            answers: serde_json::to_value(&body.execution).unwrap_or(Value::Null),
            location: body
                .location
                .as_ref()
                .and_then(|l| serde_json::to_value(l).ok()),
            nps: body
                .nps_sofier
                .as_ref()
                .and_then(|n| serde_json::to_value(n).ok()),
            timings: body.timings(),
            submitted_at: sub.received_at,
            reason: reason.clone(),
        });
        let execution = Execution {
            status: exec_status,
            ..execution
        };
        self.executions.insert(execution.id.0, execution.clone());
        let received = format!("finish of execution {} received", execution.id);
        let (path, events) = plan_path(
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
        )?;
        let done = path.predict(&task);
        self.tasks.insert(done.id.0, done.clone());
        self.paths.push(path);
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
        writes.record(sub, hash, execution_text, "APPLIED", reason.as_deref());
        Ok(Applied::Applied {
            task: Box::new(done),
            execution: Box::new(execution),
        })
    }
}

/// Locks the executions named (each with its task, whose lock this
/// transaction holds), in id order; those found, by id.
async fn lock_executions(
    db: &impl GenericClient,
    named: &[(Uuid, Uuid)],
) -> Result<std::collections::HashMap<Uuid, Execution>, RepoError> {
    if named.is_empty() {
        return Ok(Default::default());
    }
    let ids: Vec<Uuid> = named.iter().map(|(e, _)| *e).collect();
    let tasks: Vec<Uuid> = named.iter().map(|(_, t)| *t).collect();
    let sql = format!(
        "SELECT {EXECUTION_COLUMNS} FROM human_executions
          WHERE id = ANY($1)
            AND (id, task_id) IN (SELECT * FROM unnest($1::uuid[], $2::uuid[]))
          ORDER BY id FOR UPDATE"
    );
    let rows = query(db, &sql, &[&ids, &tasks]).await?;
    rows.iter()
        .map(|r| execution_from(r).map(|e| (e.id.0, e)))
        .collect()
}

/// What the database knows of each submission, in one statement. Read
/// after the tasks are locked, so a finish another dispatcher applied to
/// one of them has committed and is seen.
async fn seen(
    db: &impl GenericClient,
    subs: &[Submission],
    bodies: &[Result<FinishBody, Vec<FieldError>>],
    hashes: &[Vec<u8>],
) -> Result<Vec<Seen>, RepoError> {
    let ids: Vec<Uuid> = subs.iter().map(|s| s.id).collect();
    let tokens: Vec<Uuid> = subs.iter().map(|s| s.token_id).collect();
    let customers: Vec<Uuid> = subs.iter().map(|s| s.customer.0).collect();
    let tasks: Vec<Uuid> = subs.iter().map(|s| s.task_id).collect();
    let executions: Vec<Option<&str>> = bodies
        .iter()
        .map(|b| b.as_ref().ok().map(|b| b.execution_id.as_str()))
        .collect();
    let hashes: Vec<&[u8]> = hashes.iter().map(Vec::as_slice).collect();
    let rows = query(
        db,
        "SELECT r.id IS NOT NULL, COALESCE(k.revoked, true), a.x IS NOT NULL
           FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[], $6::bytea[])
                WITH ORDINALITY AS b(id, token, customer, task, execution, hash, n)
           LEFT JOIN LATERAL (SELECT h.id FROM human_submissions h WHERE h.id = b.id LIMIT 1) r
                  ON true
           LEFT JOIN LATERAL (SELECT revoked_at IS NOT NULL AS revoked FROM tokens t
                               WHERE t.id = b.token AND t.customer_id = b.customer LIMIT 1) k
                  ON true
           LEFT JOIN LATERAL (SELECT 1 AS x FROM human_submissions h
                               WHERE h.customer_id = b.customer AND h.task_id = b.task
                                 AND h.execution_id = b.execution
                                 AND h.outcome IN ('APPLIED', 'REJECTED') AND h.body_hash = b.hash
                               LIMIT 1) a
                  ON true
          ORDER BY b.n",
        &[&ids, &tokens, &customers, &tasks, &executions, &hashes],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Seen {
            recorded: r.get(0),
            revoked: r.get(1),
            again: r.get(2),
        })
        .collect())
}

/// Writes applied finishes' executions in one statement; returns them as
/// updated.
async fn write_executions(
    db: &impl GenericClient,
    updates: &[ExecutionWrite],
) -> Result<Vec<Execution>, RepoError> {
    if updates.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = updates.iter().map(|u| u.id.0).collect();
    let statuses: Vec<&str> = updates.iter().map(|u| u.status.as_str()).collect();
    let answers: Vec<&Value> = updates.iter().map(|u| &u.answers).collect();
    let locations: Vec<Option<&Value>> = updates.iter().map(|u| u.location.as_ref()).collect();
    let nps: Vec<Option<&Value>> = updates.iter().map(|u| u.nps.as_ref()).collect();
    let timings: Vec<Option<&Value>> = updates.iter().map(|u| u.timings.as_ref()).collect();
    let submitted: Vec<OffsetDateTime> = updates.iter().map(|u| u.submitted_at).collect();
    let reasons: Vec<Option<&str>> = updates.iter().map(|u| u.reason.as_deref()).collect();
    let sql = format!(
        "UPDATE human_executions
            SET status = u_status, answers = u_answers, location = u_location, nps = u_nps,
                timings = u_timings, submitted_at = u_submitted, finished_at = now(),
                reason = u_reason
           FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[], $5::jsonb[],
                       $6::jsonb[], $7::timestamptz[], $8::text[])
                AS u(u_id, u_status, u_answers, u_location, u_nps, u_timings, u_submitted,
                     u_reason)
          WHERE id = u_id
          RETURNING {EXECUTION_COLUMNS}"
    );
    let rows = query(
        db,
        &sql,
        &[
            &ids, &statuses, &answers, &locations, &nps, &timings, &submitted, &reasons,
        ],
    )
    .await?;
    if rows.len() != updates.len() {
        return Err(RepoError::Conflict(format!(
            "{} of {} executions updated",
            rows.len(),
            updates.len()
        )));
    }
    rows.iter().map(execution_from).collect()
}
