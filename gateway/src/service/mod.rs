//! The logic under the routes: what more than one route does, so that route
//! files never import each other. Handlers extract and check the request,
//! call a service, and answer.
//!
//! * `jobs`     – cancelling a job (and telling its agent), waking the
//!   dispatchers.
//! * `human`    – creating and listing human tasks; schema fields.
//! * `webhooks` – callbacks given inside a create.
//!
//! Work a request starts in the background (a wake-up publish) is spawned
//! on `AppState::background`, a task tracker that shutdown waits for.

pub mod human;
pub mod jobs;
pub mod webhooks;
