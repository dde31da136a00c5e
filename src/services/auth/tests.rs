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
        ..Default::default()
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
                    ..Default::default()
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
            ..Default::default()
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
                    ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
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
            ..Default::default()
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

fn log_in(email: &str, password: &str, client: &str) -> LogInRequest {
    LogInRequest {
        email: email.into(),
        password: password.into(),
        client_address: client.into(),
    }
}

/// The probe's lock-out: one wrong password per second from the attacker's
/// address for two minutes; the owner, from another address, logs in every
/// ten seconds and is never refused, while the attacker's waits double.
#[tokio::test(start_paused = true)]
async fn an_attacker_address_is_locked_out_not_the_owner() {
    use super::limit::{BACKOFF, FREE_FAILURES};
    let s = server();
    signed_up(&s).await;
    let (attacker, owner) = ("198.51.100.7", "2001:db8::9");
    let started = crate::rt::now();
    let (mut wrong, mut throttled, mut waits) = (0, 0, Vec::new());
    for second in 0..120u64 {
        crate::rt::sleep_until(started + std::time::Duration::from_secs(second)).await;
        match s
            .authenticate(log_in("ada@example.com", "wrong horse", attacker))
            .await
        {
            Err(AuthError::BadCredentials) => wrong += 1,
            Err(AuthError::RateLimited { retry_after_ms }) => {
                throttled += 1;
                waits.push(retry_after_ms);
            }
            other => panic!("attacker: {other:?}"),
        }
        if second % 10 == 5 {
            s.authenticate(log_in("ADA@example.com", "correct horse", owner))
                .await
                .expect("the owner gets in every time");
        }
    }
    // 5 free failures, then one after each wait of 1, 2, 4, 8, 16, 32, 64 s.
    assert_eq!(wrong, FREE_FAILURES + 6, "{waits:?}");
    assert_eq!(throttled, 120 - wrong);
    assert!(waits.iter().all(|&w| w <= 64_000), "{waits:?}");
    assert!(waits.windows(2).any(|w| w[1] > w[0]), "the waits grow");
    // The attacker's right password, once its wait is over, resets its pair.
    let wait = crate::rt::now() - started;
    crate::rt::sleep(BACKOFF.max.saturating_sub(wait)).await;
    s.authenticate(log_in("ada@example.com", "correct horse", attacker))
        .await
        .expect("after the wait");
    for _ in 0..FREE_FAILURES - 1 {
        let e = s
            .authenticate(log_in("ada@example.com", "wrong horse", attacker))
            .await
            .expect_err("wrong");
        assert!(matches!(e, AuthError::BadCredentials), "free again: {e}");
    }
    // A client address that is no IP address is refused.
    let e = s
        .authenticate(log_in("ada@example.com", "correct horse", "evil.example"))
        .await
        .expect_err("bad address");
    assert!(matches!(e, AuthError::Invalid(_)), "{e}");
}

/// The probe's look-alike sign-ups: each spelling either finds the existing
/// account (taken) or is refused as invalid; none makes a second account.
#[tokio::test]
async fn look_alike_emails_never_make_a_second_account() {
    let s = server();
    signed_up(&s).await;
    let sign_up = |email: &str| {
        s.register(SignUpRequest {
            email: email.into(),
            password: "another horse".into(),
            ..Default::default()
        })
    };
    for same in [
        "ADA@example.com",
        "Ada@EXAMPLE.com",
        "ａｄａ@example.com",
        "ada＠ｅｘａｍｐｌｅ．ｃｏｍ",
        " ada@example.com ",
    ] {
        let e = sign_up(same).await.expect_err(same);
        assert!(matches!(e, AuthError::EmailTaken), "{same:?}: {e}");
    }
    for refused in [
        "a\u{200B}da@example.com",
        "ada\u{2060}@example.com",
        "\u{FEFF}ada@example.com",
        "ad\u{202E}a@example.com",
        "\u{430}da@example.com",
        "ada@ex\u{430}mple.com",
        "ada@example.com.",
    ] {
        let e = sign_up(refused).await.expect_err(refused);
        assert!(matches!(e, AuthError::Invalid(_)), "{refused:?}: {e}");
    }
    // A plain new address is unaffected; the full-width spelling logs in.
    sign_up("bob@example.com").await.expect("new account");
    s.authenticate(log_in("ａｄａ@example.com", "correct horse", ""))
        .await
        .expect("one account, any spelling");
}
