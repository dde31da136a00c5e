//! Request field checks of the auth service (the proto's limits). Messages
//! name the field and the rule, never the value (it may be a secret).

use super::error::AuthError;
use super::password::{MAX_PASSWORD_BYTES, MIN_PASSWORD_BYTES};
use super::token::{MAX_SCOPES, is_scope};

/// Longest display name.
pub const MAX_DISPLAY_NAME_BYTES: usize = 100;

fn invalid(msg: &str) -> AuthError {
    AuthError::Invalid(msg.to_owned())
}

/// A password: 8..=128 bytes.
///
/// # Errors
/// INVALID_ARGUMENT naming the rule (never the password).
pub fn password(p: &str) -> Result<(), AuthError> {
    if (MIN_PASSWORD_BYTES..=MAX_PASSWORD_BYTES).contains(&p.len()) {
        Ok(())
    } else {
        Err(invalid("password: 8..=128 bytes"))
    }
}

/// A display name: 0..=100 bytes without control characters.
///
/// # Errors
/// INVALID_ARGUMENT naming the rule.
pub fn display_name(n: &str) -> Result<(), AuthError> {
    if n.len() <= MAX_DISPLAY_NAME_BYTES && !n.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(invalid(
            "display_name: at most 100 bytes without control characters",
        ))
    }
}

/// The display name for `email` when none is given: its local part, cut to
/// the display name's limit.
#[must_use]
pub fn default_display_name(email: &str) -> String {
    let local = email.split('@').next().unwrap_or_default();
    crate::text::prefix(local, MAX_DISPLAY_NAME_BYTES).to_owned()
}

/// Requested scopes: at most 32, each a scope.
///
/// # Errors
/// INVALID_ARGUMENT naming the rule.
pub fn scopes(s: &[String]) -> Result<(), AuthError> {
    if s.len() <= MAX_SCOPES && s.iter().all(|x| is_scope(x)) {
        Ok(())
    } else {
        Err(invalid(
            "scopes: at most 32, each 1..=64 bytes of [a-z0-9_.:-]",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_proto() {
        assert!(password("12345678").is_ok());
        assert!(password("1234567").is_err());
        assert!(password(&"p".repeat(129)).is_err());
        assert!(display_name("").is_ok());
        assert!(display_name("a\u{7}").is_err());
        assert_eq!(default_display_name("ada@example.com"), "ada");
        assert!(scopes(&["videos:read".into()]).is_ok());
        assert!(scopes(&["Videos".into()]).is_err());
    }

    #[test]
    fn messages_never_echo_the_value() {
        let secret = "hunter2";
        let e = password(secret).expect_err("short");
        assert!(!e.to_string().contains(secret));
    }
}
