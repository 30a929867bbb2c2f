//! What each credential may do to a bot, and where a legacy bot may be.

use orq_e2e::client_with;
use orq_shared::domain::Role;
use serde_json::{Value, json};

use crate::helpers::{answer, spawn_app, spawn_app_with};

async fn issue_bot_token(admin: &reqwest::Client, gw: &str, bot: &str) -> anyhow::Result<String> {
    let r = admin.post(format!("{gw}/bots/{bot}/token")).send().await?;
    anyhow::ensure!(r.status() == 201, "bot token: {}", r.text().await?);
    let issued: Value = r.json().await?;
    Ok(issued["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_token_changes_only_the_status_of_the_bot_it_holds() -> anyhow::Result<()> {
    let app = spawn_app("botcred").await?;
    let gw = app.url.clone();
    let admin = app.admin();
    let a = app
        .create(
            "/bots",
            &json!({"name": "a", "ip_address": "127.0.0.1", "port": 5001, "systems": ["S"]}),
        )
        .await?;
    let b = app
        .create(
            "/bots",
            &json!({"name": "b", "ip_address": "127.0.0.1", "port": 5002}),
        )
        .await?;

    // A bot token that holds no bot changes none, address or status.
    let loose = client_with(&app.token(Role::Bot).await?);
    for body in [
        json!({"status": "BUSY"}),
        json!({"ip_address": "10.0.0.1", "port": 80}),
    ] {
        let (status, code, _) = answer(loose.put(format!("{gw}/bots/{a}")).json(&body)).await?;
        assert_eq!((status, code.as_str()), (403, "not_your_bot"), "{body}");
    }

    // The token issued for bot a sets a's status ...
    let own = client_with(&issue_bot_token(&admin, &gw, &a).await?);
    let (status, _, _) = answer(
        own.put(format!("{gw}/bots/{a}"))
            .json(&json!({"status": "BUSY"})),
    )
    .await?;
    assert_eq!(status, 200);
    let bot: Value = admin
        .get(format!("{gw}/bots/{a}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(bot["status"], "BUSY");
    // ... and may echo the whole object back with a new status ...
    let mut echoed = bot.clone();
    echoed["status"] = json!("AVAILABLE");
    let (status, _, _) = answer(own.put(format!("{gw}/bots/{a}")).json(&echoed)).await?;
    assert_eq!(status, 200);
    // ... but changes nothing else of it,
    for (body, field) in [
        (json!({"ip_address": "10.9.9.9"}), "ip_address"),
        (json!({"port": 6000, "status": "BUSY"}), "port"),
        (json!({"delivery": "agent"}), "delivery"),
        (json!({"name": "evil"}), "name"),
        (json!({"capacity": 9}), "capacity"),
    ] {
        let (status, code, got) = answer(own.put(format!("{gw}/bots/{a}")).json(&body)).await?;
        assert_eq!(
            (status, code.as_str(), got.as_str()),
            (403, "field_not_allowed", field),
            "{body}"
        );
    }
    let bot: Value = admin
        .get(format!("{gw}/bots/{a}"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        (
            bot["ip_address"].as_str(),
            bot["port"].as_i64(),
            bot["status"].as_str()
        ),
        (Some("127.0.0.1"), Some(5001), Some("AVAILABLE"))
    );
    // and nothing of another bot.
    let (status, code, _) = answer(
        own.put(format!("{gw}/bots/{b}"))
            .json(&json!({"status": "BUSY"})),
    )
    .await?;
    assert_eq!((status, code.as_str()), (403, "not_your_bot"));

    // It reports on tasks on its bot only, and by status only: this one
    // waits, on no bot.
    let task = app
        .create(
            "/tasks",
            &json!({"description": "d", "system": "S", "attachment": orq_shared::attachment::encode("x\n1\n")}),
        )
        .await?;
    for (body, code) in [
        (json!({"status": "COMPLETE"}), "not_your_task"),
        (json!({"description": "mine now"}), "field_not_allowed"),
    ] {
        let (status, got, _) = answer(own.put(format!("{gw}/tasks/{task}")).json(&body)).await?;
        assert_eq!((status, got.as_str()), (403, code), "{body}");
    }

    // A new token for a takes it from the old one.
    let newer = client_with(&issue_bot_token(&admin, &gw, &a).await?);
    let (status, code, _) = answer(
        own.put(format!("{gw}/bots/{a}"))
            .json(&json!({"status": "BUSY"})),
    )
    .await?;
    assert_eq!((status, code.as_str()), (403, "not_your_bot"));
    let (status, _, _) = answer(
        newer
            .put(format!("{gw}/bots/{a}"))
            .json(&json!({"status": "BUSY"})),
    )
    .await?;
    assert_eq!(status, 200);

    // Only admins issue bot tokens; a repeat under one key is the same token.
    let (status, _, _) = answer(loose.post(format!("{gw}/bots/{b}/token"))).await?;
    assert_eq!(status, 403);
    let keyed = |key: &str| {
        admin
            .post(format!("{gw}/bots/{b}/token"))
            .header("Idempotency-Key", key)
    };
    let first: Value = keyed("k1").send().await?.json().await?;
    let again: Value = keyed("k1").send().await?.json().await?;
    assert!(
        first["access_token"]
            .as_str()
            .is_some_and(|t| !t.is_empty())
    );
    assert_eq!(first["access_token"], again["access_token"]);

    // An agent's token holds the bot it registers, and no other.
    let agent = loose.clone();
    let r = agent
        .post(format!("{gw}/agent/register"))
        .json(&json!({"name": "agent-1", "ip_address": "127.0.0.1", "capacity": 1, "systems": [], "tags": []}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 200, "register: {}", r.text().await?);
    let registered: Value = r.json().await?;
    let agent_bot = registered["id"].as_str().unwrap_or_default();
    let (status, _, _) = answer(
        agent
            .put(format!("{gw}/bots/{agent_bot}"))
            .json(&json!({"status": "BUSY"})),
    )
    .await?;
    assert_eq!(status, 200);
    let (status, code, _) = answer(
        newer
            .put(format!("{gw}/bots/{agent_bot}"))
            .json(&json!({"status": "BUSY"})),
    )
    .await?;
    assert_eq!((status, code.as_str()), (403, "not_your_bot"));
    app.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_bot_addresses_are_checked_against_the_bot_deny_list() -> anyhow::Result<()> {
    let app = spawn_app("botdeny").await?;
    let gw = app.url.clone();
    let admin = app.admin();
    // Cloud metadata, in two spellings, is refused by default ...
    for ip in [
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "::ffff:0:a9fe:a9fe",
    ] {
        let (status, code, field) = answer(
            admin
                .post(format!("{gw}/bots"))
                .json(&json!({"name": ip, "ip_address": ip})),
        )
        .await?;
        assert_eq!(
            (status, code.as_str(), field.as_str()),
            (400, "invalid_field", "ip_address"),
            "{ip}"
        );
    }
    // ... loopback and private networks are allowed (bots beside the gateway).
    let bot = app
        .create("/bots", &json!({"name": "near", "ip_address": "127.0.0.1"}))
        .await?;
    app.create(
        "/bots",
        &json!({"name": "lan", "ip_address": "192.168.1.20"}),
    )
    .await?;
    let (status, _, field) = answer(
        admin
            .put(format!("{gw}/bots/{bot}"))
            .json(&json!({"ip_address": "169.254.169.254"})),
    )
    .await?;
    assert_eq!((status, field.as_str()), (400, "ip_address"));
    // The list is the operator's: here loopback is denied too.
    let strict = spawn_app_with("botdenystrict", |s| {
        s.security.bot_deny_networks = vec!["127.0.0.0/8".into()];
    })
    .await?;
    let (status, _, field) = answer(
        strict
            .admin()
            .post(strict.at("/bots"))
            .json(&json!({"name": "x", "ip_address": "::ffff:127.0.0.1"})),
    )
    .await?;
    assert_eq!((status, field.as_str()), (400, "ip_address"));
    strict.stop().await?;
    app.stop().await
}
