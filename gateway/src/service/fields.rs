//! Reading a request's fields into values: text, enums, file names. Each
//! refusal is a `FieldError` naming the field (the API's `invalid_field`),
//! so services and routes share one wording.

use orq_shared::field::FieldError;

/// An optional field naming one value of a text enum (a status, a mode):
/// `None` when absent, an error naming `field` when it is no such value.
pub fn optional_enum<T>(field: &str, value: Option<&str>) -> Result<Option<T>, FieldError>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    value
        .map(str::parse::<T>)
        .transpose()
        .map_err(|e| FieldError::new(field, e.to_string()))
}

/// Reads a non-empty, trimmed text field of bounded length.
pub fn text_field(field: &str, value: &str, max: usize) -> Result<String, FieldError> {
    let value = value.trim();
    if value.contains('\0') {
        return Err(FieldError::new(
            field,
            format!("{field} must not contain NUL characters"),
        ));
    }
    if value.is_empty() {
        return Err(FieldError::new(field, format!("{field} must not be empty")));
    }
    if value.chars().count() > max {
        return Err(FieldError::new(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    Ok(value.to_string())
}

/// Labels given as `a,b`: each trimmed, none longer than 200 characters;
/// empty items are skipped.
pub fn labels(raw: &str) -> Result<Vec<String>, FieldError> {
    raw.split(',')
        .filter(|t| !t.trim().is_empty())
        .map(|t| text_field("tags", t, 200))
        .collect()
}

/// A file name to write on the bot: one path component, nothing special.
pub fn check_filename(name: &str) -> Result<String, FieldError> {
    let name = text_field("filename", name, 200)?;
    if name.contains('/') || name.contains('\\') || name == "." || name == ".." {
        return Err(FieldError::new(
            "filename",
            "filename must be a plain file name, without '/' and not '.' or '..'",
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orq_shared::domain::JobStatus;

    #[test]
    fn labels_are_comma_separated_trimmed_and_bounded() {
        assert_eq!(
            labels(" billing, nightly ,,").expect("two"),
            vec!["billing".to_string(), "nightly".to_string()]
        );
        assert!(labels("").expect("none").is_empty());
        let e = labels(&"x".repeat(201)).expect_err("too long");
        assert_eq!(e.field, "tags");
    }

    #[test]
    fn a_text_field_is_trimmed_and_bounded() {
        assert_eq!(text_field("name", "  a b ", 3).expect("fits"), "a b");
        let e = text_field("name", "   ", 3).expect_err("empty");
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("name", "name must not be empty")
        );
        assert_eq!(
            text_field("name", "abcd", 3).expect_err("long").message,
            "name must be at most 3 characters"
        );
        assert_eq!(
            text_field("name", "a\0b", 3).expect_err("nul").message,
            "name must not contain NUL characters"
        );
    }

    #[test]
    fn an_enum_field_is_absent_or_one_of_its_values() {
        assert_eq!(
            optional_enum::<JobStatus>("status", None).expect("absent"),
            None
        );
        assert_eq!(
            optional_enum::<JobStatus>("status", Some("RUNNING")).expect("known"),
            Some(JobStatus::Running)
        );
        assert_eq!(
            optional_enum::<JobStatus>("status", Some("nope"))
                .expect_err("unknown")
                .field,
            "status"
        );
    }

    #[test]
    fn a_filename_is_one_plain_path_component() {
        assert_eq!(check_filename(" run.sh ").expect("plain"), "run.sh");
        for bad in ["a/b", "a\\b", ".", ".."] {
            assert_eq!(check_filename(bad).expect_err(bad).field, "filename");
        }
    }
}
