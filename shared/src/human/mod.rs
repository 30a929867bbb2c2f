//! Human tasks, pure: no I/O, unit-tested beside each part.
//!
//! * `machine`      – the state machine of a task done by a person; kinds.
//! * `finish`       – the micro-task finish body (seed 000), parsed; outcome messages.
//! * `verdict`      – whether a finish applies: owner, execution, in time.
//! * `email`        – e-mails as workers are known by.
//! * `worker_token` – tokens that prove a worker's e-mail without the database.
//! * `timers`       – flowBuild's timeout and timer events.
//! * `schema`       – JSON Schema checks with readable errors, compiled once.

mod email;
mod finish;
mod machine;
mod schema;
mod timers;
mod verdict;
mod worker_token;

pub use crate::field::FieldError;
pub use email::*;
pub use finish::*;
pub use machine::*;
pub use schema::*;
pub use timers::*;
pub use verdict::{ExecutionState, TaskState, Verdict, verdict};
pub use worker_token::*;
