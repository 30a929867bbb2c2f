//! The PostgreSQL pool and the embedded migrations.
//!
//! Migrations run at every service start under `pg_advisory_lock`, taken on the
//! very connection that migrates (refinery takes no lock of its own), so any
//! number of copies starting together apply each migration once.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use std::time::Duration;
use tokio_postgres::NoTls;

use crate::config::DatabaseSettings;

refinery::embed_migrations!("migrations");

/// Arbitrary, fixed: identifies "Orquestra is migrating" among advisory locks.
const MIGRATION_LOCK_KEY: i64 = 0x6f72_715f_6d69_6772;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database url: {0}")]
    Url(#[source] tokio_postgres::Error),
    #[error("database: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database pool setup: {0}")]
    Build(#[from] deadpool_postgres::BuildError),
    #[error("migrations: {0}")]
    Migrate(#[from] refinery::Error),
    #[error("the database closed the connection")]
    Closed,
}

fn pg_config(settings: &DatabaseSettings) -> Result<tokio_postgres::Config, DbError> {
    let mut cfg: tokio_postgres::Config = settings.url.parse().map_err(DbError::Url)?;
    cfg.connect_timeout(Duration::from_millis(settings.connect_timeout_ms));
    cfg.options(format!(
        "-c statement_timeout={} -c TimeZone=UTC",
        settings.statement_timeout_ms
    ));
    if cfg.get_application_name().is_none() {
        cfg.application_name("orquestra");
    }
    Ok(cfg)
}

/// A pool whose every wait is bounded: an exhausted or unreachable database
/// turns into an error the caller can report, never a hang.
pub fn pool(settings: &DatabaseSettings) -> Result<Pool, DbError> {
    let manager = Manager::from_config(
        pg_config(settings)?,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let connect = Duration::from_millis(settings.connect_timeout_ms);
    Ok(Pool::builder(manager)
        .max_size(settings.pool_size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(Duration::from_millis(settings.wait_timeout_ms)),
            create: Some(connect),
            recycle: Some(connect),
        })
        .build()?)
}

/// Applies pending migrations while holding the advisory lock on the
/// migrating connection.
pub async fn migrate(settings: &DatabaseSettings) -> Result<(), DbError> {
    let (mut client, connection) = pg_config(settings)?.connect(NoTls).await?;
    let driver = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "migration connection ended");
        }
    });
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let outcome = migrations::runner().run_async(&mut client).await;
    // Unlock even when migrating failed; closing the session would too.
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await;
    drop(client);
    let _ = driver.await;
    let report = outcome?;
    unlock?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(())
}

/// Migrates, retrying with backoff while the database is unreachable: a
/// service started before PostgreSQL waits for it instead of exiting.
pub async fn migrate_with_retry(settings: &DatabaseSettings) -> Result<(), DbError> {
    use backon::{ExponentialBuilder, Retryable};
    (|| migrate(settings))
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(usize::MAX),
        )
        .when(|e| matches!(e, DbError::Postgres(_)))
        .notify(|e, wait| tracing::warn!(error = %e, ?wait, "database not ready, retrying"))
        .await
}

/// `migrate_with_retry`, abandoned when `shutdown` is cancelled (a service
/// told to stop while waiting for its database exits at once).
pub async fn migrate_until(
    settings: &DatabaseSettings,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<(), MigrateAbort> {
    tokio::select! {
        r = migrate_with_retry(settings) => r.map_err(MigrateAbort::Failed),
        _ = shutdown.cancelled() => Err(MigrateAbort::ShutDown),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateAbort {
    #[error(transparent)]
    Failed(DbError),
    #[error("shut down while waiting for the database")]
    ShutDown,
}

/// What a LISTEN connection heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard<'a> {
    /// It listens (again): what was notified while it was away is lost, so
    /// the listener looks for all its work once.
    Listening,
    /// A notification, with its payload.
    Notified(&'a str),
}

/// Calls `on` with every notification of `channel` (PostgreSQL
/// LISTEN/NOTIFY), on its own connection, until `shutdown`. A lost
/// connection is made again with backoff, and `on` hears `Listening` once it
/// is back: a notification sent meanwhile is not lost, only late. What is
/// woken must still look for work itself (a notification says "look", not
/// what to find).
pub async fn listen<F>(
    settings: DatabaseSettings,
    channel: &'static str,
    mut on: F,
    shutdown: tokio_util::sync::CancellationToken,
) where
    F: FnMut(Heard<'_>) + Send,
{
    use backon::{BackoffBuilder, ExponentialBuilder};
    let backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut delays = backoff();
    while !shutdown.is_cancelled() {
        let mut listened = false;
        match listen_once(&settings, channel, &mut on, &shutdown, &mut listened).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, channel, "listening for notifications failed; reconnecting");
            }
        }
        // A connection that got to listen was fine: the backoff starts over;
        // one that never did backs off further.
        if listened {
            delays = backoff();
        }
        let wait = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// One LISTEN connection, until it fails (`Err`) or `shutdown` (`Ok`);
/// `listening` tells whether it got as far as listening.
async fn listen_once<F>(
    settings: &DatabaseSettings,
    channel: &'static str,
    on: &mut F,
    shutdown: &tokio_util::sync::CancellationToken,
    listening: &mut bool,
) -> Result<(), DbError>
where
    F: FnMut(Heard<'_>) + Send,
{
    let (client, mut connection) = pg_config(settings)?.connect(NoTls).await?;
    let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {channel}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    loop {
        tokio::select! {
            done = &mut listen, if !*listening => {
                done?;
                *listening = true;
                tracing::debug!(channel, "listening");
                on(Heard::Listening);
            }
            message = futures::StreamExt::next(&mut messages) => match message {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    on(Heard::Notified(n.payload()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Err(DbError::Closed),
            },
            _ = shutdown.cancelled() => return Ok(()),
        }
    }
}

/// True when a query round-trips; used by `/readyz`.
pub async fn ping(pool: &Pool) -> bool {
    match pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    }
}
