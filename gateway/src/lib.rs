//! # gateway
//!
//! The HTTP API: authenticates, validates, writes jobs to PostgreSQL and wakes
//! the dispatchers through RabbitMQ. Also the `gateway admin` commands.
//!
//! * `error`  – the JSON error type and extractors that reject with it.
//! * `auth`   – token extraction and role checks.
//! * `routes` – handlers by area (`bots`, `tasks`, `agent`, `health`).
//! * `admin`  – the command-line administration.

pub mod admin;
pub mod auth;
pub mod error;
pub mod photos;
pub mod routes;
pub mod state;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use orq_shared::CancellationToken;
use orq_shared::broker::Broker;
use orq_shared::config::Settings;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::state::AppState;

pub struct App {
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
}

pub fn router(state: AppState) -> Router {
    use routes::{
        activity, agent, bots, feed, health, human, jobs, photos, scripts, task_defs, tasks,
        webhooks,
    };
    let body_limit = state.settings.gateway.body_limit_bytes;
    let timeout = Duration::from_millis(state.settings.gateway.request_timeout_ms);
    Router::new()
        .route("/agent/register", post(agent::register))
        .route("/bots", get(bots::list).post(bots::create))
        .route(
            "/bots/{id}",
            get(bots::get).put(bots::update).delete(bots::delete),
        )
        .route("/bots/{id}/drain", post(bots::drain))
        .route("/bots/{id}/resume", post(bots::resume))
        .route("/tasks", get(tasks::list).post(tasks::create))
        .route(
            "/tasks/{id}",
            get(tasks::get).put(tasks::update).delete(tasks::delete),
        )
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/tasks/{id}/events", get(tasks::events))
        .route("/agent/scripts/{id}", get(scripts::agent_fetch))
        .route("/events/stream", get(feed::stream))
        .route("/webhooks/deliveries", get(webhooks::deliveries))
        .route("/webhooks/deliveries/{id}", get(webhooks::delivery))
        .route(
            "/webhooks/deliveries/{id}/redeliver",
            post(webhooks::redeliver),
        )
        .route(
            "/webhooks/subscriptions",
            get(webhooks::subscriptions).post(webhooks::subscribe),
        )
        .route(
            "/webhooks/subscriptions/{id}",
            axum::routing::delete(webhooks::unsubscribe),
        )
        .route("/webhooks/secret", get(webhooks::secret))
        .route("/webhooks/secret/rotate", post(webhooks::rotate_secret))
        // The micro-task API (seed 000), for field workers.
        .route("/micro_task/available", get(human::available))
        .route("/micro_task/mine", get(human::mine))
        .route("/micro_task/me", axum::routing::put(human::set_contacts))
        .route("/micro_task/reserve", post(human::reserve_next))
        .route("/micro_task/{id}/reserve", post(human::reserve))
        .route("/micro_task/{id}/release", post(human::release))
        .route("/micro_task/execution/{id}/start", post(human::start))
        .route(
            "/micro_task/execution/{id}/finish",
            post(human::finish).layer(axum::extract::DefaultBodyLimit::max(
                human::MAX_FINISH_BYTES,
            )),
        )
        .route("/micro_task/execution/{id}/photo", post(photos::ticket))
        .route(
            "/photos/{*key}",
            get(photos::download)
                .put(photos::upload)
                .layer(axum::extract::DefaultBodyLimit::max(
                    usize::try_from(state.settings.storage.photo_max_bytes).unwrap_or(usize::MAX),
                )),
        )
        // flowBuild's user tasks (seed 001).
        .route(
            "/activity_manager",
            get(activity::list).post(activity::create),
        )
        .route("/activity_manager/{id}", get(activity::get))
        .route("/activity_manager/{id}/events", get(activity::events))
        .route("/activity_manager/{id}/commit", post(activity::commit))
        .route("/activity_manager/{id}/submit", post(activity::submit))
        .route("/activity_manager/{id}/expire", post(activity::expire))
        // The back office's side of micro-tasks.
        .route(
            "/{customer}/micro_task",
            get(human::list).post(human::create),
        )
        .route("/{customer}/micro_task/{id}", get(human::get))
        .route("/{customer}/micro_task/{id}/events", get(human::events))
        .route("/{customer}/workers", post(human::create_worker))
        .route(
            "/{customer}/workers/{email}",
            axum::routing::delete(human::revoke_worker),
        )
        // TheEye's API (seed 002), customer-scoped.
        .route("/job", post(jobs::create_by_query))
        .route("/job/secret/{key}", post(jobs::create_with_secret_body))
        .route(
            "/{customer}/task",
            get(task_defs::list).post(task_defs::create),
        )
        .route("/{customer}/task/import", post(task_defs::import))
        .route(
            "/{customer}/task/{id}",
            get(task_defs::get)
                .put(task_defs::update)
                .delete(task_defs::delete),
        )
        .route("/{customer}/task/{id}/recipe", get(task_defs::recipe))
        .route(
            "/{customer}/task/{id}/credentials",
            get(task_defs::credentials),
        )
        .route(
            "/{customer}/task/{id}/credentials/rotate",
            post(task_defs::rotate),
        )
        .route(
            "/{customer}/task/{id}/job",
            post(jobs::create)
                .get(jobs::list_for_task)
                .delete(jobs::empty_queue),
        )
        .route(
            "/{customer}/task/{id}/secret/{key}/job",
            post(jobs::create_with_secret),
        )
        .route("/{customer}/job", get(jobs::list))
        .route("/{customer}/job/{id}", get(jobs::get))
        .route("/{customer}/job/{id}/events", get(jobs::events))
        .route(
            "/{customer}/job/{id}/cancel",
            post(jobs::cancel).put(jobs::cancel),
        )
        .route(
            "/{customer}/script",
            get(scripts::list).post(scripts::create),
        )
        .route(
            "/{customer}/script/{id}",
            get(scripts::get)
                .put(scripts::update)
                .delete(scripts::delete),
        )
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; it has been logged",
            ))
        }))
        .layer(TraceLayer::new_for_http())
        .route_layer(axum::middleware::from_fn(health::track))
        .with_state(state.clone())
        .merge(health::routes(&state))
}

impl App {
    /// Connects, migrates and binds; `listen` may use port 0.
    pub async fn build(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<App> {
        let sealer = orq_shared::secret::Sealer::from_config(&settings.security.secret_key)?;
        orq_shared::ops::metrics();
        let worker_tokens =
            orq_shared::human::WorkerTokens::from_config(&settings.security.secret_key)?;
        let storage = crate::photos::Storage::from_settings(&settings)?;
        let deny_networks = Arc::new(
            orq_shared::webhook::parse_networks(&settings.webhooks.deny_networks)
                .map_err(anyhow::Error::msg)?,
        );
        orq_shared::db::migrate_until(&settings.database, &shutdown).await?;
        let pool = orq_shared::db::pool(&settings.database)?;
        let broker = Broker::start(&settings.amqp, "gateway", shutdown.clone());
        let listener = TcpListener::bind(&settings.gateway.listen).await?;
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
            shutdown: shutdown.clone(),
        };
        Ok(App {
            listener,
            router: router(state),
            shutdown,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the shutdown token is cancelled, then finishes in-flight
    /// requests.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let shutdown = self.shutdown.clone();
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await?;
        Ok(())
    }
}
