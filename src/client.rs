//! Calling other services: the client pool (cached channels found through
//! the registry) and typed getters for each service's client.

pub mod pool;

pub use pool::{ClientPool, PoolChannel, PoolError};
