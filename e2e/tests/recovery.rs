//! Every service reconnects by itself when PostgreSQL or RabbitMQ comes back.
//! Each test stops a private server instance of its own, never the shared one.

use orq_e2e::{Env, PrivatePg, PrivateRabbit, agent_config, eventually};
use serde_json::{Value, json};
use std::time::Duration;

async fn post_task(
    env: &Env,
    gw: &str,
    system: &str,
    rows: usize,
) -> anyhow::Result<reqwest::Response> {
    let mut csv = String::from("n\n");
    for r in 0..rows {
        csv.push_str(&format!("{r}\n"));
    }
    Ok(env
        .client()
        .post(format!("{gw}/tasks"))
        .json(&json!({"description": "recovery", "system": system,
                      "attachment": orq_e2e::orq_shared::attachment::encode(&csv)}))
        .send()
        .await?)
}

async fn wait_status(
    env: &Env,
    gw: &str,
    id: &str,
    want: &str,
    within: Duration,
) -> anyhow::Result<()> {
    env.task_until(gw, id, within, want, |t| {
        (t["status"] == want).then_some(())
    })
    .await
}

async fn status_of(env: &Env, gw: &str, id: &str) -> anyhow::Result<String> {
    let t: Value = env
        .client()
        .get(format!("{gw}/tasks/{id}"))
        .send()
        .await?
        .json()
        .await?;
    Ok(t["status"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_ride_out_a_rabbitmq_outage() -> anyhow::Result<()> {
    let rabbit = PrivateRabbit::start()?;
    let env = Env::on("rabbitdown", &orq_e2e::pg_admin_url(), &rabbit.url()).await?;
    let fast_sweep = [("ORQ_DISPATCHER__SWEEP_INTERVAL_MS", "500")];
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &fast_sweep)?;
    let config = agent_config(&env.dir, "agent.toml", 2, &[("Noop", &["builtin:noop"])])?;
    let _agent = env.start_agent(&gw, "bot", &config, &[]).await?;
    let first: Value = post_task(&env, &gw, "Noop", 2).await?.json().await?;
    wait_status(
        &env,
        &gw,
        first["id"].as_str().unwrap_or_default(),
        "COMPLETE",
        Duration::from_secs(30),
    )
    .await?;

    rabbit.stop_app()?;
    // Work is still accepted: it is on disk in PostgreSQL.
    let r = post_task(&env, &gw, "Noop", 2).await?;
    assert_eq!(r.status(), 201, "a task is accepted while RabbitMQ is down");
    let second: Value = r.json().await?;
    let id = second["id"].as_str().unwrap_or_default().to_string();
    let ready = reqwest::get(format!("{gw}/readyz")).await?;
    assert_eq!(ready.status(), 503, "not ready without RabbitMQ");
    let body: Value = ready.json().await?;
    assert_eq!(body["rabbitmq"], false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // It cannot reach a bot without the broker: it waits, or is assigned
    // with its delivery held until the broker is back.
    let status = status_of(&env, &gw, &id).await?;
    assert!(status == "WAITING" || status == "ASSIGNED", "{status}");

    rabbit.start_app()?;
    wait_status(&env, &gw, &id, "COMPLETE", Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(30), "gateway ready again", || async {
        Ok(reqwest::get(format!("{gw}/readyz"))
            .await?
            .status()
            .is_success()
            .then_some(()))
    })
    .await?;
    // And the event-driven path works again, not only the sweep.
    let third: Value = post_task(&env, &gw, "Noop", 1).await?.json().await?;
    wait_status(
        &env,
        &gw,
        third["id"].as_str().unwrap_or_default(),
        "COMPLETE",
        Duration::from_secs(30),
    )
    .await?;
    env.cleanup().await?;
    drop(rabbit);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_ride_out_a_postgres_outage() -> anyhow::Result<()> {
    let pg = PrivatePg::start()?;
    let env = Env::on("pgdown", &pg.base_url(), &orq_e2e::amqp_url()).await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher(
        "dispatcher",
        &[("ORQ_DISPATCHER__SWEEP_INTERVAL_MS", "500")],
    )?;
    let slow: &[&str] = &["sh", "-c", "cat > /dev/null; sleep 0.3"];
    let config = agent_config(&env.dir, "agent.toml", 1, &[("Slow", slow)])?;
    let _agent = env.start_agent(&gw, "bot", &config, &[]).await?;

    // A task is running when the database goes away.
    let task: Value = post_task(&env, &gw, "Slow", 10).await?.json().await?;
    let id = task["id"].as_str().unwrap_or_default().to_string();
    wait_status(&env, &gw, &id, "RUNNING", Duration::from_secs(30)).await?;
    pg.down()?;

    let r = post_task(&env, &gw, "Slow", 1).await?;
    assert_eq!(
        r.status(),
        503,
        "refused cleanly while the database is down"
    );
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(reqwest::get(format!("{gw}/readyz")).await?.status(), 503);
    // The agent goes on; its reports wait in RabbitMQ for the dispatcher.
    tokio::time::sleep(Duration::from_secs(3)).await;

    pg.up()?;
    wait_status(&env, &gw, &id, "COMPLETE", Duration::from_secs(60)).await?;
    let after: Value = post_task(&env, &gw, "Slow", 1).await?.json().await?;
    wait_status(
        &env,
        &gw,
        after["id"].as_str().unwrap_or_default(),
        "COMPLETE",
        Duration::from_secs(30),
    )
    .await?;
    let db = env.db().await?;
    let completes: i64 = db
        .query_one(
            "SELECT count(*) FROM job_events WHERE job_id = $1 AND to_status = 'COMPLETE'",
            &[&uuid::Uuid::parse_str(&id)?],
        )
        .await?
        .get(0);
    assert_eq!(completes, 1);
    env.cleanup().await?;
    drop(pg);
    Ok(())
}

/// Three agents mid-job through an outage: a reaper with a 3 s silence
/// window (1 s heartbeats) must not call any of them lost.
struct Busy {
    log: std::path::PathBuf,
    jobs: Vec<String>,
    _procs: Vec<orq_e2e::Proc>,
}

const ROWS: usize = 16;

async fn three_busy_agents(env: &Env) -> anyhow::Result<(String, Busy)> {
    let (gw_proc, gw) = env.start_gateway(&[]).await?;
    let mut procs = vec![gw_proc];
    procs.push(env.start_dispatcher(
        "dispatcher",
        &[("ORQ_DISPATCHER__SWEEP_INTERVAL_MS", "500")],
    )?);
    procs.push(env.start_reaper(orq_e2e::REAPER_MATCHING_AGENTS)?);
    let log = env.dir.join("runs.log");
    let config = orq_e2e::logging_agent(
        &env.dir,
        "agent",
        1,
        "Slow",
        &log,
        "$ORQ_IDEMPOTENCY_KEY $ORQ_ATTEMPT",
        "sleep 0.5",
    )?;
    for name in ["a1", "a2", "a3"] {
        procs.push(env.start_agent(&gw, name, &config, &[]).await?);
    }
    let mut jobs = Vec::new();
    for _ in 0..3 {
        let t: Value = post_task(env, &gw, "Slow", ROWS).await?.json().await?;
        jobs.push(t["id"].as_str().unwrap_or_default().to_string());
    }
    for id in &jobs {
        env.task_until(&gw, id, Duration::from_secs(30), "two rows done", |t| {
            (t["rows_done"].as_i64().unwrap_or(0) >= 2).then_some(())
        })
        .await?;
    }
    Ok((
        gw,
        Busy {
            log,
            jobs,
            _procs: procs,
        },
    ))
}

/// Counts, every 100 ms until stopped, the times a bot was seen UNAVAILABLE.
fn watch_unavailable(
    env: &Env,
) -> (
    tokio::task::JoinHandle<usize>,
    tokio_util::sync::CancellationToken,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let (url, s) = (env.db_url.clone(), stop.clone());
    let handle = tokio::spawn(async move {
        let mut seen = 0;
        while !s.is_cancelled() {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                while !s.is_cancelled() {
                    match client
                        .query_one(
                            "SELECT count(*) FROM bots WHERE status = 'UNAVAILABLE'",
                            &[],
                        )
                        .await
                    {
                        Ok(r) => seen += usize::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                        Err(_) => break,
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    });
    (handle, stop)
}

/// All COMPLETE on their first attempt, each row run once, no agent lost.
async fn all_done_once(env: &Env, gw: &str, busy: &Busy, unavailable: usize) -> anyhow::Result<()> {
    for id in &busy.jobs {
        let t = env.get_json(&format!("{gw}/tasks/{id}")).await?;
        assert_eq!(t["status"], "COMPLETE", "{t}");
        assert_eq!(t["attempt"], 1, "no job was requeued: {t}");
    }
    assert_eq!(unavailable, 0, "no agent was ever UNAVAILABLE");
    let db = env.db().await?;
    let lost: i64 = db
        .query_one(
            "SELECT count(*) FROM job_events WHERE type = 'WARNING'
                AND (description LIKE '%went silent%' OR description LIKE '%left RabbitMQ%')",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(lost, 0, "no agent was declared lost");
    let runs = std::fs::read_to_string(&busy.log)?;
    let mut counts = std::collections::HashMap::<String, usize>::new();
    for line in runs.lines() {
        let key = line.split(' ').next().unwrap_or_default().to_string();
        *counts.entry(key).or_default() += 1;
    }
    assert_eq!(counts.len(), 3 * ROWS, "every row ran: {runs}");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "rows run twice: {twice:?}");
    Ok(())
}

/// Takes a server down for 10 s under three busy agents, brings it back,
/// and checks nobody was declared lost.
async fn ride_out(
    env: Env,
    down: impl FnOnce() -> anyhow::Result<()>,
    up: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let (gw, busy) = three_busy_agents(&env).await?;
    let (watch, stop) = watch_unavailable(&env);
    down()?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    up()?;
    let outcome = async {
        for id in &busy.jobs {
            env.task_until(&gw, id, Duration::from_secs(120), "COMPLETE", |t| {
                (t["status"] == "COMPLETE").then_some(())
            })
            .await?;
        }
        // The silence window is 3 s: let more than one pass after the return.
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop.cancel();
        let unavailable = watch.await?;
        all_done_once(&env, &gw, &busy, unavailable).await
    }
    .await;
    drop(busy);
    env.cleanup().await?;
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_agent_is_declared_lost_through_a_ten_second_rabbitmq_outage() -> anyhow::Result<()> {
    let rabbit = PrivateRabbit::start()?;
    let env = Env::on("falsedeath-mq", &orq_e2e::pg_admin_url(), &rabbit.url()).await?;
    ride_out(env, || rabbit.stop_app(), || rabbit.start_app()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_agent_is_declared_lost_through_a_ten_second_postgres_outage() -> anyhow::Result<()> {
    let pg = PrivatePg::start()?;
    let env = Env::on("falsedeath-pg", &pg.base_url(), &orq_e2e::amqp_url()).await?;
    ride_out(env, || pg.down(), || pg.up()).await
}

/// Wake-ups go through PostgreSQL (NOTIFY on `orq_wake`), off the durable
/// path: with the sweep out of the way (its one pass at start, then an
/// hour), a posted task is matched by its wake-up alone; a job that waits
/// unannounced stays put until the dispatcher's listening connection is
/// cut, and is matched when it listens again (it then looks at every
/// customer, as a notification sent while it was away is lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wake_ups_go_through_postgres_and_a_listener_back_from_a_cut_looks_for_all_work()
-> anyhow::Result<()> {
    let env = Env::new("wakes").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher(
        "dispatcher",
        &[("ORQ_DISPATCHER__SWEEP_INTERVAL_MS", "3600000")],
    )?;
    let quick: &[&str] = &["sh", "-c", "cat > /dev/null"];
    let config = agent_config(&env.dir, "agent.toml", 2, &[("Quick", quick)])?;
    let _agent = env.start_agent(&gw, "bot", &config, &[]).await?;
    let db = env.db().await?;
    // The dispatcher listens once its first (startup) sweep is behind it.
    let listener = "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND query = 'LISTEN orq_wake'";
    eventually(
        Duration::from_secs(20),
        "the dispatcher listening",
        || async {
            let n: i64 = db.query_one(listener, &[]).await?.get(0);
            Ok((n == 1).then_some(()))
        },
    )
    .await?;

    let task: Value = post_task(&env, &gw, "Quick", 1).await?.json().await?;
    let id = task["id"].as_str().unwrap_or_default();
    wait_status(&env, &gw, id, "COMPLETE", Duration::from_secs(20)).await?;

    // A job written without a wake-up (as if its NOTIFY were lost).
    let quiet: String = db
        .query_one(
            "INSERT INTO jobs (id, customer_id, kind, description, system, attachment, rows_total, status)
             SELECT gen_random_uuid(), id, 'system', 'unannounced', 'Quick', $2, 1, 'WAITING'
               FROM customers WHERE name = $1
             RETURNING id::text",
            &[
                &env.customer,
                &orq_e2e::orq_shared::attachment::encode("n\n1\n"),
            ],
        )
        .await?
        .get(0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        status_of(&env, &gw, &quiet).await?,
        "WAITING",
        "nothing woke the dispatcher for it"
    );
    let cut: i64 = db
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                                    WHERE datname = current_database()
                                      AND query = 'LISTEN orq_wake') t",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(cut, 1);
    wait_status(&env, &gw, &quiet, "COMPLETE", Duration::from_secs(20)).await?;
    drop(db);
    env.cleanup().await
}
