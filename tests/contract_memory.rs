//! The registry and bus contracts against the in-memory backends.

use std::sync::Arc;

use streamgate::bus::memory::MemoryBus;
use streamgate::registry::memory::MemoryRegistry;
use streamgate_testkit::{bus_contract, registry_contract};

#[tokio::test]
async fn memory_registry_meets_the_contract() {
    registry_contract::run_all(
        Arc::new(MemoryRegistry::new()),
        registry_contract::Options::default(),
    )
    .await;
}

#[tokio::test]
async fn memory_bus_meets_the_contract() {
    bus_contract::run_all(Arc::new(MemoryBus::new())).await;
}
