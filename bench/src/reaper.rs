//! `orq-bench --reaper`: the timeout-reaper's figures, with the real
//! services (release builds) against the real PostgreSQL and RabbitMQ.
//!
//! 1. Expiry lag: `--leases` running jobs whose leases end spread over
//!    `--spread-secs` seconds; one reaper; the lag of each is its TIMEOUT
//!    event's time minus its deadline.
//! 2. Webhook deliveries/s: `--webhooks` one-event deliveries owed to a
//!    local receiver (a subscription), from the reaper's start to the last
//!    DELIVERED.
//! 3. Webhook latency: `--webhook-latency` events written one at a time
//!    at `--rate` per second (a job and its event in one statement), each
//!    timed from just before its write to its arrival at the receiver.
//!    With `--hanging`, a second subscription that never answers (each
//!    attempt runs into a 2 s timeout) builds a backlog meanwhile.
//! 4. Retry accuracy: `--webhook-retries` one-event deliveries, each
//!    refused once (HTTP 500) and retried on a 300 ms schedule; each retry's
//!    attempt is timed against the instant it was scheduled for.
//! 5. Dead-bot detection: `--kills` agents with the default settings are
//!    SIGKILLed one after another while their job runs; the time from each
//!    kill until its job waits again. (Each part is skipped when its count
//!    is 0.)

use orq_e2e::Env;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Options {
    pub leases: i64,
    pub spread_secs: i64,
    pub webhooks: i64,
    pub webhook_latency: usize,
    pub hanging: bool,
    pub webhook_retries: usize,
    pub rate: f64,
    pub kills: usize,
}

pub async fn run(opts: &Options) -> anyhow::Result<()> {
    if opts.leases > 0 {
        expiry_lag(opts).await?;
    }
    if opts.webhooks > 0 {
        webhook_rate(opts).await?;
    }
    if opts.webhook_latency > 0 {
        webhook_latency(opts).await?;
    }
    if opts.webhook_retries > 0 {
        webhook_retries(opts).await?;
    }
    if opts.kills > 0 {
        dead_bots(opts.kills).await?;
    }
    Ok(())
}

async fn expiry_lag(opts: &Options) -> anyhow::Result<()> {
    let env = Env::new("benchlease").await?;
    let db = env.db().await?;
    let (n, spread) = (opts.leases, opts.spread_secs);
    // Leases ending from 3 s to 3 + spread s from now, on one busy bot that
    // heartbeats far ahead (it is not lost, only its jobs' leases expire).
    db.batch_execute(&format!(
        "INSERT INTO bots (id, customer_id, name, ip_address, status, delivery, capacity, active_jobs, last_heartbeat_at)
              SELECT gen_random_uuid(), id, 'big', '127.0.0.1', 'BUSY', 'agent', {n}, {n}, now() + interval '1 day' FROM customers;
         INSERT INTO jobs (id, customer_id, kind, description, system, attachment, status, bot_id, attempt,
                           started_at, lease_expires_at)
              SELECT gen_random_uuid(), b.customer_id, 'script', 'x', '', '', 'RUNNING', b.id, 1, now(),
                     clock_timestamp() + interval '3 seconds' + (g::float8 / {n}) * interval '{spread} seconds'
                FROM bots b, generate_series(1, {n}) g;
         -- An expired lease is cleared: keep the deadlines to measure against.
         CREATE TABLE bench_deadlines AS SELECT id, lease_expires_at AS deadline FROM jobs;
         ANALYZE jobs;"
    ))
    .await?;
    let started = Instant::now();
    let mut cmd = env.command("timeout-reaper");
    cmd.env("ORQ_LOG__LEVEL", "warn");
    let reaper = env.spawn("timeout-reaper", cmd)?;
    crate::wait_count(
        &env,
        "SELECT count(*) FROM jobs WHERE status = 'TIMEOUT'",
        n,
        "leases expired",
        Duration::from_secs(u64::try_from(spread).unwrap_or(60) + 120),
        Duration::from_millis(200),
    )
    .await?;
    let row = db
        .query_one(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY lag), max(lag)
               FROM (SELECT extract(epoch FROM e.created_at - d.deadline)::float8 * 1000 AS lag
                       FROM job_events e JOIN bench_deadlines d ON d.id = e.job_id
                      WHERE e.to_status = 'TIMEOUT') l",
            &[],
        )
        .await?;
    let p: Vec<f64> = row
        .try_get::<_, Option<Vec<f64>>>(0)?
        .ok_or_else(|| anyhow::anyhow!("no TIMEOUT events were recorded"))?;
    let max: f64 = row.get::<_, Option<f64>>(1).unwrap_or_default();
    println!(
        "expiry: {n} leases ending over {spread} s, one reaper (tick 1 s): lag p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({:.1} s in all)",
        p[0],
        p[1],
        max,
        started.elapsed().as_secs_f64()
    );
    drop(reaper);
    env.cleanup().await
}

async fn webhook_rate(opts: &Options) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    let env = Env::new("benchhook").await?;
    let db = env.db().await?;
    let received = Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                StatusCode::OK
            }
        }),
    );
    subscribe(&env, app).await?;
    let n = opts.webhooks;
    // n jobs with one event each: the trigger owes n deliveries.
    db.batch_execute(&format!(
        "INSERT INTO jobs (id, customer_id, kind, description, system, attachment, status)
              SELECT gen_random_uuid(), c.id, 'system', 'x', 'S', '', 'CANCELED'
                FROM customers c, generate_series(1, {n});
         INSERT INTO job_events (id, job_id, customer_id, type, description, to_status)
              SELECT gen_random_uuid(), id, customer_id, 'STATUS_CHANGE', 'created', 'CANCELED' FROM jobs;
         -- Statistics as autovacuum keeps them, after this artificial bulk load.
         ANALYZE webhook_outbox;"
    ))
    .await?;
    let started = Instant::now();
    let reaper = open_reaper(&env, &[])?;
    crate::wait_count(
        &env,
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'DELIVERED'",
        n,
        "delivered",
        Duration::from_secs(600),
        Duration::from_millis(100),
    )
    .await?;
    let took = started.elapsed().as_secs_f64();
    // Where the time went: forming the deliveries, and their first
    // attempts to the last one.
    let spans = db
        .query_one(
            "SELECT extract(epoch FROM max(d.created_at) - min(d.created_at))::float8,
                    extract(epoch FROM max(a.attempted_at) - min(a.attempted_at))::float8
               FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id",
            &[],
        )
        .await?;
    let (formed, sent): (Option<f64>, Option<f64>) = (spans.get(0), spans.get(1));
    println!(
        "webhooks: {n} deliveries to a local receiver in {took:.2} s: {:.0} deliveries/s (receiver saw {}; formed over {:.2} s, attempted over {:.2} s)",
        n as f64 / took,
        received.load(Ordering::Relaxed),
        formed.unwrap_or_default(),
        sent.unwrap_or_default()
    );
    drop(reaper);
    env.cleanup().await
}

async fn webhook_latency(opts: &Options) -> anyhow::Result<()> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let env = Env::new("benchhooklat").await?;
    let db = env.db().await?;
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let seen = arrived.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |axum::Json(events): axum::Json<Vec<serde_json::Value>>| {
                let seen = seen.clone();
                async move {
                    let now = Instant::now();
                    if let Ok(mut seen) = seen.lock() {
                        for e in events {
                            if let Some(id) = e["id"].as_str() {
                                seen.entry(id.to_string()).or_insert(now);
                            }
                        }
                    }
                    axum::http::StatusCode::OK
                }
            },
        ),
    );
    subscribe(&env, app).await?;
    if opts.hanging {
        let never = axum::Router::new().route(
            "/hook",
            axum::routing::post(|| async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                axum::http::StatusCode::OK
            }),
        );
        subscribe(&env, never).await?;
    }
    let reaper = open_reaper(&env, &[("ORQ_WEBHOOKS__TIMEOUT_MS", "2000")])?;
    // The reaper is up once a first event arrives.
    let write = WRITE_EVENT;
    let warm = uuid::Uuid::new_v4().to_string();
    db.execute(write, &[&warm]).await?;
    orq_e2e::eventually(Duration::from_secs(60), "the reaper delivering", || async {
        Ok(arrived.lock().ok().and_then(|a| a.get(&warm).copied()))
    })
    .await?;
    let n = opts.webhook_latency;
    let mut sent: Vec<(String, Instant)> = Vec::with_capacity(n);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate.max(1.0)));
    for _ in 0..n {
        tick.tick().await;
        let id = uuid::Uuid::new_v4().to_string();
        let at = Instant::now();
        db.execute(write, &[&id]).await?;
        sent.push((id, at));
    }
    orq_e2e::eventually(
        Duration::from_secs(120),
        "every event delivered",
        || async {
            let a = arrived.lock().map(|a| a.len()).unwrap_or(0);
            Ok((a > n).then_some(()))
        },
    )
    .await?;
    let mut ms: Vec<f64> = {
        let a = arrived.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        sent.iter()
            .filter_map(|(id, at)| a.get(id).map(|t| (*t - *at).as_secs_f64() * 1000.0))
            .collect()
    };
    ms.sort_by(f64::total_cmp);
    let backlog: i64 = db
        .query_one(
            "SELECT count(*) FROM webhook_outbox o JOIN webhook_endpoints e ON e.id = o.endpoint_id
               LEFT JOIN webhook_deliveries d ON d.id = o.delivery_id
              WHERE e.url LIKE '%/hook' AND (d.status IS NULL OR d.status = 'PENDING')",
            &[],
        )
        .await?
        .get(0);
    let hanging = if opts.hanging {
        format!(
            "; beside an endpoint that never answers (2 s timeout), {} events owed in all",
            backlog
        )
    } else {
        String::new()
    };
    println!(
        "webhook latency: {n} events at {:.0}/s, write -> arrival p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms{hanging}",
        opts.rate,
        crate::pct(&ms, 0.5),
        crate::pct(&ms, 0.99),
        ms.last().copied().unwrap_or_default()
    );
    drop(reaper);
    env.cleanup().await
}

async fn webhook_retries(opts: &Options) -> anyhow::Result<()> {
    use std::collections::HashSet;
    use std::sync::Mutex;
    let env = Env::new("benchhookretry").await?;
    let db = env.db().await?;
    // Each delivery is refused at its first attempt, taken at its second.
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap| {
            let seen = seen.clone();
            async move {
                let id = headers
                    .get("webhook-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let first = seen.lock().map(|mut s| s.insert(id)).unwrap_or(false);
                if first {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    subscribe(&env, app).await?;
    let reaper = open_reaper(&env, &[("ORQ_WEBHOOKS__RETRY_SCHEDULE_MS", "300,300")])?;
    let n = opts.webhook_retries;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate.max(1.0)));
    for _ in 0..n {
        tick.tick().await;
        let id = uuid::Uuid::new_v4().to_string();
        db.execute(WRITE_EVENT, &[&id]).await?;
    }
    crate::wait_count(
        &env,
        "SELECT count(*) FROM webhook_deliveries WHERE status = 'DELIVERED'",
        i64::try_from(n)?,
        "delivered on their retry",
        Duration::from_secs(120),
        Duration::from_millis(100),
    )
    .await?;
    // A delivered delivery keeps the instant its last retry was scheduled
    // for: the retry's lateness is its attempt's start minus that.
    let row = db
        .query_one(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY late), max(late),
                    min(late), count(*)
               FROM (SELECT extract(epoch FROM a.attempted_at - d.next_attempt_at)::float8 * 1000 AS late
                       FROM webhook_deliveries d JOIN webhook_attempts a ON a.delivery_id = d.id AND a.n = 2
                      WHERE d.status = 'DELIVERED') l",
            &[],
        )
        .await?;
    let p: Vec<f64> = row
        .try_get::<_, Option<Vec<f64>>>(0)?
        .ok_or_else(|| anyhow::anyhow!("no retries were recorded"))?;
    let max: f64 = row.get::<_, Option<f64>>(1).unwrap_or_default();
    let min: f64 = row.get::<_, Option<f64>>(2).unwrap_or_default();
    println!(
        "webhook retries: {} retries at {:.0}/s on a 300 ms schedule (±20 % jitter), start minus scheduled instant: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, min {:.1} ms",
        row.get::<_, i64>(3),
        opts.rate,
        p[0],
        p[1],
        max,
        min
    );
    drop(reaper);
    env.cleanup().await
}

/// A job and its one event (id `$1`) in one statement: the trigger owes
/// its webhook at the commit.
const WRITE_EVENT: &str = "WITH j AS (
       INSERT INTO jobs (id, customer_id, kind, description, system, attachment, status)
       SELECT gen_random_uuid(), c.id, 'system', 'x', 'S', '', 'CANCELED' FROM customers c
       RETURNING id, customer_id)
     INSERT INTO job_events (id, job_id, customer_id, type, description, to_status)
     SELECT $1::text::uuid, id, customer_id, 'STATUS_CHANGE', 'x', 'CANCELED' FROM j";

/// Webhooks may go to loopback here, and the services log quietly.
const OPEN: [(&str, &str); 2] = [
    ("ORQ_WEBHOOKS__DENY_NETWORKS", ""),
    ("ORQ_LOG__LEVEL", "warn"),
];

/// Serves `receiver` (its route `/hook`) on a local port and subscribes
/// it to every job of the customer, through a gateway that then stops.
async fn subscribe(env: &Env, receiver: axum::Router) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, receiver).await;
    });
    let (gw_proc, gw) = env
        .start_gateway(&[&OPEN[..], orq_e2e::NO_RATE_LIMITS].concat())
        .await?;
    let r = env
        .client()
        .post(format!("{gw}/webhooks/subscriptions"))
        .json(&json!({"url": url}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "subscribing: {}", r.status());
    drop(gw_proc);
    Ok(())
}

/// A reaper that may send webhooks to loopback, with `vars` besides.
fn open_reaper(env: &Env, vars: &[(&str, &str)]) -> anyhow::Result<orq_e2e::Proc> {
    let mut cmd = env.command("timeout-reaper");
    for (k, v) in OPEN.iter().chain(vars) {
        cmd.env(k, v);
    }
    env.spawn("timeout-reaper", cmd)
}

async fn job_status(db: &tokio_postgres::Client, id: &str) -> anyhow::Result<String> {
    Ok(db
        .query_one("SELECT status FROM jobs WHERE id = $1::text::uuid", &[&id])
        .await?
        .get(0))
}

async fn dead_bots(kills: usize) -> anyhow::Result<()> {
    let env = Env::new("benchdead").await?;
    let quiet = [("ORQ_LOG__LEVEL", "warn")];
    let (_gw, gw) = env
        .start_gateway(&[&quiet[..], orq_e2e::NO_RATE_LIMITS].concat())
        .await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &quiet)?;
    let mut cmd = env.command("timeout-reaper");
    cmd.env("ORQ_LOG__LEVEL", "warn");
    let _reaper = env.spawn("timeout-reaper", cmd)?;
    let started = Instant::now();
    // Default settings (the tests' agent_config uses 1 s heartbeats).
    let config = env.dir.join("agent.toml");
    std::fs::write(&config, "[agent]\ncapacity = 1\n")?;
    let c = &env.customer;
    let admin = env.client();
    let script: serde_json::Value = admin
        .post(format!("{gw}/{c}/script"))
        .json(&json!({"name": "s", "filename": "s.sh", "content": "#!/bin/sh\nsleep 60\n"}))
        .send()
        .await?
        .json()
        .await?;
    let task: serde_json::Value = admin
        .post(format!("{gw}/{c}/task"))
        .json(&json!({"name": "t", "script_id": script["id"]}))
        .send()
        .await?
        .json()
        .await?;
    let task = task["id"].as_str().unwrap_or_default().to_string();
    let db = env.db().await?;
    // A reaper judges nothing during its first grace (the silence window,
    // 12 s by default): the first kill waits it out.
    let grace = Duration::from_secs(13);
    let mut times = Vec::with_capacity(kills);
    for i in 0..kills {
        let mut agent = env
            .start_agent(&gw, &format!("doomed-{i}"), &config, &quiet)
            .await?;
        let job: serde_json::Value = admin
            .post(format!("{gw}/{c}/task/{task}/job"))
            .json(&json!({}))
            .send()
            .await?
            .json()
            .await?;
        let job_id = job["id"].as_str().unwrap_or_default().to_string();
        while job_status(&db, &job_id).await? != "RUNNING" {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the reaper see the agent connected once (a few of its 250 ms
        // looks), and wait out its first grace.
        tokio::time::sleep(Duration::from_millis(600)).await;
        if let Some(rest) = grace.checked_sub(started.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        agent.kill9();
        let killed = Instant::now();
        while job_status(&db, &job_id).await? != "WAITING" {
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(120),
                "the job was not requeued"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        times.push(killed.elapsed().as_secs_f64());
        // Out of the way of the next agent.
        admin
            .post(format!("{gw}/{c}/job/{job_id}/cancel"))
            .send()
            .await?;
    }
    times.sort_by(f64::total_cmp);
    println!(
        "dead bots: {kills} agents SIGKILLed mid-job (default settings), job WAITING again after p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        crate::pct(&times, 0.50),
        crate::pct(&times, 0.99),
        times.last().copied().unwrap_or_default()
    );
    env.cleanup().await
}
