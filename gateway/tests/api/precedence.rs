//! Which refusal a request gets when several apply: the caller is judged
//! before the id it names (401, then 403, then 404), and a malformed id is
//! a 404 by the name its route gives it.

use orq_e2e::client_with;
use orq_shared::domain::Role;
use serde_json::Value;

use crate::helpers::spawn_app;

/// `(status, error code, error message)` of a request.
async fn refusal(request: reqwest::RequestBuilder) -> anyhow::Result<(u16, String, String)> {
    let r = request.send().await?;
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    let text = |key: &str| body["error"][key].as_str().unwrap_or_default().to_string();
    Ok((status, text("code"), text("message")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_caller_is_judged_before_the_id_it_names() -> anyhow::Result<()> {
    let app = spawn_app("precedence").await?;
    let admin = app.admin();
    let viewer = client_with(&app.token(Role::Viewer).await?);
    let anonymous = reqwest::Client::new();
    let c = app.customer.clone();

    for path in ["/tasks/nope".to_string(), format!("/{c}/job/nope")] {
        let (status, code, _) = refusal(anonymous.get(app.at(&path))).await?;
        assert_eq!((status, code.as_str()), (401, "unauthorized"), "{path}");
    }
    for path in ["/tasks/nope".to_string(), format!("/{c}/script/nope")] {
        let (status, code, _) = refusal(viewer.delete(app.at(&path))).await?;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{path}");
    }
    let (status, code, _) = refusal(admin.get(app.at("/someone-else/job/nope"))).await?;
    assert_eq!((status, code.as_str()), (403, "wrong_customer"));

    for (path, message) in [
        ("/tasks/nope".to_string(), "task not found"),
        (format!("/{c}/job/nope"), "job not found"),
        (format!("/{c}/task/nope"), "task not found"),
        ("/bots/nope".to_string(), "bot not found"),
        ("/activity_manager/nope".to_string(), "activity not found"),
        (format!("/{c}/micro_task/nope"), "micro-task not found"),
        (
            "/webhooks/deliveries/nope".to_string(),
            "delivery not found",
        ),
    ] {
        let (status, code, text) = refusal(admin.get(app.at(&path))).await?;
        assert_eq!(
            (status, code.as_str(), text.as_str()),
            (404, "not_found", message),
            "{path}"
        );
    }
    app.stop().await
}
