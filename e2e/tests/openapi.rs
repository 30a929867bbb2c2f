//! The API contract: `/openapi.json` as the running gateway serves it. Every
//! operation it documents is served (none falls through to the router's
//! "no such route" or "method not allowed"), and schemathesis, fed the
//! document, finds no request that makes the gateway answer 5xx, nor an
//! answer that differs from the document. (A request past its timeout
//! answering 408 is in process: `gateway/tests/api/serve.rs`.)

use orq_e2e::{Env, test_python};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// The router's fallback: no route matched.
const NO_ROUTE: &str = "no such route";

/// `{name}` segments filled in: ids get a fresh UUID, the customer is
/// this deployment's.
fn concrete(path: &str, customer: &str) -> String {
    path.split('/')
        .map(|segment| match segment {
            "{customer}" => customer.to_string(),
            s if s.starts_with('{') => uuid::Uuid::new_v4().to_string(),
            s => s.to_string(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served() -> anyhow::Result<()> {
    let env = Env::new("openapi").await?;
    // Debug logs, to check below that no token reaches them.
    let (gw_proc, gw) = env
        .start_gateway(&[("ORQ_LOG__LEVEL", "debug,tower_http=debug")])
        .await?;
    let doc: Value = reqwest::get(format!("{gw}/openapi.json"))
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    let client = env.client();
    let mut operations = 0;
    for (path, item) in paths {
        for method in item.as_object().expect("path item").keys() {
            if path == "/events/stream" {
                continue; // a stream; served, as the feed tests show
            }
            operations += 1;
            let url = format!("{gw}{}", concrete(path, &env.customer));
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes())?;
            let response = client
                .request(method.clone(), &url)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await?;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_ne!(
                body["error"]["message"], NO_ROUTE,
                "{method} {path} is documented but not routed"
            );
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            assert!(status < 500, "{method} {path} answered {status}: {body}");
        }
    }
    assert!(operations >= 70, "only {operations} operations documented");
    // What is not an API route is not found, in the API's JSON.
    let missing = client
        .get(format!("{gw}/no/such/route/here"))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await?;
    assert_eq!(body["error"]["message"], NO_ROUTE);
    // A token in the query (as the dashboard's event stream sends it) is
    // used, and not logged.
    let by_query = reqwest::get(format!("{gw}/me?access_token={}", env.admin_token)).await?;
    assert_eq!(by_query.status(), 200);
    // Nor a task's secret key, which travels in the path.
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let by_secret = client
        .post(format!("{gw}/job/secret/{secret}"))
        .send()
        .await?;
    assert!(by_secret.status().is_client_error());
    let log = gw_proc.log_text();
    assert!(log.contains("/me"), "no request logged at debug:\n{log}");
    assert!(
        log.contains("/job/secret/{key}"),
        "the secret route not logged by its pattern:\n{log}"
    );
    assert!(
        !log.contains(&env.admin_token),
        "the access token is in the log:\n{log}"
    );
    assert!(
        !log.contains(&secret),
        "the secret key is in the log:\n{log}"
    );
    env.cleanup().await
}

/// The `schemathesis` next to the test Python (`deploy/test.sh` installs it
/// into its virtualenv).
fn schemathesis() -> anyhow::Result<PathBuf> {
    let python = PathBuf::from(test_python());
    let beside = python.with_file_name("schemathesis");
    anyhow::ensure!(
        beside.is_file(),
        "{} not found: run the tests through deploy/test.sh (it installs schemathesis), \
         or `pip install 'schemathesis>=4,<5'` and set ORQ_TEST_PYTHON",
        beside.display()
    );
    Ok(beside)
}

/// Runs schemathesis against the gateway as `token`, over the operations
/// tagged `tags` (all when empty); its output when it finds a failure.
fn fuzz(gw: &str, token: &str, tags: &[&str], dir: &std::path::Path) -> anyhow::Result<()> {
    let mut cmd = Command::new(schemathesis()?);
    cmd.current_dir(dir)
        .env("SCHEMATHESIS_HOOKS", "")
        .args(["run", &format!("{gw}/openapi.json")])
        // No 5xx, and every answer as documented: status, content type and
        // body schema (what a generated client relies on).
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance",
        ])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", "12"])
        // One worker: hypothesis's lambda descriptions are not thread-safe on
        // Python 3.11 and fail the run now and then with several.
        .args(["--workers", "1"])
        .args(["--request-timeout", "10"])
        .args(["--exclude-path", "/events/stream"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--seed", "20261123"]);
    for tag in tags {
        cmd.args(["--include-tag", tag]);
    }
    let out = cmd.output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "schemathesis as {tags:?} found failures:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    anyhow::ensure!(
        text.contains(" passed"),
        "schemathesis ran no test case:\n{text}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error() -> anyhow::Result<()> {
    let env = Env::new("fuzz").await?;
    let (gw_proc, gw) = env.start_gateway(&[]).await?;
    let worker = env.worker_token("fuzz@example.com")?;
    let (gw2, admin, bot, dir) = (
        gw.clone(),
        env.admin_token.clone(),
        env.bot_token.clone(),
        env.dir.clone(),
    );
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        fuzz(&gw2, &admin, &[], &dir)?;
        fuzz(&gw2, &bot, &["bots", "tasks", "agent"], &dir)?;
        fuzz(&gw2, &worker, &["micro_task"], &dir)
    })
    .await??;
    // Nothing the fuzzer sent made the gateway panic either.
    let log = gw_proc.log_text();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
    env.cleanup().await
}

/// A client generated from the document by openapi-python-client (from
/// PyPI) drives the running gateway: typed requests, typed answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_generated_from_the_document_works() -> anyhow::Result<()> {
    let env = Env::new("client").await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let generator = PathBuf::from(test_python()).with_file_name("openapi-python-client");
    anyhow::ensure!(
        generator.is_file(),
        "{} not found: run the tests through deploy/test.sh (it installs \
         openapi-python-client), or `pip install openapi-python-client` and set ORQ_TEST_PYTHON",
        generator.display()
    );
    let spec = env.dir.join("openapi.json");
    std::fs::write(
        &spec,
        reqwest::get(format!("{gw}/openapi.json"))
            .await?
            .bytes()
            .await?,
    )?;
    let out = env.dir.join("client");
    let generated = Command::new(&generator)
        .current_dir(&env.dir)
        .args(["generate", "--meta", "none", "--path"])
        .arg(&spec)
        .arg("--output-path")
        .arg(out.join("orquestra_client"))
        .output()?;
    anyhow::ensure!(
        generated.status.success(),
        "generation failed:\n{}\n{}",
        String::from_utf8_lossy(&generated.stdout),
        String::from_utf8_lossy(&generated.stderr)
    );
    let script = orq_e2e::repo_root().join("e2e/clients/python_client.py");
    let run = Command::new(test_python())
        .arg(script)
        .arg(&out)
        .arg(&gw)
        .arg(&env.admin_token)
        .output()?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    anyhow::ensure!(
        run.status.success() && stdout.starts_with("ok "),
        "the generated client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // What it created is really there.
    let task_id = stdout.split_whitespace().nth(2).unwrap_or_default();
    let task: serde_json::Value = env
        .client()
        .get(format!("{gw}/tasks/{task_id}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(task["description"], "from a generated client");
    env.cleanup().await
}
