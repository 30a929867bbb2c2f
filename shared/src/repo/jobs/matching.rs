//! Matching: locking free bots and waiting jobs (placement itself is the
//! pure `crate::placement`), and the assignments nobody started.

use super::*;

/// A job handed to a bot by the matcher, with what delivery needs.
#[derive(Debug, Clone)]
pub struct Assigned {
    pub job_id: JobId,
    pub attempt: i32,
    pub bot_id: BotId,
    pub delivery: Delivery,
    pub bot_address: String,
    pub bot_port: i32,
    pub description: String,
    pub system: String,
    pub attachment: String,
    pub created_at: OffsetDateTime,
    /// When the job was assigned (an agent re-checks an old assignment
    /// before running it).
    pub assigned_at: OffsetDateTime,
    /// What a script job runs.
    pub spec: Option<ScriptSpec>,
    /// Rows reported done by earlier attempts, and which of them failed:
    /// the agent resumes after them.
    pub rows_done: i32,
    pub failed_rows: Vec<RowError>,
}

fn spec_col(value: Option<serde_json::Value>) -> Result<Option<ScriptSpec>, RepoError> {
    value
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| RepoError::Corrupt(format!("job spec: {e}")))
}

/// The first key of the per-customer matching lock (an advisory lock; the
/// second key is a hash of the customer id).
const MATCHING_LOCK: i32 = 0x6f72_7101;

/// Takes the customer's matching lock for the caller's transaction: shared
/// by matching rounds (which run beside each other, splitting the work with
/// `SKIP LOCKED`), exclusive for a bulk rewrite of waiting jobs outside
/// matching (the stranded marker). A round must not skip an older job only
/// because its row is being relabelled: it would assign a newer one first.
pub(crate) async fn lock_matching(
    db: &impl GenericClient,
    customer: CustomerId,
    exclusive: bool,
) -> Result<(), RepoError> {
    let sql = if exclusive {
        "SELECT pg_advisory_xact_lock($1, hashtext($2::uuid::text))"
    } else {
        "SELECT pg_advisory_xact_lock_shared($1, hashtext($2::uuid::text))"
    };
    query(db, sql, &[&MATCHING_LOCK, &customer.0]).await?;
    Ok(())
}

/// Matches the customer's oldest waiting jobs to its bots with free capacity,
/// in the caller's transaction. Bots and jobs are claimed with `SKIP LOCKED`,
/// so concurrent matchers split the work and never assign a job twice.
pub async fn match_waiting(
    db: &impl GenericClient,
    customer: CustomerId,
    limit: i64,
) -> Result<Vec<Assigned>, RepoError> {
    lock_matching(db, customer, false).await?;
    let rows = query(
        db,
        // An agent takes up to its capacity plus its prefetch: the jobs
        // beyond its capacity wait on it, unstarted, for a slot.
        "SELECT id, capacity + prefetch, active_jobs, delivery, ip_address, port, systems, tags
               FROM bots
              WHERE customer_id = $1 AND status = 'AVAILABLE' AND NOT draining
                AND active_jobs < capacity + prefetch
              ORDER BY last_assigned_at NULLS FIRST, id
              FOR UPDATE SKIP LOCKED",
        &[&customer.0],
    )
    .await?;
    // Where each bot gets its work: the delivery's business, not placement's.
    let mut contact: HashMap<BotId, (Delivery, String, i32)> = HashMap::new();
    let free: Vec<FreeBot> = rows
        .iter()
        .map(|r| {
            let id = BotId(r.get(0));
            let delivery = parse_col(r.get::<_, &str>(3))?;
            contact.insert(id, (delivery, r.get(4), r.get(5)));
            Ok(FreeBot {
                id,
                capacity: r.get(1),
                active: r.get(2),
                delivery,
                systems: r.get(6),
                tags: r.get(7),
            })
        })
        .collect::<Result<_, RepoError>>()?;
    let mut placement = Placement::new(free);
    // Bots already running a one-run-per-bot task. The bots are locked by
    // this transaction, so nobody else assigns to them meanwhile.
    let agent_ids = placement.agent_ids();
    if !agent_ids.is_empty() {
        for r in query(
            db,
            "SELECT bot_id, task_id FROM jobs
                  WHERE bot_id = ANY($1) AND status IN ('ASSIGNED', 'RUNNING')
                    AND NOT multitasking AND task_id IS NOT NULL",
            &[&agent_ids],
        )
        .await?
        {
            placement.running(BotId(r.get(0)), r.get(1));
        }
    }
    let slots = placement.slots();
    if slots == 0 {
        return Ok(Vec::new());
    }
    let (systems, agent_tags) = (placement.systems(), placement.agent_tags());
    // Oldest first, a page at a time. The query leaves out what no free bot
    // could take (another system, a host or tags no free agent has); what
    // is left may still not fit (a one-run-per-bot task already on every
    // free bot), so further pages are read until the slots are filled.
    //
    // Each free system's jobs are read on their own, from their own index
    // (`jobs_waiting_system`), and script jobs from theirs; the merge keeps
    // the page. So however many jobs of other systems wait, a round reads
    // at most a page per free system. (One scan over all waiting jobs
    // filtered by system reads every older job of the other systems first;
    // one over `system = ANY(...)` reads and sorts all the free systems'
    // jobs.) See `page_sql` for why each system is its own parameter and
    // the statement is planned at each run.
    let (page_size, max_scan) = placement::paging(slots, limit);
    let sql = page_sql(systems.len());
    let mut scanned = 0;
    let mut after = (OffsetDateTime::UNIX_EPOCH, Uuid::nil());
    let mut picks: Vec<(Uuid, BotId)> = Vec::new();
    while (picks.len() as i64) < slots && scanned < max_scan {
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &customer.0,
            &agent_ids,
            &agent_tags,
            &page_size,
            &after.0,
            &after.1,
        ];
        params.extend(
            systems
                .iter()
                .map(|s| s as &(dyn tokio_postgres::types::ToSql + Sync)),
        );
        // Not `prepare_cached`: an unnamed statement is planned with its
        // parameters each time (see `page_sql`).
        let rows = db.query(sql.as_str(), &params).await?;
        scanned += rows.len() as i64;
        for r in &rows {
            let script = r.get::<_, &str>(1) == "script";
            let job = Candidate {
                id: r.get(0),
                system: (!script).then(|| r.get(2)),
                host: r.get::<_, Option<Uuid>>(3).map(BotId),
                required_tags: r.get(4),
                single_task: if script && !r.get::<_, bool>(5) {
                    r.get(6)
                } else {
                    None
                },
            };
            if let Some(i) = placement.place(&job) {
                picks.push((job.id, placement.bots()[i].id));
            }
        }
        match rows.last() {
            Some(last) if rows.len() as i64 == page_size => {
                after = (last.get(7), last.get(0));
            }
            _ => break,
        }
    }
    if picks.is_empty() {
        return Ok(Vec::new());
    }
    // Through the jobs' one transition path: guarded, history kept, the
    // bots' loads moved.
    let at = now();
    let changes: Vec<Change> = picks
        .iter()
        .map(|(job, bot)| Change {
            customer,
            job: JobId(*job),
            actor: Actor::System,
            event: JobEvent::Assign,
            outcome: Outcome {
                assign_to: Some(*bot),
                ..Outcome::default()
            },
            event_id: Uuid::now_v7(),
            at,
            notes: Vec::new(),
        })
        .collect();
    let results = apply_changes(db, &changes).await?;
    let assigned: Vec<Uuid> = picks
        .iter()
        .zip(&results)
        .filter(|(_, r)| matches!(r, ChangeResult::Done { .. }))
        .map(|((job, _), _)| *job)
        .collect();
    let rows = query(
        db,
        "SELECT id, attempt, description, system, attachment, created_at, spec, rows_done, result
           FROM jobs WHERE id = ANY($1)",
        &[&assigned],
    )
    .await?;
    let by_id: HashMap<Uuid, &Row> = rows.iter().map(|r| (r.get(0), r)).collect();
    picks
        .iter()
        .filter_map(|(job, bot)| {
            let (delivery, ip, port) = contact.get(bot)?.clone();
            by_id.get(job).map(|r| {
                Ok(Assigned {
                    job_id: JobId(*job),
                    attempt: r.get(1),
                    bot_id: *bot,
                    delivery,
                    bot_address: ip,
                    bot_port: port,
                    description: r.get(2),
                    system: r.get(3),
                    attachment: r.get(4),
                    created_at: r.get(5),
                    assigned_at: at,
                    spec: spec_col(r.get(6))?,
                    rows_done: r.get(7),
                    failed_rows: crate::rows::failed_rows_of(
                        r.get::<_, Option<serde_json::Value>>(8).as_ref(),
                    ),
                })
            })
        })
        .collect()
}

/// The page query of a matching round with `systems` free systems: each
/// system's oldest waiting jobs (`$7`, `$8`, ...: one branch each, from
/// `jobs_waiting_system`), the script jobs the free agents could take (from
/// `jobs_waiting_script`), merged oldest first into a page of `$4`, after
/// the cursor (`$5`, `$6`). Each branch locks up to a page (`SKIP LOCKED`;
/// a locking clause may sit in a WITH query, not in a UNION branch); what
/// the merge leaves out stays locked until the round commits and is matched
/// by the next.
///
/// Each system is a parameter of its own and the statement is planned with
/// its values each time: a plan made for any system (a generic plan, or a
/// LATERAL join over an array of them) takes the statistics of the most
/// common one, and behind a backlog of one system (a million jobs, say)
/// PostgreSQL then judges that walking every waiting job in time order
/// finds the next of any system at once, and reads the whole backlog.
fn page_sql(systems: usize) -> String {
    const COLUMNS: &str =
        "id, kind, system, host_id, required_tags, multitasking, task_id, created_at";
    let mut branches: Vec<String> = (0..systems)
        .map(|i| {
            format!(
                "s{i} AS (SELECT {COLUMNS} FROM jobs
                           WHERE customer_id = $1 AND status = 'WAITING' AND kind = 'system'
                             AND system = ${n}
                             AND (not_before IS NULL OR not_before <= now())
                             AND (created_at, id) > ($5, $6)
                           ORDER BY created_at, id LIMIT $4
                           FOR UPDATE SKIP LOCKED)",
                n = i + 7
            )
        })
        .collect();
    branches.push(format!(
        "scripts AS (SELECT {COLUMNS} FROM jobs
                      WHERE customer_id = $1 AND status = 'WAITING' AND kind = 'script'
                        AND cardinality($2::uuid[]) > 0
                        AND (host_id IS NULL OR host_id = ANY($2))
                        AND required_tags <@ $3
                        AND (not_before IS NULL OR not_before <= now())
                        AND (created_at, id) > ($5, $6)
                      ORDER BY created_at, id LIMIT $4
                      FOR UPDATE SKIP LOCKED)"
    ));
    let union: Vec<String> = (0..systems)
        .map(|i| format!("SELECT * FROM s{i}"))
        .chain(std::iter::once("SELECT * FROM scripts".to_string()))
        .collect();
    format!(
        "WITH {} {} ORDER BY created_at, id LIMIT $4",
        branches.join(", "),
        union.join(" UNION ALL ")
    )
}

/// The PostgreSQL channel the dispatchers listen on for matching work; a
/// notification's payload is a customer id.
pub const WAKE_CHANNEL: &str = "orq_wake";

/// Wakes the dispatchers for `customers` (PostgreSQL NOTIFY, delivered to
/// every listening dispatcher when the caller's transaction commits, or at
/// once outside one). A hint, not the work: PostgreSQL has the jobs, and the
/// dispatchers' sweep finds them if a wake-up is lost. Off the durable path
/// on purpose: a replicated, fsynced queue bought nothing the sweep does not
/// give, for a few milliseconds on every job (see the README's benchmarks).
pub async fn wake(db: &impl GenericClient, customers: &[CustomerId]) -> Result<(), RepoError> {
    if customers.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = customers.iter().map(|c| c.0).collect();
    execute(
        db,
        "SELECT pg_notify($1, c::text) FROM unnest($2::uuid[]) AS c",
        &[&WAKE_CHANNEL, &ids],
    )
    .await?;
    Ok(())
}

/// Customers that have waiting work, for the periodic sweep.
pub async fn customers_with_waiting(db: &impl GenericClient) -> Result<Vec<CustomerId>, RepoError> {
    let rows = query(
        db,
        // One index probe per customer (a skip scan over the waiting jobs'
        // index), however many jobs wait.
        "WITH RECURSIVE c(customer_id) AS (
             (SELECT customer_id FROM jobs WHERE status = 'WAITING' ORDER BY customer_id LIMIT 1)
             UNION ALL
             SELECT (SELECT j.customer_id FROM jobs j
                      WHERE j.status = 'WAITING' AND j.customer_id > c.customer_id
                      ORDER BY j.customer_id LIMIT 1)
               FROM c WHERE c.customer_id IS NOT NULL)
         SELECT customer_id FROM c WHERE customer_id IS NOT NULL",
        &[],
    )
    .await?;
    Ok(rows.iter().map(|r| CustomerId(r.get(0))).collect())
}

/// An assignment no bot has started in time, with its bot's last heartbeat.
pub struct StaleAssignment {
    pub customer: CustomerId,
    pub assigned: Assigned,
    pub bot_heartbeat_at: Option<OffsetDateTime>,
}

/// Jobs ASSIGNED before `older_than` that no bot has started: their delivery
/// may have been lost, or their bot may be gone.
pub async fn stale_assignments(
    db: &impl GenericClient,
    older_than: OffsetDateTime,
    limit: i64,
) -> Result<Vec<StaleAssignment>, RepoError> {
    let rows = query(
        db,
        "SELECT j.customer_id, j.id, j.attempt, b.id, b.delivery, b.ip_address, b.port,
                j.description, j.system, j.attachment, j.created_at, j.assigned_at,
                b.last_heartbeat_at, j.spec, j.rows_done, j.result
           FROM jobs j JOIN bots b ON b.id = j.bot_id
          WHERE j.status = 'ASSIGNED' AND j.assigned_at < $1
          ORDER BY j.assigned_at LIMIT $2",
        &[&older_than, &limit],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StaleAssignment {
                customer: CustomerId(r.get(0)),
                assigned: Assigned {
                    job_id: JobId(r.get(1)),
                    attempt: r.get(2),
                    bot_id: BotId(r.get(3)),
                    delivery: parse_col(r.get::<_, &str>(4))?,
                    bot_address: r.get(5),
                    bot_port: r.get(6),
                    description: r.get(7),
                    system: r.get(8),
                    attachment: r.get(9),
                    created_at: r.get(10),
                    assigned_at: r.get(11),
                    spec: spec_col(r.get(13))?,
                    rows_done: r.get(14),
                    failed_rows: crate::rows::failed_rows_of(
                        r.get::<_, Option<serde_json::Value>>(15).as_ref(),
                    ),
                },
                bot_heartbeat_at: r.get(12),
            })
        })
        .collect()
}

/// Restarts an assignment's clock after it was sent again.
pub async fn touch_assignment(
    db: &impl GenericClient,
    job: JobId,
    attempt: i32,
) -> Result<(), RepoError> {
    execute(
        db,
        "UPDATE jobs SET assigned_at = now() WHERE id = $1 AND attempt = $2 AND status = 'ASSIGNED'",
        &[&job.0, &attempt],
    )
    .await?;
    Ok(())
}
