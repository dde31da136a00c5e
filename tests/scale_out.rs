//! Scale-out for real: two instances of every one of the nine services as
//! separate processes, each with a data dir of its own (no shared file
//! system), on a shared PostgreSQL (a fresh schema: metadata's catalog,
//! upload's records, auth's accounts and revocations), S3-compatible
//! object storage (Garage, which ci/garage starts: a fresh prefix of its
//! bucket, every blob) and the real NATS server (bus, registry, the
//! workers' JetStream job queue). Uploads go in through one gateway and
//! play through the other; one instance each of metadata, auth, upload and
//! worker is SIGKILLed right after two uploads were acknowledged (their
//! events and transcode jobs in flight), and two more uploads go in while
//! they are gone. Then every acknowledged upload is ready and plays through
//! the other gateway (master playlist, media playlist, every segment, a
//! byte range of the original), the catalog lists each exactly once, an
//! account made before the kill signs in on the surviving auth instance,
//! and a token revoked through the killed instance stays refused. Fails,
//! never skips, without NATS, PostgreSQL, Garage or ffmpeg.
#![cfg(not(madsim))]

#[path = "cluster/support.rs"]
#[allow(dead_code)]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use streamgate::blob::BlobStore as _;
use streamgate::blob::s3::S3BlobStore;
use streamgate::middleware::auth::AttachLayer;
use streamgate::node::read_keyring;
use streamgate::proto::RevokeTokenRequest;
use streamgate::proto::auth_service_client::AuthServiceClient;
use streamgate::rt;
use streamgate::services::{ServiceKind, media};
use streamgate_testkit::pg::Schema;
use streamgate_testkit::process::Signal;
use streamgate_testkit::scratch::Scratch;
use support::{Gateway, Proc, Reply, nats_url};
use tower::Layer as _;

const PASSWORD: &str = "scale-out-pa55word";
/// How long a video may take to be ready once acknowledged (two of them
/// wait for a killed worker's lease to run out).
const READY_WITHIN: Duration = Duration::from_secs(180);

/// `method path` until it gets an answer other than 502/503/504 or no
/// answer at all (an instance just killed, its breaker not yet open), for
/// at most 30 s; the answer.
async fn send_through(
    gw: &Gateway,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let until = rt::now() + Duration::from_secs(30);
    loop {
        let reply = gw
            .try_send(method.clone(), path, headers, body.to_vec())
            .await;
        match reply {
            Some(r) if !matches!(r.status, 502..=504) => return r,
            other => {
                assert!(
                    rt::now() < until,
                    "{method} {path} on {} failed for 30 s: {:?}",
                    gw.addr,
                    other.map(|r| (r.status, r.text()))
                );
                rt::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// Uploads `clip` through `gw` until it is acknowledged (201); the video
/// id and how many attempts were refused before.
async fn upload(gw: &Gateway, clip: &[u8], title: &str) -> (String, u32) {
    let path = format!("/v1/videos?name=clip.mp4&title={title}");
    let mut refused = 0;
    loop {
        let r = send_through(
            gw,
            http::Method::POST,
            &path,
            &[("content-type", "video/mp4")],
            clip,
        )
        .await;
        if r.status == 201 {
            let id = r.json()["video_id"].as_str().expect("video_id").to_owned();
            return (id, refused);
        }
        // A 500 from an upload instance killed mid-request, say: not
        // acknowledged, so the user sends it again.
        refused += 1;
        assert!(
            refused < 10,
            "upload refused 10 times: {} {}",
            r.status,
            r.text()
        );
        rt::sleep(Duration::from_millis(500)).await;
    }
}

/// Polls `id` through `gw` until it is ready.
async fn ready(gw: &Gateway, id: &str) {
    let until = rt::now() + READY_WITHIN;
    loop {
        let r = send_through(gw, http::Method::GET, &format!("/v1/videos/{id}"), &[], &[]).await;
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        match r.json()["state"].as_str() {
            Some("ready") => return,
            Some("failed") => panic!("{id} failed: {}", r.text()),
            _ => {}
        }
        if rt::now() > until {
            let job = gw.get(&format!("/v1/videos/{id}/job"), &[]).await;
            panic!(
                "{id} not ready within {READY_WITHIN:?}; job: {}",
                job.text()
            );
        }
        rt::sleep(Duration::from_millis(250)).await;
    }
}

/// Plays `id` through `gw`: the master playlist, each media playlist and
/// every one of its segments, and a byte range of the original, which must
/// be `clip`'s bytes.
async fn plays(gw: &Gateway, id: &str, clip: &[u8]) {
    let get = |path: String| async move {
        let r = send_through(gw, http::Method::GET, &path, &[], &[]).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r
    };
    let master = get(format!("/v1/videos/{id}/hls/master.m3u8")).await.text();
    assert!(master.starts_with("#EXTM3U"), "{master}");
    let media: Vec<&str> = master
        .lines()
        .filter(|l| l.ends_with("index.m3u8"))
        .collect();
    assert!(!media.is_empty(), "a media playlist in {master}");
    for playlist in media {
        let text = get(format!("/v1/videos/{id}/hls/{playlist}")).await.text();
        let rendition = playlist.trim_end_matches("index.m3u8");
        let segments: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert!(!segments.is_empty(), "segments in {text}");
        for segment in segments {
            let seg = get(format!("/v1/videos/{id}/hls/{rendition}{segment}")).await;
            assert_eq!(seg.body.first(), Some(&0x47), "an MPEG-TS segment");
        }
    }
    let part = send_through(
        gw,
        http::Method::GET,
        &format!("/v1/videos/{id}/original"),
        &[("range", "bytes=100-1099")],
        &[],
    )
    .await;
    assert_eq!(part.status, 206, "{}", part.text());
    assert_eq!(&part.body[..], &clip[100..1100], "the original's bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_every_service_on_postgres_s3_and_nats_survive_sigkills() {
    support::require_tools();
    let run = &rt::random_hex128()[..10];
    let scratch = Scratch::new("scale-out");
    let dir = scratch.path();
    let bucket = format!("sgtest_scale_{run}");
    let prefix = format!("sgscale{run}");

    let registry = support::nats_registry(&bucket).await;
    let schema = Schema::create("sg_scale_out", None).await;
    let s3 = streamgate_testkit::s3::garage(&prefix);

    // What the instances share: the key file, the auth secret, a config
    // file; PostgreSQL, the bucket and NATS. Nothing on disk.
    let key_file = dir.join("service.keys");
    std::fs::write(&key_file, format!("k1 {}\n", rt::random_hex128().repeat(2))).expect("keys");
    let secret_file = dir.join("auth.secret");
    std::fs::write(&secret_file, rt::random_hex128().repeat(2)).expect("secret");
    let config = dir.join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "nats-url = {url:?}\nregistry-bucket = {bucket:?}\njobs-name = \"{bucket}_jobs\"\n\
             bus-subject-prefix = {prefix:?}\nservice-key-file = {keys:?}\nallow-plaintext = true\n\
             auth-secret-file = {secret:?}\nlog-filter = \"info\"\nmax-upload-bytes = 8388608\n",
            url = nats_url(),
            keys = key_file,
            secret = secret_file,
        ),
    )
    .expect("config");
    let blob_store = format!("s3://{}/{prefix}", s3.bucket);
    let endpoint = s3.endpoint.clone().expect("Garage's endpoint");
    let shared: Vec<(&str, &str)> = vec![
        ("STREAMGATE_CONFIG", config.to_str().expect("utf-8 path")),
        ("STREAMGATE_DATABASE_URL", &schema.url),
        ("STREAMGATE_BLOB_STORE", &blob_store),
        ("STREAMGATE_S3_ENDPOINT", &endpoint),
        ("STREAMGATE_S3_REGION", &s3.region),
        ("AWS_ACCESS_KEY_ID", &s3.access_key_id),
        ("AWS_SECRET_ACCESS_KEY", &s3.secret_access_key),
    ];
    let clip = support::test_clip(dir, 2);

    // Two of each, each with a data dir of its own.
    let mut procs: BTreeMap<(ServiceKind, u32), Proc> = BTreeMap::new();
    for kind in ServiceKind::ALL {
        for instance in [1, 2] {
            let data = dir.join("data").join(format!("{}-{instance}", kind.name()));
            std::fs::create_dir_all(&data).expect("data dir");
            let data = data.to_str().expect("utf-8 path").to_owned();
            let mut env = shared.clone();
            env.push(("STREAMGATE_DATA_DIR", &data));
            procs.insert(
                (kind, instance),
                Proc::start(kind, instance, &env, dir).await,
            );
        }
    }
    let started = rt::now();
    for kind in ServiceKind::ALL {
        while registry
            .discover(kind.name())
            .await
            .expect("discover")
            .len()
            < 2
        {
            assert!(
                rt::now() - started < Duration::from_secs(10),
                "two {kind} registered within 10 s"
            );
            rt::sleep(Duration::from_millis(50)).await;
        }
    }

    let gateway = |instance: u32| Gateway {
        http: support::http(),
        addr: procs[&(ServiceKind::ApiGateway, instance)].addr,
        token: None,
    };
    let (mut gw1, mut gw2) = (gateway(1), gateway(2));
    let creds = serde_json::json!({"email": "scale@example.com", "password": PASSWORD});
    support::sign_up(&gw1, &creds).await;
    let token = support::log_in(&gw2, &creds).await;
    gw1.token = Some(token.clone());
    gw2.token = Some(token);

    // A second session, revoked through auth-1 itself (which is killed
    // next): its refusal must outlive the instance that recorded it.
    let doomed = support::log_in(&gw1, &creds).await;
    let keys = read_keyring(&key_file).expect("keys");
    let mut auth1 = AuthServiceClient::new(
        AttachLayer::new(&keys, "api-gateway")
            .layer(rt::transport::channel(procs[&(ServiceKind::Auth, 1)].addr)),
    );
    auth1
        .revoke_token(RevokeTokenRequest {
            token: doomed.clone(),
            token_id: String::new(),
        })
        .await
        .expect("auth-1 revokes the token");

    // Two uploads, one through each gateway; then SIGKILL one instance each
    // of metadata, auth, upload and worker while their events and jobs are
    // in flight.
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for (gw, title) in [(&gw1, "one"), (&gw2, "two")] {
        let (id, r) = upload(gw, &clip, title).await;
        acknowledged.push((id, title));
        refused += r;
    }
    for kind in [
        ServiceKind::Metadata,
        ServiceKind::Auth,
        ServiceKind::Upload,
        ServiceKind::Worker,
    ] {
        let victim = procs.get_mut(&(kind, 1)).expect("instance 1");
        victim.process.signal(Signal::KILL);
        victim.process.exited(Duration::from_secs(5)).await;
    }
    for (gw, title) in [(&gw2, "three"), (&gw1, "four")] {
        let (id, r) = upload(gw, &clip, title).await;
        acknowledged.push((id, title));
        refused += r;
    }

    // Every acknowledged upload ends ready and plays through the gateway
    // that did not take it.
    for (i, (id, title)) in acknowledged.iter().enumerate() {
        let other = if i % 2 == 0 { &gw2 } else { &gw1 };
        ready(other, id).await;
        let video = other.get(&format!("/v1/videos/{id}"), &[]).await.json();
        assert_eq!(video["title"], *title, "{video}");
        assert_eq!(video["size_bytes"].as_u64(), Some(clip.len() as u64));
        plays(other, id, &clip).await;
    }

    // The blobs are in the bucket, none on any instance's disk (each data
    // dir holds SQLite files at most: the job queue and the caches).
    let objects = S3BlobStore::new(&s3).expect("the bucket");
    for (id, _) in &acknowledged {
        assert_eq!(
            objects
                .size(&media::original_key(id))
                .await
                .expect("the original in S3"),
            clip.len() as u64
        );
        assert!(
            objects.size(&media::master_key(id)).await.is_ok(),
            "{id}'s master playlist in S3"
        );
    }
    let mut on_disk = Vec::new();
    let mut stack = vec![dir.join("data")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("data dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if acknowledged
                .iter()
                .any(|(id, _)| path.to_string_lossy().contains(id.as_str()))
            {
                on_disk.push(path);
            }
        }
    }
    assert!(
        on_disk.is_empty(),
        "blobs on an instance's disk: {on_disk:?}"
    );

    // The catalog holds each acknowledged video once; an upload attempt
    // refused before its acknowledgement may have left at most one more
    // each (none was refused in most runs).
    let list = send_through(&gw1, http::Method::GET, "/v1/videos?owner=me", &[], &[]).await;
    assert_eq!(list.status, 200, "{}", list.text());
    let ids: Vec<String> = list.json()["videos"]
        .as_array()
        .expect("videos")
        .iter()
        .map(|v| v["id"].as_str().expect("id").to_owned())
        .collect();
    for (id, _) in &acknowledged {
        assert_eq!(
            ids.iter().filter(|i| *i == id).count(),
            1,
            "{id} once in {ids:?}"
        );
    }
    assert!(
        ids.len() <= acknowledged.len() + refused as usize,
        "{} listed, {} acknowledged, {refused} refused attempts: {ids:?}",
        ids.len(),
        acknowledged.len()
    );

    // Accounts and revocations live in PostgreSQL, not in an instance:
    // with auth-1 gone, the account signs in on auth-2, and the token
    // auth-1 revoked stays refused.
    let again = send_through(
        &gw2,
        http::Method::POST,
        "/v1/auth/login",
        &[("content-type", "application/json")],
        creds.to_string().as_bytes(),
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.text());
    for addr in [gw1.addr, gw2.addr] {
        let revoked = Gateway {
            http: support::http(),
            addr,
            token: Some(doomed.clone()),
        };
        let r = send_through(&revoked, http::Method::GET, "/v1/videos", &[], &[]).await;
        assert_eq!(r.status, 401, "a revoked token: {}", r.text());
    }
    eprintln!(
        "scale-out: {} uploads acknowledged ({refused} attempts refused around the SIGKILLs), \
         all ready and played through the other gateway",
        acknowledged.len()
    );
    schema.drop().await;
}
