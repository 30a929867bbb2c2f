//! The micro-task API's finish body (seed 000), parsed field for field,
//! and what a worker is told of its outcome.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::{OffsetDateTime, PrimitiveDateTime};
use uuid::Uuid;

use super::{HumanStatus, same_email};
use crate::field::FieldError;

/// The seed's `task_info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInfo {
    pub name: String,
    pub version: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Nps {
    pub nps: i64,
    #[serde(default)]
    pub comment: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct When {
    pub start: String,
    pub finish: String,
}

/// One answered step of the task's flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub context: String,
    pub index: i64,
    #[serde(default)]
    pub previous: Option<i64>,
    pub when: String,
    /// The answer: text, a number, a choice, or a photo's URL.
    pub response: Value,
}

/// The body of `POST /micro_task/execution/{task_id}/finish`, field for
/// field as seed 000 gives it. Unknown fields are kept (the body is stored
/// as received) but not read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinishBody {
    pub task_id: String,
    pub execution_id: String,
    #[serde(default)]
    pub task_info: Option<TaskInfo>,
    #[serde(default)]
    pub location: Option<Location>,
    #[serde(default)]
    pub who: Option<String>,
    #[serde(default)]
    pub nps_sofier: Option<Nps>,
    #[serde(default)]
    pub when: Option<When>,
    pub execution: Vec<Step>,
}

/// A date-time as the seed writes it (`2019-08-13T20:15:00`, taken as
/// UTC) or RFC 3339 with an offset.
pub fn parse_when(text: &str) -> Result<OffsetDateTime, String> {
    use time::format_description::well_known::Rfc3339;
    let naive = time::macros::format_description!(
        version = 2,
        "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
    );
    let parsed = match OffsetDateTime::parse(text, &Rfc3339) {
        Ok(t) => t,
        Err(_) => PrimitiveDateTime::parse(text, &naive)
            .map(PrimitiveDateTime::assume_utc)
            .map_err(|e| {
                format!("{text:?} is not a valid date-time (YYYY-MM-DDThh:mm:ss, UTC unless an offset is given): {e}")
            })?,
    };
    // In UTC, and within years 1-9999 there (the database's range).
    parsed
        .checked_to_offset(time::UtcOffset::UTC)
        .filter(|t| (1..=9999).contains(&t.year()))
        .ok_or_else(|| format!("{text:?} is out of range (years 1 to 9999, UTC)"))
}

/// Deepest nesting a stored body may have (the envelope around it and the
/// database must still take it).
pub const MAX_DEPTH: usize = 32;

/// Whether a JSON value can be stored as received: no NUL character
/// (PostgreSQL refuses it in text and jsonb) and nested at most
/// `MAX_DEPTH` levels.
pub fn storable(value: &Value) -> Result<(), FieldError> {
    fn walk(value: &Value, depth: usize, path: &mut String) -> Result<(), FieldError> {
        if depth > MAX_DEPTH {
            return Err(FieldError::new(
                path.clone(),
                format!("nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        match value {
            Value::String(s) if s.contains('\0') => Err(FieldError::new(
                path.clone(),
                "must not contain NUL characters",
            )),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(item, depth + 1, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Object(map) => {
                for (key, item) in map {
                    if key.contains('\0') {
                        return Err(FieldError::new(path.clone(), "a key contains NUL"));
                    }
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                    walk(item, depth + 1, path)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    let mut path = String::new();
    walk(value, 0, &mut path).map_err(|mut e| {
        if e.field.is_empty() {
            e.field = "body".into();
        }
        e
    })
}

impl FinishBody {
    /// Parses and checks a finish body for the task in the path and the
    /// worker who sends it: every problem found, each named by its field.
    pub fn parse(body: &Value, task_id: Uuid, worker: &str) -> Result<FinishBody, Vec<FieldError>> {
        if !body.is_object() {
            return Err(vec![FieldError::new("body", "must be a JSON object")]);
        }
        storable(body).map_err(|e| vec![e])?;
        let parsed: FinishBody = serde_path_to_error::deserialize(body)
            .map_err(|e| vec![serde_field_error(&e.path().to_string(), &e.into_inner())])?;
        let mut errors = Vec::new();
        if Uuid::parse_str(&parsed.task_id).ok() != Some(task_id) {
            errors.push(FieldError::new(
                "task_id",
                format!(
                    "{:?} is not the task in the path ({task_id})",
                    parsed.task_id
                ),
            ));
        }
        if parsed.execution_id.trim().is_empty() {
            errors.push(FieldError::new("execution_id", "must not be empty"));
        }
        if let Some(who) = &parsed.who
            && !same_email(who, worker)
        {
            errors.push(FieldError::new(
                "who",
                format!("{who:?} is not the sofier sending it ({worker})"),
            ));
        }
        if let Some(loc) = &parsed.location {
            if !(-90.0..=90.0).contains(&loc.lat) {
                errors.push(FieldError::new(
                    "location.lat",
                    "must be between -90 and 90",
                ));
            }
            if !(-180.0..=180.0).contains(&loc.lng) {
                errors.push(FieldError::new(
                    "location.lng",
                    "must be between -180 and 180",
                ));
            }
        }
        if let Some(nps) = &parsed.nps_sofier
            && !(0..=10).contains(&nps.nps)
        {
            errors.push(FieldError::new("nps_sofier.nps", "must be from 0 to 10"));
        }
        if let Some(when) = &parsed.when {
            let start = parse_when(&when.start)
                .map_err(|e| errors.push(FieldError::new("when.start", e)))
                .ok();
            let finish = parse_when(&when.finish)
                .map_err(|e| errors.push(FieldError::new("when.finish", e)))
                .ok();
            if let (Some(s), Some(f)) = (start, finish)
                && f < s
            {
                errors.push(FieldError::new("when.finish", "is before when.start"));
            }
        }
        if parsed.execution.is_empty() {
            errors.push(FieldError::new("execution", "must hold at least one step"));
        }
        for (i, step) in parsed.execution.iter().enumerate() {
            if let Err(e) = parse_when(&step.when) {
                errors.push(FieldError::new(format!("execution[{i}].when"), e));
            }
            if step.index < 0 {
                errors.push(FieldError::new(
                    format!("execution[{i}].index"),
                    "must not be negative",
                ));
            }
        }
        if errors.is_empty() {
            Ok(parsed)
        } else {
            Err(errors)
        }
    }

    /// The seed's `when` as stored: both instants in RFC 3339.
    pub fn timings(&self) -> Option<Value> {
        let when = self.when.as_ref()?;
        let fmt = |t: &str| {
            parse_when(t).ok().and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
        };
        Some(serde_json::json!({ "start": fmt(&when.start), "finish": fmt(&when.finish) }))
    }
}

/// A serde error at `path` ("." for the top) as a field error; a missing
/// field is named itself.
fn serde_field_error(path: &str, error: &serde_json::Error) -> FieldError {
    let message = error.to_string();
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
        .map(|(name, _)| name.to_string());
    match (path, missing) {
        (".", Some(name)) => FieldError::new(name, "is required"),
        (path, Some(name)) => FieldError::new(format!("{path}.{name}"), "is required"),
        (".", None) => FieldError::new("body", message),
        (path, None) => FieldError::new(path, message),
    }
}

/// What a worker is told once their finish was processed: a subject and a
/// text (the seed: processed, and under review).
pub fn outcome_message(
    action: &str,
    task: Uuid,
    outcome: Option<HumanStatus>,
    reason: Option<&str>,
) -> (String, String) {
    let reason = reason.unwrap_or("no reason given");
    match outcome {
        Some(HumanStatus::Complete) | Some(HumanStatus::Error) => (
            format!("{action}: your answers were received"),
            format!(
                "Your answers to {action} (task {task}) were processed and are under review. Thank you!"
            ),
        ),
        Some(HumanStatus::Rejected) => (
            format!("{action}: your answers were rejected"),
            format!("Your answers to {action} (task {task}) were rejected: {reason}"),
        ),
        _ => (
            format!("{action}: your finish was not accepted"),
            format!("Your finish of {action} (task {task}) could not be applied: {reason}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TASK: &str = "a54107a5-a499-4570-b7cd-c16efe79c9e3";

    /// Seed 000's finish body, with its trailing commas removed and its
    /// impossible `45:29` made a real time.
    fn seed_body() -> Value {
        json!({
            "task_id": TASK,
            "execution_id": "8754985749857458947584",
            "task_info": {"name": "PAT", "version": 1},
            "location": {"lat": -23.5656565656, "lng": -43.9564157},
            "who": "sofier@mysofie.com",
            "nps_sofier": {"nps": 10, "comment": "Tudo lindo e maravilhoso!"},
            "when": {"start": "2019-08-13T20:15:00", "finish": "2019-08-13T21:29:00"},
            "execution": [{
                "context": "LUGAR:ERRADO:LEAD_ALELO",
                "index": 2,
                "previous": 1,
                "when": "2019-08-13T20:15:00",
                "response": "Exemplo"
            }]
        })
    }

    fn task() -> Uuid {
        Uuid::parse_str(TASK).expect("uuid")
    }

    #[test]
    fn the_seed_body_parses() {
        let body = FinishBody::parse(&seed_body(), task(), "Sofier@MySofie.com").expect("valid");
        assert_eq!(body.execution.len(), 1);
        assert_eq!(body.nps_sofier.as_ref().map(|n| n.nps), Some(10));
        assert_eq!(
            body.timings(),
            Some(json!({"start": "2019-08-13T20:15:00Z", "finish": "2019-08-13T21:29:00Z"}))
        );
    }

    #[test]
    fn the_seeds_impossible_hour_is_refused_by_name() {
        let mut body = seed_body();
        body["when"]["finish"] = json!("2019-08-13T45:29:00");
        let errors = FinishBody::parse(&body, task(), "sofier@mysofie.com").expect_err("invalid");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].field, "when.finish");
        assert!(errors[0].message.contains("45:29"), "{}", errors[0].message);
    }

    #[test]
    fn structural_errors_name_their_field() {
        let cases = [
            (json!({"task_id": TASK}), "execution_id"),
            (
                {
                    let mut b = seed_body();
                    b["execution"][0]["index"] = json!("two");
                    b
                },
                "execution[0].index",
            ),
            (
                {
                    let mut b = seed_body();
                    b["location"]["lat"] = json!(123.0);
                    b
                },
                "location.lat",
            ),
            (
                {
                    let mut b = seed_body();
                    b["nps_sofier"]["nps"] = json!(11);
                    b
                },
                "nps_sofier.nps",
            ),
            (
                {
                    let mut b = seed_body();
                    b["task_id"] = json!(Uuid::nil().to_string());
                    b
                },
                "task_id",
            ),
            (
                {
                    let mut b = seed_body();
                    b["execution"] = json!([]);
                    b
                },
                "execution",
            ),
            (json!([1, 2]), "body"),
        ];
        for (body, field) in cases {
            let errors =
                FinishBody::parse(&body, task(), "sofier@mysofie.com").expect_err("invalid");
            assert!(
                errors.iter().any(|e| e.field == field),
                "{field}: {errors:?}"
            );
        }
        let errors = FinishBody::parse(&seed_body(), task(), "other@mysofie.com")
            .expect_err("someone else's who");
        assert_eq!(errors[0].field, "who");
    }

    #[test]
    fn bodies_that_cannot_be_stored_are_refused_by_field() {
        let mut body = seed_body();
        body["execution"][0]["response"] = json!("a\u{0}b");
        let e = FinishBody::parse(&body, task(), "sofier@mysofie.com").expect_err("NUL");
        assert_eq!(e[0].field, "execution[0].response");
        let mut deep = json!("x");
        for _ in 0..40 {
            deep = json!([deep]);
        }
        let mut body = seed_body();
        body["execution"][0]["response"] = deep;
        let e = FinishBody::parse(&body, task(), "sofier@mysofie.com").expect_err("deep");
        assert!(e[0].message.contains("nested"), "{e:?}");
        // An offset that moves a date out of range is refused, not a panic.
        assert!(parse_when("9999-12-31T23:00:00-05:00").is_err());
        assert!(parse_when("0000-01-01T00:00:00+05:00").is_err());
        assert!(parse_when("2019-08-13T20:15:00-03:00").is_ok());
    }
}
