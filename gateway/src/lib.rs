//! # gateway
//!
//! The HTTP API: authenticates, validates, writes jobs to PostgreSQL and wakes
//! the dispatchers through RabbitMQ. Also the `gateway admin` commands.
//!
//! * `error`  – the JSON error type and extractors that reject with it;
//!   every other error becomes one there.
//! * `auth`   – tokens, and the caller as a typed extractor with its roles
//!   (`Authorized<R>`, `Scoped<R>`, `Worker`).
//! * `ids`    – `Id<T>`: an id from the path; one that does not parse is a 404.
//! * `idempotency` – `Idempotency-Key` on every create (`create_once`).
//! * `limits` – rate limits per token and per address, by route class.
//! * `serve`  – the accept loop: header timeout, connection cap, shutdown budget.
//! * `routes` – handlers by area, one file each (`tasks`, `bots`, `agent`,
//!   `jobs`, `task_defs`, `scripts`, `human`, `activity`, `photos`,
//!   `webhooks`, `feed`, `session`, `overview`, `dashboard`, `health`).
//! * `service` – the logic under the routes (jobs, CSV tasks, bots, task
//!   definitions, human tasks, webhooks, the overview; fields), each with
//!   its own error.
//! * `state`  – `AppState`, and `in_transaction`: the one way to write in a
//!   transaction.
//! * `photos` – photo storage for finishes: local files or S3, presigned.
//! * `openapi` – the OpenAPI document, from the same list as the router.
//! * `admin`  – the command-line administration.

pub mod admin;
pub mod auth;
pub mod error;
pub mod idempotency;
pub mod ids;
pub mod limits;
pub mod openapi;
pub mod photos;
pub mod routes;
pub mod serve;
pub mod service;
pub mod state;

use axum::Router;
use axum::http::StatusCode;
use orq_shared::CancellationToken;
use orq_shared::config::Settings;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::state::AppState;

pub struct App {
    listener: TcpListener,
    /// The gateway's background work, waited for at shutdown.
    background: tokio_util::task::TaskTracker,
    bounds: serve::Bounds,
    router: Router,
    shutdown: CancellationToken,
}

/// Every API route, registered through `routes!` so that the route table
/// and the OpenAPI document come from the same handlers and cannot differ.
pub fn api() -> OpenApiRouter<AppState> {
    use routes::{
        activity, agent, bots, feed, human, jobs, overview, photos, scripts, session, task_defs,
        tasks, webhooks,
    };
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(session::me))
        .routes(routes!(agent::register))
        .routes(routes!(bots::list, bots::create))
        .routes(routes!(bots::get, bots::update, bots::delete))
        .routes(routes!(bots::issue_token))
        .routes(routes!(bots::drain))
        .routes(routes!(bots::resume))
        .routes(routes!(tasks::list, tasks::create))
        .routes(routes!(tasks::get, tasks::update, tasks::delete))
        .routes(routes!(tasks::cancel))
        .routes(routes!(tasks::events))
        .routes(routes!(scripts::agent_fetch))
        .routes(routes!(feed::stream))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::delivery))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(webhooks::subscriptions, webhooks::subscribe))
        .routes(routes!(webhooks::unsubscribe))
        .routes(routes!(webhooks::secret))
        .routes(routes!(webhooks::rotate_secret))
        // The micro-task API (seed 000), for field workers.
        .routes(routes!(human::available))
        .routes(routes!(human::mine))
        .routes(routes!(human::set_contacts))
        .routes(routes!(human::reserve_next))
        .routes(routes!(human::reserve))
        .routes(routes!(human::release))
        .routes(routes!(human::start))
        .routes(limited(routes!(human::finish), human::MAX_FINISH_BYTES))
        .routes(routes!(photos::ticket))
        // flowBuild's user tasks (seed 001).
        .routes(routes!(activity::list, activity::create))
        .routes(routes!(activity::get))
        .routes(routes!(activity::events))
        .routes(routes!(activity::commit))
        .routes(routes!(activity::submit))
        .routes(routes!(activity::expire))
        // The back office's side of micro-tasks.
        .routes(routes!(human::list, human::create))
        .routes(routes!(human::get))
        .routes(routes!(human::events))
        .routes(routes!(human::create_worker))
        .routes(routes!(human::revoke_worker))
        // TheEye's API (seed 002), customer-scoped.
        .routes(routes!(jobs::create_by_query))
        .routes(routes!(jobs::create_with_secret_body))
        .routes(routes!(task_defs::list, task_defs::create))
        .routes(routes!(task_defs::import))
        .routes(routes!(
            task_defs::get,
            task_defs::update,
            task_defs::delete
        ))
        .routes(routes!(task_defs::recipe))
        .routes(routes!(task_defs::credentials))
        .routes(routes!(task_defs::rotate))
        .routes(routes!(
            jobs::create,
            jobs::list_for_task,
            jobs::empty_queue
        ))
        .routes(routes!(jobs::create_with_secret))
        .routes(routes!(jobs::list))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::events))
        .routes(routes!(jobs::cancel, jobs::cancel_put))
        .routes(routes!(scripts::list, scripts::create))
        .routes(routes!(scripts::get, scripts::update, scripts::delete))
        // The dashboard's landing view.
        .routes(routes!(overview::get))
        .routes(routes!(openapi::document))
}

/// A route whose bodies may be larger (or must be smaller) than the default.
fn limited(
    (schemas, paths, method): UtoipaMethodRouter<AppState>,
    bytes: usize,
) -> UtoipaMethodRouter<AppState> {
    (
        schemas,
        paths,
        method.layer(axum::extract::DefaultBodyLimit::max(bytes)),
    )
}

pub fn router(state: AppState) -> Router {
    use routes::{health, photos};
    let body_limit = state.settings.gateway.body_limit_bytes;
    let timeout = Duration::from_millis(state.settings.gateway.request_timeout_ms);
    let photo_limit = usize::try_from(state.settings.storage.photo_max_bytes).unwrap_or(usize::MAX);
    // `{*key}` is axum's; the document names it `{key}` (`photos` is in
    // `openapi::ApiDoc` for that reason).
    let (api, spec) = api()
        .route(
            "/photos/{*key}",
            axum::routing::get(photos::download)
                .put(photos::upload)
                .layer(axum::extract::DefaultBodyLimit::max(photo_limit)),
        )
        .split_for_parts();
    // Rendered once; each request clones a reference to the same bytes.
    let spec = axum::body::Bytes::from(spec.to_pretty_json().unwrap_or_default());
    Router::new()
        .merge(api.with_state(state.clone()))
        .merge(routes::dashboard::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn(error::json_errors))
        .layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                within(timeout, request, next)
            },
        ))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; it has been logged",
            ))
        }))
        // The span names the route's pattern, never the URI: a query may
        // carry `?access_token=`, a path a task's secret key.
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &axum::extract::Request| {
                let route = request
                    .extensions()
                    .get::<axum::extract::MatchedPath>()
                    .map_or("unmatched", |p| p.as_str());
                tracing::debug_span!("request", method = %request.method(), route)
            }),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.limits.clone(),
            limits::limit,
        ))
        .route_layer(axum::middleware::from_fn(health::track))
        .layer(axum::Extension(spec))
        .merge(health::routes(&state))
}

/// A request that takes longer than `gateway.request_timeout_ms` (until
/// its response starts: a stream may go on) is answered 408 with the API's
/// JSON error.
async fn within(
    timeout: Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => axum::response::IntoResponse::into_response(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request took longer than {} ms; it may still take effect",
                timeout.as_millis()
            ),
        )),
    }
}

impl App {
    /// Connects, migrates and binds; `listen` may use port 0.
    pub async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<App> {
        let sealer = orq_shared::secret::Sealer::from_config(&settings.security.secret_key)?;
        orq_shared::ops::metrics();
        let worker_tokens =
            orq_shared::human::WorkerTokens::from_config(&settings.security.secret_key)?;
        let deny_networks = Arc::new(
            orq_shared::deny::DenyList::parse(
                "webhooks.deny_networks",
                &settings.webhooks.deny_networks,
            )
            .map_err(anyhow::Error::msg)?,
        );
        let bot_deny_networks = Arc::new(
            orq_shared::deny::DenyList::parse(
                "security.bot_deny_networks",
                &settings.security.bot_deny_networks,
            )
            .map_err(anyhow::Error::msg)?,
        );
        let limits = Arc::new(limits::Limits::new(&settings.limits).map_err(anyhow::Error::msg)?);
        let background = tokio_util::task::TaskTracker::new();
        limits::spawn_janitor(&background, limits.clone(), shutdown.clone());
        let service =
            orq_shared::service::Service::start(&settings, "gateway", shutdown.clone()).await?;
        let (pool, broker) = (service.pool().clone(), service.broker().clone());
        let listener = TcpListener::bind(&settings.gateway.listen).await?;
        let storage = crate::photos::Storage::from_settings(&settings, listener.local_addr()?)?;
        let state = AppState {
            pool,
            broker,
            settings: Arc::new(settings),
            principals: state::cache(),
            known_systems: state::cache(),
            sealer,
            worker_tokens,
            storage,
            deny_networks,
            bot_deny_networks,
            limits,
            wakes: Arc::default(),
            background,
            shutdown: shutdown.clone(),
        };
        Ok(App {
            listener,
            background: state.background.clone(),
            bounds: serve::Bounds::from_settings(&state.settings.gateway),
            router: router(state),
            shutdown,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the shutdown token is cancelled, then finishes in-flight
    /// requests within `gateway.shutdown_grace_ms`.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        serve::serve(self.listener, self.router, self.bounds, self.shutdown).await?;
        // What requests left running (publishes, each bounded by the
        // broker's own timeouts) gets a short wait of its own.
        self.background.close();
        let wait = self.bounds.shutdown_grace.min(Duration::from_secs(2));
        if tokio::time::timeout(wait, self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                tasks = self.background.len(),
                "background work still running after the shutdown budget"
            );
        }
        Ok(())
    }
}
