//! The dashboard in a real browser (the system's headless Chromium, driven
//! by Playwright in `e2e/browser/dashboard.mjs`): the overview, a CSV task
//! run through it to COMPLETE on a real agent (named, with a link to its
//! page), its webhook deliveries (to a loopback receiver, through the
//! reaper) on the deliveries page, a script and a task definition made,
//! edited, run with arguments to COMPLETE on the agent, its secret key and
//! recipe (exported, then imported; the copy made to require a tag no
//! agent carries, its run flagged), and a micro-task and a user task on
//! the People page (the user task expired there by the admin).
//! Its files and `/me` are tested in process
//! (`gateway/tests/api/dashboard.rs`).

use orq_e2e::{Env, agent_config, repo_root};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// The browser run's tools, or why they are missing.
struct BrowserTools {
    node: String,
    chromium: PathBuf,
    script: PathBuf,
}

fn browser_tools() -> anyhow::Result<BrowserTools> {
    let node = std::env::var("ORQ_TEST_NODE").unwrap_or_else(|_| "node".into());
    let chromium = PathBuf::from(
        std::env::var("ORQ_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
    );
    let browser_dir = repo_root().join("e2e/browser");
    let hint = "run the tests through deploy/test.sh: it installs Chromium, Node.js and \
                e2e/browser's packages (npm ci)";
    let works = std::process::Command::new(&node)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    anyhow::ensure!(works, "{node} (Node.js) cannot be run: {hint}");
    anyhow::ensure!(
        chromium.exists(),
        "{} is missing: {hint} (or point ORQ_TEST_CHROMIUM at a Chromium)",
        chromium.display()
    );
    anyhow::ensure!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "e2e/browser/node_modules/playwright-core is missing: {hint}"
    );
    Ok(BrowserTools {
        node,
        chromium,
        script: browser_dir.join("dashboard.mjs"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_browser_runs_a_csv_task_to_complete_through_the_dashboard() -> anyhow::Result<()> {
    let tools = browser_tools()?;
    let env = Env::new("dash").await?;
    // Webhooks may reach the loopback receiver, and go out at once.
    let hooks: &[(&str, &str)] = &[
        ("ORQ_WEBHOOKS__DENY_NETWORKS", ""),
        ("ORQ_REAPER__TICK_MS", "100"),
    ];
    let (_gw, gw) = env.start_gateway(hooks).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[])?;
    let mut reaper = env.command("timeout-reaper");
    for (k, v) in hooks {
        reaper.env(k, v);
    }
    let _reaper = env.spawn("timeout-reaper", reaper)?;
    // A receiver that accepts every delivery, subscribed to every job.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let hook = format!("http://{}/hook", listener.local_addr()?);
    let receiver = tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(|| async { axum::http::StatusCode::NO_CONTENT }),
        );
        let _ = axum::serve(listener, app).await;
    });
    let subscribed = env
        .client()
        .post(format!("{gw}/webhooks/subscriptions"))
        .json(&serde_json::json!({ "url": hook }))
        .send()
        .await?;
    assert_eq!(subscribed.status(), 201, "{}", subscribed.text().await?);
    let viewer = env.token(&env.customer, "viewer")?;
    // The demo's automation, slowed a little so the page sees the task run.
    let config = agent_config(
        &env.dir,
        "agent.toml",
        2,
        &[("Vivo360", &["python3", "examples/vivo360_create_user.py"])],
    )?;
    let _agent = env
        .start_agent(&gw, "dash-agent", &config, &[("ORQ_DEMO_DELAY", "0.4")])
        .await?;

    // A micro-task and a user task for the People view; the page expires
    // the user task (as the admin).
    let micro_id = env
        .create(
            &format!("{gw}/{}/micro_task", env.customer),
            &serde_json::json!({ "name": "survey", "task_flow": [{ "step": 1 }] }),
        )
        .await?;
    let user_task_id = env
        .create(
            &format!("{gw}/activity_manager"),
            &serde_json::json!({ "action": "approve", "input": { "x": 1 } }),
        )
        .await?;

    let screenshot = env.dir.join("dashboard.png");
    let run = tokio::process::Command::new(&tools.node)
        .arg(&tools.script)
        .current_dir(repo_root().join("e2e/browser"))
        .env("ORQ_URL", &gw)
        .env("ORQ_TOKEN", &env.admin_token)
        .env("ORQ_VIEWER_TOKEN", &viewer)
        .env("ORQ_BOT_TOKEN", &env.bot_token)
        .env("ORQ_SCREENSHOT", &screenshot)
        .env("ORQ_AGENT", "dash-agent")
        .env("ORQ_SYSTEM", "Vivo360")
        .env("ORQ_MICRO_TASK_ID", &micro_id)
        .env("ORQ_USER_TASK_ID", &user_task_id)
        .env("ORQ_TEST_CHROMIUM", &tools.chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .map_err(|_| anyhow::anyhow!("the browser test ran over 180 s"))??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}{stderr}");
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stdout}{stderr}",
        out.status
    );

    let png = std::fs::read(&screenshot)?;
    assert!(
        png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG screenshot ({} bytes)",
        screenshot.display(),
        png.len()
    );
    // The test's directory is removed at the end: keep the screenshots (the
    // task's page, then each view) in a directory on request.
    if let Ok(keep) = std::env::var("ORQ_TEST_KEEP_SCREENSHOTS") {
        std::fs::create_dir_all(&keep)?;
        for entry in std::fs::read_dir(&env.dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "png") {
                std::fs::copy(
                    &path,
                    PathBuf::from(&keep).join(path.file_name().unwrap_or_default()),
                )?;
            }
        }
    }

    // What the page reported, checked against the API and the database.
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("TASK_ID="))
        .ok_or_else(|| anyhow::anyhow!("the browser test printed no TASK_ID"))?
        .trim()
        .to_string();
    let task: Value = env.get_json(&format!("{gw}/tasks/{id}")).await?;
    assert_eq!(task["status"], "COMPLETE", "{task}");
    assert_eq!(task["system"], "Vivo360");
    assert_eq!(task["rows_done"], 5);
    assert_eq!(task["percent"], 100);
    let db = env.db().await?;
    let row = db
        .query_one(
            "SELECT status, (SELECT count(*) FROM jobs WHERE kind = 'system') FROM jobs
              WHERE id = $1::text::uuid",
            &[&id],
        )
        .await?;
    assert_eq!(row.get::<_, &str>(0), "COMPLETE");
    assert_eq!(row.get::<_, i64>(1), 1, "the page created one task");
    // The definition the page made, edited and ran with arguments; the
    // recipe it exported, imported beside it with the same script.
    let printed = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| anyhow::anyhow!("the browser test printed no {key}"))
    };
    let (definition, job, imported) = (
        printed("DEFINITION_ID=")?,
        printed("JOB_ID=")?,
        printed("IMPORTED_ID=")?,
    );
    let c = &env.customer;
    let def: Value = env.get_json(&format!("{gw}/{c}/task/{definition}")).await?;
    assert_eq!(def["description"], "greets someone, edited", "{def}");
    assert_eq!(def["timeout"], 60, "{def}");
    assert_eq!(
        def["task_arguments"],
        serde_json::json!([
            {"type": "input", "label": "who", "required": true},
            {"type": "options", "label": "tone", "options": ["calm", "loud"]},
        ])
    );
    let run: Value = env.get_json(&format!("{gw}/{c}/job/{job}")).await?;
    assert_eq!(run["status"], "COMPLETE", "{run}");
    assert_eq!(run["task_id"], definition.as_str());
    assert_eq!(run["task_arguments"], serde_json::json!(["world", "loud"]));
    assert_eq!(run["bot_name"], "dash-agent");
    let copy: Value = env.get_json(&format!("{gw}/{c}/task/{imported}")).await?;
    assert_eq!(copy["name"], "greeter");
    assert_eq!(
        copy["script_id"], def["script_id"],
        "the import reused the script"
    );
    assert_eq!(copy["task_arguments"], def["task_arguments"]);
    assert_eq!(copy["required_tags"], serde_json::json!(["gpu"]));
    assert_eq!(copy["tags"], serde_json::json!(["copy", "demo"]));
    // Its run waits, flagged: no agent carries "gpu".
    let stranded: Value = env
        .get_json(&format!("{gw}/{c}/job/{}", printed("STRANDED_ID=")?))
        .await?;
    assert_eq!(stranded["status"], "WAITING", "{stranded}");
    assert!(
        stranded["waiting_reason"]
            .as_str()
            .is_some_and(|r| r.contains("gpu")),
        "{stranded}"
    );
    // The page expired the user task: submitted as it stood, with
    // is_continue, and concluded; the micro-task was only looked at.
    let expired: Value = env
        .get_json(&format!("{gw}/activity_manager/{user_task_id}"))
        .await?;
    assert_eq!(expired["status"], "COMPLETE", "{expired}");
    assert_eq!(expired["is_continue"], true, "{expired}");
    assert_eq!(expired["result"]["is_continue"], true, "{expired}");
    let micro: Value = env
        .get_json(&format!("{gw}/{}/micro_task/{micro_id}", env.customer))
        .await?;
    assert_eq!(micro["status"], "NEW", "{micro}");
    receiver.abort();
    env.cleanup().await
}
