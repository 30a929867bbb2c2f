//! `Idempotency-Key` on every create, in process: a repeat gets the first
//! answer, another request under the key is refused, concurrent repeats
//! create once. A gateway SIGKILLed mid-request and the reaper pruning old
//! keys are `e2e/tests/idempotency.rs`.

use orq_e2e::{client_with, post_keyed};
use orq_shared::domain::Role;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

/// One creating route: where it is, who calls it, the body of variant `n`
/// (variants differ in what they create), and how to count what it made.
struct Case {
    name: &'static str,
    url: String,
    client: reqwest::Client,
    body: Box<dyn Fn(u32) -> Value + Send + Sync>,
    count: String,
}

async fn post(case: &Case, key: &str, variant: u32) -> anyhow::Result<(u16, bool, Value)> {
    post_keyed(&case.client, &case.url, key, &(case.body)(variant)).await
}

/// The same key and body: the first answer again; another body: 422;
/// ten at once under a new key: one creation, one answer.
async fn check(app: &TestApp, case: &Case) -> anyhow::Result<()> {
    let name = case.name;
    let before = app.count(&case.count).await?;
    let key = format!("{name}-first");
    let (status, replayed, first) = post(case, &key, 0).await?;
    assert_eq!(status, 201, "{name}: {first}");
    assert!(!replayed, "{name}: the first answer is no replay");
    assert!(first["id"].is_string(), "{name}: {first}");

    let (status, replayed, again) = post(case, &key, 0).await?;
    assert_eq!(
        status, 201,
        "{name}: the repeat keeps the first status: {again}"
    );
    assert!(replayed, "{name}: the repeat says it is one");
    assert_eq!(again, first, "{name}: the repeat is the first answer");

    let (status, _, other) = post(case, &key, 1).await?;
    assert_eq!(status, 422, "{name}: another body under the key: {other}");
    assert_eq!(other["error"]["code"], "idempotency_key_reused", "{name}");
    assert_eq!(other["error"]["details"]["field"], "Idempotency-Key");
    assert_eq!(app.count(&case.count).await?, before + 1, "{name}");

    let key = format!("{name}-concurrent");
    let answers = futures::future::join_all((0..10).map(|_| post(case, &key, 2))).await;
    let mut originals = 0;
    let mut ids = std::collections::HashSet::new();
    for answer in answers {
        let (status, replayed, body) = answer?;
        assert_eq!(status, 201, "{name}: {body}");
        originals += usize::from(!replayed);
        ids.insert(body["id"].to_string());
    }
    assert_eq!(originals, 1, "{name}: exactly one request created");
    assert_eq!(ids.len(), 1, "{name}: every duplicate got the same id");
    assert_eq!(
        app.count(&case.count).await?,
        before + 2,
        "{name}: one row per key"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_create_replays_its_first_answer_and_refuses_another_body() -> anyhow::Result<()> {
    let app = spawn_app("idem").await?;
    let gw = app.url.clone();
    let c = app.customer.clone();
    let admin = app.admin();
    let anonymous = reqwest::Client::new();
    // What the creates need: a bot running the system, a script, a task
    // with one open argument and its secret key.
    app.create(
        "/bots",
        &json!({"name": "csv-bot", "ip_address": "127.0.0.1", "systems": ["Idem"]}),
    )
    .await?;
    let script = app
        .create(
            &format!("/{c}/script"),
            &json!({"name": "s", "filename": "s.sh", "content": "exit 0"}),
        )
        .await?;
    let task = app
        .create(
            &format!("/{c}/task"),
            &json!({"name": "t", "script_id": script,
                    "task_arguments": [{"type": "input", "label": "x"}]}),
        )
        .await?;
    let secret = app.api().secret(&task).await?;
    let csv = |n: u32| orq_shared::attachment::encode(&format!("n\n{n}\n"));
    let run = |n: u32| json!({"task_arguments": [format!("arg-{n}")]});
    let script_jobs = "SELECT count(*) FROM jobs WHERE kind = 'script'".to_string();
    let cases = vec![
        Case {
            name: "tasks",
            url: format!("{gw}/tasks"),
            client: admin.clone(),
            body: Box::new(
                move |n| json!({"description": format!("csv {n}"), "system": "Idem", "attachment": csv(n)}),
            ),
            count: "SELECT count(*) FROM jobs WHERE kind = 'system'".into(),
        },
        Case {
            name: "bots",
            url: format!("{gw}/bots"),
            client: admin.clone(),
            body: Box::new(|n| json!({"name": format!("bot-{n}"), "ip_address": "127.0.0.1"})),
            count: "SELECT count(*) FROM bots".into(),
        },
        Case {
            name: "scripts",
            url: format!("{gw}/{c}/script"),
            client: admin.clone(),
            body: Box::new(
                |n| json!({"name": format!("script-{n}"), "filename": "x.sh", "content": format!("exit {n}")}),
            ),
            count: "SELECT count(*) FROM scripts".into(),
        },
        Case {
            name: "task_defs",
            url: format!("{gw}/{c}/task"),
            client: admin.clone(),
            body: Box::new({
                let script = script.clone();
                move |n| json!({"name": format!("task-{n}"), "script_id": script})
            }),
            count: "SELECT count(*) FROM task_defs".into(),
        },
        Case {
            name: "task_import",
            url: format!("{gw}/{c}/task/import"),
            client: admin.clone(),
            body: Box::new(|n| {
                json!({"version": 1, "task": {"name": format!("imported-{n}")},
                       "file": {"name": "s", "filename": "s.sh", "content_base64": "ZXhpdCAw"}})
            }),
            count: "SELECT count(*) FROM task_defs".into(),
        },
        Case {
            name: "jobs",
            url: format!("{gw}/{c}/task/{task}/job"),
            client: admin.clone(),
            body: Box::new(run),
            count: script_jobs.clone(),
        },
        Case {
            name: "jobs_by_query",
            url: format!("{gw}/job?customer={c}&task={task}"),
            client: admin.clone(),
            body: Box::new(run),
            count: script_jobs.clone(),
        },
        Case {
            name: "jobs_with_secret",
            url: format!("{gw}/{c}/task/{task}/secret/{secret}/job"),
            client: anonymous.clone(),
            body: Box::new(run),
            count: script_jobs.clone(),
        },
        Case {
            name: "jobs_with_secret_body",
            url: format!("{gw}/job/secret/{secret}"),
            client: anonymous.clone(),
            body: Box::new({
                let (c, task) = (c.clone(), task.clone());
                move |n| json!({"customer": c, "task": task, "task_arguments": [format!("arg-{n}")]})
            }),
            count: script_jobs.clone(),
        },
        Case {
            name: "micro_tasks",
            url: format!("{gw}/{c}/micro_task"),
            client: admin.clone(),
            body: Box::new(|n| json!({"name": format!("survey-{n}"), "task_flow": []})),
            count: "SELECT count(*) FROM human_tasks WHERE kind = 'micro_task'".into(),
        },
        Case {
            name: "user_tasks",
            url: format!("{gw}/activity_manager"),
            client: admin.clone(),
            body: Box::new(|n| json!({"action": format!("approve-{n}"), "input": {}})),
            count: "SELECT count(*) FROM human_tasks WHERE kind = 'user_task'".into(),
        },
        Case {
            name: "workers",
            url: format!("{gw}/{c}/workers"),
            client: admin.clone(),
            body: Box::new(|n| json!({"email": format!("w{n}@example.com")})),
            count: "SELECT count(*) FROM tokens WHERE role = 'worker'".into(),
        },
        Case {
            name: "subscriptions",
            url: format!("{gw}/webhooks/subscriptions"),
            client: admin.clone(),
            body: Box::new(|n| json!({"url": format!("https://hooks.example.com/{n}")})),
            count: "SELECT count(*) FROM webhook_endpoints WHERE kind = 'subscription'".into(),
        },
    ];
    for case in &cases {
        check(&app, case).await?;
    }

    // The four run routes are one operation: a key used on one replays
    // on another for the same task and arguments.
    let (status, replayed, _) = post(&cases[6], "jobs-first", 0).await?;
    assert_eq!((status, replayed), (201, true), "jobs across run routes");

    // Keys belong to the credential that used them: another token's
    // request under the same key is its own.
    let user = client_with(&app.token(Role::User).await?);
    let tasks_as_user = Case {
        client: user,
        ..cases.into_iter().next().expect("the tasks case")
    };
    let (status, replayed, _) = post(&tasks_as_user, "tasks-first", 0).await?;
    assert_eq!((status, replayed), (201, false), "another token's key");

    // A worker's token is in its answer: replayed as it was, never stored
    // readable.
    let db = app.db().await?;
    let workers = Case {
        name: "workers-secret",
        url: format!("{gw}/{c}/workers"),
        client: app.admin(),
        body: Box::new(|_| json!({"email": "secret@example.com"})),
        count: String::new(),
    };
    let (_, _, first) = post(&workers, "w-secret", 0).await?;
    let (_, replayed, again) = post(&workers, "w-secret", 0).await?;
    assert!(replayed);
    let token = first["access_token"].as_str().unwrap_or_default();
    assert!(token.len() > 20, "{first}");
    assert_eq!(again["access_token"], first["access_token"]);
    let in_clear: i64 = db
        .query_one(
            "SELECT count(*) FROM idempotency_keys
              WHERE position(convert_to($1, 'UTF8') in response) > 0
                 OR position(convert_to($1, 'UTF8') in request_hash) > 0",
            &[&token],
        )
        .await?
        .get(0);
    assert_eq!(in_clear, 0, "the token is stored sealed");
    app.stop().await
}
