//! `docker-compose.yml` and `deploy/Dockerfile` run for real, the way the
//! README's Compose section says, with podman and podman-compose: no Docker
//! engine runs on these machines and no image registry can be reached, so
//! `images` builds what the compose file would pull (`compose.rs` reads the
//! same files; this runs them):
//!
//! 1. `up postgres rabbitmq gateway dispatcher timeout-reaper`, until the
//!    compose file's healthchecks pass (the test runs them: podman schedules
//!    healthchecks with systemd timers, and no systemd runs here) and the
//!    dispatcher and the reaper are ready;
//! 2. the README's `exec gateway gateway admin create-customer acme` and
//!    `create-token --customer acme --role bot`;
//! 3. `up --scale bot-agent=3 bot-agent` with that token;
//! 4. 100 CSV tasks, all COMPLETE on three distinct bots: the replicas,
//!    named after their containers' host names, reaching the gateway,
//!    RabbitMQ and PostgreSQL by service name;
//! 5. scaled to one: the two agents let go get SIGTERM, finish the tasks
//!    they were running and exit 0 within the stop grace period; tasks not
//!    started yet finish on the agent kept;
//! 6. `down --volumes`, leaving no container, volume or network behind.
//!
//! * `podman` – podman and podman-compose as argv, the project's clean-up;
//! * `images` – the base image, the stand-ins, our image;
//! * `api`    – tasks posted to the gateway and waited for.

mod api;
mod images;
mod podman;

use anyhow::{Context, anyhow, ensure};
use api::{get, list_tasks, post_tasks, text, token, until_complete};
use podman::{Compose, Podman};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The compose project's name: its own per run (`-<pid>`), so two runs on
/// one machine never share containers, volumes or networks.
const PROJECT: &str = "orq-compose-test";
const CUSTOMER: &str = "acme";
const AGENTS: u32 = 3;
/// Step 4: this many tasks of this many rows.
const TASKS: usize = 100;
const ROWS: usize = 2;
/// Step 5: tasks long enough (0.3 s a row) to be running at the scale-down.
const DRAIN_TASKS: usize = 8;
const DRAIN_ROWS: usize = 15;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_file_runs_scales_to_three_agents_and_drains_back_to_one() -> anyhow::Result<()>
{
    let started = Instant::now();
    let root = std::fs::canonicalize(orq_e2e::repo_root())?;
    let podman = Podman::new(root.join("e2e/tests/compose_up/containers.conf")).await?;
    let images = images::prepare(&podman, &root).await?;
    eprintln!("compose test: images ready after {:.1?}", started.elapsed());

    let port = orq_e2e::free_port();
    let secret: [u8; 32] = rand::random();
    let env = [
        ("ORQ_IMAGE", images.orquestra.clone()),
        ("ORQ_POSTGRES_IMAGE", images.postgres.clone()),
        ("ORQ_RABBITMQ_IMAGE", images.rabbitmq.clone()),
        ("ORQ_GATEWAY_PUBLISH", format!("127.0.0.1:{port}")),
        ("ORQ_PUBLIC_URL", format!("http://127.0.0.1:{port}")),
        (
            "ORQ_SECRET_KEY",
            secret.iter().map(|b| format!("{b:02x}")).collect(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let project = format!("{PROJECT}-{}", std::process::id());
    let mut compose = Compose::new(podman, podman_compose(), &root, &project, env).await?;
    let gateway = format!("http://127.0.0.1:{port}");
    let outcome = scenario(&mut compose, &gateway, &root).await;
    let outcome = outcome.map_err(|e| {
        anyhow!(
            "{e:#}\n\nthe compose project's containers:\n{}",
            compose.diagnostics()
        )
    });
    let down = tokio::task::block_in_place(|| compose.down_blocking());
    outcome?;
    down?;
    eprintln!("compose test: passed in {:.1?}", started.elapsed());
    Ok(())
}

/// podman-compose from `deploy/test.sh`'s virtualenv (beside
/// `ORQ_TEST_PYTHON`), `ORQ_TEST_PODMAN_COMPOSE`, or the PATH's.
fn podman_compose() -> PathBuf {
    if let Some(program) = std::env::var_os("ORQ_TEST_PODMAN_COMPOSE") {
        return program.into();
    }
    if let Some(python) = std::env::var_os("ORQ_TEST_PYTHON") {
        let beside = Path::new(&python).with_file_name("podman-compose");
        if beside.is_file() {
            return beside;
        }
    }
    "podman-compose".into()
}

async fn scenario(compose: &mut Compose, gateway: &str, root: &Path) -> anyhow::Result<()> {
    let step = Instant::now();
    compose
        .run([
            "up",
            "--detach",
            "--no-build",
            "postgres",
            "rabbitmq",
            "gateway",
            "dispatcher",
            "timeout-reaper",
        ])
        .await?;
    for service in ["postgres", "rabbitmq", "gateway"] {
        healthy(compose, service).await?;
    }
    for service in ["dispatcher", "timeout-reaper"] {
        ready_inside(compose, service).await?;
    }
    let answer = reqwest::get(format!("{gateway}/readyz")).await?;
    ensure!(
        answer.status().is_success(),
        "the gateway published on {gateway} answers /readyz with {}",
        answer.status()
    );
    eprintln!("compose test: 1. up and healthy in {:.1?}", step.elapsed());

    // 2. The README's commands (`docker compose exec -T …`).
    let customer = admin(compose, &["gateway", "admin", "create-customer", CUSTOMER]).await?;
    let admin_token = token(&customer)?;
    let bot = admin(
        compose,
        &[
            "gateway",
            "admin",
            "create-token",
            "--customer",
            CUSTOMER,
            "--role",
            "bot",
        ],
    )
    .await?;
    compose.set_env("ORQ_BOT_TOKEN", &token(&bot)?);
    let client = orq_e2e::client_with(&admin_token);

    // 3.
    let step = Instant::now();
    let scale = format!("bot-agent={AGENTS}");
    compose
        .run([
            "up",
            "--detach",
            "--no-build",
            "--scale",
            &scale,
            "bot-agent",
        ])
        .await?;
    let replicas = compose.containers("bot-agent").await?;
    ensure!(
        replicas.len() == AGENTS as usize && replicas.iter().all(|c| c.running),
        "--scale {scale} made {replicas:?}"
    );
    // Replica number -> the bot it registered, by its host name.
    let mut hostnames = BTreeMap::new();
    for replica in &replicas {
        let hostname = compose
            .podman
            .inspect(&replica.id, "{{.Config.Hostname}}")
            .await?;
        hostnames.insert(replica.number, hostname);
    }
    let bots = orq_e2e::eventually(
        Duration::from_secs(90),
        "a bot AVAILABLE for each replica, named after its host name",
        || async {
            let listed = get(&client, &format!("{gateway}/bots?limit=1000")).await?;
            let by_name: BTreeMap<&str, &Value> = listed
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|b| Some((b["name"].as_str()?, b)))
                        .collect()
                })
                .unwrap_or_default();
            let mut bots = BTreeMap::new();
            for (number, hostname) in &hostnames {
                match by_name.get(hostname.as_str()) {
                    Some(b) if b["status"] == "AVAILABLE" => {
                        bots.insert(*number, text(b, "id")?);
                    }
                    _ => return Ok(None),
                }
            }
            Ok(Some(bots))
        },
    )
    .await?;
    eprintln!(
        "compose test: 3. {AGENTS} agents registered in {:.1?}",
        step.elapsed()
    );

    // 4.
    let step = Instant::now();
    let first = post_tasks(&client, gateway, 0, TASKS, ROWS).await?;
    let done = until_complete(&client, gateway, &first, Duration::from_secs(240)).await?;
    let mut per_bot: BTreeMap<String, usize> = BTreeMap::new();
    for task in done.values() {
        ensure!(
            task["rows_done"] == ROWS,
            "task {} is COMPLETE with rows_done {} of {ROWS}",
            task["id"],
            task["rows_done"]
        );
        *per_bot.entry(text(task, "bot_id")?).or_default() += 1;
    }
    let expected: BTreeSet<&String> = bots.values().collect();
    ensure!(
        per_bot.keys().collect::<BTreeSet<_>>() == expected,
        "{TASKS} tasks ran on {per_bot:?}, not on each of the {AGENTS} replicas' bots {bots:?}"
    );
    eprintln!(
        "compose test: 4. {TASKS} tasks COMPLETE in {:.1?}, per bot {:?}",
        step.elapsed(),
        per_bot.values().collect::<Vec<_>>()
    );

    // 5.
    drain(compose, &client, gateway, root, &bots).await
}

/// Scales to one replica while the others run tasks: they must finish them
/// and exit 0 before their stop grace period ends, and what was not started
/// yet must finish on the replica kept.
async fn drain(
    compose: &Compose,
    client: &reqwest::Client,
    gateway: &str,
    root: &Path,
    bots: &BTreeMap<u32, String>,
) -> anyhow::Result<()> {
    let step = Instant::now();
    let kept = bots.get(&1).context("no bot for replica 1")?.clone();
    let leaving: BTreeSet<String> = bots
        .iter()
        .filter(|(n, _)| **n > 1)
        .map(|(_, b)| b.clone())
        .collect();
    let batch = post_tasks(client, gateway, TASKS, DRAIN_TASKS, DRAIN_ROWS).await?;
    // Each leaving bot is in the middle of a task (a row done, more to do).
    let running = orq_e2e::eventually(
        Duration::from_secs(90),
        "each replica to be let go running a task",
        || async {
            let tasks = list_tasks(client, gateway).await?;
            let running: Vec<(String, String, i64)> = batch
                .iter()
                .filter_map(|id| tasks.get(id))
                .filter(|t| t["status"] == "RUNNING")
                .filter_map(|t| {
                    Some((
                        t["id"].as_str()?.to_string(),
                        t["bot_id"].as_str()?.to_string(),
                        t["attempt"].as_i64()?,
                    ))
                })
                .filter(|(_, bot, _)| leaving.contains(bot))
                .collect();
            let mid = |bot: &String| {
                running.iter().any(|(id, b, _)| {
                    b == bot
                        && tasks[id]["rows_done"]
                            .as_u64()
                            .is_some_and(|d| d >= 1 && d < DRAIN_ROWS as u64)
                })
            };
            Ok(leaving.iter().all(mid).then_some(running))
        },
    )
    .await?;

    // What an operator types; podman-compose 1.x only ever adds replicas,
    // so the surplus is then stopped and removed the way docker compose
    // does it: SIGTERM, the service's stop_grace_period, then SIGKILL.
    let grace = stop_grace_period(root, "bot-agent")?;
    compose
        .run([
            "up",
            "--detach",
            "--no-build",
            "--scale",
            "bot-agent=1",
            "bot-agent",
        ])
        .await?;
    let surplus: Vec<_> = compose
        .containers("bot-agent")
        .await?
        .into_iter()
        .filter(|c| c.number > 1)
        .collect();
    let stopping = Instant::now();
    let mut stop = vec![
        "stop".to_string(),
        "--time".into(),
        grace.as_secs().to_string(),
    ];
    stop.extend(surplus.iter().filter(|c| c.running).map(|c| c.name.clone()));
    compose.podman.output(&stop).await?;
    let stopped_in = stopping.elapsed();
    // Once they are gone, what is not COMPLETE was either running there
    // (its report on its way: it must end there, in the same attempt) or
    // is for the replica kept, including what the dispatcher handed the
    // leaving agents after they stopped taking work.
    let mut reported_late = BTreeMap::new();
    let mut for_the_kept = Vec::new();
    for (id, task) in list_tasks(client, gateway)
        .await?
        .into_iter()
        .filter(|(id, _)| batch.contains(id))
    {
        match task["status"].as_str() {
            Some("COMPLETE") => {}
            Some("RUNNING") if task["bot_id"].as_str().is_some_and(|b| leaving.contains(b)) => {
                reported_late.insert(id, (text(&task, "bot_id")?, task["attempt"].clone()));
            }
            _ => for_the_kept.push(id),
        }
    }
    for replica in &surplus {
        let code = compose
            .podman
            .inspect(&replica.id, "{{.State.ExitCode}}")
            .await?;
        ensure!(
            code == "0",
            "{} exited {code} when stopped (137: killed at the end of its {grace:?} grace)",
            replica.name
        );
        compose.podman.output(["rm", &replica.id]).await?;
    }
    ensure!(
        stopped_in < grace,
        "the agents let go took {stopped_in:.1?} to stop, not less than their grace {grace:?}"
    );
    let left = compose.containers("bot-agent").await?;
    ensure!(
        left.len() == 1 && left[0].number == 1 && left[0].running,
        "after scaling to 1: {left:?}"
    );

    let done = until_complete(client, gateway, &batch, Duration::from_secs(240)).await?;
    for (id, bot, attempt) in &running {
        let task = &done[id];
        ensure!(
            task["bot_id"] == bot.as_str() && task["attempt"] == *attempt,
            "task {id}, running on {bot} (attempt {attempt}) when its agent got SIGTERM, was not finished there: it ended on {} (attempt {})",
            task["bot_id"],
            task["attempt"]
        );
    }
    for (id, (bot, attempt)) in &reported_late {
        ensure!(
            done[id]["bot_id"] == bot.as_str() && done[id]["attempt"] == *attempt,
            "task {id}, RUNNING on {bot} when its agent had exited, ended on {} (attempt {}, was {attempt})",
            done[id]["bot_id"],
            done[id]["attempt"]
        );
    }
    for id in &for_the_kept {
        ensure!(
            done[id]["bot_id"] == kept.as_str(),
            "task {id}, not started when the other agents were gone, ended on {} rather than the replica kept ({kept})",
            done[id]["bot_id"]
        );
    }
    orq_e2e::eventually(
        Duration::from_secs(60),
        "the bots let go to be UNAVAILABLE",
        || async {
            let listed = get(client, &format!("{gateway}/bots?limit=1000")).await?;
            let gone = listed.as_array().is_some_and(|a| {
                a.iter()
                    .filter(|b| b["id"].as_str().is_some_and(|id| leaving.contains(id)))
                    .all(|b| b["status"] == "UNAVAILABLE")
            });
            Ok(gone.then_some(()))
        },
    )
    .await?;
    eprintln!(
        "compose test: 5. scaled to 1 in {:.1?}: {} running tasks drained in {stopped_in:.1?}, {} more finished on the replica kept",
        step.elapsed(),
        running.len(),
        for_the_kept.len()
    );
    ensure!(
        !for_the_kept.is_empty(),
        "no task was left for the replica kept: post more than {DRAIN_TASKS} tasks"
    );
    Ok(())
}

/// Runs `service`'s healthcheck from the compose file until it passes.
async fn healthy(compose: &Compose, service: &str) -> anyhow::Result<()> {
    let container = compose.container(service).await?;
    let deadline = Instant::now() + Duration::from_secs(180);
    while !compose.podman.healthy(&container.name).await? {
        if Instant::now() > deadline {
            let health = compose
                .podman
                .inspect(&container.name, "{{json .State.Health}}")
                .await?;
            anyhow::bail!("{service} is not healthy after 180 s: {health}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// A service without a healthcheck in the compose file: its /readyz (its
/// database and broker are reachable), asked inside its container.
async fn ready_inside(compose: &Compose, service: &str) -> anyhow::Result<()> {
    let container = compose.container(service).await?;
    let probe = [
        "exec",
        container.name.as_str(),
        "curl",
        "-fsS",
        "http://localhost:9100/readyz",
    ];
    let deadline = Instant::now() + Duration::from_secs(120);
    while !compose.podman.succeeds(probe).await? {
        ensure!(
            Instant::now() < deadline,
            "{service} is not ready (its /readyz on 9100) after 120 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Ok(())
}

/// `exec -T gateway <args…>`: the admin CLI's JSON answer.
async fn admin(compose: &Compose, args: &[&str]) -> anyhow::Result<Value> {
    let mut argv = vec!["exec", "-T", "gateway"];
    argv.extend_from_slice(args);
    let out = compose.run(&argv).await?;
    serde_json::from_str(out.trim()).with_context(|| format!("{argv:?} printed {out:?}"))
}

/// A service's `stop_grace_period` in docker-compose.yml (compose's
/// default is 10 s).
fn stop_grace_period(root: &Path, service: &str) -> anyhow::Result<Duration> {
    let text = std::fs::read_to_string(root.join("docker-compose.yml"))?;
    let mut yaml: serde_yaml::Value = serde_yaml::from_str(&text)?;
    yaml.apply_merge()?;
    match yaml["services"][service]["stop_grace_period"].as_str() {
        None => Ok(Duration::from_secs(10)),
        Some(value) => orq_e2e::compose_duration(value)
            .with_context(|| format!("{service}'s stop_grace_period")),
    }
}
