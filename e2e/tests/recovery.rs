//! Every service reconnects by itself when PostgreSQL or RabbitMQ comes back.
//! Each test stops a private server instance of its own, never the shared one.

use orq_e2e::{Env, PrivatePg, PrivateRabbit, agent_config, eventually};
use serde_json::{Value, json};
use std::time::Duration;

async fn post_task(
    env: &Env,
    gw: &str,
    system: &str,
    rows: usize,
) -> anyhow::Result<reqwest::Response> {
    let mut csv = String::from("n\n");
    for r in 0..rows {
        csv.push_str(&format!("{r}\n"));
    }
    Ok(env
        .client()
        .post(format!("{gw}/tasks"))
        .json(&json!({"description": "recovery", "system": system,
                      "attachment": orq_e2e::orq_shared::attachment::encode(&csv)}))
        .send()
        .await?)
}

async fn wait_status(
    env: &Env,
    gw: &str,
    id: &str,
    want: &str,
    within: Duration,
) -> anyhow::Result<()> {
    env.task_until(gw, id, within, want, |t| {
        (t["status"] == want).then_some(())
    })
    .await
}

async fn status_of(env: &Env, gw: &str, id: &str) -> anyhow::Result<String> {
    let t: Value = env
        .client()
        .get(format!("{gw}/tasks/{id}"))
        .send()
        .await?
        .json()
        .await?;
    Ok(t["status"].as_str().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_ride_out_a_rabbitmq_outage() -> anyhow::Result<()> {
    let rabbit = PrivateRabbit::start()?;
    let env = Env::on("rabbitdown", &orq_e2e::pg_admin_url(), &rabbit.url()).await?;
    let fast_sweep = [("ORQ_DISPATCHER__SWEEP_INTERVAL_MS", "500")];
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &fast_sweep)?;
    let config = agent_config(&env.dir, "agent.toml", 2, &[("Noop", &["builtin:noop"])])?;
    let _agent = env.start_agent(&gw, "bot", &config, &[]).await?;
    let first: Value = post_task(&env, &gw, "Noop", 2).await?.json().await?;
    wait_status(
        &env,
        &gw,
        first["id"].as_str().unwrap_or_default(),
        "COMPLETE",
        Duration::from_secs(30),
    )
    .await?;

    rabbit.stop_app()?;
    // Work is still accepted: it is on disk in PostgreSQL.
    let r = post_task(&env, &gw, "Noop", 2).await?;
    assert_eq!(r.status(), 201, "a task is accepted while RabbitMQ is down");
    let second: Value = r.json().await?;
    let id = second["id"].as_str().unwrap_or_default().to_string();
    let ready = reqwest::get(format!("{gw}/readyz")).await?;
    assert_eq!(ready.status(), 503, "not ready without RabbitMQ");
    let body: Value = ready.json().await?;
    assert_eq!(body["rabbitmq"], false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    // It cannot reach a bot without the broker: it waits, or is assigned
    // with its delivery held until the broker is back.
    let status = status_of(&env, &gw, &id).await?;
    assert!(status == "WAITING" || status == "ASSIGNED", "{status}");

    rabbit.start_app()?;
    wait_status(&env, &gw, &id, "COMPLETE", Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(30), "gateway ready again", || async {
        Ok(reqwest::get(format!("{gw}/readyz"))
            .await?
            .status()
            .is_success()
            .then_some(()))
    })
    .await?;
    // And the event-driven path works again, not only the sweep.
    let third: Value = post_task(&env, &gw, "Noop", 1).await?.json().await?;
    wait_status(
        &env,
        &gw,
        third["id"].as_str().unwrap_or_default(),
        "COMPLETE",
        Duration::from_secs(30),
    )
    .await?;
    env.cleanup().await?;
    drop(rabbit);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn services_ride_out_a_postgres_outage() -> anyhow::Result<()> {
    let pg = PrivatePg::start()?;
    let env = Env::on("pgdown", &pg.base_url(), &orq_e2e::amqp_url()).await?;
    let (_gw, gw) = env.start_gateway(&[]).await?;
    let _dispatcher = env.start_dispatcher(
        "dispatcher",
        &[("ORQ_DISPATCHER__SWEEP_INTERVAL_MS", "500")],
    )?;
    let slow: &[&str] = &["sh", "-c", "cat > /dev/null; sleep 0.3"];
    let config = agent_config(&env.dir, "agent.toml", 1, &[("Slow", slow)])?;
    let _agent = env.start_agent(&gw, "bot", &config, &[]).await?;

    // A task is running when the database goes away.
    let task: Value = post_task(&env, &gw, "Slow", 10).await?.json().await?;
    let id = task["id"].as_str().unwrap_or_default().to_string();
    wait_status(&env, &gw, &id, "RUNNING", Duration::from_secs(30)).await?;
    pg.down()?;

    let r = post_task(&env, &gw, "Slow", 1).await?;
    assert_eq!(
        r.status(),
        503,
        "refused cleanly while the database is down"
    );
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "unavailable");
    assert_eq!(reqwest::get(format!("{gw}/readyz")).await?.status(), 503);
    // The agent goes on; its reports wait in RabbitMQ for the dispatcher.
    tokio::time::sleep(Duration::from_secs(3)).await;

    pg.up()?;
    wait_status(&env, &gw, &id, "COMPLETE", Duration::from_secs(60)).await?;
    let after: Value = post_task(&env, &gw, "Slow", 1).await?.json().await?;
    wait_status(
        &env,
        &gw,
        after["id"].as_str().unwrap_or_default(),
        "COMPLETE",
        Duration::from_secs(30),
    )
    .await?;
    let db = env.db().await?;
    let completes: i64 = db
        .query_one(
            "SELECT count(*) FROM job_events WHERE job_id = $1 AND to_status = 'COMPLETE'",
            &[&uuid::Uuid::parse_str(&id)?],
        )
        .await?
        .get(0);
    assert_eq!(completes, 1);
    env.cleanup().await?;
    drop(pg);
    Ok(())
}
