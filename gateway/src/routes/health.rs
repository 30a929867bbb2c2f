//! Liveness, readiness and metrics: the shared ops routes
//! (`orq_shared::ops`), with the gateway's own dependencies, and the
//! metrics of every API request.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use orq_shared::ops::Checks;
use std::time::Instant;

use crate::state::AppState;

/// `/healthz`, `/readyz` (PostgreSQL answers a query, RabbitMQ is
/// connected) and `/metrics`.
pub fn routes(state: &AppState) -> axum::Router {
    orq_shared::ops::router(Checks {
        pool: Some(state.pool.clone()),
        broker: Some(state.broker.clone()),
    })
}

/// Counts every request and times it, by method, route (its pattern, so
/// ids do not make new series) and status.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let response = next.run(request).await;
    let labels = [
        ("method", method),
        ("route", route),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::counter!("orq_http_requests_total", &labels).increment(1);
    metrics::histogram!("orq_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
