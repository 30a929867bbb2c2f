//! How a service starts and stops. `main` turns the command line into
//! settings (and logging) and SIGTERM/SIGINT into a shutdown token;
//! `Service::start` waits for the database (migrations under their lock),
//! opens the pool and starts the broker supervisor; the service's loops run
//! on its task tracker, and `stopped` waits for them after shutdown.

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::config::{ConfigArgs, ConfigError, Settings};
use crate::db::{DbError, MigrateAbort};

/// A binary's `main`: settings from the command line, shutdown on signals,
/// then `run`. Returns at once after `--print-config`.
pub async fn main<E, F>(config: ConfigArgs, run: F) -> Result<(), E>
where
    E: From<ConfigError>,
    F: AsyncFnOnce(Settings, CancellationToken) -> Result<(), E>,
{
    let Some(settings) = config.load()? else {
        return Ok(());
    };
    let shutdown = crate::shutdown::on_signals();
    run(settings, shutdown).await
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Migrate(#[from] MigrateAbort),
    #[error(transparent)]
    Pool(#[from] DbError),
}

/// What a service with a database and a broker runs on. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    pool: Pool,
    broker: Broker,
    shutdown: CancellationToken,
    /// The service's loops, waited for by `stopped`.
    tasks: TaskTracker,
}

impl Service {
    /// Migrates (waiting for the database until `shutdown`), opens the pool
    /// and starts the broker supervisor; `name` shows in RabbitMQ.
    pub async fn start(
        settings: &Settings,
        name: &str,
        shutdown: CancellationToken,
    ) -> Result<Service, StartError> {
        crate::db::migrate_until(&settings.database, &shutdown).await?;
        let pool = crate::db::pool(&settings.database)?;
        let broker = Broker::start(&settings.amqp, name, shutdown.clone());
        Ok(Service {
            pool,
            broker,
            shutdown,
            tasks: TaskTracker::new(),
        })
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn shutdown(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Runs a loop of the service; it must end on shutdown.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(task);
    }

    /// Serves `/metrics`, `/healthz` and `/readyz` on `listen` (ready while
    /// the database and the broker are).
    pub fn serve_ops(&self, listen: &str) {
        // The recorder is installed now, before the service's loops run:
        // what they count before the server's task first runs is kept.
        if !listen.is_empty() {
            crate::ops::metrics();
        }
        let checks = crate::ops::Checks {
            pool: Some(self.pool.clone()),
            broker: Some(self.broker.clone()),
        };
        self.spawn(crate::ops::serve(
            listen.to_string(),
            checks,
            self.shutdown.clone(),
        ));
    }

    /// Waits for shutdown, then for every loop spawned.
    pub async fn stopped(&self) {
        self.shutdown.cancelled().await;
        self.tasks.close();
        self.tasks.wait().await;
    }
}
