//! The registry and bus contracts against the in-memory backends.

use std::sync::Arc;

use streamgate::bus::memory::MemoryBus;
use streamgate::registry::memory::MemoryRegistry;
use streamgate_testkit::{bus_contract, registry_contract};

#[tokio::test]
async fn memory_registry_meets_the_contract() {
    let registry = Arc::new(MemoryRegistry::new());
    let handle = registry.clone();
    let set_status: registry_contract::SetStatus = Arc::new(move |id, status| {
        assert!(handle.set_status(&id, status), "{id} is registered");
        Box::pin(async {})
    });
    registry_contract::run_all(
        registry,
        registry_contract::Options::with_status(set_status),
    )
    .await;
}

#[tokio::test]
async fn memory_bus_meets_the_contract() {
    bus_contract::run_all(Arc::new(MemoryBus::new())).await;
}
