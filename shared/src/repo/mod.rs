//! Storage: plain functions over `GenericClient`, so the same code runs inside
//! or outside a transaction. All SQL of the project lives under this module.

pub mod bots;
pub mod canaries;
pub mod customers;
pub mod human;
pub mod idempotency;
pub mod jobs;
pub mod notifications;
pub mod overview;
pub mod script_jobs;
pub mod scripts;
pub mod task_defs;
pub mod webhooks;

use deadpool_postgres::GenericClient;
use time::OffsetDateTime;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

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
    /// The request names something that does not fit (another customer's
    /// script, an HTTP bot as a script host): the caller's input error.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
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
    /// The last id of the previous page: the page starts after it, in the
    /// page's order.
    pub after: Option<uuid::Uuid>,
    /// Newest first (ids are time-ordered v7 UUIDs) instead of oldest first.
    pub newest_first: bool,
}

impl Page {
    /// The comparison that continues after the cursor, and the sort
    /// direction, to splice into a list statement.
    pub fn order_sql(&self) -> (&'static str, &'static str) {
        if self.newest_first {
            ("<", "DESC")
        } else {
            (">", "ASC")
        }
    }
}

// Every statement goes through the connection's statement cache: a cached
// statement runs in one round trip instead of a prepare plus an execute.

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

pub(crate) async fn query(
    db: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Vec<Row>, RepoError> {
    let stmt = db.prepare_cached(sql).await?;
    Ok(db.query(&stmt, params).await?)
}

pub(crate) async fn query_one(
    db: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Row, RepoError> {
    let stmt = db.prepare_cached(sql).await?;
    Ok(db.query_one(&stmt, params).await?)
}

pub(crate) async fn query_opt(
    db: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<Option<Row>, RepoError> {
    let stmt = db.prepare_cached(sql).await?;
    Ok(db.query_opt(&stmt, params).await?)
}

pub(crate) async fn execute(
    db: &impl GenericClient,
    sql: &str,
    params: Params<'_>,
) -> Result<u64, RepoError> {
    let stmt = db.prepare_cached(sql).await?;
    Ok(db.execute(&stmt, params).await?)
}

/// Deletes up to `limit` rows of `table` (its key column `key`) whose time
/// column `at` is before `before` and for which `also` holds, oldest first,
/// skipping rows another transaction holds (`SKIP LOCKED`: several pruners
/// split the work, none waits); returns how many. The names are the
/// caller's constants, never input.
pub(crate) async fn prune_before(
    db: &impl GenericClient,
    table: &str,
    key: &str,
    at: &str,
    also: &str,
    before: time::OffsetDateTime,
    limit: i64,
) -> Result<u64, RepoError> {
    let sql = format!(
        "DELETE FROM {table}
          WHERE {key} = ANY(ARRAY(SELECT {key} FROM {table}
                                   WHERE {at} < $1 AND ({also})
                                   ORDER BY {at} LIMIT $2
                                   FOR UPDATE SKIP LOCKED))"
    );
    execute(db, &sql, &[&before, &limit]).await
}
