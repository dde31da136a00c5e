//! Calling other services: the client pool (per-service balanced channels
//! fed by registry watches, a circuit breaker per instance) and typed getters.

pub mod balance;
pub mod balanced;
pub mod locator;
pub mod pool;

pub use pool::{ClientPool, PoolChannel, PoolConfig, PoolError};
