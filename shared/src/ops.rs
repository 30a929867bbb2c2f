//! What operators get from every service: Prometheus metrics (one recorder
//! per process), and `/metrics`, `/healthz` and `/readyz` on `ops.listen`
//! for the services that serve no HTTP of their own (the gateway serves
//! the same routes on its API port).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use std::sync::OnceLock;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;

/// Latency buckets (seconds) of every histogram.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The process's Prometheus recorder, installed on first use.
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new();
        let builder = builder
            .set_buckets(BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Fails only when a recorder is installed already (several services
        // in one test process): this handle then renders nothing, which is
        // harmless there.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// What a service depends on, for `/readyz`.
#[derive(Clone, Default)]
pub struct Checks {
    pub pool: Option<Pool>,
    pub broker: Option<Broker>,
}

impl Checks {
    /// Checks each dependency for real (a query, the broker connection),
    /// records them as gauges, and says whether all are up.
    pub async fn ready(&self) -> (bool, Value) {
        let mut body = serde_json::Map::new();
        let mut ok = true;
        if let Some(pool) = &self.pool {
            let up = crate::db::ping(pool).await;
            metrics::gauge!("orq_postgres_up").set(f64::from(u8::from(up)));
            body.insert("postgres".into(), json!(up));
            ok &= up;
        }
        if let Some(broker) = &self.broker {
            let up = broker.is_connected();
            metrics::gauge!("orq_rabbitmq_connected").set(f64::from(u8::from(up)));
            body.insert("rabbitmq".into(), json!(up));
            ok &= up;
        }
        body.insert(
            "status".into(),
            json!(if ok { "ready" } else { "not_ready" }),
        );
        (ok, Value::Object(body))
    }
}

/// `/healthz`, `/readyz` and `/metrics`.
pub fn router(checks: Checks) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(scrape))
        .with_state(checks)
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "ops", security(()),
    responses((status = 200, description = "The process is alive", body = Object, example = json!({"status": "ok"}))))]
pub async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(json!({ "status": "ok" }))
}

/// Readiness: PostgreSQL answers a query and RabbitMQ is connected.
#[utoipa::path(get, path = "/readyz", tag = "ops", security(()),
    responses(
        (status = 200, description = "Every dependency answers", body = Object),
        (status = 503, description = "A dependency is down; the body says which", body = Object),
    ))]
pub async fn readyz(State(checks): State<Checks>) -> (StatusCode, axum::Json<serde_json::Value>) {
    let (ok, body) = checks.ready().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

/// Prometheus metrics, in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "ops", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn scrape(State(checks): State<Checks>) -> impl axum::response::IntoResponse {
    // The connection gauges are read when scraped.
    checks.ready().await;
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics().render(),
    )
}

/// Serves the ops routes on `listen` until shutdown; an empty `listen`
/// serves nothing.
pub async fn serve(listen: String, checks: Checks, shutdown: CancellationToken) {
    if listen.is_empty() {
        return;
    }
    metrics();
    let listener = match tokio::net::TcpListener::bind(&listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, %listen, "cannot serve /metrics, /healthz and /readyz");
            return;
        }
    };
    tracing::info!(%listen, "serving /metrics, /healthz and /readyz");
    let _ = axum::serve(listener, router(checks))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}
