//! metadata (9005): the video catalog (SQLite, or PostgreSQL shared by
//! many instances) and its state machine, fed by the pipeline's events and
//! read by the gateway.

use tonic::service::Routes;

use crate::kernel::{KernelError, Runtime};
use crate::proto::metadata_service_server::MetadataServiceServer;
use crate::schema::DatabaseUrl;
use crate::services::{Background, Common, Domain};

pub mod catalog;
pub mod consume;
pub mod error;
#[cfg(not(madsim))]
pub mod pg_store;
pub mod remote;
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
    /// PostgreSQL holding the catalog, shared by every instance; `None`:
    /// SQLite in the data dir (in memory without one).
    pub database: Option<DatabaseUrl>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_upload_bytes: crate::services::MAX_UPLOAD_BYTES,
            database: None,
        }
    }
}

/// The catalog on PostgreSQL when a database URL is set, else on SQLite.
async fn open(
    config: &Config,
    common: &Common,
    ready: &crate::readiness::ReadyChecks,
) -> Result<catalog::Catalog, Box<dyn std::error::Error + Send + Sync>> {
    if let Some(url) = &config.database {
        #[cfg(not(madsim))]
        {
            let pool = crate::pg::pool(url.expose())?;
            let opened = pg_store::PgStore::open(pool.clone()).await;
            if opened.is_ok() {
                // Probed once migrated, so it answers from the start.
                crate::pg::depend(ready, "metadata database", &pool).await;
            }
            return match opened {
                Ok(store) => Ok(catalog::Catalog::Postgres(store)),
                Err(store::StoreError::Schema(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            };
        }
        #[cfg(madsim)]
        {
            // The simulation build has no PostgreSQL client: an
            // `http://ip:port` URL names the modelled database node
            // (`remote`) instead.
            let _ = ready;
            return super::sim_database(url)
                .map(|(base, transport)| {
                    catalog::Catalog::Remote(remote::RemoteCatalog::new(&base, transport))
                })
                .map_err(Into::into);
        }
    }
    let path = common.db_path(DB_FILE)?;
    match store::Store::open(path.as_deref()) {
        Ok(store) => Ok(catalog::Catalog::sqlite(store)),
        // A schema refusal stays itself: the process exits with code 2.
        Err(store::StoreError::Schema(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
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
    let store = open(config, common, &runtime.ready)
        .await
        .map_err(|e| fail("its database", e))?;
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
