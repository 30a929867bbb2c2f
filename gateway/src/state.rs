//! What every handler can reach.

use deadpool_postgres::{Pool, Transaction};
use orq_shared::broker::Broker;
use orq_shared::config::Settings;
use orq_shared::domain::CustomerId;
use orq_shared::repo::RepoError;
use orq_shared::repo::customers::Principal;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub broker: Broker,
    pub settings: Arc<Settings>,
    /// Token hash -> principal, for a few seconds: spares a query per
    /// request. A revoked token stops working within `CACHE_TTL`.
    pub principals: moka::sync::Cache<Vec<u8>, Principal>,
    /// (customer, system) pairs known to have a bot, for a few seconds. Only
    /// positive answers are kept, so a new bot's system is usable at once.
    pub known_systems: moka::sync::Cache<(CustomerId, String), ()>,
    /// Seals and opens task secret keys (`security.secret_key`).
    pub sealer: orq_shared::secret::Sealer,
    /// Where micro-task photos are uploaded (`storage`).
    pub storage: crate::photos::Storage,
    /// Signs and checks field workers' tokens (offline, for `finish`).
    pub worker_tokens: orq_shared::human::WorkerTokens,
    /// Networks webhook URLs may not point into (`webhooks.deny_networks`).
    pub deny_networks: Arc<orq_shared::deny::DenyList>,
    /// Networks legacy bots' addresses may not be in (`security.bot_deny_networks`).
    pub bot_deny_networks: Arc<orq_shared::deny::DenyList>,
    /// The rate limits (`[limits]`), counted in this process.
    pub limits: Arc<crate::limits::Limits>,
    /// Wake-ups queued and not yet sent (`service::jobs::wake`).
    pub wakes: Arc<crate::service::jobs::Wakes>,
    /// Every task the gateway spawns in the background (wake-up publishes,
    /// the rate limits' janitor): shutdown waits for them, within its budget.
    pub background: tokio_util::task::TaskTracker,
    /// Cancelled on SIGTERM: ends the live event streams, which would
    /// otherwise hold the graceful shutdown open.
    pub shutdown: orq_shared::CancellationToken,
}

pub const CACHE_TTL: Duration = Duration::from_secs(5);

pub fn cache<K, V>() -> moka::sync::Cache<K, V>
where
    K: std::hash::Hash + Eq + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(CACHE_TTL)
        .build()
}

impl AppState {
    /// A pooled connection; `RepoError::Pool` (a 503) when the database
    /// cannot give one.
    pub async fn db(&self) -> Result<deadpool_postgres::Object, RepoError> {
        Ok(self.pool.get().await?)
    }

    /// Runs `run` in one transaction and commits it; an error rolls it
    /// back. The one way the gateway writes in a transaction.
    pub async fn in_transaction<T, E>(
        &self,
        run: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<RepoError>,
    {
        in_transaction(&self.pool, run).await
    }
}

/// `AppState::in_transaction` for callers without a state (`gateway admin`).
pub async fn in_transaction<T, E>(
    pool: &Pool,
    run: impl AsyncFnOnce(&Transaction<'_>) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<RepoError>,
{
    let mut db = pool.get().await.map_err(RepoError::from)?;
    let tx = db.transaction().await.map_err(RepoError::from)?;
    let value = run(&tx).await?;
    tx.commit().await.map_err(RepoError::from)?;
    Ok(value)
}
