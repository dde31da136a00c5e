//! Tower layers for gRPC calls, one per file, each shaped like tower's
//! `timeout` (layer, service, response future).
//! Beside them: the metrics registry they record into (`metrics`) and the
//! event bus wrapper that counts bus traffic into it (`bus_metrics`).

pub mod auth;
pub mod bus_metrics;
pub mod error;
pub mod metrics;
pub mod policy;
pub mod rate_limit;
pub mod request_id;
pub mod retry;
pub mod stack;
pub mod timeout;
pub mod trace;
