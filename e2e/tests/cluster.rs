//! A three-node RabbitMQ cluster with one node SIGKILLed under load and
//! started again: every service moves to a live node by itself (each is
//! given all three URLs), the quorum queues keep every confirmed message,
//! and nothing accepted is lost or done twice.

use orq_e2e::{Env, Proc, RabbitCluster};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TASKS: usize = 200;
const ROWS: usize = 2;
/// Between two posts: 200 tasks over about 20 s.
const PACE: Duration = Duration::from_millis(100);

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Seconds from each "RabbitMQ connection lost" in a service's log to its
/// next "connected to RabbitMQ" (log lines start with an RFC 3339 time).
fn reconnects(log: &str) -> Vec<f64> {
    let at = |line: &str| {
        // Strip colour codes, then read the leading timestamp.
        let mut plain = String::new();
        let mut escape = false;
        for c in line.chars() {
            match (escape, c) {
                (false, '\x1b') => escape = true,
                (true, 'm') => escape = false,
                (true, _) => {}
                (false, c) => plain.push(c),
            }
        }
        let stamp = plain
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        time::OffsetDateTime::parse(&stamp, &time::format_description::well_known::Rfc3339).ok()
    };
    let mut gaps = Vec::new();
    let mut lost = None;
    for line in log.lines() {
        if line.contains("RabbitMQ connection lost") {
            lost = lost.or(at(line));
        } else if line.contains("connected to RabbitMQ")
            && !line.contains("not connected")
            && let (Some(from), Some(to)) = (lost.take(), at(line))
        {
            gaps.push((to - from).as_seconds_f64());
        }
    }
    gaps
}

/// Posts one CSV task under `key` until the gateway answers 201, retrying
/// with the same key on a connection error or a 5xx; the task's id and
/// how many attempts failed.
async fn post_until_created(
    client: &reqwest::Client,
    url: &str,
    key: &str,
) -> anyhow::Result<(String, usize)> {
    let mut csv = String::from("n\n");
    for r in 0..ROWS {
        csv.push_str(&format!("{r}\n"));
    }
    let body = json!({"description": key, "system": "Log",
                      "attachment": orq_e2e::orq_shared::attachment::encode(&csv)});
    let mut failures = 0;
    loop {
        let sent = client
            .post(url)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status() == 201 => {
                if let Ok(v) = r.json::<Value>().await {
                    return Ok((v["id"].as_str().unwrap_or_default().to_string(), failures));
                }
            }
            Ok(r) if r.status().is_server_error() => {}
            Ok(r) => anyhow::bail!("{key}: {} {}", r.status(), r.text().await?),
            Err(_) => {}
        }
        failures += 1;
        anyhow::ensure!(failures < 500, "{key}: never created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The AMQP connections per node (1-based), counted by the port each
/// client connected to.
fn connections_per_node(cluster: &RabbitCluster) -> anyhow::Result<Vec<usize>> {
    let text = cluster
        .node(1)
        .ctl_output(&["list_connections", "port", "--formatter", "json"])?;
    let list: Vec<Value> = serde_json::from_str(&text)?;
    Ok(cluster
        .nodes
        .iter()
        .map(|n| {
            list.iter()
                .filter(|c| c["port"].as_u64() == Some(u64::from(n.port)))
                .count()
        })
        .collect())
}

/// Each of this test's queues with its replica count, as node `n` sees it.
fn queue_members(
    cluster: &RabbitCluster,
    n: usize,
    prefix: &str,
) -> anyhow::Result<Vec<(String, String, usize)>> {
    let text = cluster.node(n).ctl_output(&[
        "list_queues",
        "name",
        "type",
        "members",
        "--formatter",
        "json",
    ])?;
    let list: Vec<Value> = serde_json::from_str(&text)?;
    Ok(list
        .iter()
        .filter_map(|q| {
            let name = q["name"].as_str()?;
            name.starts_with(prefix).then(|| {
                (
                    name.to_string(),
                    q["type"].as_str().unwrap_or_default().to_string(),
                    q["members"].as_array().map_or(0, Vec::len),
                )
            })
        })
        .collect())
}

/// The test's work queues (intake, reports, finish, the bots' own queues and
/// presence queues) are quorum queues with a replica on every node.
fn assert_replicated(
    cluster: &RabbitCluster,
    n: usize,
    prefix: &str,
    bots: usize,
) -> anyhow::Result<()> {
    let queues = queue_members(cluster, n, prefix)?;
    // intake, reports, finish, dead + a bot queue and a presence queue per bot.
    assert!(queues.len() >= 4 + 2 * bots, "queues: {queues:?}");
    for (name, kind, members) in &queues {
        assert_eq!(kind, "quorum", "{name}");
        assert_eq!(*members, 3, "{name} has a replica on each node");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_node_killed_under_load_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let booting = Instant::now();
    let mut cluster = RabbitCluster::start()?;
    eprintln!("three-node cluster up in {:.1?}", booting.elapsed());
    let env = Env::on("cluster", &orq_e2e::pg_admin_url(), &cluster.url()).await?;
    let outcome = run(&env, &mut cluster).await;
    env.cleanup().await?;
    drop(cluster);
    outcome
}

async fn run(env: &Env, cluster: &mut RabbitCluster) -> anyhow::Result<()> {
    let mut procs: Vec<Proc> = Vec::new();
    let (gateway, gw) = env.start_gateway(&[]).await?;
    procs.push(gateway);
    procs.push(env.start_dispatcher(
        "dispatcher",
        &[("ORQ_DISPATCHER__SWEEP_INTERVAL_MS", "500")],
    )?);
    // Heartbeats at the default 4 s (a 12 s silence window). With 1 s
    // heartbeats (a 3 s window) agents that moved to another node were
    // declared lost by silence in one run of six: their reports were nacked
    // for about 5.5 s after the node died (see the README's "Not done yet").
    procs.push(env.start_reaper(&[("ORQ_REAPER__TICK_MS", "200")])?);
    // Every row run is logged with its stable key and attempt.
    let log = env.dir.join("runs.log");
    let config = orq_e2e::logging_agent(
        &env.dir,
        "agent",
        2,
        "Log",
        &log,
        "$ORQ_IDEMPOTENCY_KEY $ORQ_ATTEMPT",
        "sleep 0.05",
    )?;
    for name in ["a1", "a2", "a3"] {
        procs.push(
            env.start_agent(
                &gw,
                name,
                &config,
                &[("ORQ_AGENT__HEARTBEAT_INTERVAL_MS", "4000")],
            )
            .await?,
        );
    }
    // Let every agent connect and hold its presence.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_replicated(cluster, 1, &env.prefix, 3)?;
    let spread = connections_per_node(cluster)?;
    let victim = spread
        .iter()
        .enumerate()
        .max_by_key(|(_, c)| **c)
        .map_or(1, |(i, _)| i + 1);
    eprintln!("connections per node: {spread:?}; killing node {victim}");

    // The load: one client posting a task every PACE under its own key.
    let url = format!("{gw}/tasks");
    let client = env.client();
    let retried = Arc::new(AtomicUsize::new(0));
    let load = {
        let retried = retried.clone();
        tokio::spawn(async move {
            let mut created = Vec::new();
            let mut next = tokio::time::Instant::now();
            for n in 0..TASKS {
                tokio::time::sleep_until(next).await;
                next += PACE;
                let key = format!("cluster-{n}");
                let (id, failures) = post_until_created(&client, &url, &key).await?;
                retried.fetch_add(failures, Ordering::SeqCst);
                created.push((key, id));
            }
            anyhow::Ok((created, epoch_now()))
        })
    };

    tokio::time::sleep(Duration::from_secs(6)).await;
    let killed_at = Instant::now();
    let killed_wall = epoch_now();
    cluster.kill9(victim)?;
    eprintln!("node {victim} SIGKILLed");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let restarting = Instant::now();
    let start_node = {
        // Booting blocks for seconds: off the runtime's threads.
        let cluster = &mut *cluster;
        tokio::task::block_in_place(move || cluster.start_node(victim))
    };
    start_node?;
    eprintln!(
        "node {victim} back in {:.1?} ({:.1?} after the kill)",
        restarting.elapsed(),
        killed_at.elapsed()
    );

    let (created, last_post) = load.await??;
    let retried = retried.load(Ordering::SeqCst);
    for (key, id) in &created {
        env.task_until(&gw, id, Duration::from_secs(90), "COMPLETE", |t| {
            (t["status"] == "COMPLETE").then_some(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    }

    let db = env.db().await?;
    // 0 duplicates: one task per key, the one its answer named.
    let rows = db
        .query(
            "SELECT description, id::text, attempt FROM jobs WHERE kind = 'system'",
            &[],
        )
        .await?;
    let stored: HashMap<String, (String, i32)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(rows.len(), TASKS, "one task per key");
    assert_eq!(stored.len(), TASKS, "no key twice");
    for (key, id) in &created {
        assert_eq!(stored.get(key).map(|s| &s.0), Some(id), "{key}");
    }
    let requeued = stored.values().filter(|(_, attempt)| *attempt > 1).count();
    // Agents declared lost, and the longest pause in completions around the kill.
    let lost: i64 = db
        .query_one(
            "SELECT count(*) FROM job_events WHERE type = 'WARNING'
                AND (description LIKE '%went silent%' OR description LIKE '%left RabbitMQ%')",
            &[],
        )
        .await?
        .get(0);
    let finished: Vec<f64> = db
        .query(
            "SELECT extract(epoch FROM finished_at)::float8 FROM jobs
              WHERE finished_at IS NOT NULL ORDER BY 1",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .filter(|f| *f >= killed_wall)
        .collect();
    let drained = finished.last().map_or(f64::NAN, |f| f - last_post);
    let first_after = finished.first().map_or(f64::NAN, |f| f - killed_wall);
    let longest_pause = finished.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    // How long a task took, created to COMPLETE (median and worst).
    let mut latency: Vec<f64> = db
        .query(
            "SELECT extract(epoch FROM finished_at - created_at)::float8 FROM jobs
              WHERE kind = 'system'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    latency.sort_by(f64::total_cmp);
    let median = latency.get(latency.len() / 2).copied().unwrap_or(f64::NAN);
    let worst = latency.last().copied().unwrap_or(f64::NAN);
    // Rows run more than once (only a row in flight at the kill may be).
    let runs = std::fs::read_to_string(&log)?;
    let mut counts = HashMap::<String, usize>::new();
    for line in runs.lines() {
        let key = line.split(' ').next().unwrap_or_default().to_string();
        *counts.entry(key).or_default() += 1;
    }
    let twice = counts.values().filter(|n| **n > 1).count();
    let survivors: Vec<_> = procs
        .iter_mut()
        .map(|p| (p.name.clone(), !p.exited()))
        .collect();
    let moved: Vec<String> = procs
        .iter()
        .flat_map(|p| {
            reconnects(&p.log_text())
                .into_iter()
                .map(|gap| format!("{} {gap:.2} s", p.name))
        })
        .collect();
    eprintln!(
        "{TASKS} tasks of {ROWS} rows: all COMPLETE, the last {drained:.2} s after the last \
         post; {retried} posts retried; reconnected to another node: {moved:?}; first completion after the kill {first_after:.2} s, \
         longest pause in completions after it {longest_pause:.2} s; \
         a task took {median:.2} s (median), {worst:.2} s at worst; {requeued} tasks requeued; \
         {lost} agents declared lost; {twice} rows run twice; connections then: {:?}",
        connections_per_node(cluster).unwrap_or_default()
    );
    for (name, alive) in &survivors {
        assert!(alive, "{name} exited: nobody restarts services here");
    }
    assert_eq!(counts.len(), TASKS * ROWS, "every row ran");
    assert_eq!(lost, 0, "no agent was declared lost");
    assert_eq!(requeued, 0, "no task was requeued");
    assert!(
        twice <= 6,
        "rows run twice: {twice}, more than were in flight"
    );
    // The node rejoined: every queue has its three replicas again.
    assert_replicated(cluster, victim, &env.prefix, 3)?;
    Ok(())
}
