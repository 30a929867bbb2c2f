//! Storage: plain functions over `GenericClient`, so the same code runs inside
//! or outside a transaction. All SQL of the project lives under this module.

pub mod bots;
pub mod customers;
pub mod jobs;

use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("stored value is invalid: {0}")]
    Corrupt(String),
}

impl RepoError {
    /// A unique-constraint violation, e.g. a duplicate name.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, RepoError::Db(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION))
    }
}

pub(crate) fn parse_col<T: std::str::FromStr>(value: &str) -> Result<T, RepoError>
where
    T::Err: std::fmt::Display,
{
    value
        .parse()
        .map_err(|e: T::Err| RepoError::Corrupt(e.to_string()))
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Keyset pagination: `limit` rows after the row with id `after`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub after: Option<uuid::Uuid>,
}
