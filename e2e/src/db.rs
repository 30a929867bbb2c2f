//! `TestDb`: a fresh, migrated PostgreSQL database for testing
//! `orq_shared::repo` functions directly — no gateway, no broker, no
//! binaries.
//!
//! ```ignore
//! let db = TestDb::new("jobs").await?;
//! let customer = db.customer("acme").await?;
//! let c = db.get().await?;
//! let task = orq_shared::repo::jobs::create(&c, customer, &new).await?;
//! db.cleanup().await
//! ```
//!
//! A test that fails (panics before `cleanup`) still has its database
//! dropped, by `Drop`.

use anyhow::Context;
use orq_shared::config::{DatabaseSettings, Settings};
use orq_shared::domain::CustomerId;
use uuid::Uuid;

use crate::{create_database, drop_database, pg_admin_url};

/// `security.secret_key` for what a test seals in a `TestDb` (a service
/// built over it must be given the same).
pub const SECRET_KEY: &str = "abababababababababababababababababababababababababababababababab";

pub struct TestDb {
    /// A pool over the database, as the services make it.
    pub pool: deadpool_postgres::Pool,
    /// The settings it was made from (`url` names the database).
    pub settings: DatabaseSettings,
    pub name: String,
    pg_base: String,
    cleaned: bool,
}

impl TestDb {
    /// Creates `orq_t_<label>_<random>` on the shared server and applies
    /// every migration.
    pub async fn new(label: &str) -> anyhow::Result<TestDb> {
        let db = TestDb::unmigrated(label).await?;
        orq_shared::db::migrate(&db.settings)
            .await
            .context("migrating the test database")?;
        Ok(db)
    }

    /// An empty database: no migration applied (to test migrating).
    pub async fn unmigrated(label: &str) -> anyhow::Result<TestDb> {
        let pg_base = pg_admin_url();
        let short = &Uuid::new_v4().simple().to_string()[..12];
        let name = format!("orq_t_{label}_{short}");
        let mut settings = Settings::load(None)?.database;
        settings.url = format!("{pg_base}/{name}");
        let pool = orq_shared::db::pool(&settings)?;
        create_database(&pg_base, &name).await?;
        // From here on a failure drops the database (Drop).
        Ok(TestDb {
            pool,
            settings,
            name,
            pg_base,
            cleaned: false,
        })
    }

    /// A connection from the pool (`&conn` is a `GenericClient`; start a
    /// transaction with `conn.transaction()`).
    pub async fn get(&self) -> anyhow::Result<deadpool_postgres::Object> {
        Ok(self.pool.get().await?)
    }

    /// A new customer named `name`, through the repository.
    pub async fn customer(&self, name: &str) -> anyhow::Result<CustomerId> {
        let c = self.get().await?;
        Ok(orq_shared::repo::customers::create(&c, name).await?)
    }

    /// A one-row CSV job of `customer` (system `S`), through the repository.
    pub async fn job(&self, customer: CustomerId) -> anyhow::Result<orq_shared::domain::JobId> {
        let new = orq_shared::repo::jobs::NewTask {
            description: "d".into(),
            system: "S".into(),
            attachment: orq_shared::attachment::encode("a\n1\n"),
            rows_total: 1,
            callback_id: None,
        };
        let c = self.get().await?;
        Ok(orq_shared::repo::jobs::create(&c, customer, &new).await?.id)
    }

    /// A webhook subscription of `customer` to `url`, through the
    /// repository, its password (none) sealed with `SECRET_KEY`.
    pub async fn subscription(&self, customer: CustomerId, url: &str) -> anyhow::Result<Uuid> {
        let sealer = orq_shared::secret::Sealer::from_config(SECRET_KEY)?;
        let new = orq_shared::repo::webhooks::NewEndpoint {
            url: url.into(),
            user: None,
            password: None,
        };
        let c = self.get().await?;
        let made = orq_shared::repo::webhooks::create_endpoint(
            &c,
            customer,
            "subscription",
            &new,
            &sealer,
        )
        .await?;
        Ok(made.id)
    }

    /// The first column of the single row `sql` returns (a count, say).
    pub async fn scalar<T>(&self, sql: &str) -> anyhow::Result<T>
    where
        T: for<'a> tokio_postgres::types::FromSql<'a>,
    {
        Ok(self.get().await?.query_one(sql, &[]).await?.get(0))
    }

    /// Closes the pool and drops the database.
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.cleaned = true;
        self.pool.close();
        drop_database(&self.pg_base, &self.name).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        self.pool.close();
        let (pg_base, name) = (self.pg_base.clone(), self.name.clone());
        crate::block_on_own_thread(async move {
            let _ = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                drop_database(&pg_base, &name),
            )
            .await;
        });
    }
}
