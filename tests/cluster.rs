//! Microservices mode end to end: the nine binaries as separate processes
//! on loopback (two streaming instances, two gateways), the real NATS server
//! as bus and registry (a fresh KV bucket, a subject prefix of this run's
//! own), one shared data dir and key file, options from a config file under
//! the environment and flags. A video goes in and plays back; a streaming
//! instance is SIGKILLed and playback goes on; SIGTERM takes a process out
//! of the registry before it exits. Outside tools check it too: a stock gRPC
//! health probe and a NATS subscriber, in Python (`ci/probe/`, the venv of
//! `ci/deps`). The test fails, never skips, when those tools are missing.
#![cfg(not(madsim))]

#[path = "cluster/checks.rs"]
mod checks;
#[path = "cluster/support.rs"]
mod support;

use std::process::Command;
use std::time::Duration;

use checks::{check_events, check_log, read_tap};
use streamgate::client::{ClientPool, PoolConfig};
use streamgate::node::read_keyring;
use streamgate::proto::cache_service_client::CacheServiceClient;
use streamgate::proto::{CacheGetRequest, CacheSetRequest};
use streamgate::rt;
use streamgate::services::ServiceKind;
use streamgate_testkit::process::{Process, Signal};
use streamgate_testkit::scratch::Scratch;
use support::{
    Gateway, Proc, fetch_until_ok, hls_paths, nats_url, probe_script, python, wait_job_succeeded,
    wait_ready,
};

const PASSWORD: &str = "cluster-pa55word";

/// Elapsed times of the phases, printed at the end.
struct Phases(Vec<(&'static str, Duration)>, rt::Instant);

impl Phases {
    fn mark(&mut self, name: &'static str) {
        self.0.push((name, rt::now() - self.1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nine_binaries_play_a_video_survive_a_crash_and_leave_on_sigterm() {
    support::require_tools();
    let mut phases = Phases(Vec::new(), rt::now());
    let run = &rt::random_hex128()[..10];
    let scratch = Scratch::new("cluster");
    let dir = scratch.path();
    let bucket = format!("sgtest_cluster_{run}");
    let prefix = format!("sgtest{run}");

    let registry = support::nats_registry(&bucket).await;

    // What the cluster shares: the key file, the auth secret, a config file.
    let key_hex = rt::random_hex128().repeat(2);
    let key_file = dir.join("service.keys");
    std::fs::write(&key_file, format!("k1 {key_hex}\n")).expect("keys");
    let auth_secret = format!("{}{}", rt::random_hex128(), rt::random_hex128());
    let secret_file = dir.join("auth.secret");
    std::fs::write(&secret_file, &auth_secret).expect("secret");
    let config = dir.join("cluster.toml");
    std::fs::write(
        &config,
        format!(
            "data-dir = {data:?}\nnats-url = {url:?}\nregistry-bucket = {bucket:?}\n\
             jobs-name = \"{bucket}_jobs\"\n\
             bus-subject-prefix = {prefix:?}\nservice-key-file = {keys:?}\nallow-plaintext = true\n\
             auth-secret-file = {secret:?}\nlog-format = \"json\"\nlog-filter = \"info\"\n\
             max-upload-bytes = 1024\n",
            data = dir.join("data"),
            url = nats_url(),
            keys = key_file,
            secret = secret_file,
        ),
    )
    .expect("config");
    let config_path = config.to_str().expect("utf-8 path");
    // The environment beats the file's 1 KiB upload limit.
    let env = [
        ("STREAMGATE_CONFIG", config_path),
        ("STREAMGATE_MAX_UPLOAD_BYTES", "8388608"),
    ];
    let clip = support::test_clip(dir, 2);

    // (service, instance): one of each, a second streaming and gateway.
    let mut layout: Vec<(ServiceKind, u32)> = ServiceKind::ALL.iter().map(|&k| (k, 1)).collect();
    layout.push((ServiceKind::Streaming, 2));
    layout.push((ServiceKind::ApiGateway, 2));
    let mut procs: Vec<Proc> = Vec::with_capacity(layout.len());
    for &(kind, instance) in &layout {
        procs.push(Proc::start(kind, instance, &env, dir).await);
    }
    phases.mark("11 processes SERVING");
    let started = rt::now();
    for kind in ServiceKind::ALL {
        let want = layout.iter().filter(|(k, _)| *k == kind).count();
        while registry
            .discover(kind.name())
            .await
            .expect("discover")
            .len()
            < want
        {
            assert!(
                rt::now() - started < Duration::from_secs(5),
                "{want} {kind} registered within 5 s"
            );
            rt::sleep(Duration::from_millis(50)).await;
        }
    }
    // procs[i] runs layout[i].
    let index = |kind: ServiceKind, instance: u32| {
        layout
            .iter()
            .position(|&l| l == (kind, instance))
            .expect("in the layout")
    };

    // A stock health probe from outside sees every process SERVING.
    let addrs: Vec<String> = procs.iter().map(|p| p.addr.to_string()).collect();
    let probe = Command::new(python())
        .arg(probe_script("health_probe.py"))
        .args(&addrs)
        .output()
        .expect("python runs");
    let said = String::from_utf8_lossy(&probe.stdout);
    assert!(probe.status.success(), "health_probe.py: {said}");
    assert_eq!(said.matches(" SERVING").count(), procs.len(), "{said}");

    // A NATS subscriber from outside taps the cluster's subjects.
    let mut tap_cmd = Command::new(python());
    tap_cmd
        .arg(probe_script("nats_tap.py"))
        .args(["--url", &nats_url(), "--seconds", "120"])
        .arg(format!("{prefix}.>"));
    let mut tap = Process::spawn("nats_tap", tap_cmd, dir);
    let tap_out = tap.stdout_path().to_owned();
    for _ in 0..100 {
        if std::fs::read_to_string(&tap_out).is_ok_and(|t| t.starts_with("ready")) {
            break;
        }
        rt::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        std::fs::read_to_string(&tap_out).is_ok_and(|t| t.starts_with("ready")),
        "nats_tap.py subscribed within 5 s"
    );
    phases.mark("outside probes ready");

    // Over HTTP, as a user: no token, 401; sign up on one gateway, log in
    // on the other.
    let mut gw1 = Gateway {
        http: support::http(),
        addr: procs[index(ServiceKind::ApiGateway, 1)].addr,
        token: None,
    };
    let mut gw2 = Gateway {
        http: support::http(),
        addr: procs[index(ServiceKind::ApiGateway, 2)].addr,
        token: None,
    };
    let denied = gw1.get("/v1/videos", &[]).await;
    assert_eq!(denied.status, 401, "{}", denied.text());
    assert_eq!(denied.headers["www-authenticate"], "Bearer");
    let creds = serde_json::json!({"email": "cluster@example.com", "password": PASSWORD});
    support::sign_up(&gw1, &creds).await;
    let token = support::log_in(&gw2, &creds).await;
    gw1.token = Some(token.clone());
    gw2.token = Some(token);

    let created = gw1
        .try_send(
            http::Method::POST,
            "/v1/videos?name=clip.mp4&title=Cluster%20clip",
            &[("content-type", "video/mp4")],
            clip.clone(),
        )
        .await
        .expect("the gateway answers the upload");
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["video_id"]
        .as_str()
        .expect("video_id")
        .to_owned();
    phases.mark("signed up, uploaded");
    let video = wait_ready(&gw2, &id).await;
    phases.mark("transcoded (ready)");
    assert_eq!(video["title"], "Cluster clip");
    // The transcode job went through the JetStream queue workers share.
    let nats = async_nats::connect(nats_url()).await.expect("NATS");
    let jobs = async_nats::jetstream::new(nats)
        .get_key_value(format!("{bucket}_jobs"))
        .await
        .expect("the workers' job bucket");
    let key = streamgate::services::media::transcode_job_id(&id);
    let until = rt::now() + Duration::from_secs(10);
    loop {
        let value = jobs.get(key.as_str()).await.expect("read the job");
        let record: serde_json::Value =
            serde_json::from_slice(&value.expect("the job's record")).expect("JSON");
        if record["state"] == "succeeded" {
            break;
        }
        assert!(rt::now() < until, "the job did not succeed: {record}");
        rt::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(video["size_bytes"].as_u64(), Some(clip.len() as u64));

    // Each process's own metrics on its own admin listener: the upload
    // service counted the clip's bytes, the gateway that took it the 201
    // by route template; the other gateway saw no upload.
    let metrics = |proc: &Proc| {
        let admin = Gateway {
            http: gw1.http.clone(),
            addr: proc.admin,
            token: None,
        };
        async move {
            let reply = admin.get("/metrics", &[]).await;
            assert_eq!(reply.status, 200);
            String::from_utf8(reply.body.to_vec()).expect("UTF-8")
        }
    };
    let admins: std::collections::BTreeSet<_> = procs.iter().map(|p| p.admin).collect();
    assert_eq!(admins.len(), procs.len(), "one admin listener per process");
    let upload_metrics = metrics(&procs[index(ServiceKind::Upload, 1)]).await;
    let line = format!("streamgate_upload_bytes_total {}", clip.len());
    assert!(
        upload_metrics.contains(&line),
        "{line} in\n{upload_metrics}"
    );
    let created_201 = "http_server_request_duration_seconds_count{http_request_method=\"POST\",\
                       http_route=\"/v1/videos\",http_response_status_code=\"201\"} 1";
    let gw1_metrics = metrics(&procs[index(ServiceKind::ApiGateway, 1)]).await;
    assert!(gw1_metrics.contains(created_201), "{gw1_metrics}");
    let gw2_metrics = metrics(&procs[index(ServiceKind::ApiGateway, 2)]).await;
    assert!(
        !gw2_metrics.contains("http_route=\"/v1/videos\",http_response_status_code=\"201\""),
        "{gw2_metrics}"
    );

    // A byte range of the original, and HLS, through both gateways.
    let part = gw2
        .get(
            &format!("/v1/videos/{id}/original"),
            &[("range", "bytes=100-1099")],
        )
        .await;
    assert_eq!(part.status, 206, "{}", part.text());
    assert_eq!(&part.body[..], &clip[100..1100]);
    let hls = hls_paths(&gw1, &id).await;
    for path in &hls {
        let r = gw2.get(path, &[]).await;
        assert_eq!(r.status, 200, "{path} via the second gateway");
    }
    let job = wait_job_succeeded(&gw1, &id).await;

    // The subscriber saw the pipeline's events, each in its envelope, on
    // its subject.
    tap.signal(Signal::TERM);
    tap.exited(Duration::from_secs(5)).await;
    let seen = read_tap(&tap_out);
    check_events(&seen, &prefix, &id, &job);
    phases.mark("played back, events checked");

    // Kill -9 one streaming instance: playback goes on (a few failures are
    // allowed while its breaker trips and it leaves the registry).
    let victim = index(ServiceKind::Streaming, 1);
    procs[victim].process.signal(Signal::KILL);
    procs[victim].process.exited(Duration::from_secs(5)).await;
    let mut failures = Vec::new();
    for round in 0..12 {
        for path in &hls {
            failures.extend(fetch_until_ok(&gw1, path).await);
        }
        if round >= 6 {
            assert!(failures.is_empty(), "failures after recovery: {failures:?}");
        } else if round == 5 {
            eprintln!(
                "playback after the SIGKILL: {} failed requests before recovery: {failures:?}",
                failures.len()
            );
            failures.clear();
            // Past the registration's TTL (4 s) the dead instance is gone.
            rt::sleep(Duration::from_secs(4)).await;
        }
    }
    phases.mark("playback survived a SIGKILL");

    // Service tokens: without one, UNAUTHENTICATED; with the cluster's keys, OK.
    let cache_addr = procs[index(ServiceKind::Cache, 1)].addr;
    let mut bare = CacheServiceClient::new(rt::transport::channel(cache_addr));
    let refused = bare
        .get(CacheGetRequest { key: "k".into() })
        .await
        .expect_err("no service token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    let pool = ClientPool::new(
        registry.clone(),
        PoolConfig::new(read_keyring(&key_file).expect("keys"), "cluster-test"),
    );
    pool.cache()
        .await
        .expect("cache discovered")
        .set(CacheSetRequest {
            key: "k".into(),
            value: vec![1],
            ttl_ms: 0,
        })
        .await
        .expect("a call with a service token");

    // SIGTERM: the second gateway leaves the registry before it exits.
    let leaving = index(ServiceKind::ApiGateway, 2);
    procs[leaving].process.signal(Signal::TERM);
    let exit = procs[leaving].process.exited(Duration::from_secs(15)).await;
    assert!(exit.success(), "a graceful stop exits 0: {exit}");
    let left = registry.discover("api-gateway").await.expect("discover");
    assert_eq!(left.len(), 1, "gone from the registry at once: {left:?}");
    assert_eq!(left[0].port, gw1.addr.port());
    assert_eq!(gw1.get("/v1/videos", &[]).await.status, 200);
    phases.mark("SIGTERM'd gateway deregistered");

    // Every other process stops gracefully too, and leaves the registry.
    let running: Vec<usize> = (0..procs.len())
        .filter(|&i| i != victim && i != leaving)
        .collect();
    for &i in &running {
        procs[i].process.signal(Signal::TERM);
    }
    for &i in &running {
        let exit = procs[i].process.exited(Duration::from_secs(15)).await;
        assert!(
            exit.success(),
            "{} exits 0 on SIGTERM: {exit}",
            procs[i].name()
        );
    }
    for kind in ServiceKind::ALL {
        let left = registry.discover(kind.name()).await.expect("discover");
        assert!(left.is_empty(), "{kind} deregistered: {left:?}");
    }
    phases.mark("all stopped, registry empty");

    // JSON logs, each line naming its service; no password or secret in them.
    for p in &procs {
        check_log(
            p.process.log_path(),
            p.kind,
            &[PASSWORD, &auth_secret, &key_hex[..32]],
        );
    }
    let mut last = Duration::ZERO;
    for (name, at) in &phases.0 {
        eprintln!(
            "{:>6.1} s (+{:.1} s) {name}",
            at.as_secs_f64(),
            (*at - last).as_secs_f64()
        );
        last = *at;
    }
    drop(procs);
    let client = async_nats::connect(nats_url()).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    for name in [bucket.clone(), format!("{bucket}_jobs")] {
        let _ = js.delete_key_value(name.as_str()).await;
    }
    let _ = js.delete_stream(format!("{bucket}_jobs_queue")).await;
}

#[test]
fn options_come_from_flags_then_env_then_the_file_then_defaults() {
    let dir = std::env::temp_dir().join(format!("sg-options-{}", rt::random_hex128()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("c.toml");
    std::fs::write(
        &config,
        "port-offset = 100\ndata-dir = \"/from/file\"\nregistry-bucket = \"from_file\"\n\
         service-key-file = \"keys\"\n",
    )
    .expect("config");
    let out = Command::new(support::binary(ServiceKind::Cache))
        .args(["--print-config", "--port-offset", "7"])
        .env("STREAMGATE_CONFIG", &config)
        .env("STREAMGATE_DATA_DIR", "/from/env")
        .env("STREAMGATE_PORT_OFFSET", "8")
        .env("STREAMGATE_PORT", "0")
        .output()
        .expect("cache runs");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "port-offset = 7   # flag",
        "port = 0   # env STREAMGATE_PORT",
        "data-dir = \"/from/env\"   # env STREAMGATE_DATA_DIR",
        "registry-bucket = \"from_file\"   # file",
        "service-key-file = \"keys\"   # file",
        "nats-url = \"nats://127.0.0.1:4222\"   # default",
    ] {
        assert!(said.lines().any(|l| l == line), "{line:?} in:\n{said}");
    }

    // A bad file stops the binary with the key and the file named.
    std::fs::write(&config, "port-offset = 100\nprot = 1\n").expect("config");
    let out = Command::new(support::binary(ServiceKind::Upload))
        .args(["--config"])
        .arg(&config)
        .output()
        .expect("upload runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unknown key `prot`") && err.contains(&config.display().to_string()),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_binary_documents_every_option_and_its_env() {
    for kind in ServiceKind::ALL {
        let out = Command::new(support::binary(kind))
            .arg("--help")
            .output()
            .expect("runs");
        assert!(out.status.success(), "{kind} --help");
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains(kind.summary()), "{kind}: {help}");
        let cmd = streamgate::cli::ServiceCli::command_for(kind);
        for arg in cmd.get_arguments() {
            let long = arg.get_long().expect("every option is long");
            assert!(help.contains(&format!("--{long}")), "{kind}: --{long}");
            if let Some(env) = arg.get_env() {
                let env = env.to_string_lossy();
                assert!(help.contains(&format!("[env: {env}")), "{kind}: {env}");
            }
        }
    }
}
