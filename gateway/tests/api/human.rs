//! flowBuild's user tasks in process: bad parameters named, commit and
//! submit against their schemas, an admin's expiry. Micro-tasks (whose
//! finishes the dispatcher applies) and deadlines the reaper enforces are
//! `e2e/tests/human.rs`.

use orq_e2e::api::id;
use orq_e2e::client_with;
use orq_shared::domain::Role;
use serde_json::{Value, json};

use crate::helpers::spawn_app;

/// flowBuild's user tasks: opened with the seed's parameters, committed
/// and submitted through the activity manager, or expired by an admin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_tasks_commit_submit_and_expire_with_is_continue() -> anyhow::Result<()> {
    let app = spawn_app("usertask").await?;
    let gw = app.url.clone();
    let admin = app.admin();
    let open = |body: Value| {
        let admin = admin.clone();
        let gw = gw.clone();
        async move {
            let r = admin
                .post(format!("{gw}/activity_manager"))
                .json(&body)
                .send()
                .await?;
            let status = r.status().as_u16();
            anyhow::Ok((status, r.json::<Value>().await.unwrap_or(Value::Null)))
        }
    };
    let schema = json!({
        "type": "object",
        "required": ["cpf"],
        "properties": {"cpf": {"type": "string", "pattern": "^[0-9]{11}$"}}
    });

    // Bad parameters are refused, naming the field.
    for (body, field) in [
        (json!({"input": {}}), "action"),
        (json!({"action": "Preencher_dados_pessoais"}), "input"),
        (
            json!({"action": "a", "input": {}, "timeout": "2019-08-13T45:29:00"}),
            "timeout",
        ),
        (
            json!({"action": "a", "input": {}, "timeout": -3}),
            "timeout",
        ),
        (
            json!({"action": "a", "input": {}, "activity_manager": "wait"}),
            "activity_manager",
        ),
        (
            json!({"action": "a", "input": {}, "activity_schema": {"type": 1}}),
            "activity_schema",
        ),
        (
            json!({"action": "a", "input": {}, "events": [{"type": "timer"}]}),
            "events[0]",
        ),
    ] {
        let (status, e) = open(body.clone()).await?;
        assert_eq!(status, 400, "{body}: {e}");
        let named = e["error"]["details"]["field"] == field
            || e["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(field);
        assert!(named, "{body}: {e}");
    }

    // Commit (partial) and submit; a payload failing activity_schema is a
    // 400 with the validation errors and changes nothing.
    let (status, task) = open(json!({
        "action": "Preencher_dados_pessoais",
        "input": {"name": "Ana"},
        "timeout": 3600,
        "activity_schema": schema,
        "result_schema": {"type": "object", "required": ["cpf"]},
    }))
    .await?;
    assert_eq!(status, 201, "{task}");
    assert_eq!(task["status"], "NEW");
    assert_eq!(task["activity_manager"], "commit");
    let expires = task["expires_at"].as_str().unwrap_or_default().to_string();
    assert!(
        !expires.is_empty(),
        "the timeout became an absolute deadline"
    );
    let t = id(&task);
    let r = admin
        .post(format!("{gw}/activity_manager/{t}/commit"))
        .json(&json!({"cpf": "12"}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await?;
    assert_eq!(e["error"]["details"]["errors"][0]["field"], "/cpf", "{e}");
    let unchanged: Value = admin
        .get(format!("{gw}/activity_manager/{t}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(unchanged["status"], "NEW");
    assert_eq!(unchanged["committed"], Value::Null);
    let r = admin
        .post(format!("{gw}/activity_manager/{t}/commit"))
        .json(&json!({"cpf": "12345678901"}))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let committed: Value = r.json().await?;
    assert_eq!(committed["status"], "EXECUTING");
    assert_eq!(committed["expires_at"], expires.as_str());
    let r = admin
        .post(format!("{gw}/activity_manager/{t}/submit"))
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    let done: Value = r.json().await?;
    assert_eq!(done["status"], "COMPLETE");
    assert_eq!(done["result"], json!({"cpf": "12345678901"}));
    assert_eq!(done["is_continue"], false);
    let r = admin
        .post(format!("{gw}/activity_manager/{t}/submit"))
        .send()
        .await?;
    assert_eq!(r.status(), 422, "no longer open");
    let r = admin
        .post(format!("{gw}/activity_manager/{t}/commit"))
        .json(&json!({"cpf": "1"}))
        .send()
        .await?;
    assert_eq!(r.status(), 422);

    // A result that fails result_schema puts the task in ERROR.
    let (_, task) = open(
        json!({"action": "a", "input": {}, "result_schema": {"type": "object", "required": ["x"]}}),
    )
    .await?;
    let r = admin
        .post(format!("{gw}/activity_manager/{}/submit", id(&task)))
        .json(&json!({"y": 1}))
        .send()
        .await?;
    let v: Value = r.json().await?;
    assert_eq!(v["status"], "ERROR");
    assert!(
        v["error"]
            .as_str()
            .unwrap_or_default()
            .contains("result_schema"),
        "{v}"
    );

    // An admin expires an open one; a user may not. One opened without a
    // timeout still has a deadline: `human.user_task_timeout_ms` (7 days).
    let (_, task) = open(json!({"action": "a", "input": {}})).await?;
    let t = id(&task);
    let expires = time::OffsetDateTime::parse(
        task["expires_at"].as_str().unwrap_or_default(),
        &time::format_description::well_known::Rfc3339,
    )?;
    let hours = (expires - time::OffsetDateTime::now_utc()).whole_hours();
    assert!((167..=168).contains(&hours), "{task}");
    let user = client_with(&app.token(Role::User).await?);
    let r = user
        .post(format!("{gw}/activity_manager/{t}/expire"))
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    let r = admin
        .post(format!("{gw}/activity_manager/{t}/expire"))
        .send()
        .await?;
    let v: Value = r.json().await?;
    assert_eq!(
        (v["status"].as_str(), v["is_continue"].as_bool()),
        (Some("COMPLETE"), Some(true))
    );
    // A notify one goes on without its process waiting, so the process
    // ends it, with the role that opened it (seed 001); a viewer may not.
    let r = user
        .post(format!("{gw}/activity_manager"))
        .json(&json!({"action": "n", "input": {}, "activity_manager": "notify"}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let n = id(&r.json::<Value>().await?);
    let viewer = client_with(&app.token(Role::Viewer).await?);
    let r = viewer
        .post(format!("{gw}/activity_manager/{n}/expire"))
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    let r = user
        .post(format!("{gw}/activity_manager/{n}/expire"))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await?;
    assert_eq!(
        (v["status"].as_str(), v["is_continue"].as_bool()),
        (Some("COMPLETE"), Some(true))
    );
    let r = user
        .post(format!("{gw}/activity_manager/{n}/expire"))
        .send()
        .await?;
    assert_eq!(r.status(), 422, "ended already");
    let listed: Value = admin
        .get(format!("{gw}/activity_manager?status=COMPLETE"))
        .send()
        .await?
        .json()
        .await?;
    // The one submitted, the one expired and the notify one its process
    // ended (one the reaper expires on its timeout is `e2e/tests/human.rs`).
    assert_eq!(listed.as_array().map(Vec::len), Some(3));
    app.stop().await
}
