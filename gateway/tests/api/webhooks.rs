//! Webhook addresses, checked when a subscription or a callback is made.
//! Deliveries (the reaper's outbox, retries, signatures) are end to end in
//! `e2e/tests/webhooks.rs`.

use serde_json::{Value, json};

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_urls_are_checked() -> anyhow::Result<()> {
    // The default deny list: loopback and private networks are refused.
    let app = spawn_app("hookurl").await?;
    let gw = app.url.clone();
    let client = app.admin();
    for (url, why) in [
        ("http://127.0.0.1:9/hook", "denied network"),
        ("http://10.1.2.3/hook", "denied network"),
        ("https://user:pw@example.com/hook", "credentials"),
        ("ftp://example.com/hook", "http or https"),
    ] {
        let r = client
            .post(format!("{gw}/webhooks/subscriptions"))
            .json(&json!({"url": url}))
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{url}");
        let v: Value = r.json().await?;
        assert_eq!(v["error"]["details"]["field"], "subscription.url", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains(why),
            "{v}"
        );
    }
    let r = client
        .post(format!("{gw}/tasks"))
        .json(&json!({"description": "x", "system": "S", "attachment": "", "callback": {"url": "http://169.254.169.254/"}}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["details"]["field"], "callback.url", "{v}");
    let subs: Value = client
        .get(format!("{gw}/webhooks/subscriptions"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(subs, json!([]), "nothing stored");
    app.stop().await
}
