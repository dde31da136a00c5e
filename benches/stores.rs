//! The shared stores against their baselines, in one run:
//! - the metadata catalog on PostgreSQL against SQLite (a file): per-call
//!   latency of create, get and update, p50 and p99 (a report, no target);
//! - the S3 blob store against bare `object_store` on the same Garage:
//!   writing 32 MiB blobs (the store's staged multipart upload and
//!   server-side copy against one bare multipart put) and 1 MiB random
//!   ranged reads, interleaved rounds, medians and paired ratios;
//! - the same through the services, as issue #17 sets the targets (0.8x
//!   each): a 32 MiB original sent to the upload service (its gRPC client
//!   stream of 1 MiB chunks; the store's multipart upload to S3, the
//!   metadata record) against one bare multipart put of the same bytes,
//!   and 1 MiB random ranges read through streaming's `ReadRange` from an
//!   original in S3 against bare ranged GETs.
//!
//! Needs the PostgreSQL and the Garage that `ci/deps` starts.
//! `cargo bench --bench stores` (`-- --quick`: short rounds).
#![allow(clippy::print_stdout)]

#[cfg(not(madsim))]
mod support;

#[cfg(not(madsim))]
fn main() -> anyhow::Result<()> {
    let runtime = support::multi_thread(2)?;
    runtime.block_on(async {
        catalog().await?;
        blobs().await
    })
}

#[cfg(not(madsim))]
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Create, get and update latencies of each back end, interleaved in
/// batches so both see the same machine.
#[cfg(not(madsim))]
async fn catalog() -> anyhow::Result<()> {
    use streamgate::proto::{Video, VideoState};
    use streamgate::rt;
    use streamgate::services::metadata::catalog::Catalog;
    use streamgate::services::metadata::pg_store::PgStore;
    use streamgate::services::metadata::store::Store;

    let quick = support::opts().quick;
    let n = if quick { 100 } else { 1000 };
    let dir = tempfile::tempdir()?;
    let sqlite = Catalog::sqlite(Store::open(Some(&dir.path().join("m.sqlite")))?);
    let base = std::env::var("STREAMGATE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let schema = format!("sg_bench_{:016x}", rt::random_u64());
    streamgate::pg::pool(&base)?
        .get()
        .await?
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await?;
    let url = format!(
        "{base}{}options=-c%20search_path%3D{schema}",
        if base.contains('?') { '&' } else { '?' }
    );
    let postgres = Catalog::Postgres(PgStore::open(streamgate::pg::pool(&url)?).await?);
    let video = |id: String| Video {
        id,
        owner_id: "u1".into(),
        title: "t".into(),
        content_type: "video/mp4".into(),
        size_bytes: 1,
        sha256_hex: "0".repeat(64),
        state: VideoState::Uploaded as i32,
        created_at_ms: 1,
        updated_at_ms: 1,
        ..Video::default()
    };
    let stores = [("sqlite", &sqlite), ("postgres", &postgres)];
    // [store][op] latencies in µs.
    let mut took = vec![vec![Vec::new(); 3]; 2];
    for batch in 0..10 {
        for (s, (_, store)) in stores.iter().enumerate() {
            for i in 0..n / 10 {
                let id = format!("v{batch}x{i}");
                let t = rt::now();
                store.create(video(id.clone())).await?;
                took[s][0].push((rt::now() - t).as_secs_f64() * 1e6);
                let t = rt::now();
                let got = store.get(&id).await?;
                took[s][1].push((rt::now() - t).as_secs_f64() * 1e6);
                assert!(got.is_some(), "the video just made");
                let t = rt::now();
                store
                    .update(&id, |v| {
                        v.title = "u".into();
                        Ok::<_, ()>(())
                    })
                    .await?
                    .expect("found")
                    .expect("updated");
                took[s][2].push((rt::now() - t).as_secs_f64() * 1e6);
            }
        }
    }
    for (s, (name, _)) in stores.iter().enumerate() {
        for (o, op) in ["create", "get", "update"].iter().enumerate() {
            let mut v = took[s][o].clone();
            v.sort_by(f64::total_cmp);
            println!(
                "metadata {op:6} on {name:8}: p50 {:7.0} µs  p99 {:7.0} µs  ({} calls)",
                percentile(&v, 0.5),
                percentile(&v, 0.99),
                v.len()
            );
        }
    }
    if let Ok(client) = streamgate::pg::pool(&base)?.get().await {
        let _ = client
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .await;
    }
    Ok(())
}

/// The S3 blob store against bare object_store calls on the same server.
#[cfg(not(madsim))]
async fn blobs() -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use object_store::path::Path;
    use object_store::{ObjectStore, ObjectStoreExt as _};
    use streamgate::blob::BlobStore;
    use streamgate::blob::s3::S3BlobStore;
    use streamgate::rt;

    let prefix = format!("bench{:016x}", rt::random_u64());
    let config = streamgate_testkit::s3::garage(&prefix);
    let store = S3BlobStore::new(&config)?;
    let bare: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_endpoint(config.endpoint.clone().unwrap_or_default())
            .with_allow_http(true)
            .with_access_key_id(&config.access_key_id)
            .with_secret_access_key(&config.secret_access_key)
            .build()?,
    );
    const MIB: usize = 1 << 20;
    let size = 32 * MIB;
    let chunk = vec![0x5au8; MIB];
    let opts = support::opts();
    let rounds = support::Rounds::new(opts, 7, 1, Duration::from_millis(0));

    // Writes: MiB/s per whole blob.
    let writes = rounds
        .interleaved(2, async |path, round| {
            let t = rt::now();
            if path == 0 {
                let mut w = store.create().await?;
                for _ in 0..size / MIB {
                    w.write(&chunk).await?;
                }
                w.commit(&format!("w/{round}")).await?;
            } else {
                bare_put(
                    bare.as_ref(),
                    &format!("{prefix}/bare/{round}"),
                    &chunk,
                    size / MIB,
                )
                .await?;
            }
            Ok((size / MIB) as f64 / (rt::now() - t).as_secs_f64())
        })
        .await?;
    println!(
        "S3 write 32 MiB: store {:.0} MiB/s, bare object_store {:.0} MiB/s (medians); store / bare: {}",
        support::median(&writes[0]),
        support::median(&writes[1]),
        support::paired_ratio(&writes[0], &writes[1])
    );

    // Ranged reads of one 64 MiB blob: MiB/s over 32 random 1 MiB ranges.
    store
        .put("r/blob", Bytes::from(vec![7u8; 64 * MIB]))
        .await?;
    let path = Path::from(format!("{prefix}/r/blob"));
    let reads = rounds
        .interleaved(2, async |which, round| {
            let t = rt::now();
            for i in 0..32u64 {
                let offset = ((round as u64 * 7919 + i * 104_729) % 63) * MIB as u64;
                let got = if which == 0 {
                    store.read("r/blob", offset, MIB).await?
                } else {
                    bare.get_range(&path, offset..offset + MIB as u64).await?
                };
                assert_eq!(got.len(), MIB, "a whole range");
            }
            Ok(32.0 / (rt::now() - t).as_secs_f64())
        })
        .await?;
    println!(
        "S3 ranged reads (1 MiB): store {:.0} MiB/s, bare object_store {:.0} MiB/s (medians); store / bare: {}",
        support::median(&reads[0]),
        support::median(&reads[1]),
        support::paired_ratio(&reads[0], &reads[1])
    );
    services(&config, &bare, rounds).await?;
    store.delete("w").await?;
    store.delete("r").await?;
    store.delete("originals").await?;
    for round in 0..16 {
        let _ = bare
            .delete(&Path::from(format!("{prefix}/bare/{round}")))
            .await;
    }
    Ok(())
}

/// One bare `object_store` multipart put of `count` times `chunk` at
/// `path`, four parts in flight (the baseline of every write here).
#[cfg(not(madsim))]
async fn bare_put(
    bare: &dyn object_store::ObjectStore,
    path: &str,
    chunk: &[u8],
    count: usize,
) -> anyhow::Result<()> {
    use object_store::ObjectStoreExt as _;
    let upload = bare
        .put_multipart(&object_store::path::Path::from(path))
        .await?;
    let mut w = object_store::WriteMultipart::new(upload);
    for _ in 0..count {
        w.wait_for_capacity(4).await?;
        w.write(chunk);
    }
    w.finish().await?;
    Ok(())
}

/// Upload and ranged reads through the upload and streaming services (a
/// node of upload, metadata and streaming on the S3 store, called through
/// the pool over loopback gRPC) against bare `object_store` on the same
/// bucket, rounds interleaved.
#[cfg(not(madsim))]
async fn services(
    config: &streamgate::blob::s3::S3Config,
    bare: &std::sync::Arc<dyn object_store::ObjectStore>,
    rounds: support::Rounds,
) -> anyhow::Result<()> {
    use std::sync::Arc;

    use bytes::Bytes;
    use futures::StreamExt as _;
    use object_store::ObjectStoreExt as _;
    use object_store::path::Path;
    use streamgate::blob::s3::S3BlobStore;
    use streamgate::bus::memory::MemoryBus;
    use streamgate::middleware::auth::Keyring;
    use streamgate::proto::upload_chunk::Payload as Chunk;
    use streamgate::proto::{ReadRangeRequest, UploadChunk, UploadMetadata};
    use streamgate::registry::memory::MemoryRegistry;
    use streamgate::rt;
    use streamgate::services::{Common, ServiceKind};

    const MIB: usize = 1 << 20;
    let size = 32 * MIB;
    let plugins = [
        ServiceKind::Upload,
        ServiceKind::Metadata,
        ServiceKind::Streaming,
    ]
    .into_iter()
    .map(|kind| support::plugin(kind, Common::ephemeral(), |_| {}))
    .collect();
    let node = support::start_node(
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryBus::new()),
        Arc::new(S3BlobStore::new(config)?),
        Keyring::generate("bench"),
        "api-gateway",
        plugins,
    )
    .await;
    let chunk = Bytes::from(vec![0x5au8; MIB]);
    let chunks = move || {
        let meta = UploadChunk {
            payload: Some(Chunk::Metadata(UploadMetadata {
                file_name: "bench.mp4".into(),
                content_type: "video/mp4".into(),
                size_bytes: size as u64,
                ..UploadMetadata::default()
            })),
        };
        let data = (0..size / MIB).map({
            let chunk = chunk.clone();
            move |_| UploadChunk {
                payload: Some(Chunk::Data(chunk.clone())),
            }
        });
        futures::stream::iter(std::iter::once(meta).chain(data))
    };
    let raw = vec![0x5au8; MIB];
    let mut uploaded = Vec::new();
    let writes = rounds
        .interleaved(2, async |path, round| {
            let t = rt::now();
            if path == 0 {
                let mut client = node.pool().upload().await?;
                let done = client.upload(chunks()).await?.into_inner();
                uploaded.push(done.video_id);
            } else {
                let path = format!("{}/bare/{round}", config.prefix);
                bare_put(bare.as_ref(), &path, &raw, size / MIB).await?;
            }
            Ok((size / MIB) as f64 / (rt::now() - t).as_secs_f64())
        })
        .await?;
    println!(
        "upload 32 MiB through the upload service to S3 {:.0} MiB/s, bare object_store multipart put {:.0} MiB/s (medians); service / bare: {} (target 0.8x)",
        support::median(&writes[0]),
        support::median(&writes[1]),
        support::paired_ratio(&writes[0], &writes[1])
    );

    // Ranged reads of the first original: through streaming's ReadRange,
    // and bare GETs of the same object.
    let video = uploaded.first().cloned().expect("an upload");
    let object = Path::from(format!(
        "{}/{}",
        config.prefix,
        streamgate::services::media::original_key(&video)
    ));
    let reads = rounds
        .interleaved(2, async |which, round| {
            let t = rt::now();
            for i in 0..32u64 {
                let offset = ((round as u64 * 7919 + i * 104_729) % 31) * MIB as u64;
                let got = if which == 0 {
                    let mut stream = node
                        .pool()
                        .streaming()
                        .await?
                        .read_range(ReadRangeRequest {
                            video_id: video.clone(),
                            offset,
                            length: MIB as u64,
                        })
                        .await?
                        .into_inner();
                    let mut n = 0;
                    while let Some(part) = stream.next().await {
                        n += part?.data.len();
                    }
                    n
                } else {
                    bare.get_range(&object, offset..offset + MIB as u64)
                        .await?
                        .len()
                };
                assert_eq!(got, MIB, "a whole range");
            }
            Ok(32.0 / (rt::now() - t).as_secs_f64())
        })
        .await?;
    println!(
        "1 MiB ranges of an original in S3 through streaming's ReadRange {:.0} MiB/s, bare ranged GET {:.0} MiB/s (medians); service / bare: {} (target 0.8x)",
        support::median(&reads[0]),
        support::median(&reads[1]),
        support::paired_ratio(&reads[0], &reads[1])
    );
    node.shutdown().await;
    Ok(())
}

/// Nothing to measure inside the simulator.
#[cfg(madsim)]
fn main() {}
