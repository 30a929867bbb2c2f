//! The reaper's rules, in process: `App::build` on a database of its own,
//! then `reap_once` at chosen instants — what a lease, a reservation or a
//! timer does at its deadline, and not a moment before, with no waiting.

use orq_e2e::Env;
use time::OffsetDateTime;
use time::macros::datetime;
use timeout_reaper::App;

/// An instant far from the wall clock, so only the injected one matters.
const T: OffsetDateTime = datetime!(2031-03-01 12:00 UTC);

async fn reaper(env: &Env) -> anyhow::Result<App> {
    App::build(env.settings()?, orq_shared::CancellationToken::new()).await
}

async fn status(
    db: &tokio_postgres::Client,
    table: &str,
    id: uuid::Uuid,
) -> anyhow::Result<String> {
    let sql = format!("SELECT status FROM {table} WHERE id = $1");
    Ok(db.query_one(&sql, &[&id]).await?.get(0))
}

/// How many user-task timers have fired.
async fn fired(db: &tokio_postgres::Client) -> anyhow::Result<i64> {
    let sql = "SELECT count(*) FROM human_timers WHERE fired_at IS NOT NULL";
    Ok(db.query_one(sql, &[]).await?.get(0))
}

#[tokio::test]
async fn a_lease_ends_at_its_deadline_and_not_before() -> anyhow::Result<()> {
    let env = Env::new("rulelease").await?;
    let db = env.db().await?;
    let job = uuid::Uuid::now_v7();
    db.execute(
        "INSERT INTO bots (id, customer_id, name, ip_address, status, delivery, capacity, active_jobs, last_heartbeat_at)
              SELECT gen_random_uuid(), id, 'quiet', '127.0.0.1', 'BUSY', 'agent', 1, 1, $1 FROM customers",
        &[&(T + time::Duration::days(1))],
    )
    .await?;
    db.execute(
        "INSERT INTO jobs (id, customer_id, kind, description, system, attachment, status, bot_id, attempt,
                           started_at, lease_expires_at)
              SELECT $1, b.customer_id, 'script', 'x', '', '', 'RUNNING', b.id, 1, $2, $3 FROM bots b",
        &[&job, &(T - time::Duration::minutes(10)), &T],
    )
    .await?;
    let app = reaper(&env).await?;
    let before = app.reap_once(T - time::Duration::seconds(1)).await?;
    assert_eq!(before.timed_out, 0);
    assert_eq!(status(&db, "jobs", job).await?, "RUNNING");
    let after = app.reap_once(T + time::Duration::seconds(1)).await?;
    assert_eq!(after.timed_out, 1);
    assert_eq!(status(&db, "jobs", job).await?, "TIMEOUT");
    // Once is enough: a second pass finds nothing.
    assert_eq!(
        app.reap_once(T + time::Duration::hours(1)).await?.timed_out,
        0
    );
    env.cleanup().await
}

#[tokio::test]
async fn a_reservation_and_a_timer_fire_at_their_instants() -> anyhow::Result<()> {
    let env = Env::new("rulehuman").await?;
    let db = env.db().await?;
    let (reserved, open) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    db.execute(
        "INSERT INTO human_tasks (id, customer_id, kind, action, input, on_timeout, execution_ms, status, worker, deadline)
              SELECT $1, id, 'micro_task', 'visit', '{}', 'requeue', 60000, 'RESERVED', 'ana@example.com', $2
                FROM customers",
        &[&reserved, &T],
    )
    .await?;
    db.execute(
        "INSERT INTO human_tasks (id, customer_id, kind, action, input, on_timeout, execution_ms, status)
              SELECT $1, id, 'user_task', 'approve', '{}', 'continue', 60000, 'NEW' FROM customers",
        &[&open],
    )
    .await?;
    db.execute(
        "INSERT INTO human_timers (id, task_id, fire_at, description) VALUES (gen_random_uuid(), $1, $2, 'remind')",
        &[&open, &(T + time::Duration::minutes(5))],
    )
    .await?;
    let app = reaper(&env).await?;
    assert_eq!(
        app.reap_once(T - time::Duration::seconds(1)).await?.human,
        0
    );
    assert_eq!(status(&db, "human_tasks", reserved).await?, "RESERVED");
    // The reservation ends at T; the timer waits for T + 5 min.
    assert_eq!(app.reap_once(T).await?.human, 1);
    assert_eq!(status(&db, "human_tasks", reserved).await?, "NEW");
    assert_eq!(fired(&db).await?, 0);
    assert_eq!(
        app.reap_once(T + time::Duration::minutes(5)).await?.human,
        1
    );
    assert_eq!(fired(&db).await?, 1);
    env.cleanup().await
}
