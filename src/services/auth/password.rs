//! Password hashing: Argon2id with the crate's defaults (the OWASP
//! recommendation: 19 MiB, 2 passes, 1 lane), salts from the runtime's rng.
//! CPU-heavy: callers run it through `rt::blocking`.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};

use super::error::AuthError;

/// Fewest bytes of a password.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Most bytes of a password (Argon2 takes any length; this bounds the work).
pub const MAX_PASSWORD_BYTES: usize = 128;
/// Bytes of a salt.
const SALT_BYTES: usize = 16;

/// The hasher: OWASP's parameters; in fuzzing builds (`cargo fuzz` sets
/// `--cfg fuzzing`) and in the simulator the cheapest ones, so a fuzzer or
/// a simulated cluster spends its time on the handlers rather than on
/// 19 MiB hashes. Verification reads the
/// parameters from the stored hash either way.
fn hasher() -> Argon2<'static> {
    if cfg!(any(fuzzing, madsim)) {
        let cheap = argon2::Params::new(argon2::Params::MIN_M_COST, 1, 1, None).unwrap_or_default();
        Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, cheap)
    } else {
        Argon2::default()
    }
}

/// The PHC string (`$argon2id$v=19$m=...`) of `password` with a fresh salt.
///
/// # Errors
/// [`AuthError::Hash`] if Argon2 refuses its parameters (a bug).
pub fn hash(password: &str) -> Result<String, AuthError> {
    let mut salt = [0u8; SALT_BYTES];
    rand::RngCore::fill_bytes(&mut crate::rt::rng(), &mut salt);
    hash_salted(password, &salt)
}

fn hash_salted(password: &str, salt: &[u8]) -> Result<String, AuthError> {
    hasher()
        .hash_password_with_salt(password.as_bytes(), salt)
        .map(|h| h.to_string())
        .map_err(AuthError::Hash)
}

/// True if `password` matches the PHC string `stored`; false for a
/// mismatch or a stored value that does not parse.
#[must_use]
pub fn verify(password: &str, stored: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), stored)
        .is_ok()
}

/// A hash to verify against when the email is unknown, so an unknown email
/// costs the same time as a wrong password. Computed once, on first use,
/// without drawing randomness: what it hashes never matters (its result is
/// ignored), and a once-per-process draw would make the simulator's runs of
/// one seed differ between the first and later runs in a process.
///
/// # Errors
/// As [`hash`].
pub fn decoy() -> Result<&'static str, AuthError> {
    static DECOY: OnceLock<String> = OnceLock::new();
    if let Some(h) = DECOY.get() {
        return Ok(h);
    }
    let h = hash_salted("decoy: never a password", &[0x5a; SALT_BYTES])?;
    Ok(DECOY.get_or_init(|| h))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let start = crate::rt::now();
        let h = hash("correct horse").expect("hash");
        let hashed = start.elapsed();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(!h.contains("correct horse"));
        let start = crate::rt::now();
        assert!(verify("correct horse", &h));
        let verified = start.elapsed();
        assert!(!verify("correct horsE", &h));
        assert!(!verify("correct horse", "not a hash"));
        assert_ne!(h, hash("correct horse").expect("hash"), "salted");
        eprintln!("argon2id hash {hashed:?}, verify {verified:?}");
        assert!(!verify("x", decoy().expect("decoy")));
    }
}
