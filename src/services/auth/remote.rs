//! The accounts on a database reached over the network, as the simulator
//! runs them: [`AccountsDb`] is the modelled database node's share (the
//! same node as the catalog's, `metadata::remote`), and [`RemoteAccounts`]
//! with [`RemoteThrottle`] the auth instances' clients of it. In
//! production the shared accounts and log-in throttle are PostgreSQL
//! ([`pg_store`](super::pg_store), [`pg_throttle`](super::pg_throttle));
//! the contract suite (`accounts/tests.rs`) runs on all three back ends.
//! Every call is one statement or one transaction whose inputs travel with
//! it (a refresh exchange is decided by [`Store::rotate`] on the node), so
//! the model needs no locks beyond the store's; the throttle is the
//! in-memory one, held by the node for every instance. Its state lives in
//! this value, outside the node: commits outlive a crash.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::error::AuthError;
use super::limit::{Attempt, LoginThrottle, MemoryThrottle, Outcome};
use super::store::{Exchange, Rotation, Store, User};
use crate::registry::consul::{HttpTransport, ModelClient, PostError, json_answer};

/// The path every request goes to.
pub const PATH: &str = "/v1/accounts";
/// Longest answer read.
const BODY_LIMIT: usize = 1 << 20;

/// One call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// [`Store::create_user`].
    CreateUser {
        /// The email's key.
        key: String,
        /// The account.
        user: User,
    },
    /// [`Store::user_by_key`].
    UserByKey {
        /// The email's key.
        key: String,
    },
    /// [`Store::user_exists`].
    UserExists {
        /// The user's id.
        id: String,
    },
    /// [`Store::revoke`].
    Revoke {
        /// The token (or family key).
        jti: String,
        /// Kept until then.
        expires_at_ms: u64,
        /// Now.
        now_ms: u64,
    },
    /// [`Store::is_revoked`] of a token or its family.
    IsRevoked {
        /// The token.
        jti: String,
        /// Its family's key.
        family: Option<String>,
    },
    /// [`Store::rotate`].
    Rotate {
        /// The exchange.
        exchange: Exchange,
    },
    /// [`Store::sweep`].
    Sweep {
        /// Now.
        now_ms: u64,
    },
    /// [`LoginThrottle::admit`].
    Admit {
        /// The email's key.
        email: String,
        /// The client's address.
        client: Option<IpAddr>,
    },
    /// [`LoginThrottle::settle`].
    Settle {
        /// The email's key.
        email: String,
        /// The client's address.
        client: Option<IpAddr>,
        /// Whether the attempt succeeded.
        success: bool,
    },
}

/// A call's answer (status 200); a failure answers 503 with
/// `{"error": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    /// Done.
    Done,
    /// The email key has an account.
    Taken,
    /// A user, if there is one.
    User(Option<User>),
    /// A yes or no.
    Yes(bool),
    /// How an exchange went.
    Rotated(Rotation),
    /// How many a sweep forgot.
    Swept(usize),
    /// Admitted (`None`), or the wait until an attempt is, in ms.
    Admitted(Option<u64>),
}

/// The modelled database node's accounts and log-in throttle.
#[derive(Debug)]
pub struct AccountsDb {
    store: Mutex<Store>,
    throttle: MemoryThrottle,
}

fn lock(m: &Mutex<Store>) -> MutexGuard<'_, Store> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AccountsDb {
    /// An empty database.
    ///
    /// # Errors
    /// SQLite cannot open an in-memory database.
    pub fn new() -> Result<Arc<Self>, AuthError> {
        Ok(Arc::new(Self {
            store: Mutex::new(Store::open(None)?),
            throttle: MemoryThrottle::default(),
        }))
    }

    /// The node's HTTP routes.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route(PATH, post(handle))
            .with_state(Arc::clone(self))
    }

    async fn answer(&self, req: Request) -> Result<Answer, AuthError> {
        Ok(match req {
            Request::CreateUser { key, user } => match lock(&self.store).create_user(&key, &user) {
                Ok(()) => Answer::Done,
                Err(AuthError::EmailTaken) => Answer::Taken,
                Err(e) => return Err(e),
            },
            Request::UserByKey { key } => Answer::User(lock(&self.store).user_by_key(&key)?),
            Request::UserExists { id } => Answer::Yes(lock(&self.store).user_exists(&id)?),
            Request::Revoke {
                jti,
                expires_at_ms,
                now_ms,
            } => Answer::Yes(lock(&self.store).revoke(&jti, expires_at_ms, now_ms)?),
            Request::IsRevoked { jti, family } => {
                let store = lock(&self.store);
                Answer::Yes(
                    store.is_revoked(&jti)?
                        || family
                            .as_deref()
                            .map_or(Ok(false), |f| store.is_revoked(f))?,
                )
            }
            Request::Rotate { exchange } => Answer::Rotated(lock(&self.store).rotate(&exchange)?),
            Request::Sweep { now_ms } => Answer::Swept(lock(&self.store).sweep(now_ms)?),
            Request::Admit { email, client } => {
                let attempt = Attempt {
                    email: &email,
                    client,
                };
                Answer::Admitted(
                    self.throttle
                        .admit(attempt)
                        .await?
                        .err()
                        .map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
                )
            }
            Request::Settle {
                email,
                client,
                success,
            } => {
                let attempt = Attempt {
                    email: &email,
                    client,
                };
                let outcome = if success {
                    Outcome::Success
                } else {
                    Outcome::Failure
                };
                self.throttle.settle(attempt, outcome).await?;
                Answer::Done
            }
        })
    }
}

async fn handle(State(db): State<Arc<AccountsDb>>, Json(req): Json<Request>) -> Response {
    json_answer(db.answer(req).await)
}

/// The accounts on an [`AccountsDb`] at `base` (`http://ip:port`).
#[derive(Debug, Clone)]
pub struct RemoteAccounts(ModelClient);

/// The database failed: why, kept as the error's source.
fn down(why: impl Into<String>) -> AuthError {
    AuthError::Database(PostError::new(why))
}

fn unexpected(answer: &Answer) -> AuthError {
    down(format!("unexpected answer {answer:?}"))
}

impl RemoteAccounts {
    /// A client of the database at `base` (`http://ip:port`).
    #[must_use]
    pub fn new(base: &str, transport: Arc<dyn HttpTransport>) -> Self {
        Self(ModelClient::new(base, PATH, transport, BODY_LIMIT))
    }

    async fn call(&self, req: &Request) -> Result<Answer, AuthError> {
        self.0.call(req).await.map_err(AuthError::Database)
    }

    async fn yes(&self, req: &Request) -> Result<bool, AuthError> {
        match self.call(req).await? {
            Answer::Yes(yes) => Ok(yes),
            other => Err(unexpected(&other)),
        }
    }

    /// See [`Store::create_user`].
    ///
    /// # Errors
    /// [`AuthError::EmailTaken`]; the database failed or is unreachable.
    pub async fn create_user(&self, key: String, user: User) -> Result<(), AuthError> {
        match self.call(&Request::CreateUser { key, user }).await? {
            Answer::Done => Ok(()),
            Answer::Taken => Err(AuthError::EmailTaken),
            other => Err(unexpected(&other)),
        }
    }

    /// See [`Store::user_by_key`].
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn user_by_key(&self, key: String) -> Result<Option<User>, AuthError> {
        match self.call(&Request::UserByKey { key }).await? {
            Answer::User(user) => Ok(user),
            other => Err(unexpected(&other)),
        }
    }

    /// See [`Store::user_exists`].
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn user_exists(&self, id: String) -> Result<bool, AuthError> {
        self.yes(&Request::UserExists { id }).await
    }

    /// See [`Store::revoke`].
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn revoke(
        &self,
        jti: String,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<bool, AuthError> {
        self.yes(&Request::Revoke {
            jti,
            expires_at_ms,
            now_ms,
        })
        .await
    }

    /// Whether token `jti` or its family is revoked.
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn is_revoked(&self, jti: String, family: Option<String>) -> Result<bool, AuthError> {
        self.yes(&Request::IsRevoked { jti, family }).await
    }

    /// See [`Store::rotate`].
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn rotate(&self, exchange: Exchange) -> Result<Rotation, AuthError> {
        match self.call(&Request::Rotate { exchange }).await? {
            Answer::Rotated(r) => Ok(r),
            other => Err(unexpected(&other)),
        }
    }

    /// See [`Store::sweep`].
    ///
    /// # Errors
    /// The database failed or is unreachable.
    pub async fn sweep(&self, now_ms: u64) -> Result<usize, AuthError> {
        match self.call(&Request::Sweep { now_ms }).await? {
            Answer::Swept(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    /// The log-in throttle every instance on this database shares.
    #[must_use]
    pub fn throttle(&self) -> RemoteThrottle {
        RemoteThrottle(self.clone())
    }
}

/// The log-in throttle held by the database node.
#[derive(Debug, Clone)]
pub struct RemoteThrottle(RemoteAccounts);

#[async_trait]
impl LoginThrottle for RemoteThrottle {
    async fn admit(&self, attempt: Attempt<'_>) -> Result<Result<(), Duration>, AuthError> {
        let req = Request::Admit {
            email: attempt.email.to_owned(),
            client: attempt.client,
        };
        match self.0.call(&req).await? {
            Answer::Admitted(None) => Ok(Ok(())),
            Answer::Admitted(Some(ms)) => Ok(Err(Duration::from_millis(ms))),
            other => Err(unexpected(&other)),
        }
    }

    async fn settle(&self, attempt: Attempt<'_>, outcome: Outcome) -> Result<(), AuthError> {
        let req = Request::Settle {
            email: attempt.email.to_owned(),
            client: attempt.client,
            success: outcome == Outcome::Success,
        };
        match self.0.call(&req).await? {
            Answer::Done => Ok(()),
            other => Err(unexpected(&other)),
        }
    }
}
