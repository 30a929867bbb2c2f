//! The reaper's rules, in process: `App::build` on a database of its own,
//! then `reap_once` at chosen instants — what a lease, a reservation or a
//! timer does at its deadline, and not a moment before, with no waiting;
//! and `retention::prune` at chosen instants — what is old enough goes, in
//! batches, and job history stays.

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

/// Counts rows of `sql` (a `SELECT count(*) ...`).
async fn count(c: &deadpool_postgres::Object, sql: &str) -> anyhow::Result<i64> {
    Ok(c.query_one(sql, &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_deliveries_notifications_and_feed_places_go_and_job_history_stays()
-> anyhow::Result<()> {
    use orq_shared::repo::webhooks::{self, AttemptOutcome};
    use orq_shared::repo::{jobs, notifications};
    use timeout_reaper::retention::{self, Kind};

    let db = orq_e2e::TestDb::new("retention").await?;
    let acme = db.customer("acme").await?;
    let mut c = db.get().await?;
    db.subscription(acme, "https://hooks.example.com/in")
        .await?;
    for _ in 0..3 {
        db.job(acme).await?;
    }
    let page = webhooks::formable(&c, None, 10).await?;
    assert_eq!(webhooks::form(&c, &page.pairs, 50).await?, 3);
    // One delivery DELIVERED, one DEAD, one still PENDING.
    let due = webhooks::claim_due(&c, 10, 10, &[], std::time::Duration::from_secs(60)).await?;
    assert_eq!(due.len(), 3);
    for (d, status) in due.iter().zip(["DELIVERED", "DEAD"]) {
        let outcome = AttemptOutcome {
            attempted_at: OffsetDateTime::now_utc(),
            status_code: Some(if status == "DEAD" { 500 } else { 200 }),
            error: None,
            duration_ms: 3,
            status,
            next_attempt_at: None,
        };
        assert!(webhooks::record_attempt(&c, d.id, 1, &outcome).await?);
    }
    webhooks::release(&c, &[due[2].id]).await?;
    // Notifications: one SENT, one DEAD, one PENDING.
    let channels = notifications::Channels {
        email: true,
        ..Default::default()
    };
    for _ in 0..3 {
        let task = orq_shared::domain::HumanTaskId(uuid::Uuid::now_v7());
        notifications::queue(&c, acme, task, "ana@example.com", "s", "b", channels).await?;
    }
    let sending = notifications::claim_due(&c, 10, std::time::Duration::from_secs(60)).await?;
    assert_eq!(sending.len(), 3);
    notifications::record(&c, sending[0].id, Ok(())).await?;
    notifications::record(&c, sending[1].id, Err(("refused".into(), None))).await?;
    // The jobs' events get their places in the feed.
    let tx = c.transaction().await?;
    let placed = jobs::release_feed(&tx, 1000).await?.unwrap_or(0);
    tx.commit().await?;
    assert!(placed >= 3, "{placed}");
    let events = count(&c, "SELECT count(*) FROM job_events").await?;
    let owed = count(&c, "SELECT count(*) FROM webhook_outbox").await?;

    let mut settings = orq_shared::config::Settings::load(None)?;
    // One row per statement: the batches loop until a short one.
    settings.retention.batch_size = 1;
    let now = OffsetDateTime::now_utc();

    let fresh = retention::prune(&c, &settings, now, || false).await?;
    assert_eq!(fresh.total(), 0, "nothing is old yet: {fresh:?}");

    // A week and a day later: delivered deliveries, finished notifications
    // and feed places go; the DEAD delivery stays for redelivery.
    let week = retention::prune(&c, &settings, now + time::Duration::days(8), || false).await?;
    assert_eq!(week.of(Kind::Delivered), 1, "{week:?}");
    assert_eq!(week.of(Kind::Dead), 0, "{week:?}");
    assert_eq!(week.of(Kind::Notifications), 2, "{week:?}");
    assert_eq!(week.of(Kind::Feed), placed, "{week:?}");
    let delivered = due[0].id;
    let attempts =
        format!("SELECT count(*) FROM webhook_attempts WHERE delivery_id = '{delivered}'");
    assert_eq!(count(&c, &attempts).await?, 0, "its attempts went with it");
    let carried = format!("SELECT count(*) FROM webhook_outbox WHERE delivery_id = '{delivered}'");
    assert_eq!(
        count(&c, &carried).await?,
        0,
        "its outbox rows went with it"
    );
    assert!(count(&c, "SELECT count(*) FROM webhook_outbox").await? < owed);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM notifications WHERE status = 'PENDING'"
        )
        .await?,
        1
    );
    assert_eq!(jobs::last_feed_pos(&c, acme).await?, 0, "no place is left");

    // A month later the DEAD delivery goes too, unless its age is 0
    // (kept forever); the pending one never does.
    let later = now + time::Duration::days(31);
    settings.retention.dead_ms = 0;
    let kept = retention::prune(&c, &settings, later, || false).await?;
    assert_eq!(kept.of(Kind::Dead), 0, "{kept:?}");
    settings.retention.dead_ms = orq_shared::config::Settings::load(None)?.retention.dead_ms;
    let month = retention::prune(&c, &settings, later, || false).await?;
    assert_eq!(month.of(Kind::Dead), 1, "{month:?}");
    let left: Vec<uuid::Uuid> = c
        .query("SELECT id FROM webhook_deliveries", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, [due[2].id]);
    // Job history stays: every job and every event.
    assert_eq!(count(&c, "SELECT count(*) FROM jobs").await?, 3);
    assert_eq!(count(&c, "SELECT count(*) FROM job_events").await?, events);
    drop(c);
    db.cleanup().await
}
