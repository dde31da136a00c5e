//! AuthService over gRPC: accounts (SignUp, LogIn), the token life cycle
//! (Refresh with rotation, ValidateToken, RevokeToken) and service tokens.
//! The accounts are on SQLite or PostgreSQL ([`Accounts`]); SQLite and
//! Argon2 run through `rt::blocking`, off the async workers.

use std::net::IpAddr;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::accounts::Accounts;
use super::checks;
use super::email;
use super::error::AuthError;
use super::limit::{Attempt, LoginThrottle, Outcome};
use super::password;
use super::secret::ServiceClients;
use super::store::{Exchange, Rotation, Store, User};
use super::token::{
    ACCESS_TTL, Claims, Invalid, Kind, MAX_SERVICE_TTL, MAX_TOKEN_BYTES, MAX_TTL, REFRESH_TTL,
    SERVICE_TTL, Tokens, is_scope,
};
use crate::proto::auth_service_server::AuthService;
use crate::proto::{
    IssueServiceTokenRequest, IssueServiceTokenResponse, LogInRequest, LogInResponse,
    RefreshRequest, RefreshResponse, RevokeTokenRequest, RevokeTokenResponse, SignUpRequest,
    SignUpResponse, TokenKind, TokenPair, ValidateTokenRequest, ValidateTokenResponse,
};
use crate::rt;
use crate::services::media;

/// How long after a refresh token's exchange a second use of it counts as
/// the same client racing itself (refused, nothing more) rather than a
/// stolen copy (which ends the token's whole family).
pub const REUSE_GRACE_MS: u64 = 10_000;

/// Scopes of a user's tokens.
pub const USER_SCOPES: [&str; 2] = ["videos:read", "videos:write"];

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The gRPC face of the auth service.
#[derive(Clone)]
pub struct AuthServer {
    accounts: Accounts,
    tokens: Tokens,
    throttle: Arc<dyn LoginThrottle>,
    clients: Arc<ServiceClients>,
    hashing: Arc<password::Hashing>,
}

impl std::fmt::Debug for AuthServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthServer").finish_non_exhaustive()
    }
}

impl AuthServer {
    /// A server over `accounts` (a SQLite [`Store`] or a PostgreSQL
    /// store), signing with `tokens`, issuing service tokens to `clients`,
    /// its log-ins throttled as the back end goes ([`Accounts::throttle`]:
    /// in memory with SQLite, shared with PostgreSQL).
    #[must_use]
    pub fn new(accounts: impl Into<Accounts>, tokens: Tokens, clients: ServiceClients) -> Self {
        let accounts = accounts.into();
        Self {
            throttle: accounts.throttle(),
            accounts,
            tokens,
            clients: Arc::new(clients),
            hashing: Arc::new(password::Hashing::default()),
        }
    }

    /// The same server hashing passwords within `hashing`'s bounds.
    #[must_use]
    pub fn with_hashing(mut self, hashing: Arc<password::Hashing>) -> Self {
        self.hashing = hashing;
        self
    }

    /// The same server with `throttle` limiting log-ins (instead of this
    /// instance's memory).
    #[must_use]
    pub fn with_throttle(mut self, throttle: Arc<dyn LoginThrottle>) -> Self {
        self.throttle = throttle;
        self
    }

    /// A new access + refresh pair for `sub` at `now_ms`, in refresh family
    /// `fam`.
    fn pair(
        &self,
        sub: &str,
        scopes: &[String],
        fam: &str,
        now_ms: u64,
    ) -> Result<TokenPair, AuthError> {
        let access = self.tokens.issue_in_family(
            sub,
            Kind::Access,
            scopes.to_vec(),
            ACCESS_TTL,
            fam,
            now_ms,
        )?;
        let refresh = self.tokens.issue_in_family(
            sub,
            Kind::Refresh,
            scopes.to_vec(),
            REFRESH_TTL,
            fam,
            now_ms,
        )?;
        Ok(TokenPair {
            access_expires_at_ms: ms(access.claims.expires_at_ms()),
            refresh_expires_at_ms: ms(refresh.claims.expires_at_ms()),
            access_token: access.token,
            refresh_token: refresh.token,
        })
    }

    fn user_scopes() -> Vec<String> {
        USER_SCOPES.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Registers a user; returns its id and first tokens.
    ///
    /// # Errors
    /// Bad fields, a taken email, a store failure.
    pub async fn register(&self, r: SignUpRequest) -> Result<(String, TokenPair), AuthError> {
        let key = email::key(&r.email)?;
        let client = client_address(&r.client_address)?;
        checks::password(&r.password)?;
        checks::display_name(&r.display_name)?;
        let email = r.email.trim().to_owned();
        let display_name = if r.display_name.is_empty() {
            checks::default_display_name(&email)
        } else {
            r.display_name
        };
        // Hashing first: a taken email costs the same time as a new one.
        let password = r.password;
        let hash = self
            .hashing
            .run(move |memory| password::hash_in(&password, memory))
            .await??;
        let now_ms = rt::unix_ms();
        let user = User {
            id: rt::random_hex128(),
            email,
            password_hash: hash,
            display_name,
            created_at_ms: now_ms,
        };
        let id = user.id.clone();
        self.accounts.create_user(key, user).await?;
        tracing::info!(user = %id, client = ?client, "signed up");
        let pair = self.pair(&id, &Self::user_scopes(), &rt::random_hex128(), now_ms)?;
        Ok((id, pair))
    }

    /// Checks email and password; returns the user's id and new tokens.
    ///
    /// # Errors
    /// [`AuthError::BadCredentials`] for an unknown email or a wrong
    /// password alike; [`AuthError::RateLimited`] while the (email, client
    /// address) pair or the email is throttled ([`super::limit`]).
    pub async fn authenticate(&self, r: LogInRequest) -> Result<(String, TokenPair), AuthError> {
        if r.password.len() > password::MAX_PASSWORD_BYTES {
            return Err(AuthError::Invalid("password: at most 128 bytes".to_owned()));
        }
        let key = email::key(&r.email)?;
        let client = client_address(&r.client_address)?;
        let attempt = Attempt {
            email: &key,
            client,
        };
        if let Err(wait) = self.throttle.admit(attempt).await? {
            tracing::info!(client = ?client, "log-in throttled");
            return Err(AuthError::RateLimited {
                retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
            });
        }
        let found = self.verify(key.clone(), r.password).await;
        let attempt = Attempt {
            email: &key,
            client,
        };
        let outcome = match &found {
            Ok(Some(_)) => Outcome::Success,
            _ => Outcome::Failure,
        };
        if let Err(e) = self.throttle.settle(attempt, outcome).await {
            // The attempt stays counted as failed: the owner may wait
            // once more, nothing is let in.
            tracing::warn!(error = %crate::error::Chain(&e), "log-in throttle: settling failed");
        }
        let Some(id) = found? else {
            tracing::info!(client = ?client, "log-in refused");
            return Err(AuthError::BadCredentials);
        };
        tracing::info!(user = %id, client = ?client, "logged in");
        let pair = self.pair(
            &id,
            &Self::user_scopes(),
            &rt::random_hex128(),
            rt::unix_ms(),
        )?;
        Ok((id, pair))
    }

    /// The id of the user with email `key` if `password` is theirs.
    async fn verify(&self, key: String, password: String) -> Result<Option<String>, AuthError> {
        let user = self.accounts.user_by_key(key).await?;
        self.hashing
            .run(move |memory| -> Result<Option<String>, AuthError> {
                // An unknown email is checked against a decoy hash, so both
                // failures take the time of one Argon2 verification.
                let hash = match &user {
                    Some(u) => u.password_hash.as_str(),
                    None => password::decoy()?,
                };
                let ok = password::verify_in(&password, hash, memory);
                Ok(user.filter(|_| ok).map(|u| u.id))
            })
            .await?
    }

    /// Exchanges a refresh token for a new pair, revoking it (rotation).
    ///
    /// # Errors
    /// UNAUTHENTICATED for an invalid, expired, non-refresh, revoked or
    /// already used token.
    pub async fn rotate(&self, r: RefreshRequest) -> Result<TokenPair, AuthError> {
        self.rotate_at(r, rt::unix_ms()).await
    }

    /// [`AuthServer::rotate`] at `now_ms`. A token used again more than
    /// [`REUSE_GRACE_MS`] after its exchange (or after it was revoked) was
    /// copied: the whole refresh family it belongs to is revoked, so the
    /// thief's and the owner's tokens stop working alike and the owner signs
    /// in again (reuse detection, OAuth 2.0 Security BCP 4.14.2).
    ///
    /// # Errors
    /// As [`AuthServer::rotate`].
    pub async fn rotate_at(&self, r: RefreshRequest, now_ms: u64) -> Result<TokenPair, AuthError> {
        let client = client_address(&r.client_address)?;
        let claims = self
            .tokens
            .decode(&r.refresh_token, now_ms)
            .map_err(|_| AuthError::Unauthenticated("refresh token: invalid or expired"))?;
        if claims.kind != Kind::Refresh {
            return Err(AuthError::Unauthenticated(
                "refresh token: not a refresh token",
            ));
        }
        // Tokens from before families start one now.
        let fam = if claims.fam.is_empty() {
            rt::random_hex128()
        } else {
            claims.fam.clone()
        };
        let family_ends =
            now_ms.saturating_add(u64::try_from(REFRESH_TTL.as_millis()).unwrap_or(u64::MAX));
        let outcome = self
            .accounts
            .rotate(Exchange {
                jti: claims.jti.clone(),
                family: family_key(&claims),
                sub: claims.sub.clone(),
                expires_at_ms: claims.expires_at_ms(),
                now_ms,
                family_ends_ms: family_ends,
            })
            .await?;
        match outcome {
            Rotation::Won => self.pair(&claims.sub, &claims.scopes, &fam, now_ms),
            Rotation::NoUser => Err(AuthError::Unauthenticated("refresh token: no such user")),
            Rotation::Raced => Err(AuthError::Unauthenticated("refresh token: already used")),
            Rotation::Reused { family_ended } => {
                tracing::warn!(user = %claims.sub, token_id = %claims.jti, family = %claims.fam, family_ended, client = ?client, "a used or revoked refresh token was presented again");
                Err(AuthError::Unauthenticated(if family_ended {
                    "refresh token: already used or revoked; every token of this sign-in is now revoked"
                } else {
                    "refresh token: already used or revoked"
                }))
            }
            Rotation::FamilyRevoked => Err(AuthError::Unauthenticated(
                "refresh token: revoked (its sign-in was ended after a reuse)",
            )),
        }
    }

    /// The claims of a valid `token` having `scope` (if not empty).
    ///
    /// # Errors
    /// Why the token is invalid (`Ok(Err)`), or a store failure (`Err`).
    pub async fn check(
        &self,
        token: &str,
        scope: &str,
        now_ms: u64,
    ) -> Result<Result<Claims, Invalid>, AuthError> {
        let claims = match self.tokens.decode(token, now_ms) {
            Ok(c) => c,
            Err(why) => return Ok(Err(why)),
        };
        let revoked = self
            .accounts
            .is_revoked(claims.jti.clone(), family_key(&claims))
            .await?;
        if revoked {
            return Ok(Err(Invalid::Revoked));
        }
        if !scope.is_empty() && !claims.scopes.iter().any(|s| s == scope) {
            return Ok(Err(Invalid::Scope));
        }
        Ok(Ok(claims))
    }

    /// Issues a service token to a configured client.
    ///
    /// # Errors
    /// No clients configured, a bad secret, bad fields, scopes beyond the
    /// client's.
    pub fn issue_service(
        &self,
        r: &IssueServiceTokenRequest,
        now_ms: u64,
    ) -> Result<IssueServiceTokenResponse, AuthError> {
        if self.clients.is_empty() {
            return Err(AuthError::NoServiceClients);
        }
        if !media::is_id(&r.service_name) || !(16..=256).contains(&r.client_secret.len()) {
            return Err(AuthError::Invalid(
                "service_name: 1..=64 chars of [A-Za-z0-9_-]; client_secret: 16..=256 bytes"
                    .to_owned(),
            ));
        }
        checks::scopes(&r.scopes)?;
        let ttl_ms = if r.ttl_ms == 0 {
            u64::try_from(SERVICE_TTL.as_millis()).unwrap_or(u64::MAX)
        } else {
            r.ttl_ms
        };
        if ttl_ms > u64::try_from(MAX_SERVICE_TTL.as_millis()).unwrap_or(u64::MAX) {
            return Err(AuthError::Invalid(
                "ttl_ms: at most 86400000 (24 h)".to_owned(),
            ));
        }
        let client = self
            .clients
            .check(&r.service_name, r.client_secret.as_bytes())
            .ok_or(AuthError::Unauthenticated(
                "invalid service name or client secret",
            ))?;
        let scopes = if r.scopes.is_empty() {
            client.scopes.clone()
        } else if let Some(extra) = r.scopes.iter().find(|s| !client.scopes.contains(s)) {
            return Err(AuthError::Forbidden(format!(
                "scope {extra:?} is not granted to {}",
                client.name
            )));
        } else {
            r.scopes.clone()
        };
        let issued = self.tokens.issue(
            &client.name,
            Kind::Service,
            scopes,
            std::time::Duration::from_millis(ttl_ms.max(1000)),
            now_ms,
        )?;
        tracing::info!(service = %client.name, token_id = %issued.claims.jti, "service token issued");
        Ok(IssueServiceTokenResponse {
            expires_at_ms: ms(issued.claims.expires_at_ms()),
            token_id: issued.claims.jti,
            token: issued.token,
        })
    }

    /// Revokes a token by value or id; true if newly revoked.
    ///
    /// # Errors
    /// Not exactly one of the two given, or a token not issued here.
    pub async fn revoke(&self, r: RevokeTokenRequest) -> Result<bool, AuthError> {
        let now_ms = rt::unix_ms();
        let (jti, until) = match (r.token.is_empty(), r.token_id.is_empty()) {
            (false, true) => {
                let c = self.tokens.decode_any_age(&r.token).map_err(|why| {
                    AuthError::Invalid(format!("token: not a token issued here ({why})"))
                })?;
                if now_ms >= c.expires_at_ms() {
                    return Ok(false);
                }
                let until = c.expires_at_ms();
                (c.jti, until)
            }
            (true, false) => {
                media::check_id("token_id", &r.token_id).map_err(AuthError::Invalid)?;
                // Its expiry is unknown: keep it as long as any token lives.
                let max = u64::try_from(MAX_TTL.as_millis()).unwrap_or(u64::MAX);
                (r.token_id, now_ms.saturating_add(max))
            }
            _ => {
                return Err(AuthError::Invalid(
                    "exactly one of token and token_id must be set".to_owned(),
                ));
            }
        };
        let shown = jti.clone();
        let added = self.accounts.revoke(jti, until, now_ms).await?;
        tracing::info!(token_id = %shown, newly = added, "token revoked");
        Ok(added)
    }
}

#[tonic::async_trait]
impl AuthService for AuthServer {
    async fn sign_up(
        &self,
        req: Request<SignUpRequest>,
    ) -> Result<Response<SignUpResponse>, Status> {
        let (user_id, tokens) = self.register(req.into_inner()).await?;
        Ok(Response::new(SignUpResponse {
            user_id,
            tokens: Some(tokens),
        }))
    }

    async fn log_in(&self, req: Request<LogInRequest>) -> Result<Response<LogInResponse>, Status> {
        let (user_id, tokens) = self.authenticate(req.into_inner()).await?;
        Ok(Response::new(LogInResponse {
            user_id,
            tokens: Some(tokens),
        }))
    }

    async fn refresh(
        &self,
        req: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let tokens = self.rotate(req.into_inner()).await?;
        Ok(Response::new(RefreshResponse {
            tokens: Some(tokens),
        }))
    }

    async fn validate_token(
        &self,
        req: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        let r = req.into_inner();
        if !r.required_scope.is_empty() && !is_scope(&r.required_scope) {
            return Err(AuthError::Invalid(
                "required_scope: 1..=64 bytes of [a-z0-9_.:-], or empty".to_owned(),
            )
            .into());
        }
        let invalid = |why: Invalid| ValidateTokenResponse {
            reason: why.to_string(),
            ..ValidateTokenResponse::default()
        };
        if r.token.is_empty() || r.token.len() > MAX_TOKEN_BYTES {
            return Ok(Response::new(invalid(Invalid::Length)));
        }
        let res = match self
            .check(&r.token, &r.required_scope, rt::unix_ms())
            .await?
        {
            Ok(c) => ValidateTokenResponse {
                valid: true,
                kind: TokenKind::from(c.kind) as i32,
                expires_at_ms: ms(c.expires_at_ms()),
                subject: c.sub,
                scopes: c.scopes,
                token_id: c.jti,
                reason: String::new(),
            },
            Err(why) => invalid(why),
        };
        Ok(Response::new(res))
    }

    async fn issue_service_token(
        &self,
        req: Request<IssueServiceTokenRequest>,
    ) -> Result<Response<IssueServiceTokenResponse>, Status> {
        Ok(Response::new(
            self.issue_service(req.get_ref(), rt::unix_ms())?,
        ))
    }

    async fn revoke_token(
        &self,
        req: Request<RevokeTokenRequest>,
    ) -> Result<Response<RevokeTokenResponse>, Status> {
        let revoked = self.revoke(req.into_inner()).await?;
        Ok(Response::new(RevokeTokenResponse { revoked }))
    }
}

/// Longest `client_address` accepted (an IPv6 address with a zone fits).
pub const MAX_CLIENT_ADDRESS_BYTES: usize = 64;

/// The `client_address` of a request: empty is unknown, else an IP address.
///
/// # Errors
/// INVALID_ARGUMENT for anything else.
pub fn client_address(s: &str) -> Result<Option<IpAddr>, AuthError> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > MAX_CLIENT_ADDRESS_BYTES {
        return Err(AuthError::Invalid(
            "client_address: an IP address of at most 64 bytes, or empty".to_owned(),
        ));
    }
    s.parse().map(Some).map_err(|_| {
        AuthError::Invalid("client_address: an IPv4 or IPv6 address, or empty".to_owned())
    })
}

/// The revocation-list key that ends the family of the token with `claims`;
/// `None` for a token from before families (none to check or to end).
fn family_key(claims: &Claims) -> Option<String> {
    (!claims.fam.is_empty()).then(|| Store::family_key(&claims.fam))
}
