//! Bearer tokens: HS256 JWTs with `sub`, `kind`, `scopes`, `exp`, `iat` and
//! `jti`. Issuing and checking take `now` explicitly, so expiry is tested
//! without a clock; revocation is the store's business, not this file's.

use std::collections::HashSet;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::error::AuthError;
use super::secret::Secret;
use crate::proto::TokenKind;
use crate::services::media;

/// Lifetime of an access token.
pub const ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// Lifetime of a refresh token.
pub const REFRESH_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default lifetime of a service token.
pub const SERVICE_TTL: Duration = Duration::from_secs(3600);
/// Longest lifetime of a service token.
pub const MAX_SERVICE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Longest lifetime of any token we issue (revocations of a token known
/// only by id are kept this long).
pub const MAX_TTL: Duration = REFRESH_TTL;
/// Longest token accepted.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Most scopes of a token.
pub const MAX_SCOPES: usize = 32;
/// Longest scope.
pub const MAX_SCOPE_BYTES: usize = 64;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A user's short-lived API token.
    Access,
    /// A user's long-lived token, only good for Refresh.
    Refresh,
    /// A service's token from IssueServiceToken.
    Service,
}

impl From<Kind> for TokenKind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Access => TokenKind::Access,
            Kind::Refresh => TokenKind::Refresh,
            Kind::Service => TokenKind::Service,
        }
    }
}

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// User id or service name.
    pub sub: String,
    /// What the token is for.
    pub kind: Kind,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Unique token id.
    pub jti: String,
    /// The refresh family: every pair rotated from one sign-in shares it, so
    /// that a stolen refresh token, once its reuse shows, can end them all.
    /// Empty for service tokens (and tokens issued before families).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fam: String,
}

impl Claims {
    /// Expiry in Unix milliseconds.
    #[must_use]
    pub fn expires_at_ms(&self) -> u64 {
        self.exp.saturating_mul(1000)
    }
}

/// A freshly signed token. `Debug` hides the token itself.
#[derive(Clone)]
pub struct Issued {
    /// The JWT (secret).
    pub token: String,
    /// What it says.
    pub claims: Claims,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

/// Why a token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// Empty or longer than [`MAX_TOKEN_BYTES`].
    #[error("bad length")]
    Length,
    /// Not a JWT, or claims of the wrong shape.
    #[error("malformed")]
    Malformed,
    /// Signed with another algorithm.
    #[error("unsupported algorithm")]
    Algorithm,
    /// The signature does not match (forged, or another secret).
    #[error("bad signature")]
    Signature,
    /// Past its expiry.
    #[error("expired")]
    Expired,
    /// On the revocation list.
    #[error("revoked")]
    Revoked,
    /// Of the wrong kind for the use.
    #[error("wrong token kind")]
    Kind,
    /// Lacks the required scope.
    #[error("missing scope")]
    Scope,
}

/// True for a scope: 1..=64 bytes of `[a-z0-9_.:-]`.
#[must_use]
pub fn is_scope(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SCOPE_BYTES
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b':' | b'-')
        })
}

/// Signs and checks tokens with one HS256 secret.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

impl Tokens {
    /// Tokens signed with `secret`.
    #[must_use]
    pub fn new(secret: &Secret) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is checked against the runtime's clock below, not the OS's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims = HashSet::new();
        Self {
            encoding: EncodingKey::from_secret(secret.expose()),
            decoding: DecodingKey::from_secret(secret.expose()),
            validation,
        }
    }

    /// Signs a `kind` token for `sub` with `scopes`, valid for `ttl` from `now_ms`.
    ///
    /// # Errors
    /// [`AuthError::Sign`] if signing fails (never for valid input).
    pub fn issue(
        &self,
        sub: &str,
        kind: Kind,
        scopes: Vec<String>,
        ttl: Duration,
        now_ms: u64,
    ) -> Result<Issued, AuthError> {
        self.issue_in_family(sub, kind, scopes, ttl, "", now_ms)
    }

    /// [`Tokens::issue`], in refresh family `fam`.
    ///
    /// # Errors
    /// Signing failed (never with a valid key).
    pub fn issue_in_family(
        &self,
        sub: &str,
        kind: Kind,
        scopes: Vec<String>,
        ttl: Duration,
        fam: &str,
        now_ms: u64,
    ) -> Result<Issued, AuthError> {
        let iat = now_ms / 1000;
        let claims = Claims {
            sub: sub.to_owned(),
            kind,
            scopes,
            exp: iat.saturating_add(ttl.as_secs()),
            iat,
            jti: crate::rt::random_hex128(),
            fam: fam.to_owned(),
        };
        let token = self.sign(&claims)?;
        Ok(Issued { token, claims })
    }

    /// The token of `claims`, as [`Tokens::issue`] signs it (the fuzz
    /// target `bearer_token` checks that a token that decodes is exactly
    /// the one its claims sign to: no second spelling verifies).
    ///
    /// # Errors
    /// [`AuthError::Sign`] if signing fails.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(AuthError::Sign)
    }

    /// The claims of `token` if it is well formed and signed by us,
    /// whatever its expiry.
    ///
    /// # Errors
    /// Why it is not.
    pub fn decode_any_age(&self, token: &str) -> Result<Claims, Invalid> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(Invalid::Length);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => Invalid::Signature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Invalid::Algorithm,
                _ => Invalid::Malformed,
            })?;
        let c = data.claims;
        let shaped = media::is_id(&c.sub)
            && media::is_id(&c.jti)
            && c.scopes.len() <= MAX_SCOPES
            && c.scopes.iter().all(|s| is_scope(s))
            && c.iat <= c.exp;
        if !shaped {
            return Err(Invalid::Malformed);
        }
        Ok(c)
    }

    /// The claims of `token` if it is well formed, signed by us and not
    /// expired at `now_ms`.
    ///
    /// # Errors
    /// Why it is not valid.
    pub fn decode(&self, token: &str, now_ms: u64) -> Result<Claims, Invalid> {
        let c = self.decode_any_age(token)?;
        if now_ms >= c.expires_at_ms() {
            return Err(Invalid::Expired);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn tokens() -> Tokens {
        Tokens::new(&Secret::new(vec![7u8; 32]))
    }

    #[test]
    fn a_token_is_valid_until_its_expiry() {
        let t = tokens();
        let issued = t
            .issue(
                "u1",
                Kind::Access,
                vec!["videos:write".into()],
                ACCESS_TTL,
                NOW,
            )
            .expect("issue");
        let c = t.decode(&issued.token, NOW).expect("valid now");
        assert_eq!(c, issued.claims);
        assert_eq!(c.expires_at_ms(), NOW + 15 * 60 * 1000);
        assert!(t.decode(&issued.token, c.expires_at_ms() - 1).is_ok());
        assert_eq!(
            t.decode(&issued.token, c.expires_at_ms()),
            Err(Invalid::Expired)
        );
        assert_eq!(t.decode_any_age(&issued.token), Ok(c));
    }

    #[test]
    fn forged_and_garbled_tokens_are_refused() {
        let t = tokens();
        let issued = t
            .issue("u1", Kind::Access, vec![], ACCESS_TTL, NOW)
            .expect("issue");
        let other = Tokens::new(&Secret::new(vec![8u8; 32]));
        assert_eq!(other.decode(&issued.token, NOW), Err(Invalid::Signature));
        // The payload changed (another subject), the signature kept.
        let mut parts: Vec<&str> = issued.token.split('.').collect();
        let forged_claims = Claims {
            sub: "admin".into(),
            ..issued.claims.clone()
        };
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&forged_claims).expect("json"),
        );
        parts[1] = &payload;
        assert_eq!(t.decode(&parts.join("."), NOW), Err(Invalid::Signature));
        // alg=none.
        let header = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"alg":"none","typ":"JWT"}"#,
        );
        let unsigned = format!("{header}.{payload}.");
        assert!(t.decode(&unsigned, NOW).is_err());
        for garbage in ["", "x", "a.b.c", "...", &"a".repeat(MAX_TOKEN_BYTES + 1)] {
            assert!(t.decode(garbage, NOW).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn scopes_follow_the_proto() {
        for good in ["videos:read", "a", "x.y-z_0"] {
            assert!(is_scope(good));
        }
        for bad in ["", "Videos", "a b", &"a".repeat(65)] {
            assert!(!is_scope(bad));
        }
    }

    #[test]
    fn issued_tokens_hide_the_token_in_debug() {
        let issued = tokens()
            .issue("u1", Kind::Refresh, vec![], REFRESH_TTL, NOW)
            .expect("issue");
        assert!(!format!("{issued:?}").contains(&issued.token));
    }
}
