//! Upload throughput of the resumable tus route (`/v1/uploads/`) against
//! the one-shot route (`POST /v1/videos`), measured in the same run, rounds
//! interleaved: one file (1 GiB by default) over loopback through each,
//! from the first request to the answer that names the video (for tus the
//! creation, every PATCH and the hand-over into the pipeline the last PATCH
//! waits for). tus runs twice: the whole file in one PATCH (tus-js-client's
//! default chunk size) and in 64 MiB PATCHes (a client that resumes at
//! finer steps). Printed as MB/s and ratios to the one-shot route.
//!
//! The node: gateway, upload, metadata, cache and auth on one runtime of 2
//! threads over one file blob store (the monolith's shape), no transcoder
//! (the measured path ends when the video is recorded). Each upload's
//! video is deleted after it, so the disk holds one file at a time, and
//! `sync` runs before the next (another upload's write-back pending made
//! whichever came next up to 2x slower).
//!
//! `cargo bench --bench tus_upload` (`SIZE_MIB=256` for another size;
//! `-- --quick`: one 32 MiB round, its figures are noise).
#![allow(clippy::print_stdout)]

#[cfg(not(madsim))]
mod support;

#[cfg(not(madsim))]
fn main() -> anyhow::Result<()> {
    bench::main()
}

/// Nothing to measure inside the simulator.
#[cfg(madsim)]
fn main() {}

#[cfg(not(madsim))]
mod bench {
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{Context as _, bail};
    use bytes::Bytes;
    use http_body_util::combinators::BoxBody;
    use http_body_util::{BodyExt as _, Empty, StreamBody};
    use hyper::body::Frame;
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use rand::{Rng as _, SeedableRng as _};
    use streamgate::blob::fs::FsBlobStore;
    use streamgate::bus::memory::MemoryBus;
    use streamgate::middleware::auth::Keyring;
    use streamgate::registry::memory::MemoryRegistry;
    use streamgate::rt;
    use streamgate::services::{Common, ServiceConfig, ServiceKind};
    use streamgate_testkit::scratch::Scratch;

    use crate::support::{self, Rounds};

    const BLOCK: usize = 1 << 20;
    const ROUNDS: usize = 3;

    type Body = BoxBody<Bytes, std::convert::Infallible>;
    type HttpClient = Client<HttpConnector, Body>;

    /// `len` bytes of the file from `offset`, streamed in 1 MiB frames of
    /// one random block (the file is that block repeated), never whole in
    /// memory.
    fn body(block: &Bytes, offset: u64, len: u64) -> Body {
        let block = block.clone();
        let frames = futures::stream::unfold(offset, move |at| {
            let block = block.clone();
            async move {
                if at >= offset + len {
                    return None;
                }
                let start = usize::try_from(at % BLOCK as u64).expect("in a block");
                let take = (BLOCK - start).min(usize::try_from(offset + len - at).unwrap_or(BLOCK));
                let frame = Frame::data(block.slice(start..start + take));
                Some((Ok(frame), at + take as u64))
            }
        });
        StreamBody::new(frames).boxed()
    }

    fn empty() -> Body {
        Empty::new().map_err(|never| match never {}).boxed()
    }

    /// Sends `req`; fails unless the answer is `want`; returns its headers
    /// and body.
    async fn send(
        client: &HttpClient,
        req: http::Request<Body>,
        want: http::StatusCode,
    ) -> anyhow::Result<(http::HeaderMap, Bytes)> {
        let what = format!("{} {}", req.method(), req.uri());
        let res = client.request(req).await.context(what.clone())?;
        let status = res.status();
        let headers = res.headers().clone();
        let body = res.into_body().collect().await?.to_bytes();
        if status != want {
            bail!(
                "{what}: {status} {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
        }
        Ok((headers, body))
    }

    /// The one-shot route: the whole file as the body of `POST /v1/videos`.
    async fn one_shot(
        client: &HttpClient,
        base: &str,
        block: &Bytes,
        size: u64,
    ) -> anyhow::Result<String> {
        let req = http::Request::post(format!("{base}/v1/videos?name=bench.mp4"))
            .header(http::header::AUTHORIZATION, support::bearer())
            .header(http::header::CONTENT_TYPE, "video/mp4")
            .header(http::header::CONTENT_LENGTH, size)
            .body(body(block, 0, size))?;
        let (_, answer) = send(client, req, http::StatusCode::CREATED).await?;
        let json: serde_json::Value = serde_json::from_slice(&answer)?;
        json["video_id"]
            .as_str()
            .map(str::to_owned)
            .context("the one-shot answer names no video_id")
    }

    /// The tus route: a creation, then PATCHes of `chunk` bytes.
    async fn tus(
        client: &HttpClient,
        base: &str,
        block: &Bytes,
        size: u64,
        chunk: u64,
    ) -> anyhow::Result<String> {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let req = http::Request::post(format!("{base}/v1/uploads/"))
            .header(http::header::AUTHORIZATION, support::bearer())
            .header("tus-resumable", "1.0.0")
            .header("upload-length", size)
            .header(
                "upload-metadata",
                format!(
                    "filename {},filetype {}",
                    b64("bench.mp4"),
                    b64("video/mp4")
                ),
            )
            .body(empty())?;
        let (headers, _) = send(client, req, http::StatusCode::CREATED).await?;
        let location = headers
            .get(http::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .context("no Location")?
            .to_owned();
        let mut offset = 0;
        while offset < size {
            let len = chunk.min(size - offset);
            let req = http::Request::patch(format!("{base}{location}"))
                .header(http::header::AUTHORIZATION, support::bearer())
                .header("tus-resumable", "1.0.0")
                .header("upload-offset", offset)
                .header(
                    http::header::CONTENT_TYPE,
                    "application/offset+octet-stream",
                )
                .header(http::header::CONTENT_LENGTH, len)
                .body(body(block, offset, len))?;
            let (headers, _) = send(client, req, http::StatusCode::NO_CONTENT).await?;
            offset += len;
            if offset == size {
                return headers
                    .get("streamgate-video-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .context("the last PATCH names no video");
            }
        }
        bail!("nothing sent")
    }

    async fn delete(client: &HttpClient, base: &str, video: &str) -> anyhow::Result<()> {
        let req = http::Request::delete(format!("{base}/v1/videos/{video}"))
            .header(http::header::AUTHORIZATION, support::bearer())
            .body(empty())?;
        send(client, req, http::StatusCode::NO_CONTENT).await?;
        Ok(())
    }

    fn start_node(store: FsBlobStore) -> anyhow::Result<SocketAddr> {
        support::serve_on_thread("node", support::multi_thread(2)?, || async move {
            let plugins = [
                ServiceKind::ApiGateway,
                ServiceKind::Upload,
                ServiceKind::Auth,
                ServiceKind::Metadata,
                ServiceKind::Cache,
            ]
            .iter()
            .map(|&kind| {
                support::plugin(kind, Common::ephemeral(), |config| {
                    if let ServiceConfig::Auth(c) = config {
                        c.secret = Some(support::auth_secret());
                    }
                })
            })
            .collect();
            let node = support::start_node(
                Arc::new(MemoryRegistry::new()),
                Arc::new(MemoryBus::new()),
                Arc::new(store),
                Keyring::generate("bench"),
                "bench",
                plugins,
            )
            .await;
            (support::address(&node, ServiceKind::ApiGateway), node)
        })
    }

    pub fn main() -> anyhow::Result<()> {
        let opts = support::opts();
        let rounds = Rounds::new(opts, ROUNDS, 1, Duration::ZERO);
        let size: u64 = if opts.quick {
            32 << 20
        } else {
            match std::env::var("SIZE_MIB") {
                Ok(v) => v.parse::<u64>().context("SIZE_MIB: a number")? << 20,
                Err(_) => 1 << 30,
            }
        };
        let dir = Scratch::new("bench-tus");
        let gateway = start_node(FsBlobStore::open(dir.path().join("store"))?)?;
        let base = format!("http://{gateway}");
        let mut block = vec![0u8; BLOCK];
        rand::rngs::StdRng::seed_from_u64(7).fill(&mut block[..]);
        let block = Bytes::from(block);
        let runtime = support::multi_thread(2)?;
        runtime.block_on(async move {
            let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
            let names = ["one-shot", "tus, 1 PATCH", "tus, 64 MiB PATCHes"];
            println!(
                "{} MiB over loopback per upload; {} interleaved rounds (+{} warm-up); MB/s",
                size >> 20,
                rounds.rounds,
                rounds.warmup_rounds
            );
            let runs = rounds
                .interleaved(names.len(), async |path, _round| {
                    let started = rt::now();
                    let video = match path {
                        0 => one_shot(&client, &base, &block, size).await?,
                        1 => tus(&client, &base, &block, size, size).await?,
                        _ => tus(&client, &base, &block, size, 64 << 20).await?,
                    };
                    let rate = size as f64 / (rt::now() - started).as_secs_f64();
                    delete(&client, &base, &video).await?;
                    // The disk's write-back of this upload would slow the
                    // next one: each starts with none pending.
                    let synced = std::process::Command::new("sync").status()?;
                    anyhow::ensure!(synced.success(), "sync failed");
                    anyhow::Ok(rate)
                })
                .await?;
            println!(
                "{:>20} | {:>7} | {:>17} | {:>13}",
                "route", "median", "runs", "paired ratio"
            );
            for (i, name) in names.iter().enumerate() {
                let all: Vec<String> = runs[i].iter().map(|r| format!("{:.0}", r / 1e6)).collect();
                println!(
                    "{name:>20} | {:>7.0} | {:>17} | {:>13}",
                    support::median(&runs[i]) / 1e6,
                    all.join(" "),
                    support::paired_ratio(&runs[i], &runs[0]),
                );
            }
            anyhow::Ok(())
        })?;
        Ok(())
    }
}
