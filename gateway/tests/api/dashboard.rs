//! The dashboard's files (compiled into the gateway) and `/me`, which it
//! reads first. A browser running the dashboard is `e2e/tests/dashboard.rs`.

use orq_e2e::client_with;
use orq_shared::domain::Role;
use serde_json::Value;

use crate::helpers::spawn_app;

const CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
     style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'none'";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_files_and_me_are_served() -> anyhow::Result<()> {
    let app = spawn_app("dashfiles").await?;
    let gw = app.url.clone();
    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;

    let root = anonymous.get(format!("{gw}/")).send().await?;
    assert_eq!(root.status(), 307);
    assert_eq!(root.headers()["location"], "/dashboard");
    for (path, kind, marker) in [
        ("/dashboard", "text/html", "<!doctype html>"),
        ("/dashboard/app.js", "text/javascript", "text/event-stream"),
        ("/dashboard/app.css", "text/css", "progress"),
    ] {
        let r = anonymous.get(format!("{gw}{path}")).send().await?;
        assert_eq!(r.status(), 200, "{path}");
        let content_type = r.headers()["content-type"].to_str()?.to_string();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
        assert_eq!(r.headers()["content-security-policy"], CSP, "{path}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(r.headers()["cache-control"], "no-cache", "{path}");
        let text = r.text().await?;
        assert!(text.contains(marker), "{path}");
        // The token goes as a header only, the live stream's included.
        assert!(
            !text.contains("access_token"),
            "{path} puts a token in a URL"
        );
    }
    let missing = anonymous.get(format!("{gw}/dashboard/nope")).send().await?;
    assert_eq!(missing.status(), 404);
    let body: Value = missing.json().await?;
    assert_eq!(body["error"]["code"], "not_found");

    let me: Value = app
        .admin()
        .get(format!("{gw}/me"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(me["customer"], app.customer.as_str());
    assert_eq!(me["role"], "admin");
    let viewer = app.token(Role::Viewer).await?;
    let me: Value = client_with(&viewer)
        .get(format!("{gw}/me?unused=1"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(me["role"], "viewer");
    let by_query = anonymous
        .get(format!(
            "{gw}/me?access_token={}",
            app.token(Role::Bot).await?
        ))
        .send()
        .await?;
    assert_eq!(by_query.status(), 200);
    assert_eq!(by_query.json::<Value>().await?["role"], "bot");
    let nobody = anonymous.get(format!("{gw}/me")).send().await?;
    assert_eq!(nobody.status(), 401);
    assert_eq!(
        nobody.json::<Value>().await?["error"]["code"],
        "unauthorized"
    );
    app.stop().await
}
