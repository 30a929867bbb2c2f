//! Inputs that used to panic a handler or answer in plain text.

use serde_json::Value;
use std::time::Duration;

use crate::helpers::{answer, spawn_app};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_paths_and_extreme_event_ids_get_answers_not_panics() -> anyhow::Result<()> {
    let app = spawn_app("edgeinput").await?;
    let gw = app.url.clone();
    let admin = app.admin();
    for path in [
        "/tasks/%ff",
        "/bots/%ff/drain",
        "/%ff/task",
        "/%ff/task/%fe/job",
        "/micro_task/execution/%c3%28/start",
    ] {
        let method = if path.ends_with("drain") || path.ends_with("start") {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        };
        let r = admin.request(method, format!("{gw}{path}")).send().await?;
        let status = r.status().as_u16();
        let content_type = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!((400..500).contains(&status), "{path}: {status}");
        assert!(
            content_type.starts_with("application/json"),
            "{path}: {content_type}"
        );
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
    let max = i64::MAX.to_string();
    for request in [
        admin.get(format!("{gw}/events/stream?after={max}")),
        admin
            .get(format!("{gw}/events/stream"))
            .header("Last-Event-ID", &max),
        admin.get(format!("{gw}/events/stream?after=-{max}")),
    ] {
        let mut r = request.send().await?;
        assert_eq!(r.status(), 200);
        // The stream stays up past a poll, with no panic closing it.
        let next = tokio::time::timeout(Duration::from_millis(700), r.chunk()).await;
        assert!(!matches!(next, Ok(Ok(None) | Err(_))), "the stream ended");
    }
    let (status, code, _) =
        answer(admin.get(format!("{gw}/events/stream?after=99999999999999999999"))).await?;
    assert_eq!((status, code.as_str()), (400, "invalid_query"));
    app.stop().await
}
