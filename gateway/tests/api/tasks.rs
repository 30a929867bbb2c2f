//! The proof of concept's `/tasks` and `/bots`: bad input gets the right
//! JSON 4xx and stores nothing, customers are walled off from each other,
//! lists filter and page, and concurrent registrations make one bot.

use orq_e2e::{client_with, create_task, rows_csv};
use orq_shared::domain::Role;
use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with};

fn csv_b64(text: &str) -> String {
    orq_shared::attachment::encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_json_4xx_and_stores_nothing() -> anyhow::Result<()> {
    let app = spawn_app_with("badinput", |s| s.gateway.body_limit_bytes = 65536).await?;
    let gw = app.url.clone();
    let client = app.admin();
    let r = client
        .post(format!("{gw}/bots"))
        .json(&json!({"name": "b1", "ip_address": "127.0.0.9", "systems": ["Vivo360"]}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let good = csv_b64("name,email\nAna,a@x\n");
    let big = "A".repeat(70_000);
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        ("invalid base64", client.post(format!("{gw}/tasks")).json(&json!({"description": "d", "system": "Vivo360", "attachment": "***"})), 400, "invalid_field"),
        ("not CSV", client.post(format!("{gw}/tasks")).json(&json!({"description": "d", "system": "Vivo360", "attachment": csv_b64("a,b\n1,2,3\n")})), 400, "invalid_field"),
        ("binary", client.post(format!("{gw}/tasks")).json(&json!({"description": "d", "system": "Vivo360", "attachment": "AAECAwQ="})), 400, "invalid_field"),
        ("header only", client.post(format!("{gw}/tasks")).json(&json!({"description": "d", "system": "Vivo360", "attachment": csv_b64("a,b\n")})), 400, "invalid_field"),
        ("unknown system", client.post(format!("{gw}/tasks")).json(&json!({"description": "d", "system": "Nope", "attachment": good})), 400, "unknown_system"),
        ("missing field", client.post(format!("{gw}/tasks")).json(&json!({"description": "d", "attachment": good})), 400, "missing_field"),
        ("mistyped field", client.post(format!("{gw}/tasks")).json(&json!({"description": 5, "system": "Vivo360", "attachment": good})), 400, "invalid_body"),
        ("not JSON", client.post(format!("{gw}/tasks")).header("content-type", "application/json").body("{nope"), 400, "invalid_json"),
        ("no content type", client.post(format!("{gw}/tasks")).body("{}"), 415, "unsupported_media_type"),
        ("too large", client.post(format!("{gw}/tasks")).json(&json!({"description": "d", "system": "Vivo360", "attachment": big})), 413, "body_too_large"),
        ("NUL in text", client.post(format!("{gw}/tasks")).json(&json!({"description": "a\u{0}b", "system": "Vivo360", "attachment": good})), 400, "invalid_value"),
        ("NUL in a bot name", client.post(format!("{gw}/bots")).json(&json!({"name": "b\u{0}", "ip_address": "127.0.0.9"})), 400, "invalid_field"),
        ("unknown id", client.get(format!("{gw}/tasks/{}", uuid::Uuid::now_v7())), 404, "not_found"),
        ("malformed id", client.get(format!("{gw}/tasks/123")), 404, "not_found"),
        ("unknown bot", client.put(format!("{gw}/bots/{}", uuid::Uuid::now_v7())).json(&json!({"status": "BUSY"})), 404, "not_found"),
        ("bad bot status", client.post(format!("{gw}/bots")).json(&json!({"name": "b2", "ip_address": "127.0.0.9", "status": "SLEEPY"})), 400, "invalid_field"),
        ("bad ip", client.post(format!("{gw}/bots")).json(&json!({"name": "b3", "ip_address": "not-an-ip"})), 400, "invalid_field"),
        ("bad limit", client.get(format!("{gw}/tasks?limit=0")), 400, "invalid_field"),
        ("bad status filter", client.get(format!("{gw}/tasks?status=DONE")), 400, "invalid_field"),
        ("no token", reqwest::Client::new().get(format!("{gw}/tasks")), 401, "unauthorized"),
        ("wrong token", client_with("orq_nope").get(format!("{gw}/tasks")), 401, "unauthorized"),
        ("unknown route", client.get(format!("{gw}/nope")), 404, "not_found"),
        ("wrong method", client.patch(format!("{gw}/tasks")), 405, "method_not_allowed"),
    ];
    for (what, request, status, code) in cases {
        let r = request.send().await?;
        assert_eq!(r.status().as_u16(), status, "{what}");
        let body: Value = r
            .json()
            .await
            .map_err(|e| anyhow::anyhow!("{what}: body is not JSON: {e}"))?;
        assert_eq!(body["error"]["code"], code, "{what}: {body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    let db = app.db().await?;
    let jobs: i64 = db.query_one("SELECT count(*) FROM jobs", &[]).await?.get(0);
    assert_eq!(jobs, 0, "nothing stored");
    let bots: i64 = db.query_one("SELECT count(*) FROM bots", &[]).await?.get(0);
    assert_eq!(bots, 1, "only the valid bot stored");
    // A viewer reads but may not create.
    let viewer = client_with(&app.token(Role::Viewer).await?);
    let r = viewer
        .post(format!("{gw}/tasks"))
        .json(&json!({"description": "d", "system": "Vivo360", "attachment": good}))
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    assert_eq!(
        viewer.get(format!("{gw}/tasks")).send().await?.status(),
        200
    );
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_customer_sees_and_changes_nothing_of_another() -> anyhow::Result<()> {
    let app = spawn_app("tenants").await?;
    let gw = app.url.clone();
    let a = app.admin();
    let (_, other) = app.other_customer("-b").await?;
    let b = client_with(&other);
    let bot: Value = a
        .post(format!("{gw}/bots"))
        .json(&json!({"name": "a-bot", "ip_address": "127.0.0.9", "systems": ["S"]}))
        .send()
        .await?
        .json()
        .await?;
    let bot_id = bot["id"].as_str().unwrap_or_default();
    let task = create_task(&a, &gw, "S", "x\n1\n").await?;
    let task_id = task["id"].as_str().unwrap_or_default();

    for list in ["/tasks", "/bots", "/bots?ip_address=127.0.0.9"] {
        let items: Vec<Value> = b.get(format!("{gw}{list}")).send().await?.json().await?;
        assert_eq!(items.len(), 0, "{list}");
    }
    for (what, req) in [
        ("get task", b.get(format!("{gw}/tasks/{task_id}"))),
        ("task events", b.get(format!("{gw}/tasks/{task_id}/events"))),
        (
            "put task",
            b.put(format!("{gw}/tasks/{task_id}"))
                .json(&json!({"status": "CANCELED"})),
        ),
        (
            "cancel task",
            b.post(format!("{gw}/tasks/{task_id}/cancel")),
        ),
        ("delete task", b.delete(format!("{gw}/tasks/{task_id}"))),
        ("get bot", b.get(format!("{gw}/bots/{bot_id}"))),
        (
            "put bot",
            b.put(format!("{gw}/bots/{bot_id}"))
                .json(&json!({"status": "UNAVAILABLE"})),
        ),
        ("drain bot", b.post(format!("{gw}/bots/{bot_id}/drain"))),
        ("delete bot", b.delete(format!("{gw}/bots/{bot_id}"))),
    ] {
        assert_eq!(req.send().await?.status(), 404, "{what}");
    }
    // B cannot use A's system either: it has no bot that runs it.
    let r = b
        .post(format!("{gw}/tasks"))
        .json(&json!({"description": "d", "system": "S", "attachment": csv_b64("x\n1\n")}))
        .send()
        .await?;
    assert_eq!(r.status(), 400);
    let t: Value = a
        .get(format!("{gw}/tasks/{task_id}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(t["status"], "WAITING");
    let bt: Value = a
        .get(format!("{gw}/bots/{bot_id}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(bt["status"], "AVAILABLE");
    assert_eq!(bt["draining"], false);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_and_page_through_every_item_once() -> anyhow::Result<()> {
    let app = spawn_app("paging").await?;
    let gw = app.url.clone();
    let client = app.admin();
    for (name, ip, systems) in [
        ("p1", "127.0.0.11", vec!["A"]),
        ("p2", "127.0.0.12", vec!["B"]),
    ] {
        let r = client
            .post(format!("{gw}/bots"))
            .json(&json!({"name": name, "ip_address": ip, "systems": systems}))
            .send()
            .await?;
        assert_eq!(r.status(), 201);
    }
    let mut created = Vec::new();
    for t in 0..7 {
        let system = if t % 2 == 0 { "A" } else { "B" };
        let task = create_task(&client, &gw, system, &rows_csv(t, 1)).await?;
        created.push(task["id"].as_str().unwrap_or_default().to_string());
    }
    // Every page, oldest first (the default) and newest first.
    for order in ["asc", "desc"] {
        let mut seen = Vec::new();
        let mut url = format!("{gw}/tasks?limit=3&order={order}");
        loop {
            let r = client.get(&url).send().await?;
            let cursor = r
                .headers()
                .get("x-next-cursor")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let page: Vec<Value> = r.json().await?;
            assert!(page.len() <= 3);
            assert!(
                page.iter().all(|t| t.get("attachment").is_none()),
                "lists leave the attachment out"
            );
            seen.extend(
                page.iter()
                    .map(|t| t["id"].as_str().unwrap_or_default().to_string()),
            );
            match cursor {
                Some(c) => url = format!("{gw}/tasks?limit=3&order={order}&after={c}"),
                None => break,
            }
        }
        let mut expected = created.clone();
        if order == "desc" {
            expected.reverse();
        }
        assert_eq!(seen, expected, "every task once, in {order} creation order");
    }
    let bad = client
        .get(format!("{gw}/tasks?order=sideways"))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    let only_b: Vec<Value> = client
        .get(format!("{gw}/tasks?system=B"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(only_b.len(), 3);
    let waiting: Vec<Value> = client
        .get(format!("{gw}/tasks?status=WAITING&include=attachment"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(waiting.len(), 7);
    assert!(waiting.iter().all(|t| t["attachment"].is_string()));
    let by_ip: Vec<Value> = client
        .get(format!("{gw}/bots?ip_address=127.0.0.12"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(by_ip.len(), 1);
    assert_eq!(by_ip[0]["name"], "p2");
    // With the query-string token, as legacy clients send it.
    let anon = reqwest::Client::new();
    let r = anon
        .get(format!(
            "{gw}/bots?access_token={}&name=p1",
            app.admin_token
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Vec<Value>>().await?.len(), 1);
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_of_one_name_make_one_bot() -> anyhow::Result<()> {
    let app = spawn_app("register").await?;
    let gw = app.url.clone();
    let bot = client_with(&app.token(Role::Bot).await?);
    let body = json!({"name": "twin", "ip_address": "127.0.0.1", "capacity": 2, "systems": ["S"]});
    let attempts: Vec<_> = (0..6)
        .map(|_| {
            let (bot, url, body) = (bot.clone(), format!("{gw}/agent/register"), body.clone());
            tokio::spawn(async move { bot.post(url).json(&body).send().await })
        })
        .collect();
    let mut ids = Vec::new();
    for a in attempts {
        let r = a.await??;
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await?;
        ids.push(v["id"].as_str().unwrap_or_default().to_string());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "one bot for one name");
    // An agent may not take over a legacy HTTP bot's name.
    let r = app
        .admin()
        .post(format!("{gw}/bots"))
        .json(&json!({"name": "flask", "ip_address": "127.0.0.5"}))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let r = bot
        .post(format!("{gw}/agent/register"))
        .json(&json!({"name": "flask", "ip_address": "127.0.0.1", "capacity": 1}))
        .send()
        .await?;
    assert_eq!(r.status(), 409);
    app.stop().await
}
