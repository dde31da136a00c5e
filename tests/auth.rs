//! The auth service on real sockets, through the client pool: accounts,
//! log-in failures that never say which part was wrong, the lock-out per
//! (email, client address), refresh-token rotation with reuse detection, validation,
//! revocation, service tokens, accounts surviving a restart, and two
//! instances on one PostgreSQL (`--database-url`) sharing all of it.
#![cfg(not(madsim))]

use std::path::PathBuf;
use std::sync::Arc;

use streamgate::bus::memory::MemoryBus;
use streamgate::client::PoolConfig;
use streamgate::kernel::{Kernel, Plugin, Seams};
use streamgate::middleware::auth::Keyring;
use streamgate::proto::auth_service_client::AuthServiceClient;
use streamgate::proto::{
    IssueServiceTokenRequest, LogInRequest, RefreshRequest, RevokeTokenRequest, SignUpRequest,
    TokenKind, TokenPair, ValidateTokenRequest, ValidateTokenResponse,
};
use streamgate::registry::memory::MemoryRegistry;
use streamgate::rt;
use streamgate::schema::DatabaseUrl;
use streamgate::services::Common;
use streamgate::services::ServicePlugin;
use streamgate::services::auth::{Secret, ServiceClient, ServiceClients};
use streamgate_testkit::pg::Schema;
use tonic::Code;

const PASSWORD: &str = "correct horse battery";

struct Node {
    kernel: Kernel,
}

async fn start(dir: Option<&PathBuf>, clients: ServiceClients) -> Node {
    start_on(dir, clients, None).await
}

async fn start_on(
    dir: Option<&PathBuf>,
    clients: ServiceClients,
    database: Option<DatabaseUrl>,
) -> Node {
    try_start_on(dir, clients, database).await.expect("kernel")
}

async fn try_start_on(
    dir: Option<&PathBuf>,
    clients: ServiceClients,
    database: Option<DatabaseUrl>,
) -> Result<Node, streamgate::kernel::KernelError> {
    let common = Common {
        data_dir: dir.cloned(),
        ..Common::ephemeral()
    };
    let config = streamgate::services::auth::Config {
        secret: Some(Secret::new(vec![9u8; 32])),
        clients,
        database,
    };
    let plugins = vec![Box::new(ServicePlugin::new(common, config)) as Box<dyn Plugin>];
    let seams = Seams::new(Arc::new(MemoryBus::new()), Arc::new(MemoryRegistry::new()));
    let pool = PoolConfig::new(Keyring::generate("test"), "api-gateway");
    let kernel = Kernel::start_with(seams, pool, plugins).await?;
    Ok(Node { kernel })
}

async fn client(node: &Node) -> AuthServiceClient<streamgate::client::PoolChannel> {
    node.kernel.pool().auth().await.expect("auth client")
}

async fn sign_up(node: &Node, email: &str) -> (String, TokenPair) {
    let res = client(node)
        .await
        .sign_up(SignUpRequest {
            email: email.into(),
            password: PASSWORD.into(),
            display_name: String::new(),
            ..Default::default()
        })
        .await
        .expect("sign-up")
        .into_inner();
    (res.user_id, res.tokens.expect("tokens"))
}

async fn validate(node: &Node, token: &str, scope: &str) -> ValidateTokenResponse {
    client(node)
        .await
        .validate_token(ValidateTokenRequest {
            token: token.into(),
            required_scope: scope.into(),
        })
        .await
        .expect("validate never fails for a bad token")
        .into_inner()
}

async fn log_in(node: &Node, email: &str, password: &str) -> Result<TokenPair, tonic::Status> {
    log_in_from(node, email, password, "").await
}

/// A log-in on behalf of a user at `client_address`.
async fn log_in_from(
    node: &Node,
    email: &str,
    password: &str,
    client_address: &str,
) -> Result<TokenPair, tonic::Status> {
    let res = client(node)
        .await
        .log_in(LogInRequest {
            email: email.into(),
            password: password.into(),
            client_address: client_address.into(),
        })
        .await?
        .into_inner();
    Ok(res.tokens.expect("tokens"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_the_token_life_cycle() {
    let node = start(None, ServiceClients::default()).await;
    let (user, pair) = sign_up(&node, "Ada@Example.com").await;
    assert!(streamgate::services::media::is_id(&user));

    let taken = client(&node)
        .await
        .sign_up(SignUpRequest {
            email: "ada@example.COM".into(),
            password: PASSWORD.into(),
            display_name: "Other".into(),
            ..Default::default()
        })
        .await
        .expect_err("taken");
    assert_eq!(taken.code(), Code::AlreadyExists);

    let v = validate(&node, &pair.access_token, "videos:read").await;
    assert!(v.valid, "{}", v.reason);
    assert_eq!(
        (v.subject.as_str(), v.kind),
        (user.as_str(), TokenKind::Access as i32)
    );
    assert_eq!(v.expires_at_ms, pair.access_expires_at_ms);
    assert!(v.reason.is_empty() && !v.token_id.is_empty());
    let v = validate(&node, &pair.access_token, "admin").await;
    assert_eq!((v.valid, v.reason.as_str()), (false, "missing scope"));
    for garbage in ["x", "a.b.c", &"y".repeat(5000)] {
        let v = validate(&node, garbage, "").await;
        assert!(!v.valid && !v.reason.is_empty() && v.subject.is_empty());
    }

    // Log-in: the same answer for a wrong password and an unknown email.
    let start = rt::now();
    let wrong = log_in(&node, "ada@example.com", "wrong horse battery")
        .await
        .expect_err("wrong");
    let t_wrong = start.elapsed();
    let start = rt::now();
    let unknown = log_in(&node, "bob@example.com", PASSWORD)
        .await
        .expect_err("unknown");
    let t_unknown = start.elapsed();
    assert_eq!(
        (wrong.code(), unknown.code()),
        (Code::Unauthenticated, Code::Unauthenticated)
    );
    assert_eq!(wrong.message(), unknown.message());
    eprintln!("log-in refused: wrong password {t_wrong:?}, unknown email {t_unknown:?}");
    let start = rt::now();
    let fresh = log_in(&node, "ADA@example.com", PASSWORD)
        .await
        .expect("log-in");
    eprintln!("log-in accepted in {:?}", start.elapsed());

    // Refresh rotation: the old refresh token is spent; reusing it fails.
    let refresh = || {
        let token = fresh.refresh_token.clone();
        let node = &node;
        async move {
            client(node)
                .await
                .refresh(RefreshRequest {
                    refresh_token: token,
                    ..Default::default()
                })
                .await
        }
    };
    let rotated = refresh()
        .await
        .expect("refresh")
        .into_inner()
        .tokens
        .expect("pair");
    assert_ne!(rotated.refresh_token, fresh.refresh_token);
    assert!(validate(&node, &rotated.access_token, "").await.valid);
    let reused = refresh().await.expect_err("reuse");
    assert_eq!(reused.code(), Code::Unauthenticated);
    let as_refresh = client(&node)
        .await
        .refresh(RefreshRequest {
            refresh_token: rotated.access_token.clone(),
            ..Default::default()
        })
        .await
        .expect_err("an access token is not a refresh token");
    assert_eq!(as_refresh.code(), Code::Unauthenticated);

    // Revocation, by value and by id; idempotent.
    let revoke = |token: String, token_id: String| {
        let node = &node;
        async move {
            client(node)
                .await
                .revoke_token(RevokeTokenRequest { token, token_id })
                .await
        }
    };
    let r = revoke(rotated.access_token.clone(), String::new())
        .await
        .expect("revoke");
    assert!(r.into_inner().revoked);
    let v = validate(&node, &rotated.access_token, "").await;
    assert_eq!((v.valid, v.reason.as_str()), (false, "revoked"));
    let again = revoke(rotated.access_token.clone(), String::new())
        .await
        .expect("again");
    assert!(!again.into_inner().revoked);
    let id = validate(&node, &pair.access_token, "").await.token_id;
    assert!(
        revoke(String::new(), id)
            .await
            .expect("by id")
            .into_inner()
            .revoked
    );
    assert!(!validate(&node, &pair.access_token, "").await.valid);
    let both = revoke("a".into(), "b".into()).await.expect_err("both set");
    assert_eq!(both.code(), Code::InvalidArgument);

    // No service clients configured: a clear FAILED_PRECONDITION.
    let none = client(&node)
        .await
        .issue_service_token(IssueServiceTokenRequest {
            service_name: "worker".into(),
            client_secret: "0123456789abcdef".into(),
            scopes: vec![],
            ttl_ms: 0,
        })
        .await
        .expect_err("no clients");
    assert_eq!(none.code(), Code::FailedPrecondition);
    assert!(
        none.message().contains("no service clients"),
        "{}",
        none.message()
    );
    node.kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_in_is_limited_per_email_and_client_address() {
    let node = start(None, ServiceClients::default()).await;
    sign_up(&node, "eve@example.com").await;
    let attacker = "198.51.100.7";
    let mut codes = Vec::new();
    for _ in 0..7 {
        let e = log_in_from(&node, "eve@example.com", "not the password", attacker)
            .await
            .expect_err("refused");
        codes.push(e.code());
        if e.code() == Code::ResourceExhausted {
            let wait: u64 = e
                .metadata()
                .get("retry-after-ms")
                .expect("retry-after-ms")
                .to_str()
                .expect("ascii")
                .parse()
                .expect("ms");
            assert!((1..=1000).contains(&wait), "{wait}");
        }
    }
    assert_eq!(codes[..5], [Code::Unauthenticated; 5]);
    assert_eq!(codes[5..], [Code::ResourceExhausted; 2]);
    // The owner, from another address, is not slowed.
    for owner in ["203.0.113.9", "2001:db8::1", ""] {
        log_in_from(&node, "eve@example.com", PASSWORD, owner)
            .await
            .expect("the owner gets in");
    }
    // Another email from the attacker's address is not affected either.
    let other = log_in_from(&node, "mallory@example.com", "not the password", attacker)
        .await
        .expect_err("x");
    assert_eq!(other.code(), Code::Unauthenticated);
    // The address must be one.
    let bad = log_in_from(&node, "eve@example.com", PASSWORD, "not-an-ip")
        .await
        .expect_err("bad address");
    assert_eq!(bad.code(), Code::InvalidArgument);
    node.kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_tokens_go_to_configured_clients_only() {
    let clients = ServiceClients::new(vec![ServiceClient::new(
        "transcoder",
        b"transcoder-client-secret",
        vec!["jobs:report".into(), "blobs:write".into()],
    )]);
    let node = start(None, clients).await;
    let issue = |secret: &str, scopes: Vec<String>| {
        let req = IssueServiceTokenRequest {
            service_name: "transcoder".into(),
            client_secret: secret.into(),
            scopes,
            ttl_ms: 60_000,
        };
        let node = &node;
        async move { client(node).await.issue_service_token(req).await }
    };
    let bad = issue("wrong-client-secret!", vec![])
        .await
        .expect_err("bad secret");
    assert_eq!(bad.code(), Code::Unauthenticated);
    let beyond = issue("transcoder-client-secret", vec!["admin".into()])
        .await
        .expect_err("scope");
    assert_eq!(beyond.code(), Code::PermissionDenied);
    let ok = issue("transcoder-client-secret", vec!["jobs:report".into()])
        .await
        .expect("issued")
        .into_inner();
    let v = validate(&node, &ok.token, "jobs:report").await;
    assert!(v.valid, "{}", v.reason);
    assert_eq!(
        (v.kind, v.subject.as_str()),
        (TokenKind::Service as i32, "transcoder")
    );
    assert_eq!(v.token_id, ok.token_id);
    assert!(!validate(&node, &ok.token, "blobs:write").await.valid);
    node.kernel.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_revocations_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("sg-auth-{}", rt::random_hex128()));
    let node = start(Some(&dir), ServiceClients::default()).await;
    let (_, pair) = sign_up(&node, "kim@example.com").await;
    client(&node)
        .await
        .revoke_token(RevokeTokenRequest {
            token: pair.refresh_token.clone(),
            token_id: String::new(),
        })
        .await
        .expect("revoke");
    node.kernel.shutdown().await;

    let node = start(Some(&dir), ServiceClients::default()).await;
    assert!(log_in(&node, "kim@example.com", PASSWORD).await.is_ok());
    assert!(
        validate(&node, &pair.access_token, "").await.valid,
        "same secret"
    );
    let v = validate(&node, &pair.refresh_token, "").await;
    assert_eq!(v.reason, "revoked");
    node.kernel.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// A fresh schema of its own on the test database, and the URL whose
/// connections use it.
async fn scratch_schema() -> (Schema, DatabaseUrl) {
    let schema = Schema::create("sg_test", None).await;
    let url = DatabaseUrl::new(schema.url.clone());
    (schema, url)
}

/// The database cannot be used at start: auth does not start, with exit
/// code 2 (a configuration the operator must fix) and a cause that names
/// the auth database and never repeats the URL's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_be_used_stops_the_start_with_a_named_cause() {
    let down = DatabaseUrl::new("postgres://sg:hunter2@127.0.0.1:1/db");
    let Err(e) = try_start_on(None, ServiceClients::default(), Some(down)).await else {
        panic!("started on an unreachable database");
    };
    let chain = streamgate::error::Chain(&e).to_string();
    assert!(e.is_config(), "{chain}");
    assert!(chain.contains("auth database"), "{chain}");
    assert!(
        !chain.contains("hunter2") && !format!("{e:?}").contains("hunter2"),
        "{chain}"
    );

    // A database migrated by a newer binary.
    let (schema, url) = scratch_schema().await;
    let newer = try_start_on(None, ServiceClients::default(), Some(url.clone()))
        .await
        .expect("migrates a fresh schema");
    newer.kernel.shutdown().await;
    streamgate::pg::pool(url.expose())
        .expect("url")
        .get()
        .await
        .expect("conn")
        .batch_execute("UPDATE streamgate_schema SET version = 99 WHERE component = 'auth'")
        .await
        .expect("from the future");
    let Err(e) = try_start_on(None, ServiceClients::default(), Some(url)).await else {
        panic!("started on a newer schema");
    };
    let chain = streamgate::error::Chain(&e).to_string();
    assert!(e.is_config(), "{chain}");
    assert!(chain.contains("schema version 99, newer than"), "{chain}");
    schema.drop().await;
}

/// Two auth instances on one database, as `--database-url` wires them: an
/// account made through one logs in through the other and cannot be made
/// twice, failed log-ins through one lock the (email, address) out on the
/// other, and a token revoked through one is refused by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_database_share_accounts_lock_outs_and_revocations() {
    let (schema, on_schema) = scratch_schema().await;
    let (a, b) = tokio::join!(
        start_on(None, ServiceClients::default(), Some(on_schema.clone())),
        start_on(None, ServiceClients::default(), Some(on_schema))
    );
    let (_, pair) = sign_up(&a, "joe@example.com").await;
    log_in(&b, "JOE@example.com", PASSWORD)
        .await
        .expect("an account made through a logs in through b");
    let again = client(&b)
        .await
        .sign_up(SignUpRequest {
            email: "joe@example.com".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .expect_err("taken");
    assert_eq!(again.code(), Code::AlreadyExists);

    let attacker = "198.51.100.7";
    for _ in 0..5 {
        let e = log_in_from(&a, "joe@example.com", "not the password", attacker)
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    }
    let locked = log_in_from(&b, "joe@example.com", PASSWORD, attacker)
        .await
        .expect_err("locked out on b too");
    assert_eq!(
        locked.code(),
        Code::ResourceExhausted,
        "{}",
        locked.message()
    );
    log_in_from(&b, "joe@example.com", PASSWORD, "203.0.113.9")
        .await
        .expect("the owner elsewhere gets in");

    assert!(validate(&a, &pair.access_token, "").await.valid);
    client(&b)
        .await
        .revoke_token(RevokeTokenRequest {
            token: pair.access_token.clone(),
            token_id: String::new(),
        })
        .await
        .expect("revoke");
    assert_eq!(validate(&a, &pair.access_token, "").await.reason, "revoked");

    a.kernel.shutdown().await;
    b.kernel.shutdown().await;
    schema.drop().await;
}
