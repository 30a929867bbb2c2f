//! The webhook sender in process (`webhooks::Sender::run`) on a database
//! of its own, with real local receivers: one endpoint that never answers
//! does not hold up another's deliveries.

use deadpool_postgres::GenericClient;
use orq_e2e::{TestDb, eventually};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use timeout_reaper::webhooks::Sender;

/// Serves `route` on a local port; returns its URL.
async fn serve(route: axum::routing::MethodRouter) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new().route("/hook", route);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(url)
}

/// Deliveries to `endpoint` in `status`.
async fn deliveries(
    c: &impl GenericClient,
    endpoint: uuid::Uuid,
    status: &str,
) -> anyhow::Result<i64> {
    Ok(c.query_one(
        "SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = $1 AND status = $2",
        &[&endpoint, &status],
    )
    .await?
    .get(0))
}

/// More than a sender's attempts in flight (256): were the endpoint that
/// never answers not bounded, its deliveries would take every slot.
const JOBS: i64 = 300;

/// Attempts recorded of deliveries to `endpoint`.
async fn attempts(c: &impl GenericClient, endpoint: uuid::Uuid) -> anyhow::Result<i64> {
    Ok(c.query_one(
        "SELECT count(*) FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
          WHERE d.endpoint_id = $1",
        &[&endpoint],
    )
    .await?
    .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_does_not_hold_up_another() -> anyhow::Result<()> {
    let db = TestDb::new("hookhang").await?;
    let acme = db.customer("acme").await?;
    let c = db.get().await?;

    let arrived: Arc<Mutex<HashSet<String>>> = Arc::default();
    let seen = arrived.clone();
    let healthy = serve(axum::routing::post(
        move |axum::Json(events): axum::Json<Vec<serde_json::Value>>| {
            let seen = seen.clone();
            async move {
                if let Ok(mut seen) = seen.lock() {
                    seen.extend(
                        events
                            .iter()
                            .filter_map(|e| e["jobId"].as_str().map(String::from)),
                    );
                }
                axum::http::StatusCode::OK
            }
        },
    ))
    .await?;
    let never = serve(axum::routing::post(|| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        axum::http::StatusCode::OK
    }))
    .await?;
    let hanging = db.subscription(acme, &never).await?;
    let fine = db.subscription(acme, &healthy).await?;

    // Every job's creation is owed to both endpoints.
    let mut jobs_made = HashSet::new();
    for _ in 0..JOBS {
        jobs_made.insert(db.job(acme).await?.0.to_string());
    }

    let mut settings = orq_shared::config::Settings::load(None)?;
    settings.database = db.settings.clone();
    settings.security.secret_key = orq_e2e::db::SECRET_KEY.into();
    settings.webhooks.deny_networks = Vec::new();
    settings.webhooks.timeout_ms = 6000;
    settings.webhooks.per_endpoint_concurrency = 2;
    let sender = Sender::new(db.pool.clone(), Arc::new(settings))?;
    let shutdown = orq_shared::CancellationToken::new();
    let running = tokio::spawn(sender.run(shutdown.clone()));

    // The healthy endpoint gets every job's event while the other's first
    // attempts still wait for an answer (each runs 6 s into its timeout).
    let all = eventually(
        Duration::from_secs(30),
        "every event at the healthy endpoint",
        || {
            let arrived = arrived.clone();
            let jobs_made = jobs_made.clone();
            async move {
                let got = arrived.lock().map(|a| a.clone()).unwrap_or_default();
                Ok(jobs_made.is_subset(&got).then_some(()))
            }
        },
    );
    all.await?;
    let tried = attempts(&c, hanging).await?;
    assert_eq!(tried, 0, "no attempt of the hanging endpoint ended before");
    assert_eq!(deliveries(&c, hanging, "DELIVERED").await?, 0);
    let owed: i64 = c
        .query_one(
            "SELECT count(*) FROM webhook_outbox o LEFT JOIN webhook_deliveries d ON d.id = o.delivery_id
              WHERE o.endpoint_id = $1 AND (d.status IS NULL OR d.status = 'PENDING')",
            &[&hanging],
        )
        .await?
        .get(0);
    assert_eq!(owed, JOBS, "its backlog is all still owed");
    eventually(
        Duration::from_secs(10),
        "the healthy deliveries recorded",
        || {
            let c = &c;
            async move { Ok((deliveries(c, fine, "DELIVERED").await? == JOBS).then_some(())) }
        },
    )
    .await?;

    // Shutdown lets the hanging attempts run into their timeout, records
    // them (to be retried) and gives back what was claimed and not sent.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(20), running).await??;
    let held: i64 = c
        .query_one(
            "SELECT count(*) FROM webhook_deliveries
              WHERE endpoint_id = $1 AND claimed_until > now()",
            &[&hanging],
        )
        .await?
        .get(0);
    assert_eq!(held, 0, "no claim outlives the sender");
    let retried = attempts(&c, hanging).await?;
    assert!(
        retried >= 2,
        "its attempts in flight were recorded: {retried}"
    );
    drop(c);
    db.cleanup().await
}
