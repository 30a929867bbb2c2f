//! # Orquestra shared library
//!
//! Layout:
//! * `config`     – layered settings (defaults < file < `ORQ_*` env).
//! * `telemetry`  – tracing setup.
//! * `db`         – PostgreSQL pool and embedded migrations under an advisory lock.
//! * `deny`       – deny lists of networks (SSRF), IPv4-in-IPv6 forms included.
//! * `broker`     – RabbitMQ topology, the reconnecting supervisor, and the one
//!   consume loop (`broker::consume`).
//! * `messages`   – what travels over RabbitMQ.
//! * `domain`     – ids, roles, bot and job state machines (pure).
//! * `field`      – `FieldError`, the one error of every input parser.
//! * `attachment` – the base64 CSV of the proof of concept.
//! * `lease`      – when a holder's claim on a job ends; what a job taken back becomes (pure).
//! * `placement`  – which free bot takes which waiting job (pure).
//! * `rows`       – a CSV job's rows across attempts: resume, failed rows, row keys.
//! * `token`      – access token generation and hashing.
//! * `secret`     – task secret keys: hashing, sealing at rest.
//! * `task_def`   – TheEye task definitions: arguments, run_as, env, triggers.
//! * `human`      – human tasks, pure: state machine, finish body and verdict,
//!   e-mails, worker tokens, timers, JSON Schema.
//! * `idempotency` – Idempotency-Key: key rules, request fingerprints.
//! * `webhook`    – the seed's event shape, signatures, `Retry-After`, URL checks.
//! * `retry`      – the retry schedule of webhooks and notifications (pure).
//! * `repo`       – every SQL statement, as functions over a client.
//! * `ops`        – Prometheus metrics and the `/metrics` `/healthz` `/readyz` routes.
//! * `shutdown`   – SIGTERM/SIGINT into a cancellation token.
//! * `service`    – a service's start (database, broker) and its tasks until shutdown.

pub mod attachment;
pub mod broker;
pub mod config;
pub mod db;
pub mod deny;
pub mod domain;
pub mod field;
pub mod human;
pub mod idempotency;
pub mod lease;
pub mod messages;
pub mod ops;
pub mod placement;
pub mod repo;
pub mod retry;
pub mod rows;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod task_def;
pub mod telemetry;
pub mod token;
pub mod webhook;

pub use tokio_util::sync::CancellationToken;
