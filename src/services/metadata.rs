//! metadata (9005): the video catalog (SQLite) and its state machine, fed
//! by the pipeline's events and read by the gateway.

use std::sync::{Arc, Mutex};

use tonic::service::Routes;

use crate::kernel::{KernelError, Runtime};
use crate::proto::metadata_service_server::MetadataServiceServer;
use crate::services::{Background, Common, Domain};

pub mod consume;
pub mod error;
pub mod server;
pub mod state;
pub mod store;

pub use error::MetadataError;
pub use server::MetadataServer;

/// File name of the catalog under the data dir.
pub const DB_FILE: &str = "metadata.sqlite";

/// The catalog's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest upload size a record may claim, in bytes.
    pub max_upload_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_upload_bytes: crate::services::MAX_UPLOAD_BYTES,
        }
    }
}

/// The catalog's routes and its event consumers.
///
/// # Errors
/// The store cannot be opened, or the bus refuses the subscriptions.
pub async fn domain(
    config: &Config,
    common: &Common,
    runtime: &Runtime,
) -> Result<Domain, KernelError> {
    let fail = |what: &str, e: Box<dyn std::error::Error + Send + Sync>| {
        KernelError::start("metadata", what, e)
    };
    let path = common
        .db_path(DB_FILE)
        .map_err(|e| fail("its data dir", e.into()))?;
    let store = store::Store::open(path.as_deref()).map_err(|e| fail("its database", e.into()))?;
    let store = Arc::new(Mutex::new(store));
    let subscriptions = consume::subscribe(&store, &runtime.bus)
        .await
        .map_err(|e| fail("the event bus", e.into()))?;
    let server = MetadataServer::new(store, runtime.bus.clone(), config.max_upload_bytes);
    Ok(Domain {
        routes: Routes::new(MetadataServiceServer::new(server)),
        grpc_names: vec![
            <MetadataServiceServer<MetadataServer> as tonic::server::NamedService>::NAME,
        ],
        background: Background {
            subscriptions,
            tasks: Vec::new(),
            ..Background::default()
        },
        ..Domain::default()
    })
}
