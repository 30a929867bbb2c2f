//! The live feed: events after a place in the order, for `/events/stream`.

use super::*;

/// An event of the live feed, with its place in the order of events.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FeedEvent {
    #[serde(skip)]
    pub seq: i64,
    #[serde(flatten)]
    pub event: Event,
    #[serde(skip)]
    pub recent: bool,
}

/// The customer's events after `after` (by `seq`), oldest first, of jobs
/// the reader may see (their acls), optionally of one job. `recent` marks
/// events younger than `settle` (a transaction still open may yet commit
/// events with a lower `seq` than those).
pub async fn events_after(
    db: &impl GenericClient,
    customer: CustomerId,
    after: i64,
    job: Option<JobId>,
    reader: crate::repo::task_defs::Reader<'_>,
    settle: std::time::Duration,
    limit: i64,
) -> Result<Vec<FeedEvent>, RepoError> {
    let (admin, name) = match reader {
        crate::repo::task_defs::Reader::Admin => (true, None),
        crate::repo::task_defs::Reader::Named(name) => (false, name),
    };
    let settle_ms = settle.as_millis() as f64;
    let rows = query(
        db,
        "SELECT e.seq, e.id, e.job_id, e.type, e.description, e.from_status, e.to_status,
                e.bot_id, e.attempt, e.created_at,
                e.created_at > now() - $7 * interval '1 millisecond' AS recent
           FROM job_events e LEFT JOIN jobs j ON j.id = e.job_id
          WHERE e.customer_id = $1 AND e.seq > $2
            AND ($3::uuid IS NULL OR e.job_id = $3)
            AND ($4 OR j.acls IS NULL OR j.acls = '{}' OR $5::text = ANY(j.acls))
          ORDER BY e.seq LIMIT $6",
        &[
            &customer.0,
            &after,
            &job.map(|j| j.0),
            &admin,
            &name,
            &limit,
            &settle_ms,
        ],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| FeedEvent {
            seq: r.get(0),
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
            recent: r.get(10),
        })
        .collect())
}

/// The newest event's `seq` of a customer (a live feed starts after it).
pub async fn last_event_seq(
    db: &impl GenericClient,
    customer: CustomerId,
) -> Result<i64, RepoError> {
    let row = query_one(
        db,
        "SELECT COALESCE(max(seq), 0) FROM job_events WHERE customer_id = $1",
        &[&customer.0],
    )
    .await?;
    Ok(row.get(0))
}
