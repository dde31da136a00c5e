//! The bearer-token check in front of every `/v1/` route but the account
//! routes: `Authorization: Bearer <access token>`, validated by the auth
//! service (AuthService.ValidateToken through the pool, positive answers
//! cached briefly). Missing, malformed, expired, forged or revoked: 401;
//! auth unreachable: 503. The user id travels on as an [`AuthUser`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};

use super::error::ApiError;
use super::token_cache::TokenCache;
use crate::client::ClientPool;
use crate::proto::{TokenKind, ValidateTokenRequest};
use crate::rt;
use crate::services::auth::token::MAX_TOKEN_BYTES;

/// Deadline of a ValidateToken call.
pub const VALIDATE_TIMEOUT: Duration = Duration::from_secs(5);

/// The authenticated user of a request (a request extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser(pub String);

/// What the check needs: the pool and the cache (two reference counts to
/// clone: the middleware's state is cloned for every request).
#[derive(Clone)]
pub struct Verifier {
    pool: ClientPool,
    cache: Arc<TokenCache>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    /// Checks tokens through `pool`.
    #[must_use]
    pub fn new(pool: ClientPool) -> Self {
        Self {
            pool,
            cache: Arc::new(TokenCache::default()),
        }
    }

    /// Forgets the cached answer for `token` (it was revoked here; other
    /// gateways keep theirs for at most the cache's 10 s).
    pub fn forget(&self, token: &str) {
        self.cache.remove(token);
    }

    /// The user of access token `token`.
    ///
    /// # Errors
    /// 401 for a token that is not a valid access token; 503 when the auth
    /// service cannot answer.
    pub async fn user(&self, token: &str) -> Result<String, ApiError> {
        let now_ms = rt::unix_ms();
        if let Some(user) = self.cache.get(token, now_ms) {
            return Ok(user);
        }
        // Whatever failed (no instance, a transport error, auth's own
        // internal error), the client can only retry: the cause is logged.
        let unavailable = |e: &dyn std::fmt::Display| {
            tracing::warn!(
                request_id = rt::trace::request_id().as_deref().unwrap_or("-"),
                error = %e,
                "token not checked"
            );
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "auth service unavailable")
        };
        let mut client = self.pool.auth().await.map_err(|e| unavailable(&e))?;
        let mut req = tonic::Request::new(ValidateTokenRequest {
            token: token.to_owned(),
            required_scope: String::new(),
        });
        req.set_timeout(VALIDATE_TIMEOUT);
        let res = client
            .validate_token(req)
            .await
            .map_err(|s| unavailable(&s))?
            .into_inner();
        if !res.valid {
            return Err(unauthorized(&format!("invalid token: {}", res.reason)));
        }
        if res.kind != TokenKind::Access as i32 {
            return Err(unauthorized("invalid token: not an access token"));
        }
        let expires = u64::try_from(res.expires_at_ms).unwrap_or(0);
        self.cache.insert(token, &res.subject, expires, now_ms);
        Ok(res.subject)
    }
}

/// A 401 (the error body, and `WWW-Authenticate: Bearer` added on the way out).
fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, message)
}

/// The token of an `Authorization: Bearer <token>` header.
///
/// # Errors
/// 401 saying what is missing or malformed.
pub fn bearer_token(headers: &http::HeaderMap) -> Result<&str, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Err(unauthorized(
            "missing bearer token: send Authorization: Bearer <access token>",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| unauthorized("malformed Authorization header"))?;
    let (scheme, token) = value
        .split_once(' ')
        .ok_or_else(|| unauthorized("malformed Authorization header: expected Bearer <token>"))?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(unauthorized(
            "Authorization: only the Bearer scheme is accepted",
        ));
    }
    if token.is_empty()
        || token.len() > MAX_TOKEN_BYTES
        || !token.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(unauthorized("malformed bearer token"));
    }
    Ok(token)
}

/// The middleware: lets the request through with its [`AuthUser`], or
/// answers 401 / 503.
pub async fn require(State(v): State<Verifier>, mut req: Request, next: Next) -> Response {
    let user = match bearer_token(req.headers()) {
        Ok(token) => {
            let token = token.to_owned();
            v.user(&token).await
        }
        Err(e) => Err(e),
    };
    match user {
        Ok(user) => {
            req.extensions_mut().insert(AuthUser(user));
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The middleware of the media routes, which public videos answer with no
/// credential: a request without `Authorization` goes through without an
/// [`AuthUser`] (the handler decides); one with the header is checked as
/// by [`require`] (a bad token is 401, never taken for no token).
pub async fn optional(State(v): State<Verifier>, req: Request, next: Next) -> Response {
    if req.headers().contains_key(header::AUTHORIZATION) {
        require(State(v), req, next).await
    } else {
        next.run(req).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(header::AUTHORIZATION, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn the_header_is_parsed_strictly() {
        assert_eq!(
            bearer_token(&headers(&["Bearer abc.def"])).ok(),
            Some("abc.def")
        );
        assert_eq!(bearer_token(&headers(&["bearer abc"])).ok(), Some("abc"));
        for bad in [
            &[][..],
            &["Basic dXNlcjpwYXNz"],
            &["Bearer"],
            &["Bearer "],
            &["Bearerabc"],
            &["Bearer a b"],
            &["Bearer a", "Bearer b"],
        ] {
            let e = bearer_token(&headers(bad)).expect_err("refused");
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{bad:?}");
        }
        let long = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(bearer_token(&headers(&[&long])).is_err());
    }
}
