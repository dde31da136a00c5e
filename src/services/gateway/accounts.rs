//! The account routes, open to all: `POST /v1/auth/signup`, `/login` and
//! `/refresh`, each a JSON body in and a token pair out, through the auth
//! service. Request bodies hold passwords: nothing here logs them.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde::Deserialize;
use serde_json::json;

use super::Api;
use super::client_addr::ClientIp;
use super::error::ApiError;
use super::json;
use crate::proto::{
    LogInRequest, RefreshRequest, RevokeTokenRequest, SignUpRequest, TokenKind, TokenPair,
    ValidateTokenRequest,
};

/// `{"email", "password", "display_name"?}` (no `Debug`: it holds a password).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignUp {
    email: String,
    password: String,
    #[serde(default)]
    display_name: String,
}

/// `{"email", "password"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogIn {
    email: String,
    password: String,
}

/// `{"refresh_token"}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Refresh {
    refresh_token: String,
}

/// `{"refresh_token"?}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LogOut {
    #[serde(default, deserialize_with = "json::present")]
    refresh_token: Option<String>,
}

/// `POST /v1/auth/logout` (with the bearer token): revokes that access
/// token and, if the body names it, the session's refresh token (which
/// must be the same user's); 204. The token then gets 401 here at once
/// and on other gateways within their cache's 10 s.
pub async fn logout(
    State(api): State<Api>,
    user: Option<axum::Extension<super::bearer::AuthUser>>,
    headers: http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Some(axum::Extension(super::bearer::AuthUser(user))) = user else {
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, "sign in first"));
    };
    let access = super::bearer::bearer_token(&headers)?.to_owned();
    let request: LogOut = json::optional(body).await?;
    let mut auth = api.runtime.pool.auth().await?;
    if let Some(refresh) = request.refresh_token {
        if refresh.is_empty() || refresh.len() > crate::services::auth::token::MAX_TOKEN_BYTES {
            return Err(ApiError::bad_request("refresh_token: malformed"));
        }
        let checked = auth
            .validate_token(ValidateTokenRequest {
                token: refresh.clone(),
                required_scope: String::new(),
            })
            .await?
            .into_inner();
        let ours =
            checked.valid && checked.kind == TokenKind::Refresh as i32 && checked.subject == user;
        if !ours {
            return Err(ApiError::bad_request(
                "refresh_token: not a live refresh token of this user",
            ));
        }
        auth.revoke_token(RevokeTokenRequest {
            token: refresh,
            token_id: String::new(),
        })
        .await?;
    }
    auth.revoke_token(RevokeTokenRequest {
        token: access.clone(),
        token_id: String::new(),
    })
    .await?;
    api.verifier.forget(&access);
    Ok(StatusCode::NO_CONTENT.into_response())
}

fn answer(
    status: StatusCode,
    user_id: Option<String>,
    tokens: Option<TokenPair>,
) -> Result<Response, ApiError> {
    let t = tokens.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            "auth service answered without tokens",
        )
    })?;
    let mut body = json!({
        "access_token": t.access_token,
        "refresh_token": t.refresh_token,
        "access_expires_at_ms": t.access_expires_at_ms,
        "refresh_expires_at_ms": t.refresh_expires_at_ms,
    });
    if let Some(id) = user_id {
        body["user_id"] = json!(id);
    }
    Ok((status, Json(body)).into_response())
}

/// `POST /v1/auth/signup`: 201 with the new user's id and tokens; 409 if
/// the email is taken.
pub async fn signup(
    State(api): State<Api>,
    client: ClientIp,
    body: Body,
) -> Result<Response, ApiError> {
    let r: SignUp = json::body(body).await?;
    let res = api
        .runtime
        .pool
        .auth()
        .await?
        .sign_up(SignUpRequest {
            email: r.email,
            password: r.password,
            display_name: r.display_name,
            client_address: client.to_field(),
        })
        .await?
        .into_inner();
    answer(StatusCode::CREATED, Some(res.user_id), res.tokens)
}

/// `POST /v1/auth/login`: 200 with tokens; 401 for a bad email or password
/// alike; 429 while this (email, client address) pair, or the email, is
/// throttled.
pub async fn login(
    State(api): State<Api>,
    client: ClientIp,
    body: Body,
) -> Result<Response, ApiError> {
    let r: LogIn = json::body(body).await?;
    let res = api
        .runtime
        .pool
        .auth()
        .await?
        .log_in(LogInRequest {
            email: r.email,
            password: r.password,
            client_address: client.to_field(),
        })
        .await?
        .into_inner();
    answer(StatusCode::OK, Some(res.user_id), res.tokens)
}

/// `POST /v1/auth/refresh`: 200 with a new pair; the refresh token sent is
/// spent (401 if sent again).
pub async fn refresh(
    State(api): State<Api>,
    client: ClientIp,
    body: Body,
) -> Result<Response, ApiError> {
    let r: Refresh = json::body(body).await?;
    let res = api
        .runtime
        .pool
        .auth()
        .await?
        .refresh(RefreshRequest {
            refresh_token: r.refresh_token,
            client_address: client.to_field(),
        })
        .await?
        .into_inner();
    answer(StatusCode::OK, None, res.tokens)
}
