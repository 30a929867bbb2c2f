//! The backlog of another system: `--backlog N` loads N WAITING jobs of a
//! system only an absent bot declares, all older than anything the bench
//! posts, then measures the steady phase again. Matching takes the oldest
//! waiting work first, so every round's scan would meet the whole backlog
//! before the bench's own jobs if it did not skip another system's rows.
//!
//! The bot that declares the system is registered but UNAVAILABLE (its agent
//! is not running): the jobs are not stranded (a bot could come back for
//! them), they just wait, as they would behind a fleet that is down.

use std::time::Instant;

use crate::V7;

/// The backlog's system.
pub const SYSTEM: &str = "backlog";

/// Loads `n` WAITING jobs of [`SYSTEM`] for `customer` (a name), created
/// over the hour before now, and the absent bot that declares the system.
pub async fn load(db: &tokio_postgres::Client, customer: &str, n: i64) -> anyhow::Result<()> {
    let started = Instant::now();
    db.execute(
        "INSERT INTO bots (id, customer_id, name, ip_address, status, delivery, capacity,
                           active_jobs, systems, last_heartbeat_at)
         SELECT gen_random_uuid(), id, 'backlog-bot', '10.0.0.1', 'UNAVAILABLE', 'agent', 16, 0,
                ARRAY[$2::text], now() - interval '1 hour'
           FROM customers WHERE name = $1",
        &[&customer, &SYSTEM],
    )
    .await?;
    db.execute(
        &format!(
            "WITH c AS (SELECT id FROM customers WHERE name = $1),
                  g AS (SELECT n, now() - interval '1 hour' + (n::float8 / $2::int8) * interval '50 minutes' AS ts
                          FROM generate_series(1, $2::int8) n)
             INSERT INTO jobs (id, customer_id, kind, description, system, attachment, rows_total,
                               status, created_at, updated_at)
             SELECT {V7}, (SELECT id FROM c), 'system', 'backlog ' || n, $3, 'aWQKMQo=', 1,
                    'WAITING', ts, ts
               FROM g"
        ),
        &[&customer, &n, &SYSTEM],
    )
    .await?;
    db.batch_execute("VACUUM ANALYZE jobs").await?;
    println!(
        "backlog: {n} WAITING jobs of system {SYSTEM:?} loaded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
