//! TheEye's tasks API (seed 002) in process: who may call which route
//! (roles and `acls`), secret keys, bad input, `Idempotency-Key` on a run.
//! Nothing here runs a job: jobs stay WAITING, as no dispatcher runs.
//! Running real scripts on real agents is `e2e/tests/theeye.rs`.

use orq_e2e::api::id;
use orq_e2e::client_with;
use orq_shared::domain::Role;
use serde_json::{Value, json};

use crate::helpers::spawn_app;

const JOBS: &str = "SELECT count(*) FROM jobs";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_acls_over_every_route() -> anyhow::Result<()> {
    let app = spawn_app("roles").await?;
    let s = app.api();
    let script = s.script("noop", "exit 0").await?;
    let task = id(&s.task(json!({"name": "t", "script_id": script})).await?);
    let hidden = id(&s
        .task(json!({"name": "h", "script_id": script, "acls": ["ana@example.com"]}))
        .await?);
    let viewer = client_with(&app.token_named(Role::Viewer, "bob@example.com").await?);
    let user = client_with(&app.token(Role::User).await?);
    let ana = client_with(&app.token_named(Role::Viewer, "ana@example.com").await?);
    let bot = client_with(&app.token(Role::Bot).await?);
    // Another customer of the same deployment.
    let (_, other) = app.other_customer("-x").await?;
    let stranger = client_with(&other);
    let nobody = reqwest::Client::new();
    // A job that stays WAITING (no bot has the tag), to read and cancel.
    let parked = id(&s
        .task(json!({"name": "p", "script_id": script, "required_tags": ["nowhere"]}))
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
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_keys_run_their_task_only_and_rotate() -> anyhow::Result<()> {
    let app = spawn_app("secret").await?;
    let s = app.api();
    let script = s.script("noop", "exit 0").await?;
    let a = id(&s.task(json!({"name": "a", "script_id": script})).await?);
    let b = id(&s.task(json!({"name": "b", "script_id": script})).await?);
    let key_a = s.secret(&a).await?;
    assert!(key_a.len() == 64 && key_a.bytes().all(|c| c.is_ascii_hexdigit()));
    // Sealed at rest: neither the key nor its hex appears in the row.
    let db = app.db().await?;
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
    let c = &app.customer;
    let post = |task: &str, key: &str| {
        anon.post(format!("{}/{c}/task/{task}/secret/{key}/job", s.gw))
            .send()
    };
    let before = app.count(JOBS).await?;
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
    assert_eq!(app.count(JOBS).await?, before + 2);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() -> anyhow::Result<()> {
    let app = spawn_app("badin").await?;
    let s = app.api();
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
    let c = &app.customer;
    let unknown = "0190b9a4-8d5e-7000-8000-000000000001";
    let anon = reqwest::Client::new();
    let before = app.count(JOBS).await?;
    let tasks_before = app.count("SELECT count(*) FROM task_defs").await?;
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
    assert_eq!(app.count(JOBS).await?, before, "nothing was queued");
    let tasks_after = app.count("SELECT count(*) FROM task_defs").await?;
    assert_eq!(tasks_after, tasks_before, "nothing was defined");
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_returns_the_first_job() -> anyhow::Result<()> {
    let app = spawn_app("idem").await?;
    let s = app.api();
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
    assert_eq!(app.count(JOBS).await?, 2);
    app.stop().await
}

fn hex_bytes(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
        .collect()
}
