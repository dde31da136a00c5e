//! `Debug` for the protocol messages that carry passwords, tokens or
//! secrets (build.rs skips their derived one): every other field is shown,
//! secrets only as their length.

use std::fmt::{Debug, Formatter, Result};

use crate::proto::{
    IssueServiceTokenRequest, IssueServiceTokenResponse, LogInRequest, RefreshRequest,
    RevokeTokenRequest, SignUpRequest, TokenPair, ValidateTokenRequest,
};

/// Shows a secret string as its length only.
struct Hidden(usize);

impl Debug for Hidden {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        write!(f, "<{} bytes hidden>", self.0)
    }
}

fn hidden(s: &str) -> Hidden {
    Hidden(s.len())
}

impl Debug for SignUpRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("SignUpRequest")
            .field("email", &self.email)
            .field("password", &hidden(&self.password))
            .field("display_name", &self.display_name)
            .field("client_address", &self.client_address)
            .finish()
    }
}

impl Debug for LogInRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("LogInRequest")
            .field("email", &self.email)
            .field("password", &hidden(&self.password))
            .field("client_address", &self.client_address)
            .finish()
    }
}

impl Debug for RefreshRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("RefreshRequest")
            .field("refresh_token", &hidden(&self.refresh_token))
            .field("client_address", &self.client_address)
            .finish()
    }
}

impl Debug for ValidateTokenRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("ValidateTokenRequest")
            .field("token", &hidden(&self.token))
            .field("required_scope", &self.required_scope)
            .finish()
    }
}

impl Debug for IssueServiceTokenRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("IssueServiceTokenRequest")
            .field("service_name", &self.service_name)
            .field("client_secret", &hidden(&self.client_secret))
            .field("scopes", &self.scopes)
            .field("ttl_ms", &self.ttl_ms)
            .finish()
    }
}

impl Debug for IssueServiceTokenResponse {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("IssueServiceTokenResponse")
            .field("token", &hidden(&self.token))
            .field("expires_at_ms", &self.expires_at_ms)
            .field("token_id", &self.token_id)
            .finish()
    }
}

impl Debug for RevokeTokenRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("RevokeTokenRequest")
            .field("token", &hidden(&self.token))
            .field("token_id", &self.token_id)
            .finish()
    }
}

impl Debug for TokenPair {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("TokenPair")
            .field("access_token", &hidden(&self.access_token))
            .field("refresh_token", &hidden(&self.refresh_token))
            .field("access_expires_at_ms", &self.access_expires_at_ms)
            .field("refresh_expires_at_ms", &self.refresh_expires_at_ms)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{LogInResponse, SignUpResponse};

    #[test]
    fn secrets_never_show_in_debug() {
        let secret = "pa55word-XYZZY";
        let pair = TokenPair {
            access_token: secret.into(),
            refresh_token: secret.into(),
            access_expires_at_ms: 1,
            refresh_expires_at_ms: 2,
        };
        let shown = [
            format!(
                "{:?}",
                tonic::Request::new(SignUpRequest {
                    email: "a@b.c".into(),
                    password: secret.into(),
                    display_name: "Ada".into(),
                    ..Default::default()
                })
            ),
            format!(
                "{:?}",
                LogInRequest {
                    email: "a@b.c".into(),
                    password: secret.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                RefreshRequest {
                    refresh_token: secret.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                ValidateTokenRequest {
                    token: secret.into(),
                    required_scope: String::new(),
                }
            ),
            format!(
                "{:?}",
                IssueServiceTokenRequest {
                    service_name: "worker".into(),
                    client_secret: secret.into(),
                    scopes: vec![],
                    ttl_ms: 0,
                }
            ),
            format!(
                "{:?}",
                IssueServiceTokenResponse {
                    token: secret.into(),
                    expires_at_ms: 0,
                    token_id: "j".into(),
                }
            ),
            format!(
                "{:?}",
                RevokeTokenRequest {
                    token: secret.into(),
                    token_id: String::new(),
                }
            ),
            format!(
                "{:?}",
                SignUpResponse {
                    user_id: "u".into(),
                    tokens: Some(pair.clone()),
                }
            ),
            format!(
                "{:?}",
                LogInResponse {
                    user_id: "u".into(),
                    tokens: Some(pair),
                }
            ),
        ];
        for s in shown {
            assert!(!s.contains(secret), "{s}");
            assert!(s.contains("bytes hidden"), "{s}");
        }
    }
}
