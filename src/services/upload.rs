//! upload (9091): client-streaming uploads stored atomically in the blob
//! store; publishes FileUploaded, and removes a video's blobs once deleted.

use tonic::service::Routes;

use crate::bus::events::{MetadataDeleted, Payload};
use crate::bus::{EventType, handler};
use crate::kernel::{KernelError, Runtime};
use crate::proto::upload_service_server::UploadServiceServer;
use std::time::Duration;

use crate::services::{Background, Common, Domain, media};

pub mod error;
#[cfg(not(madsim))]
pub mod pg_store;
pub mod records;
pub mod remote;
pub mod server;
pub mod store;
pub mod sweep;

pub use error::UploadError;
pub use server::UploadServer;

/// File name of the upload records under the data dir.
pub const DB_FILE: &str = "uploads.sqlite";
/// The gRPC path of the upload stream (its deadline may be longer than
/// other calls'; see [`MAX_UPLOAD_CALL_TIMEOUT`]).
pub const UPLOAD_PATH: &str = "/streamgate.v1.UploadService/Upload";
/// The gRPC path of AdoptParts (it reads a whole upload's parts: its
/// deadline may be longer than other calls', up to [`MAX_ADOPT_CALL_TIMEOUT`]).
pub const ADOPT_PATH: &str = "/streamgate.v1.UploadService/AdoptParts";
/// Longest deadline of AdoptParts: reading and joining 2 GiB of parts in
/// an object store at 10 MB/s.
pub const MAX_ADOPT_CALL_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest deadline of an upload stream: a large video over a slow link
/// takes long, so what bounds an upload is [`UPLOAD_IDLE_TIMEOUT`] between
/// chunks, with this as the outer limit (2 GiB at 100 kB/s).
pub const MAX_UPLOAD_CALL_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
/// Longest an upload may go without a byte arriving (at the gateway, from
/// the client; at the upload service, from the gateway) before it is cut.
pub const UPLOAD_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The upload service's own settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Largest upload accepted, in bytes.
    pub max_upload_bytes: u64,
    /// The orphan sweep's interval and grace period.
    pub sweep: sweep::Config,
    /// PostgreSQL holding the upload records, shared by every instance;
    /// `None`: SQLite in the data dir (in memory without one).
    pub database: Option<crate::schema::DatabaseUrl>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_upload_bytes: crate::services::MAX_UPLOAD_BYTES,
            sweep: sweep::Config::default(),
            database: None,
        }
    }
}

impl Config {
    /// Checks the settings.
    ///
    /// # Errors
    /// The sweep's interval or grace is out of range.
    pub fn validate(&self) -> Result<(), String> {
        self.sweep.validate()
    }
}

/// The records on PostgreSQL when a database URL is set, else on SQLite.
async fn open(
    config: &Config,
    common: &Common,
    ready: &crate::readiness::ReadyChecks,
) -> Result<records::Records, Box<dyn std::error::Error + Send + Sync>> {
    if let Some(url) = &config.database {
        #[cfg(not(madsim))]
        {
            let pool = crate::pg::pool(url.expose())?;
            let opened = pg_store::PgStore::open(pool.clone()).await;
            if opened.is_ok() {
                // Probed once migrated, so it answers from the start.
                crate::pg::depend(ready, "upload database", &pool).await;
            }
            return match opened {
                Ok(store) => Ok(records::Records::Postgres(store)),
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
                    records::Records::Remote(remote::RemoteRecords::new(&base, transport))
                })
                .map_err(Into::into);
        }
    }
    let path = common.db_path(DB_FILE)?;
    match store::Store::open(path.as_deref()) {
        Ok(store) => Ok(records::Records::sqlite(store)),
        // A schema refusal stays itself: the process exits with code 2.
        Err(store::StoreError::Schema(e)) => Err(e.into()),
        Err(e) => Err(e.into()),
    }
}

/// The service's routes, the consumer that removes deleted videos' blobs,
/// and the orphan sweep.
///
/// # Errors
/// The records cannot be opened, or the bus refuses the subscription.
pub async fn domain(
    config: &Config,
    common: &Common,
    runtime: &Runtime,
) -> Result<Domain, KernelError> {
    let fail = |what: &str, e: Box<dyn std::error::Error + Send + Sync>| {
        KernelError::start("upload", what, e)
    };
    let store = open(config, common, &runtime.ready)
        .await
        .map_err(|e| fail("its database", e))?;

    let (blobs, records) = (runtime.blobs.clone(), store.clone());
    let on_deleted = handler(move |event| {
        let (blobs, records) = (blobs.clone(), records.clone());
        async move {
            let video_id = MetadataDeleted::from_event(&event)?.video_id;
            if !media::is_id(&video_id) {
                return Err("video_id is not an id".into());
            }
            for key in media::video_blobs(&video_id) {
                blobs.delete(&key).await?;
            }
            records.delete_video(&video_id).await?;
            tracing::info!(video = %video_id, "blobs of the deleted video removed");
            Ok(())
        }
    });
    let sub = runtime
        .bus
        .subscribe(
            EventType::MetadataDeleted.subject(),
            Some("upload"),
            on_deleted,
        )
        .await
        .map_err(|e| fail("the event bus", e.into()))?;

    let committing = sweep::Committing::default();
    if config.sweep.grace < server::COMMIT_TIMEOUT {
        tracing::warn!(
            grace_secs = config.sweep.grace.as_secs(),
            "the orphan sweep's grace is shorter than an upload's commit may take: safe only \
             while this is the one upload instance on its blob store"
        );
    }
    let sweeper = sweep::Sweeper {
        config: config.sweep,
        blobs: runtime.blobs.clone(),
        pool: runtime.pool.clone(),
        records: store.clone(),
        committing: committing.clone(),
        metrics: runtime.metrics.clone(),
    };
    let server = UploadServer::new(
        store,
        runtime.blobs.clone(),
        runtime.bus.clone(),
        runtime.pool.clone(),
        config.max_upload_bytes,
        committing,
    )
    .with_metrics(runtime.metrics.clone());
    Ok(Domain {
        routes: Routes::new(UploadServiceServer::new(server)),
        grpc_names: vec![<UploadServiceServer<UploadServer> as tonic::server::NamedService>::NAME],
        background: Background {
            subscriptions: vec![sub],
            tasks: vec![crate::rt::spawn(sweeper.run())],
            ..Background::default()
        },
        long_calls: vec![
            (UPLOAD_PATH, MAX_UPLOAD_CALL_TIMEOUT),
            (ADOPT_PATH, MAX_ADOPT_CALL_TIMEOUT),
        ],
        ..Domain::default()
    })
}
