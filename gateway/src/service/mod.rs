//! The logic under the routes: what more than one route does, so that route
//! files never import each other. Handlers extract and check the request,
//! call a service, and answer. Each service has its own error, which
//! `crate::error` maps to HTTP.
//!
//! * `jobs`     – cancelling a job (and telling its agent), waking the
//!   dispatchers.
//! * `bots`     – declaring a bot's queue.
//! * `human`    – creating human tasks; schema fields.
//! * `webhooks` – endpoints: callbacks given inside a create, subscriptions.
//!
//! A service writes through `AppState::in_transaction`, or in the
//! transaction its caller passes. Work a request starts in the background
//! (a wake-up publish) is spawned on `AppState::background`, a task
//! tracker that shutdown waits for.

pub mod bots;
pub mod human;
pub mod jobs;
pub mod webhooks;
