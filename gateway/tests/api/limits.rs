//! Rate limits on the public edge.

use orq_e2e::client_with;
use orq_shared::domain::Role;
use serde_json::{Value, json};
use std::time::Duration;

use crate::helpers::{answer, spawn_app_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_a_rate_limit_get_429_with_retry_after() -> anyhow::Result<()> {
    // Reads: 30 a minute per token, one at a time (a burst of one second
    // is less than one request: one). Creates: 30 a minute per address,
    // loopback counted.
    let app = spawn_app_with("ratelimit", |s| {
        s.limits.read.per_token = 30;
        s.limits.read.burst_seconds = 1;
        s.limits.create.per_address = 30;
        s.limits.create.burst_seconds = 1;
        s.limits.address_exempt = Vec::new();
    })
    .await?;
    let gw = app.url.clone();
    let admin = app.admin();
    assert_eq!(admin.get(format!("{gw}/bots")).send().await?.status(), 200);
    let r = admin.get(format!("{gw}/bots")).send().await?;
    assert_eq!(r.status(), 429);
    let retry: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(body["error"]["details"]["per"], "token");
    assert_eq!(body["error"]["details"]["limit"], "read");
    // Another token reads; this one does again after waiting.
    let viewer = client_with(&app.token(Role::Viewer).await?);
    assert_eq!(viewer.get(format!("{gw}/bots")).send().await?.status(), 200);
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(admin.get(format!("{gw}/bots")).send().await?.status(), 200);

    // Creates from one address are limited whatever token they carry.
    let body = json!({"name": "n1", "ip_address": "127.0.0.1"});
    let first = admin.post(format!("{gw}/bots")).json(&body).send().await?;
    assert_eq!(first.status(), 201);
    let (status, code, _) = answer(
        viewer
            .post(format!("{gw}/bots"))
            .json(&json!({"name": "n2", "ip_address": "127.0.0.1"})),
    )
    .await?;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    app.stop().await
}
