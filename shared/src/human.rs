//! Human tasks, pure: the state machine of a task done by a person, the
//! micro-task API's finish body (seed 000) parsed field for field, worker
//! tokens that prove an e-mail without the database, flowBuild's timeout,
//! and JSON Schema checks with readable errors.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use std::fmt;
use std::str::FromStr;
use time::{OffsetDateTime, PrimitiveDateTime};
use uuid::Uuid;

use crate::domain::{CustomerId, UnknownValue, text_enum};

text_enum!(
    /// A human task's state (DESIGN.md: NEW -> RESERVED -> EXECUTING ->
    /// SUBMITTED -> COMPLETE | REJECTED, plus ERROR).
    HumanStatus {
        New => "NEW",
        Reserved => "RESERVED",
        Executing => "EXECUTING",
        Submitted => "SUBMITTED",
        Complete => "COMPLETE",
        Rejected => "REJECTED",
        Error => "ERROR",
    }
);

impl HumanStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            HumanStatus::Complete | HumanStatus::Rejected | HumanStatus::Error
        )
    }

    /// Still waiting for a person: a user task in this state takes commits.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            HumanStatus::New | HumanStatus::Reserved | HumanStatus::Executing
        )
    }
}

text_enum!(
    /// The two kinds of human task: done by a field worker through the
    /// micro-task API, or by anyone through flowBuild's activity manager.
    HumanKind { MicroTask => "micro_task", UserTask => "user_task" }
);

text_enum!(
    /// One start of a micro-task by a worker.
    ExecutionStatus {
        Executing => "EXECUTING",
        Complete => "COMPLETE",
        Rejected => "REJECTED",
        Error => "ERROR",
        Expired => "EXPIRED",
    }
);

text_enum!(
    /// What a passed deadline does to a human task.
    OnTimeout { Requeue => "requeue", Continue => "continue" }
);

text_enum!(
    /// flowBuild's `activity_manager`: whether the process waits.
    ActivityManager { Commit => "commit", Notify => "notify" }
);

/// Things that happen to a human task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HumanEvent {
    /// A worker reserved it.
    Reserve,
    /// Its worker gave it back, or the reservation or execution expired
    /// under the `requeue` rule.
    Requeue,
    /// Its worker started it (again: the same execution).
    Start,
    /// A partial answer was committed (user task).
    Commit,
    /// A finish or submit arrived.
    Submit,
    /// Its deadline passed under the `continue` rule: submitted as it is.
    Continue,
    /// The submission was applied (and the result fits `result_schema`).
    Accept,
    /// The submission was invalid.
    Reject,
    /// The result failed `result_schema`.
    ResultInvalid,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {from} human task cannot take {event:?}")]
pub struct InvalidHumanTransition {
    pub from: HumanStatus,
    pub event: HumanEvent,
}

/// The next status of a human task, or why the event does not apply.
pub fn human_transition(
    from: HumanStatus,
    event: HumanEvent,
) -> Result<HumanStatus, InvalidHumanTransition> {
    use HumanEvent as E;
    use HumanStatus as S;
    let to = match (from, event) {
        (S::New, E::Reserve) => S::Reserved,
        (S::Reserved | S::Executing, E::Requeue) => S::New,
        (S::Reserved | S::Executing, E::Start) => S::Executing,
        (S::New | S::Executing, E::Commit) => S::Executing,
        (S::New | S::Executing, E::Submit) => S::Submitted,
        (S::New | S::Reserved | S::Executing, E::Continue) => S::Submitted,
        (S::Submitted, E::Accept) => S::Complete,
        (S::Submitted, E::Reject) => S::Rejected,
        (S::Submitted, E::ResultInvalid) => S::Error,
        (from, event) => return Err(InvalidHumanTransition { from, event }),
    };
    Ok(to)
}

/// One problem with a request body, named by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
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

/// E-mails compare without regard to case or surrounding blanks.
pub fn same_email(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

/// An e-mail as stored and compared: trimmed, lower case; refused unless it
/// looks like one.
pub fn normalize_email(email: &str) -> Result<String, String> {
    let email = email.trim().to_ascii_lowercase();
    let valid = email.len() <= 254
        && email.split_once('@').is_some_and(|(user, host)| {
            !user.is_empty() && host.contains('.') && !host.contains('@')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if valid {
        Ok(email)
    } else {
        Err(format!("{email:?} is not an e-mail address"))
    }
}

/// What a worker token proves, without asking the database: which token,
/// of which customer, bound to which e-mail. Revocation is checked where
/// the database is at hand (the dispatcher refuses a revoked token's
/// submissions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerClaims {
    pub token_id: Uuid,
    pub customer: CustomerId,
    pub email: String,
}

const WORKER_PREFIX: &str = "orqw_";

/// Signs and checks worker tokens with a key derived from the deployment's
/// `security.secret_key`.
#[derive(Clone)]
pub struct WorkerTokens {
    key: [u8; 32],
}

impl fmt::Debug for WorkerTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkerTokens(<redacted>)")
    }
}

impl WorkerTokens {
    pub fn from_config(secret_key: &str) -> Result<Self, crate::secret::SecretError> {
        Ok(WorkerTokens {
            key: crate::secret::derive_key(secret_key, "orquestra worker token v1")?,
        })
    }

    fn mac(&self, payload: &[u8]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(payload);
        mac
    }

    /// `orqw_<payload>.<mac>`: the payload is the token's id, the customer's
    /// id and the e-mail; the MAC makes it unforgeable.
    pub fn mint(&self, claims: &WorkerClaims) -> String {
        let mut payload = Vec::with_capacity(32 + claims.email.len());
        payload.extend_from_slice(claims.token_id.as_bytes());
        payload.extend_from_slice(claims.customer.0.as_bytes());
        payload.extend_from_slice(claims.email.as_bytes());
        let tag = self.mac(&payload).finalize().into_bytes();
        format!(
            "{WORKER_PREFIX}{}.{}",
            B64.encode(&payload),
            B64.encode(tag)
        )
    }

    /// The claims of a token this deployment minted; `None` for anything
    /// else. The MAC is compared in constant time.
    pub fn verify(&self, token: &str) -> Option<WorkerClaims> {
        let (payload, tag) = token.strip_prefix(WORKER_PREFIX)?.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let tag = B64.decode(tag).ok()?;
        self.mac(&payload).verify_slice(&tag).ok()?;
        if payload.len() < 32 {
            return None;
        }
        let (ids, email) = payload.split_at(32);
        Some(WorkerClaims {
            token_id: Uuid::from_slice(&ids[..16]).ok()?,
            customer: CustomerId(Uuid::from_slice(&ids[16..]).ok()?),
            email: String::from_utf8(email.to_vec()).ok()?,
        })
    }
}

/// flowBuild's `timeout`: seconds from now, or a date-time; either way an
/// absolute deadline fixed when the activity is created.
pub fn deadline_from(timeout: &Value, now: OffsetDateTime) -> Result<OffsetDateTime, String> {
    match timeout {
        Value::Number(n) => {
            let secs = n
                .as_f64()
                .filter(|s| s.is_finite() && *s > 0.0 && *s <= 10.0 * 365.0 * 86_400.0)
                .ok_or_else(|| format!("{n} seconds: must be more than 0 and at most ten years"))?;
            Ok(now + time::Duration::seconds_f64(secs))
        }
        Value::String(text) => {
            let at = parse_when(text)?;
            if at <= now {
                return Err(format!("{text:?} has already passed"));
            }
            Ok(at)
        }
        _ => Err("must be a number of seconds or a date-time".into()),
    }
}

/// One timer of a user task's `events`: when it fires and what it says.
#[derive(Debug, Clone, PartialEq)]
pub struct Timer {
    pub fire_at: OffsetDateTime,
    pub description: String,
}

/// Most timers one user task may carry.
pub const MAX_TIMERS: usize = 20;

/// flowBuild's `events`: a list of `{"type": "timer", "description"?,` and
/// one of `"in"` (seconds after creation), `"at"` (a date-time) or
/// `"before_expiry"` (seconds before the task's timeout)`}`.
pub fn parse_timers(
    events: &Value,
    now: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
) -> Result<Vec<Timer>, FieldError> {
    let items = match events {
        Value::Null => return Ok(Vec::new()),
        Value::Array(items) => items,
        _ => return Err(FieldError::new("events", "must be a list of timers")),
    };
    if items.len() > MAX_TIMERS {
        return Err(FieldError::new(
            "events",
            format!("at most {MAX_TIMERS} timers"),
        ));
    }
    let mut timers = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = |name: &str| format!("events[{i}]{name}");
        let Some(obj) = item.as_object() else {
            return Err(FieldError::new(field(""), "must be an object"));
        };
        if obj.get("type").and_then(Value::as_str) != Some("timer") {
            return Err(FieldError::new(
                field(".type"),
                "only \"timer\" events are supported",
            ));
        }
        let seconds = |name: &str| -> Result<Option<time::Duration>, FieldError> {
            match obj.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_f64()
                    .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 10.0 * 365.0 * 86_400.0)
                    .map(|s| Some(time::Duration::seconds_f64(s)))
                    .ok_or_else(|| {
                        FieldError::new(field(&format!(".{name}")), "must be a number of seconds")
                    }),
            }
        };
        let after = seconds("in")?;
        let before = seconds("before_expiry")?;
        let at = match obj.get("at") {
            None => None,
            Some(Value::String(t)) => {
                Some(parse_when(t).map_err(|e| FieldError::new(field(".at"), e))?)
            }
            Some(_) => return Err(FieldError::new(field(".at"), "must be a date-time")),
        };
        let fire_at = match (after, at, before) {
            (Some(d), None, None) => now + d,
            (None, Some(t), None) => t,
            (None, None, Some(d)) => {
                let Some(expires) = expires_at else {
                    return Err(FieldError::new(
                        field(".before_expiry"),
                        "needs the task's timeout",
                    ));
                };
                expires - d
            }
            _ => {
                return Err(FieldError::new(
                    field(""),
                    "needs exactly one of in, at, before_expiry",
                ));
            }
        };
        let description = match obj.get("description") {
            None => format!("timer {}", i + 1),
            Some(Value::String(d))
                if !d.trim().is_empty() && d.len() <= 500 && !d.contains('\0') =>
            {
                d.trim().to_string()
            }
            Some(_) => {
                return Err(FieldError::new(
                    field(".description"),
                    "must be a text of at most 500 characters",
                ));
            }
        };
        timers.push(Timer {
            fire_at,
            description,
        });
    }
    Ok(timers)
}

/// A compiled JSON Schema (no remote `$ref` is ever fetched).
pub struct Schema(jsonschema::Validator);

impl fmt::Debug for Schema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Schema")
    }
}

impl Schema {
    /// Compiles `schema`, or says why it is not a valid JSON Schema.
    pub fn compile(schema: &Value) -> Result<Schema, String> {
        jsonschema::validator_for(schema)
            .map(Schema)
            .map_err(|e| format!("not a valid JSON Schema: {e}"))
    }

    /// Every way `instance` fails the schema, as flowBuild reports them:
    /// the failing path and the message.
    pub fn errors(&self, instance: &Value) -> Vec<FieldError> {
        self.0
            .iter_errors(instance)
            .map(|e| {
                let path = e.instance_path().to_string();
                FieldError::new(
                    if path.is_empty() { "/".into() } else { path },
                    e.to_string(),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EVENTS: &[HumanEvent] = &[
        HumanEvent::Reserve,
        HumanEvent::Requeue,
        HumanEvent::Start,
        HumanEvent::Commit,
        HumanEvent::Submit,
        HumanEvent::Continue,
        HumanEvent::Accept,
        HumanEvent::Reject,
        HumanEvent::ResultInvalid,
    ];

    #[test]
    fn human_every_pair() {
        use HumanEvent as E;
        use HumanStatus::*;
        for &from in HumanStatus::ALL {
            for &event in EVENTS {
                let expected = match (from, event) {
                    (New, E::Reserve) => Some(Reserved),
                    (Reserved | Executing, E::Requeue | E::Start) => {
                        Some(if event == E::Start { Executing } else { New })
                    }
                    (New | Executing, E::Commit) => Some(Executing),
                    (New | Executing, E::Submit) => Some(Submitted),
                    (New | Reserved | Executing, E::Continue) => Some(Submitted),
                    (Submitted, E::Accept) => Some(Complete),
                    (Submitted, E::Reject) => Some(Rejected),
                    (Submitted, E::ResultInvalid) => Some(Error),
                    _ => None,
                };
                assert_eq!(
                    human_transition(from, event).ok(),
                    expected,
                    "{from} + {event:?}"
                );
            }
        }
    }

    #[test]
    fn terminal_states_take_nothing() {
        for &from in HumanStatus::ALL.iter().filter(|s| s.is_terminal()) {
            for &event in EVENTS {
                assert!(human_transition(from, event).is_err(), "{from} + {event:?}");
            }
        }
    }

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

    #[test]
    fn worker_tokens_bind_an_email_and_cannot_be_forged() {
        let key = "00".repeat(32);
        let tokens = WorkerTokens::from_config(&key).expect("key");
        let claims = WorkerClaims {
            token_id: Uuid::now_v7(),
            customer: CustomerId::new(),
            email: "sofier@mysofie.com".into(),
        };
        let token = tokens.mint(&claims);
        assert_eq!(tokens.verify(&token), Some(claims.clone()));
        // Another deployment's key, a changed e-mail, a cut token: refused.
        let other = WorkerTokens::from_config(&"11".repeat(32)).expect("key");
        assert_eq!(other.verify(&token), None);
        let (payload, tag) = token.split_once('.').expect("dot");
        let mut forged = B64
            .decode(payload.trim_start_matches(WORKER_PREFIX))
            .expect("b64");
        forged.extend_from_slice(b"x");
        assert_eq!(
            tokens.verify(&format!("{WORKER_PREFIX}{}.{tag}", B64.encode(forged))),
            None
        );
        assert_eq!(tokens.verify(&token[..token.len() - 2]), None);
        assert_eq!(tokens.verify("orqw_."), None);
        assert_eq!(tokens.verify("not a token"), None);
    }

    #[test]
    fn emails_are_normalized() {
        assert_eq!(
            normalize_email(" Sofier@MySofie.com ").as_deref(),
            Ok("sofier@mysofie.com")
        );
        assert!(normalize_email("nobody").is_err());
        assert!(normalize_email("a@b").is_err());
        assert!(normalize_email("a b@c.d").is_err());
    }

    #[test]
    fn timeouts_become_absolute_deadlines() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        assert_eq!(
            deadline_from(&json!(60), now),
            Ok(now + time::Duration::seconds(60))
        );
        let later = "2030-01-01T00:00:00Z";
        assert_eq!(
            deadline_from(&json!(later), now).map(|t| t.year()),
            Ok(2030)
        );
        assert!(deadline_from(&json!(0), now).is_err());
        assert!(deadline_from(&json!(-5), now).is_err());
        assert!(deadline_from(&json!("1999-01-01T00:00:00Z"), now).is_err());
        assert!(deadline_from(&json!("2019-08-13T45:29:00"), now).is_err());
        assert!(deadline_from(&json!(true), now).is_err());
    }

    #[test]
    fn timers_fire_relative_to_creation_a_date_or_the_expiry() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let expires = now + time::Duration::hours(1);
        let timers = parse_timers(
            &json!([
                {"type": "timer", "in": 60},
                {"type": "timer", "before_expiry": 600, "description": "reminder"},
                {"type": "timer", "at": "2030-01-01T00:00:00Z"}
            ]),
            now,
            Some(expires),
        )
        .expect("valid");
        assert_eq!(timers[0].fire_at, now + time::Duration::seconds(60));
        assert_eq!(timers[0].description, "timer 1");
        assert_eq!(timers[1].fire_at, expires - time::Duration::minutes(10));
        assert_eq!(timers[1].description, "reminder");
        assert_eq!(timers[2].fire_at.year(), 2030);
        for (bad, field) in [
            (json!({"type": "timer"}), "events"),
            (json!([{"type": "signal", "in": 1}]), "events[0].type"),
            (json!([{"type": "timer"}]), "events[0]"),
            (
                json!([{"type": "timer", "in": 1, "at": "2030-01-01T00:00:00Z"}]),
                "events[0]",
            ),
            (json!([{"type": "timer", "in": -1}]), "events[0].in"),
            (
                json!([{"type": "timer", "at": "2019-08-13T45:29:00"}]),
                "events[0].at",
            ),
        ] {
            let e = parse_timers(&bad, now, Some(expires)).expect_err("invalid");
            assert_eq!(e.field, field, "{bad}");
        }
        let e = parse_timers(&json!([{"type": "timer", "before_expiry": 5}]), now, None)
            .expect_err("no timeout");
        assert_eq!(e.field, "events[0].before_expiry");
    }

    #[test]
    fn schemas_report_every_failure_with_its_path() {
        let schema = Schema::compile(&json!({
            "type": "object",
            "required": ["cpf"],
            "properties": {"cpf": {"type": "string"}, "age": {"type": "integer", "minimum": 18}}
        }))
        .expect("schema");
        assert!(schema.errors(&json!({"cpf": "1"})).is_empty());
        let errors = schema.errors(&json!({"age": 3}));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors.iter().any(|e| e.field == "/age"));
        assert!(Schema::compile(&json!({"type": 12})).is_err());
    }
}
