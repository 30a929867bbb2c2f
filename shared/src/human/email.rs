//! E-mails as workers are known by: normalized, compared without case.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
