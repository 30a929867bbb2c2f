//! End to end: the real gateway, dispatchers and agents against the real
//! PostgreSQL and RabbitMQ. What the API alone answers (bad input, tenants,
//! paging, registrations) is tested in process in `gateway/tests/api`.

use orq_e2e::{Env, agent_config, create_task, eventually, rows_csv};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// An automation that appends each row (JSON on stdin) to `$ORQ_ROWS_OUT`.
const RECORD: &[&str] = &["sh", "-c", "cat >> \"$ORQ_ROWS_OUT\""];

/// Every row id recorded by agents (files) and the HTTP bot, with counts.
fn recorded_rows(files: &[std::path::PathBuf], http_rows: &[String]) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for f in files {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
            if let Some(id) = v["row_id"].as_str() {
                *seen.entry(id.to_string()).or_insert(0) += 1;
            }
        }
    }
    for id in http_rows {
        *seen.entry(id.clone()).or_insert(0) += 1;
    }
    seen
}

async fn all_in(env: &Env, status: &str, n: i64) -> anyhow::Result<Option<()>> {
    let db = env.db().await?;
    let row = db
        .query_one("SELECT count(*) FROM jobs WHERE status = $1", &[&status])
        .await?;
    Ok((row.get::<_, i64>(0) == n).then_some(()))
}

/// Starts `n` agents whose automation records each row in a file of its own;
/// returns them and their files.
async fn start_recording_agents(
    env: &Env,
    gw: &str,
    config: &std::path::Path,
    n: usize,
) -> anyhow::Result<(Vec<orq_e2e::Proc>, Vec<std::path::PathBuf>)> {
    let mut agents = Vec::new();
    let mut files = Vec::new();
    for i in 0..n {
        let out = env.dir.join(format!("rows-{i}.jsonl"));
        let out_s = out.display().to_string();
        agents.push(
            env.start_agent(
                gw,
                &format!("agent-{i}"),
                config,
                &[("ORQ_ROWS_OUT", &out_s)],
            )
            .await?,
        );
        files.push(out);
    }
    Ok((agents, files))
}

/// An agent of capacity 1 for system `Slow`, whose automation records each
/// row in `out` and then sleeps.
struct SlowAgent {
    config: std::path::PathBuf,
    out: std::path::PathBuf,
}

impl SlowAgent {
    fn new(env: &Env, sleep_s: &str) -> anyhow::Result<SlowAgent> {
        let script = format!("cat >> \"$ORQ_ROWS_OUT\"; sleep {sleep_s}");
        let config = agent_config(
            &env.dir,
            "agent.toml",
            1,
            &[("Slow", &["sh", "-c", &script])],
        )?;
        Ok(SlowAgent {
            config,
            out: env.dir.join("rows.jsonl"),
        })
    }

    async fn start(&self, env: &Env, gw: &str, name: &str) -> anyhow::Result<orq_e2e::Proc> {
        let out = self.out.display().to_string();
        env.start_agent(gw, name, &self.config, &[("ORQ_ROWS_OUT", &out)])
            .await
    }
}

/// A stand-in for the proof of concept's Flask bot: accepts `POST /tasks`,
/// then uses only the seed's REST calls (`GET /bots?ip_address=`,
/// `PUT /tasks/{id}`, `PUT /bots/{id}`), authenticating with
/// `?access_token=` — the token an admin issued for it once it was
/// created (`POST /bots/{id}/token`), set in `token`.
/// (gateway URL, token, the bot's IP, rows it ran).
type BotState = (String, Arc<Mutex<String>>, String, Arc<Mutex<Vec<String>>>);

struct HttpBot {
    rows: Arc<Mutex<Vec<String>>>,
    port: u16,
    token: Arc<Mutex<String>>,
}

impl HttpBot {
    /// Issues the bot `id` its own token (as an admin does) and gives it to
    /// this stand-in.
    async fn hold(&self, client: &reqwest::Client, gw: &str, id: &str) -> anyhow::Result<()> {
        let r = client.post(format!("{gw}/bots/{id}/token")).send().await?;
        anyhow::ensure!(r.status() == 201, "bot token: {}", r.text().await?);
        let issued: Value = r.json().await?;
        let token = issued["access_token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Ok(mut t) = self.token.lock() {
            *t = token;
        }
        Ok(())
    }
}

async fn start_http_bot(gateway: String, ip: &str) -> anyhow::Result<HttpBot> {
    use axum::routing::post;
    let listener = tokio::net::TcpListener::bind(format!("{ip}:0")).await?;
    let port = listener.local_addr()?.port();
    let rows = Arc::new(Mutex::new(Vec::new()));
    let token = Arc::new(Mutex::new(String::new()));
    let state = (gateway, token.clone(), ip.to_string(), rows.clone());
    let app = axum::Router::new()
        .route(
            "/tasks",
            post(
                |axum::extract::State((gw, token, ip, rows)): axum::extract::State<BotState>,
                 axum::Json(task): axum::Json<Value>| async move {
                    let token = token.lock().map(|t| t.clone()).unwrap_or_default();
                    tokio::spawn(async move {
                        if let Err(e) = work(&gw, &token, &ip, &task, &rows).await {
                            eprintln!("http bot failed: {e:#}");
                        }
                    });
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(HttpBot { rows, port, token })
}

async fn work(
    gw: &str,
    token: &str,
    ip: &str,
    task: &Value,
    rows: &Mutex<Vec<String>>,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let q = [("access_token", token)];
    let bots: Value = http
        .get(format!("{gw}/bots"))
        .query(&q)
        .query(&[("ip_address", ip)])
        .send()
        .await?
        .json()
        .await?;
    let bot_id = bots[0]["id"].as_str().unwrap_or_default().to_string();
    let task_id = task["id"].as_str().unwrap_or_default();
    let put = |url: String, body: Value| {
        let http = http.clone();
        async move {
            let r = http.put(url).query(&q).json(&body).send().await?;
            anyhow::ensure!(
                r.status().is_success(),
                "PUT: {} {}",
                r.status(),
                r.text().await?
            );
            anyhow::Ok(())
        }
    };
    put(
        format!("{gw}/tasks/{task_id}"),
        json!({"status": "RUNNING"}),
    )
    .await?;
    put(format!("{gw}/bots/{bot_id}"), json!({"status": "BUSY"})).await?;
    let decoded =
        orq_e2e::orq_shared::attachment::parse(task["attachment"].as_str().unwrap_or_default())?;
    for row in decoded {
        if let Some(id) = row["row_id"].as_str()
            && let Ok(mut r) = rows.lock()
        {
            r.push(id.to_string());
        }
    }
    put(
        format!("{gw}/tasks/{task_id}"),
        json!({"status": "COMPLETE"}),
    )
    .await?;
    put(
        format!("{gw}/bots/{bot_id}"),
        json!({"status": "AVAILABLE"}),
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_tasks_through_three_agents_and_an_http_bot_oldest_first() -> anyhow::Result<()>
{
    let env = Env::new("flow").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let config = agent_config(&env.dir, "agent.toml", 2, &[("Count", RECORD)])?;
    let (agents, files) = start_recording_agents(&env, &gw, &config, 3).await?;
    let client = env.client();
    let http_bot = start_http_bot(gw.clone(), "127.0.0.2").await?;
    let r = client
        .post(format!("{gw}/bots"))
        .json(&json!({"name": "flask", "ip_address": "127.0.0.2", "port": http_bot.port, "systems": ["Count"]}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "create http bot: {}", r.text().await?);
    let created: Value = r.json().await?;
    http_bot
        .hold(&client, &gw, created["id"].as_str().unwrap_or_default())
        .await?;

    // Drain every bot, queue the work, and check nothing moved.
    let bots: Vec<Value> = client
        .get(format!("{gw}/bots"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(bots.len(), 4);
    for b in &bots {
        let r = client
            .post(format!(
                "{gw}/bots/{}/drain",
                b["id"].as_str().unwrap_or_default()
            ))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
    }
    const TASKS: usize = 200;
    const ROWS: usize = 3;
    for t in 0..TASKS {
        create_task(&client, &gw, "Count", &rows_csv(t, ROWS)).await?;
    }
    // Every creation woke the dispatcher; drained bots took nothing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    all_in(&env, "WAITING", TASKS as i64)
        .await?
        .ok_or_else(|| anyhow::anyhow!("a drained bot was given work"))?;
    for b in &bots {
        let r = client
            .post(format!(
                "{gw}/bots/{}/resume",
                b["id"].as_str().unwrap_or_default()
            ))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
    }
    eventually(Duration::from_secs(180), "all tasks COMPLETE", || {
        all_in(&env, "COMPLETE", TASKS as i64)
    })
    .await?;

    // Each row ran exactly once.
    let http_rows = http_bot.rows.lock().map(|r| r.clone()).unwrap_or_default();
    let seen = recorded_rows(&files, &http_rows);
    assert_eq!(seen.len(), TASKS * ROWS, "every row ran");
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "rows not run exactly once: {twice:?}");
    assert!(!http_rows.is_empty(), "the HTTP bot got work");
    for f in &files {
        assert!(f.exists(), "agent {} got work", f.display());
    }

    // One assignment per task, oldest first.
    let db = env.db().await?;
    let rows = db
        .query(
            "SELECT j.created_at, e.created_at, j.attempt
               FROM job_events e JOIN jobs j ON j.id = e.job_id
              WHERE e.to_status = 'ASSIGNED' ORDER BY e.created_at, j.created_at",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), TASKS, "exactly one assignment per task");
    let created: Vec<time::OffsetDateTime> = rows.iter().map(|r| r.get(0)).collect();
    for w in created.windows(2) {
        assert!(
            w[0] <= w[1],
            "a newer task was assigned before an older one"
        );
    }
    assert!(rows.iter().all(|r| r.get::<_, i32>(2) == 1));
    drop(agents);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_dispatchers_never_assign_a_task_twice() -> anyhow::Result<()> {
    let env = Env::new("twodisp").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _d1 = env.start_dispatcher("dispatcher-1", &[("ORQ_DISPATCHER__BATCH_SIZE", "4")])?;
    let _d2 = env.start_dispatcher("dispatcher-2", &[("ORQ_DISPATCHER__BATCH_SIZE", "4")])?;
    let config = agent_config(&env.dir, "agent.toml", 4, &[("Count", RECORD)])?;
    let (agents, files) = start_recording_agents(&env, &gw, &config, 3).await?;
    const TASKS: usize = 300;
    // Created from several clients at once, so both dispatchers race.
    let mut creators = Vec::new();
    for c in 0..6 {
        let client = env.client();
        let gw = gw.clone();
        creators.push(tokio::spawn(async move {
            for t in (c..TASKS).step_by(6) {
                create_task(&client, &gw, "Count", &rows_csv(t, 1)).await?;
            }
            anyhow::Ok(())
        }));
    }
    for c in creators {
        c.await??;
    }
    eventually(Duration::from_secs(180), "all tasks COMPLETE", || {
        all_in(&env, "COMPLETE", TASKS as i64)
    })
    .await?;
    let db = env.db().await?;
    let doubled = db
        .query(
            "SELECT job_id, count(*) FROM job_events WHERE to_status = 'ASSIGNED'
              GROUP BY job_id HAVING count(*) <> 1",
            &[],
        )
        .await?;
    assert!(
        doubled.is_empty(),
        "{} task(s) assigned more than once",
        doubled.len()
    );
    let seen = recorded_rows(&files, &[]);
    assert_eq!(seen.len(), TASKS);
    assert!(seen.values().all(|n| *n == 1), "a row ran twice");
    let d1 = std::fs::read_to_string(env.dir.join("dispatcher-1.log")).unwrap_or_default();
    assert!(!d1.contains("panicked"));
    drop(agents);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_killed_mid_task_finishes_it_once_after_restart() -> anyhow::Result<()> {
    let env = Env::new("kill").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let slow = SlowAgent::new(&env, "0.4")?;
    let mut agent = slow.start(&env, &gw, "victim").await?;
    let client = env.client();
    let task = create_task(&client, &gw, "Slow", &rows_csv(0, 8)).await?;
    let id = task["id"].as_str().unwrap_or_default().to_string();
    let done_before = env
        .task_until(&gw, &id, Duration::from_secs(30), "two rows done", |t| {
            let done = t["rows_done"].as_i64().unwrap_or(0);
            (done >= 2).then_some(done)
        })
        .await?;
    agent.kill9();
    let _agent = slow.start(&env, &gw, "victim").await?;
    eventually(Duration::from_secs(60), "task COMPLETE", || {
        all_in(&env, "COMPLETE", 1)
    })
    .await?;
    let db = env.db().await?;
    let completes: i64 = db
        .query_one(
            "SELECT count(*) FROM job_events WHERE to_status = 'COMPLETE'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(completes, 1, "the task finished exactly once");
    let t: Value = client
        .get(format!("{gw}/tasks/{id}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(t["attempt"], 1, "the same attempt resumed");
    assert_eq!(t["rows_done"], 8);
    let seen = recorded_rows(&[slow.out], &[]);
    assert_eq!(seen.len(), 8, "every row ran");
    for r in 0..done_before {
        assert_eq!(
            seen.get(&format!("t0r{r}")),
            Some(&1),
            "row {r}, reported done before the kill, ran again"
        );
    }
    assert!(
        seen.values().sum::<usize>() <= 9,
        "at most the row in flight at the kill ran twice"
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_http_bot_is_marked_unavailable_and_the_task_goes_elsewhere()
-> anyhow::Result<()> {
    let env = Env::new("unreachable").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let client = env.client();
    // Nothing listens on this port.
    let dead_port = orq_e2e::free_port();
    let bot: Value = client
        .post(format!("{gw}/bots"))
        .json(&json!({"name": "gone", "ip_address": "127.0.0.3", "port": dead_port, "systems": ["Count"]}))
        .send()
        .await?
        .json()
        .await?;
    let bot_id = bot["id"].as_str().unwrap_or_default().to_string();
    let task = create_task(&client, &gw, "Count", &rows_csv(0, 2)).await?;
    let id = task["id"].as_str().unwrap_or_default().to_string();
    eventually(
        Duration::from_secs(30),
        "the bot marked UNAVAILABLE",
        || {
            let (client, url) = (client.clone(), format!("{gw}/bots/{bot_id}"));
            async move {
                let b: Value = client.get(url).send().await?.json().await?;
                Ok((b["status"] == "UNAVAILABLE").then_some(()))
            }
        },
    )
    .await?;
    let t: Value = client
        .get(format!("{gw}/tasks/{id}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(t["status"], "WAITING", "the task waits for another bot");
    let events: Vec<Value> = client
        .get(format!("{gw}/tasks/{id}/events"))
        .send()
        .await?
        .json()
        .await?;
    assert!(
        events.iter().any(|e| e["type"] == "WARNING"
            && e["description"]
                .as_str()
                .unwrap_or_default()
                .contains("delivery")),
        "the failed delivery is in the history: {events:?}"
    );
    let out = env.dir.join("rows.jsonl");
    let out_s = out.display().to_string();
    let config = agent_config(&env.dir, "agent.toml", 1, &[("Count", RECORD)])?;
    let _agent = env
        .start_agent(&gw, "rescuer", &config, &[("ORQ_ROWS_OUT", &out_s)])
        .await?;
    eventually(Duration::from_secs(30), "task COMPLETE", || {
        all_in(&env, "COMPLETE", 1)
    })
    .await?;
    let t: Value = client
        .get(format!("{gw}/tasks/{id}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        t["attempt"], 2,
        "assigned twice: the dead bot, then the agent"
    );
    assert_eq!(recorded_rows(&[out], &[]).len(), 2);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_stops_promptly_on_sigterm() -> anyhow::Result<()> {
    let env = Env::new("sigterm").await?;
    let (mut gw_proc, gw) = env.start_gateway(&[]).await?;
    let mut dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let mut reaper = env.start_reaper(&[])?;
    let config = agent_config(&env.dir, "agent.toml", 1, &[("Count", RECORD)])?;
    let mut agent = env
        .start_agent(&gw, "bot", &config, &[("ORQ_ROWS_OUT", "/dev/null")])
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for proc in [&mut agent, &mut dispatcher, &mut reaper, &mut gw_proc] {
        assert!(
            proc.terminate(Duration::from_secs(10)),
            "{} did not exit within 10 s of SIGTERM:\n{}",
            proc.name,
            proc.log_text()
        );
    }
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_stopped_with_sigterm_finishes_its_running_job_first() -> anyhow::Result<()> {
    let env = Env::new("drainstop").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let slow = SlowAgent::new(&env, "0.3")?;
    let mut agent = slow.start(&env, &gw, "stopper").await?;
    let client = env.client();
    let task = create_task(&client, &gw, "Slow", &rows_csv(0, 5)).await?;
    let id = task["id"].as_str().unwrap_or_default().to_string();
    env.task_until(&gw, &id, Duration::from_secs(30), "RUNNING", |t| {
        (t["status"] == "RUNNING").then_some(())
    })
    .await?;
    assert!(
        agent.terminate(Duration::from_secs(20)),
        "the agent did not exit after finishing its job:\n{}",
        agent.log_text()
    );
    // It finished and reported before exiting, so no agent is needed now.
    eventually(Duration::from_secs(10), "task COMPLETE", || {
        all_in(&env, "COMPLETE", 1)
    })
    .await?;
    assert_eq!(recorded_rows(&[slow.out], &[]).len(), 5);
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_report_the_database_refuses_does_not_hold_back_the_others() -> anyhow::Result<()> {
    let env = Env::new("nulreport").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    // A failing row whose stderr holds a NUL byte, which PostgreSQL refuses
    // in text and jsonb.
    let nul: &[&str] = &[
        "sh",
        "-c",
        "cat > /dev/null; printf 'bad\\000byte' >&2; exit 1",
    ];
    let config = agent_config(
        &env.dir,
        "agent.toml",
        1,
        &[("Nul", nul), ("Count", RECORD)],
    )?;
    let _agent = env
        .start_agent(&gw, "bot", &config, &[("ORQ_ROWS_OUT", "/dev/null")])
        .await?;
    let client = env.client();
    let bad = create_task(&client, &gw, "Nul", &rows_csv(0, 1)).await?;
    let good = create_task(&client, &gw, "Count", &rows_csv(1, 1)).await?;
    let good_id = good["id"].as_str().unwrap_or_default();
    env.task_until(&gw, good_id, Duration::from_secs(30), "COMPLETE", |t| {
        (t["status"] == "COMPLETE").then_some(())
    })
    .await?;
    let t: Value = client
        .get(format!(
            "{gw}/tasks/{}",
            bad["id"].as_str().unwrap_or_default()
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(t["status"], "FAILED", "{t}");
    assert!(
        t["result"]["failed_rows"][0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("bad"),
        "{t}"
    );
    // The ERROR event names the row and what it said, not only a count.
    let events: Vec<Value> = client
        .get(format!(
            "{gw}/tasks/{}/events",
            bad["id"].as_str().unwrap_or_default()
        ))
        .send()
        .await?
        .json()
        .await?;
    let error = events
        .iter()
        .find(|e| e["type"] == "ERROR")
        .and_then(|e| e["description"].as_str())
        .unwrap_or_default();
    assert!(
        error.starts_with("1 of 1 rows failed: row 1: ") && error.contains("bad"),
        "{error:?} in {events:?}"
    );
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_assignment_is_sent_again_to_a_live_agent() -> anyhow::Result<()> {
    let env = Env::new("resend").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher(
        "dispatcher",
        &[
            ("ORQ_DISPATCHER__ASSIGN_TIMEOUT_MS", "2000"),
            ("ORQ_DISPATCHER__SWEEP_INTERVAL_MS", "500"),
        ],
    )?;
    let out = env.dir.join("rows.jsonl");
    let out_s = out.display().to_string();
    let config = agent_config(&env.dir, "agent.toml", 1, &[("Count", RECORD)])?;
    let mut agent = env
        .start_agent(&gw, "a", &config, &[("ORQ_ROWS_OUT", &out_s)])
        .await?;
    agent.kill9();
    let client = env.client();
    let task = create_task(&client, &gw, "Count", &rows_csv(0, 2)).await?;
    let id = task["id"].as_str().unwrap_or_default().to_string();
    let bot_id = env
        .task_until(&gw, &id, Duration::from_secs(10), "ASSIGNED", |t| {
            (t["status"] == "ASSIGNED")
                .then(|| t["bot_id"].as_str().unwrap_or_default().to_string())
        })
        .await?;
    // The assignment is lost: its message is gone from the bot's queue.
    let conn =
        lapin::Connection::connect(&env.amqp_url, lapin::ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let queue = orq_e2e::orq_shared::broker::Topology::new(&env.prefix).bot_queue(bot_id.parse()?);
    // ASSIGNED commits before the dispatcher publishes: wait for the message.
    let mut purged = 0;
    for _ in 0..100 {
        purged += ch
            .queue_purge(
                queue.as_str().into(),
                lapin::options::QueuePurgeOptions::default(),
            )
            .await?;
        if purged > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(purged, 1, "the assignment was in the bot's queue");
    let _ = conn.close(200, "done".into()).await;
    let _agent = env
        .start_agent(&gw, "a", &config, &[("ORQ_ROWS_OUT", &out_s)])
        .await?;
    eventually(Duration::from_secs(30), "task COMPLETE", || {
        all_in(&env, "COMPLETE", 1)
    })
    .await?;
    let t: Value = client
        .get(format!("{gw}/tasks/{id}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(t["attempt"], 1, "sent again, not reassigned: {t}");
    assert_eq!(recorded_rows(&[out], &[]).len(), 2);
    env.cleanup().await
}

#[tokio::test]
async fn a_canceled_csv_task_stops_on_its_agent() -> anyhow::Result<()> {
    let env = Env::new("cancelcsv").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    // Each row is recorded, then sleeps 30 s.
    let slow = SlowAgent::new(&env, "30")?;
    let _agent = slow.start(&env, &gw, "slow").await?;
    let client = env.client();
    let task = create_task(&client, &gw, "Slow", &rows_csv(0, 3)).await?;
    let id = task["id"].as_str().unwrap_or_default().to_string();
    eventually(Duration::from_secs(30), "the first row started", || async {
        Ok((recorded_rows(std::slice::from_ref(&slow.out), &[]).len() == 1).then_some(()))
    })
    .await?;
    let r = client
        .post(format!("{gw}/tasks/{id}/cancel"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    // The agent stops the row: its slot frees, so the next task starts
    // long before the canceled row's 30 s are over.
    let next = create_task(&client, &gw, "Slow", "row_id,payload\nnext,x\n").await?;
    let next_id = next["id"].as_str().unwrap_or_default().to_string();
    env.task_until(&gw, &next_id, Duration::from_secs(15), "RUNNING", |t| {
        (t["status"] == "RUNNING").then_some(())
    })
    .await?;
    // RUNNING is reported as the row's process starts; it records the row
    // a moment later.
    let rows = eventually(Duration::from_secs(15), "the next task's row", || async {
        let rows = recorded_rows(std::slice::from_ref(&slow.out), &[]);
        Ok(rows.contains_key("next").then_some(rows))
    })
    .await?;
    assert!(
        !rows.contains_key("t0r1"),
        "rows after the canceled one never ran: {rows:?}"
    );
    env.cleanup().await
}
