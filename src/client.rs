//! Calling other services: the client pool (per-service balanced channels
//! fed by registry watches, a circuit breaker per instance), rendezvous
//! hashing of keys over instances, and typed getters.

pub mod balance;
pub mod balanced;
pub mod locator;
pub mod pool;
pub mod rendezvous;

pub use pool::{ClientPool, PoolChannel, PoolConfig, PoolError};
