//! One problem with an input, named by where it is: the error every parser
//! of request bodies and definitions returns (the API shows `field` as
//! `details.field`).

use serde::Serialize;
use std::fmt;

/// One problem with a request body or a definition, named by its JSON path
/// or field (`execution.steps[2].answer`, `task_arguments[1]`, `run_as`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
