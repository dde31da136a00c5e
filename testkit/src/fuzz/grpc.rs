//! Fuzz body for the services' gRPC handlers (metadata, upload's unary
//! methods, streaming, transcoder, worker): the input is a sequence of
//! frames `[method][len: u16 LE][request bytes]`; each decodes as that
//! method's request and is handled in-process by one server per service
//! (in-memory stores) that keeps its state across the frames. Any answer is fine
//! except a panic, or a status that blames the server (INTERNAL, UNKNOWN)
//! or carries no message: bad input must get a clear, typed refusal.
//!
//! Cheap per input: the servers (four SQLite schemas, the transcoder, the
//! worker's queue) cost far more to build than an input costs to handle, so
//! one set serves [`REPLACE_EVERY`] inputs in a row on one long-lived
//! current-thread runtime, and state carries across those inputs (bounded:
//! an input is at most libFuzzer's `-max_len` bytes). To replay an input on
//! fresh servers, as a crash found after others is best checked, set
//! `STREAMGATE_FUZZ_FRESH=1` (a new set per input).
//!
//! Because state carries over, most inputs end with more allocations than
//! frees, and libFuzzer's leak check then runs the input again and scans
//! the heap: about half of every execution's time. Long campaigns pass
//! `-detect_leaks=0` (docs/testing.md); `ci/fuzz`'s short runs keep it.

use std::future::Future;
use std::sync::Arc;

use futures::{FutureExt as _, StreamExt as _};
use prost::Message;
use tonic::{Request, Response, Status};

use streamgate::blob::memory::MemoryBlobStore;
use streamgate::bus::memory::MemoryBus;
use streamgate::client::{ClientPool, PoolConfig};
use streamgate::middleware::auth::Keyring;
use streamgate::proto::auth_service_server::AuthService;
use streamgate::proto::cache_service_server::CacheService;
use streamgate::proto::metadata_service_server::MetadataService;
use streamgate::proto::monitor_service_server::MonitorService;
use streamgate::proto::streaming_service_server::StreamingService;
use streamgate::proto::transcoder_service_server::TranscoderService;
use streamgate::proto::upload_service_server::UploadService;
use streamgate::proto::worker_service_server::WorkerService;
use streamgate::proto::{
    AcknowledgeAlertRequest, CacheDeleteRequest, CacheGetRequest, CacheInvalidateRequest,
    CacheSetRequest, CacheStatsRequest, GetStatusRequest, IssueServiceTokenRequest,
    ListAlertsRequest, LogInRequest, RefreshRequest, RevokeTokenRequest, SignUpRequest,
    ValidateTokenRequest, WatchAlertsRequest,
};
use streamgate::proto::{
    AdoptPartsRequest, CancelJobRequest, CancelTranscodeRequest, CreateVideoRequest,
    DeleteUploadRequest, DeleteVideoRequest, GetJobRequest, GetPlaylistRequest, GetSegmentRequest,
    GetThumbnailRequest, GetTranscodeStatusRequest, GetUploadRequest, GetVideoRequest,
    ListJobsRequest, ListProfilesRequest, ListUploadsRequest, ListVideosRequest,
    LocateOriginalRequest, ReadRangeRequest, StartSessionRequest, StopSessionRequest,
    SubmitJobRequest, TranscodeRequest, UpdateVideoRequest, WatchJobRequest,
};
use streamgate::registry::memory::MemoryRegistry;
use streamgate::services::metadata::MetadataServer;
use streamgate::services::streaming::StreamingServer;
use streamgate::services::transcoder::{Engine, TranscoderServer};
use streamgate::services::upload::UploadServer;
use streamgate::services::worker::WorkerServer;

/// Most frames handled per input.
pub const MAX_FRAMES: usize = 64;

/// Inputs one set of servers handles before it is replaced.
pub const REPLACE_EVERY: u32 = 1000;

/// The servers under test, replaced every [`REPLACE_EVERY`] inputs.
struct Servers {
    auth: streamgate::services::auth::AuthServer,
    cache: streamgate::services::cache::CacheServer,
    monitor: streamgate::services::monitor::server::MonitorServer,
    metadata: MetadataServer,
    upload: UploadServer,
    streaming: StreamingServer,
    transcoder: TranscoderServer,
    worker: WorkerServer,
}

async fn servers_new() -> Servers {
    let bus = Arc::new(MemoryBus::new());
    let blobs = Arc::new(MemoryBlobStore::new());
    // Transcodes are accepted and queued; no executor runs them.
    let (shared, _executor) = streamgate::services::transcoder::run::Shared::new(
        Engine::Model {
            duration: std::time::Duration::ZERO,
            failure_rate: 0.0,
        },
        streamgate::services::transcoder::engine::Context {
            blobs: blobs.clone(),
            work_root: std::env::temp_dir().join("streamgate-fuzz"),
        },
        bus.clone(),
        streamgate::middleware::metrics::Metrics::default(),
    );
    let (jobs, _) = streamgate::services::worker::store::Store::open(None, 0)
        .await
        .expect("in-memory SQLite");
    let jobs = streamgate::services::worker::Jobs::new(
        jobs,
        bus.clone(),
        streamgate::services::worker::jobs::Config::default(),
    );
    let store = streamgate::services::metadata::store::Store::open(None).expect("in-memory SQLite");
    let records = streamgate::services::upload::store::Store::open(None).expect("in-memory SQLite");
    let pool = ClientPool::new(
        Arc::new(MemoryRegistry::new()),
        PoolConfig::new(Keyring::generate("fuzz"), "fuzz"),
    );
    Servers {
        auth: streamgate::services::auth::AuthServer::new(
            streamgate::services::auth::store::Store::open(None).expect("in-memory SQLite"),
            streamgate::services::auth::token::Tokens::new(
                &streamgate::services::auth::Secret::random(),
            ),
            streamgate::services::auth::ServiceClients::default(),
        ),
        cache: streamgate::services::cache::CacheServer::new(
            streamgate::services::cache::state::Limits::default(),
        ),
        monitor: streamgate::services::monitor::server::MonitorServer::new(Arc::new(
            streamgate::services::monitor::state::Monitor::new(
                streamgate::services::monitor::Config::default(),
            ),
        )),
        metadata: MetadataServer::new(
            streamgate::services::metadata::catalog::Catalog::sqlite(store),
            bus.clone(),
            1 << 30,
        ),
        upload: UploadServer::new(
            streamgate::services::upload::records::Records::sqlite(records),
            blobs.clone(),
            bus.clone(),
            pool,
            1 << 30,
            streamgate::services::upload::sweep::Committing::default(),
        ),
        streaming: StreamingServer::new(blobs, bus, 1000),
        transcoder: TranscoderServer::new(shared),
        worker: WorkerServer::new(Arc::new(jobs)),
    }
}

/// Judges a streaming answer and its first few items.
async fn judge_stream<S, T>(method: &str, answer: Result<Response<S>, Status>)
where
    S: futures::Stream<Item = Result<T, Status>> + Unpin,
{
    match answer {
        Ok(res) => {
            let items: Vec<_> = res.into_inner().take(4).collect().await;
            for item in items {
                judge(method, item.map(Response::new));
            }
        }
        Err(status) => judge::<()>(method, Err(status)),
    }
}

async fn run_stream<M: Message + Default, S, T, F>(
    method: &str,
    bytes: &[u8],
    call: impl FnOnce(Request<M>) -> F,
) where
    F: Future<Output = Result<Response<S>, Status>>,
    S: futures::Stream<Item = Result<T, Status>> + Unpin,
{
    if let Ok(req) = M::decode(bytes) {
        judge_stream(method, call(Request::new(req)).await).await;
    }
}

/// Asserts what must hold for any answer.
fn judge<T>(method: &str, answer: Result<Response<T>, Status>) {
    if let Err(status) = answer {
        assert!(
            !matches!(status.code(), tonic::Code::Internal | tonic::Code::Unknown),
            "{method}: the server blamed itself: {status:?}"
        );
        assert!(
            !status.message().is_empty(),
            "{method}: a status without a message"
        );
    }
}

async fn run<M: Message + Default, T, F: Future<Output = Result<Response<T>, Status>>>(
    method: &str,
    bytes: &[u8],
    call: impl FnOnce(Request<M>) -> F,
) {
    if let Ok(req) = M::decode(bytes) {
        judge(method, call(Request::new(req)).await);
    }
}

async fn handle(s: &Servers, method: u8, bytes: &[u8]) {
    let (m, u, st, t, w) = (
        &s.metadata,
        &s.upload,
        &s.streaming,
        &s.transcoder,
        &s.worker,
    );
    match method % 42 {
        0 => run::<CreateVideoRequest, _, _>("CreateVideo", bytes, |r| m.create_video(r)).await,
        1 => run::<GetVideoRequest, _, _>("GetVideo", bytes, |r| m.get_video(r)).await,
        2 => run::<UpdateVideoRequest, _, _>("UpdateVideo", bytes, |r| m.update_video(r)).await,
        3 => run::<DeleteVideoRequest, _, _>("DeleteVideo", bytes, |r| m.delete_video(r)).await,
        4 => run::<ListVideosRequest, _, _>("ListVideos", bytes, |r| m.list_videos(r)).await,
        5 => run::<GetUploadRequest, _, _>("GetUpload", bytes, |r| u.get_upload(r)).await,
        6 => run::<DeleteUploadRequest, _, _>("DeleteUpload", bytes, |r| u.delete_upload(r)).await,
        7 => run::<ListUploadsRequest, _, _>("ListUploads", bytes, |r| u.list_uploads(r)).await,
        8 => {
            run_stream::<ReadRangeRequest, _, _, _>("ReadRange", bytes, |r| st.read_range(r)).await
        }
        9 => run::<GetPlaylistRequest, _, _>("GetPlaylist", bytes, |r| st.get_playlist(r)).await,
        10 => run::<GetSegmentRequest, _, _>("GetSegment", bytes, |r| st.get_segment(r)).await,
        11 => {
            run::<StartSessionRequest, _, _>("StartSession", bytes, |r| st.start_session(r)).await
        }
        12 => run::<StopSessionRequest, _, _>("StopSession", bytes, |r| st.stop_session(r)).await,
        13 => run::<TranscodeRequest, _, _>("Transcode", bytes, |r| t.transcode(r)).await,
        14 => {
            run::<GetTranscodeStatusRequest, _, _>("GetTranscodeStatus", bytes, |r| {
                t.get_transcode_status(r)
            })
            .await;
        }
        15 => {
            run::<CancelTranscodeRequest, _, _>("CancelTranscode", bytes, |r| {
                t.cancel_transcode(r)
            })
            .await;
        }
        16 => run::<ListProfilesRequest, _, _>("ListProfiles", bytes, |r| t.list_profiles(r)).await,
        17 => run::<SubmitJobRequest, _, _>("SubmitJob", bytes, |r| w.submit_job(r)).await,
        18 => run::<GetJobRequest, _, _>("GetJob", bytes, |r| w.get_job(r)).await,
        19 => run::<CancelJobRequest, _, _>("CancelJob", bytes, |r| w.cancel_job(r)).await,
        20 => run::<ListJobsRequest, _, _>("ListJobs", bytes, |r| w.list_jobs(r)).await,
        22 => upload_stream(u, bytes).await,
        23..=28 => auth(&s.auth, method % 42, bytes).await,
        29..=33 => cache(&s.cache, method % 42, bytes).await,
        34..=36 => monitor(&s.monitor, method % 42, bytes).await,
        37 => watch_alerts(&s.monitor, bytes).await,
        38 => {
            run::<GetThumbnailRequest, _, _>("GetThumbnail", bytes, |r| st.get_thumbnail(r)).await
        }
        39 => {
            run::<LocateOriginalRequest, _, _>("LocateOriginal", bytes, |r| st.locate_original(r))
                .await;
        }
        40 => {
            run::<GetSegmentRequest, _, _>("LocateSegment", bytes, |r| st.locate_segment(r)).await;
        }
        41 => {
            // As a user, so the parts' checks are reached (keys under
            // tus/fuzz/ may name blobs the stream above stored).
            if let Ok(req) = AdoptPartsRequest::decode(bytes) {
                let mut req = Request::new(req);
                req.metadata_mut().insert(
                    streamgate::services::upload::server::USER_ID_HEADER,
                    tonic::metadata::MetadataValue::from_static("fuzz"),
                );
                judge("AdoptParts", u.adopt_parts(req).await);
            }
        }
        _ => {
            // A watch streams until the job ends: judge its first update only.
            if let Ok(req) = WatchJobRequest::decode(bytes) {
                match w.watch_job(Request::new(req)).await {
                    Ok(res) => {
                        let first = res.into_inner().next().await;
                        if let Some(item) = first {
                            judge("WatchJob", item.map(Response::new));
                        }
                    }
                    Err(status) => judge::<()>("WatchJob", Err(status)),
                }
            }
        }
    }
}

async fn auth(a: &streamgate::services::auth::AuthServer, method: u8, bytes: &[u8]) {
    match method {
        23 => run::<SignUpRequest, _, _>("SignUp", bytes, |r| a.sign_up(r)).await,
        24 => run::<LogInRequest, _, _>("LogIn", bytes, |r| a.log_in(r)).await,
        25 => run::<RefreshRequest, _, _>("Refresh", bytes, |r| a.refresh(r)).await,
        26 => {
            run::<ValidateTokenRequest, _, _>("ValidateToken", bytes, |r| a.validate_token(r)).await
        }
        27 => {
            run::<IssueServiceTokenRequest, _, _>("IssueServiceToken", bytes, |r| {
                a.issue_service_token(r)
            })
            .await;
        }
        _ => run::<RevokeTokenRequest, _, _>("RevokeToken", bytes, |r| a.revoke_token(r)).await,
    }
}

async fn cache(c: &streamgate::services::cache::CacheServer, method: u8, bytes: &[u8]) {
    match method {
        29 => run::<CacheGetRequest, _, _>("Cache.Get", bytes, |r| c.get(r)).await,
        30 => run::<CacheSetRequest, _, _>("Cache.Set", bytes, |r| c.set(r)).await,
        31 => run::<CacheDeleteRequest, _, _>("Cache.Delete", bytes, |r| c.delete(r)).await,
        32 => {
            run::<CacheInvalidateRequest, _, _>("Cache.Invalidate", bytes, |r| c.invalidate(r))
                .await
        }
        _ => run::<CacheStatsRequest, _, _>("Cache.Stats", bytes, |r| c.stats(r)).await,
    }
}

async fn monitor(
    m: &streamgate::services::monitor::server::MonitorServer,
    method: u8,
    bytes: &[u8],
) {
    match method {
        34 => run::<GetStatusRequest, _, _>("GetStatus", bytes, |r| m.get_status(r)).await,
        35 => run::<ListAlertsRequest, _, _>("ListAlerts", bytes, |r| m.list_alerts(r)).await,
        _ => {
            run::<AcknowledgeAlertRequest, _, _>("AcknowledgeAlert", bytes, |r| {
                m.acknowledge_alert(r)
            })
            .await;
        }
    }
}

/// A watch of alerts waits for changes: judge what it has ready once the
/// runtime's other tasks had their turn (no timer: a wait per frame would
/// cost more than the rest of the input).
async fn watch_alerts(m: &streamgate::services::monitor::server::MonitorServer, bytes: &[u8]) {
    let Ok(req) = WatchAlertsRequest::decode(bytes) else {
        return;
    };
    match m.watch_alerts(Request::new(req)).await {
        Ok(res) => {
            let mut stream = res.into_inner();
            tokio::task::yield_now().await;
            if let Some(Some(item)) = stream.next().now_or_never() {
                judge("WatchAlerts", item.map(Response::new));
            }
        }
        Err(status) => judge::<()>("WatchAlerts", Err(status)),
    }
}

/// The client-streaming Upload: `bytes` holds `[len: u16 LE][UploadChunk]`
/// messages, sent gRPC-framed as one request body (a tail that is not a
/// whole frame is sent too, as a truncated stream).
async fn upload_stream(u: &UploadServer, bytes: &[u8]) {
    let mut body = Vec::with_capacity(bytes.len() + 64);
    let mut rest = bytes;
    while let [a, b, tail @ ..] = rest {
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        let (msg, next) = tail.split_at(len);
        body.push(0);
        body.extend_from_slice(&u32::try_from(msg.len()).unwrap_or(0).to_be_bytes());
        body.extend_from_slice(msg);
        rest = next;
    }
    body.extend_from_slice(rest);
    let stream = tonic::Streaming::new_request(
        tonic_prost::ProstDecoder::<streamgate::proto::UploadChunk>::default(),
        http_body_util::Full::new(bytes::Bytes::from(body)),
        None,
        Some(4 << 20),
    );
    judge("Upload", u.upload(Request::new(stream)).await);
}

/// The runtime and the current servers, with the inputs they handled.
struct Harness {
    runtime: tokio::runtime::Runtime,
    servers: Option<(Servers, u32)>,
    replace_every: u32,
}

thread_local! {
    /// One per thread (libFuzzer runs inputs on one; `cargo test` replays
    /// on several).
    static HARNESS: std::cell::RefCell<Harness> = std::cell::RefCell::new(Harness {
        runtime: runtime(),
        servers: None,
        replace_every: if std::env::var_os("STREAMGATE_FUZZ_FRESH").is_some() {
            1
        } else {
            REPLACE_EVERY
        },
    });
}

/// The harness's runtime. Under cargo fuzz (whose workspace turns on
/// tokio's `test-util`) its clock is paused: whenever every task waits, it
/// jumps to the next timer, so the handlers' polls and timeouts (a job
/// watch polls, for one) cost no wall time. Nothing here waits on the
/// outside world (no socket; SQLite work runs inline, as `rt::blocking`
/// does in fuzzing builds), so no timer fires early. `cargo test` replays
/// on real time.
fn runtime() -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    #[cfg(fuzzing)]
    builder.start_paused(true);
    builder.build().expect("a runtime")
}

/// Splits `data` into frames and handles each.
pub fn grpc_requests(data: &[u8]) {
    HARNESS.with_borrow_mut(|h| {
        let Harness {
            runtime,
            servers,
            replace_every,
        } = h;
        runtime.block_on(async {
            if servers.as_ref().is_none_or(|(_, n)| *n >= *replace_every) {
                // The old set (and what it spawned) goes first.
                *servers = None;
                *servers = Some((servers_new().await, 0));
            }
            let (s, n) = servers.as_mut().expect("just built");
            *n += 1;
            handle_input(s, data).await;
        });
    });
}

async fn handle_input(s: &Servers, data: &[u8]) {
    // A valid video to aim updates and reads at (ALREADY_EXISTS after the
    // first input of a set, unless an input deleted it).
    let seed = CreateVideoRequest {
        video_id: "v1".into(),
        owner_id: "u1".into(),
        title: "t".into(),
        content_type: "video/mp4".into(),
        size_bytes: 1,
        sha256_hex: "0".repeat(64),
        ..CreateVideoRequest::default()
    };
    judge("seed", s.metadata.create_video(Request::new(seed)).await);
    let mut rest = data;
    for _ in 0..MAX_FRAMES {
        let [method, a, b, tail @ ..] = rest else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([*a, *b])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        handle(s, *method, frame).await;
        rest = next;
    }
}
