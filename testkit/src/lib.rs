//! Test support shared by `tests/`, `sim/` and the unit tests: the contract
//! suites every registry, event bus and job store backend must pass. They assert (a
//! failure is a panic naming the broken rule) and take their time from the
//! runtime seam, so they run on tokio against real servers and inside madsim.
//! Also a model of a Consul agent ([`consul_agent`]) to run the Consul backend against,
//! and scratch directories ([`scratch::Scratch`]) for tests with real files;
//! child processes that die with the test and show their output when it
//! fails ([`process::Process`]).

pub mod blob_contract;
pub mod bus_contract;
pub mod consul_agent;
pub mod fuzz;
pub mod job_store_contract;
pub mod kv_contract;
pub mod kv_node;
pub mod object_node;
#[cfg(not(any(madsim, fuzzing)))]
pub mod otlp;
#[cfg(not(madsim))]
pub mod pg;
#[cfg(not(madsim))]
pub mod process;
pub mod queue_contract;
pub mod queue_node;
pub mod registry_contract;
#[cfg(not(madsim))]
pub mod s3;
pub mod scratch;

/// The NATS server the tests use: `NATS_URL`, else the local default (CI
/// starts one there).
#[must_use]
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}
