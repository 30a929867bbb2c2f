//! TheEye's tasks API (seed 002) end to end: the real gateway, dispatcher
//! and agents against the real PostgreSQL and RabbitMQ, running real
//! scripts.

use orq_e2e::{Env, Proc, agent_config, client_with, eventually};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

/// A running deployment with one customer and helpers for its API.
struct Stack {
    env: Env,
    gw: String,
    _procs: Vec<Proc>,
    admin: reqwest::Client,
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
        let admin = env.client();
        Ok(Stack {
            env,
            gw,
            _procs: procs,
            admin,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{}{}", self.gw, self.env.customer, path)
    }

    fn out(&self) -> String {
        std::fs::read_to_string(self.env.dir.join("out.txt")).unwrap_or_default()
    }

    async fn script(&self, name: &str, body: &str) -> anyhow::Result<String> {
        let r = self
            .admin
            .post(self.url("/script"))
            .json(&json!({"name": name, "filename": format!("{name}.sh"), "content": format!("#!/bin/sh\n{body}\n")}))
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == 201,
            "script: {} {}",
            r.status(),
            r.text().await?
        );
        Ok(r.json::<Value>().await?["id"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    async fn task(&self, fields: Value) -> anyhow::Result<Value> {
        let r = self
            .admin
            .post(self.url("/task"))
            .json(&fields)
            .send()
            .await?;
        anyhow::ensure!(
            r.status() == 201,
            "task: {} {}",
            r.status(),
            r.text().await?
        );
        Ok(r.json().await?)
    }

    async fn run(&self, task: &str, args: Value) -> anyhow::Result<Value> {
        let r = self
            .admin
            .post(self.url(&format!("/task/{task}/job")))
            .json(&json!({"task_arguments": args}))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 201, "run: {} {}", r.status(), r.text().await?);
        Ok(r.json().await?)
    }

    async fn job(&self, id: &str) -> anyhow::Result<Value> {
        Ok(self
            .admin
            .get(self.url(&format!("/job/{id}")))
            .send()
            .await?
            .json()
            .await?)
    }

    /// Waits until the job reaches one of `statuses`; returns it.
    async fn job_until(
        &self,
        id: &str,
        statuses: &[&str],
        within: Duration,
    ) -> anyhow::Result<Value> {
        eventually(within, &format!("job {id} in {statuses:?}"), || async {
            let job = self.job(id).await?;
            let s = job["status"].as_str().unwrap_or_default().to_string();
            Ok(statuses.contains(&s.as_str()).then_some(job))
        })
        .await
    }

    async fn count_jobs(&self) -> anyhow::Result<i64> {
        let db = self.env.db().await?;
        Ok(db.query_one("SELECT count(*) FROM jobs", &[]).await?.get(0))
    }

    async fn secret(&self, task: &str) -> anyhow::Result<String> {
        let v: Value = self
            .admin
            .get(self.url(&format!("/task/{task}/credentials")))
            .send()
            .await?
            .json()
            .await?;
        Ok(v["secret"].as_str().unwrap_or_default().to_string())
    }

    async fn finish(self) -> anyhow::Result<()> {
        drop(self._procs);
        self.env.cleanup().await
    }
}

/// A script that appends its job id and arguments to `$ORQ_TEST_OUT`.
const RECORD_ARGS: &str = r#"echo "$ORQ_JOB_ID $*" >> "$ORQ_TEST_OUT""#;

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_default().to_string()
}

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
async fn roles_and_acls_over_every_route() -> anyhow::Result<()> {
    let s = Stack::start("roles", 1, 2).await?;
    let script = s.script("noop", "exit 0").await?;
    let task = id(&s.task(json!({"name": "t", "script_id": script})).await?);
    let hidden = id(&s
        .task(json!({"name": "h", "script_id": script, "acls": ["ana@example.com"]}))
        .await?);
    let c = &s.env.customer;
    let tok = |role: &str, name: Option<&str>| -> anyhow::Result<String> {
        let mut args = vec!["create-token", "--customer", c.as_str(), "--role", role];
        if let Some(n) = name {
            args.extend(["--name", n]);
        }
        let v = s.env.admin(&args)?;
        Ok(v["access_token"].as_str().unwrap_or_default().to_string())
    };
    let viewer = client_with(&tok("viewer", Some("bob@example.com"))?);
    let user = client_with(&tok("user", None)?);
    let ana = client_with(&tok("viewer", Some("ana@example.com"))?);
    let bot = client_with(&s.env.bot_token);
    // Another customer of the same deployment.
    let other = s.env.admin(&["create-customer", &format!("{c}-x")])?;
    let stranger = client_with(other["access_token"].as_str().unwrap_or_default());
    let nobody = reqwest::Client::new();
    // A job that stays WAITING (no bot has the tag), to read and cancel.
    let parked = id(&s
        .task(json!({"name": "p", "script_id": script, "tags": ["nowhere"]}))
        .await?);
    let job = id(&s.run(&parked, json!([])).await?);
    let recipe: Value = s
        .admin
        .get(s.url(&format!("/task/{task}/recipe")))
        .send()
        .await?
        .json()
        .await?;

    // (method, path, body) and the status each caller gets:
    // [nobody, bot, viewer, user, admin, another customer's admin]
    type Case<'a> = (&'a str, String, Option<Value>, [u16; 6]);
    let cases: Vec<Case> = vec![
        ("GET", "/task".into(), None, [401, 403, 200, 200, 200, 403]),
        (
            "GET",
            format!("/task/{task}"),
            None,
            [401, 403, 200, 200, 200, 403],
        ),
        (
            "GET",
            format!("/task/{task}/job"),
            None,
            [401, 403, 200, 200, 200, 403],
        ),
        (
            "GET",
            format!("/job/{job}"),
            None,
            [401, 403, 200, 200, 200, 403],
        ),
        (
            "GET",
            format!("/job/{job}/events"),
            None,
            [401, 403, 200, 200, 200, 403],
        ),
        ("GET", "/job".into(), None, [401, 403, 200, 200, 200, 403]),
        (
            "POST",
            format!("/task/{task}/job"),
            Some(json!({})),
            [401, 403, 403, 201, 201, 403],
        ),
        (
            "GET",
            format!("/task/{task}/recipe"),
            None,
            [401, 403, 403, 403, 200, 403],
        ),
        (
            "GET",
            format!("/task/{task}/credentials"),
            None,
            [401, 403, 403, 403, 200, 403],
        ),
        (
            "POST",
            "/task/import".into(),
            Some(recipe),
            [401, 403, 403, 403, 201, 403],
        ),
        (
            "DELETE",
            format!("/task/{task}/job"),
            None,
            [401, 403, 403, 403, 200, 403],
        ),
        (
            "PUT",
            format!("/task/{task}"),
            Some(json!({"description": "x"})),
            [401, 403, 403, 403, 200, 403],
        ),
        (
            "POST",
            "/task".into(),
            Some(json!({"name": "n", "script_id": script})),
            [401, 403, 403, 403, 201, 403],
        ),
        (
            "GET",
            "/script".into(),
            None,
            [401, 403, 200, 200, 200, 403],
        ),
        (
            "GET",
            format!("/script/{script}"),
            None,
            [401, 403, 403, 403, 200, 403],
        ),
        (
            "POST",
            format!("/task/{task}/credentials/rotate"),
            None,
            [401, 403, 403, 403, 200, 403],
        ),
        (
            "POST",
            format!("/job/{job}/cancel"),
            None,
            [401, 403, 403, 200, 409, 403],
        ),
        (
            "DELETE",
            format!("/task/{hidden}"),
            None,
            [401, 403, 403, 403, 204, 403],
        ),
    ];
    let callers = [&nobody, &bot, &viewer, &user, &s.admin, &stranger];
    let names = ["nobody", "bot", "viewer", "user", "admin", "stranger"];
    for (method, path, body, expected) in &cases {
        for (i, caller) in callers.iter().enumerate() {
            let mut req = caller.request(method.parse()?, s.url(path));
            if let Some(b) = body {
                req = req.json(b);
            }
            let r = req.send().await?;
            let status = r.status().as_u16();
            let text = r.text().await?;
            assert_eq!(status, expected[i], "{} {method} {path}: {text}", names[i]);
            if status >= 400 {
                let v: Value = serde_json::from_str(&text)?;
                assert!(v["error"]["code"].is_string(), "{text}");
            }
        }
    }
    // A task's acls narrow who sees it: ana sees `h` (deleted above: re-create).
    let hidden = id(&s
        .task(json!({"name": "h2", "script_id": script, "acls": ["ana@example.com"]}))
        .await?);
    let r = viewer.get(s.url(&format!("/task/{hidden}"))).send().await?;
    assert_eq!(r.status(), 404);
    let r = ana.get(s.url(&format!("/task/{hidden}"))).send().await?;
    assert_eq!(r.status(), 200);
    let listed: Value = viewer.get(s.url("/task")).send().await?.json().await?;
    assert!(
        listed
            .as_array()
            .is_some_and(|l| l.iter().all(|t| t["id"] != hidden.as_str()))
    );
    let r = user
        .post(s.url(&format!("/task/{hidden}/job")))
        .json(&json!({}))
        .send()
        .await?;
    assert_eq!(r.status(), 404, "a user outside the acls cannot run it");
    // Jobs keep the acls: a job of a hidden task stays hidden.
    let hidden_job = id(&s.run(&hidden, json!([])).await?);
    assert_eq!(
        viewer
            .get(s.url(&format!("/job/{hidden_job}")))
            .send()
            .await?
            .status(),
        404
    );
    assert_eq!(
        ana.get(s.url(&format!("/job/{hidden_job}")))
            .send()
            .await?
            .status(),
        200
    );
    let jobs: Value = viewer.get(s.url("/job")).send().await?.json().await?;
    assert!(
        jobs.as_array()
            .is_some_and(|l| l.iter().all(|j| j["id"] != hidden_job.as_str()))
    );
    // ...and is not reachable through the proof of concept's /tasks routes.
    let r = viewer
        .get(format!("{}/tasks/{hidden_job}", s.gw))
        .send()
        .await?;
    assert_eq!(r.status(), 404);
    let r = user
        .put(format!("{}/tasks/{job}", s.gw))
        .json(&json!({"status": "COMPLETE"}))
        .send()
        .await?;
    assert_eq!(r.status(), 404, "a script job is not moved through /tasks");
    // Only admins see env values.
    let with_env = id(&s
        .task(json!({"name": "e", "script_id": script, "env": {"TOKEN": "s3cret"}}))
        .await?);
    let seen: Value = viewer
        .get(s.url(&format!("/task/{with_env}")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(seen["env"], json!({"TOKEN": "<hidden>"}));
    let seen: Value = s
        .admin
        .get(s.url(&format!("/task/{with_env}")))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(seen["env"], json!({"TOKEN": "s3cret"}));
    s.finish().await
}

#[tokio::test]
async fn secret_keys_run_their_task_only_and_rotate() -> anyhow::Result<()> {
    let s = Stack::start("secret", 1, 2).await?;
    let script = s.script("noop", "exit 0").await?;
    let a = id(&s.task(json!({"name": "a", "script_id": script})).await?);
    let b = id(&s.task(json!({"name": "b", "script_id": script})).await?);
    let key_a = s.secret(&a).await?;
    assert!(key_a.len() == 64 && key_a.bytes().all(|c| c.is_ascii_hexdigit()));
    // Sealed at rest: neither the key nor its hex appears in the row.
    let db = s.env.db().await?;
    let row = db
        .query_one(
            "SELECT secret_hash, secret_sealed FROM task_defs WHERE id = $1::text::uuid",
            &[&a],
        )
        .await?;
    for col in [row.get::<_, Vec<u8>>(0), row.get::<_, Vec<u8>>(1)] {
        assert!(!String::from_utf8_lossy(&col).contains(&key_a));
        assert!(!col.windows(32).any(|w| w == hex_bytes(&key_a)));
    }
    let anon = reqwest::Client::new();
    let c = &s.env.customer;
    let post = |task: &str, key: &str| {
        anon.post(format!("{}/{c}/task/{task}/secret/{key}/job", s.gw))
            .send()
    };
    let before = s.count_jobs().await?;
    assert_eq!(
        post(&b, &key_a).await?.status(),
        403,
        "a's key must not run b"
    );
    assert_eq!(post(&a, &"0".repeat(64)).await?.status(), 403);
    assert_eq!(post(&a, "short").await?.status(), 403);
    assert_eq!(post(&a, &key_a).await?.status(), 201);
    let rotated: Value = s
        .admin
        .post(s.url(&format!("/task/{a}/credentials/rotate")))
        .send()
        .await?
        .json()
        .await?;
    let key_new = rotated["secret"].as_str().unwrap_or_default().to_string();
    assert_ne!(key_new, key_a);
    assert_eq!(
        post(&a, &key_a).await?.status(),
        403,
        "the old key stops working"
    );
    assert_eq!(post(&a, &key_new).await?.status(), 201);
    assert_eq!(s.count_jobs().await?, before + 2);
    s.finish().await
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
        .collect()
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() -> anyhow::Result<()> {
    let s = Stack::start("badin", 0, 1).await?;
    let script = s.script("noop", "exit 0").await?;
    let task = id(&s
        .task(json!({
            "name": "t",
            "script_id": script,
            "task_arguments": [
                {"type": "fixed", "label": "mode", "value": "x"},
                {"type": "options", "label": "env", "options": ["dev", "prod"]}
            ]
        }))
        .await?);
    let secret = s.secret(&task).await?;
    let c = &s.env.customer;
    let unknown = "0190b9a4-8d5e-7000-8000-000000000001";
    let anon = reqwest::Client::new();
    let before = s.count_jobs().await?;
    let tasks_before: i64 = s
        .env
        .db()
        .await?
        .query_one("SELECT count(*) FROM task_defs", &[])
        .await?
        .get(0);
    let send = |req: reqwest::RequestBuilder| async move {
        let r = req.send().await?;
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        anyhow::Ok((status, body))
    };
    let checks: Vec<(reqwest::RequestBuilder, u16, &str, Option<&str>)> = vec![
        (s.admin.post(s.url(&format!("/task/{unknown}/job"))).json(&json!({})), 404, "not_found", None),
        (s.admin.post(s.url("/task/not-an-id/job")).json(&json!({})), 404, "not_found", None),
        (s.admin.post(format!("{}/other-customer/task/{task}/job", s.gw)).json(&json!({})), 403, "wrong_customer", None),
        (s.admin.post(s.url(&format!("/task/{task}/job"))).json(&json!({"task_arguments": []})), 400, "invalid_field", Some("task_arguments")),
        (s.admin.post(s.url(&format!("/task/{task}/job"))).json(&json!({"task_arguments": ["staging"]})), 400, "invalid_field", Some("task_arguments[0]")),
        (s.admin.post(s.url(&format!("/task/{task}/job"))).json(&json!({"task_arguments": "dev"})), 400, "invalid_field", Some("task_arguments")),
        (s.admin.post(s.url(&format!("/task/{task}/job"))).header("Content-Type", "application/json").body("{not json"), 400, "invalid_json", None),
        (anon.post(format!("{}/job/secret/{}", s.gw, "f".repeat(64))).json(&json!({"customer": c, "task": task})), 403, "invalid_secret", None),
        (anon.post(format!("{}/job/secret/{secret}", s.gw)).json(&json!({"customer": c})), 400, "missing_field", Some("task")),
        (anon.post(format!("{}/job/secret/{secret}", s.gw)).json(&json!({"customer": "nope", "task": task})), 404, "not_found", None),
        (anon.post(format!("{}/job/secret/{secret}", s.gw)).json(&json!({"customer": c, "task": unknown})), 404, "not_found", None),
        (s.admin.post(s.url("/task/import")).json(&json!({"task": {"name": "x"}})), 400, "missing_field", Some("file")),
        (s.admin.post(s.url("/task/import")).json(&json!({"task": {"name": "x"}, "file": {"name": "f", "filename": "f.sh", "content_base64": "%%%"}})), 400, "invalid_field", Some("file.content_base64")),
        (s.admin.post(s.url("/task/import")).json(&json!({"task": {"name": "x", "bogus": 1}, "file": {"name": "f", "filename": "f.sh", "content_base64": "ZWNobw=="}})), 400, "invalid_body", None),
        (s.admin.post(s.url("/task/import")).json(&json!({"task": {"name": "x", "run_as": "bash"}, "file": {"name": "f", "filename": "f.sh", "content_base64": "ZWNobw=="}})), 400, "invalid_field", Some("run_as")),
        (s.admin.post(s.url("/task")).json(&json!({"name": "x", "script_id": unknown})), 400, "invalid_field", Some("script_id")),
        (s.admin.post(s.url("/task")).json(&json!({"name": "x", "script_id": script, "timeout": 0})), 400, "invalid_field", Some("timeout")),
        (s.admin.post(s.url("/task")).json(&json!({"name": "x", "script_id": script, "task_arguments": [{"type": "options", "label": "a", "options": []}]})), 400, "invalid_field", Some("task_arguments[0]")),
        (s.admin.post(s.url("/task")).json(&json!({"name": "x", "script_id": script, "env": {"1BAD": "x"}})), 400, "invalid_field", Some("env")),
        (s.admin.post(s.url("/task")).json(&json!({"name": "x", "script_id": script, "triggers": [{"task_id": unknown}]})), 400, "invalid_field", Some("triggers[0]")),
        (s.admin.post(s.url(&format!("/task/{task}/job"))).header("Idempotency-Key", "").json(&json!({"task_arguments": ["dev"]})), 400, "invalid_field", Some("Idempotency-Key")),
        (s.admin.delete(s.url(&format!("/task/{task}/job?lifecycle[]=assigned"))), 400, "invalid_field", Some("lifecycle")),
        (s.admin.post(s.url("/script")).json(&json!({"name": "x", "filename": "../x", "content": "a"})), 400, "invalid_field", Some("filename")),
    ];
    for (i, (req, status, code, field)) in checks.into_iter().enumerate() {
        let (got, body) = send(req).await?;
        assert_eq!(got, status, "check {i}: {body}");
        assert_eq!(body["error"]["code"], code, "check {i}: {body}");
        if let Some(f) = field {
            assert_eq!(body["error"]["details"]["field"], f, "check {i}: {body}");
        }
    }
    // The argument that was wrong is named in the message.
    let (_, body) = send(
        s.admin
            .post(s.url(&format!("/task/{task}/job")))
            .json(&json!({"task_arguments": ["staging"]})),
    )
    .await?;
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("\"env\""),
        "{body}"
    );
    assert_eq!(s.count_jobs().await?, before, "nothing was queued");
    let tasks_after: i64 = s
        .env
        .db()
        .await?
        .query_one("SELECT count(*) FROM task_defs", &[])
        .await?
        .get(0);
    assert_eq!(tasks_after, tasks_before, "nothing was defined");
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
async fn an_idempotency_key_returns_the_first_job() -> anyhow::Result<()> {
    let s = Stack::start("idem", 0, 1).await?;
    let script = s.script("noop", "exit 0").await?;
    let task = id(&s
        .task(json!({"name": "t", "script_id": script, "task_arguments": [{"type": "input", "label": "x"}]}))
        .await?);
    let post = |key: &str, arg: &str| {
        s.admin
            .post(s.url(&format!("/task/{task}/job")))
            .header("Idempotency-Key", key)
            .json(&json!({"task_arguments": [arg]}))
            .send()
    };
    let first = post("k-1", "a").await?;
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await?;
    // Concurrent repeats all get the first answer, its status included.
    let repeats = futures::future::join_all((0..10).map(|_| post("k-1", "a"))).await;
    for r in repeats {
        let r = r?;
        assert_eq!(r.status(), 201);
        assert_eq!(
            r.headers().get("idempotent-replayed").map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
        assert_eq!(id(&r.json::<Value>().await?), id(&first));
    }
    let other = post("k-1", "b").await?;
    assert_eq!(other.status(), 422, "same key, another request");
    assert_eq!(
        other.json::<Value>().await?["error"]["code"],
        "idempotency_key_reused"
    );
    assert_eq!(post("k-2", "a").await?.status(), 201);
    assert_eq!(s.count_jobs().await?, 2);
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
    let events: Vec<Value> = s
        .admin
        .get(s.url(&format!("/job/{job}/events")))
        .send()
        .await?
        .json()
        .await?;
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
    // A task pinned to a bot nobody runs keeps its jobs waiting.
    let parked = id(&s
        .task(json!({"name": "p", "script_id": script, "tags": ["nowhere"]}))
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
