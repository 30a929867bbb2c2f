//! Reapers' canaries (`V11__reaper_canaries.sql`): when the newest canary a
//! reaper sent through the reports queue was applied.

use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{RepoError, execute, query_opt};

/// Records canaries as the dispatcher applies them (a late one never moves
/// a reaper's mark back).
pub async fn record(
    db: &impl GenericClient,
    canaries: &[(Uuid, OffsetDateTime)],
) -> Result<(), RepoError> {
    if canaries.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = canaries.iter().map(|c| c.0).collect();
    let sent: Vec<OffsetDateTime> = canaries.iter().map(|c| c.1).collect();
    execute(
        db,
        "INSERT INTO reaper_canaries (reaper_id, sent_at)
         SELECT id, max(sent) FROM unnest($1::uuid[], $2::timestamptz[]) AS c(id, sent)
          GROUP BY id
         ON CONFLICT (reaper_id) DO UPDATE
            SET sent_at = greatest(reaper_canaries.sent_at, excluded.sent_at), seen_at = now()",
        &[&ids, &sent],
    )
    .await?;
    Ok(())
}

/// When the newest of this reaper's canaries that came back was sent.
pub async fn back(
    db: &impl GenericClient,
    reaper: Uuid,
) -> Result<Option<OffsetDateTime>, RepoError> {
    Ok(query_opt(
        db,
        "SELECT sent_at FROM reaper_canaries WHERE reaper_id = $1",
        &[&reaper],
    )
    .await?
    .map(|r| r.get(0)))
}

/// Forgets the marks of reapers gone for a day.
pub async fn prune(db: &impl GenericClient) -> Result<u64, RepoError> {
    execute(
        db,
        "DELETE FROM reaper_canaries WHERE seen_at < now() - interval '1 day'",
        &[],
    )
    .await
}
