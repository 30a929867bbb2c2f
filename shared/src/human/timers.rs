//! flowBuild's `timeout` and timer `events`, as absolute times.

use serde_json::Value;
use time::OffsetDateTime;

use super::parse_when;
use crate::field::FieldError;

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
}
