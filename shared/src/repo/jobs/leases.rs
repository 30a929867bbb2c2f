//! Leases: running jobs past their deadline, silent legacy-bot jobs, and
//! the jobs a lost bot holds, claimed for the reaper.

use super::*;

/// A job whose lease a reaper claimed.
#[derive(Debug, Clone)]
pub struct Expired {
    pub customer: CustomerId,
    pub job: JobId,
    pub attempt: i32,
    pub bot: Option<BotId>,
    /// Its task's retry limit, when it has one.
    pub max_attempts: Option<i32>,
    /// When its lease ended; for a job of a silent agent (`held_by`), the
    /// agent's last heartbeat, and for a silent HTTP bot's job
    /// (`claim_silent_http_jobs`), its last report: their leases end a
    /// silence window later.
    pub due: Option<OffsetDateTime>,
}

/// Rows of `customer_id, id, attempt, bot_id, max_attempts, <due>`: every
/// query feeding this selects those six, in that order.
fn expired_rows(rows: &[Row]) -> Vec<Expired> {
    rows.iter()
        .map(|r| Expired {
            customer: CustomerId(r.get(0)),
            job: JobId(r.get(1)),
            attempt: r.get(2),
            bot: r.get::<_, Option<Uuid>>(3).map(BotId),
            max_attempts: r.get(4),
            due: r.get(5),
        })
        .collect()
}

/// Running jobs whose lease passed `now`, oldest deadline first, claimed
/// with `SKIP LOCKED`: concurrent reapers take disjoint batches, and a job
/// one of them expires is no longer running for the other.
pub async fn claim_expired_leases(
    db: &impl GenericClient,
    now: OffsetDateTime,
    limit: i64,
) -> Result<Vec<Expired>, RepoError> {
    let rows = query(
        db,
        "SELECT customer_id, id, attempt, bot_id, max_attempts, lease_expires_at FROM jobs
          WHERE status IN ('ASSIGNED', 'RUNNING') AND lease_expires_at IS NOT NULL
            AND lease_expires_at < $1
          ORDER BY lease_expires_at LIMIT $2
          FOR UPDATE SKIP LOCKED",
        &[&now, &limit],
    )
    .await?;
    Ok(expired_rows(&rows))
}

/// Running jobs on legacy HTTP bots with no report since `before` (such a
/// bot does not heartbeat: silence on the job is all there is), claimed
/// with `SKIP LOCKED`.
pub async fn claim_silent_http_jobs(
    db: &impl GenericClient,
    before: OffsetDateTime,
    limit: i64,
) -> Result<Vec<Expired>, RepoError> {
    let rows = query(
        db,
        "SELECT j.customer_id, j.id, j.attempt, j.bot_id, j.max_attempts, j.updated_at
           FROM jobs j JOIN bots b ON b.id = j.bot_id
          WHERE b.delivery = 'http' AND j.status = 'RUNNING' AND j.updated_at < $1
          ORDER BY j.updated_at LIMIT $2
          FOR UPDATE OF j SKIP LOCKED",
        &[&before, &limit],
    )
    .await?;
    Ok(expired_rows(&rows))
}

/// The jobs the given bots hold (ASSIGNED or RUNNING), locked.
pub async fn held_by(db: &impl GenericClient, bots: &[BotId]) -> Result<Vec<Expired>, RepoError> {
    let ids: Vec<Uuid> = bots.iter().map(|b| b.0).collect();
    let rows = query(
        db,
        "SELECT j.customer_id, j.id, j.attempt, j.bot_id, j.max_attempts, b.last_heartbeat_at
           FROM jobs j JOIN bots b ON b.id = j.bot_id
          WHERE j.bot_id = ANY($1) AND j.status IN ('ASSIGNED', 'RUNNING')
          ORDER BY j.id FOR UPDATE OF j",
        &[&ids],
    )
    .await?;
    Ok(expired_rows(&rows))
}
