//! TheEye task definitions, the pure part: argument lists and the values a
//! run supplies for them, the `run_as` template, the environment, triggers.
//! Everything here parses (input in, typed value or a `FieldError` naming
//! the offending field out); storage and HTTP live elsewhere.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

use crate::domain::TaskId;

pub use crate::field::FieldError;

fn err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Longest argument value, environment value or label accepted.
pub const MAX_VALUE_LEN: usize = 65_536;

/// One declared argument of a task, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ArgumentDef {
    /// Always this value; a run does not supply it.
    Fixed { label: String, value: String },
    /// Whatever the run supplies (empty only when not `required`).
    Input {
        label: String,
        #[serde(default = "yes")]
        required: bool,
    },
    /// One of `options`.
    #[serde(alias = "select")]
    Options { label: String, options: Vec<String> },
}

fn yes() -> bool {
    true
}

impl ArgumentDef {
    pub fn label(&self) -> &str {
        match self {
            ArgumentDef::Fixed { label, .. }
            | ArgumentDef::Input { label, .. }
            | ArgumentDef::Options { label, .. } => label,
        }
    }

    fn is_fixed(&self) -> bool {
        matches!(self, ArgumentDef::Fixed { .. })
    }
}

/// Parses and checks a task's `task_arguments` definition.
pub fn parse_argument_defs(value: &Value) -> Result<Vec<ArgumentDef>, FieldError> {
    let Value::Array(items) = value else {
        return Err(err("task_arguments", "task_arguments must be an array"));
    };
    let mut defs = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let field = format!("task_arguments[{i}]");
        let def: ArgumentDef = serde_json::from_value(item.clone()).map_err(|e| {
            err(
                &field,
                format!(
                    "{field}: {e}; expected {{\"type\": \"fixed\"|\"input\"|\"options\", \"label\", ...}}"
                ),
            )
        })?;
        check_text(&field, def.label(), 200)?;
        match &def {
            ArgumentDef::Fixed { value, .. } => check_value(&field, value)?,
            ArgumentDef::Options { options, .. } => {
                if options.is_empty() {
                    return Err(err(&field, format!("{field}: options must not be empty")));
                }
                for o in options {
                    check_value(&field, o)?;
                }
            }
            ArgumentDef::Input { .. } => {}
        }
        defs.push(def);
    }
    Ok(defs)
}

fn check_text(field: &str, text: &str, max: usize) -> Result<(), FieldError> {
    if text.trim().is_empty() {
        return Err(err(field, format!("{field}: label must not be empty")));
    }
    if text.chars().count() > max {
        return Err(err(
            field,
            format!("{field}: at most {max} characters allowed"),
        ));
    }
    check_value(field, text)
}

fn check_value(field: &str, value: &str) -> Result<(), FieldError> {
    if value.contains('\0') {
        return Err(err(field, format!("{field} must not contain NUL")));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(err(
            field,
            format!("{field} is longer than {MAX_VALUE_LEN} bytes"),
        ));
    }
    Ok(())
}

/// A supplied value as text: strings as they are, numbers and booleans
/// written out (the seed sends every argument as a string, clients often
/// send numbers), `null` as "not given".
fn as_text(field: &str, value: &Value) -> Result<Option<String>, FieldError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        _ => Err(err(
            field,
            format!("{field} must be a string, a number or a boolean"),
        )),
    }
}

/// The argv values of one run. `supplied` lists, in order, either a value
/// for each non-fixed argument, or a value for every argument (a fixed
/// argument's position then holds `null` or its own value).
pub fn resolve_arguments(
    defs: &[ArgumentDef],
    supplied: &[Value],
) -> Result<Vec<String>, FieldError> {
    let open = defs.iter().filter(|d| !d.is_fixed()).count();
    let full = supplied.len() == defs.len();
    if !full && supplied.len() != open {
        let expected = if open == defs.len() {
            format!("{open}")
        } else {
            format!("{open} (or {} including the fixed ones)", defs.len())
        };
        let labels: Vec<&str> = defs
            .iter()
            .filter(|d| !d.is_fixed())
            .map(ArgumentDef::label)
            .collect();
        return Err(err(
            "task_arguments",
            format!(
                "task_arguments has {} value(s); this task takes {expected}: {labels:?}",
                supplied.len()
            ),
        ));
    }
    let mut given = supplied.iter().enumerate();
    let mut values = Vec::with_capacity(defs.len());
    for def in defs {
        if !full && def.is_fixed() {
            if let ArgumentDef::Fixed { value, .. } = def {
                values.push(value.clone());
            }
            continue;
        }
        let Some((i, raw)) = given.next() else {
            break;
        };
        let field = format!("task_arguments[{i}]");
        let value = as_text(&field, raw)?;
        let label = def.label();
        let value = match def {
            ArgumentDef::Fixed { value: fixed, .. } => match value {
                None => fixed.clone(),
                Some(v) if v == *fixed => v,
                Some(v) => {
                    return Err(err(
                        &field,
                        format!("argument {label:?} is fixed to {fixed:?}; got {v:?}"),
                    ));
                }
            },
            ArgumentDef::Input { required, .. } => match value {
                Some(v) if !v.is_empty() || !required => v,
                None if !required => String::new(),
                _ => {
                    return Err(err(&field, format!("argument {label:?} is required")));
                }
            },
            ArgumentDef::Options { options, .. } => match value {
                Some(v) if options.contains(&v) => v,
                other => {
                    return Err(err(
                        &field,
                        format!(
                            "argument {label:?} must be one of {options:?}; got {:?}",
                            other.unwrap_or_default()
                        ),
                    ));
                }
            },
        };
        check_value(&field, &value)?;
        values.push(value);
    }
    Ok(values)
}

/// The placeholder of `run_as` that stands for the script and its arguments.
pub const SCRIPT_PLACEHOLDER: &str = "%script%";

/// A parsed `run_as`: words as a shell would split them (quotes honoured),
/// but run as argv, never through a shell. Exactly one word is `%script%`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs(Vec<String>);

impl RunAs {
    pub fn parse(template: &str) -> Result<RunAs, FieldError> {
        let template = if template.trim().is_empty() {
            SCRIPT_PLACEHOLDER
        } else {
            template
        };
        check_value("run_as", template)?;
        let words = shlex::split(template)
            .ok_or_else(|| err("run_as", "run_as has an unbalanced quote or escape"))?;
        let n = words.iter().filter(|w| *w == SCRIPT_PLACEHOLDER).count();
        if n != 1 {
            return Err(err(
                "run_as",
                format!(
                    "run_as must contain {SCRIPT_PLACEHOLDER} exactly once, as a word of its own (e.g. \"bash {SCRIPT_PLACEHOLDER}\"); found it {n} times"
                ),
            ));
        }
        Ok(RunAs(words))
    }

    /// The argv: `%script%` replaced by the script's path followed by the
    /// run's arguments, each one argv entry.
    pub fn argv(&self, script: &str, args: &[String]) -> Vec<String> {
        let mut argv = Vec::with_capacity(self.0.len() + args.len());
        for word in &self.0 {
            if word == SCRIPT_PLACEHOLDER {
                argv.push(script.to_string());
                argv.extend(args.iter().cloned());
            } else {
                argv.push(word.clone());
            }
        }
        argv
    }
}

/// A task's extra environment: a JSON object of strings, or (as TheEye's
/// model stores it) a string holding such an object.
pub fn parse_env(value: &Value) -> Result<BTreeMap<String, String>, FieldError> {
    let object = match value {
        Value::Null => return Ok(BTreeMap::new()),
        Value::String(s) if s.trim().is_empty() => return Ok(BTreeMap::new()),
        Value::String(s) => serde_json::from_str::<Value>(s)
            .map_err(|e| err("env", format!("env is not a JSON object: {e}")))?,
        other => other.clone(),
    };
    let Value::Object(map) = object else {
        return Err(err("env", "env must be an object of names to strings"));
    };
    let mut env = BTreeMap::new();
    for (name, v) in map {
        let valid_name = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(err(
                "env",
                format!(
                    "env name {name:?} must be letters, digits and _, not starting with a digit"
                ),
            ));
        }
        let text = as_text(&format!("env.{name}"), &v)?.unwrap_or_default();
        check_value(&format!("env.{name}"), &text)?;
        env.insert(name, text);
    }
    Ok(env)
}

/// When a trigger fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerOn {
    Success,
    Failure,
    /// Either outcome.
    Finish,
}

/// "Run this task when a job of `task_id` ends with `on`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    pub task_id: TaskId,
    #[serde(default = "finish")]
    pub on: TriggerOn,
}

fn finish() -> TriggerOn {
    TriggerOn::Finish
}

pub fn parse_triggers(value: &Value) -> Result<Vec<Trigger>, FieldError> {
    match value {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                serde_json::from_value(item.clone()).map_err(|e| {
                    err(
                        format!("triggers[{i}]"),
                        format!(
                            "triggers[{i}]: {e}; expected {{\"task_id\": \"<task id>\", \"on\": \"success\"|\"failure\"|\"finish\"}}"
                        ),
                    )
                })
            })
            .collect(),
        _ => Err(err("triggers", "triggers must be an array")),
    }
}

impl TriggerOn {
    /// Whether a job that ended successfully (`success`) fires this.
    pub fn fires(self, success: bool) -> bool {
        match self {
            TriggerOn::Finish => true,
            TriggerOn::Success => success,
            TriggerOn::Failure => !success,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defs() -> Vec<ArgumentDef> {
        parse_argument_defs(&json!([
            {"type": "fixed", "label": "mode", "value": "fast"},
            {"type": "input", "label": "name"},
            {"type": "options", "label": "env", "options": ["dev", "prod"]},
        ]))
        .expect("valid")
    }

    #[test]
    fn open_values_fill_in_around_fixed_ones() {
        let v = resolve_arguments(&defs(), &[json!("ana"), json!("prod")]).expect("ok");
        assert_eq!(v, vec!["fast", "ana", "prod"]);
    }

    #[test]
    fn a_full_list_may_repeat_or_omit_fixed_values() {
        let v = resolve_arguments(&defs(), &[json!(null), json!("ana"), json!("dev")]).expect("ok");
        assert_eq!(v, vec!["fast", "ana", "dev"]);
        let v = resolve_arguments(&defs(), &[json!("fast"), json!(7), json!("dev")]).expect("ok");
        assert_eq!(v, vec!["fast", "7", "dev"]);
        let e = resolve_arguments(&defs(), &[json!("slow"), json!("a"), json!("dev")])
            .expect_err("fixed differs");
        assert_eq!(e.field, "task_arguments[0]");
    }

    #[test]
    fn wrong_count_names_the_arguments() {
        let e = resolve_arguments(&defs(), &[json!("ana")]).expect_err("count");
        assert_eq!(e.field, "task_arguments");
        assert!(e.message.contains("\"name\""), "{}", e.message);
        assert!(resolve_arguments(&[], &[json!("x")]).is_err());
        assert_eq!(
            resolve_arguments(&[], &[]).expect("none"),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_value_outside_the_options_names_the_argument() {
        let e = resolve_arguments(&defs(), &[json!("ana"), json!("staging")]).expect_err("opt");
        assert_eq!(e.field, "task_arguments[1]");
        assert!(e.message.contains("\"env\""));
        assert!(e.message.contains("staging"));
    }

    #[test]
    fn required_input_and_bad_types_are_refused() {
        let e = resolve_arguments(&defs(), &[json!(""), json!("dev")]).expect_err("required");
        assert!(e.message.contains("required"));
        let e = resolve_arguments(&defs(), &[json!({"a": 1}), json!("dev")]).expect_err("object");
        assert_eq!(e.field, "task_arguments[0]");
        let optional =
            parse_argument_defs(&json!([{"type": "input", "label": "x", "required": false}]))
                .expect("valid");
        assert_eq!(
            resolve_arguments(&optional, &[json!(null)]).expect("ok"),
            vec![""]
        );
    }

    #[test]
    fn definitions_are_checked() {
        assert!(parse_argument_defs(&json!({})).is_err());
        let e = parse_argument_defs(&json!([{"type": "dance", "label": "x"}])).expect_err("type");
        assert_eq!(e.field, "task_arguments[0]");
        assert!(
            parse_argument_defs(&json!([{"type": "options", "label": "x", "options": []}]))
                .is_err()
        );
        assert!(parse_argument_defs(&json!([{"type": "input", "label": " "}])).is_err());
        // TheEye's name for options.
        assert!(
            parse_argument_defs(&json!([{"type": "select", "label": "x", "options": ["a"]}]))
                .is_ok()
        );
    }

    #[test]
    fn run_as_expands_to_argv_without_a_shell() {
        let r = RunAs::parse("sudo -u 'bot user' %script%").expect("valid");
        assert_eq!(
            r.argv("/s/a.sh", &["x y".into(), "$(rm -rf /)".into()]),
            vec!["sudo", "-u", "bot user", "/s/a.sh", "x y", "$(rm -rf /)"]
        );
        assert_eq!(
            RunAs::parse("").expect("default").argv("/s", &[]),
            vec!["/s"]
        );
        assert!(RunAs::parse("bash").is_err());
        assert!(RunAs::parse("%script% %script%").is_err());
        assert!(RunAs::parse("bash '%script%").is_err());
        assert!(RunAs::parse("bash x%script%").is_err());
    }

    #[test]
    fn env_is_an_object_or_a_string_holding_one() {
        let e = parse_env(&json!({"A": "1", "B_2": 3})).expect("ok");
        assert_eq!(e.get("B_2").map(String::as_str), Some("3"));
        let e = parse_env(&json!("{\"A\": \"x\"}")).expect("string form");
        assert_eq!(e.get("A").map(String::as_str), Some("x"));
        assert!(parse_env(&json!({"1A": "x"})).is_err());
        assert!(parse_env(&json!({"A=B": "x"})).is_err());
        assert!(parse_env(&json!([1])).is_err());
        assert!(parse_env(&json!("not json")).is_err());
    }

    #[test]
    fn triggers_parse_and_fire() {
        let t = parse_triggers(
            &json!([{"task_id": "0190b9a4-8d5e-7000-8000-000000000001", "on": "failure"}]),
        )
        .expect("valid");
        assert_eq!(t[0].on, TriggerOn::Failure);
        assert!(!t[0].on.fires(true));
        assert!(t[0].on.fires(false));
        assert!(TriggerOn::Finish.fires(true));
        let e = parse_triggers(&json!([{"task_id": "nope"}])).expect_err("bad id");
        assert_eq!(e.field, "triggers[0]");
    }
}
