//! Tower layers for gRPC calls, one per file, each shaped like tower's
//! `timeout` (layer, service, response future).

pub mod auth;
pub mod error;
pub mod metrics;
pub mod rate_limit;
pub mod request_id;
pub mod retry;
pub mod stack;
pub mod timeout;
pub mod trace;
