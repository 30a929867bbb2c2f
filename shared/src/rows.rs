//! The rows of a CSV ("system") job across attempts: a job moved to another
//! agent resumes after the rows reported done, the rows that failed keep
//! their errors, and every run of a row gets the same key whichever agent
//! runs it, so an automation can skip work it already did.

use serde_json::Value;

use crate::domain::JobId;
use crate::messages::RowError;

/// The stable key of one row of a job: the same on every attempt and every
/// agent (`ORQ_IDEMPOTENCY_KEY` in the automation's environment).
pub fn row_key(job: JobId, row: u32) -> String {
    format!("{job}:{row}")
}

/// The failed rows a job's `result` records (`{"failed_rows": [{row, error}]}`),
/// in row order; anything else in `result` is ignored.
pub fn failed_rows_of(result: Option<&Value>) -> Vec<RowError> {
    let Some(rows) = result
        .and_then(|r| r.get("failed_rows"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    let mut out: Vec<RowError> = rows
        .iter()
        .filter_map(|r| serde_json::from_value(r.clone()).ok())
        .collect();
    out.sort_by_key(|r| r.row);
    out.dedup_by_key(|r| r.row);
    out
}

/// `result` with `failed` added to its failed rows, one entry per row (a
/// repeated report of the same row keeps the newer error). Other keys of
/// `result` stay as they are.
pub fn merge_failed_rows(result: Option<&Value>, failed: &[RowError]) -> Option<Value> {
    if failed.is_empty() {
        return result.cloned();
    }
    let mut rows = failed_rows_of(result);
    for f in failed {
        match rows.iter_mut().find(|r| r.row == f.row) {
            Some(existing) => existing.error.clone_from(&f.error),
            None => rows.push(f.clone()),
        }
    }
    rows.sort_by_key(|r| r.row);
    let mut merged = match result {
        Some(Value::Object(map)) => map.clone(),
        _ => serde_json::Map::new(),
    };
    merged.insert(
        "failed_rows".into(),
        serde_json::to_value(rows).unwrap_or(Value::Null),
    );
    Some(Value::Object(merged))
}

/// At most this many failed rows are named in an ERROR event.
pub const NAMED_ROWS: usize = 5;
/// At most this many characters of one row's error in an ERROR event.
pub const ROW_ERROR_CHARS: usize = 200;

/// The ERROR event of a CSV job that ended with failed rows: the outcome
/// (`"1 of 3 rows failed"`), then each failed row and its error, bounded
/// ([`NAMED_ROWS`] rows, [`ROW_ERROR_CHARS`] characters each); the rest is
/// in the task's `result.failed_rows`.
pub fn failure_note(error: &str, failed: &[RowError]) -> String {
    let mut rows: Vec<&RowError> = failed.iter().collect();
    rows.sort_by_key(|r| r.row);
    rows.dedup_by_key(|r| r.row);
    if rows.is_empty() {
        return error.to_string();
    }
    let named: Vec<String> = rows
        .iter()
        .take(NAMED_ROWS)
        .map(|r| {
            format!(
                "row {}: {}",
                r.row,
                shorten(r.error.trim(), ROW_ERROR_CHARS)
            )
        })
        .collect();
    let mut note = format!("{error}: {}", named.join("; "));
    if rows.len() > NAMED_ROWS {
        note.push_str(&format!(
            "; and {} more (see the task's failed_rows)",
            rows.len() - NAMED_ROWS
        ));
    }
    note
}

/// `text` cut to `max` characters, marked with an ellipsis when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(row: u32, error: &str) -> RowError {
        RowError {
            row,
            error: error.into(),
        }
    }

    #[test]
    fn a_row_key_is_the_job_and_the_row() {
        let job = JobId::new();
        assert_eq!(row_key(job, 3), format!("{job}:3"));
        assert_ne!(row_key(job, 3), row_key(job, 4));
        assert_ne!(row_key(job, 3), row_key(JobId::new(), 3));
    }

    #[test]
    fn failed_rows_are_read_in_row_order_and_junk_is_skipped() {
        let result = json!({"failed_rows": [
            {"row": 4, "error": "b"}, {"row": 2, "error": "a"}, {"oops": 1}, {"row": 2, "error": "dup"}
        ]});
        let rows = failed_rows_of(Some(&result));
        assert_eq!(rows.iter().map(|r| r.row).collect::<Vec<_>>(), vec![2, 4]);
        assert!(failed_rows_of(None).is_empty());
        assert!(failed_rows_of(Some(&json!({"stdout": ""}))).is_empty());
    }

    #[test]
    fn merging_adds_new_rows_keeps_old_ones_and_replaces_a_repeated_row() {
        let result = json!({"failed_rows": [{"row": 1, "error": "first"}], "other": true});
        let merged =
            merge_failed_rows(Some(&result), &[row(3, "third"), row(1, "again")]).expect("some");
        assert_eq!(
            merged,
            json!({"failed_rows": [{"row": 1, "error": "again"}, {"row": 3, "error": "third"}], "other": true})
        );
        // A redelivered report changes nothing more.
        let twice = merge_failed_rows(Some(&merged), &[row(3, "third")]).expect("some");
        assert_eq!(twice, merged);
    }

    #[test]
    fn merging_nothing_leaves_the_result_alone() {
        assert_eq!(merge_failed_rows(None, &[]), None);
        let result = json!({"x": 1});
        assert_eq!(merge_failed_rows(Some(&result), &[]), Some(result));
        assert_eq!(
            merge_failed_rows(None, &[row(2, "e")]),
            Some(json!({"failed_rows": [{"row": 2, "error": "e"}]}))
        );
    }

    #[test]
    fn an_error_event_names_the_failed_row_and_its_error() {
        assert_eq!(
            failure_note(
                "1 of 3 rows failed",
                &[row(2, "exit code 3: boom: cannot create user bad2\n")]
            ),
            "1 of 3 rows failed: row 2: exit code 3: boom: cannot create user bad2"
        );
    }

    #[test]
    fn an_error_event_names_rows_in_order_once_each() {
        assert_eq!(
            failure_note(
                "2 of 5 rows failed",
                &[row(4, "b"), row(2, "a"), row(4, "b")]
            ),
            "2 of 5 rows failed: row 2: a; row 4: b"
        );
    }

    #[test]
    fn an_error_event_stays_bounded_with_many_long_failures() {
        let long = "é".repeat(5_000);
        let failed: Vec<RowError> = (1..=1_000).map(|n| row(n, &long)).collect();
        let note = failure_note("1000 of 1000 rows failed", &failed);
        assert!(
            note.chars().count() < (NAMED_ROWS + 1) * (ROW_ERROR_CHARS + 20) + 100,
            "{} chars",
            note.chars().count()
        );
        assert!(note.contains("row 5: "), "{note}");
        assert!(!note.contains("row 6: "), "{note}");
        assert!(
            note.ends_with("and 995 more (see the task's failed_rows)"),
            "{note}"
        );
        assert!(note.contains('…'));
    }

    #[test]
    fn an_error_without_failed_rows_is_kept_as_it_is() {
        assert_eq!(failure_note("canceled", &[]), "canceled");
    }
}
