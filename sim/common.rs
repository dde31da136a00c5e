//! What every simulated node of a scenario shares: the service-token keys
//! (as an operator would distribute them) and the pool settings.

use streamgate::client::PoolConfig;
use streamgate::middleware::auth::{Key, Keyring};

/// The cluster's service-token keys (fixed: this is test data).
pub fn keys() -> Keyring {
    Keyring::new(Key::new("sim", &[7; 32]).expect("valid key"))
}

/// Pool settings of a node calling as `identity`.
pub fn pool(identity: &str) -> PoolConfig {
    PoolConfig::new(keys(), identity)
}
