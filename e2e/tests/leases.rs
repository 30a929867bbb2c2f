//! Leases and the timeout-reaper, end to end: the real services against the
//! real PostgreSQL and RabbitMQ.

use orq_e2e::{Env, agent_config, eventually};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

/// Defines a script and a task that runs it; returns the task's id.
async fn task(env: &Env, gw: &str, script: &str, extra: Value) -> anyhow::Result<String> {
    let c = &env.customer;
    let admin = env.client();
    let s: Value = admin
        .post(format!("{gw}/{c}/script"))
        .json(
            &json!({"name": "s", "filename": "s.sh", "content": format!("#!/bin/sh\n{script}\n")}),
        )
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut body = json!({"name": "t", "script_id": s["id"]});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    let t: Value = admin
        .post(format!("{gw}/{c}/task"))
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(id(&t))
}

/// Runs the task; returns the job's id.
async fn run(env: &Env, gw: &str, task: &str) -> anyhow::Result<String> {
    let created: Value = env
        .client()
        .post(format!("{gw}/{}/task/{task}/job", env.customer))
        .json(&json!({}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(id(&created))
}

async fn job(env: &Env, gw: &str, id: &str) -> anyhow::Result<Value> {
    Ok(env
        .client()
        .get(format!("{gw}/{}/job/{id}", env.customer))
        .send()
        .await?
        .json()
        .await?)
}

#[tokio::test]
async fn a_killed_agents_job_waits_again_and_finishes_once_on_another_bot() -> anyhow::Result<()> {
    let env = Env::new("lostbot").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let mut reaper_cmd = env.command("timeout-reaper");
    let ops = format!("127.0.0.1:{}", orq_e2e::free_port());
    reaper_cmd
        .env("ORQ_REAPER__HEARTBEAT_INTERVAL_MS", "1000")
        .env("ORQ_REAPER__TICK_MS", "200")
        .env("ORQ_OPS__LISTEN", &ops);
    let _reaper = env.spawn("timeout-reaper", reaper_cmd)?;
    let config = agent_config(&env.dir, "agent.toml", 1, &[])?;
    let mut first = env.start_agent(&gw, "first", &config, &[]).await?;
    let task = task(&env, &gw, "sleep 2", json!({})).await?;
    let job_id = run(&env, &gw, &task).await?;
    let running = eventually(Duration::from_secs(30), "RUNNING", || async {
        let j = job(&env, &gw, &job_id).await?;
        Ok((j["status"] == "RUNNING").then_some(j))
    })
    .await?;
    let lost_bot = running["bot_id"].as_str().unwrap_or_default().to_string();
    first.kill9();
    let killed = Instant::now();
    let _second = env.start_agent(&gw, "second", &config, &[]).await?;
    let waited = eventually(Duration::from_secs(30), "the job back in WAITING", || async {
        let db = env.db().await?;
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM job_events WHERE job_id = $1::text::uuid AND to_status = 'WAITING' AND from_status = 'RUNNING'",
                &[&job_id],
            )
            .await?
            .get(0);
        Ok((n == 1).then_some(killed.elapsed()))
    })
    .await?;
    eprintln!("requeued {waited:?} after the agent was killed (heartbeat 1 s, 3 missed)");
    let done = eventually(Duration::from_secs(30), "COMPLETE", || async {
        let j = job(&env, &gw, &job_id).await?;
        Ok((j["status"] == "COMPLETE").then_some(j))
    })
    .await?;
    assert_eq!(done["attempt"], 2, "{done}");
    assert_ne!(done["bot_id"], lost_bot.as_str(), "it ran on the other bot");
    let events: Vec<Value> = env
        .client()
        .get(format!("{gw}/{}/job/{job_id}/events", env.customer))
        .send()
        .await?
        .json()
        .await?;
    let completes = events
        .iter()
        .filter(|e| e["to_status"] == "COMPLETE")
        .count();
    assert_eq!(completes, 1, "{events:?}");
    // Lost on evidence: its connection to RabbitMQ closed (or, failing
    // that, its heartbeats stopped).
    assert!(
        events.iter().any(|e| e["type"] == "WARNING" && {
            let d = e["description"].as_str().unwrap_or_default();
            d.contains("left RabbitMQ") || d.contains("went silent")
        }),
        "{events:?}"
    );
    let bot: Value = env
        .client()
        .get(format!("{gw}/bots/{lost_bot}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(bot["status"], "UNAVAILABLE");
    // The bot's history says when and why.
    let causes: Vec<String> = env
        .db()
        .await?
        .query(
            "SELECT cause FROM bot_events WHERE bot_id = $1::text::uuid AND to_status = 'UNAVAILABLE'",
            &[&lost_bot],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(causes.len(), 1, "{causes:?}");
    assert!(causes[0].starts_with("lost: "), "{causes:?}");
    // The reaper timed how late it took the job back.
    let metrics = reqwest::get(format!("http://{ops}/metrics"))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("orq_expiry_lag_seconds_count{kind=\"absent_bot\"} 1")
            || metrics.contains("orq_expiry_lag_seconds_count{kind=\"silent_bot\"} 1"),
        "{metrics}"
    );
    assert_eq!(bot["active_jobs"], 0);
    env.cleanup().await
}

/// An automation that logs each run (agent, row, attempt, key), fails row
/// 2 and, on the agent named `slow_on`, hangs on row 3.
fn logging_automation(
    env: &Env,
    agent: &str,
    hang_row3: bool,
) -> anyhow::Result<std::path::PathBuf> {
    let log = env.dir.join("runs.log");
    let hang = if hang_row3 { "sleep 30" } else { ":" };
    let script = format!(
        "#!/bin/sh\ncat > /dev/null\necho \"{agent} $ORQ_ROW_NUMBER $ORQ_ATTEMPT $ORQ_IDEMPOTENCY_KEY $ORQ_JOB_ID\" >> {log}\nif [ \"$ORQ_ROW_NUMBER\" = 2 ]; then echo \"cannot create user 2\" >&2; exit 3; fi\nif [ \"$ORQ_ROW_NUMBER\" = 3 ]; then {hang}; fi\nexit 0\n",
        log = log.display()
    );
    let path = env.dir.join(format!("automation-{agent}.sh"));
    std::fs::write(&path, script)?;
    let argv = ["sh", path.to_str().unwrap_or_default()];
    agent_config(&env.dir, &format!("{agent}.toml"), 1, &[("Vivo360", &argv)])
}

#[tokio::test]
async fn a_csv_job_moved_to_another_agent_resumes_after_the_rows_done() -> anyhow::Result<()> {
    let env = Env::new("resume").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let _reaper = env.start_reaper(orq_e2e::REAPER_MATCHING_AGENTS)?;
    let mut first = env
        .start_agent(&gw, "first", &logging_automation(&env, "first", true)?, &[])
        .await?;
    let csv = orq_e2e::orq_shared::attachment::encode("n\n1\n2\n3\n4\n5\n");
    let job_id = env
        .create(
            &format!("{gw}/tasks"),
            &json!({"description": "users", "system": "Vivo360", "attachment": csv}),
        )
        .await?;
    let log = env.dir.join("runs.log");
    env.task_until(
        &gw,
        &job_id,
        Duration::from_secs(30),
        "rows 1-2 done, row 3 running",
        |t| {
            let running3 = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("first 3 ");
            (t["rows_done"] == 2 && running3).then_some(())
        },
    )
    .await?;
    first.kill9();
    let _second = env
        .start_agent(
            &gw,
            "second",
            &logging_automation(&env, "second", false)?,
            &[],
        )
        .await?;
    let done = env
        .task_until(&gw, &job_id, Duration::from_secs(60), "finished", |t| {
            (t["status"] == "FAILED" || t["status"] == "COMPLETE").then(|| t.clone())
        })
        .await?;
    assert_eq!(
        done["status"], "FAILED",
        "row 2 failed in the first attempt: {done}"
    );
    assert_eq!(done["attempt"], 2, "{done}");
    assert_eq!(done["rows_done"], 5, "{done}");
    assert_eq!(done["error"], "1 of 5 rows failed", "{done}");
    let failed = &done["result"]["failed_rows"];
    assert_eq!(failed.as_array().map(Vec::len), Some(1), "{done}");
    assert_eq!(failed[0]["row"], 2, "{done}");
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("cannot create user 2"),
        "the first attempt's error is kept: {done}"
    );
    let runs: Vec<Vec<String>> = std::fs::read_to_string(&log)?
        .lines()
        .map(|l| l.split(' ').map(str::to_string).collect())
        .collect();
    let summary: Vec<(String, String, String)> = runs
        .iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect();
    let expected: Vec<(String, String, String)> = [
        ("first", "1", "1"),
        ("first", "2", "1"),
        ("first", "3", "1"),
        ("second", "3", "2"),
        ("second", "4", "2"),
        ("second", "5", "2"),
    ]
    .iter()
    .map(|(a, r, n)| (a.to_string(), r.to_string(), n.to_string()))
    .collect();
    assert_eq!(
        summary, expected,
        "rows 1-2 ran once; only row 3, in flight at the kill, ran twice"
    );
    for r in &runs {
        assert_eq!(r[3], format!("{job_id}:{}", r[1]), "the row's key: {r:?}");
        assert_eq!(r[4], job_id, "{r:?}");
    }
    env.cleanup().await
}

fn alive(pid: i32) -> bool {
    // A zombie has no command line left; it is gone for our purpose.
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

#[tokio::test]
async fn no_script_or_automation_outlives_its_sigkilled_agent() -> anyhow::Result<()> {
    let env = Env::new("orphans").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let pids = env.dir.join("pids");
    // A CSV row whose automation sleeps, with a child of its own, and a
    // script job doing the same.
    let automation = env.dir.join("slow.sh");
    std::fs::write(
        &automation,
        format!(
            "#!/bin/sh\necho $$ >> {p}\nsleep 60 &\necho $! >> {p}\nwait\n",
            p = pids.display()
        ),
    )?;
    let argv = ["sh", automation.to_str().unwrap_or_default()];
    let config = agent_config(&env.dir, "agent.toml", 2, &[("Slow", &argv)])?;
    let mut agent = env.start_agent(&gw, "doomed", &config, &[]).await?;
    let task = task(
        &env,
        &gw,
        &format!(
            "echo $$ >> {p}\nsleep 60 &\necho $! >> {p}\nwait",
            p = pids.display()
        ),
        json!({}),
    )
    .await?;
    run(&env, &gw, &task).await?;
    let csv = orq_e2e::orq_shared::attachment::encode("n\n1\n");
    env.client()
        .post(format!("{gw}/tasks"))
        .json(&json!({"description": "slow", "system": "Slow", "attachment": csv}))
        .send()
        .await?
        .error_for_status()?;
    let started: Vec<i32> = eventually(
        Duration::from_secs(30),
        "four processes started",
        || async {
            let pids: Vec<i32> = std::fs::read_to_string(&pids)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            Ok((pids.len() == 4).then_some(pids))
        },
    )
    .await?;
    assert!(started.iter().all(|p| alive(*p)), "{started:?}");
    agent.kill9();
    let killed = Instant::now();
    eventually(
        Duration::from_secs(10),
        "every process of the jobs gone",
        || async { Ok(started.iter().all(|p| !alive(*p)).then_some(())) },
    )
    .await?;
    eprintln!(
        "the jobs' processes were gone {:?} after the agent's SIGKILL",
        killed.elapsed()
    );
    env.cleanup().await
}

#[tokio::test]
async fn an_agent_whose_attempt_was_taken_back_stops_running_it() -> anyhow::Result<()> {
    let env = Env::new("stalestop").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let log = env.dir.join("rows.log");
    let config = orq_e2e::logging_agent(
        &env.dir,
        "agent",
        1,
        "Slow",
        &log,
        "$ORQ_ROW_NUMBER",
        "sleep 0.5",
    )?;
    let agent = env.start_agent(&gw, "alive", &config, &[]).await?;
    let csv = orq_e2e::orq_shared::attachment::encode("n\n1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n");
    let job_id = env
        .create(
            &format!("{gw}/tasks"),
            &json!({"description": "long", "system": "Slow", "attachment": csv}),
        )
        .await?;
    env.task_until(&gw, &job_id, Duration::from_secs(30), "a row done", |t| {
        (t["rows_done"].as_i64().unwrap_or(0) >= 1).then_some(())
    })
    .await?;
    // The job is taken back as if its agent had been declared lost, while
    // the agent is alive and running it.
    env.db()
        .await?
        .execute(
            "UPDATE jobs SET status = 'WAITING', bot_id = NULL WHERE id = $1::text::uuid",
            &[&job_id],
        )
        .await?;
    // Its next report is refused (its rows kept) and the agent told to stop.
    let stopped = eventually(
        Duration::from_secs(20),
        "the agent stops the attempt",
        || async {
            Ok(agent
                .log_text()
                .contains("job canceled; stopping it")
                .then_some(()))
        },
    )
    .await;
    let ran_then = std::fs::read_to_string(&log)?.lines().count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ran_later = std::fs::read_to_string(&log)?.lines().count();
    stopped?;
    assert!(
        ran_later < 10,
        "the agent went on with every row: {ran_later}"
    );
    assert!(
        ran_later <= ran_then + 1,
        "no row started after the stop but the one in flight: {ran_then} then {ran_later}"
    );
    let t = env.get_json(&format!("{gw}/tasks/{job_id}")).await?;
    assert_eq!(t["status"], "WAITING", "{t}");
    assert!(
        t["rows_done"].as_i64().unwrap_or(0) >= 2,
        "its rows are kept: {t}"
    );
    env.cleanup().await
}

#[tokio::test]
async fn a_job_past_its_deadline_with_no_report_times_out() -> anyhow::Result<()> {
    let env = Env::new("deadline").await?;
    let db = env.db().await?;
    // A running job whose agent is alive but never reports: its lease ran
    // out a moment ago.
    db.batch_execute(
        "INSERT INTO bots (id, customer_id, name, ip_address, status, delivery, capacity, active_jobs, last_heartbeat_at)
              SELECT gen_random_uuid(), id, 'quiet', '127.0.0.1', 'BUSY', 'agent', 1, 1, now() + interval '1 hour' FROM customers;
         INSERT INTO jobs (id, customer_id, kind, description, system, attachment, status, bot_id, attempt,
                           started_at, lease_expires_at)
              SELECT gen_random_uuid(), b.customer_id, 'script', 'x', '', '', 'RUNNING', b.id, 1,
                     now() - interval '40 seconds', now() - interval '1 second' FROM bots b;",
    )
    .await?;
    let _reaper = env.start_reaper(&[])?;
    eventually(Duration::from_secs(30), "TIMEOUT", || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM jobs WHERE status = 'TIMEOUT'", &[])
            .await?
            .get(0);
        Ok((n == 1).then_some(()))
    })
    .await?;
    let row = db
        .query_one(
            "SELECT error, lease_expires_at IS NULL, finished_at IS NOT NULL FROM jobs",
            &[],
        )
        .await?;
    assert!(
        row.get::<_, Option<String>>(0)
            .unwrap_or_default()
            .contains("deadline")
    );
    assert!(row.get::<_, bool>(1) && row.get::<_, bool>(2));
    let active: i32 = db
        .query_one("SELECT active_jobs FROM bots", &[])
        .await?
        .get(0);
    assert_eq!(active, 0, "the bot's slot is free again");
    env.cleanup().await
}

#[tokio::test]
async fn two_reapers_expire_10000_leases_each_exactly_once() -> anyhow::Result<()> {
    const N: i64 = 10_000;
    let env = Env::new("reapers").await?;
    let db = env.db().await?;
    db.batch_execute(&format!(
        "INSERT INTO bots (id, customer_id, name, ip_address, status, delivery, capacity, active_jobs, last_heartbeat_at)
              SELECT gen_random_uuid(), id, 'big', '127.0.0.1', 'BUSY', 'agent', {N}, {N}, now() + interval '1 hour' FROM customers;
         INSERT INTO jobs (id, customer_id, kind, description, system, attachment, status, bot_id, attempt,
                           started_at, lease_expires_at)
              SELECT gen_random_uuid(), b.customer_id, 'script', 'x', '', '', 'RUNNING', b.id, 1,
                     now(), now() - random() * interval '10 seconds'
                FROM bots b, generate_series(1, {N});"
    ))
    .await?;
    let reaper = |name: &str| {
        let mut cmd = env.command("timeout-reaper");
        cmd.env("ORQ_REAPER__TICK_MS", "50")
            .env("ORQ_REAPER__BATCH_SIZE", "200");
        env.spawn(name, cmd)
    };
    let a = reaper("reaper-a")?;
    let b = reaper("reaper-b")?;
    eventually(Duration::from_secs(120), "every lease expired", || async {
        let n: i64 = db
            .query_one("SELECT count(*) FROM jobs WHERE status = 'TIMEOUT'", &[])
            .await?
            .get(0);
        Ok((n == N).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let row = db
        .query_one(
            "SELECT count(*), count(DISTINCT job_id) FROM job_events WHERE to_status = 'TIMEOUT'",
            &[],
        )
        .await?;
    assert_eq!(row.get::<_, i64>(0), N, "one TIMEOUT event per job");
    assert_eq!(row.get::<_, i64>(1), N);
    let active: i32 = db
        .query_one("SELECT active_jobs FROM bots", &[])
        .await?
        .get(0);
    assert_eq!(active, 0, "each expiry freed its slot once");
    // Both reapers took part.
    for r in [&a, &b] {
        assert!(
            r.log_text().contains("leases expired"),
            "{} did nothing:\n{}",
            r.name,
            r.log_text()
        );
    }
    drop((a, b));
    env.cleanup().await
}

#[tokio::test]
async fn a_script_is_not_run_twice_when_its_agent_restarts_mid_run() -> anyhow::Result<()> {
    let env = Env::new("restart").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let config = agent_config(&env.dir, "agent.toml", 1, &[])?;
    let out = env.dir.join("out.txt");
    let out_s = out.display().to_string();
    let vars = [("ORQ_TEST_OUT", out_s.as_str())];
    let mut agent = env.start_agent(&gw, "a", &config, &vars).await?;
    let task = task(
        &env,
        &gw,
        r#"echo start >> "$ORQ_TEST_OUT"; sleep 3"#,
        json!({}),
    )
    .await?;
    let job_id = run(&env, &gw, &task).await?;
    eventually(Duration::from_secs(30), "the script started", || async {
        Ok(std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("start")
            .then_some(()))
    })
    .await?;
    agent.kill9();
    // The same agent comes back at once; RabbitMQ hands it the assignment
    // again.
    let _agent = env.start_agent(&gw, "a", &config, &vars).await?;
    let done = eventually(Duration::from_secs(30), "FAILED", || async {
        let j = job(&env, &gw, &job_id).await?;
        Ok((j["status"] == "FAILED").then_some(j))
    })
    .await?;
    assert!(
        done["error"]
            .as_str()
            .unwrap_or_default()
            .contains("restarted"),
        "{done}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let starts = std::fs::read_to_string(&out)?.matches("start").count();
    assert_eq!(starts, 1, "the script ran once");
    env.cleanup().await
}

#[tokio::test]
async fn a_lost_bots_jobs_wait_again_until_their_tasks_retry_limit() -> anyhow::Result<()> {
    let env = Env::new("retrylimit").await?;
    let db = env.db().await?;
    // A bot silent for a minute holds three jobs: one whose task allows a
    // single attempt, one at the reaper's default limit (3) already, one
    // with attempts left.
    db.batch_execute(
        "INSERT INTO bots (id, customer_id, name, ip_address, status, delivery, capacity, active_jobs, last_heartbeat_at)
              SELECT gen_random_uuid(), id, 'gone', '127.0.0.1', 'BUSY', 'agent', 3, 3, now() - interval '1 minute' FROM customers;
         INSERT INTO jobs (id, customer_id, kind, description, system, attachment, status, bot_id, attempt, max_attempts)
              SELECT gen_random_uuid(), b.customer_id, 'script', v.d, '', '', 'RUNNING', b.id, v.a, v.m
                FROM bots b, (VALUES ('single', 1, 1), ('spent', 3, NULL), ('again', 1, NULL)) AS v(d, a, m);",
    )
    .await?;
    // Silence is judged only while heartbeats can be recorded: a dispatcher
    // carries the reaper's canaries.
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let _reaper = env.start_reaper(&[])?;
    let statuses = eventually(
        Duration::from_secs(30),
        "the bot's jobs handled",
        || async {
            let rows = db
                .query(
                    "SELECT description, status FROM jobs ORDER BY description",
                    &[],
                )
                .await?;
            let s: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            Ok(s.iter().all(|(_, st)| st != "RUNNING").then_some(s))
        },
    )
    .await?;
    assert_eq!(
        statuses,
        vec![
            ("again".to_string(), "WAITING".to_string()),
            ("single".to_string(), "FAILED".to_string()),
            ("spent".to_string(), "FAILED".to_string()),
        ]
    );
    let row = db
        .query_one("SELECT status, active_jobs FROM bots", &[])
        .await?;
    assert_eq!(row.get::<_, &str>(0), "UNAVAILABLE");
    assert_eq!(row.get::<_, i32>(1), 0);
    env.cleanup().await
}

#[tokio::test]
async fn a_legacy_http_bot_silent_on_its_job_times_it_out() -> anyhow::Result<()> {
    let env = Env::new("httpsilent").await?;
    let db = env.db().await?;
    // Legacy HTTP bots do not heartbeat: one job has had no report for two
    // hours, another for a minute.
    db.batch_execute(
        "INSERT INTO bots (id, customer_id, name, ip_address, status, delivery, capacity, active_jobs)
              SELECT gen_random_uuid(), id, 'flask', '127.0.0.9', 'BUSY', 'http', 2, 2 FROM customers;
         INSERT INTO jobs (id, customer_id, kind, description, system, attachment, status, bot_id, attempt, updated_at)
              SELECT gen_random_uuid(), b.customer_id, 'system', v.d, 'S', '', 'RUNNING', b.id, 1, now() - v.age
                FROM bots b, (VALUES ('silent', interval '2 hours'), ('busy', interval '1 minute')) AS v(d, age);",
    )
    .await?;
    let ops = format!("127.0.0.1:{}", orq_e2e::free_port());
    let mut reaper_cmd = env.command("timeout-reaper");
    reaper_cmd.env("ORQ_OPS__LISTEN", &ops);
    let _reaper = env.spawn("timeout-reaper", reaper_cmd)?;
    eventually(
        Duration::from_secs(30),
        "the silent job TIMEOUT",
        || async {
            let s: String = db
                .query_one("SELECT status FROM jobs WHERE description = 'silent'", &[])
                .await?
                .get(0);
            Ok((s == "TIMEOUT").then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let busy: String = db
        .query_one("SELECT status FROM jobs WHERE description = 'busy'", &[])
        .await?
        .get(0);
    assert_eq!(busy, "RUNNING", "a job its bot reported on lately stays");
    let error: Option<String> = db
        .query_one("SELECT error FROM jobs WHERE description = 'silent'", &[])
        .await?
        .get(0);
    assert!(error.unwrap_or_default().contains("HTTP bot"));
    // Its lease ended an hour (the silence window) after its last report,
    // an hour before the reaper found it: the lag says so.
    let metrics = reqwest::get(format!("http://{ops}/metrics"))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("orq_expiry_lag_seconds_count{kind=\"job\"} 1"),
        "{metrics}"
    );
    let sum: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("orq_expiry_lag_seconds_sum{kind=\"job\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_default();
    assert!((3500.0..3700.0).contains(&sum), "lag {sum} s:\n{metrics}");
    env.cleanup().await
}
