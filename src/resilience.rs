//! Sans-I/O resilience cores: each takes `now` (and randomness) as arguments
//! and returns decisions, so proptest and the simulator can drive them. The
//! async layers in `middleware/` and `client/` wrap them.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod rate;
pub mod retry;
