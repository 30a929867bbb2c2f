//! Retention: what is kept only for a while goes once it is old enough
//! (`[retention]`, and `reaper.idempotency_retention_ms` for idempotency
//! keys). Each kind is deleted in batches of `batch_size`, each batch its
//! own statement and so its own short transaction, oldest first; several
//! reapers split the work (`SKIP LOCKED`). Job history is never pruned here.

use deadpool_postgres::GenericClient;
use orq_shared::config::Settings;
use orq_shared::repo::{RepoError, idempotency, jobs, notifications, webhooks};
use std::time::Duration;
use time::OffsetDateTime;

/// What is pruned, each with its own age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    IdempotencyKeys,
    /// Webhook deliveries DELIVERED, with their attempts and outbox rows.
    Delivered,
    /// Webhook deliveries DEAD, likewise.
    Dead,
    Notifications,
    /// Places in the live feed.
    Feed,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::IdempotencyKeys,
        Kind::Delivered,
        Kind::Dead,
        Kind::Notifications,
        Kind::Feed,
    ];

    /// Its name in logs and in `orq_pruned_total{kind}`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::IdempotencyKeys => "idempotency_keys",
            Kind::Delivered => "webhook_delivered",
            Kind::Dead => "webhook_dead",
            Kind::Notifications => "notifications",
            Kind::Feed => "feed",
        }
    }

    /// How long it is kept (0: forever).
    fn keep_ms(self, settings: &Settings) -> u64 {
        let r = &settings.retention;
        match self {
            Kind::IdempotencyKeys => settings.reaper.idempotency_retention_ms,
            Kind::Delivered => r.delivered_ms,
            Kind::Dead => r.dead_ms,
            Kind::Notifications => r.notifications_ms,
            Kind::Feed => r.feed_ms,
        }
    }

    /// Deletes one batch older than `before`; returns how many.
    async fn prune_batch(
        self,
        db: &impl GenericClient,
        before: OffsetDateTime,
        limit: i64,
    ) -> Result<u64, RepoError> {
        match self {
            Kind::IdempotencyKeys => idempotency::prune(db, before, limit).await,
            Kind::Delivered => webhooks::prune_finished(db, "DELIVERED", before, limit).await,
            Kind::Dead => webhooks::prune_finished(db, "DEAD", before, limit).await,
            Kind::Notifications => notifications::prune(db, before, limit).await,
            Kind::Feed => jobs::prune_feed(db, before, limit).await,
        }
    }
}

/// Rows one pass removed, by kind (in `Kind::ALL` order).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned([u64; 5]);

impl Pruned {
    pub fn of(&self, kind: Kind) -> u64 {
        self.0[kind as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }
}

/// What is older than this goes: `now - keep_ms`; `None` (keep forever)
/// when `keep_ms` is 0 or reaches before any representable time.
pub fn cutoff(now: OffsetDateTime, keep_ms: u64) -> Option<OffsetDateTime> {
    if keep_ms == 0 {
        return None;
    }
    let keep = time::Duration::try_from(Duration::from_millis(keep_ms)).ok()?;
    now.checked_sub(keep)
}

/// Deletes what is older than its retention as of `now`, batch after
/// batch, until a batch comes back short or `stop` says to stop.
pub async fn prune(
    db: &impl GenericClient,
    settings: &Settings,
    now: OffsetDateTime,
    stop: impl Fn() -> bool,
) -> Result<Pruned, RepoError> {
    let limit = settings.retention.batch_size.max(1);
    let mut pruned = Pruned::default();
    for kind in Kind::ALL {
        let Some(before) = cutoff(now, kind.keep_ms(settings)) else {
            continue;
        };
        loop {
            let n = kind.prune_batch(db, before, limit).await?;
            pruned.0[kind as usize] += n;
            if n < limit as u64 || stop() {
                break;
            }
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_counted_apart() {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "{}", kind.name());
        }
    }

    #[test]
    fn an_age_of_zero_keeps_forever() {
        assert_eq!(cutoff(OffsetDateTime::now_utc(), 0), None);
    }

    #[test]
    fn the_cutoff_is_the_age_before_now() {
        let now = time::macros::datetime!(2026-11-30 12:00 UTC);
        assert_eq!(
            cutoff(now, 86_400_000),
            Some(time::macros::datetime!(2026-11-29 12:00 UTC))
        );
    }

    #[test]
    fn an_age_beyond_the_calendar_keeps_forever() {
        assert_eq!(cutoff(OffsetDateTime::now_utc(), u64::MAX), None);
    }
}
