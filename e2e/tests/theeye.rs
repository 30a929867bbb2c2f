//! TheEye's tasks API (seed 002) end to end: the real gateway, dispatcher
//! and agents against the real PostgreSQL and RabbitMQ, running real
//! scripts. Who may call what, secret keys, bad input and a run's
//! `Idempotency-Key` need no job to run: they are tested in process
//! (`gateway/tests/api/theeye.rs`).

use orq_e2e::api::id;
use orq_e2e::{Api, Env, Proc, agent_config, client_with, eventually};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// A running deployment with one customer; its API calls (`script`,
/// `task`, `run`, `job_until`, ...) are the harness's `Api`'s.
struct Stack {
    env: Env,
    api: Api,
    _procs: Vec<Proc>,
}

impl std::ops::Deref for Stack {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Stack {
    /// Gateway, dispatcher and `agents` agents of `capacity` each; the
    /// agents see `ORQ_TEST_OUT` (a file in the test's directory).
    async fn start(label: &str, agents: usize, capacity: u16) -> anyhow::Result<Stack> {
        let env = Env::new(label).await?;
        let (gateway, gw) = env.start_gateway(&[]).await?;
        let mut procs = vec![gateway, env.start_dispatcher("dispatcher", &[])?];
        let config = agent_config(&env.dir, "agent.toml", capacity, &[])?;
        let out = env.dir.join("out.txt").display().to_string();
        for i in 0..agents {
            procs.push(
                env.start_agent(
                    &gw,
                    &format!("bot-{i}"),
                    &config,
                    &[("ORQ_TEST_OUT", &out), ("ORQ_AGENT__KILL_GRACE_MS", "500")],
                )
                .await?,
            );
        }
        Ok(Stack {
            api: env.api(&gw),
            env,
            _procs: procs,
        })
    }

    fn out(&self) -> String {
        std::fs::read_to_string(self.env.dir.join("out.txt")).unwrap_or_default()
    }

    async fn finish(self) -> anyhow::Result<()> {
        drop(self._procs);
        self.env.cleanup().await
    }
}

/// A script that appends its job id and arguments to `$ORQ_TEST_OUT`.
const RECORD_ARGS: &str = r#"echo "$ORQ_JOB_ID $*" >> "$ORQ_TEST_OUT""#;

#[tokio::test]
async fn every_seed_example_works_as_written() -> anyhow::Result<()> {
    let s = Stack::start("seed", 1, 4).await?;
    let script = s.script("record", RECORD_ARGS).await?;
    let plain = s
        .task(json!({"name": "no-args", "script_id": script}))
        .await?;
    let with_args = s
        .task(json!({
            "name": "approve",
            "script_id": script,
            "timeout": 120,
            "task_arguments": [
                {"type": "input", "label": "first"},
                {"type": "input", "label": "second"}
            ]
        }))
        .await?;
    let token = &s.env.admin_token;
    let customer = &s.env.customer;
    let anon = reqwest::Client::new();

    // Example 1: list with the token in the query string.
    let list: Value = anon
        .get(format!("{}/{customer}/task?access_token={token}", s.gw))
        .send()
        .await?
        .json()
        .await?;
    let names: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{list}");
    assert!(names.contains(&"no-args") && names.contains(&"approve"));

    // Example 2: one task by id.
    let one: Value = anon
        .get(format!(
            "{}/{customer}/task/{}?access_token={token}",
            s.gw,
            id(&plain)
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(one["name"], "no-args");
    assert_eq!(one["script_id"], script.as_str());

    // Example 3: each task with its timeout (600 by default).
    let timeouts: HashMap<String, i64> = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or_default().to_string(),
                t["timeout"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(timeouts["no-args"], 600);
    assert_eq!(timeouts["approve"], 120);

    // Example 4: curl --data-urlencode "customer = …" --data-urlencode "task = …"
    // with a JSON content type, to /job/secret/{key}.
    let secret = s.secret(&id(&plain)).await?;
    assert_eq!(secret.len(), 64);
    let body = format!("customer =%20{customer}&task =%20{}", id(&plain));
    let r = anon
        .post(format!("{}/job/secret/{secret}", s.gw))
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let job4: Value = r.json().await?;
    assert_eq!(job4["task_id"], id(&plain).as_str());

    // Example 5: the HTML form, with two arguments.
    let secret2 = s.secret(&id(&with_args)).await?;
    let form = format!(
        "customer={customer}&task={}&task_arguments%5B%5D=arg1&task_arguments%5B%5D=arg2",
        id(&with_args)
    );
    let r = anon
        .post(format!("{}/job/secret/{secret2}", s.gw))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let job5: Value = r.json().await?;
    assert_eq!(job5["task_arguments"], json!(["arg1", "arg2"]));

    // Example 6: POST /job?access_token=…&customer=…&task=… with a JSON body.
    let r = anon
        .post(format!(
            "{}/job?access_token={token}&customer={customer}&task={}",
            s.gw,
            id(&plain)
        ))
        .header("Accept", "application/json")
        .header("Content-Type", "application/json")
        .body(r#"{"task_arguments":[]}"#)
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let job6: Value = r.json().await?;
    // "We can save the job id and use it later to query the job status."
    for job in [&job4, &job5, &job6] {
        let done = s
            .job_until(&id(job), &["COMPLETE"], Duration::from_secs(30))
            .await?;
        assert_eq!(done["state"], "success");
        assert_eq!(done["lifecycle"], "finished");
        assert_eq!(done["exit_code"], 0);
        let events: Vec<Value> = s
            .admin
            .get(s.url(&format!("/job/{}/events", id(job))))
            .send()
            .await?
            .json()
            .await?;
        let path: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == "STATUS_CHANGE")
            .filter_map(|e| e["to_status"].as_str())
            .collect();
        assert_eq!(path, vec!["WAITING", "ASSIGNED", "RUNNING", "COMPLETE"]);
    }
    let out = s.out();
    assert!(out.contains(&format!("{} arg1 arg2", id(&job5))), "{out}");
    assert_eq!(out.lines().count(), 3, "{out}");
    // The seed's path form of a secret run, too.
    let r = anon
        .post(format!(
            "{}/{customer}/task/{}/secret/{secret}/job",
            s.gw,
            id(&plain)
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    s.finish().await
}

#[tokio::test]
async fn recipes_export_and_import_elsewhere() -> anyhow::Result<()> {
    let s = Stack::start("recipe", 1, 2).await?;
    let script = s
        .script("greet", r#"echo "$GREETING $1" >> "$ORQ_TEST_OUT""#)
        .await?;
    let task = id(&s
        .task(json!({
            "name": "greet", "script_id": script, "timeout": 30, "multitasking": false,
            "env": {"GREETING": "hola"},
            "task_arguments": [{"type": "input", "label": "who"}]
        }))
        .await?);
    let recipe: Value = s
        .admin
        .get(s.url(&format!("/task/{task}/recipe")))
        .send()
        .await?
        .json()
        .await?;
    assert!(recipe["task"].get("host_id").is_none() && recipe["task"].get("id").is_none());
    // Into a second customer of the same deployment.
    let other = format!("{}-b", s.env.customer);
    let created = s.env.admin(&["create-customer", &other])?;
    let other_admin = client_with(created["access_token"].as_str().unwrap_or_default());
    let r = other_admin
        .post(format!("{}/{other}/task/import", s.gw))
        .json(&recipe)
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let imported: Value = r.json().await?;
    assert_eq!(imported["name"], "greet");
    assert_eq!(imported["timeout"], 30);
    assert_eq!(imported["multitasking"], false);
    assert_ne!(imported["script_id"], script.as_str());
    // It runs there (the agent belongs to the first customer: give the
    // second its own).
    let bot = s.env.token(&other, "bot")?;
    let config = agent_config(&s.env.dir, "agent-b.toml", 1, &[])?;
    let out = s.env.dir.join("out.txt").display().to_string();
    let mut cmd = s.env.command("bot-agent");
    cmd.arg("--config")
        .arg(&config)
        .env("ORQ_AGENT__TOKEN", &bot)
        .env("ORQ_AGENT__NAME", "bot-b")
        .env("ORQ_AGENT__GATEWAY_URL", &s.gw)
        .env("ORQ_TEST_OUT", &out);
    let _agent = s.env.spawn("agent-b", cmd)?;
    let r = other_admin
        .post(format!("{}/{other}/task/{}/job", s.gw, id(&imported)))
        .json(&json!({"task_arguments": ["mundo"]}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let job = id(&r.json::<Value>().await?);
    eventually(Duration::from_secs(30), "imported job COMPLETE", || async {
        let v: Value = other_admin
            .get(format!("{}/{other}/job/{job}", s.gw))
            .send()
            .await?
            .json()
            .await?;
        Ok((v["status"] == "COMPLETE").then_some(()))
    })
    .await?;
    assert!(s.out().contains("hola mundo"), "{}", s.out());
    s.finish().await
}

#[tokio::test]
async fn a_script_ignoring_sigterm_times_out_and_its_group_dies() -> anyhow::Result<()> {
    let s = Stack::start("timeout", 1, 1).await?;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    // Ignores SIGTERM, and leaves a child that would write to the out file
    // after 3 s if it survived.
    let script = s
        .script(
            "stubborn",
            &format!(
                "trap '' TERM\necho started >> \"$ORQ_TEST_OUT\"\n(trap '' TERM; sleep 3; echo survived-{tag} >> \"$ORQ_TEST_OUT\") &\nwhile true; do sleep 0.2; done"
            ),
        )
        .await?;
    let task = id(&s
        .task(json!({"name": "stubborn", "script_id": script, "timeout": 1}))
        .await?);
    let job = id(&s.run(&task, json!([])).await?);
    let done = s
        .job_until(
            &job,
            &["TIMEOUT", "FAILED", "COMPLETE"],
            Duration::from_secs(30),
        )
        .await?;
    assert_eq!(done["status"], "TIMEOUT", "{done}");
    assert_eq!(done["lifecycle"], "expired");
    assert!(
        done["error"]
            .as_str()
            .unwrap_or_default()
            .contains("timed out"),
        "{done}"
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let out = s.out();
    assert!(out.contains("started"), "{out}");
    assert!(
        !out.contains(&format!("survived-{tag}")),
        "a process of the group survived: {out}"
    );
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()?;
    let listing = String::from_utf8_lossy(&ps.stdout);
    assert!(
        !listing.contains("stubborn.sh"),
        "the script still runs:\n{listing}"
    );
    s.finish().await
}

#[tokio::test]
async fn markers_and_the_last_line_become_events_and_output() -> anyhow::Result<()> {
    let s = Stack::start("markers", 1, 1).await?;
    let script = s
        .script(
            "steps",
            "echo '::step::fetching'\necho '::percent::50'\necho '::step::saving'\necho '{\"state\":\"failure\",\"output\":{\"rows\":3}}'",
        )
        .await?;
    let task = id(&s
        .task(json!({"name": "steps", "script_id": script}))
        .await?);
    let job = id(&s.run(&task, json!([])).await?);
    let done = s
        .job_until(&job, &["FAILED", "COMPLETE"], Duration::from_secs(30))
        .await?;
    assert_eq!(
        done["status"], "FAILED",
        "the last line's state decides: {done}"
    );
    assert_eq!(done["exit_code"], 0);
    assert_eq!(done["output"], json!({"rows": 3}));
    assert_eq!(done["step"], "saving");
    let events = events(&s, &job).await?;
    let kinds: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["type"] == "STEP_CHANGE" || e["type"] == "PERCENT_CHANGE")
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().into(),
                e["description"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("STEP_CHANGE".into(), "fetching".into()),
            ("PERCENT_CHANGE".into(), "50%".into()),
            ("STEP_CHANGE".into(), "saving".into()),
        ]
    );
    s.finish().await
}

#[tokio::test]
async fn multitasking_false_holds_under_50_concurrent_runs() -> anyhow::Result<()> {
    let s = Stack::start("multi", 2, 4).await?;
    let script = s.script("single", "sleep 0.1").await?;
    let bots: Value = s
        .admin
        .get(format!("{}/bots", s.gw))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(bots.as_array().map(Vec::len), Some(2));
    let task = id(&s
        .task(json!({"name": "single", "script_id": script, "multitasking": false}))
        .await?);
    let other = id(&s.task(json!({"name": "free", "script_id": script})).await?);
    let runs = futures::future::join_all((0..50).map(|_| s.run(&task, json!([])))).await;
    let ids: Vec<String> = runs
        .into_iter()
        .map(|r| r.map(|j| id(&j)))
        .collect::<Result<_, _>>()?;
    // Jobs of another task still use the free slots meanwhile.
    let free_job = id(&s.run(&other, json!([])).await?);
    for j in &ids {
        s.job_until(j, &["COMPLETE"], Duration::from_secs(120))
            .await?;
    }
    s.job_until(&free_job, &["COMPLETE"], Duration::from_secs(30))
        .await?;
    // Per bot, no two runs of the task overlapped: read the job rows.
    let db = s.env.db().await?;
    let rows = db
        .query(
            "SELECT bot_id, started_at, finished_at FROM jobs WHERE task_id = $1::text::uuid ORDER BY started_at",
            &[&task],
        )
        .await?;
    assert_eq!(rows.len(), 50);
    let mut last_end: HashMap<uuid::Uuid, time::OffsetDateTime> = HashMap::new();
    let mut per_bot: HashMap<uuid::Uuid, usize> = HashMap::new();
    for r in &rows {
        let bot: uuid::Uuid = r.get(0);
        let (start, end): (time::OffsetDateTime, time::OffsetDateTime) = (r.get(1), r.get(2));
        if let Some(prev) = last_end.get(&bot) {
            assert!(
                start >= *prev,
                "two runs of a multitasking=false task overlapped on bot {bot}"
            );
        }
        last_end.insert(bot, end);
        *per_bot.entry(bot).or_default() += 1;
    }
    assert_eq!(per_bot.len(), 2, "both bots took runs: {per_bot:?}");
    // host_id pins a task to one bot, whoever else is free.
    let bot_1: Value = s
        .admin
        .get(format!("{}/bots?name=bot-1", s.gw))
        .send()
        .await?
        .json()
        .await?;
    let bot_1 = bot_1[0]["id"].as_str().unwrap_or_default().to_string();
    let pinned = id(&s
        .task(json!({"name": "pinned", "script_id": script, "host_id": bot_1}))
        .await?);
    let runs = futures::future::join_all((0..8).map(|_| s.run(&pinned, json!([])))).await;
    for run in runs {
        let done = s
            .job_until(&id(&run?), &["COMPLETE"], Duration::from_secs(60))
            .await?;
        assert_eq!(done["bot_id"], bot_1.as_str(), "{done}");
    }
    s.finish().await
}

#[tokio::test]
async fn a_trigger_chain_runs_b_once_per_a_and_a_pending_run_can_be_canceled() -> anyhow::Result<()>
{
    let s = Stack::start("trigger", 1, 4).await?;
    let record = s.script("record", RECORD_ARGS).await?;
    let a = id(&s
        .task(json!({"name": "a", "script_id": s.script("a", "echo '{\"state\":\"success\",\"output\":[\"from-a\"]}'").await?}))
        .await?);
    let b = id(&s
        .task(json!({
            "name": "b", "script_id": record,
            "task_arguments": [{"type": "input", "label": "x"}],
            // Any spelling of the id works (stored canonically).
            "triggers": [{"task_id": a.to_uppercase(), "on": "success"}]
        }))
        .await?);
    let on_failure = id(&s
        .task(json!({"name": "c", "script_id": record, "triggers": [{"task_id": a, "on": "failure"}]}))
        .await?);
    let mut a_jobs = Vec::new();
    for _ in 0..5 {
        a_jobs.push(id(&s.run(&a, json!([])).await?));
    }
    for j in &a_jobs {
        s.job_until(j, &["COMPLETE"], Duration::from_secs(30))
            .await?;
    }
    let b_jobs: Vec<Value> =
        eventually(Duration::from_secs(30), "5 runs of b COMPLETE", || async {
            let v: Value = s
                .admin
                .get(s.url(&format!("/task/{b}/job?status=COMPLETE")))
                .send()
                .await?
                .json()
                .await?;
            let list = v.as_array().cloned().unwrap_or_default();
            Ok((list.len() >= 5).then_some(list))
        })
        .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all_b: Value = s
        .admin
        .get(s.url(&format!("/task/{b}/job")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        all_b.as_array().map(Vec::len),
        Some(5),
        "b ran once per a: {all_b}"
    );
    let mut parents: Vec<String> = b_jobs
        .iter()
        .map(|j| j["triggered_by"].as_str().unwrap_or_default().to_string())
        .collect();
    parents.sort();
    let mut expected = a_jobs.clone();
    expected.sort();
    assert_eq!(parents, expected);
    assert!(
        b_jobs
            .iter()
            .all(|j| j["task_arguments"] == json!(["from-a"])),
        "a's output fed b"
    );
    let c_jobs: Value = s
        .admin
        .get(s.url(&format!("/task/{on_failure}/job")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        c_jobs.as_array().map(Vec::len),
        Some(0),
        "c fires on failure only"
    );

    // A grace time holds the triggered run; canceling it in that time means
    // it never runs.
    let late = id(&s
        .task(json!({"name": "late", "script_id": record, "grace_time": 3, "triggers": [{"task_id": a}]}))
        .await?);
    let a_job = id(&s.run(&a, json!([])).await?);
    s.job_until(&a_job, &["COMPLETE"], Duration::from_secs(30))
        .await?;
    let pending: Value = eventually(Duration::from_secs(10), "late's pending run", || async {
        let v: Value = s
            .admin
            .get(s.url(&format!("/task/{late}/job")))
            .send()
            .await?
            .json()
            .await?;
        Ok(v.as_array().and_then(|l| l.first().cloned()))
    })
    .await?;
    assert_eq!(pending["lifecycle"], "onhold");
    let r = s
        .admin
        .post(s.url(&format!("/job/{}/cancel", id(&pending))))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let after = s.job(&id(&pending)).await?;
    assert_eq!(after["status"], "CANCELED");
    assert!(
        !s.out().contains(&id(&pending)),
        "the canceled run never ran"
    );
    s.finish().await
}

#[tokio::test]
async fn canceling_a_running_job_stops_its_process() -> anyhow::Result<()> {
    let s = Stack::start("cancel", 1, 1).await?;
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let script = s
        .script("long", &format!("echo running >> \"$ORQ_TEST_OUT\"\nsleep 5\necho finished-{tag} >> \"$ORQ_TEST_OUT\""))
        .await?;
    let task = id(&s.task(json!({"name": "long", "script_id": script})).await?);
    let job = id(&s.run(&task, json!([])).await?);
    s.job_until(&job, &["RUNNING"], Duration::from_secs(30))
        .await?;
    eventually(Duration::from_secs(10), "the script started", || async {
        Ok(s.out().contains("running").then_some(()))
    })
    .await?;
    let r = s
        .admin
        .put(s.url(&format!("/job/{job}/cancel")))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await?["status"], "CANCELED");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        !s.out().contains(&format!("finished-{tag}")),
        "the script ran to its end: {}",
        s.out()
    );
    // The bot is free again: a next run completes.
    let next = id(&s.run(&task, json!([])).await?);
    s.job_until(&next, &["RUNNING", "COMPLETE"], Duration::from_secs(30))
        .await?;
    s.finish().await
}

#[tokio::test]
async fn emptying_a_queue_removes_history_and_waiting_runs_only_when_asked() -> anyhow::Result<()> {
    let s = Stack::start("empty", 1, 1).await?;
    let script = s.script("noop", "exit 0").await?;
    let task = id(&s.task(json!({"name": "t", "script_id": script})).await?);
    let done = id(&s.run(&task, json!([])).await?);
    s.job_until(&done, &["COMPLETE"], Duration::from_secs(30))
        .await?;
    // A task needing a tag no agent carries keeps its jobs waiting.
    let parked = id(&s
        .task(json!({"name": "p", "script_id": script, "required_tags": ["nowhere"]}))
        .await?);
    let waiting = id(&s.run(&parked, json!([])).await?);
    let finished_parked: Value = s
        .admin
        .delete(s.url(&format!("/task/{parked}/job")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        finished_parked["deleted"], 0,
        "waiting runs stay by default"
    );
    assert_eq!(s.job(&waiting).await?["status"], "WAITING");
    let r: Value = s
        .admin
        .delete(s.url(&format!("/task/{parked}/job?lifecycle[]=ready")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(r["deleted"], 1);
    assert_eq!(
        s.admin
            .get(s.url(&format!("/job/{waiting}")))
            .send()
            .await?
            .status(),
        404
    );
    let r: Value = s
        .admin
        .delete(s.url(&format!("/task/{task}/job")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(r["deleted"], 1);
    assert_eq!(
        s.admin
            .get(s.url(&format!("/job/{done}")))
            .send()
            .await?
            .status(),
        404
    );
    s.finish().await
}

#[tokio::test]
async fn a_backlog_that_cannot_run_does_not_hide_newer_jobs() -> anyhow::Result<()> {
    let s = Stack::start("backlog", 1, 2).await?;
    let script = s.script("slow", "sleep 0.5").await?;
    let single = id(&s
        .task(json!({"name": "single", "script_id": script, "multitasking": false}))
        .await?);
    let free = id(&s.task(json!({"name": "free", "script_id": script})).await?);
    // 100 runs that can only go one at a time on the one bot: the second
    // slot stays free behind them...
    for _ in 0..100 {
        s.run(&single, json!([])).await?;
    }
    // ...and a newer job of another task takes it.
    let newer = id(&s.run(&free, json!([])).await?);
    s.job_until(&newer, &["COMPLETE"], Duration::from_secs(20))
        .await?;
    let db = s.env.db().await?;
    let waiting: i64 = db
        .query_one("SELECT count(*) FROM jobs WHERE status = 'WAITING'", &[])
        .await?
        .get(0);
    assert!(
        waiting > 50,
        "the newer job ran while the backlog waited ({waiting} waiting)"
    );
    s.finish().await
}

/// Polls `path` (the customer's) until `check` holds; the last answer.
async fn until(
    s: &Stack,
    path: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    until_at(s, s.url(path), what, check).await
}

/// Polls `url` as the admin until `check` holds; the last answer.
async fn until_at(
    s: &Stack,
    url: String,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let client = s.admin.clone();
    eventually(Duration::from_secs(20), what, || {
        let (client, url) = (client.clone(), url.clone());
        let check = &check;
        async move {
            let v: Value = client.get(url).send().await?.json().await?;
            Ok(check(&v).then_some(v))
        }
    })
    .await
}

/// A job's history.
async fn events(s: &Stack, job: &str) -> anyhow::Result<Vec<Value>> {
    Ok(s.admin
        .get(s.url(&format!("/job/{job}/events")))
        .send()
        .await?
        .json()
        .await?)
}

/// The WARNING events of a job.
async fn warnings(s: &Stack, job: &str) -> anyhow::Result<Vec<String>> {
    Ok(events(s, job)
        .await?
        .iter()
        .filter(|e| e["type"] == "WARNING")
        .map(|e| e["description"].as_str().unwrap_or_default().to_string())
        .collect())
}

#[tokio::test]
async fn tags_are_labels_and_work_no_bot_can_take_is_flagged_not_silently_stuck()
-> anyhow::Result<()> {
    let s = Stack::start("labels", 1, 2).await?;
    let script = s.script("noop", "exit 0").await?;
    // Seed 002: tags are labels to find tasks by. An agent carrying none
    // runs a task with some.
    let labelled = id(&s
        .task(json!({"name": "l", "script_id": script, "tags": ["billing", "nightly"]}))
        .await?);
    let run = id(&s.run(&labelled, json!([])).await?);
    s.job_until(&run, &["COMPLETE"], Duration::from_secs(30))
        .await?;
    let found: Vec<Value> = s
        .admin
        .get(s.url("/task?tags=nightly,billing"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        found.iter().map(id).collect::<Vec<_>>(),
        vec![labelled.clone()]
    );
    let none: Vec<Value> = s
        .admin
        .get(s.url("/task?tags=billing,other"))
        .send()
        .await?
        .json()
        .await?;
    assert!(none.is_empty(), "{none:?}");
    let runs: Vec<Value> = s
        .admin
        .get(s.url("/job?tags=billing"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(runs.iter().map(id).collect::<Vec<_>>(), vec![run.clone()]);

    // Placement by tags is `required_tags`. No agent carries gpu: the run
    // is flagged at once, with the reason on the job and a WARNING event.
    let gpu = s
        .task(json!({"name": "g", "script_id": script, "required_tags": ["gpu"]}))
        .await?;
    assert_eq!(gpu["required_tags"], json!(["gpu"]));
    let gpu = id(&gpu);
    let stuck = id(&s.run(&gpu, json!([])).await?);
    let job = until(&s, &format!("/job/{stuck}"), "a waiting reason", |j| {
        !j["waiting_reason"].is_null()
    })
    .await?;
    assert_eq!(job["status"], "WAITING");
    let reason = "no agent carries every one of its required tags: gpu";
    assert_eq!(job["waiting_reason"], reason);
    assert_eq!(
        warnings(&s, &stuck).await?,
        vec![format!("no bot can take this job: {reason}")]
    );
    // An agent with the tag comes: the reason goes and the run completes.
    let config = s.env.dir.join("gpu.toml");
    std::fs::write(
        &config,
        "[agent]\ncapacity = 1\nheartbeat_interval_ms = 1000\ntags = [\"gpu\"]\n",
    )?;
    let _gpu_agent = s.env.start_agent(&s.gw, "bot-gpu", &config, &[]).await?;
    let done = s
        .job_until(&stuck, &["COMPLETE"], Duration::from_secs(30))
        .await?;
    assert!(done.get("waiting_reason").is_none(), "{done}");
    assert_eq!(
        warnings(&s, &stuck).await?.len(),
        1,
        "one warning, never repeated"
    );

    // Every agent draining: a new run is flagged; one agent resumed, it runs.
    let bots: Vec<Value> = s
        .admin
        .get(format!("{}/bots", s.gw))
        .send()
        .await?
        .json()
        .await?;
    let ids: Vec<String> = bots.iter().map(id).collect();
    assert_eq!(ids.len(), 2, "{bots:?}");
    for bot in &ids {
        let r = s
            .admin
            .post(format!("{}/bots/{bot}/drain", s.gw))
            .send()
            .await?;
        assert_eq!(r.status(), 200);
    }
    let later = id(&s.run(&labelled, json!([])).await?);
    let job = until(&s, &format!("/job/{later}"), "a waiting reason", |j| {
        !j["waiting_reason"].is_null()
    })
    .await?;
    assert_eq!(
        job["waiting_reason"],
        "every agent that could run it is draining"
    );
    let r = s
        .admin
        .post(format!("{}/bots/{}/resume", s.gw, ids[0]))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    s.job_until(&later, &["COMPLETE"], Duration::from_secs(30))
        .await?;

    // A CSV task whose system's only bot is draining: flagged too.
    let (status, bot) = orq_e2e::api::answer(s.admin.post(format!("{}/bots", s.gw)).json(&json!({
        "name": "legacy", "ip_address": "127.0.0.1", "port": 9, "capacity": 1,
        "systems": ["Vivo360"],
    })))
    .await?;
    assert_eq!(status, 201, "{bot}");
    let r = s
        .admin
        .post(format!("{}/bots/{}/drain", s.gw, id(&bot)))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let (status, task) =
        orq_e2e::api::answer(s.admin.post(format!("{}/tasks", s.gw)).json(&json!({
            "description": "drained", "system": "Vivo360",
            "attachment": orq_shared::attachment::encode("a\n1\n"),
        })))
        .await?;
    assert_eq!(status, 201, "{task}");
    let (client, url) = (s.admin.clone(), format!("{}/tasks/{}", s.gw, id(&task)));
    let flagged: Value = eventually(Duration::from_secs(20), "the CSV task flagged", || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let t: Value = client.get(url).send().await?.json().await?;
            Ok((!t["waiting_reason"].is_null()).then_some(t))
        }
    })
    .await?;
    assert_eq!(
        flagged["waiting_reason"],
        "every bot declaring system \"Vivo360\" is draining"
    );
    s.finish().await
}

#[tokio::test]
async fn a_prefetching_agent_holds_runs_beyond_its_capacity_and_gives_back_unstarted_ones_when_it_stops()
-> anyhow::Result<()> {
    // No agent from the stack: the one here holds one run and two more.
    let s = Stack::start("prefetch", 0, 1).await?;
    let config = agent_config(&s.env.dir, "prefetch.toml", 1, &[])?;
    let out = s.env.dir.join("out.txt").display().to_string();
    let env = [("ORQ_TEST_OUT", out.as_str()), ("ORQ_AGENT__PREFETCH", "2")];
    let mut first = s.env.start_agent(&s.gw, "bot-first", &config, &env).await?;
    let script = s.script("slow", &format!("{RECORD_ARGS}\nsleep 2")).await?;
    let task = id(&s.task(json!({"name": "t", "script_id": script})).await?);
    let mut runs = Vec::new();
    for _ in 0..3 {
        runs.push(id(&s.run(&task, json!([])).await?));
    }
    // One runs; the other two are assigned to the agent, unstarted.
    let bots = until_at(
        &s,
        format!("{}/bots", s.gw),
        "three runs on the agent",
        |b| b[0]["active_jobs"] == 3,
    )
    .await?;
    assert_eq!(bots[0]["prefetch"], 2, "{bots}");
    assert_eq!(bots[0]["active_jobs"], 3, "{bots}");
    let mut statuses = Vec::new();
    for run in &runs {
        statuses.push(
            s.job(run).await?["status"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    statuses.sort();
    assert_eq!(
        statuses,
        ["ASSIGNED", "ASSIGNED", "RUNNING"],
        "{statuses:?}"
    );
    // It stops: the running one finishes here, the two it held go back at
    // once (not after the sweep's minute), each with a WARNING saying so.
    assert!(
        first.terminate(Duration::from_secs(20)),
        "the agent exits within its grace"
    );
    let mut gave_back = 0;
    for run in &runs {
        let job = s.job(run).await?;
        match job["status"].as_str() {
            Some("COMPLETE") => {}
            Some("WAITING") => {
                gave_back += 1;
                let warned = warnings(&s, run).await?;
                assert!(
                    warned.iter().any(|w| w.contains("gave it back unstarted")),
                    "{warned:?}"
                );
            }
            other => anyhow::bail!("run {run} is {other:?}: {job}"),
        }
    }
    assert_eq!(gave_back, 2);
    // Another agent runs them; every run ran exactly once.
    let _second = s
        .env
        .start_agent(&s.gw, "bot-second", &config, &env)
        .await?;
    for run in &runs {
        s.job_until(run, &["COMPLETE"], Duration::from_secs(30))
            .await?;
    }
    // Drained, an agent gives back what it holds unstarted, at once, and
    // finishes what it runs; resumed, it takes them again.
    let more: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(id(&s.run(&task, json!([])).await?));
        }
        v
    };
    let on_second = |b: &Value| b["name"] == "bot-second" && b["active_jobs"] == 3;
    let bots = until_at(
        &s,
        format!("{}/bots", s.gw),
        "three runs on the second agent",
        |b| b.as_array().is_some_and(|all| all.iter().any(on_second)),
    )
    .await?;
    let second = bots
        .as_array()
        .and_then(|all| all.iter().find(|b| on_second(b)))
        .cloned()
        .unwrap_or_default();
    let r = s
        .admin
        .post(format!("{}/bots/{}/drain", s.gw, id(&second)))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    until(&s, "/job", "two runs given back", |jobs| {
        let waiting = jobs.as_array().map_or(0, |all| {
            all.iter()
                .filter(|j| more.contains(&id(j)) && j["status"] == "WAITING")
                .count()
        });
        waiting == 2
    })
    .await?;
    let r = s
        .admin
        .post(format!("{}/bots/{}/resume", s.gw, id(&second)))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    for run in &more {
        s.job_until(run, &["COMPLETE"], Duration::from_secs(30))
            .await?;
    }
    let lines = s.out();
    for run in runs.iter().chain(&more) {
        assert_eq!(lines.matches(run.as_str()).count(), 1, "{run} in {lines}");
    }
    s.finish().await
}
