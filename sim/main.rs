//! The simulation suite: runs only when built with `--cfg madsim` (see
//! `tests/sim_launcher.rs`, which `cargo test --features sim` runs).
//! Every test prints its seed; `MADSIM_TEST_SEED=N` replays it exactly.
#![cfg(madsim)]
#![allow(clippy::print_stdout)]

/// malloc and free were about a fifth of a swarm seed's time under glibc's
/// allocator (docs/benchmarks.md); the run is the same with either.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bench;
mod broker;
mod bus;
mod call;
mod common;
mod job_queue;
mod kv_node;
mod media_port;
mod mtls;
mod outage;
mod partition;
mod pipeline;
mod pool;
mod registry;
mod retry_check;
mod shared_state;
mod swarm;
mod trace;
