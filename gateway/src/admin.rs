//! `gateway admin ...`: create customers and issue tokens. Each command
//! prints one JSON line, the token in it shown this once.

use orq_shared::config::Settings;
use orq_shared::domain::Role;
use orq_shared::repo::customers;
use serde_json::json;

use crate::state::in_transaction;

pub async fn create_customer(settings: &Settings, name: &str) -> anyhow::Result<serde_json::Value> {
    let name = customers::CustomerName::parse(name).map_err(anyhow::Error::msg)?;
    let name = name.as_str();
    orq_shared::db::migrate(&settings.database).await?;
    let pool = orq_shared::db::pool(&settings.database)?;
    let token = in_transaction(&pool, async |tx| {
        if customers::find_by_name(tx, name).await?.is_some() {
            anyhow::bail!("customer {name:?} exists already; use `gateway admin create-token`");
        }
        let id = customers::create(tx, name).await?;
        let (_, token) = customers::issue_token(tx, id, Role::Admin, None).await?;
        Ok::<_, anyhow::Error>(token)
    })
    .await?;
    Ok(json!({ "customer": name, "role": "admin", "access_token": token }))
}

pub async fn create_token(
    settings: &Settings,
    customer: &str,
    role: Role,
    name: Option<&str>,
    bot: Option<&str>,
) -> anyhow::Result<serde_json::Value> {
    orq_shared::db::migrate(&settings.database).await?;
    let pool = orq_shared::db::pool(&settings.database)?;
    let db = pool.get().await?;
    let id = customers::find_by_name(&db, customer)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no customer named {customer:?}"))?;
    let name = name.map(str::trim).filter(|n| !n.is_empty());
    if role == Role::Worker {
        let email = orq_shared::human::Email::parse(name.unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("a worker token needs --name <e-mail>: {e}"))?;
        let tokens = orq_shared::human::WorkerTokens::from_config(&settings.security.secret_key)?;
        let (_, token) = customers::issue_worker_token(&db, id, &email, &tokens).await?;
        return Ok(
            json!({ "customer": customer, "role": "worker", "name": email, "access_token": token }),
        );
    }
    if let Some(bot) = bot {
        anyhow::ensure!(role == Role::Bot, "--bot goes with --role bot");
        drop(db);
        let (found, token) = in_transaction(&pool, async |tx| {
            let found = orq_shared::repo::bots::find_by_name_or_id(tx, id, bot.trim())
                .await?
                .ok_or_else(|| anyhow::anyhow!("customer {customer:?} has no bot {bot:?}"))?;
            let (token_id, token) =
                customers::issue_token(tx, id, Role::Bot, Some(name.unwrap_or(&found.name)))
                    .await?;
            orq_shared::repo::bots::hold(tx, id, found.id, token_id).await?;
            Ok::<_, anyhow::Error>((found, token))
        })
        .await?;
        return Ok(json!({
            "customer": customer, "role": "bot", "name": name.unwrap_or(&found.name),
            "bot_id": found.id, "access_token": token,
        }));
    }
    let (_, token) = customers::issue_token(&db, id, role, name).await?;
    Ok(json!({ "customer": customer, "role": role.as_str(), "name": name, "access_token": token }))
}
