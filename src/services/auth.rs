//! auth (9007): user accounts (SQLite, Argon2id password hashes) and
//! bearer tokens (HS256 JWTs): sign-up, log-in, refresh-token rotation,
//! validation, revocation, and service tokens for configured clients.
//!
//! The signing secret comes from the options (`--auth-secret-file`); without
//! one a random secret is drawn at start, so tokens do not survive a restart.

use tonic::service::Routes;

use crate::kernel::{KernelError, Runtime};
use crate::proto::auth_service_server::AuthServiceServer;
use crate::services::{Common, Domain};

pub mod checks;
pub mod email;
pub mod error;
pub mod limit;
pub mod password;
mod redact;
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

/// The auth service's routes.
///
/// # Errors
/// The store cannot be opened, or the configured secret is too short.
pub async fn domain(
    config: &Config,
    common: &Common,
    _runtime: &Runtime,
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
            Secret::random()
        }
    };
    let path = common
        .db_path(DB_FILE)
        .map_err(|e| fail("its data dir", e.into()))?;
    let store = store::Store::open(path.as_deref()).map_err(|e| fail("its database", e.into()))?;
    // The decoy hash now, not on the first unknown email (which would then
    // take twice as long as a wrong password).
    crate::rt::blocking(|| password::decoy().map(|_| ()))
        .await
        .map_err(|e| fail("the password hasher", e.into()))?
        .map_err(|e| fail("the password hasher", e.into()))?;
    let server = AuthServer::new(store, token::Tokens::new(&secret), config.clients.clone());
    Ok(Domain {
        routes: Routes::new(AuthServiceServer::new(server)),
        grpc_names: vec![<AuthServiceServer<AuthServer> as tonic::server::NamedService>::NAME],
        ..Domain::default()
    })
}
