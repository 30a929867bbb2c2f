//! Load benchmark: starts the real gateway, dispatcher(s) and agents (with a
//! no-op automation) against the real PostgreSQL and RabbitMQ, then
//!
//! 1. posts tasks at a steady rate and reports create -> RUNNING latency
//!    (the job's `created_at`, set by the gateway's insert, to its
//!    `started_at`, the agent's own RUNNING timestamp) and the POST latency
//!    seen by the client;
//! 2. posts a burst of tasks as fast as a pool of clients can and reports
//!    end-to-end throughput (first POST to last COMPLETE).
//!
//! With `--script`, the jobs are runs of a TheEye task whose script is
//! `true` (`POST /{customer}/task/{id}/job`): the agent fetches it once,
//! then starts a process per job; RUNNING is then the process start, so
//! create -> RUNNING is API-to-process-start.
//!
//! With `--finish`, micro-task finish submissions instead (`finish.rs`);
//! with `--reaper`, the timeout-reaper (`reaper.rs`); with `--dashboard`,
//! the dashboard's list pages and overview over 100,000 jobs
//! (`dashboard.rs`).
//!
//! Each phase that runs jobs end to end ends with where the CPU went
//! (`cpu.rs`): the CPU seconds per 1,000 jobs of every process, and at the
//! end the peak RSS of each service the bench started.
//!
//! Run it from the release profile so the services are release builds too:
//! `cargo build --release --workspace --bins && target/release/orq-bench`.

mod backlog;
mod cpu;
mod dashboard;
mod finish;
mod reaper;

use anyhow::Context;
use clap::Parser;
use orq_e2e::{Env, agent_config};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Bot agents to start.
    #[arg(long, default_value_t = 4)]
    agents: usize,
    /// Capacity (parallel jobs) of each agent.
    #[arg(long, default_value_t = 16)]
    capacity: u16,
    /// Assignments each agent may hold beyond its capacity, unstarted
    /// (`agent.prefetch`); unset: the agents' default.
    #[arg(long)]
    prefetch: Option<u16>,
    /// Dispatchers to start.
    #[arg(long, default_value_t = 1)]
    dispatchers: usize,
    /// Start a timeout-reaper beside them, as a deployment runs one (its
    /// CPU and peak RSS are then reported with the others').
    #[arg(long)]
    with_reaper: bool,
    /// Steady rate of the latency phase, tasks per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Tasks posted in the latency phase.
    #[arg(long, default_value_t = 2000)]
    latency_tasks: usize,
    /// WAITING jobs of another system (one whose only bot is away) to load
    /// after the steady phase, which then runs again beside them; the burst
    /// runs beside them too (`backlog.rs`).
    #[arg(long, default_value_t = 0)]
    backlog: i64,
    /// Tasks posted in the throughput phase.
    #[arg(long, default_value_t = 10000)]
    tasks: usize,
    /// Concurrent clients of the throughput phase.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// The automation: `builtin:noop` (no process) or an argv such as `true`.
    #[arg(long, default_value = "builtin:noop")]
    automation: String,
    /// Run script jobs (a task whose script is `true`) instead of CSV tasks.
    #[arg(long)]
    script: bool,
    /// Measure the timeout-reaper instead: expiry lag, webhook deliveries/s,
    /// dead-bot detection.
    #[arg(long)]
    reaper: bool,
    /// With --reaper: live leases expiring during the run.
    #[arg(long, default_value_t = 100_000)]
    leases: i64,
    /// With --reaper: the leases end over this many seconds.
    #[arg(long, default_value_t = 30)]
    spread_secs: i64,
    /// With --reaper: webhook deliveries to send.
    #[arg(long, default_value_t = 10_000)]
    webhooks: i64,
    /// With --reaper: events written one at a time at --rate per second,
    /// each timed from its write to its webhook's arrival (0: none).
    #[arg(long, default_value_t = 2_000)]
    webhook_latency: usize,
    /// With --reaper and --webhook-latency: also subscribe an endpoint that
    /// never answers (each attempt runs into the timeout), so a backlog
    /// builds there while the latency is measured at the healthy one.
    #[arg(long)]
    hanging: bool,
    /// With --reaper: one-event deliveries each refused once (HTTP 500) and
    /// retried on a 300 ms schedule, each retry timed against its scheduled
    /// instant (0: none).
    #[arg(long, default_value_t = 500)]
    webhook_retries: usize,
    /// With --reaper: agents SIGKILLed mid-job, one after another, each
    /// timed until its job waits again (0: none).
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Measure micro-task finish submissions instead: accepted/s, 202
    /// latency at a fixed rate, processed/s.
    #[arg(long)]
    finish: bool,
    /// With --finish: workers holding the executions.
    #[arg(long, default_value_t = 50)]
    workers: usize,
    /// With --finish: the steady phase's rate, finishes per second.
    #[arg(long, default_value_t = 1000)]
    finish_rate: u64,
    /// With --finish: finishes posted in the steady phase.
    #[arg(long, default_value_t = 10_000)]
    latency_finishes: usize,
    /// With --finish: finishes posted in the burst phase.
    #[arg(long, default_value_t = 20_000)]
    finishes: usize,
    /// Measure the dashboard's reads instead: every list page and the
    /// overview, with many jobs loaded.
    #[arg(long)]
    dashboard: bool,
    /// With --dashboard: jobs to load.
    #[arg(long, default_value_t = 100_000)]
    jobs: i64,
    /// With --dashboard: webhook deliveries to load.
    #[arg(long, default_value_t = 100_000)]
    deliveries: i64,
    /// With --dashboard: human tasks to load.
    #[arg(long, default_value_t = 10_000)]
    human: i64,
    /// With --dashboard: timed requests per page.
    #[arg(long, default_value_t = 50)]
    requests: usize,
}

const CSV: &str = "id\n1\n";

/// SQL for a v7-shaped uuid of a time `ts` and a number `n`, for bulk loads
/// whose rows must list in time order.
pub(crate) const V7: &str = "(lpad(to_hex((extract(epoch FROM ts) * 1000)::int8), 12, '0') || '7'
                   || substr(md5(n::text), 1, 3) || '8' || substr(md5(n::text), 4, 15))::uuid";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.reaper {
        return reaper::run(&reaper::Options {
            leases: args.leases,
            spread_secs: args.spread_secs,
            webhooks: args.webhooks,
            webhook_latency: args.webhook_latency,
            hanging: args.hanging,
            webhook_retries: args.webhook_retries,
            rate: args.rate as f64,
            kills: args.kills,
        })
        .await;
    }
    if args.dashboard {
        return dashboard::run(&dashboard::Options {
            jobs: args.jobs,
            deliveries: args.deliveries,
            human: args.human,
            requests: args.requests.max(1),
        })
        .await;
    }
    if args.finish {
        return finish::run(&finish::Options {
            workers: args.workers,
            rate: args.finish_rate,
            latency_finishes: args.latency_finishes,
            finishes: args.finishes,
            clients: args.clients,
        })
        .await;
    }
    let env = Env::new("bench").await?;
    let result = run(&args, &env).await;
    env.cleanup().await?;
    result
}

async fn run(args: &Args, env: &Env) -> anyhow::Result<()> {
    let quiet = [("ORQ_LOG__LEVEL", "warn")];
    let (gateway, gw) = env
        .start_gateway(&[&quiet[..], orq_e2e::NO_RATE_LIMITS].concat())
        .await?;
    let mut procs = Vec::new();
    let mut own = vec![("gateway".to_string(), gateway.pid())];
    for i in 0..args.dispatchers {
        let d = env.start_dispatcher(&format!("dispatcher-{i}"), &quiet)?;
        own.push(("dispatcher".into(), d.pid()));
        procs.push(d);
    }
    if args.with_reaper {
        let r = env.start_reaper(&quiet)?;
        own.push(("timeout-reaper".into(), r.pid()));
        procs.push(r);
    }
    let argv: Vec<&str> = args.automation.split_whitespace().collect();
    let config = agent_config(&env.dir, "agent.toml", args.capacity, &[("noop", &argv)])?;
    let prefetch = args.prefetch.map(|n| n.to_string());
    let mut agent_env = quiet.to_vec();
    if let Some(n) = &prefetch {
        agent_env.push(("ORQ_AGENT__PREFETCH", n));
    }
    for i in 0..args.agents {
        let a = env
            .start_agent(&gw, &format!("bench-{i}"), &config, &agent_env)
            .await?;
        own.push(("agents".into(), a.pid()));
        procs.push(a);
    }
    let probe = cpu::Probe::new(own);
    let client = env.client();
    let (url, body) = if args.script {
        (
            script_task(&client, &gw, &env.customer).await?,
            serde_json::json!({"task_arguments": []}),
        )
    } else {
        let attachment = orq_e2e::orq_shared::attachment::encode(CSV);
        (
            format!("{gw}/tasks"),
            serde_json::json!({"description": "bench", "system": "noop", "attachment": attachment}),
        )
    };
    let body = Arc::new(body);
    let url = url.as_str();
    println!(
        "orq-bench: {} agent(s) x capacity {}, {} dispatcher(s), {}",
        args.agents,
        args.capacity,
        args.dispatchers,
        if args.script {
            "script jobs (a `true` script, a process each)".to_string()
        } else {
            format!("CSV tasks, automation {:?}", args.automation)
        }
    );

    // Warm-up: connections, prepared plans, page cache.
    post_burst(&client, url, &body, 200, 16).await?;
    wait_complete(env, 200).await?;
    reset(env).await?;

    // Phase 1: a steady rate, on an empty queue and then, with
    // --backlog, beside another system's backlog.
    let steady = Steady {
        env,
        client: &client,
        url,
        body: &body,
        probe: &probe,
    };
    let empty = steady.run(args).await?;
    if args.backlog > 0 {
        let db = env.db().await?;
        backlog::load(&db, &env.customer, args.backlog).await?;
        // Its backend's CPU (the load) is counted when it exits: before the
        // phase's window, not in it.
        drop(db);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let behind = steady.run(args).await?;
        println!(
            "  with the backlog, create->RUNNING p50 is {:.2}x the empty queue's ({:.2} vs {:.2} ms)",
            behind / empty,
            behind,
            empty
        );
    }

    // Phase 2: as fast as it goes.
    let cpu_before = probe.sample();
    let started = Instant::now();
    post_burst(&client, url, &body, args.tasks, args.clients).await?;
    let posted = started.elapsed();
    wait_complete(env, args.tasks as i64).await?;
    let total = started.elapsed();
    let cpu_after = probe.sample();
    println!(
        "burst {} tasks, {} clients: posted in {:.2} s ({:.0} tasks/s accepted); all COMPLETE after {:.2} s: {:.0} tasks/s end to end",
        args.tasks,
        args.clients,
        posted.as_secs_f64(),
        args.tasks as f64 / posted.as_secs_f64(),
        total.as_secs_f64(),
        args.tasks as f64 / total.as_secs_f64()
    );
    breakdown(env).await?;
    probe.report(&cpu_before, &cpu_after, args.tasks, "jobs");
    probe.peak_rss();
    drop(procs);
    Ok(())
}

/// The steady phase: tasks posted at `--rate`, each timed from its creation
/// to its RUNNING.
struct Steady<'a> {
    env: &'a Env,
    client: &'a reqwest::Client,
    url: &'a str,
    body: &'a Arc<serde_json::Value>,
    probe: &'a cpu::Probe,
}

impl Steady<'_> {
    /// Runs the phase, prints its figures and returns create->RUNNING p50
    /// in milliseconds.
    async fn run(&self, args: &Args) -> anyhow::Result<f64> {
        let Steady {
            env,
            client,
            url,
            body,
            probe,
        } = *self;
        let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut posts = Vec::with_capacity(args.latency_tasks);
        let cpu_before = probe.sample();
        let started = Instant::now();
        for _ in 0..args.latency_tasks {
            tick.tick().await;
            let client = client.clone();
            let url = url.to_string();
            let body = body.clone();
            posts.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = client.post(url).json(&*body).send().await?;
                anyhow::ensure!(r.status() == 201, "POST: {}", r.status());
                Ok(t.elapsed())
            }));
        }
        let mut post_ms = Vec::with_capacity(posts.len());
        for p in posts {
            post_ms.push(p.await??.as_secs_f64() * 1000.0);
        }
        let offered = args.latency_tasks as f64 / started.elapsed().as_secs_f64();
        wait_complete(env, args.latency_tasks as i64).await?;
        let cpu_after = probe.sample();
        let db = env.db().await?;
        let row = db
            .query_one(
                "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY ms), max(ms)::float8
                   FROM (SELECT (extract(epoch FROM started_at - created_at) * 1000)::float8 AS ms
                           FROM jobs WHERE status = 'COMPLETE') l",
                &[],
            )
            .await?;
        let p: Vec<f64> = row.get(0);
        let max: f64 = row.get::<_, Option<f64>>(1).unwrap_or(0.0);
        post_ms.sort_by(f64::total_cmp);
        println!(
            "steady {:.0} tasks/s offered ({} tasks): create->RUNNING p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            offered, args.latency_tasks, p[0], p[1], p[2], max
        );
        println!(
            "  POST (client side): p50 {:.2} ms, p99 {:.2} ms",
            pct(&post_ms, 0.5),
            pct(&post_ms, 0.99)
        );
        breakdown(env).await?;
        probe.report(&cpu_before, &cpu_after, args.latency_tasks, "jobs");
        reset(env).await?;
        Ok(p[0])
    }
}

/// Where the time of each job went, from its own timestamps.
async fn breakdown(env: &Env) -> anyhow::Result<()> {
    let db = env.db().await?;
    let row = db
        .query_one(
            "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM assigned_at - created_at)::float8 * 1000),
                    percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - assigned_at)::float8 * 1000),
                    percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at)::float8 * 1000)
               FROM jobs WHERE status = 'COMPLETE'",
            &[],
        )
        .await?;
    let (a, b, c): (Vec<f64>, Vec<f64>, Vec<f64>) = (row.get(0), row.get(1), row.get(2));
    println!(
        "  p50/p99 ms: created->assigned {:.2}/{:.2}, assigned->RUNNING {:.2}/{:.2}, RUNNING->COMPLETE {:.2}/{:.2}",
        a[0], a[1], b[0], b[1], c[0], c[1]
    );
    Ok(())
}

pub(crate) fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Defines a script `true` and a task that runs it; returns the URL that
/// runs the task.
async fn script_task(client: &reqwest::Client, gw: &str, customer: &str) -> anyhow::Result<String> {
    let script: serde_json::Value = client
        .post(format!("{gw}/{customer}/script"))
        .json(&serde_json::json!({"name": "true", "filename": "true.sh", "content": "#!/bin/sh\ntrue\n"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let task: serde_json::Value = client
        .post(format!("{gw}/{customer}/task"))
        .json(&serde_json::json!({"name": "true", "script_id": script["id"]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = task["id"].as_str().context("task id")?;
    Ok(format!("{gw}/{customer}/task/{id}/job"))
}

async fn post_burst(
    client: &reqwest::Client,
    url: &str,
    body: &Arc<serde_json::Value>,
    n: usize,
    clients: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (client, url, body, next) =
            (client.clone(), url.to_string(), body.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let r = client.post(&url).json(&*body).send().await?;
                anyhow::ensure!(r.status() == 201, "POST: {}", r.status());
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(())
}

async fn wait_complete(env: &Env, n: i64) -> anyhow::Result<()> {
    // By customer and status: a range of `jobs_by_status`, not a scan of
    // the table (which, beside a backlog, was the bench's own load).
    let count = format!(
        "SELECT count(*) FROM jobs WHERE status = 'COMPLETE'
            AND customer_id = (SELECT id FROM customers WHERE name = '{}')",
        env.customer.replace('\'', "''")
    );
    wait_count(
        env,
        &count,
        n,
        "tasks completed",
        Duration::from_secs(600),
        Duration::from_millis(20),
    )
    .await
}

/// Polls `count_sql` (one bigint) until it reaches `n`, for at most
/// `bound`: `every` so often near the end, less often while far from it
/// (a quarter of the time the rate so far says is left, at most 250 ms).
/// Each poll counts a whole table in PostgreSQL, the bench's own load on
/// what it measures: every 20 ms all along, it was a tenth of a core.
pub(crate) async fn wait_count(
    env: &Env,
    count_sql: &str,
    n: i64,
    what: &str,
    bound: Duration,
    every: Duration,
) -> anyhow::Result<()> {
    let db = env.db().await?;
    let started = Instant::now();
    let deadline = started + bound;
    let mut first = None;
    loop {
        let done: i64 = db.query_one(count_sql, &[]).await?.get(0);
        if done >= n {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "only {done} of {n} {what}");
        let first = *first.get_or_insert(done);
        tokio::time::sleep(poll_wait(done - first, n - done, started.elapsed(), every)).await;
    }
}

/// How long to wait before the next poll: a quarter of what is left at
/// the rate seen so far (`progress` in `elapsed`), between `every` and
/// 250 ms.
fn poll_wait(progress: i64, left: i64, elapsed: Duration, every: Duration) -> Duration {
    let rate = progress as f64 / elapsed.as_secs_f64().max(1e-3);
    if rate <= 0.0 {
        return every;
    }
    Duration::from_secs_f64((left as f64 / rate / 4.0).min(0.25)).max(every)
}

/// Removes finished jobs so each phase measures only its own.
async fn reset(env: &Env) -> anyhow::Result<()> {
    let db = env.db().await?;
    db.batch_execute("DELETE FROM jobs WHERE status = 'COMPLETE'")
        .await
        .context("resetting between phases")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::poll_wait;
    use std::time::Duration;

    const EVERY: Duration = Duration::from_millis(20);

    #[test]
    fn far_from_the_end_polls_wait_longer_and_near_it_every_20_ms() {
        // 1,000 done in a second, 10,000 left: 2.5 s away, wait the cap.
        let far = poll_wait(1_000, 10_000, Duration::from_secs(1), EVERY);
        assert_eq!(far, Duration::from_millis(250));
        // 400 left at 1,000/s: 0.4 s away, wait a quarter of it.
        let near = poll_wait(1_000, 400, Duration::from_secs(1), EVERY);
        assert_eq!(near, Duration::from_millis(100));
        // 20 left: never less than `every`.
        assert_eq!(poll_wait(1_000, 20, Duration::from_secs(1), EVERY), EVERY);
        // No progress seen yet: `every`.
        assert_eq!(poll_wait(0, 10_000, Duration::from_secs(1), EVERY), EVERY);
    }
}
