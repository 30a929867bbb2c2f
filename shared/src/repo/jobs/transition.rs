//! The one write path of a job's status: `transition` for one change,
//! `apply_changes` for a batch (the reports, the matcher, the reaper).

use super::*;

/// Who is asking for a transition, for fencing.
#[derive(Debug, Clone, Copy)]
pub enum Actor {
    /// A bot reporting on a specific attempt: refused unless the job is still
    /// that attempt on that bot.
    Bot { bot: BotId, attempt: i32 },
    /// An API client (admin, or a legacy bot using `PUT /tasks/{id}`).
    Api,
    /// The system itself (dispatcher, reaper).
    System,
}

/// Extra fields a transition writes.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub percent: Option<i16>,
    pub rows_done: Option<i32>,
    pub error: Option<String>,
    pub result: Option<serde_json::Value>,
    /// A script's exit code, its `output`, its current step.
    pub exit_code: Option<i32>,
    pub output: Option<serde_json::Value>,
    pub step: Option<String>,
    /// Rows that failed, merged into `result.failed_rows` by row number
    /// (a progress report's; `result` itself replaces the whole value).
    pub failed_rows: Vec<RowError>,
    /// The bot an `Assign` hands the job to (its next attempt).
    pub assign_to: Option<BotId>,
}

#[derive(Debug)]
pub enum Applied {
    /// The job moved (or, for a repeat, stayed) and is now this.
    Done { from: JobStatus, task: Box<Task> },
    /// The report belongs to an attempt the job no longer is.
    Stale {
        current_attempt: i32,
        current_bot: Option<BotId>,
    },
}

/// Applies `event` to a job in the caller's transaction and returns the job
/// as it now is. `event_id` names the event row (the message id for
/// reports), `at` when it happened.
#[allow(clippy::too_many_arguments)]
pub async fn transition(
    db: &impl GenericClient,
    customer: CustomerId,
    id: JobId,
    actor: Actor,
    event: JobEvent,
    outcome: &Outcome,
    event_id: Uuid,
    at: OffsetDateTime,
) -> Result<Applied, RepoError> {
    let change = Change {
        customer,
        job: id,
        actor,
        event,
        outcome: outcome.clone(),
        event_id,
        at,
        notes: Vec::new(),
    };
    let result = apply_changes(db, std::slice::from_ref(&change))
        .await?
        .pop()
        .ok_or_else(|| RepoError::Corrupt("no result for a change".into()))?;
    match result {
        ChangeResult::Done { from, .. } => Ok(Applied::Done {
            from,
            task: Box::new(get(db, customer, id).await?),
        }),
        ChangeResult::Stale {
            current_attempt,
            current_bot,
        } => Ok(Applied::Stale {
            current_attempt,
            current_bot,
        }),
        ChangeResult::NotFound => Err(RepoError::NotFound("task")),
        ChangeResult::Invalid(why) => Err(RepoError::Conflict(why)),
        // Only a bot's progress report can be late; to a single caller it
        // is as stale as any report of a lost attempt.
        ChangeResult::LateProgress => Ok(Applied::Stale {
            current_attempt: 0,
            current_bot: None,
        }),
    }
}

/// One requested transition, for `apply_changes`.
#[derive(Debug, Clone)]
pub struct Change {
    pub customer: CustomerId,
    pub job: JobId,
    pub actor: Actor,
    pub event: JobEvent,
    pub outcome: Outcome,
    /// Id of the STATUS_CHANGE event (the causing message's id for reports,
    /// so a redelivery adds nothing).
    pub event_id: Uuid,
    pub at: OffsetDateTime,
    /// Further events recorded when the change applies (PERCENT_CHANGE,
    /// ERROR); their ids derive from `event_id`.
    pub notes: Vec<(EventKind, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ChangeResult {
    Done {
        from: JobStatus,
        to: JobStatus,
        /// Runs this change triggered that wait out a grace time: when the
        /// first of them may be matched.
        wake_at: Option<OffsetDateTime>,
    },
    /// A bot's report for an attempt the job no longer is.
    Stale {
        current_attempt: i32,
        current_bot: Option<BotId>,
    },
    /// A progress report of a lost attempt, arriving while the job waits
    /// for its next bot: the rows it reports done are kept (the next
    /// assignment resumes after them); nothing else changes.
    LateProgress,
    NotFound,
    /// The state machine refuses the event in the job's state.
    Invalid(String),
}

/// How long past a run's timeout its bot has to report the outcome before
/// the reaper ends the job as TIMEOUT (`crate::lease::SLACK`).
pub use crate::lease::SLACK as LEASE_SLACK;

/// A script job that ended in this batch: its task's triggers fire.
struct Ended {
    customer: CustomerId,
    job: JobId,
    task: TaskId,
    success: bool,
    output: Option<serde_json::Value>,
    /// Its index in the results.
    result: usize,
}

/// The in-memory copy of a locked job while changes are applied to it.
struct Locked {
    task: Option<TaskId>,
    customer: CustomerId,
    from: JobStatus,
    from_attempt: i32,
    status: JobStatus,
    /// The attempt now: one more once assigned.
    attempt: i32,
    assigned_at: Option<OffsetDateTime>,
    bot: Option<BotId>,
    percent: i16,
    rows_done: i32,
    error: Option<String>,
    result: Option<serde_json::Value>,
    started_at: Option<OffsetDateTime>,
    finished_at: Option<OffsetDateTime>,
    exit_code: Option<i32>,
    output: Option<serde_json::Value>,
    step: Option<String>,
    /// The run's timeout (script jobs) and the lease it gives.
    timeout_secs: Option<i64>,
    lease: Option<OffsetDateTime>,
    changed: bool,
}

/// Applies many transitions in the caller's transaction with a fixed number
/// of statements: lock every job involved (in id order, so concurrent
/// batches cannot deadlock), run each change through the state machine in
/// order, then write all jobs, all events and all bot loads at once. Each
/// job's update is still guarded by the state and attempt it was read in.
pub async fn apply_changes(
    db: &impl GenericClient,
    changes: &[Change],
) -> Result<Vec<ChangeResult>, RepoError> {
    let mut ids: Vec<Uuid> = changes.iter().map(|c| c.job.0).collect();
    ids.sort();
    ids.dedup();
    let rows = query(
        db,
        "SELECT id, customer_id, status, attempt, bot_id, percent, rows_done, error, result,
                started_at, finished_at, exit_code, output, step, task_id,
                (spec->>'timeout_secs')::int8, lease_expires_at, assigned_at
           FROM jobs WHERE id = ANY($1) ORDER BY id FOR UPDATE",
        &[&ids],
    )
    .await?;
    let mut jobs: HashMap<Uuid, Locked> = HashMap::with_capacity(rows.len());
    for r in &rows {
        let status: JobStatus = parse_col(r.get::<_, &str>(2))?;
        jobs.insert(
            r.get(0),
            Locked {
                customer: CustomerId(r.get(1)),
                from: status,
                from_attempt: r.get(3),
                status,
                attempt: r.get(3),
                assigned_at: r.get(17),
                bot: r.get::<_, Option<Uuid>>(4).map(BotId),
                percent: r.get(5),
                rows_done: r.get(6),
                error: r.get(7),
                result: r.get(8),
                started_at: r.get(9),
                finished_at: r.get(10),
                exit_code: r.get(11),
                output: r.get(12),
                step: r.get(13),
                task: r.get::<_, Option<Uuid>>(14).map(TaskId),
                timeout_secs: r.get(15),
                lease: r.get(16),
                changed: false,
            },
        );
    }
    let mut results = Vec::with_capacity(changes.len());
    let mut events = Vec::new();
    let mut loads: HashMap<BotId, (i32, bool)> = HashMap::new();
    let mut ended: Vec<Ended> = Vec::new();
    for c in changes {
        let Some(job) = jobs.get_mut(&c.job.0).filter(|j| j.customer == c.customer) else {
            results.push(ChangeResult::NotFound);
            continue;
        };
        if let Actor::Bot { bot, attempt } = c.actor
            && (attempt != job.from_attempt || job.bot != Some(bot))
        {
            let rows_done = c.outcome.rows_done.unwrap_or(0);
            if c.event == JobEvent::Progress
                && attempt == job.from_attempt
                && job.status == JobStatus::Waiting
                && rows_done > job.rows_done
            {
                job.changed = true;
                job.rows_done = rows_done;
                job.result =
                    crate::rows::merge_failed_rows(job.result.as_ref(), &c.outcome.failed_rows);
                results.push(ChangeResult::LateProgress);
                continue;
            }
            results.push(ChangeResult::Stale {
                current_attempt: job.from_attempt,
                current_bot: job.bot,
            });
            continue;
        }
        let from = job.status;
        let to = match job_transition(from, c.event) {
            Ok(to) => to,
            Err(e) => {
                results.push(ChangeResult::Invalid(e.to_string()));
                continue;
            }
        };
        if to == JobStatus::Assigned && from != JobStatus::Assigned {
            let Some(bot) = c.outcome.assign_to else {
                results.push(ChangeResult::Invalid("an assignment names no bot".into()));
                continue;
            };
            job.bot = Some(bot);
            job.attempt += 1;
            job.assigned_at = Some(c.at);
            let load = loads.entry(bot).or_insert((0, false));
            load.0 += 1;
            load.1 = true;
        }
        let bot = job.bot;
        let percent_before = job.percent;
        job.changed = true;
        job.status = to;
        if to == JobStatus::Complete {
            job.percent = 100;
        } else if let Some(p) = c.outcome.percent {
            job.percent = p;
        }
        // Rows done only grow: a report overtaken by a later one (or a
        // redelivery) cannot move the resume position back.
        if let Some(n) = c.outcome.rows_done {
            job.rows_done = job.rows_done.max(n);
        }
        if !c.outcome.failed_rows.is_empty() {
            job.result =
                crate::rows::merge_failed_rows(job.result.as_ref(), &c.outcome.failed_rows);
        }
        if c.outcome.error.is_some() {
            job.error.clone_from(&c.outcome.error);
        }
        if c.outcome.result.is_some() {
            job.result.clone_from(&c.outcome.result);
        }
        if c.outcome.exit_code.is_some() {
            job.exit_code = c.outcome.exit_code;
        }
        if c.outcome.output.is_some() {
            job.output.clone_from(&c.outcome.output);
        }
        if c.outcome.step.is_some() {
            job.step.clone_from(&c.outcome.step);
        }
        if to == JobStatus::Running && job.started_at.is_none() {
            job.started_at = Some(c.at);
        }
        // A run with a timeout holds a lease from its start: its bot must
        // report an outcome by then, or the reaper ends it.
        if from == JobStatus::Assigned && to == JobStatus::Running {
            job.lease = crate::lease::of_run(c.at, job.timeout_secs);
        }
        if !to.is_active() {
            job.lease = None;
        }
        if to.is_terminal() {
            job.finished_at = Some(c.at);
        }
        if to == JobStatus::Waiting {
            job.bot = None;
        }
        let record =
            |id: Uuid, kind: EventKind, description: String, status_change: bool| EventRecord {
                id,
                job_id: c.job,
                customer: c.customer,
                kind,
                description,
                from: status_change.then_some(from.as_str()),
                to: status_change.then_some(to.as_str()),
                bot,
                attempt: Some(job.attempt),
            };
        if from != to {
            let description = match &c.outcome.error {
                Some(error) if to == JobStatus::Failed => format!("{from} -> {to}: {error}"),
                _ => format!("{from} -> {to}"),
            };
            events.push(record(
                c.event_id,
                EventKind::StatusChange,
                description,
                true,
            ));
        }
        for (kind, description) in &c.notes {
            // Progress comes per row; a PERCENT_CHANGE only when the
            // percent did change.
            if *kind == EventKind::PercentChange && job.percent == percent_before {
                continue;
            }
            let id = Uuid::new_v5(&c.event_id, kind.as_str().as_bytes());
            events.push(record(id, *kind, description.clone(), false));
        }
        // As in seed 004, the final STATUS_CHANGE comes with PERCENT_CHANGE
        // 100: an agent does not report progress for its last row.
        if to == JobStatus::Complete
            && from != to
            && percent_before != 100
            && !c.notes.iter().any(|(k, _)| *k == EventKind::PercentChange)
        {
            let kind = EventKind::PercentChange;
            let id = Uuid::new_v5(&c.event_id, kind.as_str().as_bytes());
            let description = match job.rows_done {
                0 => "100%".to_string(),
                n => format!("100% ({n}/{n} rows)"),
            };
            events.push(record(id, kind, description, false));
        }
        if from.is_active()
            && !to.is_active()
            && let Some(bot) = bot
        {
            loads.entry(bot).or_insert((0, false)).0 -= 1;
        }
        if to.is_terminal()
            && to != JobStatus::Canceled
            && let Some(task) = job.task
        {
            ended.push(Ended {
                customer: c.customer,
                job: c.job,
                task,
                success: to == JobStatus::Complete,
                output: job.output.clone(),
                result: results.len(),
            });
        }
        results.push(ChangeResult::Done {
            from,
            to,
            wake_at: None,
        });
    }
    write_jobs(db, &jobs).await?;
    append_events(db, &events).await?;
    let load_changes: Vec<bots::BotChange> = loads
        .iter()
        .map(|(bot, (delta, assigned))| {
            bots::BotChange::new(
                *bot,
                bots::BotCause::Load {
                    delta: *delta,
                    assigned: *assigned,
                },
            )
        })
        .collect();
    bots::apply(db, &load_changes).await?;
    for e in &ended {
        let wake_at = crate::repo::script_jobs::fire_triggers(
            db,
            e.customer,
            e.job,
            e.task,
            e.success,
            e.output.as_ref(),
        )
        .await?;
        if let Some(ChangeResult::Done { wake_at: w, .. }) = results.get_mut(e.result) {
            *w = wake_at;
        }
    }
    Ok(results)
}

async fn write_jobs(
    db: &impl GenericClient,
    jobs: &HashMap<Uuid, Locked>,
) -> Result<(), RepoError> {
    let changed: Vec<(&Uuid, &Locked)> = jobs.iter().filter(|(_, j)| j.changed).collect();
    if changed.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = changed.iter().map(|(id, _)| **id).collect();
    let status: Vec<&str> = changed.iter().map(|(_, j)| j.status.as_str()).collect();
    let percent: Vec<i16> = changed.iter().map(|(_, j)| j.percent).collect();
    let rows_done: Vec<i32> = changed.iter().map(|(_, j)| j.rows_done).collect();
    let error: Vec<Option<&str>> = changed.iter().map(|(_, j)| j.error.as_deref()).collect();
    let result: Vec<Option<&serde_json::Value>> =
        changed.iter().map(|(_, j)| j.result.as_ref()).collect();
    let started: Vec<Option<OffsetDateTime>> = changed.iter().map(|(_, j)| j.started_at).collect();
    let finished: Vec<Option<OffsetDateTime>> =
        changed.iter().map(|(_, j)| j.finished_at).collect();
    let bot: Vec<Option<Uuid>> = changed.iter().map(|(_, j)| j.bot.map(|b| b.0)).collect();
    let from: Vec<&str> = changed.iter().map(|(_, j)| j.from.as_str()).collect();
    let attempt: Vec<i32> = changed.iter().map(|(_, j)| j.from_attempt).collect();
    let exit_code: Vec<Option<i32>> = changed.iter().map(|(_, j)| j.exit_code).collect();
    let output: Vec<Option<&serde_json::Value>> =
        changed.iter().map(|(_, j)| j.output.as_ref()).collect();
    let step: Vec<Option<&str>> = changed.iter().map(|(_, j)| j.step.as_deref()).collect();
    let lease: Vec<Option<OffsetDateTime>> = changed.iter().map(|(_, j)| j.lease).collect();
    let new_attempt: Vec<i32> = changed.iter().map(|(_, j)| j.attempt).collect();
    let assigned_at: Vec<Option<OffsetDateTime>> =
        changed.iter().map(|(_, j)| j.assigned_at).collect();
    let n = execute(
        db,
        "UPDATE jobs j SET status = u.status, percent = u.percent, rows_done = u.rows_done,
                error = u.error, result = u.result, started_at = u.started_at,
                finished_at = u.finished_at, bot_id = u.bot_id, exit_code = u.exit_code,
                output = u.output, step = u.step, lease_expires_at = u.lease,
                attempt = u.new_attempt, assigned_at = u.assigned_at, updated_at = now(),
                waiting_reason = CASE WHEN u.status = 'WAITING' THEN j.waiting_reason END
           FROM unnest($1::uuid[], $2::text[], $3::int2[], $4::int4[], $5::text[], $6::jsonb[],
                       $7::timestamptz[], $8::timestamptz[], $9::uuid[], $10::text[], $11::int4[],
                       $12::int4[], $13::jsonb[], $14::text[], $15::timestamptz[], $16::int4[],
                       $17::timestamptz[])
                AS u(id, status, percent, rows_done, error, result, started_at, finished_at,
                     bot_id, from_status, attempt, exit_code, output, step, lease, new_attempt,
                     assigned_at)
          WHERE j.id = u.id AND j.status = u.from_status AND j.attempt = u.attempt",
        &[
            &ids,
            &status,
            &percent,
            &rows_done,
            &error,
            &result,
            &started,
            &finished,
            &bot,
            &from,
            &attempt,
            &exit_code,
            &output,
            &step,
            &lease,
            &new_attempt,
            &assigned_at,
        ],
    )
    .await?;
    if n != ids.len() as u64 {
        // Impossible while the rows are locked; refuse rather than half-apply.
        return Err(RepoError::Conflict("a task changed concurrently".into()));
    }
    Ok(())
}
