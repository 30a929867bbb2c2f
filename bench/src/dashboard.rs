//! `orq-bench --dashboard`: the dashboard's reads with many jobs in the
//! database, against the real gateway (a release build) on its own
//! database.
//!
//! Loads `--jobs` jobs of one customer (100,000 by default: CSV tasks and
//! runs of 20 task definitions, spread over the last day, mostly finished,
//! a few waiting and running, on 20 bots), `--deliveries` webhook
//! deliveries and `--human` human tasks, each with one `INSERT … SELECT
//! generate_series`, then `VACUUM ANALYZE`s (what autovacuum does to a
//! table that grew). Then it asks the gateway for every list page and the
//! overview the way the dashboard does (newest first, 50 a page; the bots
//! page's lists 1,000), `--requests` times each after a few warm-up
//! requests, one at a time, and prints p50, p99 and the slowest.

use anyhow::Context;
use orq_e2e::Env;
use serde_json::{Value, json};
use std::time::Instant;

use crate::{V7, pct};

pub struct Options {
    pub jobs: i64,
    pub deliveries: i64,
    pub human: i64,
    pub requests: usize,
}

/// Bots and task definitions the jobs are spread over.
const BOTS: i64 = 20;
const DEFINITIONS: usize = 20;
/// What every page must answer within.
const BUDGET_MS: f64 = 200.0;

pub async fn run(opts: &Options) -> anyhow::Result<()> {
    let env = Env::new("benchdash").await?;
    let result = measure(&env, opts).await;
    env.cleanup().await?;
    result
}

async fn measure(env: &Env, opts: &Options) -> anyhow::Result<()> {
    let quiet = [("ORQ_LOG__LEVEL", "warn")];
    let (_gw, gw) = env
        .start_gateway(&[&quiet[..], orq_e2e::NO_RATE_LIMITS].concat())
        .await?;
    let client = env.client();
    let c = env.customer.clone();
    println!(
        "orq-bench --dashboard: {} jobs, {} webhook deliveries, {} human tasks; {} requests per page",
        opts.jobs, opts.deliveries, opts.human, opts.requests
    );

    // The definitions and their script through the API (secret keys and
    // all); one real run gives the stored form of a run's spec.
    let script: Value = client
        .post(format!("{gw}/{c}/script"))
        .json(&json!({"name": "true", "filename": "true.sh", "content": "#!/bin/sh\ntrue\n"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut definitions = Vec::with_capacity(DEFINITIONS);
    for i in 0..DEFINITIONS {
        // Two in 20 labelled, for the lists' tags filter.
        let tags: &[&str] = if i % 10 == 3 { &["nightly"] } else { &[] };
        let task: Value = client
            .post(format!("{gw}/{c}/task"))
            .json(
                &json!({"name": format!("definition-{i:02}"), "script_id": script["id"],
                          "task_arguments": [{"type": "input", "label": "who"}], "tags": tags}),
            )
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        definitions.push(task["id"].as_str().context("task id")?.to_string());
    }
    let sample: Value = client
        .post(format!("{gw}/{c}/task/{}/job", definitions[0]))
        .json(&json!({"task_arguments": ["bench"]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;

    let started = Instant::now();
    let db = env.db().await?;
    load(&db, &c, sample["id"].as_str().context("job id")?, opts).await?;
    let loaded = started.elapsed();
    db.batch_execute("VACUUM ANALYZE").await?;
    println!(
        "  loaded in {:.1} s, VACUUM ANALYZE in {:.1} s",
        loaded.as_secs_f64(),
        (started.elapsed() - loaded).as_secs_f64()
    );
    let counts = db
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE kind = 'system'),
                    count(*) FILTER (WHERE status = 'WAITING'),
                    count(*) FILTER (WHERE status = 'RUNNING'),
                    count(*) FILTER (WHERE finished_at > now() - interval '1 hour')
               FROM jobs",
            &[],
        )
        .await?;
    println!(
        "  jobs: {} ({} CSV tasks), {} waiting, {} running, {} finished in the last hour",
        counts.get::<_, i64>(0),
        counts.get::<_, i64>(1),
        counts.get::<_, i64>(2),
        counts.get::<_, i64>(3),
        counts.get::<_, i64>(4)
    );
    let bot: String = db
        .query_one("SELECT id::text FROM bots ORDER BY name LIMIT 1", &[])
        .await?
        .get(0);
    let task = &definitions[3];
    let page = "order=desc&limit=50";
    // The second page of the tasks list, as "Load more" asks it.
    let first = client.get(format!("{gw}/tasks?{page}")).send().await?;
    let cursor = first
        .headers()
        .get("x-next-cursor")
        .and_then(|v| v.to_str().ok())
        .context("the tasks list has no next page")?
        .to_string();

    let pages: Vec<(&str, String)> = vec![
        ("overview", format!("/{c}/overview")),
        ("tasks", format!("/tasks?{page}")),
        ("tasks, page 2", format!("/tasks?{page}&after={cursor}")),
        (
            "tasks ?status=FAILED",
            format!("/tasks?status=FAILED&{page}"),
        ),
        (
            "tasks ?status=WAITING",
            format!("/tasks?status=WAITING&{page}"),
        ),
        (
            "tasks ?system= (rare)",
            format!("/tasks?system=Rare&{page}"),
        ),
        ("jobs", format!("/{c}/job?{page}")),
        (
            "jobs ?status=FAILED",
            format!("/{c}/job?status=FAILED&{page}"),
        ),
        (
            "jobs ?lifecycle=finished",
            format!("/{c}/job?lifecycle=finished&{page}"),
        ),
        ("jobs ?task=", format!("/{c}/job?task={task}&{page}")),
        ("jobs ?tags=", format!("/{c}/job?tags=nightly&{page}")),
        (
            "a definition's jobs",
            format!("/{c}/task/{task}/job?{page}"),
        ),
        ("bots page: bots", "/bots?limit=1000".to_string()),
        (
            "bots page: ASSIGNED tasks",
            "/tasks?status=ASSIGNED&limit=1000".to_string(),
        ),
        (
            "bots page: RUNNING tasks",
            "/tasks?status=RUNNING&limit=1000".to_string(),
        ),
        (
            "bots page: jobs in hand",
            format!("/{c}/job?status=ASSIGNED,RUNNING&limit=1000"),
        ),
        (
            "a bot's tasks",
            format!("/tasks?bot_id={bot}&order=desc&limit=20"),
        ),
        (
            "a bot's jobs",
            format!("/{c}/job?bot_id={bot}&order=desc&limit=20"),
        ),
        ("definitions", format!("/{c}/task?{page}")),
        (
            "definitions ?tags=",
            format!("/{c}/task?tags=nightly&{page}"),
        ),
        ("scripts", format!("/{c}/script?{page}")),
        ("deliveries", format!("/webhooks/deliveries?{page}")),
        (
            "deliveries ?status=DEAD",
            format!("/webhooks/deliveries?status=DEAD&{page}"),
        ),
        ("micro-tasks", format!("/{c}/micro_task?{page}")),
        ("user tasks", format!("/activity_manager?{page}")),
    ];
    println!(
        "  {:<28} {:>9} {:>9} {:>9} {:>6}",
        "page", "p50 ms", "p99 ms", "max ms", "items"
    );
    let mut over = Vec::new();
    for (label, path) in &pages {
        let url = format!("{gw}{path}");
        let mut items = 0;
        for _ in 0..3 {
            get(&client, &url).await?;
        }
        let mut ms = Vec::with_capacity(opts.requests);
        for _ in 0..opts.requests {
            let t = Instant::now();
            items = get(&client, &url).await?;
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        let (p50, p99, max) = (pct(&ms, 0.5), pct(&ms, 0.99), ms[ms.len() - 1]);
        println!("  {label:<28} {p50:>9.2} {p99:>9.2} {max:>9.2} {items:>6}");
        if p99 > BUDGET_MS {
            over.push(*label);
        }
    }
    if over.is_empty() {
        println!("  every page's p99 is under {BUDGET_MS} ms");
    } else {
        println!("  p99 over {BUDGET_MS} ms: {}", over.join(", "));
    }
    Ok(())
}

/// One request, which must succeed; how many items it listed (1 for an
/// object).
async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<usize> {
    let r = client.get(url).send().await?;
    let status = r.status();
    let body: Value = r.json().await?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status} {body}");
    Ok(body.as_array().map_or(1, Vec::len))
}

/// The bulk load: bots, jobs, deliveries and human tasks of `customer`
/// (a name), by SQL. Ids are v7-like (their time prefix is the row's
/// creation), so lists, which page by id, see them in time order.
async fn load(
    db: &tokio_postgres::Client,
    customer: &str,
    sample_job: &str,
    opts: &Options,
) -> anyhow::Result<()> {
    let statements = [
        format!(
            "INSERT INTO bots (id, customer_id, name, ip_address, status, delivery, capacity,
                               active_jobs, systems, last_heartbeat_at)
             SELECT gen_random_uuid(), c.id, 'bench-bot-' || lpad(n::text, 2, '0'), '10.0.0.' || n,
                    CASE WHEN n < 2 THEN 'UNAVAILABLE' WHEN n < 4 THEN 'BUSY' ELSE 'AVAILABLE' END,
                    'agent', 16, CASE WHEN n < 2 THEN 0 WHEN n < 4 THEN 16 ELSE n % 5 END,
                    ARRAY['noop', 'Vivo360', 'Rare'], now()
               FROM customers c, generate_series(0, {BOTS} - 1) n WHERE c.name = $1"
        ),
        // Two in five are CSV tasks, the rest runs of the definitions; by
        // status 90 % COMPLETE, 5 % FAILED, 1 % TIMEOUT, 1.6 % CANCELED,
        // 2 % WAITING, 0.1 % ASSIGNED, 0.3 % RUNNING; created over the last
        // day, finished 5 s later; one CSV task in 200 of a rare system.
        // Kind, bot and definition are hashes of the row's number, so they
        // do not go with its status.
        format!(
            "WITH c AS (SELECT id FROM customers WHERE name = $1),
                  b AS (SELECT array_agg(id ORDER BY name) AS ids FROM bots WHERE customer_id = (SELECT id FROM c)),
                  d AS (SELECT array_agg(id ORDER BY name) AS ids FROM task_defs WHERE customer_id = (SELECT id FROM c)),
                  s AS (SELECT spec FROM jobs WHERE id = $3::text::uuid),
                  g AS (SELECT n, now() - (n::float8 / $2::int8) * interval '1 day' AS ts,
                               CASE WHEN n % 1000 < 900 THEN 'COMPLETE' WHEN n % 1000 < 950 THEN 'FAILED'
                                    WHEN n % 1000 < 960 THEN 'TIMEOUT' WHEN n % 1000 < 976 THEN 'CANCELED'
                                    WHEN n % 1000 < 996 THEN 'WAITING' WHEN n % 1000 < 997 THEN 'ASSIGNED'
                                    ELSE 'RUNNING' END AS status,
                               abs(hashint8(n)) % 5 < 2 AS csv,
                               1 + abs(hashint8(n + 7)) % {BOTS} AS bot,
                               abs(hashint8(n + 13)) % {DEFINITIONS} AS def
                          FROM generate_series(1, $2::int8) n)
             INSERT INTO jobs (id, customer_id, kind, description, system, attachment, rows_total,
                               rows_done, status, bot_id, attempt, percent, task_id, spec, created_at,
                               updated_at, assigned_at, started_at, finished_at, error)
             SELECT {V7}, (SELECT id FROM c),
                    CASE WHEN csv THEN 'system' ELSE 'script' END,
                    CASE WHEN csv THEN 'bench CSV task ' || n ELSE 'definition-' || lpad(def::text, 2, '0') END,
                    CASE WHEN NOT csv THEN '' WHEN n % 200 = 0 THEN 'Rare' WHEN n % 2 = 0 THEN 'noop' ELSE 'Vivo360' END,
                    CASE WHEN csv THEN 'aWQKMQo=' ELSE '' END, CASE WHEN csv THEN 1 ELSE 0 END,
                    CASE WHEN status = 'COMPLETE' AND csv THEN 1 ELSE 0 END,
                    status,
                    CASE WHEN status = 'WAITING' THEN NULL ELSE (SELECT ids FROM b)[bot::int] END,
                    CASE WHEN status = 'WAITING' THEN 0 ELSE 1 END,
                    CASE WHEN status = 'COMPLETE' THEN 100 WHEN status = 'RUNNING' THEN 40 ELSE 0 END,
                    CASE WHEN csv THEN NULL ELSE (SELECT ids FROM d)[(1 + def)::int] END,
                    CASE WHEN csv THEN NULL ELSE (SELECT spec FROM s) END,
                    ts, ts,
                    CASE WHEN status = 'WAITING' THEN NULL ELSE ts + interval '1 second' END,
                    CASE WHEN status IN ('WAITING', 'ASSIGNED') THEN NULL ELSE ts + interval '2 seconds' END,
                    CASE WHEN status IN ('WAITING', 'ASSIGNED', 'RUNNING') THEN NULL ELSE ts + interval '5 seconds' END,
                    CASE WHEN status = 'FAILED' THEN 'exit code 1' END
               FROM g"
        ),
        // One subscription; its deliveries: 97 % DELIVERED, 2 % DEAD, 1 %
        // PENDING (half of them after a failed attempt).
        "INSERT INTO webhook_endpoints (id, customer_id, kind, url)
         SELECT gen_random_uuid(), id, 'subscription', 'http://10.0.0.1/hook' FROM customers WHERE name = $1"
            .to_string(),
        format!(
            "WITH e AS (SELECT id, customer_id FROM webhook_endpoints
                         WHERE customer_id = (SELECT id FROM customers WHERE name = $1)),
                  j AS (SELECT id, row_number() OVER (ORDER BY id) AS jn FROM jobs
                         WHERE customer_id = (SELECT id FROM customers WHERE name = $1)),
                  g AS (SELECT n, now() - (n::float8 / $2::int8) * interval '1 day' AS ts,
                               CASE WHEN n % 100 < 97 THEN 'DELIVERED' WHEN n % 100 < 99 THEN 'DEAD'
                                    ELSE 'PENDING' END AS status
                          FROM generate_series(1, $2::int8) n)
             INSERT INTO webhook_deliveries (id, customer_id, endpoint_id, job_id, body, status,
                                             attempts, next_attempt_at, last_status, created_at,
                                             finished_at)
             SELECT {V7}, e.customer_id, e.id, coalesce(j.id, gen_random_uuid()), '[]', status,
                    CASE WHEN status = 'DEAD' THEN 8 WHEN status = 'DELIVERED' THEN 1 ELSE n % 2 END,
                    ts + interval '1 hour', CASE WHEN status = 'DELIVERED' THEN 204 ELSE 500 END, ts,
                    CASE WHEN status = 'PENDING' THEN NULL ELSE ts + interval '1 second' END
               FROM g CROSS JOIN e LEFT JOIN j ON j.jn = g.n
             ON CONFLICT DO NOTHING"
        ),
        // Human tasks: micro-tasks and user tasks, half each, mostly done.
        format!(
            "WITH g AS (SELECT n, now() - (n::float8 / $2::int8) * interval '1 day' AS ts FROM generate_series(1, $2::int8) n)
             INSERT INTO human_tasks (id, customer_id, kind, action, input, on_timeout, execution_ms,
                                      status, created_at, updated_at)
             SELECT {V7}, (SELECT id FROM customers WHERE name = $1),
                    CASE WHEN n % 2 = 0 THEN 'micro_task' ELSE 'user_task' END,
                    'survey-' || n % 10,
                    CASE WHEN n % 2 = 0 THEN '{{\"task_flow\": [], \"variables\": {{}}}}'::jsonb ELSE '{{}}'::jsonb END,
                    CASE WHEN n % 2 = 0 THEN 'requeue' ELSE 'continue' END, 10800000,
                    CASE WHEN n % 10 = 0 THEN 'NEW' ELSE 'COMPLETE' END, ts, ts
               FROM g"
        ),
    ];
    let counts = [0, opts.jobs, 0, opts.deliveries, opts.human];
    for (sql, n) in statements.iter().zip(counts) {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = if sql.contains("$3") {
            vec![&customer, &n, &sample_job]
        } else if sql.contains("$2") {
            vec![&customer, &n]
        } else {
            vec![&customer]
        };
        db.execute(sql.as_str(), &params)
            .await
            .with_context(|| format!("loading: {}", sql.lines().next().unwrap_or_default()))?;
    }
    // The sample run served its purpose: only the loaded jobs remain.
    db.execute("DELETE FROM jobs WHERE id = $1::text::uuid", &[&sample_job])
        .await?;
    Ok(())
}
