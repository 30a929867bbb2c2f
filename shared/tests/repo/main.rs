//! `orq_shared::repo` against a real PostgreSQL: each test makes a fresh,
//! migrated database (`orq_e2e::TestDb`), calls repository functions
//! directly — no gateway, no broker — and drops it.
//!
//! To add one: `let db = TestDb::new("<label>").await?;`, make what it
//! needs with `db.customer(..)` and the repository's own functions on a
//! connection `&db.get().await?` (or a transaction of it), assert, and end
//! with `db.cleanup().await`.
//!
//! * `jobs`       – create, match, transition; the history; the live feed.
//! * `human`      – micro-tasks reserved, started, finished and expired.
//! * `finishes`   – a batch of finishes gives each the outcome it has alone.
//! * `webhooks`   – deliveries formed from the outbox and claimed.
//! * `migrations` – concurrent migrators apply each migration once.

mod finishes;
mod human;
mod jobs;
mod migrations;
mod webhooks;
