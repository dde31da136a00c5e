//! Streaming's media port in the simulator (issue #19 item 5: "the madsim
//! build keeps a model of it"). Under madsim the port is served by the
//! simulated transport, which sends each response's body where production
//! sends the file by `sendfile(2)`; the swarm's blobs are in memory, so
//! the bytes come through ReadRange, the streamed path of a store with no
//! local files. A client on another node plays a signed URL of the
//! original (a range, a HEAD, a 304) from a node running streaming with its
//! media port, metadata and the cache; forged and expired grants get 403.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use madsim::runtime::Handle;
use streamgate::blob::BlobStore as _;
use streamgate::blob::memory::MemoryBlobStore;
use streamgate::bus::memory::MemoryBus;
use streamgate::kernel::{Kernel, Plugin, Seams};
use streamgate::proto::CreateVideoRequest;
use streamgate::registry::memory::MemoryRegistry;
use streamgate::rt::{self, transport};
use streamgate::services::gateway::grant::{Grants, Scope};
use streamgate::services::streaming::MediaPort;
use streamgate::services::{Common, ServiceConfig, ServiceKind, ServicePlugin};
use tower::ServiceExt as _;

const NODE: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 8, 1));
const MEDIA: SocketAddr = SocketAddr::new(NODE, 9094);
const VIDEO: &str = "simvideo";

/// `GET` (or `method`) of `path` on the media port with `headers`: the
/// status, the headers and the body.
async fn fetch(
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let mut req = http::Request::new(tonic::body::Body::empty());
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().expect("a path");
    for (name, value) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            http::HeaderValue::from_str(value).expect("value"),
        );
    }
    let res = transport::channel(MEDIA)
        .oneshot(req)
        .await
        .expect("the media port answers");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("the body").to_bytes();
    (parts.status, parts.headers, body)
}

#[madsim::test]
async fn a_signed_url_plays_from_the_media_port_in_the_simulator() {
    let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let blobs = MemoryBlobStore::new();
    let mut w = blobs.create().await.expect("a writer");
    w.write(&data).await.expect("write");
    w.commit(&format!("originals/{VIDEO}"))
        .await
        .expect("commit");

    let node = {
        let blobs = blobs.clone();
        Handle::current()
            .create_node()
            .name("streaming")
            .ip(NODE)
            .init(move || {
                let blobs = blobs.clone();
                async move {
                    let plugins: Vec<Box<dyn Plugin>> = [
                        ServiceKind::Streaming,
                        ServiceKind::Metadata,
                        ServiceKind::Cache,
                    ]
                    .into_iter()
                    .map(|kind| {
                        let mut config = ServiceConfig::new(kind);
                        if let ServiceConfig::Streaming(c) = &mut config {
                            c.media = Some(MediaPort {
                                listen: MEDIA,
                                http: streamgate::services::gateway::Config::default(),
                            });
                        }
                        let common = Common {
                            check_interval: Duration::from_secs(1),
                            ..Common::new(kind, NODE)
                        };
                        Box::new(ServicePlugin::new(common, config)) as Box<dyn Plugin>
                    })
                    .collect();
                    let seams = Seams {
                        bus: Arc::new(MemoryBus::new()),
                        registry: Arc::new(MemoryRegistry::new()),
                        blobs: Arc::new(blobs),
                    };
                    let kernel =
                        Kernel::start_with(seams, crate::common::pool("streaming"), plugins)
                            .await
                            .expect("kernel starts");
                    kernel
                        .pool()
                        .metadata()
                        .await
                        .expect("metadata")
                        .create_video(CreateVideoRequest {
                            video_id: VIDEO.into(),
                            owner_id: "owner".into(),
                            title: "sim".into(),
                            content_type: "video/mp4".into(),
                            size_bytes: data_len(),
                            sha256_hex: "0".repeat(64),
                            ..CreateVideoRequest::default()
                        })
                        .await
                        .expect("the video's record");
                    std::future::pending::<()>().await;
                }
            })
            .build()
    };
    let _ = node;
    let client = Handle::current()
        .create_node()
        .name("player")
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 8, 2)))
        .build();
    client
        .spawn(async move {
            rt::sleep(Duration::from_secs(2)).await;
            let grants = Grants::new(&crate::common::keys());
            let grant = grants.mint(VIDEO, Scope::Owner, rt::unix_ms() + 60_000);
            let path = format!("/v1/play/{grant}/original");
            let (status, headers, body) =
                fetch(http::Method::GET, &path, &[("range", "bytes=1000-1999")]).await;
            assert_eq!(status, 206, "{body:?}");
            assert_eq!(&body[..], &data[1000..2000]);
            assert_eq!(
                headers["content-range"],
                format!("bytes 1000-1999/{}", data.len()).as_str()
            );
            let (status, headers, body) = fetch(http::Method::HEAD, &path, &[]).await;
            assert_eq!((status.as_u16(), body.len()), (200, 0));
            let tag = headers["etag"].to_str().expect("ascii").to_owned();
            let (status, _, _) = fetch(http::Method::GET, &path, &[("if-none-match", &tag)]).await;
            assert_eq!(status, 304);
            let forged = grant.replacen(VIDEO, "another", 1);
            let (status, _, body) = fetch(
                http::Method::GET,
                &format!("/v1/play/{forged}/original"),
                &[],
            )
            .await;
            assert_eq!(status, 403, "{body:?}");
            let short = grants.mint(VIDEO, Scope::Owner, rt::unix_ms() + 1000);
            rt::sleep(Duration::from_secs(2)).await;
            let (status, _, body) = fetch(
                http::Method::GET,
                &format!("/v1/play/{short}/original"),
                &[],
            )
            .await;
            assert_eq!(status, 403, "{body:?}");
            assert!(String::from_utf8_lossy(&body).contains("expired"));
        })
        .await
        .expect("the player");
}

/// The original's size.
fn data_len() -> u64 {
    3 << 20
}
