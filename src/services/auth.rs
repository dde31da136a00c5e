//! auth (9007): user accounts (Argon2id password hashes) and bearer tokens
//! (HS256 JWTs): sign-up, log-in, refresh-token rotation, validation,
//! revocation, and service tokens for configured clients.
//!
//! The signing secret comes from the options (`--auth-secret-file`); without
//! one a random secret is drawn at start, so tokens do not survive a restart.
//!
//! State ([`accounts::Accounts`]): a SQLite file in the data dir (one
//! instance per data dir; the log-in throttle in its memory), or with
//! `--database-url` PostgreSQL shared by every auth instance on any host:
//! accounts, revocations, refresh-token rotations and the log-in throttle
//! (`pg_throttle.rs`) alike. Instances that share it must share the
//! signing secret too. Revocations are never cached here: every
//! ValidateToken reads the store, so a token revoked through one instance
//! is refused by the next check on any other. (The API gateway caches
//! positive answers for at most `gateway::token_cache::MAX_AGE`, 10 s,
//! which bounds how long a revoked token is still let in there.)

use tonic::service::Routes;

use crate::kernel::{KernelError, Runtime};
use crate::proto::auth_service_server::AuthServiceServer;
use crate::schema::DatabaseUrl;
use crate::services::{Common, Domain};

pub mod accounts;
pub mod checks;
pub mod email;
pub mod error;
pub mod limit;
pub mod password;
#[cfg(not(madsim))]
pub mod pg_store;
#[cfg(not(madsim))]
pub mod pg_throttle;
mod redact;
pub mod remote;
pub mod secret;
pub mod server;
pub mod store;
pub mod token;

#[cfg(all(test, not(madsim)))]
mod tests;

pub use error::AuthError;
pub use secret::{Secret, ServiceClient, ServiceClients};
pub use server::AuthServer;

/// File name of the accounts database under the data dir.
pub const DB_FILE: &str = "auth.sqlite";

/// The auth service's own settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    /// The token signing secret; `None` draws a random one at start
    /// (tokens then end with the process).
    pub secret: Option<Secret>,
    /// The services it issues service tokens to.
    pub clients: ServiceClients,
    /// PostgreSQL holding the accounts, revocations and log-in throttle,
    /// shared by every instance; `None`: SQLite in the data dir (in memory
    /// without one) and the throttle in memory.
    pub database: Option<DatabaseUrl>,
}

impl Config {
    /// Checks the secret's length.
    ///
    /// # Errors
    /// The secret is shorter than [`secret::MIN_SECRET_BYTES`].
    pub fn validate(&self) -> Result<(), String> {
        match &self.secret {
            Some(s) if s.expose().len() < secret::MIN_SECRET_BYTES => Err(format!(
                "auth secret: at least {} bytes",
                secret::MIN_SECRET_BYTES
            )),
            _ => Ok(()),
        }
    }
}

/// The accounts on PostgreSQL when a database URL is set, else on SQLite.
async fn open(
    config: &Config,
    common: &Common,
    ready: &crate::readiness::ReadyChecks,
) -> Result<accounts::Accounts, Box<dyn std::error::Error + Send + Sync>> {
    if let Some(url) = &config.database {
        #[cfg(not(madsim))]
        {
            let pool = crate::pg::pool(url.expose())?;
            let opened = pg_store::PgStore::open(pool.clone()).await;
            if opened.is_ok() {
                // Probed once migrated, so it answers from the start.
                crate::pg::depend(ready, "auth database", &pool).await;
            }
            return match opened {
                Ok(store) => Ok(store.into()),
                // A schema refusal stays itself: the process exits with code 2.
                Err(AuthError::Schema(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            };
        }
        #[cfg(madsim)]
        {
            // The simulation build has no PostgreSQL client: an
            // `http://ip:port` URL names the modelled database node
            // (`remote`) instead.
            let _ = ready;
            return super::sim_database(url)
                .map(|(base, transport)| {
                    accounts::Accounts::Remote(remote::RemoteAccounts::new(&base, transport))
                })
                .map_err(Into::into);
        }
    }
    let path = common.db_path(DB_FILE)?;
    match store::Store::open(path.as_deref()) {
        Ok(store) => Ok(store.into()),
        Err(AuthError::Schema(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}

/// The auth service's routes.
///
/// # Errors
/// The store cannot be opened, or the configured secret is too short.
pub async fn domain(
    config: &Config,
    common: &Common,
    runtime: &Runtime,
) -> Result<Domain, KernelError> {
    config.validate().map_err(|reason| KernelError::Config {
        plugin: "auth".to_owned(),
        reason,
    })?;
    let fail = |what: &str, e: Box<dyn std::error::Error + Send + Sync>| {
        KernelError::start("auth", what, e)
    };
    let secret = match &config.secret {
        Some(s) => s.clone(),
        None => {
            tracing::warn!(
                "no auth secret configured: a random one is used, tokens end with this process"
            );
            if config.database.is_some() {
                tracing::warn!(
                    "the accounts database is shared, the signing secret is not: other auth instances on it will refuse this one's tokens (give all of them one --auth-secret-file)"
                );
            }
            Secret::random()
        }
    };
    let accounts = open(config, common, &runtime.ready)
        .await
        .map_err(|e| fail("its database", e))?;
    // The decoy hash now, not on the first unknown email (which would then
    // take twice as long as a wrong password).
    crate::rt::blocking(|| password::decoy().map(|_| ()))
        .await
        .map_err(|e| fail("the password hasher", e.into()))?
        .map_err(|e| fail("the password hasher", e.into()))?;
    let server = AuthServer::new(
        accounts,
        token::Tokens::new(&secret),
        config.clients.clone(),
    );
    Ok(Domain {
        routes: Routes::new(AuthServiceServer::new(server)),
        grpc_names: vec![<AuthServiceServer<AuthServer> as tonic::server::NamedService>::NAME],
        ..Domain::default()
    })
}
