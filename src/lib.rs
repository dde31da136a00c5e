//! StreamGate: a video platform back end of nine services, and the
//! deterministic-simulation-tested service framework it runs on.
//!
//! The same service code runs on tokio in production and inside the madsim
//! simulator: everything that touches time, spawning, randomness or sockets
//! goes through [`rt`], and the registry and event bus are traits.

pub mod grpc_timeout;
pub mod rt;

/// Generated protobuf messages and gRPC clients/servers of `proto/v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("streamgate.v1");
}

/// hashbrown's map with std's seeded SipHash instead of hashbrown's default
/// foldhash: foldhash seeds itself from stack addresses and the clock, so
/// the order a map iterates in would differ between two runs of one seed in
/// the simulator (which seeds std's hasher); SipHash also resists hash
/// flooding on keys from outside (emails, tokens).
pub type HashMap<K, V> = hashbrown::HashMap<K, V, std::hash::RandomState>;

/// hashbrown's map with foldhash under a fixed seed: for maps looked up on
/// every call (the metrics' request paths, the rate limiter's callers),
/// where SipHash costs a few hundred instructions a lookup. Deterministic
/// in the simulator (the seed is fixed), but not flood-resistant: only for
/// maps whose number of keys is bounded.
pub type FixedHashMap<K, V> = hashbrown::HashMap<K, V, foldhash::fast::FixedState>;

pub mod blob;
pub mod bus;
#[cfg(not(madsim))]
pub mod cli;
pub mod client;
pub mod error;
pub mod kernel;
pub mod middleware;
#[cfg(not(madsim))]
pub mod nats_auth;
#[cfg(not(madsim))]
pub mod nats_kv;
pub mod node;
#[cfg(not(madsim))]
pub mod pg;
pub mod readiness;
pub mod registry;
pub mod resilience;
pub mod schema;
pub mod services;
pub mod sqlite;
pub mod telemetry;
pub mod text;
