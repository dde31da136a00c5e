//! The auth server's logic in-process (no sockets): refresh rotation is
//! one-shot even under concurrent use, revocation and kinds are honoured,
//! and a refresh keeps the subject and scopes.

use super::secret::Secret;
use super::server::{AuthServer, USER_SCOPES};
use super::store::Store;
use super::token::{Invalid, Kind, Tokens};
use super::{AuthError, ServiceClients};
use crate::proto::{LogInRequest, RefreshRequest, RevokeTokenRequest, SignUpRequest};

fn server() -> AuthServer {
    AuthServer::new(
        Store::open(None).expect("store"),
        Tokens::new(&Secret::new(vec![1u8; 32])),
        ServiceClients::default(),
    )
}

async fn signed_up(s: &AuthServer) -> (String, crate::proto::TokenPair) {
    s.register(SignUpRequest {
        email: "ada@example.com".into(),
        password: "correct horse".into(),
        display_name: String::new(),
    })
    .await
    .expect("sign-up")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_token_is_spent_once_even_when_raced() {
    let s = server();
    let (user, pair) = signed_up(&s).await;
    let races: Vec<_> = (0..8)
        .map(|_| {
            let (s, token) = (s.clone(), pair.refresh_token.clone());
            crate::rt::spawn(async move {
                s.rotate(RefreshRequest {
                    refresh_token: token,
                })
                .await
            })
        })
        .collect();
    let mut won = Vec::new();
    for r in races {
        match r.await.expect("task") {
            Ok(p) => won.push(p),
            Err(e) => assert!(matches!(e, AuthError::Unauthenticated(_)), "{e}"),
        }
    }
    assert_eq!(won.len(), 1, "exactly one refresh wins");
    let now = crate::rt::unix_ms();
    let c = s
        .check(&won[0].access_token, "videos:write", now)
        .await
        .expect("store")
        .expect("valid");
    assert_eq!((c.sub.as_str(), c.kind), (user.as_str(), Kind::Access));
    assert_eq!(c.scopes, USER_SCOPES.map(str::to_owned));
}

/// A refresh token used again after its exchange's grace was copied: the
/// whole sign-in (its family) ends, the owner's newer tokens included; other
/// sign-ins of the same user are untouched. Within the grace, a second use
/// is refused and nothing more (one client racing itself).
#[tokio::test]
async fn a_reused_refresh_token_ends_its_family() {
    use super::server::REUSE_GRACE_MS;
    let s = server();
    let (_, first) = signed_up(&s).await;
    let other = s
        .authenticate(LogInRequest {
            email: "ada@example.com".into(),
            password: "correct horse".into(),
        })
        .await
        .expect("log-in")
        .1;
    let now = crate::rt::unix_ms();
    let refresh = |token: &str, at: u64| {
        let s = s.clone();
        let token = token.to_owned();
        async move {
            s.rotate_at(
                RefreshRequest {
                    refresh_token: token,
                },
                at,
            )
            .await
        }
    };
    let second = refresh(&first.refresh_token, now).await.expect("rotation");
    // Within the grace: refused, and the new pair still works.
    assert!(refresh(&first.refresh_token, now + 1_000).await.is_err());
    assert!(
        s.check(&second.access_token, "", now)
            .await
            .expect("store")
            .is_ok()
    );
    let third = refresh(&second.refresh_token, now + 2_000)
        .await
        .expect("the family is intact");
    // Past the grace: a stolen copy shows; the family ends.
    let late = now + 2_000 + REUSE_GRACE_MS + 1;
    let e = refresh(&second.refresh_token, late)
        .await
        .expect_err("reuse");
    assert!(
        matches!(e, AuthError::Unauthenticated(m) if m.contains("now revoked")),
        "{e}"
    );
    assert!(refresh(&third.refresh_token, late).await.is_err());
    for token in [&third.access_token, &third.refresh_token] {
        assert_eq!(
            s.check(token, "", now + 3_000).await.expect("store"),
            Err(Invalid::Revoked)
        );
    }
    // Another sign-in of the same user is another family.
    assert!(
        s.check(&other.access_token, "", now)
            .await
            .expect("store")
            .is_ok()
    );
    refresh(&other.refresh_token, late)
        .await
        .expect("other sign-ins go on");
}

#[tokio::test]
async fn revoked_and_wrong_kind_tokens_are_refused() {
    let s = server();
    let (_, pair) = signed_up(&s).await;
    let now = crate::rt::unix_ms();
    let refresh_claims = s.check(&pair.refresh_token, "", now).await.expect("store");
    assert_eq!(refresh_claims.map(|c| c.kind), Ok(Kind::Refresh));
    // An access token cannot refresh.
    let e = s
        .rotate(RefreshRequest {
            refresh_token: pair.access_token.clone(),
        })
        .await
        .expect_err("not a refresh token");
    assert!(matches!(e, AuthError::Unauthenticated(_)));
    // A revoked refresh token cannot either.
    assert!(
        s.revoke(RevokeTokenRequest {
            token: pair.refresh_token.clone(),
            token_id: String::new(),
        })
        .await
        .expect("revoke")
    );
    assert!(
        s.rotate(RefreshRequest {
            refresh_token: pair.refresh_token.clone(),
        })
        .await
        .is_err()
    );
    assert_eq!(
        s.check(&pair.refresh_token, "", now).await.expect("store"),
        Err(Invalid::Revoked)
    );
    // Expiry by explicit time, past the access token's 15 minutes.
    let later = u64::try_from(pair.access_expires_at_ms).expect("positive");
    assert_eq!(
        s.check(&pair.access_token, "", later).await.expect("store"),
        Err(Invalid::Expired)
    );
}

#[tokio::test]
async fn log_in_failures_look_alike() {
    let s = server();
    signed_up(&s).await;
    let attempt = |email: &str, password: &str| {
        s.authenticate(LogInRequest {
            email: email.into(),
            password: password.into(),
        })
    };
    let wrong = attempt("ada@example.com", "wrong horse")
        .await
        .expect_err("wrong");
    let unknown = attempt("bob@example.com", "correct horse")
        .await
        .expect_err("unknown");
    assert_eq!(wrong.to_string(), unknown.to_string());
    assert!(matches!(wrong, AuthError::BadCredentials));
    assert!(attempt("ADA@example.com", "correct horse").await.is_ok());
}
