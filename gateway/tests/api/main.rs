//! The HTTP API, in process: each test builds the gateway with
//! `App::build` on port 0 against a database and queue prefix of its own
//! (`spawn_app`), talks to it over HTTP, and stops it. Nothing is spawned,
//! so these need no binaries; tests that must kill a process live in `e2e`.
//!
//! * `helpers` – `spawn_app` / `spawn_app_with`, and `TestApp`'s clients.
//! * `bots`    – what each credential may do to a bot; the bot deny list.
//! * `input`   – inputs that used to panic or answer in plain text.
//! * `limits`  – rate limits: 429 with `Retry-After`.
//! * `precedence` – which refusal wins: 401, then 403, then 404.

mod bots;
mod helpers;
mod input;
mod limits;
mod precedence;
