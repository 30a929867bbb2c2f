//! What operators scrape: `/metrics`, `/healthz` and `/readyz` on every
//! service, against the real servers.

use orq_e2e::{Env, agent_config, eventually};
use serde_json::{Value, json};
use std::time::Duration;

async fn text(url: &str) -> anyhow::Result<(u16, String)> {
    let r = reqwest::get(url).await?;
    Ok((r.status().as_u16(), r.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_metrics_health_and_readiness() -> anyhow::Result<()> {
    let env = Env::new("ops").await?;
    let ports: Vec<u16> = (0..3).map(|_| orq_e2e::free_port()).collect();
    let listen = |i: usize| format!("127.0.0.1:{}", ports[i]);
    // Reservations end fast, so the reaper has an expiry to time.
    let (_gw, gw) = env
        .start_gateway(&[("ORQ_HUMAN__RESERVATION_MS", "300")])
        .await?;
    let _dispatcher = env.start_dispatcher("dispatcher", &[("ORQ_OPS__LISTEN", &listen(0))])?;
    let mut reaper_cmd = env.command("timeout-reaper");
    reaper_cmd.env("ORQ_OPS__LISTEN", listen(1));
    let _reaper = env.spawn("timeout-reaper", reaper_cmd)?;
    let config = agent_config(&env.dir, "agent.toml", 1, &[("Noop", &["builtin:noop"])])?;
    let _agent = env
        .start_agent(&gw, "bot", &config, &[("ORQ_OPS__LISTEN", &listen(2))])
        .await?;

    // A request and a job, so the gateway and the dispatcher have figures.
    let created: Value = env
        .client()
        .post(format!("{gw}/tasks"))
        .json(&json!({"description": "ops", "system": "Noop",
                      "attachment": orq_e2e::orq_shared::attachment::encode("n\n1\n")}))
        .send()
        .await?
        .json()
        .await?;
    let id = created["id"].as_str().unwrap_or_default().to_string();
    env.task_until(&gw, &id, Duration::from_secs(30), "COMPLETE", |t| {
        (t["status"] == "COMPLETE").then_some(())
    })
    .await?;

    let (status, body) = text(&format!("{gw}/metrics")).await?;
    assert_eq!(status, 200);
    assert!(
        body.contains("orq_http_requests_total{method=\"POST\",route=\"/tasks\",status=\"201\"} 1"),
        "{body}"
    );
    assert!(
        body.contains("orq_http_request_duration_seconds_bucket"),
        "{body}"
    );
    assert!(body.contains("orq_postgres_up 1"), "{body}");
    assert!(body.contains("orq_rabbitmq_connected 1"), "{body}");

    let services = [
        ("dispatcher", 0, true),
        ("timeout-reaper", 1, true),
        ("bot-agent", 2, false),
    ];
    for (name, i, has_db) in services {
        let base = format!("http://{}", listen(i));
        let (status, _) = eventually(
            Duration::from_secs(30),
            &format!("{name} /healthz"),
            || async { Ok(text(&format!("{base}/healthz")).await.ok()) },
        )
        .await?;
        assert_eq!(status, 200, "{name}");
        let ready: Value = reqwest::get(format!("{base}/readyz")).await?.json().await?;
        assert_eq!(ready["status"], "ready", "{name}: {ready}");
        assert_eq!(ready["rabbitmq"], true, "{name}: {ready}");
        assert_eq!(ready.get("postgres").is_some(), has_db, "{name}: {ready}");
        let (status, body) = text(&format!("{base}/metrics")).await?;
        assert_eq!(status, 200, "{name}");
        assert!(body.contains("orq_rabbitmq_connected 1"), "{name}: {body}");
    }
    let (_, body) = text(&format!("http://{}/metrics", listen(0))).await?;
    assert!(body.contains("orq_jobs_assigned_total 1"), "{body}");

    // A micro-task reserved and left: the reaper expires the reservation
    // and times how late it did.
    let worker = env.worker_token("ops@example.com")?;
    let created = env
        .client()
        .post(format!("{gw}/{}/micro_task", env.customer))
        .json(&json!({"name": "survey", "task_flow": [{"step": 1}]}))
        .send()
        .await?;
    assert_eq!(created.status(), 201);
    let reserved = orq_e2e::client_with(&worker)
        .post(format!("{gw}/micro_task/reserve"))
        .send()
        .await?;
    assert_eq!(reserved.status(), 200);
    let reaper_metrics = format!("http://{}/metrics", listen(1));
    eventually(
        Duration::from_secs(30),
        "an expiry counted and timed",
        || async {
            let (_, body) = text(&reaper_metrics).await?;
            Ok(
                (body.contains("orq_expiry_lag_seconds_count{kind=\"human\"} 1")
                    && body.contains("orq_leases_expired_total{kind=\"human\"} 1"))
                .then_some(()),
            )
        },
    )
    .await?;
    env.cleanup().await
}
