//! The logic under the routes — their decisions, transactions, repository
//! calls and publishes — and what more than one route does, so that route
//! files never import each other. Handlers extract and check the request,
//! call a service, and answer. Each service has its own error, which
//! `crate::error` maps to HTTP. Its pure decisions are plain functions,
//! unit-tested beside it.
//!
//! * `jobs`      – cancelling a job (and telling its agent), waking the
//!   dispatchers.
//! * `tasks`     – the proof of concept's CSV tasks: checking a
//!   definition, creating one, a change by a user or by its bot (which
//!   event a status asked for is, what a bot may change of a task).
//! * `bots`      – reading a bot's fields, creating and changing one (what
//!   a bot may change of itself), draining, declaring its queue.
//! * `task_defs` – TheEye's task definitions: checking one, creating and
//!   changing one, exporting and importing recipes, who sees `env`.
//! * `human`     – creating human tasks; schema fields.
//! * `webhooks`  – endpoints: callbacks given inside a create, subscriptions.
//! * `overview`  – the dashboard's landing view: counts, the last hour
//!   minute by minute, backlog, bots, failures, the longest-running jobs.
//! * `fields`    – reading text, enum and file-name fields (a
//!   `FieldError` naming the field), for services and routes alike.
//!
//! A service writes through `AppState::in_transaction`, or in the
//! transaction its caller passes: a create runs in the route's
//! `idempotency::create_once`, whose transaction also holds the
//! `Idempotency-Key`, and the route wakes the dispatchers once a new one
//! is committed. Work a request starts in the background (a wake-up
//! publish) is spawned on `AppState::background`, a task tracker that
//! shutdown waits for.

pub mod bots;
pub mod fields;
pub mod human;
pub mod jobs;
pub mod overview;
pub mod task_defs;
pub mod tasks;
pub mod webhooks;
