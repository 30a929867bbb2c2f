//! What every handler can reach.

use deadpool_postgres::Pool;
use orq_shared::broker::Broker;
use orq_shared::config::Settings;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub broker: Broker,
    pub settings: Arc<Settings>,
}

impl AppState {
    /// A pooled connection, or a 503 when the database cannot give one.
    pub async fn db(&self) -> Result<deadpool_postgres::Object, crate::error::ApiError> {
        Ok(self
            .pool
            .get()
            .await
            .map_err(orq_shared::repo::RepoError::from)?)
    }
}
