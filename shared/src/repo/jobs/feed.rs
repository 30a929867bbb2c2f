//! The live feed, `/events/stream`: events get their place in it once
//! every older transaction ended (`release_feed`), so a reader following it
//! by place misses nothing, however long a writer stays open.

use super::*;

/// An event of the live feed, with its place in the feed.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FeedEvent {
    /// Its place in the feed (`feed_log.pos`): the stream's event id.
    #[serde(skip)]
    pub pos: i64,
    #[serde(flatten)]
    pub event: Event,
}

/// Arbitrary, fixed: identifies "releasing the feed" among advisory locks.
const RELEASE_LOCK: i64 = 0x6f72_715f_6665_6564;

/// Gives the next events their place in the feed, in its own transaction
/// `tx`: those of transactions older than every transaction still running
/// (all visible now, and nothing still to come sorts before them), in
/// (transaction, seq) order, at most `limit`. Returns how many; `None` when
/// another releaser holds the lock (it does the work).
pub async fn release_feed(tx: &impl GenericClient, limit: i64) -> Result<Option<u64>, RepoError> {
    let locked: bool = query_one(tx, "SELECT pg_try_advisory_xact_lock($1)", &[&RELEASE_LOCK])
        .await?
        .get(0);
    if !locked {
        return Ok(None);
    }
    // Statements after the lock: their snapshots see the last releaser's
    // commit.
    let before: i64 = query_one(tx, "SELECT pos FROM feed_release", &[])
        .await?
        .get(0);
    let after = query_opt(
        tx,
        "WITH cur AS (SELECT tx, seq, pos FROM feed_release),
         batch AS (
           SELECT e.tx, e.seq, e.customer_id,
                  cur.pos + row_number() OVER (ORDER BY e.tx, e.seq) AS pos
             FROM job_events e, cur
            WHERE e.tx IS NOT NULL AND (e.tx, e.seq) > (cur.tx, cur.seq)
              AND e.tx < pg_snapshot_xmin(pg_current_snapshot())
            ORDER BY e.tx, e.seq LIMIT $1),
         ins AS (INSERT INTO feed_log (pos, customer_id, event_seq)
                 SELECT pos, customer_id, seq FROM batch)
         UPDATE feed_release r SET tx = b.tx, seq = b.seq, pos = b.pos
           FROM (SELECT tx, seq, pos FROM batch ORDER BY pos DESC LIMIT 1) b
         RETURNING r.pos",
        &[&limit],
    )
    .await?;
    let released = after.map_or(0, |r| r.get::<_, i64>(0) - before);
    Ok(Some(u64::try_from(released).unwrap_or(0)))
}

/// The customer's released events after place `after`, in feed order, of
/// jobs the reader may see (their acls), optionally of one job.
pub async fn events_after(
    db: &impl GenericClient,
    customer: CustomerId,
    after: i64,
    job: Option<JobId>,
    reader: crate::repo::task_defs::Reader<'_>,
    limit: i64,
) -> Result<Vec<FeedEvent>, RepoError> {
    let (admin, name) = match reader {
        crate::repo::task_defs::Reader::Admin => (true, None),
        crate::repo::task_defs::Reader::Named(name) => (false, name),
    };
    let rows = query(
        db,
        "SELECT f.pos, e.id, e.job_id, e.type, e.description, e.from_status, e.to_status,
                e.bot_id, e.attempt, e.created_at
           FROM feed_log f
           JOIN job_events e ON e.customer_id = f.customer_id AND e.seq = f.event_seq
           LEFT JOIN jobs j ON j.id = e.job_id
          WHERE f.customer_id = $1 AND f.pos > $2
            AND ($3::uuid IS NULL OR e.job_id = $3)
            AND ($4 OR j.acls IS NULL OR j.acls = '{}' OR $5::text = ANY(j.acls))
          ORDER BY f.pos LIMIT $6",
        &[
            &customer.0,
            &after,
            &job.map(|j| j.0),
            &admin,
            &name,
            &limit,
        ],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| FeedEvent {
            pos: r.get(0),
            event: Event {
                id: r.get(1),
                job_id: JobId(r.get(2)),
                kind: r.get(3),
                description: r.get(4),
                from_status: r.get(5),
                to_status: r.get(6),
                bot_id: r.get::<_, Option<Uuid>>(7).map(BotId),
                attempt: r.get(8),
                created_at: r.get(9),
            },
        })
        .collect())
}

/// The place of a customer's newest released event (a live feed starts
/// after it).
pub async fn last_feed_pos(
    db: &impl GenericClient,
    customer: CustomerId,
) -> Result<i64, RepoError> {
    let row = query_one(
        db,
        "SELECT COALESCE(max(pos), 0) FROM feed_log WHERE customer_id = $1",
        &[&customer.0],
    )
    .await?;
    Ok(row.get(0))
}

/// Removes up to `limit` places in the feed given before `before`; returns
/// how many. A reader resuming from a removed place resumes at the oldest
/// kept one. The events themselves stay (job history).
pub async fn prune_feed(
    db: &impl GenericClient,
    before: OffsetDateTime,
    limit: i64,
) -> Result<u64, RepoError> {
    crate::repo::prune_before(db, "feed_log", "pos", "released_at", "true", before, limit).await
}
