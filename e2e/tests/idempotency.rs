//! `Idempotency-Key` on every create: a repeat gets the first answer, a
//! different request under the key is refused, concurrent repeats create
//! once — and a gateway SIGKILLed between its commit and its answer costs a
//! retrying client nothing (no duplicate, the same id).

use orq_e2e::{Env, client_with, free_port};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// One creating route: where it is, who calls it, the body of variant `n`
/// (variants differ in what they create), and how to count what it made.
struct Case {
    name: &'static str,
    url: String,
    client: reqwest::Client,
    body: Box<dyn Fn(u32) -> Value + Send + Sync>,
    count: String,
}

async fn count(env: &Env, sql: &str) -> anyhow::Result<i64> {
    Ok(env.db().await?.query_one(sql, &[]).await?.get(0))
}

async fn post(case: &Case, key: &str, variant: u32) -> anyhow::Result<(u16, bool, Value)> {
    let r = case
        .client
        .post(&case.url)
        .header("Idempotency-Key", key)
        .json(&(case.body)(variant))
        .send()
        .await?;
    let status = r.status().as_u16();
    let replayed = r
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    Ok((status, replayed, r.json().await?))
}

/// The same key and body: the first answer again; another body: 422;
/// ten at once under a new key: one creation, one answer.
async fn check(env: &Env, case: &Case) -> anyhow::Result<()> {
    let name = case.name;
    let before = count(env, &case.count).await?;
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
    assert_eq!(count(env, &case.count).await?, before + 1, "{name}");

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
        count(env, &case.count).await?,
        before + 2,
        "{name}: one row per key"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_create_replays_its_first_answer_and_refuses_another_body() -> anyhow::Result<()> {
    let env = Env::new("idem").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let c = env.customer.clone();
    let admin = env.client();
    let anonymous = reqwest::Client::new();
    // What the creates need: a bot running the system, a script, a task
    // with one open argument and its secret key.
    env.create(
        &format!("{gw}/bots"),
        &json!({"name": "csv-bot", "ip_address": "127.0.0.1", "systems": ["Idem"]}),
    )
    .await?;
    let script = env
        .create(
            &format!("{gw}/{c}/script"),
            &json!({"name": "s", "filename": "s.sh", "content": "exit 0"}),
        )
        .await?;
    let task = env
        .create(
            &format!("{gw}/{c}/task"),
            &json!({"name": "t", "script_id": script,
                    "task_arguments": [{"type": "input", "label": "x"}]}),
        )
        .await?;
    let secret = env
        .get_json(&format!("{gw}/{c}/task/{task}/credentials"))
        .await?["secret"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let csv = |n: u32| orq_e2e::orq_shared::attachment::encode(&format!("n\n{n}\n"));
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
        check(&env, case).await?;
    }

    // The four run routes are one operation: a key used on one replays
    // on another for the same task and arguments.
    let (status, replayed, _) = post(&cases[6], "jobs-first", 0).await?;
    assert_eq!((status, replayed), (201, true), "jobs across run routes");

    // Keys belong to the credential that used them: another token's
    // request under the same key is its own.
    let user = client_with(&env.token(&c, "user")?);
    let tasks_as_user = Case {
        client: user,
        ..cases.into_iter().next().expect("the tasks case")
    };
    let (status, replayed, _) = post(&tasks_as_user, "tasks-first", 0).await?;
    assert_eq!((status, replayed), (201, false), "another token's key");

    // A worker's token is in its answer: replayed as it was, never stored
    // readable.
    let db = env.db().await?;
    let workers = Case {
        name: "workers-secret",
        url: format!("{gw}/{c}/workers"),
        client: env.client(),
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
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_killed_mid_request_never_duplicates_a_retried_create() -> anyhow::Result<()> {
    let env = Env::new("idemkill").await?;
    let port = free_port();
    let (gateway, _) = env.start_gateway_on(port, &[]).await?;
    let gw = format!("http://127.0.0.1:{port}");
    env.create(
        &format!("{gw}/bots"),
        &json!({"name": "csv-bot", "ip_address": "127.0.0.1", "systems": ["Idem"]}),
    )
    .await?;

    // The killer: SIGKILL the gateway at random moments under load and
    // start it again on the same port, `KILLS` times.
    const KILLS: usize = 6;
    let done = Arc::new(AtomicBool::new(false));
    let kills = Arc::new(AtomicUsize::new(0));
    let killer = {
        let (done, kills) = (done.clone(), kills.clone());
        let mut gateway = gateway;
        let env = &env;
        async move {
            for i in 0..KILLS {
                tokio::time::sleep(Duration::from_millis(150 + (i as u64 * 97) % 250)).await;
                gateway.kill9();
                kills.fetch_add(1, Ordering::SeqCst);
                gateway = env.start_gateway_on(port, &[]).await?.0;
            }
            // Some load after the last restart too.
            tokio::time::sleep(Duration::from_millis(200)).await;
            done.store(true, Ordering::SeqCst);
            anyhow::Ok(gateway)
        }
    };

    // The clients: four loops posting tasks, each with its own key, each
    // retried until answered.
    let url = format!("{gw}/tasks");
    let client = env.client();
    let clients = futures::future::join_all((0..4).map(|w| {
        let (done, client, url) = (done.clone(), client.clone(), url.clone());
        async move {
            let mut answered = Vec::new();
            let (mut retries, mut replays) = (0, 0);
            let mut n = 0;
            while !done.load(Ordering::SeqCst) && n < 5000 {
                let key = format!("kill-{w}-{n}");
                let body = json!({"description": key, "system": "Idem",
                                  "attachment": orq_e2e::orq_shared::attachment::encode("n\n1\n")});
                let (answer, replayed, failures) =
                    orq_e2e::post_until_answered(&client, &url, &key, &body).await?;
                retries += failures;
                replays += usize::from(replayed);
                answered.push((key, answer["id"].as_str().unwrap_or_default().to_string()));
                n += 1;
            }
            anyhow::Ok((answered, retries, replays))
        }
    }));
    let (killed, loads) = tokio::join!(killer, clients);
    let _gateway = killed?;
    let (mut answered, mut retries, mut replays) = (Vec::new(), 0, 0);
    for load in loads {
        let (a, r, p) = load?;
        answered.extend(a);
        retries += r;
        replays += p;
    }
    let n = answered.len();
    eprintln!(
        "{n} tasks posted through {} gateway kills: {retries} failed attempts retried, \
         {replays} answers were replays of a create committed before the kill",
        kills.load(Ordering::SeqCst)
    );
    assert_eq!(kills.load(Ordering::SeqCst), KILLS);
    assert!(
        retries >= 1,
        "no request was retried: the kills missed the load"
    );

    // Exactly one task per key, and it is the one each answer named.
    let rows = env
        .db()
        .await?
        .query(
            "SELECT description, id::text FROM jobs WHERE kind = 'system' AND description LIKE 'kill-%'",
            &[],
        )
        .await?;
    assert_eq!(rows.len(), n, "{} duplicates", rows.len() as i64 - n as i64);
    let stored: std::collections::HashMap<String, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (key, id) in &answered {
        assert_eq!(
            stored.get(key),
            Some(id),
            "{key}: the answer names its task"
        );
    }
    env.cleanup().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reaper_prunes_keys_past_their_retention() -> anyhow::Result<()> {
    let env = Env::new("idemprune").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let bots = Case {
        name: "bots",
        url: format!("{gw}/bots"),
        client: env.client(),
        body: Box::new(|n| json!({"name": format!("bot-{n}"), "ip_address": "127.0.0.1"})),
        count: String::new(),
    };
    assert_eq!(post(&bots, "old", 0).await?.0, 201);
    assert_eq!(post(&bots, "fresh", 1).await?.0, 201);
    let db = env.db().await?;
    db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = 'old'",
        &[],
    )
    .await?;
    let _reaper = env.start_reaper(&[])?;
    orq_e2e::eventually(Duration::from_secs(20), "the old key pruned", || {
        let db = &db;
        async move {
            let keys: Vec<String> = db
                .query("SELECT key FROM idempotency_keys ORDER BY key", &[])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            Ok((keys == ["fresh"]).then_some(()))
        }
    })
    .await?;
    // Within the retention a key replays; past it, it is free again.
    assert!(post(&bots, "fresh", 1).await?.1, "a fresh key replays");
    let (status, replayed, body) = post(&bots, "old", 2).await?;
    assert_eq!((status, replayed), (201, false), "{body}");
    env.cleanup().await
}
