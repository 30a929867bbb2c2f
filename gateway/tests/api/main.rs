//! The HTTP API, in process: each test builds the gateway with
//! `App::build` on port 0 against a database and queue prefix of its own
//! (`spawn_app`), talks to it over HTTP, and stops it. Nothing is spawned,
//! so these need no binaries; tests that need another service (the
//! dispatcher, an agent, the reaper), a process to kill, an outage or an
//! outside peer live in `e2e`.
//!
//! To add one: pick the area's file (or add `<area>.rs` and a `mod` line
//! here), start with `let app = spawn_app("<label>").await?;` (or
//! `spawn_app_with` to change settings), call `app.admin()`, `app.api()`
//! (TheEye and human-task calls), `app.token(Role::..)`, `app.count(sql)`,
//! and end with `app.stop().await`.
//!
//! * `helpers`     – `spawn_app` / `spawn_app_with`, and `TestApp`'s clients.
//! * `bots`        – what each credential may do to a bot; the bot deny list.
//! * `dashboard`   – the dashboard's files and `/me`.
//! * `feed`        – the live stream: nothing missed behind a writer held open.
//! * `human`       – user tasks: parameters, commit, submit, expire.
//! * `idempotency` – `Idempotency-Key` on every create.
//! * `input`       – inputs that used to panic or answer in plain text.
//! * `limits`      – rate limits: 429 with `Retry-After`.
//! * `overview`    – the dashboard's overview; bots' names on tasks and jobs.
//! * `precedence`  – which refusal wins: 401, then 403, then 404.
//! * `serve`       – the connection cap, slow and idle clients, 408.
//! * `tasks`       – `/tasks` and `/bots`: bad input, tenants, paging,
//!   concurrent registrations.
//! * `theeye`      – TheEye's routes: roles and `acls`, secret keys, bad
//!   input, a run's `Idempotency-Key`.
//! * `webhooks`    – webhook and callback addresses.

mod bots;
mod dashboard;
mod feed;
mod helpers;
mod human;
mod idempotency;
mod input;
mod limits;
mod overview;
mod precedence;
mod serve;
mod tasks;
mod theeye;
mod webhooks;
