//! `orq-bench --finish`: micro-task finish submissions, with the real
//! gateway and dispatcher (release builds) against the real PostgreSQL and
//! RabbitMQ.
//!
//! Executions are prepared by SQL (started micro-tasks held by `--workers`
//! workers); then
//!
//! 1. finishes are posted at `--finish-rate` per second and the client-side
//!    latency of the 202 (which comes after the broker's confirm) is
//!    reported;
//! 2. `--finishes` are posted by `--clients` concurrent clients as fast as
//!    they go: accepted per second (202s), and processed per second (from
//!    the first POST until the dispatcher recorded the last submission).
//!
//! Each phase ends with where the CPU went (`cpu.rs`), and the run with
//! the services' peak RSS.

use orq_e2e::{Env, client_with};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct Options {
    pub workers: usize,
    pub rate: u64,
    pub latency_finishes: usize,
    pub finishes: usize,
    pub clients: usize,
}

/// One prepared execution: who finishes it, where, with what.
struct Finish {
    worker: usize,
    url: String,
    body: Value,
}

pub async fn run(opts: &Options) -> anyhow::Result<()> {
    let env = Env::new("benchfinish").await?;
    let result = measure(&env, opts).await;
    env.cleanup().await?;
    result
}

async fn measure(env: &Env, opts: &Options) -> anyhow::Result<()> {
    let quiet = [("ORQ_LOG__LEVEL", "warn")];
    let (gateway, gw) = env
        .start_gateway(&[&quiet[..], orq_e2e::NO_RATE_LIMITS].concat())
        .await?;
    let dispatcher = env.start_dispatcher("dispatcher", &quiet)?;
    let probe = crate::cpu::Probe::new(vec![
        ("gateway".into(), gateway.pid()),
        ("dispatcher".into(), dispatcher.pid()),
    ]);
    let workers = opts.workers.max(1);
    let mut clients = Vec::with_capacity(workers);
    for i in 0..workers {
        let r: Value = env
            .client()
            .post(format!("{gw}/{}/workers", env.customer))
            .json(&json!({ "email": format!("w{i}@bench.org") }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        clients.push(client_with(r["access_token"].as_str().unwrap_or_default()));
    }
    let total = opts.latency_finishes + opts.finishes;
    let finishes = prepare(env, &gw, workers, total).await?;
    let (steady, burst) = finishes.split_at(opts.latency_finishes);
    println!(
        "orq-bench --finish: {workers} workers, {} finishes at {}/s, then {} by {} clients",
        steady.len(),
        opts.rate,
        burst.len(),
        opts.clients
    );

    // Phase 1: a steady rate; each 202 follows the broker's confirm.
    let clients = Arc::new(clients);
    let interval = Duration::from_secs_f64(1.0 / opts.rate.max(1) as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let cpu_before = probe.sample();
    let started = Instant::now();
    let mut posts = Vec::with_capacity(steady.len());
    for f in steady {
        tick.tick().await;
        let client = clients[f.worker].clone();
        let (url, body) = (f.url.clone(), f.body.clone());
        posts.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = client.post(url).json(&body).send().await?;
            anyhow::ensure!(r.status() == 202, "finish: {}", r.status());
            Ok(t.elapsed().as_secs_f64() * 1000.0)
        }));
    }
    let mut ms = Vec::with_capacity(posts.len());
    for p in posts {
        ms.push(p.await??);
    }
    let offered = steady.len() as f64 / started.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    println!(
        "steady {offered:.0} finishes/s offered: 202 latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        crate::pct(&ms, 0.5),
        crate::pct(&ms, 0.95),
        crate::pct(&ms, 0.99),
        ms.last().copied().unwrap_or_default()
    );
    wait_processed(env, steady.len() as i64).await?;
    probe.report(&cpu_before, &probe.sample(), steady.len(), "finishes");

    // Phase 2: as fast as the clients go.
    let burst: Arc<Vec<(usize, String, Value)>> = Arc::new(
        burst
            .iter()
            .map(|f| (f.worker, f.url.clone(), f.body.clone()))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = probe.sample();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..opts.clients.max(1) {
        let (burst, next, clients) = (burst.clone(), next.clone(), clients.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((w, url, body)) = burst.get(i) else {
                    return anyhow::Ok(());
                };
                let r = clients[*w].post(url).json(body).send().await?;
                anyhow::ensure!(r.status() == 202, "finish: {}", r.status());
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let posted = started.elapsed();
    wait_processed(env, total as i64).await?;
    let processed = started.elapsed();
    let cpu_after = probe.sample();
    println!(
        "burst {} finishes, {} clients: accepted in {:.2} s ({:.0}/s); all processed after {:.2} s ({:.0}/s)",
        burst.len(),
        opts.clients,
        posted.as_secs_f64(),
        burst.len() as f64 / posted.as_secs_f64(),
        processed.as_secs_f64(),
        burst.len() as f64 / processed.as_secs_f64()
    );
    let db = env.db().await?;
    let row = db
        .query_one(
            "SELECT count(*) FILTER (WHERE outcome = 'APPLIED'), count(*) FROM human_submissions",
            &[],
        )
        .await?;
    let (applied, all): (i64, i64) = (row.get(0), row.get(1));
    anyhow::ensure!(
        applied == total as i64 && all == total as i64,
        "{applied} of {all} submissions applied, {total} expected"
    );
    println!("  {applied} submissions applied, none rejected");
    probe.report(&cpu_before, &cpu_after, burst.len(), "finishes");
    probe.peak_rss();
    Ok(())
}

/// `n` started micro-tasks, spread over the workers, and their finishes.
async fn prepare(env: &Env, gw: &str, workers: usize, n: usize) -> anyhow::Result<Vec<Finish>> {
    let db = env.db().await?;
    let (n, w) = (n as i64, workers as i64);
    db.execute(
        "INSERT INTO human_tasks (id, customer_id, kind, action, version, input, on_timeout,
                                  execution_ms, status, worker, execution_id, deadline)
         SELECT md5('t' || g)::uuid, c.id, 'micro_task', 'PAT', 1,
                '{\"task_flow\": [], \"variables\": {}}', 'requeue', 10800000, 'EXECUTING',
                'w' || (g % $2) || '@bench.org', md5('e' || g)::uuid, now() + interval '3 hours'
           FROM customers c, generate_series(1, $1::bigint) g",
        &[&n, &w],
    )
    .await?;
    db.batch_execute(
        "INSERT INTO human_executions (id, task_id, customer_id, worker, status, deadline)
         SELECT execution_id, id, customer_id, worker, 'EXECUTING', deadline FROM human_tasks;
         ANALYZE human_tasks; ANALYZE human_executions;",
    )
    .await?;
    let rows = db
        .query(
            "SELECT id::text, execution_id::text, worker FROM human_tasks ORDER BY id",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let (task, execution, email): (String, String, String) = (r.get(0), r.get(1), r.get(2));
            let worker = email
                .trim_start_matches('w')
                .split('@')
                .next()
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            Finish {
                worker,
                url: format!("{gw}/micro_task/execution/{task}/finish?sofier={email}"),
                body: json!({
                    "task_id": task,
                    "execution_id": execution,
                    "task_info": {"name": "PAT", "version": 1},
                    "location": {"lat": -23.56, "lng": -43.95},
                    "who": email,
                    "nps_sofier": {"nps": 9, "comment": "ok"},
                    "when": {"start": "2026-11-23T10:00:00", "finish": "2026-11-23T10:20:00"},
                    "execution": [{"context": "PHOTO", "index": 1, "previous": null,
                                   "when": "2026-11-23T10:10:00", "response": "https://example.org/p.jpg"}]
                }),
            }
        })
        .collect())
}

async fn wait_processed(env: &Env, n: i64) -> anyhow::Result<()> {
    crate::wait_count(
        env,
        "SELECT count(*) FROM human_submissions",
        n,
        "finishes processed",
        Duration::from_secs(600),
        Duration::from_millis(20),
    )
    .await
}
