//! Secret bytes from configuration (the JWT signing key, service client
//! secrets): shared cheaply, never printed by `Debug`.

use std::sync::Arc;

use sha2::{Digest, Sha256};

/// Fewest bytes of a JWT signing secret (HS256 wants at least its 256 bits).
pub const MIN_SECRET_BYTES: usize = 32;
/// Most bytes of a configured secret.
pub const MAX_SECRET_BYTES: usize = 4096;

/// Secret bytes; `Debug` shows only their length.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    /// Wraps `bytes`.
    #[must_use]
    pub fn new(bytes: impl Into<Arc<[u8]>>) -> Self {
        Self(bytes.into())
    }

    /// A fresh random secret of `MIN_SECRET_BYTES` bytes from the runtime's rng.
    #[must_use]
    pub fn random() -> Self {
        let mut bytes = vec![0u8; MIN_SECRET_BYTES];
        rand::RngCore::fill_bytes(&mut crate::rt::rng(), &mut bytes);
        Self::new(bytes)
    }

    /// The bytes.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// The services allowed to ask for service tokens, each with its client
/// secret (kept as a SHA-256 digest) and default scopes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceClients(Vec<ServiceClient>);

/// One service client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceClient {
    /// The service's name (e.g. `transcoder`).
    pub name: String,
    /// SHA-256 of its client secret.
    digest: [u8; 32],
    /// Scopes granted when it asks for none, and the most it may ask for.
    pub scopes: Vec<String>,
}

impl ServiceClient {
    /// Client `name` with `secret`, allowed `scopes`.
    #[must_use]
    pub fn new(name: impl Into<String>, secret: &[u8], scopes: Vec<String>) -> Self {
        Self {
            name: name.into(),
            digest: Sha256::digest(secret).into(),
            scopes,
        }
    }
}

impl ServiceClients {
    /// The given clients.
    #[must_use]
    pub fn new(clients: Vec<ServiceClient>) -> Self {
        Self(clients)
    }

    /// True if no client is configured.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The client `name` if `secret` is its secret. Digests are compared in
    /// full (no early exit), so timing tells nothing about the secret.
    #[must_use]
    pub fn check(&self, name: &str, secret: &[u8]) -> Option<&ServiceClient> {
        let given: [u8; 32] = Sha256::digest(secret).into();
        self.0.iter().find(|c| {
            let diff = c
                .digest
                .iter()
                .zip(given.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            c.name == name && diff == 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_bytes() {
        let s = Secret::new(b"hunter2-hunter2-hunter2-hunter2!".to_vec());
        let shown = format!("{s:?}");
        assert_eq!(shown, "Secret(32 bytes)");
        let clients = ServiceClients::new(vec![ServiceClient::new(
            "transcoder",
            b"client-secret-0123456789",
            vec![],
        )]);
        assert!(!format!("{clients:?}").contains("client-secret"));
    }

    #[test]
    fn clients_are_checked_by_name_and_secret() {
        let clients = ServiceClients::new(vec![ServiceClient::new(
            "worker",
            b"s3cret-s3cret-s3cret",
            vec![],
        )]);
        assert!(clients.check("worker", b"s3cret-s3cret-s3cret").is_some());
        assert!(clients.check("worker", b"s3cret-s3cret-s3creT").is_none());
        assert!(clients.check("upload", b"s3cret-s3cret-s3cret").is_none());
        assert_eq!(Secret::random().expose().len(), MIN_SECRET_BYTES);
    }
}
