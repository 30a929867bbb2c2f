//! The accept loop, with the bounds `axum::serve` does not set:
//! * a header-read timeout (`gateway.header_read_timeout_ms`): a request's
//!   headers must arrive within it, counted from when the connection is
//!   ready for a request, so it also closes idle keep-alive connections and
//!   connections that never send a byte;
//! * a cap on open connections (`gateway.max_connections`): one over it is
//!   answered `503` with the JSON error and closed;
//! * a shutdown budget (`gateway.shutdown_grace_ms`): on shutdown the loop
//!   stops accepting, lets requests in flight finish and closes idle
//!   connections; whatever is still open when the budget runs out (a
//!   half-sent request, a slow reader) is dropped.
//!
//! Every request carries its peer's address (`ConnectInfo`), for the
//! per-address rate limits.

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use orq_shared::CancellationToken;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tower::Service;

/// The bounds on connections.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl Bounds {
    pub fn from_settings(s: &orq_shared::config::GatewaySettings) -> Bounds {
        Bounds {
            header_read_timeout: Duration::from_millis(s.header_read_timeout_ms.max(1)),
            max_connections: s.max_connections.max(1),
            shutdown_grace: Duration::from_millis(s.shutdown_grace_ms),
        }
    }
}

/// How long a refused connection gets to read its `503`.
const REFUSAL_BUDGET: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` until `shutdown`, then drains within the
/// budget.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let permits = Arc::new(Semaphore::new(bounds.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut refusals = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
            // Reap finished tasks so the sets do not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            Some(_) = refusals.join_next(), if !refusals.is_empty() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to close.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("orq_gateway_connections_refused_total").increment(1);
            if refusals.len() < bounds.max_connections {
                refusals.spawn(refuse(stream));
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(request.map(axum::body::Body::new))
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let first_byte = bounds.header_read_timeout;
        let stopping = shutdown.clone();
        connections.spawn(async move {
            // hyper's header timer starts once it knows the protocol, which
            // takes a first byte: a client that sends none is cut here, and
            // at shutdown (it holds a watcher the drain would wait for).
            let mut probe = [0u8; 1];
            tokio::select! {
                peeked = tokio::time::timeout(first_byte, stream.peek(&mut probe)) => match peeked {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return drop(permit),
                },
                _ = stopping.cancelled() => return drop(permit),
            }
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, %peer, "connection ended");
            }
            drop(permit);
        });
    }
    drop(listener);
    refusals.abort_all();
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(bounds.shutdown_grace) => {
            tracing::warn!(
                open = connections.len(),
                "connections still open after the shutdown budget; closing them"
            );
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Answers a connection over the cap with a `503` and closes it; reads
/// what the client sent meanwhile so the close does not reset the
/// connection before the answer is read.
async fn refuse(mut stream: TcpStream) {
    let body = serde_json::to_string(&crate::error::ErrorBody {
        error: crate::error::ErrorDetail {
            code: "too_many_connections",
            message: "the gateway has as many open connections as it allows \
                      (gateway.max_connections); retry shortly"
                .into(),
            details: serde_json::Value::Null,
        },
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_BUDGET, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
