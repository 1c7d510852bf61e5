//! What an identifier (aggregate, command, correlation, user id) may look like, checked the same
//! way by every service.

/// Longest identifier accepted, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// At most [`MAX_ID_CHARS`] characters, no whitespace or control characters. Empty passes: where
/// an id is required, the caller says so. The error names `what`, for people.
pub fn check_id(what: &str, value: &str) -> Result<(), String> {
    if value.chars().count() > MAX_ID_CHARS {
        return Err(format!("{what} is longer than {MAX_ID_CHARS} characters"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{what} must not contain whitespace or control characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_bounded_and_printable() {
        assert!(super::check_id("room id", "lobby-1:ä").is_ok());
        assert!(super::check_id("room id", "").is_ok());
        assert_eq!(
            super::check_id("room id", &"x".repeat(129)).unwrap_err(),
            "room id is longer than 128 characters"
        );
        assert!(super::check_id("room id", "a b").is_err());
        assert!(super::check_id("room id", "a\u{7}").is_err());
    }
}
