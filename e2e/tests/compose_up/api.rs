//! What the test asks of the gateway published on the host: tasks posted,
//! listed and waited for, as the customer's admin.

use anyhow::{Context, ensure};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub fn token(answer: &Value) -> anyhow::Result<String> {
    text(answer, "access_token")
}

pub fn text(v: &Value, field: &str) -> anyhow::Result<String> {
    v[field]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no {field} in {v}"))
}

pub async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let answer = client.get(url).send().await?;
    ensure!(answer.status() == 200, "GET {url}: {}", answer.status());
    Ok(answer.json().await?)
}

/// `count` tasks for the demo automation (Vivo360), `rows` users each;
/// their ids in order.
pub async fn post_tasks(
    client: &reqwest::Client,
    gateway: &str,
    first: usize,
    count: usize,
    rows: usize,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::with_capacity(count);
    for t in first..first + count {
        let mut csv = String::from("name,email,profile\n");
        for r in 0..rows {
            csv.push_str(&format!(
                "User {t}-{r},user.{t}.{r}@example.com,atendente\n"
            ));
        }
        let task = orq_e2e::create_task(client, gateway, "Vivo360", &csv).await?;
        ids.push(text(&task, "id")?);
    }
    Ok(ids)
}

/// Every task of the customer, by id.
pub async fn list_tasks(
    client: &reqwest::Client,
    gateway: &str,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let listed = get(client, &format!("{gateway}/tasks?limit=1000")).await?;
    Ok(listed
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["id"].as_str()?.to_string(), t.clone())))
        .collect())
}

/// Waits for all of `ids` to be COMPLETE; any other end fails at once.
pub async fn until_complete(
    client: &reqwest::Client,
    gateway: &str,
    ids: &[String],
    within: Duration,
) -> anyhow::Result<BTreeMap<String, Value>> {
    let deadline = Instant::now() + within;
    loop {
        let tasks = list_tasks(client, gateway).await?;
        let mut statuses: BTreeMap<&str, usize> = BTreeMap::new();
        let mut done = BTreeMap::new();
        for id in ids {
            let task = tasks
                .get(id)
                .with_context(|| format!("task {id} is not listed"))?;
            let status = task["status"].as_str().unwrap_or_default();
            ensure!(
                matches!(status, "WAITING" | "ASSIGNED" | "RUNNING" | "COMPLETE"),
                "task {id} ended {status}: {task}"
            );
            *statuses.entry(status).or_default() += 1;
            if status == "COMPLETE" {
                done.insert(id.clone(), task.clone());
            }
        }
        if done.len() == ids.len() {
            return Ok(done);
        }
        ensure!(
            Instant::now() < deadline,
            "{} tasks not COMPLETE after {within:?}: {statuses:?}",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
