//! Range-request throughput of the streaming path against nginx serving
//! the same file, measured in the same run, rounds interleaved: random 1 MiB
//! ranges at 1, 8 and 64 keep-alive connections, printed as MB/s and ratios
//! to nginx. Three StreamGate paths are measured: "local", the gateway in
//! the monolith's shape (gateway, streaming and auth sharing one file blob
//! store), which sends the file itself after one LocateOriginal (see
//! `services::gateway::local`), sent by `sendfile(2)` from the gateway's
//! own plaintext port; "ReadRange", a second
//! gateway with a store of its own, as on another host, which reads
//! through streaming's ReadRange; and "media", streaming's media port
//! (`--media-listen`) serving a signed playback URL from its own files by
//! `sendfile(2)`, with no gateway in the byte path (the multi-host shape
//! issue #19 asks for). nginx runs a master and 2 workers (the node's
//! runtime has 2 threads) with sendfile. Every answer is checked (status
//! and length), so the run also fails if a path breaks under load.
//!
//! A second table fetches whole HLS segments (1.25 MB, a 4 s 720p segment;
//! 64 of them at random) at 1 and 64 connections from nginx, from the
//! gateway's port by signed URL, and from the media port: MB/s and the p99
//! latency over all rounds.
//!
//! Each table is followed by the serving side's CPU time per MiB sent
//! (nginx's processes; the node's runtime threads, which serve every
//! StreamGate path, one path at a time), read from `/proc` around each
//! round: what a server spends for the same bytes. The client and the
//! servers share the machine's cores, so throughput also moves with how
//! they are scheduled; the CPU figure moves much less.
//!
//! `cargo bench --bench streaming_range` (`CONNECTIONS=1,8` picks the
//! connection counts of both tables; `PATHS=media` measures only the named
//! paths beside nginx, for a profile of one; `-- --quick`: one short
//! round). Needs
//! nginx at /usr/sbin/nginx (or $NGINX; Debian's `nginx-light`); fails,
//! rather than skips, without it.
//!
//! Figures: docs/benchmarks.md.
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
    use std::os::unix::process::CommandExt as _;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::{Context as _, bail};
    use http_body_util::{BodyExt as _, Empty};
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use rand::{Rng as _, SeedableRng as _};
    use streamgate::blob::BlobStore as _;
    use streamgate::blob::fs::FsBlobStore;
    use streamgate::bus::memory::MemoryBus;
    use streamgate::middleware::auth::Keyring;
    use streamgate::proto::CreateVideoRequest;
    use streamgate::registry::memory::MemoryRegistry;
    use streamgate::rt;
    use streamgate::services::{Common, ServiceConfig, ServiceKind};
    use streamgate_testkit::process::Process;
    use streamgate_testkit::scratch::Scratch;

    use crate::support::{self, Ratio, Rounds};

    const FILE_BYTES: u64 = 256 << 20;
    const RANGE_BYTES: u64 = 1 << 20;
    const WARMUP: Duration = Duration::from_secs(1);
    const ROUND: Duration = Duration::from_secs(3);
    const ROUNDS: usize = 3;
    const VIDEO: &str = "benchvideo";

    type HttpClient = Client<HttpConnector, Empty<bytes::Bytes>>;

    /// nginx (its master and workers: a process group), killed on drop.
    struct Nginx {
        process: Process,
        addr: SocketAddr,
    }

    impl Nginx {
        /// Its processes, for their CPU time.
        fn server(&self) -> Server {
            Server::Nginx(self.process.id())
        }
    }

    /// The name of the node runtime's threads (workers and blocking pool),
    /// whose CPU time is the StreamGate servers'.
    const NODE_THREADS: &str = "sg-node";

    /// Nanoseconds a thread has run: the first field of a `schedstat` file
    /// (`/proc/<pid>/task/<tid>/schedstat`), finer than `stat`'s ticks.
    fn schedstat_ns(path: &Path) -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// CPU time of this process's threads named [`NODE_THREADS`].
    fn node_cpu() -> Duration {
        let mut ns = 0;
        for task in std::fs::read_dir("/proc/self/task")
            .into_iter()
            .flatten()
            .flatten()
        {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.trim_end() == NODE_THREADS {
                ns += schedstat_ns(&task.path().join("schedstat"));
            }
        }
        Duration::from_nanos(ns)
    }

    /// CPU time of every thread of the processes in process group `group`
    /// (nginx's master and workers).
    fn group_cpu(group: u32) -> Duration {
        let mut ns = 0;
        for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let stat = std::fs::read_to_string(proc.path().join("stat")).unwrap_or_default();
            // `pid (comm) state ppid pgrp ...`: comm may hold spaces.
            let pgrp = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<u32>().ok());
            if pgrp != Some(group) {
                continue;
            }
            for task in std::fs::read_dir(proc.path().join("task"))
                .into_iter()
                .flatten()
                .flatten()
            {
                ns += schedstat_ns(&task.path().join("schedstat"));
            }
        }
        Duration::from_nanos(ns)
    }

    /// Which server a path's requests go to, for its CPU time.
    #[derive(Clone, Copy)]
    enum Server {
        Nginx(u32),
        Node,
    }

    impl Server {
        fn cpu(self) -> Duration {
            match self {
                Self::Nginx(group) => group_cpu(group),
                Self::Node => node_cpu(),
            }
        }
    }

    /// What a round measured: bytes a second, and the serving side's CPU
    /// time per MiB sent (microseconds).
    #[derive(Clone, Copy)]
    struct Measured {
        rate: f64,
        cpu_per_mib: f64,
    }

    /// The paths of the range table and of the segment table.
    const RANGE_PATHS: [&str; 4] = ["nginx", "local", "ReadRange", "media"];
    const SEGMENT_PATHS: [&str; 3] = ["nginx", "gateway", "media"];

    /// Whether `path` is measured: `$PATHS` (e.g. `media`, for a profile
    /// of one path) names those measured beside nginx; the others print
    /// NaN. All by default.
    fn wanted(path: &str) -> bool {
        std::env::var("PATHS").map_or(true, |list| {
            path == "nginx" || list.split(',').any(|p| p.trim() == path)
        })
    }

    impl Measured {
        /// A path not measured ([`wanted`]).
        const SKIPPED: Self = Self {
            rate: f64::NAN,
            cpu_per_mib: f64::NAN,
        };

        /// `bytes` sent in `took`, with `cpu` of the server's time.
        #[allow(clippy::cast_precision_loss)]
        fn of(bytes: u64, took: Duration, cpu: Duration) -> Self {
            let mib = bytes as f64 / f64::from(1 << 20);
            Self {
                rate: bytes as f64 / took.as_secs_f64(),
                cpu_per_mib: cpu.as_secs_f64() * 1e6 / mib.max(1.0),
            }
        }
    }

    fn free_port() -> anyhow::Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    }

    fn start_nginx(dir: &Path, root: &Path) -> anyhow::Result<Nginx> {
        let bin = std::env::var_os("NGINX")
            .map_or_else(|| PathBuf::from("/usr/sbin/nginx"), PathBuf::from);
        if !bin.exists() {
            bail!(
                "nginx not found at {} (install nginx, or set NGINX=/path/to/nginx): \
                 this benchmark compares against it and cannot run without it",
                bin.display()
            );
        }
        let port = free_port()?;
        let d = dir.display();
        let conf = format!(
            "daemon off;\nworker_processes 2;\n\
             error_log {d}/nginx-error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 1000000;\n\
               default_type application/octet-stream;\n\
               client_body_temp_path {d}/nginx-body;\n  proxy_temp_path {d}/nginx-proxy;\n\
               fastcgi_temp_path {d}/nginx-fastcgi;\n  uwsgi_temp_path {d}/nginx-uwsgi;\n\
               scgi_temp_path {d}/nginx-scgi;\n\
               server {{ listen 127.0.0.1:{port}; root {root}; }}\n}}\n",
            root = root.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            // Its workers die with the master on drop.
            .process_group(0);
        Ok(Nginx {
            process: Process::spawn("nginx", cmd, dir),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    /// Waits until `url` answers 206 to a one-byte range.
    async fn wait_ready(client: &HttpClient, url: &str) -> anyhow::Result<()> {
        let deadline = rt::now() + Duration::from_secs(10);
        loop {
            match get_range(client, url, 0, 1).await {
                Ok(1) => return Ok(()),
                Ok(n) => bail!("{url}: a 1-byte range returned {n} bytes"),
                Err(e) if rt::now() > deadline => {
                    return Err(e.context(format!("{url} never answered")));
                }
                Err(_) => rt::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// GETs `[offset, offset + len)` of `url`; returns the bytes received
    /// (counted frame by frame, never buffered).
    async fn get_range(
        client: &HttpClient,
        url: &str,
        offset: u64,
        len: u64,
    ) -> anyhow::Result<u64> {
        let req = http::Request::get(url)
            // nginx ignores it; the gateway checks it, so the ratio
            // includes the cached token check.
            .header(http::header::AUTHORIZATION, support::bearer())
            .header(
                http::header::RANGE,
                format!("bytes={offset}-{}", offset + len - 1),
            )
            .body(Empty::new())?;
        fetch(client, req, http::StatusCode::PARTIAL_CONTENT, len).await
    }

    /// Sends `req`; fails unless the answer is `status` with `len` bytes
    /// (counted frame by frame, never buffered).
    async fn fetch(
        client: &HttpClient,
        req: http::Request<Empty<bytes::Bytes>>,
        status: http::StatusCode,
        len: u64,
    ) -> anyhow::Result<u64> {
        let url = req.uri().to_string();
        let res = client.request(req).await?;
        if res.status() != status {
            bail!("{url}: status {}", res.status());
        }
        let mut body = res.into_body();
        let mut got = 0;
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                got += data.len() as u64;
            }
        }
        if got != len {
            bail!("{url}: {got} of {len} bytes");
        }
        Ok(got)
    }

    /// Bytes per second over `round` (after a warm-up) at `concurrency`,
    /// and `server`'s CPU time per MiB over the same time.
    async fn measure(
        client: &HttpClient,
        url: &str,
        server: Server,
        round: Duration,
        concurrency: usize,
        seed: u64,
    ) -> anyhow::Result<Measured> {
        let run = |time: Duration| {
            let end = rt::now() + time;
            let tasks: Vec<_> = (0..concurrency)
                .map(|i| {
                    let (client, url) = (client.clone(), url.to_owned());
                    rt::spawn(async move {
                        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (i as u64) << 32);
                        let mut bytes = 0u64;
                        while rt::now() < end {
                            let offset = rng.gen_range(0..=FILE_BYTES - RANGE_BYTES);
                            bytes += get_range(&client, &url, offset, RANGE_BYTES).await?;
                        }
                        anyhow::Ok(bytes)
                    })
                })
                .collect();
            async move {
                let started = rt::now();
                let mut total = 0;
                for t in tasks {
                    total += t.await??;
                }
                anyhow::Ok((total, rt::now() - started))
            }
        };
        run(WARMUP.min(round)).await?;
        let cpu = server.cpu();
        let (bytes, took) = run(round).await?;
        Ok(Measured::of(bytes, took, server.cpu() - cpu))
    }

    /// HLS segments written, each [`SEGMENT_BYTES`]: a 4 s segment of
    /// 720p at about 2.5 Mbit/s.
    const SEGMENTS: usize = 64;
    const SEGMENT_BYTES: usize = 1_250_000;

    fn segment_name(i: usize) -> String {
        format!("seg_{i:03}.ts")
    }

    /// Writes the segments of the bench video's `720p` rendition.
    async fn write_segments(store: &FsBlobStore) -> anyhow::Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(8);
        let mut data = vec![0u8; SEGMENT_BYTES];
        for i in 0..SEGMENTS {
            rng.fill(&mut data[..]);
            let mut w = store.create().await?;
            w.write(&data).await?;
            w.commit(&format!("hls/{VIDEO}/720p/{}", segment_name(i)))
                .await?;
        }
        Ok(())
    }

    /// GETs the whole of `url`, a segment; returns its length.
    async fn get_whole(client: &HttpClient, url: &str) -> anyhow::Result<u64> {
        let req = http::Request::get(url).body(Empty::new())?;
        fetch(client, req, http::StatusCode::OK, SEGMENT_BYTES as u64).await
    }

    /// Whole segments under `base` at `concurrency` for `round` (after a
    /// warm-up): bytes per second and every request's latency.
    async fn measure_segments(
        client: &HttpClient,
        base: &str,
        server: Server,
        round: Duration,
        concurrency: usize,
        seed: u64,
    ) -> anyhow::Result<(Measured, Vec<Duration>)> {
        let run = |time: Duration| {
            let end = rt::now() + time;
            let tasks: Vec<_> = (0..concurrency)
                .map(|i| {
                    let (client, base) = (client.clone(), base.to_owned());
                    rt::spawn(async move {
                        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (i as u64) << 32);
                        let (mut bytes, mut latencies) = (0u64, Vec::new());
                        while rt::now() < end {
                            let url =
                                format!("{base}/{}", segment_name(rng.gen_range(0..SEGMENTS)));
                            let started = rt::now();
                            bytes += get_whole(&client, &url).await?;
                            latencies.push(rt::now() - started);
                        }
                        anyhow::Ok((bytes, latencies))
                    })
                })
                .collect();
            async move {
                let started = rt::now();
                let (mut total, mut all) = (0, Vec::new());
                for t in tasks {
                    let (bytes, latencies) = t.await??;
                    total += bytes;
                    all.extend(latencies);
                }
                anyhow::Ok((total, rt::now() - started, all))
            }
        };
        run(WARMUP.min(round)).await?;
        let cpu = server.cpu();
        let (bytes, took, latencies) = run(round).await?;
        Ok((Measured::of(bytes, took, server.cpu() - cpu), latencies))
    }

    /// The `q` quantile of `values` (sorted here).
    fn quantile(values: &mut [Duration], q: f64) -> Duration {
        values.sort_unstable();
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let at = ((values.len() as f64 - 1.0) * q).round() as usize;
        values.get(at).copied().unwrap_or_default()
    }

    /// The segment table: nginx, the gateway's port (a signed URL: the
    /// same handlers, sent by sendfile there too) and the media port.
    async fn segments(
        client: &HttpClient,
        nginx: &Nginx,
        gateway: SocketAddr,
        media: SocketAddr,
        grant: &str,
        rounds: &Rounds,
    ) -> anyhow::Result<()> {
        let bases = [
            format!("http://{}/hls/{VIDEO}/720p", nginx.addr),
            format!("http://{gateway}/v1/play/{grant}/hls/720p"),
            format!("http://{media}/v1/play/{grant}/hls/720p"),
        ];
        for base in &bases {
            get_whole(client, &format!("{base}/{}", segment_name(0))).await?;
        }
        println!();
        println!(
            "whole {SEGMENT_BYTES}-byte HLS segments (a 4 s 720p segment), {SEGMENTS} of them at random; median MB/s, p99 ms over all rounds"
        );
        println!(
            "{:>11} | {:>7} | {:>7} | {:>7} | gateway/nginx | media/nginx | p99 nginx | p99 gateway | p99 media | p99 media/nginx",
            "connections", "nginx", "gateway", "media"
        );
        let counts = match std::env::var("CONNECTIONS") {
            Ok(_) => connections()?,
            Err(_) => vec![1, 64],
        };
        let servers = [nginx.server(), Server::Node, Server::Node];
        let mut cpu_rows = Vec::new();
        for concurrency in counts {
            let mut latencies: Vec<Vec<Duration>> = vec![Vec::new(); bases.len()];
            let runs = rounds
                .interleaved(bases.len(), async |path, round| {
                    if !wanted(SEGMENT_PATHS[path]) {
                        return Ok(Measured::SKIPPED);
                    }
                    let seed = (concurrency * 1000 + round) as u64;
                    let (measured, lat) = measure_segments(
                        client,
                        &bases[path],
                        servers[path],
                        rounds.round,
                        concurrency,
                        seed,
                    )
                    .await?;
                    latencies[path].extend(lat);
                    anyhow::Ok(measured)
                })
                .await?;
            let [n, g, m] = [0, 1, 2].map(|i| median_rate(&runs[i]));
            cpu_rows.push((concurrency, [0, 1, 2].map(|i| median_cpu(&runs[i]))));
            let [pn, pg, pm] = [0, 1, 2].map(|i| quantile(&mut latencies[i], 0.99));
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "{concurrency:>11} | {:>7.0} | {:>7.0} | {:>7.0} | {:>13} | {:>11} | {:>9.2} | {:>11.2} | {:>9.2} | {:>15}",
                n / 1e6,
                g / 1e6,
                m / 1e6,
                Ratio::of(g, n),
                Ratio::of(m, n),
                ms(pn),
                ms(pg),
                ms(pm),
                Ratio::of(ms(pm), ms(pn)),
            );
        }
        print_cpu(&SEGMENT_PATHS, &cpu_rows);
        Ok(())
    }

    fn median_rate(runs: &[Measured]) -> f64 {
        support::median_by(runs.to_vec(), |m| m.rate).rate
    }

    fn median_cpu(runs: &[Measured]) -> f64 {
        support::median_by(runs.to_vec(), |m| m.cpu_per_mib).cpu_per_mib
    }

    /// The serving side's CPU time per MiB sent (the server's threads
    /// only, not the bench's client), per path and against nginx's (the
    /// first): what a server spends to send the same bytes, steadier than
    /// throughput on a machine the client and server share.
    fn print_cpu<const N: usize>(paths: &[&str; N], rows: &[(usize, [f64; N])]) {
        println!("server CPU µs per MiB sent (median over rounds; lower is better)");
        let names: Vec<String> = paths.iter().map(|p| format!("{p:>9}")).collect();
        let ratios: Vec<String> = paths[1..].iter().map(|p| format!("{p}/nginx")).collect();
        println!(
            "{:>11} | {} | {}",
            "connections",
            names.join(" | "),
            ratios.join(" | ")
        );
        for (concurrency, cpu) in rows {
            let values: Vec<String> = cpu.iter().map(|c| format!("{c:>9.1}")).collect();
            let ratios: Vec<String> = paths[1..]
                .iter()
                .zip(&cpu[1..])
                .map(|(p, c)| format!("{:>w$}", Ratio::of(*c, cpu[0]).to_string(), w = p.len() + 6))
                .collect();
            println!(
                "{concurrency:>11} | {} | {}",
                values.join(" | "),
                ratios.join(" | ")
            );
        }
    }

    /// Writes the test file into the store, 1 MiB at a time.
    async fn write_file(store: &FsBlobStore) -> anyhow::Result<()> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut w = store.create().await?;
        let mut block = vec![0u8; RANGE_BYTES as usize];
        for _ in 0..FILE_BYTES / RANGE_BYTES {
            rng.fill(&mut block[..]);
            w.write(&block).await?;
        }
        w.commit(&format!("originals/{VIDEO}")).await?;
        Ok(())
    }

    /// Starts the gateway, streaming and auth services on a runtime of their
    /// own (a thread), serving `store`, and a second gateway beside them
    /// with a store of its own in `elsewhere` (a gateway on another host: it
    /// reads through ReadRange); returns both gateways' addresses.
    fn start_node(
        store: FsBlobStore,
        elsewhere: FsBlobStore,
        media: SocketAddr,
    ) -> anyhow::Result<(SocketAddr, SocketAddr)> {
        // Two workers, as nginx has, named for their CPU time.
        let runtime = support::multi_thread_named(2, NODE_THREADS)?;
        support::serve_on_thread("node", runtime, move || async move {
            // One client and one account make every request: a load test,
            // not a player, so its shares are the whole budget.
            let edge = || {
                let mut c = streamgate::services::gateway::Config::default();
                let all = c.limits.media_in_flight;
                c.limits.client_media_in_flight = all;
                c.limits.account_media_in_flight = all;
                c
            };
            let plugins = |kinds: &[ServiceKind]| {
                kinds
                    .iter()
                    .map(|&kind| {
                        support::plugin(kind, Common::ephemeral(), |config| match config {
                            ServiceConfig::Auth(c) => c.secret = Some(support::auth_secret()),
                            ServiceConfig::ApiGateway(c) => *c = edge(),
                            // Streaming's media port, serving signed URLs.
                            ServiceConfig::Streaming(c) => {
                                c.media = Some(streamgate::services::streaming::MediaPort {
                                    listen: media,
                                    http: edge(),
                                });
                            }
                            _ => {}
                        })
                    })
                    .collect()
            };
            let (bus, registry) = (Arc::new(MemoryBus::new()), Arc::new(MemoryRegistry::new()));
            let keys = bench_keys();
            let node = support::start_node(
                registry.clone(),
                bus.clone(),
                Arc::new(store),
                keys.clone(),
                "bench",
                // Metadata (and the cache in front of it, as in the
                // monolith): the gateway reads the video's record for who
                // may play it and its caching headers.
                plugins(&[
                    ServiceKind::ApiGateway,
                    ServiceKind::Streaming,
                    ServiceKind::Auth,
                    ServiceKind::Metadata,
                    ServiceKind::Cache,
                ]),
            )
            .await;
            node.pool()
                .metadata()
                .await
                .expect("metadata")
                .create_video(CreateVideoRequest {
                    video_id: VIDEO.into(),
                    owner_id: "bench".into(),
                    title: "bench".into(),
                    content_type: "video/mp4".into(),
                    size_bytes: FILE_BYTES,
                    sha256_hex: "0".repeat(64),
                    ..CreateVideoRequest::default()
                })
                .await
                .expect("the bench video's record");
            let remote = support::start_node(
                registry,
                bus,
                Arc::new(elsewhere),
                keys,
                "bench",
                plugins(&[ServiceKind::ApiGateway]),
            )
            .await;
            let gateways = (
                support::address(&node, ServiceKind::ApiGateway),
                support::address(&remote, ServiceKind::ApiGateway),
            );
            (gateways, (node, remote))
        })
    }

    /// The node's service keys (fixed, so that the bench can sign a
    /// playback URL the node accepts).
    fn bench_keys() -> Keyring {
        Keyring::new(streamgate::middleware::auth::Key::new("bench", &[7; 32]).expect("a key"))
    }

    /// The connection counts to measure: `$CONNECTIONS` (e.g. `1,8`), or
    /// 1, 8 and 64.
    fn connections() -> anyhow::Result<Vec<usize>> {
        let Ok(list) = std::env::var("CONNECTIONS") else {
            return Ok(vec![1, 8, 64]);
        };
        list.split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .context("CONNECTIONS: a comma-separated list of counts")
            })
            .collect()
    }

    pub fn main() -> anyhow::Result<()> {
        let rounds = Rounds::new(support::opts(), ROUNDS, 0, ROUND);
        let dir = Scratch::new("bench-range");
        let store_dir = dir.path().join("store");
        let store = FsBlobStore::open(&store_dir)?;
        let runtime = support::multi_thread(2)?;
        runtime.block_on(write_file(&store))?;
        runtime.block_on(write_segments(&store))?;
        let nginx = start_nginx(dir.path(), &store_dir.join("blobs"))?;
        let elsewhere = FsBlobStore::open(dir.path().join("elsewhere"))?;
        let media = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let (gateway, remote) = start_node(store, elsewhere, media)?;
        // A signed URL of the video, as `POST /v1/videos/{id}/playback`
        // makes them (the bench's keys are the node's).
        let grant = streamgate::services::gateway::grant::Grants::new(&bench_keys()).mint(
            VIDEO,
            streamgate::services::gateway::grant::Scope::Owner,
            rt::unix_ms() + 24 * 3600 * 1000,
        );
        runtime.block_on(async move {
            let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
            let urls = [
                format!("http://{}/originals/{VIDEO}", nginx.addr),
                format!("http://{gateway}/v1/videos/{VIDEO}/original"),
                format!("http://{remote}/v1/videos/{VIDEO}/original"),
                format!("http://{media}/v1/play/{grant}/original"),
            ];
            for url in &urls {
                wait_ready(&client, url).await?;
            }
            println!(
                "random {} MiB ranges of a {} MiB file; {} interleaved rounds of {:?} (+{:?} warm-up); median MB/s",
                RANGE_BYTES >> 20,
                FILE_BYTES >> 20,
                rounds.rounds,
                rounds.round,
                WARMUP.min(rounds.round),
            );
            println!("local: the gateway shares streaming's store and sends the file; ReadRange: a gateway with a store of its own;");
            println!("media: streaming's media port (a signed URL; sendfile), no gateway in the byte path");
            println!(
                "{:>11} | {:>7} | {:>7} | {:>9} | {:>7} | local/nginx | ReadRange/nginx | media/nginx",
                "connections", "nginx", "local", "ReadRange", "media"
            );
            let servers = [nginx.server(), Server::Node, Server::Node, Server::Node];
            let mut cpu_rows = Vec::new();
            for concurrency in connections()? {
                let runs = rounds
                    .interleaved(urls.len(), async |path, round| {
                        if !wanted(RANGE_PATHS[path]) {
                            return Ok(Measured::SKIPPED);
                        }
                        let seed = (concurrency * 100 + round) as u64;
                        measure(&client, &urls[path], servers[path], rounds.round, concurrency, seed).await
                    })
                    .await?;
                let [n, s, r, m] = [0, 1, 2, 3].map(|i| median_rate(&runs[i]));
                cpu_rows.push((concurrency, [0, 1, 2, 3].map(|i| median_cpu(&runs[i]))));
                println!(
                    "{concurrency:>11} | {:>7.0} | {:>7.0} | {:>9.0} | {:>7.0} | {:>11} | {:>15} | {:>11}",
                    n / 1e6,
                    s / 1e6,
                    r / 1e6,
                    m / 1e6,
                    Ratio::of(s, n),
                    Ratio::of(r, n),
                    Ratio::of(m, n)
                );
            }
            print_cpu(&RANGE_PATHS, &cpu_rows);
            segments(&client, &nginx, gateway, media, &grant, &rounds).await?;
            drop(nginx);
            anyhow::Ok(())
        })
    }
}
